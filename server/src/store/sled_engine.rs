//! [`Engine`] on sled, made durable by the store's own [`journal`](super::journal).
//!
//! A batch goes to the journal (in order) and into an in-memory overlay of the
//! writes sled does not hold yet; reads see the overlay over sled. [`Engine::flush`]
//! writes and syncs the journal (one `fdatasync` on the caller's thread). The overlay
//! is moved into sled as ONE atomic sled batch, with the journal position of the last
//! batch it holds (`J/`), by a thread of its own once it holds [`DrainAt::keys`] keys
//! or [`DrainAt::bytes`] bytes: sled pays its per-batch cost (every sled batch rolls
//! and writes its log buffer with a synchronous `sync_file_range`, waking its I/O
//! thread pool) once per few dozen writes rather than once per group commit, and
//! off the commits' way to their acknowledgement. Should that thread fall behind, a
//! flush moves the overlay itself once it reaches eight times the bound (at least
//! 2,048 keys or 2 MiB; at the bound itself if the thread does not run), and fails
//! if the move fails: no acknowledgement goes out while sled refuses
//! writes, and the overlay stays bounded. sled itself is flushed at checkpoints,
//! when a journal file fills, and when the store is opened after the journal was
//! replayed.
//!
//! A move is one sled batch because it may hold batches the journal has not synced
//! yet: sled then holds whole batches or none of them, never part of one.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::journal::{self, Journal};
use super::{Batch, Engine, Pair, keys};
use crate::error::{RelayError, StoreError};

/// When the overlay is moved into sled: in the background once it holds `keys`
/// keys or `bytes` bytes (keys and values), by a flush at [`DrainAt::hard`] (or at
/// this bound when no thread runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainAt {
    /// Keys in the overlay.
    pub keys: usize,
    /// Bytes of keys and values in the overlay.
    pub bytes: usize,
}

impl DrainAt {
    /// What a relay uses: 64 writes or 64 KiB. Larger moves write bursts to disk
    /// that hold up the journal's syncs (at 1,000 notices/s on fresh relays,
    /// delivery p99 was lowest at 64 of 16, 64, 128 and 256 keys, and far higher at
    /// 1,024 and 4,096); smaller ones pay sled's per-batch cost more often.
    pub const DEFAULT: DrainAt = DrainAt {
        keys: 64,
        bytes: 64 << 10,
    };

    fn reached(&self, keys: usize, bytes: usize) -> bool {
        keys >= self.keys || bytes >= self.bytes
    }

    /// The bound at which a flush moves the overlay while the thread runs.
    fn hard(&self) -> DrainAt {
        DrainAt {
            keys: self.keys.saturating_mul(HARD).max(HARD_FLOOR.keys),
            bytes: self.bytes.saturating_mul(HARD).max(HARD_FLOOR.bytes),
        }
    }
}

/// While the thread runs, a flush moves the overlay itself only once it holds this
/// multiple of [`DrainAt`], and at least [`HARD_FLOOR`]: an ordinary commit (a
/// filing of a few hundred notices, one notice of the largest size) never reaches
/// it, so the move stays off the commits' way unless the thread falls far behind.
const HARD: usize = 8;
/// The least hard bound: 2,048 keys or 2 MiB.
const HARD_FLOOR: DrainAt = DrainAt {
    keys: 2_048,
    bytes: 2 << 20,
};

/// Opening the store replays the journal into sled in batches of about this many
/// keys (whole journal batches, each sled batch with the position of its last).
const REPLAY_KEYS: usize = 4_096;

/// [`Engine`] on one sled tree, an overlay and a journal.
#[derive(Debug, Clone)]
pub struct SledEngine {
    inner: Arc<Inner>,
    journal: Arc<Journal>,
    /// Wakes the thread that moves the overlay into sled.
    drainer: Arc<Drainer>,
    drain_at: DrainAt,
}

