//! Backup files of a relay's store (`kring-relay backup`, `kring-relay restore`).
//!
//! A backup is every key and value of the store as one consistent view: the
//! running relay writes it with no batch applied meanwhile ([`Durability::exclusive`]),
//! and it is complete only once the relay has flushed everything in it (so nothing
//! in a backup can be taken back by a crash of the relay that wrote it).
//!
//! File layout (format 2):
//!
//! ```text
//! MAGIC (19 bytes)  "KRING-RELAY-BACKUP\n"
//! header            HEADER_LEN bytes: JSON (BackupHeader), padded with spaces
//! body              per pair: u32 BE key length, key, u32 BE value length, value
//! ```
//!
//! The header names the format, the relay, when the backup was made, how many pairs
//! follow and the SHA-256 of the body; a reader checks all of it and that nothing
//! follows the last pair. The relay signs the header with its certificate key and
//! carries the certificate chain: `restore` takes only a backup signed by a relay
//! certificate of the relay it restores, issued by its organisation's CA under the
//! federation's anchors (valid when the backup was made, so a backup outlives a
//! renewed certificate). Whoever can write where backups are kept cannot hand a
//! relay a store of their making.
//!
//! [`Durability::exclusive`]: crate::store::Durability::exclusive

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::CheckpointSigner;
use crate::error::RelayError;
use crate::keyspace::JOURNAL;
use crate::store::{Batch, Engine};

/// The first bytes of every backup file.
pub const MAGIC: &[u8] = b"KRING-RELAY-BACKUP\n";
/// Bytes reserved for the header (JSON padded with spaces).
pub const HEADER_LEN: usize = 16 * 1024;
/// The format this relay writes and reads.
pub const FORMAT: u32 = 2;
/// What the relay signs: this, then the header's fields (see [`signed_message`]).
const SIGNATURE_CONTEXT: &[u8] = b"kring relay backup v2\n";
/// Longest key in a backup.
const MAX_KEY: usize = 64 * 1024;
/// Longest value in a backup (a Welcome with a large ratchet tree, the MLS state of
/// a large community).
const MAX_VALUE: usize = 256 << 20;
/// Pairs read from the store per page while writing a backup, and written to the
/// store per batch while restoring one.
const PAGE: usize = 1024;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// [`FORMAT`].
    pub format: u32,
    /// The relay whose store it is.
    pub relay: String,
    /// When it was made (unix seconds).
    pub created_at: i64,
    /// Key-value pairs in the body.
    pub pairs: u64,
    /// SHA-256 of the body, hex.
    pub sha256: String,
    /// The certificate chain of the signing relay (leaf first), hex DER.
    pub chain: Vec<String>,
    /// The relay's Ed25519 signature over every field above (and a fixed context), hex.
    pub signature: String,
}

/// The bytes a backup's signature covers: every field of the header but the
/// signature, one per line.
fn signed_message(h: &BackupHeader) -> Vec<u8> {
    let mut m = SIGNATURE_CONTEXT.to_vec();
    let fields = [
        h.format.to_string(),
        h.relay.clone(),
        h.created_at.to_string(),
        h.pairs.to_string(),
        h.sha256.clone(),
    ];
    for f in fields.iter().chain(h.chain.iter()) {
        m.extend_from_slice(f.as_bytes());
        m.push(b'\n');
    }
    m
}

/// Whose backup a restore takes.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The relay of `--config`.
    pub relay: &'a str,
    /// Its organisation.
    pub organisation: &'a str,
    /// The federation's trust anchors (DER).
    pub anchors: &'a [Vec<u8>],
}

