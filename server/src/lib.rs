//! `kring-relay`: a Kring relay.
//!
//! Map of the crate (request path: [`net`] → [`relay`] → [`decide`] → [`store`] →
//! ack → [`delivery`]):
//! - [`config`]: `relay.toml`, validated before anything binds.
//! - [`tls`]: TLS 1.3 mutual authentication for QUIC.
//! - [`net`]: the endpoint, a task per connection and per request stream.
//! - [`relay`]: the request handlers (the only code that writes the store).
//! - [`decide`]: the relay's policy decisions as pure functions.
//! - [`groups`]: MLS public-group tracking (openmls `PublicGroup`).
//! - [`delivery`]: push channel to devices, from the store.
//! - [`store`]: the storage engine trait, sled, group commit; [`records`]: what is stored.
//! - [`audit`]: the hash-chained audit log.
//! - [`federation`]: relay-to-relay links.
//! - [`key_fetch`]: limits on fetching other users' key packages.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod decide;
pub mod delivery;
pub mod error;
pub mod federation;
pub mod groups;
pub mod key_fetch;
pub mod net;
pub mod records;
pub mod relay;
pub mod revocation;
pub mod store;
pub mod tls;

use std::sync::Arc;

pub use error::RelayError;

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix() -> i64 {
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
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
}

impl Running {
    /// Graceful stop: no new connections, drain, flush the store.
    pub async fn stop(self) -> Result<(), RelayError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| RelayError::Store(format!("relay task failed: {e}")))?
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
    let server = tls::server_config(&config)?;
    let endpoint = net::bind(server, config.listen).map_err(|e| RelayError::Config {
        path: config.data_dir.clone(),
        reason: format!("cannot bind {}: {e}", config.listen),
    })?;
    let local_addr = endpoint.local_addr()?;
    let _ = relay
        .endpoint
        .set((endpoint.clone(), tls::peer_client_config(&config)?));
    federation::start_links(&relay);
    tokio::spawn(revocation::enforce_loop(relay.clone(), config.crls.clone()));
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        net::serve(relay.clone(), endpoint, async {
            let _ = stopped.await;
        })
        .await;
        relay.shutdown().await
    });
    tracing::info!(relay = %config.identity.name, addr = %local_addr, accreditation = %config.accreditation, "relay listening");
    Ok(Running {
        local_addr,
        stop,
        task,
    })
}
