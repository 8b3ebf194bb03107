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
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::wire::ErrorCode;
use tokio::sync::watch;

use crate::audit::{AuditEvent, AuditKind};
use crate::config::RelayConfig;
use crate::error::RelayError;
use crate::filing_order::Turn;
use crate::frames::ByteBudget;
use crate::metrics::Metrics;
use crate::store::{Batch, Durability, Engine, keys};

pub use crate::core::{Caller, Core, OwnIdentity, Writer, home_relay};

mod connections;
#[cfg(test)]
mod tests;

pub use crate::core::{
    Cx, MAX_HOP_REFUSALS, NoticeBlobs, entry_blobs, next_seq, put_community, put_last_seq,
    put_notice_blobs, release_welcome, store_welcome, summary,
};

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

/// One relay: the [`Core`] and the I/O around it (group commit, wake-ups, live
/// connections, TLS identity, CRL files, the QUIC endpoint). Dereferences to its
/// core.
#[derive(Debug)]
pub struct Relay {
    core: Core,
    /// The certificate and key TLS presents (swapped by a reload).
    tls_identity: Arc<crate::tls::CertResolver>,
    /// CRL files the enforcement task re-reads as they change.
    crl_files: RwLock<Vec<std::path::PathBuf>>,
    durability: Durability,
    changes: watch::Sender<u64>,
    visible: watch::Sender<u64>,
    conns: Mutex<HashMap<String, Live>>,
    /// The link to each federation peer, by peer id.
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// The QUIC endpoint (for dialling peers), set once bound.
    pub endpoint: std::sync::OnceLock<(quinn::Endpoint, quinn::ClientConfig)>,
}

/// The link to one federation peer: its live QUIC connection, if any, and a signal
/// that changes whenever the link comes up or goes.
#[derive(Debug)]
pub struct Link {
    conn: Mutex<Option<quinn::Connection>>,
    changed: watch::Sender<u64>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            conn: Mutex::new(None),
            changed: watch::channel(0).0,
        }
    }
}

