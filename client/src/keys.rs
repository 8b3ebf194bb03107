//! Leaf key updates: each device rotates its own MLS leaf key in every community
//! (a commit with an update path and no proposals) when its leaf is older than the
//! community's update period, and on request (`kring keys update`).
//!
//! The schedule: the device records when its own leaf last changed (at creation,
//! at joining, and whenever one of its commits with an update path is accepted).
//! A sync checks every community afterwards ([`update_due`], with the time of the
//! [`Clock`]); filing checks its community before encrypting and syncs first when
//! the update is overdue (a device that was offline longer than the period updates
//! before it files). The hub orders one commit per epoch: a device whose update lost
//! its epoch drops it and tries again at a later sync.
//!
//! Every device also records, per community, when each member's leaf last changed
//! as it has seen in the log (the time the hub ordered the commit), for
//! `community members`.

use std::sync::Arc;

use kring_protocol::mls::{ClientGroup, leaf_key_fingerprint};
use kring_protocol::wire::ErrorCode;

use crate::client::{Client, not_member};
use crate::community::{COMMIT_ATTEMPTS, CommitSent};
use crate::error::{ClientError, Result};
use crate::sync::SyncEvent;

/// The time source of the update schedule: Unix seconds. Tests replace it
/// ([`Client::set_clock`]) to move time without waiting.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(crate::validator::now_unix)
}

/// Whether a leaf last updated at `last` (Unix seconds; `None`: not known on this
/// device) is due for an update at `now` under an update period of `period_secs`.
pub fn update_due(last: Option<u64>, period_secs: u64, now: u64) -> bool {
    match last {
        None => true,
        Some(last) => now.saturating_sub(last) >= period_secs,
    }
}

/// A leaf update the hub accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUpdate {
    /// Community id.
    pub community: String,
    /// Sequence number of the commit in the community log.
    pub seq: u64,
    /// The group's epoch after it.
    pub epoch: u64,
    /// Fingerprint of this device's new leaf encryption key
    /// ([`leaf_key_fingerprint`]).
    pub leaf_key: String,
}

/// A community member's current leaf, for `community members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLeaf {
    /// `NAME@RELAY`.
    pub id: String,
    /// Fingerprint of the member's current leaf encryption key.
    pub leaf_key: String,
    /// When the member's leaf last changed (Unix seconds): the time the hub ordered
    /// the commit that changed it, as this device saw it in the log (for this
    /// device's own commits, when the hub accepted it). `None` if it changed before
    /// this device joined.
    pub updated_at: Option<u64>,
}

impl Client {
    /// Replaces the clock of the update schedule (tests).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The schedule's current time (Unix seconds).
    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Whether this device's leaf in `community` is due for its scheduled update.
    /// False for communities this device is not (or no longer) an active member of.
    pub fn key_update_due(&self, community: &str) -> Result<bool> {
        let Some(group) = ClientGroup::load(&self.provider, community)? else {
            return Ok(false);
        };
        self.group_update_due(community, &group)
    }

    /// [`key_update_due`](Self::key_update_due) for an already loaded group.
    pub(crate) fn group_update_due(&self, community: &str, group: &ClientGroup) -> Result<bool> {
        if !group.is_active() {
            return Ok(false);
        }
        let period = group.meta()?.update_period_secs();
        let last = self.store.leaf_time(community, &self.user())?;
        Ok(update_due(last, period, self.now()))
    }

    /// Rotates this device's leaf key now ("heal now", after a suspected
    /// compromise): in `community`, or in every community of this device. Syncs
    /// first; an update that loses its epoch to another commit is rebuilt (at most
    /// [`COMMIT_ATTEMPTS`] times).
    pub async fn update_keys(&mut self, community: Option<&str>) -> Result<Vec<KeyUpdate>> {
        self.reset_transaction()?;
        let communities = match community {
            Some(c) => vec![self.resolve_community(c)?],
            None => Vec::new(),
        };
        self.sync_without_updates().await?;
        let communities = if communities.is_empty() {
            self.store
                .communities()?
                .into_iter()
                .filter(|r| r.active)
                .map(|r| r.id)
                .collect()
        } else {
            communities
        };
        let mut done = Vec::with_capacity(communities.len());
        for community in communities {
            let group = self.load_group(&community)?;
            if !group.is_active() {
                return Err(not_member(&community));
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.update_leaf(&community).await? {
                    Ok(update) => {
                        done.push(update);
                        break;
                    }
                    Err(current) if attempt < COMMIT_ATTEMPTS => {
                        tracing::info!(
                            community,
                            current,
                            attempt,
                            "key update lost its epoch; retrying"
                        );
                        self.sync_without_updates().await?;
                    }
                    Err(current) => {
                        return Err(ClientError::handshake_refused(
                            &community,
                            ErrorCode::WrongEpoch { current },
                        ));
                    }
                }
            }
        }
        Ok(done)
    }

