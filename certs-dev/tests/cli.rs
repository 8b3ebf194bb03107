//! The `kring-certs-dev` binary: exit codes, messages and files.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
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

#[test]
fn init_then_refuse_then_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fed");
    let o = run(&["init", "--out", path(&out), "--base-port", "47400"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(stdout.contains("127.0.0.1:47403"), "{stdout}");
    assert!(stdout.contains("analist@aivd"), "{stdout}");
    assert!(stdout.contains("kring-relay --config"), "{stdout}");
    assert!(out.join("relays/post-a/relay.toml").is_file());
    assert!(out.join("users/attache@post-a/user.key").is_file());

    let o = run(&["init", "--out", path(&out)]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );

    let o = run(&["init", "--out", path(&out), "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("replaced"));
}

#[test]
fn issue_user_and_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    assert_eq!(run(&["init", "--out", path(out)]).status.code(), Some(0));
    let o = run(&[
        "issue-user",
        "--dir",
        path(out),
        "--user",
        "consul@bz",
        "--clearance",
        "nl:stg-geheim;cmp=cyber",
        "--role",
        "org-admin",
        "--not-after",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("NL:STG-GEHEIM;CMP=CYBER"));
    assert!(out.join("users/consul@bz/profile.toml").is_file());

    for args in [
        // Bad clearance label.
        &[
            "issue-user",
            "--dir",
            path(out),
            "--user",
            "x@bz",
            "--clearance",
            "NL:TOPGEHEIM",
        ][..],
        // Bad time.
        &[
            "issue-user",
            "--dir",
            path(out),
            "--user",
            "x@bz",
            "--clearance",
            "NL:STG-GEHEIM",
            "--not-after",
            "tomorrow",
        ],
        // Unknown relay.
        &[
            "issue-user",
            "--dir",
            path(out),
            "--user",
            "x@mars",
            "--clearance",
            "NL:STG-GEHEIM",
        ],
        // Existing user.
        &[
            "issue-user",
            "--dir",
            path(out),
            "--user",
            "consul@bz",
            "--clearance",
            "NL:STG-GEHEIM",
        ],
        // Missing argument (clap).
        &["issue-user", "--dir", path(out)],
        // Port range.
        &[
            "init",
            "--out",
            path(&out.join("other")),
            "--base-port",
            "65534",
        ],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).is_empty());
    }
}

#[test]
fn revoke_cert_prints_what_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    assert_eq!(run(&["init", "--out", path(out)]).status.code(), Some(0));
    let crl = out.join("orgs/bz/crl.pem");
    assert!(
        std::fs::read_to_string(&crl)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----")
    );

    let args = [
        "revoke-cert",
        "--dir",
        path(out),
        "liaison@bz",
        "--reason",
        "laptop lost",
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("Revoked the certificate of liaison@bz"),
        "{stdout}"
    );
    assert!(stdout.contains(path(&crl)), "{stdout}");
    assert!(
        stdout.contains("number 2, 1 revoked certificate,"),
        "{stdout}"
    );
    // The serial printed is the one a relay compares (16 random bytes, hex).
    let serial = stdout
        .split("serial ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    assert_eq!(serial.len(), 32, "{stdout}");
    assert!(
        std::fs::read_to_string(out.join("orgs/bz/crl.log"))
            .unwrap()
            .contains(&format!("{serial}\tliaison@bz\tlaptop lost"))
    );

    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("already revoked") && stdout.contains(serial),
        "{stdout}"
    );

    // Usage errors: unknown user, malformed user, missing USER, bad reason.
    for args in [
        &["revoke-cert", "--dir", path(out), "nobody@bz"][..],
        &["revoke-cert", "--dir", path(out), "nobody"],
        &["revoke-cert", "--dir", path(out)],
        &[
            "revoke-cert",
            "--dir",
            path(out),
            "admin@bz",
            "--reason",
            "a\tb",
        ],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).is_empty());
    }
    // Other errors: the organisation's CA key is missing.
    std::fs::remove_file(out.join("orgs/bz/ca.key")).unwrap();
    let o = run(&["revoke-cert", "--dir", path(out), "admin@bz"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("ca.key"), "{}", text(&o.stderr));
}
