//! The Kring test harness: a federation from a freshly minted development PKI, relays
//! as real `kring-relay` processes on 127.0.0.1 with ports chosen by the OS, and
//! in-process clients. Used by the integration tests in `tests/tests/` and by
//! `kring-demo`.
//!
//! Relay processes are started from an executable that understands
//! `<exe> relay --config FILE` (the `kring-demo` binary embeds the relay's command
//! line for exactly this purpose), so tests and the demo need no separately built
//! `kring-relay` binary.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Creating the PKI failed.
    #[error("dev PKI: {0}")]
    Pki(String),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A relay process failed to start or stop.
    #[error("relay {id}: {reason}")]
    Relay {
        /// Relay id.
        id: String,
        /// What went wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, HarnessError>;

fn file_err(path: &Path, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// How to start a relay process: a program and the arguments before `--config FILE`.
#[derive(Debug, Clone)]
pub struct RelayLauncher {
    /// Program and leading arguments.
    pub command: Vec<OsString>,
}

impl RelayLauncher {
    /// `<exe> relay --config FILE`: for a `kring-demo` executable.
    pub fn demo_binary(exe: impl Into<OsString>) -> Self {
        Self {
            command: vec![exe.into(), "relay".into()],
        }
    }
}

/// A running relay process.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    /// Its address.
    pub addr: std::net::SocketAddr,
}

/// A local federation for tests and the demo.
#[derive(Debug)]
pub struct Federation {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    launcher: RelayLauncher,
    addrs: BTreeMap<String, std::net::SocketAddr>,
    relays: BTreeMap<String, RelayProcess>,
    log_dir: PathBuf,
}

pub mod bench_support;
pub mod chaos;
pub mod demo;
pub mod scrape;
pub mod steps;

/// Relay ids of the demo federation.
pub const RELAYS: [&str; 4] = ["bz", "nctv", "aivd", "post-a"];

/// Picks `n` distinct free UDP ports on 127.0.0.1 for relays that bind them later.
///
/// A port picked here is free when picked but not held, so it must not be one the
/// kernel may hand to any socket bound to port 0 meanwhile (the devices' and
/// relays' own client sockets, other tests): ports come from below the kernel's
/// ephemeral range, never twice in one process, and from a stretch chosen by the
/// process id so that concurrent test processes do not meet.
pub fn free_udp_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ceiling = ephemeral_floor().clamp(FLOOR + 1_000, u32::from(u16::MAX));
    let span = ceiling - FLOOR;
    let start = FLOOR + (std::process::id().wrapping_mul(997) % span);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(FLOOR + (start - FLOOR + offset) % span) else {
            continue;
        };
        if given.contains(&port) {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            out.push(port);
        }
    }
    if out.len() < n {
        return Err(HarnessError::Pki(format!(
            "cannot find {n} free ports on 127.0.0.1 below {ceiling}"
        )));
    }
    Ok(out)
}

