//! The local control channel of a running relay: a Unix socket `control.sock` in
//! its data directory (mode 0600, in a directory of mode 0700: only the relay's own
//! user, and root, can connect), used by `kring-relay backup` and `kring-relay
//! reload`.
//!
//! One request per connection: a JSON line `{"command":"backup"}` or
//! `{"command":"reload"}`. The answer is a JSON line ([`Answer`]); for a backup it
//! is followed by exactly `bytes` bytes of the backup file ([`crate::backup`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::backup::BackupError;
use crate::error::{RelayError, ReloadError};
use crate::relay::Relay;

/// The socket's file name in the data directory.
pub const SOCKET: &str = "control.sock";
/// Longest request line.
const MAX_REQUEST: u64 = 4096;
/// How long a request line may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// `backup` or `reload`.
    pub command: String,
}

/// The answer line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the command succeeded.
    pub ok: bool,
    /// What happened (or why not).
    pub message: String,
    /// For a backup: how many bytes of backup follow.
    #[serde(default)]
    pub bytes: u64,
}

/// A reload asked for on the control socket: the answer goes back on the sender.
pub type ReloadRequest = oneshot::Sender<Result<String, crate::error::ReloadError>>;

/// The socket path for `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Binds the control socket (replacing a stale one: the store's lock makes sure no
/// other relay uses this data directory).
pub fn bind(data_dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Serves the control socket until the relay stops.
pub async fn serve(
    relay: Arc<Relay>,
    listener: tokio::net::UnixListener,
    data_dir: PathBuf,
    reloads: mpsc::Sender<ReloadRequest>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let relay = relay.clone();
        let data_dir = data_dir.clone();
        let reloads = reloads.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(relay, stream, &data_dir, reloads).await {
                tracing::warn!(error = %e, "control request failed");
            }
        });
    }
}

async fn answer(stream: &mut tokio::net::UnixStream, a: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(a).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn handle(
    relay: Arc<Relay>,
    mut stream: tokio::net::UnixStream,
    data_dir: &Path,
    reloads: mpsc::Sender<ReloadRequest>,
) -> std::io::Result<()> {
    let mut line = String::new();
    let read = {
        let mut reader = tokio::io::BufReader::new((&mut stream).take(MAX_REQUEST));
        tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await
    };
    let fail = |message: String| Answer {
        ok: false,
        message,
        bytes: 0,
    };
    let request = match read {
        Ok(Ok(_)) => serde_json::from_str::<ControlRequest>(line.trim()),
        _ => {
            return answer(&mut stream, &fail("no request line".into())).await;
        }
    };
    let Ok(request) = request else {
        return answer(&mut stream, &fail("not a control request".into())).await;
    };
    match request.command.as_str() {
        "backup" => {
            tracing::info!(request = "backup", "control request");
            match write_backup(&relay, data_dir).await {
                Ok((path, header, bytes)) => {
                    let sent = async {
                        answer(
                            &mut stream,
                            &Answer {
                                ok: true,
                                message: format!(
                                    "backup of relay {}: {} records, sha256 {}",
                                    header.relay, header.pairs, header.sha256
                                ),
                                bytes,
                            },
                        )
                        .await?;
                        let mut file = tokio::fs::File::open(&path).await?;
                        tokio::io::copy(&mut file, &mut stream).await?;
                        stream.flush().await
                    }
                    .await;
                    let _ = tokio::fs::remove_file(&path).await;
                    sent?;
                    tracing::info!(records = header.pairs, bytes, "backup sent");
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = %e, "backup failed");
                    answer(&mut stream, &fail(format!("backup failed: {e}"))).await
                }
            }
        }
        "reload" => {
            tracing::info!(request = "reload", "control request");
            let (tx, rx) = oneshot::channel();
            let result = match reloads.send(tx).await {
                Ok(()) => rx
                    .await
                    .unwrap_or(Err(ReloadError::Unavailable("the relay is stopping"))),
                Err(_) => Err(ReloadError::Unavailable("this relay cannot reload")),
            };
            let a = match result {
                Ok(message) => Answer {
                    ok: true,
                    message,
                    bytes: 0,
                },
                Err(error) => fail(error.to_string()),
            };
            answer(&mut stream, &a).await
        }
        other => answer(&mut stream, &fail(format!("unknown command {other:?}"))).await,
    }
}

/// Writes a consistent backup of the running relay to a file in its data
/// directory (no batch applied while it is written; complete once everything in it
/// is on disk). Returns the file, its header and its size.
async fn write_backup(
    relay: &Arc<Relay>,
    data_dir: &Path,
) -> Result<(PathBuf, crate::backup::BackupHeader, u64), BackupError> {
    let path = data_dir.join(format!("backup-{}.partial", uuid::Uuid::new_v4()));
    let at = |source: std::io::Error, path: &Path| BackupError::Io {
        path: path.display().to_string(),
        source,
    };
    let result = async {
        let snapshot = {
            let relay = relay.clone();
            let path = path.clone();
            let signer = relay.write(|w, _| Ok(w.audit.signer()))?.ok_or_else(|| {
                RelayError::OwnIdentity {
                    what: "certificate key",
                    reason: "none is loaded, so the backup cannot be signed".into(),
                }
            })?;
            tokio::task::spawn_blocking(move || {
                let mut options = std::fs::OpenOptions::new();
                options.read(true).write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    options.mode(0o600);
                }
                let mut file = options.open(&path).map_err(|e| at(e, &path))?;
                let header = relay.durability().exclusive(|engine| {
                    crate::backup::write_store(engine, &signer, crate::now(), &mut file, &path)
                })?;
                file.sync_all().map_err(|e| at(e, &path))?;
                let bytes = file.metadata().map_err(|e| at(e, &path))?.len();
                Ok::<_, BackupError>((header, bytes))
            })
            .await
            .map_err(RelayError::from)??
        };
        // Everything in the backup must be on disk here before the backup counts.
        relay.durable().await?;
        Ok::<_, BackupError>(snapshot)
    }
    .await;
    match result {
        Ok((header, bytes)) => Ok((path, header, bytes)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// The client side: sends `command` to the relay running on `data_dir`. `None` if
/// no relay is running there (no socket, or nobody listening).
pub fn connect(data_dir: &Path) -> std::io::Result<Option<std::os::unix::net::UnixStream>> {
    match std::os::unix::net::UnixStream::connect(socket_path(data_dir)) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Sends `command` on `stream` and reads the answer line.
pub fn request<'a>(
    stream: &'a mut std::os::unix::net::UnixStream,
    command: &str,
) -> std::io::Result<(
    Answer,
    std::io::BufReader<&'a mut std::os::unix::net::UnixStream>,
)> {
    use std::io::{BufRead as _, Write as _};
    let mut line = serde_json::to_vec(&ControlRequest {
        command: command.to_string(),
    })
    .map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let answer: Answer = serde_json::from_str(answer.trim())
        .map_err(|e| std::io::Error::other(format!("the relay's answer is not readable: {e}")))?;
    Ok((answer, reader))
}
