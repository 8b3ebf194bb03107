//! The connection to the home relay: QUIC with mutual TLS 1.3 (ring), ALPN
//! `kring/1`, one bidirectional stream per request and a long-lived subscribe stream.
//!
//! The relay must present a certificate chaining to the profile's trust anchors for
//! the DNS name `RELAY_ID.relay.kring`; the client presents the user's certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kring_protocol::close::CloseCode;
use kring_protocol::wire::{
    self, ALPN_CLIENT, DEFAULT_MAX_FRAME, ErrorCode, FRAME_HEADER, Push, Request, Response,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{ClientError, Result};
use crate::profile::{MAX_PEM_BYTES, Profile, read_bounded};

/// Most certificates accepted in one PEM file.
const MAX_CERTS_PER_FILE: usize = 16;
/// How long a request refused as over the relay's rate limit is retried.
pub const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(10);

/// Kernel buffer the client asks for on its UDP socket, each way. A relay pushes a
/// device everything it missed, and every new notice of a busy community, in bursts;
/// with the kernel's default (about 200 KiB) a burst that arrives while the client is
/// busy overflows it and QUIC waits for loss recovery (measured with ten devices
/// receiving 2,000 notices/s: 200-350 dropped datagrams per run, none with this
/// size). Linux caps the request at `net.core.rmem_max` / `wmem_max`.
pub const UDP_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `bind`, with [`UDP_BUFFER`]-sized kernel buffers as far as
/// the kernel grants them (a smaller grant is logged and is not an error).
fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let sock = socket2::SockRef::from(&socket);
    for (what, set, got) in [
        (
            "receive",
            sock.set_recv_buffer_size(UDP_BUFFER),
            sock.recv_buffer_size(),
        ),
        (
            "send",
            sock.set_send_buffer_size(UDP_BUFFER),
            sock.send_buffer_size(),
        ),
    ] {
        match (set, got) {
            (Ok(()), Ok(size)) if size >= UDP_BUFFER => {}
            (_, size) => tracing::debug!(
                granted = ?size.ok(),
                wanted = UDP_BUFFER,
                "smaller UDP {what} buffer than asked for (net.core.rmem_max, wmem_max)"
            ),
        }
    }
    Ok(socket)
}

/// Time limits of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolving the address and completing the QUIC + TLS handshake.
    pub connect: Duration,
    /// One request: open the stream, send, receive the answer.
    pub request: Duration,
    /// One handshake (commit) request. Longer than `request`: for a community hubbed
    /// at another relay, the home relay forwards the commit and waits (about 10 s)
    /// for the hub's verdict before it answers.
    pub handshake: Duration,
    /// How long filing a notice in a community hubbed at another relay waits for
    /// the hub's ordering after the home relay queued it (zero: do not wait).
    pub ordering: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(10),
            handshake: Duration::from_secs(25),
            ordering: crate::ordering::DEFAULT_ORDERING_WAIT,
        }
    }
}

/// The user's key material and trust anchors, loaded from the profile.
pub struct Credentials {
    /// DER certificates, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER private key (Ed25519).
    pub key: Arc<crate::device_key::DeviceKey>,
    /// DER trust anchors (federation roots).
    pub anchors: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Credentials {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("chain_len", &self.chain.len())
            .field("anchors_len", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads the certificate chain, private key and trust anchors a profile names,
    /// asking for the passphrase (see [`crate::unlock`]) if the key is encrypted.
    pub fn load(profile: &Profile) -> Result<Credentials> {
        Self::load_with(profile, &mut crate::unlock::Unlocker::new(profile))
    }

    /// [`load`](Self::load) with the passphrase from `unlocker`.
    pub fn load_with(
        profile: &Profile,
        unlocker: &mut crate::unlock::Unlocker,
    ) -> Result<Credentials> {
        let chain = load_certs(&profile.cert, "certificate chain")?;
        let anchors = load_certs(&profile.trust_anchors, "trust anchors")?;
        let key = match &profile.key_uri {
            None => Arc::new(crate::device_key::DeviceKey::from_pkcs8(
                crate::unlock::private_key(profile, unlocker)?,
                &profile.key,
            )?),
            Some(uri) => {
                let leaf = chain
                    .first()
                    .ok_or_else(|| bad(&profile.cert, "holds no certificate"))?;
                let public = kring_protocol::mls::leaf_public_key(leaf.as_ref())
                    .map_err(|e| bad(&profile.cert, e.to_string()))?;
                crate::device_key::token_key(uri, profile, &public)?
            }
        };
        Ok(Credentials {
            chain,
            key,
            anchors,
        })
    }

    /// The MLS signer: the certificate chain and the device key.
    ///
    /// # Errors
    /// [`ClientError::Profile`] if the key does not belong to the certificate.
    pub fn mls_signer(&self) -> Result<kring_protocol::mls::CertSigner> {
        let key: Arc<dyn kring_protocol::mls::DeviceSigner> = self.key.clone();
        kring_protocol::mls::CertSigner::from_device_key(self.chain_der(), key).map_err(|e| {
            ClientError::Profile {
                path: "key".into(),
                reason: format!("cannot be used with the certificate: {e}"),
            }
        })
    }

    /// The chain as plain DER byte vectors, leaf first.
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| c.as_ref().to_vec()).collect()
    }