/// Checks that `header` is of the expected relay and signed by a certificate of
/// it (issued by its organisation's CA, valid when the backup was made).
pub fn verify(header: &BackupHeader, expected: &Expected<'_>) -> Result<(), BackupError> {
    if header.relay != expected.relay {
        return Err(BackupError::Invalid(format!(
            "the backup is of relay {}, not of {} (the relay of --config)",
            header.relay, expected.relay
        )));
    }
    let unsigned = |why: String| {
        BackupError::Invalid(format!(
            "the backup's signature does not hold: {why}; it was not made by relay {} or was \
             changed since",
            expected.relay
        ))
    };
    if header.chain.len() > 4 {
        return Err(unsigned("more than 4 certificates".into()));
    }
    let chain = header
        .chain
        .iter()
        .map(hex::decode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unsigned(format!("a certificate is not hex: {e}")))?;
    let identity = kring_protocol::audit::relay_certificate(
        &chain,
        expected.anchors,
        header.created_at,
        expected.relay,
        Some(expected.organisation),
    )
    .map_err(|e| unsigned(e.to_string()))?;
    let signature = hex::decode(&header.signature).map_err(|_| unsigned("it is not hex".into()))?;
    if !kring_protocol::audit::signature_verifies(
        &identity.public_key,
        &signed_message(header),
        &signature,
    ) {
        return Err(unsigned("the relay's key did not make it".into()));
    }
    Ok(())
}

// The restore state of a store (`R/state`): written by a restore, read by
// `crate::recovery`, which drives a restored relay until its peers have answered.

/// True for keys of the recovery state (not taken from a backup).
pub fn is_recovery_key(key: &[u8]) -> bool {
    key.starts_with(crate::keyspace::recovery::PREFIX)
}

/// What `R/state` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreState {
    /// When the backup was made (unix seconds).
    pub backup_created_at: i64,
    /// When it was restored.
    pub restored_at: i64,
    /// Every pair of the backup is in (false: the restore was interrupted).
    pub complete: bool,
    /// The first start has recorded where logs and outboxes stood.
    pub initialized: bool,
    /// Every configured peer has answered: recovery is over.
    pub finished: bool,
}

/// The batch that marks a store as being restored from `header` (written first).
pub fn mark_restoring(header: &BackupHeader) -> Result<Batch, BackupError> {
    let mut b = Batch::default();
    b.put_obj(
        crate::keyspace::recovery::STATE.to_vec(),
        &RestoreState {
            backup_created_at: header.created_at,
            restored_at: 0,
            complete: false,
            initialized: false,
            finished: false,
        },
    )?;
    Ok(b)
}

/// The batch that marks a store as restored from `header` (written last).
pub fn mark_restored(header: &BackupHeader, now: i64) -> Result<Batch, BackupError> {
    let mut b = Batch::default();
    b.put_obj(
        crate::keyspace::recovery::STATE.to_vec(),
        &RestoreState {
            backup_created_at: header.created_at,
            restored_at: now,
            complete: true,
            initialized: false,
            finished: false,
        },
    )?;
    Ok(b)
}

/// Why a backup cannot be made, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a backup this relay can read, or it is damaged.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] RelayError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the body of a backup while hashing and counting it.
struct BodyWriter<W: Write> {
    out: W,
    hash: ring::digest::Context,
    pairs: u64,
}

impl<W: Write> BodyWriter<W> {
    fn pair(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        for part in [key, value] {
            let len = u32::try_from(part.len())
                .map_err(|_| std::io::Error::other("a record too large for a backup"))?
                .to_be_bytes();
            self.hash.update(&len);
            self.hash.update(part);
            self.out.write_all(&len)?;
            self.out.write_all(part)?;
        }
        self.pairs += 1;
        Ok(())
    }
}

fn header_bytes(header: &BackupHeader) -> Result<Vec<u8>, BackupError> {
    let mut json = serde_json::to_vec(header)
        .map_err(|e| BackupError::Invalid(format!("cannot encode the header: {e}")))?;
    if json.len() > HEADER_LEN - 1 {
        return Err(BackupError::Invalid("the header is too long".into()));
    }
    json.resize(HEADER_LEN - 1, b' ');
    json.push(b'\n');
    Ok(json)
}

