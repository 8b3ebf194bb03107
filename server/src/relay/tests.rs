//! The request handlers called in-process: relay `bz` of a development federation
//! opened on a store in a temporary directory, callers made from the users'
//! certificates, requests handed to [`Relay::handle`] directly. No socket, no
//! spawned relay; every refusal comes back as its typed [`ErrorCode`] and is
//! written to the audit log.

use kring_policy::Label;
use kring_protocol::identity::certificates_from_pem;
use kring_protocol::mls::{CertSigner, ClientGroup, CommunityMeta, leaf_public_key};
use kring_protocol::revocation::RevocationStatement;
use kring_protocol::validator::FederationValidator;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::Signer as _;

use kring_protocol::notice_aad::NoticeAad;
use kring_protocol::wire::{EntryKind, FedBody, LogEntry, NoticeUpload, Request, Response};
use uuid::Uuid;

use super::*;
use crate::audit::AuditRecord;
use crate::store::{SledEngine, decode};

/// Relay `bz` opened in-process, and the federation directory it came from.
struct Bz {
    relay: Arc<Relay>,
    dir: tempfile::TempDir,
}

impl Bz {
    fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        kring_certs_dev::init_demo(dir.path(), 47_950, false, now()).unwrap();
        let path = kring_certs_dev::relay_dir(dir.path(), "bz").join("relay.toml");
        let config = RelayConfig::load(&path).unwrap();
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&config.data_dir).unwrap());
        let relay = Relay::open(&config, engine).unwrap();
        Self { relay, dir }
    }

    fn user_dir(&self, user: &str) -> std::path::PathBuf {
        kring_certs_dev::user_dir(self.dir.path(), user)
    }

    fn chain(&self, user: &str) -> Vec<Vec<u8>> {
        let pem = std::fs::read(self.user_dir(user).join("user.crt")).unwrap();
        certificates_from_pem(&pem).unwrap()
    }

    /// `user` as the relay sees them after authentication.
    fn caller(&self, user: &str) -> Caller {
        let chain = self.chain(user);
        let identity = self.relay.authenticate(&chain, IdentityKind::User).unwrap();
        Caller::new(identity, chain)
    }

    /// `user`'s signing key, from the key file and the development passphrase.
    fn signer(&self, user: &str) -> CertSigner {
        let dir = self.user_dir(user);
        let pem = std::fs::read_to_string(dir.join("user.key")).unwrap();
        let passphrase = std::fs::read(dir.join(kring_certs_dev::PASSPHRASE_FILE)).unwrap();
        let passphrase = String::from_utf8(passphrase).unwrap();
        let der = kring_protocol::keyfile::decrypt_pem(&pem, passphrase.trim().as_bytes()).unwrap();
        CertSigner::from_pkcs8(self.chain(user), &der).unwrap()
    }

    async fn answer(&self, user: &str, request: Request) -> Response {
        self.relay.handle(&self.caller(user), request).await
    }

    async fn refusal(&self, user: &str, request: Request) -> ErrorCode {
        match self.answer(user, request).await {
            Response::Error(code) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn audit(&self) -> Vec<AuditRecord> {
        self.relay
            .engine()
            .scan(keys::AUDIT, None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, v)| decode(&k, &v).unwrap())
            .collect()
    }

    /// Whether the audit log holds a refusal of `action` to `actor`.
    fn refusal_audited(&self, actor: &str, action: &str) -> bool {
        self.audit().iter().any(|r| {
            r.event.kind == AuditKind::Refusal && r.event.actor == actor && r.event.action == action
        })
    }

    /// `creator` creates `NAME@bz` with maximum `max` as a device would.
    async fn create(&self, creator: &str, name: &str, max: &str) -> Response {
        self.create_group(creator, name, max).await.2
    }

    /// [`create`](Self::create), keeping the creator's group (to encrypt with).
    async fn create_group(
        &self,
        creator: &str,
        name: &str,
        max: &str,
    ) -> (ClientGroup, OpenMlsRustCrypto, Response) {
        let community = format!("{name}@bz");
        let max: Label = max.parse().unwrap();
        let meta =
            CommunityMeta::new(community.clone(), max.to_bytes(), vec![creator.into()]).unwrap();
        let hub_chain = self.relay.cert_chain();
        let hub_key = leaf_public_key(&hub_chain[0]).unwrap();
        let trust = self.relay.trust();
        let validator = FederationValidator::new(self.relay.anchors(), &trust, now() as u64);
        let provider = OpenMlsRustCrypto::default();
        let (group, upload) = ClientGroup::create(
            &provider,
            &self.signer(creator),
            &validator,
            &meta,
            &hub_chain,
            &hub_key,
        )
        .unwrap();
        let answer = self
            .answer(
                creator,
                Request::CreateCommunity {
                    community,
                    group_info: upload.group_info,
                    ratchet_tree: upload.ratchet_tree,
                },
            )
            .await;
        (group, provider, answer)
    }
}

