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
use crate::error::RelayError;
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
/// Bytes of a federation frame kept free for the envelope of a delivery (the request,
/// its version and item count): a delivery's items fill at most `max_frame` less this.
pub const DELIVER_MARGIN: usize = 4096;
/// The smallest `max_frame` a relay may be configured with: one delivery must be able
/// to carry the largest notice (an MLS message of
/// [`MAX_MESSAGE_BYTES`](kring_protocol::mls::MAX_MESSAGE_BYTES) with its envelope)
/// to any peer.
pub const MIN_MAX_FRAME: usize = kring_protocol::mls::MAX_MESSAGE_BYTES + (64 << 10);
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

fn get_u64(engine: &dyn Engine, key: &[u8]) -> Result<u64, RelayError> {
    Ok(get_obj::<u64>(engine, key)?.unwrap_or(0))
}

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

/// Loads the next outbox sequence number of every peer.
pub fn load_outbox_heads(
    engine: &dyn Engine,
    peers: &[crate::config::PeerToml],
) -> Result<std::collections::HashMap<String, u64>, RelayError> {
    let mut out = std::collections::HashMap::new();
    for p in peers {
        let next = get_u64(engine, &keys::outbox_next(&p.id))?.max(1);
        out.insert(p.id.clone(), next);
    }
    Ok(out)
}

/// Adds an item for `peer` to the batch (durable with it).
pub fn enqueue(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    body: FedBody,
) -> Result<(), RelayError> {
    check_item_len(relay, peer, SEQ_LEN + encoded_len(&body))?;
    store_outgoing(relay, w, b, peer, Outgoing::Body(body))
}

/// Most bytes the seq of a [`FedItem`] takes (a varint u64).
const SEQ_LEN: usize = 10;

/// Bytes of the postcard encoding of `value` (`usize::MAX` if it cannot be encoded).
fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
    .unwrap_or(usize::MAX)
}

/// Bytes of items one delivery may carry with frames of `max_frame` bytes.
pub fn delivery_budget(max_frame: usize) -> usize {
    max_frame.saturating_sub(DELIVER_MARGIN)
}

/// How many of the next items, of `lens` bytes each, one delivery carries: as many
/// as fit in `budget` bytes (at most [`BATCH`]), and always at least one.
fn batch_len(lens: &[usize], budget: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for len in lens.iter().take(BATCH) {
        total = total.saturating_add(*len);
        if n > 0 && total > budget {
            break;
        }
        n += 1;
    }
    n
}

/// Refuses an item of `len` bytes for `peer` that no delivery could carry: it
/// would block every item queued after it.
fn check_item_len(relay: &Relay, peer: &str, len: usize) -> Result<(), RelayError> {
    let budget = delivery_budget(relay.limits().max_frame);
    if len > budget {
        return Err(ErrorCode::TooLarge {
            what: format!(
                "an item of {len} bytes for relay {peer} does not fit in one federation \
                 delivery ({budget} bytes with max_frame {})",
                relay.limits().max_frame
            ),
        }
        .into());
    }
    Ok(())
}

/// Adds `entry` of this hub's log of `rec` for `peer` to the batch: the entry itself
/// is read from the log when it is sent. A commit goes with the community as it
/// stands after it; a notice goes with the community's id only.
pub fn enqueue_log_entry(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    rec: &CommunityRecord,
    entry: &LogEntry,
) -> Result<(), RelayError> {
    // Sent as the body with the entry in it: the body without it, plus the entry.
    let (item, len) = match entry.kind {
        EntryKind::Notice { .. } => {
            let body = FedBody::NoticeEntry {
                community: rec.id.clone(),
                seq: entry.seq,
                entry: None,
            };
            let item = Outgoing::NoticeEntry {
                community: rec.id.clone(),
                seq: entry.seq,
            };
            (item, encoded_len(&body))
        }
        EntryKind::Handshake { .. } => {
            let community = crate::relay::summary(rec);
            let len = encoded_len(&FedBody::Entry {
                community: community.clone(),
                seq: entry.seq,
                entry: None,
            });
            let item = Outgoing::LogEntry {
                community,
                seq: entry.seq,
            };
            (item, len)
        }
    };
    check_item_len(relay, peer, SEQ_LEN + len + encoded_len(entry))?;
    store_outgoing(relay, w, b, peer, item)
}

fn store_outgoing(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    item: Outgoing,
) -> Result<(), RelayError> {
    if !relay.is_peer(peer) {
        return Err(ErrorCode::Unavailable {
            reason: format!("relay {peer} is not a federation peer of {}", relay.id()),
        }
        .into());
    }
    let next = w.outbox_next.entry(peer.to_string()).or_insert(1);
    let seq = *next;
    *next += 1;
    b.put_obj(keys::outbox(peer, seq), &OutboxRecord { seq, item })?;
    b.put_obj(keys::outbox_next(peer), &(seq + 1))?;
    relay.metrics().outbox_enqueued(peer, seq);
    Ok(())
}

/// The outbox to `peer` as the store holds it: how many items wait, and the seq of
/// the oldest (none when empty).
pub fn outbox_state(relay: &Relay, peer: &str) -> Result<(u64, Option<u64>), RelayError> {
    let engine = relay.engine();
    let Some((k, v)) = engine
        .scan(&keys::outbox_prefix(peer), None, 1)?
        .into_iter()
        .next()
    else {
        return Ok((0, None));
    };
    let head = decode::<OutboxRecord>(&k, &v)?.seq;
    // Items are acknowledged (and deleted) in order: everything from the oldest to
    // the last one enqueued waits.
    let next = get_u64(engine, &keys::outbox_next(peer))?;
    Ok((next.saturating_sub(head).max(1), Some(head)))
}

/// Starts the dialler and the outbox sender of every peer.
pub fn start_links(relay: &Arc<Relay>) {
    for peer in relay.peer_list() {
        start_link(relay, peer);
    }
}

/// Starts the dialler (if this relay dials it) and the outbox sender of `peer`;
/// both stop when the peer is retired.
pub fn start_link(relay: &Arc<Relay>, peer: Arc<Peer>) {
    {
        let span = info_span!("link", peer = %peer.id);
        if relay.id() < peer.id.as_str() {
            tokio::spawn(dial_loop(relay.clone(), peer.clone()).instrument(span.clone()));
        }
        tokio::spawn(outbox_loop(relay.clone(), peer.clone()).instrument(span));
    }
}

