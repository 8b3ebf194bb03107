//! `relay.toml`: the relay's configuration, loaded and fully validated before anything
//! binds a socket.
//!
//! Paths in the file are relative to the directory holding it. Keys:
//!
//! | key | meaning |
//! |---|---|
//! | `id` | relay id (must equal the certificate's `kring:relay:ID`) |
//! | `listen` | UDP socket address for QUIC (clients and peer relays) |
//! | `cert` | PEM chain: this relay's certificate, then its organisation CA |
//! | `key` | PKCS#8 PEM private key of the certificate (Ed25519) |
//! | `trust_anchors` | PEM file with the federation root CA(s) |
//! | `data_dir` | directory of the relay's store |
//! | `accreditation` | optional label text; may only lower what the certificate grants |
//! | `max_frame` | largest accepted frame in bytes (default 8 MiB; a Welcome carries the ratchet tree, about 1 KiB per member) |
//! | `max_connections` | connection cap (default 10 000) |
//! | `handshake_timeout_ms` | TLS handshake deadline (default 5 000) |
//! | `idle_timeout_ms` | idle connection timeout (default 60 000) |
//! | `requests_per_second` | per-identity rate limit (default 200, burst 2× that) |
//! | `key_packages_per_user` | cap on stored key packages per user (default 100) |
//! | `crls` | CRL files (DER or PEM) of organisation CAs, re-read when they change |
//! | `[[peers]]` `id`, `address` | federation peers (used by federation) |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kring_policy::Clearance;
use kring_protocol::identity::{Identity, IdentityKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;

use crate::error::RelayError;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayToml {
    /// Relay id.
    pub id: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// Trust anchor file.
    pub trust_anchors: PathBuf,
    /// Store directory.
    pub data_dir: PathBuf,
    /// Optional lowered accreditation.
    pub accreditation: Option<String>,
    /// Informative list of org admins.
    #[serde(default)]
    pub org_admins: Vec<String>,
    /// Largest frame.
    pub max_frame: Option<usize>,
    /// Connection cap.
    pub max_connections: Option<usize>,
    /// Handshake timeout.
    pub handshake_timeout_ms: Option<u64>,
    /// Idle timeout.
    pub idle_timeout_ms: Option<u64>,
    /// Per-identity request rate.
    pub requests_per_second: Option<u32>,
    /// Key package cap per user.
    pub key_packages_per_user: Option<usize>,
    /// CRL files of organisation CAs.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Federation peers.
    #[serde(default)]
    pub peers: Vec<PeerToml>,
}

/// One `[[peers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerToml {
    /// Peer relay id.
    pub id: String,
    /// Peer address.
    pub address: SocketAddr,
    /// Optional lowered accreditation for this peer.
    pub accreditation: Option<String>,
}

/// A validated configuration, with certificates and keys loaded.
#[derive(Debug)]
pub struct RelayConfig {
    /// This relay's identity, read from its certificate.
    pub identity: Identity,
    /// Effective accreditation (certificate's, possibly lowered by config).
    pub accreditation: Clearance,
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// PKCS#8 bytes of the private key (for MLS signing).
    pub key_pkcs8: Vec<u8>,
    /// Federation trust anchors (DER).
    pub anchors: Vec<CertificateDer<'static>>,
    /// Store directory.
    pub data_dir: PathBuf,
    /// Limits.
    pub limits: Limits,
    /// Federation peers.
    pub peers: Vec<PeerToml>,
    /// CRL files (resolved paths); they may not exist yet.
    pub crls: Vec<PathBuf>,
}

/// Resource limits of a relay.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame.
    pub max_frame: usize,
    /// Connection cap.
    pub max_connections: usize,
    /// Handshake timeout.
    pub handshake_timeout_ms: u64,
    /// Idle timeout.
    pub idle_timeout_ms: u64,
    /// Per-identity request rate.
    pub requests_per_second: u32,
    /// Key package cap per user.
    pub key_packages_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: kring_protocol::wire::DEFAULT_MAX_FRAME,
            max_connections: 10_000,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            requests_per_second: 200,
            key_packages_per_user: 100,
        }
    }
}

fn bad(path: &Path, what: impl Into<String>) -> RelayError {
    RelayError::Config {
        path: path.to_path_buf(),
        reason: what.into(),
    }
}

/// Reads a PEM certificate chain.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RelayError> {
    let data = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "contains no certificate"));
    }
    Ok(certs)
}

/// Reads a PKCS#8 PEM private key, returning it and its raw PKCS#8 bytes.
pub fn read_key(path: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), RelayError> {
    let data = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| bad(path, format!("not a PEM private key: {e}")))?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => return Err(bad(path, "the private key must be PKCS#8 (Ed25519)")),
    };
    Ok((key, pkcs8))
}

