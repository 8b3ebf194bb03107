//! Retention: a community may set a retention period (in its MLS group context,
//! `kring community create --retention DAYS`). Every member's device deletes notices
//! older than that; relays drop their copies of log entries older than that once
//! every member device they serve has acknowledged them.
//!
//! - **Where a relay learns the period.** The hub reads it from the group context of
//!   the community it verifies (at creation) and keeps it under `t/COMMUNITY`; member
//!   relays, which hold no group state, get it from the hub
//!   ([`FedBody::Retention`](kring_protocol::wire::FedBody::Retention), sent after
//!   every commit entry) and keep it the same way.
//! - **What may go** ([`prune_upto`], pure): a prefix of the log, entry by entry
//!   from the oldest held, while each entry is older than the period (by the hub's
//!   `ordered_at`) and at or below the *floor*: the highest seq up to which every
//!   device homed here that is a member (not removed, not revoked) has acknowledged
//!   every entry ([`device_floor`], [`ack_floor`]), and, at the hub, below the first entry
//!   of the community still waiting in any outbox (outbox items read the log when
//!   they are sent). A device that never connected has its cursor at the commit that
//!   added it, so nothing after that goes.
//! - **What stays.** The community record and its last seq (`c/`, `s/`): numbering
//!   continues after the last entry ever ordered, so no seq is given twice. Notice
//!   records (`n/`: status, no content) stay.
//! - **When.** [`run`] makes one pass at start and then every [`PASS_EVERY`], with
//!   `now` passed in; a pass deletes at most [`MAX_PER_PASS`] entries (in batches of
//!   at most [`PAGE`]), reads outboxes only up to [`MAX_OUTBOX_SCAN`] items (beyond
//!   that nothing hubbed here is pruned in that pass), and is skipped while the relay
//!   recovers from a restore (it may still hand out older entries then). Each
//!   batch of dropped entries is one audit record (`log-pruned`: community, count,
//!   last seq).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kring_protocol::wire::LogEntry;
use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::RelayError;
use crate::records::{MemberRecord, OutboxRecord, Outgoing};
use crate::relay::{Relay, home_relay};
use crate::store::{decode, keys as store_keys};

pub use crate::core::retention::{
    MAX_RETENTION_SECS, apply_from_hub, describe, put_retention, retention_of,
};
/// Store keys of retention.
pub use crate::keyspace::retention as keys;

/// How often a relay looks for entries to drop.
pub const PASS_EVERY: Duration = Duration::from_secs(600);
/// Most log entries one pass deletes (the next pass goes on).
pub const MAX_PER_PASS: usize = 16_384;
/// Entries read (and deleted) at once.
pub const PAGE: usize = 256;
/// Bytes of entries read at once.
const PAGE_BYTES: usize = 1 << 20;
/// Most outbox items a pass reads to find what the hub's outboxes still need.
pub const MAX_OUTBOX_SCAN: usize = 100_000;
/// Records read at once from the retention and membership prefixes.
const SCAN_PAGE: usize = 1024;
/// The highest seq up to which one device holds back expired entries: entries after
/// `joined_seq` are its, and `cursor` (at least `joined_seq`) is the last it
/// acknowledged. A device that is no longer a member (`removed_seq`, or its user
/// `revoked`) holds back nothing: expired entries wait only for current members
/// (entries still within the period stay for it anyway).
pub fn device_floor(m: &MemberRecord, cursor: u64, revoked: bool) -> u64 {
    if m.removed_seq.is_some() || revoked {
        return u64::MAX;
    }
    cursor.max(m.joined_seq)
}

/// The floor of a community: the lowest of its devices' floors and, at the hub,
/// the seq before the first entry still waiting in an outbox. `u64::MAX` if
/// nothing holds anything back.
pub fn ack_floor(devices: impl IntoIterator<Item = u64>, outbox_first: Option<u64>) -> u64 {
    let devices = devices.into_iter().min().unwrap_or(u64::MAX);
    let outbox = outbox_first.map_or(u64::MAX, |first| first.saturating_sub(1));
    devices.min(outbox)
}

