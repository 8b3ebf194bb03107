//! Receiving: the push channel, processed until the relay says it is caught up
//! ([`Client::sync`]) or for as long as the user watches ([`Client::watch`]).
//!
//! Every log entry is processed exactly once: its effect on the MLS state, the
//! decrypted notice (if any) and the community's new cursor are committed to the
//! local store in one atomic batch before the entry is acknowledged to the relay.
//! Entries at or below the cursor (re-delivered because an ack was lost) are only
//! acknowledged again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kring_policy::{Label, decide_opt, within};
use kring_protocol::mls::{ClientGroup, MlsError, Received};
use kring_protocol::notice_aad::NoticeAad;
use kring_protocol::wire::{EntryKind, LogEntry, LogMark, Push, Request, Response};
use uuid::Uuid;

use crate::client::{Client, unexpected};
use crate::community::CommitSent;
use crate::error::{ClientError, EXIT_UNREACHABLE, Result};
use crate::notice::Notice;
use crate::store::{Batch, CommunityRecord, StoreError, StoredNotice};

mod entries;

/// Longest wait between reconnection attempts of [`Client::watch`].
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Something that happened while receiving. Never carries notice content except in
/// [`SyncEvent::Notice`].
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// This device joined a community (from a Welcome).
    Joined {
        /// Community id.
        community: String,
        /// Canonical text of its maximum label.
        max_label: String,
    },
    /// A new notice was decrypted, checked and stored.
    Notice(Notice),
    /// A notice was received but refused on this device by label policy; it was not
    /// stored.
    Refused {
        /// Community id.
        community: String,
        /// Log sequence number.
        seq: u64,
        /// Notice id.
        notice_id: Uuid,
        /// Why.
        reason: String,
    },
    /// An entry could not be read or failed a check; it was skipped.
    Unreadable {
        /// Community id.
        community: String,
        /// Log sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A commit changed the community.
    Changed {
        /// Community id.
        community: String,
        /// The epoch after the commit.
        epoch: u64,
        /// Who committed.
        committer: String,
        /// Members added.
        added: Vec<String>,
        /// Members removed.
        removed: Vec<String>,
        /// The new admin list, if it changed.
        admins: Option<Vec<String>>,
    },
    /// The hub proposed removing a member; this device will commit it.
    RemovalProposed {
        /// Community id.
        community: String,
        /// The member to remove.
        member: String,
    },
    /// This device committed pending removals (e.g. proposed by the hub).
    RemovalCommitted {
        /// Community id.
        community: String,
        /// Log sequence number of the commit.
        seq: u64,
    },
    /// This device updated its own leaf key in a community (scheduled: its leaf
    /// was older than the community's update period).
    KeysUpdated {
        /// Community id.
        community: String,
        /// Log sequence number of the commit.
        seq: u64,
        /// The epoch after it.
        epoch: u64,
    },
    /// This device was removed from a community.
    Left {
        /// Community id.
        community: String,
    },
    /// Something went wrong that did not stop receiving.
    Warning(String),
    /// Everything stored for this device so far has been received.
    CaughtUp,
    /// The connection dropped; [`Client::watch`] reconnects after a pause.
    Reconnecting {
        /// The pause.
        after: Duration,
        /// What happened.
        reason: String,
    },
}

/// What one [`Client::sync`] received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Everything that happened, in order.
    pub events: Vec<SyncEvent>,
}

impl SyncReport {
    /// The new notices.
    pub fn notices(&self) -> impl Iterator<Item = &Notice> {
        self.events.iter().filter_map(|e| match e {
            SyncEvent::Notice(n) => Some(n),
            _ => None,
        })
    }
}

