//! Attachments: blobs announced and uploaded at the filer's home relay, the record
//! of which notice refers to which blob at every relay on the notice's path, and
//! handing a blob only to a member (or relay) entitled to its notice's label,
//! fetched through from the relay before when it is not here yet.

use kring_protocol::attachment::{BlobId, BlobRef};
use serde::{Deserialize, Serialize};

use super::*;
use crate::blobs::FetchError;

/// How long one request waits for a blob fetched through from another relay. The
/// fetch stops there and resumes with the next request for it (what arrived is
/// kept), so a device asking again sees it progress.
pub const FETCH_THROUGH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    relay: &Relay,
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
    if source.is_some() && b.get(relay.engine(), &key)?.is_some() {
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
            relay.blobs.filed(&blob.id);
        }
    }
    Ok(())
}

/// Removes the blobs among `ids` that no notice record here refers to any more
/// (their notices were pruned or refused). Runs in the writer's critical section,
/// so no filing that names one of them commits in between.
pub fn release_blobs(relay: &Relay, ids: &[BlobId]) -> Result<(), RelayError> {
    if ids.is_empty() {
        return Ok(());
    }
    relay.write(|_, _| {
        let mut still = std::collections::HashSet::new();
        let prefix = crate::keyspace::attachments::ATTACHMENTS;
        for (k, v) in relay.engine().scan(prefix, None, usize::MAX)? {
            let rec: NoticeBlobs = crate::store::decode(&k, &v)?;
            if let Ok(aad) = NoticeAad::from_bytes(&rec.aad) {
                still.extend(aad.blobs.iter().map(|b| b.id));
            }
        }
        for id in ids.iter().filter(|id| !still.contains(*id)) {
            relay.blobs.remove(id);
        }
        Ok(())
    })
}

/// Discards uploads and fetches not completed in time and blobs nobody filed:
/// whole blobs older than [`PARTIAL_TTL`](crate::blobs::PARTIAL_TTL) that no
/// notice here refers to.
pub fn sweep_blobs(relay: &Relay, now: i64) -> Result<(), RelayError> {
    relay.blobs.expire(now)?;
    let old = relay.blobs.sealed_before(now);
    release_blobs(relay, &old)
}

impl Relay {
    /// [`Request::OfferBlob`]: a member announces a blob for a notice of `community`.
    pub(super) async fn offer_blob(
        &self,
        caller: &Caller,
        community: &str,
        blob: BlobRef,
    ) -> Result<Response, RelayError> {
        self.member_community(caller, community)?;
        let received = self.blobs.offer(&caller.id, blob, now()).await?;
        Ok(Response::BlobProgress {
            received,
            size: blob.size,
        })
    }

    /// [`Request::PutBlob`]: bytes of a blob the caller announced.
    pub(super) async fn put_blob(
        &self,
        caller: &Caller,
        blob: &BlobId,
        offset: u64,
        data: &[u8],
    ) -> Result<Response, RelayError> {
        let (received, size) = self.blobs.put(&caller.id, blob, offset, data).await?;
        Ok(Response::BlobProgress { received, size })
    }

