//! A relay restored from a backup ([`crate::backup`]) is behind: its peers and its
//! devices may have seen log entries and outbox items it no longer has. It must
//! never hand out again a sequence number one of them has seen (they would skip the
//! new entry or item as a repeat, and lose it).
//!
//! `kring-relay restore` marks the store restored (`R/state`). On every start of a
//! restored relay, until each configured peer has answered once:
//! - **Outboxes**: nothing is sent to a peer before it has said which item of this
//!   relay's outbox it applied last ([`FedRequest::Whereabouts`]); the items
//!   queued since the restore are then moved past it ([`outbox_shift`]) and the
//!   outbox numbering continues after it.
//! - **Logs of communities hubbed here**: nothing new is ordered in a community
//!   ([`Recovery::may_order`]) before every peer with members in it has answered with
//!   the last seq of its copy; the entries it holds beyond this relay's log are
//!   fetched ([`FedRequest::FetchLog`]), stored under their seqs (commits are
//!   replayed into the MLS state) and passed on to other member relays that lack
//!   them; numbering resumes after the highest seq any peer has seen, withheld
//!   entries included.
//! - **Devices** report their cursors before they subscribe ([`Request::Cursors`]):
//!   a cursor past the log moves the numbering past it ([`device_verdict`]); a
//!   device that had seen old entries at seqs numbered again since the restore is
//!   told to move its cursor back, and skips what it has by notice id.
//!
//! What cannot be recovered (entries no peer holds, communities created after the
//! backup, items peers sent that this relay had applied) is written to the log and
//! the audit log (`restore-recovery`).
//!
//! [`FedRequest::Whereabouts`]: kring_protocol::wire::FedRequest::Whereabouts
//! [`FedRequest::FetchLog`]: kring_protocol::wire::FedRequest::FetchLog
//! [`Request::Cursors`]: kring_protocol::wire::Request::Cursors

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kring_protocol::wire::{
    EntryKind, ErrorCode, FedRequest, FedResponse, LogEntry, LogMark, Response, Whereabouts, limits,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::backup::{BackupError, BackupHeader};
use crate::error::RelayError;
use crate::records::{CommunityRecord, MemberRecord, NoticeRecord, OutboxRecord};
use crate::relay::{Caller, Relay, home_relay, now};
use crate::store::{Batch, Engine, decode, get_obj};

/// Store keys of a restored relay (`R/`).
pub use crate::keyspace::recovery as keys;

use crate::keyspace::federation::{
    applied as applied_key, outbox as outbox_key, outbox_next as outbox_next_key, outbox_prefix,
};

/// True for keys of the recovery state (not taken from a backup).
pub fn is_recovery_key(key: &[u8]) -> bool {
    key.starts_with(keys::PREFIX)
}

/// What `R/state` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreState {
    /// When the backup was made (unix seconds).
    pub backup_created_at: i64,
    /// When it was restored.
    pub restored_at: i64,
    /// Every pair of the backup is in (false: the restore was interrupted).
    pub complete: bool,
    /// The first start has recorded where logs and outboxes stood.
    pub initialized: bool,
    /// Every configured peer has answered: recovery is over.
    pub finished: bool,
}

/// What a peer said when it answered, kept for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    /// The last item of this relay's outbox it had applied.
    pub applied: u64,
    /// By how much the items queued since the restore moved.
    pub shifted: u64,
    /// When.
    pub at: i64,
}

/// The batch that marks a store as being restored from `header` (written first).
pub fn mark_restoring(header: &BackupHeader) -> Result<Batch, BackupError> {
    let mut b = Batch::default();
    b.put_obj(
        keys::STATE.to_vec(),
        &RestoreState {
            backup_created_at: header.created_at,
            restored_at: 0,
            complete: false,
            initialized: false,
            finished: false,
        },
    )?;
    Ok(b)
}

/// The batch that marks a store as restored from `header` (written last).
pub fn mark_restored(header: &BackupHeader, now: i64) -> Result<Batch, BackupError> {
    let mut b = Batch::default();
    b.put_obj(
        keys::STATE.to_vec(),
        &RestoreState {
            backup_created_at: header.created_at,
            restored_at: now,
            complete: true,
            initialized: false,
            finished: false,
        },
    )?;
    Ok(b)
}

/// The restore state of a store, if it was restored.
pub fn load(engine: &dyn Engine) -> Result<Option<RestoreState>, RelayError> {
    get_obj(engine, keys::STATE)
}

// ----- decisions (pure) ------------------------------------------------------------

/// How far the outbox items queued since the restore must move so that none has a
/// seq the peer has applied: the peer applied up to `peer_applied`; the first item
/// queued since the restore has seq `first_since_restore`.
pub fn outbox_shift(first_since_restore: u64, peer_applied: u64) -> u64 {
    peer_applied
        .saturating_add(1)
        .saturating_sub(first_since_restore)
}

/// How far past where a restored log stood at the restore (its base) a peer's mark
/// or a device's cursor may move the numbering. Entries ordered between the backup
/// and the crash are fewer than this in any real deployment; the bound keeps a
/// hostile or faulty report from exhausting the seq space (every later seq is
/// `last_seq + 1`) or skipping the log arbitrarily far ahead.
pub const MAX_RAISE: u64 = 1 << 20;

/// `reported`, capped at what a report may move a log whose base is `base` to.
pub fn capped_raise(reported: u64, base: u64) -> u64 {
    reported.min(base.saturating_add(MAX_RAISE))
}

/// True if `peer` is the home relay of one of `members`: only such a relay holds a
/// log hubbed here, so only its marks are acted on and only it is sent entries.
pub fn has_members(members: &[String], peer: &str) -> bool {
    members.iter().any(|m| home_relay(m) == peer)
}

/// True if an entry recovered from a peer for a log hubbed at `own` (with
/// `members`) names a sender that could have had it ordered here: this relay
/// itself, or a user homed at this relay or at a relay with members.
pub fn plausible_sender(members: &[String], own: &str, sender: &str) -> bool {
    sender == own || {
        let home = home_relay(sender);
        home == own || has_members(members, home)
    }
}

/// True if an entry of `next` bytes may join a FetchLog answer of `taken` entries
/// holding `used` bytes under a budget of `max` bytes: the answer never exceeds the
/// budget, except that its first entry always goes (so every answer makes progress).
pub fn fits_budget(taken: usize, used: usize, next: usize, max: usize) -> bool {
    taken == 0 || used.saturating_add(next) <= max
}

