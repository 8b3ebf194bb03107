//! The client's local state: one sled database in the profile's `state_dir`.
//!
//! Everything lives in one sled tree, under distinct key prefixes, so that a change
//! touching several kinds of state is one atomic sled batch:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `m/` | openmls storage key | openmls storage value ([`MlsKv`]) |
//! | `n/` | notice id (16 bytes) | [`StoredNotice`] as JSON |
//! | `c/` | community id | [`CommunityRecord`] as JSON |
//! | `s/` | community id | last processed sequence number (u64, big endian) |
//! | `p/` | community id | a commit sent to the hub whose outcome is not known yet ([`SentCommit`]) |
//! | `l/` | community id, 0, member id | when that member's leaf last changed, as seen here (Unix seconds, u64 big endian) |
//!
//! Processing a log entry must not half-happen: if the MLS state moved on (a key
//! ratchet consumed) but the decrypted notice was lost, the notice could never be
//! decrypted again. So MLS writes can be buffered ([`Store::begin`]) and committed
//! together with the notice and the new cursor ([`Store::commit`]) in one batch,
//! then flushed to disk.
//!
//! Every value is sealed with the archive's data key ([`crate::vault`]; the
//! database key is bound to it as associated data) on its way into sled and opened
//! on its way out (`SealedTree`): on disk, values are ciphertext; keys (record
//! kinds, notice and community ids, member ids, openmls storage keys) are not.
//! A sealed database holds a check value under `v/check`, so that a wrong data key
//! is told apart from a damaged record.
//!
//! Notice content is never logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use kring_protocol::mls_storage::{KvBackend, KvBatch};

use crate::notice::Notice;
use crate::vault::{DataKey, VaultError};

mod tree;

pub use tree::MlsKv;
use tree::{Overlay, SealedTree, Shared, open_tree, prefixed};

const MLS: &[u8] = b"m/";
const NOTICE: &[u8] = b"n/";
const COMMUNITY: &[u8] = b"c/";
const CURSOR: &[u8] = b"s/";
const SENT_COMMIT: &[u8] = b"p/";
const LEAF_TIME: &[u8] = b"l/";
/// The check value of a sealed database (a known plaintext under the data key).
const CHECK_KEY: &[u8] = b"v/check";
const CHECK_VALUE: &[u8] = b"kring sealed archive v1";
/// Longest key accepted by the MLS backend (openmls keys are far shorter).
const MAX_MLS_KEY: usize = 64 * 1024;
/// Largest stored value accepted when reading back (corruption guard).
const MAX_RECORD: usize = 4 * 1024 * 1024;
/// How long [`Store::open_sealed`] waits for another `kring` process to release the database.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error(
        "cannot open the local state in {path}: {reason}; check the directory's \
         permissions and that no other kring process (e.g. `kring notice watch`) keeps it open"
    )]
    Open {
        /// The state directory.
        path: String,
        /// The database's explanation.
        reason: String,
    },
    /// A read or write failed.
    #[error(
        "the local state database failed: {0}; check that the disk is not full and \
         the state directory is writable"
    )]
    Db(#[from] sled::Error),
    /// A stored record does not decode.
    #[error(
        "a stored {what} record is corrupt ({reason}); restore the state directory from \
         a backup"
    )]
    Corrupt {
        /// The kind of record.
        what: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// A buffered MLS transaction was begun twice or committed without beginning.
    #[error("internal error: {0}")]
    Transaction(&'static str),
    /// A thread panicked while holding the store's lock.
    #[error("the local state is unusable after an internal failure; restart kring")]
    Poisoned,
    /// A key handed to the MLS backend is unreasonably long.
    #[error("MLS storage key of {0} bytes is too long")]
    KeyTooLong(usize),
    /// A sealed value does not open (or cannot be sealed).
    #[error(
        "the local archive cannot be read: {0}; restore the state directory from a \
         backup"
    )]
    Sealed(#[from] VaultError),
    /// The data key does not open this database's check value.
    #[error(
        "the archive key in {path} does not belong to the local archive there; restore \
         both from the same backup"
    )]
    WrongKey {
        /// The state directory.
        path: String,
    },
    /// The database holds values in the clear (written before archives were sealed).
    #[error("the local state in {path} is not sealed")]
    NotSealed {
        /// The state directory.
        path: String,
    },
    /// The database is sealed, but its archive key file is missing.
    #[error(
        "the local state in {path} is encrypted, but its archive key (archive.key) is \
         missing; restore it from a backup, or delete the directory to start afresh"
    )]
    AlreadySealed {
        /// The state directory.
        path: String,
    },
}

