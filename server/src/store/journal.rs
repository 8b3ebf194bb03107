//! The store's write-ahead journal: what makes an applied batch durable.
//!
//! The key-value engine applies every batch at once (readers see it) but is synced
//! to disk only now and then, at a checkpoint. What makes a batch durable before an
//! acknowledgement is the journal: each batch is encoded as one record, appended to
//! an in-memory buffer in the order the engine applied them, and [`Journal::sync`]
//! writes the buffer to the current journal file and `fdatasync`s it (one write and
//! one sync for every batch since the previous one: the relay's group commit).
//!
//! The engine records the journal position (*lsn*, 1, 2, …) of the last batch it
//! holds, atomically with those batches, so after any crash it knows exactly which
//! batches it holds: [`replay`] re-applies just the records after that position, in
//! order, and the store is the state after the last durable batch (or later, never
//! earlier, and always the state after some whole batch).
//!
//! Files: `DATA_DIR/journal/NNNNNNNNNNNNNNNN.log`, numbered in order. Once the current
//! file passes [`CHECKPOINT_BYTES`], the next sync starts a new file and a background
//! checkpoint makes the engine durable (every file of it synced, not only flushed);
//! files wholly covered by that checkpoint are then kept as spares
//! (`NNNNNNNNNNNNNNNN.spare`, at most [`SPARE_FILES`]; any more are deleted), and the
//! next file is a spare renamed, written over from its start. Writing over blocks the
//! file already has spares every sync a metadata commit (an append changes the
//! file's size; measured on ext4, an `fdatasync` of a few KiB takes about half as
//! long), and a checkpoint frees no 64 MiB of blocks at once, a burst that holds up
//! the syncs behind it (more so on a file system mounted with `discard`).
//!
//! Every file starts with a header holding a random key chosen when the file is
//! opened for writing (`MAGIC | key: u32 LE | crc32(magic, key): u32 LE`), and
//! every record's checksum is XORed with it: a record is read only as part of the
//! file it was written to. What a reused file held before fails every check under
//! its new key, and so do record-shaped bytes a client placed inside a value (it
//! cannot know the key of the file they are read back from; each planted record is
//! one guess that passes one time in 2³²). A file without a header, written by an
//! earlier release, is read with key 0 (plain checksums).
//!
//! Record: `len: u32 LE | crc32(len bytes, body) ^ key: u32 LE | body`, body =
//! `lsn: u64 LE | count: u32 LE | count × op`, op = `0 | klen: u32 | key` (delete)
//! or `1 | klen: u32 | key | vlen: u32 | value` (put). A damaged record after which
//! no whole record of a later batch follows in its file ends that file: it is a
//! write the crash interrupted (never acknowledged: an acknowledged record was
//! synced before anything after it was written) or the end of what was written over
//! a reused file, and is dropped with what follows it. A damaged record with a whole
//! later one after it is corruption, as is a later file that does not go on from the
//! last whole record (a file is closed only once all it holds is synced), and
//! opening fails. A damaged header is a damaged record at the file's start; as it
//! hides the file's key, a record of a later batch right after it under any key
//! counts as a whole later record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{RelayError, StoreError};

/// A journal file past this size is closed at the next sync and checkpointed.
pub const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// The largest record read back (a batch larger than this is corruption).
const MAX_RECORD: usize = 1 << 30;
/// Journal files kept for reuse once a checkpoint covers them.
pub const SPARE_FILES: usize = 2;
/// The fewest bytes a record takes: header, lsn and count.
const MIN_RECORD: usize = 8 + 8 + 4;
/// A journal file starts with its header: [`MAGIC`] | key: u32 LE | crc32(magic,
/// key): u32 LE.
const HEADER_LEN: usize = 12;
/// The first bytes of a journal file with a header. Read as a record's length they
/// exceed [`MAX_RECORD`], so a file without a header (written by an earlier release,
/// records from its first byte) is never taken for one with.
const MAGIC: [u8; 4] = *b"KRJ\xf1";

/// One write of a batch: key → new value, `None` deletes.
pub type Op = (Vec<u8>, Option<Vec<u8>>);

