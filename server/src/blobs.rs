//! Attachments on the relay's disk: sealed blobs, each stored once however many
//! notices refer to it, and the uploads and fetches in progress.
//!
//! A blob is opaque here ([`kring_protocol::attachment`]): sealed on the filer's
//! device, named by the SHA-256 of its sealed bytes. The directory `data_dir/blobs`
//! holds
//!
//! * `HEX` — a whole blob, checked against its name, fsynced, then renamed into
//!   place: a blob under its name is always whole;
//! * `upload/HEX.USER` and `upload/HEX.USER.offer` — one user's upload of a blob
//!   (`USER` a digest of the user id): the bytes received so far, appended in order
//!   and fsynced with every piece so that an interrupted upload resumes, and its
//!   announcement (size, who, when). Each user's upload is their own: nobody else's
//!   bytes go into it. Bytes of a blob the user did not announce are refused;
//! * `fetch/HEX` — a blob being fetched from another relay (the relay serialises
//!   fetches of one blob);
//! * `pending/HEX.USER` — a blob a user uploaded that no notice has named yet:
//!   what the per-user quota of unfiled uploads counts.
//!
//! Uploads and fetches not completed within [`PARTIAL_TTL`] are discarded, and so
//! are the pending marks; whole blobs no notice refers to go with
//! [`crate::core::sweep_blobs`]. Which notice refers to which blob, and who may
//! fetch it, is in the store (`relay/attachments.rs`); this module only keeps bytes.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kring_protocol::attachment::{
    BlobId, BlobRef, MAX_ATTACHMENTS, MAX_SEALED_BYTES, TRANSFER_CHUNK,
};
use kring_protocol::wire::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::error::RelayError;

/// How long an upload or fetch may take before its bytes are discarded, and how
/// long an uploaded blob counts against its uploader before a notice names it.
pub const PARTIAL_TTL: i64 = 24 * 3600;
/// Most uploads and fetches in progress at once, over all users and peers.
pub const MAX_PARTIALS: usize = 1024;
/// Most uploads one user may have in progress.
pub const MAX_PARTIALS_PER_USER: usize = 2 * MAX_ATTACHMENTS;
/// Most bytes one user may have announced or uploaded without a notice naming
/// them yet (four notices' worth).
pub const MAX_UNFILED_PER_USER: u64 = 4 * MAX_SEALED_BYTES;

/// The announcement of an upload (and, once it is whole, its pending mark).
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

/// A short, fixed-length, path-safe name for a user id.
fn user_tag(user: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
    kring_protocol::attachment::hex(&digest.as_ref()[..8])
}

impl BlobStore {
    /// Opens (creating) the blob directory `dir`, owner-only.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> Result<Self, RelayError> {
        for d in [
            dir.to_path_buf(),
            dir.join("upload"),
            dir.join("fetch"),
            dir.join("pending"),
        ] {
            std::fs::create_dir_all(&d)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
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

    fn upload_path(&self, id: &BlobId, user: &str) -> PathBuf {
        self.dir
            .join("upload")
            .join(format!("{}.{}", id.to_hex(), user_tag(user)))
    }

    fn offer_path(&self, id: &BlobId, user: &str) -> PathBuf {
        self.dir
            .join("upload")
            .join(format!("{}.{}.offer", id.to_hex(), user_tag(user)))
    }

    fn fetch_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join("fetch").join(id.to_hex())
    }

    fn pending_path(&self, id: &BlobId, user: &str) -> PathBuf {
        self.dir
            .join("pending")
            .join(format!("{}.{}", id.to_hex(), user_tag(user)))
    }

