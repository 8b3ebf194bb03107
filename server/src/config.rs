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
//! | `key` | PKCS#8 PEM private key of the certificate (Ed25519); refused unless only its owner may read it (mode 0600 or 0400) |
//! | `trust_anchors` | PEM file with the federation root CA(s) |
//! | `data_dir` | directory of the relay's store; created with mode 0700, an existing one with group or other permissions is tightened to 0700 at start |
//! | `accreditation` | optional label text; may only lower what the certificate grants |
//! | `max_frame` | largest accepted frame in bytes (default 8 MiB, at least 4 MiB + 64 KiB: one federation delivery must carry the largest notice; a Welcome carries the ratchet tree, about 1 KiB per member) |
//! | `max_connections` | connection cap (default 10 000) |
//! | `handshake_timeout_ms` | TLS handshake deadline (default 5 000) |
//! | `idle_timeout_ms` | idle connection timeout (default 60 000) |
//! | `requests_per_second` | per-identity rate limit (default 200, burst 2× that); every request stream costs one, `Subscribe` too, charged before its frame is read; a peer relay's federation requests are limited to 10× that per peer (it speaks for all its users) |
//! | `max_connections_per_identity` | open connections per device or peer relay identity (default 8); more are refused (`Unavailable`, audited) |
//! | `request_bytes_per_identity` | request bytes one identity may have in flight, being received or handled, across its streams and connections (default `max_frame`; at least `max_frame`); beyond it a stream is refused (`RateLimited`, audited) |
//! | `frame_timeout_ms` | deadline for a request frame to arrive whole from when its stream opens (default 30 000); a slower stream is refused (`BadRequest`, audited) |
//! | `key_packages_per_user` | cap on stored key packages per user (default 100) |
//! | `crls` | CRL files (DER or PEM) of organisation CAs, re-read when they change |
//! | `clients` | organisations this relay's organisation declares as its clients (organisation ids, e.g. `["post-a"]`): TLP:AMBER notices may be forwarded by its users into communities whose members all belong to the organisation or to these; reloadable |
//! | `[[peers]]` `id`, `address` | federation peers (used by federation) |
//! | `[[peers]]` `organisation` | required: the peer's organisation; only certificates with this O speak for the peer and its users |
//! | `[[peers]]` `ca_fingerprint` | optional: SHA-256 of the peer organisation's CA certificate (hex, `:` allowed); only that CA may issue them |
//! | `[[peers]]` `accreditation` | optional label text; lowers what the peer's certificate grants |
//! | `[metrics]` `listen` | optional TCP address (e.g. `127.0.0.1:9464`) serving `/metrics` (Prometheus/OpenMetrics text) and `/healthz` over plain HTTP; off when absent. Anyone who reaches it can read the counters: bind loopback or an internal management interface |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kring_policy::Clearance;
use kring_protocol::identity::{CaFingerprint, Identity, IdentityKind, RelayTrust, TrustMap};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;

use crate::error::{ConfigProblem, RelayError};

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
    /// Open connections per identity.
    pub max_connections_per_identity: Option<usize>,
    /// Request bytes in flight per identity.
    pub request_bytes_per_identity: Option<usize>,
    /// Deadline for one request frame.
    pub frame_timeout_ms: Option<u64>,
    /// CRL files of organisation CAs.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Organisations this relay's organisation declares as its clients.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Federation peers.
    #[serde(default)]
    pub peers: Vec<PeerToml>,
    /// Metrics and health endpoint.
    pub metrics: Option<MetricsToml>,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsToml {
    /// TCP address serving `/metrics` and `/healthz`.
    pub listen: SocketAddr,
}

