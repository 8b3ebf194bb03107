//! Relay-to-relay federation (ALPN `kring-fed/1`).
//!
//! - **Links**: one QUIC connection per pair of relays, dialled by the relay with the
//!   smaller id and re-dialled with backoff after a cut; either side opens request
//!   streams on it. Only configured peers are accepted, and a peer's id must match
//!   its certificate. A peer's accreditation is its certificate's Clearance, lowered
//!   by the `accreditation` of its `[[peers]]` entry if set.
//! - **Outboxes**: everything a relay must tell a peer is written as an
//!   [`OutboxRecord`] under `o/PEER\0SEQ` in the same atomic batch as the change that
//!   caused it (a hub's log entries by reference: the entry is read from the log when
//!   sent; a commit travels with the community's member list, a notice with its id
//!   only), and sent as [`FedItem`]s in order, only once durable, until the peer
//!   acknowledges durable receipt. The receiver applies each item exactly once
//!   (`r/PEER` holds the last applied seq, updated in the same batch as the item's
//!   effect), all items of one delivery in one batch (a revocation or CRL in its own).
//! - **Synchronous calls**: commits are forwarded to the hub and key package fetches
//!   to the user's home relay as request/response on the link, with a deadline.
//!
//! Policy at every hop: the hub withholds a notice from a relay whose accreditation
//! does not admit it ([`Relay::relay_accreditation`]); a receiving relay checks every
//! notice against its own accreditation and the sending peer's, accepts entries only
//! from the community's hub and notices only from the filer's home relay, and learns
//! about a community only when one of its users is a member.
//!
//! This module holds the peers; `link` (dial, accept, serve), `outbox` (write and
//! send), `apply` (receive, exactly once, policy at this hop) and `calls` (forwarded
//! commits and key package fetches) do the rest.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_policy::{Clearance, Label, decide};
use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::mls::{MessageHeader, MessageKind};
use kring_protocol::wire::{
    CommunitySummary, EntryKind, ErrorCode, FedBody, FedItem, FedRequest, FedResponse, LogEntry,
    Response,
};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::{EntryRefusal, PeerAuthError, RelayError};
use crate::groups;
use crate::net::{read_frame, write_frame};
use crate::records::{CommunityRecord, NoticeRecord, OutboxRecord, Outgoing};
use crate::relay::{Relay, Writer, home_relay, now};
use crate::revocation::PeerInfo;
use crate::store::{Batch, Engine, decode, get_obj};

/// How long a forwarded commit or key package fetch may take, link set-up included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Items per delivery.
const BATCH: usize = 64;
pub use crate::config::MIN_MAX_FRAME;
/// Federation requests one peer relay may make per second, as a multiple of the
/// per-identity `requests_per_second` (a peer speaks for all its users); the burst
/// is twice that.
pub const PEER_RATE_FACTOR: u32 = 10;
/// Refusals of one peer's input recorded one by one per [`REFUSAL_AUDIT_WINDOW`];
/// beyond that they are counted and recorded as one summary.
pub const REFUSAL_AUDIT_PER_WINDOW: u32 = 32;
/// The window of [`REFUSAL_AUDIT_PER_WINDOW`].
pub const REFUSAL_AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct requesters one peer may fetch key packages for per
/// [`REQUESTER_WINDOW`]; beyond that a fetch is refused (`RateLimited`).
pub const MAX_REQUESTERS_PER_PEER: usize = 1_000;
/// The window of [`MAX_REQUESTERS_PER_PEER`].
pub const REQUESTER_WINDOW: Duration = Duration::from_secs(3600);
/// Most communities hubbed at one peer that one user of this relay may be a member
/// of here; a hub registering the user in more is refused.
pub const MAX_PEER_COMMUNITIES_PER_USER: u64 = 1_000;
/// Most communities one peer hub may register at this relay.
pub const MAX_PEER_COMMUNITIES: u64 = 100_000;
/// Longest wait between dial attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

use crate::keyspace::federation as keys;

mod apply;
mod blobs;
mod calls;
mod link;
mod outbox;

pub use crate::core::outbox::{
    DELIVER_MARGIN, check_item_len, delivery_budget, enqueue, enqueue_log_entry, load_outbox_heads,
    outbox_state, store_outgoing,
};
pub(crate) use apply::*;
pub use calls::*;
pub use link::*;
use outbox::*;