impl Link {
    /// The live connection, if the link is up.
    pub fn conn(&self) -> Option<quinn::Connection> {
        self.conn
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|c| c.close_reason().is_none())
    }

    /// Sets (or clears) the live connection.
    pub fn set_conn(&self, conn: Option<quinn::Connection>) {
        if let Ok(mut c) = self.conn.lock() {
            *c = conn;
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Clears the slot if it still holds `conn` (a newer link may have replaced it).
    pub fn clear_if(&self, conn: &quinn::Connection) {
        let holds = self
            .conn
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.stable_id()))
            == Some(conn.stable_id());
        if holds {
            self.set_conn(None);
        }
    }

    /// The live connection, waiting up to `deadline` for the link to come up.
    pub async fn wait_conn(&self, deadline: std::time::Duration) -> Option<quinn::Connection> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if let Some(c) = self.conn() {
                    return Some(c);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(deadline, wait).await.ok().flatten()
    }

    /// A receiver that changes whenever the link comes up or goes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Closes the live link, if any (it is re-dialled by the side that dials).
    pub fn close(&self, reason: &str) {
        let conn = self.conn.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = conn {
            c.close(CloseCode::Reconfigured.code().into(), reason.as_bytes());
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The live link's certificate chain, if any.
    pub fn chain(&self) -> Option<Vec<Vec<u8>>> {
        self.conn().and_then(|c| crate::frames::peer_chain(&c))
    }
}

impl crate::metrics::GaugeSource for Relay {
    fn gauges(&self) -> crate::metrics::Gauges {
        let peers = self
            .peer_list()
            .iter()
            .map(|peer| crate::metrics::PeerGauges {
                id: peer.id.clone(),
                link_up: self.link(&peer.id).conn().is_some(),
                outbox: match crate::core::outbox::outbox_state(&self.core, &peer.id) {
                    Ok(state) => Some(state),
                    Err(e) => {
                        tracing::warn!(peer = %peer.id, error = %e, "cannot read the outbox for metrics");
                        None
                    }
                },
            })
            .collect();
        let revoked = self.revocations();
        crate::metrics::Gauges {
            peers,
            revoked_users: revoked.users().count(),
            revoked_certificates: revoked.revoked_certificates(),
            certificate_not_after: kring_protocol::identity::chain_not_after(&self.cert_chain()),
        }
    }
}

impl std::ops::Deref for Relay {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

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

impl Relay {
    /// Opens the store and builds the relay. Must run inside a tokio runtime.
    pub fn open(config: &RelayConfig, engine: Arc<dyn Engine>) -> Result<Arc<Self>, RelayError> {
        let metrics = Arc::new(Metrics::new());
        let core = Core::open(config, engine, metrics.clone(), now())?;
        let durability = Durability::start_observed(core.applier().clone(), {
            Some(Arc::new(move |took, ok| metrics.flushed(took, ok)))
        })?;
        let (changes, _) = watch::channel(0);
        let (visible, _) = watch::channel(0);
        Ok(Arc::new(Self {
            core,
            tls_identity: crate::tls::CertResolver::new(config)?,
            crl_files: RwLock::new(config.crls.clone()),
            durability,
            changes,
            visible,
            conns: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            endpoint: std::sync::OnceLock::new(),
        }))
    }

    /// The durability of the store (consistent views for backups).
    pub fn durability(&self) -> &Durability {
        &self.durability
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
        self.set_own(OwnIdentity::from_config(config));
        self.tls_identity.replace(tls_key);
        Ok(())
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
                    let chain = crate::frames::peer_chain(conn).unwrap_or_default();
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
    /// [`Core::readable_upto`] and [`Core::is_unflushed`] allow.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver for delivery tasks: changes whenever [`changes`](Self::changes)
    /// does, and also when [`deliver_early`](Self::deliver_early) releases log
    /// entries before they are on disk.
    pub fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
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

    /// The link to peer `id` (made empty on first use).
    pub fn link(&self, id: &str) -> Arc<Link> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Stops a removed or replaced peer's link tasks and closes its link.
    pub fn retire_peer(&self, peer: &crate::core::peers::Peer, reason: &str) {
        peer.retire();
        self.link(&peer.id).close(reason);
    }

    /// A call into the core at the time now.
    pub fn cx(&self) -> Cx {
        Cx::at(now(), Instant::now())
    }

    /// [`Core::write`] at the time now (a write the caller makes durable itself
    /// with [`Relay::durable`] where it must be).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        self.core.write(&mut self.cx(), f)
    }

    /// [`Core::write_numbered`] at the time now.
    pub fn write_numbered<T>(
        &self,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<(T, u64), RelayError> {
        self.core.write_numbered(&mut self.cx(), f)
    }

    /// Calls the core at the time now and carries out what it asks: the answer
    /// waits until what the call wrote is durable (unless the core said it need
    /// not), then enforcement looks at the communities it names. A failed flush
    /// fails the call.
    pub async fn call<T>(
        &self,
        f: impl FnOnce(&Core, &mut Cx) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        self.call_in_turn(Turn::free(), f).await
    }

    /// [`call`](Self::call) that gives up `turn` once the core call returned, before
    /// waiting for durability: what the call ordered is ordered.
    pub async fn call_in_turn<T>(
        &self,
        turn: Turn,
        f: impl FnOnce(&Core, &mut Cx) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        let mut cx = self.cx();
        let result = f(&self.core, &mut cx);
        drop(turn);
        let finished = self.finish(cx).await;
        let value = result?;
        finished?;
        Ok(value)
    }

    /// What a core call asked for once it returned: durability, then enforcement.
    pub async fn finish(&self, cx: Cx) -> Result<(), RelayError> {
        if cx.depends_on > 0 && !cx.answer_before_durable {
            self.durable().await?;
        }
        for community in &cx.enforce {
            self.enforce_community(community);
        }
        Ok(())
    }

    /// Appends one audit record in its own batch at the time now (best effort).
    pub fn audit_now(&self, event: AuditEvent) {
        self.core.audit(&mut self.cx(), event);
    }

    /// Audit-logs a refusal at the time now (best effort).
    pub fn audit_refusal(&self, actor: &str, subject: &str, action: &str, code: &ErrorCode) {
        self.core
            .audit_refused(&mut self.cx(), actor, subject, action, code);
    }

    /// Waits until everything applied so far is on disk (and so readable), then
    /// wakes delivery tasks and outbox senders.
    pub async fn durable(&self) -> Result<(), RelayError> {
        self.durability.wait().await?;
        self.changed();
        Ok(())
    }
}