/// What to do with a device's cursor `cursor` in a community hubbed here whose log
/// ends at `last_seq` (and stood at `base` at the restore), where numbering resumed
/// after the restore at `resumed` (the first seq ordered here since, if any). The
/// numbering moves only while the recovery is active (`recovering`), and at most
/// [`MAX_RAISE`] past `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceVerdict {
    /// Move the log's last seq up to this: the device has seen entries up to it
    /// that this relay no longer has, and new entries must come after them.
    pub raise_to: Option<u64>,
    /// Tell the device to move its cursor back to this: it has seen, at seqs from
    /// `resumed` on, old entries that new ones replaced.
    pub rewind_to: Option<u64>,
}

/// See [`DeviceVerdict`].
pub fn device_verdict(
    cursor: u64,
    last_seq: u64,
    base: u64,
    resumed: Option<u64>,
    recovering: bool,
) -> DeviceVerdict {
    let raise = capped_raise(cursor, base);
    DeviceVerdict {
        raise_to: (recovering && raise > last_seq).then_some(raise),
        rewind_to: resumed
            .filter(|r| cursor >= *r)
            .map(|r| r.saturating_sub(1)),
    }
}

/// The seqs in `(from, to]` missing from `present` (ascending), as ranges.
pub fn missing_ranges(
    present: impl IntoIterator<Item = u64>,
    from: u64,
    to: u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = from.saturating_add(1);
    for seq in present {
        if seq < next {
            continue;
        }
        if seq > to {
            break;
        }
        if seq > next {
            out.push((next, seq - 1));
        }
        if seq == u64::MAX {
            return out;
        }
        next = seq + 1;
    }
    if next <= to {
        out.push((next, to));
    }
    out
}

/// The relays other than `own` with members in a community that have not
/// answered (`awaiting`): ordering in the community waits for them.
pub fn blocking_peers<'a>(
    members: &'a [String],
    own: &str,
    awaiting: &BTreeSet<String>,
) -> BTreeSet<&'a str> {
    members
        .iter()
        .map(|m| home_relay(m))
        .filter(|r| *r != own && awaiting.contains(*r))
        .collect()
}

fn ranges_text(ranges: &[(u64, u64)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .take(20)
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let more = if ranges.len() > 20 { ", …" } else { "" };
    format!("{}{more}", parts.join(", "))
}

// ----- state held by the relay ----------------------------------------------------

/// A relay's recovery state in memory.
#[derive(Debug)]
pub struct Recovery {
    /// The store was restored (ever): device cursors are checked, numbering
    /// resumptions recorded.
    restored: bool,
    /// Recovery is not over.
    active: AtomicBool,
    /// Peers that have not answered.
    awaiting: Mutex<BTreeSet<String>>,
    /// What each answered peer holds of the logs hubbed here (for passing on
    /// recovered entries).
    marks: Mutex<BTreeMap<(String, String), u64>>,
    changed: watch::Sender<u64>,
}

impl Recovery {
    /// A relay that was never restored.
    pub fn none() -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            restored: false,
            active: AtomicBool::new(false),
            awaiting: Mutex::new(BTreeSet::new()),
            marks: Mutex::new(BTreeMap::new()),
            changed,
        }
    }

    /// Loads the state at start; on the first start after a restore, records where
    /// every hubbed log and outbox stood.
    pub fn open(
        engine: &dyn Engine,
        relay: &str,
        peers: &[crate::config::PeerToml],
    ) -> Result<Self, RelayError> {
        let Some(mut state) = load(engine)? else {
            return Ok(Self::none());
        };
        if !state.complete {
            return Err(RelayError::Restore(
                "the data directory holds an interrupted restore: empty it and run \
                 `kring-relay restore` again",
            ));
        }
        let mut awaiting = BTreeSet::new();
        if !state.finished {
            if !state.initialized {
                let mut b = Batch::default();
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = engine.scan(
                        crate::store::keys::COMMUNITIES,
                        after.as_deref(),
                        limits::MAX_LIST,
                    )?;
                    let done = page.len() < limits::MAX_LIST;
                    for (k, v) in &page {
                        let mut rec: CommunityRecord = decode(k, v)?;
                        if rec.hub != relay {
                            continue;
                        }
                        if let Some(s) =
                            get_obj::<u64>(engine, &crate::store::keys::last_seq(&rec.id))?
                        {
                            rec.last_seq = rec.last_seq.max(s);
                        }
                        b.put_obj(keys::base(&rec.id), &rec.last_seq)?;
                    }
                    after = page.last().map(|(k, _)| k.clone());
                    if done || after.is_none() {
                        break;
                    }
                }
                for p in peers {
                    let next = get_obj::<u64>(engine, &outbox_next_key(&p.id))?
                        .unwrap_or(0)
                        .max(1);
                    b.put_obj(keys::outbox(&p.id), &next)?;
                }
                state.initialized = true;
                b.put_obj(keys::STATE.to_vec(), &state)?;
                engine.apply(b)?;
                engine.flush()?;
            }
            for p in peers {
                if engine.get(&keys::peer(&p.id))?.is_none() {
                    awaiting.insert(p.id.clone());
                }
            }
        }
        let (changed, _) = watch::channel(0);
        Ok(Self {
            restored: true,
            active: AtomicBool::new(!state.finished),
            awaiting: Mutex::new(awaiting),
            marks: Mutex::new(BTreeMap::new()),
            changed,
        })
    }

    /// True if the store was restored from a backup (ever).
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// True while recovery is not over.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Peers that have not answered.
    pub fn awaiting(&self) -> BTreeSet<String> {
        self.awaiting.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// True if nothing may be sent to `peer` yet.
    pub fn holds(&self, peer: &str) -> bool {
        self.active() && self.awaiting.lock().is_ok_and(|a| a.contains(peer))
    }

    /// Changes whenever a peer has answered.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether something new may be ordered in `community` (hubbed here, with
    /// `members`) and, in a restored relay, records where numbering resumed.
    pub fn may_order(
        &self,
        engine: &dyn Engine,
        b: &mut Batch,
        own: &str,
        community: &str,
        members: &[String],
        next_seq: u64,
    ) -> Result<(), RelayError> {
        if !self.restored {
            return Ok(());
        }
        if self.active() {
            let awaiting = self.awaiting.lock().map(|a| a.clone()).unwrap_or_default();
            let blocking = blocking_peers(members, own, &awaiting);
            if !blocking.is_empty() {
                let names: Vec<&str> = blocking.into_iter().collect();
                return Err(ErrorCode::Unavailable {
                    reason: format!(
                        "relay {own} was restored from a backup and orders nothing new in \
                         {community} until relay(s) {} have told it where they are",
                        names.join(", ")
                    ),
                }
                .into());
            }
        }
        let key = keys::resumed(community);
        if b.get(engine, &key)?.is_none() {
            b.put_obj(key, &next_seq)?;
        }
        Ok(())
    }

    /// Whether a community may be created with `id` (not while recovering; never
    /// an id lost in the restore).
    pub fn may_create(&self, engine: &dyn Engine, own: &str, id: &str) -> Result<(), RelayError> {
        if !self.restored {
            return Ok(());
        }
        if self.active() {
            return Err(ErrorCode::Unavailable {
                reason: format!(
                    "relay {own} was restored from a backup and creates no community until \
                     its peers have told it where they are"
                ),
            }
            .into());
        }
        if engine.get(&keys::lost(id))?.is_some() {
            return Err(ErrorCode::BadRequest {
                reason: format!("community {id} existed before this relay was restored"),
            }
            .into());
        }
        Ok(())
    }
}

