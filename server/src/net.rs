//! The relay's network layer: the QUIC endpoint, one task per connection, one task per
//! request stream. Everything it does with a request is in [`crate::relay`]; this file
//! only moves frames.

use std::sync::Arc;
use std::time::Duration;

use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::wire::{
    self, ALPN_CLIENT, ALPN_FEDERATION, ErrorCode, FRAME_HEADER, Push, Request, Response,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::relay::{Caller, Registration, Relay};

/// Smallest step a frame's buffer grows by (it doubles after that, up to the
/// frame's length).
const FRAME_READ_CHUNK: usize = 64 * 1024;
/// Retry time named to an identity whose request bytes in flight are over its budget.
const BUDGET_RETRY_MS: u64 = 250;

/// Request bytes one identity may have in flight, being received or handled, across
/// all its streams and connections (`request_bytes_per_identity`). A stream takes
/// bytes as its frame's buffer grows (never what a header merely claims) and gives
/// them back when its request is done; a stream that would go over is refused.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Bytes of a [`ByteBudget`] a request holds until it is dropped.
pub type BudgetHold = Option<OwnedSemaphorePermit>;

impl ByteBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes taken now.
    pub fn in_use(&self) -> usize {
        self.total.saturating_sub(self.bytes.available_permits())
    }

    /// Whether no request holds any of it.
    pub fn is_unused(&self) -> bool {
        self.in_use() == 0
    }

    /// Takes `n` more bytes into `hold`, or `false` if that would go over.
    fn take(&self, n: usize, hold: &mut BudgetHold) -> bool {
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match hold {
                    Some(h) => h.merge(p),
                    None => *hold = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// A request frame refused while it was read: the audit action, what to tell the
/// peer, and the audit detail.
#[derive(Debug)]
pub struct FrameRefusal {
    /// Audit action: `decode`, `request-budget` or `frame-timeout`.
    pub action: &'static str,
    /// The typed error for the peer.
    pub code: ErrorCode,
    /// The audit record's detail.
    pub detail: String,
}

impl FrameRefusal {
    fn decode(code: ErrorCode) -> Self {
        Self {
            action: "decode",
            detail: code.to_string(),
            code,
        }
    }
}

/// Reads one frame from a QUIC stream. `Ok(None)` at a clean end of stream. For
/// answers to this relay's own requests (their count is this relay's); request
/// streams opened by a device or peer use [`read_request_frame`].
pub async fn read_frame<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<Option<T>, ErrorCode> {
    match read_frame_charged(recv, max_frame, None).await {
        Ok(r) => Ok(r.map(|(msg, _)| msg)),
        Err(r) => Err(r.code),
    }
}

/// Reads the one frame of a request stream opened by a device or peer relay: it must
/// arrive whole within `deadline` (else `BadRequest`), and its buffer is charged to
/// the identity's `budget` as it grows (over it: `RateLimited`). The returned hold
/// keeps the bytes taken until the request is done. `Ok(None)` at a clean end of
/// stream.
pub async fn read_request_frame<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    budget: &ByteBudget,
    deadline: Duration,
) -> Result<Option<(T, BudgetHold)>, FrameRefusal> {
    match tokio::time::timeout(deadline, read_frame_charged(recv, max_frame, Some(budget))).await {
        Ok(r) => r,
        Err(_) => {
            let reason = format!(
                "the request frame did not arrive whole within {} ms",
                deadline.as_millis()
            );
            Err(FrameRefusal {
                action: "frame-timeout",
                detail: reason.clone(),
                code: ErrorCode::BadRequest { reason },
            })
        }
    }
}

async fn read_frame_charged<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    budget: Option<&ByteBudget>,
) -> Result<Option<(T, BudgetHold)>, FrameRefusal> {
    let mut hdr = [0u8; FRAME_HEADER];
    match recv.read_exact(&mut hdr).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                reason: format!("stream ended inside a frame header ({n} of 4 bytes)"),
            }));
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                reason: format!("stream error: {e}"),
            }));
        }
    }
    let len = wire::frame_len(hdr, max_frame).map_err(|e| {
        FrameRefusal::decode(ErrorCode::TooLarge {
            what: e.to_string(),
        })
    })?;
    // Grow the buffer as bytes arrive (QUIC flow control bounds how fast), rather
    // than allocating what the header claims before the peer has sent anything;
    // every growth is charged to the budget before it is allocated.
    let mut hold: BudgetHold = None;
    let mut charged = 0usize;
    let mut payload: Vec<u8> = Vec::new();
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => {
                let need = payload.len() + chunk.bytes.len();
                if need > charged {
                    let grown = need
                        .max(charged.saturating_mul(2))
                        .max(FRAME_READ_CHUNK)
                        .min(len);
                    if let Some(budget) = budget
                        && !budget.take(grown - charged, &mut hold)
                    {
                        let detail = format!(
                            "request bytes in flight would exceed the budget of {} bytes \
                             ({} in use; this frame is {len} bytes)",
                            budget.total(),
                            budget.in_use()
                        );
                        return Err(FrameRefusal {
                            action: "request-budget",
                            detail,
                            code: ErrorCode::RateLimited {
                                retry_after_ms: BUDGET_RETRY_MS,
                            },
                        });
                    }
                    payload.reserve_exact(grown - payload.len());
                    charged = grown;
                }
                payload.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                    reason: format!(
                        "stream ended inside a frame ({} of {len} bytes)",
                        payload.len()
                    ),
                }));
            }
            Err(e) => {
                return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                    reason: format!("stream error: {e}"),
                }));
            }
        }
    }
    wire::decode_payload(&payload)
        .map(|msg| Some((msg, hold)))
        .map_err(|e| {
            FrameRefusal::decode(ErrorCode::BadRequest {
                reason: e.to_string(),
            })
        })
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    max_frame: usize,
) -> Result<(), ErrorCode> {
    let frame = wire::encode_frame(msg, max_frame).map_err(|e| ErrorCode::TooLarge {
        what: e.to_string(),
    })?;
    send.write_all(&frame)
        .await
        .map_err(|e| ErrorCode::Unavailable {
            reason: format!("write failed: {e}"),
        })
}

