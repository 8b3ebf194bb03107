//! Attachments across the federation: a blob handed to a peer entitled to its
//! notice's label, and fetched through from the relay that holds it when it is not
//! here yet.

use kring_protocol::attachment::{BlobId, BlobRef};
use uuid::Uuid;

use super::*;
use crate::blobs::FetchError;
use crate::core::blobs::NoticeBlobs;

/// How long one request waits for a blob fetched through from another relay. The
/// fetch stops there and resumes with the next request for it (what arrived is
/// kept), so a device asking again sees it progress.
pub const FETCH_THROUGH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Relay {
    /// [`FedRequest::FetchBlob`] from
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
    pub(crate) async fn serve_blob(
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
