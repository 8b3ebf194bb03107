//! The relay's request path: authenticate → decode → policy → store → ack → deliver.
//!
//! Every mutation runs inside [`Relay::write`]: one short critical section that makes
//! the decision, appends audit records and applies one atomic [`Batch`]. The caller then
//! awaits group-commit durability before acknowledging, and finally wakes the delivery
//! tasks. Decisions themselves are plain functions in [`crate::decide`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use kring_policy::{Clearance, Label};
use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::notice_aad::NoticeAad;
use kring_protocol::revocation::Revocations;
use kring_protocol::wire::{
    CommunitySummary, EntryKind, ErrorCode, FedBody, LogEntry, NoticeStatus, NoticeUpload, Request,
    Response,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::audit::{AuditEvent, AuditHead, AuditKind};
use crate::config::{Limits, RelayConfig};
use crate::decide;
use crate::error::{RelayError, StoreError};
use crate::groups;
use crate::metrics::{BatchCounts, Metrics};
use crate::net::ByteBudget;
use crate::records::{CommunityRecord, MemberRecord, NoticeRecord, WelcomeBlob, WelcomeRef};
use crate::store::{Batch, Durability, Engine, get_obj, keys};

/// An authenticated peer of a connection.
#[derive(Debug)]
pub struct Caller {
    /// Identity from the certificate.
    pub identity: Identity,
    /// `NAME@RELAY` (users) or relay id.
    pub id: String,
    /// Certificate chain presented in TLS, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
}

impl Caller {
    /// Wraps an authenticated identity.
    pub fn new(identity: Identity, chain: Vec<Vec<u8>>) -> Self {
        let id = identity.id();
        Self {
            identity,
            id,
            chain,
        }
    }
}

/// State only the writer touches.
#[derive(Debug, Clone)]
pub struct Writer {
    /// Audit chain head.
    pub audit: AuditHead,
    /// Next outbox sequence number per peer.
    pub outbox_next: HashMap<String, u64>,
    /// What the batch being written did that is counted (once it is applied).
    pub counts: BatchCounts,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A registered connection (a device's or a peer relay's): its id, the connection,
/// and who it is.
type LiveConnection = (usize, quinn::Connection, Identity);

/// The live connections of one identity and the request bytes it has in flight.
#[derive(Debug)]
struct Live {
    budget: ByteBudget,
    conns: Vec<LiveConnection>,
}

/// Keeps a connection registered while it lives (for the per-identity connection
/// cap, the request byte budget, and revocation cut-off).
#[derive(Debug)]
pub struct Registration {
    relay: Arc<Relay>,
    id: String,
    kind: IdentityKind,
    conn_id: usize,
    budget: ByteBudget,
}

impl Registration {
    /// The request byte budget of the connection's identity (shared with its other
    /// connections).
    pub fn budget(&self) -> &ByteBudget {
        &self.budget
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.relay.metrics.connection_closed(self.kind);
        if let Ok(mut conns) = self.relay.conns.lock()
            && let Some(live) = conns.get_mut(&self.id)
        {
            live.conns.retain(|(id, _, _)| *id != self.conn_id);
            // Requests still being handled keep the budget until they are done.
            if live.conns.is_empty() && live.budget.is_unused() {
                conns.remove(&self.id);
            }
        }
    }
}

/// What a reload may replace of the relay's own identity.
#[derive(Debug)]
pub struct OwnIdentity {
    /// The relay's certificate chain, leaf first (its MLS external-sender credential).
    pub cert_chain: Vec<Vec<u8>>,
    /// PKCS#8 of the relay key (signs external proposals).
    pub key_pkcs8: Vec<u8>,
    /// Effective accreditation.
    pub accreditation: Clearance,
}

impl OwnIdentity {
    fn from_config(config: &RelayConfig) -> Self {
        Self {
            cert_chain: config.cert_chain.iter().map(|c| c.to_vec()).collect(),
            key_pkcs8: config.key_pkcs8.clone(),
            accreditation: config.accreditation.clone(),
        }
    }
}

/// One relay.
#[derive(Debug)]
pub struct Relay {
    id: String,
    organisation: String,
    anchors: Vec<Vec<u8>>,
    /// Who may speak for which relay; replaced whole by a reload.
    trust: RwLock<Arc<kring_protocol::identity::TrustMap>>,
    limits: Limits,
    /// Certificate, key and accreditation; replaced whole by a reload.
    own: RwLock<Arc<OwnIdentity>>,
    /// The certificate and key TLS presents (swapped by a reload).
    tls_identity: Arc<crate::tls::CertResolver>,
    /// CRL files the enforcement task re-reads as they change.
    crl_files: RwLock<Vec<std::path::PathBuf>>,
    /// Organisations this relay's organisation declares as its clients (`clients`).
    clients: RwLock<Vec<String>>,
    engine: Arc<dyn Engine>,
    durability: Durability,
    writer: Mutex<Writer>,
    changes: watch::Sender<u64>,
    visible: watch::Sender<u64>,
    conns: Mutex<HashMap<String, Live>>,
    revocations: RwLock<Revocations>,
    enforce: watch::Sender<u64>,
    enforce_due: Mutex<crate::revocation::EnforceDue>,
    /// The revocation set's generation the last full enforcement was asked for.
    enforced_generation: std::sync::atomic::AtomicU64,
    crl_rate: Mutex<crate::revocation::CrlRateLimit>,
    rate: Mutex<HashMap<String, Bucket>>,
    key_fetches: Mutex<crate::key_fetch::KeyFetchLimiter>,
    /// When members last updated their own leaf, as the hub.
    self_updates: Mutex<decide::SelfUpdates>,
    /// Federation peers by id (changed by a reload).
    peers: RwLock<std::collections::BTreeMap<String, Arc<crate::federation::Peer>>>,
    /// The QUIC endpoint (for dialling peers), set once bound.
    pub endpoint: std::sync::OnceLock<(quinn::Endpoint, quinn::ClientConfig)>,
    metrics: Arc<Metrics>,
    recovery: crate::recovery::Recovery,
}

/// Most hop refusals kept for one notice (one per hop; a federation has few relays).
pub const MAX_HOP_REFUSALS: usize = 64;
/// Longest single wait of a connection's expiry watch; the wall clock is read again
/// after it (so a clock that was set meanwhile is followed).
const EXPIRY_RECHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Closes `conn` when its certificate chain expires (valid through `not_after`,
/// unix seconds, as X.509 counts it) unless it closes first; audits the cut.
async fn close_at_expiry(
    relay: std::sync::Weak<Relay>,
    conn: quinn::Connection,
    id: String,
    not_after: i64,
) {
    let expires = u64::try_from(not_after.saturating_add(1))
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or(std::time::UNIX_EPOCH);
    while let Ok(left) = expires.duration_since(std::time::SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::select! {
            _ = conn.closed() => return,
            _ = tokio::time::sleep(left.min(EXPIRY_RECHECK)) => {}
        }
    }
    if conn.close_reason().is_some() {
        return;
    }
    conn.close(CloseCode::Expired.code().into(), b"certificate expired");
    tracing::info!(peer = %id, "certificate expired; connection closed");
    if let Some(relay) = relay.upgrade() {
        relay.audit_now(AuditEvent::new(
            AuditKind::Connection,
            relay.id(),
            id,
            "expired-cut-off",
            format!(
                "connection closed: its certificate chain expired (valid until {not_after}, unix)"
            ),
        ));
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    crate::now_unix()
}

/// A community record whose stored maximum label does not decode.
fn corrupt_label(community: &str, e: impl std::fmt::Display) -> RelayError {
    RelayError::Corrupt {
        key: format!("community {community}"),
        reason: format!("maximum label: {e}"),
    }
}

impl Relay {
    /// Opens the store and builds the relay. Must run inside a tokio runtime.
    pub fn open(config: &RelayConfig, engine: Arc<dyn Engine>) -> Result<Arc<Self>, RelayError> {
        let anchors: Vec<Vec<u8>> = config.anchors.iter().map(|a| a.to_vec()).collect();
        let signer = Arc::new(crate::audit::CheckpointSigner::new(
            &config.identity.name,
            &config.key_pkcs8,
            config.cert_chain.iter().map(|c| c.to_vec()).collect(),
        )?);
        let mut audit = AuditHead::load(engine.as_ref())?.with_signer(signer);
        // The certificate that signs checkpoints from now on joins the history
        // (checked against the anchors) and is announced in the chain.
        crate::audit::adopt_certificate(
            engine.as_ref(),
            &mut audit,
            &anchors,
            &config.identity.organisation,
            now(),
        )?;
        let revocations = crate::revocation::load(engine.as_ref(), &anchors)?;
        let generation = revocations.generation();
        let (enforce, _) = watch::channel(0);
        let metrics = Arc::new(Metrics::new());
        let durability = Durability::start_observed(engine.clone(), {
            let metrics = metrics.clone();
            Some(Arc::new(move |took, ok| metrics.flushed(took, ok)))
        });
        let (changes, _) = watch::channel(0);
        let (visible, _) = watch::channel(0);
        Ok(Arc::new(Self {
            id: config.identity.name.clone(),
            organisation: config.identity.organisation.clone(),
            anchors,
            trust: RwLock::new(Arc::new(config.trust.clone())),
            limits: config.limits.clone(),
            own: RwLock::new(Arc::new(OwnIdentity::from_config(config))),
            tls_identity: crate::tls::CertResolver::new(config)?,
            crl_files: RwLock::new(config.crls.clone()),
            clients: RwLock::new(config.clients.clone()),
            engine: engine.clone(),
            durability,
            writer: Mutex::new(Writer {
                audit,
                outbox_next: crate::federation::load_outbox_heads(engine.as_ref(), &config.peers)?,
                counts: BatchCounts::default(),
            }),
            changes,
            visible,
            conns: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            key_fetches: Mutex::new(crate::key_fetch::KeyFetchLimiter::default()),
            self_updates: Mutex::new(decide::SelfUpdates::default()),
            revocations: RwLock::new(revocations),
            enforce,
            // A first pass at start: the set loaded from the store may have changed
            // since the last one ran.
            enforce_due: Mutex::new(crate::revocation::EnforceDue::everything()),
            enforced_generation: std::sync::atomic::AtomicU64::new(generation),
            crl_rate: Mutex::new(crate::revocation::CrlRateLimit::default()),
            peers: RwLock::new(
                config
                    .peers
                    .iter()
                    .map(|p| {
                        (
                            p.id.clone(),
                            crate::federation::Peer::from_config(p, engine.as_ref()),
                        )
                    })
                    .collect(),
            ),
            endpoint: std::sync::OnceLock::new(),
            metrics,
            recovery: crate::recovery::Recovery::open(
                engine.as_ref(),
                &config.identity.name,
                &config.peers,
            )?,
        }))
    }

    /// Where a relay restored from a backup stands ([`crate::recovery`]).
    pub fn recovery(&self) -> &crate::recovery::Recovery {
        &self.recovery
    }

    /// The durability of the store (consistent views for backups).
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// This relay's id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Effective accreditation (as last loaded).
    pub fn accreditation(&self) -> Clearance {
        self.own().accreditation.clone()
    }
    /// The relay's certificate, key and accreditation (as last loaded).
    pub fn own(&self) -> Arc<OwnIdentity> {
        self.own
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// The relay's certificate chain, leaf first.
    pub fn cert_chain(&self) -> Vec<Vec<u8>> {
        self.own().cert_chain.clone()
    }
    /// The certificate and key TLS presents.
    pub fn tls_identity(&self) -> Arc<crate::tls::CertResolver> {
        self.tls_identity.clone()
    }
    /// Takes a renewed certificate, key and accreditation from `config`: the audit
    /// log's last checkpoint is signed with the old key, the new certificate joins
    /// the certificate history (checked against the anchors), then checkpoints,
    /// TLS handshakes and MLS signatures use the new one.
    pub fn renew_identity(&self, config: &RelayConfig) -> Result<(), RelayError> {
        let signer = Arc::new(crate::audit::CheckpointSigner::new(
            &self.id,
            &config.key_pkcs8,
            config.cert_chain.iter().map(|c| c.to_vec()).collect(),
        )?);
        let tls_key = crate::tls::CertResolver::prepare(config)?;
        self.write(|w, b| {
            let at = now();
            w.audit.checkpoint(b, at)?;
            w.audit.set_signer(signer);
            crate::audit::adopt_certificate_into(
                self.engine.as_ref(),
                &mut w.audit,
                &self.anchors,
                &self.organisation,
                at,
                b,
            )
        })?;
        *self
            .own
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(OwnIdentity::from_config(config));
        self.tls_identity.replace(tls_key);
        Ok(())
    }
    /// Takes the accreditation of `config` (same certificate).
    pub fn set_accreditation(&self, config: &RelayConfig) {
        let mut own = self
            .own
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *own = Arc::new(OwnIdentity {
            cert_chain: own.cert_chain.clone(),
            key_pkcs8: own.key_pkcs8.clone(),
            accreditation: config.accreditation.clone(),
        });
    }
    /// Replaces who may speak for which relay.
    pub fn set_trust(&self, trust: kring_protocol::identity::TrustMap) {
        *self
            .trust
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(trust);
    }
    /// The organisations this relay's organisation declares as its clients.
    pub fn clients(&self) -> Vec<String> {
        self.clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// Replaces the declared clients (a reload).
    pub fn set_clients(&self, clients: Vec<String>) {
        *self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = clients;
    }
    /// The CRL files to re-read as they change.
    pub fn crl_files(&self) -> Vec<std::path::PathBuf> {
        self.crl_files
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// Replaces the CRL files and has them read now.
    pub fn set_crl_files(&self, files: Vec<std::path::PathBuf>) {
        *self
            .crl_files
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        self.enforce.send_modify(|v| *v = v.wrapping_add(1));
    }
    /// Removes peer `id` (a reload); the caller retires it.
    pub fn remove_peer(&self, id: &str) -> Option<Arc<crate::federation::Peer>> {
        self.peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
    }
    /// Adds or replaces a peer (a reload), with its outbox numbering from the
    /// store; returns the one it replaces (for the caller to retire).
    pub fn insert_peer(
        &self,
        entry: &crate::config::PeerToml,
        peer: Arc<crate::federation::Peer>,
    ) -> Result<Option<Arc<crate::federation::Peer>>, RelayError> {
        let heads = crate::federation::load_outbox_heads(
            self.engine.as_ref(),
            std::slice::from_ref(entry),
        )?;
        self.write(|w, _| {
            for (id, next) in heads {
                w.outbox_next.entry(id).or_insert(next);
            }
            Ok(())
        })?;
        Ok(self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(entry.id.clone(), peer))
    }
    /// The configured federation peer `id`.
    pub fn peer(&self, id: &str) -> Option<Arc<crate::federation::Peer>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }
    /// Whether `id` is a configured federation peer.
    pub fn is_peer(&self, id: &str) -> bool {
        self.peer(id).is_some()
    }
    /// Every configured federation peer, by id.
    pub fn peer_list(&self) -> Vec<Arc<crate::federation::Peer>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
    /// Limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// The store.
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }
    /// Federation trust anchors (DER).
    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }
    /// This relay's organisation.
    pub fn organisation(&self) -> &str {
        &self.organisation
    }
    /// Who may speak for which relay (this relay and its configured peers).
    pub fn trust(&self) -> Arc<kring_protocol::identity::TrustMap> {
        self.trust
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// The store, shared.
    pub fn engine_arc(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }
    /// The revocations this relay enforces.
    pub fn revocations(&self) -> RwLockReadGuard<'_, Revocations> {
        self.revocations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// The revocation set, for [`crate::revocation`] to extend (never shrink).
    pub fn revocations_mut(&self) -> RwLockWriteGuard<'_, Revocations> {
        self.revocations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Asks the enforcement task to run over everything if something became
    /// revoked since it was last asked to (a revocation or CRL that changed nothing
    /// costs no pass).
    pub fn enforce_soon(&self) {
        let generation = self.revocations().generation();
        let before = self
            .enforced_generation
            .swap(generation, std::sync::atomic::Ordering::SeqCst);
        if before == generation {
            return;
        }
        self.enforce_due().all = true;
        self.enforce.send_modify(|v| *v = v.wrapping_add(1));
    }
    /// The limit on CRLs from peers (see [`crate::revocation::CrlRateLimit`]).
    pub fn admit_crl(&self, organisation: &str, now: i64) -> crate::revocation::CrlAdmission {
        self.crl_rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(organisation, now)
    }
    /// Asks the enforcement task to look at `community`, hubbed here, again (after a
    /// commit: removals proposed in the old epoch are void).
    pub fn enforce_community(&self, community: &str) {
        self.enforce_due().communities.insert(community.to_string());
        self.enforce.send_modify(|v| *v = v.wrapping_add(1));
    }
    /// What the enforcement task has to look at, for it to take
    /// ([`std::mem::take`]) or to put back after a failed pass.
    pub fn enforce_due(&self) -> std::sync::MutexGuard<'_, crate::revocation::EnforceDue> {
        self.enforce_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// What the enforcement task waits on.
    pub fn enforce_signal(&self) -> watch::Receiver<u64> {
        self.enforce.subscribe()
    }
    /// Organisation CA certificates this relay knows: its own and its peers'.
    pub fn known_cas(&self) -> Vec<Vec<u8>> {
        let mut cas: Vec<Vec<u8>> = self.cert_chain().into_iter().skip(1).collect();
        cas.extend(
            self.peer_list()
                .iter()
                .filter_map(|p| p.info())
                .map(|i| i.ca)
                .filter(|ca| !ca.is_empty()),
        );
        cas
    }
    /// Closes every live connection (devices' and peer relays' links) whose
    /// certificate is now revoked; returns who was cut off and why. Their delivery
    /// tasks end with the connection; a peer's link is re-dialled and refused.
    pub fn cut_off_revoked(&self) -> Vec<(String, String)> {
        let revoked = self.revocations();
        let mut out = Vec::new();
        if let Ok(conns) = self.conns.lock() {
            for (id, live) in conns.iter() {
                for (_, conn, identity) in &live.conns {
                    if conn.close_reason().is_some() {
                        continue;
                    }
                    let chain = crate::net::peer_chain(conn).unwrap_or_default();
                    if let Err(why) = revoked.check_chain(identity, &chain) {
                        conn.close(CloseCode::Revoked.code().into(), b"revoked");
                        out.push((id.clone(), why.to_string()));
                    }
                }
            }
        }
        drop(revoked);
        if !out.is_empty() {
            self.changed();
        }
        out
    }

    /// A receiver that changes after every flush a request waited for (outbox
    /// senders wait on it). A wake-up is only a hint: what a reader may send is what
    /// [`Relay::readable_upto`] and [`Relay::is_unflushed`] allow.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver for delivery tasks: changes whenever [`changes`](Self::changes)
    /// does, and also when [`deliver_early`](Self::deliver_early) releases log
    /// entries before they are on disk.
    pub fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// The highest seq of a log or outbox (`sequence`: [`keys::log_prefix`] or an
    /// outbox prefix) that may be sent to a device or a peer: nothing at or after the
    /// first entry not yet on disk, unless [`deliver_early`](Self::deliver_early)
    /// released it. `u64::MAX` when all of it is on disk.
    pub fn readable_upto(&self, sequence: &[u8]) -> u64 {
        self.durability.watermark().readable_upto(sequence)
    }

    /// True if a pending welcome (`w/`, `v/` key) is not yet on disk: it is not
    /// delivered until it is.
    pub fn is_unflushed(&self, key: &[u8]) -> bool {
        self.durability.watermark().is_unflushed(key)
    }

    /// Releases to delivery, before the flush, the log entries that the writes
    /// `writes` (of one federation delivery from a hub) appended to the logs of
    /// `communities`, and wakes the delivery tasks. Only for a member relay's copy of
    /// entries its hub ordered, which a crash cannot change: the hub sends an entry
    /// only once it is durable there and keeps the item until this relay acknowledges
    /// it durably, so after a crash the same entries come again with the same seqs,
    /// and a device that had them skips them. Nothing else of those writes (outbox
    /// items, welcomes, other logs) is released.
    pub fn deliver_early(&self, writes: &[u64], communities: &[String]) {
        if writes.is_empty() || communities.is_empty() {
            return;
        }
        let watermark = self.durability.watermark();
        for community in communities {
            if home_relay(community) != self.id {
                watermark.release(writes, &keys::log_prefix(community));
            }
        }
        self.visible.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        self.visible.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Appends a signed audit checkpoint if records were written since the last one,
    /// and makes it durable.
    pub async fn checkpoint(&self) -> Result<(), RelayError> {
        self.write(|w, b| w.audit.checkpoint(b, now()))?;
        self.durable().await
    }

    /// Flushes and stops the store (graceful shutdown).
    pub async fn shutdown(&self) -> Result<(), RelayError> {
        self.metrics.stopping();
        if let Err(e) = self.write(|w, b| w.audit.checkpoint(b, now())) {
            tracing::error!(error = %e, "cannot write the final audit checkpoint");
        }
        self.durability.stop().await
    }

    /// Checks a certificate chain presented in TLS and reads the identity from it.
    pub fn authenticate(
        &self,
        chain: &[Vec<u8>],
        expected: IdentityKind,
    ) -> Result<Identity, ErrorCode> {
        let id = kring_protocol::identity::verify_chain_trusted(
            chain,
            &self.anchors,
            now() as u64,
            expected,
            &self.trust(),
        )
        .map_err(|e| ErrorCode::Unauthenticated {
            reason: e.to_string(),
        })?;
        let revoked = self.revocations().check_chain(&id, chain);
        if let Err(why) = revoked {
            self.audit_now(AuditEvent::new(
                AuditKind::Revocation,
                id.id(),
                self.id.clone(),
                "connect-refused",
                why.to_string(),
            ));
            return Err(ErrorCode::Revoked);
        }
        // A user connects to their home relay only (the trust map already bound the
        // certificate's organisation and CA to the relay it names).
        if id.kind == IdentityKind::User && id.home_relay != self.id {
            return Err(ErrorCode::Unauthenticated {
                reason: format!(
                    "{} (organisation {}) is not a user of relay {} (organisation {})",
                    id.id(),
                    id.organisation,
                    self.id,
                    self.organisation
                ),
            });
        }
        Ok(id)
    }

    /// The organisation CA that `chain` (a relay's, as presented in TLS) verifies
    /// through, as [`authenticate`](Self::authenticate) checked it: the CA to
    /// record for a peer, never merely the second certificate presented.
    pub fn verified_issuer(&self, chain: &[Vec<u8>]) -> Option<Vec<u8>> {
        kring_protocol::identity::verify_chain_trusted_issuer(
            chain,
            &self.anchors,
            now() as u64,
            IdentityKind::Relay,
            &self.trust(),
        )
        .ok()
        .map(|(_, issuer)| issuer)
    }

    /// Registers a live connection of a device or a peer relay, authenticated as
    /// `identity` with `chain`. Refused (`Unavailable`) when the identity already has
    /// `max_connections_per_identity` connections open; the caller tells the peer
    /// and audits it. The connection is closed (and the cut audited) when the first
    /// certificate of `chain` expires.
    pub fn register_connection(
        self: &Arc<Self>,
        identity: &Identity,
        chain: &[Vec<u8>],
        conn: quinn::Connection,
    ) -> Result<Registration, ErrorCode> {
        let id = identity.id();
        let conn_id = conn.stable_id();
        let max = self.limits.max_connections_per_identity;
        let budget = {
            let mut conns = self
                .conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let live = conns.entry(id.clone()).or_insert_with(|| Live {
                budget: ByteBudget::new(self.limits.request_bytes_per_identity),
                conns: Vec::new(),
            });
            live.conns.retain(|(_, c, _)| c.close_reason().is_none());
            if live.conns.len() >= max {
                return Err(ErrorCode::Unavailable {
                    reason: format!(
                        "{id} already has {} connections open to relay {}, the most allowed; \
                         close one and retry",
                        live.conns.len(),
                        self.id
                    ),
                });
            }
            live.conns.push((conn_id, conn.clone(), identity.clone()));
            self.metrics.connection_opened(identity.kind);
            live.budget.clone()
        };
        let not_after = kring_protocol::identity::chain_not_after(chain)
            .map_or(identity.not_after, |t| t.min(identity.not_after));
        tokio::spawn(close_at_expiry(
            Arc::downgrade(self),
            conn,
            id.clone(),
            not_after,
        ));
        Ok(Registration {
            relay: self.clone(),
            id,
            kind: identity.kind,
            conn_id,
            budget,
        })
    }

    /// The request byte budget of `id` (a registered identity's, else a new one
    /// that is dropped with the caller's hold).
    pub fn request_budget(&self, id: &str) -> ByteBudget {
        self.conns
            .lock()
            .ok()
            .and_then(|c| c.get(id).map(|l| l.budget.clone()))
            .unwrap_or_else(|| ByteBudget::new(self.limits.request_bytes_per_identity))
    }

    /// Token bucket per identity: `requests_per_second`, burst of twice that.
    pub fn check_rate(&self, id: &str) -> Result<(), ErrorCode> {
        let rate = f64::from(self.limits.requests_per_second);
        let Ok(mut buckets) = self.rate.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let b = buckets.entry(id.to_string()).or_insert(Bucket {
            tokens: rate * 2.0,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate * 2.0);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / rate * 1000.0).ceil() as u64;
            drop(buckets);
            self.audit_now(AuditEvent::new(
                AuditKind::Refusal,
                id,
                "-",
                "rate-limit",
                "request rate above the configured limit",
            ));
            Err(ErrorCode::RateLimited {
                retry_after_ms: wait,
            })
        }
    }

    /// Runs `f` in the writer's critical section and applies the batch it fills.
    /// The effect is visible in the store at once, but its new log entries, outbox
    /// items and welcomes reach nobody before the flush (the store's `Watermark`);
    /// call [`Relay::durable`] before acknowledging.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        self.write_numbered(f).map(|(v, _)| v)
    }

    /// [`Relay::write`], also returning the batch's write number (0 if it wrote
    /// nothing), for [`Relay::deliver_early`].
    pub fn write_numbered<T>(
        &self,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<(T, u64), RelayError> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| RelayError::Poisoned("writer"))?;
        let mut batch = Batch::default();
        match f(&mut w, &mut batch) {
            Ok(v) => match self.durability.apply(batch) {
                Ok(n) => {
                    self.metrics.counted(std::mem::take(&mut w.counts));
                    Ok((v, n))
                }
                Err(e) => {
                    w.counts = BatchCounts::default();
                    w.audit.reload(self.engine.as_ref())?;
                    Err(e)
                }
            },
            Err(e) => {
                // Nothing was applied: the audit head may have advanced in memory.
                w.counts = BatchCounts::default();
                w.audit.reload(self.engine.as_ref())?;
                Err(e)
            }
        }
    }

    /// Waits until everything applied so far is on disk (and so readable), then
    /// wakes delivery tasks and outbox senders.
    pub async fn durable(&self) -> Result<(), RelayError> {
        self.durability.wait().await?;
        self.changed();
        Ok(())
    }

    /// Appends one audit record in its own batch (best effort; failures are logged).
    pub fn audit_now(&self, event: AuditEvent) {
        let r = self.write(|w, b| w.audit.append(b, now(), event));
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write audit record");
        }
    }

    /// Audit-logs a refusal.
    pub fn audit_refusal(&self, actor: &str, subject: &str, action: &str, code: &ErrorCode) {
        self.audit_now(AuditEvent::new(
            AuditKind::Refusal,
            actor,
            subject,
            action,
            code.to_string(),
        ));
    }

    /// Handles one request; refusals come back as [`Response::Error`] and are audited.
    pub async fn handle(&self, caller: &Caller, request: Request) -> Response {
        let action = crate::net::request_kind(&request);
        let subject = request_subject(&request);
        let result = if self
            .revocations()
            .check_chain(&caller.identity, &caller.chain)
            .is_err()
        {
            // An org-admin may have ordered the device wiped: the order goes in
            // place of the refusal.
            if let Some(answer) = crate::revocation::wipe_answer(self, &caller.id) {
                self.metrics.refused(action, &ErrorCode::Revoked);
                return answer;
            }
            Err(RelayError::Refused(ErrorCode::Revoked))
        } else {
            self.dispatch(caller, request).await
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                let code = e.to_code();
                self.metrics.refused(action, &code);
                match &e {
                    RelayError::Refused(_) => {}
                    other => tracing::error!(error = %other, action, "request failed"),
                }
                if !matches!(code, ErrorCode::NotFound { .. }) {
                    self.audit_refusal(&caller.id, &subject, action, &code);
                }
                Response::Error(code)
            }
        }
    }

    async fn dispatch(&self, caller: &Caller, request: Request) -> Result<Response, RelayError> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::DeclaredClients => Ok(Response::DeclaredClients {
                organisation: self.organisation.clone(),
                clients: self.clients(),
            }),
            Request::Trust => crate::revocation::trust_state(self).map(Response::Trust),
            Request::TrustStatements { after } => {
                crate::revocation::trust_statements(self, after.as_deref())
            }
            Request::PublishKeyPackages {
                key_packages,
                last_resort,
            } => {
                self.publish_key_packages(caller, key_packages, last_resort)
                    .await
            }
            Request::FetchKeyPackage { user } => self.fetch_key_package(caller, &user).await,
            Request::CreateCommunity {
                community,
                group_info,
                ratchet_tree,
            } => {
                self.create_community(caller, &community, &group_info, &ratchet_tree)
                    .await
            }
            Request::Handshake {
                community,
                message,
                welcome,
            } => self.handshake(caller, &community, &message, welcome).await,
            Request::FileNotice {
                community,
                notice_id,
                message,
            } => {
                self.file_notice(caller, &community, notice_id, message)
                    .await
            }
            Request::FileNotices { community, notices } => {
                self.file_notices(caller, &community, notices).await
            }
            Request::Ack { community, seq } => self.ack(caller, &community, seq).await,
            Request::AckWelcome { id } => {
                self.write(|_, b| {
                    b.delete(keys::welcome(&caller.id, &id));
                    release_welcome(self.engine(), b, &caller.id, &id)
                })?;
                self.durable().await?;
                Ok(Response::Ok)
            }
            Request::ListCommunities => self.list_communities(caller),
            Request::CommunityInfo { community } => {
                let rec = self.member_community(caller, &community)?;
                Ok(Response::Community(summary(&rec)))
            }
            Request::NoticeStatus { notice_id } => self.notice_status(caller, notice_id),
            Request::AuditLog {
                from,
                limit,
                verify,
            } => self.audit_log(caller, from, limit, verify),
            Request::AuditHead => self.audit_head(caller).await,
            Request::Revoke { statement } => {
                crate::revocation::revoke(self, caller, statement, None).await
            }
            Request::RevokeAndWipe { statement, wipe } => {
                crate::revocation::revoke(self, caller, statement, Some(wipe)).await
            }
            Request::Cursors { cursors } => crate::recovery::cursors(self, caller, cursors).await,
            Request::Subscribe => Err(ErrorCode::BadRequest {
                reason: "subscribe is handled on its own stream".into(),
            }
            .into()),
        }
    }

    // ----- key packages --------------------------------------------------------------

    async fn publish_key_packages(
        &self,
        caller: &Caller,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let now_s = now() as u64;
        for kp in key_packages.iter().chain(last_resort.iter()) {
            groups::validate_key_package(kp, &caller.chain, &self.anchors, &self.trust(), now_s)
                .map_err(|reason| ErrorCode::BadRequest {
                    reason: format!("key package refused: {reason}"),
                })?;
        }
        let cap = self.limits.key_packages_per_user;
        let count = self.write(|_, b| {
            let existing = self
                .engine
                .scan(&keys::key_package_prefix(&caller.id), None, cap + 1)?
                .len();
            if existing + key_packages.len() > cap {
                return Err(ErrorCode::TooLarge {
                    what: format!(
                        "{} key packages held plus {} new exceeds the cap of {cap}",
                        existing,
                        key_packages.len()
                    ),
                }
                .into());
            }
            for kp in &key_packages {
                b.put(keys::key_package(&caller.id, &Uuid::new_v4()), kp.clone());
            }
            if let Some(lr) = &last_resort {
                b.put(keys::last_resort(&caller.id), lr.clone());
            }
            Ok(existing + key_packages.len())
        })?;
        self.durable().await?;
        Ok(Response::KeyPackagesStored {
            count: count as u32,
        })
    }

    async fn fetch_key_package(&self, caller: &Caller, user: &str) -> Result<Response, RelayError> {
        let home = home_relay(user);
        if home != self.id {
            if !self.is_peer(home) {
                return Err(ErrorCode::NotFound {
                    what: format!("{user}: relay {home} is not a peer of relay {}", self.id),
                }
                .into());
            }
            return crate::federation::forward_fetch_key_package(self, home, &caller.id, user)
                .await;
        }
        self.take_key_package(&caller.id, user).await
    }

    /// Hands out one key package of a local user (consumed; the last-resort one is kept).
    pub async fn take_key_package(
        &self,
        requester: &str,
        user: &str,
    ) -> Result<Response, RelayError> {
        if self.revocations().user_revoked(user).is_some() {
            return Err(ErrorCode::Revoked.into());
        }
        use crate::key_fetch::{Grant, RetryAfter};
        let retry = |d: std::time::Duration| ErrorCode::RateLimited {
            retry_after_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        };
        let kp = self.write(|w, b| {
            // Limits per requester and user, and per user (`key_fetch`): past them
            // only the last-resort package is handed out, so one-time packages
            // cannot be drained.
            let mut limiter = self
                .key_fetches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = Instant::now();
            let grant = limiter
                .admit(requester, user, at)
                .map_err(|RetryAfter(d)| retry(d))?;
            let one_time = match grant {
                Grant::OneTime => self
                    .engine
                    .scan(&keys::key_package_prefix(user), None, 1)?
                    .into_iter()
                    .next(),
                Grant::LastResortOnly { .. } => None,
            };
            let (kp, detail) = if let Some((k, v)) = one_time {
                b.delete(k);
                limiter.took_one_time(requester, user, at);
                (v, "one-time key package handed out".to_string())
            } else if let Some(lr) = self.engine.get(&keys::last_resort(user))? {
                let detail = match &grant {
                    Grant::OneTime => {
                        "last-resort key package handed out (no one-time package left)".into()
                    }
                    Grant::LastResortOnly { why, .. } => format!(
                        "last-resort key package handed out (one-time packages protected: {why})"
                    ),
                };
                (lr, detail)
            } else {
                return Err(match grant {
                    Grant::OneTime => ErrorCode::KeyMaterialExhausted {
                        user: user.to_string(),
                    },
                    Grant::LastResortOnly { retry_after, .. } => retry(retry_after),
                }
                .into());
            };
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Membership,
                    requester,
                    user,
                    "fetch-key-package",
                    detail,
                ),
            )?;
            Ok(kp)
        })?;
        self.durable().await?;
        // A key package whose certificate was revoked (CRL) or expired since it was
        // published is not handed out.
        let checked = {
            let revoked = self.revocations();
            groups::check_key_package_credential(
                &kp,
                &self.anchors,
                &self.trust(),
                now() as u64,
                &revoked,
            )
        };
        if let Err(reason) = checked {
            self.audit_now(AuditEvent::new(
                AuditKind::Refusal,
                requester,
                user,
                "fetch-key-package",
                format!("stored key package withheld: {reason}"),
            ));
            return Err(ErrorCode::Revoked.into());
        }
        Ok(Response::KeyPackage { key_package: kp })
    }

    // ----- communities ---------------------------------------------------------------

    /// The community record, if this relay takes part in the community.
    pub fn community(&self, id: &str) -> Result<Option<CommunityRecord>, RelayError> {
        self.community_in(&Batch::default(), id)
    }

    /// The community record as it will be once `b` is applied. Its `last_seq` is
    /// the larger of the record's and the `s/` counter's ([`put_last_seq`]).
    pub fn community_in(&self, b: &Batch, id: &str) -> Result<Option<CommunityRecord>, RelayError> {
        let engine = self.engine.as_ref();
        let Some(mut rec) = b.get_obj::<CommunityRecord>(engine, &keys::community(id))? else {
            return Ok(None);
        };
        if let Some(seq) = b.get_obj::<u64>(engine, &keys::last_seq(id))? {
            rec.last_seq = rec.last_seq.max(seq);
        }
        Ok(Some(rec))
    }

    fn member_community(&self, caller: &Caller, id: &str) -> Result<CommunityRecord, RelayError> {
        match self.community(id)? {
            Some(rec) if rec.members.contains(&caller.id) => Ok(rec),
            // A non-member learns nothing about whether the community exists.
            _ => Err(ErrorCode::NotMember.into()),
        }
    }

    /// The clearance that limits what a relay may receive: this relay's own, or a
    /// peer's (from its certificate, lowered by configuration); `None` for a relay
    /// that is not a configured peer or whose certificate has not been seen yet.
    pub fn relay_accreditation(&self, relay: &str) -> Option<Clearance> {
        if relay == self.id {
            Some(self.accreditation())
        } else {
            self.peer(relay).and_then(|p| p.accreditation())
        }
    }

    async fn create_community(
        &self,
        caller: &Caller,
        community: &str,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Response, RelayError> {
        let (name, hub) = community.rsplit_once('@').unwrap_or((community, ""));
        if hub != self.id || name.is_empty() {
            return Err(ErrorCode::BadRequest {
                reason: format!(
                    "a community created at relay {} must be named NAME@{}",
                    self.id, self.id
                ),
            }
            .into());
        }
        self.recovery
            .may_create(self.engine(), &self.id, community)?;
        let seq = self.write(|w, b| {
            if self.community(community)?.is_some() {
                return Err(ErrorCode::BadRequest {
                    reason: format!("community {community} already exists"),
                }
                .into());
            }
            let overlay = groups::Overlay::new(self.engine.clone());
            let view = groups::create(
                &overlay,
                community,
                group_info,
                ratchet_tree,
                &self.anchors,
                &self.trust(),
                now() as u64,
            )
            .map_err(|reason| ErrorCode::BadRequest { reason })?;
            // The group must name this relay as its external sender, and its creator
            // must be the caller, alone and admin.
            if view.hub != self.id {
                return Err(ErrorCode::BadRequest {
                    reason: format!(
                        "the group must have relay {} as its external sender",
                        self.id
                    ),
                }
                .into());
            }
            if view.members != vec![caller.id.clone()] || view.admins != vec![caller.id.clone()] {
                return Err(ErrorCode::BadRequest {
                    reason: "a new community must have its creator as only member and admin".into(),
                }
                .into());
            }
            let max_label =
                Label::from_bytes(&view.max_label).map_err(|e| ErrorCode::BadRequest {
                    reason: format!("maximum label: {e}"),
                })?;
            decide::create_community(
                &max_label,
                caller.identity.clearance.as_ref(),
                &self.accreditation(),
            )?;
            let rec = CommunityRecord {
                id: community.to_string(),
                hub: self.id.clone(),
                max_label: view.max_label.clone(),
                admins: view.admins.clone(),
                members: view.members.clone(),
                epoch: view.epoch,
                last_seq: 0,
                created_by: caller.id.clone(),
                created_at: now(),
            };
            b.extend(overlay.into_batch());
            put_community(b, &rec)?;
            if let Some(secs) = view.retention_secs {
                crate::retention::put_retention(b, community, secs);
            }
            b.put_obj(
                keys::member(&caller.id, community),
                &MemberRecord {
                    joined_seq: 0,
                    removed_seq: None,
                },
            )?;
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Membership,
                    &caller.id,
                    community,
                    "create-community",
                    match view.retention_secs {
                        Some(secs) => format!(
                            "maximum label {max_label}, notices kept {}",
                            crate::retention::describe(secs)
                        ),
                        None => format!("maximum label {max_label}"),
                    },
                ),
            )?;
            Ok(0)
        })?;
        self.durable().await?;
        Ok(Response::Accepted { seq, epoch: 0 })
    }

    async fn handshake(
        &self,
        caller: &Caller,
        community: &str,
        message: &[u8],
        welcome: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let rec = self.member_community(caller, community)?;
        if rec.hub != self.id {
            // The hub orders every commit: forward it and wait for the verdict.
            return crate::federation::forward_handshake(
                self, &rec.hub, &caller.id, community, message, welcome,
            )
            .await;
        }
        self.handshake_at_hub(&caller.id, None, community, message, welcome)
            .await
    }

    /// Verifies, decides and orders a handshake at this relay, the community's hub.
    /// `origin` is the peer relay that forwarded it (the sender's home relay), if any.
    pub async fn handshake_at_hub(
        &self,
        sender: &str,
        origin: Option<&str>,
        community: &str,
        message: &[u8],
        welcome: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let (seq, epoch) = self.write(|w, b| {
            let mut rec = match self.community(community)? {
                Some(rec) if rec.hub == self.id && rec.members.iter().any(|m| m == sender) => rec,
                _ => return Err(ErrorCode::NotMember.into()),
            };
            if self.revocations().user_revoked(sender).is_some() {
                return Err(ErrorCode::Revoked.into());
            }
            self.recovery.may_order(
                self.engine(),
                b,
                &self.id,
                community,
                &rec.members,
                next_seq(&rec)?,
            )?;
            let overlay = groups::Overlay::new(self.engine.clone());
            let staged = {
                let revoked = self.revocations();
                groups::process_handshake(
                    &overlay,
                    community,
                    message,
                    &self.anchors,
                    &self.trust(),
                    now() as u64,
                    &revoked,
                )?
            };
            if staged.sender != sender {
                return Err(ErrorCode::Unauthenticated {
                    reason: format!(
                        "the handshake is signed by {} but was sent by {sender}",
                        staged.sender
                    ),
                }
                .into());
            }
            let max_label =
                Label::from_bytes(&rec.max_label).map_err(|e| corrupt_label(&rec.id, e))?;
            let added_clearances: Vec<(String, Option<Clearance>, Option<Clearance>)> = staged
                .added
                .iter()
                .map(|(id, clearance)| {
                    let home = home_relay(id);
                    (
                        id.clone(),
                        clearance.clone(),
                        self.relay_accreditation(home),
                    )
                })
                .collect();
            decide::commit(
                &rec,
                sender,
                &max_label,
                &added_clearances,
                &staged.removed,
                &staged.removed_by_hub,
                staged.new_admins.as_deref(),
            )
            .map_err(RelayError::Refused)?;
            if staged.self_update {
                self.self_updates
                    .lock()
                    .map_err(|_| RelayError::Poisoned("self-update times"))?
                    .check(community, sender, now() as u64)
                    .map_err(RelayError::Refused)?;
            }
            if !staged.added.is_empty() && welcome.is_none() {
                return Err(ErrorCode::BadRequest {
                    reason: "a commit that adds members must come with their Welcome".into(),
                }
                .into());
            }
            let via = origin
                .map(|o| format!(" (forwarded by relay {o})"))
                .unwrap_or_default();
            let epoch_before = staged.epoch;
            let added = staged.added.clone();
            let removed = staged.removed.clone();
            let new_admins = staged.new_admins.clone();
            let self_update = staged.self_update;
            let merged = groups::merge(
                &overlay,
                community,
                staged,
                &self.anchors,
                &self.trust(),
                now() as u64,
            )?;
            let seq = next_seq(&rec)?;
            let entry = LogEntry {
                community: community.to_string(),
                seq,
                sender: sender.to_string(),
                ordered_at: now(),
                kind: EntryKind::Handshake {
                    epoch: epoch_before,
                },
                message: message.to_vec(),
            };
            b.extend(overlay.into_batch());
            b.put_obj(keys::log(community, seq), &entry)?;
            for (user, _) in &added {
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Membership,
                        sender,
                        community,
                        "add-member",
                        format!("{user} added at epoch {}{via}", merged.epoch),
                    ),
                )?;
            }
            for user in &removed {
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Membership,
                        sender,
                        community,
                        "remove-member",
                        format!("{user} removed at epoch {}{via}", merged.epoch),
                    ),
                )?;
            }
            if let Some(admins) = &new_admins {
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Admin,
                        sender,
                        community,
                        "set-admins",
                        format!("admins now {}", admins.join(", ")),
                    ),
                )?;
            }
            if self_update {
                self.self_updates
                    .lock()
                    .map_err(|_| RelayError::Poisoned("self-update times"))?
                    .record(community, sender, now() as u64);
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Membership,
                        sender,
                        community,
                        "update-keys",
                        format!(
                            "{sender} updated its leaf keys at epoch {}{via}",
                            merged.epoch
                        ),
                    ),
                )?;
            }
            let before: Vec<String> = rec.members.clone();
            rec.epoch = merged.epoch;
            rec.members = merged.members;
            rec.admins = merged.admins;
            rec.last_seq = seq;
            put_community(b, &rec)?;
            self.update_local_members(b, &rec, &before, seq)?;
            let removed_relays: Vec<String> =
                removed.iter().map(|u| home_relay(u).to_string()).collect();
            self.fan_out(w, b, &rec, &entry, &removed_relays)?;
            if let Some(welcome) = &welcome {
                let users: Vec<String> = added.iter().map(|(user, _)| user.clone()).collect();
                self.route_welcomes(w, b, &users, community, welcome, &merged.ratchet_tree)?;
            }
            w.counts.commits_ordered += 1;
            Ok((seq, rec.epoch))
        })?;
        self.durable().await?;
        // A commit starts a new epoch: removals proposed in the old one are void and
        // must be proposed again if still due.
        self.enforce_community(community);
        Ok(Response::Accepted { seq, epoch })
    }

    /// Membership records of this relay's own users after `rec` changed at `seq`:
    /// new local members join at `seq`, departed ones leave at `seq`.
    pub fn update_local_members(
        &self,
        b: &mut Batch,
        rec: &CommunityRecord,
        before: &[String],
        seq: u64,
    ) -> Result<(), RelayError> {
        // Sets, not slices: a community may have thousands of members here.
        let was: std::collections::HashSet<&str> = before.iter().map(String::as_str).collect();
        let staying: std::collections::HashSet<&str> =
            rec.members.iter().map(String::as_str).collect();
        for user in rec.members.iter().filter(|u| home_relay(u) == self.id) {
            let key = keys::member(user, &rec.id);
            let current: Option<MemberRecord> = b.get_obj(self.engine.as_ref(), &key)?;
            let active = current.is_some_and(|m| m.removed_seq.is_none());
            if !was.contains(user.as_str()) || !active {
                b.put_obj(
                    key,
                    &MemberRecord {
                        joined_seq: seq,
                        removed_seq: None,
                    },
                )?;
                // A re-joining member starts afresh at the commit that added them.
                b.delete(keys::cursor(user, &rec.id));
            }
        }
        for user in before
            .iter()
            .filter(|u| home_relay(u) == self.id && !staying.contains(u.as_str()))
        {
            let key = keys::member(user, &rec.id);
            let mut m: MemberRecord =
                b.get_obj(self.engine.as_ref(), &key)?
                    .unwrap_or(MemberRecord {
                        joined_seq: 0,
                        removed_seq: None,
                    });
            m.removed_seq = Some(seq);
            b.put_obj(key, &m)?;
        }
        Ok(())
    }

    /// Stores the Welcome of a commit once for the new members who are users of
    /// this relay, and queues one copy for each other relay with new members.
    fn route_welcomes(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        users: &[String],
        community: &str,
        welcome: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<(), RelayError> {
        let mut by_relay: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for user in users {
            by_relay
                .entry(home_relay(user))
                .or_default()
                .push(user.clone());
        }
        for (home, users) in by_relay {
            if home == self.id {
                store_welcome(b, &users, community, welcome, ratchet_tree)?;
            } else {
                let body = FedBody::Welcomes {
                    users,
                    community: community.to_string(),
                    welcome: welcome.to_vec(),
                    ratchet_tree: ratchet_tree.to_vec(),
                };
                crate::federation::enqueue(self, w, b, home, body)?;
            }
        }
        Ok(())
    }

    /// The fan-out (`fan_out`) of a new entry to the relays with members.
    pub fn fan_out_entry(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        rec: &CommunityRecord,
        entry: &LogEntry,
    ) -> Result<(), RelayError> {
        self.fan_out(w, b, rec, entry, &[])
    }

    /// At the hub: queues a new log entry for every other relay with members in the
    /// community (and `extra` relays, e.g. of members just removed), withholding a
    /// notice from a relay whose accreditation does not admit its label.
    fn fan_out(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        rec: &CommunityRecord,
        entry: &LogEntry,
        extra: &[String],
    ) -> Result<(), RelayError> {
        let mut targets: std::collections::BTreeSet<&str> =
            rec.members.iter().map(|m| home_relay(m)).collect();
        targets.extend(extra.iter().map(|s| s.as_str()));
        targets.remove(self.id.as_str());
        for peer in targets {
            let mut withheld = None;
            if let EntryKind::Notice {
                notice_id, label, ..
            } = &entry.kind
            {
                let label = kring_protocol::notice_aad::label_of(label).map_err(|e| {
                    RelayError::Corrupt {
                        key: format!("log entry {} of {}", entry.seq, entry.community),
                        reason: e.to_string(),
                    }
                })?;
                let d = match self.relay_accreditation(peer) {
                    Some(accr) => kring_policy::decide(&label, &accr),
                    None => kring_policy::decide_opt(Some(&label), None),
                };
                if !d.allowed {
                    let reason = format!("relay {peer} is not accredited for {label}: {d}");
                    withheld = Some(());
                    self.record_refusal_for(
                        w,
                        b,
                        notice_id,
                        &rec.id,
                        &entry.sender,
                        &format!("{}->{peer}", self.id),
                        &reason,
                    )?;
                }
            }
            if withheld.is_some() {
                let body = FedBody::NoticeEntry {
                    community: rec.id.clone(),
                    seq: entry.seq,
                    entry: None,
                };
                crate::federation::enqueue(self, w, b, peer, body)?;
            } else {
                crate::federation::enqueue_log_entry(self, w, b, peer, rec, entry)?;
            }
            // Member relays hold no group context: the hub tells them the
            // retention period with every commit (after it, so they hold the
            // community by then).
            if matches!(entry.kind, EntryKind::Handshake { .. })
                && let Some(seconds) = crate::retention::retention_of(self, b, &rec.id)?
            {
                let body = FedBody::Retention {
                    community: rec.id.clone(),
                    seconds,
                };
                crate::federation::enqueue(self, w, b, peer, body)?;
            }
        }
        Ok(())
    }

    /// Records that `hop` refused a notice: in the notice's record here, in the audit
    /// log, and towards the filer's home relay if that is another relay. Keeps one
    /// refusal per hop and at most [`MAX_HOP_REFUSALS`] per notice, each reason cut
    /// to [`limits::MAX_REASON`](kring_protocol::wire::limits::MAX_REASON) bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn record_refusal_for(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        notice_id: &Uuid,
        community: &str,
        sender: &str,
        hop: &str,
        reason: &str,
    ) -> Result<(), RelayError> {
        let key = keys::notice(notice_id);
        let mut rec = b
            .get_obj::<NoticeRecord>(self.engine.as_ref(), &key)?
            .unwrap_or(NoticeRecord {
                community: community.to_string(),
                sender: sender.to_string(),
                seq: None,
                refusals: Vec::new(),
            });
        // One refusal per hop, a bounded number per notice, each reason bounded.
        if rec.refusals.iter().any(|r| r.hop == hop) || rec.refusals.len() >= MAX_HOP_REFUSALS {
            return Ok(());
        }
        let reason = kring_protocol::wire::bounded_reason(reason);
        let reason = reason.as_str();
        rec.refusals.push(kring_protocol::wire::HopRefusal {
            hop: hop.to_string(),
            reason: reason.to_string(),
        });
        b.put_obj(key, &rec)?;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Refusal,
                hop,
                format!("{} notice {notice_id}", rec.community),
                "notice-hop",
                reason,
            ),
        )?;
        let home = home_relay(&rec.sender);
        if !rec.sender.is_empty() && home != self.id {
            crate::federation::enqueue(
                self,
                w,
                b,
                home,
                FedBody::Refusal {
                    notice_id: *notice_id,
                    hop: hop.to_string(),
                    reason: reason.to_string(),
                },
            )?;
        }
        Ok(())
    }

    // ----- notices -------------------------------------------------------------------

    /// One notice ([`Request::FileNotice`]): a filing of one.
    async fn file_notice(
        &self,
        caller: &Caller,
        community: &str,
        notice_id: Uuid,
        message: Vec<u8>,
    ) -> Result<Response, RelayError> {
        let upload = NoticeUpload { notice_id, message };
        match self.file_notices(caller, community, vec![upload]).await? {
            Response::Filed { hub, epoch, seqs } => Ok(match seqs.first() {
                Some(Some(seq)) => Response::Accepted { seq: *seq, epoch },
                _ => Response::Queued { notice_id, hub },
            }),
            other => Ok(other),
        }
    }

    /// Files notices of one community, in order, all or none: at the hub they are
    /// ordered; at a spoke each is stored with an outbox item for the hub. One
    /// atomic batch and one fsync for all of them.
    async fn file_notices(
        &self,
        caller: &Caller,
        community: &str,
        notices: Vec<NoticeUpload>,
    ) -> Result<Response, RelayError> {
        let mut apps = Vec::with_capacity(notices.len());
        for n in &notices {
            let app = groups::read_application(&n.message).map_err(|reason| {
                name_notice(
                    ErrorCode::BadRequest {
                        reason: format!("not an MLS application message: {reason}"),
                    },
                    n.notice_id,
                    notices.len(),
                )
            })?;
            apps.push(app);
        }
        let mut ids = std::collections::HashSet::with_capacity(notices.len());
        if let Some(dup) = notices.iter().find(|n| !ids.insert(n.notice_id)) {
            return Err(ErrorCode::BadRequest {
                reason: format!("notice {} appears twice in one filing", dup.notice_id),
            }
            .into());
        }
        let count = notices.len();
        let (hub, epoch, seqs) = self.write(|w, b| {
            let mut rec = self.member_community(caller, community)?;
            for app in &apps {
                decide::fresh_filing(app.epoch, rec.epoch)?;
            }
            let mut seqs = Vec::with_capacity(count);
            for (n, app) in notices.into_iter().zip(apps) {
                let id = n.notice_id;
                let seq = if rec.hub == self.id {
                    let clearance = caller.identity.clearance.as_ref();
                    self.order_notice(
                        w, b, &mut rec, &caller.id, clearance, None, id, app, n.message,
                    )
                    .map(Some)
                } else {
                    self.queue_notice(w, b, caller, &rec, id, &app, n.message)
                };
                seqs.push(seq.map_err(|e| match e {
                    RelayError::Refused(code) => name_notice(code, id, count).into(),
                    other => other,
                })?);
            }
            Ok((rec.hub, rec.epoch, seqs))
        })?;
        self.durable().await?;
        Ok(Response::Filed { hub, epoch, seqs })
    }

    /// A spoke: checks a notice and stores it with an outbox item for the hub
    /// (`Some(seq)` for a retried filing the hub has ordered already).
    #[allow(clippy::too_many_arguments)]
    fn queue_notice(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        caller: &Caller,
        rec: &CommunityRecord,
        notice_id: Uuid,
        app: &groups::AppInfo,
        message: Vec<u8>,
    ) -> Result<Option<u64>, RelayError> {
        let community = rec.id.as_str();
        if let Some(prev) =
            b.get_obj::<NoticeRecord>(self.engine.as_ref(), &keys::notice(&notice_id))?
        {
            return if prev.sender == caller.id && prev.community == community {
                Ok(prev.seq)
            } else {
                Err(ErrorCode::BadRequest {
                    reason: format!("notice {notice_id} was already filed"),
                }
                .into())
            };
        }
        let aad = check_notice_label(
            app,
            community,
            rec,
            caller.identity.clearance.as_ref(),
            &self.accreditation(),
        )?;
        let label = aad.label;
        let hub_accr = self.relay_accreditation(&rec.hub);
        let d = kring_policy::decide_opt(Some(&label), hub_accr.as_ref());
        if !d.allowed {
            return Err(ErrorCode::PolicyDenied {
                reason: format!("hub relay {} is not accredited for {label}: {d}", rec.hub),
            }
            .into());
        }
        b.put_obj(
            keys::notice(&notice_id),
            &NoticeRecord {
                community: community.to_string(),
                sender: caller.id.clone(),
                seq: None,
                refusals: Vec::new(),
            },
        )?;
        if aad.original.is_some() {
            // The hub applies the TLP:AMBER rule to a forward with what this relay
            // says its organisation's clients are: said just before the notice.
            crate::federation::enqueue(
                self,
                w,
                b,
                &rec.hub,
                FedBody::DeclaredClients {
                    clients: self.clients(),
                },
            )?;
        }
        crate::federation::enqueue(
            self,
            w,
            b,
            &rec.hub,
            FedBody::Notice {
                community: community.to_string(),
                notice_id,
                sender: caller.id.clone(),
                message,
            },
        )?;
        Ok(None)
    }

    /// The community record of a community hubbed here, if `sender` is a member.
    pub fn hub_community(
        &self,
        b: &Batch,
        community: &str,
        sender: &str,
    ) -> Result<CommunityRecord, RelayError> {
        match self.community_in(b, community)? {
            Some(rec) if rec.hub == self.id && rec.members.iter().any(|m| m == sender) => Ok(rec),
            _ => Err(ErrorCode::NotMember.into()),
        }
    }

    /// Checks and orders a notice at the hub inside the writer's critical section,
    /// updating `rec` (written to the batch). `origin` is the peer that forwarded it
    /// (the filer's home relay); a forwarded notice is checked against that relay's
    /// accreditation instead of the filer's clearance (which the home relay checked).
    #[allow(clippy::too_many_arguments)]
    pub fn order_notice(
        &self,
        w: &mut Writer,
        b: &mut Batch,
        rec: &mut CommunityRecord,
        sender: &str,
        sender_clearance: Option<&Clearance>,
        origin: Option<&str>,
        notice_id: Uuid,
        app: groups::AppInfo,
        message: Vec<u8>,
    ) -> Result<u64, RelayError> {
        if rec.hub != self.id || !rec.members.iter().any(|m| m == sender) {
            return Err(ErrorCode::NotMember.into());
        }
        let community = rec.id.clone();
        let community = community.as_str();
        if self.revocations().user_revoked(sender).is_some() {
            return Err(ErrorCode::Revoked.into());
        }
        if let Some(prev) =
            b.get_obj::<NoticeRecord>(self.engine.as_ref(), &keys::notice(&notice_id))?
        {
            // A retried filing gets the same answer; anything else is a replay.
            return match prev.seq {
                Some(seq) if prev.sender == sender && prev.community == community => Ok(seq),
                _ => Err(ErrorCode::BadRequest {
                    reason: format!("notice {notice_id} was already filed"),
                }
                .into()),
            };
        }
        let aad = match origin {
            None => check_notice_label(
                &app,
                community,
                rec,
                sender_clearance,
                &self.accreditation(),
            )?,
            Some(peer) => {
                let peer_accr = self.relay_accreditation(peer);
                check_notice_label(
                    &app,
                    community,
                    rec,
                    peer_accr.as_ref(),
                    &self.accreditation(),
                )?
            }
        };
        if let Some(original) = &aad.original {
            self.check_forward(b, &*rec, sender, origin, &aad.label, original)?;
        }
        self.recovery.may_order(
            self.engine(),
            b,
            &self.id,
            community,
            &rec.members,
            next_seq(rec)?,
        )?;
        let seq = next_seq(rec)?;
        let entry = LogEntry {
            community: community.to_string(),
            seq,
            sender: sender.to_string(),
            ordered_at: now(),
            kind: EntryKind::Notice {
                notice_id,
                label: app.aad.clone(),
                epoch: app.epoch,
            },
            message,
        };
        b.put_obj(keys::log(community, seq), &entry)?;
        b.put_obj(
            keys::notice(&notice_id),
            &NoticeRecord {
                community: community.to_string(),
                sender: sender.to_string(),
                seq: Some(seq),
                refusals: Vec::new(),
            },
        )?;
        rec.last_seq = seq;
        put_last_seq(b, community, seq)?;
        self.fan_out(w, b, rec, &entry, &[])?;
        w.counts.notices_ordered += 1;
        Ok(seq)
    }

    /// The hub's check of a forwarded notice (`decide::forward`): the members'
    /// organisations as this relay's trust map has their home relays', the
    /// forwarder's organisation likewise, and the clients its organisation declares:
    /// this relay's own `clients` for a forwarder homed here, otherwise what the
    /// forwarder's home relay declared last (`FedBody::DeclaredClients`, sent just
    /// before the forward; nothing declared is no clients).
    fn check_forward(
        &self,
        b: &Batch,
        rec: &CommunityRecord,
        sender: &str,
        origin: Option<&str>,
        label: &Label,
        original: &Label,
    ) -> Result<(), RelayError> {
        let trust = self.trust();
        let org_of = |relay: &str| trust.organisation_of(relay).map(str::to_owned);
        let forwarder_org = org_of(home_relay(sender));
        let member_orgs: std::collections::BTreeSet<String> = rec
            .members
            .iter()
            .map(|m| {
                let relay = home_relay(m);
                org_of(relay)
                    .unwrap_or_else(|| format!("(the unknown organisation of relay {relay})"))
            })
            .collect();
        let clients: std::collections::BTreeSet<String> = match origin {
            None => self.clients().into_iter().collect(),
            Some(peer) => b
                .get_obj::<Vec<String>>(
                    self.engine(),
                    &crate::keyspace::federation::declared_clients(peer),
                )?
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        decide::forward(
            label,
            original,
            &rec.id,
            forwarder_org.as_deref(),
            &member_orgs,
            &clients,
        )?;
        Ok(())
    }

    async fn ack(
        &self,
        caller: &Caller,
        community: &str,
        seq: u64,
    ) -> Result<Response, RelayError> {
        self.write(|_, b| {
            let key = keys::member(&caller.id, community);
            let Some(m) = get_obj::<MemberRecord>(self.engine.as_ref(), &key)? else {
                return Err(ErrorCode::NotMember.into());
            };
            let rec = self.community(community)?.ok_or(ErrorCode::NotMember)?;
            let limit = m.removed_seq.unwrap_or(rec.last_seq);
            if seq > limit {
                return Err(ErrorCode::BadRequest {
                    reason: format!("cannot acknowledge {seq}: the log ends at {limit}"),
                }
                .into());
            }
            let ckey = keys::cursor(&caller.id, community);
            let current = self.cursor_of(&caller.id, community, &m)?;
            if seq > current {
                b.put(ckey, seq.to_be_bytes().to_vec());
            }
            Ok(())
        })?;
        // No fsync wait and no wake-up of the delivery tasks: a cursor lost in a crash
        // only makes the device receive entries again, which it skips (its own
        // cursor is durable before it acknowledges), and a moved cursor gives no
        // other device anything new. The next group commit flushes it.
        Ok(Response::Ok)
    }

    /// A device's delivery cursor: everything up to it was acknowledged.
    pub fn cursor_of(
        &self,
        device: &str,
        community: &str,
        m: &MemberRecord,
    ) -> Result<u64, RelayError> {
        let stored = match self.engine.get(&keys::cursor(device, community))? {
            Some(v) if v.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&v);
                u64::from_be_bytes(a)
            }
            Some(_) => {
                return Err(RelayError::Corrupt {
                    key: format!("cursor {device} {community}"),
                    reason: "not 8 bytes".into(),
                });
            }
            None => 0,
        };
        Ok(stored.max(m.joined_seq))
    }

    fn list_communities(&self, caller: &Caller) -> Result<Response, RelayError> {
        let mut out = Vec::new();
        // Every membership record, not only the first page: ended ones must not
        // hide current ones.
        for (community, m) in crate::delivery::memberships(self, &caller.id)? {
            if m.removed_seq.is_some() {
                continue;
            }
            if out.len() == kring_protocol::wire::limits::MAX_LIST {
                break;
            }
            if let Some(rec) = self.community(&community)? {
                out.push(summary(&rec));
            }
        }
        Ok(Response::Communities { communities: out })
    }

    /// Only org-admins of this relay's organisation read its audit log.
    fn audit_reader(&self, caller: &Caller) -> Result<(), RelayError> {
        if !caller
            .identity
            .has_role(kring_protocol::identity::ROLE_ORG_ADMIN)
            || caller.identity.organisation != self.organisation
        {
            return Err(ErrorCode::Unauthenticated {
                reason: format!(
                    "the audit log of relay {} is for org-admins of organisation {}",
                    self.id, self.organisation
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Whose certificates may sign this relay's audit log.
    fn audit_expected(&self) -> crate::audit::Expected<'_> {
        crate::audit::Expected {
            relay: &self.id,
            organisation: Some(&self.organisation),
            anchors: &self.anchors,
        }
    }

    /// A signed head of the audit log, durable before it is handed out, with the
    /// certificate history.
    async fn audit_head(&self, caller: &Caller) -> Result<Response, RelayError> {
        self.audit_reader(caller)?;
        let head =
            self.write(|w, _| Ok(w.audit.signed_head(now())))?
                .ok_or(RelayError::OwnIdentity {
                    what: "audit checkpoint signer",
                    reason: "none is configured".into(),
                })?;
        self.durable().await?;
        let certificates = crate::audit::cert_history(self.engine.as_ref())?;
        Ok(Response::AuditHead(kring_protocol::audit::AuditHeadPage {
            head,
            certificates,
        }))
    }

    fn audit_log(
        &self,
        caller: &Caller,
        from: u64,
        limit: u32,
        verify: bool,
    ) -> Result<Response, RelayError> {
        self.audit_reader(caller)?;
        let limit = limit.min(kring_protocol::wire::limits::MAX_PAGE) as usize;
        let records = crate::audit::read(self.engine.as_ref(), from.max(1), limit)?
            .into_iter()
            .map(|r| kring_protocol::wire::AuditRecordView {
                seq: r.seq,
                at: r.at,
                kind: r.event.kind.to_string(),
                actor: r.event.actor,
                subject: r.event.subject,
                action: r.event.action,
                detail: r.event.detail,
                hash: hex::encode(r.hash),
            })
            .collect();
        let total = crate::audit::AuditHead::load(self.engine.as_ref())?.seq();
        let verify = if verify {
            Some(
                match crate::audit::verify_signed(self.engine.as_ref(), &self.audit_expected())? {
                    Ok(s) => kring_protocol::wire::AuditVerdict {
                        records: s.records,
                        first_bad: None,
                        reason: None,
                        checkpoints: s.checkpoints,
                        unsigned_tail: s.unsigned_tail,
                    },
                    Err(b) => kring_protocol::wire::AuditVerdict {
                        records: b.seq.saturating_sub(1),
                        first_bad: Some(b.seq),
                        reason: Some(b.reason),
                        checkpoints: 0,
                        unsigned_tail: 0,
                    },
                },
            )
        } else {
            None
        };
        Ok(Response::AuditLog(kring_protocol::wire::AuditPage {
            relay: self.id.clone(),
            total,
            records,
            verify,
        }))
    }

    fn notice_status(&self, caller: &Caller, notice_id: Uuid) -> Result<Response, RelayError> {
        let not_found = || ErrorCode::NotFound {
            what: format!("notice {notice_id}"),
        };
        let rec: NoticeRecord =
            get_obj(self.engine.as_ref(), &keys::notice(&notice_id))?.ok_or_else(not_found)?;
        let visible = rec.sender == caller.id
            || self
                .community(&rec.community)?
                .is_some_and(|c| c.members.contains(&caller.id));
        if !visible {
            return Err(not_found().into());
        }
        Ok(Response::Status(NoticeStatus {
            notice_id,
            community: rec.community,
            seq: rec.seq,
            refusals: rec.refusals,
        }))
    }
}

/// Stores one Welcome for `users` (all users of this relay): one shared blob with a
/// reference count, and a reference per user for delivery and acknowledgement.
pub fn store_welcome(
    b: &mut Batch,
    users: &[String],
    community: &str,
    welcome: &[u8],
    ratchet_tree: &[u8],
) -> Result<(), RelayError> {
    let refs = u32::try_from(users.len()).map_err(|_| StoreError::TooMany {
        what: "users",
        count: users.len(),
    })?;
    let blob = Uuid::new_v4();
    b.put_obj(
        keys::welcome_blob(&blob),
        &WelcomeBlob {
            welcome: welcome.to_vec(),
            ratchet_tree: ratchet_tree.to_vec(),
        },
    )?;
    b.put_obj(keys::welcome_refs(&blob), &refs)?;
    for user in users {
        let id = Uuid::new_v4();
        let reference = WelcomeRef {
            id,
            community: community.to_string(),
            blob,
        };
        b.put_obj(keys::welcome_ref(user, &id), &reference)?;
    }
    Ok(())
}

/// Drops `user`'s reference `id` to a shared Welcome, and the Welcome with its last
/// reference.
pub fn release_welcome(
    engine: &dyn Engine,
    b: &mut Batch,
    user: &str,
    id: &Uuid,
) -> Result<(), RelayError> {
    let key = keys::welcome_ref(user, id);
    let Some(reference) = b.get_obj::<WelcomeRef>(engine, &key)? else {
        return Ok(());
    };
    b.delete(key);
    let refs_key = keys::welcome_refs(&reference.blob);
    match b.get_obj::<u32>(engine, &refs_key)? {
        Some(refs) if refs > 1 => b.put_obj(refs_key, &(refs - 1)),
        _ => {
            b.delete(refs_key);
            b.delete(keys::welcome_blob(&reference.blob));
            Ok(())
        }
    }
}

/// Writes the whole community record (after a change of membership, admins or
/// epoch), and its last seq.
pub fn put_community(b: &mut Batch, rec: &CommunityRecord) -> Result<(), RelayError> {
    b.put_obj(keys::community(&rec.id), rec)?;
    put_last_seq(b, &rec.id, rec.last_seq)
}

/// Writes only a community's last seq: what a notice changes.
pub fn put_last_seq(b: &mut Batch, id: &str, seq: u64) -> Result<(), RelayError> {
    b.put_obj(keys::last_seq(id), &seq)
}

/// The seq the next entry ordered in `rec` takes; refused (never wrapped) when the
/// numbering is exhausted.
pub fn next_seq(rec: &CommunityRecord) -> Result<u64, RelayError> {
    rec.last_seq.checked_add(1).ok_or_else(|| {
        ErrorCode::Unavailable {
            reason: format!("the log of {} can take no further entry", rec.id),
        }
        .into()
    })
}

/// The client-visible summary of a community record.
pub fn summary(rec: &CommunityRecord) -> CommunitySummary {
    CommunitySummary {
        id: rec.id.clone(),
        max_label: Label::from_bytes(&rec.max_label)
            .map(|l| l.to_string())
            .unwrap_or_else(|_| "(unreadable)".into()),
        epoch: rec.epoch,
        members: rec.members.clone(),
        admins: rec.admins.clone(),
        last_seq: rec.last_seq,
    }
}

fn request_subject(r: &Request) -> String {
    match r {
        Request::FetchKeyPackage { user } => user.clone(),
        Request::CreateCommunity { community, .. }
        | Request::Handshake { community, .. }
        | Request::Ack { community, .. }
        | Request::CommunityInfo { community } => community.clone(),
        Request::FileNotice {
            community,
            notice_id,
            ..
        } => format!("{community} notice {notice_id}"),
        Request::FileNotices { community, notices } => match notices.as_slice() {
            [one] => format!("{community} notice {}", one.notice_id),
            more => format!("{community} {} notices", more.len()),
        },
        Request::NoticeStatus { notice_id } => notice_id.to_string(),
        Request::AckWelcome { id } => id.to_string(),
        _ => "-".into(),
    }
}

/// A refusal of one notice of a filing of `count`, naming the notice when there
/// are several (the whole filing is refused).
fn name_notice(code: ErrorCode, notice_id: Uuid, count: usize) -> ErrorCode {
    if count < 2 {
        return code;
    }
    match code {
        ErrorCode::BadRequest { reason } => ErrorCode::BadRequest {
            reason: format!("notice {notice_id}: {reason}"),
        },
        ErrorCode::PolicyDenied { reason } => ErrorCode::PolicyDenied {
            reason: format!("notice {notice_id}: {reason}"),
        },
        other => other,
    }
}

/// The home relay of `NAME@RELAY` (empty if malformed).
pub fn home_relay(user: &str) -> &str {
    user.rsplit_once('@').map(|(_, r)| r).unwrap_or_default()
}

/// The label of an application message (and, for a forward, the original's:
/// [`kring_protocol::notice_aad`]), checked against the community (right group,
/// within the maximum, epoch window), a clearance and this relay's accreditation.
fn check_notice_label(
    app: &groups::AppInfo,
    community: &str,
    rec: &CommunityRecord,
    clearance: Option<&Clearance>,
    accreditation: &Clearance,
) -> Result<NoticeAad, RelayError> {
    if app.group_id != community.as_bytes() {
        return Err(ErrorCode::BadRequest {
            reason: "the message belongs to another group".into(),
        }
        .into());
    }
    let aad = NoticeAad::from_bytes(&app.aad).map_err(|e| ErrorCode::BadRequest {
        reason: format!("the notice carries no valid label: {e}"),
    })?;
    let max = Label::from_bytes(&rec.max_label).map_err(|e| corrupt_label(&rec.id, e))?;
    decide::file_notice(
        &aad.label,
        &max,
        clearance,
        accreditation,
        app.epoch,
        rec.epoch,
    )?;
    Ok(aad)
}