    /// The trust anchors as plain DER byte vectors.
    pub fn anchors_der(&self) -> Vec<Vec<u8>> {
        self.anchors.iter().map(|c| c.as_ref().to_vec()).collect()
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let tls_err = |e: rustls::Error| ClientError::Profile {
            path: "certificate/key".into(),
            reason: format!("cannot be used for TLS: {e}"),
        };
        let mut roots = RootCertStore::empty();
        for anchor in &self.anchors {
            roots.add(anchor.clone()).map_err(tls_err)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.key.tls_resolver(self.chain.clone()));
        tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
        tls.enable_early_data = false;
        Ok(tls)
    }
}

fn bad(path: &std::path::Path, reason: impl Into<String>) -> ClientError {
    ClientError::Profile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn load_certs(path: &std::path::Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_bounded(path, MAX_PEM_BYTES).map_err(|r| bad(path, r.to_string()))?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        let cert = item.map_err(|e| bad(path, format!("{what}: invalid PEM ({e})")))?;
        if certs.len() >= MAX_CERTS_PER_FILE {
            return Err(bad(
                path,
                format!("{what}: more than {MAX_CERTS_PER_FILE} certificates"),
            ));
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(bad(path, format!("{what}: no PEM certificate found")));
    }
    Ok(certs)
}

/// An open, authenticated connection to the home relay (a clone shares it).
#[derive(Debug, Clone)]
pub struct RelayConnection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    relay: String,
    timeouts: Timeouts,
}

