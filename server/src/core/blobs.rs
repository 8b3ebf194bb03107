//! Attachments in the core: the record of which notice refers to which blob at
//! every relay on the notice's path, the check that a filing's blobs are held, and
//! releasing blobs no notice refers to any more.

use kring_protocol::attachment::{BlobId, BlobRef};
use serde::{Deserialize, Serialize};

use super::*;

/// The blobs a notice refers to, as a relay on its path keeps them
/// (`b/COMMUNITY\0NOTICE_ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeBlobs {
    /// The notice's community.
    pub community: String,
    /// The notice's authenticated data: its label(s) and blobs.
    pub aad: Vec<u8>,
    /// Where a blob not held here comes from: the relay the notice came from
    /// (`None`: it was filed here, with its blobs).
    pub source: Option<String>,
}

impl NoticeBlobs {
    fn decoded(&self) -> Result<NoticeAad, RelayError> {
        NoticeAad::from_bytes(&self.aad).map_err(|e| RelayError::Corrupt {
            key: format!("attachments of a notice of {}", self.community),
            reason: e.to_string(),
        })
    }
}

/// The notice id and blob names of a log entry that is a notice with attachments.
pub fn entry_blobs(entry: &LogEntry) -> Option<(Uuid, Vec<BlobId>)> {
    let EntryKind::Notice {
        notice_id, label, ..
    } = &entry.kind
    else {
        return None;
    };
    if label.first() != Some(&kring_protocol::notice_aad::ATTACHMENTS_MARK) {
        return None;
    }
    let aad = NoticeAad::from_bytes(label).ok()?;
    Some((*notice_id, aad.blobs.iter().map(|b| b.id).collect()))
}

/// Records, in `b`, the blobs of a notice that has any: its community, its
/// authenticated data and the relay to fetch them from. A record already there
/// (the notice was filed here, with its blobs) is kept.
pub fn put_notice_blobs(
    core: &Core,
    b: &mut Batch,
    notice_id: &Uuid,
    community: &str,
    aad: &[u8],
    source: Option<&str>,
) -> Result<(), RelayError> {
    if aad.first() != Some(&kring_protocol::notice_aad::ATTACHMENTS_MARK) {
        return Ok(());
    }
    let Ok(decoded) = NoticeAad::from_bytes(aad) else {
        return Ok(());
    };
    let key = crate::keyspace::attachments::notice(community, notice_id);
    if source.is_some() && b.get(core.engine(), &key)?.is_some() {
        return Ok(());
    }
    b.put_obj(
        key,
        &NoticeBlobs {
            community: community.to_string(),
            aad: aad.to_vec(),
            source: source.map(str::to_string),
        },
    )?;
    if source.is_none() {
        // Filed: the uploads no longer count as unfiled.
        for blob in &decoded.blobs {
            core.blobs.filed(&blob.id);
        }
    }
    Ok(())
}

/// Removes the blobs among `ids` that no notice record here refers to any more
/// (their notices were pruned or refused). Runs in the writer's critical section,
/// so no filing that names one of them commits in between.
pub fn release_blobs(core: &Core, cx: &mut Cx, ids: &[BlobId]) -> Result<(), RelayError> {
    if ids.is_empty() {
        return Ok(());
    }
    core.write(cx, |_, _| {
        let mut still = std::collections::HashSet::new();
        let prefix = crate::keyspace::attachments::ATTACHMENTS;
        for (k, v) in core.engine().scan(prefix, None, usize::MAX)? {
            let rec: NoticeBlobs = crate::store::decode(&k, &v)?;
            if let Ok(aad) = NoticeAad::from_bytes(&rec.aad) {
                still.extend(aad.blobs.iter().map(|b| b.id));
            }
        }
        for id in ids.iter().filter(|id| !still.contains(*id)) {
            core.blobs.remove(id);
        }
        Ok(())
    })
}

/// Discards uploads and fetches not completed in time and blobs nobody filed:
/// whole blobs older than [`PARTIAL_TTL`](crate::blobs::PARTIAL_TTL) that no
/// notice here refers to.
pub fn sweep_blobs(core: &Core, cx: &mut Cx) -> Result<(), RelayError> {
    core.blobs.expire(cx.now)?;
    let old = core.blobs.sealed_before(cx.now);
    release_blobs(core, cx, &old)
}

impl Core {
    /// At the filer's home relay: every blob a notice refers to is held here whole,
    /// with the size the notice gives.
    pub(crate) fn check_blobs_held(&self, aad: &NoticeAad) -> Result<(), RelayError> {
        for blob in &aad.blobs {
            match self.blobs.sealed_size(&blob.id) {
                Some(size) if size == blob.size => {}
                Some(size) => {
                    return Err(ErrorCode::BadRequest {
                        reason: format!(
                            "attachment blob {} is {size} bytes here, not {}",
                            blob.id, blob.size
                        ),
                    }
                    .into());
                }
                None => {
                    return Err(ErrorCode::BadRequest {
                        reason: format!(
                            "attachment blob {} is not uploaded to relay {}: upload it before filing",
                            blob.id, self.id
                        ),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The record of `notice_id`'s blobs in `community`, the blob `blob` among
    /// them, and the notice's label; `NotFound` (the same for every miss) otherwise.
    pub(crate) fn notice_blob(
        &self,
        community: &str,
        notice_id: &Uuid,
        blob: &BlobId,
    ) -> Result<(NoticeBlobs, BlobRef, Label), RelayError> {
        let missing = || {
            RelayError::Refused(ErrorCode::NotFound {
                what: format!("attachment {blob} of notice {notice_id}"),
            })
        };
        let rec: NoticeBlobs = get_obj(
            self.engine(),
            &crate::keyspace::attachments::notice(community, notice_id),
        )?
        .ok_or_else(missing)?;
        let aad = rec.decoded()?;
        let found = aad
            .blobs
            .iter()
            .find(|b| b.id == *blob)
            .copied()
            .ok_or_else(missing)?;
        Ok((rec, found, aad.label))
    }
}
