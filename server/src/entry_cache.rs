//! Log entries as delivery sends them, read and encoded once per relay.
//!
//! Every device's delivery task needs the same entries of a community in the same
//! encoding. The first task to read an entry from the store decodes it, parses its
//! label and encodes its push frame, and puts the result here; the others take the
//! shared copy. The per-device decision (does this member's clearance admit the
//! label?) stays with each task.
//!
//! Only entries readable by delivery go in (on disk, or released early from a hub:
//! [`Relay::readable_upto`](crate::core::Core::readable_upto)): such an entry
//! never changes under its seq. Retention deletes entries, so it calls
//! [`EntryCache::forget`] for the community it swept, which also moves the
//! community's generation: a task that read entries from the store before the
//! sweep offers them with the generation it saw then, and they are not kept. What
//! the cache holds is bounded in bytes; the oldest entries go first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use kring_policy::Label;

/// One log entry, ready to push.
#[derive(Debug)]
pub struct SharedEntry {
    /// Its seq in the community's log.
    pub seq: u64,
    /// The encoded [`Push::Entry`](kring_protocol::wire::Push::Entry) frame.
    pub frame: Vec<u8>,
    /// For a notice: its id and its label (or why the stored label is unreadable),
    /// which each device's clearance must admit.
    pub notice: Option<(uuid::Uuid, Result<Label, String>)>,
}

/// Shared entries of every community, bounded in bytes.
#[derive(Debug)]
pub struct EntryCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_community: HashMap<String, BTreeMap<u64, Arc<SharedEntry>>>,
    /// Insertion order, for eviction.
    order: VecDeque<(String, u64)>,
    bytes: usize,
    /// Per community, how often it was forgotten.
    generations: HashMap<String, u64>,
}

/// What an entry counts against the bound.
fn cost(community: &str, e: &SharedEntry) -> usize {
    e.frame.len() + community.len() + 64
}

impl EntryCache {
    /// A cache holding at most about `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entries of `community` with consecutive seqs `after + 1, after + 2, …`,
    /// none past `upto`, at most `limit`: stops at the first one not held.
    pub fn run(
        &self,
        community: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Vec<Arc<SharedEntry>> {
        let inner = self.lock();
        let Some(log) = inner.by_community.get(community) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        for (&seq, e) in log.range(next..=upto) {
            if seq != next || out.len() >= limit {
                break;
            }
            out.push(e.clone());
            next = seq.saturating_add(1);
        }
        out
    }

    /// The generation of `community`'s entries: read it before reading entries from
    /// the store, and offer them with it ([`EntryCache::insert`]).
    pub fn generation(&self, community: &str) -> u64 {
        self.lock().generations.get(community).copied().unwrap_or(0)
    }

    /// Keeps `entry` of `community`, read from the store in `generation`, evicting
    /// the oldest entries beyond the bound; not if the community was forgotten since.
    pub fn insert(&self, community: &str, generation: u64, entry: Arc<SharedEntry>) {
        let size = cost(community, &entry);
        if size > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        if inner.generations.get(community).copied().unwrap_or(0) != generation {
            return;
        }
        let seq = entry.seq;
        let log = inner.by_community.entry(community.to_string()).or_default();
        if log.insert(seq, entry).is_some() {
            return; // another task put it in first; counted once
        }
        inner.bytes += size;
        inner.order.push_back((community.to_string(), seq));
        while inner.bytes > self.max_bytes {
            let Some((c, s)) = inner.order.pop_front() else {
                break;
            };
            let removed = match inner.by_community.get_mut(&c) {
                Some(log) => {
                    let removed = log.remove(&s);
                    if log.is_empty() {
                        inner.by_community.remove(&c);
                    }
                    removed
                }
                None => None,
            };
            if let Some(e) = removed {
                inner.bytes = inner.bytes.saturating_sub(cost(&c, &e));
            }
        }
    }

    /// Drops every entry of `community` (its log changed other than by appending).
    pub fn forget(&self, community: &str) {
        let mut inner = self.lock();
        let generation = inner.generations.entry(community.to_string()).or_insert(0);
        *generation = generation.wrapping_add(1);
        if let Some(log) = inner.by_community.remove(community) {
            let freed: usize = log.values().map(|e| cost(community, e)).sum();
            inner.bytes = inner.bytes.saturating_sub(freed);
            inner.order.retain(|(c, _)| c != community);
        }
    }

    /// Bytes held (as counted against the bound).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, size: usize) -> Arc<SharedEntry> {
        Arc::new(SharedEntry {
            seq,
            frame: vec![0; size],
            notice: None,
        })
    }

    fn seqs(run: &[Arc<SharedEntry>]) -> Vec<u64> {
        run.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_run_is_consecutive_bounded_and_stops_at_a_gap() {
        let c = EntryCache::new(1 << 20);
        for seq in [1, 2, 3, 5, 6] {
            c.insert("a@bz", 0, entry(seq, 10));
        }
        assert_eq!(seqs(&c.run("a@bz", 0, 100, 100)), vec![1, 2, 3]);
        assert_eq!(seqs(&c.run("a@bz", 1, 2, 100)), vec![2]);
        assert_eq!(seqs(&c.run("a@bz", 0, 100, 2)), vec![1, 2]);
        assert!(c.run("a@bz", 3, 100, 100).is_empty(), "4 is missing");
        assert_eq!(seqs(&c.run("a@bz", 4, 100, 100)), vec![5, 6]);
        assert!(c.run("b@bz", 0, 100, 100).is_empty());
    }

    #[test]
    fn the_oldest_entries_go_first_and_the_bound_holds() {
        let one = cost("a@bz", &entry(1, 100));
        let c = EntryCache::new(3 * one);
        for seq in 1..=5 {
            c.insert("a@bz", 0, entry(seq, 100));
            assert!(c.bytes() <= 3 * one);
        }
        assert_eq!(seqs(&c.run("a@bz", 2, 100, 100)), vec![3, 4, 5]);
        assert!(c.run("a@bz", 0, 100, 100).is_empty());
        // Putting the same entry twice counts it once.
        c.insert("a@bz", 0, entry(5, 100));
        assert_eq!(c.bytes(), 3 * one);
        // Too large for the cache at all: not kept, nothing evicted.
        c.insert("a@bz", 0, entry(6, 4 * one));
        assert_eq!(seqs(&c.run("a@bz", 2, 100, 100)), vec![3, 4, 5]);
    }

    #[test]
    fn forgetting_a_community_frees_its_entries_only() {
        let c = EntryCache::new(1 << 20);
        c.insert("a@bz", 0, entry(1, 10));
        c.insert("b@bz", 0, entry(1, 10));
        c.forget("a@bz");
        assert!(c.run("a@bz", 0, 10, 10).is_empty());
        assert_eq!(seqs(&c.run("b@bz", 0, 10, 10)), vec![1]);
        assert_eq!(c.bytes(), cost("b@bz", &entry(1, 10)));
    }

    #[test]
    fn entries_read_before_a_forget_are_not_kept_after_it() {
        let c = EntryCache::new(1 << 20);
        let read_at = c.generation("a@bz");
        c.forget("a@bz"); // retention swept while the entries were being read
        c.insert("a@bz", read_at, entry(1, 10));
        assert!(c.run("a@bz", 0, 10, 10).is_empty());
        c.insert("a@bz", c.generation("a@bz"), entry(1, 10));
        assert_eq!(seqs(&c.run("a@bz", 0, 10, 10)), vec![1]);
    }
}