impl RelayConnection {
    /// Connects to `addr` (`host:port`) and authenticates the relay as `relay_id`.
    pub async fn connect(
        creds: &Credentials,
        addr: &str,
        relay_id: &str,
        timeouts: Timeouts,
    ) -> Result<RelayConnection> {
        let relay = format!("{relay_id} ({addr})");
        let unreachable = |reason: String| ClientError::Unreachable {
            relay: relay.clone(),
            reason,
        };
        let tls = creds.tls_config()?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Protocol(format!("QUIC TLS configuration: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30))
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
        ));
        config.transport_config(Arc::new(transport));

        let server_name = format!("{relay_id}.relay.kring");
        let fut = async {
            let target = resolve(addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let bind: SocketAddr = if target.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let socket = udp_socket(bind)
                .map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))?;
            let runtime = quinn::default_runtime()
                .ok_or_else(|| unreachable("no async runtime for the QUIC endpoint".into()))?;
            let mut endpoint =
                quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                    .map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))?;
            endpoint.set_default_client_config(config);
            let connecting = endpoint
                .connect(target, &server_name)
                .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
            let conn = connecting.await.map_err(|e| connection_error(&relay, &e))?;
            Ok::<_, ClientError>((endpoint, conn))
        };
        let (endpoint, conn) =
            tokio::time::timeout(timeouts.connect, fut)
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "no answer within {} s",
                        timeouts.connect.as_secs_f32()
                    ))
                })??;
        Ok(RelayConnection {
            endpoint,
            conn,
            relay,
            timeouts,
        })
    }

    /// The relay's certificate chain as presented in the TLS handshake (leaf first).
    pub fn peer_chain(&self) -> Vec<Vec<u8>> {
        self.conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
            .unwrap_or_default()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Sends one request and returns the relay's answer, whatever it is (including
    /// [`Response::Error`]).
    pub async fn request(&self, request: &Request) -> Result<Response> {
        self.request_within(request, self.timeouts.request).await
    }

    /// [`request`](Self::request) with its own time limit (e.g. for a handshake the
    /// relay forwards to a remote hub).
    pub async fn request_within(&self, request: &Request, timeout: Duration) -> Result<Response> {
        tokio::time::timeout(timeout, self.request_inner(request))
            .await
            .map_err(|_| ClientError::Unreachable {
                relay: self.relay.clone(),
                reason: format!("no answer within {} s", timeout.as_secs_f32()),
            })?
    }

    /// Sends one request; a [`Response::Error`] becomes [`ClientError::Relay`].
    pub async fn call(&self, request: &Request) -> Result<Response> {
        self.call_within(request, self.timeouts.request).await
    }

    /// [`call`](Self::call) with its own time limit.
    ///
    /// A request the relay refuses as over its rate limit is sent again after the
    /// pause the relay names (it was refused before it was looked at), for at most
    /// [`RATE_LIMIT_PATIENCE`]; then the refusal is returned.
    pub async fn call_within(&self, request: &Request, timeout: Duration) -> Result<Response> {
        let mut waited = Duration::ZERO;
        loop {
            match self.request_within(request, timeout).await? {
                Response::Error(ErrorCode::RateLimited { retry_after_ms })
                    if waited < RATE_LIMIT_PATIENCE =>
                {
                    let pause = Duration::from_millis(retry_after_ms.clamp(1, 1000));
                    tracing::debug!(?pause, "rate limited by the relay; sending again");
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                Response::Error(code) => return Err(ClientError::Relay(code)),
                Response::WipeOrdered(order) => {
                    return Err(ClientError::WipeOrdered(Box::new(order)));
                }
                other => return Ok(other),
            }
        }
    }

    /// Sends one request on a stream opened before this returns, and hands back the
    /// task that takes its answer. Requests sent one after another this way reach
    /// the relay in the order sent (it accepts a connection's streams in the order
    /// they were opened), while several are in flight. The answer is the relay's,
    /// not sent again when rate limited: a [`Response::Error`] becomes
    /// [`ClientError::Relay`].
    pub async fn send_in_order(
        &self,
        request: &Request,
    ) -> Result<tokio::task::JoinHandle<Result<Response>>> {
        let frame = wire::encode_frame(request, DEFAULT_MAX_FRAME)?;
        let timeout = self.timeouts.request;
        let streams = tokio::time::timeout(timeout, self.conn.open_bi())
            .await
            .map_err(|_| ClientError::Unreachable {
                relay: self.relay.clone(),
                reason: format!("no stream within {} s", timeout.as_secs_f32()),
            })?
            .map_err(|e| connection_error(&self.relay, &e))?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            let answer = tokio::time::timeout(timeout, this.exchange(streams, &frame))
                .await
                .map_err(|_| ClientError::Unreachable {
                    relay: this.relay.clone(),
                    reason: format!("no answer within {} s", timeout.as_secs_f32()),
                })??;
            match answer {
                Response::Error(code) => Err(ClientError::Relay(code)),
                Response::WipeOrdered(order) => Err(ClientError::WipeOrdered(Box::new(order))),
                other => Ok(other),
            }
        }))
    }

    async fn request_inner(&self, request: &Request) -> Result<Response> {
        let frame = wire::encode_frame(request, DEFAULT_MAX_FRAME)?;
        let streams = self
            .conn
            .open_bi()
            .await
            .map_err(|e| connection_error(&self.relay, &e))?;
        self.exchange(streams, &frame).await
    }

    /// Writes `frame` on a stream just opened and reads the one frame of the answer.
    async fn exchange(
        &self,
        (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
        frame: &[u8],
    ) -> Result<Response> {
        send.write_all(frame)
            .await
            .map_err(|e| self.write_error(e))?;
        // Finishing only fails if the stream was already closed, which the read
        // below then reports precisely.
        let _ = send.finish();
        let bytes = recv
            .read_to_end(FRAME_HEADER + DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| match e {
                quinn::ReadToEndError::TooLong => ClientError::Protocol(format!(
                    "the relay's answer exceeds {DEFAULT_MAX_FRAME} bytes"
                )),
                quinn::ReadToEndError::Read(e) => self.read_error(e),
            })?;
        decode_single_frame(&bytes)
    }

    /// Opens the push channel: sends [`Request::Subscribe`] and returns the stream of
    /// [`Push`] frames.
    pub async fn subscribe(&self) -> Result<Subscription> {
        let frame = wire::encode_frame(&Request::Subscribe, DEFAULT_MAX_FRAME)?;
        let fut = async {
            let (mut send, recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| connection_error(&self.relay, &e))?;
            send.write_all(&frame)
                .await
                .map_err(|e| self.write_error(e))?;
            let _ = send.finish();
            Ok::<_, ClientError>(Subscription {
                _send: send,
                recv,
                relay: self.relay.clone(),
                decoder: wire::FrameDecoder::new(DEFAULT_MAX_FRAME),
            })
        };
        tokio::time::timeout(self.timeouts.request, fut)
            .await
            .map_err(|_| ClientError::Unreachable {
                relay: self.relay.clone(),
                reason: "could not open the push channel in time".into(),
            })?
    }

    /// Closes the connection gracefully and waits (briefly) for the relay to hear it.
    pub async fn close(self) {
        self.conn.close(CloseCode::Done.code().into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn write_error(&self, e: quinn::WriteError) -> ClientError {
        match e {
            quinn::WriteError::ConnectionLost(c) => connection_error(&self.relay, &c),
            other => ClientError::Unreachable {
                relay: self.relay.clone(),
                reason: format!("request stream failed: {other}"),
            },
        }
    }

    fn read_error(&self, e: quinn::ReadError) -> ClientError {
        read_error(&self.relay, e)
    }
}

fn read_error(relay: &str, e: quinn::ReadError) -> ClientError {
    match e {
        quinn::ReadError::ConnectionLost(c) => connection_error(relay, &c),
        other => ClientError::Unreachable {
            relay: relay.to_string(),
            reason: format!("answer stream failed: {other}"),
        },
    }
}

/// Decodes a stream holding exactly one frame.
fn decode_single_frame<T: serde::de::DeserializeOwned + wire::Validate>(bytes: &[u8]) -> Result<T> {
    if bytes.is_empty() {
        return Err(ClientError::Protocol(
            "the relay closed the stream without answering".into(),
        ));
    }
    let mut decoder = wire::FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.feed(bytes)?;
    let payload = decoder.next_payload()?.ok_or(wire::WireError::Truncated {
        got: bytes.len(),
        want: bytes.len() + 1,
    })?;
    if decoder.next_payload()?.is_some() {
        return Err(ClientError::Protocol(
            "the relay sent more than one answer".into(),
        ));
    }
    decoder.finish()?;
    Ok(wire::decode_payload(&payload)?)
}

/// The push channel of a device.
#[derive(Debug)]
pub struct Subscription {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    relay: String,
    decoder: wire::FrameDecoder,
}

/// Most bytes taken from the push stream per read.
const PUSH_READ_CHUNK: usize = 64 * 1024;

impl Subscription {
    /// Waits for the next push. `Ok(None)` when the relay ended the stream cleanly.
    ///
    /// Cancel-safe: bytes read so far stay buffered in the subscription, so the
    /// future may be dropped (e.g. by a timeout) and `next` called again.
    pub async fn next(&mut self) -> Result<Option<Push>> {
        loop {
            if let Some(payload) = self.decoder.next_payload()? {
                return match wire::decode_payload::<Push>(&payload) {
                    Ok(push) => Ok(Some(push)),
                    // A relay that refuses the connection itself (revoked or unknown
                    // certificate) answers the first stream with a Response::Error.
                    Err(e) => match wire::decode_payload::<Response>(&payload) {
                        Ok(Response::Error(code)) => Err(ClientError::Relay(code)),
                        Ok(Response::WipeOrdered(order)) => {
                            Err(ClientError::WipeOrdered(Box::new(order)))
                        }
                        _ => Err(e.into()),
                    },
                };
            }
            match self.recv.read_chunk(PUSH_READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.feed(&chunk.bytes)?,
                Ok(None) => {
                    self.decoder.finish().map_err(|e| {
                        ClientError::Protocol(format!("push stream ended inside a frame: {e}"))
                    })?;
                    return Ok(None);
                }
                Err(e) => return Err(read_error(&self.relay, e)),
            }
        }
    }

    /// Like [`next`](Self::next), failing with [`ClientError::Unreachable`] if
    /// nothing arrives within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<Push>> {
        let relay = self.relay.clone();
        tokio::time::timeout(timeout, self.next())
            .await
            .map_err(|_| ClientError::Unreachable {
                relay,
                reason: format!("no push within {} s", timeout.as_secs_f32()),
            })?
    }
}

/// Why the relay's address does not lead to a socket address; check `relay` in
/// `profile.toml` and the name service.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The host name could not be looked up.
    #[error("cannot resolve {addr}: {source}")]
    Lookup {
        /// The relay address (`HOST:PORT`).
        addr: String,
        /// The resolver's explanation.
        source: std::io::Error,
    },
    /// The host name exists but has no address.
    #[error("{addr} resolves to no address")]
    NoAddress {
        /// The relay address (`HOST:PORT`).
        addr: String,
    },
}

