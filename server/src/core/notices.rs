//! Notices: filing at the home relay, queueing toward the hub, ordering at the hub,
//! fan-out to member relays, forwarding checks and refusals along the path.

use super::*;

impl Core {
    /// The fan-out (`fan_out`) of a new entry to the relays with members.
    pub fn fan_out_entry(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        rec: &CommunityRecord,
        entry: &LogEntry,
    ) -> Result<(), RelayError> {
        self.fan_out(w, b, rec, entry, &[])
    }

    /// At the hub: queues a new log entry for every other relay with members in the
    /// community (and `extra` relays, e.g. of members just removed), withholding a
    /// notice from a relay whose accreditation does not admit its label.
    pub(crate) fn fan_out(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        rec: &CommunityRecord,
        entry: &LogEntry,
        extra: &[String],
    ) -> Result<(), RelayError> {
        let mut targets: std::collections::BTreeSet<&str> =
            rec.members.iter().map(|m| home_relay(m)).collect();
        targets.extend(extra.iter().map(|s| s.as_str()));
        targets.remove(self.id.as_str());
        for peer in targets {
            let mut withheld = None;
            if let EntryKind::Notice {
                notice_id, label, ..
            } = &entry.kind
            {
                let label = kring_protocol::notice_aad::label_of(label).map_err(|e| {
                    RelayError::Corrupt {
                        key: format!("log entry {} of {}", entry.seq, entry.community),
                        reason: e.to_string(),
                    }
                })?;
                let d = match self.relay_accreditation(peer) {
                    Some(accr) => kring_policy::decide(&label, &accr),
                    None => kring_policy::decide_opt(Some(&label), None),
                };
                if !d.allowed {
                    let reason = format!("relay {peer} is not accredited for {label}: {d}");
                    withheld = Some(());
                    self.record_refusal_for(
                        w,
                        b,
                        notice_id,
                        &rec.id,
                        &entry.sender,
                        &format!("{}->{peer}", self.id),
                        &reason,
                    )?;
                }
            }
            if withheld.is_some() {
                let body = FedBody::NoticeEntry {
                    community: rec.id.clone(),
                    seq: entry.seq,
                    entry: None,
                };
                crate::core::outbox::enqueue(self, w, b, peer, body)?;
            } else {
                crate::core::outbox::enqueue_log_entry(self, w, b, peer, rec, entry)?;
            }
            // Member relays hold no group context: the hub tells them the
            // retention period with every commit (after it, so they hold the
            // community by then).
            if matches!(entry.kind, EntryKind::Handshake { .. })
                && let Some(seconds) = crate::core::retention::retention_of(self, b, &rec.id)?
            {
                let body = FedBody::Retention {
                    community: rec.id.clone(),
                    seconds,
                };
                crate::core::outbox::enqueue(self, w, b, peer, body)?;
            }
        }
        Ok(())
    }

