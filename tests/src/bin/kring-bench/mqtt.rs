//! The comparison: mosquitto (Debian's package) with TLS 1.3 and client
//! certificates from the same dev PKI, persistence on, QoS 1, driven by rumqttc.
//!
//! The broker presents relay `bz`'s certificate (the dev PKI has no certificate
//! for "127.0.0.1"; the client verifies the chain to the federation root and the
//! name `bz.relay.kring`, as Kring's clients do). Publishers and subscribers
//! present user certificates of the same federation (`require_certificate true`,
//! `use_identity_as_username true`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::common::{BODY_BYTES, Tally};
use crate::kring_flow::FlowResult;

/// How the broker's persistence is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autosave {
    /// `autosave_interval 1`, `autosave_on_changes false`: the in-memory state is
    /// written to disk every second (at most one second of acknowledged messages
    /// lost on a crash). The default of this bench.
    EverySecond,
    /// `autosave_interval 1`, `autosave_on_changes true`: the whole state is written
    /// after every change (the strictest mosquitto offers; still not before PUBACK).
    EveryChange,
}

impl Autosave {
    pub fn describe(self) -> &'static str {
        match self {
            Autosave::EverySecond => "autosave every 1 s",
            Autosave::EveryChange => "autosave after every change",
        }
    }
}

/// A running mosquitto.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    pub port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mosquitto executable, or how to get it.
pub fn mosquitto_binary() -> Result<PathBuf, String> {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(
        "mosquitto is not installed; install it with `scripts/mosquitto.sh install` \
         (Debian's package, needs root), or run only the Kring-side scenarios with \
         `--only client-cost,membership,storage,memory`"
            .into(),
    )
}

