//! Unit tests of [`KvStorage`] with small stand-in types, including a
//! differential test against `openmls_memory_storage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use openmls_rust_crypto::MemoryStorage;
use openmls_traits::storage::{CURRENT_VERSION, Entity, Key, StorageProvider, traits};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::super::{KvBackend, KvBatch, MemoryKv};
use super::*;

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
struct GroupId(Vec<u8>);
impl traits::GroupId<CURRENT_VERSION> for GroupId {}
impl Key<CURRENT_VERSION> for GroupId {}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone, Copy)]
struct ProposalRef(u64);
impl traits::ProposalRef<CURRENT_VERSION> for ProposalRef {}
impl Key<CURRENT_VERSION> for ProposalRef {}
impl Entity<CURRENT_VERSION> for ProposalRef {}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
struct Proposal(Vec<u8>);
impl traits::QueuedProposal<CURRENT_VERSION> for Proposal {}
impl Entity<CURRENT_VERSION> for Proposal {}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
struct Leaf {
    key: Vec<u8>,
    name: String,
}
impl traits::LeafNode<CURRENT_VERSION> for Leaf {}
impl Entity<CURRENT_VERSION> for Leaf {}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
struct Tree(Vec<u8>);
impl traits::TreeSync<CURRENT_VERSION> for Tree {}
impl traits::GroupContext<CURRENT_VERSION> for Tree {}
impl Entity<CURRENT_VERSION> for Tree {}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone, Copy)]
struct Epoch(u64);
impl traits::EpochKey<CURRENT_VERSION> for Epoch {}
impl Key<CURRENT_VERSION> for Epoch {}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
struct KeyPair(Vec<u8>);
impl traits::HpkeKeyPair<CURRENT_VERSION> for KeyPair {}
impl Entity<CURRENT_VERSION> for KeyPair {}

fn group(name: &str) -> GroupId {
    GroupId(name.as_bytes().to_vec())
}

/// A new storage over a copy of `storage`'s entries, as after a restart.
fn reopen(storage: &KvStorage<MemoryKv>) -> KvStorage<MemoryKv> {
    KvStorage::new(MemoryKv::from_entries(
        storage.backend().snapshot().unwrap(),
    ))
}

fn proposals(storage: &KvStorage<MemoryKv>, g: &GroupId) -> Vec<(ProposalRef, Proposal)> {
    storage.queued_proposals(g).unwrap()
}

fn keys_with_label(kv: &MemoryKv, label: &str) -> usize {
    let mut prefix = label.as_bytes().to_vec();
    prefix.push(0);
    kv.snapshot()
        .unwrap()
        .keys()
        .filter(|key| key.starts_with(&prefix))
        .count()
}

#[test]
fn proposal_queue_round_trip() {
    let g = group("desinformatie@bz");
    let other = group("cyber@nctv");
    let expected: Vec<(ProposalRef, Proposal)> = (0..10)
        .map(|i| {
            (
                ProposalRef(i),
                Proposal(format!("proposal {i}").into_bytes()),
            )
        })
        .collect();
    let mut storage = KvStorage::new(MemoryKv::new());
    for (r, p) in &expected {
        storage.queue_proposal(&g, r, p).unwrap();
    }
    storage
        .queue_proposal(&other, &ProposalRef(99), &Proposal(b"other".to_vec()))
        .unwrap();

    let refs: Vec<ProposalRef> = storage.queued_proposal_refs(&g).unwrap();
    assert_eq!(refs, (0..10).map(ProposalRef).collect::<Vec<_>>());
    assert_eq!(proposals(&storage, &g), expected);

    // The queue survives a restart, in order.
    storage = reopen(&storage);
    assert_eq!(proposals(&storage, &g), expected);

    // Remove one proposal: the rest stay in order, and its entry is gone.
    storage.remove_proposal(&g, &ProposalRef(5)).unwrap();
    let mut remaining = expected.clone();
    remaining.remove(5);
    assert_eq!(proposals(&storage, &g), remaining);
    assert_eq!(keys_with_label(storage.backend(), "QueuedProposal"), 10);
    // Removing an unknown proposal changes nothing.
    storage.remove_proposal(&g, &ProposalRef(42)).unwrap();
    assert_eq!(proposals(&storage, &g), remaining);

    // Clearing removes the queue and every proposal of the group, and only
    // that group's.
    storage
        .clear_proposal_queue::<GroupId, ProposalRef>(&g)
        .unwrap();
    let refs: Vec<ProposalRef> = storage.queued_proposal_refs(&g).unwrap();
    assert!(refs.is_empty());
    assert!(proposals(&storage, &g).is_empty());
    assert_eq!(keys_with_label(storage.backend(), "QueuedProposal"), 1);
    assert_eq!(
        proposals(&storage, &other),
        vec![(ProposalRef(99), Proposal(b"other".to_vec()))]
    );

    // Removing the last proposal leaves an empty queue.
    storage.remove_proposal(&other, &ProposalRef(99)).unwrap();
    assert!(proposals(&storage, &other).is_empty());
    assert!(storage.backend().is_empty().unwrap());
}

