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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

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

/// [`Engine`] on one sled tree.
#[derive(Debug, Clone)]
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledEngine {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, RelayError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir.join("store"))
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.to_path_buf(),
                source,
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

    fn scan_bounded(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
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
        let mut total = 0usize;
        for item in self.tree.range::<Vec<u8>, _>((start, end)).take(limit) {
            let (k, v) = item?;
            total = total.saturating_add(k.len() + v.len());
            out.push((k.to_vec(), v.to_vec()));
            if total >= max_bytes {
                break;
            }
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
    Wait(oneshot::Sender<Result<(), Arc<RelayError>>>),
    Stop(oneshot::Sender<Result<(), Arc<RelayError>>>),
}

/// Group commit: one flush for every waiter queued while the previous flush ran.
#[derive(Debug, Clone)]
pub struct Durability {
    tx: mpsc::UnboundedSender<FlushMsg>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    engine: Arc<dyn Engine>,
    watermark: Arc<Watermark>,
    #[cfg(feature = "failpoints")]
    failpoint: Option<Arc<failpoint::Failpoint>>,
}

impl std::fmt::Debug for FlushMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlushMsg::Wait(_) => "Wait",
            FlushMsg::Stop(_) => "Stop",
        })
    }
}

/// Told how long each store flush took and whether it succeeded (the relay's metrics).
pub type FlushObserver = Arc<dyn Fn(std::time::Duration, bool) + Send + Sync>;

impl Durability {
    /// Starts the flusher task for `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        Self::start_observed(engine, None)
    }

    /// [`Durability::start`], telling `observer` about every flush.
    pub fn start_observed(engine: Arc<dyn Engine>, observer: Option<FlushObserver>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushMsg>();
        let watermark = Arc::new(Watermark::default());
        let durable = watermark.clone();
        let flushed = engine.clone();
        #[cfg(feature = "failpoints")]
        let failpoint = failpoint::Failpoint::from_env().map(Arc::new);
        #[cfg(feature = "failpoints")]
        let armed = failpoint.clone();
        let task = tokio::spawn(async move {
            let (engine, watermark) = (flushed, durable);
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
                // Every batch up to `upto` was applied before the flush starts, so the
                // flush covers it (later ones perhaps too: the next flush says so).
                let upto = watermark.applied();
                #[cfg(feature = "failpoints")]
                if let Some(failpoint) = &armed {
                    failpoint
                        .before_flush(engine.as_ref(), &watermark, upto)
                        .await;
                }
                let engine = engine.clone();
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || engine.flush())
                    .await
                    .map_err(|e| Arc::new(RelayError::from(e)))
                    .and_then(|r| r.map_err(Arc::new));
                if let Some(observe) = &observer {
                    observe(started.elapsed(), result.is_ok());
                }
                match &result {
                    // Before any waiter wakes: what it wakes others for must be readable.
                    Ok(()) => {
                        watermark.flushed(upto);
                        #[cfg(feature = "failpoints")]
                        if let Some(failpoint) = &armed {
                            failpoint.forget(|w| w <= upto);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "store flush failed"),
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
            engine,
            watermark,
            #[cfg(feature = "failpoints")]
            failpoint,
        }
    }

    /// Applies `batch` atomically (visible in the engine at once, durable after the
    /// next flush) and returns its write number (0 for an empty batch, which writes
    /// nothing). The [`Watermark`] keeps the log entries, outbox items and welcomes it
    /// adds from readers until a flush covers it.
    pub fn apply(&self, batch: Batch) -> Result<u64, RelayError> {
        if batch.is_empty() {
            return Ok(0);
        }
        // Write numbers follow the order in which batches reach the engine.
        let _serial = self
            .watermark
            .applying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = self.watermark.applied() + 1;
        #[cfg(feature = "failpoints")]
        if let Some(failpoint) = &self.failpoint {
            failpoint.before_apply(self.engine.as_ref(), n, &batch)?;
        }
        self.watermark.record(n, &batch);
        match self.engine.apply(batch) {
            Ok(()) => {
                self.watermark.lock().applied = n;
                Ok(n)
            }
            Err(e) => {
                self.watermark.forget(n);
                #[cfg(feature = "failpoints")]
                if let Some(failpoint) = &self.failpoint {
                    failpoint.forget(|w| w == n);
                }
                Err(e)
            }
        }
    }

    /// Runs `f` with no batch applied meanwhile (a consistent view of the whole
    /// store, for a backup). Writers wait until it returns.
    pub fn exclusive<T>(&self, f: impl FnOnce(&dyn Engine) -> T) -> T {
        let _serial = self
            .watermark
            .applying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(self.engine.as_ref())
    }

    /// What readers may see of the store.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
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
        rx: oneshot::Receiver<Result<(), Arc<RelayError>>>,
    ) -> Result<(), RelayError> {
        self.tx.send(msg).map_err(|_| StoreError::ShutDown)?;
        rx.await
            .map_err(|_| StoreError::ShutDown)?
            .map_err(|e| StoreError::Flush(e).into())
    }
}