/// The lowest port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl Federation {
    /// Mints the demo federation into a fresh temporary directory, with ports
    /// chosen by the OS. Nothing is started yet.
    pub fn create(launcher: RelayLauncher) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("kring-fed-")
            .tempdir()
            .map_err(|e| HarnessError::Pki(e.to_string()))?;
        let dir = tmp.path().join("federation");
        let mut fed = Self::create_in(&dir, launcher)?;
        if std::env::var_os("KRING_TEST_KEEP").is_some() {
            // Keep the directory (logs, stores) for a post-mortem.
            eprintln!("kring test federation kept in {}", tmp.keep().display());
        } else {
            fed._tmp = Some(tmp);
        }
        Ok(fed)
    }

    /// As [`Federation::create`], in `dir` (kept afterwards).
    pub fn create_in(dir: &Path, launcher: RelayLauncher) -> Result<Self> {
        kring_certs_dev::init_demo(dir, 47100, false, now())
            .map_err(|e| HarnessError::Pki(e.to_string()))?;
        let ports = free_udp_ports(RELAYS.len())?;
        let addrs: BTreeMap<String, std::net::SocketAddr> = RELAYS
            .iter()
            .zip(ports)
            .map(|(id, p)| {
                (
                    id.to_string(),
                    std::net::SocketAddr::from(([127, 0, 0, 1], p)),
                )
            })
            .collect();
        let fed = Self {
            dir: dir.to_path_buf(),
            _tmp: None,
            launcher,
            addrs,
            relays: BTreeMap::new(),
            log_dir: dir.join("logs"),
        };
        fed.rewrite_addresses()?;
        std::fs::create_dir_all(&fed.log_dir).map_err(|e| file_err(&fed.log_dir, e))?;
        Ok(fed)
    }

    fn rewrite_addresses(&self) -> Result<()> {
        for id in RELAYS {
            let path = self.relay_config(id);
            let mut t = read_toml(&path)?;
            t.insert("listen".into(), self.addrs[id].to_string().into());
            if let Some(toml::Value::Array(peers)) = t.get_mut("peers") {
                for p in peers.iter_mut() {
                    if let Some(tbl) = p.as_table_mut()
                        && let Some(pid) =
                            tbl.get("id").and_then(|v| v.as_str()).map(str::to_string)
                        && let Some(a) = self.addrs.get(&pid)
                    {
                        tbl.insert("address".into(), a.to_string().into());
                    }
                }
            }
            write_toml(&path, &t)?;
        }
        for user in self.users()? {
            self.rewrite_profile(&user)?;
        }
        Ok(())
    }

    fn rewrite_profile(&self, user: &str) -> Result<()> {
        let path = self.user_dir(user).join("profile.toml");
        let mut t = read_toml(&path)?;
        let relay = t
            .get("relay_id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        if let Some(a) = self.addrs.get(&relay) {
            t.insert("relay".into(), a.to_string().into());
        }
        write_toml(&path, &t)
    }

    /// The federation directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/relays/ID/relay.toml`.
    pub fn relay_config(&self, id: &str) -> PathBuf {
        self.dir.join("relays").join(id).join("relay.toml")
    }

    /// `DIR/users/USER` (a profile directory).
    pub fn user_dir(&self, user: &str) -> PathBuf {
        self.dir.join("users").join(user)
    }

    /// The users that have a profile.
    pub fn users(&self) -> Result<Vec<String>> {
        let d = self.dir.join("users");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).map_err(|e| file_err(&d, e))? {
            let e = e.map_err(|e| file_err(&d, e))?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Adds a user with the given clearance and roles (signed by the home relay's
    /// organisation CA) and points their profile at the relay.
    pub fn issue_user(&self, user: &str, clearance: &str, roles: &[&str]) -> Result<PathBuf> {
        let request = kring_certs_dev::IssueUserRequest {
            user: user.to_string(),
            clearance: clearance
                .parse()
                .map_err(|e: kring_policy::PolicyError| HarnessError::Pki(e.to_string()))?,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            not_after: None,
            force: false,
        };
        kring_certs_dev::issue_user_into(&self.dir, &request, now())
            .map_err(|e| HarnessError::Pki(e.to_string()))?;
        self.rewrite_profile(user)?;
        Ok(self.user_dir(user))
    }

    /// The relay's address.
    pub fn relay_addr(&self, id: &str) -> Option<std::net::SocketAddr> {
        self.addrs.get(id).copied()
    }

    /// Starts a relay process and waits until it listens.
    pub fn start(&mut self, id: &str) -> Result<()> {
        self.start_with_env(id, &[])
    }

    /// [`Federation::start`] with extra environment variables for the relay process,
    /// such as `KRING_FAILPOINT` (`kring_relay::store::failpoint`), which a relay
    /// never inherits from the test process.
    pub fn start_with_env(&mut self, id: &str, env: &[(&str, &str)]) -> Result<()> {
        if self.relays.contains_key(id) {
            return Ok(());
        }
        let rerr = |reason: String| HarnessError::Relay {
            id: id.to_string(),
            reason,
        };
        let log_path = self.log_dir.join(format!("{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| file_err(&log_path, e))?;
        let (prog, args) = self
            .launcher
            .command
            .split_first()
            .ok_or_else(|| rerr("empty launcher".into()))?;
        let mut child = Command::new(prog)
            .args(args)
            .arg("--config")
            .arg(self.relay_config(id))
            .env(
                "KRING_LOG",
                std::env::var("KRING_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("KRING_FAILPOINT")
            .env_remove("KRING_JOURNAL_FILE_BYTES")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| rerr(format!("cannot start: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| rerr("no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the relay never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    return Err(rerr(format!(
                        "did not start within 30 s; see {}",
                        log_path.display()
                    )));
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                        return Err(rerr(format!("exited with {status}: {log}")));
                    }
                }
            }
        };
        if !line.starts_with("kring-relay listening on") {
            let _ = child.kill();
            return Err(rerr(format!("unexpected first line: {line}")));
        }
        let addr = self.addrs[id];
        self.relays
            .insert(id.to_string(), RelayProcess { child, addr });
        Ok(())
    }

    /// Starts every relay.
    pub fn start_all(&mut self) -> Result<()> {
        for id in RELAYS {
            self.start(id)?;
        }
        Ok(())
    }

    /// Graceful stop (SIGTERM), waiting for the process to exit.
    pub fn stop(&mut self, id: &str) -> Result<()> {
        let Some(mut p) = self.relays.remove(id) else {
            return Ok(());
        };
        let pid = p.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = p.child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = p.child.kill();
                let _ = p.child.wait();
                return Err(HarnessError::Relay {
                    id: id.to_string(),
                    reason: "did not stop within 15 s of SIGTERM; killed".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Crash stop (SIGKILL).
    pub fn kill(&mut self, id: &str) {
        if let Some(mut p) = self.relays.remove(id) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Waits up to `timeout` for relay `id`'s process to end by itself (a failpoint);
    /// its exit status, or `None` if it is still running (or was not started).
    pub fn wait_exit(&mut self, id: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.relays.get_mut(id)?;
            if let Ok(Some(status)) = p.child.try_wait() {
                self.relays.remove(id);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the relay process is running.
    pub fn is_running(&self, id: &str) -> bool {
        self.relays.contains_key(id)
    }

    /// A client for `user`.
    pub fn client(
        &self,
        user: &str,
    ) -> std::result::Result<kring_client::Client, kring_client::ClientError> {
        kring_client::Client::open(self.user_dir(user))
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        for (_, mut p) in std::mem::take(&mut self.relays) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    text.parse::<toml::Table>().map_err(|e| file_err(path, e))
}

fn write_toml(path: &Path, t: &toml::Table) -> Result<()> {
    let text = toml::to_string(t).map_err(|e| file_err(path, e))?;
    std::fs::write(path, text).map_err(|e| file_err(path, e))
}

impl Federation {
    /// The federation root and organisation `org`'s CA, with their keys, as a PKI
    /// that mints certificates now (for certificates the demo does not have).
    pub fn org_pki(&self, org: &str) -> Result<kring_certs_dev::Pki> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| file_err(&p, e));
        let pki_err = |e: kring_certs_dev::CertsError| HarnessError::Pki(e.to_string());
        let root = kring_certs_dev::Authority::load(
            kring_certs_dev::ROOT_ORGANISATION,
            &read(self.dir.join("ca/root.crt"))?,
            &read(self.dir.join("ca/root.key"))?,
        )
        .map_err(pki_err)?;
        let dir = kring_certs_dev::org_dir(&self.dir, org);
        let ca = kring_certs_dev::Authority::load(
            org,
            &read(dir.join("ca.crt"))?,
            &read(dir.join("ca.key"))?,
        )
        .map_err(pki_err)?;
        Ok(kring_certs_dev::Pki::from_authorities(
            now(),
            root,
            vec![ca],
        ))
    }
}

/// Mints a user certificate with a deliberate defect (expired, foreign CA, relay
/// profile, …) signed by the home relay's organisation CA, and writes a profile for
/// it next to the others. Returns the profile directory.
pub fn issue_quirky_user(
    fed: &Federation,
    user: &str,
    quirk: kring_certs_dev::Quirk,
) -> Result<PathBuf> {
    let (name, relay) = user
        .split_once('@')
        .ok_or_else(|| HarnessError::Pki(format!("{user} is not NAME@RELAY")))?;
    let pki = fed.org_pki(relay)?;
    let clearance = "NL:STG-GEHEIM"
        .parse()
        .map_err(|e: kring_policy::PolicyError| HarnessError::Pki(e.to_string()))?;
    let spec = kring_certs_dev::UserSpec::new(name, relay, relay)
        .with_clearance(clearance)
        .with_quirk(quirk);
    let cert = pki
        .issue_user(&spec)
        .map_err(|e| HarnessError::Pki(e.to_string()))?;
    let dir = fed.user_dir(user);
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let template = fed
        .users()?
        .into_iter()
        .find(|u| u.ends_with(&format!("@{relay}")) && u != user)
        .ok_or_else(|| HarnessError::Pki(format!("no user of {relay} to copy a profile from")))?;
    let mut profile = read_toml(&fed.user_dir(&template).join("profile.toml"))?;
    profile.insert("user".into(), user.into());
    write_toml(&dir.join("profile.toml"), &profile)?;
    let crt = dir.join("user.crt");
    std::fs::write(&crt, &cert.chain_pem).map_err(|e| file_err(&crt, e))?;
    let key = dir.join("user.key");
    std::fs::write(&key, &cert.key_pem).map_err(|e| file_err(&key, e))?;
    // The template profile names its passphrase file (for the local archive).
    let pass = kring_certs_dev::PASSPHRASE_FILE;
    let from = fed.user_dir(&template).join(pass);
    std::fs::copy(&from, dir.join(pass)).map_err(|e| file_err(&from, e))?;
    Ok(dir)
}

/// A signal draft in the disinformation category.
pub fn signal(community: &str, label: &str, title: &str, body: &str) -> kring_client::NoticeDraft {
    kring_client::NoticeDraft {
        community: community.into(),
        label: label.into(),
        kind: kring_client::NoticeKind::Signal,
        category: kring_client::Category::Disinformation,
        title: title.into(),
        body: body.into(),
        in_reply_to: None,
        stix: None,
        attachments: Vec::new(),
    }
}

/// One request/response exchange with relay `to`, presenting an arbitrary
/// certificate chain and key (PEM files) with the given ALPN, bypassing every check
/// the client library or a peer relay would make. The answer, or why the
/// connection failed.
async fn raw_exchange<
    Q: serde::Serialize,
    A: serde::de::DeserializeOwned + kring_protocol::wire::Validate,
>(
    fed: &Federation,
    to: &str,
    chain_pem: &Path,
    key_pem: &Path,
    alpn: &[u8],
    request: &Q,
) -> std::result::Result<A, String> {
    use kring_protocol::wire;
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let endpoint = chaos::raw_endpoint(fed, chain_pem, key_pem, alpn)?;
    let addr = fed.relay_addr(to).ok_or("unknown relay")?;
    let conn = endpoint
        .connect(addr, &format!("{to}.relay.kring"))
        .map_err(|e| s(&e))?
        .await
        .map_err(|e| format!("handshake refused: {e}"))?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| s(&e))?;
        let frame = wire::encode_frame(request, wire::DEFAULT_MAX_FRAME).map_err(|e| s(&e))?;
        send.write_all(&frame).await.map_err(|e| s(&e))?;
        let _ = send.finish();
        let bytes = recv
            .read_to_end(wire::DEFAULT_MAX_FRAME + 4)
            .await
            .map_err(|e| format!("{e} ({:?})", conn.close_reason()))?;
        if bytes.len() < 4 {
            return Err(format!("connection closed: {:?}", conn.close_reason()));
        }
        wire::decode_payload::<A>(&bytes[4..]).map_err(|e| s(&e))
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_string())?;
    conn.close(0u32.into(), b"done");
    answer
}

/// Connects to relay `relay_id` with an arbitrary certificate chain and key (PEM
/// files), bypassing every client-side check, and sends one `Ping`. Returns the
/// relay's answer, or why the connection failed. Used to prove the relay itself
/// refuses bad certificates.
pub async fn raw_ping(
    fed: &Federation,
    relay_id: &str,
    chain_pem: &Path,
    key_pem: &Path,
) -> std::result::Result<kring_protocol::wire::Response, String> {
    use kring_protocol::wire::{ALPN_CLIENT, Request};
    raw_exchange(
        fed,
        relay_id,
        chain_pem,
        key_pem,
        ALPN_CLIENT,
        &Request::Ping,
    )
    .await
}

/// Connects to relay `to` as relay `as_relay` (with that relay's own certificate and
/// key, ALPN `kring-fed/1`) and sends one federation request, bypassing every check
/// `as_relay` itself would make. Models a compromised or buggy peer relay.
pub async fn raw_federation_call(
    fed: &Federation,
    as_relay: &str,
    to: &str,
    request: &kring_protocol::wire::FedRequest,
) -> std::result::Result<kring_protocol::wire::FedResponse, String> {
    let dir = fed.dir.join("relays").join(as_relay);
    let (crt, key) = (dir.join("relay.crt"), dir.join("relay.key"));
    raw_exchange(
        fed,
        to,
        &crt,
        &key,
        kring_protocol::wire::ALPN_FEDERATION,
        request,
    )
    .await
}

impl Federation {
    /// Sets, in `relay`'s configuration, the organisations its organisation declares
    /// as its clients (`clients`). Takes effect when `relay` (re)starts or reloads.
    pub fn set_declared_clients(&self, relay: &str, clients: &[&str]) -> Result<()> {
        let path = self.relay_config(relay);
        let mut t = read_toml(&path)?;
        let list = clients.iter().map(|c| toml::Value::from(*c)).collect();
        t.insert("clients".into(), toml::Value::Array(list));
        write_toml(&path, &t)
    }

    /// Lowers, in `relay`'s configuration, the accreditation it grants `peer`
    /// (`[[peers]] accreditation`). Takes effect when `relay` (re)starts or reloads.
    pub fn set_peer_accreditation(&self, relay: &str, peer: &str, label: &str) -> Result<()> {
        let path = self.relay_config(relay);
        let mut t = read_toml(&path)?;
        if let Some(toml::Value::Array(peers)) = t.get_mut("peers") {
            for p in peers.iter_mut() {
                if let Some(tbl) = p.as_table_mut()
                    && tbl.get("id").and_then(|v| v.as_str()) == Some(peer)
                {
                    tbl.insert("accreditation".into(), label.into());
                }
            }
        }
        write_toml(&path, &t)
    }
}
