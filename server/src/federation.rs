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
use std::time::Duration;

use kring_policy::{Clearance, Label, decide};
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
/// Longest wait between dial attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

mod keys {
    pub fn outbox(peer: &str, seq: u64) -> Vec<u8> {
        [b"o/", peer.as_bytes(), b"\0", &seq.to_be_bytes()].concat()
    }
    pub fn outbox_prefix(peer: &str) -> Vec<u8> {
        [b"o/", peer.as_bytes(), b"\0"].concat()
    }
    /// Next outbox seq for a peer (kept even when the outbox is empty).
    pub fn outbox_next(peer: &str) -> Vec<u8> {
        [b"O/", peer.as_bytes()].concat()
    }
    /// Last item seq applied from a peer.
    pub fn applied(peer: &str) -> Vec<u8> {
        [b"r/", peer.as_bytes()].concat()
    }
    /// What a peer's certificate granted when last seen (canonical text).
    pub fn accreditation(peer: &str) -> Vec<u8> {
        [b"p/", peer.as_bytes()].concat()
    }
}

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
}

impl Peer {
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
        }
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

    async fn wait_conn(&self, deadline: Duration) -> Option<quinn::Connection> {
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
    store_outgoing(relay, w, b, peer, Outgoing::Body(body))
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
    let item = match entry.kind {
        EntryKind::Notice { .. } => Outgoing::NoticeEntry {
            community: rec.id.clone(),
            seq: entry.seq,
        },
        EntryKind::Handshake { .. } => Outgoing::LogEntry {
            community: crate::relay::summary(rec),
            seq: entry.seq,
        },
    };
    store_outgoing(relay, w, b, peer, item)
}