    /// A sync that does not start scheduled updates (the caller updates itself).
    async fn sync_without_updates(&mut self) -> Result<()> {
        self.scheduled_updates = false;
        let result = self.sync().await;
        self.scheduled_updates = true;
        result.map(|_| ())
    }

    /// Updates the leaf of every community whose scheduled update is due; run after
    /// a sync. Failures do not stop receiving: they are reported as warnings and
    /// the update is tried again at the next sync.
    pub(crate) async fn update_due_keys(
        &mut self,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        if !self.scheduled_updates {
            return Ok(());
        }
        for record in self.store.communities()? {
            if !record.active || !self.key_update_due(&record.id)? {
                continue;
            }
            match self.update_leaf(&record.id).await {
                Ok(Ok(update)) => {
                    tracing::info!(community = %record.id, epoch = update.epoch, "leaf key updated");
                    emit(SyncEvent::KeysUpdated {
                        community: update.community,
                        seq: update.seq,
                        epoch: update.epoch,
                    });
                }
                Ok(Err(current)) => {
                    // Another member's commit won the epoch: next sync.
                    tracing::info!(community = %record.id, current, "scheduled key update lost its epoch");
                }
                Err(e @ ClientError::Store(_)) => return Err(e),
                Err(e) => emit(SyncEvent::Warning(format!(
                    "could not update your keys in {}: {e}",
                    record.id
                ))),
            }
        }
        Ok(())
    }

    /// Builds and sends one update of this device's leaf in `community`: a pure
    /// self-update, or the commit of pending hub removals (which updates the leaf
    /// too). `Ok(Err(current))` if another commit won the epoch (the update was
    /// dropped).
    async fn update_leaf(
        &mut self,
        community: &str,
    ) -> Result<std::result::Result<KeyUpdate, u64>> {
        // A commit of unknown outcome goes first (it may have updated the leaf).
        self.settle_sent_commit(community).await?;
        let mut group = self.load_group(community)?;
        if !group.is_active() {
            return Err(not_member(community));
        }
        if group.has_pending_commit() {
            // Left over from a run interrupted before it sent it.
            group.commit_refused(&self.provider)?;
        }
        let out = if group.has_pending_proposals() {
            match group.commit_pending_proposals(&self.provider, &self.signer, &self.validator)? {
                Some(out) => out,
                // Only this device's own removal is pending: nothing to update.
                None => return Err(not_member(community)),
            }
        } else {
            group.self_update(&self.provider, &self.signer, &self.validator)?
        };
        match self
            .send_commit(community, &mut group, out.commit, out.welcome)
            .await?
        {
            CommitSent::Accepted { seq, epoch } => {
                self.record_commit_leaves(community, &out.summary)?;
                Ok(Ok(KeyUpdate {
                    community: community.to_string(),
                    seq,
                    epoch: epoch.max(group.epoch()),
                    leaf_key: group
                        .own_leaf_key()
                        .map(|k| leaf_key_fingerprint(&k))
                        .unwrap_or_default(),
                }))
            }
            CommitSent::LostEpoch { current } => Ok(Err(current)),
        }
    }

    /// Records what one of this device's own commits, just accepted, did to other
    /// members' leaves (its own is recorded when the commit is merged).
    pub(crate) fn record_commit_leaves(
        &self,
        community: &str,
        summary: &kring_protocol::mls::CommitSummary,
    ) -> Result<()> {
        if summary.added.is_empty() && summary.removed.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let mut batch = crate::store::Batch::new();
        for added in &summary.added {
            batch.put_leaf_time(community, &added.id, now);
        }
        for removed in &summary.removed {
            batch.remove_leaf_time(community, &removed.id);
        }
        self.store.commit_plain(batch)?;
        Ok(())
    }

    /// Every member of `community` in this device's group, with the fingerprint of
    /// their current leaf key and when it last changed as seen here.
    pub fn member_leaves(&self, community: &str) -> Result<Vec<MemberLeaf>> {
        let community = self.resolve_community(community)?;
        let group = self.load_group(&community)?;
        if !group.is_active() {
            return Err(not_member(&community));
        }
        let times = self.store.leaf_times(&community)?;
        Ok(group
            .leaf_keys(&self.validator)?
            .into_iter()
            .map(|(id, key)| MemberLeaf {
                updated_at: times.get(&id).copied(),
                leaf_key: leaf_key_fingerprint(&key),
                id,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn an_update_is_due_once_the_period_has_passed() {
        let t0 = 1_700_000_000;
        assert!(!update_due(Some(t0), 7 * DAY, t0));
        assert!(!update_due(Some(t0), 7 * DAY, t0 + 7 * DAY - 1));
        assert!(update_due(Some(t0), 7 * DAY, t0 + 7 * DAY));
        assert!(update_due(Some(t0), 7 * DAY, t0 + 30 * DAY));
        assert!(update_due(Some(t0), DAY, t0 + DAY));
        // Unknown: update now. A clock behind the record never underflows.
        assert!(update_due(None, 7 * DAY, t0));
        assert!(!update_due(Some(t0), 7 * DAY, t0 - DAY));
    }
}