/// Sequences whose new keys the [`Watermark`] keeps from readers until they are on
/// disk: keys `PREFIX NAME \0 SEQ` (SEQ a big-endian u64), the prefix up to the `\0`
/// naming the sequence. Community logs (`l/`, [`keys::log`]) and outboxes to peers
/// (`o/`, `federation`).
const GATED_SEQUENCES: [&[u8]; 2] = [keys::LOGS, crate::keyspace::OUTBOX];
/// Single keys the [`Watermark`] keeps from readers until they are on disk: pending
/// welcomes, per member (`w/`, [`keys::welcome`]) and by reference (`v/`,
/// [`keys::welcome_ref`]).
const GATED_KEYS: [&[u8]; 2] = [crate::keyspace::WELCOME, crate::keyspace::WELCOME_REF];

/// What the [`Watermark`] does with a key.
#[derive(Debug, PartialEq, Eq)]
enum Gate<'a> {
    /// An element `seq` of a sequence (named by the key without its seq).
    Sequence { sequence: &'a [u8], seq: u64 },
    /// A key readers must not see before it is durable.
    Key,
}

fn gate(key: &[u8]) -> Option<Gate<'_>> {
    if GATED_SEQUENCES.iter().any(|p| key.starts_with(p)) {
        let (sequence, seq) = key.split_at(key.len().checked_sub(8)?);
        if sequence.last() != Some(&0) {
            return None;
        }
        let seq = u64::from_be_bytes(seq.try_into().ok()?);
        return Some(Gate::Sequence { sequence, seq });
    }
    GATED_KEYS
        .iter()
        .any(|p| key.starts_with(p))
        .then_some(Gate::Key)
}

/// True if the [`Watermark`] gates `key` (for modules that own a gated key family).
pub fn is_gated(key: &[u8]) -> bool {
    gate(key).is_some()
}

/// The durable watermark: which new log entries, outbox items and welcomes readers
/// may hand to a peer or a device.
///
/// A batch is visible in the engine as soon as it is applied, but a crash before its
/// flush takes it back: the relay would then give a log or outbox sequence number a
/// device or peer already has to other content, or a device would hold the Welcome
/// of a commit that never happened. So every applied batch gets
/// a write number; [`Durability::apply`] records what it appends to a gated sequence
/// (the first seq per sequence) and which gated keys it writes; the flusher moves the
/// durable mark to the last write number applied before it flushed, and forgets
/// everything up to it. A reader sees a sequence up to just before its first
/// un-flushed element ([`Watermark::readable_upto`]) and no un-flushed gated key
/// ([`Watermark::is_unflushed`]). The bookkeeping is per batch and per sequence, not
/// per entry: a sequence costs one allocation when it first has un-flushed writes.
#[derive(Debug, Default)]
pub struct Watermark {
    state: Mutex<Unflushed>,
    /// Held by [`Durability::apply`] around recording and applying one batch.
    applying: Mutex<()>,
}

#[derive(Debug, Default)]
struct Unflushed {
    /// Write number of the last batch applied.
    applied: u64,
    /// Every batch up to this write number is on disk.
    durable: u64,
    /// Per gated sequence: the un-flushed writes that appended to it, oldest first,
    /// each with the first seq it appended.
    sequences: HashMap<Vec<u8>, VecDeque<(u64, u64)>>,
    /// Gated keys written by un-flushed batches, with the write number.
    keys: HashMap<Vec<u8>, u64>,
}

impl Watermark {
    fn lock(&self) -> MutexGuard<'_, Unflushed> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write number of the last batch applied.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Write number up to which everything is on disk.
    pub fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// The highest seq of `sequence` (a key prefix such as [`keys::log_prefix`]) a
    /// reader may hand on: everything below its first un-flushed element
    /// (`u64::MAX` when it has none).
    pub fn readable_upto(&self, sequence: &[u8]) -> u64 {
        let s = self.lock();
        match s
            .sequences
            .get(sequence)
            .and_then(|q| q.iter().map(|e| e.1).min())
        {
            Some(first) => first.saturating_sub(1),
            None => u64::MAX,
        }
    }

    /// True if gated `key` was written by a batch not yet on disk.
    pub fn is_unflushed(&self, key: &[u8]) -> bool {
        let s = self.lock();
        !s.keys.is_empty() && s.keys.contains_key(key)
    }

