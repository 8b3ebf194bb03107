//! Reads and acknowledgements: delivery cursors, the caller's communities, the
//! audit log for org-admins and where a notice stands.

use super::*;
use crate::store::decode;

impl Core {
    /// [`Request::Ack`](kring_protocol::wire::Request::Ack): moves a device's cursor
    /// forward (never back); answered without waiting for the flush.
    pub fn ack(
        &self,
        cx: &mut Cx,
        caller: &Caller,
        community: &str,
        seq: u64,
    ) -> Result<Response, RelayError> {
        self.ack_many(cx, caller, &[(community, seq)])
    }

    /// [`Request::AckMany`](kring_protocol::wire::Request::AckMany): [`Core::ack`]
    /// for several communities in one write, all or none.
    pub fn ack_many(
        &self,
        cx: &mut Cx,
        caller: &Caller,
        marks: &[(&str, u64)],
    ) -> Result<Response, RelayError> {
        self.write(cx, |_, b| {
            for &(community, seq) in marks {
                self.move_cursor(b, caller, community, seq)?;
            }
            Ok(())
        })?;
        // No fsync wait and no wake-up of the delivery tasks: a cursor lost in a crash
        // only makes the device receive entries again, which it skips (its own
        // cursor is durable before it acknowledges), and a moved cursor gives no
        // other device anything new. The next group commit flushes it.
        cx.answer_before_durable = true;
        Ok(Response::Ok)
    }

