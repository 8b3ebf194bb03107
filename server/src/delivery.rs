//! Delivery to devices: one task per open [`Request::Subscribe`] stream.
//!
//! The task reads from the store, never from an in-memory queue, so a slow device only
//! slows its own task (QUIC flow control pushes back on `write`) and memory stays
//! bounded by one page of entries. It sends pending Welcomes first, then, for every
//! community the device belongs to, the log entries after the device's cursor, then
//! [`Push::CaughtUp`], and then waits for the store to change.
//!
//! Before a notice goes out, the member's current clearance (from the certificate of
//! this connection) must admit its label; otherwise it is withheld and audit-logged.
//!
//! Only what is on disk goes out: a log up to [`Core::readable_upto`](crate::core::Core::readable_upto), welcomes
//! that are not [`Core::is_unflushed`](crate::core::Core::is_unflushed). A crash can then never take back an entry
//! a device has, and give its seq to another one.
//!
//! [`Request::Subscribe`]: kring_protocol::wire::Request::Subscribe

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kring_protocol::wire::{self, EntryKind, ErrorCode, LogEntry, Push};
use tracing::{debug, info};

use crate::audit::{AuditEvent, AuditKind};
use crate::core::memberships;
use crate::decide;
use crate::entry_cache::SharedEntry;
use crate::error::RelayError;
use crate::frames::push;
use crate::records::{MemberRecord, WelcomeBlob, WelcomeRecord, WelcomeRef};
use crate::relay::{Caller, Relay};
use crate::store::{decode, get_obj, keys};

/// Entries read from the store per community per round.
const PAGE: usize = 256;
/// Bytes of entries (or welcomes) read from the store at once, beyond which a page
/// stops early (always at least one): a subscription holds at most this plus one
/// entry, however large the notices are.
const PAGE_BYTES: usize = 1 << 20;
/// Bytes of frames gathered before they are written to the device's stream.
const WRITE_CHUNK: usize = 64 * 1024;

/// Serves one subscription until the device goes away, opens a newer one on the same
/// connection (`superseded` moves), or the relay shuts down.
pub async fn run_subscription(
    relay: Arc<Relay>,
    caller: Arc<Caller>,
    mut send: quinn::SendStream,
    mut superseded: tokio::sync::watch::Receiver<u64>,
) {
    let max = relay.limits().max_frame;
    let mut changes = relay.visible();
    // Highest seq sent on this stream per community (ahead of the durable cursor).
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut welcomes_sent: HashSet<uuid::Uuid> = HashSet::new();
    let mut members = Memberships::default();
    let mut caught_up_sent = false;
    info!("subscription opened");
    loop {
        changes.mark_unchanged();
        let revoked = caller.check_revocation(&relay.revocations());
        if let Err(why) = revoked {
            info!("subscription closed: identity revoked");
            // The enforcement pass audits the connection it closes; a device that
            // learns it here may be gone before that pass, so this is audited too.
            relay.audit_now(AuditEvent::new(
                AuditKind::Revocation,
                relay.id(),
                caller.id.clone(),
                "cut-off",
                format!("subscription closed: {why}"),
            ));
            let _ = push(&mut send, &Push::Closed(ErrorCode::Revoked), max).await;
            return;
        }
        let more = match round(
            &relay,
            &caller,
            &mut send,
            &mut sent,
            &mut welcomes_sent,
            &mut members,
            max,
        )
        .await
        {
            Ok(Some(more)) => more,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "delivery failed");
                let _ = push(&mut send, &Push::Closed(ErrorCode::Internal), max).await;
                return;
            }
        };
        if more {
            // Let the other tasks of this worker run between pages.
            tokio::task::yield_now().await;
            continue;
        }
        if !caught_up_sent {
            if !push(&mut send, &Push::CaughtUp, max).await {
                return;
            }
            caught_up_sent = true;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {},
            _ = send.stopped() => { debug!("device closed the subscription"); return; }
            _ = superseded.changed() => { debug!("a newer subscription took its place"); return; }
        }
    }
}