#[tokio::test]
async fn a_user_of_another_relay_is_not_served_here() {
    let bz = Bz::open();
    let err = bz
        .relay
        .authenticate(&bz.chain("liaison@nctv"), IdentityKind::User)
        .unwrap_err();
    assert!(
        matches!(&err, ErrorCode::Unauthenticated { reason } if reason.contains("is not a user of relay bz")),
        "{err:?}"
    );
    // A relay certificate is not a user's.
    let err = bz
        .relay
        .authenticate(&bz.chain("liaison@bz"), IdentityKind::Relay)
        .unwrap_err();
    assert!(matches!(err, ErrorCode::Unauthenticated { .. }), "{err:?}");
}

#[tokio::test]
async fn a_community_is_created_once_and_only_by_someone_cleared_for_its_maximum() {
    let bz = Bz::open();
    let created = bz
        .create("liaison@bz", "kring", "NL:STG-CONFIDENTIEEL")
        .await;
    assert!(
        !matches!(created, Response::Error(_)),
        "created: {created:?}"
    );
    let again = bz
        .create("liaison@bz", "kring", "NL:STG-CONFIDENTIEEL")
        .await;
    assert!(
        matches!(again, Response::Error(ErrorCode::BadRequest { .. })),
        "{again:?}"
    );
    // Above the creator's clearance (STG-GEHEIM): refused, and audited.
    let over = bz.create("liaison@bz", "hoog", "NL:STG-ZEER-GEHEIM").await;
    assert!(
        matches!(over, Response::Error(ErrorCode::PolicyDenied { .. })),
        "{over:?}"
    );
    assert!(bz.refusal_audited("liaison@bz", "create-community"));
    // The community is the creator's: members see it, others do not.
    let info = bz
        .answer(
            "liaison@bz",
            Request::CommunityInfo {
                community: "kring@bz".into(),
            },
        )
        .await;
    assert!(matches!(info, Response::Community(_)), "{info:?}");
    let code = bz
        .refusal(
            "admin@bz",
            Request::CommunityInfo {
                community: "kring@bz".into(),
            },
        )
        .await;
    assert_eq!(code, ErrorCode::NotMember);
    assert!(bz.refusal_audited("admin@bz", "community-info"));
}

#[tokio::test]
async fn a_non_member_cannot_acknowledge_and_a_filing_that_is_no_mls_message_is_refused() {
    let bz = Bz::open();
    let created = bz
        .create("liaison@bz", "kring", "NL:STG-CONFIDENTIEEL")
        .await;
    assert!(!matches!(created, Response::Error(_)), "{created:?}");
    let code = bz
        .refusal(
            "admin@bz",
            Request::Ack {
                community: "kring@bz".into(),
                seq: 1,
            },
        )
        .await;
    assert_eq!(code, ErrorCode::NotMember);
    let code = bz
        .refusal(
            "admin@bz",
            Request::FileNotices {
                community: "kring@bz".into(),
                notices: vec![NoticeUpload {
                    notice_id: Uuid::from_u128(1),
                    message: vec![0; 64],
                }],
            },
        )
        .await;
    assert!(
        matches!(&code, ErrorCode::BadRequest { reason } if reason.contains("not an MLS application message")),
        "{code:?}"
    );
    assert!(bz.refusal_audited("admin@bz", "ack"));
    // A member cannot acknowledge past the end of the log.
    let code = bz
        .refusal(
            "liaison@bz",
            Request::Ack {
                community: "kring@bz".into(),
                seq: 1_000,
            },
        )
        .await;
    assert!(
        matches!(&code, ErrorCode::BadRequest { reason } if reason.contains("the log ends at")),
        "{code:?}"
    );
    // Nor acknowledge a community that does not exist.
    let code = bz
        .refusal(
            "liaison@bz",
            Request::Ack {
                community: "nergens@bz".into(),
                seq: 1,
            },
        )
        .await;
    assert_eq!(code, ErrorCode::NotMember);
}

