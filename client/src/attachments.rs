//! Attachments on the device: files sealed here with a fresh key each
//! ([`kring_protocol::attachment`]) and uploaded to the home relay before the notice
//! that carries their keys is filed; fetched from the home relay and opened (each
//! chunk authenticated, the whole checked against the SHA-256 in the notice) when
//! the user saves them.
//!
//! Neither direction holds a file whole in memory: sealing writes a sealed copy
//! next to the profile's store, uploads and downloads go a
//! [`TRANSFER_CHUNK`] at a time, and an interrupted transfer resumes from what the
//! other side holds.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kring_protocol::attachment::{
    BlobRef, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, TRANSFER_CHUNK, hex, open, seal,
};
use kring_protocol::wire::{ErrorCode, Request, Response};

use crate::client::{Client, unexpected};
use crate::error::{ClientError, Result};
use crate::notice::{Attachment, Notice, check_attachment_name, check_attachments};

/// How many times a transfer starts again after the connection to the home relay
/// broke, before it gives up.
const TRANSFER_RETRIES: u32 = 5;
/// How long a download waits, in all, for a relay that is still fetching the
/// blob from the relay before it.
const FETCH_PATIENCE: Duration = Duration::from_secs(300);

fn io_err(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// A file that is removed when this goes out of scope (unless kept).
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a progress callback is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes of a file sent to (or received from) the home relay so far.
    Transfer {
        /// The file's name.
        name: String,
        /// Sealed bytes done.
        done: u64,
        /// Sealed bytes in all.
        total: u64,
    },
    /// The relay is still fetching the file from the relay before it.
    Waiting {
        /// The file's name.
        name: String,
        /// What the relay said.
        reason: String,
    },
}

/// An attachment saved by [`Client::save_attachments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedAttachment {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 (hex), as checked.
    pub sha256: String,
}

