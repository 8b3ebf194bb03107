//! TLS 1.3 configuration for the relay's QUIC endpoint: mutual authentication against
//! the federation trust anchors, ring as the only crypto provider.

use std::sync::Arc;

use kring_protocol::identity::Identity;
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

/// Flow-control and stream limits of every relay connection, accepted or dialled.
fn bound_receiving(transport: &mut quinn::TransportConfig) {
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
}

/// The crypto provider every TLS config of Kring uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that a PKCS#8 Ed25519 key belongs to the certificate's public key.
pub fn check_key_matches(pkcs8: &[u8], identity: &Identity) -> Result<(), String> {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|_| "the private key is not a valid Ed25519 PKCS#8 key".to_string())?;
    if pair.public_key().as_ref() != identity.public_key.as_slice() {
        return Err("the private key does not match the certificate".into());
    }
    Ok(())
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

/// Server side: TLS 1.3 only, client certificate required and verified, ALPN for
/// clients and federation peers.
pub fn server_config(config: &RelayConfig) -> Result<quinn::ServerConfig, RelayError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(config)?, provider.clone())
        .build()
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(config.cert_chain.clone(), config.key.clone_key())
        .map_err(|e| RelayError::Tls(e.to_string()))?;
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
pub fn peer_client_config(config: &RelayConfig) -> Result<quinn::ClientConfig, RelayError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_root_certificates(roots(config)?)
        .with_client_auth_cert(config.cert_chain.clone(), config.key.clone_key())
        .map_err(|e| RelayError::Tls(e.to_string()))?;
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
