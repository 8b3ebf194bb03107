//! Writes fuzz seeds for `wire_frames` and `mls_message` from a demo federation.
//!
//! ```text
//! kring-certs-dev init --out /tmp/fed
//! for u in admin@bz liaison@nctv; do
//!     openssl pkey -in /tmp/fed/users/$u/user.key -passin file:/tmp/fed/users/$u/passphrase \
//!         -outform DER -out /tmp/$u.pk8
//! done
//! kring-fuzz-seedgen /tmp/fed /tmp/admin@bz.pk8 /tmp/liaison@nctv.pk8 fuzz/seeds
//! ```
//!
//! Everything written is a valid message, so the fuzzer starts from inputs that
//! pass the outer layers and mutates from there: one sample of every variant of
//! every request, response, push and federation message.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use kring_policy::Label;
use kring_protocol::audit::{AuditHeadPage, CertificateUse, SignedAuditHead};
use kring_protocol::identity::CaFingerprint;
use kring_protocol::identity::{Identity, certificates_from_pem};
use kring_protocol::mls::{
    CertSigner, ClientGroup, CommunityMeta, CredentialError, CredentialValidator, MemberId,
    key_package,
};
use kring_protocol::revocation::{RevocationStatement, WipeOrder};
use kring_protocol::wire::{
    AuditPage, AuditRecordView, AuditVerdict, CommunitySummary, CrlCopy, EntryKind, ErrorCode,
    FedBody, FedItem, FedRequest, FedResponse, HopRefusal, LogEntry, NoticeStatus, NoticeUpload,
    Push, Request, Response, TrustState, TrustedRelay, encode_frame,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use uuid::Uuid;

type Res<T> = Result<T, Box<dyn Error>>;

/// Names a credential by its certificate (no chain or revocation checks: seeds only).
struct ByCertificate;

impl CredentialValidator for ByCertificate {
    fn validate(&self, chain: &[Vec<u8>], _key: &[u8]) -> Result<MemberId, CredentialError> {
        let leaf = chain.first().ok_or(CredentialError::EmptyChain)?;
        Identity::from_der(leaf)
            .map(|i| i.id())
            .map_err(CredentialError::Unreadable)
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fed, admin_key, member_key, out] = args.as_slice() else {
        return Err(
            "usage: kring-fuzz-seedgen FEDERATION_DIR ADMIN_PKCS8_DER MEMBER_PKCS8_DER SEEDS_DIR"
                .into(),
        );
    };
    let admin_chain = certificates_from_pem(&fs::read(fed.join("users/admin@bz/user.crt"))?)?;
    let hub_chain = certificates_from_pem(&fs::read(fed.join("relays/bz/relay.crt"))?)?;
    let hub_key = Identity::from_der(&hub_chain[0])?.public_key;
    let signer = CertSigner::from_pkcs8(admin_chain.clone(), &fs::read(admin_key)?)?;
    let provider = OpenMlsRustCrypto::default();

    let label: Label = "NL:STG-CONFIDENTIEEL;REL=NLD;TLP=AMBER".parse()?;
    let max_label: Label = "NL:STG-GEHEIM".parse()?;
    let meta = CommunityMeta::new("fuzz@bz", max_label.to_bytes(), vec!["admin@bz".into()])?;
    let (mut group, upload) = ClientGroup::create(
        &provider,
        &signer,
        &ByCertificate,
        &meta,
        &hub_chain,
        &hub_key,
    )?;
    let kp = key_package(&provider, &signer, false)?;
    let kp_last = key_package(&provider, &signer, true)?;
    let app = group.encrypt(&provider, &signer, &label.to_bytes(), b"seed notice body")?;

    // commit_verify: the community as the hub tracks it (a fixture compiled into the
    // target), and handshakes made in it.
    let fixture = out.join("../bodies/fixtures/commit_verify");
    write(&fixture, "group-info", &upload.group_info)?;
    write(&fixture, "ratchet-tree", &upload.ratchet_tree)?;
    let member_chain = certificates_from_pem(&fs::read(fed.join("users/liaison@nctv/user.crt"))?)?;
    let member_signer = CertSigner::from_pkcs8(member_chain, &fs::read(member_key)?)?;
    let member_provider = OpenMlsRustCrypto::default();
    let member_kp = key_package(&member_provider, &member_signer, false)?;
    let add = group.add_members(&provider, &signer, &ByCertificate, &[member_kp])?;
    let commits = out.join("commit_verify");
    write(&commits, "add-commit", &add.commit)?;
    group.commit_refused(&provider)?;

    let mls = out.join("mls_message");
    write(&mls, "key-package", &kp)?;
    write(&mls, "key-package-last-resort", &kp_last)?;
    write(&mls, "application", &app)?;
    write(&mls, "group-info", &upload.group_info)?;

    let notice_id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let summary = CommunitySummary {
        id: "fuzz@bz".into(),
        max_label: max_label.to_string(),
        epoch: 1,
        members: vec!["admin@bz".into(), "liaison@nctv".into()],
        admins: vec!["admin@bz".into()],
        last_seq: 7,
    };
    let entry = LogEntry {
        community: "fuzz@bz".into(),
        seq: 7,
        sender: "admin@bz".into(),
        ordered_at: 1_700_000_000,
        kind: EntryKind::Notice {
            notice_id,
            label: label.to_bytes(),
            epoch: 1,
        },
        message: app.clone(),
    };
    let handshake_entry = LogEntry {
        kind: EntryKind::Handshake { epoch: 1 },
        message: upload.group_info.clone(),
        seq: 8,
        ..entry.clone()
    };
    let statement = RevocationStatement {
        user: "liaison@bz".into(),
        organisation: "bz".into(),
        reason: "laptop lost".into(),
        revoked_at: 1_700_000_000,
        revoker_chain: admin_chain.clone(),
        signature: vec![0x5a; 64],
    };
    let wipe = WipeOrder {
        user: "liaison@bz".into(),
        organisation: "bz".into(),
        ordered_at: 1_700_000_000,
        revoker_chain: admin_chain.clone(),
        signature: vec![0x5b; 64],
    };
    let ca_bz = certificates_from_pem(&fs::read(fed.join("orgs/bz/ca.crt"))?)?;
    let crl = pem_body(&fs::read_to_string(fed.join("orgs/bz/crl.pem"))?)?;
    let crl_copy = CrlCopy {
        crl: crl.clone(),
        issuer: ca_bz[0].clone(),
    };
    let audit_record = AuditRecordView {
        seq: 3,
        at: 1_700_000_000,
        kind: "refusal".into(),
        actor: "analist@post-a".into(),
        subject: "fuzz@bz".into(),
        action: "file".into(),
        detail: "level above accreditation".into(),
        hash: "00".repeat(32),
    };
    let head = SignedAuditHead {
        relay: "bz".into(),
        records: 3,
        hash: [7; 32],
        at: 1_700_000_000,
        signature: vec![0x5a; 64],
        chain: hub_chain.clone(),
    };
    let welcome = vec![0x00, 0x01, 0x00, 0x03, 0xde, 0xad, 0xbe, 0xef];

    // One sample of every variant of every message a peer or device can send. The
    // `*_name` functions match exhaustively, so a new variant does not compile until
    // it has a name here; give it a sample too.
    let requests = vec![
        Request::PublishKeyPackages {
            key_packages: vec![kp.clone()],
            last_resort: Some(kp_last),
        },
        Request::FetchKeyPackage {
            user: "liaison@nctv".into(),
        },
        Request::CreateCommunity {
            community: "fuzz@bz".into(),
            group_info: upload.group_info.clone(),
            ratchet_tree: upload.ratchet_tree.clone(),
        },
        Request::Handshake {
            community: "fuzz@bz".into(),
            message: upload.group_info.clone(),
            welcome: Some(welcome.clone()),
        },
        Request::FileNotice {
            community: "fuzz@bz".into(),
            notice_id,
            message: app.clone(),
        },
        Request::Subscribe,
        Request::Ack {
            community: "fuzz@bz".into(),
            seq: 3,
        },
        Request::AckWelcome { id: notice_id },
        Request::ListCommunities,
        Request::CommunityInfo {
            community: "fuzz@bz".into(),
        },
        Request::NoticeStatus { notice_id },
        Request::AuditLog {
            from: 1,
            limit: 50,
            verify: true,
        },
        Request::Ping,
        Request::Revoke {
            statement: statement.clone(),
        },
        Request::RevokeAndWipe {
            statement: statement.clone(),
            wipe: wipe.clone(),
        },
        Request::FileNotices {
            community: "fuzz@bz".into(),
            notices: vec![
                NoticeUpload {
                    notice_id,
                    message: app.clone(),
                },
                NoticeUpload {
                    notice_id: Uuid::from_u128(2),
                    message: app.clone(),
                },
            ],
        },
        Request::Trust,
        Request::AuditHead,
        Request::TrustStatements {
            after: Some("fuzz@bz".into()),
        },
        Request::Cursors {
            cursors: vec![kring_protocol::wire::LogMark {
                community: "fuzz@bz".into(),
                seq: 5,
            }],
        },
        Request::DeclaredClients,
        Request::OfferBlob {
            community: "fuzz@bz".into(),
            blob: kring_protocol::attachment::BlobRef {
                id: kring_protocol::attachment::BlobId([7; 32]),
                size: kring_protocol::attachment::sealed_len(1000),
            },
        },
        Request::PutBlob {
            blob: kring_protocol::attachment::BlobId([7; 32]),
            offset: 0,
            data: vec![0x5a; 64],
        },
        Request::GetBlob {
            community: "fuzz@bz".into(),
            notice_id,
            blob: kring_protocol::attachment::BlobId([7; 32]),
            offset: 64,
        },
        Request::AckMany {
            marks: vec![
                kring_protocol::wire::LogMark {
                    community: "fuzz@bz".into(),
                    seq: 7,
                },
                kring_protocol::wire::LogMark {
                    community: "other@nctv".into(),
                    seq: 2,
                },
            ],
        },
    ];
    let errors = vec![
        ErrorCode::PolicyDenied {
            reason: "clearance too low".into(),
        },
        ErrorCode::NotMember,
        ErrorCode::NotAdmin,
        ErrorCode::WrongEpoch { current: 4 },
        ErrorCode::Unauthenticated {
            reason: "unknown CA".into(),
        },
        ErrorCode::Revoked,
        ErrorCode::KeyMaterialExhausted {
            user: "liaison@nctv".into(),
        },
        ErrorCode::TooLarge {
            what: "frame".into(),
        },
        ErrorCode::RateLimited {
            retry_after_ms: 250,
        },
        ErrorCode::BadRequest {
            reason: "bad id".into(),
        },
        ErrorCode::NotFound {
            what: "community".into(),
        },
        ErrorCode::Unavailable {
            reason: "hub unreachable".into(),
        },
        ErrorCode::Internal,
        ErrorCode::OutcomeUnknown {
            reason: "no answer from the hub".into(),
        },
    ];
    let mut responses = vec![
        Response::Ok,
        Response::KeyPackagesStored { count: 5 },
        Response::KeyPackage {
            key_package: kp.clone(),
        },
        Response::Queued {
            notice_id,
            hub: "bz".into(),
        },
        Response::Accepted { seq: 8, epoch: 2 },
        Response::Communities {
            communities: vec![summary.clone()],
        },
        Response::Community(summary.clone()),
        Response::Status(NoticeStatus {
            notice_id,
            community: "fuzz@bz".into(),
            seq: Some(7),
            refusals: vec![HopRefusal {
                hop: "post-a".into(),
                reason: "level above accreditation".into(),
            }],
        }),
        Response::AuditLog(AuditPage {
            relay: "bz".into(),
            total: 3,
            records: vec![audit_record],
            verify: Some(AuditVerdict {
                records: 3,
                first_bad: None,
                reason: None,
                checkpoints: 1,
                unsigned_tail: 2,
            }),
        }),
        Response::Pong,
        Response::Revoked {
            user: "liaison@bz".into(),
            peers: vec!["nctv".into()],
            removals: vec!["fuzz@bz".into()],
        },
        Response::WipeOrdered(wipe),
        Response::Filed {
            hub: "bz".into(),
            epoch: 1,
            seqs: vec![Some(7), None],
        },
        Response::Trust(TrustState {
            relays: vec![TrustedRelay {
                relay: "bz".into(),
                organisation: "bz".into(),
                ca: Some(CaFingerprint::of(&ca_bz[0])),
            }],
            statements: vec![statement.clone()],
            crls: vec![crl_copy],
        }),
        Response::AuditHead(AuditHeadPage {
            head,
            certificates: vec![CertificateUse {
                chain: hub_chain.clone(),
                first_used: 0,
                first_seq: 1,
            }],
        }),
        Response::TrustStatements {
            statements: vec![statement.clone()],
            more: true,
        },
        Response::Cursors {
            rewind: vec![kring_protocol::wire::LogMark {
                community: "fuzz@bz".into(),
                seq: 4,
            }],
        },
        Response::DeclaredClients {
            organisation: "bz".into(),
            clients: vec!["post-a".into()],
        },
        Response::BlobProgress {
            received: 64,
            size: kring_protocol::attachment::sealed_len(1000),
        },
        Response::BlobChunk {
            size: kring_protocol::attachment::sealed_len(1000),
            offset: 64,
            data: vec![0x5a; 64],
        },
    ];
    responses.extend(errors.iter().cloned().map(Response::Error));
    let pushes = [
        Push::Entry(entry.clone()),
        Push::Entry(handshake_entry.clone()),
        Push::Welcome {
            id: notice_id,
            community: "fuzz@bz".into(),
            welcome: welcome.clone(),
            ratchet_tree: upload.ratchet_tree.clone(),
        },
        Push::CaughtUp,
        Push::Closed(ErrorCode::Revoked),
    ];
    let bodies = vec![
        FedBody::Notice {
            community: "fuzz@bz".into(),
            notice_id,
            sender: "admin@bz".into(),
            message: app.clone(),
        },
        FedBody::Entry {
            community: summary.clone(),
            seq: 7,
            entry: Some(entry.clone()),
        },
        FedBody::Welcome {
            user: "liaison@nctv".into(),
            community: "fuzz@bz".into(),
            welcome: welcome.clone(),
            ratchet_tree: upload.ratchet_tree.clone(),
        },
        FedBody::Refusal {
            notice_id,
            hop: "bz->post-a".into(),
            reason: "level above accreditation".into(),
        },
        FedBody::Revocation { statement },
        FedBody::Retention {
            community: "fuzz@bz".into(),
            seconds: 30 * 86_400,
        },
        FedBody::Crl {
            crl,
            issuer: ca_bz[0].clone(),
        },
        FedBody::NoticeEntry {
            community: "fuzz@bz".into(),
            seq: 7,
            entry: Some(entry),
        },
        FedBody::Welcomes {
            users: vec!["liaison@nctv".into(), "admin@nctv".into()],
            community: "fuzz@bz".into(),
            welcome,
            ratchet_tree: upload.ratchet_tree,
        },
        FedBody::DeclaredClients {
            clients: vec!["post-a".into()],
        },
    ];
    let fed_requests = vec![
        FedRequest::Deliver {
            items: bodies
                .iter()
                .cloned()
                .zip(1..)
                .map(|(body, seq)| FedItem { seq, body })
                .collect(),
        },
        FedRequest::Handshake {
            community: "fuzz@bz".into(),
            sender: "admin@nctv".into(),
            message: upload.group_info,
            welcome: None,
        },
        FedRequest::FetchKeyPackage {
            user: "liaison@nctv".into(),
            requester: "admin@bz".into(),
        },
        FedRequest::Whereabouts,
        FedRequest::FetchLog {
            community: "fuzz@bz".into(),
            after: 3,
        },
        FedRequest::Trust {
            after: Some("liaison@nctv".into()),
        },
        FedRequest::FetchBlob {
            community: "fuzz@bz".into(),
            notice_id,
            blob: kring_protocol::attachment::BlobId([7; 32]),
            offset: 0,
        },
    ];
    let fed_responses = [
        FedResponse::Ack { upto: 9 },
        FedResponse::Whereabouts(kring_protocol::wire::Whereabouts {
            applied: 4,
            outbox_oldest: Some(2),
            outbox_next: 7,
            logs: vec![kring_protocol::wire::LogMark {
                community: "fuzz@bz".into(),
                seq: 12,
            }],
        }),
        FedResponse::Log {
            entries: Vec::new(),
            last_seq: 12,
            community: None,
        },
        FedResponse::Response(Response::Pong),
        FedResponse::Response(Response::KeyPackage { key_package: kp }),
    ];

    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    let max = kring_protocol::wire::DEFAULT_MAX_FRAME;
    for m in &requests {
        frames.push((format!("req-{}", request_name(m)), encode_frame(m, max)?));
    }
    for m in &responses {
        let name = match m {
            Response::Error(e) => format!("resp-error-{}", e.name()),
            m => format!("resp-{}", response_name(m)),
        };
        frames.push((name, encode_frame(m, max)?));
    }
    for (i, m) in pushes.iter().enumerate() {
        frames.push((format!("push-{}-{i}", push_name(m)), encode_frame(m, max)?));
    }
    for b in bodies {
        let m = FedRequest::Deliver {
            items: vec![FedItem {
                seq: 1,
                body: b.clone(),
            }],
        };
        frames.push((
            format!("fed-deliver-{}", fed_body_name(&b)),
            encode_frame(&m, max)?,
        ));
    }
    for m in &fed_requests {
        frames.push((
            format!("fed-req-{}", fed_request_name(m)),
            encode_frame(m, max)?,
        ));
    }
    for (i, m) in fed_responses.iter().enumerate() {
        frames.push((
            format!("fed-resp-{}-{i}", fed_response_name(m)),
            encode_frame(m, max)?,
        ));
    }

    // Target input: a chunk-size byte, then the stream. Also each payload alone
    // (the target decodes the whole input as a payload too).
    let wire = out.join("wire_frames");
    let mut stream = vec![7u8];
    for (name, frame) in &frames {
        let mut one = vec![0xff];
        one.extend_from_slice(frame);
        write(&wire, &format!("{name}.frame"), &one)?;
        write(&wire, &format!("{name}.payload"), &frame[4..])?;
        stream.extend_from_slice(frame);
    }
    write(&wire, "all.stream", &stream)?;
    println!(
        "wrote {} frame seeds and 4 MLS seeds under {}",
        frames.len(),
        out.display()
    );
    Ok(())
}

/// The DER inside a PEM text's first block.
fn pem_body(text: &str) -> Res<Vec<u8>> {
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64_decode(&b64)?)
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("not base64: {c}"))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn request_name(m: &Request) -> &'static str {
    match m {
        Request::PublishKeyPackages { .. } => "publish",
        Request::FetchKeyPackage { .. } => "fetch",
        Request::CreateCommunity { .. } => "create",
        Request::Handshake { .. } => "handshake",
        Request::FileNotice { .. } => "file",
        Request::Subscribe => "subscribe",
        Request::Ack { .. } => "ack",
        Request::AckWelcome { .. } => "ack-welcome",
        Request::ListCommunities => "list",
        Request::CommunityInfo { .. } => "info",
        Request::NoticeStatus { .. } => "status",
        Request::AuditLog { .. } => "audit-log",
        Request::Ping => "ping",
        Request::Revoke { .. } => "revoke",
        Request::FileNotices { .. } => "file-many",
        Request::Trust => "trust",
        Request::AuditHead => "audit-head",
        Request::TrustStatements { .. } => "trust-statements",
        Request::Cursors { .. } => "cursors",
        Request::RevokeAndWipe { .. } => "revoke-wipe",
        Request::DeclaredClients => "declared-clients",
        Request::OfferBlob { .. } => "offer-blob",
        Request::PutBlob { .. } => "put-blob",
        Request::GetBlob { .. } => "get-blob",
        Request::AckMany { .. } => "ack-many",
    }
}

