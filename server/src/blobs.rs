//! Attachments on the relay's disk: sealed blobs, each stored once however many
//! notices refer to it, and the uploads and fetches in progress.
//!
//! A blob is opaque here ([`kring_protocol::attachment`]): sealed on the filer's
//! device, named by the SHA-256 of its sealed bytes. The directory `data_dir/blobs`
//! holds
//!
//! * `HEX` — a whole blob, checked against its name, fsynced, then renamed into
//!   place: a blob under its name is always whole;
//! * `partial/HEX` — the bytes of a blob received so far (an upload or a fetch
//!   from another relay), appended in order and fsynced with every piece, so that
//!   an interrupted transfer resumes where it stopped;
//! * `partial/HEX.offer` — the announcement of an upload: its size, who announced
//!   it and when. Bytes of a blob nobody announced are refused; an announcement
//!   not completed within [`PARTIAL_TTL`] is discarded with its bytes.
//!
//! Which notice refers to which blob, and who may fetch it, is in the store
//! ([`crate::relay`]'s attachments module); this module only keeps bytes.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kring_protocol::attachment::{BlobId, BlobRef, MAX_ATTACHMENTS, TRANSFER_CHUNK};
use kring_protocol::wire::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::error::RelayError;

/// How long an announced upload may take before its bytes are discarded.
pub const PARTIAL_TTL: i64 = 24 * 3600;
/// Most uploads and fetches in progress at once, over all users.
pub const MAX_PARTIALS: usize = 1024;
/// Most uploads one user may have in progress.
pub const MAX_PARTIALS_PER_USER: usize = 2 * MAX_ATTACHMENTS;

/// The announcement of an upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Offer {
    size: u64,
    by: String,
    at: i64,
}

/// The blobs of one relay.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    locks: Mutex<HashMap<BlobId, Arc<tokio::sync::Mutex<()>>>>,
}

fn refused(code: ErrorCode) -> RelayError {
    RelayError::Refused(code)
}