/// A configured federation peer and its link.
#[derive(Debug)]
pub struct Peer {
    /// Peer relay id.
    pub id: String,
    /// Where to dial it.
    pub address: SocketAddr,
    cap: Option<Clearance>,
    accreditation: Mutex<Option<Clearance>>,
    conn: Mutex<Option<quinn::Connection>>,
    link: watch::Sender<u64>,
    info: Mutex<Option<PeerInfo>>,
    rate: Mutex<Option<TokenBucket>>,
    refusals: Mutex<AuditThrottle>,
    requesters: Mutex<RecentNames>,
    /// Set when a reload removed or replaced this peer: its dialler and outbox
    /// sender stop, its link is closed.
    retired: std::sync::atomic::AtomicBool,
}

impl Peer {
    /// A peer from its `[[peers]]` entry.
    pub fn from_config(p: &crate::config::PeerToml, engine: &dyn Engine) -> Arc<Self> {
        let cap = p.accreditation.as_ref().and_then(|a| a.parse().ok());
        Arc::new(Self::new(&p.id, p.address, cap, engine))
    }

    /// Whether a reload removed or replaced this peer.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops this peer's link tasks and closes its link (a reload removed or
    /// replaced it).
    pub fn retire(&self, reason: &str) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.close_link(reason);
    }

    /// Closes the live link, if any (it is re-dialled by the side that dials).
    pub fn close_link(&self, reason: &str) {
        let conn = self.conn.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = conn {
            c.close(CloseCode::Reconfigured.code().into(), reason.as_bytes());
        }
        self.link.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The live link's certificate chain, if any.
    pub fn link_chain(&self) -> Option<Vec<Vec<u8>>> {
        self.conn().and_then(|c| crate::net::peer_chain(&c))
    }

    /// A peer from configuration; its last known accreditation comes from the store.
    pub fn new(id: &str, address: SocketAddr, cap: Option<Clearance>, engine: &dyn Engine) -> Self {
        let known = get_obj::<String>(engine, &keys::accreditation(id))
            .ok()
            .flatten()
            .and_then(|t| t.parse().ok());
        let (link, _) = watch::channel(0);
        let info = get_obj::<PeerInfo>(engine, &crate::revocation::keys::peer_info(id))
            .ok()
            .flatten();
        Self {
            info: Mutex::new(info),
            id: id.to_string(),
            address,
            cap,
            accreditation: Mutex::new(known),
            conn: Mutex::new(None),
            link,
            rate: Mutex::new(None),
            refusals: Mutex::new(AuditThrottle::default()),
            requesters: Mutex::new(RecentNames::new(MAX_REQUESTERS_PER_PEER, REQUESTER_WINDOW)),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Charges one federation request to the peer's token bucket (`per_second`,
    /// burst twice that); `Err(retry_after_ms)` if it is empty.
    fn check_rate(&self, per_second: u32, now: Instant) -> Result<(), u64> {
        let mut rate = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rate.get_or_insert_with(|| TokenBucket::new(per_second, now))
            .take(now)
    }

    /// Whether a refusal of this peer's input may be recorded one by one now (see
    /// [`AuditThrottle`]).
    fn refusal_verdict(&self, now: Instant) -> ThrottleVerdict {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(now, REFUSAL_AUDIT_PER_WINDOW, REFUSAL_AUDIT_WINDOW)
    }

    /// Refusals counted but not recorded in a window that has ended, if any.
    fn refusals_unrecorded(&self, now: Instant) -> Option<u64> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush(now, REFUSAL_AUDIT_WINDOW)
    }

    /// The peer's effective accreditation, if known: what its certificate grants
    /// (as last seen), lowered by this relay's configuration.
    pub fn accreditation(&self) -> Option<Clearance> {
        let granted = self.accreditation.lock().ok().and_then(|a| a.clone());
        self.effective(granted)
    }

    fn effective(&self, granted: Option<Clearance>) -> Option<Clearance> {
        match (granted, &self.cap) {
            (Some(g), Some(cap)) => kring_policy::meet(&g, cap).ok(),
            (g, _) => g,
        }
    }

    /// The peer's organisation and CA as its certificate said when last seen.
    pub fn info(&self) -> Option<PeerInfo> {
        self.info.lock().ok().and_then(|i| i.clone())
    }

    /// The live connection, if the link is up.
    pub fn conn(&self) -> Option<quinn::Connection> {
        self.conn
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|c| c.close_reason().is_none())
    }

    fn set_conn(&self, conn: Option<quinn::Connection>) {
        if let Ok(mut c) = self.conn.lock() {
            *c = conn;
        }
        self.link.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The live connection, waiting up to `deadline` for the link to come up.
    pub(crate) async fn wait_conn(&self, deadline: Duration) -> Option<quinn::Connection> {
        let mut rx = self.link.subscribe();
        let wait = async {
            loop {
                if let Some(c) = self.conn() {
                    return Some(c);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(deadline, wait).await.ok().flatten()
    }
}

/// A token bucket: `per_second` tokens a second, at most twice that held.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second * 2.0,
            last: now,
        }
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_second * 1000.0).ceil() as u64)
        }
    }
}