/// A notice as kept locally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNotice {
    /// The notice.
    pub notice: Notice,
    /// Its sequence number in the community log (once known).
    pub seq: Option<u64>,
    /// Whether this device filed it.
    pub own: bool,
    /// When the hub ordered it (Unix seconds, from its log entry), once known: a
    /// community's retention period counts from then (from `filed_at` until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_at: Option<i64>,
}

/// A community this device is a member of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunityRecord {
    /// `NAME@HUB`.
    pub id: String,
    /// Canonical text of the community's maximum label.
    pub max_label: String,
    /// The MLS epoch at which this device joined (notices of earlier epochs were
    /// never meant for it).
    #[serde(default)]
    pub joined_epoch: u64,
    /// False once this device was removed from the community.
    #[serde(default = "active_default")]
    pub active: bool,
    /// The community's retention period in days (from its group context), if any:
    /// notices older than that are deleted from this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u16>,
}

fn active_default() -> bool {
    true
}

/// A commit this device sent to its community's hub, kept (with its pending MLS
/// commit) until its outcome is known, so that it can be sent again unchanged.
/// Written before the commit is sent: a pending commit without this record was
/// never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCommit {
    /// The epoch the commit was made in.
    pub epoch: u64,
    /// The commit (MLS message).
    pub message: Vec<u8>,
    /// The Welcome for the members it adds, if any.
    pub welcome: Option<Vec<u8>>,
}

impl SentCommit {
    /// `epoch (u64 BE) | message length (u64 BE) | message | welcome flag (1 byte) |
    /// welcome`.
    fn encode(&self) -> Vec<u8> {
        let welcome = self.welcome.as_deref();
        let mut out = Vec::with_capacity(17 + self.message.len() + welcome.map_or(0, <[u8]>::len));
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&(self.message.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.message);
        out.push(u8::from(welcome.is_some()));
        out.extend_from_slice(welcome.unwrap_or_default());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            what: "sent commit",
            reason: reason.to_string(),
        };
        let word = |at: usize| -> Result<u64, StoreError> {
            let b: [u8; 8] = bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("truncated"))?;
            Ok(u64::from_be_bytes(b))
        };
        let epoch = word(0)?;
        let len = usize::try_from(word(8)?).map_err(|_| corrupt("bad length"))?;
        let end = 16usize
            .checked_add(len)
            .ok_or_else(|| corrupt("bad length"))?;
        let message = bytes.get(16..end).ok_or_else(|| corrupt("truncated"))?;
        let welcome = match bytes.get(end) {
            Some(0) if bytes.len() == end + 1 => None,
            Some(1) => Some(bytes.get(end + 1..).unwrap_or_default().to_vec()),
            _ => return Err(corrupt("bad welcome flag")),
        };
        Ok(SentCommit {
            epoch,
            message: message.to_vec(),
            welcome,
        })
    }
}

/// Writes to commit atomically with buffered MLS state, built by the caller.
#[derive(Debug, Default)]
pub struct Batch {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a notice (the caller checked it is new).
    pub fn put_notice(&mut self, notice: &StoredNotice) -> Result<(), StoreError> {
        let value = serde_json::to_vec(notice).map_err(|e| StoreError::Corrupt {
            what: "notice",
            reason: e.to_string(),
        })?;
        self.writes
            .push((prefixed(NOTICE, notice.notice.id.as_bytes()), Some(value)));
        Ok(())
    }

    /// Deletes a stored notice (its retention period has passed).
    pub fn remove_notice(&mut self, id: Uuid) {
        self.writes.push((prefixed(NOTICE, id.as_bytes()), None));
    }

    /// Sets a community's processed sequence number.
    pub fn put_cursor(&mut self, community: &str, seq: u64) {
        self.writes.push((
            prefixed(CURSOR, community.as_bytes()),
            Some(seq.to_be_bytes().to_vec()),
        ));
    }