fn store_outgoing(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    item: Outgoing,
) -> Result<(), RelayError> {
    if !relay.peers.contains_key(peer) {
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
    Ok(())
}

/// Starts the dialler and the outbox sender of every peer.
pub fn start_links(relay: &Arc<Relay>) {
    for peer in relay.peers.values() {
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
                            relay.audit_now(AuditEvent::new(
                                AuditKind::Connection,
                                peer.id.clone(),
                                peer.address.to_string(),
                                "link-refused",
                                code.to_string(),
                            ));
                            conn.close(4u32.into(), b"connection cap");
                        }
                    }
                }
                Err(reason) => {
                    warn!(%reason, "peer refused");
                    relay.audit_now(AuditEvent::new(
                        AuditKind::Connection,
                        peer.id.clone(),
                        peer.address.to_string(),
                        "link-refused",
                        reason.clone(),
                    ));
                    conn.close(4u32.into(), reason.as_bytes());
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
    if !relay.peers.contains_key(&identity.name) {
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
    let peer = match relay.peers.get(&identity.name) {
        Some(p) => p.clone(),
        None => {
            relay.audit_now(AuditEvent::new(
                AuditKind::Link,
                identity.name.clone(),
                relay.id(),
                "link-refused",
                "not a configured peer",
            ));
            conn.close(4u32.into(), b"not a configured peer");
            return;
        }
    };
    run_link(relay, peer, conn, identity).await;
}

async fn run_link(relay: Arc<Relay>, peer: Arc<Peer>, conn: quinn::Connection, identity: Identity) {
    // `authenticate` bound the certificate to the peer's configured organisation
    // (and CA); this is the last line before anything about the peer is recorded.
    let configured = relay.trust().organisation_of(&peer.id);
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
        conn.close(4u32.into(), b"wrong organisation");
        return;
    }
    let granted = identity.clearance.clone();
    if let Ok(mut a) = peer.accreditation.lock() {
        *a = granted.clone();
    }
    let info = PeerInfo {
        organisation: identity.organisation.clone(),
        ca: crate::net::peer_chain(&conn)
            .and_then(|c| c.get(1).cloned())
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
        if let Some(a) = &granted {
            b.put_obj(keys::accreditation(&peer.id), &a.to_string())?;
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
    // Bounded like a device's request: a deadline for the frame, its bytes charged to
    // the peer's request byte budget until the answer is sent.
    let deadline = Duration::from_millis(relay.limits().frame_timeout_ms);
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
            // A frame that does not decode, bytes after it, a frame too slow or over
            // the peer's budget: refused and audited.
            relay.audit_now(AuditEvent::new(
                AuditKind::Refusal,
                peer.clone(),
                "-",
                action,
                detail,
            ));
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
    let response = match request {
        FedRequest::Deliver { items } => match apply_items(&relay, &peer, items).await {
            Ok(upto) => FedResponse::Ack { upto },
            Err(e) => {
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
                    relay.audit_refusal(&sender, &community, "handshake", &code);
                    Response::Error(code)
                }
            })
        }
        FedRequest::FetchKeyPackage { user, requester } => {
            let r = if home_relay(&requester) != peer || home_relay(&user) != relay.id() {
                Err(RelayError::Refused(ErrorCode::BadRequest {
                    reason: "key packages are fetched from the user's home relay by the requester's home relay".into(),
                }))
            } else {
                relay.take_key_package(&requester, &user).await
            };
            FedResponse::Response(match r {
                Ok(r) => r,
                Err(e) => {
                    let code = e.to_code();
                    relay.audit_refusal(&requester, &user, "fetch-key-package", &code);
                    Response::Error(code)
                }
            })
        }
    };
    let _ = write_frame(&mut send, &response, max).await;
    let _ = send.finish();
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
        .peers
        .get(to)
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
        Ok(FedResponse::Ack { .. }) => Err(NoVerdict::Unknown(format!(
            "relay {to} answered with an acknowledgement"
        ))),
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
    loop {
        changes.mark_unchanged();
        let Some(conn) = peer.conn() else {
            let _ = link.changed().await;
            continue;
        };
        let items = match pending(&relay, &peer.id) {
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
                if let Err(e) = relay.write(|_, b| {
                    if let FedRequest::Deliver { items } = &request {
                        for item in items.iter().filter(|i| i.seq <= upto) {
                            b.delete(keys::outbox(&peer.id, item.seq));
                        }
                    }
                    Ok(())
                }) {
                    tracing::error!(error = %e, "cannot trim outbox");
                }
            }
            Ok(other) => {
                warn!(answer = ?other, "peer did not acknowledge; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                // Treat the link as broken: the dialler reconnects.
                debug!(error = %e, "delivery to peer failed; closing the link and retrying");
                conn.close(1u32.into(), b"delivery failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The next items for `peer`, in order: only those on disk (a crash must not give an
/// outbox seq the peer has applied to another item).
fn pending(relay: &Relay, peer: &str) -> Result<Vec<FedItem>, RelayError> {
    let engine = relay.engine();
    let prefix = keys::outbox_prefix(peer);
    let durable = relay.readable_upto(&prefix);
    let mut items = Vec::new();
    for (k, v) in engine.scan(&prefix, None, BATCH)? {
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
        items.push(FedItem {
            seq: stored.seq,
            body,
        });
    }
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
            w.audit.append(
                b,
                now(),
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
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    what: &str,
    reason: String,
) -> Result<(), RelayError> {
    w.audit.append(
        b,
        now(),
        AuditEvent::new(AuditKind::Refusal, peer, what, "federation-item", reason),
    )?;
    Ok(())
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
                return refuse(w, b, peer, &community, "a commit sent as a notice".into());
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
                return refuse(w, b, peer, &format!("notice {notice_id}"), reason);
            };
            if let Err(why) = refusal_source(relay, b, peer, &rec, &hop)? {
                let what = format!("{} notice {notice_id}", rec.community);
                let reason = format!("refusal by {hop} ignored: {why}");
                return refuse(
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
        return refuse(w, b, peer, community, reason);
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
    let mut rec = match (existing, &summary) {
        (Some(rec), _) => rec,
        (None, None) => {
            return refuse(
                w,
                b,
                peer,
                id,
                "a notice of a community unknown here".into(),
            );
        }
        (None, Some(summary)) => {
            if !has_local(&summary.members) {
                return refuse(w, b, peer, id, "no user of this relay is a member".into());
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
    if let Some(entry) = entry {
        let mut keep = true;
        if let EntryKind::Notice { notice_id, .. } = &entry.kind {
            // The label is the message's authenticated data (`check_envelope`
            // made sure the entry's label is the same).
            let label: &[u8] = match header.as_ref().map(|h| &h.kind) {
                Some(MessageKind::Application { aad }) => aad,
                _ => &[],
            };
            let verdict = Label::from_bytes(label)
                .map_err(|e| format!("unreadable label: {e}"))
                .and_then(|label| {
                    let own = decide(&label, relay.accreditation());
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
                w.audit.append(
                    b,
                    now(),
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

/// Checks that entry `seq` of `id`'s log, as its hub sent it, says what its MLS
/// message says; returns the message's header or why not.
fn check_envelope(id: &str, seq: u64, entry: &LogEntry) -> Result<MessageHeader, String> {
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
    refuse(w, b, peer, id, reason.clone())?;
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
    use super::{check_envelope, check_epoch};
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