/// Whether an entry ordered at `ordered_at` is older than `retention_secs` at `now`
/// (all Unix seconds).
pub fn expired(ordered_at: i64, retention_secs: u64, now: i64) -> bool {
    let kept_until = ordered_at.saturating_add(i64::try_from(retention_secs).unwrap_or(i64::MAX));
    kept_until <= now
}

/// The last seq of `entries` (seq and `ordered_at`, in log order, the oldest held
/// first) that may be dropped: entries are taken from the front while each is
/// expired and at or below `floor`; the first that is not stops it, so what stays
/// is always the end of the log. `None` if the first may not go.
pub fn prune_upto(
    entries: impl IntoIterator<Item = (u64, i64)>,
    floor: u64,
    retention_secs: u64,
    now: i64,
) -> Option<u64> {
    let mut last = None;
    for (seq, ordered_at) in entries {
        if seq > floor || !expired(ordered_at, retention_secs, now) {
            break;
        }
        last = Some(seq);
    }
    last
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Entries dropped, per community.
    pub pruned: BTreeMap<String, u64>,
    /// Expired entries kept because a member device (or an outbox) has not had them
    /// yet, per community.
    pub held: BTreeMap<String, u64>,
    /// Whether the pass was skipped (recovery after a restore).
    pub skipped: bool,
}

/// The retention task: a pass at start, then every [`PASS_EVERY`] (in test builds,
/// see [`test_clock`], every 100 ms with the test's time); each also sweeps the
/// attachments no notice refers to any more ([`crate::core::sweep_blobs`]).
pub async fn run(relay: Arc<Relay>) {
    let every = if test_clock::active() {
        Duration::from_millis(100)
    } else {
        PASS_EVERY
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = test_clock::now().unwrap_or_else(crate::relay::now);
        match pass(&relay, now) {
            Ok(report) => {
                if !report.pruned.is_empty() {
                    let _ = relay.durable().await;
                }
                if test_clock::active() || !report.pruned.is_empty() || !report.held.is_empty() {
                    let pruned: u64 = report.pruned.values().sum();
                    let held: u64 = report.held.values().sum();
                    info!(
                        now,
                        pruned,
                        held,
                        skipped = report.skipped,
                        "retention pass"
                    );
                }
            }
            Err(e) => warn!(error = %e, "retention pass failed"),
        }
        if let Err(e) = crate::core::sweep_blobs(
            &relay,
            &mut crate::core::Cx::at(now, std::time::Instant::now()),
        ) {
            warn!(error = %e, "sweeping attachments failed");
        }
    }
}

