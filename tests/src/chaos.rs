//! Fault injection for the robustness tests (`tests/tests/torture.rs`,
//! `link_faults.rs`, `hostile.rs`, `cert_matrix.rs`): a seeded random generator,
//! access to relay processes (pid, signals, memory), relay options, offline reads of
//! a relay's store, and raw QUIC connections that send arbitrary bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::{Federation, HarnessError, Result, read_toml, write_toml};

/// A tiny deterministic random generator (xorshift64*). Not for cryptography.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// From a seed (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Seeded from environment variable `var` if set (decimal or `0x` hex), else from
    /// the clock. Prints the seed (and how to repeat the run) to stderr.
    pub fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| {
                let s = s.trim();
                match s.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => s.parse().ok(),
                }
            })
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("random seed {seed} (repeat with {var}={seed})");
        Self::new(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform-ish in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A positive number from environment variable `var`, else `default`.
pub fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl Federation {
    /// `DIR/relays/ID`.
    pub fn relay_dir(&self, id: &str) -> PathBuf {
        self.dir.join("relays").join(id)
    }

    /// The relay's store directory (`data_dir = "data"` in the minted configs).
    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.relay_dir(id).join("data")
    }

    /// The relay's log file (stderr of every run, appended).
    pub fn log_file(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }

    /// Process id of the running relay.
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.relays.get(id).map(|p| p.child.id())
    }

    /// Sets a top-level key of `relay.toml` (e.g. `requests_per_second`). Takes
    /// effect when the relay (re)starts.
    pub fn set_relay_option(&self, id: &str, key: &str, value: toml::Value) -> Result<()> {
        let path = self.relay_config(id);
        let mut t = read_toml(&path)?;
        t.insert(key.into(), value);
        write_toml(&path, &t)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running relay with `kill -SIG PID`.
    pub fn signal(&self, id: &str, sig: &str) -> Result<()> {
        let rerr = |reason: String| HarnessError::Relay {
            id: id.to_string(),
            reason,
        };
        let pid = self.pid(id).ok_or_else(|| rerr("not running".into()))?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| rerr(format!("kill -{sig}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(rerr(format!("kill -{sig} {pid}: {status}")))
        }
    }

    /// Runs a `kring-relay` subcommand for relay `id` (`backup --out F`, `restore
    /// --from F`, `reload`, ...) with its `--config`, and returns what it printed.
    pub fn relay_tool(&self, id: &str, args: &[&str]) -> Result<std::process::Output> {
        let (prog, lead) =
            self.launcher
                .command
                .split_first()
                .ok_or_else(|| HarnessError::Relay {
                    id: id.to_string(),
                    reason: "empty launcher".into(),
                })?;
        Command::new(prog)
            .args(lead)
            .args(args)
            .arg("--config")
            .arg(self.relay_config(id))
            .output()
            .map_err(|e| HarnessError::Relay {
                id: id.to_string(),
                reason: format!("cannot run {args:?}: {e}"),
            })
    }

    /// Resident memory of the running relay in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self, id: &str) -> Option<u64> {
        rss_kib(self.pid(id)?)
    }

    /// Opens the store of a relay that is not running (offline inspection).
    pub fn open_store(&self, id: &str) -> Result<kring_relay::store::SledEngine> {
        if self.is_running(id) {
            return Err(HarnessError::Relay {
                id: id.to_string(),
                reason: "is running; stop it before opening its store".into(),
            });
        }
        kring_relay::store::SledEngine::open(&self.data_dir(id)).map_err(|e| HarnessError::Relay {
            id: id.to_string(),
            reason: format!("store does not open: {e}"),
        })
    }

    /// Renews relay `id`'s certificate as an operator would: a new key, a new
    /// certificate from the same organisation CA with the same accreditation,
    /// written over `relay.crt` and `relay.key`. Takes effect when the relay
    /// (re)starts or reloads.
    pub fn renew_relay_certificate(&self, id: &str) -> Result<()> {
        let pki_err = |e: &dyn std::fmt::Display| HarnessError::Pki(e.to_string());
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| HarnessError::File {
                path: p.clone(),
                reason: e.to_string(),
            })
        };
        let dir = self.relay_dir(id);
        let current = kring_protocol::identity::certificates_from_pem(
            read(dir.join("relay.crt"))?.as_bytes(),
        )
        .map_err(|e| pki_err(&e))?;
        let identity = current
            .first()
            .ok_or_else(|| HarnessError::Pki("relay.crt holds no certificate".into()))
            .and_then(|leaf| {
                kring_protocol::identity::Identity::from_der(leaf).map_err(|e| pki_err(&e))
            })?;
        let root = kring_certs_dev::Authority::load(
            kring_certs_dev::ROOT_ORGANISATION,
            &read(self.dir.join("ca/root.crt"))?,
            &read(self.dir.join("ca/root.key"))?,
        )
        .map_err(|e| pki_err(&e))?;
        let org_dir = kring_certs_dev::org_dir(&self.dir, &identity.organisation);
        let org = kring_certs_dev::Authority::load(
            &identity.organisation,
            &read(org_dir.join("ca.crt"))?,
            &read(org_dir.join("ca.key"))?,
        )
        .map_err(|e| pki_err(&e))?;
        let pki = kring_certs_dev::Pki::from_authorities(super::now(), root, vec![org]);
        let mut spec = kring_certs_dev::RelaySpec::new(id, &identity.organisation);
        if let Some(accreditation) = identity.clearance {
            spec = spec.with_accreditation(accreditation);
        }
        let cert = pki.issue_relay(&spec).map_err(|e| pki_err(&e))?;
        for (file, text) in [("relay.crt", &cert.chain_pem), ("relay.key", &cert.key_pem)] {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|e| HarnessError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Every log entry of `community` in a relay's store (read offline), by sequence.
pub fn stored_log(
    engine: &dyn kring_relay::store::Engine,
    community: &str,
) -> std::result::Result<Vec<kring_protocol::wire::LogEntry>, String> {
    let prefix = kring_relay::store::keys::log_prefix(community);
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine
            .scan(&prefix, after.as_deref(), 256)
            .map_err(|e| e.to_string())?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        after = Some(last.clone());
        for (k, v) in &page {
            out.push(kring_relay::store::decode(k, v).map_err(|e| e.to_string())?);
        }
    }
}