/// Kernel buffer the relay asks for on its UDP socket, each way. Every device and
/// peer shares this one socket; with the kernel's default (about 200 KiB) a burst
/// that arrives while the relay is busy overflows it, and QUIC then waits for loss
/// recovery (measured: p99 latency of 0.7 s in runs with drops). Linux caps the
/// request at `net.core.rmem_max` / `wmem_max`.
pub const UDP_BUFFER: usize = 4 << 20;

/// Keys that let the relay recognise, after a restart, connections of its earlier
/// runs: derived from the relay's private key (PKCS#8), so the same across restarts
/// and never stored. A device or peer still holding a connection to a run that
/// died (killed, say) gets a stateless reset (RFC 9000 §10.3) at its next packet and
/// reconnects at once, instead of waiting out its request or idle timeout.
///
/// Reset tokens are HMACs of connection ids under the reset key, and connection ids
/// carry a short MAC under the id key so that a restarted relay resets only packets
/// for ids it issued. Neither key reveals anything of the private key.
#[derive(Clone)]
pub struct EndpointKeys {
    reset: Arc<ring::hmac::Key>,
    cid: Arc<ring::hmac::Key>,
}

impl std::fmt::Debug for EndpointKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointKeys(..)")
    }
}

impl EndpointKeys {
    /// The keys of the relay whose private key is `relay_key_pkcs8`.
    pub fn derive(relay_key_pkcs8: &[u8]) -> Self {
        let derive = |label: &[u8]| {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, label);
            let tag = ring::hmac::sign(&k, relay_key_pkcs8);
            Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref()))
        };
        Self {
            reset: derive(b"kring relay stateless reset key"),
            cid: derive(b"kring relay connection id key"),
        }
    }

    fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(self.reset.clone());
        let key = self.cid.clone();
        config.cid_generator(move || {
            Box::new(RelayCids {
                key: key.clone(),
                counter: 0,
            })
        });
        config
    }
}

/// Bytes of a connection id that make it unique (see [`RelayCids`]).
const CID_NONCE: usize = 8;
/// Bytes of a connection id's MAC.
const CID_TAG: usize = 4;

/// Connection ids `NONCE || MAC(NONCE)[..CID_TAG]`; the nonce is an HMAC of a
/// counter and fresh random bytes, so ids are unique within a run, differ between
/// runs, and cannot be linked to each other by an observer.
struct RelayCids {
    key: Arc<ring::hmac::Key>,
    counter: u64,
}

