//! TLS 1.3 configuration for the relay's QUIC endpoint: mutual authentication against
//! the federation trust anchors, ring as the only crypto provider.

use std::sync::Arc;

use kring_protocol::wire::{ALPN_CLIENT, ALPN_FEDERATION};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use crate::config::RelayConfig;
use crate::error::RelayError;

/// Idle timeout of relay-to-relay links (keep-alives every quarter of it).
pub const PEER_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Request streams a device or peer may have open on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Bytes a device or peer may send on one connection ahead of what the relay has
/// read (QUIC connection flow control; quinn's default is unlimited). The relay reads
/// request streams as data arrives, so this is what can sit in QUIC's buffers at
/// once; what it has read is charged to the identity's request byte budget.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 2 << 20;
/// Bytes a device or peer may send on one stream ahead of what the relay has read.
pub const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;

/// Bytes the relay keeps buffered for one connection that the peer has not yet
/// acknowledged (quinn's default is about 10 MB): a device that stops reading holds
/// at most this much relay memory per connection, while delivery waits.
pub const CONNECTION_SEND_WINDOW: u32 = 2 << 20;

/// Flow-control and stream limits of every relay connection, accepted or dialled.
fn bound_receiving(transport: &mut quinn::TransportConfig) {
    transport.send_window(CONNECTION_SEND_WINDOW.into());
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
}

/// The crypto provider every TLS config of Kring uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's own certificate and key as TLS presents them, swappable while the
/// relay runs (a reload): new handshakes, accepted or dialled, use what it holds
/// then; established connections keep their session.
#[derive(Debug)]
pub struct CertResolver {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertResolver {
    /// The resolver for `config`'s certificate chain and key.
    pub fn new(config: &RelayConfig) -> Result<Arc<Self>, RelayError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(certified_key(config)?),
        }))
    }

    /// `config`'s certificate and key, ready for [`CertResolver::replace`].
    pub fn prepare(config: &RelayConfig) -> Result<Arc<rustls::sign::CertifiedKey>, RelayError> {
        certified_key(config)
    }

    /// Presents `key` from the next handshake on.
    pub fn replace(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn certified_key(config: &RelayConfig) -> Result<Arc<rustls::sign::CertifiedKey>, RelayError> {
    let key = provider()
        .key_provider
        .load_private_key(config.key.clone_key())
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        config.cert_chain.clone(),
        key,
    )))
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(config: &RelayConfig) -> Result<Arc<RootCertStore>, RelayError> {
    let mut roots = RootCertStore::empty();
    for a in &config.anchors {
        roots
            .add(a.clone())
            .map_err(|e| RelayError::Tls(format!("bad trust anchor: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Server side (certificate and key from `identity`): TLS 1.3 only, client certificate required and verified, ALPN for
/// clients and federation peers.
pub fn server_config(
    config: &RelayConfig,
    identity: Arc<CertResolver>,
) -> Result<quinn::ServerConfig, RelayError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(config)?, provider.clone())
        .build()
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec(), ALPN_FEDERATION.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_millis(
            config.limits.idle_timeout_ms,
        ))
        .map_err(|e| RelayError::Tls(e.to_string()))?,
    ));
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    bound_receiving(&mut transport);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Client side (relay → peer relay): presents the relay certificate, verifies the
/// peer's against the trust anchors and its DNS name `ID.relay.kring`.
pub fn peer_client_config(
    config: &RelayConfig,
    identity: Arc<CertResolver>,
) -> Result<quinn::ClientConfig, RelayError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_root_certificates(roots(config)?)
        .with_client_cert_resolver(identity);
    tls.alpn_protocols = vec![ALPN_FEDERATION.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    // A peer that dies without closing (kill -9, a cut cable) is noticed within a few
    // seconds, so the link is re-dialled and its outbox drains again.
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(PEER_IDLE_TIMEOUT)
            .map_err(|e| RelayError::Tls(e.to_string()))?,
    ));
    transport.keep_alive_interval(Some(PEER_IDLE_TIMEOUT / 4));
    // The dialled peer opens request streams on the link too.
    bound_receiving(&mut transport);
    client.transport_config(Arc::new(transport));
    Ok(client)
}