    /// At the filer's home relay: every blob a notice refers to is held here whole,
    /// with the size the notice gives.
    pub(super) fn check_blobs_held(&self, aad: &NoticeAad) -> Result<(), RelayError> {
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
    fn notice_blob(
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

    /// [`Request::GetBlob`]: a member whose clearance admits the notice's label.
    /// A miss is audited too (it may be someone probing for blobs).
    pub(super) async fn get_blob(
        &self,
        caller: &Caller,
        community: &str,
        notice_id: &Uuid,
        blob: &BlobId,
        offset: u64,
    ) -> Result<Response, RelayError> {
        self.member_community(caller, community)?;
        let (rec, blob, label) = match self.notice_blob(community, notice_id, blob) {
            Ok(found) => found,
            Err(RelayError::Refused(code)) => {
                self.audit_refusal(
                    &caller.id,
                    &format!("{community} notice {notice_id} blob {blob}"),
                    "get-blob",
                    &code,
                );
                return Err(code.into());
            }
            Err(e) => return Err(e),
        };
        let d = kring_policy::decide_opt(Some(&label), caller.identity.clearance.as_ref());
        if !d.allowed {
            return Err(ErrorCode::PolicyDenied {
                reason: format!("the attachment's notice is labelled {label}: {d}"),
            }
            .into());
        }
        self.serve_blob(&rec, notice_id, blob, offset).await
    }

    /// [`FedRequest::FetchBlob`](kring_protocol::wire::FedRequest::FetchBlob) from
    /// relay `peer`: the community's hub (asking the filer's home relay) or a relay
    /// with members in the community (asking its hub), accredited for the label. Only
    /// the hub fetches through on a peer's behalf (from the filer's home relay); any
    /// other relay hands out only what it holds.
    pub async fn fetch_blob_for_peer(
        &self,
        peer: &str,
        community: &str,
        notice_id: &Uuid,
        blob: &BlobId,
        offset: u64,
    ) -> Result<Response, RelayError> {
        let (rec, blob, label) = self.notice_blob(community, notice_id, blob)?;
        let hub = home_relay(community);
        let entitled = hub == peer
            || self
                .community(community)?
                .is_some_and(|c| c.members.iter().any(|m| home_relay(m) == peer));
        if !entitled {
            return Err(ErrorCode::NotFound {
                what: format!("attachment {} of notice {notice_id}", blob.id),
            }
            .into());
        }
        let d = kring_policy::decide_opt(Some(&label), self.relay_accreditation(peer).as_ref());
        if !d.allowed {
            return Err(ErrorCode::PolicyDenied {
                reason: format!("relay {peer} is not accredited for {label}: {d}"),
            }
            .into());
        }
        if hub != self.id && self.blobs.sealed_size(&blob.id).is_none() {
            return Err(ErrorCode::NotFound {
                what: format!("attachment {} at relay {}", blob.id, self.id),
            }
            .into());
        }
        self.serve_blob(&rec, notice_id, blob, offset).await
    }

    /// Bytes of a blob from `offset`, fetched through from the notice's source
    /// first when it is not held here.
    async fn serve_blob(
        &self,
        rec: &NoticeBlobs,
        notice_id: &Uuid,
        blob: BlobRef,
        offset: u64,
    ) -> Result<Response, RelayError> {
        if self.blobs.sealed_size(&blob.id).is_none() {
            let Some(source) = &rec.source else {
                return Err(ErrorCode::NotFound {
                    what: format!("attachment {} at relay {}", blob.id, self.id),
                }
                .into());
            };
            let fetch = self.fetch_through(source, &rec.community, notice_id, blob);
            match tokio::time::timeout(FETCH_THROUGH_WAIT, fetch).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(ErrorCode::Unavailable {
                        reason: format!(
                            "the attachment is on its way from relay {source} ({} of {} bytes here); ask again",
                            self.blobs.fetched_size(&blob.id),
                            blob.size
                        ),
                    }
                    .into());
                }
            }
        }
        let (size, data) = self.blobs.read(&blob.id, offset)?;
        Ok(Response::BlobChunk { size, offset, data })
    }

    /// Fetches a blob from `source`, from what is held of it already, checks it
    /// against its name and keeps it. Cancelled (by the caller's wait), it resumes
    /// next time from the bytes that arrived. A source that sends bytes out of place
    /// or not matching the name is audited, and what it sent discarded.
    async fn fetch_through(
        &self,
        source: &str,
        community: &str,
        notice_id: &Uuid,
        blob: BlobRef,
    ) -> Result<(), RelayError> {
        let _guard = self.blobs.lock(&blob.id).await;
        let unavailable = |why: String| {
            RelayError::Refused(ErrorCode::Unavailable {
                reason: format!("the attachment could not be fetched from relay {source}: {why}"),
            })
        };
        loop {
            if self.blobs.sealed_size(&blob.id).is_some() {
                return Ok(());
            }
            if !self.blobs.may_fetch(&blob.id) {
                return Err(unavailable("too many transfers in progress here".into()));
            }
            let offset = self.blobs.fetched_size(&blob.id);
            let answer = crate::federation::fetch_blob(
                self,
                source,
                kring_protocol::wire::FedRequest::FetchBlob {
                    community: community.to_string(),
                    notice_id: *notice_id,
                    blob: blob.id,
                    offset,
                },
            )
            .await?;
            let bad = match answer {
                Response::BlobChunk {
                    size,
                    offset: at,
                    data,
                } if size == blob.size && at == offset && (!data.is_empty() || offset == size) => {
                    // With `offset == size` (an earlier fetch stopped before its
                    // check) the empty answer seals what is held.
                    match self.blobs.append_fetched(&blob, offset, &data).await {
                        Ok(_) => continue,
                        Err(FetchError::Local(e)) => return Err(e),
                        Err(FetchError::Source(why)) => why,
                    }
                }
                _ => "an answer that is not the blob's next bytes".to_string(),
            };
            self.audit_now(AuditEvent::new(
                AuditKind::Refusal,
                source,
                format!("{community} notice {notice_id} blob {}", blob.id),
                "fetch-blob",
                format!("relay {source} sent {bad}; discarded"),
            ));
            return Err(unavailable(bad));
        }
    }
}