async fn resolve(addr: &str) -> std::result::Result<SocketAddr, ResolveError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|source| ResolveError::Lookup {
            addr: addr.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| ResolveError::NoAddress {
            addr: addr.to_owned(),
        })
}

/// TLS alert descriptions relevant to authentication (RFC 8446 §6).
fn tls_alert_meaning(alert: u8) -> Option<&'static str> {
    Some(match alert {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown certificate authority",
        49 => "access denied",
        116 => "certificate required",
        120 => "no common application protocol (ALPN kring/1)",
        _ => return None,
    })
}

/// Classifies a QUIC connection error: TLS refusals are authentication failures
/// (exit 4), everything else means the relay is unreachable (exit 5).
pub(crate) fn connection_error(relay: &str, e: &quinn::ConnectionError) -> ClientError {
    let unreachable = |reason: String| ClientError::Unreachable {
        relay: relay.to_string(),
        reason,
    };
    let crypto = |code: quinn::TransportErrorCode| {
        let code = u64::from(code);
        (0x100..=0x1ff)
            .contains(&code)
            .then(|| (code - 0x100) as u8)
    };
    match e {
        quinn::ConnectionError::TransportError(t) => match crypto(t.code) {
            Some(alert) => ClientError::Auth(format!(
                "TLS with relay {relay} failed ({}): {}; check the profile's trust anchors \
                 and relay_id",
                tls_alert_meaning(alert).unwrap_or("handshake failure"),
                t.reason
            )),
            None => unreachable(format!("protocol failure: {t}")),
        },
        quinn::ConnectionError::ConnectionClosed(close) => match crypto(close.error_code) {
            // Not taken as the relay's word that this device is revoked (which
            // deletes its archive): a handshake refusal can be forged by anyone on the
            // path. A revoked device hears it again, authenticated, once connected.
            Some(44) => ClientError::Auth(format!(
                "relay {relay} refused this device's certificate (certificate revoked)"
            )),
            Some(alert) => ClientError::Auth(format!(
                "relay {relay} refused this device's certificate ({})",
                tls_alert_meaning(alert).unwrap_or("handshake failure")
            )),
            None => unreachable(format!("connection aborted: {close}")),
        },
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CloseCode::Revoked.code()) =>
        {
            ClientError::Relay(ErrorCode::Revoked)
        }
        quinn::ConnectionError::ApplicationClosed(close) => unreachable(format!(
            "the relay closed the connection ({})",
            String::from_utf8_lossy(&close.reason)
        )),
        quinn::ConnectionError::TimedOut => unreachable("no answer (timed out)".into()),
        quinn::ConnectionError::Reset => unreachable("connection reset by the relay".into()),
        other => unreachable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frames_decode_and_extra_frames_are_refused() {
        let one = wire::encode_frame(&Response::Pong, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            decode_single_frame::<Response>(&one).unwrap(),
            Response::Pong
        );
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert!(decode_single_frame::<Response>(&two).is_err());
        assert!(decode_single_frame::<Response>(&one[..one.len() - 1]).is_err());
        assert!(decode_single_frame::<Response>(&[]).is_err());
    }

    #[test]
    fn tls_refusals_are_authentication_errors() {
        let closed = quinn::ConnectionError::TimedOut;
        assert_eq!(connection_error("bz", &closed).exit_code(), 5);
        assert_eq!(
            connection_error("bz", &quinn::ConnectionError::Reset).exit_code(),
            5
        );
    }

    #[test]
    fn the_udp_socket_gets_the_larger_buffer_as_far_as_the_kernel_allows() {
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let sock = socket2::SockRef::from(&socket);
        // Linux grants min(asked, rmem_max) and reports twice that; elsewhere, or
        // where /proc is absent, at least the request must not have shrunk it.
        let cap = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        for (got, max) in [
            (sock.recv_buffer_size().unwrap(), cap("rmem_max")),
            (sock.send_buffer_size().unwrap(), cap("wmem_max")),
        ] {
            match max {
                Some(max) => assert!(
                    got >= UDP_BUFFER.min(max),
                    "{got} < min({UDP_BUFFER}, {max})"
                ),
                None => assert!(got > 0),
            }
        }
    }

    #[tokio::test]
    async fn an_unanswered_connect_times_out_as_unreachable() {
        // Nothing answers QUIC on a freshly bound, never-read UDP socket.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let creds = test_credentials();
        let timeouts = Timeouts {
            connect: Duration::from_millis(300),
            request: Duration::from_millis(300),
            ..Timeouts::default()
        };
        let err = RelayConnection::connect(&creds, &addr, "bz", timeouts)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    }

    fn test_credentials() -> Credentials {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["analist.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Credentials {
            chain: vec![cert.der().clone()],
            key: Arc::new(
                crate::device_key::DeviceKey::from_pkcs8(
                    zeroize::Zeroizing::new(key.serialize_der()),
                    std::path::Path::new("test.key"),
                )
                .unwrap(),
            ),
            anchors: vec![cert.der().clone()],
        }
    }
}