fn response_name(m: &Response) -> &'static str {
    match m {
        Response::Ok => "ok",
        Response::KeyPackagesStored { .. } => "stored",
        Response::KeyPackage { .. } => "key-package",
        Response::Queued { .. } => "queued",
        Response::Accepted { .. } => "accepted",
        Response::Communities { .. } => "communities",
        Response::Community(_) => "community",
        Response::Status(_) => "status",
        Response::AuditLog(_) => "audit-log",
        Response::Pong => "pong",
        Response::Error(_) => "error",
        Response::Revoked { .. } => "revoked",
        Response::Filed { .. } => "filed",
        Response::Trust(_) => "trust",
        Response::AuditHead(_) => "audit-head",
        Response::TrustStatements { .. } => "trust-statements",
        Response::Cursors { .. } => "cursors",
        Response::WipeOrdered(_) => "wipe-ordered",
        Response::DeclaredClients { .. } => "declared-clients",
        Response::BlobProgress { .. } => "blob-progress",
        Response::BlobChunk { .. } => "blob-chunk",
    }
}

fn push_name(m: &Push) -> &'static str {
    match m {
        Push::Entry(_) => "entry",
        Push::Welcome { .. } => "welcome",
        Push::CaughtUp => "caught-up",
        Push::Closed(_) => "closed",
    }
}