/// Re-encodes an Ed25519 PKCS#8 key (v1 or v2) as PKCS#8 v1 PEM.
fn ed25519_pkcs8_v1(path: &Path) -> Result<String, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    let key =
        PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let der = key.secret_pkcs8_der();
    // AlgorithmIdentifier id-Ed25519, then privateKey OCTET STRING { OCTET STRING (32) }.
    let marker = [0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let at = der
        .windows(marker.len())
        .position(|w| w == marker)
        .ok_or_else(|| format!("{}: not an Ed25519 PKCS#8 key", path.display()))?;
    let seed = der
        .get(at + marker.len()..at + marker.len() + 32)
        .ok_or_else(|| format!("{}: truncated Ed25519 key", path.display()))?;
    let mut v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v1.extend_from_slice(seed);
    Ok(pem_encode("PRIVATE KEY", &v1))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn free_tcp_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl Broker {
    /// Writes a configuration into `dir` and starts mosquitto on a free port of
    /// 127.0.0.1 with relay `bz`'s certificate of the federation in `fed_dir`.
    pub fn start(fed_dir: &Path, dir: &Path, autosave: Autosave) -> Result<Broker, String> {
        let exe = mosquitto_binary()?;
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let port = free_tcp_port()?;
        let relay = fed_dir.join("relays/bz");
        // OpenSSL 3.0 does not read the PKCS#8 v2 (with public key) form ring writes;
        // hand mosquitto the same Ed25519 key as PKCS#8 v1.
        let key_path = dir.join("broker.key");
        let v1 = ed25519_pkcs8_v1(&relay.join("relay.key"))?;
        std::fs::write(&key_path, v1).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let on_changes = autosave == Autosave::EveryChange;
        let config = format!(
            "# kring-bench: mosquitto with TLS 1.3, client certificates, persistence\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             tls_version tlsv1.3\n\
             persistence true\n\
             persistence_location {data}/\n\
             autosave_interval 1\n\
             autosave_on_changes {on_changes}\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 100\n\
             set_tcp_nodelay true\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             user root\n",
            ca = fed_dir.join("ca/root.crt").display(),
            cert = relay.join("relay.crt").display(),
            key = key_path.display(),
            data = dir.join("data").display(),
            log = dir.join("mosquitto.log").display(),
        );
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut child = Command::new(&exe)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
                return Err(format!("mosquitto exited with {status}: {log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("mosquitto did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, port })
    }
}

/// A broker in its own temporary directory with its publishers and subscribers
/// connected: one side of a comparison.
#[derive(Debug)]
pub struct Session {
    // Dropped in this order: the clients, the broker, its directory.
    pub clients: MqttSetup,
    _broker: Broker,
    _dir: tempfile::TempDir,
}

impl Session {
    /// Starts a broker with the certificates of the federation in `fed_dir` and
    /// connects `pub_users` as publishers and `sub_users` as subscribers.
    pub async fn start(
        fed_dir: &Path,
        autosave: Autosave,
        pub_users: &[String],
        sub_users: &[String],
    ) -> Result<Session, String> {
        let dir = tempfile::Builder::new()
            .prefix("kring-bench-mosquitto-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let broker = Broker::start(fed_dir, dir.path(), autosave)?;
        let clients = MqttSetup::connect(fed_dir, broker.port, pub_users, sub_users).await?;
        Ok(Session {
            clients,
            _broker: broker,
            _dir: dir,
        })
    }
}

/// Verifies the broker's chain against the federation root for a fixed name.
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_config(fed_dir: &Path, user: &str) -> Result<rustls::ClientConfig, String> {
    let s = |e: &dyn std::fmt::Display| format!("TLS configuration of {user}: {e}");
    let dir = fed_dir.join("users").join(user);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("user.crt"))
        .map_err(|e| s(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| s(&e))?;
    let key = kring_tests::chaos::private_key(&dir.join("user.key")).map_err(|e| s(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for a in CertificateDer::pem_file_iter(fed_dir.join("ca/root.crt")).map_err(|e| s(&e))? {
        roots.add(a.map_err(|e| s(&e))?).map_err(|e| s(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| s(&e))?;
    let verifier = FixedNameVerifier {
        inner,
        name: ServerName::try_from("bz.relay.kring")
            .map_err(|e| s(&e))?
            .to_owned(),
    };
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| s(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(|e| s(&e))
}

fn options(fed_dir: &Path, user: &str, port: u16) -> Result<MqttOptions, String> {
    let client_id = user.replace('@', "-");
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(false);
    o.set_inflight(100);
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(fed_dir, user)?),
    )));
    Ok(o)
}

/// An MQTT client with Nagle's algorithm off (as mosquitto's listener is
/// configured): small packets such as PUBACKs must not wait for a delayed TCP ack.
fn connect_client(
    fed_dir: &Path,
    user: &str,
    port: u16,
) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut el) = AsyncClient::new(options(fed_dir, user, port)?, 1000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    el.set_network_options(network);
    Ok((client, el))
}

/// Per subscriber: (run tag, index, arrival).
type SubLogs = Arc<Mutex<Vec<Vec<(u8, u64, Instant)>>>>;

/// Connected publishers and subscribers.
pub struct MqttSetup {
    publishers: Vec<(AsyncClient, tokio::sync::mpsc::UnboundedReceiver<u16>)>,
    logs: SubLogs,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    next_tag: u8,
}

impl std::fmt::Debug for MqttSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSetup").finish_non_exhaustive()
    }
}

impl Drop for MqttSetup {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const TOPIC: &str = "kring/bench";

/// Polls a publisher's event loop, forwarding each PUBACK.
async fn drive_publisher(
    mut el: EventLoop,
    acks: tokio::sync::mpsc::UnboundedSender<u16>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                let _ = acks.send(a.pkid);
            }
            Ok(_) => {}
            Err(e) => {
                if let Ok(mut v) = errors.lock() {
                    v.push(format!("publisher: {e}"));
                }
                return;
            }
        }
    }
}

/// Polls a subscriber's event loop (rumqttc acknowledges every QoS 1 PUBLISH with
/// PUBACK by itself), recording each arrival.
async fn drive_subscriber(
    mut el: EventLoop,
    s: usize,
    logs: SubLogs,
    subscribed: tokio::sync::mpsc::UnboundedSender<usize>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = Instant::now();
                if p.payload.len() >= 9 {
                    let tag = p.payload[0];
                    let mut idx = [0u8; 8];
                    idx.copy_from_slice(&p.payload[1..9]);
                    if let Ok(mut l) = logs.lock()
                        && let Some(v) = l.get_mut(s)
                    {
                        v.push((tag, u64::from_be_bytes(idx), now));
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = subscribed.send(s);
            }
            Ok(_) => {}
            Err(e) => {
                if let Ok(mut v) = errors.lock() {
                    v.push(format!("subscriber {s}: {e}"));
                }
                return;
            }
        }
    }
}