    /// Stores a community record.
    pub fn put_community(&mut self, record: &CommunityRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            what: "community",
            reason: e.to_string(),
        })?;
        self.writes
            .push((prefixed(COMMUNITY, record.id.as_bytes()), Some(value)));
        Ok(())
    }

    /// Remembers a commit sent (about to be sent) to the hub of `community`.
    pub fn put_sent_commit(&mut self, community: &str, sent: &SentCommit) {
        self.writes.push((
            prefixed(SENT_COMMIT, community.as_bytes()),
            Some(sent.encode()),
        ));
    }

    /// Forgets the commit sent to the hub of `community` (its outcome is known).
    pub fn remove_sent_commit(&mut self, community: &str) {
        self.writes
            .push((prefixed(SENT_COMMIT, community.as_bytes()), None));
    }

    /// Records when `member`'s leaf in `community` last changed (Unix seconds).
    pub fn put_leaf_time(&mut self, community: &str, member: &str, at: u64) {
        self.writes.push((
            leaf_time_key(community, member),
            Some(at.to_be_bytes().to_vec()),
        ));
    }

    /// Forgets when `member`'s leaf in `community` last changed (they left).
    pub fn remove_leaf_time(&mut self, community: &str, member: &str) {
        self.writes.push((leaf_time_key(community, member), None));
    }

    /// Forgets a community (its record and cursor).
    pub fn remove_community(&mut self, id: &str) {
        self.writes.push((prefixed(COMMUNITY, id.as_bytes()), None));
        self.writes.push((prefixed(CURSOR, id.as_bytes()), None));
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The local state database.
pub struct Store {
    shared: Arc<Shared>,
    mls: MlsKv,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir` with a fixed data key
    /// (unit tests of the store and what builds on it).
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_sealed(dir, DataKey::from_bytes([7; crate::vault::KEY_LEN]))
    }

    /// Opens (creating if needed) the database in `dir`, sealed with `key`, waiting
    /// up to [`LOCK_WAIT`] for another kring process to release it. A new database
    /// gets the check value; an existing one must hold it and it must open with
    /// `key` ([`StoreError::WrongKey`], [`StoreError::NotSealed`]).
    pub fn open_sealed(dir: &Path, key: DataKey) -> Result<Store, StoreError> {
        let tree = open_tree(dir)?;
        let key = Arc::new(key);
        SealedTree {
            tree: tree.clone(),
            key: Arc::clone(&key),
        }
        .check(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            key,
            tree: Mutex::new(Some(tree)),
            overlay: Mutex::new(None),
            defer_flush: std::sync::atomic::AtomicBool::new(false),
            mls_writes: std::sync::atomic::AtomicU64::new(0),
        });
        let mls = MlsKv {
            shared: Arc::clone(&shared),
        };
        Ok(Store { shared, mls })
    }

    /// Flushes and closes the database so that other kring processes of this user
    /// can use it (e.g. while `kring notice watch` waits); the next access reopens
    /// it. Does nothing while MLS writes are buffered.
    pub fn release(&self) -> Result<(), StoreError> {
        if self.in_transaction()? {
            return Ok(());
        }
        let mut guard = self.shared.tree.lock().map_err(|_| StoreError::Poisoned)?;
        if let Some(tree) = guard.take() {
            // Another process may change MLS state before the next access.
            self.shared.mls_changed();
            tree.flush()?;
        }
        Ok(())
    }

    /// A count that moves whenever MLS state in this store may have changed: every
    /// write of openmls storage (buffered or not), every rollback or failed commit
    /// that drops buffered writes, every release of the database. A group loaded
    /// (or last written) while the count was `n` is still what the store holds while
    /// the count is `n`, provided the store has one owner (writes from another
    /// thread between that write and reading the count would go unnoticed).
    pub fn mls_writes(&self) -> u64 {
        self.shared
            .mls_writes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn tree(&self) -> Result<SealedTree, StoreError> {
        self.shared.tree()
    }

    /// The openmls backend (share it with a `KringProvider`).
    pub fn mls_backend(&self) -> MlsKv {
        self.mls.clone()
    }

    /// Starts buffering MLS writes in memory until [`commit`](Self::commit) or
    /// [`rollback`](Self::rollback).
    pub fn begin(&self) -> Result<(), StoreError> {
        self.mls.with_overlay(|o| {
            if o.is_some() {
                return Err(StoreError::Transaction("MLS transaction begun twice"));
            }
            *o = Some(Overlay::new());
            Ok(())
        })?
    }

    /// Whether MLS writes are being buffered.
    pub fn in_transaction(&self) -> Result<bool, StoreError> {
        self.mls.with_overlay(|o| o.is_some())
    }

    /// Writes the buffered MLS state (if a transaction is open) and `batch` in one
    /// atomic sled batch, ends the transaction and flushes to disk.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let overlay = self.mls.with_overlay(Option::take)?.unwrap_or_default();
        let buffered = !overlay.is_empty();
        let applied = self
            .tree()
            .and_then(|t| t.apply(overlay.into_iter().chain(batch.writes)));
        if let Err(e) = applied {
            if buffered {
                // The buffered MLS writes are gone.
                self.shared.mls_changed();
            }
            return Err(e);
        }
        self.flush_unless_deferred()
    }

    /// While `on`, [`commit`](Self::commit), [`commit_plain`](Self::commit_plain)
    /// and [`insert_notice`](Self::insert_notice) apply their writes but leave the
    /// fsync to the next
    /// [`flush`](Self::flush): the sync loop flushes once before it acknowledges a
    /// run of entries (a crash before that only makes the relay deliver them again).
    pub fn defer_flush(&self, on: bool) {
        self.shared
            .defer_flush
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn flush_unless_deferred(&self) -> Result<(), StoreError> {
        if self
            .shared
            .defer_flush
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        self.flush()
    }

    /// Drops buffered MLS writes (the group must be reloaded from the store).
    pub fn rollback(&self) -> Result<(), StoreError> {
        let dropped = self
            .mls
            .with_overlay(|o| o.take().is_some_and(|o| !o.is_empty()))?;
        if dropped {
            self.shared.mls_changed();
        }
        Ok(())
    }

    /// Flushes everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.tree()?.flush()?;
        Ok(())
    }

    /// Whether a notice with this id is stored.
    pub fn has_notice(&self, id: Uuid) -> Result<bool, StoreError> {
        self.tree()?.contains_key(prefixed(NOTICE, id.as_bytes()))
    }

    /// Stores a notice unless one with the same id is stored already; returns whether
    /// it was new. Flushed before returning (unless flushes are deferred, see
    /// [`defer_flush`](Self::defer_flush)).
    pub fn insert_notice(&self, notice: &StoredNotice) -> Result<bool, StoreError> {
        let mut batch = Batch::new();
        batch.put_notice(notice)?;
        let Some((key, Some(value))) = batch.writes.pop() else {
            return Err(StoreError::Transaction("empty notice batch"));
        };
        let new = self.tree()?.insert_new(&key, &value)?;
        if new {
            self.flush_unless_deferred()?;
        }
        Ok(new)
    }

    /// Records the sequence number of a stored notice (own notices learn it from the
    /// relay's answer).
    pub fn set_notice_seq(&self, id: Uuid, seq: u64) -> Result<(), StoreError> {
        if let Some(mut stored) = self.notice(id)? {
            stored.seq = Some(seq);
            let mut batch = Batch::new();
            batch.put_notice(&stored)?;
            self.commit_plain(batch)?;
        }
        Ok(())
    }

    /// The stored notice with this id.
    pub fn notice(&self, id: Uuid) -> Result<Option<StoredNotice>, StoreError> {
        self.tree()?
            .get(prefixed(NOTICE, id.as_bytes()))?
            .map(|v| decode("notice", &v))
            .transpose()
    }

    /// Finds stored notices whose id starts with `prefix` (hex digits, dashes
    /// optional), for ids typed by hand. At most `limit` are returned.
    pub fn notices_by_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<StoredNotice>, StoreError> {
        let want: String = prefix
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut out = Vec::new();
        for item in self.tree()?.scan_prefix(NOTICE) {
            let (k, _) = item?;
            let Ok(bytes) = <[u8; 16]>::try_from(&k[NOTICE.len()..]) else {
                continue;
            };
            let id = Uuid::from_bytes(bytes);
            if id.simple().to_string().starts_with(&want) {
                if let Some(n) = self.notice(id)? {
                    out.push(n);
                }
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Stored notices, of one community or all, in community then log order (own
    /// notices not yet ordered last, by filing time).
    pub fn notices(&self, community: Option<&str>) -> Result<Vec<StoredNotice>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree()?.scan_prefix(NOTICE) {
            let (_, v) = item?;
            let n: StoredNotice = decode("notice", &v)?;
            if community.is_none_or(|c| n.notice.community == c) {
                out.push(n);
            }
        }
        out.sort_by(|a, b| {
            (
                &a.notice.community,
                a.seq.is_none(),
                a.seq,
                a.notice.filed_at,
                a.notice.id,
            )
                .cmp(&(
                    &b.notice.community,
                    b.seq.is_none(),
                    b.seq,
                    b.notice.filed_at,
                    b.notice.id,
                ))
        });
        Ok(out)
    }

    /// The last processed sequence number of a community (0 if none).
    pub fn cursor(&self, community: &str) -> Result<u64, StoreError> {
        match self.tree()?.get(prefixed(CURSOR, community.as_bytes()))? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "cursor",
                    reason: format!("{} bytes instead of 8", v.len()),
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// The commit sent to the hub of `community` whose outcome is not known yet.
    pub fn sent_commit(&self, community: &str) -> Result<Option<SentCommit>, StoreError> {
        self.tree()?
            .get(prefixed(SENT_COMMIT, community.as_bytes()))?
            .map(|v| SentCommit::decode(&v))
            .transpose()
    }

    /// The community record with this id.
    pub fn community(&self, id: &str) -> Result<Option<CommunityRecord>, StoreError> {
        self.tree()?
            .get(prefixed(COMMUNITY, id.as_bytes()))?
            .map(|v| decode("community", &v))
            .transpose()
    }

    /// All communities this device is a member of, by id.
    pub fn communities(&self) -> Result<Vec<CommunityRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree()?.scan_prefix(COMMUNITY) {
            let (_, v) = item?;
            out.push(decode("community", &v)?);
        }
        Ok(out)
    }

    /// When each member's leaf in `community` last changed, as far as this device has
    /// seen (Unix seconds), by member id.
    pub fn leaf_times(&self, community: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let prefix = leaf_time_key(community, "");
        let mut out = BTreeMap::new();
        for item in self.tree()?.scan_prefix(&prefix) {
            let (k, v) = item?;
            let corrupt = |reason: &str| StoreError::Corrupt {
                what: "leaf time",
                reason: reason.to_string(),
            };
            let member = std::str::from_utf8(k.get(prefix.len()..).unwrap_or_default())
                .map_err(|_| corrupt("member id is not UTF-8"))?;
            let at: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt("not 8 bytes"))?;
            out.insert(member.to_string(), u64::from_be_bytes(at));
        }
        Ok(out)
    }

    /// When `member`'s leaf in `community` last changed, if this device has seen it.
    pub fn leaf_time(&self, community: &str, member: &str) -> Result<Option<u64>, StoreError> {
        match self.tree()?.get(leaf_time_key(community, member))? {
            None => Ok(None),
            Some(v) => {
                let at: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "leaf time",
                    reason: format!("{} bytes instead of 8", v.len()),
                })?;
                Ok(Some(u64::from_be_bytes(at)))
            }
        }
    }

    /// Applies `batch` (without touching buffered MLS writes) and flushes (unless
    /// deferred, see [`defer_flush`](Self::defer_flush)).
    pub fn commit_plain(&self, batch: Batch) -> Result<(), StoreError> {
        self.tree()?.apply(batch.writes)?;
        self.flush_unless_deferred()
    }
}

/// Copies the database in `from`, written in the clear, into a new database in `to`
/// (which must not exist), sealed with `key`; returns how many records it copied.
/// `from` is only read.
pub fn seal_copy(from: &Path, to: &Path, key: DataKey) -> Result<usize, StoreError> {
    let src = open_tree(from)?;
    if src.contains_key(CHECK_KEY)? {
        return Err(StoreError::AlreadySealed {
            path: from.display().to_string(),
        });
    }
    let mut writes = Vec::new();
    for item in src.iter() {
        let (k, v) = item?;
        writes.push((k.to_vec(), Some(v.to_vec())));
    }
    drop(src);
    let count = writes.len();
    let dst = Store::open_sealed(to, key)?;
    dst.tree()?.apply(writes)?;
    dst.flush()?;
    Ok(count)
}

/// `l/COMMUNITY\0MEMBER` (ids are printable ASCII, so the separator is unambiguous).
fn leaf_time_key(community: &str, member: &str) -> Vec<u8> {
    let mut key = prefixed(LEAF_TIME, community.as_bytes());
    key.push(0);
    key.extend_from_slice(member.as_bytes());
    key
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, v: &[u8]) -> Result<T, StoreError> {
    if v.len() > MAX_RECORD {
        return Err(StoreError::Corrupt {
            what,
            reason: format!("{} bytes", v.len()),
        });
    }
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// Keeps the state directory private to its owner (it holds MLS private keys).
fn restrict_permissions(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict the state directory's permissions");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::{Category, NoticeKind};

    fn notice(n: u128, community: &str) -> StoredNotice {
        StoredNotice {
            notice: Notice {
                id: Uuid::from_u128(n),
                community: community.into(),
                label: "NL:ONGERUBRICEERD".into(),
                kind: NoticeKind::Notice,
                category: Category::Other,
                title: format!("t{n}"),
                body: String::new(),
                sender: "liaison@bz".into(),
                filed_at: time::macros::datetime!(2025-01-01 0:00 UTC),
                in_reply_to: None,
                stix: None,
                forwarded_from: None,
                attachments: Vec::new(),
            },
            seq: Some(n as u64),
            own: false,
            ordered_at: None,
        }
    }

    #[test]
    fn the_mls_write_count_moves_with_mls_writes_dropped_buffers_and_releases_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kv = store.mls_backend();
        let n0 = store.mls_writes();
        // Not MLS state: notices, an empty rollback, a flush.
        store.insert_notice(&notice(1, "c@bz")).unwrap();
        store.rollback().unwrap();
        store.begin().unwrap();
        store.rollback().unwrap();
        store.flush().unwrap();
        assert_eq!(store.mls_writes(), n0);
        // Direct writes.
        kv.insert(b"g", b"1".to_vec()).unwrap();
        let n1 = store.mls_writes();
        assert!(n1 > n0);
        kv.remove(b"g").unwrap();
        let n2 = store.mls_writes();
        assert!(n2 > n1);
        kv.apply(vec![(b"h".to_vec(), Some(b"2".to_vec()))])
            .unwrap();
        let n3 = store.mls_writes();
        assert!(n3 > n2);
        // A buffered write, and the rollback that drops it.
        store.begin().unwrap();
        kv.insert(b"g", b"3".to_vec()).unwrap();
        let n4 = store.mls_writes();
        assert!(n4 > n3);
        store.rollback().unwrap();
        let n5 = store.mls_writes();
        assert!(n5 > n4);
        assert_eq!(kv.get(b"g").unwrap(), None);
        // A release: another process may write before the next access.
        store.release().unwrap();
        let n6 = store.mls_writes();
        assert!(n6 > n5);
        assert_eq!(kv.get(b"h").unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.mls_writes(), n6);
    }

    #[test]
    fn storing_the_same_notice_twice_keeps_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let n = notice(7, "c@bz");
        assert!(store.insert_notice(&n).unwrap());
        let mut changed = n.clone();
        changed.notice.title = "replaced".into();
        assert!(!store.insert_notice(&changed).unwrap());
        let all = store.notices(None).unwrap();
        assert_eq!(all, vec![n]);
    }

    #[test]
    fn notices_are_listed_per_community_in_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (n, c) in [(3, "b@bz"), (2, "a@bz"), (1, "a@bz")] {
            store.insert_notice(&notice(n, c)).unwrap();
        }
        let mut own = notice(9, "a@bz");
        own.seq = None;
        store.insert_notice(&own).unwrap();
        let ids: Vec<u128> = store
            .notices(None)
            .unwrap()
            .iter()
            .map(|n| n.notice.id.as_u128())
            .collect();
        assert_eq!(ids, vec![1, 2, 9, 3]);
        assert_eq!(store.notices(Some("b@bz")).unwrap().len(), 1);
        store.set_notice_seq(Uuid::from_u128(9), 4).unwrap();
        assert_eq!(
            store.notice(Uuid::from_u128(9)).unwrap().unwrap().seq,
            Some(4)
        );
        let found = store.notices_by_prefix("00000000-0000", 10).unwrap();
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn buffered_mls_writes_commit_atomically_with_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kv = store.mls_backend();
        kv.insert(b"k", b"old".to_vec()).unwrap();

        store.begin().unwrap();
        kv.insert(b"k", b"new".to_vec()).unwrap();
        kv.remove(b"gone").unwrap();
        assert_eq!(
            kv.get(b"k").unwrap(),
            Some(b"new".to_vec()),
            "read your writes"
        );
        store.rollback().unwrap();
        assert_eq!(kv.get(b"k").unwrap(), Some(b"old".to_vec()), "rolled back");

        store.begin().unwrap();
        assert!(store.begin().is_err());
        kv.apply(vec![(b"k".to_vec(), Some(b"new".to_vec()))])
            .unwrap();
        let mut batch = Batch::new();
        batch.put_cursor("c@bz", 5);
        batch.put_notice(&notice(5, "c@bz")).unwrap();
        store.commit(batch).unwrap();
        assert!(!store.in_transaction().unwrap());
        assert_eq!(kv.get(b"k").unwrap(), Some(b"new".to_vec()));
        assert_eq!(store.cursor("c@bz").unwrap(), 5);
        assert!(store.has_notice(Uuid::from_u128(5)).unwrap());
    }

    #[test]
    fn a_released_store_lets_another_handle_in_and_reopens_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_notice(&notice(1, "c@bz")).unwrap();
        store.release().unwrap();
        {
            // Another process would be refused the lock unless it was released.
            let other = Store::open(dir.path()).unwrap();
            assert!(other.has_notice(Uuid::from_u128(1)).unwrap());
            other.insert_notice(&notice(2, "c@bz")).unwrap();
        }
        assert!(
            store.has_notice(Uuid::from_u128(2)).unwrap(),
            "reopened on use"
        );
        // Buffered MLS writes keep the database open.
        store.begin().unwrap();
        store.release().unwrap();
        assert!(store.in_transaction().unwrap());
        store.rollback().unwrap();
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put_community(&CommunityRecord {
                id: "c@bz".into(),
                max_label: "NL:STG-GEHEIM".into(),
                joined_epoch: 1,
                active: true,
                retention_days: None,
            })
            .unwrap();
            b.put_cursor("c@bz", 3);
            store.commit_plain(b).unwrap();
            store.mls_backend().insert(b"x", b"y".to_vec()).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.cursor("c@bz").unwrap(), 3);
        assert_eq!(store.cursor("other@bz").unwrap(), 0);
        assert_eq!(store.communities().unwrap().len(), 1);
        assert_eq!(store.mls_backend().get(b"x").unwrap(), Some(b"y".to_vec()));
        let mut b = Batch::new();
        b.remove_community("c@bz");
        store.commit_plain(b).unwrap();
        assert!(store.community("c@bz").unwrap().is_none());
        assert_eq!(store.cursor("c@bz").unwrap(), 0);
    }

    #[test]
    fn a_sent_commit_is_kept_until_removed_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.sent_commit("d@bz").unwrap(), None);
        for welcome in [None, Some(Vec::new()), Some(vec![7; 300])] {
            let sent = SentCommit {
                epoch: 4,
                message: vec![1, 2, 3],
                welcome,
            };
            let mut batch = Batch::new();
            batch.put_sent_commit("d@bz", &sent);
            store.commit_plain(batch).unwrap();
            assert_eq!(store.sent_commit("d@bz").unwrap(), Some(sent));
            assert_eq!(store.sent_commit("e@bz").unwrap(), None);
        }
        let mut batch = Batch::new();
        batch.remove_sent_commit("d@bz");
        store.commit_plain(batch).unwrap();
        assert_eq!(store.sent_commit("d@bz").unwrap(), None);
        for bad in [
            &[][..],
            &[0; 15],
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1],
        ] {
            assert!(SentCommit::decode(bad).is_err());
        }
        let mut trailing = SentCommit {
            epoch: 1,
            message: vec![5],
            welcome: None,
        }
        .encode();
        trailing.push(0);
        assert!(SentCommit::decode(&trailing).is_err());
    }

    #[test]
    fn leaf_times_are_kept_per_community_and_member() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put_leaf_time("d@bz", "liaison@bz", 10);
        batch.put_leaf_time("d@bz", "admin@bz", 20);
        batch.put_leaf_time("d@bz2", "liaison@bz", 30);
        store.commit_plain(batch).unwrap();
        assert_eq!(store.leaf_time("d@bz", "liaison@bz").unwrap(), Some(10));
        assert_eq!(store.leaf_time("d@bz", "x@bz").unwrap(), None);
        let times = store.leaf_times("d@bz").unwrap();
        assert_eq!(
            times.into_iter().collect::<Vec<_>>(),
            vec![("admin@bz".to_string(), 20), ("liaison@bz".to_string(), 10)]
        );
        let mut batch = Batch::new();
        batch.remove_leaf_time("d@bz", "liaison@bz");
        store.commit_plain(batch).unwrap();
        assert_eq!(store.leaf_times("d@bz").unwrap().len(), 1);
        assert_eq!(store.leaf_times("d@bz2").unwrap().len(), 1);
    }
}