impl BlobStore {
    /// Opens (creating) the blob directory `dir`, owner-only.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> Result<Self, RelayError> {
        let partial = dir.join("partial");
        std::fs::create_dir_all(&partial)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for d in [dir, partial.as_path()] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn sealed_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    fn partial_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join("partial").join(id.to_hex())
    }

    fn offer_path(&self, id: &BlobId) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}.offer", id.to_hex()))
    }

    /// The size of a whole blob held here, if it is.
    pub fn sealed_size(&self, id: &BlobId) -> Option<u64> {
        std::fs::metadata(self.sealed_path(id))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Bytes received so far of a blob in transfer.
    pub fn partial_size(&self, id: &BlobId) -> u64 {
        std::fs::metadata(self.partial_path(id)).map_or(0, |m| m.len())
    }

    /// Serialises every transfer of one blob.
    pub async fn lock(&self, id: &BlobId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds, so that the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(*id).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Announces an upload of `blob` by `user` at `now`; how many of its bytes
    /// are here already (all of them when the blob is).
    ///
    /// # Errors
    /// The blob is held with another size, too many uploads are in progress, or
    /// the disk fails.
    pub async fn offer(&self, user: &str, blob: BlobRef, now: i64) -> Result<u64, RelayError> {
        let _guard = self.lock(&blob.id).await;
        if let Some(size) = self.sealed_size(&blob.id) {
            if size != blob.size {
                return Err(refused(ErrorCode::BadRequest {
                    reason: format!(
                        "blob {} is held here with {size} bytes, not {}",
                        blob.id, blob.size
                    ),
                }));
            }
            // Offered again: kept at least as long as a fresh one.
            if let Ok(f) = std::fs::File::options()
                .append(true)
                .open(self.sealed_path(&blob.id))
            {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(size);
        }
        self.expire(now)?;
        match self.read_offer(&blob.id) {
            Some(offer) if offer.size == blob.size => {
                return Ok(self.partial_size(&blob.id).min(blob.size));
            }
            Some(_) => {
                // Announced with another size: that upload cannot complete.
                self.discard(&blob.id);
            }
            None => {}
        }
        let offers = self.offers();
        if offers.len() >= MAX_PARTIALS {
            return Err(refused(ErrorCode::RateLimited {
                retry_after_ms: 60_000,
            }));
        }
        let mine = offers.iter().filter(|o| o.by == user).count();
        if mine >= MAX_PARTIALS_PER_USER {
            return Err(refused(ErrorCode::TooLarge {
                what: format!(
                    "{mine} uploads in progress; finish or abandon them first (at most {MAX_PARTIALS_PER_USER})"
                ),
            }));
        }
        let offer = Offer {
            size: blob.size,
            by: user.to_string(),
            at: now,
        };
        let bytes = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
        write_synced(&self.offer_path(&blob.id), &bytes)?;
        Ok(self.partial_size(&blob.id).min(blob.size))
    }

    /// Appends `data` at `offset` to an upload `user` announced. Bytes at another
    /// offset than what is held are not written: the answer says where to go on.
    /// With the last byte the blob is checked against its name and kept, or
    /// discarded. Returns `(received, size)`.
    ///
    /// # Errors
    /// Not announced (by `user`), more bytes than announced, a blob that does not
    /// match its name, or the disk fails.
    pub async fn put(
        &self,
        user: &str,
        id: &BlobId,
        offset: u64,
        data: &[u8],
    ) -> Result<(u64, u64), RelayError> {
        let _guard = self.lock(id).await;
        if let Some(size) = self.sealed_size(id) {
            return Ok((size, size));
        }
        let Some(offer) = self.read_offer(id).filter(|o| o.by == user) else {
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "blob {id} was not announced: offer it (with its size) before sending its bytes"
                ),
            }));
        };
        let held = self.partial_size(id);
        if offset != held {
            return Ok((held.min(offer.size), offer.size));
        }
        let end = held.saturating_add(data.len() as u64);
        if end > offer.size {
            return Err(refused(ErrorCode::TooLarge {
                what: format!(
                    "blob {id}: {end} bytes, but it was announced with {}",
                    offer.size
                ),
            }));
        }
        append_synced(&self.partial_path(id), data)?;
        if end < offer.size {
            return Ok((end, offer.size));
        }
        self.seal(id).await?;
        Ok((offer.size, offer.size))
    }

    /// Appends bytes fetched from another relay at `offset` (which must be what is
    /// held) of a blob of `size`; with the last byte the blob is checked and kept,
    /// or discarded. The caller holds [`lock`](Self::lock).
    ///
    /// # Errors
    /// Bytes past the size, a blob that does not match its name, the disk fails.
    pub async fn append_fetched(
        &self,
        blob: &BlobRef,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, RelayError> {
        let held = self.partial_size(&blob.id);
        if offset != held || held.saturating_add(data.len() as u64) > blob.size {
            self.discard(&blob.id);
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "blob {}: bytes out of place from the relay that holds it",
                    blob.id
                ),
            }));
        }
        append_synced(&self.partial_path(&blob.id), data)?;
        let end = held + data.len() as u64;
        if end == blob.size {
            self.seal(&blob.id).await?;
        }
        Ok(end)
    }

    /// Checks a complete partial blob against its name: renamed into place
    /// (durably) when it matches, discarded when it does not.
    async fn seal(&self, id: &BlobId) -> Result<(), RelayError> {
        let partial = self.partial_path(id);
        let path = partial.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path)?;
            kring_protocol::attachment::sha256_of(&mut f)
        })
        .await??;
        if hash != id.0 {
            self.discard(id);
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "the bytes received for blob {id} do not match its name; they were discarded: send it again"
                ),
            }));
        }
        std::fs::rename(&partial, self.sealed_path(id))?;
        sync_dir(&self.dir)?;
        let _ = std::fs::remove_file(self.offer_path(id));
        Ok(())
    }

    /// Up to [`TRANSFER_CHUNK`] bytes of a whole blob from `offset`, and its size.
    ///
    /// # Errors
    /// Not held here, an offset past its end, or the disk fails.
    pub fn read(&self, id: &BlobId, offset: u64) -> Result<(u64, Vec<u8>), RelayError> {
        let mut f = std::fs::File::open(self.sealed_path(id)).map_err(|_| {
            refused(ErrorCode::NotFound {
                what: format!("blob {id} at this relay"),
            })
        })?;
        let size = f.metadata()?.len();
        if offset > size {
            return Err(refused(ErrorCode::BadRequest {
                reason: format!("offset {offset} is past the end of blob {id} ({size} bytes)"),
            }));
        }
        let len = (size - offset).min(TRANSFER_CHUNK as u64) as usize;
        let mut data = vec![0u8; len];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut data)?;
        Ok((size, data))
    }

    /// Removes a blob in transfer and its announcement.
    pub fn discard(&self, id: &BlobId) {
        let _ = std::fs::remove_file(self.partial_path(id));
        let _ = std::fs::remove_file(self.offer_path(id));
    }

    /// Removes a whole blob (no notice held here refers to it any more).
    pub fn remove(&self, id: &BlobId) {
        let _ = std::fs::remove_file(self.sealed_path(id));
    }

    /// Whole blobs written more than [`PARTIAL_TTL`] before `now`.
    pub fn sealed_before(&self, now: i64) -> Vec<BlobId> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| {
                modified_secs(e).is_some_and(|t| now - t > PARTIAL_TTL)
                    && e.file_type().is_ok_and(|t| t.is_file())
            })
            .filter_map(|e| BlobId::from_hex(&e.file_name().to_string_lossy()))
            .collect()
    }

    fn read_offer(&self, id: &BlobId) -> Option<Offer> {
        let bytes = std::fs::read(self.offer_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every announcement in progress.
    fn offers(&self) -> Vec<Offer> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("partial")) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".offer"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Discards uploads announced more than [`PARTIAL_TTL`] ago, and bytes of
    /// fetches nobody has continued for as long.
    pub fn expire(&self, now: i64) -> Result<(), RelayError> {
        for entry in std::fs::read_dir(self.dir.join("partial"))?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.trim_end_matches(".offer");
            let Some(id) = BlobId::from_hex(hex) else {
                continue;
            };
            let stale = if name.ends_with(".offer") {
                self.read_offer(&id)
                    .is_none_or(|o| now - o.at > PARTIAL_TTL)
            } else {
                now - modified_secs(&entry).unwrap_or(0) > PARTIAL_TTL
                    && self.read_offer(&id).is_none()
            };
            if stale {
                self.discard(&id);
            }
        }
        Ok(())
    }
}

