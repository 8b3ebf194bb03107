//! End-to-end tests with real MLS groups, the in-memory openmls provider and
//! self-signed Ed25519 X.509 certificates minted with rcgen.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{GroupId, KeyPackage, LeafNodeIndex, MlsGroup};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use proptest::prelude::*;

use super::*;

const COMMUNITY: &str = "desinformatie@bz";
const LABEL: &[u8] = b"NL:STG-CONFIDENTIEEL;TLP=AMBER";

/// Trusts the certificates it minted; can revoke identities.
#[derive(Default)]
struct TestValidator {
    trusted: BTreeMap<Vec<u8>, MemberId>,
    revoked: RefCell<BTreeSet<MemberId>>,
}

impl TestValidator {
    fn check(
        &self,
        chain: &[Vec<u8>],
        key: &[u8],
        strict: bool,
    ) -> Result<MemberId, CredentialError> {
        let leaf = chain.first().ok_or(CredentialError::EmptyChain)?;
        let id = self.trusted.get(leaf).ok_or(CredentialError::NotExpected(
            "certificate not issued by the test federation",
        ))?;
        let cert_key = leaf_public_key(leaf)
            .map_err(|_| CredentialError::NotExpected("certificate has no Ed25519 key"))?;
        if !leaf_key_matches(key, &cert_key) {
            return Err(CredentialError::KeyMismatch(id.clone()));
        }
        if strict && self.revoked.borrow().contains(id) {
            return Err(crate::revocation::Revoked::ByStatement {
                user: id.clone(),
                reason: "revoked in the test".into(),
            }
            .into());
        }
        Ok(id.clone())
    }

    fn revoke(&self, id: &str) {
        self.revoked.borrow_mut().insert(id.to_owned());
    }
}

impl CredentialValidator for TestValidator {
    fn validate(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        self.check(chain, signature_key, true)
    }

    fn identify(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        self.check(chain, signature_key, false)
    }
}

struct Actor {
    id: MemberId,
    provider: OpenMlsRustCrypto,
    signer: CertSigner,
}

fn self_signed(id: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    let cert = params.self_signed(&key).unwrap();
    (vec![cert.der().to_vec()], key.serialize_der())
}

fn mint(validator: &mut TestValidator, id: &str) -> Actor {
    let (chain, key) = self_signed(id);
    validator.trusted.insert(chain[0].clone(), id.to_owned());
    Actor {
        id: id.to_owned(),
        provider: OpenMlsRustCrypto::default(),
        signer: CertSigner::from_pkcs8(chain, &key).unwrap(),
    }
}

fn ids(members: &[GroupMember]) -> BTreeSet<MemberId> {
    members.iter().map(|m| m.id.clone()).collect()
}

fn set(list: &[&Actor]) -> BTreeSet<MemberId> {
    list.iter().map(|a| a.id.clone()).collect()
}