/// One pass over everything pending. `Ok(Some(true))` if a page limit was hit (run
/// again at once), `Ok(None)` if the device went away.
async fn round(
    relay: &Relay,
    caller: &Caller,
    send: &mut quinn::SendStream,
    sent: &mut HashMap<String, u64>,
    welcomes_sent: &mut HashSet<uuid::Uuid>,
    members: &mut Memberships,
    max: usize,
) -> Result<Option<bool>, RelayError> {
    let engine = relay.engine();
    // Welcomes stored per member (older relays), then those shared per commit: all
    // of them, a bounded page at a time (their keys are in no delivery order, so
    // a walk starts from the start and skips what this stream sent). Walked only
    // when a batch wrote welcomes for this user since the last walk, or the last
    // walk passed one not yet on disk.
    let welcome_writes = relay.welcome_writes(&caller.id);
    if members.welcomes_read != Some(welcome_writes) || !members.welcomes_waiting.is_empty() {
        members.welcomes_read = Some(welcome_writes);
        members.welcomes_waiting.clear();
        let prefix = keys::welcome_prefix(&caller.id);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = engine.scan_bounded(&prefix, after.as_deref(), PAGE, PAGE_BYTES)?;
            let last_page = page.len() < PAGE && page_bytes(&page) < PAGE_BYTES;
            for (k, v) in page {
                after = Some(k.clone());
                let w: WelcomeRecord = decode(&k, &v)?;
                if relay.is_unflushed(&k) {
                    // Not on disk yet: the flush wakes this task again.
                    members.welcomes_waiting.insert(w.community);
                    continue;
                }
                if !welcomes_sent.insert(w.id) {
                    continue;
                }
                let msg = Push::Welcome {
                    id: w.id,
                    community: w.community,
                    welcome: w.welcome,
                    ratchet_tree: w.ratchet_tree,
                };
                if !push(send, &msg, max).await {
                    return Ok(None);
                }
            }
            if last_page {
                break;
            }
        }
        let prefix = keys::welcome_ref_prefix(&caller.id);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = engine.scan(&prefix, after.as_deref(), PAGE)?;
            let last_page = page.len() < PAGE;
            for (k, v) in page {
                after = Some(k.clone());
                let r: WelcomeRef = decode(&k, &v)?;
                if relay.is_unflushed(&k) {
                    members.welcomes_waiting.insert(r.community);
                    continue;
                }
                if welcomes_sent.contains(&r.id) {
                    continue;
                }
                let blob_key = keys::welcome_blob(&r.blob);
                let blob: WelcomeBlob =
                    get_obj(engine, &blob_key)?.ok_or_else(|| RelayError::Corrupt {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        reason: "the welcome it refers to is missing".into(),
                    })?;
                welcomes_sent.insert(r.id);
                let msg = Push::Welcome {
                    id: r.id,
                    community: r.community,
                    welcome: blob.welcome,
                    ratchet_tree: blob.ratchet_tree,
                };
                if !push(send, &msg, max).await {
                    return Ok(None);
                }
            }
            if last_page {
                break;
            }
        }
    }
    let mut more = false;
    let mut out = Vec::new();
    // The logs to look at: those appended to since the last round and those this
    // stream had not handed on up to their head (not readable yet, or a full page),
    // or all of them on the first round, after a membership change, or when the
    // watermark forgot appends this stream had not seen. A device in many
    // communities does not pay for all of them on every notice.
    let appended = relay.logs_appended_since(members.appended);
    let reread = members.refresh(relay, &caller.id)?;
    let look: Vec<usize> = match appended.logs {
        Some(logs) if !reread && members.appended.is_some() => {
            let mut look: Vec<usize> = logs
                .iter()
                .filter_map(|log| members.by_log.get(log).copied())
                .chain(members.pending.iter().copied())
                .collect();
            look.sort_unstable();
            look.dedup();
            look
        }
        _ => (0..members.records.len()).collect(),
    };
    members.appended = Some(appended.upto);
    for (at, &i) in look.iter().enumerate() {
        let Some((community, m)) = members.records.get(i) else {
            continue;
        };
        let log = keys::log_prefix(community);
        let step = deliver_log(relay, caller, send, sent, members, community, m, &mut out).await?;
        let full = match step {
            Step::Done { full } => full,
            Step::Gone => return Ok(None),
            Step::Restart => {
                // A Welcome for this user was written since the walk, or a
                // membership began again: walk (read) again at once, then look
                // at this log and those after it.
                members.pending.extend(&look[at..]);
                more = true;
                break;
            }
        };
        more |= full;
        // Looked at again next round unless handed on up to its head (or the
        // member's removal). A log with no append since the relay started has no
        // head: all of it is on disk, so a page that was not full was all of it.
        let short = full
            || members.welcomes_waiting.contains(community)
            || relay.log_head(&log).is_some_and(|head| {
                let goal = head.min(m.removed_seq.unwrap_or(u64::MAX));
                sent.get(community).is_none_or(|s| *s < goal)
            });
        if short {
            members.pending.insert(i);
        } else {
            members.pending.remove(&i);
        }
    }
    if !write_out(send, &mut out).await {
        return Ok(None);
    }
    Ok(Some(more))
}