/// The private key in a PEM file: a user key encrypted under the passphrase in the
/// `passphrase` file beside it (as `kring-certs-dev` writes them), or a key in the
/// clear.
pub fn private_key(
    key_pem: &Path,
) -> std::result::Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    let s = |e: &dyn std::fmt::Display| format!("{}: {e}", key_pem.display());
    let text = std::fs::read_to_string(key_pem).map_err(|e| s(&e))?;
    let passphrase = match key_pem.parent() {
        Some(dir) if kring_protocol::keyfile::is_encrypted(&text) => {
            let p = dir.join(kring_certs_dev::PASSPHRASE_FILE);
            std::fs::read_to_string(&p).map_err(|e| s(&e))?
        }
        _ => String::new(),
    };
    // Decrypted once per process: tests open many connections in quick succession.
    type Decrypted = std::collections::BTreeMap<(String, String), Vec<u8>>;
    static DECRYPTED: std::sync::Mutex<Decrypted> = std::sync::Mutex::new(Decrypted::new());
    let id = (text.clone(), passphrase.clone());
    let cached = DECRYPTED.lock().ok().and_then(|c| c.get(&id).cloned());
    let der = match cached {
        Some(der) => der,
        None => {
            let der = kring_protocol::keyfile::decrypt_pem(&text, passphrase.trim_end().as_bytes())
                .map_err(|e| s(&e))?
                .to_vec();
            if let Ok(mut c) = DECRYPTED.lock() {
                c.insert(id, der.clone());
            }
            der
        }
    };
    Ok(rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(der),
    ))
}