impl RelayCids {
    fn tag(&self, nonce: &[u8]) -> [u8; CID_TAG] {
        let mut tag = [0u8; CID_TAG];
        let mut input = Vec::with_capacity(1 + nonce.len());
        input.push(1u8);
        input.extend_from_slice(nonce);
        tag.copy_from_slice(&ring::hmac::sign(&self.key, &input).as_ref()[..CID_TAG]);
        tag
    }
}

impl quinn::ConnectionIdGenerator for RelayCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom as _;
        self.counter = self.counter.wrapping_add(1);
        let mut fresh = [0u8; 16];
        // Should the system's generator fail, the counter still keeps ids unique
        // within this run.
        let _ = ring::rand::SystemRandom::new().fill(&mut fresh);
        let mut input = vec![0u8];
        input.extend_from_slice(&self.counter.to_be_bytes());
        input.extend_from_slice(&fresh);
        let mut cid = [0u8; CID_NONCE + CID_TAG];
        cid[..CID_NONCE]
            .copy_from_slice(&ring::hmac::sign(&self.key, &input).as_ref()[..CID_NONCE]);
        let tag = self.tag(&cid[..CID_NONCE]);
        cid[CID_NONCE..].copy_from_slice(&tag);
        quinn::ConnectionId::new(&cid)
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if cid.len() != CID_NONCE + CID_TAG {
            return Err(quinn_proto::InvalidCid);
        }
        let (nonce, tag) = cid.split_at(CID_NONCE);
        // Not a secret check: a forged id only earns a reset that matches nothing.
        if self.tag(nonce)[..] == *tag {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_NONCE + CID_TAG
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Binds the relay's QUIC endpoint on `listen` with [`UDP_BUFFER`]-sized socket
/// buffers (as far as the kernel allows; a smaller grant is logged), resetting
/// connections of earlier runs ([`EndpointKeys`]).
pub fn bind(
    server: quinn::ServerConfig,
    listen: std::net::SocketAddr,
    keys: &EndpointKeys,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        // Same as quinn's own binding: accept IPv4-mapped addresses too.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&listen.into())?;
    for (what, set, got) in [
        (
            "receive",
            socket.set_recv_buffer_size(UDP_BUFFER),
            socket.recv_buffer_size(),
        ),
        (
            "send",
            socket.set_send_buffer_size(UDP_BUFFER),
            socket.send_buffer_size(),
        ),
    ] {
        match (set, got) {
            (Ok(()), Ok(size)) if size >= UDP_BUFFER => {}
            (_, size) => warn!(
                granted = ?size.ok(),
                wanted = UDP_BUFFER,
                "smaller UDP {what} buffer than asked for; raise net.core.rmem_max and \
                 net.core.wmem_max to avoid drops under load"
            ),
        }
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(keys.endpoint_config(), Some(server), socket.into(), runtime)
}

/// Runs the endpoint until `shutdown` resolves, then stops accepting, lets open
/// requests finish (bounded), and returns.
pub async fn serve(
    relay: Arc<Relay>,
    endpoint: quinn::Endpoint,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = relay.limits().clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    warn!(remote = %incoming.remote_address(), "connection cap reached; refusing");
                    incoming.refuse();
                    continue;
                };
                let relay = relay.clone();
                let span = info_span!("conn", remote = %incoming.remote_address(), peer = tracing::field::Empty);
                tokio::spawn(async move {
                    handle_incoming(relay, incoming).await;
                    drop(permit);
                }.instrument(span));
            }
        }
    }
    info!("shutting down: no new connections; draining");
    endpoint.close(CloseCode::Done.code().into(), b"relay shutting down");
    tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle())
        .await
        .ok();
}

pub(crate) fn peer_chain(conn: &quinn::Connection) -> Option<Vec<Vec<u8>>> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.iter().map(|c| c.to_vec()).collect())
}

