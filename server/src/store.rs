//! The relay's durable store.
//!
//! [`Engine`] is the small trait an embedded key-value engine implements (one ordered
//! keyspace, atomic batches, an explicit flush); [`SledEngine`] implements it on sled.
//! Everything above works on byte keys with the prefixes in [`keys`], so moving to
//! another engine (redb, …) touches only this file.
//!
//! Durability: callers apply a [`Batch`] atomically (it is visible at once) and then
//! await [`Durability::wait`] before acknowledging anything to a peer. Concurrent
//! waiters share one flush (group commit): the flusher takes every waiter queued so far,
//! flushes once, and wakes them all.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

use crate::error::RelayError;

/// One atomic set of writes that can also be read: [`Batch::get`] answers as if the
/// batch were already applied, so code that builds one batch from many steps (a whole
/// federation delivery) sees its own earlier writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// Key → new value (`None` deletes), in order; a later write of a key wins.
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Key → index in `ops` of its latest write.
    latest: HashMap<Vec<u8>, usize>,
}

/// A point in a [`Batch`] to roll back to ([`Batch::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize);

impl Batch {
    /// Sets `key` to `value` (`None` deletes it).
    pub fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.latest.insert(key.clone(), self.ops.len());
        self.ops.push((key, value));
    }
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.set(key, Some(value));
    }
    /// Sets `key` to the postcard encoding of `value`.
    pub fn put_obj<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), RelayError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| RelayError::Store(e.to_string()))?;
        self.put(key, bytes);
        Ok(())
    }
    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.set(key, None);
    }
    /// Appends another batch.
    pub fn extend(&mut self, other: Batch) {
        for (k, v) in other.ops {
            self.set(k, v);
        }
    }
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// The writes, in order.
    pub fn into_ops(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.ops
    }
    /// What this batch writes to `key`: `None` if it does not touch it,
    /// `Some(None)` if it deletes it.
    pub fn pending(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        let i = *self.latest.get(key)?;
        Some(self.ops.get(i)?.1.as_deref())
    }
    /// Reads `key` as it will be once this batch is applied over `engine`.
    pub fn get(&self, engine: &dyn Engine, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        match self.pending(key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => engine.get(key),
        }
    }
    /// Reads and decodes one record as it will be once this batch is applied.
    pub fn get_obj<T: DeserializeOwned>(
        &self,
        engine: &dyn Engine,
        key: &[u8],
    ) -> Result<Option<T>, RelayError> {
        match self.get(engine, key)? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }
    /// The current end of the batch.
    pub fn mark(&self) -> Mark {
        Mark(self.ops.len())
    }
    /// Drops every write made after `mark`.
    pub fn rollback(&mut self, mark: Mark) {
        if mark.0 >= self.ops.len() {
            return;
        }
        self.ops.truncate(mark.0);
        self.latest.clear();
        for (i, (k, _)) in self.ops.iter().enumerate() {
            self.latest.insert(k.clone(), i);
        }
    }
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// An ordered key-value engine with atomic batches and explicit durability.
pub trait Engine: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError>;
    /// Keys with `prefix` strictly after `after` (or from the start), at most `limit`.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, RelayError>;
    /// The last key with `prefix`, if any.
    fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError>;
    /// Applies all writes atomically (visible to readers at once, durable after `flush`).
    fn apply(&self, batch: Batch) -> Result<(), RelayError>;
    /// Makes every applied batch durable (fsync).
    fn flush(&self) -> Result<(), RelayError>;
}

/// [`Engine`] on one sled tree.
#[derive(Debug, Clone)]
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledEngine {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, RelayError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            RelayError::Store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = sled::Config::new()
            .path(dir.join("store"))
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                RelayError::Store(format!("cannot open store in {}: {e}", dir.display()))
            })?;
        let tree = db.open_tree("kring")?;
        Ok(Self { db, tree })
    }
}

fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, RelayError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let end = match prefix_end(prefix) {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.tree.range::<Vec<u8>, _>((start, end)).take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError> {
        match self.tree.scan_prefix(prefix).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), RelayError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), RelayError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Decodes a postcard record, naming the key if it is corrupt.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, RelayError> {
    postcard::from_bytes(bytes).map_err(|e| RelayError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Reads and decodes one record.
pub fn get_obj<T: DeserializeOwned>(
    engine: &dyn Engine,
    key: &[u8],
) -> Result<Option<T>, RelayError> {
    match engine.get(key)? {
        Some(v) => Ok(Some(decode(key, &v)?)),
        None => Ok(None),
    }
}

enum FlushMsg {
    Wait(oneshot::Sender<Result<(), String>>),
    Stop(oneshot::Sender<Result<(), String>>),
}

/// Group commit: one flush for every waiter queued while the previous flush ran.
#[derive(Debug, Clone)]
pub struct Durability {
    tx: mpsc::UnboundedSender<FlushMsg>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for FlushMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlushMsg::Wait(_) => "Wait",
            FlushMsg::Stop(_) => "Stop",
        })
    }
}

