//! Recovery in the core. A relay restored from a backup ([`crate::backup`]) is behind: its peers and its
//! devices may have seen log entries and outbox items it no longer has. It must
//! never hand out again a sequence number one of them has seen (they would skip the
//! new entry or item as a repeat, and lose it).
//!
//! `kring-relay restore` marks the store restored (`R/state`). On every start of a
//! restored relay, until each configured peer has answered once:
//! - **Outboxes**: nothing is sent to a peer before it has said which item of this
//!   relay's outbox it applied last ([`FedRequest::Whereabouts`](kring_protocol::wire::FedRequest::Whereabouts)); the items
//!   queued since the restore are then moved past it ([`outbox_shift`]) and the
//!   outbox numbering continues after it.
//! - **Logs of communities hubbed here**: nothing new is ordered in a community
//!   ([`Recovery::may_order`]) before every peer with members in it has answered with
//!   the last seq of its copy; the entries it holds beyond this relay's log are
//!   fetched ([`FedRequest::FetchLog`](kring_protocol::wire::FedRequest::FetchLog)), stored under their seqs (commits are
//!   replayed into the MLS state) and passed on to other member relays that lack
//!   them; numbering resumes after the highest seq any peer has seen, withheld
//!   entries included.
//! - **Devices** report their cursors before they subscribe ([`Request::Cursors`](kring_protocol::wire::Request::Cursors)):
//!   a cursor past the log moves the numbering past it ([`device_verdict`]); a
//!   device that had seen old entries at seqs numbered again since the restore is
//!   told to move its cursor back, and skips what it has by notice id.
//!
//! What cannot be recovered (entries no peer holds, communities created after the
//! backup, items peers sent that this relay had applied) is written to the log and
//! the audit log (`restore-recovery`).
//!
//! [`FedRequest::Whereabouts`](kring_protocol::wire::FedRequest::Whereabouts): kring_protocol::wire::FedRequest::Whereabouts
//! [`FedRequest::FetchLog`](kring_protocol::wire::FedRequest::FetchLog): kring_protocol::wire::FedRequest::FetchLog
//! [`Request::Cursors`](kring_protocol::wire::Request::Cursors): kring_protocol::wire::Request::Cursors

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kring_protocol::wire::{
    EntryKind, ErrorCode, FedResponse, LogEntry, LogMark, Response, Whereabouts, limits,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::audit::{AuditEvent, AuditKind};
pub use crate::backup::{RestoreState, is_recovery_key, mark_restored, mark_restoring};
use crate::core::{Caller, Core, Cx, home_relay};
use crate::error::RelayError;
use crate::records::{CommunityRecord, MemberRecord, OutboxRecord};
use crate::store::{Batch, Engine, decode, get_obj};

/// Store keys of a restored relay (`R/`).
pub use crate::keyspace::recovery as keys;

use crate::keyspace::federation::{
    applied as applied_key, outbox_next as outbox_next_key, outbox_prefix,
};

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

pub(crate) fn ranges_text(ranges: &[(u64, u64)]) -> String {
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
    pub(crate) active: AtomicBool,
    /// Peers that have not answered.
    pub(crate) awaiting: Mutex<BTreeSet<String>>,
    /// What each answered peer holds of the logs hubbed here (for passing on
    /// recovered entries).
    pub(crate) marks: Mutex<BTreeMap<(String, String), u64>>,
    pub(crate) changed: watch::Sender<u64>,
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

/// Answers [`FedRequest::Whereabouts`](kring_protocol::wire::FedRequest::Whereabouts) from `peer`.
pub fn whereabouts(core: &Core, peer: &str) -> Result<FedResponse, RelayError> {
    let engine = core.engine();
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
                rec.hub == core.id() && rec.members.iter().any(|m| home_relay(m) == peer);
            if !theirs && !ours_with_them {
                continue;
            }
            let last = core
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

/// Answers [`FedRequest::FetchLog`](kring_protocol::wire::FedRequest::FetchLog) from `peer`: only the community's hub (for
/// its own log, restored) or a relay with members in a community hubbed here.
pub fn fetch_log(
    core: &Core,
    peer: &str,
    community: &str,
    after: u64,
) -> Result<FedResponse, RelayError> {
    let rec = core.community(community)?.ok_or(ErrorCode::NotFound {
        what: format!("community {community}"),
    })?;
    let hubbed_here = rec.hub == core.id();
    let allowed = if hubbed_here {
        rec.members.iter().any(|m| home_relay(m) == peer)
    } else {
        rec.hub == peer
    };
    if !allowed {
        return Err(ErrorCode::NotMember.into());
    }
    let engine = core.engine();
    let prefix = crate::store::keys::log_prefix(community);
    let page = engine.scan(
        &prefix,
        Some(&crate::store::keys::log(community, after)),
        limits::MAX_LOG_PAGE,
    )?;
    // After the read: an entry it saw that is not on disk yet is held back.
    let readable = core.readable_upto(&prefix);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let max_bytes = core.limits().max_frame / 2;
    for (k, v) in page {
        let entry: LogEntry = decode(&k, &v)?;
        if entry.seq > readable {
            break;
        }
        if hubbed_here && let EntryKind::Notice { label, .. } = &entry.kind {
            // As the fan-out would: nothing above the peer's accreditation.
            let allowed = kring_protocol::notice_aad::label_of(label).is_ok_and(|l| {
                kring_policy::decide_opt(Some(&l), core.relay_accreditation(peer).as_ref()).allowed
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
        community: hubbed_here.then(|| crate::core::summary(&rec)),
    })
}

// ----- the restored relay's side -----------------------------------------------------

/// Answers [`Request::Cursors`](kring_protocol::wire::Request::Cursors) from a device.
pub fn cursors(
    core: &Core,
    cx: &mut Cx,
    caller: &Caller,
    marks: Vec<LogMark>,
) -> Result<Response, RelayError> {
    if !core.recovery().restored() {
        return Ok(Response::Cursors { rewind: Vec::new() });
    }
    let (rewind, notes) = core.write(cx, |w, b| {
        let mut rewind = Vec::new();
        let mut notes = Vec::new();
        for mark in &marks {
            let community = mark.community.as_str();
            if home_relay(community) != core.id() {
                continue;
            }
            let reported = keys::device(&caller.id, community);
            if b.get(core.engine(), &reported)?.is_some() {
                continue;
            }
            let Some(m) = b.get_obj::<MemberRecord>(
                core.engine(),
                &crate::store::keys::member(&caller.id, community),
            )?
            else {
                continue;
            };
            let Some(rec) = core.community_in(b, community)? else {
                continue;
            };
            let resumed = b.get_obj::<u64>(core.engine(), &keys::resumed(community))?;
            let base = b
                .get_obj::<u64>(core.engine(), &keys::base(community))?
                .unwrap_or(rec.last_seq);
            let verdict = device_verdict(
                mark.seq,
                rec.last_seq,
                base,
                resumed,
                core.recovery().active(),
            );
            if let Some(raise) = verdict.raise_to {
                crate::core::put_last_seq(b, community, raise)?;
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
                let current = core.cursor_of(&caller.id, community, &m)?;
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
                w.now,
                AuditEvent::new(
                    AuditKind::Admin,
                    core.id(),
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
    Ok(Response::Cursors { rewind })
}