// ----- the peer's side ---------------------------------------------------------------

/// Answers [`FedRequest::Whereabouts`] from `peer`.
pub fn whereabouts(relay: &Relay, peer: &str) -> Result<FedResponse, RelayError> {
    let engine = relay.engine();
    let applied = get_obj::<u64>(engine, &applied_key(peer))?.unwrap_or(0);
    let outbox_oldest = engine
        .scan(&outbox_prefix(peer), None, 1)?
        .into_iter()
        .next()
        .map(|(k, v)| decode::<OutboxRecord>(&k, &v).map(|r| r.seq))
        .transpose()?;
    let outbox_next = get_obj::<u64>(engine, &outbox_next_key(peer))?
        .unwrap_or(0)
        .max(1);
    let mut logs = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    'pages: loop {
        let page = engine.scan(crate::store::keys::COMMUNITIES, after.as_deref(), 1024)?;
        let done = page.len() < 1024;
        for (k, v) in &page {
            let rec: CommunityRecord = decode(k, v)?;
            let theirs = rec.hub == peer;
            let ours_with_them =
                rec.hub == relay.id() && rec.members.iter().any(|m| home_relay(m) == peer);
            if !theirs && !ours_with_them {
                continue;
            }
            let last = relay
                .community(&rec.id)?
                .map_or(rec.last_seq, |r| r.last_seq);
            logs.push(LogMark {
                community: rec.id,
                seq: last,
            });
            if logs.len() >= limits::MAX_LIST {
                break 'pages;
            }
        }
        after = page.last().map(|(k, _)| k.clone());
        if done || after.is_none() {
            break;
        }
    }
    Ok(FedResponse::Whereabouts(Whereabouts {
        applied,
        outbox_oldest,
        outbox_next,
        logs,
    }))
}

/// Answers [`FedRequest::FetchLog`] from `peer`: only the community's hub (for
/// its own log, restored) or a relay with members in a community hubbed here.
pub fn fetch_log(
    relay: &Relay,
    peer: &str,
    community: &str,
    after: u64,
) -> Result<FedResponse, RelayError> {
    let rec = relay.community(community)?.ok_or(ErrorCode::NotFound {
        what: format!("community {community}"),
    })?;
    let hubbed_here = rec.hub == relay.id();
    let allowed = if hubbed_here {
        rec.members.iter().any(|m| home_relay(m) == peer)
    } else {
        rec.hub == peer
    };
    if !allowed {
        return Err(ErrorCode::NotMember.into());
    }
    let engine = relay.engine();
    let prefix = crate::store::keys::log_prefix(community);
    let readable = relay.readable_upto(&prefix);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let max_bytes = relay.limits().max_frame / 2;
    for (k, v) in engine.scan(
        &prefix,
        Some(&crate::store::keys::log(community, after)),
        limits::MAX_LOG_PAGE,
    )? {
        let entry: LogEntry = decode(&k, &v)?;
        if entry.seq > readable {
            break;
        }
        if hubbed_here && let EntryKind::Notice { label, .. } = &entry.kind {
            // As the fan-out would: nothing above the peer's accreditation.
            let allowed = kring_protocol::notice_aad::label_of(label).is_ok_and(|l| {
                kring_policy::decide_opt(Some(&l), relay.relay_accreditation(peer).as_ref()).allowed
            });
            if !allowed {
                continue;
            }
        }
        if !fits_budget(entries.len(), bytes, v.len(), max_bytes) {
            break;
        }
        bytes += v.len();
        entries.push(entry);
    }
    Ok(FedResponse::Log {
        entries,
        last_seq: rec.last_seq.min(readable),
        community: hubbed_here.then(|| crate::relay::summary(&rec)),
    })
}

// ----- the restored relay's side -----------------------------------------------------