fn commit_summary(verified: &VerifiedHandshake) -> CommitSummary {
    match verified.summary() {
        Handshake::Commit(summary) => summary.clone(),
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn expect_commit(received: Received) -> CommitSummary {
    match received {
        Received::Commit(summary) => summary,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn expect_application(received: Received) -> (Vec<u8>, Vec<u8>, MemberId, u64) {
    match received {
        Received::Application {
            plaintext,
            aad,
            sender,
            epoch,
        } => (plaintext, aad, sender, epoch),
        other => panic!("expected an application message, got {other:?}"),
    }
}

fn new_community(v: &TestValidator, admin: &Actor, hub: &Actor) -> (ClientGroup, GroupUpload) {
    let meta = CommunityMeta::new(COMMUNITY, LABEL.to_vec(), vec![admin.id.clone()]).unwrap();
    ClientGroup::create(
        &admin.provider,
        &admin.signer,
        v,
        &meta,
        hub.signer.chain(),
        hub.signer.public_key(),
    )
    .unwrap()
}

/// The whole story: creation, adds, joins, notices with labels, admin changes,
/// competing commits, a hub removal, eviction and past-epoch reading.
#[test]
fn community_lifecycle() {
    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let liaison = mint(&mut v, "liaison@nctv");
    let analist = mint(&mut v, "analist@post-a");
    let aivd = mint(&mut v, "analist@aivd");
    let relay_p = OpenMlsRustCrypto::default();

    // The admin creates the community with its metadata and the hub as external sender.
    let (mut g_admin, upload) = new_community(&v, &admin, &hub);
    assert_eq!(g_admin.epoch(), 0);
    assert_eq!(g_admin.community_id(), COMMUNITY);
    let meta = g_admin.meta().unwrap();
    assert_eq!(meta.max_label, LABEL);
    assert_eq!(meta.admins, vec![admin.id.clone()]);
    assert_eq!(meta.hub(), "bz");

    // The hub starts tracking it from the uploaded GroupInfo and ratchet tree.
    let mut relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    assert_eq!(relay.epoch(), 0);
    assert_eq!(relay.community_id(), COMMUNITY);
    assert_eq!(relay.meta().unwrap(), meta);
    assert_eq!(ids(&relay.members(&v).unwrap()), set(&[&admin]));
    assert!(matches!(
        RelayGroup::from_group_info(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &upload.group_info,
            &upload.ratchet_tree
        ),
        Err(MlsError::Forbidden(_))
    ));

    // Members publish key packages; the relay verifies them.
    let kp_liaison = key_package(&liaison.provider, &liaison.signer, false).unwrap();
    let kp_analist = key_package(&analist.provider, &analist.signer, true).unwrap();
    let info = verify_key_package(relay_p.crypto(), &v, &kp_analist).unwrap();
    assert_eq!(info.id, analist.id);
    assert!(info.last_resort);
    assert!(!info.hash_ref.is_empty());
    assert!(
        !verify_key_package(relay_p.crypto(), &v, &kp_liaison)
            .unwrap()
            .last_resort
    );

    // The admin adds both; the relay sees who is added before merging.
    let out = g_admin
        .add_members(
            &admin.provider,
            &admin.signer,
            &v,
            &[kp_liaison, kp_analist],
        )
        .unwrap();
    assert!(g_admin.has_pending_commit());
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    let summary = commit_summary(&verified);
    assert_eq!(summary, out.summary);
    assert_eq!(summary.committer, admin.id);
    assert_eq!((summary.epoch_before, summary.epoch_after), (0, 1));
    let added: Vec<_> = summary.added.iter().map(|a| a.id.clone()).collect();
    assert_eq!(added, vec![liaison.id.clone(), analist.id.clone()]);
    assert_eq!(summary.added[1].chain, analist.signer.chain());
    assert_eq!(summary.added[1].signature_key, analist.signer.public_key());
    assert!(summary.removed.is_empty() && summary.new_meta.is_none());
    assert!(summary.requires_admin());
    assert_eq!(relay.epoch(), 0, "nothing is applied before merge");
    relay.merge(relay_p.storage(), verified).unwrap();
    g_admin.commit_accepted(&admin.provider).unwrap();
    assert_eq!((relay.epoch(), g_admin.epoch()), (1, 1));
    assert_eq!(
        g_admin.process(&admin.provider, &v, &out.commit).unwrap(),
        Received::Stale { epoch: 0 },
        "the echo of an applied own commit is stale"
    );

    // Both join from the Welcome (which carries the ratchet tree).
    let welcome = out.welcome.unwrap();
    let mut g_liaison = ClientGroup::join(&liaison.provider, &v, &welcome, None).unwrap();
    let mut g_analist = ClientGroup::join(&analist.provider, &v, &welcome, None).unwrap();
    for group in [&g_liaison, &g_analist] {
        assert_eq!(group.epoch(), 1);
        assert_eq!(group.meta().unwrap(), meta);
        assert_eq!(
            ids(&group.members(&v).unwrap()),
            set(&[&admin, &liaison, &analist])
        );
    }

    // A notice: the label is the authenticated data, readable by the relay.
    let notice = b"influence operation observed".to_vec();
    let ct = g_analist
        .encrypt(&analist.provider, &analist.signer, LABEL, &notice)
        .unwrap();
    assert_eq!(
        relay.read_application(&ct).unwrap(),
        ApplicationInfo {
            epoch: 1,
            aad: LABEL.to_vec()
        }
    );
    assert!(matches!(
        relay.process_handshake(relay_p.crypto(), &v, &ct),
        Err(MlsError::Forbidden(_))
    ));
    for (group, actor) in [(&mut g_liaison, &liaison), (&mut g_admin, &admin)] {
        let received = group.process(&actor.provider, &v, &ct).unwrap();
        assert_eq!(
            expect_application(received),
            (notice.clone(), LABEL.to_vec(), analist.id.clone(), 1)
        );
    }
    assert_eq!(
        g_analist.process(&analist.provider, &v, &ct).unwrap(),
        Received::OwnApplication {
            epoch: 1,
            aad: LABEL.to_vec()
        }
    );

    // Changing the label in transit makes decryption fail; the genuine one still works.
    let ct2 = g_analist
        .encrypt(&analist.provider, &analist.signer, LABEL, &notice)
        .unwrap();
    let mut tampered = ct2.clone();
    let at = tampered
        .windows(LABEL.len())
        .position(|w| w == LABEL)
        .unwrap();
    tampered[at + LABEL.len() - 1] ^= 0x01;
    assert_ne!(relay.read_application(&tampered).unwrap().aad, LABEL);
    assert!(matches!(
        g_liaison.process(&liaison.provider, &v, &tampered),
        Err(MlsError::Verification(_))
    ));
    let (plaintext, aad, _, _) =
        expect_application(g_liaison.process(&liaison.provider, &v, &ct2).unwrap());
    assert_eq!((plaintext, aad), (notice.clone(), LABEL.to_vec()));

    // Non-admins cannot add or change admins (refused locally, nothing pending).
    let kp_aivd = key_package(&aivd.provider, &aivd.signer, false).unwrap();
    assert_eq!(
        g_analist
            .add_members(
                &analist.provider,
                &analist.signer,
                &v,
                std::slice::from_ref(&kp_aivd)
            )
            .unwrap_err(),
        MlsError::NotAdmin(analist.id.clone())
    );
    assert_eq!(
        g_analist
            .set_admins(
                &analist.provider,
                &analist.signer,
                &v,
                vec![analist.id.clone()]
            )
            .unwrap_err(),
        MlsError::NotAdmin(analist.id.clone())
    );
    assert!(!g_analist.has_pending_commit());

    // The admin makes the liaison an admin too; the relay sees the new metadata.
    let out = g_admin
        .set_admins(
            &admin.provider,
            &admin.signer,
            &v,
            vec![liaison.id.clone(), admin.id.clone()],
        )
        .unwrap();
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    let new_meta = commit_summary(&verified).new_meta.unwrap();
    assert_eq!(new_meta.admins, vec![admin.id.clone(), liaison.id.clone()]);
    relay.merge(relay_p.storage(), verified).unwrap();
    g_admin.commit_accepted(&admin.provider).unwrap();
    assert_eq!(relay.meta().unwrap(), new_meta);
    for (group, actor) in [(&mut g_liaison, &liaison), (&mut g_analist, &analist)] {
        let summary = expect_commit(group.process(&actor.provider, &v, &out.commit).unwrap());
        assert_eq!(summary.new_meta.as_ref(), Some(&new_meta));
        assert_eq!(group.meta().unwrap(), new_meta);
        assert_eq!(group.epoch(), 2);
    }

    // Two admins commit in the same epoch: exactly one wins at the relay.
    let out_admin = g_admin
        .add_members(&admin.provider, &admin.signer, &v, &[kp_aivd])
        .unwrap();
    let three_admins = vec![admin.id.clone(), liaison.id.clone(), analist.id.clone()];
    let out_liaison = g_liaison
        .set_admins(&liaison.provider, &liaison.signer, &v, three_admins.clone())
        .unwrap();
    let v_admin = relay
        .process_handshake(relay_p.crypto(), &v, &out_admin.commit)
        .unwrap();
    let v_liaison = relay
        .process_handshake(relay_p.crypto(), &v, &out_liaison.commit)
        .unwrap();
    assert_eq!((v_admin.epoch(), v_liaison.epoch()), (2, 2));
    relay.merge(relay_p.storage(), v_admin).unwrap();
    let stale = MlsError::WrongEpoch {
        current: 3,
        message_epoch: 2,
    };
    assert_eq!(
        relay.merge(relay_p.storage(), v_liaison).unwrap_err(),
        stale
    );
    assert_eq!(
        relay
            .process_handshake(relay_p.crypto(), &v, &out_liaison.commit)
            .unwrap_err(),
        stale
    );
    // The winner's own commit, echoed while still pending, is applied.
    let summary = expect_commit(
        g_admin
            .process(&admin.provider, &v, &out_admin.commit)
            .unwrap(),
    );
    assert_eq!(summary.added[0].id, aivd.id);
    assert!(!g_admin.has_pending_commit());
    // The loser discards its commit, processes the winner and retries cleanly.
    g_liaison.commit_refused(&liaison.provider).unwrap();
    assert_eq!(
        g_liaison.commit_refused(&liaison.provider).unwrap_err(),
        MlsError::NoPendingCommit
    );
    expect_commit(
        g_liaison
            .process(&liaison.provider, &v, &out_admin.commit)
            .unwrap(),
    );
    expect_commit(
        g_analist
            .process(&analist.provider, &v, &out_admin.commit)
            .unwrap(),
    );
    let mut g_aivd =
        ClientGroup::join(&aivd.provider, &v, &out_admin.welcome.unwrap(), None).unwrap();
    let retry = g_liaison
        .set_admins(&liaison.provider, &liaison.signer, &v, three_admins.clone())
        .unwrap();
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &retry.commit)
        .unwrap();
    relay.merge(relay_p.storage(), verified).unwrap();
    g_liaison.commit_accepted(&liaison.provider).unwrap();
    for (group, actor) in [
        (&mut g_admin, &admin),
        (&mut g_analist, &analist),
        (&mut g_aivd, &aivd),
    ] {
        expect_commit(group.process(&actor.provider, &v, &retry.commit).unwrap());
        assert_eq!(group.epoch(), 4);
    }
    let mut sorted = three_admins.clone();
    sorted.sort();
    assert_eq!(relay.meta().unwrap().admins, sorted);

    // The relay's state survives a reload from its storage.
    let reloaded = RelayGroup::load(relay_p.storage(), COMMUNITY)
        .unwrap()
        .unwrap();
    assert_eq!(reloaded.epoch(), 4);
    assert_eq!(reloaded.meta().unwrap(), relay.meta().unwrap());
    assert_eq!(reloaded.members(&v).unwrap(), relay.members(&v).unwrap());
    assert!(
        RelayGroup::load(relay_p.storage(), "other@bz")
            .unwrap()
            .is_none()
    );

    // A notice in flight while the membership changes.
    let in_flight = g_analist
        .encrypt(
            &analist.provider,
            &analist.signer,
            LABEL,
            b"sent in epoch 4",
        )
        .unwrap();

    // The hub proposes removing a member; only the hub may, and only once per epoch.
    let proposal = relay
        .propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &hub.signer,
            &aivd.id,
        )
        .unwrap();
    assert!(matches!(
        relay.propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &hub.signer,
            &aivd.id
        ),
        Err(MlsError::Forbidden(_))
    ));
    assert!(matches!(
        relay.propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &admin.signer,
            &aivd.id
        ),
        Err(MlsError::Forbidden(_))
    ));
    assert_eq!(
        relay
            .propose_remove(
                relay_p.crypto(),
                relay_p.storage(),
                &v,
                &hub.signer,
                "nobody@bz"
            )
            .unwrap_err(),
        MlsError::NotMember("nobody@bz".into())
    );
    for (group, actor) in [
        (&mut g_admin, &admin),
        (&mut g_liaison, &liaison),
        (&mut g_analist, &analist),
        (&mut g_aivd, &aivd),
    ] {
        match group.process(&actor.provider, &v, &proposal).unwrap() {
            Received::RemovalProposal(p) => {
                assert_eq!((p.epoch, p.hub.as_str()), (4, "bz"));
                assert_eq!(p.removed.id, aivd.id);
                assert!(p.removed.proposed_by_hub);
            }
            other => panic!("expected a removal proposal, got {other:?}"),
        }
        assert!(group.has_pending_proposals());
    }
    assert_eq!(
        g_analist
            .encrypt(&analist.provider, &analist.signer, LABEL, b"blocked")
            .unwrap_err(),
        MlsError::PendingProposals
    );
    assert!(
        g_aivd
            .commit_pending_proposals(&aivd.provider, &aivd.signer, &v)
            .unwrap()
            .is_none(),
        "a member cannot commit its own removal"
    );
    // Any member may commit the hub's removal.
    v.revoke("nobody"); // unrelated revocations do not matter
    let out = g_liaison
        .commit_pending_proposals(&liaison.provider, &liaison.signer, &v)
        .unwrap()
        .unwrap();
    assert_eq!(out.summary.removed.len(), 1);
    assert_eq!(out.summary.removed[0].id, aivd.id);
    assert!(out.summary.removed[0].proposed_by_hub);
    assert!(!out.summary.requires_admin());
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    assert_eq!(commit_summary(&verified), out.summary);
    relay.merge(relay_p.storage(), verified).unwrap();
    g_liaison.commit_accepted(&liaison.provider).unwrap();
    for (group, actor) in [
        (&mut g_admin, &admin),
        (&mut g_analist, &analist),
        (&mut g_aivd, &aivd),
    ] {
        expect_commit(group.process(&actor.provider, &v, &out.commit).unwrap());
    }
    assert!(!g_aivd.is_active());
    assert!(g_analist.is_active() && !g_analist.has_pending_proposals());
    assert_eq!(relay.epoch(), 5);
    assert_eq!(
        ids(&relay.members(&v).unwrap()),
        set(&[&admin, &liaison, &analist])
    );

    // The removed member cannot read what is sent afterwards.
    let after = g_liaison
        .encrypt(
            &liaison.provider,
            &liaison.signer,
            LABEL,
            b"after the removal",
        )
        .unwrap();
    assert_eq!(
        g_aivd.process(&aivd.provider, &v, &after).unwrap_err(),
        MlsError::Evicted
    );
    assert!(matches!(
        g_aivd.encrypt(&aivd.provider, &aivd.signer, LABEL, b"x"),
        Err(MlsError::Evicted)
    ));
    let (_, _, sender, epoch) =
        expect_application(g_admin.process(&admin.provider, &v, &after).unwrap());
    assert_eq!((sender, epoch), (liaison.id.clone(), 5));

    // The notice of epoch 4 still decrypts in epoch 5 (past epochs are kept).
    assert_eq!(relay.read_application(&in_flight).unwrap().epoch, 4);
    for (group, actor) in [(&mut g_admin, &admin), (&mut g_liaison, &liaison)] {
        assert_eq!(group.epoch(), 5);
        let (plaintext, aad, sender, epoch) =
            expect_application(group.process(&actor.provider, &v, &in_flight).unwrap());
        assert_eq!(plaintext, b"sent in epoch 4");
        assert_eq!(
            (aad, sender, epoch),
            (LABEL.to_vec(), analist.id.clone(), 4)
        );
    }

    // Client groups reload from their storage too.
    let reloaded = ClientGroup::load(&admin.provider, COMMUNITY)
        .unwrap()
        .unwrap();
    assert_eq!(reloaded.epoch(), 5);
    assert!(
        ClientGroup::load(&admin.provider, "other@bz")
            .unwrap()
            .is_none()
    );
}

