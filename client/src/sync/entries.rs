//! Processing what the push channel brings: Welcomes into communities, and log
//! entries (commits and notices) checked, applied to the group, stored with the new
//! cursor in one batch.

use super::*;

impl Client {
    pub(super) fn handle_welcome(
        &mut self,
        community: &str,
        welcome: &[u8],
        ratchet_tree: &[u8],
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        let rejoin = match ClientGroup::load(&self.provider, community)? {
            // Already joined (the ack of an earlier delivery was lost).
            Some(group) if group.is_active() => return Ok(()),
            Some(_) => true,
            None => false,
        };
        self.store.begin()?;
        if rejoin {
            // Added again after a removal: the old, inactive group state goes (in the
            // same transaction as the join, so a failed join keeps it).
            if let Err(e) = self.delete_group_state(community) {
                self.store.rollback()?;
                return Err(e);
            }
        }
        let tree = (!ratchet_tree.is_empty()).then_some(ratchet_tree);
        let joined = ClientGroup::join(&self.provider, &self.validator, welcome, tree)
            .and_then(|group| Ok((group.meta()?, group.epoch())));
        let (meta, epoch) = match joined {
            Ok(v) => v,
            Err(e @ MlsError::Storage(_)) => {
                self.store.rollback()?;
                return Err(e.into());
            }
            Err(e) => {
                self.store.rollback()?;
                emit(SyncEvent::Warning(format!(
                    "could not join {community}: {e}"
                )));
                return Ok(());
            }
        };
        if meta.community_id != community {
            self.store.rollback()?;
            emit(SyncEvent::Warning(format!(
                "refused a welcome announced for {community}: it is for {}",
                meta.community_id
            )));
            return Ok(());
        }
        let max_label = match Label::from_bytes(&meta.max_label) {
            Ok(l) => l.to_string(),
            Err(e) => {
                self.store.rollback()?;
                emit(SyncEvent::Warning(format!(
                    "refused the welcome into {community}: its maximum label is invalid ({e})"
                )));
                return Ok(());
            }
        };
        let mut batch = Batch::new();
        batch.put_community(&CommunityRecord {
            id: community.to_string(),
            max_label: max_label.clone(),
            joined_epoch: epoch,
            active: true,
            retention_days: meta.retention_days,
        })?;
        // This device's leaf is the one of the key package the admin used.
        batch.put_leaf_time(community, &self.user(), self.now());
        self.store.commit(batch)?;
        tracing::info!(community, epoch, "joined community");
        emit(SyncEvent::Joined {
            community: community.to_string(),
            max_label,
        });
        Ok(())
    }