/// One `[[peers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerToml {
    /// Peer relay id.
    pub id: String,
    /// Peer address.
    pub address: SocketAddr,
    /// The peer's organisation (the O of its certificate and its users'); required,
    /// checked at load with an error that says so.
    pub organisation: Option<String>,
    /// Optional pin: SHA-256 of the peer organisation's CA certificate, hex.
    pub ca_fingerprint: Option<String>,
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
    /// Organisations this relay's organisation declares as its clients (for the
    /// TLP:AMBER forwarding rule), sorted, without duplicates.
    pub clients: Vec<String>,
    /// Who may speak for which relay: this relay (its organisation, pinned to its
    /// own CA) and every peer (its configured organisation and optional CA pin).
    pub trust: TrustMap,
    /// Where `/metrics` and `/healthz` are served (`[metrics] listen`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
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
    /// Open connections per identity (a device's user, or a peer relay).
    pub max_connections_per_identity: usize,
    /// Request bytes one identity may have in flight (received or being handled),
    /// shared by all its streams and connections; at least `max_frame`.
    pub request_bytes_per_identity: usize,
    /// Deadline for a request frame to arrive whole, from when its stream opens.
    pub frame_timeout_ms: u64,
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
            max_connections_per_identity: 8,
            request_bytes_per_identity: kring_protocol::wire::DEFAULT_MAX_FRAME,
            frame_timeout_ms: 30_000,
        }
    }
}

/// Most request bytes in flight per identity that may be configured.
const MAX_REQUEST_BYTES_PER_IDENTITY: usize = 1 << 30;
/// Range of `frame_timeout_ms`.
const FRAME_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

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

/// Reads a PKCS#8 PEM private key, returning it and its raw PKCS#8 bytes. Only the
/// file's owner may have access to it: a key that group or others may read or write
/// is refused, with the `chmod` that fixes it.
pub fn read_key(path: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), RelayError> {
    check_owner_only(path)?;
    let data = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| bad(path, format!("not a PEM private key: {e}")))?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => return Err(bad(path, "the private key must be PKCS#8 (Ed25519)")),
    };
    Ok((key, pkcs8))
}

/// Refuses a private key file that group or others may access (mode bits 077).
#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), RelayError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| bad(path, format!("cannot read: {e}")))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(
            path,
            format!(
                "the private key file has mode {mode:04o}: group or others may access it; \
                 only the relay's own user may. Run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), RelayError> {
    Ok(())
}

/// Mode of the store directory.
#[cfg(unix)]
const DATA_DIR_MODE: u32 = 0o700;

/// Makes `path` ready to hold the relay's store, readable by the relay's user only:
/// creates it with mode 0700 when missing (missing parents with the default mode),
/// and tightens an existing directory that group or others may access to 0700 (the
/// store holds memberships, labels, metadata and the audit log; the relay owns it).
/// Returns the old mode of a directory it tightened, for the caller to log.
pub fn prepare_data_dir(path: &Path) -> Result<Option<u32>, RelayError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let tighten = |from: Option<u32>| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(DATA_DIR_MODE))
                .map_err(|e| {
                    bad(
                        path,
                        format!(
                            "cannot set the data directory to mode 0700: {e}; \
                             run `chmod 700 {}` as its owner",
                            path.display()
                        ),
                    )
                })
                .map(|()| from)
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => Err(bad(path, "data_dir exists and is not a directory")),
            Ok(m) => {
                let mode = m.permissions().mode() & 0o7777;
                if mode & 0o077 == 0 {
                    Ok(None)
                } else {
                    tighten(Some(mode))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        bad(
                            parent,
                            format!("cannot create the data directory's parent: {e}"),
                        )
                    })?;
                }
                std::fs::DirBuilder::new()
                    .mode(DATA_DIR_MODE)
                    .create(path)
                    .map_err(|e| bad(path, format!("cannot create the data directory: {e}")))?;
                // The umask only ever removes bits; set the mode exactly anyway.
                tighten(None)
            }
            Err(e) => Err(bad(path, format!("cannot read the data directory: {e}"))),
        }
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(path)
            .map_err(|e| bad(path, format!("cannot create the data directory: {e}")))?;
        Ok(None)
    }
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
            crate::now() as u64,
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
        check_key_matches(&key_pkcs8, &identity)
            .map_err(|e| bad(&resolve(&raw.key), e.to_string()))?;

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
                lower_only(&cert_accr, lowered).map_err(|e| bad(path, e.to_string()))?
            }
        };
        let own_ca = cert_chain.get(1).ok_or_else(|| {
            bad(
                &cert_path,
                "must hold the relay certificate followed by its organisation CA",
            )
        })?;
        let mut trust = TrustMap::new();
        trust
            .insert(
                &identity.name,
                RelayTrust {
                    organisation: identity.organisation.clone(),
                    ca: Some(CaFingerprint::of(own_ca)),
                },
            )
            .map_err(|e| bad(path, e.to_string()))?;
        for p in &raw.peers {
            kring_protocol::wire::check_name("peers.id", &p.id)
                .map_err(|e| bad(path, e.to_string()))?;
            if p.id == raw.id {
                return Err(bad(path, "a relay cannot be its own peer"));
            }
            let ca = match &p.ca_fingerprint {
                Some(text) => Some(
                    CaFingerprint::parse(text)
                        .map_err(|e| bad(path, format!("peer {} ca_fingerprint: {e}", p.id)))?,
                ),
                None => None,
            };
            let organisation = p.organisation.clone().ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "peer '{}' names no organisation: every [[peers]] entry must say which \
                         organisation runs the peer (organisation = \"ID\", the O of its \
                         certificates), so that no other organisation's CA can speak for it",
                        p.id
                    ),
                )
            })?;
            trust
                .insert(&p.id, RelayTrust { organisation, ca })
                .map_err(|e| bad(path, format!("peer {}: {e}", p.id)))?;
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
            max_connections_per_identity: raw
                .max_connections_per_identity
                .unwrap_or(d.max_connections_per_identity),
            // One largest request at a time unless configured otherwise.
            request_bytes_per_identity: raw
                .request_bytes_per_identity
                .unwrap_or(raw.max_frame.unwrap_or(d.max_frame)),
            frame_timeout_ms: raw.frame_timeout_ms.unwrap_or(d.frame_timeout_ms),
        };
        check_limits(&limits).map_err(|e| bad(path, e.to_string()))?;
        let clients =
            check_clients(&raw.clients, &identity.organisation).map_err(|e| bad(path, e))?;
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
            clients,
            trust,
            metrics_listen: raw.metrics.map(|m| m.listen),
        })
    }
}

