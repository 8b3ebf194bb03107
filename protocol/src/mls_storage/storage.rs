//! [`KvStorage`]: the openmls storage provider over a [`KvBackend`].
//!
//! A port of `openmls_memory_storage` 0.6 to an arbitrary key-value backend, with
//! the same observable semantics: single values are replaced by writes, list
//! values (own leaf nodes, the proposal queue) are appended to and have single
//! items removed, and reads of missing lists return an empty list.

use std::fmt;
use std::iter;
use std::sync::{Mutex, MutexGuard, PoisonError};

use openmls_traits::storage::CURRENT_VERSION;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::backend::{KvBackend, KvBatch};
use super::compact::{Compact, CompactDe};
use super::error::MlsStorageError;

/// The longest encoded storage key accepted, in bytes (label, version and JSON
/// of the openmls key).
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// The longest encoded value accepted or read back, in bytes. Ratchet trees of
/// large groups are the biggest values: a tree at the protocol's limit
/// (`mls::MAX_GROUP_STATE_BYTES`, 8 MiB in TLS encoding) takes a little more in
/// MessagePack (field names), and about 3.6 times as much in the JSON of earlier
/// versions, which must still be read.
pub const MAX_VALUE_LEN: usize = 32 * 1024 * 1024;

/// The most items a list-valued entry (a group's proposal queue or own leaf
/// nodes) may hold.
pub const MAX_LIST_LEN: usize = 10_000;

type Result<T> = std::result::Result<T, MlsStorageError>;

/// Storage labels: the kind of each entry, the first part of its key.
///
/// Labels are ASCII without NUL bytes, so the NUL that follows a label in a key
/// makes keys of different labels distinct.
mod label {
    pub(super) const KEY_PACKAGE: &str = "KeyPackage";
    pub(super) const PSK: &str = "Psk";
    pub(super) const ENCRYPTION_KEY_PAIR: &str = "EncryptionKeyPair";
    pub(super) const SIGNATURE_KEY_PAIR: &str = "SignatureKeyPair";
    pub(super) const EPOCH_KEY_PAIRS: &str = "EpochKeyPairs";

    // Public group state.
    pub(super) const TREE: &str = "Tree";
    pub(super) const GROUP_CONTEXT: &str = "GroupContext";
    pub(super) const INTERIM_TRANSCRIPT_HASH: &str = "InterimTranscriptHash";
    pub(super) const CONFIRMATION_TAG: &str = "ConfirmationTag";

    // Private group state.
    pub(super) const JOIN_CONFIG: &str = "MlsGroupJoinConfig";
    pub(super) const OWN_LEAF_NODES: &str = "OwnLeafNodes";
    pub(super) const GROUP_STATE: &str = "GroupState";
    pub(super) const QUEUED_PROPOSAL: &str = "QueuedProposal";
    pub(super) const PROPOSAL_QUEUE_REFS: &str = "ProposalQueueRefs";
    pub(super) const OWN_LEAF_NODE_INDEX: &str = "OwnLeafNodeIndex";
    pub(super) const EPOCH_SECRETS: &str = "EpochSecrets";
    pub(super) const RESUMPTION_PSK_STORE: &str = "ResumptionPsk";
    pub(super) const MESSAGE_SECRETS: &str = "MessageSecrets";

    /// Every label, for tests that check the key layout.
    #[cfg(test)]
    pub(super) const ALL: &[&str] = &[
        KEY_PACKAGE,
        PSK,
        ENCRYPTION_KEY_PAIR,
        SIGNATURE_KEY_PAIR,
        EPOCH_KEY_PAIRS,
        TREE,
        GROUP_CONTEXT,
        INTERIM_TRANSCRIPT_HASH,
        CONFIRMATION_TAG,
        JOIN_CONFIG,
        OWN_LEAF_NODES,
        GROUP_STATE,
        QUEUED_PROPOSAL,
        PROPOSAL_QUEUE_REFS,
        OWN_LEAF_NODE_INDEX,
        EPOCH_SECRETS,
        RESUMPTION_PSK_STORE,
        MESSAGE_SECRETS,
    ];
}

