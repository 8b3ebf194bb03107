//! [`Engine`] on sled, made durable by the store's own [`journal`](super::journal).
//!
//! sled applies every batch in memory at once; [`Engine::flush`] writes and syncs
//! the journal rather than flushing sled (one `fdatasync` on the caller's thread,
//! where a sled flush wakes its whole I/O thread pool). sled itself is flushed at
//! checkpoints, when a journal file fills, and when the store is opened after the
//! journal was replayed.

use std::sync::Arc;

use super::journal::{self, Journal, Op};
use super::{Batch, Engine, Pair, keys};
use crate::error::{RelayError, StoreError};

/// [`Engine`] on one sled tree and a journal.
#[derive(Debug, Clone)]
pub struct SledEngine {
    tree: sled::Tree,
    journal: Arc<Journal>,
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
            // The replayed batches must be in sled for good before their files go.
            db.flush()?;
        }
        let checkpointed = db.clone();
        let journal = Journal::start(
            &journal_dir,
            last,
            previous,
            Arc::new(move || {
                checkpointed.flush()?;
                Ok(())
            }),
        )?;
        Ok(Self {
            tree,
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
        self.journal
            .record(batch.into_ops(), |lsn, ops| apply_to(&self.tree, lsn, ops))
    }

    fn flush(&self) -> Result<(), RelayError> {
        self.journal.sync()
    }
}