/// One pass over every community with a retention period (see the module
/// documentation).
pub fn pass(relay: &Relay, now: i64) -> Result<PassReport, RelayError> {
    let mut report = PassReport::default();
    if relay.recovery().active() {
        report.skipped = true;
        return Ok(report);
    }
    let engine = relay.engine();
    let periods = scan_all(relay, keys::RETENTION, |k, v| {
        let community = String::from_utf8_lossy(&k[keys::RETENTION.len()..]).into_owned();
        let secs = <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)?;
        Some((community, secs))
    })?;
    if periods.is_empty() {
        return Ok(report);
    }
    let wanted: HashMap<&str, u64> = periods.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    // Every device homed here with a membership record in one of them.
    let mut floors: HashMap<String, Vec<u64>> = HashMap::new();
    let memberships = scan_all(relay, crate::keyspace::MEMBER, |k, v| {
        let rest = &k[2..];
        let split = rest.iter().position(|&c| c == 0)?;
        let user = String::from_utf8_lossy(&rest[..split]).into_owned();
        let community = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
        if !wanted.contains_key(community.as_str()) || home_relay(&user) != relay.id() {
            return None;
        }
        let m: MemberRecord = decode(k, v).ok()?;
        Some((user, community, m))
    })?;
    for (user, community, m) in memberships {
        let cursor = relay.cursor_of(&user, &community, &m)?;
        let revoked = relay.revocations().user_revoked(&user).is_some();
        floors
            .entry(community)
            .or_default()
            .push(device_floor(&m, cursor, revoked));
    }
    let outbox = outbox_firsts(relay)?;
    let mut budget = MAX_PER_PASS;
    for (community, secs) in &periods {
        if budget == 0 {
            break;
        }
        let hubbed_here = home_relay(community) == relay.id();
        let outbox_first = if hubbed_here {
            match &outbox {
                Some(firsts) => firsts.get(community.as_str()).copied(),
                // Too many outbox items to read: nothing hubbed here goes this pass.
                None => Some(0),
            }
        } else {
            None
        };
        let floor = ack_floor(
            floors.get(community).into_iter().flatten().copied(),
            outbox_first,
        );
        let log = store_keys::log_prefix(community);
        loop {
            let page = engine.scan_bounded(&log, None, PAGE.min(budget), PAGE_BYTES)?;
            let mut marks = Vec::with_capacity(page.len());
            let mut attached = Vec::new();
            for (k, v) in &page {
                let entry: LogEntry = decode(k, v)?;
                marks.push((entry.seq, entry.ordered_at));
                if let Some(blobs) = crate::relay::entry_blobs(&entry) {
                    attached.push((entry.seq, blobs));
                }
            }
            let upto = prune_upto(marks.iter().copied(), floor, *secs, now);
            let held = marks
                .iter()
                .filter(|(seq, at)| upto.is_none_or(|u| *seq > u) && expired(*at, *secs, now))
                .count() as u64;
            if held > 0 {
                *report.held.entry(community.clone()).or_default() += held;
            }
            let Some(upto) = upto else { break };
            let drop: Vec<u64> = marks
                .iter()
                .map(|(seq, _)| *seq)
                .take_while(|seq| *seq <= upto)
                .collect();
            let count = drop.len();
            let released: Vec<_> = attached
                .into_iter()
                .filter(|(seq, _)| *seq <= upto)
                .map(|(_, blobs)| blobs)
                .collect();
            relay.write(|w, b| {
                for seq in &drop {
                    b.delete(store_keys::log(community, *seq));
                }
                for (notice_id, _) in &released {
                    b.delete(crate::keyspace::attachments::notice(community, notice_id));
                }
                w.audit.append(
                    b,
                    crate::relay::now(),
                    AuditEvent::new(
                        AuditKind::Admin,
                        relay.id(),
                        community.clone(),
                        "log-pruned",
                        format!(
                            "{count} entries up to #{upto} dropped: older than the retention \
                             period of {} and acknowledged by every member device here",
                            describe(*secs)
                        ),
                    ),
                )
            })?;
            // Delivery's shared copies must not outlive the entries.
            relay.entry_cache().forget(community);
            // Blobs no notice held here refers to any more go with their notices.
            let ids: Vec<_> = released
                .iter()
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect();
            crate::core::release_blobs(relay, &mut relay.cx(), &ids)?;
            *report.pruned.entry(community.clone()).or_default() += count as u64;
            budget = budget.saturating_sub(count);
            if count < marks.len() || budget == 0 {
                break;
            }
        }
    }
    Ok(report)
}

/// The first log seq each community hubbed here still has waiting in any outbox;
/// `None` if the outboxes hold more than [`MAX_OUTBOX_SCAN`] items.
fn outbox_firsts(relay: &Relay) -> Result<Option<HashMap<String, u64>>, RelayError> {
    let engine = relay.engine();
    let mut firsts: HashMap<String, u64> = HashMap::new();
    let mut after: Option<Vec<u8>> = None;
    let mut read = 0usize;
    loop {
        let page = engine.scan_bounded(
            crate::keyspace::OUTBOX,
            after.as_deref(),
            SCAN_PAGE,
            PAGE_BYTES,
        )?;
        let last_page = page.len() < SCAN_PAGE && page_bytes(&page) < PAGE_BYTES;
        for (k, v) in &page {
            read += 1;
            if read > MAX_OUTBOX_SCAN {
                return Ok(None);
            }
            let rec: OutboxRecord = decode(k, v)?;
            let (community, seq) = match rec.item {
                Outgoing::LogEntry { community, seq } => (community.id, seq),
                Outgoing::NoticeEntry { community, seq } => (community, seq),
                Outgoing::Body(_) => continue,
            };
            let first = firsts.entry(community).or_insert(seq);
            *first = (*first).min(seq);
        }
        match page.last() {
            Some((k, _)) if !last_page => after = Some(k.clone()),
            _ => return Ok(Some(firsts)),
        }
    }
}