/// A member's commit made directly with openmls, bypassing the client-side checks.
fn raw_remove(actor: &Actor, leaf: u32) -> Vec<u8> {
    let mut group = MlsGroup::load(
        actor.provider.storage(),
        &GroupId::from_slice(COMMUNITY.as_bytes()),
    )
    .unwrap()
    .unwrap();
    let (commit, _, _) = group
        .remove_members(&actor.provider, &actor.signer, &[LeafNodeIndex::new(leaf)])
        .unwrap();
    group
        .clear_pending_commit(actor.provider.storage())
        .unwrap();
    commit.to_bytes().unwrap()
}

/// A member's add made directly with openmls: (commit, welcome).
fn raw_add(actor: &Actor, key_package: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use openmls::prelude::tls_codec::Deserialize as _;
    let mut group = MlsGroup::load(
        actor.provider.storage(),
        &GroupId::from_slice(COMMUNITY.as_bytes()),
    )
    .unwrap()
    .unwrap();
    let openmls::prelude::MlsMessageBodyIn::KeyPackage(kp) =
        openmls::prelude::MlsMessageIn::tls_deserialize_exact(key_package)
            .unwrap()
            .extract()
    else {
        panic!("not a key package");
    };
    let kp = kp
        .validate(
            actor.provider.crypto(),
            openmls::prelude::ProtocolVersion::Mls10,
        )
        .unwrap();
    let (commit, welcome, _) = group
        .add_members(&actor.provider, &actor.signer, &[kp])
        .unwrap();
    group
        .clear_pending_commit(actor.provider.storage())
        .unwrap();
    (commit.to_bytes().unwrap(), welcome.to_bytes().unwrap())
}

/// Relays refuse commits by non-admins and by members whose certificate was
/// revoked; clients refuse notices from revoked senders.
#[test]
fn relay_enforces_admins_and_revocation() {
    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let other = mint(&mut v, "analist@post-a");
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, upload) = new_community(&v, &admin, &hub);
    let mut relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kps = [
        key_package(&member.provider, &member.signer, false).unwrap(),
        key_package(&other.provider, &other.signer, false).unwrap(),
    ];
    let out = g_admin
        .add_members(&admin.provider, &admin.signer, &v, &kps)
        .unwrap();
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    relay.merge(relay_p.storage(), verified).unwrap();
    g_admin.commit_accepted(&admin.provider).unwrap();
    let welcome = out.welcome.unwrap();
    let mut g_member = ClientGroup::join(&member.provider, &v, &welcome, None).unwrap();
    let _g_other = ClientGroup::join(&other.provider, &v, &welcome, None).unwrap();
    let other_leaf = relay
        .members(&v)
        .unwrap()
        .into_iter()
        .find(|m| m.id == other.id)
        .unwrap()
        .leaf_index;

    // A non-admin's removal, forged with raw openmls, is refused by relay and members.
    let forged = raw_remove(&member, other_leaf);
    assert_eq!(
        relay
            .process_handshake(relay_p.crypto(), &v, &forged)
            .unwrap_err(),
        MlsError::NotAdmin(member.id.clone())
    );
    assert_eq!(
        g_admin.process(&admin.provider, &v, &forged).unwrap_err(),
        MlsError::NotAdmin(member.id.clone())
    );
    assert_eq!(relay.epoch(), 1);

    // A non-admin's add, forged likewise: refused by the relay, and its Welcome is
    // refused by the joiner.
    let outsider = mint(&mut v, "analist@aivd");
    let kp = key_package(&outsider.provider, &outsider.signer, false).unwrap();
    let (forged, welcome) = raw_add(&member, &kp);
    assert_eq!(
        relay
            .process_handshake(relay_p.crypto(), &v, &forged)
            .unwrap_err(),
        MlsError::NotAdmin(member.id.clone())
    );
    assert_eq!(
        ClientGroup::join(&outsider.provider, &v, &welcome, None).unwrap_err(),
        MlsError::NotAdmin(member.id.clone())
    );

    // A revoked admin can no longer commit, and its notices are refused.
    let notice = g_admin
        .encrypt(&admin.provider, &admin.signer, LABEL, b"before revocation")
        .unwrap();
    v.revoke(&admin.id);
    assert!(matches!(
        g_admin.remove_members(
            &admin.provider,
            &admin.signer,
            &v,
            std::slice::from_ref(&other.id)
        ),
        Err(MlsError::InvalidCredential(_))
    ));
    assert!(!g_admin.has_pending_commit());
    let forged = raw_remove(&admin, other_leaf);
    assert!(matches!(
        relay.process_handshake(relay_p.crypto(), &v, &forged),
        Err(MlsError::InvalidCredential(_))
    ));
    assert!(matches!(
        g_member.process(&member.provider, &v, &notice),
        Err(MlsError::InvalidCredential(_))
    ));
    let invalid = relay.invalid_members(&v);
    assert_eq!(invalid.len(), 1);
    assert!(invalid[0].1.contains("revoked"));
    // Revoked members are still listed (identify) so the hub can remove them.
    assert_eq!(
        ids(&relay.members(&v).unwrap()),
        set(&[&admin, &member, &other])
    );
    relay
        .propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &hub.signer,
            &admin.id,
        )
        .unwrap();

    // A revoked hub can no longer propose.
    v.revoke("bz");
    assert!(matches!(
        relay.propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &hub.signer,
            &other.id
        ),
        Err(MlsError::InvalidCredential(_))
    ));
}