/// What [`deliver_log`] did with one log.
enum Step {
    /// Handed on what it could; `full` if a page limit stopped it (more at once).
    Done { full: bool },
    /// A Welcome for this user was written during the round, or the member was
    /// removed and added again: start the round again.
    Restart,
    /// The device went away.
    Gone,
}

/// Sends one page of `community`'s log after what the device has, as far as it is
/// on disk, within the member's membership, and after the community's Welcome.
#[allow(clippy::too_many_arguments)] // the round's state, passed through
async fn deliver_log(
    relay: &Relay,
    caller: &Caller,
    send: &mut quinn::SendStream,
    sent: &mut HashMap<String, u64>,
    members: &Memberships,
    community: &str,
    m: &MemberRecord,
    out: &mut Vec<u8>,
) -> Result<Step, RelayError> {
    let log = keys::log_prefix(community);
    // Its Welcome is not on disk yet: nothing of the community before it (the device
    // could not read it); the flush wakes this task again.
    if members.welcomes_waiting.contains(community) {
        return Ok(Step::Done { full: false });
    }
    // Nothing appended since what this stream handed on: no store read at all.
    if let (Some(&upto), Some(head)) = (sent.get(community), relay.log_head(&log))
        && upto >= head
    {
        return Ok(Step::Done { full: false });
    }
    let cursor = relay.cursor_of(&caller.id, community, m)?;
    let from = sent.get(community).copied().unwrap_or(0).max(cursor);
    let removed = m.removed_seq.unwrap_or(u64::MAX);
    if from >= removed {
        note_sent(sent, community, from);
        return Ok(Step::Done { full: false });
    }
    // Entries other devices' tasks already read and encoded (all on disk), else a
    // page from the store, encoded here and shared once it is known to be on disk.
    let cache = relay.entry_cache();
    let mut run = cache.run(community, from, removed, PAGE);
    let (mut full, generation) = if run.is_empty() {
        let generation = cache.generation(community);
        let engine = relay.engine();
        let page =
            engine.scan_bounded(&log, Some(&keys::log(community, from)), PAGE, PAGE_BYTES)?;
        let mut full = page.len() == PAGE || page_bytes(&page) >= PAGE_BYTES;
        for (k, v) in page {
            let entry: LogEntry = decode(&k, &v)?;
            if entry.seq > removed {
                // Nothing past the removal, ever.
                full = false;
                if run.is_empty() && !relay.recovery().active() {
                    // Nothing left up to it either (retention may have taken
                    // it): this member has had all of the log it will get. (Not
                    // while a restored relay may still fill in earlier seqs.)
                    note_sent(sent, community, removed);
                }
                break;
            }
            run.push(Arc::new(share(entry, &k, relay.limits().max_frame)?));
        }
        (full, Some(generation))
    } else {
        // The run stopped short of the removal and of the head (the cache holds
        // no more): the rest comes from the store at once.
        let last = run.last().map_or(from, |e| e.seq);
        let head = relay.log_head(&log).unwrap_or(u64::MAX);
        (run.len() == PAGE || (last < removed && last < head), None)
    };
    // After the read, never before: a batch is recorded in the watermark before it
    // is applied, so whatever the read saw that is not on disk yet is known by now
    // and held back; what is on disk was counted (membership and welcome writes)
    // before it was flushed.
    let readable = relay.readable_upto(&log);
    let mut removed = removed;
    if members.read_at != Some(relay.member_writes()) {
        // A membership record written since the records were read may end this
        // membership before what the read saw.
        let key = keys::member(&caller.id, community);
        removed = match get_obj::<MemberRecord>(relay.engine(), &key)? {
            // Removed and added again since: what lies between is not theirs;
            // the next round starts from the new membership.
            Some(now) if now.joined_seq != m.joined_seq => return Ok(Step::Restart),
            Some(now) => removed.min(now.removed_seq.unwrap_or(u64::MAX)),
            None => from,
        };
    }
    if members.welcomes_read != Some(relay.welcome_writes(&caller.id)) {
        return Ok(Step::Restart);
    }
    let end = removed.min(readable);
    if run.last().is_some_and(|e| e.seq > end) {
        run.retain(|e| e.seq <= end);
        full = false; // what is past `end` waits for a flush, or never comes
    }
    if let Some(generation) = generation {
        for shared in &run {
            cache.insert(community, generation, shared.clone());
        }
    }
    if run.is_empty() {
        // Nothing after `from` to hand on now.
        note_sent(sent, community, from);
    }
    for shared in run {
        sent.insert(community.to_string(), shared.seq);
        if !admitted(relay, caller, community, &shared) {
            continue;
        }
        // Frames go out together: one stream write per run of entries, not one per
        // entry.
        out.extend_from_slice(&shared.frame);
        relay.metrics().delivered_to_device(1);
        if out.len() >= WRITE_CHUNK && !write_out(send, out).await {
            return Ok(Step::Gone);
        }
    }
    Ok(Step::Done { full })
}