    /// Records that `hop` refused a notice: in the notice's record here, in the audit
    /// log, and towards the filer's home relay if that is another relay. Keeps one
    /// refusal per hop and at most [`MAX_HOP_REFUSALS`] per notice, each reason cut
    /// to [`limits::MAX_REASON`](kring_protocol::wire::limits::MAX_REASON) bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn record_refusal_for(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        notice_id: &Uuid,
        community: &str,
        sender: &str,
        hop: &str,
        reason: &str,
    ) -> Result<(), RelayError> {
        let key = keys::notice(notice_id);
        let mut rec = b
            .get_obj::<NoticeRecord>(self.engine.as_ref(), &key)?
            .unwrap_or(NoticeRecord {
                community: community.to_string(),
                sender: sender.to_string(),
                seq: None,
                refusals: Vec::new(),
            });
        // One refusal per hop, a bounded number per notice, each reason bounded.
        if rec.refusals.iter().any(|r| r.hop == hop) || rec.refusals.len() >= MAX_HOP_REFUSALS {
            return Ok(());
        }
        let reason = kring_protocol::wire::bounded_reason(reason);
        let reason = reason.as_str();
        rec.refusals.push(kring_protocol::wire::HopRefusal {
            hop: hop.to_string(),
            reason: reason.to_string(),
        });
        b.put_obj(key, &rec)?;
        w.audit.append(
            b,
            w.now,
            AuditEvent::new(
                AuditKind::Refusal,
                hop,
                format!("{} notice {notice_id}", rec.community),
                "notice-hop",
                reason,
            ),
        )?;
        let home = home_relay(&rec.sender);
        if !rec.sender.is_empty() && home != self.id {
            crate::core::outbox::enqueue(
                self,
                w,
                b,
                home,
                FedBody::Refusal {
                    notice_id: *notice_id,
                    hop: hop.to_string(),
                    reason: reason.to_string(),
                },
            )?;
        }
        Ok(())
    }

    /// One notice ([`Request::FileNotice`](kring_protocol::wire::Request::FileNotice)): a filing of one.
    pub fn file_notice(
        &self,
        cx: &mut Cx,
        caller: &Caller,
        community: &str,
        notice_id: Uuid,
        message: Vec<u8>,
    ) -> Result<Response, RelayError> {
        let upload = NoticeUpload { notice_id, message };
        match self.file_notices(cx, caller, community, vec![upload])? {
            Response::Filed { hub, epoch, seqs } => Ok(match seqs.first() {
                Some(Some(seq)) => Response::Accepted { seq: *seq, epoch },
                _ => Response::Queued { notice_id, hub },
            }),
            other => Ok(other),
        }
    }

    /// Files notices of one community, in order, all or none: at the hub they are
    /// ordered; at a spoke each is stored with an outbox item for the hub. One
    /// atomic batch and one fsync for all of them.
    pub fn file_notices(
        &self,
        cx: &mut Cx,
        caller: &Caller,
        community: &str,
        notices: Vec<NoticeUpload>,
    ) -> Result<Response, RelayError> {
        let mut apps = Vec::with_capacity(notices.len());
        for n in &notices {
            let app = groups::read_application(&n.message).map_err(|reason| {
                name_notice(
                    ErrorCode::BadRequest {
                        reason: format!("not an MLS application message: {reason}"),
                    },
                    n.notice_id,
                    notices.len(),
                )
            })?;
            apps.push(app);
        }
        let mut ids = std::collections::HashSet::with_capacity(notices.len());
        if let Some(dup) = notices.iter().find(|n| !ids.insert(n.notice_id)) {
            return Err(ErrorCode::BadRequest {
                reason: format!("notice {} appears twice in one filing", dup.notice_id),
            }
            .into());
        }
        let count = notices.len();
        let (hub, epoch, seqs) = self.write(cx, |w, b| {
            let mut rec = self.member_community(caller, community)?;
            for app in &apps {
                decide::fresh_filing(app.epoch, rec.epoch)?;
            }
            let mut seqs = Vec::with_capacity(count);
            for (n, app) in notices.into_iter().zip(apps) {
                let id = n.notice_id;
                let seq = if rec.hub == self.id {
                    let clearance = caller.identity.clearance.as_ref();
                    self.order_notice(
                        w, b, &mut rec, &caller.id, clearance, None, id, app, n.message,
                    )
                    .map(Some)
                } else {
                    self.queue_notice(w, b, caller, &rec, id, &app, n.message)
                };
                seqs.push(seq.map_err(|e| match e {
                    RelayError::Refused(code) => name_notice(code, id, count).into(),
                    other => other,
                })?);
            }
            Ok((rec.hub, rec.epoch, seqs))
        })?;
        Ok(Response::Filed { hub, epoch, seqs })
    }

    /// A spoke: checks a notice and stores it with an outbox item for the hub
    /// (`Some(seq)` for a retried filing the hub has ordered already).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn queue_notice(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        caller: &Caller,
        rec: &CommunityRecord,
        notice_id: Uuid,
        app: &groups::AppInfo,
        message: Vec<u8>,
    ) -> Result<Option<u64>, RelayError> {
        let community = rec.id.as_str();
        if let Some(prev) =
            b.get_obj::<NoticeRecord>(self.engine.as_ref(), &keys::notice(&notice_id))?
        {
            return if prev.sender == caller.id && prev.community == community {
                Ok(prev.seq)
            } else {
                Err(ErrorCode::BadRequest {
                    reason: format!("notice {notice_id} was already filed"),
                }
                .into())
            };
        }
        let aad = check_notice_label(
            app,
            community,
            rec,
            caller.identity.clearance.as_ref(),
            &self.accreditation(),
        )?;
        if let Some(original) = &aad.original {
            // The hub checks a forward's rules again; checked here first, so that
            // a refused forward never holds files here for its target community.
            self.check_forward(b, rec, &caller.id, None, &aad.label, original)?;
        }
        self.check_blobs_held(&aad)?;
        put_notice_blobs(self, b, &notice_id, community, &app.aad, None)?;
        let label = aad.label;
        let hub_accr = self.relay_accreditation(&rec.hub);
        let d = kring_policy::decide_opt(Some(&label), hub_accr.as_ref());
        if !d.allowed {
            return Err(ErrorCode::PolicyDenied {
                reason: format!("hub relay {} is not accredited for {label}: {d}", rec.hub),
            }
            .into());
        }
        b.put_obj(
            keys::notice(&notice_id),
            &NoticeRecord {
                community: community.to_string(),
                sender: caller.id.clone(),
                seq: None,
                refusals: Vec::new(),
            },
        )?;
        if aad.original.is_some() {
            // The hub applies the TLP:AMBER rule to a forward with what this relay
            // says its organisation's clients are: said just before the notice.
            crate::core::outbox::enqueue(
                self,
                w,
                b,
                &rec.hub,
                FedBody::DeclaredClients {
                    clients: self.clients(),
                },
            )?;
        }
        crate::core::outbox::enqueue(
            self,
            w,
            b,
            &rec.hub,
            FedBody::Notice {
                community: community.to_string(),
                notice_id,
                sender: caller.id.clone(),
                message,
            },
        )?;
        Ok(None)
    }

    /// The community record of a community hubbed here, if `sender` is a member.
    pub fn hub_community(
        &self,
        b: &Batch,
        community: &str,
        sender: &str,
    ) -> Result<CommunityRecord, RelayError> {
        match self.community_in(b, community)? {
            Some(rec) if rec.hub == self.id && rec.members.iter().any(|m| m == sender) => Ok(rec),
            _ => Err(ErrorCode::NotMember.into()),
        }
    }

    /// Checks and orders a notice at the hub inside the writer's critical section,
    /// updating `rec` (written to the batch). `origin` is the peer that forwarded it
    /// (the filer's home relay); a forwarded notice is checked against that relay's
    /// accreditation instead of the filer's clearance (which the home relay checked).
    #[allow(clippy::too_many_arguments)]
    pub fn order_notice(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        rec: &mut CommunityRecord,
        sender: &str,
        sender_clearance: Option<&Clearance>,
        origin: Option<&str>,
        notice_id: Uuid,
        app: groups::AppInfo,
        message: Vec<u8>,
    ) -> Result<u64, RelayError> {
        if rec.hub != self.id || !rec.members.iter().any(|m| m == sender) {
            return Err(ErrorCode::NotMember.into());
        }
        let community = rec.id.clone();
        let community = community.as_str();
        if self.revocations().user_revoked(sender).is_some() {
            return Err(ErrorCode::Revoked.into());
        }
        if let Some(prev) =
            b.get_obj::<NoticeRecord>(self.engine.as_ref(), &keys::notice(&notice_id))?
        {
            // A retried filing gets the same answer; anything else is a replay.
            return match prev.seq {
                Some(seq) if prev.sender == sender && prev.community == community => Ok(seq),
                _ => Err(ErrorCode::BadRequest {
                    reason: format!("notice {notice_id} was already filed"),
                }
                .into()),
            };
        }
        let aad = match origin {
            None => check_notice_label(
                &app,
                community,
                rec,
                sender_clearance,
                &self.accreditation(),
            )?,
            Some(peer) => {
                let peer_accr = self.relay_accreditation(peer);
                check_notice_label(
                    &app,
                    community,
                    rec,
                    peer_accr.as_ref(),
                    &self.accreditation(),
                )?
            }
        };
        if let Some(original) = &aad.original {
            self.check_forward(b, &*rec, sender, origin, &aad.label, original)?;
        }
        if origin.is_none() {
            self.check_blobs_held(&aad)?;
        }
        self.recovery.may_order(
            self.engine(),
            b,
            &self.id,
            community,
            &rec.members,
            next_seq(rec)?,
        )?;
        let seq = next_seq(rec)?;
        let entry = LogEntry {
            community: community.to_string(),
            seq,
            sender: sender.to_string(),
            ordered_at: w.now,
            kind: EntryKind::Notice {
                notice_id,
                label: app.aad.clone(),
                epoch: app.epoch,
            },
            message,
        };
        put_notice_blobs(self, b, &notice_id, community, &app.aad, origin)?;
        b.put_obj(keys::log(community, seq), &entry)?;
        b.put_obj(
            keys::notice(&notice_id),
            &NoticeRecord {
                community: community.to_string(),
                sender: sender.to_string(),
                seq: Some(seq),
                refusals: Vec::new(),
            },
        )?;
        rec.last_seq = seq;
        put_last_seq(b, community, seq)?;
        self.fan_out(w, b, rec, &entry, &[])?;
        w.counts.notices_ordered += 1;
        Ok(seq)
    }

    /// The hub's check of a forwarded notice (`decide::forward`): the members'
    /// organisations as this relay's trust map has their home relays', the
    /// forwarder's organisation likewise, and the clients its organisation declares:
    /// this relay's own `clients` for a forwarder homed here, otherwise what the
    /// forwarder's home relay declared last (`FedBody::DeclaredClients`, sent just
    /// before the forward; nothing declared is no clients).
    pub(crate) fn check_forward(
        &self,
        b: &Batch,
        rec: &CommunityRecord,
        sender: &str,
        origin: Option<&str>,
        label: &Label,
        original: &Label,
    ) -> Result<(), RelayError> {
        let trust = self.trust();
        let org_of = |relay: &str| trust.organisation_of(relay).map(str::to_owned);
        let forwarder_org = org_of(home_relay(sender));
        let member_orgs: std::collections::BTreeSet<String> = rec
            .members
            .iter()
            .map(|m| {
                let relay = home_relay(m);
                org_of(relay)
                    .unwrap_or_else(|| format!("(the unknown organisation of relay {relay})"))
            })
            .collect();
        let clients: std::collections::BTreeSet<String> = match origin {
            None => self.clients().into_iter().collect(),
            Some(peer) => b
                .get_obj::<Vec<String>>(
                    self.engine(),
                    &crate::keyspace::federation::declared_clients(peer),
                )?
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        decide::forward(
            label,
            original,
            &rec.id,
            forwarder_org.as_deref(),
            &member_orgs,
            &clients,
        )?;
        Ok(())
    }
}