#[tokio::test]
async fn the_audit_log_is_read_by_org_admins_only() {
    let bz = Bz::open();
    let code = bz
        .refusal(
            "liaison@bz",
            Request::AuditLog {
                from: 1,
                limit: 10,
                verify: false,
            },
        )
        .await;
    assert!(
        matches!(&code, ErrorCode::Unauthenticated { reason } if reason.contains("for org-admins of organisation bz")),
        "{code:?}"
    );
    assert!(bz.refusal_audited("liaison@bz", "audit-log"));
    let page = bz
        .answer(
            "admin@bz",
            Request::AuditLog {
                from: 1,
                limit: 10,
                verify: true,
            },
        )
        .await;
    assert!(matches!(page, Response::AuditLog(_)), "{page:?}");
}

#[tokio::test]
async fn key_packages_of_unknown_relays_and_garbage_are_refused() {
    let bz = Bz::open();
    let code = bz
        .refusal(
            "liaison@bz",
            Request::FetchKeyPackage {
                user: "consul@elders".into(),
            },
        )
        .await;
    assert!(
        matches!(&code, ErrorCode::NotFound { what } if what.contains("not a peer")),
        "{code:?}"
    );
    let code = bz
        .refusal(
            "liaison@bz",
            Request::PublishKeyPackages {
                key_packages: vec![vec![1, 2, 3]],
                last_resort: None,
            },
        )
        .await;
    assert!(matches!(code, ErrorCode::BadRequest { .. }), "{code:?}");
    assert!(bz.refusal_audited("liaison@bz", "publish-key-packages"));
    // A local user who published nothing has no key package to hand out.
    let code = bz
        .refusal(
            "liaison@bz",
            Request::FetchKeyPackage {
                user: "admin@bz".into(),
            },
        )
        .await;
    assert_eq!(
        code,
        ErrorCode::KeyMaterialExhausted {
            user: "admin@bz".into()
        }
    );
}

#[tokio::test]
async fn a_revoked_user_is_refused_every_request_and_their_keys_are_not_handed_out() {
    let bz = Bz::open();
    let admin = bz.signer("admin@bz");
    let statement = RevocationStatement::sign(
        bz.chain("admin@bz"),
        |bytes| admin.sign(bytes).unwrap(),
        "liaison@bz",
        "laptop lost",
        now() - 10,
    )
    .unwrap();
    // Only an org-admin of the user's organisation revokes.
    let code = bz
        .refusal(
            "liaison@bz",
            Request::Revoke {
                statement: statement.clone(),
            },
        )
        .await;
    assert!(
        matches!(&code, ErrorCode::Unauthenticated { reason } if reason.contains("only org-admins may revoke")),
        "{code:?}"
    );
    // A device connected before the revocation...
    let connected = bz.caller("liaison@bz");
    let done = bz.answer("admin@bz", Request::Revoke { statement }).await;
    assert!(!matches!(done, Response::Error(_)), "{done:?}");
    // ...is refused its next request, and a new connection is refused outright.
    let answer = bz.relay.handle(&connected, Request::ListCommunities).await;
    assert_eq!(answer, Response::Error(ErrorCode::Revoked));
    assert!(bz.refusal_audited("liaison@bz", "list-communities"));
    assert_eq!(
        bz.relay
            .authenticate(&bz.chain("liaison@bz"), IdentityKind::User),
        Err(ErrorCode::Revoked)
    );
    let code = bz
        .refusal(
            "admin@bz",
            Request::FetchKeyPackage {
                user: "liaison@bz".into(),
            },
        )
        .await;
    assert_eq!(code, ErrorCode::Revoked);
    // The revocation itself is in the audit log.
    assert!(
        bz.audit()
            .iter()
            .any(|r| r.event.kind == AuditKind::Revocation && r.event.subject == "liaison@bz")
    );
}

/// A sealed attachment of `data` and its bytes.
fn sealed(data: &[u8]) -> (kring_protocol::attachment::BlobRef, Vec<u8>) {
    let mut out = Vec::new();
    let s = kring_protocol::attachment::seal(
        &mut &data[..],
        &mut out,
        &[8; 32],
        kring_protocol::attachment::MAX_ATTACHMENT_BYTES,
    )
    .unwrap();
    (s.blob, out)
}

