//! Filing notices and reading them back.
//!
//! Policy is checked on this device before anything is sent (SPEC §5, the first
//! hop): the label must be within the user's own clearance and within the
//! community's maximum label. The binary label is the MLS authenticated data.

use std::time::Duration;

use kring_policy::{Label, within};
use kring_protocol::wire::{ErrorCode, HopRefusal, NoticeStatus, Request, Response};
use uuid::Uuid;

use crate::client::{Client, not_member, unexpected};
use crate::community::COMMIT_ATTEMPTS;
use crate::error::{ClientError, Result};
use crate::labels::parse_label;
use crate::notice::{MAX_TITLE, Notice, NoticeDraft, NoticeKind, now_utc};
use crate::ordering::{Ordering, StatusSource, await_ordering};
use crate::store::StoredNotice;

/// Shortest notice id prefix accepted in place of a full id.
pub const MIN_ID_PREFIX: usize = 6;

/// A notice the home relay acknowledged (it is durable there), and what the hub
/// did with it as far as known when filing returned.
#[derive(Debug, Clone, PartialEq)]
pub struct FiledNotice {
    /// The notice as filed (and stored locally).
    pub notice: Notice,
    /// Its sequence number in the community log, once the hub ordered it: `Some`
    /// exactly when `ordering` is [`Ordering::Ordered`].
    pub seq: Option<u64>,
    /// The group epoch it was sent in.
    pub epoch: u64,
    /// The home relay that acknowledged it.
    pub home: String,
    /// The community's hub, which orders it (equal to `home` for a community
    /// hubbed at the home relay).
    pub hub: String,
    /// What the hub did with it.
    pub ordering: Ordering,
    /// Every refusal the relays had reported when filing returned. With
    /// [`Ordering::Ordered`] these are hops after the hub that withhold the notice
    /// (it is delivered everywhere else); with [`Ordering::Refused`] the first is the
    /// refusal it names.
    pub refusals: Vec<HopRefusal>,
}

impl FiledNotice {
    /// Whether the community is hubbed at the home relay (ordering was immediate).
    pub fn hub_is_home(&self) -> bool {
        self.home == self.hub
    }
}