async fn handle_incoming(relay: Arc<Relay>, incoming: quinn::Incoming) {
    let timeout = Duration::from_millis(relay.limits().handshake_timeout_ms);
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(timeout, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Certificates refused by TLS (expired, unknown issuer, ...) end here.
            debug!(error = %e, "handshake failed");
            relay.metrics().refused_for(
                crate::metrics::KIND_CONNECTION,
                crate::metrics::REASON_HANDSHAKE,
            );
            relay.audit_now(AuditEvent::new(
                AuditKind::Connection,
                "-",
                remote.to_string(),
                "handshake",
                format!("TLS handshake refused: {e}"),
            ));
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let Some(chain) = peer_chain(&conn) else {
        conn.close(CloseCode::Refused.code().into(), b"no client certificate");
        return;
    };
    let expected = match alpn.as_deref() {
        Some(a) if a == ALPN_CLIENT => IdentityKind::User,
        Some(a) if a == ALPN_FEDERATION => IdentityKind::Relay,
        _ => {
            conn.close(CloseCode::UnknownProtocol.code().into(), b"unknown ALPN");
            return;
        }
    };
    let identity = match relay.authenticate(&chain, expected) {
        Ok(id) => id,
        Err(code) => {
            relay
                .metrics()
                .refused(crate::metrics::KIND_CONNECTION, &code);
            relay.audit_now(AuditEvent::new(
                AuditKind::Connection,
                "-",
                conn.remote_address().to_string(),
                "connect",
                code.to_string(),
            ));
            // A revoked user's device whose wipe an org-admin ordered gets the
            // order in place of the refusal (the chain verified; only its
            // revocation failed).
            let wipe = match (&code, expected) {
                (ErrorCode::Revoked, IdentityKind::User) => chain
                    .first()
                    .and_then(|leaf| Identity::from_der(leaf).ok())
                    .and_then(|id| crate::revocation::wipe_answer(&relay, &id.id())),
                _ => None,
            };
            match wipe {
                Some(answer) => refuse_connection_with(&relay, &conn, answer, &code).await,
                None => refuse_connection(&relay, &conn, code).await,
            }
            return;
        }
    };
    tracing::Span::current().record("peer", identity.id().as_str());
    // At most `max_connections_per_identity` per device user or peer relay.
    let registration = match relay.register_connection(&identity, &chain, conn.clone()) {
        Ok(r) => r,
        Err(code) => {
            warn!(error = %code, "connection refused");
            relay
                .metrics()
                .refused(crate::metrics::KIND_CONNECTION, &code);
            relay.audit_now(AuditEvent::new(
                AuditKind::Connection,
                identity.id(),
                conn.remote_address().to_string(),
                "connection-cap",
                code.to_string(),
            ));
            refuse_connection(&relay, &conn, code).await;
            return;
        }
    };
    match identity.kind {
        IdentityKind::User => serve_client(relay, conn, identity, chain, &registration).await,
        IdentityKind::Relay => crate::federation::serve_peer(relay, conn, identity).await,
    }
    drop(registration);
}

/// Tells the peer of a refused connection why (on the first stream it opens, within
/// 2 s), then closes the connection.
async fn refuse_connection(relay: &Relay, conn: &quinn::Connection, code: ErrorCode) {
    let answer = Response::Error(code.clone());
    refuse_connection_with(relay, conn, answer, &code).await;
}

/// [`refuse_connection`] with another answer than `Error(code)`.
async fn refuse_connection_with(
    relay: &Relay,
    conn: &quinn::Connection,
    answer: Response,
    code: &ErrorCode,
) {
    let why = code.to_string();
    if let Ok(Ok((mut send, _recv))) =
        tokio::time::timeout(Duration::from_secs(2), conn.accept_bi()).await
    {
        let _ = write_frame(&mut send, &answer, relay.limits().max_frame).await;
        let _ = send.finish();
        // Let the peer read the refusal (and close) before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    conn.close(CloseCode::Refused.code().into(), why.as_bytes());
}

async fn serve_client(
    relay: Arc<Relay>,
    conn: quinn::Connection,
    identity: Identity,
    chain: Vec<Vec<u8>>,
    registration: &Registration,
) {
    let caller = Arc::new(Caller::new(identity, chain));
    info!("client connected");
    let mut request_no = 0u64;
    // One push channel per connection: a device needs no more, and each holds a
    // delivery task and its page of entries.
    let push_channel = Arc::new(PushSlot::default());
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                info!(reason = %e, "client disconnected");
                break;
            }
        };
        request_no += 1;
        let relay = relay.clone();
        let caller = caller.clone();
        let budget = registration.budget().clone();
        let span = info_span!("req", n = request_no, kind = tracing::field::Empty);
        let push_channel = push_channel.clone();
        tokio::spawn(
            handle_stream(relay, caller, budget, push_channel, send, recv).instrument(span),
        );
    }
}