/// When a directory entry was last written, in seconds since the Unix epoch.
fn modified_secs(entry: &std::fs::DirEntry) -> Option<i64> {
    let t = entry.metadata().and_then(|m| m.modified()).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kring_protocol::attachment::{MAX_ATTACHMENT_BYTES, seal};

    fn sealed(data: &[u8]) -> (BlobRef, Vec<u8>) {
        let mut out = Vec::new();
        let s = seal(&mut &data[..], &mut out, &[4; 32], MAX_ATTACHMENT_BYTES).unwrap();
        (s.blob, out)
    }

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn an_upload_in_pieces_resumes_and_is_kept_whole() {
        let (_d, s) = store();
        let (blob, bytes) = sealed(&vec![1u8; 3 * TRANSFER_CHUNK / 2]);
        assert_eq!(s.offer("a@bz", blob, 0).await.unwrap(), 0);
        let (got, size) = s.put("a@bz", &blob.id, 0, &bytes[..1000]).await.unwrap();
        assert_eq!((got, size), (1000, blob.size));
        // The connection broke: offering again says where to go on.
        assert_eq!(s.offer("a@bz", blob, 10).await.unwrap(), 1000);
        // Bytes at the wrong offset are not written.
        assert_eq!(
            s.put("a@bz", &blob.id, 5, &bytes[5..10]).await.unwrap().0,
            1000
        );
        assert_eq!(s.sealed_size(&blob.id), None);
        let r = s.put("a@bz", &blob.id, 1000, &bytes[1000..]).await.unwrap();
        assert_eq!(r, (blob.size, blob.size));
        assert_eq!(s.sealed_size(&blob.id), Some(blob.size));
        let (size, data) = s.read(&blob.id, 0).unwrap();
        assert_eq!(
            (size, data.as_slice()),
            (blob.size, &bytes[..TRANSFER_CHUNK])
        );
        // Stored once: offering it again finds it whole.
        assert_eq!(s.offer("b@bz", blob, 20).await.unwrap(), blob.size);
    }

    #[tokio::test]
    async fn unannounced_oversize_and_false_blobs_are_refused() {
        let (_d, s) = store();
        let (blob, bytes) = sealed(b"hello");
        let r = s.put("a@bz", &blob.id, 0, &bytes).await;
        assert!(
            matches!(r, Err(RelayError::Refused(ErrorCode::BadRequest { reason })) if reason.contains("not announced"))
        );
        s.offer("a@bz", blob, 0).await.unwrap();
        // Another user cannot add bytes to this user's upload.
        assert!(s.put("b@bz", &blob.id, 0, &bytes).await.is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            s.put("a@bz", &blob.id, 0, &longer).await,
            Err(RelayError::Refused(ErrorCode::TooLarge { .. }))
        ));
        let mut flipped = bytes.clone();
        flipped[0] ^= 1;
        let r = s.put("a@bz", &blob.id, 0, &flipped).await;
        assert!(
            matches!(r, Err(RelayError::Refused(ErrorCode::BadRequest { reason })) if reason.contains("do not match"))
        );
        // Discarded whole: nothing half-stored, and the announcement is gone.
        assert_eq!(s.sealed_size(&blob.id), None);
        assert_eq!(s.partial_size(&blob.id), 0);
        assert!(s.put("a@bz", &blob.id, 0, &bytes).await.is_err());
    }

    #[tokio::test]
    async fn stale_uploads_are_discarded_and_uploads_are_bounded() {
        let (_d, s) = store();
        let (blob, bytes) = sealed(b"old");
        s.offer("a@bz", blob, 0).await.unwrap();
        s.put("a@bz", &blob.id, 0, &bytes[..2]).await.unwrap();
        // A day later another offer sweeps it away.
        let (other, _) = sealed(b"new");
        s.offer("a@bz", other, PARTIAL_TTL + 1).await.unwrap();
        assert_eq!(s.partial_size(&blob.id), 0);
        assert!(s.put("a@bz", &blob.id, 0, &bytes).await.is_err());
        for i in 0..MAX_PARTIALS_PER_USER - 1 {
            let (b, _) = sealed(&i.to_be_bytes());
            s.offer("a@bz", b, PARTIAL_TTL + 1).await.unwrap();
        }
        let (b, _) = sealed(b"one too many");
        assert!(matches!(
            s.offer("a@bz", b, PARTIAL_TTL + 1).await,
            Err(RelayError::Refused(ErrorCode::TooLarge { .. }))
        ));
        // Another user is not held back by this one.
        s.offer("c@bz", b, PARTIAL_TTL + 1).await.unwrap();
    }
}
