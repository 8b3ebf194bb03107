//! A relay's `/metrics` from tests: turn it on, fetch it, read one series.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Federation, HarnessError, Result};

/// Adds `[metrics] listen` on a free loopback port to relay `id`'s configuration
/// (before it starts) and returns that address.
pub fn enable_metrics(fed: &Federation, id: &str) -> Result<SocketAddr> {
    let fail = |e: std::io::Error| HarnessError::Relay {
        id: id.to_string(),
        reason: format!("cannot turn on metrics: {e}"),
    };
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(fail)?;
    let path = fed.relay_config(id);
    let text = std::fs::read_to_string(&path).map_err(fail)?;
    std::fs::write(&path, format!("{text}\n[metrics]\nlisten = \"{addr}\"\n")).map_err(fail)?;
    Ok(addr)
}

/// One HTTP/1.1 GET: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let bad = || std::io::Error::other(format!("not an HTTP answer: {out:?}"));
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// The value of one series (`name` or `name{labels}` exactly as exposed), 0 if
/// absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