impl RelayConfig {
    /// Loads and validates `path`: every file exists and parses, the certificate is a
    /// relay certificate for `id` that chains to the trust anchors, the key matches it,
    /// and any configured accreditation only lowers the certificate's.
    pub fn load(path: &Path) -> Result<Self, RelayError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
        let raw: RelayToml = toml::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        kring_protocol::wire::check_name("id", &raw.id).map_err(|e| bad(path, e.to_string()))?;
        let cert_path = resolve(&raw.cert);
        let cert_chain = read_certs(&cert_path)?;
        let (key, key_pkcs8) = read_key(&resolve(&raw.key))?;
        let anchors = read_certs(&resolve(&raw.trust_anchors))?;

        let chain: Vec<Vec<u8>> = cert_chain.iter().map(|c| c.to_vec()).collect();
        let anchor_der: Vec<Vec<u8>> = anchors.iter().map(|c| c.to_vec()).collect();
        let identity = kring_protocol::identity::verify_chain(
            &chain,
            &anchor_der,
            crate::now_unix() as u64,
            IdentityKind::Relay,
        )
        .map_err(|e| bad(&cert_path, format!("relay certificate refused: {e}")))?;
        if identity.name != raw.id {
            return Err(bad(
                path,
                format!(
                    "id is '{}' but the certificate is for relay '{}'",
                    raw.id, identity.name
                ),
            ));
        }
        crate::tls::check_key_matches(&key_pkcs8, &identity)
            .map_err(|e| bad(&resolve(&raw.key), e))?;

        let cert_accr = identity.clearance.clone().ok_or_else(|| {
            bad(
                &cert_path,
                "the relay certificate carries no accreditation (Clearance attribute)",
            )
        })?;
        let accreditation = match &raw.accreditation {
            None => cert_accr,
            Some(text) => {
                let lowered: Clearance = text
                    .parse()
                    .map_err(|e| bad(path, format!("accreditation: {e}")))?;
                lower_only(&cert_accr, lowered).map_err(|e| bad(path, e))?
            }
        };
        let mut seen = std::collections::BTreeSet::new();
        for p in &raw.peers {
            kring_protocol::wire::check_name("peers.id", &p.id)
                .map_err(|e| bad(path, e.to_string()))?;
            if p.id == raw.id {
                return Err(bad(path, "a relay cannot be its own peer"));
            }
            if !seen.insert(p.id.clone()) {
                return Err(bad(path, format!("peer '{}' listed twice", p.id)));
            }
            if let Some(a) = &p.accreditation {
                a.parse::<Clearance>()
                    .map_err(|e| bad(path, format!("peer {} accreditation: {e}", p.id)))?;
            }
        }
        let d = Limits::default();
        let limits = Limits {
            max_frame: raw.max_frame.unwrap_or(d.max_frame),
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
            handshake_timeout_ms: raw.handshake_timeout_ms.unwrap_or(d.handshake_timeout_ms),
            idle_timeout_ms: raw.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            requests_per_second: raw.requests_per_second.unwrap_or(d.requests_per_second),
            key_packages_per_user: raw.key_packages_per_user.unwrap_or(d.key_packages_per_user),
        };
        if limits.max_frame < 1024 || limits.max_frame > 64 << 20 {
            return Err(bad(path, "max_frame must be between 1 KiB and 64 MiB"));
        }
        if limits.max_connections == 0 || limits.requests_per_second == 0 {
            return Err(bad(
                path,
                "max_connections and requests_per_second must be positive",
            ));
        }
        Ok(Self {
            identity,
            accreditation,
            listen: raw.listen,
            cert_chain,
            key,
            key_pkcs8,
            anchors,
            data_dir: resolve(&raw.data_dir),
            limits,
            peers: raw.peers,
            crls: raw.crls.iter().map(|p| resolve(p)).collect(),
        })
    }
}

/// Accepts `lowered` only if it grants nothing `granted` does not: same policy, level
/// not higher, and it holds no tag value the certificate does not.
pub fn lower_only(granted: &Clearance, lowered: Clearance) -> Result<Clearance, String> {
    if lowered.policy() != granted.policy() || lowered.level_rank() > granted.level_rank() {
        return Err(format!(
            "configured accreditation {lowered} would raise the certificate's {granted}"
        ));
    }
    for (tag, values) in lowered.tags() {
        let held = granted.tags().find(|(t, _)| *t == tag).map(|(_, v)| v);
        let ok = held.is_some_and(|h| values.is_subset(h));
        if !ok {
            return Err(format!(
                "configured accreditation {lowered} holds {tag} values the certificate's {granted} does not"
            ));
        }
    }
    Ok(lowered)
}