/// The openmls storage provider
/// ([`StorageProvider`](openmls_traits::storage::StorageProvider) for the current storage
/// version, and through openmls' blanket impl also
/// [`PublicStorageProvider`](openmls_traits::public_storage::PublicStorageProvider))
/// keeping its entries in a [`KvBackend`].
///
/// Values are MessagePack (see the module's storage layout). Updates of list entries are read-modify-write and are
/// serialised by a lock inside this value, so share one `KvStorage` (for example
/// through a [`KringProvider`](super::KringProvider)) rather than opening two
/// over the same backend; updates that touch several keys go to the backend as
/// one atomic [`KvBackend::apply`] batch.
pub struct KvStorage<B> {
    backend: B,
    /// Serialises read-modify-write updates of list entries.
    list_lock: Mutex<()>,
}

impl<B> fmt::Debug for KvStorage<B> {
    // The backend holds private keys and some backends (sled) print their
    // contents in `Debug`: print nothing of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStorage")
            .field("backend", &std::any::type_name::<B>())
            .finish_non_exhaustive()
    }
}

impl<B: KvBackend> KvStorage<B> {
    /// Creates a storage provider keeping its entries in `backend`. Entries
    /// already in the backend (written by an earlier `KvStorage`) are used as
    /// they are, which is how groups survive a restart.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            list_lock: Mutex::new(()),
        }
    }

    /// Returns the backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Returns the backend, consuming the storage provider.
    pub fn into_backend(self) -> B {
        self.backend
    }

    fn lock_lists(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, so a panic while it was held left nothing
        // half-updated in memory: a poisoned lock is safe to take over.
        self.list_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.backend
            .get(key)
            .map_err(|e| MlsStorageError::backend("read", e))
    }

    fn apply(&self, batch: KvBatch) -> Result<()> {
        self.backend
            .apply(batch)
            .map_err(|e| MlsStorageError::backend("write batch", e))
    }

    /// Stores `value` under `(label, key)`, replacing any previous value.
    fn write<K, V>(&self, label: &'static str, key: &K, value: &V) -> Result<()>
    where
        K: Serialize + ?Sized,
        V: Serialize + ?Sized,
    {
        let key = storage_key(label, key)?;
        let value = encode(label, value)?;
        self.backend
            .insert(&key, value)
            .map_err(|e| MlsStorageError::backend("write", e))
    }

    /// Reads the value under `(label, key)`.
    fn read<K, V>(&self, label: &'static str, key: &K) -> Result<Option<V>>
    where
        K: Serialize + ?Sized,
        V: DeserializeOwned,
    {
        let key = storage_key(label, key)?;
        self.get_raw(&key)?
            .map(|bytes| decode(label, &bytes))
            .transpose()
    }

    /// Removes the value under `(label, key)`.
    fn delete<K: Serialize + ?Sized>(&self, label: &'static str, key: &K) -> Result<()> {
        let key = storage_key(label, key)?;
        self.backend
            .remove(&key)
            .map_err(|e| MlsStorageError::backend("delete", e))
    }

    /// Reads the list under `(label, key)`; a missing list is empty.
    fn read_list<K, V>(&self, label: &'static str, key: &K) -> Result<Vec<V>>
    where
        K: Serialize + ?Sized,
        V: DeserializeOwned,
    {
        Ok(self.read(label, key)?.unwrap_or_default())
    }

    /// Reads the list stored under the full storage key `list_key`.
    fn read_list_at<V: DeserializeOwned>(
        &self,
        label: &'static str,
        list_key: &[u8],
    ) -> Result<Vec<V>> {
        match self.get_raw(list_key)? {
            Some(bytes) => decode(label, &bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Returns the encoding of the list under `list_key` with `item` appended.
    /// The caller must hold the list lock.
    fn appended<V>(&self, label: &'static str, list_key: &[u8], item: &V) -> Result<Vec<u8>>
    where
        V: Serialize + DeserializeOwned,
    {
        let items: Vec<V> = self.read_list_at(label, list_key)?;
        if items.len() >= MAX_LIST_LEN {
            return Err(MlsStorageError::ListFull {
                what: label,
                max: MAX_LIST_LEN,
            });
        }
        encode(
            label,
            &Appended {
                items: &items,
                item,
            },
        )
    }

    /// Returns the encoding of the list under `list_key` with the first item
    /// equal to `item` removed, or `None` if the list ends up empty (the entry is
    /// then removed, which reads back as an empty list). The caller must hold
    /// the list lock.
    fn without<V>(&self, label: &'static str, list_key: &[u8], item: &V) -> Result<Option<Vec<u8>>>
    where
        V: Serialize + DeserializeOwned,
    {
        let mut items: Vec<V> = self.read_list_at(label, list_key)?;
        // Items are compared by their encoding, as openmls_memory_storage does.
        let target = encode(label, item)?;
        let mut position = None;
        for (index, stored) in items.iter().enumerate() {
            if encode(label, stored)? == target {
                position = Some(index);
                break;
            }
        }
        if let Some(index) = position {
            items.remove(index);
        }
        if items.is_empty() {
            Ok(None)
        } else {
            encode(label, &items).map(Some)
        }
    }

    /// Appends `item` to the list under `(label, key)`.
    fn append<K, V>(&self, label: &'static str, key: &K, item: &V) -> Result<()>
    where
        K: Serialize + ?Sized,
        V: Serialize + DeserializeOwned,
    {
        let _lists = self.lock_lists();
        let list_key = storage_key(label, key)?;
        let value = self.appended(label, &list_key, item)?;
        self.apply(vec![(list_key, Some(value))])
    }
}

/// Encodes the storage key of entry `key` of kind `label`:
/// `label || 0x00 || version (big endian) || JSON(key)`.
fn storage_key<K: Serialize + ?Sized>(label: &'static str, key: &K) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(label.len() + 3 + 64);
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    out.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    serde_json::to_writer(&mut out, key).map_err(|source| MlsStorageError::Encode {
        what: label,
        source: source.into(),
    })?;
    if out.len() > MAX_KEY_LEN {
        return Err(MlsStorageError::KeyTooLarge {
            what: label,
            len: out.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(out)
}

/// The first byte of every value this version writes: MessagePack follows.
///
/// `0xC1` is the one byte MessagePack never uses and cannot start UTF-8 text, so
/// a value of this format cannot be mistaken for text; [`decode`] refuses any
/// value that does not start with it.
const MSGPACK: u8 = 0xC1;

/// Encodes a value as `MSGPACK || MessagePack(value)`, within [`MAX_VALUE_LEN`].
///
/// Structs are maps keyed by field name (as in JSON), so openmls' stored types
/// may gain defaulted fields or reorder them between versions.
fn encode<V: Serialize + ?Sized>(label: &'static str, value: &V) -> Result<Vec<u8>> {
    let mut bytes = vec![MSGPACK];
    value
        .serialize(Compact(
            &mut rmp_serde::Serializer::new(&mut bytes).with_struct_map(),
        ))
        .map_err(|source| MlsStorageError::Encode {
            what: label,
            source: source.into(),
        })?;
    check_value_len(label, bytes.len())?;
    Ok(bytes)
}

/// Decodes a stored value (MessagePack behind the [`MSGPACK`] byte), refusing
/// values without that byte, over [`MAX_VALUE_LEN`], or with trailing bytes.
fn decode<V: DeserializeOwned>(label: &'static str, bytes: &[u8]) -> Result<V> {
    check_value_len(label, bytes.len())?;
    let decode_error = |source: Box<dyn std::error::Error + Send + Sync>| MlsStorageError::Decode {
        what: label,
        source,
    };
    let Some((&MSGPACK, body)) = bytes.split_first() else {
        return Err(decode_error(
            "not a value of this storage format (no MessagePack mark)".into(),
        ));
    };
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    let value = V::deserialize(CompactDe(&mut deserializer)).map_err(|e| decode_error(e.into()))?;
    let read = deserializer.position();
    if read != body.len() as u64 {
        return Err(decode_error(
            format!("{} bytes after the value", body.len() as u64 - read).into(),
        ));
    }
    Ok(value)
}

fn check_value_len(label: &'static str, len: usize) -> Result<()> {
    if len > MAX_VALUE_LEN {
        return Err(MlsStorageError::ValueTooLarge {
            what: label,
            len,
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// Serialises `items` followed by `item` as one sequence, without cloning.
struct Appended<'a, V> {
    items: &'a [V],
    item: &'a V,
}

impl<V: Serialize> Serialize for Appended<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.items.iter().chain(iter::once(self.item)))
    }
}

/// The openmls key of a group's encryption key pairs for one epoch and leaf.
fn epoch_key_pairs_key<'a, G, E>(
    group_id: &'a G,
    epoch: &'a E,
    leaf_index: u32,
) -> (&'a G, &'a E, u32) {
    (group_id, epoch, leaf_index)
}

mod provider_impl;

#[cfg(test)]
mod tests;