/// Decodes a stored entry's label and encodes its push frame, once for every device.
fn share(entry: LogEntry, key: &[u8], max: usize) -> Result<SharedEntry, RelayError> {
    let notice = match &entry.kind {
        EntryKind::Notice {
            notice_id, label, ..
        } => Some((
            *notice_id,
            kring_protocol::notice_aad::label_of(label)
                .map_err(|e| format!("stored label unreadable: {e}")),
        )),
        _ => None,
    };
    let seq = entry.seq;
    let frame = wire::encode_frame(&Push::Entry(entry), max).map_err(|e| RelayError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("cannot be sent: {e}"),
    })?;
    Ok(SharedEntry { seq, frame, notice })
}

/// True if the member's current clearance admits `shared` (not a notice, or a
/// notice whose label it admits); a withheld notice is audit-logged.
fn admitted(relay: &Relay, caller: &Caller, community: &str, shared: &SharedEntry) -> bool {
    let Some((notice_id, label)) = &shared.notice else {
        return true;
    };
    let refused = match label {
        Ok(label) => {
            let d = decide::deliver(label, caller.identity.clearance.as_ref());
            (!d.allowed).then(|| d.to_string())
        }
        Err(e) => Some(e.clone()),
    };
    let Some(reason) = refused else {
        return true;
    };
    relay.audit_now(AuditEvent::new(
        AuditKind::Withheld,
        relay.id(),
        format!("{community} notice {notice_id}"),
        "deliver",
        format!("withheld from {}: {reason}", caller.id),
    ));
    false
}

/// This stream has handed on `community`'s log up to `seq` (or the device had it).
fn note_sent(sent: &mut HashMap<String, u64>, community: &str, seq: u64) {
    let upto = sent.entry(community.to_string()).or_insert(seq);
    *upto = (*upto).max(seq);
}

/// What a subscription keeps between rounds: its member's membership records
/// (read again only after a batch wrote membership records, of anyone: they change
/// rarely), which logs to look at again, and when it last walked the welcomes.
#[derive(Debug, Default)]
struct Memberships {
    read_at: Option<u64>,
    records: Vec<(String, MemberRecord)>,
    /// Index in `records` by log prefix.
    by_log: HashMap<Vec<u8>, usize>,
    /// Indexes in `records` of logs not handed on up to their head.
    pending: HashSet<usize>,
    /// The watermark's append number this stream has looked up to.
    appended: Option<u64>,
    /// The welcome count of the last walk of the welcomes.
    welcomes_read: Option<u64>,
    /// Communities whose Welcome the last walk found not yet on disk: their logs
    /// wait for it, and the next round walks the welcomes again.
    welcomes_waiting: HashSet<String>,
}

impl Memberships {
    /// Reads the records again if a batch wrote membership records since they
    /// were read; true if it did (every log is then looked at).
    fn refresh(&mut self, relay: &Relay, user: &str) -> Result<bool, RelayError> {
        // The count first: a write after it moves it again, and the next round reads.
        let writes = relay.member_writes();
        if self.read_at == Some(writes) {
            return Ok(false);
        }
        self.records = memberships(relay, user)?;
        self.by_log = self
            .records
            .iter()
            .enumerate()
            .map(|(i, (community, _))| (keys::log_prefix(community), i))
            .collect();
        self.pending.clear();
        self.read_at = Some(writes);
        Ok(true)
    }
}

/// Bytes of keys and values in a page read from the store.
fn page_bytes(page: &[crate::store::Pair]) -> usize {
    page.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Writes the frames gathered in `out` (if any) and empties it; false if the device
/// went away.
async fn write_out(send: &mut quinn::SendStream, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = send.write_all(out).await.is_ok();
    out.clear();
    ok
}
