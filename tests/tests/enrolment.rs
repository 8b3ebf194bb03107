//! Enrolment with a real CA: a relay and a user certified with the `openssl`
//! command line by an organisation CA (the commands of docs/certificates.md, with
//! the clearance extension from `kring-certs-dev clearance-der`), the user's key
//! made on the device by `kring enroll`. The relay runs on its OpenSSL key and
//! certificate; the user publishes key packages, joins a community, reads a notice
//! and files one. Skipped, saying so, where no `openssl` binary is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::path::Path;
use std::process::Command;

use kring_client::cli::Out;
use kring_protocol::identity::{self, IdentityKind};
use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher, now};

/// Whether an `openssl` binary runs; says so on stderr when it does not.
fn have_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: no `openssl` binary on PATH (install Debian's `openssl` package)");
    }
    ok
}

/// `openssl ARGS` in `dir`; must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `kring-certs-dev clearance-der LABEL [--role ROLE]...`.
fn clearance_der(label: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    hex(&kring_certs_dev::clearance_der(&label.parse().unwrap(), &roles).unwrap())
}

/// `openssl x509 -req` with the organisation CA of `org` in `fed`: `csr` becomes
/// `chain` (the certificate, then the organisation CA).
fn issue(fed: &Path, work: &Path, csr: &Path, section: &str, days: &str, chain: &Path) {
    let ca_crt = fed.join("orgs/bz/ca.crt");
    let ca_key = fed.join("orgs/bz/ca.key");
    let leaf = work.join(format!("{section}-leaf.crt"));
    openssl(
        work,
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca_crt.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-days",
            days,
            "-extfile",
            "kring.ext",
            "-extensions",
            section,
            "-out",
            leaf.to_str().unwrap(),
        ],
    );
    let mut pem = std::fs::read(&leaf).unwrap();
    pem.extend(std::fs::read(ca_crt).unwrap());
    std::fs::write(chain, pem).unwrap();
}

/// Runs `kring ARGS` (the command line, in this process); its stdout.
async fn kring(args: &[&str]) -> String {
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let shared = Shared::default();
    let code = kring_client::cli::run_args(
        std::iter::once("kring").chain(args.iter().copied()),
        &mut Out::new(Box::new(shared.clone())),
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    String::from_utf8(shared.0.lock().unwrap().clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_enrolled_on_the_device_and_certified_with_openssl_files_and_reads() {
    if !have_openssl() {
        return;
    }
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    let work = fed.dir().join("openssl");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        work.join("kring.ext"),
        format!(
            "[kring_user]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n\
             subjectAltName = URI:kring:user:consul@bz\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n\
             2.5.29.9 = DER:{}\n\
             \n\
             [kring_relay]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth, clientAuth\n\
             subjectAltName = URI:kring:relay:bz, DNS:bz.relay.kring\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n\
             2.5.29.9 = DER:{}\n",
            clearance_der("NL:STG-GEHEIM", &[]),
            clearance_der("NL:STG-GEHEIM", &[]),
        ),
    )
    .unwrap();

    // The relay bz gets a new key and certificate made with OpenSSL.
    let relay_dir = fed.dir().join("relays/bz");
    std::fs::remove_file(relay_dir.join("relay.key")).unwrap();
    let relay_key = relay_dir.join("relay.key");
    openssl(
        &work,
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            relay_key.to_str().unwrap(),
        ],
    );
    openssl(
        &work,
        &[
            "req",
            "-new",
            "-key",
            relay_key.to_str().unwrap(),
            "-subj",
            "/CN=bz/O=bz",
            "-out",
            "relay.csr",
        ],
    );
    issue(
        fed.dir(),
        &work,
        &work.join("relay.csr"),
        "kring_relay",
        "730",
        &relay_dir.join("relay.crt"),
    );

    // The user: `kring enroll` on the device, the request certified with OpenSSL.
    let device = fed.dir().join("device/consul");
    let passphrase = fed.dir().join("device/consul.passphrase");
    std::fs::create_dir_all(fed.dir().join("device")).unwrap();
    std::fs::write(&passphrase, "consul's passphrase\n").unwrap();
    let steps = kring(&[
        "enroll",
        "--user",
        "consul@bz",
        "--out",
        device.to_str().unwrap(),
        "--passphrase-file",
        passphrase.to_str().unwrap(),
    ])
    .await;
    assert!(steps.contains("user.csr"), "{steps}");
    // The fingerprint it printed is the one the CA computes from the request.
    openssl(
        &work,
        &[
            "req",
            "-in",
            device.join("user.csr").to_str().unwrap(),
            "-noout",
            "-pubkey",
            "-out",
            "consul.pub",
        ],
    );
    openssl(
        &work,
        &[
            "pkey",
            "-pubin",
            "-in",
            "consul.pub",
            "-outform",
            "DER",
            "-out",
            "consul.spki",
        ],
    );
    let spki = std::fs::read(work.join("consul.spki")).unwrap();
    let fingerprint = hex(&identity::CaFingerprint::of(&spki).0);
    assert!(
        steps.contains(&format!("(SHA-256 of the public key) {fingerprint}")),
        "{fingerprint}: {steps}"
    );
    issue(
        fed.dir(),
        &work,
        &device.join("user.csr"),
        "kring_user",
        "365",
        &device.join("user.crt"),
    );
    std::fs::copy(fed.dir().join("ca/root.crt"), device.join("root.crt")).unwrap();
    let profile = device.join("profile.toml");
    let completed = std::fs::read_to_string(&profile).unwrap().replace(
        "relay = \"\"",
        &format!(
            "relay = \"{}\"\npassphrase_file = \"../consul.passphrase\"",
            fed.relay_addr("bz").unwrap()
        ),
    );
    std::fs::write(&profile, completed).unwrap();

    let anchors =
        identity::certificates_from_pem(&std::fs::read(fed.dir().join("ca/root.crt")).unwrap())
            .unwrap();
    let chain =
        identity::certificates_from_pem(&std::fs::read(device.join("user.crt")).unwrap()).unwrap();
    let me = identity::verify_chain(&chain, &anchors, now() as u64, IdentityKind::User).unwrap();
    assert_eq!(me.id(), "consul@bz");
    assert_eq!(me.organisation, "bz");
    assert_eq!(me.clearance.unwrap().to_string(), "NL:STG-GEHEIM");
    let whoami = kring(&["--profile", device.to_str().unwrap(), "whoami"]).await;
    assert!(whoami.contains("chain         verifies"), "{whoami}");

    fed.start("bz").unwrap();
    let mut consul = kring_client::Client::open(&device).unwrap();
    consul.publish_key_packages(3).await.unwrap();
    let mut liaison = ready(&fed, "liaison@bz").await;
    liaison
        .create_community("enrolled", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    liaison
        .add_members("enrolled", &["consul@bz".to_string()])
        .await
        .unwrap();
    join(&mut consul, "enrolled@bz").await;
    liaison
        .file_notice(draft("enrolled", "NL:DEP-VERTROUWELIJK", "welkom"))
        .await
        .unwrap();
    sync_until(&mut consul, "enrolled@bz", &["welkom"]).await;
    consul
        .file_notice(draft("enrolled", "NL:STG-CONFIDENTIEEL", "gezien"))
        .await
        .unwrap();
    sync_until(&mut liaison, "enrolled@bz", &["welkom", "gezien"]).await;
}