/// The thread that moves the overlay into sled whenever it is woken. It ends, and is
/// waited for, when the last handle to the engine goes (a checkpoint still running
/// then holds the store open until it ends).
#[derive(Debug)]
struct Drainer {
    /// `None`: no thread could be started, and flushes move the overlay themselves.
    wake: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drainer {
    fn start(inner: Arc<Inner>) -> Self {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("kring-drain".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    if let Err(e) = inner.drain() {
                        tracing::warn!(error = %e, "cannot move the store's overlay into sled yet");
                    }
                }
            });
        match spawned {
            Ok(thread) => Self {
                wake: Some(wake),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the store's drain thread; flushes move \
                    the overlay into sled themselves");
                Self {
                    wake: None,
                    thread: None,
                }
            }
        }
    }

    /// Wakes the thread (if it runs).
    fn wake(&self) {
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }

    /// Whether the thread runs (it ends only with the engine, or if a move panics).
    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct Inner {
    tree: sled::Tree,
    overlay: RwLock<Overlay>,
    /// Held while the overlay moves into sled: one move at a time, in order.
    draining: Mutex<()>,
}

/// Writes of batches sled does not hold yet: key → (the batch that wrote it last,
/// the value, `None` deleted), the last batch recorded, and the bytes of keys and
/// values held.
#[derive(Debug, Default)]
struct Overlay {
    writes: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
    lsn: u64,
    bytes: usize,
}

/// Bytes an overlay entry counts for.
fn entry_bytes(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

impl Inner {
    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys and bytes the overlay holds.
    fn size(&self) -> (usize, usize) {
        let overlay = self.overlay();
        (overlay.writes.len(), overlay.bytes)
    }

    /// Moves every write of the overlay into sled as one batch with its journal
    /// position; the overlay keeps only what was written meanwhile.
    fn drain(&self) -> Result<(), RelayError> {
        let _one = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
        let mut b = sled::Batch::default();
        let upto = {
            let overlay = self.overlay();
            if overlay.writes.is_empty() {
                return Ok(());
            }
            for (k, (_, v)) in &overlay.writes {
                match v {
                    Some(v) => b.insert(k.as_slice(), v.as_slice()),
                    None => b.remove(k.as_slice()),
                }
            }
            overlay.lsn
        };
        // One atomic sled batch: it may hold batches the journal has not synced yet,
        // so sled holds every batch up to `upto` or none of them.
        b.insert(keys::JOURNAL, &upto.to_be_bytes());
        self.tree.apply_batch(b)?;
        // Only now: a reader that finds a key gone from the overlay finds it in sled.
        let mut overlay = self.overlay.write().unwrap_or_else(PoisonError::into_inner);
        let mut freed = 0;
        overlay.writes.retain(|k, (lsn, v)| {
            let keep = *lsn > upto;
            if !keep {
                freed += entry_bytes(k, v);
            }
            keep
        });
        overlay.bytes = overlay.bytes.saturating_sub(freed);
        Ok(())
    }

    /// Pairs of `range` from the overlay over sled, in key order (or reversed), at
    /// most `limit`, stopping once they reach `max_bytes`.
    fn merged(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        limit: usize,
        max_bytes: usize,
        reverse: bool,
    ) -> Result<Vec<Pair>, RelayError> {
        type Pending = Box<dyn Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>>;
        type Stored = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>>;
        if is_empty(&range) {
            return Ok(Vec::new());
        }
        // The overlay's part first, copied, then sled: a key that leaves the overlay
        // meanwhile is in sled by then, with the value copied or a later one. Writers
        // never wait for a scan. Copied in scan order only until it holds `limit`
        // values or `max_bytes`: the merge below stops before it would need a key
        // past the last one copied (every value copied comes out before it).
        let pending = self.overlay_part(&range, limit, max_bytes, reverse);
        let stored = self.tree.range::<Vec<u8>, _>(range);
        let (mut pending, mut stored): (Pending, Stored) = if reverse {
            (Box::new(pending.into_iter()), Box::new(stored.rev()))
        } else {
            (Box::new(pending.into_iter()), Box::new(stored))
        };
        let mut next_pending = pending.next();
        let mut next_stored = stored.next().transpose()?;
        let mut out = Vec::new();
        let mut total = 0usize;
        while out.len() < limit && total < max_bytes {
            let take_pending = match (&next_pending, &next_stored) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((pk, _)), Some((sk, _))) => {
                    let order = pk.as_slice().cmp(sk.as_ref());
                    if order == std::cmp::Ordering::Equal {
                        // The overlay's write replaces what sled holds.
                        next_stored = stored.next().transpose()?;
                        true
                    } else {
                        (order == std::cmp::Ordering::Less) != reverse
                    }
                }
            };
            let pair = if take_pending {
                let Some((k, v)) = next_pending.take() else {
                    break;
                };
                next_pending = pending.next();
                match v {
                    Some(v) => (k, v),
                    None => continue, // deleted
                }
            } else {
                let Some((k, v)) = next_stored.take() else {
                    break;
                };
                next_stored = stored.next().transpose()?;
                (k.to_vec(), v.to_vec())
            };
            total = total.saturating_add(pair.0.len() + pair.1.len());
            out.push(pair);
        }
        Ok(out)
    }
}