/// Creation checks the hub, the creator's admin role, and key package capabilities.
#[test]
fn creation_and_key_package_checks() {
    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let wrong_hub = mint(&mut v, "nctv");
    let admin = mint(&mut v, "admin@bz");
    let stranger = {
        let (chain, key) = self_signed("stranger@bz");
        CertSigner::from_pkcs8(chain, &key).unwrap()
    };
    let meta = CommunityMeta::new(COMMUNITY, LABEL.to_vec(), vec![admin.id.clone()]).unwrap();
    let create = |signer: &CertSigner, meta: &CommunityMeta, hub: &Actor| {
        ClientGroup::create(
            &admin.provider,
            signer,
            &v,
            meta,
            hub.signer.chain(),
            hub.signer.public_key(),
        )
        .map(|_| ())
    };
    assert!(matches!(
        create(&admin.signer, &meta, &wrong_hub),
        Err(MlsError::InvalidMeta(_))
    ));
    let not_mine = CommunityMeta::new(COMMUNITY, LABEL.to_vec(), vec!["other@bz".into()]).unwrap();
    assert_eq!(
        create(&admin.signer, &not_mine, &hub).unwrap_err(),
        MlsError::NotAdmin(admin.id.clone())
    );
    assert!(matches!(
        create(&stranger, &meta, &hub),
        Err(MlsError::InvalidCredential(_))
    ));
    create(&admin.signer, &meta, &hub).unwrap();
    assert!(matches!(
        create(&admin.signer, &meta, &hub),
        Err(MlsError::Forbidden(_))
    ));

    // A key package without the Kring capabilities is refused.
    let plain = KeyPackage::builder()
        .build(
            CIPHERSUITE,
            &admin.provider,
            &admin.signer,
            admin.signer.credential_with_key().unwrap(),
        )
        .unwrap();
    let plain = openmls::prelude::MlsMessageOut::from(plain.key_package().clone())
        .to_bytes()
        .unwrap();
    assert!(matches!(
        verify_key_package(admin.provider.crypto(), &v, &plain),
        Err(MlsError::Forbidden(_))
    ));
    // A key package of an unknown certificate is refused.
    let stranger_kp = key_package(&admin.provider, &stranger, false).unwrap();
    assert!(matches!(
        verify_key_package(admin.provider.crypto(), &v, &stranger_kp),
        Err(MlsError::InvalidCredential(_))
    ));
}

#[test]
fn cert_signer_and_credentials() {
    let (chain, key) = self_signed("analist@post-a");
    let (other_chain, _) = self_signed("liaison@nctv");
    let signer = CertSigner::from_pkcs8(chain.clone(), &key).unwrap();
    assert_eq!(signer.public_key(), leaf_public_key(&chain[0]).unwrap());
    assert!(leaf_key_matches(
        signer.public_key(),
        &leaf_public_key(&chain[0]).unwrap()
    ));
    assert!(!leaf_key_matches(
        signer.public_key(),
        &leaf_public_key(&other_chain[0]).unwrap()
    ));
    assert!(!leaf_key_matches(&[], &[]));
    assert!(matches!(
        CertSigner::from_pkcs8(other_chain.clone(), &key),
        Err(MlsError::InvalidCredential(_))
    ));
    assert!(CertSigner::from_pkcs8(chain.clone(), b"not a key").is_err());
    assert!(CertSigner::from_pkcs8(Vec::new(), &key).is_err());

    let two = vec![chain[0].clone(), other_chain[0].clone()];
    let credential = x509_credential(&two).unwrap();
    assert_eq!(credential_chain(&credential).unwrap(), two);
    assert!(x509_credential(&[]).is_err());
    assert!(x509_credential(&[Vec::new()]).is_err());
    assert!(x509_credential(&vec![vec![1u8]; MAX_CHAIN_CERTS + 1]).is_err());
    let basic = openmls::prelude::Credential::new(
        openmls::prelude::CredentialType::Basic,
        b"analist".to_vec(),
    );
    assert!(credential_chain(&basic).is_err());
    let truncated = openmls::prelude::Credential::new(
        openmls::prelude::CredentialType::X509,
        credential.serialized_content()[..10].to_vec(),
    );
    assert!(credential_chain(&truncated).is_err());
    assert!(leaf_public_key(b"garbage").is_err());
}

#[test]
fn meta_codec_is_strict() {
    let meta = CommunityMeta::new(
        "desinformatie@bz",
        LABEL.to_vec(),
        vec!["liaison@nctv".into(), "admin@bz".into(), "admin@bz".into()],
    )
    .unwrap();
    assert_eq!(
        meta.admins,
        vec!["admin@bz".to_string(), "liaison@nctv".to_string()]
    );
    assert!(meta.is_admin("admin@bz") && !meta.is_admin("bz"));
    let bytes = meta.encode().unwrap();
    assert_eq!(CommunityMeta::decode(&bytes).unwrap(), meta);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(CommunityMeta::decode(&trailing).is_err());
    let mut version = bytes.clone();
    version[0] = 2;
    assert!(CommunityMeta::decode(&version).is_err());
    for bad_id in ["desinformatie", "a@b@c", "@bz", "x@", "has space@bz", ""] {
        assert!(CommunityMeta::new(bad_id, LABEL.to_vec(), vec!["admin@bz".into()]).is_err());
    }
    assert!(CommunityMeta::new(COMMUNITY, Vec::new(), vec!["admin@bz".into()]).is_err());
    assert!(
        CommunityMeta::new(COMMUNITY, vec![0; MAX_LABEL_BYTES + 1], vec!["a@b".into()]).is_err()
    );
    assert!(CommunityMeta::new(COMMUNITY, LABEL.to_vec(), Vec::new()).is_err());
    assert!(CommunityMeta::new(COMMUNITY, LABEL.to_vec(), vec!["bz".into()]).is_err());
    let unsorted = CommunityMeta {
        admins: vec!["z@bz".into(), "a@bz".into()],
        ..meta.clone()
    };
    assert!(unsorted.encode().is_err());

    // The update period: the default is encoded as before periods existed (v1);
    // another one as v2 with the period at the end.
    assert_eq!(meta.update_days, DEFAULT_UPDATE_DAYS);
    assert_eq!(bytes[0], 1);
    let monthly = meta.with_update_days(30).unwrap();
    let encoded = monthly.encode().unwrap();
    assert_eq!(encoded[0], 2);
    assert_eq!(&encoded[encoded.len() - 2..], &30u16.to_be_bytes());
    assert_eq!(CommunityMeta::decode(&encoded).unwrap(), monthly);
    assert_eq!(monthly.update_period_secs(), 30 * 86_400);
    assert_eq!(
        monthly
            .with_admins(vec!["x@bz".into()])
            .unwrap()
            .update_days,
        30
    );
    // v2 naming the default period is not canonical; truncated periods and
    // periods out of range are refused.
    let mut v2_default = bytes.clone();
    v2_default[0] = 2;
    v2_default.extend_from_slice(&DEFAULT_UPDATE_DAYS.to_be_bytes());
    assert!(CommunityMeta::decode(&v2_default).is_err());
    assert!(CommunityMeta::decode(&encoded[..encoded.len() - 1]).is_err());
    for days in [0, MAX_UPDATE_DAYS + 1] {
        assert!(meta.with_update_days(days).is_err());
        let mut bad = bytes.clone();
        bad[0] = 2;
        bad.extend_from_slice(&days.to_be_bytes());
        assert!(CommunityMeta::decode(&bad).is_err());
    }

    // The retention period: none reads as before (v1 or v2); one is v3, with the
    // update period and then the retention period at the end.
    assert_eq!(meta.retention_days, None);
    assert_eq!(meta.retention_secs(), None);
    let kept = meta.with_retention_days(Some(90)).unwrap();
    let encoded3 = kept.encode().unwrap();
    assert_eq!(encoded3[0], 3);
    assert_eq!(
        &encoded3[encoded3.len() - 4..],
        &[DEFAULT_UPDATE_DAYS.to_be_bytes(), 90u16.to_be_bytes()].concat()[..]
    );
    assert_eq!(CommunityMeta::decode(&encoded3).unwrap(), kept);
    assert_eq!(kept.retention_secs(), Some(90 * 86_400));
    assert_eq!(
        kept.with_admins(vec!["x@bz".into()])
            .unwrap()
            .retention_days,
        Some(90)
    );
    let both = monthly.with_retention_days(Some(1)).unwrap();
    let decoded = CommunityMeta::decode(&both.encode().unwrap()).unwrap();
    assert_eq!((decoded.update_days, decoded.retention_days), (30, Some(1)));
    // Taking the retention away again gives back the earlier encodings.
    assert_eq!(
        kept.with_retention_days(None).unwrap().encode().unwrap(),
        bytes
    );
    assert!(CommunityMeta::decode(&encoded3[..encoded3.len() - 1]).is_err());
    for days in [0, MAX_RETENTION_DAYS + 1] {
        assert!(meta.with_retention_days(Some(days)).is_err());
        let mut bad = bytes.clone();
        bad[0] = 3;
        bad.extend_from_slice(&DEFAULT_UPDATE_DAYS.to_be_bytes());
        bad.extend_from_slice(&days.to_be_bytes());
        assert!(CommunityMeta::decode(&bad).is_err());
    }
    let mut v3_without = bytes.clone();
    v3_without[0] = 3;
    v3_without.extend_from_slice(&DEFAULT_UPDATE_DAYS.to_be_bytes());
    assert!(CommunityMeta::decode(&v3_without).is_err());
}

