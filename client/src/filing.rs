//! Filing notices and reading them back.
//!
//! Policy is checked on this device before anything is sent (the first
//! hop): the label must be within the user's own clearance and within the
//! community's maximum label. The binary label is the MLS authenticated data.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use kring_policy::{Label, within};
use kring_protocol::mls::ClientGroup;
use kring_protocol::notice_aad::NoticeAad;
use kring_protocol::wire::limits::MAX_NOTICES_PER_FILING;
use kring_protocol::wire::{ErrorCode, HopRefusal, NoticeStatus, NoticeUpload, Request, Response};
use uuid::Uuid;

use crate::attachments::blob_refs;
use crate::client::{Client, not_member, unexpected};
use crate::community::COMMIT_ATTEMPTS;
use crate::conn::RATE_LIMIT_PATIENCE;
use crate::error::{ClientError, Result};
use crate::labels::parse_label;
use crate::notice::{Attachment, MAX_TITLE, Notice, NoticeDraft, NoticeKind, now_utc};
use crate::ordering::{Ordering, StatusSource, await_ordering};
use crate::store::StoredNotice;

/// A checked draft, ready to encrypt.
pub(crate) struct Prepared {
    /// The notice.
    pub(crate) notice: Notice,
    /// Its label.
    pub(crate) label: Label,
    /// The authenticated data: the binary label, or a forward's marking
    /// ([`kring_protocol::notice_aad`]).
    pub(crate) aad: Vec<u8>,
    /// The notice's JSON.
    pub(crate) plaintext: Vec<u8>,
}

impl Prepared {
    /// Checks `notice` and binds to it `aad` (its label, or a forward's marking)
    /// with the blobs of its attachments.
    pub(crate) fn new(notice: Notice, aad: NoticeAad) -> Result<Prepared> {
        notice
            .validate()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let plaintext = notice
            .to_plaintext()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let label = aad.label.clone();
        Ok(Prepared {
            aad: aad.with_blobs(blob_refs(&notice.attachments)?).to_bytes(),
            notice,
            label,
            plaintext,
        })
    }
}

/// A community's group as the last sealing left it, and the store's MLS write
/// count then. Sealing reuses it while the count has not moved: nothing may have
/// changed the group's state in the store since (every call of openmls that
/// succeeds writes the change it made to the group through to the store, so the two
/// agree; a group is never kept after an error, when memory may be ahead of the
/// store). The count is only meaningful with one owner of the store, the `Client`.
/// A sync drops a group whose count moved. Decoding the group is about two fifths
/// of sealing a small filing.
pub(crate) struct LoadedGroup {
    pub(crate) community: String,
    pub(crate) group: ClientGroup,
    pub(crate) mls_writes: u64,
}

/// A filing checked and encrypted on this device, its advanced ratchet on disk,
/// not sent yet ([`Client::seal_notices`]).
pub struct SealedFiling {
    community: String,
    prepared: Vec<Prepared>,
    epoch: u64,
    notices: Vec<NoticeUpload>,
}

impl SealedFiling {
    /// The group epoch the notices are encrypted in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many notices it holds.
    pub fn len(&self) -> usize {
        self.notices.len()
    }

    /// Whether it holds no notice (never, as sealed).
    pub fn is_empty(&self) -> bool {
        self.notices.is_empty()
    }

    /// The request [`Client::send_sealed`] sends, for a caller that sends it some
    /// other way. This device then never stores these notices of its own (it cannot
    /// decrypt its own messages), so a filing sent so is not finished here.
    pub fn request(&self) -> Request {
        Request::FileNotices {
            community: self.community.clone(),
            notices: self.notices.clone(),
        }
    }
}

impl std::fmt::Debug for SealedFiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the notices' content.
        f.debug_struct("SealedFiling")
            .field("community", &self.community)
            .field("notices", &self.notices.len())
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// A sealed filing sent to the home relay, its answer not taken yet
/// ([`Client::send_sealed`], [`Client::finish_filing`]).
pub struct PendingFiling {
    community: String,
    sent: Sent,
    _in_flight: InFlightGuard,
}