impl Inner {
    /// The overlay's writes in `range`, in scan order, up to and including the one
    /// that makes `limit` values or `max_bytes` (deletions copied as they come).
    fn overlay_part(
        &self,
        range: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
        limit: usize,
        max_bytes: usize,
        reverse: bool,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let overlay = self.overlay();
        let writes = overlay.writes.range::<Vec<u8>, _>(range.clone());
        let writes: Box<dyn Iterator<Item = _>> = if reverse {
            Box::new(writes.rev())
        } else {
            Box::new(writes)
        };
        let (mut values, mut bytes) = (0usize, 0usize);
        let mut out = Vec::new();
        for (k, (_, v)) in writes {
            if values >= limit || bytes >= max_bytes {
                break;
            }
            if v.is_some() {
                values += 1;
                bytes = bytes.saturating_add(entry_bytes(k, v));
            }
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

impl SledEngine {
    /// Opens (or creates) the store in `dir` (the engine in `dir/store`, the journal
    /// in `dir/journal`), bringing the engine up to the journal's last whole batch.
    pub fn open(dir: &std::path::Path) -> Result<Self, RelayError> {
        Self::open_with(dir, DrainAt::DEFAULT)
    }

    /// [`open`](Self::open), moving the overlay into sled at `drain_at`.
    pub fn open_with(dir: &std::path::Path, drain_at: DrainAt) -> Result<Self, RelayError> {
        Self::open_inner(dir, drain_at, true)
    }

    fn open_inner(
        dir: &std::path::Path,
        drain_at: DrainAt,
        drain_thread: bool,
    ) -> Result<Self, RelayError> {
        std::fs::create_dir_all(dir.join("journal")).map_err(|source| StoreError::CreateDir {
            dir: dir.join("journal"),
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
        let applied = match tree.get(keys::JOURNAL)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| RelayError::Corrupt {
                    key: String::from_utf8_lossy(keys::JOURNAL).into_owned(),
                    reason: format!("{} bytes, not 8", v.len()),
                })?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        };
        let journal_dir = dir.join("journal");
        // Every batch sled lacks, whole journal batches at a time into sled batches
        // of about REPLAY_KEYS keys, each with the position of its last: every
        // replayed record is on disk in the journal, so a crash between two of them
        // only replays the rest again.
        let mut replayed = 0u64;
        let mut missing = sled::Batch::default();
        let mut pending_keys = 0usize;
        let mut upto = applied;
        let (last, previous) = journal::replay(&journal_dir, applied, |lsn, ops| {
            replayed += 1;
            upto = lsn;
            for (k, v) in ops {
                pending_keys += 1;
                match v {
                    Some(v) => missing.insert(k, v),
                    None => missing.remove(k),
                }
            }
            if pending_keys >= REPLAY_KEYS {
                let mut b = std::mem::take(&mut missing);
                b.insert(keys::JOURNAL, &lsn.to_be_bytes());
                tree.apply_batch(b)?;
                pending_keys = 0;
            }
            Ok(())
        })?;
        if replayed > 0 {
            // Always, even with no writes left over: sled's position must reach
            // the journal's last batch before the files holding it go.
            missing.insert(keys::JOURNAL, &upto.to_be_bytes());
            tree.apply_batch(missing)?;
            tracing::info!(
                batches = replayed,
                "store brought up to date from its journal"
            );
        }
        if !previous.is_empty() {
            // The replayed batches (and what a killed relay left in the page cache)
            // must be in sled for good before their files go.
            db.flush()?;
            sync_all(&dir.join("store"))?;
        }
        let inner = Arc::new(Inner {
            tree,
            overlay: RwLock::new(Overlay {
                writes: BTreeMap::new(),
                lsn: last,
                bytes: 0,
            }),
            draining: Mutex::new(()),
        });
        let drainer = Arc::new(match drain_thread {
            true => Drainer::start(inner.clone()),
            false => Drainer {
                wake: None,
                thread: None,
            },
        });
        let checkpointed = inner.clone();
        let synced = dir.join("store");
        let journal = Journal::start(
            &journal_dir,
            last,
            previous,
            Arc::new(move || {
                // Every batch of the closed files is in the overlay or in sled:
                // into sled with it, then sled to disk.
                checkpointed.drain()?;
                db.flush()?;
                // sled's flush does not sync its files (nor its blob files at all).
                sync_all(&synced)?;
                Ok(())
            }),
        )?;
        Ok(Self {
            inner,
            journal: Arc::new(journal),
            drainer,
            drain_at,
        })
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

/// `fsync`s every file and directory under `dir`.
fn sync_all(dir: &std::path::Path) -> Result<(), RelayError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Journal { path, source }
    };
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let path = entry.map_err(io(&d))?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&path))?;
            }
        }
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(io(&d))?;
    }
    Ok(())
}