async fn dial_loop(relay: Arc<Relay>, peer: Arc<Peer>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if peer.is_retired() {
            return;
        }
        if let Some(c) = peer.conn() {
            c.closed().await;
            continue;
        }
        let Some((endpoint, config)) = relay.endpoint.get() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let name = format!("{}.relay.kring", peer.id);
        let attempt = match endpoint.connect_with(config.clone(), peer.address, &name) {
            Ok(connecting) => tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(conn) => match authenticate_peer(&relay, &conn, Some(&peer.id)) {
                Ok(identity) => {
                    // Registered like every connection: connection cap, request byte
                    // budget, cut off when revoked or expired.
                    let chain = crate::net::peer_chain(&conn).unwrap_or_default();
                    match relay.register_connection(&identity, &chain, conn.clone()) {
                        Ok(registration) => {
                            backoff = Duration::from_millis(100);
                            run_link(relay.clone(), peer.clone(), conn, identity).await;
                            drop(registration);
                        }
                        Err(code) => {
                            warn!(error = %code, "link refused");
                            relay
                                .metrics()
                                .refused(crate::metrics::KIND_CONNECTION, &code);
                            relay.audit_now(AuditEvent::new(
                                AuditKind::Connection,
                                peer.id.clone(),
                                peer.address.to_string(),
                                "link-refused",
                                code.to_string(),
                            ));
                            conn.close(CloseCode::Refused.code().into(), b"connection cap");
                        }
                    }
                }
                Err(reason) => {
                    warn!(%reason, "peer refused");
                    relay
                        .metrics()
                        .refused_for(crate::metrics::KIND_CONNECTION, "unauthenticated");
                    relay.audit_now(AuditEvent::new(
                        AuditKind::Connection,
                        peer.id.clone(),
                        peer.address.to_string(),
                        "link-refused",
                        reason.clone(),
                    ));
                    conn.close(CloseCode::Refused.code().into(), reason.as_bytes());
                }
            },
            Err(e) => debug!(error = %e, "dial failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn authenticate_peer(
    relay: &Relay,
    conn: &quinn::Connection,
    expected: Option<&str>,
) -> Result<Identity, String> {
    let chain: Vec<Vec<u8>> = conn
        .peer_identity()
        .and_then(|a| {
            a.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .ok_or("no peer certificate")?;
    let identity = relay
        .authenticate(&chain, IdentityKind::Relay)
        .map_err(|e| e.to_string())?;
    if !relay.is_peer(&identity.name) {
        return Err(format!("relay {} is not a configured peer", identity.name));
    }
    if let Some(expected) = expected
        && identity.name != expected
    {
        return Err(format!(
            "dialled {expected} but the certificate is for relay {}",
            identity.name
        ));
    }
    Ok(identity)
}

/// Serves a peer relay that connected to us.
pub async fn serve_peer(relay: Arc<Relay>, conn: quinn::Connection, identity: Identity) {
    let peer = match relay.peer(&identity.name) {
        Some(p) => p,
        None => {
            relay.audit_now(AuditEvent::new(
                AuditKind::Link,
                identity.name.clone(),
                relay.id(),
                "link-refused",
                "not a configured peer",
            ));
            conn.close(CloseCode::Refused.code().into(), b"not a configured peer");
            return;
        }
    };
    run_link(relay, peer, conn, identity).await;
}

async fn run_link(relay: Arc<Relay>, peer: Arc<Peer>, conn: quinn::Connection, identity: Identity) {
    // `authenticate` bound the certificate to the peer's configured organisation
    // (and CA); this is the last line before anything about the peer is recorded.
    let trust = relay.trust();
    let configured = trust.organisation_of(&peer.id);
    if identity.name != peer.id || configured != Some(identity.organisation.as_str()) {
        relay.audit_now(AuditEvent::new(
            AuditKind::Link,
            identity.id(),
            relay.id(),
            "link-refused",
            format!(
                "certificate of {} (organisation {}) cannot speak for peer {}",
                identity.id(),
                identity.organisation,
                peer.id
            ),
        ));
        conn.close(CloseCode::Refused.code().into(), b"wrong organisation");
        return;
    }
    let granted = identity.clearance.clone();
    if let Ok(mut a) = peer.accreditation.lock() {
        *a = granted.clone();
    }
    let info = PeerInfo {
        organisation: identity.organisation.clone(),
        ca: crate::net::peer_chain(&conn)
            .and_then(|c| relay.verified_issuer(&c))
            .unwrap_or_default(),
    };
    if let Ok(mut i) = peer.info.lock() {
        *i = Some(info.clone());
    }
    let accreditation = peer.accreditation();
    let text = accreditation
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "none".into());
    let _ = relay.write(|w, b| {
        // A certificate without a Clearance grants nothing: what an earlier one
        // granted must not come back after a restart.
        match &granted {
            Some(a) => b.put_obj(keys::accreditation(&peer.id), &a.to_string())?,
            None => b.delete(keys::accreditation(&peer.id)),
        }
        b.put_obj(crate::revocation::keys::peer_info(&peer.id), &info)?;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Link,
                relay.id(),
                peer.id.clone(),
                "link-up",
                format!("accreditation {text}"),
            ),
        )
    });
    peer.set_conn(Some(conn.clone()));
    info!(accreditation = %text, "link up");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let relay = relay.clone();
                let peer_id = peer.id.clone();
                tokio::spawn(
                    handle_stream(relay, peer_id, send, recv).instrument(info_span!("fed-req")),
                );
            }
            Err(e) => {
                info!(reason = %e, "link down");
                break;
            }
        }
    }
    // Only clear the slot if it still holds this connection.
    if peer
        .conn
        .lock()
        .ok()
        .and_then(|c| c.as_ref().map(|c| c.stable_id()))
        == Some(conn.stable_id())
    {
        peer.set_conn(None);
    }
    relay.audit_now(AuditEvent::new(
        AuditKind::Link,
        relay.id(),
        peer.id.clone(),
        "link-down",
        conn.close_reason()
            .map(|r| r.to_string())
            .unwrap_or_default(),
    ));
}

async fn handle_stream(
    relay: Arc<Relay>,
    peer: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = relay.limits().max_frame;
    // Bounded like a device's request: a rate per peer, charged before the frame is
    // read; a deadline for the frame, its bytes charged to the peer's request byte
    // budget until the answer is sent.
    let deadline = Duration::from_millis(relay.limits().frame_timeout_ms);
    if let Some(p) = relay.peer(&peer) {
        let at = Instant::now();
        if let Some(n) = p.refusals_unrecorded(at) {
            relay.audit_now(unrecorded_event(&peer, n));
        }
        let per_second = relay
            .limits()
            .requests_per_second
            .saturating_mul(PEER_RATE_FACTOR);
        if let Err(retry_after_ms) = p.check_rate(per_second, at) {
            let code = ErrorCode::RateLimited { retry_after_ms };
            relay.metrics().refused(crate::metrics::KIND_UNREAD, &code);
            audit_peer_refusal_now(
                &relay,
                &peer,
                AuditEvent::new(
                    AuditKind::Refusal,
                    peer.clone(),
                    "-",
                    "rate-limit",
                    format!(
                        "federation request rate above {per_second} per second \
                         ({PEER_RATE_FACTOR} x requests_per_second)"
                    ),
                ),
            );
            let _ = write_frame(
                &mut send,
                &FedResponse::Response(Response::Error(code)),
                max,
            )
            .await;
            let _ = send.finish();
            let _ = recv.stop(0u32.into());
            return;
        }
    }
    let budget = relay.request_budget(&peer);
    let read = match crate::net::read_request_frame(&mut recv, max, &budget, deadline).await {
        Ok(Some((r, hold))) => crate::net::expect_end(&mut recv)
            .await
            .map(|()| (r, hold))
            .map_err(|code| ("federation-decode", code.to_string(), code)),
        Ok(None) => return,
        Err(r) if r.action == "decode" => Err(("federation-decode", r.detail, r.code)),
        Err(r) => Err((r.action, r.detail, r.code)),
    };
    let (request, _hold): (FedRequest, _) = match read {
        Ok(r) => r,
        Err((action, detail, code)) => {
            relay.metrics().refused(crate::metrics::KIND_UNREAD, &code);
            // A frame that does not decode, bytes after it, a frame too slow or over
            // the peer's budget: refused and audited.
            audit_peer_refusal_now(
                &relay,
                &peer,
                AuditEvent::new(AuditKind::Refusal, peer.clone(), "-", action, detail),
            );
            let _ = write_frame(
                &mut send,
                &FedResponse::Response(Response::Error(code)),
                max,
            )
            .await;
            let _ = send.finish();
            return;
        }
    };
    let kind = fed_request_kind(&request);
    relay.metrics().request(kind);
    let response = match request {
        FedRequest::Deliver { items } => match apply_items(&relay, &peer, items).await {
            Ok(upto) => FedResponse::Ack { upto },
            Err(e) => {
                relay.metrics().refused(kind, &e.to_code());
                tracing::error!(error = %e, "applying federation items failed");
                FedResponse::Response(Response::Error(e.to_code()))
            }
        },
        FedRequest::Handshake {
            community,
            sender,
            message,
            welcome,
        } => {
            let r = if home_relay(&sender) != peer {
                Err(RelayError::Refused(ErrorCode::Unauthenticated {
                    reason: format!("{sender} is not a user of relay {peer}"),
                }))
            } else {
                relay
                    .handshake_at_hub(&sender, Some(&peer), &community, &message, welcome)
                    .await
            };
            FedResponse::Response(match r {
                Ok(r) => r,
                Err(e) => {
                    let code = e.to_code();
                    relay.metrics().refused(kind, &code);
                    audit_peer_refusal_now(
                        &relay,
                        &peer,
                        AuditEvent::new(
                            AuditKind::Refusal,
                            sender.as_str(),
                            community.as_str(),
                            "handshake",
                            code.to_string(),
                        ),
                    );
                    Response::Error(code)
                }
            })
        }
        FedRequest::Whereabouts => {
            crate::recovery::whereabouts(&relay, &peer).unwrap_or_else(|e| {
                relay.metrics().refused(kind, &e.to_code());
                FedResponse::Response(Response::Error(e.to_code()))
            })
        }
        FedRequest::FetchLog { community, after } => {
            crate::recovery::fetch_log(&relay, &peer, &community, after).unwrap_or_else(|e| {
                relay.metrics().refused(kind, &e.to_code());
                FedResponse::Response(Response::Error(e.to_code()))
            })
        }
        FedRequest::Trust { after } => {
            let answer = match after {
                None => crate::revocation::trust_state(&relay).map(Response::Trust),
                Some(user) => crate::revocation::trust_statements(&relay, Some(&user)),
            };
            FedResponse::Response(answer.unwrap_or_else(|e| {
                relay.metrics().refused(kind, &e.to_code());
                Response::Error(e.to_code())
            }))
        }
        FedRequest::FetchKeyPackage { user, requester } => {
            let r = match check_fetch(&relay, &peer, &requester, &user) {
                Ok(()) => relay.take_key_package(&requester, &user).await,
                Err(code) => Err(RelayError::Refused(code)),
            };
            FedResponse::Response(match r {
                Ok(r) => r,
                Err(e) => {
                    let code = e.to_code();
                    relay.metrics().refused(kind, &code);
                    audit_peer_refusal_now(
                        &relay,
                        &peer,
                        AuditEvent::new(
                            AuditKind::Refusal,
                            requester.as_str(),
                            user.as_str(),
                            "fetch-key-package",
                            code.to_string(),
                        ),
                    );
                    Response::Error(code)
                }
            })
        }
    };
    let _ = write_frame(&mut send, &response, max).await;
    let _ = send.finish();
}