/// A connection's one push channel. A device that opens a new one has given up the
/// one before (it syncs, drops the stream, and syncs again), which the relay may not
/// have noticed yet: the new one ends the old one and takes its place.
#[derive(Debug)]
struct PushSlot {
    /// Held by the subscription being served.
    open: tokio::sync::Mutex<()>,
    /// Moved by a new subscription: the one before ends.
    superseded: tokio::sync::watch::Sender<u64>,
}

impl Default for PushSlot {
    fn default() -> Self {
        Self {
            open: tokio::sync::Mutex::new(()),
            superseded: tokio::sync::watch::channel(0).0,
        }
    }
}

/// How long a new subscription waits for the one before to end.
const SUPERSEDE_WAIT: Duration = Duration::from_secs(2);

/// One request stream of a device: rate limit (every stream, `Subscribe` too, before
/// any of it is read), the frame (within the frame deadline, its bytes charged to the
/// identity's budget until the answer is sent), then the request.
async fn handle_stream(
    relay: Arc<Relay>,
    caller: Arc<Caller>,
    budget: ByteBudget,
    push_channel: Arc<PushSlot>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = relay.limits().max_frame;
    let deadline = Duration::from_millis(relay.limits().frame_timeout_ms);
    if let Err(code) = relay.check_rate(&caller.id) {
        debug!(error = %code, "request refused");
        relay.metrics().refused(crate::metrics::KIND_UNREAD, &code);
        let _ = write_frame(&mut send, &Response::Error(code), max).await;
        let _ = send.finish();
        discard_rest(&mut recv, max, deadline).await;
        return;
    }
    let (request, hold): (Request, BudgetHold) =
        match read_request_frame(&mut recv, max, &budget, deadline).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(refusal) => {
                debug!(error = %refusal.code, action = refusal.action, "request frame refused");
                relay
                    .metrics()
                    .refused(crate::metrics::KIND_UNREAD, &refusal.code);
                relay.audit_now(AuditEvent::new(
                    AuditKind::Refusal,
                    caller.id.clone(),
                    "-",
                    refusal.action,
                    refusal.detail,
                ));
                let _ = write_frame(&mut send, &Response::Error(refusal.code), max).await;
                let _ = send.finish();
                return;
            }
        };
    let kind = request_kind(&request);
    tracing::Span::current().record("kind", kind);
    relay.metrics().request(kind);
    if let Request::Subscribe = request {
        // Nothing more is read from a subscription: what the device might still
        // send is dropped at once rather than buffered for the stream's lifetime.
        drop(hold);
        drop(recv);
        let open = match push_channel.open.try_lock() {
            Ok(open) => Some(open),
            Err(_) => {
                push_channel
                    .superseded
                    .send_modify(|g| *g = g.wrapping_add(1));
                tokio::time::timeout(SUPERSEDE_WAIT, push_channel.open.lock())
                    .await
                    .ok()
            }
        };
        let Some(_open) = open else {
            let code = ErrorCode::BadRequest {
                reason: "this connection already has a push channel (one per connection)".into(),
            };
            relay.metrics().refused(kind, &code);
            relay.audit_refusal(&caller.id, "-", "subscribe", &code);
            let _ = write_frame(&mut send, &Push::Closed(code), max).await;
            let _ = send.finish();
            return;
        };
        let superseded = push_channel.superseded.subscribe();
        crate::delivery::run_subscription(relay, caller, send, superseded).await;
        return;
    }
    if let Err(code) = expect_end(&mut recv).await {
        relay.metrics().refused(kind, &code);
        relay.audit_refusal(&caller.id, "-", "decode", &code);
        let _ = write_frame(&mut send, &Response::Error(code), max).await;
        let _ = send.finish();
        return;
    }
    let response = relay.handle(&caller, request).await;
    if let Response::Error(code) = &response {
        debug!(error = %code, "request refused");
    }
    let _ = write_frame(&mut send, &response, max).await;
    let _ = send.finish();
    drop(hold);
}

