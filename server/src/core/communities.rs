//! Communities and commits: creating a community, ordering handshakes at the hub,
//! keeping local membership records in step, and routing Welcomes to devices.

use super::*;

impl Core {
    /// The community record, if this relay takes part in the community.
    pub fn community(&self, id: &str) -> Result<Option<CommunityRecord>, RelayError> {
        self.community_in(&Batch::default(), id)
    }

    /// The community record as it will be once `b` is applied. Its `last_seq` is
    /// the larger of the record's and the `s/` counter's ([`put_last_seq`]).
    pub fn community_in(&self, b: &Batch, id: &str) -> Result<Option<CommunityRecord>, RelayError> {
        let engine = self.engine.as_ref();
        let Some(mut rec) = b.get_obj::<CommunityRecord>(engine, &keys::community(id))? else {
            return Ok(None);
        };
        if let Some(seq) = b.get_obj::<u64>(engine, &keys::last_seq(id))? {
            rec.last_seq = rec.last_seq.max(seq);
        }
        Ok(Some(rec))
    }

    pub(crate) fn member_community(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<CommunityRecord, RelayError> {
        match self.community(id)? {
            Some(rec) if rec.members.contains(&caller.id) => Ok(rec),
            // A non-member learns nothing about whether the community exists.
            _ => Err(ErrorCode::NotMember.into()),
        }
    }

    /// The clearance that limits what a relay may receive: this relay's own, or a
    /// peer's (from its certificate, lowered by configuration); `None` for a relay
    /// that is not a configured peer or whose certificate has not been seen yet.
    pub fn relay_accreditation(&self, relay: &str) -> Option<Clearance> {
        if relay == self.id {
            Some(self.accreditation())
        } else {
            self.peer(relay).and_then(|p| p.accreditation())
        }
    }

    pub fn create_community(
        &self,
        cx: &mut Cx,
        caller: &Caller,
        community: &str,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Response, RelayError> {
        let (name, hub) = community.rsplit_once('@').unwrap_or((community, ""));
        if hub != self.id || name.is_empty() {
            return Err(ErrorCode::BadRequest {
                reason: format!(
                    "a community created at relay {} must be named NAME@{}",
                    self.id, self.id
                ),
            }
            .into());
        }
        self.recovery
            .may_create(self.engine(), &self.id, community)?;
        let seq = self.write(cx, |w, b| {
            if self.community(community)?.is_some() {
                return Err(ErrorCode::BadRequest {
                    reason: format!("community {community} already exists"),
                }
                .into());
            }
            let overlay = groups::Overlay::new(self.engine.clone());
            let view = groups::create(
                &overlay,
                community,
                group_info,
                ratchet_tree,
                &self.anchors,
                &self.trust(),
                w.now as u64,
            )
            .map_err(|e| ErrorCode::BadRequest {
                reason: e.to_string(),
            })?;
            // The group must name this relay as its external sender, and its creator
            // must be the caller, alone and admin.
            if view.hub != self.id {
                return Err(ErrorCode::BadRequest {
                    reason: format!(
                        "the group must have relay {} as its external sender",
                        self.id
                    ),
                }
                .into());
            }
            if view.members != vec![caller.id.clone()] || view.admins != vec![caller.id.clone()] {
                return Err(ErrorCode::BadRequest {
                    reason: "a new community must have its creator as only member and admin".into(),
                }
                .into());
            }
            let max_label =
                Label::from_bytes(&view.max_label).map_err(|e| ErrorCode::BadRequest {
                    reason: format!("maximum label: {e}"),
                })?;
            decide::create_community(
                &max_label,
                caller.identity.clearance.as_ref(),
                &self.accreditation(),
            )?;
            let rec = CommunityRecord {
                id: community.to_string(),
                hub: self.id.clone(),
                max_label: view.max_label.clone(),
                admins: view.admins.clone(),
                members: view.members.clone(),
                epoch: view.epoch,
                last_seq: 0,
                created_by: caller.id.clone(),
                created_at: w.now,
            };
            b.extend(overlay.into_batch());
            put_community(b, &rec)?;
            if let Some(secs) = view.retention_secs {
                crate::core::retention::put_retention(b, community, secs);
            }
            b.put_obj(
                keys::member(&caller.id, community),
                &MemberRecord {
                    joined_seq: 0,
                    removed_seq: None,
                },
            )?;
            w.audit.append(
                b,
                w.now,
                AuditEvent::new(
                    AuditKind::Membership,
                    &caller.id,
                    community,
                    "create-community",
                    match view.retention_secs {
                        Some(secs) => format!(
                            "maximum label {max_label}, notices kept {}",
                            crate::core::retention::describe(secs)
                        ),
                        None => format!("maximum label {max_label}"),
                    },
                ),
            )?;
            Ok(0)
        })?;
        Ok(Response::Accepted { seq, epoch: 0 })
    }

    /// Verifies, decides and orders a handshake at this relay, the community's hub.
    /// `origin` is the peer relay that forwarded it (the sender's home relay), if any.
    pub fn handshake_at_hub(
        &self,
        cx: &mut Cx,
        sender: &str,
        origin: Option<&str>,
        community: &str,
        message: &[u8],
        welcome: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let (seq, epoch) = self.write(cx, |w, b| {
            let mut rec = match self.community(community)? {
                Some(rec) if rec.hub == self.id && rec.members.iter().any(|m| m == sender) => rec,
                _ => return Err(ErrorCode::NotMember.into()),
            };
            if self.revocations().user_revoked(sender).is_some() {
                return Err(ErrorCode::Revoked.into());
            }
            self.recovery.may_order(
                self.engine(),
                b,
                &self.id,
                community,
                &rec.members,
                next_seq(&rec)?,
            )?;
            let overlay = groups::Overlay::new(self.engine.clone());
            let staged = {
                let revoked = self.revocations();
                groups::process_handshake(
                    &overlay,
                    community,
                    message,
                    &self.anchors,
                    &self.trust(),
                    w.now as u64,
                    &revoked,
                )?
            };
            if staged.sender != sender {
                return Err(ErrorCode::Unauthenticated {
                    reason: format!(
                        "the handshake is signed by {} but was sent by {sender}",
                        staged.sender
                    ),
                }
                .into());
            }
            let max_label =
                Label::from_bytes(&rec.max_label).map_err(|e| corrupt_label(&rec.id, e))?;
            let added_clearances: Vec<(String, Option<Clearance>, Option<Clearance>)> = staged
                .added
                .iter()
                .map(|(id, clearance)| {
                    let home = home_relay(id);
                    (
                        id.clone(),
                        clearance.clone(),
                        self.relay_accreditation(home),
                    )
                })
                .collect();
            decide::commit(
                &rec,
                sender,
                &max_label,
                &added_clearances,
                &staged.removed,
                &staged.removed_by_hub,
                staged.new_admins.as_deref(),
            )
            .map_err(RelayError::Refused)?;
            if staged.self_update {
                self.self_updates
                    .lock()
                    .map_err(|_| RelayError::Poisoned("self-update times"))?
                    .check(community, sender, w.now as u64)
                    .map_err(RelayError::Refused)?;
            }
            if !staged.added.is_empty() && welcome.is_none() {
                return Err(ErrorCode::BadRequest {
                    reason: "a commit that adds members must come with their Welcome".into(),
                }
                .into());
            }
            let via = origin
                .map(|o| format!(" (forwarded by relay {o})"))
                .unwrap_or_default();
            let epoch_before = staged.epoch;
            let added = staged.added.clone();
            let removed = staged.removed.clone();
            let new_admins = staged.new_admins.clone();
            let self_update = staged.self_update;
            let merged = groups::merge(
                &overlay,
                community,
                staged,
                &self.anchors,
                &self.trust(),
                w.now as u64,
            )?;
            let seq = next_seq(&rec)?;
            let entry = LogEntry {
                community: community.to_string(),
                seq,
                sender: sender.to_string(),
                ordered_at: w.now,
                kind: EntryKind::Handshake {
                    epoch: epoch_before,
                },
                message: message.to_vec(),
            };
            b.extend(overlay.into_batch());
            b.put_obj(keys::log(community, seq), &entry)?;
            for (user, _) in &added {
                w.audit.append(
                    b,
                    w.now,
                    AuditEvent::new(
                        AuditKind::Membership,
                        sender,
                        community,
                        "add-member",
                        format!("{user} added at epoch {}{via}", merged.epoch),
                    ),
                )?;
            }
            for user in &removed {
                w.audit.append(
                    b,
                    w.now,
                    AuditEvent::new(
                        AuditKind::Membership,
                        sender,
                        community,
                        "remove-member",
                        format!("{user} removed at epoch {}{via}", merged.epoch),
                    ),
                )?;
            }
            if let Some(admins) = &new_admins {
                w.audit.append(
                    b,
                    w.now,
                    AuditEvent::new(
                        AuditKind::Admin,
                        sender,
                        community,
                        "set-admins",
                        format!("admins now {}", admins.join(", ")),
                    ),
                )?;
            }
            if self_update {
                self.self_updates
                    .lock()
                    .map_err(|_| RelayError::Poisoned("self-update times"))?
                    .record(community, sender, w.now as u64);
                w.audit.append(
                    b,
                    w.now,
                    AuditEvent::new(
                        AuditKind::Membership,
                        sender,
                        community,
                        "update-keys",
                        format!(
                            "{sender} updated its leaf keys at epoch {}{via}",
                            merged.epoch
                        ),
                    ),
                )?;
            }
            let before: Vec<String> = rec.members.clone();
            rec.epoch = merged.epoch;
            rec.members = merged.members;
            rec.admins = merged.admins;
            rec.last_seq = seq;
            put_community(b, &rec)?;
            self.update_local_members(b, &rec, &before, seq)?;
            let removed_relays: Vec<String> =
                removed.iter().map(|u| home_relay(u).to_string()).collect();
            self.fan_out(w, b, &rec, &entry, &removed_relays)?;
            if let Some(welcome) = &welcome {
                let users: Vec<String> = added.iter().map(|(user, _)| user.clone()).collect();
                self.route_welcomes(w, b, &users, community, welcome, &merged.ratchet_tree)?;
            }
            w.counts.commits_ordered += 1;
            Ok((seq, rec.epoch))
        })?;
        // A commit starts a new epoch: removals proposed in the old one are void and
        // must be proposed again if still due.
        cx.enforce.push(community.to_string());
        Ok(Response::Accepted { seq, epoch })
    }

    /// Membership records of this relay's own users after `rec` changed at `seq`:
    /// new local members join at `seq`, departed ones leave at `seq`.
    pub fn update_local_members(
        &self,
        b: &mut Batch,
        rec: &CommunityRecord,
        before: &[String],
        seq: u64,
    ) -> Result<(), RelayError> {
        // Sets, not slices: a community may have thousands of members here.
        let was: std::collections::HashSet<&str> = before.iter().map(String::as_str).collect();
        let staying: std::collections::HashSet<&str> =
            rec.members.iter().map(String::as_str).collect();
        for user in rec.members.iter().filter(|u| home_relay(u) == self.id) {
            let key = keys::member(user, &rec.id);
            let current: Option<MemberRecord> = b.get_obj(self.engine.as_ref(), &key)?;
            let active = current.is_some_and(|m| m.removed_seq.is_none());
            if !was.contains(user.as_str()) || !active {
                b.put_obj(
                    key,
                    &MemberRecord {
                        joined_seq: seq,
                        removed_seq: None,
                    },
                )?;
                // A re-joining member starts afresh at the commit that added them.
                b.delete(keys::cursor(user, &rec.id));
            }
        }
        for user in before
            .iter()
            .filter(|u| home_relay(u) == self.id && !staying.contains(u.as_str()))
        {
            let key = keys::member(user, &rec.id);
            let mut m: MemberRecord =
                b.get_obj(self.engine.as_ref(), &key)?
                    .unwrap_or(MemberRecord {
                        joined_seq: 0,
                        removed_seq: None,
                    });
            m.removed_seq = Some(seq);
            b.put_obj(key, &m)?;
        }
        Ok(())
    }

    /// Stores the Welcome of a commit once for the new members who are users of
    /// this relay, and queues one copy for each other relay with new members.
    pub(crate) fn route_welcomes(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        users: &[String],
        community: &str,
        welcome: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<(), RelayError> {
        let mut by_relay: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for user in users {
            by_relay
                .entry(home_relay(user))
                .or_default()
                .push(user.clone());
        }
        for (home, users) in by_relay {
            if home == self.id {
                store_welcome(b, &users, community, welcome, ratchet_tree)?;
            } else {
                let body = FedBody::Welcomes {
                    users,
                    community: community.to_string(),
                    welcome: welcome.to_vec(),
                    ratchet_tree: ratchet_tree.to_vec(),
                };
                crate::core::outbox::enqueue(self, w, b, home, body)?;
            }
        }
        Ok(())
    }
}

/// Stores one Welcome for `users` (all users of this relay): one shared blob with a
/// reference count, and a reference per user for delivery and acknowledgement.
pub fn store_welcome(
    b: &mut Batch,
    users: &[String],
    community: &str,
    welcome: &[u8],
    ratchet_tree: &[u8],
) -> Result<(), RelayError> {
    let refs = u32::try_from(users.len()).map_err(|_| StoreError::TooMany {
        what: "users",
        count: users.len(),
    })?;
    let blob = Uuid::new_v4();
    b.put_obj(
        keys::welcome_blob(&blob),
        &WelcomeBlob {
            welcome: welcome.to_vec(),
            ratchet_tree: ratchet_tree.to_vec(),
        },
    )?;
    b.put_obj(keys::welcome_refs(&blob), &refs)?;
    for user in users {
        let id = Uuid::new_v4();
        let reference = WelcomeRef {
            id,
            community: community.to_string(),
            blob,
        };
        b.put_obj(keys::welcome_ref(user, &id), &reference)?;
    }
    Ok(())
}

/// Drops `user`'s reference `id` to a shared Welcome, and the Welcome with its last
/// reference.
pub fn release_welcome(
    engine: &dyn Engine,
    b: &mut Batch,
    user: &str,
    id: &Uuid,
) -> Result<(), RelayError> {
    let key = keys::welcome_ref(user, id);
    let Some(reference) = b.get_obj::<WelcomeRef>(engine, &key)? else {
        return Ok(());
    };
    b.delete(key);
    let refs_key = keys::welcome_refs(&reference.blob);
    match b.get_obj::<u32>(engine, &refs_key)? {
        Some(refs) if refs > 1 => b.put_obj(refs_key, &(refs - 1)),
        _ => {
            b.delete(refs_key);
            b.delete(keys::welcome_blob(&reference.blob));
            Ok(())
        }
    }
}

/// Writes the whole community record (after a change of membership, admins or
/// epoch), and its last seq.
pub fn put_community(b: &mut Batch, rec: &CommunityRecord) -> Result<(), RelayError> {
    b.put_obj(keys::community(&rec.id), rec)?;
    put_last_seq(b, &rec.id, rec.last_seq)
}

/// Writes only a community's last seq: what a notice changes.
pub fn put_last_seq(b: &mut Batch, id: &str, seq: u64) -> Result<(), RelayError> {
    b.put_obj(keys::last_seq(id), &seq)
}

/// The seq the next entry ordered in `rec` takes; refused (never wrapped) when the
/// numbering is exhausted.
pub fn next_seq(rec: &CommunityRecord) -> Result<u64, RelayError> {
    rec.last_seq.checked_add(1).ok_or_else(|| {
        ErrorCode::Unavailable {
            reason: format!("the log of {} can take no further entry", rec.id),
        }
        .into()
    })
}

/// The client-visible summary of a community record.
pub fn summary(rec: &CommunityRecord) -> CommunitySummary {
    CommunitySummary {
        id: rec.id.clone(),
        max_label: Label::from_bytes(&rec.max_label)
            .map(|l| l.to_string())
            .unwrap_or_else(|_| "(unreadable)".into()),
        epoch: rec.epoch,
        members: rec.members.clone(),
        admins: rec.admins.clone(),
        last_seq: rec.last_seq,
    }
}