/// Whether `peer` may fetch a key package of `user` for `requester`: both well-formed
/// user ids, the requester a user of `peer`, the user one of this relay who has key
/// packages, and the requester one of at most [`MAX_REQUESTERS_PER_PEER`] the peer
/// fetched for lately (the fetch limits keep counters per requester).
fn check_fetch(relay: &Relay, peer: &str, requester: &str, user: &str) -> Result<(), ErrorCode> {
    use kring_protocol::identity::parse_user_id;
    if let Err(e) = parse_user_id(requester).and_then(|_| parse_user_id(user)) {
        return Err(ErrorCode::BadRequest {
            reason: e.to_string(),
        });
    }
    if home_relay(requester) != peer || home_relay(user) != relay.id() {
        return Err(ErrorCode::BadRequest {
            reason:
                "key packages are fetched from the user's home relay by the requester's home relay"
                    .into(),
        });
    }
    // A revoked user is refused as such (as `take_key_package` would), not as one
    // without key packages: revocation deleted them.
    if relay.revocations().user_revoked(user).is_some() {
        return Err(ErrorCode::Revoked);
    }
    let engine = relay.engine();
    let has_packages = matches!(
        engine.get(&crate::store::keys::last_resort(user)),
        Ok(Some(_))
    ) || engine
        .scan(&crate::store::keys::key_package_prefix(user), None, 1)
        .is_ok_and(|p| !p.is_empty());
    if !has_packages {
        return Err(ErrorCode::KeyMaterialExhausted {
            user: user.to_string(),
        });
    }
    let admitted = relay.peer(peer).is_some_and(|p| {
        p.requesters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(requester, Instant::now())
    });
    if !admitted {
        return Err(ErrorCode::RateLimited {
            retry_after_ms: u64::try_from(REQUESTER_WINDOW.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// Short name of a federation request for metrics (never its content).
pub fn fed_request_kind(r: &FedRequest) -> &'static str {
    match r {
        FedRequest::Deliver { .. } => "federation-deliver",
        FedRequest::Handshake { .. } => "federation-handshake",
        FedRequest::FetchKeyPackage { .. } => "federation-fetch-key-package",
        FedRequest::Whereabouts => "federation-whereabouts",
        FedRequest::FetchLog { .. } => "federation-fetch-log",
        FedRequest::Trust { .. } => "federation-trust",
    }
}

/// Why a call on a link got no answer.
#[derive(Debug)]
enum CallError {
    /// The request did not leave this relay whole (no stream, or writing it
    /// failed before its end): the peer cannot have acted on it.
    NotSent(String),
    /// The request was sent, but no answer came back (in time): the peer may have
    /// acted on it.
    NoAnswer(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotSent(why) => write!(f, "not sent: {why}"),
            CallError::NoAnswer(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// One request/response on a link.
async fn call(
    conn: &quinn::Connection,
    request: &FedRequest,
    max: usize,
    deadline: Duration,
) -> Result<FedResponse, CallError> {
    let sent = std::sync::atomic::AtomicBool::new(false);
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        write_frame(&mut send, request, max)
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        // The peer reads a request only once its stream has ended: from here on it
        // may act on it.
        sent.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = send.finish();
        match read_frame::<FedResponse>(&mut recv, max).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(CallError::NoAnswer(
                "the peer closed the stream without answering".to_string(),
            )),
            Err(e) => Err(CallError::NoAnswer(e.to_string())),
        }
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(result) => result,
        Err(_) if sent.load(std::sync::atomic::Ordering::SeqCst) => {
            Err(CallError::NoAnswer("no answer in time".to_string()))
        }
        Err(_) => Err(CallError::NotSent(
            "the request could not be sent in time".to_string(),
        )),
    }
}

/// One request/response on a link (for [`crate::recovery`]); the error says why
/// no answer came.
pub(crate) async fn call_peer(
    conn: &quinn::Connection,
    request: &FedRequest,
    max: usize,
    deadline: Duration,
) -> Result<FedResponse, String> {
    call(conn, request, max, deadline)
        .await
        .map_err(|e| e.to_string())
}

/// A forwarded request without a verdict.
enum NoVerdict {
    /// Refused, or not delivered: the other relay did not act on it.
    Refused(RelayError),
    /// Delivered (or possibly so), but no answer came back in time: the other relay
    /// may or may not have acted on it.
    Unknown(String),
}

/// Sends `request` to peer `to`, within [`FORWARD_TIMEOUT`], and returns its answer.
async fn exchange(relay: &Relay, to: &str, request: FedRequest) -> Result<Response, NoVerdict> {
    let unavailable = |why: String| {
        NoVerdict::Refused(RelayError::Refused(ErrorCode::Unavailable {
            reason: format!("relay {to} unreachable: {why}"),
        }))
    };
    let peer = relay
        .peer(to)
        .ok_or_else(|| unavailable("not a federation peer".into()))?;
    let started = tokio::time::Instant::now();
    let conn = peer
        .wait_conn(FORWARD_TIMEOUT)
        .await
        .ok_or_else(|| unavailable(format!("no link within {} s", FORWARD_TIMEOUT.as_secs())))?;
    let left = FORWARD_TIMEOUT.saturating_sub(started.elapsed());
    match call(&conn, &request, relay.limits().max_frame, left).await {
        Ok(FedResponse::Response(Response::Error(code))) => Err(NoVerdict::Refused(code.into())),
        Ok(FedResponse::Response(r)) => Ok(r),
        Ok(FedResponse::Ack { .. } | FedResponse::Whereabouts(_) | FedResponse::Log { .. }) => Err(
            NoVerdict::Unknown(format!("relay {to} answered with something else")),
        ),
        Err(CallError::NotSent(why)) => Err(unavailable(why)),
        Err(CallError::NoAnswer(why)) => Err(NoVerdict::Unknown(format!(
            "relay {to} did not answer within {} s: {why}",
            FORWARD_TIMEOUT.as_secs()
        ))),
    }
}

/// [`exchange`] for requests whose repetition is harmless: no answer is
/// `Unavailable` like no link.
async fn forward(relay: &Relay, to: &str, request: FedRequest) -> Result<Response, RelayError> {
    exchange(relay, to, request).await.map_err(|e| match e {
        NoVerdict::Refused(e) => e,
        NoVerdict::Unknown(why) => RelayError::Refused(ErrorCode::Unavailable {
            reason: format!("relay {to} unreachable: {why}"),
        }),
    })
}

/// Sends a member's commit to the community's hub and returns its verdict. A
/// commit the hub may have received without its answer coming back is
/// `OutcomeUnknown`, not a refusal: the hub may still order it, and the member
/// must keep it until the community log shows which commit won the epoch.
pub async fn forward_handshake(
    relay: &Relay,
    hub: &str,
    sender: &str,
    community: &str,
    message: &[u8],
    welcome: Option<Vec<u8>>,
) -> Result<Response, RelayError> {
    exchange(
        relay,
        hub,
        FedRequest::Handshake {
            community: community.to_string(),
            sender: sender.to_string(),
            message: message.to_vec(),
            welcome,
        },
    )
    .await
    .map_err(|e| match e {
        NoVerdict::Refused(RelayError::Refused(ErrorCode::Unavailable { reason })) => {
            RelayError::Refused(ErrorCode::Unavailable {
                reason: format!("hub unreachable: {reason}"),
            })
        }
        NoVerdict::Refused(other) => other,
        NoVerdict::Unknown(why) => RelayError::Refused(ErrorCode::OutcomeUnknown {
            reason: format!("hub {hub} may still apply the commit: {why}"),
        }),
    })
}

/// Fetches a key package of a user of another relay from that relay (which applies
/// the fetch limits and audit-logs the fetch); audit-logged here too.
pub async fn forward_fetch_key_package(
    relay: &Relay,
    home: &str,
    requester: &str,
    user: &str,
) -> Result<Response, RelayError> {
    let r = forward(
        relay,
        home,
        FedRequest::FetchKeyPackage {
            user: user.to_string(),
            requester: requester.to_string(),
        },
    )
    .await?;
    if matches!(r, Response::KeyPackage { .. }) {
        relay.audit_now(AuditEvent::new(
            AuditKind::Membership,
            requester,
            user,
            "fetch-key-package",
            format!("key package fetched from relay {home}"),
        ));
    }
    Ok(r)
}

async fn outbox_loop(relay: Arc<Relay>, peer: Arc<Peer>) {
    let mut changes = relay.changes();
    let mut link = peer.link.subscribe();
    // Bytes of items per delivery: the frame less the envelope, halved after a
    // delivery that failed (a peer may read smaller frames), grown again after one
    // that went through. One item always goes, whatever its size.
    let full = delivery_budget(relay.limits().max_frame);
    let mut budget = full;
    let mut recovery = relay.recovery().changes();
    loop {
        if peer.is_retired() {
            return;
        }
        changes.mark_unchanged();
        let Some(conn) = peer.conn() else {
            let _ = link.changed().await;
            continue;
        };
        if relay.recovery().holds(&peer.id) {
            // Restored from a backup: nothing goes out before the peer has said
            // which of this outbox's items it has (`recovery`).
            tokio::select! {
                _ = recovery.changed() => {}
                _ = link.changed() => {}
            }
            continue;
        }
        let items = match pending(&relay, &peer.id, budget) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "cannot read outbox");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if items.is_empty() {
            tokio::select! {
                _ = changes.changed() => {}
                _ = link.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let items = match withhold_at_send(&relay, &peer, items) {
            Ok(items) if items.is_empty() => continue,
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "cannot record a notice withheld from a peer");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let several = items.len() > 1;
        let request = FedRequest::Deliver { items };
        match call(
            &conn,
            &request,
            relay.limits().max_frame,
            Duration::from_secs(15),
        )
        .await
        {
            Ok(FedResponse::Ack { upto }) => {
                budget = budget.saturating_mul(2).min(full);
                let mut acknowledged = 0;
                if let Err(e) = relay.write(|_, b| {
                    if let FedRequest::Deliver { items } = &request {
                        for item in items.iter().filter(|i| i.seq <= upto) {
                            b.delete(keys::outbox(&peer.id, item.seq));
                            acknowledged += 1;
                        }
                    }
                    Ok(())
                }) {
                    tracing::error!(error = %e, "cannot trim outbox");
                } else {
                    relay.metrics().delivered_to_peer(acknowledged);
                }
            }
            Ok(other) => {
                warn!(answer = ?other, "peer did not acknowledge; retrying");
                if several {
                    budget = (budget / 2).max(1);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                // Treat the link as broken: the dialler reconnects.
                debug!(error = %e, "delivery to peer failed; closing the link and retrying");
                if several {
                    budget = (budget / 2).max(1);
                }
                conn.close(CloseCode::DeliveryFailed.code().into(), b"delivery failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The next items for `peer`, in order, as many as fit in `budget` bytes (at least
/// one): only those on disk (a crash must not give an outbox seq the peer has
/// applied to another item).
fn pending(relay: &Relay, peer: &str, budget: usize) -> Result<Vec<FedItem>, RelayError> {
    let engine = relay.engine();
    let prefix = keys::outbox_prefix(peer);
    let durable = relay.readable_upto(&prefix);
    let mut items = Vec::new();
    let mut lens = Vec::new();
    for (k, v) in engine.scan_bounded(&prefix, None, BATCH, budget)? {
        let stored: OutboxRecord = decode(&k, &v)?;
        if stored.seq > durable {
            break;
        }
        let read = |community: &str, seq: u64| -> Result<LogEntry, RelayError> {
            let key = crate::store::keys::log(community, seq);
            get_obj(engine, &key)?.ok_or_else(|| RelayError::Corrupt {
                key: format!("outbox {peer} {}", stored.seq),
                reason: format!("entry {seq} of {community} is not in the log"),
            })
        };
        let body = match stored.item {
            Outgoing::Body(body) => body,
            Outgoing::LogEntry { community, seq } => FedBody::Entry {
                entry: Some(read(&community.id, seq)?),
                community,
                seq,
            },
            Outgoing::NoticeEntry { community, seq } => FedBody::NoticeEntry {
                entry: Some(read(&community, seq)?),
                community,
                seq,
            },
        };
        let item = FedItem {
            seq: stored.seq,
            body,
        };
        lens.push(encoded_len(&item));
        if batch_len(&lens, budget) < lens.len() {
            break;
        }
        items.push(item);
    }
    Ok(items)
}

/// Why a peer accredited `accreditation` must not be sent `body` now, if so: the
/// notice it carries and the reason. Accreditation was decided when the item was
/// queued; it may have been lowered since (configuration, or a new certificate).
fn refused_at_send(
    body: &FedBody,
    peer: &str,
    accreditation: Option<&Clearance>,
) -> Option<(uuid::Uuid, String)> {
    let (notice_id, label) = match body {
        FedBody::NoticeEntry {
            entry:
                Some(LogEntry {
                    kind:
                        EntryKind::Notice {
                            notice_id, label, ..
                        },
                    ..
                }),
            ..
        } => (*notice_id, label.clone()),
        FedBody::Notice {
            notice_id, message, ..
        } => (
            *notice_id,
            groups::read_application(message)
                .map(|a| a.aad)
                .unwrap_or_default(),
        ),
        _ => return None,
    };
    let reason = match kring_protocol::notice_aad::label_of(&label) {
        Ok(label) => {
            let d = kring_policy::decide_opt(Some(&label), accreditation);
            if d.allowed {
                return None;
            }
            format!("relay {peer} is not accredited for {label}: {d}")
        }
        Err(e) => format!("unreadable label: {e}"),
    };
    Some((notice_id, reason))
}

/// Checks every notice about to go to `peer` against the peer's accreditation as it
/// is now. A notice entry above it goes without its content (`entry: None`, as when
/// the hub withholds it at queueing); a notice for the hub is not sent and leaves
/// the outbox. Either way the refusal is recorded for the filer and audit-logged,
/// once per notice and hop.
fn withhold_at_send(
    relay: &Relay,
    peer: &Peer,
    mut items: Vec<FedItem>,
) -> Result<Vec<FedItem>, RelayError> {
    let accreditation = peer.accreditation();
    let mut refused = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some((notice_id, reason)) =
            refused_at_send(&item.body, &peer.id, accreditation.as_ref())
        {
            refused.push((i, notice_id, reason));
        }
    }
    if refused.is_empty() {
        return Ok(items);
    }
    let hop = format!("{}->{}", relay.id(), peer.id);
    let mut unsent = Vec::new();
    relay.write(|w, b| {
        for (i, notice_id, reason) in &refused {
            let item = &items[*i];
            let (community, sender) = match &item.body {
                FedBody::NoticeEntry {
                    community,
                    entry: Some(e),
                    ..
                } => (community.clone(), e.sender.clone()),
                FedBody::Notice {
                    community, sender, ..
                } => {
                    b.delete(keys::outbox(&peer.id, item.seq));
                    unsent.push(*i);
                    (community.clone(), sender.clone())
                }
                _ => continue,
            };
            let known: Option<NoticeRecord> =
                b.get_obj(relay.engine(), &crate::store::keys::notice(notice_id))?;
            if known.is_some_and(|n| n.refusals.iter().any(|r| r.hop == hop)) {
                continue; // recorded when an earlier delivery of it failed
            }
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Withheld,
                    peer.id.clone(),
                    format!("{community} notice {notice_id}"),
                    "send",
                    reason.clone(),
                ),
            )?;
            relay.record_refusal_for(w, b, notice_id, &community, &sender, &hop, reason)?;
        }
        Ok(())
    })?;
    for (i, _, _) in &refused {
        if let FedBody::NoticeEntry { entry, .. } = &mut items[*i].body {
            *entry = None;
        }
    }
    let mut i = 0;
    items.retain(|_| {
        let keep = !unsent.contains(&i);
        i += 1;
        keep
    });
    Ok(items)
}

/// Applies items from `peer` exactly once each, then makes them durable.
///
/// Items that only touch the store are applied in one batch (reads inside see the
/// batch's earlier writes); a revocation or CRL, which also changes the relay's
/// memory, gets a batch of its own. A refused item is rolled back, recorded and
/// skipped: it must not block the link.
async fn apply_items(relay: &Relay, peer: &str, items: Vec<FedItem>) -> Result<u64, RelayError> {
    let touches_memory =
        |body: &FedBody| matches!(body, FedBody::Revocation { .. } | FedBody::Crl { .. });
    let revocations_changed = items.iter().any(|i| touches_memory(&i.body));
    // A delivery of nothing but entries of the logs `peer` is the hub of may reach
    // this relay's devices before the flush (`Relay::deliver_early`); anything else
    // (a Welcome for the members a commit adds, above all) waits for the flush.
    let only_entries = items
        .iter()
        .all(|i| matches!(i.body, FedBody::Entry { .. } | FedBody::NoticeEntry { .. }));
    let mut early: Vec<String> = Vec::new();
    if only_entries {
        for item in &items {
            let id = match &item.body {
                FedBody::Entry { community, .. } => community.id.as_str(),
                FedBody::NoticeEntry { community, .. } => community.as_str(),
                _ => continue,
            };
            if home_relay(id) == peer && !early.iter().any(|c| c == id) {
                early.push(id.to_string());
            }
        }
    }
    let mut writes = Vec::new();
    let mut upto = get_u64(relay.engine(), &keys::applied(peer))?;
    let mut items = items.into_iter().peekable();
    while let Some(first) = items.next() {
        let alone = touches_memory(&first.body);
        let (applied, write) = relay.write_numbered(|w, b| {
            let mut upto = b
                .get_obj::<u64>(relay.engine(), &keys::applied(peer))?
                .unwrap_or(0);
            let mut next = Some(first);
            while let Some(item) = next.take() {
                upto = apply_once(relay, w, b, peer, upto, item)?;
                if !alone {
                    next = items.next_if(|i| !touches_memory(&i.body));
                }
            }
            Ok(upto)
        })?;
        upto = applied;
        if write != 0 {
            writes.push(write);
        }
    }
    relay.deliver_early(&writes, &early);
    relay.durable().await?;
    if revocations_changed {
        relay.enforce_soon();
    }
    Ok(upto)
}

/// Applies `item` into `b` unless `upto` (the last item applied) covers it; returns
/// the new `upto`.
fn apply_once(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    upto: u64,
    item: FedItem,
) -> Result<u64, RelayError> {
    let seq = item.seq;
    if seq <= upto {
        return Ok(upto); // already applied: a retry after a lost ack
    }
    let mark = b.mark();
    let saved = w.clone();
    match apply_item(relay, w, b, peer, item.body) {
        Ok(()) => {}
        Err(RelayError::Refused(code)) => {
            b.rollback(mark);
            *w = saved;
            relay
                .metrics()
                .refused(crate::metrics::KIND_FEDERATION_ITEM, &code);
            audit_peer_refusal(
                relay,
                w,
                b,
                peer,
                AuditEvent::new(
                    AuditKind::Refusal,
                    peer,
                    format!("item {seq}"),
                    "federation-item",
                    code.to_string(),
                ),
            )?;
        }
        Err(other) => return Err(other),
    }
    b.put_obj(keys::applied(peer), &seq)?;
    Ok(seq)
}

fn refuse(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    what: &str,
    reason: String,
) -> Result<(), RelayError> {
    w.counts.items_not_accepted += 1;
    audit_peer_refusal(
        relay,
        w,
        b,
        peer,
        AuditEvent::new(AuditKind::Refusal, peer, what, "federation-item", reason),
    )
}

fn apply_item(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    body: FedBody,
) -> Result<(), RelayError> {
    match body {
        FedBody::Notice {
            community,
            notice_id,
            sender,
            message,
        } => {
            if home_relay(&sender) != peer {
                return refuse(
                    relay,
                    w,
                    b,
                    peer,
                    &community,
                    format!("{sender} is not a user of relay {peer}"),
                );
            }
            let result = groups::read_application(&message)
                .map_err(|reason| {
                    RelayError::Refused(ErrorCode::BadRequest {
                        reason: format!("not an MLS application message: {reason}"),
                    })
                })
                .and_then(|app| {
                    let mut rec = relay.hub_community(b, &community, &sender)?;
                    relay.order_notice(
                        w,
                        b,
                        &mut rec,
                        &sender,
                        None,
                        Some(peer),
                        notice_id,
                        app,
                        message,
                    )
                });
            match result {
                Ok(_) => Ok(()),
                Err(RelayError::Refused(code)) => {
                    // The refusal goes back to the filer's home relay with the reason.
                    relay.record_refusal_for(
                        w,
                        b,
                        &notice_id,
                        &community,
                        &sender,
                        relay.id(),
                        &code.to_string(),
                    )
                }
                Err(other) => Err(other),
            }
        }
        FedBody::Entry {
            community,
            seq,
            entry,
        } => {
            let id = community.id.clone();
            apply_entry(relay, w, b, peer, &id, Some(community), seq, entry)
        }
        FedBody::NoticeEntry {
            community,
            seq,
            entry,
        } => {
            if entry
                .as_ref()
                .is_some_and(|e| !matches!(e.kind, EntryKind::Notice { .. }))
            {
                return refuse(
                    relay,
                    w,
                    b,
                    peer,
                    &community,
                    "a commit sent as a notice".into(),
                );
            }
            apply_entry(relay, w, b, peer, &community, None, seq, entry)
        }
        FedBody::Welcome {
            user,
            community,
            welcome,
            ratchet_tree,
        } => apply_welcomes(
            relay,
            w,
            b,
            peer,
            &[user],
            &community,
            &welcome,
            &ratchet_tree,
        ),
        FedBody::Welcomes {
            users,
            community,
            welcome,
            ratchet_tree,
        } => apply_welcomes(
            relay,
            w,
            b,
            peer,
            &users,
            &community,
            &welcome,
            &ratchet_tree,
        ),
        FedBody::Revocation { statement } => {
            crate::revocation::apply_statement(relay, w, b, peer, &statement)
        }
        FedBody::DeclaredClients { clients } => {
            // What the peer's organisation declares: kept for the forwards that follow.
            b.put_obj(keys::declared_clients(peer), &clients)?;
            Ok(())
        }
        FedBody::Retention { community, seconds } => {
            match crate::retention::apply_from_hub(relay, w, b, peer, &community, seconds) {
                Ok(()) => Ok(()),
                Err(reason) => refuse(relay, w, b, peer, &community, reason),
            }
        }
        FedBody::Crl { crl, issuer } => {
            crate::revocation::accept_crl(relay, w, b, &crl, &issuer, Some(peer)).map(|_| ())
        }
        FedBody::Refusal {
            notice_id,
            hop,
            reason,
        } => {
            let rec: Option<NoticeRecord> =
                b.get_obj(relay.engine(), &crate::store::keys::notice(&notice_id))?;
            let Some(rec) = rec else {
                let reason =
                    format!("refusal by {hop} ignored: notice {notice_id} is unknown here");
                return refuse(relay, w, b, peer, &format!("notice {notice_id}"), reason);
            };
            if let Err(why) = refusal_source(relay, b, peer, &rec, &hop)? {
                let what = format!("{} notice {notice_id}", rec.community);
                let reason = format!("refusal by {hop} ignored: {why}");
                return refuse(
                    relay,
                    w,
                    b,
                    peer,
                    &what,
                    kring_protocol::wire::bounded_reason(&reason),
                );
            }
            relay.record_refusal_for(w, b, &notice_id, &rec.community, &rec.sender, &hop, &reason)
        }
    }
}

/// Whether `peer` may report that `hop` refused the notice of `rec`: only the relay
/// the notice went to from here. At the filer's home relay that is the community's
/// hub (which also passes on the refusals of the relays after it); at the hub, a
/// relay with members in the community, about itself (`HUB->PEER`), once the
/// notice is ordered. `Ok(Err(why))` if not.
fn refusal_source(
    relay: &Relay,
    b: &Batch,
    peer: &str,
    rec: &NoticeRecord,
    hop: &str,
) -> Result<Result<(), String>, RelayError> {
    let hub = home_relay(&rec.community);
    if hub != relay.id() {
        if home_relay(&rec.sender) != relay.id() {
            return Ok(Err(format!(
                "the notice was not filed here, nor ordered here (its hub is {hub})"
            )));
        }
        if peer != hub {
            return Ok(Err(format!(
                "the notice went from here to its hub {hub}, not to relay {peer}"
            )));
        }
        return Ok(Ok(()));
    }
    if rec.seq.is_none() {
        return Ok(Err(
            "the notice was not ordered, so it went to no relay".into()
        ));
    }
    let own_hop = format!("{hub}->{peer}");
    if hop != own_hop {
        return Ok(Err(format!(
            "relay {peer} may only report its own refusal ({own_hop})"
        )));
    }
    let went_there = relay
        .community_in(b, &rec.community)?
        .is_some_and(|c| c.members.iter().any(|m| home_relay(m) == peer));
    if !went_there {
        return Ok(Err(format!(
            "relay {peer} has no member in {}, the notice did not go there",
            rec.community
        )));
    }
    Ok(Ok(()))
}

/// Stores a Welcome from `peer`, the community's hub, for `users`, all users of
/// this relay, once.
#[allow(clippy::too_many_arguments)]
fn apply_welcomes(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    users: &[String],
    community: &str,
    welcome: &[u8],
    ratchet_tree: &[u8],
) -> Result<(), RelayError> {
    let stray = users.iter().find(|u| home_relay(u) != relay.id());
    if home_relay(community) != peer || stray.is_some() {
        let whom = stray.map_or("its members", |u| u.as_str());
        let reason = format!("welcome for {whom} not routed via its hub to its home relay");
        return refuse(relay, w, b, peer, community, reason);
    }
    crate::relay::store_welcome(b, users, community, welcome, ratchet_tree)
}

/// Applies entry `seq` of `id`'s log from its hub `peer`: with the community as it
/// stands after it (`summary`, a commit) or as it was (`None`, a notice).
#[allow(clippy::too_many_arguments)]
fn apply_entry(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    id: &str,
    summary: Option<CommunitySummary>,
    seq: u64,
    entry: Option<LogEntry>,
) -> Result<(), RelayError> {
    if home_relay(id) != peer {
        return refuse(
            relay,
            w,
            b,
            peer,
            id,
            format!("relay {peer} is not the hub of {id}"),
        );
    }
    // The envelope must say what the MLS message inside says: neither the hub nor
    // anybody holding its link moves an entry into another community's log, to
    // another seq or epoch, or past an accreditation check with another label.
    let header = match entry
        .as_ref()
        .map(|e| check_envelope(id, seq, e))
        .transpose()
    {
        Ok(header) => header,
        Err(reason) => return refuse_entry(relay, w, b, peer, id, entry.as_ref(), reason),
    };
    let has_local = |members: &[String]| members.iter().any(|m| home_relay(m) == relay.id());
    let existing = relay.community_in(b, id)?;
    // Every handshake of a community reaches a relay while it has members there, so
    // the next one must be of the epoch the relay holds (at least that epoch after
    // a time without members).
    let continuous = existing.as_ref().is_some_and(|r| has_local(&r.members));
    let held_epoch = existing.as_ref().map_or(0, |r| r.epoch);
    let new_community = existing.is_none();
    let mut rec = match (existing, &summary) {
        (Some(rec), _) => rec,
        (None, None) => {
            return refuse(
                relay,
                w,
                b,
                peer,
                id,
                "a notice of a community unknown here".into(),
            );
        }
        (None, Some(summary)) => {
            if !has_local(&summary.members) {
                return refuse(
                    relay,
                    w,
                    b,
                    peer,
                    id,
                    "no user of this relay is a member".into(),
                );
            }
            let max: Label =
                summary
                    .max_label
                    .parse()
                    .map_err(|e: kring_policy::PolicyError| {
                        RelayError::Refused(ErrorCode::BadRequest {
                            reason: e.to_string(),
                        })
                    })?;
            CommunityRecord {
                id: id.to_string(),
                hub: peer.to_string(),
                max_label: max.to_bytes(),
                admins: Vec::new(),
                members: Vec::new(),
                epoch: 0,
                last_seq: seq.saturating_sub(1),
                created_by: String::new(),
                created_at: now(),
            }
        }
    };
    if seq <= rec.last_seq {
        return Ok(()); // already have it
    }
    if let (Some(header), Some(e)) = (&header, &entry)
        && let Err(reason) = check_epoch(header, &e.kind, summary.as_ref(), held_epoch, continuous)
    {
        return refuse_entry(relay, w, b, peer, id, Some(e), reason);
    }
    if let Some(summary) = &summary
        && let Err(reason) = count_registrations(relay, b, peer, id, new_community, summary)?
    {
        return refuse_entry(relay, w, b, peer, id, entry.as_ref(), reason);
    }
    if let Some(entry) = entry {
        let mut keep = true;
        if let EntryKind::Notice { notice_id, .. } = &entry.kind {
            // The label is the message's authenticated data (`check_envelope`
            // made sure the entry's label is the same).
            let label: &[u8] = match header.as_ref().map(|h| &h.kind) {
                Some(MessageKind::Application { aad }) => aad,
                _ => &[],
            };
            let verdict = kring_protocol::notice_aad::label_of(label)
                .map_err(|e| format!("unreadable label: {e}"))
                .and_then(|label| {
                    let own = decide(&label, &relay.accreditation());
                    if !own.allowed {
                        return Err(format!(
                            "relay {} is not accredited for {label}: {own}",
                            relay.id()
                        ));
                    }
                    let theirs = kring_policy::decide_opt(
                        Some(&label),
                        relay.relay_accreditation(peer).as_ref(),
                    );
                    if !theirs.allowed {
                        return Err(format!(
                            "relay {peer} is not accredited for {label}: {theirs}"
                        ));
                    }
                    Ok(())
                });
            if let Err(reason) = verdict {
                keep = false;
                let hop = format!("{peer}->{}", relay.id());
                audit_peer_refusal(
                    relay,
                    w,
                    b,
                    peer,
                    AuditEvent::new(
                        AuditKind::Withheld,
                        peer,
                        format!("{id} notice {notice_id}"),
                        "receive",
                        reason.clone(),
                    ),
                )?;
                enqueue(
                    relay,
                    w,
                    b,
                    peer,
                    FedBody::Refusal {
                        notice_id: *notice_id,
                        hop,
                        reason: kring_protocol::wire::bounded_reason(&reason),
                    },
                )?;
            } else {
                // The filer's home relay learns the hub's ordering.
                let key = crate::store::keys::notice(notice_id);
                if let Some(mut n) = b.get_obj::<NoticeRecord>(relay.engine(), &key)?
                    && n.community == id
                {
                    n.seq = Some(seq);
                    b.put_obj(key, &n)?;
                }
            }
        }
        if keep {
            b.put_obj(crate::store::keys::log(id, seq), &entry)?;
        }
    }
    rec.last_seq = seq;
    let Some(summary) = summary else {
        return crate::relay::put_last_seq(b, id, seq);
    };
    let members_changed = rec.members != summary.members;
    let before = std::mem::replace(&mut rec.members, summary.members);
    rec.admins = summary.admins;
    rec.epoch = summary.epoch;
    crate::relay::put_community(b, &rec)?;
    if members_changed {
        relay.update_local_members(b, &rec, &before, seq)?;
    }
    Ok(())
}

/// Whether a hub that has registered `count` communities here may register one
/// more (at most `limit`); the reason if not.
fn within(count: u64, limit: u64, what: impl FnOnce() -> String) -> Result<(), String> {
    if count >= limit {
        Err(format!("{} (limit {limit})", what()))
    } else {
        Ok(())
    }
}

/// Counts, in `b`, a community `id` that hub `peer` registers here (`new`) and the
/// users of this relay it makes members for the first time, within
/// [`MAX_PEER_COMMUNITIES`] and [`MAX_PEER_COMMUNITIES_PER_USER`]: a hub cannot
/// bury a user's real communities under made-up ones, nor fill this relay's disk.
/// `Ok(Err(why))` (nothing counted) past a limit.
fn count_registrations(
    relay: &Relay,
    b: &mut Batch,
    peer: &str,
    id: &str,
    new: bool,
    summary: &CommunitySummary,
) -> Result<Result<(), String>, RelayError> {
    let engine = relay.engine();
    let mut counts = Vec::new();
    if new {
        let key = keys::hubbed(peer);
        let n = b.get_obj::<u64>(engine, &key)?.unwrap_or(0);
        if let Err(why) = within(n, MAX_PEER_COMMUNITIES, || {
            format!("relay {peer} already hubs {n} communities known here")
        }) {
            return Ok(Err(why));
        }
        counts.push((key, n + 1));
    }
    let mut seen = std::collections::HashSet::new();
    for user in summary
        .members
        .iter()
        .filter(|u| home_relay(u) == relay.id())
    {
        if !seen.insert(user.as_str())
            || b.get(engine, &crate::store::keys::member(user, id))?
                .is_some()
        {
            continue;
        }
        let key = keys::hubbed_for(peer, user);
        let n = b.get_obj::<u64>(engine, &key)?.unwrap_or(0);
        if let Err(why) = within(n, MAX_PEER_COMMUNITIES_PER_USER, || {
            format!(
                "relay {peer} already made {user} a member of {n} of its communities ({id} refused)"
            )
        }) {
            return Ok(Err(why));
        }
        counts.push((key, n + 1));
    }
    for (key, n) in counts {
        b.put_obj(key, &n)?;
    }
    Ok(Ok(()))
}

/// Checks that entry `seq` of `id`'s log, as its hub sent it, says what its MLS
/// message says; returns the message's header or why not.
pub(crate) fn check_envelope(
    id: &str,
    seq: u64,
    entry: &LogEntry,
) -> Result<MessageHeader, String> {
    if entry.community != id {
        return Err(format!(
            "entry {seq} of {id} names community {}",
            entry.community
        ));
    }
    if entry.seq != seq {
        return Err(format!("entry {seq} of {id} names seq {}", entry.seq));
    }
    kring_protocol::mls::check_entry(entry).map_err(|e| format!("entry {seq} of {id}: {e}"))
}

/// Checks the epoch of a verified entry against the community as this relay holds
/// it (`held`, of a community whose handshakes all reached this relay if
/// `continuous`) and as the hub says it stands after the entry (`after`).
fn check_epoch(
    header: &MessageHeader,
    kind: &EntryKind,
    after: Option<&CommunitySummary>,
    held: u64,
    continuous: bool,
) -> Result<(), String> {
    let epoch = header.epoch;
    match kind {
        EntryKind::Handshake { .. } => {
            if epoch < held || (continuous && epoch != held) {
                return Err(format!(
                    "a handshake of epoch {epoch}, but the community is at epoch {held} here"
                ));
            }
            let next = match header.kind {
                MessageKind::Commit => epoch.saturating_add(1),
                _ => epoch,
            };
            match after {
                Some(after) if after.epoch != next => Err(format!(
                    "a handshake of epoch {epoch} said to leave the community at epoch {}",
                    after.epoch
                )),
                _ => Ok(()),
            }
        }
        EntryKind::Notice { .. } => {
            let current = after.map_or(held, |a| a.epoch);
            if epoch > current {
                return Err(format!(
                    "a notice of epoch {epoch}, but the community is at epoch {current}"
                ));
            }
            Ok(())
        }
    }
}

/// Refuses entry `entry` of `id` from its hub `peer`: audit-logged, and for a
/// notice reported back to the hub (which tells the filer's home relay).
fn refuse_entry(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    id: &str,
    entry: Option<&LogEntry>,
    reason: String,
) -> Result<(), RelayError> {
    let reason = kring_protocol::wire::bounded_reason(&reason);
    refuse(relay, w, b, peer, id, reason.clone())?;
    if let Some(LogEntry {
        kind: EntryKind::Notice { notice_id, .. },
        ..
    }) = entry
    {
        enqueue(
            relay,
            w,
            b,
            peer,
            FedBody::Refusal {
                notice_id: *notice_id,
                hop: format!("{peer}->{}", relay.id()),
                reason,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keys;
    use super::{
        AuditThrottle, BATCH, DELIVER_MARGIN, MIN_MAX_FRAME, RecentNames, Record, TokenBucket,
        batch_len, delivery_budget, encoded_len, refused_at_send, within,
    };
    use super::{check_envelope, check_epoch};
    use kring_protocol::wire::{FedBody, FedItem};
    use std::time::{Duration, Instant};

    #[test]
    fn deliveries_are_filled_up_to_the_frame_and_carry_at_least_one_item() {
        let budget = delivery_budget(8 << 20);
        assert_eq!(budget, (8 << 20) - DELIVER_MARGIN);
        let four = 4 << 20;
        // Two notices of about 4 MiB do not fit one frame together: one each.
        assert_eq!(batch_len(&[four + 100, four + 100], budget), 1);
        // Whatever the size, one item goes.
        assert_eq!(batch_len(&[20 << 20, 10], budget), 1);
        assert_eq!(batch_len(&[10, 20 << 20], budget), 1);
        assert_eq!(batch_len(&[budget / 2, budget / 2, 1], budget), 2);
        // Small items: up to the item count.
        assert_eq!(batch_len(&[100; 200], budget), BATCH);
        assert_eq!(batch_len(&[], budget), 0);
        // The smallest frame carries the largest notice.
        let message = vec![0u8; kring_protocol::mls::MAX_MESSAGE_BYTES];
        let item = FedItem {
            seq: u64::MAX,
            body: FedBody::Notice {
                community: format!("{}@{}", "c".repeat(60), "r".repeat(63)),
                notice_id: uuid::Uuid::from_u128(1),
                sender: format!("{}@{}", "u".repeat(60), "r".repeat(63)),
                message,
            },
        };
        assert!(encoded_len(&item) <= delivery_budget(MIN_MAX_FRAME));
        // And what fits the budget fits a frame with the delivery's envelope.
        let request = kring_protocol::wire::FedRequest::Deliver { items: vec![item] };
        kring_protocol::wire::encode_frame(&request, MIN_MAX_FRAME).unwrap();
    }

    #[test]
    fn a_notice_above_the_peers_accreditation_now_is_not_sent() {
        let label = |t: &str| t.parse::<kring_policy::Label>().unwrap().to_bytes();
        let entry = |l: Vec<u8>| FedBody::NoticeEntry {
            community: "d@bz".into(),
            seq: 3,
            entry: Some(LogEntry {
                community: "d@bz".into(),
                seq: 3,
                sender: "a@bz".into(),
                ordered_at: 0,
                kind: EntryKind::Notice {
                    notice_id: uuid::Uuid::from_u128(7),
                    label: l,
                    epoch: 1,
                },
                message: Vec::new(),
            }),
        };
        let low: kring_policy::Clearance = "NL:DEP-VERTROUWELIJK".parse().unwrap();
        let high: kring_policy::Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let geheim = entry(label("NL:STG-CONFIDENTIEEL"));
        assert!(refused_at_send(&geheim, "post-a", Some(&high)).is_none());
        let (id, why) = refused_at_send(&geheim, "post-a", Some(&low)).unwrap();
        assert_eq!(id, uuid::Uuid::from_u128(7));
        assert!(why.contains("post-a"), "{why}");
        // No accreditation known: nothing labelled goes.
        assert!(refused_at_send(&geheim, "post-a", None).is_some());
        // An entry already withheld, and commits, are not notices.
        let withheld = FedBody::NoticeEntry {
            community: "d@bz".into(),
            seq: 3,
            entry: None,
        };
        assert!(refused_at_send(&withheld, "post-a", None).is_none());
        // A notice for the hub whose label cannot be read is not sent either.
        let notice = FedBody::Notice {
            community: "d@bz".into(),
            notice_id: uuid::Uuid::from_u128(8),
            sender: "a@post-a".into(),
            message: b"not mls".to_vec(),
        };
        assert!(refused_at_send(&notice, "bz", Some(&high)).is_some());
    }

    #[test]
    fn peer_requests_are_rate_limited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, t0);
        for _ in 0..20 {
            bucket.take(t0).unwrap();
        }
        let wait = bucket.take(t0).unwrap_err();
        assert!(wait > 0 && wait <= 100, "{wait}");
        bucket.take(t0 + Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn refusal_records_of_a_peer_are_capped_per_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut t = AuditThrottle::default();
        for _ in 0..3 {
            let v = t.admit(t0, 3, window);
            assert_eq!((v.unrecorded, v.record), (None, Record::Full));
        }
        assert_eq!(t.admit(t0, 3, window).record, Record::Note);
        for _ in 0..1000 {
            assert_eq!(t.admit(t0, 3, window).record, Record::Count);
        }
        // Not before the window ends; then once.
        assert_eq!(t.flush(t0 + Duration::from_secs(59), window), None);
        let later = t0 + window;
        assert_eq!(t.flush(later, window), Some(1001));
        assert_eq!(t.flush(later, window), None);
        let v = t.admit(later, 3, window);
        assert_eq!((v.unrecorded, v.record), (None, Record::Full));
        // A window's count also comes with the next window's first refusal.
        for _ in 0..5 {
            t.admit(later, 3, window);
        }
        let v = t.admit(later + window, 3, window);
        assert_eq!((v.unrecorded, v.record), (Some(3), Record::Full));
    }

    #[test]
    fn requesters_of_one_peer_are_bounded() {
        let t0 = Instant::now();
        let mut names = RecentNames::new(2, Duration::from_secs(10));
        assert!(names.admit("a@post-a", t0));
        assert!(names.admit("b@post-a", t0));
        assert!(names.admit("a@post-a", t0));
        assert!(!names.admit("c@post-a", t0));
        assert!(names.admit("c@post-a", t0 + Duration::from_secs(10)));
    }

    #[test]
    fn hubs_register_a_bounded_number_of_communities() {
        within(0, 2, || "x".into()).unwrap();
        within(1, 2, || "x".into()).unwrap();
        let e = within(2, 2, || "relay nctv already hubs 2".into()).unwrap_err();
        assert!(e.contains("limit 2"), "{e}");
    }
    use kring_protocol::mls::{MessageHeader, MessageKind};
    use kring_protocol::wire::{CommunitySummary, EntryKind, LogEntry};

    fn header(epoch: u64, kind: MessageKind) -> MessageHeader {
        MessageHeader {
            group_id: b"d@bz".to_vec(),
            epoch,
            kind,
        }
    }

    fn after(epoch: u64) -> CommunitySummary {
        CommunitySummary {
            id: "d@bz".into(),
            max_label: "NL:STG-GEHEIM".into(),
            admins: Vec::new(),
            members: Vec::new(),
            epoch,
            last_seq: 0,
        }
    }

    #[test]
    fn handshakes_follow_the_epoch_held_here() {
        let commit = header(4, MessageKind::Commit);
        let proposal = header(4, MessageKind::Proposal);
        let hs = EntryKind::Handshake { epoch: 4 };
        // The next commit of a community whose handshakes all came here.
        check_epoch(&commit, &hs, Some(&after(5)), 4, true).unwrap();
        check_epoch(&proposal, &hs, Some(&after(4)), 4, true).unwrap();
        // After a time without members here, a later epoch is fine; an earlier never.
        check_epoch(&commit, &hs, Some(&after(5)), 2, false).unwrap();
        assert!(check_epoch(&commit, &hs, Some(&after(5)), 2, true).is_err());
        assert!(check_epoch(&commit, &hs, Some(&after(5)), 5, false).is_err());
        // The community after it must be where the message leads.
        assert!(check_epoch(&commit, &hs, Some(&after(4)), 4, true).is_err());
        assert!(check_epoch(&commit, &hs, Some(&after(9)), 4, true).is_err());
        assert!(check_epoch(&proposal, &hs, Some(&after(5)), 4, true).is_err());
    }

    #[test]
    fn notices_are_never_of_a_later_epoch() {
        let kind = EntryKind::Notice {
            notice_id: uuid::Uuid::from_u128(1),
            label: Vec::new(),
            epoch: 3,
        };
        let app = header(3, MessageKind::Application { aad: Vec::new() });
        check_epoch(&app, &kind, None, 3, true).unwrap();
        check_epoch(&app, &kind, None, 5, true).unwrap();
        assert!(check_epoch(&app, &kind, None, 2, true).is_err());
        check_epoch(&app, &kind, Some(&after(3)), 2, true).unwrap();
    }

    #[test]
    fn the_envelope_names_its_community_and_seq() {
        let entry = |community: &str, seq: u64| LogEntry {
            community: community.into(),
            seq,
            sender: "a@bz".into(),
            ordered_at: 0,
            kind: EntryKind::Handshake { epoch: 0 },
            message: b"not mls".to_vec(),
        };
        let e = check_envelope("d@bz", 7, &entry("e@bz", 7)).unwrap_err();
        assert!(e.contains("names community e@bz"), "{e}");
        let e = check_envelope("d@bz", 7, &entry("d@bz", 8)).unwrap_err();
        assert!(e.contains("names seq 8"), "{e}");
        // Then the message itself (here: not one).
        let e = check_envelope("d@bz", 7, &entry("d@bz", 7)).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
    }

    #[test]
    fn outbox_items_are_held_back_until_durable() {
        // `pending` sends only what the store's watermark releases: that needs the
        // outbox keys to be a gated sequence, named by `outbox_prefix`.
        assert!(crate::store::is_gated(&keys::outbox("nctv", 1)));
        assert!(!crate::store::is_gated(&keys::outbox_next("nctv")));
        assert!(!crate::store::is_gated(&keys::applied("nctv")));
        let key = keys::outbox("nctv", 7);
        assert_eq!(
            &key[..key.len() - 8],
            keys::outbox_prefix("nctv").as_slice()
        );
    }
}