    /// Deletes this device's MLS state of a community (used before rejoining).
    fn delete_group_state(&self, community: &str) -> Result<()> {
        use openmls::prelude::{GroupId, MlsGroup};
        use openmls_traits::OpenMlsProvider as _;
        let storage = self.provider.storage();
        let id = GroupId::from_slice(community.as_bytes());
        if let Some(mut group) =
            MlsGroup::load(storage, &id).map_err(|e| MlsError::Storage(e.to_string()))?
        {
            group
                .delete(storage)
                .map_err(|e| MlsError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// Processes one log entry; returns the sequence number to acknowledge, if any.
    pub(super) fn handle_entry(
        &mut self,
        entry: &LogEntry,
        owed: &mut Owed,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<Option<u64>> {
        let community = entry.community.as_str();
        // The entry must say what its MLS message says (community, epoch, kind,
        // label): otherwise it is refused, unacknowledged, and moves no cursor, so
        // an entry cannot stand in for another community's.
        if let Err(e) = kring_protocol::mls::check_entry(entry) {
            emit(SyncEvent::Unreadable {
                community: community.to_string(),
                seq: entry.seq,
                reason: format!("entry refused: {e}"),
            });
            return Ok(None);
        }
        let Some(record) = self.store.community(community)? else {
            emit(SyncEvent::Warning(format!(
                "skipped entry {} of {community}: this device has no such community",
                entry.seq
            )));
            return Ok(None);
        };
        if entry.seq <= self.store.cursor(community)? {
            return Ok(Some(entry.seq));
        }
        let mut batch = Batch::new();
        batch.put_cursor(community, entry.seq);
        if let EntryKind::Notice {
            notice_id, epoch, ..
        } = &entry.kind
        {
            let own = entry.sender == self.user();
            let before_join = *epoch < record.joined_epoch;
            if own || before_join || self.store.has_notice(*notice_id)? {
                // Own notices were stored when filed and cannot be decrypted by
                // their sender; earlier epochs were never meant for this device.
                // An own notice queued for a remote hub learns its sequence number
                // here, together with the cursor. No MLS state is needed for this.
                if own
                    && let Some(stored) = self.store.notice(*notice_id)?
                    && let Some(update) = ordered_own(stored, entry)
                {
                    batch.put_notice(&update)?;
                }
                self.store.commit_plain(batch)?;
                return Ok(Some(entry.seq));
            }
        }
        let group = match ClientGroup::load(&self.provider, community)? {
            Some(g) if g.is_active() && record.active => g,
            _ => {
                self.store.commit_plain(batch)?;
                return Ok(Some(entry.seq));
            }
        };
        match &entry.kind {
            EntryKind::Handshake { .. } => {
                self.process_handshake(group, entry, record, batch, owed, emit)?;
            }
            EntryKind::Notice {
                notice_id, label, ..
            } => {
                self.process_notice(group, entry, *notice_id, label, &record, batch, emit)?;
            }
        }
        Ok(Some(entry.seq))
    }

    fn process_handshake(
        &mut self,
        mut group: ClientGroup,
        entry: &LogEntry,
        mut record: CommunityRecord,
        mut batch: Batch,
        owed: &mut Owed,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        let community = entry.community.clone();
        self.store.begin()?;
        match group.process(&self.provider, &self.validator, &entry.message) {
            Ok(Received::Commit(summary)) => {
                let me = self.user();
                let removed: Vec<String> = summary.removed.iter().map(|r| r.id.clone()).collect();
                let left = removed.contains(&me) || !group.is_active();
                if left {
                    record.active = false;
                    batch.put_community(&record)?;
                }
                // When each leaf changed, as the hub ordered it.
                let at = u64::try_from(entry.ordered_at).unwrap_or(0);
                if summary.leaf_updated {
                    batch.put_leaf_time(&community, &summary.committer, at);
                }
                for added in &summary.added {
                    batch.put_leaf_time(&community, &added.id, at);
                }
                for gone in &removed {
                    batch.remove_leaf_time(&community, gone);
                }
                self.store.commit(batch)?;
                emit(SyncEvent::Changed {
                    community: community.clone(),
                    epoch: summary.epoch_after,
                    committer: summary.committer.clone(),
                    added: summary.added.iter().map(|a| a.id.clone()).collect(),
                    removed,
                    admins: summary.new_meta.map(|m| m.admins),
                });
                if left {
                    emit(SyncEvent::Left { community });
                }
            }
            Ok(Received::RemovalProposal(proposal)) => {
                self.store.commit(batch)?;
                owed.commit.insert(community.clone());
                emit(SyncEvent::RemovalProposed {
                    community,
                    member: proposal.removed.id,
                });
            }
            Ok(_) => {
                // Stale: a commit of an epoch this group already left (e.g. its own).
                self.store.rollback()?;
                self.store.commit_plain(batch)?;
            }
            Err(e @ MlsError::Storage(_)) => {
                self.store.rollback()?;
                return Err(e.into());
            }
            Err(MlsError::Evicted) => {
                self.store.rollback()?;
                self.store.commit_plain(batch)?;
            }
            Err(e) => {
                self.store.rollback()?;
                self.store.commit_plain(batch)?;
                emit(SyncEvent::Unreadable {
                    community,
                    seq: entry.seq,
                    reason: format!("handshake not applied: {e}"),
                });
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn process_notice(
        &mut self,
        mut group: ClientGroup,
        entry: &LogEntry,
        notice_id: Uuid,
        label_bytes: &[u8],
        record: &CommunityRecord,
        mut batch: Batch,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        let community = entry.community.clone();
        self.store.begin()?;
        match group.process(&self.provider, &self.validator, &entry.message) {
            Ok(Received::Application {
                plaintext,
                aad,
                sender,
                ..
            }) => {
                match self.check_notice(
                    entry,
                    notice_id,
                    label_bytes,
                    record,
                    &plaintext,
                    &aad,
                    &sender,
                ) {
                    Ok(notice) => {
                        batch.put_notice(&StoredNotice {
                            notice: notice.clone(),
                            seq: Some(entry.seq),
                            own: false,
                            ordered_at: Some(entry.ordered_at),
                        })?;
                        self.store.commit(batch)?;
                        tracing::debug!(%community, seq = entry.seq, "notice stored");
                        emit(SyncEvent::Notice(notice));
                    }
                    Err(Refusal::Policy(reason)) => {
                        self.store.commit(batch)?;
                        tracing::warn!(%community, seq = entry.seq, %notice_id, "notice refused by policy on this device");
                        emit(SyncEvent::Refused {
                            community,
                            seq: entry.seq,
                            notice_id,
                            reason,
                        });
                    }
                    Err(Refusal::Invalid(reason)) => {
                        self.store.commit(batch)?;
                        emit(SyncEvent::Unreadable {
                            community,
                            seq: entry.seq,
                            reason,
                        });
                    }
                }
            }
            Ok(_) => {
                self.store.commit(batch)?;
            }
            Err(e @ MlsError::Storage(_)) => {
                self.store.rollback()?;
                return Err(e.into());
            }
            Err(e) => {
                self.store.rollback()?;
                self.store.commit_plain(batch)?;
                emit(SyncEvent::Unreadable {
                    community,
                    seq: entry.seq,
                    reason: format!("notice {notice_id} could not be decrypted: {e}"),
                });
            }
        }
        Ok(())
    }

    /// The receiving client's checks of a decrypted notice: the label the
    /// relays saw is the authenticated one, the document matches its envelope, and
    /// this user's clearance and the community's maximum label admit the label.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_notice(
        &self,
        entry: &LogEntry,
        notice_id: Uuid,
        label_bytes: &[u8],
        record: &CommunityRecord,
        plaintext: &[u8],
        aad: &[u8],
        mls_sender: &str,
    ) -> std::result::Result<Notice, Refusal> {
        let invalid = |what: &str| Refusal::Invalid(format!("notice {notice_id}: {what}"));
        if aad != label_bytes {
            return Err(invalid(
                "the label shown to the relays differs from the label bound to the message",
            ));
        }
        let marked = NoticeAad::from_bytes(aad)
            .map_err(|e| invalid(&format!("its label does not decode ({e})")))?;
        let label = marked.label;
        let notice = Notice::from_plaintext(plaintext)
            .map_err(|e| invalid(&format!("not a valid notice ({e})")))?;
        // A forward is one in its content exactly when it is one in the data bound
        // to the ciphertext, which the hub checked against the original's TLP; and
        // its label is never lower than the original's.
        match (&marked.original, &notice.forwarded_from) {
            (None, None) => {}
            (Some(original), Some(_)) => {
                let d = kring_policy::keeps_or_raises(original, &label);
                if !d.allowed {
                    return Err(invalid(&format!(
                        "a forward labelled lower than its original: {}",
                        d.reason()
                    )));
                }
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "it claims to be forwarded, but was not filed as a forward",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "it was filed as a forward, but does not say what it forwards",
                ));
            }
        }
        // The relays hand out exactly the blobs the content opens.
        let blobs: std::result::Result<Vec<_>, _> =
            notice.attachments.iter().map(|a| a.blob_ref()).collect();
        if blobs.ok().as_ref() != Some(&marked.blobs) {
            return Err(invalid(
                "its attachments differ from the blobs bound to the message",
            ));
        }
        let inner = notice.label.parse::<Label>().ok();
        if inner.as_ref() != Some(&label) {
            return Err(invalid(
                "the label inside the notice differs from its authenticated label",
            ));
        }
        if notice.id != notice_id {
            return Err(invalid(
                "the id inside the notice differs from its envelope",
            ));
        }
        if notice.community != entry.community {
            return Err(invalid("it names another community"));
        }
        if notice.sender != mls_sender || entry.sender != mls_sender {
            return Err(invalid("its sender differs from the member who signed it"));
        }
        let decision = decide_opt(Some(&label), self.clearance());
        if !decision.allowed {
            return Err(Refusal::Policy(format!(
                "label {label} is not within your clearance: {}",
                decision.reason()
            )));
        }
        if let Ok(max) = record.max_label.parse::<Label>() {
            let decision = within(&label, &max);
            if !decision.allowed {
                return Err(Refusal::Policy(format!(
                    "label {label} is above the community's maximum label {max}: {}",
                    decision.reason()
                )));
            }
        }
        Ok(notice)
    }
}
