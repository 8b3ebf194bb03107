//! The relay's network layer: the QUIC endpoint, one task per connection, one task per
//! request stream. What it does with a request is in [`crate::requests`]; frames are
//! read and written by [`crate::frames`].

use std::sync::Arc;
use std::time::Duration;

use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::wire::{
    ALPN_CLIENT, ALPN_FEDERATION, ErrorCode, FRAME_HEADER, Push, Request, Response,
};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::filing_order::{StreamOrder, Turn};
use crate::frames::*;
use crate::relay::{Caller, Registration, Relay};

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
    let order = Arc::new(StreamOrder::default());
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                info!(reason = %e, "client disconnected");
                break;
            }
        };
        // Streams come in the order the device opened them; so are its filings
        // ordered.
        let turn = order.turn(request_no);
        request_no += 1;
        let relay = relay.clone();
        let caller = caller.clone();
        let budget = registration.budget().clone();
        let span = info_span!("req", n = request_no, kind = tracing::field::Empty);
        let push_channel = push_channel.clone();
        tokio::spawn(
            handle_stream(relay, caller, budget, push_channel, turn, send, recv).instrument(span),
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
/// identity's budget until the answer is sent), then the request; a filing once
/// every earlier stream of the connection is done ([`crate::filing_order`]).
async fn handle_stream(
    relay: Arc<Relay>,
    caller: Arc<Caller>,
    budget: ByteBudget,
    push_channel: Arc<PushSlot>,
    turn: Turn,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = relay.limits().max_frame;
    let deadline = Duration::from_millis(relay.limits().frame_timeout_ms);
    if let Err(code) = relay.check_rate(&caller.id) {
        drop(turn);
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
                drop(turn);
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
    // Only a filing keeps its turn; any other stream is done once read.
    let turn = is_filing(&request).then_some(turn);
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
        drop(turn);
        relay.metrics().refused(kind, &code);
        relay.audit_refusal(&caller.id, "-", "decode", &code);
        let _ = write_frame(&mut send, &Response::Error(code), max).await;
        let _ = send.finish();
        return;
    }
    let response = match turn {
        Some(turn) => {
            turn.wait().await;
            relay.handle_in_turn(&caller, request, turn).await
        }
        None => relay.handle(&caller, request).await,
    };
    if let Response::Error(code) = &response {
        debug!(error = %code, "request refused");
    }
    let _ = write_frame(&mut send, &response, max).await;
    let _ = send.finish();
    drop(hold);
}

/// Whether `request` files notices: the requests a connection's order applies to.
fn is_filing(request: &Request) -> bool {
    matches!(
        request,
        Request::FileNotice { .. } | Request::FileNotices { .. }
    )
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