/// Writes every pair of `engine` to `file` (at its start) as a backup of the
/// relay `signer` signs for. The caller makes sure no batch is applied meanwhile.
pub fn write_store(
    engine: &dyn Engine,
    signer: &CheckpointSigner,
    created_at: i64,
    file: &mut std::fs::File,
    path: &Path,
) -> Result<BackupHeader, BackupError> {
    file.set_len(0).map_err(io(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    let (pairs, digest) = {
        let mut out = std::io::BufWriter::new(&mut *file);
        out.write_all(MAGIC).map_err(io(path))?;
        out.write_all(&[b' '; HEADER_LEN]).map_err(io(path))?;
        let mut body = BodyWriter {
            out,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            pairs: 0,
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = engine.scan(b"", after.as_deref(), PAGE)?;
            let done = page.len() < PAGE;
            // The journal position belongs to this store's engine, not to its data.
            for (k, v) in page.iter().filter(|(k, _)| !k.starts_with(JOURNAL)) {
                body.pair(k, v).map_err(io(path))?;
            }
            after = page.into_iter().last().map(|(k, _)| k);
            if done || after.is_none() {
                break;
            }
        }
        body.out.flush().map_err(io(path))?;
        (body.pairs, body.hash.finish())
    };
    let mut header = BackupHeader {
        format: FORMAT,
        relay: signer.relay().to_string(),
        created_at,
        pairs,
        sha256: hex::encode(digest.as_ref()),
        chain: signer.chain().iter().map(hex::encode).collect(),
        signature: String::new(),
    };
    header.signature = hex::encode(signer.sign(&signed_message(&header)));
    file.seek(SeekFrom::Start(MAGIC.len() as u64))
        .map_err(io(path))?;
    file.write_all(&header_bytes(&header)?).map_err(io(path))?;
    file.seek(SeekFrom::End(0)).map_err(io(path))?;
    Ok(header)
}

/// Reads a backup from `input`, checking it whole: magic, format, pair count,
/// checksum, nothing after the last pair. `each` sees every pair in order (it is
/// called before the checksum is known to be right: restore into a place that is
/// discarded on error).
pub fn read(
    input: &mut impl Read,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), BackupError>,
) -> Result<BackupHeader, BackupError> {
    let bad = |why: &str| BackupError::Invalid(format!("not a valid relay backup: {why}"));
    let mut magic = vec![0u8; MAGIC.len()];
    input.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if magic != MAGIC {
        return Err(bad("it does not start as one"));
    }
    let mut head = vec![0u8; HEADER_LEN];
    input
        .read_exact(&mut head)
        .map_err(|_| bad("the header is cut short"))?;
    let header: BackupHeader = serde_json::from_slice(head.trim_ascii_end())
        .map_err(|e| bad(&format!("unreadable header: {e}")))?;
    if header.format != FORMAT {
        return Err(BackupError::Invalid(format!(
            "backup format {} is not supported (this relay reads format {FORMAT}, signed \
             backups)",
            header.format
        )));
    }
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |max: usize, what: &str| -> Result<Vec<u8>, BackupError> {
        let mut len = [0u8; 4];
        input
            .read_exact(&mut len)
            .map_err(|_| bad("the body is cut short"))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > max {
            return Err(bad(&format!("a {what} of {n} bytes")));
        }
        let mut buf = Vec::new();
        input
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|_| bad("the body is cut short"))?;
        if buf.len() != n {
            return Err(bad("the body is cut short"));
        }
        hash.update(&len);
        hash.update(&buf);
        Ok(buf)
    };
    for _ in 0..header.pairs {
        let key = part(MAX_KEY, "key")?;
        let value = part(MAX_VALUE, "value")?;
        each(key, value)?;
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest).map_err(|_| bad("unreadable"))? != 0 {
        return Err(bad("bytes after the last record"));
    }
    let sum = hex::encode(hash.finish().as_ref());
    if sum != header.sha256 {
        return Err(BackupError::Invalid(
            "the backup is damaged: its checksum does not match".into(),
        ));
    }
    Ok(header)
}