    /// The size of a whole blob held here, if it is.
    pub fn sealed_size(&self, id: &BlobId) -> Option<u64> {
        std::fs::metadata(self.sealed_path(id))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Bytes of a blob fetched from another relay so far.
    pub fn fetched_size(&self, id: &BlobId) -> u64 {
        file_len(&self.fetch_path(id))
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
    /// this user has sent already (all of them when the blob is held whole).
    ///
    /// # Errors
    /// The blob is held with another size, too many uploads are in progress, the
    /// user's unfiled uploads would pass [`MAX_UNFILED_PER_USER`], or the disk fails.
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
            return Ok(size);
        }
        self.expire(now)?;
        match read_json::<Offer>(&self.offer_path(&blob.id, user)) {
            Some(offer) if offer.size == blob.size => {
                return Ok(file_len(&self.upload_path(&blob.id, user)).min(blob.size));
            }
            Some(_) => self.discard_upload(&blob.id, user),
            None => {}
        }
        if self.in_progress() >= MAX_PARTIALS {
            return Err(refused(ErrorCode::RateLimited {
                retry_after_ms: 60_000,
            }));
        }
        let offers: Vec<Offer> = self.marks("upload", ".offer");
        let mine = offers.iter().filter(|o| o.by == user).count();
        if mine >= MAX_PARTIALS_PER_USER {
            return Err(refused(ErrorCode::TooLarge {
                what: format!(
                    "{mine} uploads in progress; finish or abandon them first (at most {MAX_PARTIALS_PER_USER})"
                ),
            }));
        }
        let unfiled: u64 = offers
            .iter()
            .chain(self.marks::<Offer>("pending", "").iter())
            .filter(|o| o.by == user)
            .map(|o| o.size)
            .sum();
        if unfiled.saturating_add(blob.size) > MAX_UNFILED_PER_USER {
            return Err(refused(ErrorCode::TooLarge {
                what: format!(
                    "{unfiled} bytes uploaded and not yet in a filed notice; file them, or wait a day \
                     for them to be discarded (at most {MAX_UNFILED_PER_USER})"
                ),
            }));
        }
        let offer = Offer {
            size: blob.size,
            by: user.to_string(),
            at: now,
        };
        let bytes = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
        write_synced(&self.offer_path(&blob.id, user), &bytes)?;
        Ok(file_len(&self.upload_path(&blob.id, user)).min(blob.size))
    }