impl MqttSetup {
    /// Connects publishers (the users `pub_users`) and subscribers (`sub_users`),
    /// subscribed with QoS 1 to the bench topic.
    pub async fn connect(
        fed_dir: &Path,
        port: u16,
        pub_users: &[String],
        sub_users: &[String],
    ) -> Result<MqttSetup, String> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let logs: SubLogs = Arc::new(Mutex::new(vec![Vec::new(); sub_users.len()]));
        let mut tasks = Vec::new();
        let (sub_tx, mut sub_rx) = tokio::sync::mpsc::unbounded_channel();
        for (s, u) in sub_users.iter().enumerate() {
            let (client, el) = connect_client(fed_dir, u, port)?;
            client
                .subscribe(TOPIC, QoS::AtLeastOnce)
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            tasks.push(tokio::spawn(drive_subscriber(
                el,
                s,
                Arc::clone(&logs),
                sub_tx.clone(),
                Arc::clone(&errors),
            )));
            // Keep the client alive with its task.
            tasks.push(tokio::spawn(async move {
                let _keep = client;
                std::future::pending::<()>().await;
            }));
        }
        let deadline = Instant::now()
            + Duration::from_secs(20)
            + Duration::from_millis(20 * sub_users.len() as u64);
        let mut ready = std::collections::HashSet::new();
        while ready.len() < sub_users.len() {
            match tokio::time::timeout_at(deadline.into(), sub_rx.recv()).await {
                Ok(Some(s)) => {
                    ready.insert(s);
                }
                _ => {
                    let errs = errors.lock().map(|e| e.join("; ")).unwrap_or_default();
                    return Err(format!("mosquitto subscribers did not subscribe: {errs}"));
                }
            }
        }
        let mut publishers = Vec::new();
        for u in pub_users {
            let (client, el) = connect_client(fed_dir, u, port)?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tasks.push(tokio::spawn(drive_publisher(el, tx, Arc::clone(&errors))));
            publishers.push((client, rx));
        }
        Ok(MqttSetup {
            publishers,
            logs,
            errors,
            tasks,
            next_tag: 1,
        })
    }

    /// Publishes `total` messages of [`BODY_BYTES`] with QoS 1. Closed loop
    /// (`rate` None): each publisher publishes `window` messages back to back and
    /// waits for their PUBACKs before the next window, like a Kring filer waits for
    /// its relay's acknowledgement; it never sleeps. Open loop: messages
    /// are published at their scheduled instants (rumqttc keeps up to 100 in
    /// flight per publisher). Then waits for every subscriber to have every message.
    pub async fn run(
        &mut self,
        total: usize,
        rate: Option<f64>,
        window: usize,
        max_wall: Duration,
    ) -> Result<FlowResult, String> {
        let window = window.max(1);
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now() + Duration::from_millis(50);
        let mut handles = Vec::new();
        for (client, mut acks) in std::mem::take(&mut self.publishers) {
            let next = Arc::clone(&next);
            handles.push(tokio::spawn(async move {
                let mut sent: Vec<(u64, Instant, Instant, Instant)> = Vec::new();
                let mut error = None;
                while acks.try_recv().is_ok() {}
                'publishing: loop {
                    // Closed loop: a window of `window` messages, then their PUBACKs.
                    // Open loop: one message at its scheduled instant.
                    let step = if rate.is_some() { 1 } else { window };
                    let from = next.fetch_add(step, AtomicOrdering::SeqCst);
                    if from >= total {
                        break;
                    }
                    let to = (from + step).min(total);
                    if Instant::now().saturating_duration_since(t0) > max_wall {
                        break;
                    }
                    let mut batch = Vec::with_capacity(to - from);
                    for i in from..to {
                        // Sleep only for an instant still ahead: tokio rounds every
                        // deadline up to its next 1 ms tick, so even `sleep_until(now)`
                        // waits up to a millisecond. Sleeping before every publish
                        // once paced the closed loop at about one message per
                        // millisecond whatever the window or the broker.
                        let scheduled = match rate {
                            Some(r) => t0 + Duration::from_secs_f64(i as f64 / r),
                            None => Instant::now(),
                        };
                        if scheduled > Instant::now() {
                            tokio::time::sleep_until(scheduled.into()).await;
                        }
                        let mut payload = vec![b'x'; BODY_BYTES];
                        payload[0] = tag;
                        payload[1..9].copy_from_slice(&(i as u64).to_be_bytes());
                        let start = Instant::now();
                        if let Err(e) = client
                            .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                            .await
                        {
                            error = Some(format!("publish: {e}"));
                            break 'publishing;
                        }
                        batch.push((i as u64, scheduled, start));
                    }
                    if rate.is_none() {
                        for _ in from..to {
                            match tokio::time::timeout(Duration::from_secs(30), acks.recv()).await {
                                Ok(Some(_)) => {}
                                _ => {
                                    error = Some("no PUBACK within 30 s".to_string());
                                    break 'publishing;
                                }
                            }
                        }
                    }
                    let acked = Instant::now();
                    sent.extend(batch.into_iter().map(|(i, s, st)| (i, s, st, acked)));
                }
                ((client, acks), sent, error)
            }));
        }
        let mut sent = Vec::new();
        let mut errors = Vec::new();
        for h in handles {
            let (p, s, e) = h.await.map_err(|e| format!("publisher task: {e}"))?;
            self.publishers.push(p);
            sent.extend(s);
            errors.extend(e);
        }
        let publishing_done = Instant::now();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let n = sent.len();
        let wanted: HashMap<u64, (Instant, Instant)> =
            sent.iter().map(|&(i, s, st, _)| (i, (s, st))).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut timed_out = false;
        let mut tally = Tally::default();
        loop {
            {
                if let Ok(e) = self.errors.lock()
                    && !e.is_empty()
                {
                    return Err(e.join("; "));
                }
                let l = self.logs.lock().map_err(|_| "subscriber log poisoned")?;
                let mut all = true;
                for (s, v) in l.iter().enumerate() {
                    all &= tally.update(s, v, |(t, _, _)| *t == tag) >= n;
                }
                if all {
                    break;
                }
            }
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let logs = self.logs.lock().map_err(|_| "subscriber log poisoned")?;
        let mut latency = Vec::new();
        let mut service = Vec::new();
        let mut problems = Vec::new();
        let first_start = sent.iter().map(|s| s.2).min().unwrap_or(t0);
        let mut last = first_start;
        for (s, v) in logs.iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            for &(t, i, at) in v {
                if t != tag {
                    continue;
                }
                let Some(&(sched, start)) = wanted.get(&i) else {
                    continue;
                };
                if !seen.insert(i) {
                    // QoS 1 allows duplicates; count only the first.
                    continue;
                }
                latency.push(at.saturating_duration_since(sched));
                service.push(at.saturating_duration_since(start));
                last = last.max(at);
            }
            if seen.len() < n {
                problems.push(format!("subscriber {s}: {} of {n} missing", n - seen.len()));
            }
        }
        if timed_out {
            problems.push("not every message arrived within 60 s".into());
        }
        latency.sort();
        service.sort();
        let mut publishing: Vec<Duration> = sent.iter().map(|&(_, _, s, a)| a - s).collect();
        publishing.sort();
        Ok(FlowResult {
            notices: n,
            offered: total,
            devices: logs.len(),
            deliveries: latency.len(),
            window: last.saturating_duration_since(first_start),
            filing_window: publishing_done.saturating_duration_since(first_start),
            latency,
            service,
            filing: publishing,
            problems,
            server_cpu: None,
            device_acks: None,
            latency_at: Default::default(),
            acked: Vec::new(),
        })
    }
}