/// A temporary file next to `out`, renamed to it by [`AtomicFile::commit`] (removed
/// if dropped before).
#[derive(Debug)]
pub struct AtomicFile {
    /// The open temporary file.
    pub file: std::fs::File,
    tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file for `out` (mode 0600: a backup holds the whole
    /// store).
    pub fn create(out: &Path) -> Result<Self, BackupError> {
        let name = out
            .file_name()
            .ok_or_else(|| BackupError::Invalid(format!("{}: not a file name", out.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        // A name nobody can guess, created only if nothing (no file, no symlink) is
        // there yet: in a shared directory no one can prepare it to read the backup.
        tmp_name.push(format!(".partial-{}", uuid::Uuid::new_v4().simple()));
        let tmp = out.with_file_name(tmp_name);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(&tmp).map_err(io(&tmp))?;
        Ok(Self {
            file,
            tmp,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    /// Makes the file durable and gives it its name (then makes the name durable).
    pub fn commit(mut self) -> Result<(), BackupError> {
        self.file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.out).map_err(io(&self.out))?;
        self.committed = true;
        if let Some(dir) = self.out.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// True if `dir` does not exist or is an empty directory.
pub fn is_empty_dir(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::Io {
            path: dir.display().to_string(),
            source: e,
        }),
    }
}

/// Checks the backup `from` whole (format, checksum, signature, relay) without
/// writing anything.
pub fn check_file(from: &Path, expected: &Expected<'_>) -> Result<BackupHeader, BackupError> {
    let mut file = std::fs::File::open(from).map_err(io(from))?;
    let header = read(&mut std::io::BufReader::new(&mut file), |_, _| Ok(()))?;
    verify(&header, expected)?;
    Ok(header)
}

/// Restores the backup `from` of the expected relay into `engine` (a fresh
/// store), marking it restored ([`mark_restoring`] first, then
/// [`mark_restored`] once every pair is in and flushed).
pub fn restore_into(
    engine: &dyn Engine,
    expected: &Expected<'_>,
    from: &Path,
    now: i64,
) -> Result<BackupHeader, BackupError> {
    // Check the whole file before anything is written.
    let header = check_file(from, expected)?;
    let mut file = std::fs::File::open(from).map_err(io(from))?;
    engine.apply(mark_restoring(&header)?)?;
    engine.flush()?;
    file.seek(SeekFrom::Start(0)).map_err(io(from))?;
    let mut batch = Batch::default();
    let mut count = 0usize;
    let read_again = read(&mut std::io::BufReader::new(&mut file), |k, v| {
        if is_recovery_key(&k) || k.starts_with(JOURNAL) {
            // A backup of a relay that was itself restored: its recovery state is
            // the state of that earlier recovery, superseded by this one.
            return Ok(());
        }
        batch.put(k, v);
        count += 1;
        if count >= PAGE {
            engine.apply(std::mem::take(&mut batch))?;
            // Durable page by page: the engine's journal holds no more than a page.
            engine.flush()?;
            count = 0;
        }
        Ok(())
    })?;
    engine.apply(batch)?;
    if read_again != header {
        return Err(BackupError::Invalid(
            "the backup changed while it was restored".into(),
        ));
    }
    engine.apply(mark_restored(&header, now)?)?;
    engine.flush()?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temporary backup files get fresh names and mode 0600, and one not committed
    /// is removed.
    #[test]
    fn temporary_files_are_private_and_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bz.backup");
        let (a, b) = (
            AtomicFile::create(&out).unwrap(),
            AtomicFile::create(&out).unwrap(),
        );
        assert_ne!(a.tmp, b.tmp);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&a.tmp).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let tmp = a.tmp.clone();
        drop(a);
        assert!(!tmp.exists(), "an uncommitted temporary file is removed");
        b.commit().unwrap();
        assert!(out.exists());
    }

    fn store_with(pairs: &[(&[u8], &[u8])]) -> (tempfile::TempDir, crate::store::SledEngine) {
        let dir = tempfile::tempdir().unwrap();
        let e = crate::store::SledEngine::open(dir.path()).unwrap();
        let mut b = Batch::default();
        for (k, v) in pairs {
            b.put(k.to_vec(), v.to_vec());
        }
        e.apply(b).unwrap();
        (dir, e)
    }

    /// Certificates are valid from this time on.
    const NOW: i64 = 1_800_000_000;

    /// A federation of organisations bz and nctv: its anchors, and the signing
    /// key of relay `relay`.
    struct Pki {
        pki: kring_certs_dev::Pki,
        anchors: Vec<Vec<u8>>,
    }

    impl Pki {
        fn new() -> Self {
            let mut pki = kring_certs_dev::Pki::new(NOW).unwrap();
            pki.add_organisation("bz").unwrap();
            pki.add_organisation("nctv").unwrap();
            let anchors = pki.anchors();
            Self { pki, anchors }
        }

        fn signer(&self, relay: &str) -> CheckpointSigner {
            let (chain, pkcs8) = crate::audit::tests::relay_cert(&self.pki, relay);
            CheckpointSigner::new(relay, &pkcs8, chain).unwrap()
        }

        fn expect<'a>(&'a self, relay: &'a str) -> Expected<'a> {
            Expected {
                relay,
                organisation: relay,
                anchors: &self.anchors,
            }
        }
    }

    fn backup_by(e: &crate::store::SledEngine, dir: &Path, signer: &CheckpointSigner) -> PathBuf {
        let out = dir.join(format!("{}.kbk", signer.relay()));
        let mut f = AtomicFile::create(&out).unwrap();
        let h = write_store(e, signer, NOW + 100, &mut f.file, &out).unwrap();
        assert_eq!(h.relay, signer.relay());
        f.commit().unwrap();
        out
    }

    fn backup_of(e: &crate::store::SledEngine, dir: &Path) -> PathBuf {
        backup_by(e, dir, &Pki::new().signer("bz"))
    }

    /// Rewrites the header of the backup at `path`.
    fn edit_header(path: &Path, edit: impl FnOnce(&mut BackupHeader)) {
        let mut bytes = std::fs::read(path).unwrap();
        let head = &bytes[MAGIC.len()..MAGIC.len() + HEADER_LEN];
        let mut header: BackupHeader = serde_json::from_slice(head.trim_ascii_end()).unwrap();
        edit(&mut header);
        bytes[MAGIC.len()..MAGIC.len() + HEADER_LEN]
            .copy_from_slice(&header_bytes(&header).unwrap());
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn only_a_backup_signed_by_the_relay_itself_is_restored() {
        let pki = Pki::new();
        let (dir, e) = store_with(&[(b"c/x@bz", b"record"), (b"s/x@bz", b"7")]);
        let good = backup_by(&e, dir.path(), &pki.signer("bz"));
        check_file(&good, &pki.expect("bz")).unwrap();
        let refused = |path: &Path| check_file(path, &pki.expect("bz")).unwrap_err().to_string();
        // Made by another relay, and then relabelled as bz's.
        let other = backup_by(&e, dir.path(), &pki.signer("nctv"));
        let err = refused(&other);
        assert!(err.contains("of relay nctv, not of bz"), "{err}");
        edit_header(&other, |h| h.relay = "bz".into());
        let err = refused(&other);
        assert!(err.contains("signature does not hold"), "{err}");
        // Any header field changed after signing: here the body's checksum, after
        // the body was swapped for another store (the checksum alone would pass).
        let (dir2, e2) = store_with(&[(b"c/x@bz", b"forged"), (b"s/x@bz", b"7")]);
        let forged = backup_by(&e2, dir2.path(), &pki.signer("nctv"));
        let forged_body = std::fs::read(&forged).unwrap()[MAGIC.len() + HEADER_LEN..].to_vec();
        let forged_sum = read(&mut std::fs::File::open(&forged).unwrap(), |_, _| Ok(()))
            .unwrap()
            .sha256;
        let swapped = dir.path().join("swapped.kbk");
        let mut bytes = std::fs::read(&good).unwrap()[..MAGIC.len() + HEADER_LEN].to_vec();
        bytes.extend_from_slice(&forged_body);
        std::fs::write(&swapped, bytes).unwrap();
        edit_header(&swapped, |h| h.sha256 = forged_sum);
        let err = refused(&swapped);
        assert!(err.contains("the relay's key did not make it"), "{err}");
        // No signature, or a certificate from outside the federation.
        edit_header(&swapped, |h| h.signature.clear());
        assert!(refused(&swapped).contains("signature does not hold"));
        let stranger = Pki::new();
        let err = check_file(&good, &stranger.expect("bz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a relay certificate of the federation"),
            "{err}"
        );
        // Nothing was written by any refused restore.
        let target = tempfile::tempdir().unwrap();
        let fresh = crate::store::SledEngine::open(target.path()).unwrap();
        assert!(restore_into(&fresh, &pki.expect("bz"), &swapped, NOW + 200).is_err());
        assert_eq!(fresh.get(b"c/x@bz").unwrap(), None);
    }

    #[test]
    fn a_backup_reads_back_every_pair_in_order() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..2500u32)
            .map(|i| (format!("l/x@bz\0{i:05}").into_bytes(), vec![i as u8; 3]))
            .collect();
        let refs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let (dir, e) = store_with(&refs);
        let out = backup_of(&e, dir.path());
        let mut seen = Vec::new();
        let h = read(&mut std::fs::File::open(&out).unwrap(), |k, v| {
            seen.push((k, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(h.pairs, 2500);
        assert_eq!(seen, pairs);
        assert_eq!(h.format, FORMAT);
        assert_eq!(h.created_at, NOW + 100);
    }

    #[test]
    fn a_damaged_or_cut_backup_is_refused() {
        let (dir, e) = store_with(&[(b"c/x@bz", b"record"), (b"s/x@bz", b"7")]);
        let out = backup_of(&e, dir.path());
        let good = std::fs::read(&out).unwrap();
        let check = |bytes: &[u8]| read(&mut &bytes[..], |_, _| Ok(())).map(|_| ());
        check(&good).unwrap();
        // A flipped byte in a value.
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let e = check(&flipped).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // Cut short, or with bytes after the end.
        let e = check(&good[..good.len() - 2]).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");
        let mut longer = good.clone();
        longer.push(0);
        let e = check(&longer).unwrap_err().to_string();
        assert!(e.contains("after the last record"), "{e}");
        let e = check(b"something else entirely, long enough")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not start"), "{e}");
    }

    #[test]
    fn restore_checks_the_relay_and_marks_the_store_restored() {
        let pki = Pki::new();
        let (dir, e) = store_with(&[(b"c/x@bz", b"record"), (b"s/x@bz", b"7")]);
        let out = backup_by(&e, dir.path(), &pki.signer("bz"));
        let target = tempfile::tempdir().unwrap();
        let fresh = crate::store::SledEngine::open(target.path()).unwrap();
        let err = restore_into(&fresh, &pki.expect("nctv"), &out, NOW + 200)
            .unwrap_err()
            .to_string();
        assert!(err.contains("of relay bz, not of nctv"), "{err}");
        assert_eq!(fresh.get(b"c/x@bz").unwrap(), None, "nothing written");
        restore_into(&fresh, &pki.expect("bz"), &out, NOW + 200).unwrap();
        assert_eq!(fresh.get(b"s/x@bz").unwrap(), Some(b"7".to_vec()));
        let state = crate::recovery::load(&fresh).unwrap().unwrap();
        assert_eq!(state.backup_created_at, NOW + 100);
        assert!(state.complete);
    }

    #[test]
    fn an_unfinished_temporary_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.kbk");
        {
            let mut f = AtomicFile::create(&out).unwrap();
            f.file.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