/// Starts asking every peer that has not answered (a restored relay).
pub fn start(relay: &Arc<Relay>) {
    let recovery = relay.recovery();
    if !recovery.active() {
        return;
    }
    let awaiting = recovery.awaiting();
    warn!(
        peers = %awaiting.iter().cloned().collect::<Vec<_>>().join(","),
        "restored from a backup: waiting for peers before ordering or sending anything new"
    );
    if awaiting.is_empty() {
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = finish(&relay).await {
                tracing::error!(error = %e, "cannot finish the recovery");
            }
        });
        return;
    }
    for peer in awaiting {
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                match ask(&relay, &peer).await {
                    Ok(()) => break,
                    Err(e) => {
                        info!(peer = %peer, error = %e, "recovery: peer not answered yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}

async fn call(relay: &Relay, peer: &str, request: FedRequest) -> Result<FedResponse, RelayError> {
    let unavailable = |why: String| {
        RelayError::Refused(ErrorCode::Unavailable {
            reason: format!("relay {peer}: {why}"),
        })
    };
    let conn = relay
        .peer(peer)
        .ok_or_else(|| unavailable("not a peer".into()))?
        .wait_conn(Duration::from_secs(30))
        .await
        .ok_or_else(|| unavailable("no link".into()))?;
    match crate::federation::call_peer(
        &conn,
        &request,
        relay.limits().max_frame,
        Duration::from_secs(15),
    )
    .await
    {
        Ok(FedResponse::Response(Response::Error(code))) => Err(RelayError::Refused(code)),
        Ok(r) => Ok(r),
        Err(why) => Err(unavailable(why)),
    }
}

/// Asks `peer` where it stands, recovers what it holds, and records its answer.
async fn ask(relay: &Arc<Relay>, peer: &str) -> Result<(), RelayError> {
    let FedResponse::Whereabouts(w) = call(relay, peer, FedRequest::Whereabouts).await? else {
        return Err(RelayError::UnexpectedAnswer {
            peer: peer.to_string(),
            request: "Whereabouts",
        });
    };
    let mut report: Vec<String> = Vec::new();
    for mark in &w.logs {
        if home_relay(&mark.community) == relay.id() {
            recover_log(relay, peer, mark, &mut report).await?;
        } else if home_relay(&mark.community) == peer {
            recover_copy(relay, peer, mark, &mut report).await?;
        }
    }
    recover_trust(relay, peer, &mut report).await?;
    // Outbox: the items queued since the restore move past what the peer applied.
    let applied_here = get_obj::<u64>(relay.engine(), &applied_key(peer))?.unwrap_or(0);
    let shifted = relay.write(|w_, b| {
        let first = b
            .get_obj::<u64>(relay.engine(), &keys::outbox(peer))?
            .unwrap_or(1);
        let shift = outbox_shift(first, w.applied);
        if shift > 0 {
            // Items from `first` on, highest first so no key is overwritten.
            let mut items = Vec::new();
            let mut after = Some(outbox_key(peer, first - 1));
            loop {
                let page = relay
                    .engine()
                    .scan(&outbox_prefix(peer), after.as_deref(), 1024)?;
                let done = page.len() < 1024;
                after = page.last().map(|(k, _)| k.clone());
                items.extend(page);
                if done {
                    break;
                }
            }
            for (k, v) in items.iter().rev() {
                let mut rec: OutboxRecord = decode(k, v)?;
                b.delete(k.clone());
                rec.seq += shift;
                b.put_obj(outbox_key(peer, rec.seq), &rec)?;
            }
        }
        let next = w_.outbox_next.entry(peer.to_string()).or_insert(1);
        *next = next.saturating_add(shift).max(w.applied.saturating_add(1));
        b.put_obj(outbox_next_key(peer), &*next)?;
        b.put_obj(
            keys::peer(peer),
            &PeerAnswer {
                applied: w.applied,
                shifted: shift,
                at: now(),
            },
        )?;
        Ok(shift)
    })?;
    if let Some(oldest) = w.outbox_oldest
        && oldest > applied_here.saturating_add(1)
    {
        report.push(format!(
            "items {}-{} relay {peer} sent here before the crash were applied then and are \
             lost here (what they carried is recovered only as far as logs hold it)",
            applied_here + 1,
            oldest - 1
        ));
    } else if w.outbox_oldest.is_none() && w.outbox_next > applied_here.saturating_add(1) {
        report.push(format!(
            "items {}-{} relay {peer} sent here before the crash were applied then and are \
             lost here (what they carried is recovered only as far as logs hold it)",
            applied_here + 1,
            w.outbox_next - 1
        ));
    }
    let detail = format!(
        "relay {peer} had applied outbox items up to {}; {} item(s) queued since the restore \
         moved by {shifted}{}{}",
        w.applied,
        if shifted > 0 { "the" } else { "no" },
        if report.is_empty() { "" } else { "; " },
        report.join("; ")
    );
    info!(peer = %peer, %detail, "recovery: peer answered");
    relay.write(|wr, b| {
        wr.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Admin,
                relay.id(),
                peer,
                "restore-recovery",
                kring_protocol::wire::bounded_reason(&detail),
            ),
        )
    })?;
    relay.durable().await?;
    let recovery = relay.recovery();
    let done = {
        let mut awaiting = recovery
            .awaiting
            .lock()
            .map_err(|_| RelayError::Poisoned("recovery"))?;
        awaiting.remove(peer);
        awaiting.is_empty()
    };
    recovery.changed.send_modify(|v| *v = v.wrapping_add(1));
    if done {
        finish(relay).await?;
    }
    Ok(())
}

/// The most statement pages asked of one peer during a recovery: enough for every
/// organisation of the trust map at its cap, and a bound against a peer that pages
/// for ever.
fn max_trust_pages(organisations: usize) -> usize {
    let per_page = kring_protocol::wire::limits::MAX_STATEMENTS.max(1);
    (organisations.max(1) * kring_protocol::revocation::MAX_STATEMENTS_PER_ORGANISATION)
        .div_ceil(per_page)
        + 1
}

/// Learns again the revocation statements and CRLs `peer` holds: this relay may
/// have applied some after its backup was taken and acknowledged them, so no
/// outbox sends them again. Each is checked as if it came in an outbox item
/// (signatures, trust map, per-organisation caps); what is new here is stored,
/// passed on and enforced.
async fn recover_trust(
    relay: &Arc<Relay>,
    peer: &str,
    report: &mut Vec<String>,
) -> Result<(), RelayError> {
    let first = call(relay, peer, FedRequest::Trust { after: None }).await?;
    let FedResponse::Response(Response::Trust(state)) = first else {
        return Err(RelayError::UnexpectedAnswer {
            peer: peer.to_string(),
            request: "Trust",
        });
    };
    let mut statements = state.statements;
    let mut after = statements.last().map(|s| s.user.clone());
    let mut pages = 1;
    let max_pages = max_trust_pages(relay.trust().iter().count());
    while let Some(last) = after.take() {
        if pages >= max_pages {
            report.push(format!(
                "relay {peer} offered more than {max_pages} pages of revocation statements; \
                 the rest were not read"
            ));
            break;
        }
        pages += 1;
        let answer = call(
            relay,
            peer,
            FedRequest::Trust {
                after: Some(last.clone()),
            },
        )
        .await?;
        let FedResponse::Response(Response::TrustStatements {
            statements: page,
            more,
        }) = answer
        else {
            return Err(RelayError::UnexpectedAnswer {
                peer: peer.to_string(),
                request: "Trust",
            });
        };
        let next = page.last().map(|s| s.user.clone());
        statements.extend(page);
        // Pages run in user-id order; anything else ends the paging.
        if more && next.as_ref().is_some_and(|n| *n > last) {
            after = next;
        }
    }
    let (mut learned, mut refused) = (0usize, Vec::new());
    for statement in &statements {
        let user = statement.user.clone();
        let known = relay.revocations().user_revoked(&user).is_some();
        // One batch each: accepting a statement changes the relay's memory too.
        match relay.write(|w, b| {
            crate::revocation::apply_statement(relay, w, b, peer, statement).map(|_| ())
        }) {
            Ok(()) => {}
            Err(RelayError::Refused(code)) => refused.push(format!("{user}: {code}")),
            Err(e) => return Err(e),
        }
        if !known && relay.revocations().user_revoked(&user).is_some() {
            learned += 1;
        }
    }
    let mut crls = 0usize;
    for copy in &state.crls {
        match relay.write(|w, b| {
            crate::revocation::accept_crl(relay, w, b, &copy.crl, &copy.issuer, Some(peer))
        }) {
            Ok(Some(_)) => crls += 1,
            Ok(None) => {}
            Err(RelayError::Refused(code)) => refused.push(format!("a CRL: {code}")),
            Err(e) => return Err(e),
        }
    }
    relay.durable().await?;
    relay.enforce_soon();
    info!(
        peer = %peer,
        statements = statements.len(),
        learned,
        newer_crls = crls,
        refused = refused.len(),
        "recovery: revocations read again from a peer"
    );
    if learned > 0 || crls > 0 {
        report.push(format!(
            "{learned} revocation statement(s) and {crls} CRL(s) relay {peer} holds were \
             missing here and are applied again"
        ));
    }
    if !refused.is_empty() {
        report.push(format!(
            "{} revocation statement(s) or CRL(s) from relay {peer} refused: {}",
            refused.len(),
            refused.join("; ")
        ));
    }
    Ok(())
}

/// Recovers from `peer` the entries of `mark.community` (hubbed here) it holds
/// beyond this relay's log, and moves the numbering past its last seq.
async fn recover_log(
    relay: &Arc<Relay>,
    peer: &str,
    mark: &LogMark,
    report: &mut Vec<String>,
) -> Result<(), RelayError> {
    let community = mark.community.as_str();
    let Some(rec) = relay.community(community)? else {
        let first = relay.write(|w, b| {
            let first = b.get(relay.engine(), &keys::lost(community))?.is_none();
            if first {
                b.put(keys::lost(community), Vec::new());
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Admin,
                        relay.id(),
                        community,
                        "restore-recovery",
                        format!(
                            "community {community} was created after the backup and is lost \
                             here (relay {peer} holds {} entries of it); re-create it under \
                             another name",
                            mark.seq
                        ),
                    ),
                )?;
            }
            Ok(first)
        })?;
        if first {
            warn!(%community, %peer, "recovery: community created after the backup is lost");
        }
        return Ok(());
    };
    if !has_members(&rec.members, peer) {
        // Only a relay with members holds this log: a mark from any other is ignored.
        warn!(%community, %peer, "recovery: ignored a mark from a relay without members");
        report.push(format!(
            "its mark for {community} was ignored: it has no members there"
        ));
        return Ok(());
    }
    let base = get_obj::<u64>(relay.engine(), &keys::base(community))?.unwrap_or(rec.last_seq);
    let target = capped_raise(mark.seq, base);
    if target < mark.seq {
        warn!(%community, %peer, seq = mark.seq, "recovery: capped a mark far past the log");
        report.push(format!(
            "its mark for {community} ({}) is more than {MAX_RAISE} past the log at the \
             restore ({base}): taken as {target}",
            mark.seq
        ));
    }
    let mut after = base;
    let mut recovered = 0usize;
    while after < target {
        let FedResponse::Log { entries, .. } = call(
            relay,
            peer,
            FedRequest::FetchLog {
                community: community.to_string(),
                after,
            },
        )
        .await?
        else {
            return Err(RelayError::UnexpectedAnswer {
                peer: peer.to_string(),
                request: "FetchLog",
            });
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        if last <= after {
            break;
        }
        for entry in entries {
            if entry.seq <= after || entry.seq > target {
                continue;
            }
            if !plausible_sender(&rec.members, relay.id(), &entry.sender) {
                report.push(format!(
                    "entry {} of {community} refused: its sender {} is homed at no relay \
                     with members",
                    entry.seq, entry.sender
                ));
                continue;
            }
            if store_recovered(relay, community, entry, report)? {
                recovered += 1;
            }
        }
        after = last;
    }
    // Numbering continues after everything the peer has seen (withheld entries too),
    // and member relays that lack entries get them.
    relay.write(|w, b| {
        let Some(mut rec) = relay.community_in(b, community)? else {
            return Ok(());
        };
        if target > rec.last_seq {
            rec.last_seq = target;
            crate::relay::put_last_seq(b, community, target)?;
        }
        let mut marks = relay
            .recovery()
            .marks
            .lock()
            .map_err(|_| RelayError::Poisoned("recovery"))?;
        marks.insert((peer.to_string(), community.to_string()), target);
        let prefix = crate::store::keys::log_prefix(community);
        for ((holder, c), seq) in marks.iter_mut() {
            if c != community || *seq >= rec.last_seq || !has_members(&rec.members, holder) {
                continue;
            }
            let mut from = crate::store::keys::log(community, *seq);
            loop {
                let page = relay
                    .engine()
                    .scan(&prefix, Some(&from), limits::MAX_LOG_PAGE)?;
                let done = page.len() < limits::MAX_LOG_PAGE;
                for (k, v) in &page {
                    let entry: LogEntry = decode(k, v)?;
                    crate::federation::enqueue_log_entry(relay, w, b, holder, &rec, &entry)?;
                }
                match page.last() {
                    Some((k, _)) if !done => from = k.clone(),
                    _ => break,
                }
            }
            *seq = rec.last_seq;
        }
        Ok(())
    })?;
    if recovered > 0 {
        info!(%community, %peer, recovered, "recovery: log entries recovered");
        report.push(format!("{recovered} entries of {community} recovered"));
    }
    Ok(())
}

/// Stores one entry of a log hubbed here recovered from a peer (unless held);
/// replays a commit into the MLS state. True if stored.
fn store_recovered(
    relay: &Relay,
    community: &str,
    entry: LogEntry,
    report: &mut Vec<String>,
) -> Result<bool, RelayError> {
    let header = match crate::federation::check_envelope(community, entry.seq, &entry) {
        Ok(h) => h,
        Err(why) => {
            report.push(format!("entry {} of {community} refused: {why}", entry.seq));
            return Ok(false);
        }
    };
    let seq = entry.seq;
    let mut note = None;
    let stored = relay.write(|_, b| {
        let key = crate::store::keys::log(community, seq);
        if b.get(relay.engine(), &key)?.is_some() {
            return Ok(false);
        }
        let Some(mut rec) = relay.community_in(b, community)? else {
            return Ok(false);
        };
        match &entry.kind {
            EntryKind::Notice { notice_id, .. } => {
                let nkey = crate::store::keys::notice(notice_id);
                if b.get(relay.engine(), &nkey)?.is_none() {
                    b.put_obj(
                        nkey,
                        &NoticeRecord {
                            community: community.to_string(),
                            sender: entry.sender.clone(),
                            seq: Some(seq),
                            refusals: Vec::new(),
                        },
                    )?;
                }
            }
            EntryKind::Handshake { .. } => {
                let replayed = (header.epoch == rec.epoch
                    && matches!(header.kind, kring_protocol::mls::MessageKind::Commit))
                .then(|| {
                    let overlay = crate::groups::Overlay::new(relay.engine_arc());
                    let revoked = relay.revocations();
                    crate::groups::process_handshake(
                        &overlay,
                        community,
                        &entry.message,
                        relay.anchors(),
                        &relay.trust(),
                        now() as u64,
                        &revoked,
                    )
                    .and_then(|staged| {
                        let added: Vec<String> =
                            staged.added.iter().map(|(u, _)| u.clone()).collect();
                        crate::groups::merge(
                            &overlay,
                            community,
                            staged,
                            relay.anchors(),
                            &relay.trust(),
                            now() as u64,
                        )
                        .map(|view| (overlay, view, added))
                    })
                });
                match replayed {
                    Some(Ok((overlay, view, added))) => {
                        b.extend(overlay.into_batch());
                        let before = std::mem::replace(&mut rec.members, view.members);
                        rec.admins = view.admins;
                        rec.epoch = view.epoch;
                        rec.last_seq = rec.last_seq.max(seq);
                        crate::relay::put_community(b, &rec)?;
                        relay.update_local_members(b, &rec, &before, seq)?;
                        let local: Vec<&String> = added
                            .iter()
                            .filter(|u| home_relay(u) == relay.id())
                            .collect();
                        if !local.is_empty() {
                            note = Some(format!(
                                "the Welcome of the commit at {seq} of {community} for {} is \
                                 lost: add them again",
                                local
                                    .iter()
                                    .map(|u| u.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    }
                    Some(Err(e)) => {
                        note = Some(format!(
                            "the commit at {seq} of {community} could not be replayed ({e}): \
                             the community needs re-creating"
                        ));
                    }
                    None => {
                        note = Some(format!(
                            "the handshake at {seq} of {community} (epoch {}) was not replayed \
                             (the group is at epoch {})",
                            header.epoch, rec.epoch
                        ));
                    }
                }
            }
        }
        b.put_obj(key, &entry)?;
        if seq > rec.last_seq {
            crate::relay::put_last_seq(b, community, seq)?;
        }
        Ok(true)
    })?;
    if let Some(note) = note {
        warn!(%community, seq, "recovery: {note}");
        report.push(note);
    }
    Ok(stored)
}

/// Recovers from `peer`, the hub of `mark.community`, the entries this relay's
/// copy lacks (notices; commits are stored and the community taken as the hub says
/// it stands now).
async fn recover_copy(
    relay: &Arc<Relay>,
    peer: &str,
    mark: &LogMark,
    report: &mut Vec<String>,
) -> Result<(), RelayError> {
    let community = mark.community.as_str();
    let Some(rec) = relay.community(community)? else {
        return Ok(());
    };
    let mut after = rec.last_seq;
    let mut recovered = 0usize;
    let mut now_summary = None;
    while after < mark.seq {
        let FedResponse::Log {
            entries,
            last_seq,
            community: summary,
        } = call(
            relay,
            peer,
            FedRequest::FetchLog {
                community: community.to_string(),
                after,
            },
        )
        .await?
        else {
            return Err(RelayError::UnexpectedAnswer {
                peer: peer.to_string(),
                request: "FetchLog",
            });
        };
        now_summary = summary.or(now_summary);
        let last = entries.last().map_or(last_seq, |e| e.seq);
        relay.write(|_, b| {
            for entry in &entries {
                if entry.seq <= after
                    || crate::federation::check_envelope(community, entry.seq, entry).is_err()
                {
                    continue;
                }
                let key = crate::store::keys::log(community, entry.seq);
                if b.get(relay.engine(), &key)?.is_none() {
                    b.put_obj(key, entry)?;
                    recovered += 1;
                }
            }
            crate::relay::put_last_seq(b, community, last.max(after))
        })?;
        if last <= after || entries.is_empty() {
            break;
        }
        after = last;
    }
    if let Some(summary) = now_summary {
        relay.write(|_, b| {
            let Some(mut rec) = relay.community_in(b, community)? else {
                return Ok(());
            };
            if rec.members != summary.members || rec.epoch != summary.epoch {
                let before = std::mem::replace(&mut rec.members, summary.members.clone());
                rec.admins = summary.admins.clone();
                rec.epoch = summary.epoch;
                crate::relay::put_community(b, &rec)?;
                relay.update_local_members(b, &rec, &before, rec.last_seq)?;
            }
            Ok(())
        })?;
    }
    if recovered > 0 {
        report.push(format!(
            "{recovered} entries of {community} recovered from its hub"
        ));
    }
    Ok(())
}

/// All peers have answered: reports what no peer held and ends the recovery.
async fn finish(relay: &Arc<Relay>) -> Result<(), RelayError> {
    let engine = relay.engine();
    let mut lines = Vec::new();
    for (k, v) in engine.scan(keys::BASES, None, usize::MAX)? {
        let community = String::from_utf8_lossy(&k[keys::BASES.len()..]).into_owned();
        let base: u64 = decode(&k, &v)?;
        let Some(rec) = relay.community(&community)? else {
            continue;
        };
        let prefix = crate::store::keys::log_prefix(&community);
        let present: Vec<u64> = engine
            .scan(
                &prefix,
                Some(&crate::store::keys::log(&community, base)),
                usize::MAX,
            )?
            .into_iter()
            .filter_map(|(k, _)| {
                k.get(k.len().saturating_sub(8)..)
                    .and_then(|s| s.try_into().ok())
                    .map(u64::from_be_bytes)
            })
            .collect();
        let missing = missing_ranges(present, base, rec.last_seq);
        if !missing.is_empty() {
            lines.push(format!(
                "entries {} of {community} are held by no peer (withheld from every other \
                 relay, or only for this relay's devices) and cannot be recovered",
                ranges_text(&missing)
            ));
        }
    }
    let detail = if lines.is_empty() {
        "recovery complete: every peer answered; nothing found missing".to_string()
    } else {
        format!("recovery complete: {}", lines.join("; "))
    };
    warn!(%detail, "recovery: complete");
    relay.write(|w, b| {
        let mut state = load(relay.engine())?
            .ok_or_else(|| RelayError::Restore("the restore state disappeared during recovery"))?;
        state.finished = true;
        b.put_obj(keys::STATE.to_vec(), &state)?;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Admin,
                relay.id(),
                "-",
                "restore-recovery",
                kring_protocol::wire::bounded_reason(&detail),
            ),
        )
    })?;
    relay.durable().await?;
    relay.recovery().active.store(false, Ordering::Release);
    relay
        .recovery()
        .changed
        .send_modify(|v| *v = v.wrapping_add(1));
    // Removals held back while recovering are proposed now.
    relay.enforce_soon();
    Ok(())
}

/// Answers [`Request::Cursors`](kring_protocol::wire::Request::Cursors) from a device.
pub async fn cursors(
    relay: &Relay,
    caller: &Caller,
    marks: Vec<LogMark>,
) -> Result<Response, RelayError> {
    if !relay.recovery().restored() {
        return Ok(Response::Cursors { rewind: Vec::new() });
    }
    let (rewind, notes) = relay.write(|w, b| {
        let mut rewind = Vec::new();
        let mut notes = Vec::new();
        for mark in &marks {
            let community = mark.community.as_str();
            if home_relay(community) != relay.id() {
                continue;
            }
            let reported = keys::device(&caller.id, community);
            if b.get(relay.engine(), &reported)?.is_some() {
                continue;
            }
            let Some(m) = b.get_obj::<MemberRecord>(
                relay.engine(),
                &crate::store::keys::member(&caller.id, community),
            )?
            else {
                continue;
            };
            let Some(rec) = relay.community_in(b, community)? else {
                continue;
            };
            let resumed = b.get_obj::<u64>(relay.engine(), &keys::resumed(community))?;
            let base = b
                .get_obj::<u64>(relay.engine(), &keys::base(community))?
                .unwrap_or(rec.last_seq);
            let verdict = device_verdict(
                mark.seq,
                rec.last_seq,
                base,
                resumed,
                relay.recovery().active(),
            );
            if let Some(raise) = verdict.raise_to {
                crate::relay::put_last_seq(b, community, raise)?;
                notes.push(format!(
                    "{} had seen {community} up to {raise}, past its log ({}): entries {}-{raise} \
                     are lost here and numbering continues after {raise}",
                    caller.id,
                    rec.last_seq,
                    rec.last_seq.saturating_add(1)
                ));
            }
            if let Some(to) = verdict.rewind_to {
                let ckey = crate::store::keys::cursor(&caller.id, community);
                let current = relay.cursor_of(&caller.id, community, &m)?;
                if current > to {
                    b.put(ckey, to.max(m.joined_seq).to_be_bytes().to_vec());
                }
                rewind.push(LogMark {
                    community: community.to_string(),
                    seq: to,
                });
                notes.push(format!(
                    "{} had seen old entries of {community} up to {}, numbered again since \
                     the restore from {}: its cursor goes back to {to}",
                    caller.id,
                    mark.seq,
                    to.saturating_add(1)
                ));
            }
            b.put(reported, Vec::new());
        }
        for note in &notes {
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Admin,
                    relay.id(),
                    caller.id.clone(),
                    "restore-recovery",
                    kring_protocol::wire::bounded_reason(note),
                ),
            )?;
        }
        Ok((rewind, notes))
    })?;
    for note in notes {
        warn!("recovery: {note}");
    }
    relay.durable().await?;
    Ok(Response::Cursors { rewind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_items_move_past_what_the_peer_applied() {
        // The peer applied up to 80; 50 was next at the restore: 50 → 81.
        assert_eq!(outbox_shift(50, 80), 31);
        // The peer is behind the backup: nothing moves.
        assert_eq!(outbox_shift(50, 40), 0);
        assert_eq!(outbox_shift(50, 49), 0);
        assert_eq!(outbox_shift(1, 0), 0);
    }

    #[test]
    fn a_device_past_the_log_moves_the_numbering_and_one_that_saw_reused_seqs_rewinds() {
        // Before anything new was ordered: the log moves past the device.
        assert_eq!(
            device_verdict(30, 20, 20, None, true),
            DeviceVerdict {
                raise_to: Some(30),
                rewind_to: None
            }
        );
        // Behind the log: nothing to do.
        assert_eq!(
            device_verdict(10, 20, 20, None, true),
            DeviceVerdict {
                raise_to: None,
                rewind_to: None
            }
        );
        // New entries from 21 on; the device saw old ones up to 25: back to 20.
        assert_eq!(
            device_verdict(25, 30, 20, Some(21), true),
            DeviceVerdict {
                raise_to: None,
                rewind_to: Some(20)
            }
        );
        // ... and up to 40, past the log: both.
        assert_eq!(
            device_verdict(40, 30, 20, Some(21), true),
            DeviceVerdict {
                raise_to: Some(40),
                rewind_to: Some(20)
            }
        );
        // It stopped before the resumption: nothing.
        assert_eq!(
            device_verdict(20, 30, 20, Some(21), true),
            DeviceVerdict {
                raise_to: None,
                rewind_to: None
            }
        );
    }

    #[test]
    fn a_device_moves_the_numbering_only_while_recovering_and_only_so_far() {
        // After the recovery: a cursor far past the log moves nothing.
        assert_eq!(device_verdict(u64::MAX, 30, 20, None, false).raise_to, None);
        assert_eq!(device_verdict(40, 30, 20, None, false).raise_to, None);
        // While recovering: at most MAX_RAISE past where the log stood at the restore.
        assert_eq!(
            device_verdict(u64::MAX, 30, 20, None, true).raise_to,
            Some(20 + MAX_RAISE)
        );
        // Already that far: nothing more.
        assert_eq!(
            device_verdict(u64::MAX, 20 + MAX_RAISE, 20, None, true).raise_to,
            None
        );
        assert_eq!(capped_raise(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(outbox_shift(1, u64::MAX), u64::MAX - 1);
    }

    #[test]
    fn the_next_seq_is_refused_rather_than_wrapped() {
        let mut rec = CommunityRecord {
            id: "x@bz".into(),
            hub: "bz".into(),
            max_label: Default::default(),
            admins: Vec::new(),
            members: Vec::new(),
            epoch: 0,
            last_seq: 41,
            created_by: "a@bz".into(),
            created_at: 0,
        };
        assert_eq!(crate::relay::next_seq(&rec).unwrap(), 42);
        rec.last_seq = u64::MAX;
        let err = crate::relay::next_seq(&rec).unwrap_err();
        assert!(
            matches!(err, RelayError::Refused(ErrorCode::Unavailable { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn marks_count_only_from_relays_with_members() {
        let members: Vec<String> = ["a@bz", "b@nctv"].iter().map(|s| s.to_string()).collect();
        assert!(has_members(&members, "nctv"));
        assert!(!has_members(&members, "aivd"), "a relay without members");
        assert!(!has_members(&members, ""));
        // Recovered entries: sent by this relay, or by users homed at member relays.
        assert!(plausible_sender(&members, "bz", "bz"));
        assert!(plausible_sender(&members, "bz", "x@bz"));
        assert!(plausible_sender(&members, "bz", "y@nctv"));
        assert!(!plausible_sender(&members, "bz", "z@aivd"));
        assert!(!plausible_sender(&members, "bz", "aivd"));
    }

    #[test]
    fn a_fetch_log_answer_keeps_one_entry_and_stays_within_its_budget() {
        let take = |sizes: &[usize], max: usize| {
            let (mut taken, mut used) = (0usize, 0usize);
            for &n in sizes {
                if !fits_budget(taken, used, n, max) {
                    break;
                }
                taken += 1;
                used += n;
            }
            (taken, used)
        };
        // One entry larger than the budget still goes alone.
        assert_eq!(take(&[500, 10], 100), (1, 500));
        // Otherwise the answer never passes the budget.
        assert_eq!(take(&[40, 40, 40], 100), (2, 80));
        assert_eq!(take(&[50, 50, 1], 100), (2, 100));
        assert_eq!(take(&[], 100), (0, 0));
    }

    #[test]
    fn missing_ranges_name_every_gap() {
        assert_eq!(
            missing_ranges([11, 12, 15, 18], 10, 20),
            vec![(13, 14), (16, 17), (19, 20)]
        );
        assert_eq!(missing_ranges([], 10, 12), vec![(11, 12)]);
        assert_eq!(
            missing_ranges([5, 11, 12], 10, 12),
            Vec::<(u64, u64)>::new()
        );
        assert_eq!(missing_ranges([11, 30], 10, 12), vec![(12, 12)]);
        assert_eq!(missing_ranges([], 12, 12), Vec::<(u64, u64)>::new());
        assert_eq!(ranges_text(&[(13, 14), (16, 16)]), "13-14, 16");
        assert_eq!(
            missing_ranges([u64::MAX], u64::MAX - 2, u64::MAX),
            vec![(u64::MAX - 1, u64::MAX - 1)]
        );
    }

    #[test]
    fn ordering_waits_only_for_peers_with_members() {
        let members: Vec<String> = ["a@bz", "b@nctv", "c@post-a", "d@nctv"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let awaiting: BTreeSet<String> = ["nctv".to_string(), "aivd".to_string()].into();
        let blocking = blocking_peers(&members, "bz", &awaiting);
        assert_eq!(blocking.into_iter().collect::<Vec<_>>(), vec!["nctv"]);
        let only_local = vec!["a@bz".to_string()];
        assert!(blocking_peers(&only_local, "bz", &awaiting).is_empty());
    }

    #[test]
    fn a_restored_store_waits_for_its_peers_and_a_fresh_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let e = crate::store::SledEngine::open(dir.path()).unwrap();
        let peers: Vec<crate::config::PeerToml> = Vec::new();
        let fresh = Recovery::open(&e, "bz", &peers).unwrap();
        assert!(!fresh.restored() && !fresh.active());
        let header = BackupHeader {
            format: crate::backup::FORMAT,
            relay: "bz".into(),
            created_at: 5,
            pairs: 0,
            sha256: String::new(),
            chain: Vec::new(),
            signature: String::new(),
        };
        e.apply(mark_restoring(&header).unwrap()).unwrap();
        let err = Recovery::open(&e, "bz", &peers).unwrap_err().to_string();
        assert!(err.contains("interrupted restore"), "{err}");
        e.apply(mark_restored(&header, 6).unwrap()).unwrap();
        let restored = Recovery::open(&e, "bz", &peers).unwrap();
        assert!(restored.restored() && restored.active());
        assert!(load(&e).unwrap().unwrap().initialized);
        // Ordering with no peer awaited records where numbering resumed, once.
        let mut b = Batch::default();
        let members = vec!["a@bz".to_string()];
        restored
            .may_order(&e, &mut b, "bz", "x@bz", &members, 8)
            .unwrap();
        restored
            .may_order(&e, &mut b, "bz", "x@bz", &members, 9)
            .unwrap();
        assert_eq!(
            b.get_obj::<u64>(&e, &keys::resumed("x@bz")).unwrap(),
            Some(8)
        );
        assert!(
            restored.may_create(&e, "bz", "y@bz").is_err(),
            "not while recovering"
        );
    }
}