/// Every pair under `prefix` that `keep` maps to something, read a page at a time.
fn scan_all<T>(
    relay: &Relay,
    prefix: &[u8],
    mut keep: impl FnMut(&[u8], &[u8]) -> Option<T>,
) -> Result<Vec<T>, RelayError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = relay.engine().scan(prefix, after.as_deref(), SCAN_PAGE)?;
        let last_page = page.len() < SCAN_PAGE;
        for (k, v) in &page {
            if let Some(t) = keep(k, v) {
                out.push(t);
            }
        }
        match page.into_iter().last() {
            Some((k, _)) if !last_page => after = Some(k),
            _ => return Ok(out),
        }
    }
}

fn page_bytes(page: &[crate::store::Pair]) -> usize {
    page.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Test builds only (the cargo feature `failpoints`, which only `kring-tests` turns
/// on): `KRING_TEST_CLOCK_FILE=PATH` makes the retention task take `now` from the
/// Unix seconds in that file (the system clock while it is missing or unreadable)
/// and pass every 100 ms, so tests move a relay's retention time forward instead of
/// waiting days. A relay built without the feature never reads the variable.
pub mod test_clock {
    /// The environment variable naming the file.
    pub const VAR: &str = "KRING_TEST_CLOCK_FILE";

    /// Whether the variable is set (test builds only).
    pub fn active() -> bool {
        cfg!(feature = "failpoints") && std::env::var_os(VAR).is_some()
    }

    /// The time in the file, if active and readable.
    pub fn now() -> Option<i64> {
        if !active() {
            return None;
        }
        let path = std::env::var_os(VAR)?;
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn member(joined: u64, removed: Option<u64>) -> MemberRecord {
        MemberRecord {
            joined_seq: joined,
            removed_seq: removed,
        }
    }

    #[test]
    fn a_device_holds_back_what_it_has_not_acknowledged() {
        // Acknowledged up to 5: 6 and later are still its.
        assert_eq!(device_floor(&member(0, None), 5, false), 5);
        // A device that never acknowledged anything holds back everything after
        // the commit that added it (and nothing before).
        assert_eq!(device_floor(&member(7, None), 0, false), 7);
        // No longer a member (removed, or revoked): it holds back nothing expired.
        assert_eq!(device_floor(&member(0, Some(9)), 9, false), u64::MAX);
        assert_eq!(device_floor(&member(0, Some(9)), 4, false), u64::MAX);
        assert_eq!(device_floor(&member(0, None), 4, true), u64::MAX);
    }

    #[test]
    fn the_floor_is_the_lowest_device_and_the_first_outbox_item() {
        assert_eq!(ack_floor([], None), u64::MAX);
        assert_eq!(ack_floor([5, 3, u64::MAX], None), 3);
        assert_eq!(ack_floor([5], Some(4)), 3);
        assert_eq!(ack_floor([u64::MAX], Some(1)), 0);
        // An outbox that cannot be read whole holds everything back.
        assert_eq!(ack_floor([9], Some(0)), 0);
    }

    #[test]
    fn only_an_expired_acknowledged_prefix_goes() {
        let old = NOW - 2 * DAY as i64;
        let new = NOW - 10;
        let log = [(1, old), (2, old), (3, old), (4, new), (5, old)];
        // Everything acknowledged: the expired prefix (not entry 5, behind 4).
        assert_eq!(prune_upto(log, u64::MAX, DAY, NOW), Some(3));
        // A device at 2 keeps 3.
        assert_eq!(prune_upto(log, 2, DAY, NOW), Some(2));
        // A device that acknowledged nothing keeps all.
        assert_eq!(prune_upto(log, 0, DAY, NOW), None);
        // Nothing expired yet.
        assert_eq!(prune_upto(log, u64::MAX, 3 * DAY, NOW), None);
        // Exactly at the end of the period it goes.
        assert!(expired(NOW - DAY as i64, DAY, NOW));
        assert!(!expired(NOW - DAY as i64 + 1, DAY, NOW));
        // A log whose front was dropped before continues from where it stands.
        assert_eq!(prune_upto([(40, old), (41, new)], 100, DAY, NOW), Some(40));
        assert_eq!(prune_upto([], u64::MAX, DAY, NOW), None);
        // Huge periods do not overflow.
        assert!(!expired(NOW, u64::MAX, NOW));
    }
}