/// A refusal of one notice of a filing of `count`, naming the notice when there
/// are several (the whole filing is refused).
pub(crate) fn name_notice(code: ErrorCode, notice_id: Uuid, count: usize) -> ErrorCode {
    if count < 2 {
        return code;
    }
    match code {
        ErrorCode::BadRequest { reason } => ErrorCode::BadRequest {
            reason: format!("notice {notice_id}: {reason}"),
        },
        ErrorCode::PolicyDenied { reason } => ErrorCode::PolicyDenied {
            reason: format!("notice {notice_id}: {reason}"),
        },
        other => other,
    }
}

/// The label of an application message (and, for a forward, the original's:
/// [`kring_protocol::notice_aad`]), checked against the community (right group,
/// within the maximum, epoch window), a clearance and this relay's accreditation.
pub(crate) fn check_notice_label(
    app: &groups::AppInfo,
    community: &str,
    rec: &CommunityRecord,
    clearance: Option<&Clearance>,
    accreditation: &Clearance,
) -> Result<NoticeAad, RelayError> {
    if app.group_id != community.as_bytes() {
        return Err(ErrorCode::BadRequest {
            reason: "the message belongs to another group".into(),
        }
        .into());
    }
    let aad = NoticeAad::from_bytes(&app.aad).map_err(|e| ErrorCode::BadRequest {
        reason: format!("the notice carries no valid label: {e}"),
    })?;
    let max = Label::from_bytes(&rec.max_label).map_err(|e| corrupt_label(&rec.id, e))?;
    decide::file_notice(
        &aad.label,
        &max,
        clearance,
        accreditation,
        app.epoch,
        rec.epoch,
    )?;
    Ok(aad)
}