/// Reads and discards what a peer still sends on a stream refused before its frame
/// was read (at most a frame's worth, within `deadline`), so that a peer whose
/// request is larger than the flow-control window can finish writing and read the
/// refusal. Nothing is buffered.
async fn discard_rest(recv: &mut quinn::RecvStream, max_frame: usize, deadline: Duration) {
    let drain = async {
        let mut left = max_frame + FRAME_HEADER;
        while left > 0 {
            match recv.read_chunk(left, true).await {
                Ok(Some(chunk)) => left = left.saturating_sub(chunk.bytes.len()),
                Ok(None) | Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(deadline, drain).await;
}

/// How long a peer may take to finish a request stream after its frame.
const END_OF_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request stream carries exactly one frame: after it, the stream must end.
pub async fn expect_end(recv: &mut quinn::RecvStream) -> Result<(), ErrorCode> {
    match tokio::time::timeout(END_OF_REQUEST_TIMEOUT, recv.read_to_end(0)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(quinn::ReadToEndError::TooLong)) => Err(ErrorCode::BadRequest {
            reason: "bytes after the request frame (one request per stream)".into(),
        }),
        Ok(Err(quinn::ReadToEndError::Read(e))) => Err(ErrorCode::BadRequest {
            reason: format!("stream error after the request frame: {e}"),
        }),
        Err(_) => Err(ErrorCode::BadRequest {
            reason: "the request stream was not finished after its frame".into(),
        }),
    }
}

/// Short name of a request for spans and audit records (never its content).
pub fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::PublishKeyPackages { .. } => "publish-key-packages",
        Request::FetchKeyPackage { .. } => "fetch-key-package",
        Request::CreateCommunity { .. } => "create-community",
        Request::Handshake { .. } => "handshake",
        Request::FileNotice { .. } => "file-notice",
        Request::FileNotices { .. } => "file-notices",
        Request::Subscribe => "subscribe",
        Request::Ack { .. } => "ack",
        Request::AckWelcome { .. } => "ack-welcome",
        Request::ListCommunities => "list-communities",
        Request::CommunityInfo { .. } => "community-info",
        Request::NoticeStatus { .. } => "notice-status",
        Request::AuditLog { .. } => "audit-log",
        Request::Ping => "ping",
        Request::Revoke { .. } => "revoke",
        Request::RevokeAndWipe { .. } => "revoke-wipe",
        Request::Trust => "trust",
        Request::AuditHead => "audit-head",
        Request::TrustStatements { .. } => "trust-statements",
        Request::Cursors { .. } => "cursors",
        Request::DeclaredClients => "declared-clients",
        Request::OfferBlob { .. } => "offer-blob",
        Request::PutBlob { .. } => "put-blob",
        Request::GetBlob { .. } => "get-blob",
    }
}

/// Sends a push frame; `false` if the device went away.
pub async fn push(send: &mut quinn::SendStream, msg: &Push, max_frame: usize) -> bool {
    write_frame(send, msg, max_frame).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::ConnectionIdGenerator as _;

    fn cids(key: &[u8]) -> RelayCids {
        RelayCids {
            key: EndpointKeys::derive(key).cid,
            counter: 0,
        }
    }

    /// Ids issued by one run validate in the next run of the same relay (same key),
    /// not at another relay; ids are unique and their MAC is checked.
    #[test]
    fn connection_ids_are_recognised_across_runs_of_the_same_relay_only() {
        let mut first = cids(b"relay key");
        let second = cids(b"relay key");
        let other = cids(b"another relay key");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let cid = first.generate_cid();
            assert_eq!(cid.len(), first.cid_len());
            assert!(second.validate(&cid).is_ok());
            assert!(other.validate(&cid).is_err());
            assert!(seen.insert(cid.to_vec()), "repeated id");
        }
        let mut forged = first.generate_cid().to_vec();
        forged[0] ^= 1;
        assert!(second.validate(&quinn::ConnectionId::new(&forged)).is_err());
        assert!(second.validate(&quinn::ConnectionId::new(&[0; 8])).is_err());
    }

    /// The keys are a function of the private key: equal for equal keys, and the
    /// reset and id keys differ from each other.
    #[test]
    fn endpoint_keys_derive_deterministically() {
        let sign = |k: &ring::hmac::Key| ring::hmac::sign(k, b"x").as_ref().to_vec();
        let (a, b) = (EndpointKeys::derive(b"k"), EndpointKeys::derive(b"k"));
        assert_eq!(sign(&a.reset), sign(&b.reset));
        assert_eq!(sign(&a.cid), sign(&b.cid));
        assert_ne!(sign(&a.reset), sign(&a.cid));
        assert_ne!(sign(&a.reset), sign(&EndpointKeys::derive(b"j").reset));
    }
}