/// The glue is generic over storage: relay and client state survive a restart on
/// the KV-backed provider of `mls_storage`.
#[test]
fn works_over_kv_storage() {
    use crate::mls_storage::{KringProvider, MemoryKv};

    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let admin_p = KringProvider::new(MemoryKv::new());
    let relay_p = KringProvider::new(MemoryKv::new());
    let meta = CommunityMeta::new(COMMUNITY, LABEL.to_vec(), vec![admin.id.clone()]).unwrap();
    let (mut g_admin, upload) = ClientGroup::create(
        &admin_p,
        &admin.signer,
        &v,
        &meta,
        hub.signer.chain(),
        hub.signer.public_key(),
    )
    .unwrap();
    let mut relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kp = key_package(&member.provider, &member.signer, false).unwrap();
    let out = g_admin
        .add_members(&admin_p, &admin.signer, &v, &[kp])
        .unwrap();
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    relay.merge(relay_p.storage(), verified).unwrap();
    g_admin.commit_accepted(&admin_p).unwrap();
    let members = relay.members(&v).unwrap();

    let relay_p = KringProvider::new(relay_p.into_backend());
    let relay = RelayGroup::load(relay_p.storage(), COMMUNITY)
        .unwrap()
        .unwrap();
    assert_eq!(relay.epoch(), 1);
    assert_eq!(relay.members(&v).unwrap(), members);
    let admin_p = KringProvider::new(admin_p.into_backend());
    let mut g_admin = ClientGroup::load(&admin_p, COMMUNITY).unwrap().unwrap();
    assert_eq!(g_admin.epoch(), 1);

    let mut g_member =
        ClientGroup::join(&member.provider, &v, &out.welcome.unwrap(), None).unwrap();
    let ct = g_admin
        .encrypt(&admin_p, &admin.signer, LABEL, b"after restart")
        .unwrap();
    assert_eq!(relay.read_application(&ct).unwrap().aad, LABEL);
    let (plaintext, _, sender, _) =
        expect_application(g_member.process(&member.provider, &v, &ct).unwrap());
    assert_eq!(
        (plaintext, sender),
        (b"after restart".to_vec(), admin.id.clone())
    );
}

/// Garbage, truncated and oversized inputs give errors, never panics.
#[test]
fn bad_bytes_are_errors() {
    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, upload) = new_community(&v, &admin, &hub);
    let relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kp = key_package(&member.provider, &member.signer, false).unwrap();
    let out = g_admin
        .add_members(
            &admin.provider,
            &admin.signer,
            &v,
            std::slice::from_ref(&kp),
        )
        .unwrap();
    let welcome = out.welcome.clone().unwrap();

    let mut samples: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff; 64],
        b"garbage that is not MLS".to_vec(),
    ];
    for valid in [&out.commit, &welcome, &kp, &upload.group_info] {
        let step = (valid.len() / 97).max(1);
        samples.extend((0..valid.len()).step_by(step).map(|n| valid[..n].to_vec()));
        let mut longer = valid.clone();
        longer.push(0);
        samples.push(longer);
        let mut flipped = valid.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        samples.push(flipped);
    }
    for bytes in &samples {
        assert!(
            relay
                .process_handshake(relay_p.crypto(), &v, bytes)
                .is_err()
        );
        assert!(relay.read_application(bytes).is_err());
        assert!(verify_key_package(relay_p.crypto(), &v, bytes).is_err());
        assert!(ClientGroup::join(&member.provider, &v, bytes, None).is_err());
        assert!(g_admin.process(&admin.provider, &v, bytes).is_err());
        assert!(
            RelayGroup::from_group_info(relay_p.crypto(), relay_p.storage(), &v, bytes, bytes)
                .is_err()
        );
        assert!(CommunityMeta::decode(bytes).is_err());
    }
    let huge = vec![0u8; MAX_GROUP_STATE_BYTES + 1];
    assert!(matches!(
        relay.read_application(&huge),
        Err(MlsError::TooLarge { .. })
    ));
    assert!(matches!(
        ClientGroup::join(&member.provider, &v, &huge, None),
        Err(MlsError::TooLarge { .. })
    ));
    assert!(matches!(
        g_admin.encrypt(
            &admin.provider,
            &admin.signer,
            &vec![0; MAX_AAD_BYTES + 1],
            b"x"
        ),
        Err(MlsError::TooLarge { .. })
    ));
    // The untouched commit is still fine for the relay.
    assert!(
        relay
            .process_handshake(relay_p.crypto(), &v, &out.commit)
            .is_ok()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn meta_roundtrips(
        name in "[a-z0-9-]{1,40}",
        hub in "[a-z0-9-]{1,20}",
        label in proptest::collection::vec(any::<u8>(), 1..300),
        admins in proptest::collection::vec("[a-z]{1,10}@[a-z-]{1,10}", 1..8),
    ) {
        let meta = CommunityMeta::new(format!("{name}@{hub}"), label, admins).unwrap();
        let bytes = meta.encode().unwrap();
        prop_assert_eq!(CommunityMeta::decode(&bytes).unwrap(), meta.clone());
        prop_assert_eq!(meta.hub(), hub.as_str());
    }

    #[test]
    fn meta_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(meta) = CommunityMeta::decode(&bytes) {
            prop_assert_eq!(meta.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn credential_chain_roundtrips(
        chain in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..400), 1..=MAX_CHAIN_CERTS),
    ) {
        let credential = x509_credential(&chain).unwrap();
        prop_assert_eq!(credential_chain(&credential).unwrap(), chain);
    }
}

