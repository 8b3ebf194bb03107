//! The relay's request path: authenticate → decode → policy → store → ack → deliver.
//!
//! Every mutation runs inside [`Relay::write`]: one short critical section that makes
//! the decision, appends audit records and applies one atomic [`Batch`]. The caller then
//! awaits group-commit durability before acknowledging, and finally wakes the delivery
//! tasks. Decisions themselves are plain functions in [`crate::decide`].
//!
//! This module holds the relay's state and its accessors; the handlers live in one
//! submodule per concept: `connections` (authentication, registry, budgets),
//! `dispatch` (one request in, one answer out), `key_packages`, `communities`
//! (creation, commits, Welcomes), `notices` (filing, ordering, fan-out), `attachments`
//! (blobs: upload, which notice refers to which, fetch-through) and `queries`
//! (cursors, lists, audit reads, notice status).

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

mod attachments;
mod communities;
mod connections;
mod dispatch;
mod key_packages;
mod notices;
mod queries;
#[cfg(test)]
mod tests;

pub use attachments::{
    FETCH_THROUGH_WAIT, NoticeBlobs, entry_blobs, put_notice_blobs, release_blobs, sweep_blobs,
};
pub use communities::{
    next_seq, put_community, put_last_seq, release_welcome, store_welcome, summary,
};

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
    blobs: crate::blobs::BlobStore,
    /// Log entries read and encoded once for every device's delivery.
    entries: crate::entry_cache::EntryCache,
}

/// What the shared delivery copies of log entries may hold
/// ([`crate::entry_cache`]).
const ENTRY_CACHE_BYTES: usize = 16 << 20;

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

pub use crate::now;

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
            blobs: crate::blobs::BlobStore::open(&config.data_dir.join("blobs"))?,
            entries: crate::entry_cache::EntryCache::new(ENTRY_CACHE_BYTES),
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
    /// The highest seq appended to a log (`keys::log_prefix`) since the relay
    /// started, if any ([`Watermark::head`](crate::store::Watermark::head)).
    pub fn log_head(&self, log: &[u8]) -> Option<u64> {
        self.durability.watermark().head(log)
    }

    /// Moves whenever a batch wrote membership records
    /// ([`Watermark::member_writes`](crate::store::Watermark::member_writes)).
    pub fn member_writes(&self) -> u64 {
        self.durability.watermark().member_writes()
    }

    /// The log entries delivery shares between devices.
    pub fn entry_cache(&self) -> &crate::entry_cache::EntryCache {
        &self.entries
    }

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
}

/// The home relay of `NAME@RELAY` (empty if malformed).
pub fn home_relay(user: &str) -> &str {
    user.rsplit_once('@').map(|(_, r)| r).unwrap_or_default()
}