fn fed_body_name(b: &FedBody) -> &'static str {
    match b {
        FedBody::Notice { .. } => "notice",
        FedBody::Entry { .. } => "entry",
        FedBody::Welcome { .. } => "welcome",
        FedBody::Refusal { .. } => "refusal",
        FedBody::Revocation { .. } => "revocation",
        FedBody::Crl { .. } => "crl",
        FedBody::NoticeEntry { .. } => "notice-entry",
        FedBody::Welcomes { .. } => "welcomes",
        FedBody::Retention { .. } => "retention",
        FedBody::DeclaredClients { .. } => "declared-clients",
    }
}

fn fed_request_name(m: &FedRequest) -> &'static str {
    match m {
        FedRequest::Deliver { .. } => "deliver-all",
        FedRequest::Handshake { .. } => "handshake",
        FedRequest::FetchKeyPackage { .. } => "fetch",
        FedRequest::Whereabouts => "whereabouts",
        FedRequest::FetchLog { .. } => "fetch-log",
        FedRequest::Trust { .. } => "trust",
        FedRequest::FetchBlob { .. } => "fetch-blob",
    }
}

fn fed_response_name(m: &FedResponse) -> &'static str {
    match m {
        FedResponse::Ack { .. } => "ack",
        FedResponse::Response(_) => "response",
        FedResponse::Whereabouts(_) => "whereabouts",
        FedResponse::Log { .. } => "log",
    }
}