/// What a filing sent is: its notices, epoch, request and the task taking its answer.
struct Sent {
    prepared: Vec<Prepared>,
    epoch: u64,
    request: Request,
    answer: AnswerTask,
}

/// The task that takes a filing's answer.
type AnswerTask = tokio::task::JoinHandle<Result<Response>>;

/// How many filings of a device are sent and not finished.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, AtomicOrdering::SeqCst);
        InFlightGuard(Arc::clone(&self.0))
    }

    fn count(&self) -> usize {
        self.0.load(AtomicOrdering::SeqCst)
    }
}

/// One filing in flight; counted until dropped.
#[derive(Debug)]
struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}

impl PendingFiling {
    /// Whether the relay's answer is in ([`Client::finish_filing`] then waits for
    /// nothing but the local store, and the hub's ordering if asked to).
    pub fn is_answered(&self) -> bool {
        self.sent.answer.is_finished()
    }
}

impl std::fmt::Debug for PendingFiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFiling")
            .field("community", &self.community)
            .field("notices", &self.sent.prepared.len())
            .field("epoch", &self.sent.epoch)
            .finish()
    }
}

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
    /// community's maximum label (exit 3 with the reason), encrypts the notice JSON
    /// with the binary label as authenticated data in the current epoch, sends it,
    /// and stores it locally once the home relay has acknowledged it (it is durable
    /// there). It syncs only when needed: for a community this device has not
    /// joined yet, after an interrupted commit, or when the relay answers that the
    /// device's epoch is behind (`WrongEpoch`; then it encrypts again).
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
        let mut filed = self.file_notices(vec![draft]).await?;
        match (filed.pop(), filed.is_empty()) {
            (Some(one), true) => Ok(one),
            _ => Err(ClientError::Protocol(
                "one notice filed, but not one answer".into(),
            )),
        }
    }

    /// Files several notices of one community in one request, in this order, all
    /// or none: like [`file_notice`](Self::file_notice), but with one group load,
    /// one local flush, one round trip and one fsync at the relay for all of them (at
    /// most [`MAX_NOTICES_PER_FILING`]). With an ordering wait, it waits for the
    /// last notice (the hub orders a relay's notices in filing order) and then asks
    /// once for each other one still queued.
    pub async fn file_notices(&mut self, drafts: Vec<NoticeDraft>) -> Result<Vec<FiledNotice>> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let sealed = self.seal_notices(drafts).await?;
        let pending = self.send_sealed(sealed).await?;
        self.finish_filing(pending).await
    }

    /// The first half of [`file_notices`](Self::file_notices): checks the drafts,
    /// uploads their attachments, encrypts them and puts the advanced ratchet on
    /// disk. Nothing is sent yet: [`send_sealed`](Self::send_sealed) sends it and
    /// [`finish_filing`](Self::finish_filing) takes the answer.
    ///
    /// A filer with many notices keeps the relay busy by sealing the next filing
    /// while the previous one is on its way:
    ///
    /// ```text
    /// let mut pending = None;
    /// while let Some(drafts) = next() {
    ///     let sealed = client.seal_notices(drafts).await;    // meanwhile, the previous
    ///     if let Some(p) = pending.take() {                  // filing travels
    ///         client.finish_filing(p).await?;                // (finished even when
    ///     }                                                  // sealing failed)
    ///     pending = Some(client.send_sealed(sealed?).await?);
    /// }
    /// if let Some(p) = pending.take() {
    ///     client.finish_filing(p).await?;
    /// }
    /// ```
    ///
    /// Several filings may be in flight: send each as soon as it is sealed, and
    /// finish them in the order sent. The relay orders one connection's filings in
    /// the order they were sent, so members read them in that order too. While
    /// filings are in flight, sealing starts no change of epoch of this device's own
    /// (a due leaf update, a commit of pending proposals): those wait for a sealing
    /// with nothing in flight. A filing sealed in an epoch that has passed by the
    /// time it reaches the relay is refused (`WrongEpoch`), and so is every later
    /// one sealed in that epoch; [`finish_filing`](Self::finish_filing) seals each
    /// again, in the order they are finished. Every filing sent must be finished:
    /// only then does this device store its own notices (it cannot decrypt them
    /// later).
    pub async fn seal_notices(&mut self, drafts: Vec<NoticeDraft>) -> Result<SealedFiling> {
        let Some(first) = drafts.first() else {
            return Err(ClientError::Usage(
                "a filing needs at least one notice".into(),
            ));
        };
        if drafts.len() > MAX_NOTICES_PER_FILING {
            return Err(ClientError::Usage(format!(
                "{} notices in one filing; at most {MAX_NOTICES_PER_FILING}",
                drafts.len()
            )));
        }
        self.reset_transaction()?;
        let community = self.resolve_community(&first.community)?;
        let mut prepared = Vec::with_capacity(drafts.len());
        for mut draft in drafts {
            let files = std::mem::take(&mut draft.attachments);
            // Label and fields are checked before any file is sealed or sent.
            let mut p = self.prepare(&community, draft, Vec::new())?;
            if !files.is_empty() {
                let attachments = self.upload_with_progress(&community, &files).await?;
                p = self.reprepare(p, attachments)?;
            }
            prepared.push(p);
        }
        let keep_order = self.in_flight.count() > 0;
        self.seal_prepared(&community, prepared, false, keep_order)
            .await
    }

    /// Files checked notices of `community` (see [`file_notices`](Self::file_notices)):
    /// checks each label against the community's maximum, encrypts with each one's
    /// authenticated data, sends, stores.
    pub(crate) async fn file_prepared(
        &mut self,
        community: &str,
        prepared: Vec<Prepared>,
    ) -> Result<Vec<FiledNotice>> {
        let keep_order = self.in_flight.count() > 0;
        let sealed = self
            .seal_prepared(community, prepared, false, keep_order)
            .await?;
        let pending = self.send_sealed(sealed).await?;
        self.finish_filing(pending).await
    }

    /// Checks each label against the community's maximum and encrypts each notice
    /// with its authenticated data in the current epoch (after the sync, leaf
    /// update or commit of pending proposals that filing needs first); the advanced
    /// ratchet is on disk when it returns. `synced`: this device synced just before.
    /// `keep_order`: filings are in flight, so no change of epoch is started here
    /// (a due leaf update or a commit of pending proposals waits).
    async fn seal_prepared(
        &mut self,
        community: &str,
        prepared: Vec<Prepared>,
        mut synced: bool,
        keep_order: bool,
    ) -> Result<SealedFiling> {
        let community = community.to_string();
        // No sync first: the home relay refuses a filing in an epoch older than the
        // one it knows (WrongEpoch), and then this device syncs and encrypts again.
        // A community this device has not joined yet needs a sync to be found.
        if !synced && !self.store.community(&community)?.is_some_and(|r| r.active) {
            self.sync().await?;
            synced = true;
        }
        let record = self
            .store
            .community(&community)?
            .filter(|r| r.active)
            .ok_or_else(|| not_member(&community))?;
        let max: Label = record.max_label.parse().map_err(|e| {
            ClientError::Protocol(format!("stored maximum label of {community}: {e}"))
        })?;
        for p in &prepared {
            let decision = within(&p.label, &max);
            if !decision.allowed {
                return Err(ClientError::PolicyDenied(format!(
                    "label {} is above the maximum label {max} of {community}: {}",
                    p.label,
                    decision.reason()
                )));
            }
        }

        loop {
            let mut group = self.sealing_group(&community)?;
            if !synced && !keep_order && self.group_update_due(&community, &group)? {
                // This device's leaf is older than the community's update period (it
                // was offline, say): catch up and update it before filing.
                self.sync().await?;
                synced = true;
                continue;
            }
            if group.has_pending_commit() {
                if !synced {
                    // An interrupted commit: a sync learns whether the hub took it.
                    self.sync().await?;
                    synced = true;
                    continue;
                }
                // Left over from an interrupted commit, not accepted since (we synced).
                group.commit_refused(&self.provider)?;
            }
            if group.has_pending_proposals() && !keep_order {
                self.commit_pending_proposals(&community, &mut |_| {})
                    .await?;
                group = self.load_group(&community)?;
            }
            let epoch = group.epoch();
            let mut notices = Vec::with_capacity(prepared.len());
            for p in &prepared {
                notices.push(NoticeUpload {
                    notice_id: p.notice.id,
                    message: group.encrypt(&self.provider, &self.signer, &p.aad, &p.plaintext)?,
                });
            }
            // The advanced ratchet is on disk before anything leaves the device.
            self.store.flush()?;
            // Kept only with its writes in the store (not buffered for a rollback).
            if matches!(self.store.in_transaction(), Ok(false)) {
                self.sealing = Some(LoadedGroup {
                    community: community.clone(),
                    group,
                    mls_writes: self.store.mls_writes(),
                });
            }
            return Ok(SealedFiling {
                community,
                prepared,
                epoch,
                notices,
            });
        }
    }

    /// Drops the group the last sealing left loaded if the store's MLS state may
    /// have changed since (its secrets are not kept in memory past their use).
    pub(crate) fn forget_stale_group(&mut self) {
        if self
            .sealing
            .as_ref()
            .is_some_and(|l| l.mls_writes != self.store.mls_writes())
        {
            self.sealing = None;
        }
    }

    /// The group of `community` as the last sealing left it, if nothing that may
    /// change MLS state happened since ([`Store::mls_writes`](crate::store::Store::mls_writes)
    /// unmoved); else loaded from the store. Taken: an error while sealing leaves
    /// nothing behind.
    fn sealing_group(&mut self, community: &str) -> Result<ClientGroup> {
        match self.sealing.take() {
            Some(loaded)
                if loaded.community == community
                    && loaded.mls_writes == self.store.mls_writes() =>
            {
                Ok(loaded.group)
            }
            _ => self.load_group(community),
        }
    }

    /// Sends a sealed filing to the home relay and returns at once; the answer is
    /// taken by [`finish_filing`](Self::finish_filing). A filing dropped unfinished
    /// may still reach the relay and be delivered to the other members, but this
    /// device then never stores those notices of its own (a sender cannot decrypt
    /// its own messages): finish every filing sent.
    ///
    /// Filings sent one after another are ordered by the relay in the order sent
    /// (see [`seal_notices`](Self::seal_notices)); that order holds within one
    /// connection, so a connection lost while filings are in flight is not replaced
    /// until they are finished.
    pub async fn send_sealed(&mut self, sealed: SealedFiling) -> Result<PendingFiling> {
        let lost = self.conn.as_ref().is_some_and(|c| c.is_closed());
        if lost && self.in_flight.count() > 0 {
            return Err(ClientError::Unreachable {
                relay: self.profile.relay_id.clone(),
                reason: "the connection ended while filings were in flight; finish them \
                         before sending more"
                    .into(),
            });
        }
        let conn = self.connect().await?.clone();
        let SealedFiling {
            community,
            prepared,
            epoch,
            notices,
        } = sealed;
        let request = Request::FileNotices {
            community: community.clone(),
            notices,
        };
        let answer = conn.send_in_order(&request).await?;
        Ok(PendingFiling {
            community,
            sent: Sent {
                prepared,
                epoch,
                request,
                answer,
            },
            _in_flight: self.in_flight.enter(),
        })
    }

    /// Takes the home relay's answer to a filing sent with
    /// [`send_sealed`](Self::send_sealed) and stores the notices (then, for a
    /// community hubbed at another relay, waits for the hub's ordering as
    /// [`file_notices`](Self::file_notices) does). A filing the relay refuses as
    /// sealed in an old epoch is synced, sealed again and sent again. One refused as
    /// over the relay's rate limit (before the relay read it) is sent again as it
    /// was after the pause the relay names, for at most [`RATE_LIMIT_PATIENCE`], but
    /// only while no other filing of this device is in flight: a later one may have
    /// been ordered meanwhile, and members read a sender's messages only while they
    /// are at most 64 generations behind the newest they have read (sealing it again
    /// would put it behind a filing sealed ahead and not sent yet). With others in
    /// flight the refusal is returned: those notices are not filed.
    pub async fn finish_filing(&mut self, pending: PendingFiling) -> Result<Vec<FiledNotice>> {
        let PendingFiling {
            community,
            sent,
            _in_flight,
        } = pending;
        let Sent {
            mut prepared,
            mut epoch,
            mut request,
            mut answer,
        } = sent;
        let mut attempt = 1;
        let mut paused = Duration::ZERO;
        loop {
            let reply = (&mut answer)
                .await
                .map_err(|e| ClientError::Protocol(format!("the filing's request ended: {e}")))?;
            match reply {
                Ok(Response::Filed { hub, seqs, .. }) if seqs.len() == prepared.len() => {
                    let notices = prepared.into_iter().map(|p| p.notice).collect();
                    return self.filed(notices, epoch, hub, seqs).await;
                }
                Ok(other) => return Err(unexpected("FileNotices", &other)),
                Err(ClientError::Relay(ErrorCode::WrongEpoch { .. }))
                    if attempt < COMMIT_ATTEMPTS =>
                {
                    attempt += 1;
                    self.sync().await?;
                    // Synced: sealed in the epoch now current.
                    let sealed = self
                        .seal_prepared(&community, prepared, true, false)
                        .await?;
                    Sent {
                        prepared,
                        epoch,
                        request,
                        answer,
                    } = self.send_sealed(sealed).await?.sent;
                }
                Err(ClientError::Relay(ErrorCode::RateLimited { retry_after_ms }))
                    if paused < RATE_LIMIT_PATIENCE && self.in_flight.count() <= 1 =>
                {
                    let pause = Duration::from_millis(retry_after_ms.clamp(1, 1000));
                    tracing::debug!(?pause, "filing rate limited by the relay; sending again");
                    tokio::time::sleep(pause).await;
                    paused += pause;
                    answer = self.connect().await?.send_in_order(&request).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks a draft of `community` against the user's clearance and turns it into
    /// a notice and its plaintext.
    fn prepare(
        &self,
        community: &str,
        draft: NoticeDraft,
        attachments: Vec<Attachment>,
    ) -> Result<Prepared> {
        if self.resolve_community(&draft.community)? != community {
            return Err(ClientError::Usage(format!(
                "one filing is for one community: {} is not {community}",
                draft.community
            )));
        }
        let label = parse_label(&draft.label)?;
        let decision = self.check_clearance(&label);
        if !decision.allowed {
            return Err(ClientError::PolicyDenied(format!(
                "label {label} is not within your clearance: {}",
                decision.reason()
            )));
        }
        let notice = Notice {
            id: Uuid::new_v4(),
            community: community.to_string(),
            label: label.to_string(),
            kind: draft.kind,
            category: draft.category,
            title: draft.title,
            body: draft.body,
            sender: self.user(),
            filed_at: now_utc(),
            in_reply_to: draft.in_reply_to,
            stix: draft.stix,
            forwarded_from: None,
            attachments,
        };
        Prepared::new(notice, NoticeAad::plain(label))
    }

    /// `p` with `attachments` (uploaded since it was prepared).
    fn reprepare(&self, p: Prepared, attachments: Vec<Attachment>) -> Result<Prepared> {
        let mut notice = p.notice;
        notice.attachments = attachments;
        Prepared::new(notice, NoticeAad::plain(p.label))
    }

    /// The home relay acknowledged `notices` (durable there): stores them (one
    /// flush) and, for a community hubbed elsewhere, waits for the hub's ordering.
    /// A notice whose sequence number is not known yet is filled in by its ordered
    /// entry when that comes back, instead of storing a second copy.
    async fn filed(
        &mut self,
        notices: Vec<Notice>,
        epoch: u64,
        hub: String,
        seqs: Vec<Option<u64>>,
    ) -> Result<Vec<FiledNotice>> {
        let home = self.profile.relay_id.clone();
        let expected_hub = crate::ids::hub_of(&notices[0].community).to_string();
        if hub != expected_hub {
            return Err(ClientError::Protocol(format!(
                "the relay filed notices of {} for hub {hub}, not {expected_hub}",
                notices[0].community
            )));
        }
        self.store.defer_flush(true);
        let stored: Result<()> = notices.iter().zip(&seqs).try_for_each(|(notice, seq)| {
            self.store.insert_notice(&StoredNotice {
                notice: notice.clone(),
                seq: *seq,
                own: true,
                ordered_at: None,
            })?;
            Ok(())
        });
        self.store.defer_flush(false);
        stored?;
        self.store.flush()?;
        let mut out: Vec<FiledNotice> = notices
            .into_iter()
            .zip(seqs)
            .map(|(notice, seq)| {
                tracing::info!(community = %notice.community, notice_id = %notice.id, ?seq,
                    %home, %hub, "notice filed");
                FiledNotice {
                    seq,
                    epoch,
                    home: home.clone(),
                    hub: hub.clone(),
                    ordering: match seq {
                        Some(seq) => Ordering::Ordered { seq },
                        None => Ordering::Queued {
                            waited: Duration::ZERO,
                        },
                    },
                    refusals: Vec::new(),
                    notice,
                }
            })
            .collect();
        let (wait, limit) = (self.timeouts.ordering, self.timeouts.request);
        let Some(last) = out.last().filter(|f| f.seq.is_none()) else {
            return Ok(out);
        };
        if wait.is_zero() {
            return Ok(out);
        }
        // The hub orders this relay's notices in filing order: once the last is
        // settled, the others are too (or still queued behind a cut link).
        let last_id = last.notice.id;
        let waited = await_ordering(self, last_id, wait, limit).await;
        if let Some(e) = &waited.failure {
            self.warn(format!(
                "notice {last_id} is queued at {home}, but whether hub {hub} ordered it could \
                 not be learned: {e}"
            ));
        }
        let n = out.len();
        for (i, f) in out.iter_mut().enumerate() {
            let (ordering, refusals) = if i + 1 == n {
                (waited.ordering.clone(), waited.refusals.clone())
            } else if waited.failure.is_none() {
                match self.status(f.notice.id, limit).await {
                    Ok(status) if status.notice_id == f.notice.id => {
                        let queued = Ordering::Queued { waited: wait };
                        (
                            Ordering::from_status(&status).unwrap_or(queued),
                            status.refusals,
                        )
                    }
                    _ => continue,
                }
            } else {
                continue;
            };
            if let Ordering::Ordered { seq } = ordering {
                self.store.set_notice_seq(f.notice.id, seq)?;
                f.seq = Some(seq);
                tracing::info!(community = %f.notice.community, seq, notice_id = %f.notice.id,
                    "notice ordered by the hub");
            }
            f.ordering = match ordering {
                Ordering::Queued { .. } => Ordering::Queued { waited: wait },
                other => other,
            };
            f.refusals = refusals;
        }
        Ok(out)
    }

    /// Files a reply to a stored notice: same community and category, kind `reply`,
    /// title `Re: ` and the original title unless given.
    pub async fn reply(
        &mut self,
        to: &str,
        label: &str,
        body: String,
        title: Option<String>,
    ) -> Result<FiledNotice> {
        self.reply_with(to, label, body, title, Vec::new()).await
    }

    /// [`reply`](Self::reply) with files attached.
    pub async fn reply_with(
        &mut self,
        to: &str,
        label: &str,
        body: String,
        title: Option<String>,
        attachments: Vec<std::path::PathBuf>,
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
            attachments,
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
