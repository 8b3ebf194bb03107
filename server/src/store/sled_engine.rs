//! [`Engine`] on sled, made durable by the store's own [`journal`](super::journal).
//!
//! A batch goes to the journal (in order) and into an in-memory overlay of the
//! writes sled does not hold yet; reads see the overlay over sled. [`Engine::flush`]
//! writes and syncs the journal (one `fdatasync` on the caller's thread) and then
//! moves the overlay into sled as ONE sled batch, with the journal position of the
//! last batch it holds (`J/`). sled pays its per-batch cost (every sled batch rolls
//! and writes its log buffer, waking its I/O thread pool) once per group commit
//! rather than once per relay batch. sled itself is flushed at checkpoints, when a
//! journal file fills, and when the store is opened after the journal was replayed.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::journal::{self, Journal, Op};
use super::{Batch, Engine, Pair, keys};
use crate::error::{RelayError, StoreError};

/// The overlay is moved into sled early once it holds this many keys (a relay that
/// writes without ever waiting for a flush).
const DRAIN_AT: usize = 65_536;

/// [`Engine`] on one sled tree, an overlay and a journal.
#[derive(Debug, Clone)]
pub struct SledEngine {
    inner: Arc<Inner>,
    journal: Arc<Journal>,
}

#[derive(Debug)]
struct Inner {
    tree: sled::Tree,
    overlay: RwLock<Overlay>,
    /// Held while the overlay moves into sled: one move at a time, in order.
    draining: Mutex<()>,
}

/// Writes of batches sled does not hold yet: key → (the batch that wrote it last,
/// the value, `None` deleted), and the last batch recorded.
#[derive(Debug, Default)]
struct Overlay {
    writes: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
    lsn: u64,
}

impl Inner {
    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(PoisonError::into_inner)
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
        b.insert(keys::JOURNAL, &upto.to_be_bytes());
        self.tree.apply_batch(b)?;
        // Only now: a reader that finds a key gone from the overlay finds it in sled.
        self.overlay
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .writes
            .retain(|_, (lsn, _)| *lsn > upto);
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
        // The overlay's part first, copied (it holds one group commit's writes), then
        // sled: a key that leaves the overlay meanwhile is in sled by then, with the
        // value copied or a later one. Writers never wait for a scan.
        let pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .overlay()
            .writes
            .range(range.clone())
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let stored = self.tree.range::<Vec<u8>, _>(range);
        let (mut pending, mut stored): (Pending, Stored) = if reverse {
            (Box::new(pending.into_iter().rev()), Box::new(stored.rev()))
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

impl SledEngine {
    /// Opens (or creates) the store in `dir` (the engine in `dir/store`, the journal
    /// in `dir/journal`), bringing the engine up to the journal's last whole batch.
    pub fn open(dir: &std::path::Path) -> Result<Self, RelayError> {
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
        let mut replayed = 0u64;
        let (last, previous) = journal::replay(&journal_dir, applied, |lsn, ops| {
            replayed += 1;
            apply_to(&tree, lsn, ops)
        })?;
        if replayed > 0 {
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
            }),
            draining: Mutex::new(()),
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
        })
    }
}

/// Applies batch `lsn` to the tree, with the journal position, atomically.
fn apply_to(tree: &sled::Tree, lsn: u64, ops: Vec<Op>) -> Result<(), RelayError> {
    let mut b = sled::Batch::default();
    for (k, v) in ops {
        match v {
            Some(v) => b.insert(k, v),
            None => b.remove(k),
        }
    }
    b.insert(keys::JOURNAL, &lsn.to_be_bytes());
    tree.apply_batch(b)?;
    Ok(())
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
        let inner = &self.inner;
        self.journal.record(batch.into_ops(), |lsn, ops| {
            let mut overlay = inner
                .overlay
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (k, v) in ops {
                overlay.writes.insert(k, (lsn, v));
            }
            overlay.lsn = lsn;
            Ok(())
        })?;
        // The batch is recorded and visible: a failed early move is not its failure
        // (the next flush moves the overlay again).
        if inner.overlay().writes.len() >= DRAIN_AT
            && let Err(e) = inner.drain()
        {
            tracing::warn!(error = %e, "cannot move the store's overlay into sled yet");
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), RelayError> {
        self.journal.sync()?;
        self.inner.drain()
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
        for _ in 0..200 {
            match SledEngine::open(dir) {
                Ok(e) => return e,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        SledEngine::open(dir).unwrap()
    }

    #[test]
    fn reads_see_the_overlay_over_sled_as_one_store_across_flushes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = SledEngine::open(dir.path()).unwrap();
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
                    e = reopen(dir.path());
                }
                _ => {}
            }
            check(&e, &model, &mut rng);
        }
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
}