    /// Moves `caller`'s cursor in `community` up to `seq` in `b` (a member, or a
    /// former member up to where it left; never past the end of the log).
    fn move_cursor(
        &self,
        b: &mut Batch,
        caller: &Caller,
        community: &str,
        seq: u64,
    ) -> Result<(), RelayError> {
        let key = keys::member(&caller.id, community);
        let Some(m) = b.get_obj::<MemberRecord>(self.engine.as_ref(), &key)? else {
            return Err(ErrorCode::NotMember.into());
        };
        let rec = self.community(community)?.ok_or(ErrorCode::NotMember)?;
        let limit = m.removed_seq.unwrap_or(rec.last_seq);
        if seq > limit {
            return Err(ErrorCode::BadRequest {
                reason: format!("cannot acknowledge {seq} in {community}: the log ends at {limit}"),
            }
            .into());
        }
        // Read through the batch: the same community may come twice in one request.
        let stored = b.get(self.engine.as_ref(), &keys::cursor(&caller.id, community))?;
        let current = cursor_value(stored, &caller.id, community, &m)?;
        if seq > current {
            b.put(
                keys::cursor(&caller.id, community),
                seq.to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }

    /// A device's delivery cursor: everything up to it was acknowledged.
    pub fn cursor_of(
        &self,
        device: &str,
        community: &str,
        m: &MemberRecord,
    ) -> Result<u64, RelayError> {
        let stored = self.engine.get(&keys::cursor(device, community))?;
        cursor_value(stored, device, community, m)
    }

    pub(crate) fn list_communities(&self, caller: &Caller) -> Result<Response, RelayError> {
        let mut out = Vec::new();
        // Every membership record, not only the first page: ended ones must not
        // hide current ones.
        for (community, m) in memberships(self, &caller.id)? {
            if m.removed_seq.is_some() {
                continue;
            }
            if out.len() == kring_protocol::wire::limits::MAX_LIST {
                break;
            }
            if let Some(rec) = self.community(&community)? {
                out.push(summary(&rec));
            }
        }
        Ok(Response::Communities { communities: out })
    }

    /// Only org-admins of this relay's organisation read its audit log.
    pub(crate) fn audit_reader(&self, caller: &Caller) -> Result<(), RelayError> {
        if !caller
            .identity
            .has_role(kring_protocol::identity::ROLE_ORG_ADMIN)
            || caller.identity.organisation != self.organisation
        {
            return Err(ErrorCode::Unauthenticated {
                reason: format!(
                    "the audit log of relay {} is for org-admins of organisation {}",
                    self.id, self.organisation
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Whose certificates may sign this relay's audit log.
    pub(crate) fn audit_expected(&self) -> crate::audit::Expected<'_> {
        crate::audit::Expected {
            relay: &self.id,
            organisation: Some(&self.organisation),
            anchors: &self.anchors,
        }
    }

    /// A signed head of the audit log, durable before it is handed out, with the
    /// certificate history.
    pub fn audit_head(&self, cx: &mut Cx, caller: &Caller) -> Result<Response, RelayError> {
        self.audit_reader(caller)?;
        let head = self
            .write(cx, |w, _| Ok(w.audit.signed_head(w.now)))?
            .ok_or(RelayError::OwnIdentity {
                what: "audit checkpoint signer",
                reason: "none is configured".into(),
            })?;
        let certificates = crate::audit::cert_history(self.engine.as_ref())?;
        Ok(Response::AuditHead(kring_protocol::audit::AuditHeadPage {
            head,
            certificates,
        }))
    }

    pub(crate) fn audit_log(
        &self,
        caller: &Caller,
        from: u64,
        limit: u32,
        verify: bool,
    ) -> Result<Response, RelayError> {
        self.audit_reader(caller)?;
        let limit = limit.min(kring_protocol::wire::limits::MAX_PAGE) as usize;
        let records = crate::audit::read(self.engine.as_ref(), from.max(1), limit)?
            .into_iter()
            .map(|r| kring_protocol::wire::AuditRecordView {
                seq: r.seq,
                at: r.at,
                kind: r.event.kind.to_string(),
                actor: r.event.actor,
                subject: r.event.subject,
                action: r.event.action,
                detail: r.event.detail,
                hash: hex::encode(r.hash),
            })
            .collect();
        let total = crate::audit::AuditHead::load(self.engine.as_ref())?.seq();
        let verify = if verify {
            Some(
                match crate::audit::verify_signed(self.engine.as_ref(), &self.audit_expected())? {
                    Ok(s) => kring_protocol::wire::AuditVerdict {
                        records: s.records,
                        first_bad: None,
                        reason: None,
                        checkpoints: s.checkpoints,
                        unsigned_tail: s.unsigned_tail,
                    },
                    Err(b) => kring_protocol::wire::AuditVerdict {
                        records: b.seq.saturating_sub(1),
                        first_bad: Some(b.seq),
                        reason: Some(b.reason),
                        checkpoints: 0,
                        unsigned_tail: 0,
                    },
                },
            )
        } else {
            None
        };
        Ok(Response::AuditLog(kring_protocol::wire::AuditPage {
            relay: self.id.clone(),
            total,
            records,
            verify,
        }))
    }

    pub(crate) fn notice_status(
        &self,
        caller: &Caller,
        notice_id: Uuid,
    ) -> Result<Response, RelayError> {
        let not_found = || ErrorCode::NotFound {
            what: format!("notice {notice_id}"),
        };
        let rec: NoticeRecord =
            get_obj(self.engine.as_ref(), &keys::notice(&notice_id))?.ok_or_else(not_found)?;
        let visible = rec.sender == caller.id
            || self
                .community(&rec.community)?
                .is_some_and(|c| c.members.contains(&caller.id));
        if !visible {
            return Err(not_found().into());
        }
        Ok(Response::Status(NoticeStatus {
            notice_id,
            community: rec.community,
            seq: rec.seq,
            refusals: rec.refusals,
        }))
    }
}

/// Membership records read from the store at once.
const MEMBER_PAGE: usize = 1024;

/// Every membership record of `user` (active or ended), by community: all of them,
/// read a page at a time. How many a peer hub may create is capped
/// ([`crate::core::apply::MAX_PEER_COMMUNITIES_PER_USER`]), so none can hide others.
pub fn memberships(core: &Core, user: &str) -> Result<Vec<(String, MemberRecord)>, RelayError> {
    let engine = core.engine();
    let prefix = keys::member_prefix(user);
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan(&prefix, after.as_deref(), MEMBER_PAGE)?;
        let last_page = page.len() < MEMBER_PAGE;
        for (k, v) in page {
            let m: MemberRecord = decode(&k, &v)?;
            out.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), m));
            after = Some(k);
        }
        if last_page {
            return Ok(out);
        }
    }
}

/// A device's cursor from its stored bytes (none: nothing acknowledged), never
/// before the entry that added it.
fn cursor_value(
    stored: Option<Vec<u8>>,
    device: &str,
    community: &str,
    m: &MemberRecord,
) -> Result<u64, RelayError> {
    let stored = match stored {
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| RelayError::Corrupt {
                key: format!("cursor {device} {community}"),
                reason: "not 8 bytes".into(),
            })?,
        None => 0,
    };
    Ok(stored.max(m.joined_seq))
}
