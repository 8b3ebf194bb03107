//! `kring taxii serve`: the user's communities as TAXII 2.1 collections for the
//! organisation's own threat-intelligence platform, and `kring taxii passwd`.
//!
//! ```text
//!  platform ──HTTP Basic, TAXII 2.1──▶ routes (axum, any number of requests)
//!                                        │ Call::Snapshot / Call::File (channel)
//!                                        ▼
//!                                      the device (one Client, one task):
//!                                        sync at most once a second, read the
//!                                        archive, file notices
//! ```
//!
//! Only what `kring notice export` would export is served (the same rule:
//! [`crate::export::admits`] with `--max-label`): notices within the
//! platform's accreditation. A POSTed envelope is filed as one notice, labelled
//! from the Kring classification marking on its objects. Plain HTTP is served only
//! on a loopback address; anywhere else TLS (`--tls-cert`, `--tls-key`) is required.

pub mod collection;
mod routes;
#[cfg(test)]
mod tests;
mod tls;
pub mod users;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_policy::Label;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::cli::Out;
use crate::client::Client;
use crate::error::{ClientError, EXIT_OK, EXIT_POLICY, EXIT_USAGE, Result};
use crate::export::{admits, organisation_of};
use crate::labels::parse_label;
use crate::notice::{Category, NoticeDraft, NoticeKind};
use crate::ordering::Ordering;
use collection::{Community, Shown};
pub use routes::router;
use users::Users;

/// The TAXII 2.1 media type.
pub const TAXII_MEDIA_TYPE: &str = "application/taxii+json;version=2.1";
/// The STIX 2.1 media type.
pub const STIX_MEDIA_TYPE: &str = "application/stix+json;version=2.1";
/// The path of the one API root.
pub const API_ROOT: &str = "/kring/";
/// Largest request body, in bytes (an envelope of one notice's objects).
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Statuses of POST requests kept for `GET .../status/ID/`.
pub const MAX_STATUSES: usize = 1024;
/// Password verifications running at once at most.
pub const MAX_VERIFYING: usize = 4;
/// How often the device syncs at most while serving.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What the routes ask of the device.
#[derive(Debug)]
pub enum Call {
    /// The communities and the notices that may be shown.
    Snapshot(oneshot::Sender<std::result::Result<Vec<Community>, SnapshotError>>),
    /// File a notice.
    File(Filing, oneshot::Sender<std::result::Result<Uuid, Refusal>>),
}

/// Why the service cannot show the communities (HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The service is shutting down; the platform may try again once it is back.
    #[error("the service is stopping")]
    Stopping,
    /// This device could not read its communities or notices.
    #[error("{0}")]
    Device(#[from] ClientError),
}

/// A notice to file from posted objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Filing {
    /// The community (`NAME@HUB`).
    pub community: String,
    /// The label's text.
    pub label: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Category.
    pub category: Category,
    /// The STIX objects.
    pub stix: Vec<Value>,
}

/// Why a filing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A policy rule (HTTP 403).
    Policy(String),
    /// The content (HTTP 422).
    Invalid(String),
    /// The device or relay (HTTP 503).
    Unavailable(String),
}

/// The service's shared state.
#[derive(Debug)]
pub struct State {
    users: Users,
    /// SHA-256 of `name:password` of credentials verified before (Argon2 is slow on
    /// purpose; a platform paging through a collection sends them with every request).
    verified: Mutex<VecDeque<[u8; 32]>>,
    /// Argon2 verifications at once (each takes 19 MiB and tens of milliseconds).
    verifying: tokio::sync::Semaphore,
    max_label: Label,
    calls: mpsc::Sender<Call>,
    statuses: Mutex<VecDeque<(Uuid, Value)>>,
    scheme: &'static str,
}

impl State {
    /// A service for `users`, showing what `max_label` admits, asking the device through `calls`.
    pub fn new(users: Users, max_label: Label, calls: mpsc::Sender<Call>, tls: bool) -> State {
        State {
            users,
            verified: Mutex::new(VecDeque::new()),
            verifying: tokio::sync::Semaphore::new(MAX_VERIFYING),
            max_label,
            calls,
            statuses: Mutex::new(VecDeque::new()),
            scheme: if tls { "https" } else { "http" },
        }
    }

    async fn snapshot(&self) -> std::result::Result<Vec<Community>, SnapshotError> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call::Snapshot(tx))
            .await
            .map_err(|_| SnapshotError::Stopping)?;
        rx.await.map_err(|_| SnapshotError::Stopping)?
    }

    async fn file(&self, filing: Filing) -> std::result::Result<Uuid, Refusal> {
        let (tx, rx) = oneshot::channel();
        let stopping = || Refusal::Unavailable("the service is stopping".into());
        self.calls
            .send(Call::File(filing, tx))
            .await
            .map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }
}

/// `kring taxii serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--max-label`.
    pub max_label: String,
    /// `--users`.
    pub users: PathBuf,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Refuses plain HTTP anywhere but on loopback.
pub fn check_listen(listen: &SocketAddr, tls: bool) -> Result<()> {
    if !tls && !listen.ip().is_loopback() {
        return Err(ClientError::Usage(format!(
            "plain HTTP is served only on a loopback address; give --tls-cert and --tls-key to \
             listen on {listen}"
        )));
    }
    Ok(())
}