/// Checks `clients`: organisation ids, at most
/// [`MAX_CLIENTS`](kring_protocol::wire::limits::MAX_CLIENTS), none twice and not the
/// relay's own organisation. Returns them sorted.
pub fn check_clients(clients: &[String], own: &str) -> Result<Vec<String>, String> {
    let max = kring_protocol::wire::limits::MAX_CLIENTS;
    if clients.len() > max {
        return Err(format!(
            "clients: {} organisations; at most {max}",
            clients.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(clients.len());
    for c in clients {
        kring_protocol::identity::validate_organisation(c)
            .map_err(|e| format!("clients: {c:?}: {e}"))?;
        if c == own {
            return Err(format!(
                "clients: {c} is this relay's own organisation; list only other organisations"
            ));
        }
        if out.contains(c) {
            return Err(format!("clients: {c} is listed twice"));
        }
        out.push(c.clone());
    }
    out.sort();
    Ok(out)
}

/// The smallest `max_frame` a relay may be configured with: one federation delivery
/// must be able to carry the largest notice (an MLS message of
/// [`MAX_MESSAGE_BYTES`](kring_protocol::mls::MAX_MESSAGE_BYTES) with its envelope)
/// to any peer.
pub const MIN_MAX_FRAME: usize = kring_protocol::mls::MAX_MESSAGE_BYTES + (64 << 10);

/// Checks that a PKCS#8 Ed25519 key belongs to the certificate's public key.
pub fn check_key_matches(pkcs8: &[u8], identity: &Identity) -> Result<(), ConfigProblem> {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|_| ConfigProblem::KeyNotEd25519)?;
    if pair.public_key().as_ref() != identity.public_key.as_slice() {
        return Err(ConfigProblem::KeyMismatch);
    }
    Ok(())
}

/// Checks the ranges of the configured limits and how they fit together.
fn check_limits(limits: &Limits) -> Result<(), ConfigProblem> {
    let min_frame = MIN_MAX_FRAME;
    if limits.max_frame < min_frame || limits.max_frame > 64 << 20 {
        return Err(ConfigProblem::MaxFrame { min: min_frame });
    }
    if limits.max_connections == 0 || limits.requests_per_second == 0 {
        return Err(ConfigProblem::NotPositive);
    }
    if limits.max_connections_per_identity == 0
        || limits.max_connections_per_identity > limits.max_connections
    {
        return Err(ConfigProblem::ConnectionsPerIdentity {
            max: limits.max_connections,
        });
    }
    if limits.request_bytes_per_identity < limits.max_frame
        || limits.request_bytes_per_identity > MAX_REQUEST_BYTES_PER_IDENTITY
    {
        return Err(ConfigProblem::RequestBytes {
            max_frame: limits.max_frame,
            max: MAX_REQUEST_BYTES_PER_IDENTITY,
        });
    }
    if !FRAME_TIMEOUT_MS.contains(&limits.frame_timeout_ms) {
        return Err(ConfigProblem::FrameTimeout {
            min: *FRAME_TIMEOUT_MS.start(),
            max: *FRAME_TIMEOUT_MS.end(),
        });
    }
    Ok(())
}

/// Accepts `lowered` only if it grants nothing `granted` does not: same policy, level
/// not higher, and it holds no tag value the certificate does not.
pub fn lower_only(granted: &Clearance, lowered: Clearance) -> Result<Clearance, ConfigProblem> {
    if lowered.policy() != granted.policy() || lowered.level_rank() > granted.level_rank() {
        return Err(ConfigProblem::AccreditationRaises {
            lowered: lowered.to_string(),
            granted: granted.to_string(),
        });
    }
    for (tag, values) in lowered.tags() {
        let held = granted.tags().find(|(t, _)| *t == tag).map(|(_, v)| v);
        let ok = held.is_some_and(|h| values.is_subset(h));
        if !ok {
            return Err(ConfigProblem::AccreditationAddsTags {
                lowered: lowered.to_string(),
                tag: tag.to_string(),
                granted: granted.to_string(),
            });
        }
    }
    Ok(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo federation in a temporary directory, and relay bz's config text.
    fn demo() -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        kring_certs_dev::init_demo(dir.path(), 47_000, false, crate::now()).unwrap();
        let path = dir.path().join("relays/bz/relay.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (dir, path, text)
    }

    #[test]
    fn the_demo_config_pins_every_peer() {
        let (_dir, path, _) = demo();
        let config = RelayConfig::load(&path).unwrap();
        for id in ["bz", "nctv", "aivd", "post-a"] {
            let t = config.trust.get(id).unwrap();
            assert_eq!(t.organisation, id);
            assert!(t.ca.is_some(), "{id} is not pinned");
        }
        assert_eq!(config.trust.len(), 4);
    }

    #[test]
    fn declared_clients_are_validated() {
        let (_dir, path, text) = demo();
        assert!(RelayConfig::load(&path).unwrap().clients.is_empty());
        let with = |clients: &str| {
            std::fs::write(&path, format!("clients = {clients}\n{text}")).unwrap();
            RelayConfig::load(&path)
        };
        let config = with(r#"["post-a", "aivd"]"#).unwrap();
        assert_eq!(config.clients, ["aivd", "post-a"]);
        for (bad, says) in [
            (r#"["bz"]"#, "own organisation"),
            (r#"["post-a", "post-a"]"#, "listed twice"),
            (r#"["not an org"]"#, "clients"),
            (r#""post-a""#, "clients"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_peer_without_an_organisation_is_refused() {
        let (_dir, path, text) = demo();
        let stripped: String = text
            .lines()
            .filter(|l| !l.starts_with("organisation = \"nctv\""))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(stripped, text);
        std::fs::write(&path, stripped).unwrap();
        let err = RelayConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("peer 'nctv' names no organisation"), "{err}");
    }

    #[test]
    fn a_bad_or_duplicate_pin_is_refused() {
        let (_dir, path, text) = demo();
        let bad = text.replacen("ca_fingerprint = \"", "ca_fingerprint = \"zz", 1);
        std::fs::write(&path, bad).unwrap();
        let err = RelayConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("ca_fingerprint"), "{err}");

        let twice = format!(
            "{text}\n[[peers]]\nid = \"nctv\"\naddress = \"127.0.0.1:1\"\norganisation = \"nctv\"\n"
        );
        std::fs::write(&path, twice).unwrap();
        let err = RelayConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    #[test]
    fn a_key_that_group_or_others_may_access_is_refused() {
        let (dir, path, _) = demo();
        let key = dir.path().join("relays/bz/relay.key");
        // kring-certs-dev writes keys for their owner only: the demo loads as minted.
        assert_eq!(mode_of(&key), 0o600);
        RelayConfig::load(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            set_mode(&key, mode);
            let err = RelayConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(&key.display().to_string()), "{mode:o}: {err}");
            assert!(
                err.contains(&format!("chmod 600 {}", key.display())),
                "{mode:o}: {err}"
            );
            assert!(err.contains(&format!("mode 0{mode:o}")), "{mode:o}: {err}");
        }
        set_mode(&key, 0o400);
        RelayConfig::load(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_data_dir_is_created_and_kept_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        // Created (with missing parents) as 0700.
        let fresh = tmp.path().join("var/kring/bz");
        assert_eq!(prepare_data_dir(&fresh).unwrap(), None);
        assert_eq!(mode_of(&fresh), 0o700);
        assert_eq!(prepare_data_dir(&fresh).unwrap(), None);
        assert_eq!(mode_of(&fresh), 0o700);
        // An existing directory others may read is tightened, and says what it was.
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        set_mode(&loose, 0o755);
        assert_eq!(prepare_data_dir(&loose).unwrap(), Some(0o755));
        assert_eq!(mode_of(&loose), 0o700);
        // A file in its place is refused.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare_data_dir(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn metrics_are_off_unless_configured() {
        let (_dir, path, text) = demo();
        assert_eq!(RelayConfig::load(&path).unwrap().metrics_listen, None);
        std::fs::write(
            &path,
            format!("{text}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"),
        )
        .unwrap();
        assert_eq!(
            RelayConfig::load(&path).unwrap().metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        for bad in [
            "listen = \"nowhere\"",
            "listen = \"127.0.0.1:1\"\npath = \"/m\"",
        ] {
            std::fs::write(&path, format!("{text}\n[metrics]\n{bad}\n")).unwrap();
            let err = RelayConfig::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("metrics") || err.contains("path") || err.contains("listen"),
                "{err}"
            );
        }
    }

    #[test]
    fn resource_limits_have_defaults_and_are_validated() {
        let (_dir, path, text) = demo();
        let limits = RelayConfig::load(&path).unwrap().limits;
        assert_eq!(limits.max_connections_per_identity, 8);
        assert_eq!(limits.request_bytes_per_identity, limits.max_frame);
        assert_eq!(limits.frame_timeout_ms, 30_000);
        // The budget follows a configured max_frame by default.
        std::fs::write(&path, format!("max_frame = 6291456\n{text}")).unwrap();
        let limits = RelayConfig::load(&path).unwrap().limits;
        assert_eq!(limits.request_bytes_per_identity, 6 << 20);
        let set = |keys: &str| {
            std::fs::write(&path, format!("{keys}\n{text}")).unwrap();
            RelayConfig::load(&path).map(|c| c.limits)
        };
        let ok = set(
            "max_connections_per_identity = 2\nrequest_bytes_per_identity = 16777216\n\
             frame_timeout_ms = 1000",
        )
        .unwrap();
        assert_eq!(
            (
                ok.max_connections_per_identity,
                ok.request_bytes_per_identity,
                ok.frame_timeout_ms
            ),
            (2, 16 << 20, 1000)
        );
        for (keys, needle) in [
            (
                "request_bytes_per_identity = 1048576",
                "request_bytes_per_identity",
            ),
            (
                "request_bytes_per_identity = 2147483648",
                "request_bytes_per_identity",
            ),
            (
                "max_connections_per_identity = 0",
                "max_connections_per_identity",
            ),
            (
                "max_connections = 4\nmax_connections_per_identity = 5",
                "max_connections_per_identity",
            ),
            ("frame_timeout_ms = 0", "frame_timeout_ms"),
            // A frame too small for the largest notice would jam federation.
            ("max_frame = 2097152", "max_frame"),
            ("frame_timeout_ms = 86400000", "frame_timeout_ms"),
        ] {
            let err = set(keys).unwrap_err().to_string();
            assert!(err.contains(needle), "{keys}: {err}");
        }
    }
}