/// Appends the record of batch `lsn` with `ops` to `out` (nothing on error).
pub fn encode(lsn: u64, ops: &[Op], out: &mut Vec<u8>) -> Result<(), RelayError> {
    let start = out.len();
    let r = encode_at(lsn, ops, out, start);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn encode_at(lsn: u64, ops: &[Op], out: &mut Vec<u8>, start: usize) -> Result<(), RelayError> {
    let too_many = |what, count| StoreError::TooMany { what, count };
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&lsn.to_le_bytes());
    let count = u32::try_from(ops.len()).map_err(|_| too_many("writes", ops.len()))?;
    out.extend_from_slice(&count.to_le_bytes());
    let len32 = |n: usize| u32::try_from(n).map_err(|_| too_many("bytes", n));
    for (key, value) in ops {
        out.push(u8::from(value.is_some()));
        out.extend_from_slice(&len32(key.len())?.to_le_bytes());
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.extend_from_slice(&len32(value.len())?.to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    let body_len = out.len() - start - 8;
    if body_len > MAX_RECORD {
        return Err(too_many("bytes", body_len).into());
    }
    out[start..start + 4].copy_from_slice(&len32(body_len)?.to_le_bytes());
    let crc = checksum(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The checksum of a record: over its length field and its body, so a damaged
/// length cannot pass for a shorter or longer record.
fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// Decodes a record's body into its lsn and writes.
fn decode_body(body: &[u8]) -> Option<(u64, Vec<Op>)> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<usize> {
            let b: [u8; 4] = self.take(4)?.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(b)).ok()
        }
    }
    let mut c = Cursor(body);
    let lsn = u64::from_le_bytes(c.take(8)?.try_into().ok()?);
    let count = c.u32()?;
    // Every op takes at least five bytes: the count cannot claim more than that.
    let mut ops = Vec::with_capacity(count.min(body.len() / 5));
    for _ in 0..count {
        let put = match c.take(1)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        let klen = c.u32()?;
        let key = c.take(klen)?.to_vec();
        let value = if put {
            let vlen = c.u32()?;
            Some(c.take(vlen)?.to_vec())
        } else {
            None
        };
        ops.push((key, value));
    }
    c.0.is_empty().then_some((lsn, ops))
}

/// Binds the records in `buf` (as [`encode`] made them) to the file they are written
/// to: each checksum is XORed with the file's key.
fn seal(buf: &mut [u8], key: u32) {
    let mut at = 0usize;
    while let Some(h) = buf.get_mut(at..at + 8) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) ^ key;
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        at = at.saturating_add(8 + len);
    }
}

/// The header of a file whose records are sealed with `key`.
fn header(key: u32) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&key.to_le_bytes());
    let crc = crc32fast::hash(&h[..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a journal file's first bytes say about it.
#[derive(Debug, PartialEq)]
enum Header {
    /// No header (an earlier release's file): records from the first byte, key 0.
    None,
    /// A whole header: records after it, sealed with this key.
    Keyed(u32),
    /// A header that fails its checksum: the key it claims, if it holds one whole.
    Damaged(Option<u32>),
}

fn read_header(buf: &[u8]) -> Header {
    let magic_len = buf.len().min(MAGIC.len());
    if buf.is_empty() || buf[..magic_len] != MAGIC[..magic_len] {
        return Header::None;
    }
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Header::Damaged(None);
    };
    let key = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if h[..] == header(key)[..] {
        Header::Keyed(key)
    } else {
        Header::Damaged(Some(key))
    }
}

/// A fresh random key for a journal file, never 0 (the key of a file without a
/// header).
fn new_key() -> std::io::Result<u32> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b)
            .map_err(|_| std::io::Error::other("the system's random number generator failed"))?;
        let key = u32::from_le_bytes(b);
        if key != 0 {
            return Ok(key);
        }
    }
}

/// A whole record of the file with `key` at the start of `buf`: its lsn, its writes
/// and its length in bytes; or why the bytes there are not one.
fn parse(buf: &[u8], key: u32) -> Result<(u64, Vec<Op>, usize), &'static str> {
    let Some((header, rest)) = buf.split_first_chunk::<8>() else {
        return Err("a record header cut short");
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_RECORD {
        return Err("a record longer than any batch");
    }
    let Some(body) = rest.get(..len) else {
        return Err("a record cut short");
    };
    if checksum(&header[..4], body) ^ key != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Err("a record failing its checksum");
    }
    match decode_body(body) {
        Some((lsn, ops)) => Ok((lsn, ops, 8 + len)),
        None => Err("a record that does not decode"),
    }
}

/// True if a whole record of the file with `key`, of a batch after `last` and at
/// most `bound`, starts anywhere in `buf`. Only a record whose lsn lies in that
/// window is checked in full, so scanning megabytes stays linear.
fn whole_record_in(buf: &[u8], key: u32, last: u64, bound: u64) -> bool {
    (0..buf.len()).any(|i| {
        let lsn = buf
            .get(i + 8..i + 16)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        matches!(lsn, Some(lsn) if lsn > last && lsn <= bound)
            && matches!(parse(&buf[i..], key), Ok((lsn, _, _)) if lsn > last)
    })
}

