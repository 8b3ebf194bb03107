//! The `kring-relay` binary: its log on stderr (no ANSI escape codes when stderr is
//! not a terminal; with `--log-format json` one JSON object per line), and its key
//! file in either PKCS#8 form.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// A demo federation in `dir` whose relay `bz` listens on a free port.
fn federation(dir: &Path) -> PathBuf {
    let port = loop {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65_000 {
            break port;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    kring_certs_dev::init_demo(dir, port, false, now).unwrap();
    dir.join("relays/bz/relay.toml")
}

/// Starts relay `bz` with stderr into `log` and waits until it listens.
fn start(config: &Path, log: &Path, extra: &[&str]) -> Child {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kring-relay"))
        .args(extra)
        .arg("--config")
        .arg(config)
        .env("KRING_LOG", "debug")
        .env_remove("KRING_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("kring-relay listening on"),
        "{first:?}; log: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    child
}

/// Stops the relay with SIGTERM (it logs its shutdown) and returns its log.
fn stop(mut child: Child, log: &Path) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the relay did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn relay_logs_to_a_file_carry_no_ansi_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = federation(tmp.path());
    let log_path = tmp.path().join("bz.log");
    let relay = start(&config, &log_path, &[]);
    let log = stop(relay, &log_path);
    assert!(log.lines().count() >= 2, "{log}");
    assert!(log.contains("signal received; stopping"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "ANSI escape codes in the log:\n{log:?}"
    );
}

#[test]
fn relay_logs_in_json_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = federation(tmp.path());
    let log_path = tmp.path().join("bz.log");
    let relay = start(&config, &log_path, &["--log-format", "json"]);
    let log = stop(relay, &log_path);
    assert!(!log.contains("\x1b["), "{log:?}");
    let mut lines = 0;
    let mut saw_stop = false;
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        let object = value.as_object().unwrap();
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(object.contains_key(key), "no {key}: {line}");
        }
        saw_stop |= object["fields"]["message"] == "signal received; stopping";
        lines += 1;
    }
    assert!(lines >= 2, "{log}");
    assert!(saw_stop, "{log}");
}

/// Standard base64 with padding (for a PEM body).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn check_config(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kring-relay"))
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn relay_keys_in_pkcs8_v1_and_v2_are_both_read() {
    use ring::signature::KeyPair as _;
    let tmp = tempfile::tempdir().unwrap();
    let config = federation(tmp.path());
    let key_path = config.with_file_name("relay.key");
    let pem = std::fs::read_to_string(&key_path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    // kring-certs-dev writes the 48-byte v1 form (base64 of 48 bytes: 64 characters).
    assert_eq!(body.len(), 64, "{pem}");
    let o = check_config(&config);
    assert!(
        o.status.success(),
        "v1: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The same key as PKCS#8 v2 (RFC 5958, with the public key), as ring writes it.
    let v1 = {
        let (_, der) = <(rustls_pki_types::pem::SectionKind, Vec<u8>) as rustls_pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes()).unwrap();
        der
    };
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1).unwrap();
    let mut v2 = vec![
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v2.extend_from_slice(&v1[16..48]);
    v2.extend_from_slice(&[0x81, 0x21, 0x00]);
    v2.extend_from_slice(pair.public_key().as_ref());
    ring::signature::Ed25519KeyPair::from_pkcs8(&v2).expect("a v2 document");
    std::fs::write(
        &key_path,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64(&v2)
        ),
    )
    .unwrap();
    let o = check_config(&config);
    assert!(
        o.status.success(),
        "v2: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