#[test]
fn own_leaf_nodes_append_and_delete() {
    let g = group("g");
    let mut storage = KvStorage::new(MemoryKv::new());
    let leaves: Vec<Leaf> = storage.own_leaf_nodes(&g).unwrap();
    assert!(leaves.is_empty());

    let a = Leaf {
        key: vec![1, 2, 3],
        name: "a".into(),
    };
    let b = Leaf {
        key: vec![4],
        name: "b".into(),
    };
    storage.append_own_leaf_node(&g, &a).unwrap();
    storage.append_own_leaf_node(&g, &b).unwrap();
    storage.append_own_leaf_node(&g, &a).unwrap();
    storage = reopen(&storage);
    let leaves: Vec<Leaf> = storage.own_leaf_nodes(&g).unwrap();
    assert_eq!(leaves, vec![a.clone(), b, a]);

    storage.delete_own_leaf_nodes(&g).unwrap();
    let leaves: Vec<Leaf> = storage.own_leaf_nodes(&g).unwrap();
    assert!(leaves.is_empty());
}

#[test]
fn epoch_key_pairs_are_per_group_epoch_and_leaf() {
    let g = group("g");
    let storage = KvStorage::new(MemoryKv::new());
    let pairs = vec![KeyPair(vec![1]), KeyPair(vec![2])];
    storage
        .write_encryption_epoch_key_pairs(&g, &Epoch(3), 1, &pairs)
        .unwrap();

    let read: Vec<KeyPair> = storage
        .encryption_epoch_key_pairs(&g, &Epoch(3), 1)
        .unwrap();
    assert_eq!(read, pairs);
    for (epoch, leaf) in [(3, 2), (4, 1)] {
        let read: Vec<KeyPair> = storage
            .encryption_epoch_key_pairs(&g, &Epoch(epoch), leaf)
            .unwrap();
        assert!(read.is_empty(), "epoch {epoch} leaf {leaf}");
    }
    let read: Vec<KeyPair> = storage
        .encryption_epoch_key_pairs(&group("h"), &Epoch(3), 1)
        .unwrap();
    assert!(read.is_empty());

    storage
        .delete_encryption_epoch_key_pairs(&g, &Epoch(3), 1)
        .unwrap();
    let read: Vec<KeyPair> = storage
        .encryption_epoch_key_pairs(&g, &Epoch(3), 1)
        .unwrap();
    assert!(read.is_empty());
}

#[test]
fn keys_are_namespaced_by_label_and_version() {
    let g = group("g");
    let storage = KvStorage::new(MemoryKv::new());
    storage.write_tree(&g, &Tree(b"tree".to_vec())).unwrap();
    storage
        .write_context(&g, &Tree(b"context".to_vec()))
        .unwrap();

    let tree: Option<Tree> = storage.tree(&g).unwrap();
    let context: Option<Tree> = storage.group_context(&g).unwrap();
    assert_eq!(tree, Some(Tree(b"tree".to_vec())));
    assert_eq!(context, Some(Tree(b"context".to_vec())));

    let entries = storage.backend().snapshot().unwrap();
    let mut expected_tree_key = b"Tree\0".to_vec();
    expected_tree_key.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    expected_tree_key.extend_from_slice(&serde_json::to_vec(&g).unwrap());
    // 0xC1, then MessagePack: the byte sequence as a bin 8 of length 4.
    assert_eq!(
        entries.get(&expected_tree_key),
        Some(&vec![0xC1, 0xC4, 4, b't', b'r', b'e', b'e'])
    );

    // No label is a prefix of another once the separator is included.
    for a in label::ALL {
        for b in label::ALL {
            if a != b {
                assert!(!format!("{b}\0").starts_with(&format!("{a}\0")));
            }
        }
        assert!(a.is_ascii() && !a.contains('\0'));
    }

    storage.delete_tree(&g).unwrap();
    let tree: Option<Tree> = storage.tree(&g).unwrap();
    assert_eq!(tree, None);
    let context: Option<Tree> = storage.group_context(&g).unwrap();
    assert!(context.is_some());
}

