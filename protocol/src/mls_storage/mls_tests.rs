//! End-to-end tests: real openmls groups on [`KringProvider`] over [`MemoryKv`],
//! with every member's process "restarted" (provider, signer and group dropped,
//! then reloaded from a copy of the backend) between steps.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;

use super::{KringProvider, MemoryKv};

const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const GROUP_ID: &[u8] = b"desinformatie@bz";

/// One member's process: its provider (and so its storage), signer and
/// credential.
struct Process {
    provider: KringProvider<MemoryKv>,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Process {
    fn start(name: &str) -> Self {
        let provider = KringProvider::new(MemoryKv::new());
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            credential,
        }
    }

    /// Drops everything in memory and starts again from a copy of the backend's
    /// entries, as a process does after a restart. The signer comes back from
    /// storage too.
    fn restart(self) -> Self {
        let Self {
            provider,
            signer,
            credential,
        } = self;
        let entries = provider.backend().snapshot().unwrap();
        let public_key = signer.to_public_vec();
        drop(provider);
        drop(signer);

        let provider = KringProvider::new(MemoryKv::from_entries(entries));
        let signer = SignatureKeyPair::read(
            provider.storage(),
            &public_key,
            CIPHERSUITE.signature_algorithm(),
        )
        .expect("the signature key pair was persisted");
        Self {
            provider,
            signer,
            credential,
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .unwrap()
            .key_package()
            .clone()
    }

    fn create_group(&self) -> MlsGroup {
        MlsGroup::builder()
            .with_group_id(GroupId::from_slice(GROUP_ID))
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .build(&self.provider, &self.signer, self.credential.clone())
            .unwrap()
    }

    fn join(&self, welcome: &MlsMessageOut) -> MlsGroup {
        let MlsMessageBodyIn::Welcome(welcome) = over_the_wire(welcome).extract() else {
            panic!("expected a welcome message");
        };
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .build();
        StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .unwrap()
            .into_group(&self.provider)
            .unwrap()
    }

    fn load(&self) -> MlsGroup {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(GROUP_ID))
            .unwrap()
            .expect("the group was persisted")
    }

    fn send(&self, group: &mut MlsGroup, text: &str) -> MlsMessageOut {
        group
            .create_message(&self.provider, &self.signer, text.as_bytes())
            .unwrap()
    }

    fn receive(&self, group: &mut MlsGroup, message: &MlsMessageOut) -> ProcessedMessageContent {
        let message = over_the_wire(message).try_into_protocol_message().unwrap();
        group
            .process_message(&self.provider, message)
            .unwrap()
            .into_content()
    }

    fn receive_text(&self, group: &mut MlsGroup, message: &MlsMessageOut) -> String {
        match self.receive(group, message) {
            ProcessedMessageContent::ApplicationMessage(app) => {
                String::from_utf8(app.into_bytes()).unwrap()
            }
            other => panic!("expected an application message, got {other:?}"),
        }
    }