/// Runs `kring taxii serve` until Ctrl-C or SIGTERM.
pub async fn serve(client: &mut Client, opts: ServeOptions, out: &mut Out) -> Result<i32> {
    check_listen(&opts.listen, opts.tls.is_some())?;
    let max_label = parse_label(&opts.max_label)?;
    let users = Users::load(&opts.users)?;
    if users.is_empty() {
        return Err(ClientError::Usage(format!(
            "{} holds no users; add one with `kring taxii passwd {} NAME`",
            opts.users.display(),
            opts.users.display()
        )));
    }
    let tls = opts
        .tls
        .as_ref()
        .map(|(c, k)| tls::config(c, k))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ClientError::io(opts.listen.to_string(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ClientError::io(opts.listen.to_string(), e))?;
    let (calls, mut incoming) = mpsc::channel(16);
    let state = Arc::new(State::new(users, max_label.clone(), calls, tls.is_some()));
    let app = router(state.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    let server = match tls {
        Some(config) => tokio::spawn(async move {
            axum::serve(tls::TlsListener::new(listener, config), app)
                .with_graceful_shutdown(shutdown)
                .await
        }),
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }),
    };
    out.line(&format!(
        "{}://{local}/taxii2/",
        if opts.tls.is_some() { "https" } else { "http" }
    ));
    eprintln!(
        "kring: serving TAXII 2.1 for {} (notices within {max_label} that may leave Kring); \
         Ctrl-C stops",
        client.user()
    );
    let mut device = Device {
        max_label,
        last_sync: None,
    };
    let result = loop {
        tokio::select! {
            call = incoming.recv() => match call {
                Some(call) => {
                    if let Err(e) = device.answer(client, call).await {
                        break Err(e);
                    }
                }
                None => break Ok(EXIT_OK),
            },
            _ = tokio::signal::ctrl_c() => break Ok(EXIT_OK),
            _ = terminated() => break Ok(EXIT_OK),
        }
    };
    let _ = stop.send(true);
    // Calls still queued get no answer; their requests end with 503.
    drop(incoming);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    result
}

#[cfg(unix)]
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}

/// The device side of the service.
struct Device {
    max_label: Label,
    last_sync: Option<Instant>,
}

impl Device {
    /// Answers one call; an error stops the service (a revoked device).
    async fn answer(&mut self, client: &mut Client, call: Call) -> Result<()> {
        match call {
            Call::Snapshot(reply) => {
                let snapshot = self.snapshot(client).await?;
                let _ = reply.send(snapshot);
            }
            Call::File(filing, reply) => {
                let result = self.file(client, filing).await;
                match result {
                    Err(e) if Client::is_revocation(&e) => {
                        let _ = reply.send(Err(Refusal::Unavailable(e.to_string())));
                        return Err(e);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(refusal(&e)));
                    }
                    Ok(Filed::Refused(reason)) => {
                        let _ = reply.send(Err(Refusal::Policy(reason)));
                    }
                    Ok(Filed::Ok(id)) => {
                        let _ = reply.send(Ok(id));
                    }
                }
            }
        }
        Ok(())
    }

    async fn sync(&mut self, client: &mut Client) -> Result<()> {
        if self.last_sync.is_some_and(|t| t.elapsed() < SYNC_INTERVAL) {
            return Ok(());
        }
        match client.sync().await {
            Ok(_) => {}
            Err(e) if Client::is_revocation(&e) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "sync failed; serving what this device has"),
        }
        self.last_sync = Some(Instant::now());
        Ok(())
    }

    async fn snapshot(
        &mut self,
        client: &mut Client,
    ) -> Result<std::result::Result<Vec<Community>, SnapshotError>> {
        self.sync(client).await?;
        let org = client.me.organisation.clone();
        let records = match client.store().communities() {
            Ok(r) => r,
            Err(e) => return Ok(Err(SnapshotError::Device(e.into()))),
        };
        let mut out = Vec::new();
        for record in records.into_iter().filter(|r| r.active) {
            let notices = match client.notices(Some(&record.id)) {
                Ok(n) => n,
                Err(e) => return Ok(Err(SnapshotError::Device(e))),
            };
            let shown = notices
                .into_iter()
                .filter(|n| admits(&n.label, &self.max_label, &org).is_ok())
                .map(|notice| Shown {
                    organisation: organisation_of(client, &notice.sender),
                    notice,
                })
                .collect();
            out.push(Community {
                id: record.id,
                max_label: record.max_label,
                notices: shown,
            });
        }
        Ok(Ok(out))
    }

    async fn file(&mut self, client: &mut Client, filing: Filing) -> Result<Filed> {
        let filed = client
            .file_notice(NoticeDraft {
                community: filing.community,
                label: filing.label,
                kind: NoticeKind::Notice,
                category: filing.category,
                title: filing.title,
                body: filing.body,
                in_reply_to: None,
                stix: (!filing.stix.is_empty()).then_some(filing.stix),
                attachments: Vec::new(),
            })
            .await?;
        self.last_sync = None;
        Ok(match &filed.ordering {
            Ordering::Refused { hop, reason } => {
                Filed::Refused(format!("refused by {hop}: {reason}"))
            }
            _ => Filed::Ok(filed.notice.id),
        })
    }
}

enum Filed {
    Ok(Uuid),
    Refused(String),
}

fn refusal(e: &ClientError) -> Refusal {
    match e.exit_code() {
        EXIT_POLICY => Refusal::Policy(e.to_string()),
        EXIT_USAGE => Refusal::Invalid(e.to_string()),
        _ => Refusal::Unavailable(e.to_string()),
    }
}

/// Runs `kring taxii passwd FILE NAME` with the password on stdin.
pub fn passwd(file: &std::path::Path, name: &str) -> Result<i32> {
    users::passwd(file, name, &mut std::io::stdin().lock())?;
    eprintln!("kring: password of {name} set in {}", file.display());
    Ok(EXIT_OK)
}
