//! The metrics endpoint: a small HTTP/1.1 server for `/metrics` (OpenMetrics or the
//! classic Prometheus text) and `/healthz`, with strictly parsed, bounded request
//! heads and a cap on connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{GaugeSource, Metrics};

/// Largest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Deadline for a request head to arrive, and for the answer to be written.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
const MAX_HTTP_CONNECTIONS: usize = 16;
/// Content type of `/metrics` for a scraper that asks for OpenMetrics (Prometheus
/// does).
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of `/metrics` otherwise: the classic Prometheus text format.
const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Health,
}

/// A parsed request: the route, and whether only the head is wanted (`HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// What.
    pub route: Route,
    /// `HEAD` rather than `GET`.
    pub head_only: bool,
    /// The `Accept` header asks for OpenMetrics.
    pub openmetrics: bool,
}

/// Why a request head is not answered with content: the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 400.
    BadRequest,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 431.
    TooLarge,
}

impl Refused {
    fn status(self) -> &'static str {
        match self {
            Refused::BadRequest => "400 Bad Request",
            Refused::NotFound => "404 Not Found",
            Refused::MethodNotAllowed => "405 Method Not Allowed",
            Refused::TooLarge => "431 Request Header Fields Too Large",
        }
    }
}

/// Where the request head ends in `buf` (after its blank line), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses a complete request head (sans-IO).
pub fn parse_head(head: &[u8]) -> Result<Asked, Refused> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(Refused::BadRequest)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| Refused::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::BadRequest);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refused::BadRequest);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Refused::MethodNotAllowed),
    };
    let path = target.split('?').next().unwrap_or(target);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        _ => return Err(Refused::NotFound),
    };
    let openmetrics = head[line_end..]
        .split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        });
    Ok(Asked {
        route,
        head_only,
        openmetrics,
    })
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text exposition as
/// [`Metrics::encode`] writes it: a counter family is named with its `_total`
/// suffix, and the `# UNIT` and `# EOF` lines, which that format does not have, are
/// left out. Everything else is the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match described {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// What the server needs of a running relay.
#[derive(Debug, Clone)]
pub struct Source {
    /// The relay (the server stops answering `/metrics` with data once it is gone).
    pub relay: Weak<dyn GaugeSource>,
    /// The relay's metrics (kept for `/healthz` after the relay is gone).
    pub metrics: Arc<Metrics>,
    /// The store directory (its size on disk).
    pub data_dir: PathBuf,
}

impl Source {
    /// The answer to `asked`.
    fn answer(&self, asked: Asked) -> Vec<u8> {
        match asked.route {
            Route::Health => match self.metrics.unhealthy() {
                None if self.relay.strong_count() > 0 => {
                    response("200 OK", "text/plain", "ok\n", asked.head_only)
                }
                None => response(
                    "503 Service Unavailable",
                    "text/plain",
                    "stopped\n",
                    asked.head_only,
                ),
                Some(why) => response(
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{why}\n"),
                    asked.head_only,
                ),
            },
            Route::Metrics => {
                let body = {
                    let _one = self
                        .metrics
                        .scraping
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(relay) = self.relay.upgrade() {
                        self.metrics.refresh(&relay.gauges(), &self.data_dir);
                    }
                    self.metrics.encode()
                };
                if asked.openmetrics {
                    response("200 OK", OPENMETRICS_TYPE, &body, asked.head_only)
                } else {
                    let body = to_prometheus_text(&body);
                    response("200 OK", PROMETHEUS_TYPE, &body, asked.head_only)
                }
            }
        }
    }
}

/// Binds the metrics listener (before the relay reports that it is listening, so a
/// bad address is an error at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, source: Source) {
    let permits = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, go on.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            answer(stream, &source).await;
            drop(permit);
        });
    }
}

/// Reads one request head (bounded, within [`IO_TIMEOUT`]), answers, closes.
async fn answer(mut stream: TcpStream, source: &Source) {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = head_end(&buf) {
                return parse_head(&buf[..end]);
            }
            if buf.len() >= MAX_HEAD {
                return Err(Refused::TooLarge);
            }
            let want = chunk.len().min(MAX_HEAD - buf.len());
            match stream.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return Err(Refused::BadRequest),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let out = match tokio::time::timeout(IO_TIMEOUT, read).await {
        Err(_) => return,
        Ok(Ok(asked)) => {
            let source = source.clone();
            // Reading the store's outboxes and walking its directory block.
            match tokio::task::spawn_blocking(move || source.answer(asked)).await {
                Ok(out) => out,
                Err(_) => response("500 Internal Server Error", "text/plain", "error\n", false),
            }
        }
        Ok(Err(refused)) => response(refused.status(), "text/plain", "\n", false),
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