    /// Appends `data` at `offset` to an upload `user` announced. Bytes at another
    /// offset than what is held are not written: the answer says where to go on.
    /// With the last byte the blob is checked against its name and kept (pending
    /// until a notice names it), or discarded. Returns `(received, size)`.
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
            self.discard_upload(id, user);
            return Ok((size, size));
        }
        let Some(offer) = read_json::<Offer>(&self.offer_path(id, user)) else {
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "blob {id} was not announced: offer it (with its size) before sending its bytes"
                ),
            }));
        };
        let partial = self.upload_path(id, user);
        let held = file_len(&partial);
        if held > offer.size {
            self.discard_upload(id, user);
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "blob {id}: the upload was inconsistent and was discarded; offer it again"
                ),
            }));
        }
        if offset != held {
            return Ok((held, offer.size));
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
        append_synced(&partial, data)?;
        if end < offer.size {
            return Ok((end, offer.size));
        }
        match self.seal(id, &partial).await {
            Ok(()) => {}
            Err(SealError::Mismatch) => {
                self.discard_upload(id, user);
                return Err(refused(ErrorCode::BadRequest {
                    reason: format!(
                        "the bytes received for blob {id} do not match its name; they were discarded: send it again"
                    ),
                }));
            }
            Err(SealError::Local(e)) => return Err(e),
        }
        let bytes = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
        write_synced(&self.pending_path(id, user), &bytes)?;
        let _ = std::fs::remove_file(self.offer_path(id, user));
        Ok((offer.size, offer.size))
    }

    /// Whether a fetch of one more blob from another relay may start (in-progress
    /// transfers are bounded).
    pub fn may_fetch(&self, id: &BlobId) -> bool {
        self.fetched_size(id) > 0 || self.in_progress() < MAX_PARTIALS
    }

    /// Appends bytes fetched from another relay at `offset` (which must be what is
    /// held) of a blob of `size`; with the last byte the blob is checked and kept,
    /// or discarded. The caller holds [`lock`](Self::lock).
    ///
    /// # Errors
    /// [`FetchError::Source`] for bytes out of place or a blob that does not match
    /// its name (what was fetched is discarded); [`FetchError::Local`] when the disk
    /// fails.
    pub async fn append_fetched(
        &self,
        blob: &BlobRef,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, FetchError> {
        let partial = self.fetch_path(&blob.id);
        let held = file_len(&partial);
        if offset != held || held.saturating_add(data.len() as u64) > blob.size {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Source(format!(
                "bytes of blob {} out of place (at {offset} with {held} held)",
                blob.id
            )));
        }
        append_synced(&partial, data).map_err(|e| FetchError::Local(e.into()))?;
        let end = held + data.len() as u64;
        if end == blob.size {
            match self.seal(&blob.id, &partial).await {
                Ok(()) => {}
                Err(SealError::Mismatch) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(FetchError::Source(format!(
                        "blob {} does not match its name",
                        blob.id
                    )));
                }
                Err(SealError::Local(e)) => return Err(FetchError::Local(e)),
            }
        }
        Ok(end)
    }

    /// Checks a complete partial blob against its name and renames it into place
    /// (durably); a partial that does not match is left for the caller to discard.
    async fn seal(&self, id: &BlobId, partial: &Path) -> Result<(), SealError> {
        let path = partial.to_path_buf();
        let hash = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path)?;
            kring_protocol::attachment::sha256_of(&mut f)
        })
        .await
        .map_err(|e| SealError::Local(e.into()))?
        .map_err(|e| SealError::Local(e.into()))?;
        if hash != id.0 {
            return Err(SealError::Mismatch);
        }
        std::fs::rename(partial, self.sealed_path(id)).map_err(|e| SealError::Local(e.into()))?;
        sync_dir(&self.dir).map_err(|e| SealError::Local(e.into()))?;
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

    /// A notice names the blob now: it no longer counts as anybody's unfiled upload.
    pub fn filed(&self, id: &BlobId) {
        let prefix = format!("{}.", id.to_hex());
        if let Ok(dir) = std::fs::read_dir(self.dir.join("pending")) {
            for e in dir.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Removes one user's upload of a blob and its announcement.
    fn discard_upload(&self, id: &BlobId, user: &str) {
        let _ = std::fs::remove_file(self.upload_path(id, user));
        let _ = std::fs::remove_file(self.offer_path(id, user));
    }

    /// Removes a whole blob (no notice held here refers to it any more).
    pub fn remove(&self, id: &BlobId) {
        let _ = std::fs::remove_file(self.sealed_path(id));
    }

    /// Uploads and fetches in progress.
    fn in_progress(&self) -> usize {
        let count = |sub: &str| {
            std::fs::read_dir(self.dir.join(sub)).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".offer"))
                    .count()
            })
        };
        // An announced upload with no bytes yet counts too.
        let offers = std::fs::read_dir(self.dir.join("upload")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".offer"))
                .count()
        });
        offers.max(count("upload")) + count("fetch")
    }

    /// The marks (announcements or pending marks) in `sub` whose names end in `suffix`.
    fn marks<T: serde::de::DeserializeOwned>(&self, sub: &str, suffix: &str) -> Vec<T> {
        let Ok(dir) = std::fs::read_dir(self.dir.join(sub)) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .filter_map(|e| read_json(&e.path()))
            .collect()
    }

    /// Discards uploads announced more than [`PARTIAL_TTL`] ago (or never
    /// announced), fetches nobody has continued for as long, and pending marks
    /// older than that.
    pub fn expire(&self, now: i64) -> Result<(), RelayError> {
        for sub in ["upload", "fetch", "pending"] {
            for entry in std::fs::read_dir(self.dir.join(sub))?.filter_map(Result::ok) {
                let path = entry.path();
                let stale = match sub {
                    "upload" => {
                        let offer = if path.extension().is_some_and(|e| e == "offer") {
                            path.clone()
                        } else {
                            let mut p = path.clone().into_os_string();
                            p.push(".offer");
                            PathBuf::from(p)
                        };
                        read_json::<Offer>(&offer).is_none_or(|o| now - o.at > PARTIAL_TTL)
                    }
                    "pending" => read_json::<Offer>(&path).is_none_or(|o| now - o.at > PARTIAL_TTL),
                    _ => now - modified_secs(&entry).unwrap_or(0) > PARTIAL_TTL,
                };
                if stale {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
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
}

/// Why a fetched blob was not kept.
#[derive(Debug)]
pub enum FetchError {
    /// The relay it came from sent bytes out of place or not matching the blob's
    /// name; they were discarded.
    Source(String),
    /// This relay's disk failed.
    Local(RelayError),
}

/// Why a complete partial blob was not kept.
#[derive(Debug)]
enum SealError {
    /// Its bytes do not match its name.
    Mismatch,
    /// The disk failed.
    Local(RelayError),
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
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
        assert_eq!(file_len(&s.upload_path(&blob.id, "a@bz")), 0);
        assert!(s.put("a@bz", &blob.id, 0, &bytes).await.is_err());
    }

    #[tokio::test]
    async fn one_users_upload_cannot_spoil_another_users_or_a_fetch() {
        let (_d, s) = store();
        let (blob, bytes) = sealed(&vec![9u8; 5000]);
        // b announces the same blob with a larger size and sends garbage.
        let bigger = BlobRef {
            id: blob.id,
            size: kring_protocol::attachment::sealed_len(9000),
        };
        s.offer("b@bz", bigger, 0).await.unwrap();
        s.put("b@bz", &blob.id, 0, &[0u8; 6000]).await.unwrap();
        // a's upload and a fetch of the blob are untouched by it.
        s.offer("a@bz", blob, 0).await.unwrap();
        assert_eq!(
            s.put("a@bz", &blob.id, 0, &bytes[..100]).await.unwrap().0,
            100
        );
        let _g = s.lock(&blob.id).await;
        assert_eq!(s.append_fetched(&blob, 0, &bytes).await.unwrap(), blob.size);
        assert_eq!(s.sealed_size(&blob.id), Some(blob.size));
        // A fetch whose source sends false bytes keeps nothing.
        let (other, mut wrong) = sealed(b"other");
        wrong[0] ^= 1;
        assert!(matches!(
            s.append_fetched(&other, 0, &wrong).await,
            Err(FetchError::Source(_))
        ));
        assert_eq!(
            (s.sealed_size(&other.id), s.fetched_size(&other.id)),
            (None, 0)
        );
        assert!(matches!(
            s.append_fetched(&other, 5, &wrong).await,
            Err(FetchError::Source(_))
        ));
    }

    #[tokio::test]
    async fn unfiled_uploads_are_bounded_per_user_and_expire() {
        let (_d, s) = store();
        // Whole uploads no notice names count against the uploader.
        let mut ids = Vec::new();
        let per = kring_protocol::attachment::sealed_len(MAX_ATTACHMENT_BYTES);
        let mut n = 0u8;
        let refusal = loop {
            let blob = BlobRef {
                id: BlobId([n; 32]),
                size: per,
            };
            match s.offer("a@bz", blob, 0).await {
                Ok(_) => {
                    // Pretend it was uploaded whole (its pending mark).
                    let offer = Offer {
                        size: per,
                        by: "a@bz".into(),
                        at: 0,
                    };
                    write_synced(
                        &s.pending_path(&blob.id, "a@bz"),
                        &serde_json::to_vec(&offer).unwrap(),
                    )
                    .unwrap();
                    s.discard_upload(&blob.id, "a@bz");
                    ids.push(blob.id);
                }
                Err(e) => break e,
            }
            n += 1;
        };
        assert!(
            matches!(refusal, RelayError::Refused(ErrorCode::TooLarge { .. })),
            "{refusal:?}"
        );
        assert_eq!(ids.len(), 4);
        // Filing one frees its share; another user is not held back.
        s.filed(&ids[0]);
        for (user, n) in [("a@bz", 200), ("c@bz", 201)] {
            let blob = BlobRef {
                id: BlobId([n; 32]),
                size: per,
            };
            s.offer(user, blob, 0).await.unwrap();
        }
        // A day later the marks and announcements are gone.
        s.expire(PARTIAL_TTL + 1).unwrap();
        assert!(s.marks::<Offer>("pending", "").is_empty());
        assert!(s.marks::<Offer>("upload", ".offer").is_empty());
        for i in 0..MAX_PARTIALS_PER_USER {
            let (b, _) = sealed(&i.to_be_bytes());
            s.offer("a@bz", b, PARTIAL_TTL + 1).await.unwrap();
        }
        let (b, _) = sealed(b"one too many");
        assert!(matches!(
            s.offer("a@bz", b, PARTIAL_TTL + 1).await,
            Err(RelayError::Refused(ErrorCode::TooLarge { .. }))
        ));
    }
}
