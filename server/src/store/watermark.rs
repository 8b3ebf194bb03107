//! The durable watermark: what readers may hand on before it is on disk.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Batch, keys};

/// Sequences whose new keys the [`Watermark`] keeps from readers until they are on
/// disk: keys `PREFIX NAME \0 SEQ` (SEQ a big-endian u64), the prefix up to the `\0`
/// naming the sequence. Community logs (`l/`, [`keys::log`]) and outboxes to peers
/// (`o/`, `federation`).
const GATED_SEQUENCES: [&[u8]; 2] = [keys::LOGS, crate::keyspace::OUTBOX];
/// Single keys the [`Watermark`] keeps from readers until they are on disk: pending
/// welcomes, per member (`w/`, [`keys::welcome`]) and by reference (`v/`,
/// [`keys::welcome_ref`]).
const GATED_KEYS: [&[u8]; 2] = [crate::keyspace::WELCOME, crate::keyspace::WELCOME_REF];

/// Most log appends the [`Watermark`] remembers for [`Watermark::logs_appended_since`];
/// a reader further behind looks at every log.
pub(super) const APPENDS_KEPT: usize = 16_384;

/// Buckets of [`Watermark::welcome_writes`]: users share a counter by a hash of
/// their name (a shared bucket only costs a needless walk), so the count is
/// bounded whatever the number of users.
const WELCOME_BUCKETS: u64 = 1024;

/// The user a pending welcome's key (`w/USER\0…` or `v/USER\0…`) is for; `None`
/// for any other key.
fn welcome_user(key: &[u8]) -> Option<&[u8]> {
    let rest = GATED_KEYS.iter().find_map(|p| key.strip_prefix(*p))?;
    rest.split(|b| *b == 0).next()
}

/// What the [`Watermark`] does with a key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate<'a> {
    /// An element `seq` of a sequence (named by the key without its seq).
    Sequence { sequence: &'a [u8], seq: u64 },
    /// A key readers must not see before it is durable.
    Key,
}

pub(super) fn gate(key: &[u8]) -> Option<Gate<'_>> {
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
/// a write number; [`Durability::apply`](super::Durability::apply) records what it appends to a gated sequence
/// (the first seq per sequence) and which gated keys it writes; the flusher moves the
/// durable mark to the last write number applied before it flushed, and forgets
/// everything up to it. A reader sees a sequence up to just before its first
/// un-flushed element ([`Watermark::readable_upto`]) and no un-flushed gated key
/// ([`Watermark::is_unflushed`]). The bookkeeping is per batch and per sequence, not
/// per entry: a sequence costs one allocation when it first has un-flushed writes.
#[derive(Debug, Default)]
pub struct Watermark {
    pub(super) state: Mutex<Unflushed>,
    /// Held by [`Durability::apply`](super::Durability::apply) around recording and applying one batch.
    pub(super) applying: Mutex<()>,
    /// Keys of the welcome buckets' hash, random per process: nobody can choose a
    /// user that shares another's bucket.
    buckets: std::collections::hash_map::RandomState,
}

#[derive(Debug, Default)]
pub(super) struct Unflushed {
    /// Write number of the last batch applied.
    pub(super) applied: u64,
    /// Every batch up to this write number is on disk.
    pub(super) durable: u64,
    /// Per gated sequence: the un-flushed writes that appended to it, oldest first,
    /// each with the first seq it appended.
    pub(super) sequences: HashMap<Vec<u8>, VecDeque<(u64, u64)>>,
    /// Gated keys written by un-flushed batches, with the write number.
    pub(super) keys: HashMap<Vec<u8>, u64>,
    /// Per gated sequence: the highest seq any batch of this run appended to it
    /// (recorded before the batch is applied, so never behind what readers see).
    pub(super) heads: HashMap<Vec<u8>, u64>,
    /// Counts the applied batches that wrote a membership record.
    pub(super) member_writes: u64,
    /// Per bucket of users, counts the applied batches that wrote a pending
    /// welcome for one of them (a bucket never written is 0).
    pub(super) welcome_writes: HashMap<u16, u64>,
    /// The last [`APPENDS_KEPT`] appends to a community log, numbered: (number, log).
    pub(super) appends: VecDeque<(u64, Vec<u8>)>,
    /// Number of the last append recorded (0: none yet).
    pub(super) last_append: u64,
}

/// The logs appended to since a reader's last look ([`Watermark::logs_appended_since`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Appended {
    /// The logs (by [`keys::log_prefix`]); `None` when appends the reader has not
    /// seen were forgotten: it looks at every log.
    pub logs: Option<Vec<Vec<u8>>>,
    /// Pass this next time.
    pub upto: u64,
}

impl Watermark {
    pub(super) fn lock(&self) -> MutexGuard<'_, Unflushed> {
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
    /// (`u64::MAX` when it has none). Ask after reading the store, never before:
    /// `u64::MAX` bounds nothing, and a batch applied between the two would slip
    /// through; a batch is recorded before it is applied, so one the read saw is
    /// known here.
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

    /// The highest seq appended to `sequence` since the relay started, if any was:
    /// a reader that has handed on everything up to it has nothing new there.
    pub fn head(&self, sequence: &[u8]) -> Option<u64> {
        self.lock().heads.get(sequence).copied()
    }