impl Durability {
    /// Starts the flusher task for `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushMsg>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = Vec::new();
                let mut stop = None;
                let mut push = |m: FlushMsg| match m {
                    FlushMsg::Wait(w) => waiters.push(w),
                    FlushMsg::Stop(w) => stop = Some(w),
                };
                push(first);
                while let Ok(m) = rx.try_recv() {
                    push(m);
                }
                let engine = engine.clone();
                let result = tokio::task::spawn_blocking(move || engine.flush())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = &result {
                    tracing::error!(error = %e, "store flush failed");
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
                if let Some(w) = stop {
                    let _ = w.send(result);
                    return;
                }
            }
        });
        Self {
            tx,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }
    }

    /// Returns once everything applied before this call is on disk.
    pub async fn wait(&self) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        self.send(FlushMsg::Wait(tx), rx).await
    }

    /// Flushes a last time and stops the flusher (graceful shutdown); later waits fail.
    pub async fn stop(&self) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        let result = self.send(FlushMsg::Stop(tx), rx).await;
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }

    async fn send(
        &self,
        msg: FlushMsg,
        rx: oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), RelayError> {
        self.tx
            .send(msg)
            .map_err(|_| RelayError::Store("the store is shut down".into()))?;
        rx.await
            .map_err(|_| RelayError::Store("the store is shut down".into()))?
            .map_err(RelayError::Store)
    }
}

