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
        if relay
            .revocations()
            .check_chain(&caller.identity, &caller.chain)
            .is_err()
        {
            info!("subscription closed: identity revoked");
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
    // every round walks them from the start and skips what this stream sent).
    let prefix = keys::welcome_prefix(&caller.id);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan_bounded(&prefix, after.as_deref(), PAGE, PAGE_BYTES)?;
        let last_page = page.len() < PAGE && page_bytes(&page) < PAGE_BYTES;
        for (k, v) in page {
            after = Some(k.clone());
            if relay.is_unflushed(&k) {
                continue; // not on disk yet: the flush wakes this task again
            }
            let w: WelcomeRecord = decode(&k, &v)?;
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
            if relay.is_unflushed(&k) {
                continue;
            }
            let r: WelcomeRef = decode(&k, &v)?;
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
    let mut more = false;
    let mut out = Vec::new();
    for (community, m) in members.current(relay, &caller.id)? {
        let log = keys::log_prefix(community);
        // Nothing appended since what this stream handed on: no store read at all
        // (a device in many communities wakes for every one of them).
        if let (Some(&upto), Some(head)) = (sent.get(community), relay.log_head(&log))
            && upto >= head
        {
            continue;
        }
        let cursor = relay.cursor_of(&caller.id, community, m)?;
        let from = sent.get(community).copied().unwrap_or(0).max(cursor);
        // Nothing past the member's removal, nor past what is on disk.
        let end = m
            .removed_seq
            .unwrap_or(u64::MAX)
            .min(relay.readable_upto(&log));
        if from >= end {
            note_sent(sent, community, from);
            continue;
        }
        // Entries other devices' tasks already read and encoded, else a page from
        // the store (encoded once here and shared from then on).
        let cache = relay.entry_cache();
        let mut run = cache.run(community, from, end, PAGE);
        let full = if run.is_empty() {
            let generation = cache.generation(community);
            let page =
                engine.scan_bounded(&log, Some(&keys::log(community, from)), PAGE, PAGE_BYTES)?;
            // A full page that does not reach `end`: there is more to send at once
            // (but not when `end` stopped it: what is past it waits for a flush or a
            // commit).
            let mut full = page.len() == PAGE || page_bytes(&page) >= PAGE_BYTES;
            for (k, v) in page {
                let entry: LogEntry = decode(&k, &v)?;
                if entry.seq > end {
                    full = false;
                    break;
                }
                let shared = Arc::new(share(entry, &k, max)?);
                cache.insert(community, generation, shared.clone());
                run.push(shared);
            }
            if run.is_empty() {
                // Nothing after `from`: what this stream has is everything.
                note_sent(sent, community, from);
            }
            full
        } else {
            // The run stopped short of `end`: the rest comes from the store at once.
            run.last().is_some_and(|e| e.seq < end)
        };
        for shared in run {
            sent.insert(community.clone(), shared.seq);
            if let Some((notice_id, label)) = &shared.notice {
                let allowed = match label {
                    Ok(label) => {
                        let d = decide::deliver(label, caller.identity.clearance.as_ref());
                        if d.allowed {
                            Ok(())
                        } else {
                            Err(d.to_string())
                        }
                    }
                    Err(e) => Err(e.clone()),
                };
                if let Err(reason) = allowed {
                    relay.audit_now(AuditEvent::new(
                        AuditKind::Withheld,
                        relay.id(),
                        format!("{community} notice {notice_id}"),
                        "deliver",
                        format!("withheld from {}: {reason}", caller.id),
                    ));
                    continue;
                }
            }
            // Frames go out together: one stream write per run of entries, not one
            // per entry.
            out.extend_from_slice(&shared.frame);
            relay.metrics().delivered_to_device(1);
            if out.len() >= WRITE_CHUNK && !write_out(send, &mut out).await {
                return Ok(None);
            }
        }
        more |= full;
    }
    if !write_out(send, &mut out).await {
        return Ok(None);
    }
    Ok(Some(more))
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

/// This stream has handed on `community`'s log up to `seq` (or the device had it).
fn note_sent(sent: &mut HashMap<String, u64>, community: &str, seq: u64) {
    let upto = sent.entry(community.to_string()).or_insert(seq);
    *upto = (*upto).max(seq);
}

/// A subscription's membership records, read again only after a batch wrote
/// membership records (of anyone: they change rarely).
#[derive(Debug, Default)]
struct Memberships {
    read_at: Option<u64>,
    records: Vec<(String, MemberRecord)>,
}

impl Memberships {
    fn current(
        &mut self,
        relay: &Relay,
        user: &str,
    ) -> Result<&[(String, MemberRecord)], RelayError> {
        // The count first: a write after it moves it again, and the next round reads.
        let writes = relay.member_writes();
        if self.read_at != Some(writes) {
            self.records = memberships(relay, user)?;
            self.read_at = Some(writes);
        }
        Ok(&self.records)
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
