//! Kring's PKI with OpenSSL: every key `kring-certs-dev` writes reads with `openssl
//! pkey`, an organisation CA run with the `openssl` command line issues user and
//! relay certificates Kring accepts (the commands of docs/certificates.md, with
//! `kring-certs-dev clearance-der`), and `sign-csr` certifies a request OpenSSL
//! made. Skipped, saying so, where no `openssl` binary is installed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kring_policy::Clearance;
use kring_protocol::identity::{self, IdentityKind, verify_chain};

fn certs_dev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kring-certs-dev"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

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

/// Runs `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// A fresh demo federation in `tmp/fed`.
fn federation(tmp: &Path) -> PathBuf {
    let fed = tmp.join("fed");
    let o = certs_dev(&["init", "--out", path(&fed)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    fed
}

fn chain_of(file: &Path) -> Vec<Vec<u8>> {
    identity::certificates_from_pem(&std::fs::read(file).unwrap()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            key_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "key") {
            out.push(p);
        }
    }
}

/// The raw Ed25519 public key of an OpenSSL key file (the last 32 bytes of its
/// SubjectPublicKeyInfo).
fn public_key_of(dir: &Path, key: &str) -> Vec<u8> {
    let mut args = vec!["pkey", "-in", key, "-pubout", "-outform", "DER"];
    if dir.join("passphrase").exists() && key == "user.key" {
        args.extend(["-passin", "file:passphrase"]);
    }
    let spki = openssl(dir, &args).stdout;
    spki[spki.len() - 32..].to_vec()
}

/// `kring-certs-dev clearance-der LABEL [--role ROLE]...`: the hex on stdout.
fn clearance_der(label: &str, roles: &[&str]) -> String {
    let mut args = vec!["clearance-der", label];
    for r in roles {
        args.extend(["--role", r]);
    }
    let o = certs_dev(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let hex = text(&o.stdout).trim().to_string();
    assert!(
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hex:?}"
    );
    hex
}

#[test]
fn openssl_reads_every_key_kring_certs_dev_writes() {
    if !have_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fed = federation(tmp.path());
    let o = certs_dev(&[
        "issue-user",
        "--dir",
        path(&fed),
        "--user",
        "consul@bz",
        "--clearance",
        "NL:STG-GEHEIM",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut keys = Vec::new();
    key_files(&fed, &mut keys);
    assert!(keys.len() >= 19, "{keys:?}");
    let mut encrypted = 0;
    for key in &keys {
        // User keys are encrypted under the passphrase beside them.
        let passphrase = key.with_file_name("passphrase");
        let passin = format!("file:{}", path(&passphrase));
        let mut args = vec!["pkey", "-noout", "-in", path(key)];
        if passphrase.exists() {
            encrypted += 1;
            let wrong = Command::new("openssl")
                .args(&args)
                .args(["-passin", "pass:wrong"])
                .output()
                .unwrap();
            assert!(
                !wrong.status.success(),
                "{} opens without its passphrase",
                key.display()
            );
            args.extend(["-passin", &passin]);
        }
        let o = Command::new("openssl").args(&args).output().unwrap();
        assert!(
            o.status.success(),
            "openssl pkey -in {}: {}",
            key.display(),
            text(&o.stderr)
        );
    }
    assert!(encrypted >= 7, "every user key is encrypted: {encrypted}");
    // And the key is the certificate's.
    let user = fed.join("users/consul@bz");
    let leaf = identity::Identity::from_der(&chain_of(&user.join("user.crt"))[0]).unwrap();
    assert_eq!(public_key_of(&user, "user.key"), leaf.public_key);
}

/// The extension sections of docs/certificates.md.
fn extension_file(user_uri: &str, relay: &str, user_sda: &str, relay_sda: &str) -> String {
    format!(
        "[kring_user]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = clientAuth\n\
         subjectAltName = URI:{user_uri}\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n\
         2.5.29.9 = DER:{user_sda}\n\
         \n\
         [kring_relay]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth, clientAuth\n\
         subjectAltName = URI:kring:relay:{relay}, DNS:{relay}.relay.kring\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n\
         2.5.29.9 = DER:{relay_sda}\n"
    )
}

#[test]
fn an_openssl_organisation_ca_issues_certificates_kring_accepts() {
    if !have_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fed = federation(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let ca_crt = fed.join("orgs/bz/ca.crt");
    let ca_key = fed.join("orgs/bz/ca.key");
    let (ca_crt, ca_key) = (path(&ca_crt), path(&ca_key));
    std::fs::write(
        work.join("kring.ext"),
        extension_file(
            "kring:user:consul@bz",
            "bz2",
            &clearance_der("NL:STG-GEHEIM;CMP=CYBER", &["org-admin"]),
            &clearance_der("NL:STG-GEHEIM", &[]),
        ),
    )
    .unwrap();

    // A user: key and request with OpenSSL, certificate from the CA.
    openssl(
        &work,
        &["genpkey", "-algorithm", "ed25519", "-out", "user.key"],
    );
    openssl(
        &work,
        &[
            "req",
            "-new",
            "-key",
            "user.key",
            "-subj",
            "/CN=consul/O=bz",
            "-out",
            "user.csr",
        ],
    );
    openssl(
        &work,
        &[
            "x509",
            "-req",
            "-in",
            "user.csr",
            "-CA",
            ca_crt,
            "-CAkey",
            ca_key,
            "-days",
            "365",
            "-extfile",
            "kring.ext",
            "-extensions",
            "kring_user",
            "-out",
            "user-leaf.crt",
        ],
    );
    let mut chain = std::fs::read(work.join("user-leaf.crt")).unwrap();
    chain.extend(std::fs::read(ca_crt).unwrap());
    std::fs::write(work.join("user.crt"), &chain).unwrap();
    openssl(
        &work,
        &[
            "verify",
            "-CAfile",
            path(&fed.join("ca/root.crt")),
            "-untrusted",
            ca_crt,
            "user-leaf.crt",
        ],
    );

    let anchors = chain_of(&fed.join("ca/root.crt"));
    let user = verify_chain(
        &chain_of(&work.join("user.crt")),
        &anchors,
        now(),
        IdentityKind::User,
    )
    .unwrap();
    assert_eq!(user.id(), "consul@bz");
    assert_eq!(user.organisation, "bz");
    assert_eq!(
        user.clearance,
        Some("NL:STG-GEHEIM;CMP=CYBER".parse::<Clearance>().unwrap())
    );
    assert_eq!(user.roles, ["org-admin"]);
    assert_eq!(user.public_key, public_key_of(&work, "user.key"));

    // A relay (a new relay bz2 of organisation bz).
    openssl(
        &work,
        &["genpkey", "-algorithm", "ed25519", "-out", "relay.key"],
    );
    openssl(
        &work,
        &[
            "req",
            "-new",
            "-key",
            "relay.key",
            "-subj",
            "/CN=bz2/O=bz",
            "-out",
            "relay.csr",
        ],
    );
    openssl(
        &work,
        &[
            "x509",
            "-req",
            "-in",
            "relay.csr",
            "-CA",
            ca_crt,
            "-CAkey",
            ca_key,
            "-days",
            "730",
            "-extfile",
            "kring.ext",
            "-extensions",
            "kring_relay",
            "-out",
            "relay-leaf.crt",
        ],
    );
    let mut chain = std::fs::read(work.join("relay-leaf.crt")).unwrap();
    chain.extend(std::fs::read(ca_crt).unwrap());
    std::fs::write(work.join("relay.crt"), &chain).unwrap();
    let relay = verify_chain(
        &chain_of(&work.join("relay.crt")),
        &anchors,
        now(),
        IdentityKind::Relay,
    )
    .unwrap();
    assert_eq!(relay.id(), "bz2");
    assert_eq!(relay.organisation, "bz");
    assert_eq!(
        relay.clearance,
        Some("NL:STG-GEHEIM".parse::<Clearance>().unwrap())
    );
    assert!(relay.roles.is_empty());
    // Neither passes for the other kind.
    assert!(
        verify_chain(
            &chain_of(&work.join("relay.crt")),
            &anchors,
            now(),
            IdentityKind::User
        )
        .is_err()
    );
}

#[test]
fn sign_csr_certifies_a_request_openssl_made() {
    if !have_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fed = federation(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    openssl(
        &work,
        &["genpkey", "-algorithm", "ed25519", "-out", "k.key"],
    );
    openssl(
        &work,
        &[
            "req",
            "-new",
            "-key",
            "k.key",
            "-subj",
            "/CN=consul/O=nctv",
            "-addext",
            "subjectAltName=URI:kring:user:consul@nctv",
            "-out",
            "k.csr",
        ],
    );
    let out = work.join("consul.crt");
    let sign = |out: &Path| {
        certs_dev(&[
            "sign-csr",
            "--dir",
            path(&fed),
            "--csr",
            path(&work.join("k.csr")),
            "--clearance",
            "nl:stg-geheim",
            "--out",
            path(out),
        ])
    };
    let o = sign(&out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(stdout.contains("Certified consul@nctv"), "{stdout}");
    assert!(stdout.contains("NL:STG-GEHEIM"), "{stdout}");
    let id = verify_chain(
        &chain_of(&out),
        &chain_of(&fed.join("ca/root.crt")),
        now(),
        IdentityKind::User,
    )
    .unwrap();
    assert_eq!(id.id(), "consul@nctv");
    assert_eq!(id.public_key, public_key_of(&work, "k.key"));
    assert!(stdout.contains(&id.serial), "{stdout}");

    // Usage errors: the chain exists already; a request without a Kring SAN.
    let o = sign(&out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("already exists"));
    openssl(
        &work,
        &[
            "req",
            "-new",
            "-key",
            "k.key",
            "-subj",
            "/CN=consul/O=nctv",
            "-out",
            "k.csr",
        ],
    );
    let o = sign(&work.join("other.crt"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("subjectAltName"),
        "{}",
        text(&o.stderr)
    );
    // clearance-der refuses a bad label.
    let o = certs_dev(&["clearance-der", "NL:TOPGEHEIM"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}