/// Log entries applied (events held back) before the local store is flushed.
const FLUSH_EVERY: usize = 256;
/// How long a live device waits for more pushes before it flushes and acknowledges.
const ACK_DELAY: Duration = Duration::from_millis(2);
/// Shortest time between two acknowledgements of a live device (one request for
/// every community with entries since the last): a trickle of notices across many
/// communities costs the relay one request per interval, not one per notice and
/// community. Acknowledging later is always safe: the relay keeps what is not
/// acknowledged and sends it again after a reconnection, and the device skips it.
const ACK_INTERVAL: Duration = Duration::from_millis(25);
/// How long a live device stays idle before it releases its local store.
const IDLE_RELEASE: Duration = Duration::from_millis(500);
/// How often an idle live device checks whether a leaf update is due.
const KEY_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Acks and proposal commits owed to the relay.
#[derive(Debug, Default)]
struct Owed {
    acks: BTreeMap<String, u64>,
    commit: BTreeSet<String>,
    /// When the last acknowledgement went.
    acked_at: Option<std::time::Instant>,
}

impl Owed {
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.commit.is_empty()
    }

    /// How long until the owed acks may go ([`ACK_INTERVAL`] after the last).
    fn ack_wait(&self, now: std::time::Instant) -> Duration {
        match self.acked_at {
            Some(at) if !self.acks.is_empty() => (at + ACK_INTERVAL).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    fn ack(&mut self, community: &str, seq: u64) {
        let e = self.acks.entry(community.to_string()).or_insert(0);
        *e = (*e).max(seq);
    }
}

/// The stored own notice with the sequence number of its ordered `entry`, if it
/// did not have one yet (it was queued for a remote hub when filed) and the entry is
/// indeed that notice in its community.
fn ordered_own(mut stored: StoredNotice, entry: &LogEntry) -> Option<StoredNotice> {
    if !stored.own || stored.seq.is_some() || stored.notice.community != entry.community {
        return None;
    }
    stored.seq = Some(entry.seq);
    stored.ordered_at = Some(entry.ordered_at);
    Some(stored)
}

/// Why a decrypted notice is not stored.
enum Refusal {
    Policy(String),
    Invalid(String),
}

impl Client {
    /// Receives everything pending for this device — welcomes, commits, notices —
    /// until the relay says it is caught up; acknowledges what was processed and
    /// commits removals the hub proposed.
    ///
    /// Events also go to the sink set with [`set_event_sink`](Self::set_event_sink),
    /// also when another operation syncs first.
    pub async fn sync(&mut self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let result = self.sync_with(&mut |e| report.events.push(e)).await;
        self.forget_stale_group();
        if let Some(sink) = self.event_sink.as_mut() {
            for event in &report.events {
                sink(event);
            }
        }
        result.map(|()| report)
    }

    /// [`sync`](Self::sync), handing each event to `emit` as it happens.
    pub async fn sync_with(&mut self, emit: &mut (dyn FnMut(SyncEvent) + Send)) -> Result<()> {
        self.reset_transaction()?;
        self.forget_stale_group();
        let timeout = self.timeouts.request;
        self.report_cursors().await?;
        let mut sub = self.connect().await?.subscribe().await?;
        let mut owed = Owed::default();
        let mut held = Vec::new();
        let result = async {
            loop {
                match sub.next_within(timeout).await? {
                    None => {
                        return Err(ClientError::Protocol(
                            "the relay ended the push channel before catching up".into(),
                        ));
                    }
                    Some(Push::CaughtUp) => return Ok(()),
                    Some(Push::Closed(code)) => return Err(ClientError::Relay(code)),
                    Some(push) => {
                        self.take_push(push, &mut owed, &mut held, emit).await?;
                        if held.len() >= FLUSH_EVERY {
                            self.release_held(&mut held, emit)?;
                        }
                    }
                }
            }
        }
        .await;
        self.release_held(&mut held, emit)?;
        result?;
        drop(sub);
        self.settle(&mut owed, emit).await?;
        self.update_due_keys(emit).await?;
        self.delete_expired_now()?;
        emit(SyncEvent::CaughtUp);
        Ok(())
    }

    /// Handles one push. Log entries are applied without an fsync each and their
    /// events held back; [`release_held`](Self::release_held) flushes once and then
    /// emits them, so a user never sees a notice that a crash could take back, and
    /// the relay gets no ack before the flush ([`settle`](Self::settle) releases
    /// first).
    async fn take_push(
        &mut self,
        push: Push,
        owed: &mut Owed,
        held: &mut Vec<SyncEvent>,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        match push {
            Push::Entry(_) => {
                self.store.defer_flush(true);
                let result = self.handle_push(push, owed, &mut |e| held.push(e)).await;
                self.store.defer_flush(false);
                if result.is_err() {
                    self.release_held(held, emit)?;
                }
                result
            }
            other => {
                // Keep the order of events: what is held goes first.
                self.release_held(held, emit)?;
                self.handle_push(other, owed, emit).await
            }
        }
    }

    /// Flushes the local store and emits the events held back since the last flush.
    fn release_held(
        &mut self,
        held: &mut Vec<SyncEvent>,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        self.store.flush()?;
        for event in held.drain(..) {
            emit(event);
        }
        Ok(())
    }

    /// Syncs, then keeps receiving and hands every event to `on_event` as it
    /// happens; reconnects by itself (with a growing pause, at most [`MAX_BACKOFF`])
    /// when the relay is unreachable or the connection drops. Returns only on an
    /// error that reconnecting cannot fix (e.g. authentication, revocation); stop it
    /// by dropping the future (e.g. on Ctrl-C).
    pub async fn watch(&mut self, mut on_event: impl FnMut(&SyncEvent) + Send) -> Result<()> {
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut caught_up = false;
            let result = self
                .watch_once(&mut |e| {
                    if e == SyncEvent::CaughtUp {
                        caught_up = true;
                    }
                    on_event(&e);
                })
                .await;
            if caught_up {
                backoff = Duration::from_secs(1);
            }
            let reason = match result {
                Ok(()) => "the relay closed the push channel".to_string(),
                Err(e) if e.exit_code() == EXIT_UNREACHABLE => e.to_string(),
                // Garbled frames or another kring process holding the state for too
                // long: start over (unacknowledged entries come again).
                Err(
                    e @ (ClientError::Protocol(_) | ClientError::Store(StoreError::Open { .. })),
                ) => e.to_string(),
                Err(e) => return Err(e),
            };
            self.conn = None;
            on_event(&SyncEvent::Reconnecting {
                after: backoff,
                reason,
            });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn watch_once(&mut self, emit: &mut (dyn FnMut(SyncEvent) + Send)) -> Result<()> {
        self.reset_transaction()?;
        let timeout = self.timeouts.request;
        self.report_cursors().await?;
        let mut sub = self.connect().await?.subscribe().await?;
        let mut owed = Owed::default();
        let mut held = Vec::new();
        let mut live = false;
        let result = async {
            loop {
                let push = if !live {
                    sub.next_within(timeout).await?
                } else if held.is_empty() && owed.is_empty() {
                    // Idle: after a pause, let other kring processes of this user use
                    // the local state. (`next` is cancel-safe.) The QUIC keep-alive
                    // and idle timeout detect a dead relay.
                    match tokio::time::timeout(IDLE_RELEASE, sub.next()).await {
                        Ok(push) => push?,
                        Err(_) => loop {
                            self.store.release()?;
                            // A device that stays connected still updates its keys
                            // on schedule.
                            match tokio::time::timeout(KEY_CHECK_EVERY, sub.next()).await {
                                Ok(push) => break push?,
                                Err(_) => {
                                    self.update_due_keys(emit).await?;
                                    self.delete_expired_now()?;
                                }
                            }
                        },
                    }
                } else {
                    // A run of pushes: take what arrives within ACK_DELAY of the last
                    // one, then flush once and emit; acknowledge once ACK_INTERVAL has
                    // passed since the last acknowledgement.
                    let wait = if held.is_empty() {
                        owed.ack_wait(std::time::Instant::now()).max(ACK_DELAY)
                    } else {
                        ACK_DELAY
                    };
                    match tokio::time::timeout(wait, sub.next()).await {
                        Ok(push) => push?,
                        Err(_) => {
                            self.release_held(&mut held, emit)?;
                            self.settle_paced(&mut owed, emit).await?;
                            continue;
                        }
                    }
                };
                match push {
                    None => return Ok(()),
                    Some(Push::CaughtUp) => {
                        self.release_held(&mut held, emit)?;
                        self.settle(&mut owed, emit).await?;
                        self.update_due_keys(emit).await?;
                        self.delete_expired_now()?;
                        emit(SyncEvent::CaughtUp);
                        live = true;
                    }
                    Some(Push::Closed(code)) => return Err(ClientError::Relay(code)),
                    Some(push) => {
                        self.take_push(push, &mut owed, &mut held, emit).await?;
                        if held.len() >= FLUSH_EVERY {
                            self.release_held(&mut held, emit)?;
                            if live {
                                self.settle(&mut owed, emit).await?;
                            }
                        }
                    }
                }
            }
        }
        .await;
        self.release_held(&mut held, emit)?;
        result
    }

    /// Tells the home relay this device's cursor in each community hubbed there, and
    /// moves back a cursor the relay names: a relay restored from a backup that has
    /// numbered new entries at seqs this device had seen before (what it already
    /// has is then skipped by notice id). A relay that does not know the request
    /// changes nothing.
    async fn report_cursors(&mut self) -> Result<()> {
        let home = self
            .user()
            .split_once('@')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        let mut cursors = Vec::new();
        for c in self.store.communities()? {
            if c.id.split_once('@').map(|(_, hub)| hub) != Some(home.as_str()) {
                continue;
            }
            let seq = self.store.cursor(&c.id)?;
            if seq > 0 && cursors.len() < kring_protocol::wire::limits::MAX_LIST {
                cursors.push(LogMark {
                    community: c.id,
                    seq,
                });
            }
        }
        if cursors.is_empty() {
            return Ok(());
        }
        let rewind = match self.call(&Request::Cursors { cursors }).await {
            Ok(Response::Cursors { rewind }) => rewind,
            Ok(_) | Err(ClientError::Relay(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        for mark in rewind {
            if self.store.cursor(&mark.community)? > mark.seq {
                let mut batch = Batch::new();
                batch.put_cursor(&mark.community, mark.seq);
                self.store.commit_plain(batch)?;
                self.warn(format!(
                    "relay {home} was restored from a backup: entries of {} after {} come again                      (notices held here are not shown twice)",
                    mark.community, mark.seq
                ));
            }
        }
        Ok(())
    }

    /// [`settle`](Self::settle), but the acks wait until [`ACK_INTERVAL`] has passed
    /// since the last ones (commits of pending removals go at once).
    async fn settle_paced(
        &mut self,
        owed: &mut Owed,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        if owed.ack_wait(std::time::Instant::now()).is_zero() {
            return self.settle(owed, emit).await;
        }
        let acks = std::mem::take(&mut owed.acks);
        let settled = self.settle(owed, emit).await;
        owed.acks = acks;
        settled
    }

    /// Sends owed acks (one request for all communities) and commits pending
    /// removal proposals.
    async fn settle(
        &mut self,
        owed: &mut Owed,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        let acks: Vec<LogMark> = std::mem::take(&mut owed.acks)
            .into_iter()
            .map(|(community, seq)| LogMark { community, seq })
            .collect();
        if !acks.is_empty() {
            // What the acknowledged entries changed here (a commit's group state, a
            // cursor) is on disk before the relay may forget them, also for entries
            // that raised no event; a flush with nothing new returns at once.
            self.store.flush()?;
        }
        for request in Request::acknowledging(acks) {
            match self.call(&request).await? {
                Response::Ok => {}
                other => return Err(unexpected("Ack", &other)),
            }
            owed.acked_at = Some(std::time::Instant::now());
        }
        for community in std::mem::take(&mut owed.commit) {
            if let Err(e) = self.commit_pending_proposals(&community, emit).await {
                emit(SyncEvent::Warning(format!(
                    "could not commit the pending removals in {community}: {e}"
                )));
            }
        }
        Ok(())
    }

    /// Commits the hub's pending removal proposals in `community`, if any.
    pub(crate) async fn commit_pending_proposals(
        &mut self,
        community: &str,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        let group = self.load_group(community)?;
        if !group.is_active() || !group.has_pending_proposals() {
            return Ok(());
        }
        // A commit of this device whose outcome is not known yet goes first (it may
        // be this very removal, sent before).
        self.settle_sent_commit(community).await?;
        let mut group = self.load_group(community)?;
        if !group.is_active() || !group.has_pending_proposals() {
            return Ok(());
        }
        if group.has_pending_commit() {
            // Left over from a run interrupted before it sent it.
            group.commit_refused(&self.provider)?;
        }
        let Some(out) =
            group.commit_pending_proposals(&self.provider, &self.signer, &self.validator)?
        else {
            return Ok(());
        };
        let sent = self
            .send_commit(community, &mut group, out.commit, out.welcome)
            .await?;
        match sent {
            CommitSent::Accepted { seq, .. } => {
                self.record_commit_leaves(community, &out.summary)?;
                emit(SyncEvent::RemovalCommitted {
                    community: community.to_string(),
                    seq,
                });
                Ok(())
            }
            // Another member committed first.
            CommitSent::LostEpoch { current } => Err(ClientError::handshake_refused(
                community,
                kring_protocol::wire::ErrorCode::WrongEpoch { current },
            )),
        }
    }

    async fn handle_push(
        &mut self,
        push: Push,
        owed: &mut Owed,
        emit: &mut (dyn FnMut(SyncEvent) + Send),
    ) -> Result<()> {
        match push {
            Push::Welcome {
                id,
                community,
                welcome,
                ratchet_tree,
            } => {
                self.handle_welcome(&community, &welcome, &ratchet_tree, emit)?;
                match self.call(&Request::AckWelcome { id }).await? {
                    Response::Ok => Ok(()),
                    other => Err(unexpected("AckWelcome", &other)),
                }
            }
            Push::Entry(entry) => {
                if let Some(seq) = self.handle_entry(&entry, owed, emit)? {
                    owed.ack(&entry.community, seq);
                }
                Ok(())
            }
            Push::CaughtUp | Push::Closed(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::{Category, NoticeKind};

    fn stored(seq: Option<u64>, own: bool) -> StoredNotice {
        StoredNotice {
            notice: Notice {
                id: Uuid::from_u128(42),
                community: "desinformatie@bz".into(),
                label: "NL:ONGERUBRICEERD".into(),
                kind: NoticeKind::Signal,
                category: Category::Other,
                title: "t".into(),
                body: String::new(),
                sender: "analist@post-a".into(),
                filed_at: time::macros::datetime!(2025-01-01 0:00 UTC),
                in_reply_to: None,
                stix: None,
                forwarded_from: None,
                attachments: Vec::new(),
            },
            seq,
            own,
            ordered_at: None,
        }
    }

    fn entry(community: &str, seq: u64) -> LogEntry {
        LogEntry {
            community: community.into(),
            seq,
            sender: "analist@post-a".into(),
            ordered_at: 0,
            kind: EntryKind::Notice {
                notice_id: Uuid::from_u128(42),
                label: Vec::new(),
                epoch: 1,
            },
            message: Vec::new(),
        }
    }

    #[test]
    fn a_queued_own_notice_learns_its_seq_from_the_ordered_entry() {
        let got = ordered_own(stored(None, true), &entry("desinformatie@bz", 17)).unwrap();
        assert_eq!(got.seq, Some(17));
        assert!(got.own);
        assert_eq!(got.notice, stored(None, true).notice);
    }

    #[test]
    fn known_seqs_foreign_notices_and_other_communities_are_left_alone() {
        assert_eq!(
            ordered_own(stored(Some(3), true), &entry("desinformatie@bz", 17)),
            None
        );
        assert_eq!(
            ordered_own(stored(None, false), &entry("desinformatie@bz", 17)),
            None
        );
        assert_eq!(
            ordered_own(stored(None, true), &entry("cyber@bz", 17)),
            None
        );
    }

    #[test]
    fn the_store_keeps_one_copy_when_the_seq_arrives_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        assert!(store.insert_notice(&stored(None, true)).unwrap());
        let mut batch = Batch::new();
        batch.put_cursor("desinformatie@bz", 17);
        let update = ordered_own(
            store.notice(Uuid::from_u128(42)).unwrap().unwrap(),
            &entry("desinformatie@bz", 17),
        )
        .unwrap();
        batch.put_notice(&update).unwrap();
        store.commit_plain(batch).unwrap();
        let all = store.notices(None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].seq, Some(17));
        assert_eq!(store.cursor("desinformatie@bz").unwrap(), 17);
    }

    /// Names a credential after its certificate, trusting it (test groups only).
    struct Named;

    impl kring_protocol::mls::CredentialValidator for Named {
        fn validate(
            &self,
            chain: &[Vec<u8>],
            _key: &[u8],
        ) -> std::result::Result<String, kring_protocol::mls::CredentialError> {
            use kring_protocol::mls::CredentialError;
            let leaf = chain.first().ok_or(CredentialError::EmptyChain)?;
            kring_protocol::identity::Identity::from_der(leaf)
                .map(|i| i.id())
                .map_err(CredentialError::Unreadable)
        }
    }

    /// An entry pushed for one community whose message belongs to another, or whose
    /// epoch or label differs from its message's, is refused: not acknowledged, and
    /// neither that community's cursor nor the other's moves.
    #[test]
    fn an_entry_whose_message_is_of_another_community_moves_no_cursor() {
        use kring_protocol::mls::CommunityMeta;
        let fed = crate::testpki::Fed::new("bz");
        let leaf = fed.admin("bz", "analist", "bz");
        let hub = fed.relay("bz", "bz", "NL:STG-GEHEIM");
        let tmp = tempfile::tempdir().unwrap();
        let dir = fed.profile(tmp.path(), "analist@bz", "bz", &leaf);
        let mut client = Client::open(&dir).unwrap();
        let me = client.user();
        // A group of community y@bz on this device, and a notice encrypted in it.
        let label = "NL:ONGERUBRICEERD".parse::<Label>().unwrap().to_bytes();
        let meta = CommunityMeta::new("y@bz", label.clone(), vec![me.clone()]).unwrap();
        let hub_key = kring_protocol::mls::leaf_public_key(&hub.chain[0]).unwrap();
        let (mut group, _) = ClientGroup::create(
            &client.provider,
            &client.signer,
            &Named,
            &meta,
            &hub.chain,
            &hub_key,
        )
        .unwrap();
        let message = group
            .encrypt(&client.provider, &client.signer, &label, b"not for x")
            .unwrap();
        let mut batch = Batch::new();
        for id in ["x@bz", "y@bz"] {
            batch
                .put_community(&CommunityRecord {
                    id: id.into(),
                    max_label: "NL:STG-GEHEIM".into(),
                    joined_epoch: 0,
                    active: true,
                    retention_days: None,
                })
                .unwrap();
            batch.put_cursor(id, 3);
        }
        client.store.commit_plain(batch).unwrap();

        let notice = |community: &str, sender: &str, label: &[u8], epoch: u64| LogEntry {
            community: community.into(),
            seq: 4,
            sender: sender.into(),
            ordered_at: 0,
            kind: EntryKind::Notice {
                notice_id: Uuid::from_u128(9),
                label: label.to_vec(),
                epoch,
            },
            message: message.clone(),
        };
        for (what, entry) in [
            ("another community", notice("x@bz", "liaison@bz", &label, 0)),
            ("another community, own", notice("x@bz", &me, &label, 0)),
            ("another epoch", notice("y@bz", "liaison@bz", &label, 1)),
            ("another label", notice("y@bz", &me, b"NL:STG-GEHEIM", 0)),
        ] {
            let mut owed = Owed::default();
            let mut events = Vec::new();
            let acked = client
                .handle_entry(&entry, &mut owed, &mut |e| events.push(e))
                .unwrap();
            assert_eq!(acked, None, "{what}: acknowledged");
            assert!(
                matches!(events.as_slice(), [SyncEvent::Unreadable { seq: 4, .. }]),
                "{what}: {events:?}"
            );
            assert_eq!(client.store.cursor("x@bz").unwrap(), 3, "{what}");
            assert_eq!(client.store.cursor("y@bz").unwrap(), 3, "{what}");
        }
        // The same message in its own community's entry is taken (own notice: its
        // cursor moves without decrypting).
        let mut owed = Owed::default();
        let acked = client
            .handle_entry(&notice("y@bz", &me, &label, 0), &mut owed, &mut |_| {})
            .unwrap();
        assert_eq!(acked, Some(4));
        assert_eq!(client.store.cursor("y@bz").unwrap(), 4);
        assert_eq!(client.store.cursor("x@bz").unwrap(), 3);
    }

    /// A notice is a forward in its content exactly when its authenticated data says
    /// so, and a forward is never labelled lower than its original.
    #[test]
    fn a_forward_must_say_so_in_its_authenticated_data_and_keep_the_label() {
        use kring_protocol::notice_aad::NoticeAad;
        let fed = crate::testpki::Fed::new("bz");
        let leaf = fed.admin("bz", "analist", "bz");
        let tmp = tempfile::tempdir().unwrap();
        let dir = fed.profile(tmp.path(), "analist@bz", "bz", &leaf);
        let client = Client::open(&dir).unwrap();
        let record = CommunityRecord {
            id: "y@bz".into(),
            max_label: "NL:STG-GEHEIM".into(),
            joined_epoch: 0,
            active: true,
            retention_days: None,
        };
        let l = |s: &str| s.parse::<Label>().unwrap();
        let green = l("NL:ONGERUBRICEERD;TLP=GREEN");
        let notice = |forwarded: bool| {
            let filed_at = time::macros::datetime!(2025-03-01 12:30:00 UTC);
            let mut n = Notice {
                id: Uuid::from_u128(9),
                community: "y@bz".into(),
                label: green.to_string(),
                kind: crate::notice::NoticeKind::Notice,
                category: crate::notice::Category::Cyber,
                title: "t".into(),
                body: String::new(),
                sender: "liaison@bz".into(),
                filed_at,
                in_reply_to: None,
                stix: None,
                forwarded_from: None,
                attachments: Vec::new(),
            };
            n.forwarded_from = forwarded.then(|| crate::notice::ForwardedFrom {
                community: "x@bz".into(),
                id: Uuid::from_u128(8),
                sender: "admin@bz".into(),
                filed_at,
            });
            n.to_plaintext().unwrap()
        };
        let check = |aad: &NoticeAad, plaintext: &[u8]| {
            let aad = aad.to_bytes();
            let entry = LogEntry {
                community: "y@bz".into(),
                seq: 4,
                sender: "liaison@bz".into(),
                ordered_at: 0,
                kind: EntryKind::Notice {
                    notice_id: Uuid::from_u128(9),
                    label: aad.clone(),
                    epoch: 0,
                },
                message: Vec::new(),
            };
            match client.check_notice(
                &entry,
                Uuid::from_u128(9),
                &aad,
                &record,
                plaintext,
                &aad,
                "liaison@bz",
            ) {
                Ok(_) => Ok(()),
                Err(Refusal::Invalid(why) | Refusal::Policy(why)) => Err(why),
            }
        };
        let plain = NoticeAad::plain(green.clone());
        let forward = NoticeAad::forward(green.clone(), l("TLP:GREEN"));
        assert_eq!(check(&plain, &notice(false)), Ok(()));
        assert_eq!(check(&forward, &notice(true)), Ok(()));
        let claims = check(&plain, &notice(true)).unwrap_err();
        assert!(claims.contains("claims to be forwarded"), "{claims}");
        let silent = check(&forward, &notice(false)).unwrap_err();
        assert!(silent.contains("does not say what it forwards"), "{silent}");
        let lowered = NoticeAad::forward(green.clone(), l("NL:STG-CONFIDENTIEEL;TLP=GREEN"));
        let lower = check(&lowered, &notice(true)).unwrap_err();
        assert!(lower.contains("lower than its original"), "{lower}");
    }
}