    /// Lets readers see, before the flush, what the writes `writes` appended to
    /// `sequence` (only for what a crash cannot change: see `Relay::deliver_early`).
    pub fn release(&self, writes: &[u64], sequence: &[u8]) {
        let mut s = self.lock();
        if let Some(q) = s.sequences.get_mut(sequence) {
            q.retain(|(w, _)| !writes.contains(w));
            if q.is_empty() {
                s.sequences.remove(sequence);
            }
        }
    }

    /// Records what batch `n` (about to be applied) appends and writes.
    fn record(&self, n: u64, batch: &Batch) {
        // First seq per sequence of this batch (a batch touches few sequences).
        let mut firsts: Vec<(&[u8], u64)> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for (key, value) in &batch.ops {
            if value.is_none() {
                continue; // a delete hands nothing new to readers
            }
            match gate(key) {
                Some(Gate::Sequence { sequence, seq }) => {
                    match firsts.iter_mut().find(|(name, _)| *name == sequence) {
                        Some((_, first)) => *first = (*first).min(seq),
                        None => firsts.push((sequence, seq)),
                    }
                }
                Some(Gate::Key) => keys.push(key),
                None => {}
            }
        }
        if firsts.is_empty() && keys.is_empty() {
            return;
        }
        let mut s = self.lock();
        for (sequence, first) in firsts {
            match s.sequences.get_mut(sequence) {
                Some(q) => q.push_back((n, first)),
                None => {
                    s.sequences
                        .insert(sequence.to_vec(), VecDeque::from([(n, first)]));
                }
            }
        }
        for key in keys {
            s.keys.insert(key.to_vec(), n);
        }
    }

    /// Forgets batch `n`, which was not applied.
    fn forget(&self, n: u64) {
        let mut s = self.lock();
        s.sequences.retain(|_, q| {
            q.retain(|(w, _)| *w != n);
            !q.is_empty()
        });
        s.keys.retain(|_, w| *w != n);
    }

    /// Everything up to write `upto` is on disk.
    fn flushed(&self, upto: u64) {
        let mut s = self.lock();
        if upto <= s.durable {
            return;
        }
        s.durable = upto;
        s.sequences.retain(|_, q| {
            while q.front().is_some_and(|(w, _)| *w <= upto) {
                q.pop_front();
            }
            !q.is_empty()
        });
        if !s.keys.is_empty() {
            s.keys.retain(|_, w| *w > upto);
        }
    }

    /// True if a write up to `upto` appended to a sequence whose name starts with
    /// `prefix` and is not yet on disk.
    #[cfg(feature = "failpoints")]
    fn appends_unflushed(&self, prefix: &[u8], upto: u64) -> bool {
        let s = self.lock();
        s.sequences
            .iter()
            .any(|(name, q)| name.starts_with(prefix) && q.iter().any(|(w, _)| *w <= upto))
    }
}

/// Crash injection for the multi-process tests, compiled only with the cargo feature
/// `failpoints` (off by default; only the `kring-tests` dev-dependency turns it on, so
/// a relay built on its own, for release or with `cargo build -p kring-relay`, has no
/// such code and never reads the variable).
///
/// `KRING_FAILPOINT=abort-before-log-flush[:FILE]`: the first flush that would make
/// a new log entry durable does not happen. The relay logs `failpoint
/// abort-before-log-flush: holding` (a warning) and keeps running without flushing
/// until `FILE` exists (at most 120 s; not at all without `:FILE`); then it puts the
/// store back as it was at the last flush, as a power cut would leave it (an exiting
/// process alone would not lose what the engine already wrote to the page cache),
/// and exits at once with code [`failpoint::EXIT_CODE`], running no destructor.
#[cfg(feature = "failpoints")]
pub mod failpoint {
    use std::path::PathBuf;
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    use super::{Batch, Engine, Watermark};
    use crate::error::RelayError;

    /// The environment variable that arms the failpoint.
    pub const VAR: &str = "KRING_FAILPOINT";
    /// The exit code of a relay the failpoint stopped.
    pub const EXIT_CODE: i32 = 86;
    const ABORT_BEFORE_LOG_FLUSH: &str = "abort-before-log-flush";
    const LONGEST_HOLD: Duration = Duration::from_secs(120);

    /// What a write overwrote: its write number, the key, the value before.
    type Undo = (u64, Vec<u8>, Option<Vec<u8>>);

    /// An armed failpoint.
    #[derive(Debug)]
    pub struct Failpoint {
        release: Option<PathBuf>,
        /// Every key the writes since the last flush changed, with its old value.
        undo: Mutex<Vec<Undo>>,
    }

