//! The relay core: the state every decision needs and the one place the store is
//! written, without sockets, tasks or clocks.
//!
//! [`Core`] holds the relay's identity, trust, limits, revocations, peers and the
//! writer's state; every mutation runs inside [`Core::write`] (one short critical
//! section that decides, appends audit records and applies one atomic [`Batch`]).
//! The I/O shell ([`crate::relay::Relay`] and the modules above it) reads sockets
//! and timers, calls the core with the time, waits for durability, and wakes
//! delivery and outbox senders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use kring_policy::{Clearance, Label};
use kring_protocol::identity::Identity;
use kring_protocol::notice_aad::NoticeAad;
use kring_protocol::revocation::Revocations;
use kring_protocol::wire::{
    CommunitySummary, EntryKind, ErrorCode, FedBody, LogEntry, NoticeStatus, NoticeUpload, Response,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::audit::{AuditEvent, AuditHead, AuditKind};
use crate::config::{Limits, RelayConfig};
use crate::decide;
use crate::error::{RelayError, StoreError};
use crate::groups;
use crate::metrics::{BatchCounts, Metrics};
use crate::records::{CommunityRecord, MemberRecord, NoticeRecord, WelcomeBlob, WelcomeRef};
use crate::store::{Applier, Batch, Engine, get_obj, keys};

/// Most hop refusals kept for one notice (one per hop; a federation has few relays).
pub const MAX_HOP_REFUSALS: usize = 64;

/// A community record whose stored maximum label does not decode.
fn corrupt_label(community: &str, e: impl std::fmt::Display) -> RelayError {
    RelayError::Corrupt {
        key: format!("community {community}"),
        reason: format!("maximum label: {e}"),
    }
}

pub mod apply;
pub mod blobs;
mod communities;
mod key_packages;
mod notices;
pub mod outbox;
pub mod peers;
mod queries;
pub mod recovery;
pub mod retention;
pub mod revocation;
#[cfg(test)]
mod tests;

pub use blobs::{NoticeBlobs, entry_blobs, put_notice_blobs, release_blobs, sweep_blobs};
pub use communities::{
    next_seq, put_community, put_last_seq, release_welcome, store_welcome, summary,
};
pub use queries::memberships;

/// An authenticated peer of a connection.
#[derive(Debug)]
pub struct Caller {
    /// Identity from the certificate.
    pub identity: Identity,
    /// `NAME@RELAY` (users) or relay id.
    pub id: String,
    /// Certificate chain presented in TLS, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// One more than the revocation set's generation at the last check this
    /// caller passed (0: none yet): the set only grows, and its generation moves
    /// whenever something becomes revoked, so a check at the same generation
    /// would pass again and is skipped (it parses the chain).
    passed_at: AtomicU64,
}

impl Caller {
    /// Wraps an authenticated identity.
    pub fn new(identity: Identity, chain: Vec<Vec<u8>>) -> Self {
        let id = identity.id();
        Self {
            identity,
            id,
            chain,
            passed_at: AtomicU64::new(0),
        }
    }

    /// Checks this caller's identity and chain against `revocations`
    /// ([`Revocations::check_chain`]), at no cost if it passed at the set's current
    /// generation.
    ///
    /// # Errors
    /// How the caller is revoked.
    pub fn check_revocation(
        &self,
        revocations: &Revocations,
    ) -> Result<(), kring_protocol::revocation::Revoked> {
        let mark = revocations.generation().wrapping_add(1);
        if self.passed_at.load(Ordering::Acquire) == mark {
            return Ok(());
        }
        revocations.check_chain(&self.identity, &self.chain)?;
        self.passed_at.store(mark, Ordering::Release);
        Ok(())
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
    /// The time of the write (unix seconds), as the caller gave it.
    pub now: i64,
    /// Federation items the batch being written queues: (peer, item kind).
    pub sent: Vec<(String, &'static str)>,
    /// The monotonic clock at the time of the write, as the caller gave it (none
    /// before the first write).
    pub mono: Option<Instant>,
}

/// One call into the core: the time it is made at, given by the shell, and what
/// the core asks of the shell afterwards.
#[derive(Debug)]
pub struct Cx {
    /// Unix seconds.
    pub now: i64,
    /// The monotonic clock's reading at the same moment (rate limits).
    pub mono: Instant,
    /// The highest write number the call applied (0: it wrote nothing).
    pub wrote: u64,
    /// The highest write number the call's answer rests on: its own writes, or, for
    /// a write that found nothing to change, everything applied before it. The
    /// shell waits until it is durable before answering.
    pub depends_on: u64,
    /// Federation items queued, in order: (peer, item kind).
    pub sent: Vec<(String, &'static str)>,
    /// The answer may go before what the call wrote is durable (a device's cursor:
    /// losing it in a crash only repeats deliveries the device skips).
    pub answer_before_durable: bool,
    /// Hubbed communities whose pending removals enforcement must look at again
    /// (a commit started a new epoch), once the write is durable.
    pub enforce: Vec<String>,
}

impl Cx {
    /// A call made at `now` (unix seconds) and `mono`.
    pub fn at(now: i64, mono: Instant) -> Self {
        Self {
            now,
            mono,
            wrote: 0,
            depends_on: 0,
            sent: Vec::new(),
            answer_before_durable: false,
            enforce: Vec::new(),
        }
    }
}

/// One identity's request rate: a token bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    pub(crate) last: Instant,
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
    pub(crate) fn from_config(config: &RelayConfig) -> Self {
        Self {
            cert_chain: config.cert_chain.iter().map(|c| c.to_vec()).collect(),
            key_pkcs8: config.key_pkcs8.clone(),
            accreditation: config.accreditation.clone(),
        }
    }
}

/// Log entries the entry cache may hold for delivery ([`crate::entry_cache`]).
const ENTRY_CACHE_BYTES: usize = 16 << 20;

/// The relay's state and decisions, without I/O.
#[derive(Debug)]
pub struct Core {
    pub(crate) id: String,
    pub(crate) organisation: String,
    pub(crate) anchors: Vec<Vec<u8>>,
    /// Who may speak for which relay; replaced whole by a reload.
    trust: RwLock<Arc<kring_protocol::identity::TrustMap>>,
    pub(crate) limits: Limits,
    /// Certificate, key and accreditation; replaced whole by a reload.
    own: RwLock<Arc<OwnIdentity>>,
    /// Organisations this relay's organisation declares as its clients (`clients`).
    clients: RwLock<Vec<String>>,
    pub(crate) engine: Arc<dyn Engine>,
    applier: Applier,
    writer: Mutex<Writer>,
    revocations: RwLock<Revocations>,
    pub(crate) enforce: watch::Sender<u64>,
    enforce_due: Mutex<revocation::EnforceDue>,
    /// The revocation set's generation the last full enforcement was asked for.
    enforced_generation: std::sync::atomic::AtomicU64,
    crl_rate: Mutex<revocation::CrlRateLimit>,
    pub(crate) rate: Mutex<HashMap<String, Bucket>>,
    pub(crate) key_fetches: Mutex<crate::key_fetch::KeyFetchLimiter>,
    /// When members last updated their own leaf, as the hub.
    pub(crate) self_updates: Mutex<decide::SelfUpdates>,
    /// Federation peers by id (changed by a reload).
    peers: RwLock<std::collections::BTreeMap<String, Arc<crate::core::peers::Peer>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) recovery: recovery::Recovery,
    pub(crate) blobs: crate::blobs::BlobStore,
    /// Log entries read and encoded once for every device's delivery.
    entries: crate::entry_cache::EntryCache,
}

impl Core {
    /// Opens the relay's state on `engine` at `now` (unix seconds).
    pub fn open(
        config: &RelayConfig,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        now: i64,
    ) -> Result<Self, RelayError> {
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
            now,
        )?;
        let revocations = revocation::load(engine.as_ref(), &anchors, now)?;
        let generation = revocations.generation();
        let (enforce, _) = watch::channel(0);
        Ok(Self {
            id: config.identity.name.clone(),
            organisation: config.identity.organisation.clone(),
            anchors,
            trust: RwLock::new(Arc::new(config.trust.clone())),
            limits: config.limits.clone(),
            own: RwLock::new(Arc::new(OwnIdentity::from_config(config))),
            clients: RwLock::new(config.clients.clone()),
            applier: Applier::new(engine.clone()),
            engine: engine.clone(),
            writer: Mutex::new(Writer {
                audit,
                outbox_next: crate::core::outbox::load_outbox_heads(
                    engine.as_ref(),
                    &config.peers,
                )?,
                counts: BatchCounts::default(),
                now,
                sent: Vec::new(),
                mono: None,
            }),
            rate: Mutex::new(HashMap::new()),
            key_fetches: Mutex::new(crate::key_fetch::KeyFetchLimiter::default()),
            self_updates: Mutex::new(decide::SelfUpdates::default()),
            revocations: RwLock::new(revocations),
            enforce,
            // A first pass at start: the set loaded from the store may have changed
            // since the last one ran.
            enforce_due: Mutex::new(revocation::EnforceDue::everything()),
            enforced_generation: std::sync::atomic::AtomicU64::new(generation),
            crl_rate: Mutex::new(revocation::CrlRateLimit::default()),
            peers: RwLock::new(
                config
                    .peers
                    .iter()
                    .map(|p| {
                        (
                            p.id.clone(),
                            crate::core::peers::Peer::from_config(p, engine.as_ref()),
                        )
                    })
                    .collect(),
            ),
            metrics,
            blobs: crate::blobs::BlobStore::open(&config.data_dir.join("blobs"))?,
            entries: crate::entry_cache::EntryCache::new(ENTRY_CACHE_BYTES),
            recovery: recovery::Recovery::open(
                engine.as_ref(),
                &config.identity.name,
                &config.peers,
            )?,
        })
    }

    /// What applies the core's batches (the shell's group commit flushes it).
    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    /// Replaces the own identity (a reload renewed the certificate).
    pub(crate) fn set_own(&self, own: OwnIdentity) {
        *self
            .own
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(own);
    }

    /// Where a relay restored from a backup stands ([`crate::recovery`]).
    pub fn recovery(&self) -> &recovery::Recovery {
        &self.recovery
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

    /// Removes peer `id` (a reload); the caller retires it.
    pub fn remove_peer(&self, id: &str) -> Option<Arc<crate::core::peers::Peer>> {
        self.peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
    }

    /// Adds or replaces a peer (a reload), with its outbox numbering from the
    /// store; returns the one it replaces (for the caller to retire).
    pub fn insert_peer(
        &self,
        cx: &mut Cx,
        entry: &crate::config::PeerToml,
        peer: Arc<crate::core::peers::Peer>,
    ) -> Result<Option<Arc<crate::core::peers::Peer>>, RelayError> {
        let heads = crate::core::outbox::load_outbox_heads(
            self.engine.as_ref(),
            std::slice::from_ref(entry),
        )?;
        self.write(cx, |w, _| {
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
    pub fn peer(&self, id: &str) -> Option<Arc<crate::core::peers::Peer>> {
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
    pub fn peer_list(&self) -> Vec<Arc<crate::core::peers::Peer>> {
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

    fn revocations_mut(&self) -> RwLockWriteGuard<'_, Revocations> {
        self.revocations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a verified revocation statement into the revocation set; `false` if
    /// the user was revoked already. The set is only ever added to, never replaced,
    /// so its generation only moves forward ([`Caller::check_revocation`] relies
    /// on that).
    pub fn add_revocation_statement(
        &self,
        statement: &kring_protocol::revocation::RevocationStatement,
    ) -> bool {
        self.revocations_mut().add_statement(statement)
    }

    /// Takes a verified CRL into the revocation set (see
    /// [`Revocations::add_crl`]); `None` if it is not newer than the one held.
    pub fn add_crl(
        &self,
        crl: &kring_protocol::revocation::VerifiedCrl,
    ) -> Option<kring_protocol::revocation::CrlChange> {
        self.revocations_mut().add_crl(crl)
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

    /// The limit on CRLs from peers (see [`revocation::CrlRateLimit`]).
    pub fn admit_crl(&self, organisation: &str, now: i64) -> revocation::CrlAdmission {
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
    pub fn enforce_due(&self) -> std::sync::MutexGuard<'_, revocation::EnforceDue> {
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

    /// The highest seq appended to a log (`keys::log_prefix`) since the relay
    /// started, if any ([`Watermark::head`](crate::store::Watermark::head)).
    pub fn log_head(&self, log: &[u8]) -> Option<u64> {
        self.applier.watermark().head(log)
    }

    /// The community logs appended to since a reader's last look
    /// ([`Watermark::logs_appended_since`](crate::store::Watermark::logs_appended_since)).
    pub fn logs_appended_since(&self, since: Option<u64>) -> crate::store::Appended {
        self.applier.watermark().logs_appended_since(since)
    }

    /// Moves whenever a batch wrote pending welcomes for `user`
    /// ([`Watermark::welcome_writes`](crate::store::Watermark::welcome_writes)).
    pub fn welcome_writes(&self, user: &str) -> u64 {
        self.applier.watermark().welcome_writes(user)
    }

    /// Moves whenever a batch wrote membership records
    /// ([`Watermark::member_writes`](crate::store::Watermark::member_writes)).
    pub fn member_writes(&self) -> u64 {
        self.applier.watermark().member_writes()
    }

    /// The log entries delivery shares between devices.
    pub fn entry_cache(&self) -> &crate::entry_cache::EntryCache {
        &self.entries
    }

    /// The highest seq of a log or outbox (`sequence`: [`keys::log_prefix`] or an
    /// outbox prefix) that may be sent to a device or a peer: nothing at or after the
    /// first entry not yet on disk, unless the shell released it early
    /// ([`Watermark::release`](crate::store::Watermark::release)). `u64::MAX` when
    /// all of it is on disk. Ask after reading the entries, never before.
    pub fn readable_upto(&self, sequence: &[u8]) -> u64 {
        self.applier.watermark().readable_upto(sequence)
    }

    /// True if a pending welcome (`w/`, `v/` key) is not yet on disk: it is not
    /// delivered until it is.
    pub fn is_unflushed(&self, key: &[u8]) -> bool {
        self.applier.watermark().is_unflushed(key)
    }

    /// Runs `f` in the writer's critical section at `cx.now` and applies the batch
    /// it fills. The effect is visible in the store at once, but its new log
    /// entries, outbox items and welcomes reach nobody before the flush (the
    /// store's `Watermark`); the shell waits for the flush before acknowledging
    /// (`cx.depends_on` says what to wait for).
    pub fn write<T>(
        &self,
        cx: &mut Cx,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        self.write_numbered(cx, f).map(|(v, _)| v)
    }

    /// [`Core::write`], also returning the batch's write number (0 if it wrote
    /// nothing), for the shell to release early.
    pub fn write_numbered<T>(
        &self,
        cx: &mut Cx,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<(T, u64), RelayError> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| RelayError::Poisoned("writer"))?;
        // Never earlier than a write before it (a call's time is read before it
        // waits for the lock).
        w.now = w.now.max(cx.now);
        w.mono = Some(w.mono.map_or(cx.mono, |m| m.max(cx.mono)));
        w.sent.clear();
        let mut batch = Batch::default();
        let result = f(&mut w, &mut batch).and_then(|v| self.applier.apply(batch).map(|n| (v, n)));
        match result {
            Ok((v, n)) => {
                self.metrics.counted(std::mem::take(&mut w.counts));
                cx.wrote = cx.wrote.max(n);
                // What the call decided on may be in batches not yet flushed (a retried
                // filing finds the notice another request wrote): the answer waits for
                // those as well.
                let read = if n > 0 {
                    n
                } else {
                    self.applier.watermark().applied()
                };
                cx.depends_on = cx.depends_on.max(read);
                cx.sent.append(&mut w.sent);
                Ok((v, n))
            }
            Err(e) => {
                // Nothing was applied: the audit head may have advanced in memory.
                w.counts = BatchCounts::default();
                w.sent.clear();
                w.audit.reload(self.engine.as_ref())?;
                Err(e)
            }
        }
    }

    /// Appends one audit record in its own batch (best effort; failures are logged).
    pub fn audit(&self, cx: &mut Cx, event: AuditEvent) {
        let r = self.write(cx, |w, b| w.audit.append(b, w.now, event));
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write audit record");
        }
    }

    /// Audit-logs a refusal.
    pub fn audit_refused(
        &self,
        cx: &mut Cx,
        actor: &str,
        subject: &str,
        action: &str,
        code: &ErrorCode,
    ) {
        self.audit(
            cx,
            AuditEvent::new(AuditKind::Refusal, actor, subject, action, code.to_string()),
        );
    }
}

/// The home relay of `NAME@RELAY` (empty if malformed).
pub fn home_relay(user: &str) -> &str {
    user.rsplit_once('@').map(|(_, r)| r).unwrap_or_default()
}