    /// Changes whenever an applied batch wrote a membership record: a reader that
    /// holds memberships read after seeing one value holds them current while it
    /// stays.
    pub fn member_writes(&self) -> u64 {
        self.lock().member_writes
    }

    /// Changes whenever an applied batch wrote a pending welcome for `user` (or
    /// for a user sharing its bucket); counted like
    /// [`member_writes`](Self::member_writes).
    pub fn welcome_writes(&self, user: &str) -> u64 {
        let bucket = self.welcome_bucket(user.as_bytes());
        self.lock()
            .welcome_writes
            .get(&bucket)
            .copied()
            .unwrap_or(0)
    }

    /// The [`welcome_writes`](Self::welcome_writes) bucket of `user`.
    fn welcome_bucket(&self, user: &[u8]) -> u16 {
        use std::hash::BuildHasher;
        u16::try_from(self.buckets.hash_one(user) % WELCOME_BUCKETS).unwrap_or_default()
    }

    /// The bucket of the user a pending welcome's key is for; `None` for any other
    /// key.
    pub(super) fn welcome_bucket_of(&self, key: &[u8]) -> Option<u16> {
        welcome_user(key).map(|user| self.welcome_bucket(user))
    }

    /// True if `a` and `b` share a welcome bucket (for tests that need two users
    /// apart).
    #[cfg(test)]
    pub(super) fn same_welcome_bucket(&self, a: &str, b: &str) -> bool {
        self.welcome_bucket(a.as_bytes()) == self.welcome_bucket(b.as_bytes())
    }

    /// Batch `n` was applied; it wrote membership records (`members`) and pending
    /// welcomes for the users of `welcomes` (buckets). One step: a flush (which
    /// covers the applied batches) never makes the batch readable before its counts
    /// moved.
    pub(super) fn note_applied(&self, n: u64, members: bool, welcomes: &[u16]) {
        let mut s = self.lock();
        s.applied = n;
        if members {
            s.member_writes = s.member_writes.wrapping_add(1);
        }
        for bucket in welcomes {
            let count = s.welcome_writes.entry(*bucket).or_insert(0);
            *count = count.wrapping_add(1);
        }
    }

    /// The community logs appended to after append number `since` (0 or `None`
    /// from a reader that has not looked yet: every log). Recorded before each
    /// batch is applied, like the heads: a reader that looks at a log too early
    /// finds nothing readable yet and must look again after the flush (see
    /// `delivery`'s pending logs).
    pub fn logs_appended_since(&self, since: Option<u64>) -> Appended {
        let s = self.lock();
        let upto = s.last_append;
        let oldest = s.appends.front().map_or(upto + 1, |(n, _)| *n);
        // Append numbers are consecutive: those after `since` are the deque's tail.
        let logs = since.filter(|since| *since + 1 >= oldest).map(|since| {
            let skip = usize::try_from(since + 1 - oldest).unwrap_or(usize::MAX);
            s.appends
                .iter()
                .skip(skip)
                .map(|(_, log)| log.clone())
                .collect::<Vec<_>>()
        });
        drop(s);
        let logs = logs.map(|mut logs| {
            logs.sort_unstable();
            logs.dedup();
            logs
        });
        Appended { logs, upto }
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
    pub(super) fn record(&self, n: u64, batch: &Batch) {
        // First and last seq per sequence of this batch (a batch touches few
        // sequences).
        let mut firsts: Vec<(&[u8], u64, u64)> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for (key, value) in &batch.ops {
            if value.is_none() {
                continue; // a delete hands nothing new to readers
            }
            match gate(key) {
                Some(Gate::Sequence { sequence, seq }) => {
                    match firsts.iter_mut().find(|(name, _, _)| *name == sequence) {
                        Some((_, first, last)) => {
                            *first = (*first).min(seq);
                            *last = (*last).max(seq);
                        }
                        None => firsts.push((sequence, seq, seq)),
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
        for (sequence, first, last) in firsts {
            if sequence.starts_with(keys::LOGS) {
                s.last_append += 1;
                let numbered = (s.last_append, sequence.to_vec());
                s.appends.push_back(numbered);
                if s.appends.len() > APPENDS_KEPT {
                    s.appends.pop_front();
                }
            }
            match s.heads.get_mut(sequence) {
                Some(head) => *head = (*head).max(last),
                None => {
                    s.heads.insert(sequence.to_vec(), last);
                }
            }
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
    pub(super) fn forget(&self, n: u64) {
        let mut s = self.lock();
        s.sequences.retain(|_, q| {
            q.retain(|(w, _)| *w != n);
            !q.is_empty()
        });
        s.keys.retain(|_, w| *w != n);
    }

    /// Everything up to write `upto` is on disk.
    pub(super) fn flushed(&self, upto: u64) {
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
    pub(super) fn appends_unflushed(&self, prefix: &[u8], upto: u64) -> bool {
        let s = self.lock();
        s.sequences
            .iter()
            .any(|(name, q)| name.starts_with(prefix) && q.iter().any(|(w, _)| *w <= upto))
    }
}