/// Key layout. Ids never contain `\0`, so it separates key parts.
pub mod keys {
    /// `c/COMMUNITY` → community record.
    pub fn community(id: &str) -> Vec<u8> {
        [b"c/", id.as_bytes()].concat()
    }
    /// Prefix of all community records.
    pub const COMMUNITIES: &[u8] = b"c/";
    /// `s/COMMUNITY` → the community's last log seq (postcard u64), written per
    /// entry so that a notice does not rewrite the whole community record.
    pub fn last_seq(id: &str) -> Vec<u8> {
        [b"s/", id.as_bytes()].concat()
    }
    /// `l/COMMUNITY\0SEQ` → log entry.
    pub fn log(id: &str, seq: u64) -> Vec<u8> {
        [b"l/", id.as_bytes(), b"\0", &seq.to_be_bytes()].concat()
    }
    /// Prefix of one community's log.
    pub fn log_prefix(id: &str) -> Vec<u8> {
        [b"l/", id.as_bytes(), b"\0"].concat()
    }
    /// `n/NOTICE` → notice record (status, for de-duplication).
    pub fn notice(id: &uuid::Uuid) -> Vec<u8> {
        [b"n/".as_slice(), id.as_bytes()].concat()
    }
    /// `m/USER\0COMMUNITY` → membership record.
    pub fn member(user: &str, community: &str) -> Vec<u8> {
        [b"m/", user.as_bytes(), b"\0", community.as_bytes()].concat()
    }
    /// Prefix of one user's memberships.
    pub fn member_prefix(user: &str) -> Vec<u8> {
        [b"m/", user.as_bytes(), b"\0"].concat()
    }
    /// `u/DEVICE\0COMMUNITY` → delivery cursor (u64 big-endian).
    pub fn cursor(device: &str, community: &str) -> Vec<u8> {
        [b"u/", device.as_bytes(), b"\0", community.as_bytes()].concat()
    }
    /// `w/USER\0WELCOME` → pending welcome.
    pub fn welcome(user: &str, id: &uuid::Uuid) -> Vec<u8> {
        [b"w/", user.as_bytes(), b"\0", id.as_bytes()].concat()
    }
    /// Prefix of one user's pending welcomes.
    pub fn welcome_prefix(user: &str) -> Vec<u8> {
        [b"w/", user.as_bytes(), b"\0"].concat()
    }
    /// `v/USER\0WELCOME` → a pending welcome kept once per commit ([`welcome_blob`]).
    pub fn welcome_ref(user: &str, id: &uuid::Uuid) -> Vec<u8> {
        [b"v/", user.as_bytes(), b"\0", id.as_bytes()].concat()
    }
    /// Prefix of one user's pending welcome references.
    pub fn welcome_ref_prefix(user: &str) -> Vec<u8> {
        [b"v/", user.as_bytes(), b"\0"].concat()
    }
    /// `W/BLOB` → a Welcome and its ratchet tree, shared by the members one commit
    /// added here.
    pub fn welcome_blob(blob: &uuid::Uuid) -> Vec<u8> {
        [b"W/".as_slice(), blob.as_bytes()].concat()
    }
    /// `V/BLOB` → how many `v/` references a welcome blob still has (postcard u32).
    pub fn welcome_refs(blob: &uuid::Uuid) -> Vec<u8> {
        [b"V/".as_slice(), blob.as_bytes()].concat()
    }
    /// `k/USER\0ID` → key package.
    pub fn key_package(user: &str, id: &uuid::Uuid) -> Vec<u8> {
        [b"k/", user.as_bytes(), b"\0", id.as_bytes()].concat()
    }
    /// Prefix of one user's key packages.
    pub fn key_package_prefix(user: &str) -> Vec<u8> {
        [b"k/", user.as_bytes(), b"\0"].concat()
    }
    /// `K/USER` → last-resort key package.
    pub fn last_resort(user: &str) -> Vec<u8> {
        [b"K/", user.as_bytes()].concat()
    }
    /// Prefix of the MLS public-group storage.
    pub const MLS: &[u8] = b"g/";
    /// `a/SEQ` → audit record.
    pub fn audit(seq: u64) -> Vec<u8> {
        [b"a/".as_slice(), &seq.to_be_bytes()].concat()
    }
    /// Prefix of the audit log.
    pub const AUDIT: &[u8] = b"a/";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_respects_prefix_after_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let mut b = Batch::default();
        for seq in 1..=5 {
            b.put(keys::log("a@bz", seq), vec![seq as u8]);
            b.put(keys::log("a@bz2", seq), vec![0]);
        }
        e.apply(b).unwrap();
        let all = e.scan(&keys::log_prefix("a@bz"), None, 100).unwrap();
        assert_eq!(all.len(), 5);
        let after2 = e
            .scan(&keys::log_prefix("a@bz"), Some(&keys::log("a@bz", 2)), 2)
            .unwrap();
        assert_eq!(
            after2.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
            vec![3, 4]
        );
        let last = e.last(&keys::log_prefix("a@bz")).unwrap().unwrap();
        assert_eq!(last.1, vec![5]);
    }

    #[test]
    fn a_batch_reads_its_own_writes_and_rolls_back_to_a_mark() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let mut stored = Batch::default();
        stored.put(b"k/a".to_vec(), b"engine".to_vec());
        stored.put(b"k/b".to_vec(), b"engine".to_vec());
        e.apply(stored).unwrap();

        let mut b = Batch::default();
        assert_eq!(b.get(&e, b"k/a").unwrap(), Some(b"engine".to_vec()));
        b.put(b"k/a".to_vec(), b"one".to_vec());
        b.put(b"k/a".to_vec(), b"two".to_vec());
        assert_eq!(b.get(&e, b"k/a").unwrap(), Some(b"two".to_vec()));
        let mark = b.mark();
        b.delete(b"k/b".to_vec());
        b.put(b"k/a".to_vec(), b"three".to_vec());
        b.put(b"k/c".to_vec(), b"new".to_vec());
        assert_eq!(b.get(&e, b"k/b").unwrap(), None);
        assert_eq!(b.get(&e, b"k/a").unwrap(), Some(b"three".to_vec()));

        b.rollback(mark);
        assert_eq!(b.get(&e, b"k/a").unwrap(), Some(b"two".to_vec()));
        assert_eq!(b.get(&e, b"k/b").unwrap(), Some(b"engine".to_vec()));
        assert_eq!(b.get(&e, b"k/c").unwrap(), None);
        e.apply(b).unwrap();
        assert_eq!(e.get(b"k/a").unwrap(), Some(b"two".to_vec()));
        assert_eq!(e.get(b"k/b").unwrap(), Some(b"engine".to_vec()));
        assert_eq!(e.get(b"k/c").unwrap(), None);
    }

    #[tokio::test]
    async fn batches_survive_reopen_after_durability_wait() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
            let d = Durability::start(e.clone());
            let mut b = Batch::default();
            b.put(keys::community("x@bz"), b"rec".to_vec());
            e.apply(b).unwrap();
            let waits: Vec<_> = (0..10).map(|_| d.wait()).collect();
            for w in waits {
                w.await.unwrap();
            }
            d.stop().await.unwrap();
            assert!(d.wait().await.is_err());
        }
        let e = SledEngine::open(dir.path()).unwrap();
        assert_eq!(
            e.get(&keys::community("x@bz")).unwrap(),
            Some(b"rec".to_vec())
        );
    }
}