impl Client {
    fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = self.profile.dir.join("scratch");
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(dir)
    }

    /// [`upload_attachments`](Self::upload_attachments), telling the progress
    /// callback set with [`Client::set_progress`].
    pub(crate) async fn upload_with_progress(
        &mut self,
        community: &str,
        paths: &[PathBuf],
    ) -> Result<Vec<Attachment>> {
        let mut sink = self.progress.take();
        let mut tell = |p: Progress| {
            if let Some(sink) = sink.as_mut() {
                sink(p);
            }
        };
        let result = self.upload_attachments(community, paths, &mut tell).await;
        self.progress = sink;
        result
    }

    /// Seals `paths` and uploads them to the home relay for a notice of
    /// `community`; the attachments to put in the notice, in order.
    pub(crate) async fn upload_attachments(
        &mut self,
        community: &str,
        paths: &[PathBuf],
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Vec<Attachment>> {
        if paths.len() > MAX_ATTACHMENTS {
            return Err(ClientError::Usage(format!(
                "{} files; a notice carries at most {MAX_ATTACHMENTS}",
                paths.len()
            )));
        }
        // Sizes first: refuse before sealing anything.
        let mut total = 0u64;
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
            if !meta.is_file() {
                return Err(io_err(path, "not a regular file"));
            }
            total = total.saturating_add(meta.len());
        }
        if total > MAX_ATTACHMENT_BYTES {
            return Err(ClientError::Usage(format!(
                "the files are {total} bytes; a notice carries at most {MAX_ATTACHMENT_BYTES} bytes (50 MiB) of attachments"
            )));
        }
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_attachment_name(&name).map_err(|e| ClientError::Usage(e.to_string()))?;
            let (attachment, sealed) = self.seal_file(path, name)?;
            self.upload_blob(community, &attachment, &sealed.path, progress)
                .await?;
            out.push(attachment);
        }
        check_attachments(&out).map_err(|e| ClientError::Usage(e.to_string()))?;
        Ok(out)
    }

    /// Seals one file into a scratch file with a fresh key.
    fn seal_file(&self, path: &Path, name: String) -> Result<(Attachment, TempFile)> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), key.as_mut())
            .map_err(|_| ClientError::Protocol("no randomness for an attachment key".into()))?;
        let scratch = TempFile {
            path: self
                .scratch_dir()?
                .join(format!("{}.sealed", uuid::Uuid::new_v4())),
            keep: false,
        };
        let mut src = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let mut dst = std::io::BufWriter::new(
            private(&scratch.path, false).map_err(|e| io_err(&scratch.path, e))?,
        );
        let sealed =
            seal(&mut src, &mut dst, &key, MAX_ATTACHMENT_BYTES).map_err(|e| io_err(path, e))?;
        drop(dst);
        Ok((
            Attachment {
                name,
                size: sealed.size,
                sha256: hex(&sealed.sha256),
                blob: sealed.blob.id.to_hex(),
                key: hex(key.as_ref()),
            },
            scratch,
        ))
    }

    /// Offers a sealed blob to the home relay and sends what it does not hold yet,
    /// resuming after a broken connection.
    async fn upload_blob(
        &mut self,
        community: &str,
        attachment: &Attachment,
        sealed: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<()> {
        let blob = attachment
            .blob_ref()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let mut file = std::fs::File::open(sealed).map_err(|e| io_err(sealed, e))?;
        let mut retries = 0;
        'offer: loop {
            let mut at = match self
                .call(&Request::OfferBlob {
                    community: community.to_string(),
                    blob,
                })
                .await
            {
                Ok(Response::BlobProgress { received, size }) if size == blob.size => received,
                Ok(other) => return Err(unexpected("OfferBlob", &other)),
                Err(e @ ClientError::Unreachable { .. }) => {
                    retries += 1;
                    if retries > TRANSFER_RETRIES {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut buf = vec![0u8; TRANSFER_CHUNK];
            while at < blob.size {
                let len = (blob.size - at).min(TRANSFER_CHUNK as u64) as usize;
                file.seek(SeekFrom::Start(at))
                    .and_then(|_| file.read_exact(&mut buf[..len]))
                    .map_err(|e| io_err(sealed, e))?;
                let answer = self
                    .call(&Request::PutBlob {
                        blob: blob.id,
                        offset: at,
                        data: buf[..len].to_vec(),
                    })
                    .await;
                match answer {
                    Ok(Response::BlobProgress { received, size })
                        if size == blob.size && received > at =>
                    {
                        at = received;
                        progress(Progress::Transfer {
                            name: attachment.name.clone(),
                            done: at,
                            total: blob.size,
                        });
                    }
                    Ok(other) => return Err(unexpected("PutBlob", &other)),
                    Err(e @ ClientError::Unreachable { .. }) => {
                        retries += 1;
                        if retries > TRANSFER_RETRIES {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        // The offer says how much arrived.
                        continue 'offer;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
    }

    /// Makes sure the home relay holds the blobs of `notice`'s attachments, for a
    /// forward of it into `community`: blobs it lacks it fetches from the relays
    /// the original came through (asked for the original notice).
    pub(crate) async fn hold_at_home(
        &mut self,
        community: &str,
        from_community: &str,
        from_id: uuid::Uuid,
        attachments: &[Attachment],
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<()> {
        for a in attachments {
            let blob = a
                .blob_ref()
                .map_err(|e| ClientError::Usage(e.to_string()))?;
            let offer = Request::OfferBlob {
                community: community.to_string(),
                blob,
            };
            match self.call(&offer).await? {
                Response::BlobProgress { received, size } if received == size => continue,
                Response::BlobProgress { .. } => {}
                other => return Err(unexpected("OfferBlob", &other)),
            }
            // Asking for the original's first bytes makes the home relay fetch the
            // whole blob from the relay before it.
            self.fetch_chunk(from_community, from_id, &a.name, blob, 0, progress)
                .await?;
            match self.call(&offer).await? {
                Response::BlobProgress { received, size } if received == size => {}
                other => return Err(unexpected("OfferBlob", &other)),
            }
        }
        Ok(())
    }

    /// One chunk of a blob from the home relay, waiting while it is still on its
    /// way there (at most [`FETCH_PATIENCE`]).
    async fn fetch_chunk(
        &mut self,
        community: &str,
        notice_id: uuid::Uuid,
        name: &str,
        blob: BlobRef,
        offset: u64,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Vec<u8>> {
        let started = tokio::time::Instant::now();
        let mut retries = 0;
        loop {
            let answer = self
                .call(&Request::GetBlob {
                    community: community.to_string(),
                    notice_id,
                    blob: blob.id,
                    offset,
                })
                .await;
            match answer {
                Ok(Response::BlobChunk {
                    size,
                    offset: at,
                    data,
                }) if size == blob.size && at == offset && !data.is_empty() => return Ok(data),
                Ok(other) => return Err(unexpected("GetBlob", &other)),
                Err(ClientError::Relay(ErrorCode::Unavailable { reason }))
                    if started.elapsed() < FETCH_PATIENCE =>
                {
                    progress(Progress::Waiting {
                        name: name.to_string(),
                        reason,
                    });
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    retries += 1;
                    if retries > TRANSFER_RETRIES {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Saves the attachments of stored notice `id` (or a unique prefix) into `dir`
    /// (created if missing), each checked against the SHA-256 in the notice. An
    /// existing file is never overwritten. A download that breaks off resumes from
    /// what arrived the next time.
    pub async fn save_attachments(
        &mut self,
        id: &str,
        dir: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Vec<SavedAttachment>> {
        let notice: Notice = self.find_notice(id)?.notice;
        if notice.attachments.is_empty() {
            return Ok(Vec::new());
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut saved = Vec::with_capacity(notice.attachments.len());
        for a in &notice.attachments {
            saved.push(self.save_one(&notice, a, dir, progress).await?);
        }
        Ok(saved)
    }

    /// Saves attachment `index` (0-based) of stored notice `id` into `dir` (see
    /// [`save_attachments`](Self::save_attachments)).
    pub async fn save_attachment(
        &mut self,
        id: &str,
        index: usize,
        dir: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<SavedAttachment> {
        let notice: Notice = self.find_notice(id)?.notice;
        let a = notice.attachments.get(index).cloned().ok_or_else(|| {
            ClientError::NotFound(format!(
                "notice {} has {} attachment(s); there is no number {}",
                notice.id,
                notice.attachments.len(),
                index + 1
            ))
        })?;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        self.save_one(&notice, &a, dir, progress).await
    }

    /// A directory of its own in the profile's scratch space (for the local
    /// interface, which hands a saved file to the browser and removes it).
    pub fn scratch_space(&self) -> Result<PathBuf> {
        let dir = self.scratch_dir()?.join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(dir)
    }

    /// Fetches, opens and checks one attachment into `dir`.
    async fn save_one(
        &mut self,
        notice: &Notice,
        a: &Attachment,
        dir: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<SavedAttachment> {
        // Names were checked when the notice arrived; checked again before they
        // become paths.
        check_attachment_name(&a.name).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let target = dir.join(&a.name);
        if target.exists() {
            return Err(io_err(
                &target,
                "exists already; move it away or save into another directory with --out",
            ));
        }
        let blob = a
            .blob_ref()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let part = dir.join(format!(".{}.kring-part", &a.blob[..16]));
        self.download_blob(notice, a, blob, &part, progress).await?;
        let opened = TempFile {
            path: dir.join(format!(".{}.kring-open", &a.blob[..16])),
            keep: false,
        };
        let size = match open_into(&part, &opened.path, a, blob.size) {
            Ok(n) => n,
            Err(e) => {
                // What arrived is not what the notice says: never kept.
                let _ = std::fs::remove_file(&part);
                return Err(ClientError::Protocol(format!(
                    "attachment {} of notice {}: {e}; nothing was saved",
                    a.name, notice.id
                )));
            }
        };
        // A link never replaces an existing file.
        std::fs::hard_link(&opened.path, &target).map_err(|e| io_err(&target, e))?;
        let _ = std::fs::remove_file(&part);
        Ok(SavedAttachment {
            path: target,
            size,
            sha256: a.sha256.clone(),
        })
    }

    /// Downloads a sealed blob into `part`, from what `part` holds already.
    async fn download_blob(
        &mut self,
        notice: &Notice,
        a: &Attachment,
        blob: BlobRef,
        part: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<()> {
        let mut file = private(part, true).map_err(|e| io_err(part, e))?;
        let mut at = file.metadata().map_err(|e| io_err(part, e))?.len();
        if at > blob.size {
            file.set_len(0).map_err(|e| io_err(part, e))?;
            at = 0;
        }
        while at < blob.size {
            let data = self
                .fetch_chunk(&notice.community, notice.id, &a.name, blob, at, progress)
                .await?;
            if at + data.len() as u64 > blob.size {
                return Err(ClientError::Protocol(format!(
                    "the relay sent more of attachment {} than it has",
                    a.name
                )));
            }
            file.write_all(&data).map_err(|e| io_err(part, e))?;
            at += data.len() as u64;
            progress(Progress::Transfer {
                name: a.name.clone(),
                done: at,
                total: blob.size,
            });
        }
        file.sync_all().map_err(|e| io_err(part, e))?;
        Ok(())
    }
}

/// Creates (or, with `append`, opens for appending) a file only its owner may read:
/// an opened attachment is as sensitive as the notice.
fn private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    // Never written through a link someone placed in a shared directory.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(
            "a symbolic link is in the way; remove it or save elsewhere",
        ));
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Opens the sealed blob in `part` into `out` (synced), checked against `a`.
fn open_into(
    part: &Path,
    out: &Path,
    a: &Attachment,
    sealed_len: u64,
) -> std::result::Result<u64, kring_protocol::attachment::AttachmentError> {
    use kring_protocol::attachment::AttachmentError;
    let key = a.key_bytes().map_err(|_| AttachmentError::BadKey)?;
    let sha = a.sha256_bytes().map_err(|_| AttachmentError::BadKey)?;
    let mut src = std::io::BufReader::new(std::fs::File::open(part)?);
    let mut dst = std::io::BufWriter::new(private(out, false)?);
    let n = open(&mut src, sealed_len, &mut dst, &key, &sha)?;
    dst.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(n)
}

/// The blobs of `attachments`, as the notice's authenticated data names them.
pub(crate) fn blob_refs(attachments: &[Attachment]) -> Result<Vec<BlobRef>> {
    attachments
        .iter()
        .map(|a| a.blob_ref().map_err(|e| ClientError::Usage(e.to_string())))
        .collect()
}
