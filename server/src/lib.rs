//! `kring-relay`: a Kring relay.
//!
//! Map of the crate (request path: [`net`] → [`relay`] → [`decide`] → [`store`] →
//! ack → [`delivery`]):
//! - [`config`]: `relay.toml`, validated before anything binds.
//! - [`tls`]: TLS 1.3 mutual authentication for QUIC.
//! - [`net`]: the endpoint, a task per connection and per request stream;
//!   [`filing_order`]: a connection's filings ordered as the device opened them.
//! - [`relay`]: the request handlers (the only code that writes the store).
//! - [`decide`]: the relay's policy decisions as pure functions.
//! - [`groups`]: MLS public-group tracking (openmls `PublicGroup`).
//! - [`delivery`]: push channel to devices, from the store.
//! - [`store`]: the storage engine trait, sled, group commit; [`records`]: what is stored.
//! - [`audit`]: the hash-chained audit log.
//! - [`federation`]: relay-to-relay links.
//! - [`key_fetch`]: limits on fetching other users' key packages.
//! - [`metrics`]: Prometheus metrics and health (`[metrics] listen`).
//! - [`reload`]: SIGHUP and `kring-relay reload` (what changed, applied live).
//! - [`backup`], [`control`], [`recovery`]: backups of a running relay over the
//!   control socket, restore, and how a restored relay catches up without reusing
//!   a sequence number.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod decide;
pub mod delivery;
pub mod entry_cache;
pub mod error;
pub mod federation;
pub mod filing_order;
pub mod frames;
pub mod groups;
pub mod key_fetch;
pub mod keyspace;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod net;
pub mod records;
pub mod recovery;
pub mod relay;
pub mod reload;
pub mod requests;
pub mod retention;
pub mod revocation;
pub mod store;
pub mod tls;

use std::sync::Arc;

pub use error::RelayError;

/// Seconds since the Unix epoch (0 if the clock is before 1970): the relay's one
/// reading of the wall clock; decisions take the time as an argument.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A running relay: its bound address and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Address the endpoint is bound to (useful with port 0).
    pub local_addr: std::net::SocketAddr,
    /// Address `/metrics` and `/healthz` are served on, if configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Reloads asked for on the control socket (`kring-relay reload`), for the
    /// owner of the configuration file to carry out.
    pub reloads: Option<tokio::sync::mpsc::Receiver<control::ReloadRequest>>,
    relay: Arc<relay::Relay>,
    current: std::sync::Mutex<reload::Snapshot>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Reloads the relay with `config` (read again from its file): what changed is
    /// applied, connections it does not concern stay up. Refused (nothing changed)
    /// when it changes what needs a restart. Audited either way.
    pub fn reload(&self, config: &config::RelayConfig) -> Result<String, error::ReloadError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = reload::Snapshot::of(config);
        let result =
            reload::plan(&current, &new).and_then(|plan| reload::apply(&self.relay, &plan, config));
        match &result {
            Ok(_) => *current = new,
            Err(reason) => self.refused(&reason.to_string()),
        }
        result
    }

    /// Audits a reload refused (an invalid configuration, or one needing a
    /// restart).
    pub fn refused(&self, reason: &str) {
        self.relay.audit_now(audit::AuditEvent::new(
            audit::AuditKind::Admin,
            self.relay.id(),
            "-",
            "reload-refused",
            reason,
        ));
    }

    /// Graceful stop: no new connections, drain, flush the store.
    pub async fn stop(self) -> Result<(), RelayError> {
        let _ = self.stop.send(());
        let result = self.task.await.map_err(RelayError::Task);
        if let Some(task) = self.metrics_task {
            task.abort();
        }
        result?
    }
}

/// Binds the endpoint and starts serving in the background.
pub async fn start(config: config::RelayConfig) -> Result<Running, RelayError> {
    if let Some(mode) = config::prepare_data_dir(&config.data_dir)? {
        tracing::warn!(
            dir = %config.data_dir.display(),
            "data directory had mode {mode:04o} (group or others could read the store); tightened to 0700"
        );
    }
    let engine: Arc<dyn store::Engine> = Arc::new(store::SledEngine::open(&config.data_dir)?);
    let relay = relay::Relay::open(&config, engine)?;
    let server = tls::server_config(&config, relay.tls_identity())?;
    let keys = net::EndpointKeys::derive(&config.key_pkcs8);
    let endpoint = net::bind(server, config.listen, &keys).map_err(|e| RelayError::Config {
        path: config.data_dir.clone(),
        reason: format!("cannot bind {}: {e}", config.listen),
    })?;
    let local_addr = endpoint.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|e| RelayError::Config {
            path: config.data_dir.clone(),
            reason: format!("cannot bind the metrics listener {addr}: {e}"),
        })?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let _ = relay.endpoint.set((
        endpoint.clone(),
        tls::peer_client_config(&config, relay.tls_identity())?,
    ));
    federation::start_links(&relay);
    recovery::start(&relay);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    match control::bind(&config.data_dir) {
        Ok(listener) => {
            tokio::spawn(control::serve(
                relay.clone(),
                listener,
                config.data_dir.clone(),
                reload_tx,
            ));
        }
        Err(e) => tracing::warn!(
            error = %e,
            "no control socket in the data directory: `kring-relay backup` and `reload` cannot reach this relay"
        ),
    }
    tokio::spawn(revocation::enforce_loop(relay.clone()));
    tokio::spawn(retention::run(relay.clone()));
    tokio::spawn({
        let relay = relay.clone();
        async move {
            let mut tick = tokio::time::interval(audit::CHECKPOINT_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = relay.checkpoint().await {
                    tracing::error!(error = %e, "cannot write an audit checkpoint");
                }
            }
        }
    });
    let metrics_task = metrics_listener.map(|listener| {
        tokio::spawn(metrics::serve(
            listener,
            metrics::Source {
                relay: Arc::downgrade(&(relay.clone() as Arc<dyn metrics::GaugeSource>)),
                metrics: relay.metrics().clone(),
                data_dir: config.data_dir.clone(),
            },
        ))
    });
    if let Some(addr) = metrics_addr {
        tracing::info!(addr = %addr, "metrics and health served on http://{addr}/metrics and /healthz");
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running_relay = relay.clone();
    let task = tokio::spawn(async move {
        net::serve(relay.clone(), endpoint, async {
            let _ = stopped.await;
        })
        .await;
        relay.shutdown().await
    });
    tracing::info!(relay = %config.identity.name, addr = %local_addr, accreditation = %config.accreditation, "relay listening");
    Ok(Running {
        reloads: Some(reload_rx),
        relay: running_relay,
        current: std::sync::Mutex::new(reload::Snapshot::of(&config)),
        local_addr,
        metrics_addr,
        stop,
        task,
        metrics_task,
    })
}
