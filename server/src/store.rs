//! The relay's durable store.
//!
//! [`Engine`] is the small trait an embedded key-value engine implements (one ordered
//! keyspace, atomic batches, an explicit flush); [`SledEngine`] implements it on sled.
//! Everything above works on byte keys with the prefixes in [`keys`], so moving to
//! another engine (redb, …) touches only this file.
//!
//! Durability: callers apply a [`Batch`] atomically through [`Durability::apply`] (it
//! is visible in the engine at once) and then await [`Durability::wait`] before
//! acknowledging anything to a peer. Concurrent waiters share one flush (group
//! commit): the flusher takes every waiter queued so far, flushes once, and wakes them
//! all.
//!
//! What leaves the relay is gated by the [`Watermark`]: every applied batch has a
//! write number, the flusher records up to which number everything is on disk, and
//! new log entries, outbox items and welcomes of batches past it are not handed to
//! readers (delivery, outbox senders) until then.

use std::collections::HashMap;

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{RelayError, StoreError};

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
        let bytes = postcard::to_stdvec(value).map_err(StoreError::Encode)?;
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
    /// [`scan`](Self::scan) that also stops once the keys and values read reach
    /// `max_bytes` (the pair that reaches it included, so at least one pair comes
    /// back when there is one): what a reader holds at once stays bounded whatever
    /// the sizes of the values. The default reads `limit` pairs and trims them;
    /// engines override it to read no more than they return.
    fn scan_bounded(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pair>, RelayError> {
        let mut pairs = self.scan(prefix, after, limit)?;
        let mut total = 0usize;
        let keep = pairs
            .iter()
            .position(|(k, v)| {
                total = total.saturating_add(k.len() + v.len());
                total >= max_bytes
            })
            .map_or(pairs.len(), |i| i + 1);
        pairs.truncate(keep);
        Ok(pairs)
    }
    /// The last key with `prefix`, if any.
    fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError>;
    /// Applies all writes atomically (visible to readers at once, durable after `flush`).
    fn apply(&self, batch: Batch) -> Result<(), RelayError>;
    /// Makes every applied batch durable (fsync).
    fn flush(&self) -> Result<(), RelayError>;
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

/// Key layout (the store's namespaces of [`crate::keyspace`]).
pub use crate::keyspace::store as keys;

mod durability;
#[cfg(feature = "failpoints")]
pub mod failpoint;
mod journal;
mod mem_engine;
mod sled_engine;
mod watermark;

pub use durability::{Applier, Durability};
pub use mem_engine::MemEngine;
pub use sled_engine::SledEngine;
pub use watermark::{Appended, Watermark, is_gated};
#[cfg(test)]
use watermark::{Gate, gate};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn scan_bounded_stops_at_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let mut b = Batch::default();
        for seq in 1..=10 {
            b.put(keys::log("a@bz", seq), vec![0; 1000]);
        }
        e.apply(b).unwrap();
        let prefix = keys::log_prefix("a@bz");
        let key_len = keys::log("a@bz", 1).len();
        // Three pairs reach 3,000 bytes; the third is the one that reaches it.
        let page = e.scan_bounded(&prefix, None, 100, 3 * 1000).unwrap();
        assert_eq!(page.len(), 3);
        let page = e
            .scan_bounded(&prefix, None, 100, 3 * (1000 + key_len) + 1)
            .unwrap();
        assert_eq!(page.len(), 4);
        // At least one pair, however small the bound; never more than `limit`.
        assert_eq!(e.scan_bounded(&prefix, None, 100, 1).unwrap().len(), 1);
        assert_eq!(
            e.scan_bounded(&prefix, None, 2, usize::MAX).unwrap().len(),
            2
        );
        // The default (trimming) implementation agrees.
        #[derive(Debug)]
        struct Plain(SledEngine);
        impl Engine for Plain {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
                self.0.get(key)
            }
            fn scan(&self, p: &[u8], a: Option<&[u8]>, l: usize) -> Result<Vec<Pair>, RelayError> {
                self.0.scan(p, a, l)
            }
            fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError> {
                self.0.last(prefix)
            }
            fn apply(&self, batch: Batch) -> Result<(), RelayError> {
                self.0.apply(batch)
            }
            fn flush(&self) -> Result<(), RelayError> {
                self.0.flush()
            }
        }
        let plain = Plain(e.clone());
        for (limit, bound) in [(100, 3000), (100, 1), (2, usize::MAX), (100, 4 * 1030)] {
            assert_eq!(
                plain.scan_bounded(&prefix, None, limit, bound).unwrap(),
                e.scan_bounded(&prefix, None, limit, bound).unwrap(),
                "limit {limit}, bound {bound}"
            );
        }
    }

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
            let d = Durability::start(e.clone()).unwrap();
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
        // sled lets go of its lock once its own background writes of the closed
        // store end.
        let e = SledEngine::open_once_free(dir.path(), sled_engine::DrainAt::DEFAULT).unwrap();
        assert_eq!(
            e.get(&keys::community("x@bz")).unwrap(),
            Some(b"rec".to_vec())
        );
    }

    /// Batches acknowledged before a crash (the process killed: no destructor,
    /// no last flush) are all there when the store is opened again. The writer is
    /// this test binary, run again as a child ([`crash_child`]).
    #[test]
    fn acknowledged_batches_survive_a_crash() {
        const DURABLE: u64 = 200;
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "store::tests::crash_child",
                "--nocapture",
            ])
            .env("KRING_STORE_CRASH_DIR", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "the child was meant to die: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let acknowledged = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("durable "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max();
        assert_eq!(acknowledged, Some(DURABLE), "child output: {stdout}");
        let e = SledEngine::open(dir.path()).unwrap();
        for seq in 1..=DURABLE {
            assert_eq!(
                e.get(&keys::log("x@bz", seq)).unwrap(),
                Some(vec![seq as u8; 64]),
                "entry {seq} was acknowledged and is gone"
            );
        }
        let last = e.get(&keys::last_seq("x@bz")).unwrap().unwrap();
        assert!(u64::from_be_bytes(last.try_into().unwrap()) >= DURABLE);
    }

    /// The child of [`acknowledged_batches_survive_a_crash`]: applies batches,
    /// prints each one acknowledged as durable, writes a few more without waiting,
    /// then aborts. Does nothing unless run by that test.
    #[tokio::test]
    #[ignore = "run by acknowledged_batches_survive_a_crash in a child process"]
    async fn crash_child() {
        use std::io::Write as _;
        let Some(dir) = std::env::var_os("KRING_STORE_CRASH_DIR") else {
            return;
        };
        let e: Arc<dyn Engine> = Arc::new(SledEngine::open(std::path::Path::new(&dir)).unwrap());
        let d = Durability::start(e.clone()).unwrap();
        let put = |seq: u64| {
            let mut b = Batch::default();
            b.put(keys::log("x@bz", seq), vec![seq as u8; 64]);
            b.put(keys::last_seq("x@bz"), seq.to_be_bytes().to_vec());
            d.apply(b).unwrap();
        };
        for seq in 1..=200u64 {
            put(seq);
            d.wait().await.unwrap();
            println!("durable {seq}");
            std::io::stdout().flush().unwrap();
        }
        for seq in 201..=250u64 {
            put(seq);
        }
        std::process::abort();
    }

    fn outbox(peer: &str, seq: u64) -> Vec<u8> {
        [b"o/", peer.as_bytes(), b"\0", &seq.to_be_bytes()].concat()
    }

    /// A batch appending `seqs` to `community`'s log and `outbox` to peer `p`'s outbox.
    fn appends(community: &str, seqs: std::ops::RangeInclusive<u64>, outbox_seqs: &[u64]) -> Batch {
        let mut b = Batch::default();
        for seq in seqs {
            b.put(keys::log(community, seq), vec![1]);
            b.put(keys::last_seq(community), seq.to_be_bytes().to_vec());
        }
        for seq in outbox_seqs {
            b.put(outbox("p", *seq), vec![2]);
        }
        b
    }

    /// Records and "applies" `batch` as write `n` (the watermark alone).
    fn applied(m: &Watermark, n: u64, batch: &Batch) {
        m.record(n, batch);
        m.lock().applied = n;
    }

    #[test]
    fn the_watermark_gates_logs_outboxes_and_welcomes_only() {
        let log = keys::log("a@bz", 7);
        assert_eq!(
            gate(&log),
            Some(Gate::Sequence {
                sequence: &keys::log_prefix("a@bz"),
                seq: 7
            })
        );
        let o = outbox("nctv", 3);
        assert_eq!(
            gate(&o),
            Some(Gate::Sequence {
                sequence: b"o/nctv\0",
                seq: 3
            })
        );
        let id = uuid::Uuid::new_v4();
        assert_eq!(gate(&keys::welcome_ref("u@bz", &id)), Some(Gate::Key));
        assert_eq!(gate(&keys::welcome("u@bz", &id)), Some(Gate::Key));
        for other in [
            keys::community("a@bz"),
            keys::last_seq("a@bz"),
            keys::cursor("u@bz", "a@bz"),
            keys::member("u@bz", "a@bz"),
            keys::welcome_blob(&id),
            keys::audit(1),
            b"O/nctv".to_vec(),
            b"l/short".to_vec(),
        ] {
            assert_eq!(gate(&other), None, "{}", String::from_utf8_lossy(&other));
        }
    }

    #[test]
    fn a_sequence_is_readable_below_its_first_unflushed_append() {
        let m = Watermark::default();
        let a = keys::log_prefix("a@bz");
        assert_eq!(m.readable_upto(&a), u64::MAX);
        applied(&m, 1, &appends("a@bz", 1..=3, &[1]));
        applied(&m, 2, &appends("a@bz", 4..=4, &[2, 3]));
        assert_eq!(m.readable_upto(&a), 0);
        assert_eq!(m.readable_upto(b"o/p\0"), 0);
        assert_eq!(m.readable_upto(&keys::log_prefix("b@bz")), u64::MAX);
        // A flush covers what was applied before it started, not what came later.
        m.flushed(1);
        assert_eq!(m.durable(), 1);
        assert_eq!(m.readable_upto(&a), 3);
        assert_eq!(m.readable_upto(b"o/p\0"), 1);
        m.flushed(2);
        assert_eq!(m.readable_upto(&a), u64::MAX);
        assert_eq!(m.readable_upto(b"o/p\0"), u64::MAX);
        assert!(
            m.lock().sequences.is_empty(),
            "nothing left once all is flushed"
        );
        // An older flush finishing late changes nothing.
        applied(&m, 3, &appends("a@bz", 5..=5, &[]));
        m.flushed(2);
        assert_eq!(m.readable_upto(&a), 4);
    }

    #[test]
    fn early_release_shows_only_the_released_writes_of_that_sequence() {
        let m = Watermark::default();
        let a = keys::log_prefix("a@nctv");
        applied(&m, 1, &appends("a@nctv", 1..=2, &[]));
        applied(&m, 2, &appends("a@nctv", 3..=5, &[1]));
        // Releasing a later write leaves the earlier one holding the log back.
        m.release(&[2], &a);
        assert_eq!(m.readable_upto(&a), 0);
        m.release(&[1], &a);
        assert_eq!(m.readable_upto(&a), u64::MAX);
        // The outbox item of the released write still waits for the flush.
        assert_eq!(m.readable_upto(b"o/p\0"), 0);
        m.flushed(2);
        assert_eq!(m.readable_upto(b"o/p\0"), u64::MAX);
    }

    #[test]
    fn readers_learn_which_logs_were_appended_to_since_they_last_looked() {
        let m = Watermark::default();
        let log = |c: &str| keys::log_prefix(c);
        let first = m.logs_appended_since(None);
        assert_eq!((first.logs, first.upto), (None, 0));
        assert_eq!(m.logs_appended_since(Some(0)).logs, Some(Vec::new()));
        applied(&m, 1, &appends("a@bz", 1..=2, &[]));
        applied(&m, 2, &appends("b@bz", 1..=1, &[]));
        applied(&m, 3, &appends("a@bz", 3..=3, &[4]));
        let all = m.logs_appended_since(Some(0));
        assert_eq!(all.logs, Some(vec![log("a@bz"), log("b@bz")]));
        // Outbox items are not log appends.
        assert_eq!(all.upto, 3);
        let later = m.logs_appended_since(Some(2));
        assert_eq!(later.logs, Some(vec![log("a@bz")]));
        assert_eq!(m.logs_appended_since(Some(3)).logs, Some(Vec::new()));
        // A reader further behind than what is kept looks at everything.
        for n in 0..super::watermark::APPENDS_KEPT as u64 {
            applied(&m, 4 + n, &appends("c@bz", n + 1..=n + 1, &[]));
        }
        assert_eq!(m.logs_appended_since(Some(0)).logs, None);
        let recent = m.logs_appended_since(Some(3 + 1));
        assert_eq!(recent.logs, Some(vec![log("c@bz")]));
    }

    #[test]
    fn welcomes_stay_hidden_until_flushed_and_deletes_are_not_gated() {
        let m = Watermark::default();
        let id = uuid::Uuid::new_v4();
        let welcome = keys::welcome_ref("u@bz", &id);
        let mut b = Batch::default();
        b.put(welcome.clone(), vec![1]);
        b.delete(outbox("p", 9));
        applied(&m, 1, &b);
        assert!(m.is_unflushed(&welcome));
        assert!(!m.is_unflushed(&keys::welcome_ref("v@bz", &id)));
        assert_eq!(m.readable_upto(b"o/p\0"), u64::MAX);
        m.flushed(1);
        assert!(!m.is_unflushed(&welcome));
    }

    #[tokio::test]
    async fn log_heads_only_grow_and_membership_writes_are_counted_once_applied() {
        let dir = tempfile::tempdir().unwrap();
        let e: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let d = Durability::start(e.clone()).unwrap();
        let log = keys::log_prefix("a@bz");
        assert_eq!(d.watermark().head(&log), None);
        let mut b = Batch::default();
        b.put(keys::log("a@bz", 3), vec![3]);
        b.put(keys::log("a@bz", 4), vec![4]);
        d.apply(b).unwrap();
        assert_eq!(d.watermark().head(&log), Some(4));
        assert_eq!(d.watermark().member_writes(), 0);
        // Retention deletes entries: the head stays where the log reached.
        let mut b = Batch::default();
        b.delete(keys::log("a@bz", 4));
        b.put(keys::member("u@bz", "a@bz"), vec![1]);
        d.apply(b).unwrap();
        assert_eq!(d.watermark().head(&log), Some(4));
        assert_eq!(d.watermark().member_writes(), 1);
        assert_eq!(d.watermark().head(&keys::log_prefix("b@bz")), None);
        d.stop().await.unwrap();
    }

    #[tokio::test]
    async fn welcome_writes_are_counted_per_user_once_applied_and_deletes_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let e: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let d = Durability::start(e.clone()).unwrap();
        let w = d.watermark();
        let id = uuid::Uuid::from_u128(7);
        // Two users in different buckets (buckets are random per process).
        let other = (0..)
            .map(|i| format!("b{i}@bz"))
            .find(|o| !w.same_welcome_bucket("a@bz", o))
            .unwrap();
        let other = other.as_str();
        assert_eq!((w.welcome_writes("a@bz"), w.welcome_writes(other)), (0, 0));
        let mut b = Batch::default();
        b.put(keys::welcome_ref("a@bz", &id), vec![1]);
        b.put(keys::welcome("a@bz", &id), vec![1]);
        d.apply(b).unwrap();
        // One batch, one count, for a@bz only (`other` does not share its bucket).
        assert_eq!(w.welcome_writes("a@bz"), 1);
        assert_eq!(w.welcome_writes(other), 0);
        let mut b = Batch::default();
        b.put(keys::welcome_ref(other, &id), vec![1]);
        b.delete(keys::welcome_ref("a@bz", &id));
        d.apply(b).unwrap();
        assert_eq!((w.welcome_writes("a@bz"), w.welcome_writes(other)), (1, 1));
        // Other keys are no welcomes.
        let mut b = Batch::default();
        b.put(keys::member("a@bz", "c@bz"), vec![1]);
        d.apply(b).unwrap();
        assert_eq!(w.welcome_writes("a@bz"), 1);
        d.stop().await.unwrap();
    }

    /// An engine that fails in one way.
    #[derive(Debug)]
    enum Broken {
        /// Every batch fails to apply.
        Refusing,
        /// Every flush panics.
        Panicking,
    }
    use Broken::{Panicking, Refusing};

    impl Engine for Broken {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
            Ok(None)
        }
        fn scan(&self, _: &[u8], _: Option<&[u8]>, _: usize) -> Result<Vec<Pair>, RelayError> {
            Ok(Vec::new())
        }
        fn last(&self, _: &[u8]) -> Result<Option<Pair>, RelayError> {
            Ok(None)
        }
        fn apply(&self, _: Batch) -> Result<(), RelayError> {
            match self {
                Refusing => Err(StoreError::Injected("disk full").into()),
                Panicking => Ok(()),
            }
        }
        fn flush(&self) -> Result<(), RelayError> {
            match self {
                Refusing => Ok(()),
                Panicking => panic!("injected flush panic"),
            }
        }
    }

    #[tokio::test]
    async fn a_flush_that_panics_fails_its_waiters_and_the_next_flush_runs() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let observed = seen.clone();
        let d = Durability::start_observed(
            Applier::new(Arc::new(Panicking)),
            Some(Arc::new(move |_, ok| observed.lock().unwrap().push(ok))),
        )
        .unwrap();
        d.apply(appends("a@bz", 1..=1, &[1])).unwrap();
        for _ in 0..2 {
            let err = d.wait().await.unwrap_err();
            assert!(
                matches!(&err, RelayError::Store(StoreError::Flush(e))
                    if matches!(e.as_ref(), RelayError::Store(StoreError::FlushPanicked))),
                "{err}"
            );
        }
        assert_eq!(*seen.lock().unwrap(), vec![false, false]);
        assert_eq!(d.watermark().durable(), 0, "nothing counts as on disk");
        assert!(d.stop().await.is_err());
    }

    #[tokio::test]
    async fn a_batch_that_fails_to_apply_is_forgotten() {
        let d = Durability::start(Arc::new(Refusing)).unwrap();
        assert!(d.apply(appends("a@bz", 1..=1, &[1])).is_err());
        let m = d.watermark();
        assert_eq!(m.applied(), 0);
        assert_eq!(m.readable_upto(&keys::log_prefix("a@bz")), u64::MAX);
        assert_eq!(m.readable_upto(b"o/p\0"), u64::MAX);
        assert_eq!(
            d.apply(Batch::default()).unwrap(),
            0,
            "an empty batch writes nothing"
        );
    }

    #[tokio::test]
    async fn a_wait_makes_everything_applied_before_it_readable() {
        let dir = tempfile::tempdir().unwrap();
        let e: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let d = Durability::start(e.clone()).unwrap();
        let a = keys::log_prefix("a@bz");
        assert_eq!(d.apply(appends("a@bz", 1..=2, &[1])).unwrap(), 1);
        assert_eq!(d.apply(appends("a@bz", 3..=3, &[2])).unwrap(), 2);
        // Applied: in the store at once, but not readable.
        assert!(e.get(&keys::log("a@bz", 3)).unwrap().is_some());
        assert_eq!(d.watermark().readable_upto(&a), 0);
        d.wait().await.unwrap();
        assert_eq!(d.watermark().durable(), 2);
        assert_eq!(d.watermark().readable_upto(&a), u64::MAX);
        assert_eq!(d.watermark().readable_upto(b"o/p\0"), u64::MAX);
        d.stop().await.unwrap();
    }
}