#[test]
fn corrupt_values_are_errors_not_panics() {
    let g = group("g");
    let storage = KvStorage::new(MemoryKv::new());
    let tree_key = storage_key(label::TREE, &g).unwrap();
    storage
        .backend()
        .insert(&tree_key, b"{not json".to_vec())
        .unwrap();
    let err = storage.tree::<GroupId, Tree>(&g).unwrap_err();
    assert!(
        matches!(err, MlsStorageError::Decode { what: "Tree", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");

    // A queue reference without its proposal.
    let refs_key = storage_key(label::PROPOSAL_QUEUE_REFS, &g).unwrap();
    storage
        .backend()
        .insert(&refs_key, encode("ProposalQueueRefs", &[7u64]).unwrap())
        .unwrap();
    let refs: Vec<ProposalRef> = storage.queued_proposal_refs(&g).unwrap();
    assert_eq!(refs, vec![ProposalRef(7)]);
    let err = storage
        .queued_proposals::<GroupId, ProposalRef, Proposal>(&g)
        .unwrap_err();
    assert!(
        matches!(err, MlsStorageError::Inconsistent { .. }),
        "{err:?}"
    );

    // A list that is not a list.
    let leaves_key = storage_key(label::OWN_LEAF_NODES, &g).unwrap();
    storage
        .backend()
        .insert(
            &leaves_key,
            encode("OwnLeafNodes", &BTreeMap::from([("a", 1)])).unwrap(),
        )
        .unwrap();
    let err = storage
        .append_own_leaf_node(
            &g,
            &Leaf {
                key: vec![],
                name: String::new(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, MlsStorageError::Decode { .. }), "{err:?}");
}

#[test]
fn values_without_the_msgpack_mark_are_refused() {
    let g = group("g");
    let storage = KvStorage::new(MemoryKv::new());
    let tree_key = storage_key(label::TREE, &g).unwrap();
    // JSON, as a store of another format would hold it.
    storage
        .backend()
        .insert(
            &tree_key,
            serde_json::to_vec(&Tree(b"old".to_vec())).unwrap(),
        )
        .unwrap();
    let err = storage.tree::<GroupId, Tree>(&g).unwrap_err();
    assert!(
        matches!(err, MlsStorageError::Decode { what: "Tree", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("MessagePack"), "{err}");
}

#[test]
fn truncated_or_padded_msgpack_values_are_errors() {
    let g = group("g");
    let storage = KvStorage::new(MemoryKv::new());
    storage.write_tree(&g, &Tree(b"tree".to_vec())).unwrap();
    let tree_key = storage_key(label::TREE, &g).unwrap();
    let good = storage.backend().get(&tree_key).unwrap().unwrap();
    for bad in [
        good[..good.len() - 1].to_vec(),
        [good.as_slice(), &[0]].concat(),
        vec![MSGPACK],
        vec![MSGPACK, MSGPACK],
    ] {
        storage.backend().insert(&tree_key, bad).unwrap();
        let err = storage.tree::<GroupId, Tree>(&g).unwrap_err();
        assert!(
            matches!(err, MlsStorageError::Decode { what: "Tree", .. }),
            "{err:?}"
        );
    }
}

#[test]
fn lists_are_bounded() {
    let g = group("g");
    let storage = KvStorage::new(MemoryKv::new());
    let refs_key = storage_key(label::PROPOSAL_QUEUE_REFS, &g).unwrap();
    let full: Vec<u64> = (0..MAX_LIST_LEN as u64).collect();
    storage
        .backend()
        .insert(&refs_key, encode("ProposalRefs", &full).unwrap())
        .unwrap();
    let err = storage
        .queue_proposal(&g, &ProposalRef(u64::MAX), &Proposal(vec![]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            MlsStorageError::ListFull {
                max: MAX_LIST_LEN,
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing of the refused proposal was stored.
    assert_eq!(keys_with_label(storage.backend(), "QueuedProposal"), 0);
    let refs: Vec<ProposalRef> = storage.queued_proposal_refs(&g).unwrap();
    assert_eq!(refs.len(), MAX_LIST_LEN);
}

#[test]
fn oversized_keys_and_values_are_refused() {
    let storage = KvStorage::new(MemoryKv::new());
    let huge_group = GroupId(vec![7; MAX_KEY_LEN]);
    let err = storage.write_tree(&huge_group, &Tree(vec![])).unwrap_err();
    assert!(
        matches!(err, MlsStorageError::KeyTooLarge { .. }),
        "{err:?}"
    );

    let g = group("g");
    let tree_key = storage_key(label::TREE, &g).unwrap();
    storage
        .backend()
        .insert(&tree_key, vec![b' '; MAX_VALUE_LEN + 1])
        .unwrap();
    let err = storage.tree::<GroupId, Tree>(&g).unwrap_err();
    assert!(
        matches!(err, MlsStorageError::ValueTooLarge { .. }),
        "{err:?}"
    );
}

/// A backend whose every operation fails.
#[derive(Debug)]
struct BrokenDisk;

#[derive(Debug, thiserror::Error)]
#[error("disk on fire")]
struct DiskOnFire;

impl KvBackend for BrokenDisk {
    type Error = DiskOnFire;
    fn get(&self, _: &[u8]) -> std::result::Result<Option<Vec<u8>>, DiskOnFire> {
        Err(DiskOnFire)
    }
    fn insert(&self, _: &[u8], _: Vec<u8>) -> std::result::Result<(), DiskOnFire> {
        Err(DiskOnFire)
    }
    fn remove(&self, _: &[u8]) -> std::result::Result<(), DiskOnFire> {
        Err(DiskOnFire)
    }
    fn apply(&self, _: KvBatch) -> std::result::Result<(), DiskOnFire> {
        Err(DiskOnFire)
    }
}

#[test]
fn backend_errors_are_reported_with_their_source() {
    let storage = KvStorage::new(BrokenDisk);
    let g = group("g");
    let cases = [
        (storage.write_tree(&g, &Tree(vec![])).unwrap_err(), "write"),
        (storage.tree::<GroupId, Tree>(&g).unwrap_err(), "read"),
        (storage.delete_tree(&g).unwrap_err(), "delete"),
        (
            storage
                .queue_proposal(&g, &ProposalRef(1), &Proposal(vec![]))
                .unwrap_err(),
            "read",
        ),
    ];
    for (err, expected_operation) in cases {
        match &err {
            MlsStorageError::Backend { operation, source } => {
                assert_eq!(*operation, expected_operation);
                assert!(source.downcast_ref::<DiskOnFire>().is_some());
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
}

#[test]
fn is_a_public_storage_provider() {
    fn public_tree<S>(storage: &S, g: &GroupId) -> Option<Tree>
    where
        S: openmls_traits::public_storage::PublicStorageProvider<
                CURRENT_VERSION,
                PublicError = MlsStorageError,
            >,
    {
        openmls_traits::public_storage::PublicStorageProvider::tree(storage, g).unwrap()
    }
    let g = group("g");
    let storage = KvStorage::new(Arc::new(MemoryKv::new()));
    openmls_traits::public_storage::PublicStorageProvider::write_tree(
        &storage,
        &g,
        &Tree(b"t".to_vec()),
    )
    .unwrap();
    assert_eq!(public_tree(&storage, &g), Some(Tree(b"t".to_vec())));
}

#[test]
fn debug_hides_the_backend() {
    let storage = KvStorage::new(MemoryKv::new());
    storage
        .write_tree(&group("id"), &Tree(b"very-secret".to_vec()))
        .unwrap();
    let printed = format!("{storage:?}");
    assert!(printed.contains("KvStorage"), "{printed}");
    assert!(printed.contains("MemoryKv"), "{printed}");
    // No byte of the stored value is printed.
    assert!(!printed.contains("118"), "{printed}"); // 'v' of the secret
}

// --- differential test against openmls_memory_storage ---

#[derive(Debug, Clone)]
enum Op {
    Queue {
        group: u8,
        payload: u8,
    },
    Remove {
        group: u8,
        reference: u64,
    },
    Clear {
        group: u8,
    },
    AppendLeaf {
        group: u8,
        name: u8,
    },
    DeleteLeaves {
        group: u8,
    },
    WriteTree {
        group: u8,
        value: u8,
    },
    DeleteTree {
        group: u8,
    },
    WriteEpochKeys {
        group: u8,
        epoch: u8,
        leaf: u8,
        keys: Vec<u8>,
    },
    DeleteEpochKeys {
        group: u8,
        epoch: u8,
        leaf: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let g = 0u8..3;
    prop_oneof![
        4 => (g.clone(), any::<u8>()).prop_map(|(group, payload)| Op::Queue { group, payload }),
        2 => (g.clone(), 0u64..40).prop_map(|(group, reference)| Op::Remove { group, reference }),
        1 => g.clone().prop_map(|group| Op::Clear { group }),
        3 => (g.clone(), any::<u8>()).prop_map(|(group, name)| Op::AppendLeaf { group, name }),
        1 => g.clone().prop_map(|group| Op::DeleteLeaves { group }),
        1 => (g.clone(), any::<u8>()).prop_map(|(group, value)| Op::WriteTree { group, value }),
        1 => g.clone().prop_map(|group| Op::DeleteTree { group }),
        2 => (g.clone(), 0u8..3, 0u8..2, proptest::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(group, epoch, leaf, keys)| Op::WriteEpochKeys { group, epoch, leaf, keys }),
        1 => (g, 0u8..3, 0u8..2)
            .prop_map(|(group, epoch, leaf)| Op::DeleteEpochKeys { group, epoch, leaf }),
        1 => Just(Op::Reopen),
    ]
}

fn gid(n: u8) -> GroupId {
    GroupId(vec![b'g', n])
}

/// Applies `op` to a storage provider; `next_ref` makes proposal references
/// unique, as openmls' hash references are.
fn run<S: StorageProvider<CURRENT_VERSION>>(storage: &S, op: &Op, next_ref: u64) {
    let ok = |r: std::result::Result<(), S::Error>| r.unwrap();
    match *op {
        Op::Queue { group, payload } => ok(storage.queue_proposal(
            &gid(group),
            &ProposalRef(next_ref),
            &Proposal(vec![payload]),
        )),
        Op::Remove { group, reference } => {
            ok(storage.remove_proposal(&gid(group), &ProposalRef(reference)))
        }
        Op::Clear { group } => {
            ok(storage.clear_proposal_queue::<GroupId, ProposalRef>(&gid(group)))
        }
        Op::AppendLeaf { group, name } => ok(storage.append_own_leaf_node(
            &gid(group),
            &Leaf {
                key: vec![name],
                name: format!("leaf {name}"),
            },
        )),
        Op::DeleteLeaves { group } => ok(storage.delete_own_leaf_nodes(&gid(group))),
        Op::WriteTree { group, value } => ok(storage.write_tree(&gid(group), &Tree(vec![value]))),
        Op::DeleteTree { group } => ok(storage.delete_tree(&gid(group))),
        Op::WriteEpochKeys {
            group,
            epoch,
            leaf,
            ref keys,
        } => {
            let pairs: Vec<KeyPair> = keys.iter().map(|k| KeyPair(vec![*k])).collect();
            ok(storage.write_encryption_epoch_key_pairs(
                &gid(group),
                &Epoch(epoch.into()),
                leaf.into(),
                &pairs,
            ))
        }
        Op::DeleteEpochKeys { group, epoch, leaf } => ok(storage
            .delete_encryption_epoch_key_pairs(&gid(group), &Epoch(epoch.into()), leaf.into())),
        Op::Reopen => {}
    }
}

type Observed = (
    Vec<ProposalRef>,
    Vec<(ProposalRef, Proposal)>,
    Vec<Leaf>,
    Option<Tree>,
    Vec<Vec<KeyPair>>,
);

fn observe<S: StorageProvider<CURRENT_VERSION>>(storage: &S) -> BTreeMap<u8, Observed>
where
    S::Error: std::fmt::Debug,
{
    (0u8..3)
        .map(|n| {
            let g = gid(n);
            let mut epochs = Vec::new();
            for epoch in 0u64..3 {
                for leaf in 0u32..2 {
                    epochs.push(
                        storage
                            .encryption_epoch_key_pairs(&g, &Epoch(epoch), leaf)
                            .unwrap(),
                    );
                }
            }
            let observed = (
                storage.queued_proposal_refs(&g).unwrap(),
                storage.queued_proposals(&g).unwrap(),
                storage.own_leaf_nodes(&g).unwrap(),
                storage.tree(&g).unwrap(),
                epochs,
            );
            (n, observed)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn behaves_like_openmls_memory_storage(ops in proptest::collection::vec(op(), 1..40)) {
        let reference = MemoryStorage::default();
        let mut storage = KvStorage::new(MemoryKv::new());
        for (i, op) in ops.iter().enumerate() {
            if matches!(op, Op::Reopen) {
                storage = reopen(&storage);
            }
            run(&reference, op, i as u64);
            run(&storage, op, i as u64);
            prop_assert_eq!(observe(&storage), observe(&reference), "after {:?}", op);
        }
    }
}
