//! `kring ui`: the device's notices and administration as a local web application.
//!
//! ```text
//!  browser ──HTTP on 127.0.0.1──▶ security (Host, session cookie, Origin, CSP)
//!                                   │
//!                                   ▼
//!                                 routes (axum, maud pages, server-sent events)
//!                                   │ Call (channel)
//!                                   ▼
//!                                 the device (one Client, one task): syncs every
//!                                 second, answers calls, releases the local archive
//!                                 after each operation so the CLI keeps working
//! ```
//!
//! Only the device decrypts, so the interface runs on the device: it is served on
//! the loopback interface only, to one browser holding the session the printed
//! single-use address opened. Every asset is embedded in the binary.

mod device;
mod labels;
mod pages;
mod routes;
mod security;
#[cfg(test)]
mod tests;
mod view;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::cli::Out;
use crate::client::Client;
use crate::error::{ClientError, Result};
pub use routes::router;
pub use security::Security;
pub use view::{
    Action, AuditView, Call, CommunityView, MembersView, NoticeView, Problem, Snapshot,
};

/// `kring ui` options.
#[derive(Debug, Clone, Default)]
pub struct UiOptions {
    /// `--listen` (default: 127.0.0.1 on a free port).
    pub listen: Option<SocketAddr>,
    /// `--no-browser`.
    pub no_browser: bool,
}

/// The shared state of the routes.
#[derive(Debug)]
pub struct State {
    /// Sessions and the checks on every request.
    pub security: Security,
    calls: mpsc::Sender<Call>,
    /// Bumped whenever what the pages show may have changed (server-sent events).
    changes: tokio::sync::watch::Sender<u64>,
    /// Notices opened in this interface (the rest are shown as unread).
    read: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Where files uploaded with a notice wait until it is filed (a directory of
    /// the profile's scratch space; each filing gets one of its own, removed after).
    uploads: std::path::PathBuf,
}

impl State {
    /// A state for a server on `local`, asking the device through `calls`.
    pub fn new(local: SocketAddr, calls: mpsc::Sender<Call>) -> State {
        State {
            security: Security::new(local),
            calls,
            changes: tokio::sync::watch::channel(0).0,
            read: std::sync::Mutex::new(std::collections::HashSet::new()),
            uploads: std::env::temp_dir().join(format!("kring-ui-{}", uuid::Uuid::new_v4())),
        }
    }

    /// The same, keeping uploaded files in `dir`.
    pub fn with_uploads(mut self, dir: std::path::PathBuf) -> State {
        self.uploads = dir;
        self
    }

    /// Tells open pages that what they show may have changed.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Asks the device; a stopped device is a problem in words.
    async fn ask<T>(
        &self,
        call: impl FnOnce(view::Reply<T>) -> Call,
    ) -> std::result::Result<T, Problem> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopping = || {
            Problem::new(
                "The interface is shutting down.",
                "Start it again with `kring ui` and open the address it prints.",
            )
        };
        self.calls.send(call(tx)).await.map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }
}

/// Refuses any address but a loopback one.
pub fn check_listen(listen: &SocketAddr) -> Result<()> {
    if !listen.ip().is_loopback() {
        return Err(ClientError::Usage(format!(
            "kring ui serves decrypted notices and listens only on a loopback address \
             (127.0.0.1:PORT), not on {listen}"
        )));
    }
    Ok(())
}

/// Runs `kring ui` until Ctrl-C or SIGTERM.
pub async fn serve(client: &mut Client, opts: UiOptions, out: &mut Out) -> Result<i32> {
    let listen = opts
        .listen
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    check_listen(&listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ClientError::io(listen.to_string(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ClientError::io(listen.to_string(), e))?;
    let (calls, incoming) = mpsc::channel(16);
    let uploads = client.scratch_space()?;
    let state = Arc::new(State::new(local, calls).with_uploads(uploads.clone()));
    let token = state.security.issue_token();
    let app = router(state.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    let url = format!("http://{local}/login?token={token}");
    out.line(&url);
    eprintln!(
        "kring: the interface for {} is at the address above (for this browser only; \
         Ctrl-C stops)",
        client.user()
    );
    if !opts.no_browser {
        open_browser(&url);
    }
    let result = device::run(client, incoming, state.clone()).await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    let _ = std::fs::remove_dir_all(&uploads);
    result
}

/// Opens `url` in the desktop's browser; without `xdg-open` the printed address is enough.
fn open_browser(url: &str) {
    let spawned = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            // Reaped in the background; its outcome does not matter.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(_) => {
            eprintln!("kring: no browser could be started; open the address above yourself")
        }
    }
}