impl Client {
    /// Files a notice: checks the label against the user's clearance and the
    /// community's maximum label (exit 3 with the reason), syncs, encrypts the
    /// notice JSON with the binary label as authenticated data, sends it, and stores
    /// it locally once the home relay has acknowledged it (it is durable there).
    ///
    /// For a community hubbed at the home relay the acknowledgement is the hub's
    /// ordering ([`Ordering::Ordered`]). For a community hubbed at another relay the
    /// home relay queues the notice for the hub; this then waits up to
    /// [`Timeouts::ordering`](crate::conn::Timeouts::ordering) for the hub's
    /// ordering, asking the home relay for the notice's status, and returns
    /// [`Ordering::Ordered`], [`Ordering::Refused`] (a hop refused it) or
    /// [`Ordering::Queued`] (not ordered yet; it stays queued). A refusal is an `Ok`
    /// outcome here: the notice was filed; the caller decides how to report it.
    pub async fn file_notice(&mut self, draft: NoticeDraft) -> Result<FiledNotice> {
        self.reset_transaction()?;
        let community = self.resolve_community(&draft.community)?;
        let label = parse_label(&draft.label)?;
        let decision = self.check_clearance(&label);
        if !decision.allowed {
            return Err(ClientError::PolicyDenied(format!(
                "label {label} is not within your clearance: {}",
                decision.reason()
            )));
        }
        self.sync().await?;
        let record = self
            .store
            .community(&community)?
            .filter(|r| r.active)
            .ok_or_else(|| not_member(&community))?;
        let max: Label = record.max_label.parse().map_err(|e| {
            ClientError::Protocol(format!("stored maximum label of {community}: {e}"))
        })?;
        let decision = within(&label, &max);
        if !decision.allowed {
            return Err(ClientError::PolicyDenied(format!(
                "label {label} is above the maximum label {max} of {community}: {}",
                decision.reason()
            )));
        }
        let notice = Notice {
            id: Uuid::new_v4(),
            community: community.clone(),
            label: label.to_string(),
            kind: draft.kind,
            category: draft.category,
            title: draft.title,
            body: draft.body,
            sender: self.user(),
            filed_at: now_utc(),
            in_reply_to: draft.in_reply_to,
            stix: draft.stix,
        };
        notice
            .validate()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let plaintext = notice
            .to_plaintext()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let aad = label.to_bytes();

        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut group = self.load_group(&community)?;
            if group.has_pending_commit() {
                // Left over from an interrupted commit, not accepted since (we synced).
                group.commit_refused(&self.provider)?;
            }
            if group.has_pending_proposals() {
                self.commit_pending_proposals(&community, &mut |_| {})
                    .await?;
                group = self.load_group(&community)?;
            }
            let epoch = group.epoch();
            let message = group.encrypt(&self.provider, &self.signer, &aad, &plaintext)?;
            self.store.flush()?;
            let request = Request::FileNotice {
                community: community.clone(),
                notice_id: notice.id,
                message,
            };
            match self.call(&request).await {
                Ok(Response::Accepted { seq, epoch }) => {
                    self.store.insert_notice(&StoredNotice {
                        notice: notice.clone(),
                        seq: Some(seq),
                        own: true,
                    })?;
                    tracing::info!(%community, seq, notice_id = %notice.id, "notice filed");
                    return Ok(FiledNotice {
                        seq: Some(seq),
                        epoch,
                        home: self.profile.relay_id.clone(),
                        hub: crate::ids::hub_of(&notice.community).to_string(),
                        notice,
                        ordering: Ordering::Ordered { seq },
                        refusals: Vec::new(),
                    });
                }
                Ok(Response::Queued { notice_id, hub }) => {
                    return self.queued(notice, epoch, notice_id, hub).await;
                }
                Ok(other) => return Err(unexpected("FileNotice", &other)),
                Err(ClientError::Relay(ErrorCode::WrongEpoch { .. }))
                    if attempt < COMMIT_ATTEMPTS =>
                {
                    self.sync().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The home relay queued `notice` for the community's hub: stores it (its
    /// sequence number unknown yet; the ordered entry, when it comes back, fills it
    /// in instead of storing a second copy) and waits for the hub's ordering.
    async fn queued(
        &mut self,
        notice: Notice,
        epoch: u64,
        notice_id: Uuid,
        hub: String,
    ) -> Result<FiledNotice> {
        let expected_hub = crate::ids::hub_of(&notice.community);
        if notice_id != notice.id || hub != expected_hub {
            return Err(ClientError::Protocol(format!(
                "the relay queued notice {notice_id} for hub {hub}, but this device filed \
                 notice {} in {} (hub {expected_hub})",
                notice.id, notice.community
            )));
        }
        self.store.insert_notice(&StoredNotice {
            notice: notice.clone(),
            seq: None,
            own: true,
        })?;
        let home = self.profile.relay_id.clone();
        tracing::info!(community = %notice.community, notice_id = %notice.id, %home, %hub,
            "notice queued for the hub");
        let (wait, limit) = (self.timeouts.ordering, self.timeouts.request);
        let waited = await_ordering(self, notice.id, wait, limit).await;
        if let Some(e) = waited.failure {
            self.warn(format!(
                "notice {} is queued at {home}, but whether hub {hub} ordered it could not \
                 be learned: {e}",
                notice.id
            ));
        }
        let (ordering, refusals) = (waited.ordering, waited.refusals);
        if let Ordering::Ordered { seq } = ordering {
            self.store.set_notice_seq(notice.id, seq)?;
            tracing::info!(community = %notice.community, seq, notice_id = %notice.id,
                "notice ordered by the hub");
        }
        Ok(FiledNotice {
            seq: ordering.seq(),
            notice,
            epoch,
            home,
            hub,
            ordering,
            refusals,
        })
    }

    /// Files a reply to a stored notice: same community and category, kind `reply`,
    /// title `Re: <original title>` unless given.
    pub async fn reply(
        &mut self,
        to: &str,
        label: &str,
        body: String,
        title: Option<String>,
    ) -> Result<FiledNotice> {
        let original = self.find_notice(to)?.notice;
        let title = title.unwrap_or_else(|| reply_title(&original.title));
        self.file_notice(NoticeDraft {
            community: original.community.clone(),
            label: label.to_string(),
            kind: NoticeKind::Reply,
            category: original.category,
            title,
            body,
            in_reply_to: Some(original.id),
            stix: None,
        })
        .await
    }

    /// Stored notices of a community (or of all), in log order.
    pub fn notices(&self, community: Option<&str>) -> Result<Vec<Notice>> {
        Ok(self
            .stored_notices(community)?
            .into_iter()
            .map(|s| s.notice)
            .collect())
    }

    /// Stored notices with their local metadata (sequence number, own or not).
    pub fn stored_notices(&self, community: Option<&str>) -> Result<Vec<StoredNotice>> {
        let community = community.map(|c| self.resolve_community(c)).transpose()?;
        Ok(self.store.notices(community.as_deref())?)
    }

    /// Finds a stored notice by its full id or a unique prefix of at least
    /// [`MIN_ID_PREFIX`] hex digits.
    pub fn find_notice(&self, id: &str) -> Result<StoredNotice> {
        let id = id.trim();
        if let Ok(uuid) = Uuid::parse_str(id) {
            return self
                .store
                .notice(uuid)?
                .ok_or_else(|| ClientError::NotFound(format!("no notice {uuid} on this device")));
        }
        let digits = id.chars().filter(|c| *c != '-').count();
        if digits < MIN_ID_PREFIX || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(ClientError::Usage(format!(
                "{id:?} is not a notice id (a UUID, or at least {MIN_ID_PREFIX} of its first hex digits)"
            )));
        }
        let mut found = self.store.notices_by_prefix(id, 2)?;
        match found.len() {
            0 => Err(ClientError::NotFound(format!(
                "no notice starting with {id} on this device"
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(ClientError::Usage(format!(
                "{id} matches more than one notice; give more of the id"
            ))),
        }
    }

    /// What the relays did with a notice this user filed (ordering, refusals). A
    /// sequence number this device did not know yet is recorded with the stored
    /// notice.
    pub async fn notice_status(&mut self, id: Uuid) -> Result<NoticeStatus> {
        let status = match self.call(&Request::NoticeStatus { notice_id: id }).await? {
            Response::Status(status) if status.notice_id == id => status,
            Response::Status(status) => {
                return Err(ClientError::Protocol(format!(
                    "asked for the status of notice {id}, the relay answered for {}",
                    status.notice_id
                )));
            }
            other => return Err(unexpected("NoticeStatus", &other)),
        };
        if let Some(seq) = status.seq {
            let learned = self.store.notice(id)?.is_some_and(|stored| {
                stored.own && stored.seq.is_none() && stored.notice.community == status.community
            });
            if learned {
                self.store.set_notice_seq(id, seq)?;
            }
        }
        Ok(status)
    }
}

impl StatusSource for Client {
    async fn status(&mut self, id: Uuid, limit: Duration) -> Result<NoticeStatus> {
        match self
            .call_within(&Request::NoticeStatus { notice_id: id }, limit)
            .await?
        {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("NoticeStatus", &other)),
        }
    }
}

/// `Re: <title>` (once), cut to [`MAX_TITLE`] bytes at a character boundary.
pub fn reply_title(original: &str) -> String {
    let mut title = if original.starts_with("Re: ") {
        original.to_string()
    } else {
        format!("Re: {original}")
    };
    if title.len() > MAX_TITLE {
        let mut cut = MAX_TITLE;
        while !title.is_char_boundary(cut) {
            cut -= 1;
        }
        title.truncate(cut);
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_titles_are_prefixed_once_and_bounded() {
        assert_eq!(reply_title("Nepnieuws"), "Re: Nepnieuws");
        assert_eq!(reply_title("Re: Nepnieuws"), "Re: Nepnieuws");
        let long = "é".repeat(200);
        let t = reply_title(&long);
        assert!(t.len() <= MAX_TITLE);
        assert!(t.starts_with("Re: é"));
    }
}