/// True if `buf` starts with what decodes as a record of a batch after `last`, at
/// most `bound`, sealed with some key (the one its checksum implies).
fn record_under_any_key(buf: &[u8], last: u64, bound: u64) -> bool {
    let Some((header, rest)) = buf.split_first_chunk::<8>() else {
        return false;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    len <= MAX_RECORD
        && rest
            .get(..len)
            .and_then(decode_body)
            .is_some_and(|(lsn, _)| lsn > last && lsn <= bound)
}

/// The journal files in `dir`, in order (number, path).
fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RelayError> {
    numbered(dir, ".log")
}

/// The files in `dir` named by a number and `suffix`, in order (number, path).
fn numbered(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, RelayError> {
    let io = |source| StoreError::Journal {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            out.push((number, path));
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.log"))
}

/// The size past which a file is closed: [`CHECKPOINT_BYTES`] (in test builds,
/// [`JOURNAL_FILE_BYTES`](super::failpoint::JOURNAL_FILE_BYTES) may set another).
fn file_bytes() -> u64 {
    #[cfg(feature = "failpoints")]
    if let Some(bytes) = std::env::var(super::failpoint::JOURNAL_FILE_BYTES)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return bytes;
    }
    CHECKPOINT_BYTES
}

fn spare_name(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.spare"))
}

/// The spare files in `dir`.
fn spares(dir: &Path) -> Result<Vec<PathBuf>, RelayError> {
    Ok(numbered(dir, ".spare")?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// Keeps `path` (journal file `number`, wholly in the engine for good) as a spare if
/// fewer than [`SPARE_FILES`] are kept, else deletes it. The caller syncs the
/// directory.
fn retire(dir: &Path, number: u64, path: &Path, kept: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let spare = spare_name(dir, number);
    if kept.len() < SPARE_FILES && !spare.exists() {
        std::fs::rename(path, &spare)?;
        kept.push(spare);
        Ok(())
    } else {
        std::fs::remove_file(path)
    }
}

/// Opens journal file `number` for writing from its start (a spare renamed to it if
/// one is kept, else a new file) and writes its header with a fresh key; returns
/// the file and its key. Whatever the file held before fails every check under the
/// new key.
fn open_next(
    dir: &Path,
    number: u64,
    spares: &mut Vec<PathBuf>,
) -> Result<(File, u32), RelayError> {
    let path = file_name(dir, number);
    let io = |source| StoreError::Journal {
        path: path.clone(),
        source,
    };
    let mut file = None;
    if let Some(spare) = spares.pop() {
        match std::fs::rename(&spare, &path) {
            Ok(()) => file = Some(OpenOptions::new().write(true).open(&path).map_err(io)?),
            Err(e) => {
                tracing::warn!(file = %spare.display(), error = %e, "cannot reuse a spare journal file; starting a new one");
            }
        }
    }
    let file = match file {
        Some(file) => file,
        // Not `create_new`: a file left by a start that failed half-way holds
        // nothing newer than the engine's durable position, and is written over
        // like a spare.
        None => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?,
    };
    let key = new_key().map_err(io)?;
    file.write_all_at(&header(key), 0).map_err(io)?;
    Ok((file, key))
}

fn sync_dir(dir: &Path) -> Result<(), RelayError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| {
            StoreError::Journal {
                path: dir.to_path_buf(),
                source,
            }
            .into()
        })
}

/// Reads every journal file in `dir` in order and calls `apply` with each record
/// after `applied` (the engine's position), checking that they follow on from it
/// without a gap. Returns the last lsn the journal holds (or `applied`, whichever is
/// later) and the files read.
pub fn replay(
    dir: &Path,
    applied: u64,
    mut apply: impl FnMut(u64, Vec<Op>) -> Result<(), RelayError>,
) -> Result<(u64, Vec<(u64, PathBuf)>), RelayError> {
    let found = files(dir)?;
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| StoreError::Journal {
            path: path.clone(),
            source,
        })
    };
    let mut last = applied;
    // No record can lie further ahead than one per MIN_RECORD bytes of the journal.
    let mut total = 0u64;
    for (_, path) in &found {
        let meta = std::fs::metadata(path).map_err(|source| StoreError::Journal {
            path: path.clone(),
            source,
        })?;
        total = total.saturating_add(meta.len());
    }
    for (_, path) in &found {
        let bytes = read(path)?;
        let (key, mut at, mut damage) = match read_header(&bytes) {
            Header::None => (0, 0, None),
            Header::Keyed(key) => (key, HEADER_LEN, None),
            Header::Damaged(key) => (
                key.unwrap_or(0),
                HEADER_LEN,
                Some(("a file header failing its checksum", 0)),
            ),
        };
        while damage.is_none() && at < bytes.len() {
            match parse(&bytes[at..], key) {
                Ok((lsn, ops, used)) => {
                    at += used;
                    if lsn <= last {
                        continue;
                    }
                    if lsn != last + 1 {
                        return Err(StoreError::JournalGap {
                            path: path.clone(),
                            expected: last + 1,
                            found: lsn,
                        }
                        .into());
                    }
                    apply(lsn, ops)?;
                    last = lsn;
                }
                Err(reason) => damage = Some((reason, at)),
            }
        }
        let Some((reason, at)) = damage else {
            continue;
        };
        // An acknowledged record was synced before anything after it was written:
        // with no whole record of a later batch after this one in its file, it is
        // the write a crash interrupted (never acknowledged) or the end of what was
        // written over a reused file. A later file then goes on from the last whole
        // record, or the gap shows.
        let bound = last.saturating_add(total / MIN_RECORD as u64 + 1);
        let rest = bytes.get(at + 1..).unwrap_or_default();
        // A damaged header hides the file's key: a record of a later batch right
        // after it, whatever key it was sealed with, shows the file held records.
        let after_header = bytes.get(HEADER_LEN..).unwrap_or_default();
        if whole_record_in(rest, key, last, bound)
            || (at == 0 && record_under_any_key(after_header, last, bound))
        {
            return Err(StoreError::JournalCorrupt {
                path: path.clone(),
                offset: at as u64,
                reason,
            }
            .into());
        }
        tracing::debug!(
            file = %path.display(),
            offset = at,
            reason,
            "the file's records end here; what follows is a write a crash \
             interrupted or what a reused file held before"
        );
    }
    Ok((last, found))
}

