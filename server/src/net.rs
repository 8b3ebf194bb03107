//! The relay's network layer: the QUIC endpoint, one task per connection, one task per
//! request stream. Everything it does with a request is in [`crate::relay`]; this file
//! only moves frames.

use std::sync::Arc;
use std::time::Duration;

use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::wire::{
    self, ALPN_CLIENT, ALPN_FEDERATION, ErrorCode, FRAME_HEADER, Push, Request, Response,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::relay::{Caller, Relay};

/// Initial buffer for a frame being read.
const FRAME_READ_CHUNK: usize = 64 * 1024;

/// Reads one frame from a QUIC stream. `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<Option<T>, ErrorCode> {
    let mut hdr = [0u8; FRAME_HEADER];
    match recv.read_exact(&mut hdr).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ErrorCode::BadRequest {
                reason: format!("stream ended inside a frame header ({n} of 4 bytes)"),
            });
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(ErrorCode::BadRequest {
                reason: format!("stream error: {e}"),
            });
        }
    }
    let len = wire::frame_len(hdr, max_frame).map_err(|e| ErrorCode::TooLarge {
        what: e.to_string(),
    })?;
    // Grow the buffer as bytes arrive (QUIC flow control bounds how fast), rather
    // than allocating what the header claims before the peer has sent anything.
    let mut payload = Vec::with_capacity(len.min(FRAME_READ_CHUNK));
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(ErrorCode::BadRequest {
                    reason: format!(
                        "stream ended inside a frame ({} of {len} bytes)",
                        payload.len()
                    ),
                });
            }
            Err(e) => {
                return Err(ErrorCode::BadRequest {
                    reason: format!("stream error: {e}"),
                });
            }
        }
    }
    wire::decode_payload(&payload)
        .map(Some)
        .map_err(|e| ErrorCode::BadRequest {
            reason: e.to_string(),
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

/// Binds the relay's QUIC endpoint on `listen` with [`UDP_BUFFER`]-sized socket
/// buffers (as far as the kernel allows; a smaller grant is logged).
pub fn bind(
    server: quinn::ServerConfig,
    listen: std::net::SocketAddr,
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
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.into(),
        runtime,
    )
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
    endpoint.close(0u32.into(), b"relay shutting down");
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
        conn.close(4u32.into(), b"no client certificate");
        return;
    };
    let expected = match alpn.as_deref() {
        Some(a) if a == ALPN_CLIENT => IdentityKind::User,
        Some(a) if a == ALPN_FEDERATION => IdentityKind::Relay,
        _ => {
            conn.close(2u32.into(), b"unknown ALPN");
            return;
        }
    };
    let identity = match relay.authenticate(&chain, expected) {
        Ok(id) => id,
        Err(code) => {
            let why = code.to_string();
            relay.audit_now(AuditEvent::new(
                AuditKind::Connection,
                "-",
                conn.remote_address().to_string(),
                "connect",
                why.clone(),
            ));
            // Tell the peer why on a stream it can read, then close.
            if let Ok(Ok((mut send, _recv))) =
                tokio::time::timeout(Duration::from_secs(2), conn.accept_bi()).await
            {
                let _ =
                    write_frame(&mut send, &Response::Error(code), relay.limits().max_frame).await;
                let _ = send.finish();
                // Let the peer read the refusal (and close) before the connection goes.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            }
            conn.close(4u32.into(), why.as_bytes());
            return;
        }
    };
    tracing::Span::current().record("peer", identity.id().as_str());
    match identity.kind {
        IdentityKind::User => serve_client(relay, conn, identity).await,
        IdentityKind::Relay => crate::federation::serve_peer(relay, conn, identity).await,
    }
}

async fn serve_client(relay: Arc<Relay>, conn: quinn::Connection, identity: Identity) {
    let caller = Arc::new(Caller::new(identity, peer_chain(&conn).unwrap_or_default()));
    let registration = relay.register_connection(&caller, conn.clone());
    info!("client connected");
    let mut request_no = 0u64;
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
        let span = info_span!("req", n = request_no, kind = tracing::field::Empty);
        tokio::spawn(handle_stream(relay, caller, send, recv).instrument(span));
    }
    drop(registration);
}

async fn handle_stream(
    relay: Arc<Relay>,
    caller: Arc<Caller>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = relay.limits().max_frame;
    let request: Request = match read_frame(&mut recv, max).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(code) => {
            relay.audit_refusal(&caller.id, "-", "decode", &code);
            let _ = write_frame(&mut send, &Response::Error(code), max).await;
            let _ = send.finish();
            return;
        }
    };
    tracing::Span::current().record("kind", request_kind(&request));
    if let Request::Subscribe = request {
        crate::delivery::run_subscription(relay, caller, send).await;
        return;
    }
    if let Err(code) = expect_end(&mut recv).await {
        relay.audit_refusal(&caller.id, "-", "decode", &code);
        let _ = write_frame(&mut send, &Response::Error(code), max).await;
        let _ = send.finish();
        return;
    }
    let response = match relay.check_rate(&caller.id) {
        Err(code) => Response::Error(code),
        Ok(()) => relay.handle(&caller, request).await,
    };
    if let Response::Error(code) = &response {
        debug!(error = %code, "request refused");
    }
    let _ = write_frame(&mut send, &response, max).await;
    let _ = send.finish();
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
    }
}

/// Sends a push frame; `false` if the device went away.
pub async fn push(send: &mut quinn::SendStream, msg: &Push, max_frame: usize) -> bool {
    write_frame(send, msg, max_frame).await.is_ok()
}