/// With the federation's own validator and real X.509 chains: a commit adding a
/// member certificate that another organisation's CA minted for a user of relay bz
/// is refused by the relay verifying it and by every member's device.
#[test]
fn a_member_minted_by_another_organisations_ca_is_refused() {
    use crate::identity::tests::{Ca, NOW, fed, relay_params, sign, user_params};
    use crate::identity::{RelayTrust, TrustMap};
    use crate::validator::FederationValidator;

    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let trust = TrustMap::from_entries([
        (
            "bz",
            RelayTrust {
                organisation: "bz".into(),
                ca: None,
            },
        ),
        (
            "nctv",
            RelayTrust {
                organisation: "nctv".into(),
                ca: None,
            },
        ),
    ])
    .unwrap();
    let v = FederationValidator::new(&anchors, &trust, NOW);
    let actor = |params: rcgen::CertificateParams, ca: &Ca| {
        let leaf = sign(&params, ca);
        let chain = vec![leaf.der.clone(), ca.der.clone()];
        Actor {
            id: crate::identity::Identity::from_der(&leaf.der).unwrap().id(),
            provider: OpenMlsRustCrypto::default(),
            signer: CertSigner::from_pkcs8(chain, &leaf.key.serialize_der()).unwrap(),
        }
    };
    let hub = actor(relay_params("bz", "bz"), &f.bz);
    let admin = actor(user_params("admin", "bz", "bz"), &f.bz);
    // nctv's CA minting "spion@bz" with its own organisation: a valid chain.
    let spion = actor(user_params("spion", "bz", "nctv"), &f.nctv);
    assert_eq!(spion.id, "spion@bz");

    let meta = CommunityMeta::new(COMMUNITY, LABEL.to_vec(), vec![admin.id.clone()]).unwrap();
    let (mut g_admin, upload) = ClientGroup::create(
        &admin.provider,
        &admin.signer,
        &v,
        &meta,
        hub.signer.chain(),
        hub.signer.public_key(),
    )
    .unwrap();
    let relay_p = OpenMlsRustCrypto::default();
    let relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kp = key_package(&spion.provider, &spion.signer, false).unwrap();
    // The admin's own device refuses to add it.
    let err = g_admin
        .add_members(
            &admin.provider,
            &admin.signer,
            &v,
            std::slice::from_ref(&kp),
        )
        .unwrap_err();
    assert!(err.to_string().contains("belongs to organisation"), "{err}");
    // A device that skips the check (raw openmls): the relay refuses the commit.
    let (forged, _) = raw_add(&admin, &kp);
    let err = relay
        .process_handshake(relay_p.crypto(), &v, &forged)
        .unwrap_err();
    assert!(err.to_string().contains("belongs to organisation"), "{err}");
    assert_eq!(relay.epoch(), 0);
}

/// A relay reads a message's group, epoch, kind and label without keys, and a log
/// entry whose envelope says anything else than its message is refused.
#[test]
fn headers_are_read_without_keys_and_envelopes_must_match_them() {
    use crate::wire::{EntryKind, LogEntry};
    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, upload) = new_community(&v, &admin, &hub);
    let mut relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kp = key_package(&member.provider, &member.signer, false).unwrap();
    let out = g_admin
        .add_members(&admin.provider, &admin.signer, &v, &[kp])
        .unwrap();
    let commit = read_header(&out.commit).unwrap();
    assert_eq!(commit.kind, MessageKind::Commit);
    assert_eq!(commit.epoch, 0);
    assert!(commit.is_for(COMMUNITY) && !commit.is_for("other@bz"));
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    relay.merge(relay_p.storage(), verified).unwrap();
    g_admin.commit_accepted(&admin.provider).unwrap();

    let notice = g_admin
        .encrypt(&admin.provider, &admin.signer, LABEL, b"secret")
        .unwrap();
    let header = read_header(&notice).unwrap();
    assert_eq!(
        header.kind,
        MessageKind::Application {
            aad: LABEL.to_vec()
        }
    );
    assert_eq!(
        (header.epoch, header.group_name()),
        (1, COMMUNITY.to_owned())
    );
    let proposal = relay
        .propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &hub.signer,
            &member.id,
        )
        .unwrap();
    assert_eq!(read_header(&proposal).unwrap().kind, MessageKind::Proposal);
    assert!(read_header(b"not mls").is_err());
    assert!(matches!(
        read_header(&vec![0; MAX_MESSAGE_BYTES + 1]),
        Err(MlsError::TooLarge { .. })
    ));

    let entry = |community: &str, kind: EntryKind, message: &[u8]| LogEntry {
        community: community.into(),
        seq: 3,
        sender: admin.id.clone(),
        ordered_at: 0,
        kind,
        message: message.to_vec(),
    };
    let notice_kind = |label: &[u8], epoch: u64| EntryKind::Notice {
        notice_id: uuid::Uuid::from_u128(7),
        label: label.to_vec(),
        epoch,
    };
    // What a hub writes passes.
    check_entry(&entry(COMMUNITY, notice_kind(LABEL, 1), &notice)).unwrap();
    check_entry(&entry(
        COMMUNITY,
        EntryKind::Handshake { epoch: 0 },
        &out.commit,
    ))
    .unwrap();
    check_entry(&entry(
        COMMUNITY,
        EntryKind::Handshake { epoch: 1 },
        &proposal,
    ))
    .unwrap();
    // Another community on the envelope than in the message.
    assert!(matches!(
        check_entry(&entry("other@bz", notice_kind(LABEL, 1), &notice)),
        Err(MlsError::WrongGroup { .. })
    ));
    assert!(matches!(
        check_entry(&entry(
            "other@bz",
            EntryKind::Handshake { epoch: 0 },
            &out.commit
        )),
        Err(MlsError::WrongGroup { .. })
    ));
    // Another label, another epoch, another kind.
    let refused = |e: LogEntry| matches!(check_entry(&e), Err(MlsError::EnvelopeMismatch(_)));
    assert!(refused(entry(
        COMMUNITY,
        notice_kind(b"NL:ONGERUBRICEERD", 1),
        &notice
    )));
    assert!(refused(entry(COMMUNITY, notice_kind(LABEL, 0), &notice)));
    assert!(refused(entry(
        COMMUNITY,
        EntryKind::Handshake { epoch: 1 },
        &out.commit
    )));
    assert!(refused(entry(
        COMMUNITY,
        EntryKind::Handshake { epoch: 1 },
        &notice
    )));
    assert!(refused(entry(
        COMMUNITY,
        notice_kind(LABEL, 0),
        &out.commit
    )));
    // Garbage is not a message at all.
    assert!(matches!(
        check_entry(&entry(COMMUNITY, EntryKind::Handshake { epoch: 0 }, b"x")),
        Err(MlsError::Malformed { .. })
    ));
}

/// A community of an admin and two members, tracked by a relay: (admin's group,
/// member's group over `member_p`, other's group, relay group).
fn three_members(
    v: &TestValidator,
    hub: &Actor,
    admin: &Actor,
    member: &Actor,
    member_p: &crate::mls_storage::KringProvider<crate::mls_storage::MemoryKv>,
    other: &Actor,
    relay_p: &OpenMlsRustCrypto,
) -> (ClientGroup, ClientGroup, ClientGroup, RelayGroup) {
    let (mut g_admin, upload) = new_community(v, admin, hub);
    let mut relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kps = [
        key_package(member_p, &member.signer, false).unwrap(),
        key_package(&other.provider, &other.signer, false).unwrap(),
    ];
    let out = g_admin
        .add_members(&admin.provider, &admin.signer, v, &kps)
        .unwrap();
    let verified = relay
        .process_handshake(relay_p.crypto(), v, &out.commit)
        .unwrap();
    relay.merge(relay_p.storage(), verified).unwrap();
    g_admin.commit_accepted(&admin.provider).unwrap();
    let welcome = out.welcome.unwrap();
    let g_member = ClientGroup::join(member_p, v, &welcome, None).unwrap();
    let g_other = ClientGroup::join(&other.provider, v, &welcome, None).unwrap();
    (g_admin, g_member, g_other, relay)
}

fn leaf_key_of(group: &ClientGroup, v: &TestValidator, id: &str) -> Vec<u8> {
    group
        .leaf_keys(v)
        .unwrap()
        .into_iter()
        .find(|(m, _)| m == id)
        .unwrap()
        .1
}