/// What to record of one refusal of a peer's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThrottleVerdict {
    /// Refusals of an earlier window that were counted, not recorded: record a
    /// summary of them first.
    unrecorded: Option<u64>,
    /// Record this one.
    record: Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// In full.
    Full,
    /// Not in full, but say that from now on refusals are counted only.
    Note,
    /// Count it only.
    Count,
}

/// Caps the audit records one peer's refusals write: `per_window` in full per
/// window, then one note, then a count, recorded as one summary when a later
/// window starts (or a later request of the peer comes after the window ends).
#[derive(Debug, Default)]
struct AuditThrottle {
    start: Option<Instant>,
    recorded: u32,
    counted: u64,
}

impl AuditThrottle {
    fn roll(&mut self, now: Instant, window: Duration) -> Option<u64> {
        let ended = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= window);
        if !ended {
            return None;
        }
        self.start = Some(now);
        self.recorded = 0;
        Some(std::mem::take(&mut self.counted)).filter(|n| *n > 0)
    }

    fn admit(&mut self, now: Instant, per_window: u32, window: Duration) -> ThrottleVerdict {
        let unrecorded = self.roll(now, window);
        let record = if self.recorded < per_window {
            self.recorded += 1;
            Record::Full
        } else if self.counted == 0 {
            self.counted = 1;
            Record::Note
        } else {
            self.counted += 1;
            Record::Count
        };
        ThrottleVerdict { unrecorded, record }
    }

    /// The count of a window that has ended (and starts no new one unless it had).
    fn flush(&mut self, now: Instant, window: Duration) -> Option<u64> {
        if self.counted == 0 {
            return None;
        }
        self.roll(now, window)
    }
}

/// Distinct names seen in a window, at most `max` at once.
#[derive(Debug)]
struct RecentNames {
    max: usize,
    window: Duration,
    seen: std::collections::HashMap<String, Instant>,
}

impl RecentNames {
    fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            seen: std::collections::HashMap::new(),
        }
    }

    /// Whether `name` may be used now: it was seen within the window, or there is
    /// room for it (after forgetting names whose window has ended).
    fn admit(&mut self, name: &str, now: Instant) -> bool {
        let window = self.window;
        if let Some(at) = self.seen.get(name)
            && now.saturating_duration_since(*at) < window
        {
            return true;
        }
        if self.seen.len() >= self.max {
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < window);
            if self.seen.len() >= self.max {
                return false;
            }
        }
        self.seen.insert(name.to_string(), now);
        true
    }
}

/// Audit-logs a refusal of `peer`'s input in the writer's batch, within the cap of
/// `AuditThrottle`.
pub fn audit_peer_refusal(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    event: AuditEvent,
) -> Result<(), RelayError> {
    for e in throttled(relay, peer, event) {
        w.audit.append(b, now(), e)?;
    }
    Ok(())
}

/// [`audit_peer_refusal`] in a batch of its own.
fn audit_peer_refusal_now(relay: &Relay, peer: &str, event: AuditEvent) {
    for e in throttled(relay, peer, event) {
        relay.audit_now(e);
    }
}

fn unrecorded_event(peer: &str, n: u64) -> AuditEvent {
    AuditEvent::new(
        AuditKind::Refusal,
        peer,
        "-",
        "peer-refusals-summary",
        format!(
            "{n} further refusals of relay {peer}'s requests and items were counted, not \
             recorded one by one (at most {REFUSAL_AUDIT_PER_WINDOW} per {} s)",
            REFUSAL_AUDIT_WINDOW.as_secs()
        ),
    )
}

/// The audit records to write for `event`, a refusal of `peer`'s input.
fn throttled(relay: &Relay, peer: &str, event: AuditEvent) -> Vec<AuditEvent> {
    let Some(p) = relay.peer(peer) else {
        return vec![event];
    };
    let verdict = p.refusal_verdict(Instant::now());
    let mut out = Vec::new();
    if let Some(n) = verdict.unrecorded {
        out.push(unrecorded_event(peer, n));
    }
    match verdict.record {
        Record::Full => out.push(event),
        Record::Note => out.push(AuditEvent::new(
            AuditKind::Refusal,
            peer,
            "-",
            "peer-refusals-summary",
            format!(
                "more than {REFUSAL_AUDIT_PER_WINDOW} refusals of relay {peer}'s input in {} s: \
                 further ones in this window are counted, then recorded as one summary",
                REFUSAL_AUDIT_WINDOW.as_secs()
            ),
        )),
        Record::Count => {}
    }
    out
}

#[cfg(test)]
mod tests;