    fn receive_commit(&self, group: &mut MlsGroup, message: &MlsMessageOut) {
        match self.receive(group, message) {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group.merge_staged_commit(&self.provider, *staged).unwrap();
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }
}

/// Serialises and parses a message, as the network does.
fn over_the_wire(message: &MlsMessageOut) -> MlsMessageIn {
    let bytes = message.tls_serialize_detached().unwrap();
    MlsMessageIn::tls_deserialize_exact(bytes).unwrap()
}

fn member_names(group: &MlsGroup) -> Vec<String> {
    group
        .members()
        .map(|m| {
            let basic = BasicCredential::try_from(m.credential).unwrap();
            String::from_utf8(basic.identity().to_vec()).unwrap()
        })
        .collect()
}

/// Alice creates the group and adds Bob, who restarts between publishing his
/// key package and receiving the welcome (so his private init key must come
/// from storage).
fn alice_and_bob() -> (Process, MlsGroup, Process, MlsGroup) {
    let alice = Process::start("alice@bz");
    let bob = Process::start("bob@nctv");
    let bob_key_package = bob.key_package();
    let bob = bob.restart();

    let mut alice_group = alice.create_group();
    let (_commit, welcome, _) = alice_group
        .add_members(&alice.provider, &alice.signer, &[bob_key_package])
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    let bob_group = bob.join(&welcome);
    (alice, alice_group, bob, bob_group)
}

#[test]
fn groups_survive_restarts_and_keep_messaging() {
    let (alice, mut alice_group, bob, mut bob_group) = alice_and_bob();
    assert_eq!(alice_group.epoch(), bob_group.epoch());

    let m = alice.send(&mut alice_group, "first notice");
    assert_eq!(bob.receive_text(&mut bob_group, &m), "first notice");
    let m = bob.send(&mut bob_group, "first reply");
    assert_eq!(alice.receive_text(&mut alice_group, &m), "first reply");

    // Both processes restart: every in-memory object is dropped.
    let epoch = alice_group.epoch();
    let alice_index = alice_group.own_leaf_index();
    let bob_index = bob_group.own_leaf_index();
    let confirmation_tag = alice_group.confirmation_tag().clone();
    drop(alice_group);
    drop(bob_group);
    let alice = alice.restart();
    let bob = bob.restart();
    let mut alice_group = alice.load();
    let mut bob_group = bob.load();
    assert_eq!(alice_group.epoch(), epoch);
    assert_eq!(bob_group.epoch(), epoch);
    assert_eq!(alice_group.own_leaf_index(), alice_index);
    assert_eq!(bob_group.own_leaf_index(), bob_index);
    assert_eq!(alice_group.confirmation_tag(), &confirmation_tag);
    assert_eq!(member_names(&alice_group), member_names(&bob_group));
    assert!(alice_group.is_active() && bob_group.is_active());

    // Messaging continues, with sender ratchets carried over the restart.
    let m = alice.send(&mut alice_group, "second notice");
    assert_eq!(bob.receive_text(&mut bob_group, &m), "second notice");
    let m = bob.send(&mut bob_group, "second reply");
    assert_eq!(alice.receive_text(&mut alice_group, &m), "second reply");

    // A message sent before the receiver restarts is read after it.
    let m = alice.send(&mut alice_group, "in flight");
    drop(bob_group);
    let bob = bob.restart();
    let mut bob_group = bob.load();
    assert_eq!(bob.receive_text(&mut bob_group, &m), "in flight");

    // A self-update commit (new own leaf node and encryption keys), with the
    // committer restarting before it merges its pending commit.
    let bundle = bob_group
        .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
        .unwrap();
    let commit = bundle.commit().clone();
    drop(bob_group);
    let bob = bob.restart();
    let mut bob_group = bob.load();
    assert!(
        bob_group.pending_commit().is_some(),
        "pending commit persisted"
    );
    bob_group.merge_pending_commit(&bob.provider).unwrap();
    alice.receive_commit(&mut alice_group, &commit);
    assert_eq!(alice_group.epoch(), bob_group.epoch());
    assert_eq!(alice_group.epoch().as_u64(), epoch.as_u64() + 1);

    drop(alice_group);
    let alice = alice.restart();
    let mut alice_group = alice.load();
    let m = bob.send(&mut bob_group, "after update");
    assert_eq!(alice.receive_text(&mut alice_group, &m), "after update");
    let m = alice.send(&mut alice_group, "after update too");
    assert_eq!(bob.receive_text(&mut bob_group, &m), "after update too");
}

#[test]
fn removed_member_stays_removed_after_restart() {
    let (alice, mut alice_group, bob, mut bob_group) = alice_and_bob();
    let bob_index = bob_group.own_leaf_index();

    let (commit, welcome, _) = alice_group
        .remove_members(&alice.provider, &alice.signer, &[bob_index])
        .unwrap();
    assert!(welcome.is_none());
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    bob.receive_commit(&mut bob_group, &commit);
    assert!(!bob_group.is_active(), "bob learns he was removed");

    drop(alice_group);
    drop(bob_group);
    let alice = alice.restart();
    let bob = bob.restart();
    let mut alice_group = alice.load();
    let bob_group = bob.load();
    assert_eq!(alice_group.members().count(), 1);
    assert!(alice_group.is_active());
    assert!(!bob_group.is_active(), "removal persisted for bob");

    // Alice can still use the group; Bob cannot.
    let m = alice.send(&mut alice_group, "alone");
    let mut bob_group = bob_group;
    assert!(
        bob_group
            .create_message(&bob.provider, &bob.signer, b"still here?")
            .is_err()
    );
    let parsed = over_the_wire(&m).try_into_protocol_message().unwrap();
    assert!(bob_group.process_message(&bob.provider, parsed).is_err());
}

#[test]
fn pending_proposals_survive_restart() {
    let alice = Process::start("alice@bz");
    let bob = Process::start("bob@nctv");
    let carol = Process::start("carol@aivd");
    let mut alice_group = alice.create_group();
    let (_commit, welcome, _) = alice_group
        .add_members(
            &alice.provider,
            &alice.signer,
            &[bob.key_package(), carol.key_package()],
        )
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    let mut bob_group = bob.join(&welcome);
    let mut carol_group = carol.join(&welcome);
    let carol_index = carol_group.own_leaf_index();

    // Bob proposes removing Carol; Alice and Carol queue the proposal.
    let (proposal, proposal_ref) = bob_group
        .propose_remove_member(&bob.provider, &bob.signer, carol_index)
        .unwrap();
    for (process, group) in [(&alice, &mut alice_group), (&carol, &mut carol_group)] {
        match process.receive(group, &proposal) {
            ProcessedMessageContent::ProposalMessage(queued) => {
                assert_eq!(queued.proposal_reference_ref(), &proposal_ref);
                group
                    .store_pending_proposal(process.provider.storage(), *queued)
                    .unwrap();
            }
            other => panic!("expected a proposal, got {other:?}"),
        }
    }

    // Everyone restarts; the queued proposal is still there for all three.
    drop((alice_group, bob_group, carol_group));
    let (alice, bob, carol) = (alice.restart(), bob.restart(), carol.restart());
    let (mut alice_group, mut bob_group, mut carol_group) =
        (alice.load(), bob.load(), carol.load());
    for group in [&alice_group, &bob_group, &carol_group] {
        let refs: Vec<_> = group
            .pending_proposals()
            .map(|p| p.proposal_reference_ref().clone())
            .collect();
        assert_eq!(refs, vec![proposal_ref.clone()]);
    }

    // Alice commits the queued proposal; Bob and Carol process the commit.
    let (commit, _, _) = alice_group
        .commit_to_pending_proposals(&alice.provider, &alice.signer)
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    bob.receive_commit(&mut bob_group, &commit);
    carol.receive_commit(&mut carol_group, &commit);
    assert!(!carol_group.is_active());
    assert_eq!(alice_group.members().count(), 2);
    assert_eq!(alice_group.pending_proposals().count(), 0);

    // The queue is empty in storage too.
    drop((alice_group, bob_group));
    let (alice, bob) = (alice.restart(), bob.restart());
    let (mut alice_group, mut bob_group) = (alice.load(), bob.load());
    assert_eq!(alice_group.pending_proposals().count(), 0);
    assert_eq!(bob_group.pending_proposals().count(), 0);
    let m = alice.send(&mut alice_group, "without carol");
    assert_eq!(bob.receive_text(&mut bob_group, &m), "without carol");
}

#[test]
fn stored_entries_are_namespaced_msgpack() {
    let (alice, mut alice_group, bob, _bob_group) = alice_and_bob();
    let _ = alice.send(&mut alice_group, "something");

    for process in [&alice, &bob] {
        let entries = process.provider.backend().snapshot().unwrap();
        assert!(!entries.is_empty());
        let mut labels = std::collections::BTreeSet::new();
        for (key, value) in &entries {
            // LABEL 0x00 VERSION JSON(key)
            let nul = key.iter().position(|b| *b == 0).expect("a label separator");
            let label = std::str::from_utf8(&key[..nul]).unwrap();
            assert!(label.chars().all(|c| c.is_ascii_alphabetic()), "{label}");
            assert_eq!(
                &key[nul + 1..nul + 3],
                &openmls_traits::storage::CURRENT_VERSION.to_be_bytes()
            );
            serde_json::from_slice::<serde_json::Value>(&key[nul + 3..])
                .unwrap_or_else(|e| panic!("{label} key is not JSON: {e}"));
            let (&marker, body) = value.split_first().expect("a non-empty value");
            assert_eq!(marker, 0xC1, "{label} value is not marked MessagePack");
            rmp_serde::from_slice::<serde::de::IgnoredAny>(body)
                .unwrap_or_else(|e| panic!("{label} value is not MessagePack: {e}"));
            labels.insert(label.to_string());
        }
        for expected in [
            "Tree",
            "GroupContext",
            "InterimTranscriptHash",
            "ConfirmationTag",
            "GroupState",
            "EpochSecrets",
            "MessageSecrets",
            "ResumptionPsk",
            "OwnLeafNodeIndex",
            "MlsGroupJoinConfig",
            "SignatureKeyPair",
            "EpochKeyPairs",
        ] {
            assert!(
                labels.contains(expected),
                "{expected} missing from {labels:?}"
            );
        }
    }
}

#[test]
fn deleted_group_is_gone_after_restart() {
    let (alice, mut alice_group, _bob, _bob_group) = alice_and_bob();
    alice_group.delete(alice.provider.storage()).unwrap();
    drop(alice_group);
    let alice = alice.restart();
    let loaded = MlsGroup::load(alice.provider.storage(), &GroupId::from_slice(GROUP_ID)).unwrap();
    assert!(loaded.is_none());
    // Only key material not owned by the group (the signature key) remains.
    let entries = alice.provider.backend().snapshot().unwrap();
    for key in entries.keys() {
        assert!(
            key.starts_with(b"SignatureKeyPair\0") || key.starts_with(b"EpochKeyPairs\0"),
            "left behind: {}",
            String::from_utf8_lossy(key)
        );
    }
}