/// A member (not an admin) updates its own leaf: the relay accepts it, the leaf key
/// changes for everybody, the epoch moves, everyone reads what is filed after it,
/// and a copy of the member's state from before the update reads nothing of it.
#[test]
fn a_self_update_rotates_the_leaf_and_locks_out_the_old_state() {
    use crate::mls_storage::{KringProvider, MemoryKv};

    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let other = mint(&mut v, "analist@post-a");
    let member_p = KringProvider::new(MemoryKv::new());
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, mut g_member, mut g_other, mut relay) =
        three_members(&v, &hub, &admin, &member, &member_p, &other, &relay_p);
    let epoch = g_member.epoch();
    let key_before = g_member.own_leaf_key().unwrap();
    assert_eq!(leaf_key_of(&g_admin, &v, &member.id), key_before);

    // The thief's copy of the member's device state.
    let stolen = KringProvider::new(MemoryKv::from_entries(
        member_p.backend().snapshot().unwrap(),
    ));

    let out = g_member.self_update(&member_p, &member.signer, &v).unwrap();
    assert!(out.summary.is_self_update());
    assert!(!out.summary.requires_admin());
    assert!(out.welcome.is_none());
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    let summary = commit_summary(&verified);
    assert!(summary.is_self_update());
    assert_eq!(summary.committer, member.id);
    relay.merge(relay_p.storage(), verified).unwrap();
    g_member.commit_accepted(&member_p).unwrap();
    for (group, provider) in [
        (&mut g_admin, &admin.provider),
        (&mut g_other, &other.provider),
    ] {
        let summary = expect_commit(group.process(provider, &v, &out.commit).unwrap());
        assert!(summary.is_self_update() && summary.leaf_updated);
        assert_eq!(summary.committer, member.id);
    }

    let key_after = g_member.own_leaf_key().unwrap();
    assert_ne!(key_after, key_before);
    assert_eq!(g_member.epoch(), epoch + 1);
    assert_eq!(relay.epoch(), epoch + 1);
    assert_eq!(leaf_key_of(&g_admin, &v, &member.id), key_after);
    assert_eq!(leaf_key_of(&g_other, &v, &member.id), key_after);
    assert_ne!(
        leaf_key_fingerprint(&key_after),
        leaf_key_fingerprint(&key_before)
    );
    assert_eq!(leaf_key_fingerprint(&key_after).len(), 16);
    // Membership and metadata are unchanged.
    assert_eq!(
        ids(&relay.members(&v).unwrap()),
        set(&[&admin, &member, &other])
    );
    assert_eq!(relay.meta().unwrap(), g_admin.meta().unwrap());

    // Everyone reads a notice filed after the update, the updater included.
    let notice = g_admin
        .encrypt(&admin.provider, &admin.signer, LABEL, b"after the update")
        .unwrap();
    let (plaintext, ..) = expect_application(g_member.process(&member_p, &v, &notice).unwrap());
    assert_eq!(plaintext, b"after the update".to_vec());
    let (plaintext, ..) =
        expect_application(g_other.process(&other.provider, &v, &notice).unwrap());
    assert_eq!(plaintext, b"after the update".to_vec());
    let mine = g_member
        .encrypt(&member_p, &member.signer, LABEL, b"from the updater")
        .unwrap();
    let (plaintext, _, sender, _) =
        expect_application(g_other.process(&other.provider, &v, &mine).unwrap());
    assert_eq!(
        (plaintext, sender),
        (b"from the updater".to_vec(), member.id.clone())
    );

    // The copy from before the update can follow neither the update nor what
    // comes after it.
    let mut g_stolen = ClientGroup::load(&stolen, COMMUNITY).unwrap().unwrap();
    assert_eq!(g_stolen.epoch(), epoch);
    assert!(g_stolen.process(&stolen, &v, &out.commit).is_err());
    assert!(g_stolen.process(&stolen, &v, &notice).is_err());
    assert!(g_stolen.process(&stolen, &v, &mine).is_err());
}

/// An "update" that touches another member's leaf, the membership or the context
/// is refused by the relay (and by members); so is a revoked member's update.
#[test]
fn the_relay_refuses_updates_that_touch_more_than_the_own_leaf() {
    use crate::mls_storage::{KringProvider, MemoryKv};
    use openmls::prelude::{LeafNodeParameters, ProcessedMessageContent};

    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let other = mint(&mut v, "analist@post-a");
    let member_p = KringProvider::new(MemoryKv::new());
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, mut g_member, mut g_other, relay) =
        three_members(&v, &hub, &admin, &member, &member_p, &other, &relay_p);
    let epoch = relay.epoch();
    let other_leaf = relay
        .members(&v)
        .unwrap()
        .into_iter()
        .find(|m| m.id == other.id)
        .unwrap()
        .leaf_index;

    // Another member's leaf, through an Update proposal committed by reference.
    let (proposal, _) = g_other
        .mls_group_mut()
        .propose_self_update(
            &other.provider,
            &other.signer,
            LeafNodeParameters::default(),
        )
        .unwrap();
    let proposal = proposal.to_bytes().unwrap();
    g_other
        .mls_group_mut()
        .clear_pending_proposals(other.provider.storage())
        .unwrap();
    // Members and relays never take a member's standalone proposal ...
    assert!(matches!(
        g_member.process(&member_p, &v, &proposal),
        Err(MlsError::Forbidden(_))
    ));
    assert!(matches!(
        relay.process_handshake(relay_p.crypto(), &v, &proposal),
        Err(MlsError::Forbidden(_))
    ));
    // ... but a forger may queue it by hand and commit it with a path.
    let parsed = relay::parse_protocol_message(&proposal).unwrap();
    let processed = g_member
        .mls_group_mut()
        .process_message(&member_p, parsed)
        .unwrap();
    let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
        panic!("not a proposal");
    };
    g_member
        .mls_group_mut()
        .store_pending_proposal(member_p.storage(), *queued.clone())
        .unwrap();
    let bundle = g_member
        .mls_group_mut()
        .commit_builder()
        .consume_proposal_store(true)
        .load_psks(member_p.storage())
        .unwrap()
        .build(member_p.rand(), member_p.crypto(), &member.signer, |_| true)
        .unwrap()
        .stage_commit(&member_p)
        .unwrap();
    let (forged, _, _) = bundle.into_messages();
    let forged = forged.to_bytes().unwrap();
    g_member
        .mls_group_mut()
        .clear_pending_commit(member_p.storage())
        .unwrap();
    g_member
        .mls_group_mut()
        .clear_pending_proposals(member_p.storage())
        .unwrap();
    assert!(
        relay
            .process_handshake(relay_p.crypto(), &v, &forged)
            .is_err()
    );
    g_admin
        .mls_group_mut()
        .store_pending_proposal(admin.provider.storage(), *queued)
        .unwrap();
    assert!(matches!(
        g_admin.process(&admin.provider, &v, &forged),
        Err(MlsError::Forbidden(reason)) if reason.contains("another member's leaf")
    ));
    g_admin
        .mls_group_mut()
        .clear_pending_proposals(admin.provider.storage())
        .unwrap();

    // Another member's leaf, by removing it along with the update.
    let forged = raw_remove_with(&member_p, &member.signer, other_leaf);
    assert_eq!(
        relay
            .process_handshake(relay_p.crypto(), &v, &forged)
            .unwrap_err(),
        MlsError::NotAdmin(member.id.clone())
    );

    // The context: a changed update period, from a member and from an admin.
    let meta = g_admin.meta().unwrap().with_update_days(1).unwrap();
    let forged = [
        forge_context_change(&mut g_member, &member_p, &member.signer, &meta),
        forge_context_change(&mut g_admin, &admin.provider, &admin.signer, &meta),
    ];
    for forged in forged {
        let refused = relay
            .process_handshake(relay_p.crypto(), &v, &forged)
            .unwrap_err();
        assert!(
            matches!(&refused, MlsError::Forbidden(r) if r.contains("update period"))
                || refused == MlsError::NotAdmin(member.id.clone()),
            "{refused}"
        );
    }
    assert_eq!(relay.epoch(), epoch);

    // A revoked member cannot update.
    let update = g_other
        .self_update(&other.provider, &other.signer, &v)
        .unwrap();
    v.revoke(&other.id);
    assert!(matches!(
        relay.process_handshake(relay_p.crypto(), &v, &update.commit),
        Err(MlsError::InvalidCredential(_))
    ));
}

/// A commit changing the community metadata to `meta`, made directly with openmls
/// (bypassing the client-side checks).
fn forge_context_change<P: openmls::storage::OpenMlsProvider>(
    group: &mut ClientGroup,
    provider: &P,
    signer: &CertSigner,
    meta: &CommunityMeta,
) -> Vec<u8> {
    let extensions =
        super::context::extensions_with_meta(group.mls_group().extensions(), meta).unwrap();
    let bundle = group
        .mls_group_mut()
        .commit_builder()
        .propose_group_context_extensions(extensions)
        .unwrap()
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .unwrap()
        .stage_commit(provider)
        .unwrap();
    let commit = bundle.into_messages().0.to_bytes().unwrap();
    group
        .mls_group_mut()
        .clear_pending_commit(provider.storage())
        .unwrap();
    commit
}