/// A QUIC client endpoint presenting an arbitrary chain and key (PEM files) with
/// the given ALPN, trusting the federation root; bypasses every client-side check.
pub fn raw_endpoint(
    fed: &Federation,
    chain_pem: &Path,
    key_pem: &Path,
    alpn: &[u8],
) -> std::result::Result<quinn::Endpoint, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain_pem)
        .map_err(|e| s(&e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| s(&e))?;
    let key = private_key(key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for a in CertificateDer::pem_file_iter(fed.dir.join("ca/root.crt")).map_err(|e| s(&e))? {
        roots.add(a.map_err(|e| s(&e))?).map_err(|e| s(&e))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| s(&e))?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .map_err(|e| s(&e))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| s(&e))?;
    let mut endpoint = quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| s(&e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    Ok(endpoint)
}

/// A QUIC connection to relay `to` presenting an arbitrary chain and key (PEM files)
/// with the given ALPN, bypassing every client-side check. The endpoint must live as
/// long as the connection.
pub async fn raw_connect(
    fed: &Federation,
    to: &str,
    chain_pem: &Path,
    key_pem: &Path,
    alpn: &[u8],
) -> std::result::Result<(quinn::Endpoint, quinn::Connection), String> {
    let endpoint = raw_endpoint(fed, chain_pem, key_pem, alpn)?;
    let addr = fed.relay_addr(to).ok_or("unknown relay")?;
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint
            .connect(addr, &format!("{to}.relay.kring"))
            .map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake refused: {e}"))?;
    Ok((endpoint, conn))
}

/// A raw connection as `user` (their profile's certificate and key), ALPN `kring/1`.
pub async fn raw_user_connect(
    fed: &Federation,
    user: &str,
) -> std::result::Result<(quinn::Endpoint, quinn::Connection), String> {
    let dir = fed.user_dir(user);
    let relay = user.split_once('@').map(|(_, r)| r).unwrap_or_default();
    raw_connect(
        fed,
        relay,
        &dir.join("user.crt"),
        &dir.join("user.key"),
        kring_protocol::wire::ALPN_CLIENT,
    )
    .await
}

/// Opens a stream, writes `bytes` (then finishes the stream if `finish`), and reads
/// everything the relay answers on it (within 10 s). The answer's raw bytes.
pub async fn raw_stream(
    conn: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> std::result::Result<Vec<u8>, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        match send.write_all(bytes).await {
            // The relay may refuse before reading everything (an oversized frame):
            // its answer is still on the receive side.
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => return Err(e.to_string()),
            Ok(()) => {
                if finish {
                    let _ = send.finish();
                }
            }
        }
        recv.read_to_end(kring_protocol::wire::DEFAULT_MAX_FRAME + 4)
            .await
            .map_err(|e| format!("{e} ({:?})", conn.close_reason()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Decodes a relay's answer frame (4-byte length header, then the payload).
pub fn decode_answer<T: serde::de::DeserializeOwned + kring_protocol::wire::Validate>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    use kring_protocol::wire::FRAME_HEADER;
    if bytes.len() < FRAME_HEADER {
        return Err(format!("no answer frame ({} bytes)", bytes.len()));
    }
    kring_protocol::wire::decode_payload::<T>(&bytes[FRAME_HEADER..]).map_err(|e| e.to_string())
}

/// One request on a new stream of a raw connection; the relay's answer.
pub async fn raw_request(
    conn: &quinn::Connection,
    request: &kring_protocol::wire::Request,
) -> std::result::Result<kring_protocol::wire::Response, String> {
    let frame =
        kring_protocol::wire::encode_frame(request, kring_protocol::wire::DEFAULT_MAX_FRAME)
            .map_err(|e| e.to_string())?;
    decode_answer(&raw_stream(conn, &frame, true).await?)
}

/// Every file under `dir` (recursively) that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && !needle.is_empty()
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                out.push(p);
            }
        }
    }
    out
}

impl Federation {
    /// Points `relay`'s configured address of `peer` at `addr` (e.g. a [`UdpLink`]).
    /// Takes effect when `relay` (re)starts.
    pub fn set_peer_address(
        &self,
        relay: &str,
        peer: &str,
        addr: std::net::SocketAddr,
    ) -> Result<()> {
        let path = self.relay_config(relay);
        let mut t = read_toml(&path)?;
        if let Some(toml::Value::Array(peers)) = t.get_mut("peers") {
            for p in peers.iter_mut() {
                if let Some(tbl) = p.as_table_mut()
                    && tbl.get("id").and_then(|v| v.as_str()) == Some(peer)
                {
                    tbl.insert("address".into(), addr.to_string().into());
                }
            }
        }
        write_toml(&path, &t)
    }
}

/// A UDP forwarder standing in for a network link between one QUIC client (a relay
/// dialling a peer) and a server address, that can be cut (every datagram dropped,
/// both ways, or only those towards the server) and healed. Runs on the current
/// tokio runtime until dropped.
#[derive(Debug)]
pub struct UdpLink {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    cut_to_server: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpLink {
    /// Listens on 127.0.0.1 and forwards to `to`.
    pub async fn start(to: std::net::SocketAddr) -> std::io::Result<UdpLink> {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(to).await?;
        let addr = front.local_addr()?;
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_cut = cut.clone();
        let cut_to_server = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_cut_to_server = cut_to_server.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<std::net::SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if !is_cut.load(std::sync::atomic::Ordering::SeqCst)
                            && !is_cut_to_server.load(std::sync::atomic::Ordering::SeqCst)
                        {
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { continue };
                        if let Some(c) = client
                            && !is_cut.load(std::sync::atomic::Ordering::SeqCst)
                        {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Ok(UdpLink {
            addr,
            cut,
            cut_to_server,
            task,
        })
    }

    /// The address to dial instead of the server's.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops (`true`) or passes again (`false`) only what the client sends: the
    /// server's datagrams still reach the client, so the server's requests arrive
    /// and the client acts on them, but its answers are lost.
    pub fn set_cut_to_server(&self, cut: bool) {
        self.cut_to_server
            .store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for UdpLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(action, detail)` of every record of a relay's audit log, oldest first (the
/// relay must be stopped).
pub fn audit_actions(engine: &dyn kring_relay::store::Engine) -> Vec<(String, String)> {
    let prefix = kring_relay::store::keys::AUDIT;
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let Ok(page) = engine.scan(prefix, after.as_deref(), 256) else {
            return out;
        };
        let Some((last, _)) = page.last() else {
            return out;
        };
        after = Some(last.clone());
        for (k, v) in &page {
            if let Ok(r) = kring_relay::store::decode::<kring_relay::audit::AuditRecord>(k, v) {
                out.push((r.event.action, r.event.detail));
            }
        }
    }
}