    impl Failpoint {
        /// The failpoint `KRING_FAILPOINT` arms, if any.
        pub fn from_env() -> Option<Self> {
            let spec = std::env::var(VAR).ok()?;
            let (name, release) = match spec.split_once(':') {
                Some((name, file)) => (name, Some(PathBuf::from(file))),
                None => (spec.as_str(), None),
            };
            if name != ABORT_BEFORE_LOG_FLUSH {
                tracing::error!(failpoint = %name, "unknown failpoint ignored");
                return None;
            }
            tracing::warn!(failpoint = %name, "failpoint armed");
            Some(Self {
                release,
                undo: Mutex::new(Vec::new()),
            })
        }

        /// Before write `n` applies `batch`: remembers what it overwrites.
        pub(super) fn before_apply(
            &self,
            engine: &dyn Engine,
            n: u64,
            batch: &Batch,
        ) -> Result<(), RelayError> {
            let mut undo = self.undo.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, _) in &batch.ops {
                undo.push((n, key.clone(), engine.get(key)?));
            }
            Ok(())
        }

        /// Drops what writes `which` overwrote (flushed, or never applied).
        pub(super) fn forget(&self, which: impl Fn(u64) -> bool) {
            let mut undo = self.undo.lock().unwrap_or_else(PoisonError::into_inner);
            undo.retain(|(w, _, _)| !which(*w));
        }

        /// Called by the flusher before it flushes everything up to write `upto`.
        pub(super) async fn before_flush(
            &self,
            engine: &dyn Engine,
            watermark: &Watermark,
            upto: u64,
        ) {
            if !watermark.appends_unflushed(super::keys::LOGS, upto) {
                return;
            }
            tracing::warn!("failpoint {ABORT_BEFORE_LOG_FLUSH}: holding");
            if let Some(file) = &self.release {
                let deadline = tokio::time::Instant::now() + LONGEST_HOLD;
                while !file.exists() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // No batch applies from here on.
            let _serial = watermark
                .applying
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let restored = self.restore(engine);
            tracing::warn!(
                restored = restored.is_ok(),
                "failpoint {ABORT_BEFORE_LOG_FLUSH}: exiting without the flush"
            );
            std::process::exit(EXIT_CODE);
        }

        /// Undoes every write since the last flush, durably.
        fn restore(&self, engine: &dyn Engine) -> Result<(), RelayError> {
            let undo =
                std::mem::take(&mut *self.undo.lock().unwrap_or_else(PoisonError::into_inner));
            let mut back = Batch::default();
            for (_, key, old) in undo.into_iter().rev() {
                back.set(key, old);
            }
            engine.apply(back)?;
            engine.flush()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_crash_takes_back_exactly_the_writes_after_the_last_flush() {
            let dir = tempfile::tempdir().unwrap();
            let e = crate::store::SledEngine::open(dir.path()).unwrap();
            let fp = Failpoint {
                release: None,
                undo: Mutex::new(Vec::new()),
            };
            let write = |n: u64, ops: &[(&[u8], Option<&[u8]>)]| {
                let mut b = Batch::default();
                for (k, v) in ops {
                    b.set(k.to_vec(), v.map(<[u8]>::to_vec));
                }
                fp.before_apply(&e, n, &b).unwrap();
                e.apply(b).unwrap();
            };
            write(1, &[(b"k/a", Some(b"1")), (b"k/b", Some(b"1"))]);
            write(2, &[(b"k/a", Some(b"2")), (b"k/c", Some(b"2"))]);
            write(
                3,
                &[(b"k/a", Some(b"3")), (b"k/b", None), (b"k/a", Some(b"4"))],
            );
            fp.forget(|w| w <= 1); // write 1 was flushed
            fp.restore(&e).unwrap();
            assert_eq!(e.get(b"k/a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(e.get(b"k/b").unwrap(), Some(b"1".to_vec()));
            assert_eq!(e.get(b"k/c").unwrap(), None);
        }
    }
}

/// Key layout (the store's namespaces of [`crate::keyspace`]).
pub use crate::keyspace::store as keys;

#[cfg(test)]
mod tests {
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
        let d = Durability::start(e.clone());
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

    /// An engine whose batches fail.
    #[derive(Debug)]
    struct Refusing;

    impl Engine for Refusing {
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
            Err(StoreError::Injected("disk full").into())
        }
        fn flush(&self) -> Result<(), RelayError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_that_fails_to_apply_is_forgotten() {
        let d = Durability::start(Arc::new(Refusing));
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
        let d = Durability::start(e.clone());
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