#[tokio::test]
async fn attachments_are_announced_uploaded_before_filing_and_handed_to_members_only() {
    let bz = Bz::open();
    let (mut group, provider, created) = bz
        .create_group("liaison@bz", "bijlagen", "NL:STG-GEHEIM")
        .await;
    assert!(matches!(created, Response::Accepted { .. }), "{created:?}");
    let community = "bijlagen@bz".to_string();
    let (blob, bytes) = sealed(&vec![5u8; 3 * kring_protocol::attachment::CHUNK + 7]);
    let label: Label = "NL:STG-CONFIDENTIEEL".parse().unwrap();
    let aad = NoticeAad::plain(label).with_blobs(vec![blob]).to_bytes();
    let notice_id = Uuid::new_v4();
    let message = group
        .encrypt(&provider, &bz.signer("liaison@bz"), &aad, b"{}")
        .unwrap();
    let file = Request::FileNotices {
        community: community.clone(),
        notices: vec![NoticeUpload { notice_id, message }],
    };

    // Bytes nobody announced are refused; so is a notice naming a blob not here.
    let code = bz
        .refusal(
            "liaison@bz",
            Request::PutBlob {
                blob: blob.id,
                offset: 0,
                data: bytes.clone(),
            },
        )
        .await;
    assert!(
        matches!(&code, ErrorCode::BadRequest { reason } if reason.contains("not announced")),
        "{code:?}"
    );
    assert!(bz.refusal_audited("liaison@bz", "put-blob"));
    let code = bz.refusal("liaison@bz", file.clone()).await;
    assert!(
        matches!(&code, ErrorCode::BadRequest { reason } if reason.contains("is not uploaded")),
        "{code:?}"
    );
    // A non-member may not announce one for the community.
    let offer = Request::OfferBlob {
        community: community.clone(),
        blob,
    };
    assert_eq!(
        bz.refusal("admin@bz", offer.clone()).await,
        ErrorCode::NotMember
    );

    // Announced, sent in two pieces (the second after asking where to go on).
    assert_eq!(
        bz.answer("liaison@bz", offer.clone()).await,
        Response::BlobProgress {
            received: 0,
            size: blob.size
        }
    );
    let put = |offset: usize, end: usize| Request::PutBlob {
        blob: blob.id,
        offset: offset as u64,
        data: bytes[offset..end].to_vec(),
    };
    assert_eq!(
        bz.answer("liaison@bz", put(0, 1000)).await,
        Response::BlobProgress {
            received: 1000,
            size: blob.size
        }
    );
    assert_eq!(
        bz.answer("liaison@bz", offer.clone()).await,
        Response::BlobProgress {
            received: 1000,
            size: blob.size
        }
    );
    assert_eq!(
        bz.answer("liaison@bz", put(1000, bytes.len())).await,
        Response::BlobProgress {
            received: blob.size,
            size: blob.size
        }
    );
    match bz.answer("liaison@bz", file).await {
        Response::Filed { seqs, .. } => assert!(seqs[0].is_some()),
        other => panic!("{other:?}"),
    }

    // A member gets it back, in pieces; a non-member and a wrong notice get nothing.
    let get = |notice_id: Uuid, offset: u64| Request::GetBlob {
        community: community.clone(),
        notice_id,
        blob: blob.id,
        offset,
    };
    match bz.answer("liaison@bz", get(notice_id, 10)).await {
        Response::BlobChunk { size, offset, data } => {
            assert_eq!((size, offset), (blob.size, 10));
            assert_eq!(data, bytes[10..]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        bz.refusal("admin@bz", get(notice_id, 0)).await,
        ErrorCode::NotMember
    );
    assert!(matches!(
        bz.refusal("liaison@bz", get(Uuid::new_v4(), 0)).await,
        ErrorCode::NotFound { .. }
    ));
    // A peer relay that is neither the hub nor home to a member is not served.
    let err = bz
        .relay
        .fetch_blob_for_peer("aivd", &community, &notice_id, &blob.id, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RelayError::Refused(ErrorCode::NotFound { .. })),
        "{err:?}"
    );

    // A peer that reuses the notice id (and the blob) in another community gets a
    // record of its own: dropping that one leaves this notice's blob alone.
    bz.relay
        .write(|_, b| put_notice_blobs(&bz.relay, b, &notice_id, "ander@nctv", &aad, Some("nctv")))
        .unwrap();
    bz.relay
        .write(|_, b| {
            b.delete(crate::keyspace::attachments::notice(
                "ander@nctv",
                &notice_id,
            ));
            Ok(())
        })
        .unwrap();
    crate::core::release_blobs(&bz.relay, &mut bz.relay.cx(), &[blob.id]).unwrap();
    assert_eq!(bz.relay.blobs.sealed_size(&blob.id), Some(blob.size));
    match bz.answer("liaison@bz", get(notice_id, 0)).await {
        Response::BlobChunk { size, .. } => assert_eq!(size, blob.size),
        other => panic!("{other:?}"),
    }

    // Swept only once no notice refers to it: a day on, it stays while its notice
    // is here, and goes with the notice's record.
    let later = now() + 2 * crate::blobs::PARTIAL_TTL;
    crate::core::sweep_blobs(&bz.relay, &mut Cx::at(later, Instant::now())).unwrap();
    assert_eq!(bz.relay.blobs.sealed_size(&blob.id), Some(blob.size));
    bz.relay
        .write(|_, b| {
            b.delete(crate::keyspace::attachments::notice(&community, &notice_id));
            Ok(())
        })
        .unwrap();
    crate::core::sweep_blobs(&bz.relay, &mut Cx::at(later, Instant::now())).unwrap();
    assert_eq!(bz.relay.blobs.sealed_size(&blob.id), None);
}

/// Whether the audit log holds a refusal of a federation item from `peer` whose
/// detail says `says`.
fn item_refused(bz: &Bz, peer: &str, says: &str) -> bool {
    bz.audit().iter().any(|r| {
        r.event.kind == AuditKind::Refusal
            && r.event.actor == peer
            && r.event.action == "federation-item"
            && r.event.detail.contains(says)
    })
}

#[tokio::test]
async fn what_a_peer_may_not_send_is_refused_audited_and_skipped() {
    use kring_protocol::wire::FedItem;
    let bz = Bz::open();
    let (_, _, created) = bz
        .create_group("liaison@bz", "eigen", "NL:STG-GEHEIM")
        .await;
    assert!(matches!(created, Response::Accepted { .. }), "{created:?}");
    let item = |seq: u64, body: FedBody| FedItem { seq, body };
    let entry = LogEntry {
        community: "vreemd@nctv".into(),
        seq: 1,
        sender: "liaison@nctv".into(),
        ordered_at: now(),
        kind: EntryKind::Notice {
            notice_id: Uuid::from_u128(9),
            label: "NL:DEP-VERTROUWELIJK".parse::<Label>().unwrap().to_bytes(),
            epoch: 0,
        },
        message: vec![1, 2, 3],
    };
    let items = vec![
        // A retention period for a community hubbed here, from another relay.
        item(
            1,
            FedBody::Retention {
                community: "eigen@bz".into(),
                seconds: 86_400,
            },
        ),
        // An entry of a community hubbed at nctv, sent by aivd's link.
        item(
            2,
            FedBody::NoticeEntry {
                community: "vreemd@nctv".into(),
                seq: 1,
                entry: Some(entry),
            },
        ),
        // A hop's refusal of a notice nobody filed here.
        item(
            3,
            FedBody::Refusal {
                notice_id: Uuid::from_u128(7),
                hop: "aivd".into(),
                reason: "made up".into(),
            },
        ),
    ];
    let upto = crate::federation::apply_items(&bz.relay, "aivd", items)
        .await
        .unwrap();
    // Each was skipped, not applied, and the link goes on past them.
    assert_eq!(upto, 3);
    assert!(item_refused(&bz, "aivd", "whose hub it is not"));
    assert!(item_refused(
        &bz,
        "aivd",
        "relay aivd is not the hub of vreemd@nctv"
    ));
    assert!(item_refused(&bz, "aivd", "is unknown here"));
    assert_eq!(
        crate::retention::retention_of(&bz.relay, &Batch::default(), "eigen@bz").unwrap(),
        None
    );
    assert!(bz.relay.community("vreemd@nctv").unwrap().is_none());
    // Items at or below what was applied are not applied again.
    let again = vec![item(
        3,
        FedBody::Retention {
            community: "eigen@bz".into(),
            seconds: 1,
        },
    )];
    let before = bz.audit().len();
    assert_eq!(
        crate::federation::apply_items(&bz.relay, "aivd", again)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        bz.audit().len(),
        before,
        "a repeated item is skipped silently"
    );
}