/// True if `range` holds no key (a start past its end).
fn is_empty((start, end): &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> bool {
    let (Bound::Included(s) | Bound::Excluded(s)) = start else {
        return false;
    };
    match end {
        Bound::Unbounded => false,
        Bound::Excluded(e) => s >= e,
        Bound::Included(e) => s > e || (s == e && matches!(start, Bound::Excluded(_))),
    }
}

/// The keys with `prefix`, strictly after `after` if given.
fn range_of(prefix: &[u8], after: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = match after {
        Some(a) => Bound::Excluded(a.to_vec()),
        None => Bound::Included(prefix.to_vec()),
    };
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    (start, end)
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        // The overlay first: a key it loses has been moved into sled by then.
        if let Some((_, v)) = self.inner.overlay().writes.get(key) {
            return Ok(v.clone());
        }
        Ok(self.inner.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, RelayError> {
        self.inner
            .merged(range_of(prefix, after), limit, usize::MAX, false)
    }

    fn scan_bounded(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pair>, RelayError> {
        self.inner
            .merged(range_of(prefix, after), limit, max_bytes, false)
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError> {
        Ok(self
            .inner
            .merged(range_of(prefix, None), 1, usize::MAX, true)?
            .pop())
    }

    fn apply(&self, batch: Batch) -> Result<(), RelayError> {
        // An empty batch changes nothing and takes no journal position: every
        // position the journal gives out is one sled records with its writes.
        if batch.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        self.journal.record(batch.into_ops(), |lsn, ops| {
            let mut overlay = inner
                .overlay
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (k, v) in ops {
                let added = entry_bytes(&k, &v);
                if let Some((_, old)) = overlay.writes.get(&k) {
                    let replaced = entry_bytes(&k, old);
                    overlay.bytes = overlay.bytes.saturating_sub(replaced);
                }
                overlay.writes.insert(k, (lsn, v));
                overlay.bytes = overlay.bytes.saturating_add(added);
            }
            overlay.lsn = lsn;
            Ok(())
        })?;
        // The batch is recorded and visible; the move into sled is the thread's (or,
        // past the hard bound, the next flush's).
        let (keys, bytes) = self.inner.size();
        if self.drain_at.reached(keys, bytes) {
            self.drainer.wake();
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), RelayError> {
        self.journal.sync()?;
        // The thread fell behind, failed, or does not run: move the overlay here,
        // and fail the flush (no acknowledgement) if sled refuses it.
        let (keys, bytes) = self.inner.size();
        let bound = if self.drainer.running() {
            self.drain_at.hard()
        } else {
            self.drain_at
        };
        if bound.reached(keys, bytes) {
            self.inner.drain()?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl SledEngine {
    /// Opens the store in `dir` once sled's background writes of a store just closed
    /// there have let go of its lock (within 5 s).
    pub(crate) fn open_once_free(
        dir: &std::path::Path,
        drain_at: DrainAt,
    ) -> Result<Self, RelayError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Self::open_with(dir, drain_at) {
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => return opened,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    fn check(e: &SledEngine, model: &BTreeMap<Vec<u8>, Vec<u8>>, rng: &mut Rng) {
        let pairs = |from: Option<&Vec<u8>>| -> Vec<Pair> {
            model
                .iter()
                .filter(|(k, _)| k.starts_with(b"x/") && from.is_none_or(|f| *k > f))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let after = format!("x/{:02}", rng.next(40)).into_bytes();
        let limit = 1 + rng.next(12) as usize;
        let mut want = pairs(Some(&after));
        want.truncate(limit);
        assert_eq!(e.scan(b"x/", Some(&after), limit).unwrap(), want);
        let all = pairs(None);
        assert_eq!(e.scan(b"x/", None, usize::MAX).unwrap(), all);
        assert_eq!(e.last(b"x/").unwrap(), all.last().cloned());
        let bound = 1 + rng.next(60) as usize;
        assert_eq!(
            e.scan_bounded(b"x/", None, usize::MAX, bound).unwrap(),
            e.scan(b"x/", None, usize::MAX)
                .map(|p| {
                    let mut total = 0;
                    let keep = p
                        .iter()
                        .position(|(k, v)| {
                            total += k.len() + v.len();
                            total >= bound
                        })
                        .map_or(p.len(), |i| i + 1);
                    p[..keep].to_vec()
                })
                .unwrap()
        );
        for i in 0..40 {
            let k = format!("x/{i:02}").into_bytes();
            assert_eq!(e.get(&k).unwrap(), model.get(&k).cloned(), "key {i}");
        }
    }

    /// Opens the store again once sled's background writes of the closed one have
    /// let go of its lock.
    fn reopen(dir: &std::path::Path) -> SledEngine {
        reopen_with(dir, DrainAt::DEFAULT)
    }

    fn reopen_with(dir: &std::path::Path, drain_at: DrainAt) -> SledEngine {
        SledEngine::open_once_free(dir, drain_at).unwrap()
    }

    /// Moves the overlay into sled after a few writes, in the background and (at
    /// eight times that, or without the thread) in a flush, while reads go on.
    const SMALL: DrainAt = DrainAt { keys: 6, bytes: 24 };

    #[test]
    fn reads_see_the_overlay_over_sled_as_one_store_across_flushes_and_reopens() {
        for drain_at in [DrainAt::DEFAULT, SMALL] {
            reads_see_one_store(drain_at, None);
        }
    }

    /// Journal files of a few hundred bytes: checkpoints run all the time, and most
    /// files written are reused ones, read back after every reopen.
    #[test]
    fn reads_see_one_store_while_journal_files_fill_and_are_reused() {
        for drain_at in [DrainAt::DEFAULT, SMALL] {
            let dir = reads_see_one_store(drain_at, Some(200));
            let journal = dir.path().join("journal");
            let names: Vec<String> = std::fs::read_dir(&journal)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let spares = names.iter().filter(|n| n.ends_with(".spare")).count();
            assert!((1..=journal::SPARE_FILES).contains(&spares), "{names:?}");
            let numbers: Vec<u64> = names
                .iter()
                .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
                .collect();
            assert!(numbers.iter().all(|&n| n > 10), "files rotated: {names:?}");
        }
    }

    fn reads_see_one_store(drain_at: DrainAt, checkpoint_every: Option<u64>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let open = |e: &SledEngine| {
            if let Some(bytes) = checkpoint_every {
                e.journal.checkpoint_every(bytes);
            }
        };
        let mut e = SledEngine::open_with(dir.path(), drain_at).unwrap();
        open(&e);
        let mut model = BTreeMap::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..400 {
            let mut b = Batch::default();
            for _ in 0..1 + rng.next(4) {
                let k = format!("x/{:02}", rng.next(40)).into_bytes();
                if rng.next(3) == 0 {
                    model.remove(&k);
                    b.delete(k);
                } else {
                    let v = vec![round as u8; rng.next(8) as usize];
                    model.insert(k.clone(), v.clone());
                    b.put(k, v);
                }
            }
            e.apply(b).unwrap();
            match rng.next(10) {
                0..=2 => e.flush().unwrap(),
                3 => {
                    e.flush().unwrap();
                    drop(e);
                    e = reopen_with(dir.path(), drain_at);
                    open(&e);
                }
                4 if checkpoint_every.is_some() => {
                    e.flush().unwrap();
                    e.journal.await_checkpoint();
                }
                _ => {}
            }
            check(&e, &model, &mut rng);
        }
        drop(e);
        dir
    }

    #[test]
    fn a_restart_without_moving_the_overlay_replays_it_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = SledEngine::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(b"x/a".to_vec(), b"1".to_vec());
            b.put(b"x/b".to_vec(), b"1".to_vec());
            e.apply(b).unwrap();
            e.flush().unwrap();
            // sled holds this batch; the next stays in the overlay.
            e.inner.drain().unwrap();
            let mut b = Batch::default();
            b.put(b"x/a".to_vec(), b"2".to_vec());
            b.delete(b"x/b".to_vec());
            e.apply(b).unwrap();
            // Durable in the journal only; sled never sees this batch.
            e.journal.sync().unwrap();
            assert_eq!(e.inner.tree.get(b"x/a").unwrap().unwrap().as_ref(), b"1");
            assert_eq!(e.get(b"x/a").unwrap(), Some(b"2".to_vec()));
        }
        let e = reopen(dir.path());
        assert_eq!(e.get(b"x/a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(e.get(b"x/b").unwrap(), None);
        assert_eq!(e.scan(b"x/", None, 10).unwrap().len(), 1);
    }

    #[test]
    fn an_empty_batch_leaves_no_gap_once_its_file_is_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = SledEngine::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(b"x/a".to_vec(), b"1".to_vec());
            e.apply(b).unwrap();
            e.flush().unwrap();
            e.inner.drain().unwrap();
            // Nothing to write, then the file closes and its checkpoint retires it.
            e.apply(Batch::default()).unwrap();
            e.journal.checkpoint_every(1);
            e.flush().unwrap();
            e.journal.await_checkpoint();
            e.journal.checkpoint_every(journal::CHECKPOINT_BYTES);
            let mut b = Batch::default();
            b.put(b"x/b".to_vec(), b"2".to_vec());
            e.apply(b).unwrap();
            e.flush().unwrap();
        }
        let e = reopen(dir.path());
        assert_eq!(e.get(b"x/a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"x/b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn the_overlay_moves_into_sled_in_the_background_once_it_passes_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open_with(dir.path(), SMALL).unwrap();
        let mut b = Batch::default();
        b.put(b"x/a".to_vec(), b"1".to_vec());
        e.apply(b).unwrap();
        e.flush().unwrap();
        // Below the bound: durable in the journal, still in the overlay only.
        assert_eq!(e.inner.tree.get(b"x/a").unwrap(), None);
        assert_eq!(e.inner.overlay().bytes, 4);
        let mut b = Batch::default();
        for i in 0..SMALL.keys {
            b.put(format!("y{i}").into_bytes(), Vec::new());
        }
        e.apply(b).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while e.inner.tree.get(b"x/a").unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "overlay never moved");
            std::thread::yield_now();
        }
        // Moved as one batch with its journal position; reads unchanged.
        let drained = e.inner.tree.get(keys::JOURNAL).unwrap().unwrap();
        assert_eq!(drained.as_ref(), &2u64.to_be_bytes());
        assert_eq!(e.scan(b"y", None, 100).unwrap().len(), SMALL.keys);
        assert_eq!(e.get(b"x/a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn without_its_thread_a_flush_moves_the_overlay_once_it_passes_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open_inner(dir.path(), SMALL, false).unwrap();
        let mut b = Batch::default();
        for i in 0..SMALL.keys {
            b.put(format!("y{i}").into_bytes(), Vec::new());
        }
        e.apply(b).unwrap();
        // Applied, not moved: only a flush moves it.
        assert_eq!(e.inner.tree.get(b"y0").unwrap(), None);
        e.flush().unwrap();
        assert_eq!(
            e.inner.tree.get(b"y0").unwrap(),
            Some(sled::IVec::from(&b""[..]))
        );
        assert!(e.inner.overlay().writes.is_empty());
        // Below the bound a flush leaves the overlay alone.
        let mut b = Batch::default();
        b.put(b"z".to_vec(), b"1".to_vec());
        e.apply(b).unwrap();
        e.flush().unwrap();
        assert_eq!(e.inner.tree.get(b"z").unwrap(), None);
        assert_eq!(e.get(b"z").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_restart_replays_a_long_journal_in_several_sled_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = SledEngine::open_inner(dir.path(), DrainAt::DEFAULT, false).unwrap();
            for round in 0..3 {
                let mut b = Batch::default();
                for i in 0..REPLAY_KEYS {
                    b.put(format!("x/{i:05}").into_bytes(), vec![round]);
                }
                e.apply(b).unwrap();
            }
            let mut b = Batch::default();
            b.delete(b"x/00001".to_vec());
            e.apply(b).unwrap();
            // Durable in the journal only (no flush: it would move the overlay).
            e.journal.sync().unwrap();
            assert_eq!(e.inner.tree.get(b"x/00000").unwrap(), None);
        }
        let e = reopen(dir.path());
        assert_eq!(
            e.inner.tree.get(keys::JOURNAL).unwrap().unwrap().as_ref(),
            &4u64.to_be_bytes()
        );
        assert_eq!(
            e.inner.tree.get(b"x/00000").unwrap().unwrap().as_ref(),
            &[2]
        );
        assert_eq!(e.get(b"x/00001").unwrap(), None);
        assert_eq!(
            e.scan(b"x/", None, usize::MAX).unwrap().len(),
            REPLAY_KEYS - 1
        );
    }

    #[test]
    fn overlay_bytes_count_each_key_once_with_its_latest_value() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(b"k".to_vec(), vec![0; 10]);
        e.apply(b).unwrap();
        let mut b = Batch::default();
        b.put(b"k".to_vec(), vec![0; 3]);
        b.delete(b"j".to_vec());
        e.apply(b).unwrap();
        assert_eq!(e.inner.overlay().bytes, 1 + 3 + 1);
        e.inner.drain().unwrap();
        assert_eq!(e.inner.overlay().bytes, 0);
        assert!(e.inner.overlay().writes.is_empty());
    }

    #[test]
    fn bounded_scans_over_a_large_overlay_with_deletions_return_what_the_store_holds() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        // In sled: x/00..x/19; in the overlay: the even ones deleted, x/20..x/39 new.
        let mut b = Batch::default();
        for i in 0..20 {
            b.put(format!("x/{i:02}").into_bytes(), vec![1]);
        }
        e.apply(b).unwrap();
        e.inner.drain().unwrap();
        let mut b = Batch::default();
        for i in (0..20).step_by(2) {
            b.delete(format!("x/{i:02}").into_bytes());
        }
        for i in 20..40 {
            b.put(format!("x/{i:02}").into_bytes(), vec![2]);
        }
        e.apply(b).unwrap();
        let want: Vec<String> = (1..20)
            .step_by(2)
            .chain(20..40)
            .map(|i| format!("x/{i:02}"))
            .collect();
        let names = |pairs: Vec<Pair>| -> Vec<String> {
            pairs
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        for limit in [1, 3, 10, 11, 25, 100] {
            let got = names(e.scan(b"x/", None, limit).unwrap());
            assert_eq!(got, want[..limit.min(want.len())], "limit {limit}");
        }
        let last = e.last(b"x/").unwrap().unwrap();
        assert_eq!(last.0, b"x/39".to_vec());
        // Each pair is 5 bytes: a bound of 12 stops after the third.
        let got = names(e.scan_bounded(b"x/", Some(b"x/05"), 100, 12).unwrap());
        assert_eq!(got, ["x/07", "x/09", "x/11"]);
        assert_eq!(e.inner.overlay().writes.len(), 30);
    }
}