/// Flushes the engine (everything applied so far becomes durable there).
pub type Checkpoint = Arc<dyn Fn() -> Result<(), RelayError> + Send + Sync>;

/// The journal of an open store.
pub struct Journal {
    dir: PathBuf,
    /// The last lsn given out and the records not yet written.
    pending: Mutex<Pending>,
    /// The file being written; held across a write and its sync.
    file: Mutex<Current>,
    checkpoint: Checkpoint,
    /// A file past this size is closed at the next sync ([`CHECKPOINT_BYTES`]).
    checkpoint_bytes: AtomicU64,
    checkpointing: Arc<AtomicBool>,
    /// Files closed but not yet covered by a completed checkpoint (number, path).
    retired: Arc<Mutex<Vec<(u64, PathBuf)>>>,
    /// Files kept for reuse, at most [`SPARE_FILES`].
    spares: Arc<Mutex<Vec<PathBuf>>>,
    /// A write or sync failed: what reached the disk is unknown, so nothing more is
    /// recorded or acknowledged until the relay restarts and replays.
    failed: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

#[derive(Debug, Default)]
struct Pending {
    lsn: u64,
    records: Vec<u8>,
}

#[derive(Debug)]
struct Current {
    file: File,
    number: u64,
    /// The key its records are sealed with.
    key: u32,
    /// Bytes written to the file (header and records): the next write goes here.
    len: u64,
    /// Written but not yet synced.
    unsynced: bool,
}

impl Journal {
    /// Starts a new journal file in `dir` after the `previous` ones (already replayed
    /// into the engine and flushed there by the caller), keeping them as spares or
    /// deleting them; the next batch gets lsn `last + 1`.
    pub fn start(
        dir: &Path,
        last: u64,
        previous: Vec<(u64, PathBuf)>,
        checkpoint: Checkpoint,
    ) -> Result<Self, RelayError> {
        let number = previous.last().map_or(1, |(n, _)| n + 1);
        let mut kept = spares(dir)?;
        let (file, key) = open_next(dir, number, &mut kept)?;
        file.sync_all().map_err(|source| StoreError::Journal {
            path: file_name(dir, number),
            source,
        })?;
        for (n, old) in &previous {
            retire(dir, *n, old, &mut kept).map_err(|source| StoreError::Journal {
                path: old.clone(),
                source,
            })?;
        }
        while kept.len() > SPARE_FILES {
            let Some(extra) = kept.pop() else { break };
            std::fs::remove_file(&extra).map_err(|source| StoreError::Journal {
                path: extra.clone(),
                source,
            })?;
        }
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pending: Mutex::new(Pending {
                lsn: last,
                records: Vec::new(),
            }),
            file: Mutex::new(Current {
                file,
                number,
                key,
                len: HEADER_LEN as u64,
                unsynced: false,
            }),
            checkpoint,
            checkpoint_bytes: AtomicU64::new(file_bytes()),
            checkpointing: Arc::new(AtomicBool::new(false)),
            retired: Arc::new(Mutex::new(Vec::new())),
            spares: Arc::new(Mutex::new(kept)),
            failed: AtomicBool::new(false),
        })
    }

    /// Gives the next batch its lsn and records it: `apply` writes `ops` and the lsn
    /// to the engine; the record is kept only if it succeeds. Batches are recorded
    /// in the order they are applied.
    pub fn record(
        &self,
        ops: Vec<Op>,
        apply: impl FnOnce(u64, Vec<Op>) -> Result<(), RelayError>,
    ) -> Result<(), RelayError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::JournalFailed.into());
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let lsn = pending.lsn + 1;
        let mark = pending.records.len();
        encode(lsn, &ops, &mut pending.records)?;
        match apply(lsn, ops) {
            Ok(()) => {
                pending.lsn = lsn;
                Ok(())
            }
            Err(e) => {
                pending.records.truncate(mark);
                Err(e)
            }
        }
    }

    /// Writes every record so far to the current file and syncs it; then, if the
    /// file has grown past [`CHECKPOINT_BYTES`], starts the next one and checkpoints
    /// in the background.
    pub fn sync(&self) -> Result<(), RelayError> {
        let mut current = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::JournalFailed.into());
        }
        let mut records = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut pending.records)
        };
        seal(&mut records, current.key);
        let path = file_name(&self.dir, current.number);
        let io = |source| StoreError::Journal {
            path: path.clone(),
            source,
        };
        if !records.is_empty() {
            if let Err(e) = current.file.write_all_at(&records, current.len) {
                return Err(self.fail(io(e)));
            }
            current.len += records.len() as u64;
            current.unsynced = true;
        }
        if current.unsynced {
            if let Err(e) = current.file.sync_data() {
                return Err(self.fail(io(e)));
            }
            current.unsynced = false;
        }
        if current.len >= self.checkpoint_bytes.load(Ordering::Relaxed)
            && !self.checkpointing.swap(true, Ordering::AcqRel)
            && let Err(e) = self.rotate(&mut current)
        {
            self.checkpointing.store(false, Ordering::Release);
            tracing::error!(error = %e, "cannot start a new journal file; the current one grows on");
        }
        Ok(())
    }

    /// Stops recording for good (the relay must restart and replay) and drops what
    /// is buffered; returns `e`.
    fn fail(&self, e: StoreError) -> RelayError {
        self.failed.store(true, Ordering::Release);
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records = Vec::new();
        tracing::error!(error = %e, "the store's journal failed; restart the relay (it replays the journal)");
        e.into()
    }

    /// Closes the current file, opens the next and checkpoints the closed ones in a
    /// background thread.
    fn rotate(&self, current: &mut Current) -> Result<(), RelayError> {
        let number = current.number + 1;
        let path = file_name(&self.dir, number);
        let (file, key) = open_next(
            &self.dir,
            number,
            &mut self.spares.lock().unwrap_or_else(PoisonError::into_inner),
        )?;
        if let Err(e) = sync_dir(&self.dir) {
            // Not started: the next rotation makes the same file again.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let closed = (current.number, file_name(&self.dir, current.number));
        *current = Current {
            file,
            number,
            key,
            len: HEADER_LEN as u64,
            unsynced: false,
        };
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(closed);
        // Everything in the closed files was applied to the engine before this
        // point, so a flush that starts now covers it.
        let checkpoint = self.checkpoint.clone();
        let flag = self.checkpointing.clone();
        let retired = self.retired.clone();
        let spares = self.spares.clone();
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("kring-checkpoint".into())
            .spawn(move || {
                // The flag goes down however this ends (a panic in the engine too).
                struct Lower(Arc<AtomicBool>);
                impl Drop for Lower {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _lower = Lower(flag);
                let covered: Vec<(u64, PathBuf)> =
                    retired.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let started = std::time::Instant::now();
                match checkpoint() {
                    Ok(()) => {
                        let took = started.elapsed();
                        let mut done = Vec::new();
                        for (number, path) in &covered {
                            let mut kept = spares.lock().unwrap_or_else(PoisonError::into_inner);
                            match retire(&dir, *number, path, &mut kept) {
                                Ok(()) => done.push(*number),
                                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot retire a checkpointed journal file; the next checkpoint tries again"),
                            }
                        }
                        if let Err(e) = sync_dir(&dir) {
                            tracing::warn!(error = %e, "journal directory sync failed");
                        }
                        retired
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .retain(|(n, _)| !done.contains(n));
                        tracing::debug!(
                            files = covered.len(),
                            ms = took.as_secs_f64() * 1e3,
                            "journal checkpointed"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store checkpoint failed; the journal keeps its files")
                    }
                }
            });
        if let Err(e) = spawned {
            self.checkpointing.store(false, Ordering::Release);
            tracing::error!(error = %e, "cannot start the checkpoint thread");
        }
        Ok(())
    }
}

#[cfg(test)]
impl Journal {
    /// Closes and checkpoints a file once it passes `bytes` instead.
    pub(crate) fn checkpoint_every(&self, bytes: u64) {
        self.checkpoint_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Waits (up to 10 s) for a checkpoint under way to end.
    pub(crate) fn await_checkpoint(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.checkpointing.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for Journal {
    /// Hands what is still buffered to the operating system (no sync): a relay that
    /// stops without a last sync loses nothing a plain exit would keep.
    fn drop(&mut self) {
        let mut records = std::mem::take(
            &mut self
                .pending
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .records,
        );
        let failed = self.failed.load(Ordering::Acquire);
        let current = self.file.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !records.is_empty() && !failed {
            seal(&mut records, current.key);
            let _ = current.file.write_all_at(&records, current.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u8) -> Vec<Op> {
        vec![
            (vec![b'k', n], Some(vec![n; usize::from(n)])),
            (vec![b'd', n], None),
        ]
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let mut out = Vec::new();
        encode(7, &ops(3), &mut out).unwrap();
        let first = out.len();
        encode(8, &[], &mut out).unwrap();
        assert_eq!(parse(&out, 0).unwrap(), (7, ops(3), first));
        assert_eq!(
            parse(&out[first..], 0).unwrap(),
            (8, Vec::new(), out.len() - first)
        );
    }

    #[test]
    fn a_damaged_record_is_not_read_as_one() {
        let mut out = Vec::new();
        encode(1, &ops(9), &mut out).unwrap();
        for cut in 0..out.len() {
            assert!(parse(&out[..cut], 0).is_err(), "cut at {cut}");
        }
        for flip in 0..out.len() {
            for bit in 0..8 {
                let mut damaged = out.clone();
                damaged[flip] ^= 1 << bit;
                damaged.extend_from_slice(&[0; 64]);
                assert!(
                    !matches!(parse(&damaged, 0), Ok((1, ref v, _)) if *v == ops(9)),
                    "bit {bit} of byte {flip}"
                );
            }
        }
    }

    /// The records `replay` applies over an engine at `applied`.
    fn replayed(dir: &Path, applied: u64) -> Vec<(u64, Vec<Op>)> {
        let mut seen = Vec::new();
        replay(dir, applied, |lsn, o| {
            seen.push((lsn, o));
            Ok(())
        })
        .unwrap();
        seen
    }

    fn journal(dir: &Path, last: u64) -> Journal {
        let (last, previous) = replay(dir, last, |_, _| Ok(())).unwrap();
        Journal::start(dir, last, previous, Arc::new(|| Ok(()))).unwrap()
    }

    #[test]
    fn replay_applies_the_records_after_the_engine_position_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = journal(dir.path(), 0);
            for n in 1..=5 {
                j.record(ops(n), |_, _| Ok(())).unwrap();
            }
            j.sync().unwrap();
            // Applied but never synced: gone after a crash... or not, if the page
            // cache kept it; either way never half a batch.
            j.record(ops(6), |_, _| Ok(())).unwrap();
            std::mem::forget(j);
        }
        let mut seen = Vec::new();
        let (last, found) = replay(dir.path(), 2, |lsn, o| {
            seen.push((lsn, o));
            Ok(())
        })
        .unwrap();
        assert_eq!(last, 5);
        assert_eq!(found.len(), 1);
        assert_eq!(
            seen,
            (3..=5).map(|n| (u64::from(n), ops(n))).collect::<Vec<_>>()
        );
        // An engine ahead of the journal replays nothing.
        let (last, _) = replay(dir.path(), 9, |_, _| panic!("replayed")).unwrap();
        assert_eq!(last, 9);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_damage_elsewhere_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), 0);
        let mut sizes = Vec::new();
        for n in 1..=3 {
            j.record(ops(n), |_, _| Ok(())).unwrap();
            sizes.push(j.pending.lock().unwrap().records.len());
        }
        j.sync().unwrap();
        drop(j);
        let (_, found) = replay(dir.path(), 0, |_, _| Ok(())).unwrap();
        let path = found[0].1.clone();
        let whole = std::fs::read(&path).unwrap();
        let third = HEADER_LEN + sizes[1];
        // Cut inside the last record: the first two replay.
        std::fs::write(&path, &whole[..third + 5]).unwrap();
        assert_eq!(replay(dir.path(), 0, |_, _| Ok(())).unwrap().0, 2);
        // The last record torn, with stale bytes (not zeros) after it: still a tail.
        let mut stale = whole[..third + 5].to_vec();
        stale.extend_from_slice(&[0xA5; 300]);
        std::fs::write(&path, &stale).unwrap();
        assert_eq!(replay(dir.path(), 0, |_, _| Ok(())).unwrap().0, 2);
        // Damage in the middle, with a whole record after it: corruption.
        let mut damaged = whole.clone();
        damaged[HEADER_LEN + 12] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let err = replay(dir.path(), 0, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        // A damaged length that runs past the end hides nothing either.
        let mut long = whole.clone();
        long[HEADER_LEN + 3] ^= 0x10;
        std::fs::write(&path, &long).unwrap();
        let err = replay(dir.path(), 0, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        // A torn tail in a file followed only by an empty one (a crash between
        // starting the next file and deleting this one) is still a tail.
        std::fs::write(&path, &whole[..third + 5]).unwrap();
        std::fs::write(file_name(dir.path(), found[0].0 + 1), b"").unwrap();
        assert_eq!(replay(dir.path(), 0, |_, _| Ok(())).unwrap().0, 2);
    }

    #[test]
    fn after_a_failed_write_nothing_more_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), 0);
        j.record(ops(1), |_, _| Ok(())).unwrap();
        let _ = j.fail(StoreError::ShutDown);
        assert!(j.pending.lock().unwrap().records.is_empty());
        assert!(j.record(ops(2), |_, _| panic!("applied")).is_err());
        assert!(j.sync().is_err());
    }

    #[test]
    fn a_gap_between_engine_and_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), 10);
        j.record(ops(1), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        drop(j);
        let err = replay(dir.path(), 3, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("expected batch 4"), "{err}");
    }

    #[test]
    fn a_full_file_is_closed_and_kept_as_a_spare_once_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let j = Journal::start(
            dir.path(),
            0,
            Vec::new(),
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        )
        .unwrap();
        j.checkpoint_every(100);
        j.record(ops(90), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        // The checkpoint runs in the background; wait for it.
        j.await_checkpoint();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(spares(dir.path()).unwrap(), vec![spare_name(dir.path(), 1)]);
        let names = |d: &Path| {
            files(d)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(dir.path()),
            vec![2],
            "the first file is no longer read"
        );
        j.record(ops(2), |lsn, _| {
            assert_eq!(lsn, 2);
            Ok(())
        })
        .unwrap();
        j.sync().unwrap();
        drop(j);
        // What comes after the checkpoint replays from the new file.
        assert_eq!(replayed(dir.path(), 1), vec![(2, ops(2))]);
    }

    #[test]
    fn a_failed_apply_leaves_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), 0);
        j.record(ops(1), |_, _| Ok(())).unwrap();
        let err = j.record(ops(2), |_, _| Err(StoreError::ShutDown.into()));
        assert!(err.is_err());
        j.record(ops(3), |lsn, _| {
            assert_eq!(lsn, 2);
            Ok(())
        })
        .unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(replayed(dir.path(), 0), vec![(1, ops(1)), (2, ops(3))]);
    }

    /// Journal files `dir` holds: (numbers of `.log` files, numbers of spares).
    fn listing(dir: &Path) -> (Vec<u64>, usize) {
        let logs = files(dir).unwrap().into_iter().map(|(n, _)| n).collect();
        (logs, spares(dir).unwrap().len())
    }

    #[test]
    fn a_reused_file_replays_only_what_was_written_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), 0);
        j.checkpoint_every(100);
        // Two full files: the first is reused as the third.
        for n in 1..=2 {
            j.record(ops(90), |lsn, _| {
                assert_eq!(lsn, n);
                Ok(())
            })
            .unwrap();
            j.sync().unwrap();
            j.await_checkpoint();
        }
        assert_eq!(listing(dir.path()), (vec![3], 1));
        let third = file_name(dir.path(), 3);
        let stale_len = std::fs::metadata(&third).unwrap().len();
        assert!(stale_len > 100, "file 3 is file 1 renamed, records and all");
        // A short record over the start of the old ones.
        j.record(ops(1), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(std::fs::metadata(&third).unwrap().len(), stale_len);
        // The engine holds batch 2 (the checkpoint covering file 2 made it so).
        let (last, found) = replay(dir.path(), 2, |lsn, o| {
            assert_eq!((lsn, o), (3, ops(1)));
            Ok(())
        })
        .unwrap();
        assert_eq!((last, found.len()), (3, 1));
        // Torn over the old records: a tail, not corruption (the old record after
        // it is not a later batch).
        let whole = std::fs::read(&third).unwrap();
        let mut torn = whole.clone();
        torn[HEADER_LEN + 20] ^= 1;
        std::fs::write(&third, &torn).unwrap();
        assert_eq!(
            replay(dir.path(), 2, |_, _| panic!("replayed")).unwrap().0,
            2
        );
        std::fs::write(&third, &whole).unwrap();
        // Reopened: file 3 becomes a spare, a spare becomes file 4, and a whole
        // later record after damage is still corruption in a reused file.
        let j = journal(dir.path(), 3);
        assert_eq!(listing(dir.path()), (vec![4], 1));
        j.record(ops(2), |lsn, _| {
            assert_eq!(lsn, 4);
            Ok(())
        })
        .unwrap();
        let first = j.pending.lock().unwrap().records.len();
        j.record(ops(3), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(
            replayed(dir.path(), 3),
            vec![(4, ops(2)), (5, ops(3))],
            "what file 2 held before is not replayed"
        );
        let fourth = file_name(dir.path(), 4);
        let mut damaged = std::fs::read(&fourth).unwrap();
        damaged[HEADER_LEN + first - 3] ^= 1;
        std::fs::write(&fourth, &damaged).unwrap();
        let err = replay(dir.path(), 3, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn a_closed_reused_file_ends_in_its_old_records_and_the_next_file_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let refuse = Arc::new(AtomicBool::new(false));
        let refusing = refuse.clone();
        let j = Journal::start(
            dir.path(),
            0,
            Vec::new(),
            Arc::new(move || match refusing.load(Ordering::SeqCst) {
                true => Err(StoreError::ShutDown.into()),
                false => Ok(()),
            }),
        )
        .unwrap();
        j.checkpoint_every(100);
        for _ in 1..=2 {
            j.record(ops(90), |_, _| Ok(())).unwrap();
            j.sync().unwrap();
            j.await_checkpoint();
        }
        // File 3 is file 1 reused. A shorter record fills it and closes it (its old
        // records' last bytes after the new one), and no checkpoint covers it.
        refuse.store(true, Ordering::SeqCst);
        j.record(ops(80), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        j.await_checkpoint();
        j.record(ops(1), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(listing(dir.path()).0, vec![3, 4]);
        assert_eq!(
            replayed(dir.path(), 2),
            vec![(3, ops(80)), (4, ops(1))],
            "file 4 is read after file 3's old bytes"
        );
        // Damage at the end of a closed file loses an acknowledged record: the next
        // file does not go on from the last whole one.
        let third = file_name(dir.path(), 3);
        let mut damaged = std::fs::read(&third).unwrap();
        damaged[HEADER_LEN + 30] ^= 1;
        std::fs::write(&third, &damaged).unwrap();
        let err = replay(dir.path(), 2, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("expected batch 3"), "{err}");
    }

    #[test]
    fn the_search_for_later_records_checks_only_plausible_batches() {
        let mut buf = vec![0xA5; 7];
        encode(50, &ops(2), &mut buf).unwrap();
        buf.extend_from_slice(&[0x5A; 9]);
        assert!(whole_record_in(&buf, 0, 10, 60));
        assert!(!whole_record_in(&buf, 0, 10, 49), "beyond the bound");
        assert!(!whole_record_in(&buf, 7, 10, 60), "another file's key");
        assert!(
            !whole_record_in(&buf, 0, 50, 60),
            "not after the engine's position"
        );
    }

    #[test]
    fn a_record_is_read_only_under_its_files_key() {
        let mut out = Vec::new();
        encode(4, &ops(5), &mut out).unwrap();
        let plain = out.clone();
        seal(&mut out, 0x1234_5678);
        assert!(parse(&out, 0x1234_5678).is_ok());
        assert!(parse(&out, 0x1234_5679).is_err());
        assert!(parse(&plain, 0x1234_5678).is_err());
        assert_eq!(read_header(&header(9)), Header::Keyed(9));
        let mut h = header(9);
        h[6] ^= 1;
        assert!(matches!(read_header(&h), Header::Damaged(Some(_))));
        assert_eq!(read_header(&h[..6]), Header::Damaged(None));
        assert_eq!(read_header(&plain), Header::None);
        assert_eq!(read_header(b""), Header::None);
    }

    /// Two full files, the first reused as the third: returns the journal (next
    /// batch 3) and the third file's path.
    fn with_a_reused_file(dir: &Path, first: Vec<Op>) -> (Journal, PathBuf) {
        let j = journal(dir, 0);
        j.checkpoint_every(100);
        j.record(first, |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        j.await_checkpoint();
        j.record(ops(90), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        j.await_checkpoint();
        assert_eq!(listing(dir), (vec![3], 1));
        (j, file_name(dir, 3))
    }

    #[test]
    fn record_shaped_bytes_inside_a_value_are_never_read_as_a_record() {
        // A value that holds what would be a whole record of batch 4, in plain and
        // under a guessed key, in the batch whose file is reused next.
        // Leading bytes: the forged ones lie past what is written over them below.
        let mut forged = vec![0; 64];
        encode(4, &ops(1), &mut forged).unwrap();
        let mut guessed = forged.clone();
        seal(&mut guessed, 0xdead_beef);
        forged.extend_from_slice(&guessed);
        forged.resize(160, 0);
        let dir = tempfile::tempdir().unwrap();
        let (j, third) = with_a_reused_file(dir.path(), vec![(b"v".to_vec(), Some(forged))]);
        // A short record over the start of the old ones, then torn: a tail, even
        // though record-shaped bytes of a later batch follow it in the file.
        j.record(ops(1), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        drop(j);
        let mut torn = std::fs::read(&third).unwrap();
        torn[HEADER_LEN + 9] ^= 1;
        std::fs::write(&third, &torn).unwrap();
        assert_eq!(
            replay(dir.path(), 2, |_, _| panic!("replayed")).unwrap().0,
            2
        );
    }

    #[test]
    fn a_spare_renamed_but_never_written_replays_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (j, third) = with_a_reused_file(dir.path(), ops(90));
        drop(j);
        // A crash after the rename, before the new header reached the disk: the
        // file holds its old header and records, all at or below the engine's
        // position.
        let spare = spares(dir.path()).unwrap().pop().unwrap();
        let old = std::fs::read(&third).unwrap();
        std::fs::write(&third, &old[..HEADER_LEN]).unwrap();
        std::fs::rename(&spare, file_name(dir.path(), 4)).unwrap();
        assert_eq!(
            replay(dir.path(), 2, |_, _| panic!("replayed")).unwrap().0,
            2
        );
    }

    #[test]
    fn a_damaged_header_is_a_tail_or_corruption_like_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), 0);
        j.record(ops(1), |_, _| Ok(())).unwrap();
        j.sync().unwrap();
        drop(j);
        let path = file_name(dir.path(), 1);
        let whole = std::fs::read(&path).unwrap();
        // Cut inside the header: nothing was synced in this file.
        std::fs::write(&path, &whole[..7]).unwrap();
        assert_eq!(replay(dir.path(), 0, |_, _| Ok(())).unwrap().0, 0);
        // A damaged header (magic, key or checksum) before a whole record:
        // corruption, never a silent tail.
        for byte in 0..HEADER_LEN {
            let mut damaged = whole.clone();
            damaged[byte] ^= 1;
            std::fs::write(&path, &damaged).unwrap();
            let err = replay(dir.path(), 0, |_, _| Ok(())).unwrap_err();
            assert!(err.to_string().contains("corrupt"), "byte {byte}: {err}");
        }
    }

    #[test]
    fn a_file_without_a_header_is_read_with_plain_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        for n in 1..=3 {
            encode(u64::from(n), &ops(n), &mut out).unwrap();
        }
        std::fs::write(file_name(dir.path(), 1), &out).unwrap();
        assert_eq!(replayed(dir.path(), 1), vec![(2, ops(2)), (3, ops(3))]);
        // Started after it: the next file has a header and goes on from batch 3.
        let j = journal(dir.path(), 1);
        j.record(ops(4), |lsn, _| {
            assert_eq!(lsn, 4);
            Ok(())
        })
        .unwrap();
        j.sync().unwrap();
        drop(j);
        assert_eq!(replayed(dir.path(), 3), vec![(4, ops(4))]);
    }
}