/// A member's removal (with its update path) made directly with openmls.
fn raw_remove_with(
    provider: &crate::mls_storage::KringProvider<crate::mls_storage::MemoryKv>,
    signer: &CertSigner,
    leaf: u32,
) -> Vec<u8> {
    let mut group = MlsGroup::load(
        provider.storage(),
        &GroupId::from_slice(COMMUNITY.as_bytes()),
    )
    .unwrap()
    .unwrap();
    let (commit, _, _) = group
        .remove_members(provider, signer, &[LeafNodeIndex::new(leaf)])
        .unwrap();
    group.clear_pending_commit(provider.storage()).unwrap();
    commit.to_bytes().unwrap()
}

/// Notices of different lengths in one size bucket have ciphertexts of one length;
/// the next bucket is exactly the bucket's size apart; contents round-trip.
#[test]
fn padded_ciphertexts_fall_in_buckets() {
    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, upload) = new_community(&v, &admin, &hub);
    let relay = RelayGroup::from_group_info(
        relay_p.crypto(),
        relay_p.storage(),
        &v,
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .unwrap();
    let kp = key_package(&member.provider, &member.signer, false).unwrap();
    let out = g_admin
        .add_members(&admin.provider, &admin.signer, &v, &[kp])
        .unwrap();
    g_admin.commit_accepted(&admin.provider).unwrap();
    let mut g_member =
        ClientGroup::join(&member.provider, &v, &out.welcome.unwrap(), None).unwrap();
    let _ = relay;

    let mut lengths = BTreeMap::new();
    for len in [
        0usize, 1, 40, 100, 123, 124, 200, 300, 379, 380, 1000, 1800, 5000, 70_000,
    ] {
        let body = vec![b'x'; len];
        let ct = g_admin
            .encrypt(&admin.provider, &admin.signer, LABEL, &body)
            .unwrap();
        let (plaintext, ..) =
            expect_application(g_member.process(&member.provider, &v, &ct).unwrap());
        assert_eq!(plaintext, body);
        lengths
            .entry(padding_bucket(len))
            .or_insert_with(BTreeSet::new)
            .insert(ct.len());
    }
    // One ciphertext length per bucket ...
    assert!(lengths.values().all(|l| l.len() == 1), "{lengths:?}");
    assert_eq!(
        lengths.keys().copied().collect::<Vec<_>>(),
        vec![256, 512, 1024, 2048, 8192, 128 << 10]
    );
    // ... and it is the bucket plus a fixed header (the length prefix grows once,
    // at 16 KiB).
    let overhead: BTreeSet<i64> = lengths
        .iter()
        .filter(|(bucket, _)| **bucket < 16 << 10)
        .map(|(bucket, l)| *l.first().unwrap() as i64 - *bucket as i64)
        .collect();
    assert_eq!(overhead.len(), 1, "{lengths:?}");
}

/// While the hub's removal of a member is pending, every commit must include it:
/// a self-update without it (the member to be removed, or anyone else who did not
/// process the proposal) is refused, also by a relay that reloaded the group; the
/// commit of the pending proposals is accepted.
#[test]
fn commits_must_include_the_hubs_pending_removals() {
    use crate::mls_storage::{KringProvider, MemoryKv};

    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let member = mint(&mut v, "liaison@nctv");
    let other = mint(&mut v, "analist@post-a");
    let member_p = KringProvider::new(MemoryKv::new());
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, mut g_member, mut g_other, mut relay) =
        three_members(&v, &hub, &admin, &member, &member_p, &other, &relay_p);
    let epoch = relay.epoch();
    let proposal = relay
        .propose_remove(
            relay_p.crypto(),
            relay_p.storage(),
            &v,
            &hub.signer,
            &other.id,
        )
        .unwrap();
    assert_eq!(relay.pending_hub_removals().len(), 1);

    // The member to be removed keeps updating its leaf: refused.
    let update = g_other
        .self_update(&other.provider, &other.signer, &v)
        .unwrap();
    assert_eq!(
        relay
            .process_handshake(relay_p.crypto(), &v, &update.commit)
            .unwrap_err(),
        MlsError::UncommittedRemovals(other.id.clone())
    );
    // So is anyone else's commit that leaves the removal out, also at a relay
    // that loaded the group from storage.
    let update = g_member.self_update(&member_p, &member.signer, &v).unwrap();
    let reloaded = RelayGroup::load(relay_p.storage(), COMMUNITY)
        .unwrap()
        .unwrap();
    assert_eq!(
        reloaded.pending_hub_removals(),
        relay.pending_hub_removals()
    );
    for r in [&relay, &reloaded] {
        assert_eq!(
            r.process_handshake(relay_p.crypto(), &v, &update.commit)
                .unwrap_err(),
            MlsError::UncommittedRemovals(other.id.clone())
        );
    }
    g_member.commit_refused(&member_p).unwrap();
    assert_eq!(relay.epoch(), epoch);

    // Committing the pending proposals is accepted, and clears them.
    expect_removal(g_admin.process(&admin.provider, &v, &proposal).unwrap());
    let out = g_admin
        .commit_pending_proposals(&admin.provider, &admin.signer, &v)
        .unwrap()
        .unwrap();
    let verified = relay
        .process_handshake(relay_p.crypto(), &v, &out.commit)
        .unwrap();
    relay.merge(relay_p.storage(), verified).unwrap();
    assert!(relay.pending_hub_removals().is_empty());
    assert_eq!(relay.epoch(), epoch + 1);
    assert_eq!(ids(&relay.members(&v).unwrap()), set(&[&admin, &member]));
}

fn expect_removal(received: Received) {
    assert!(
        matches!(received, Received::RemovalProposal(_)),
        "{received:?}"
    );
}

/// An update path keeps the committer's certificate: a self-update carrying
/// another (valid) certificate of the same member and key is refused by relays
/// and members.
#[test]
fn a_self_update_cannot_swap_the_certificate() {
    use openmls::prelude::LeafNodeParameters;

    let mut v = TestValidator::default();
    let hub = mint(&mut v, "bz");
    let admin = mint(&mut v, "admin@bz");
    let other = mint(&mut v, "analist@post-a");
    // Two certificates of one member over one key, both trusted.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = |unit: &str| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "liaison@nctv");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, unit);
        params.self_signed(&key).unwrap().der().to_vec()
    };
    let (first, second) = (cert("one"), cert("two"));
    assert_ne!(first, second);
    for c in [&first, &second] {
        v.trusted.insert(c.clone(), "liaison@nctv".into());
    }
    let member = Actor {
        id: "liaison@nctv".into(),
        provider: OpenMlsRustCrypto::default(),
        signer: CertSigner::from_pkcs8(vec![first], &key.serialize_der()).unwrap(),
    };
    let renewed = CertSigner::from_pkcs8(vec![second], &key.serialize_der()).unwrap();
    let member_p = crate::mls_storage::KringProvider::new(crate::mls_storage::MemoryKv::new());
    let relay_p = OpenMlsRustCrypto::default();
    let (mut g_admin, mut g_member, _g_other, relay) =
        three_members(&v, &hub, &admin, &member, &member_p, &other, &relay_p);

    let bundle = g_member
        .mls_group_mut()
        .commit_builder()
        .consume_proposal_store(false)
        .force_self_update(true)
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_credential_with_key(renewed.credential_with_key().unwrap())
                .build(),
        )
        .load_psks(member_p.storage())
        .unwrap()
        .build(member_p.rand(), member_p.crypto(), &member.signer, |_| {
            false
        })
        .unwrap()
        .stage_commit(&member_p)
        .unwrap();
    let forged = bundle.into_messages().0.to_bytes().unwrap();
    let refused = relay
        .process_handshake(relay_p.crypto(), &v, &forged)
        .unwrap_err();
    assert!(
        matches!(&refused, MlsError::Forbidden(r) if r.contains("certificate")),
        "{refused}"
    );
    assert!(matches!(
        g_admin.process(&admin.provider, &v, &forged),
        Err(MlsError::Forbidden(r)) if r.contains("certificate")
    ));
}
