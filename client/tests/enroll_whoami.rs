//! The `kring` binary: `kring enroll` makes a key and a request, a CA certifies it,
//! `kring whoami` shows the identity, and a certificate about to expire is warned
//! about by every command; log lines on a pipe carry no ANSI escape codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::path::Path;
use std::process::{Command, Output};

use kring_policy::Clearance;
use kring_protocol::identity::{
    OID_SUBJECT_DIRECTORY_ATTRIBUTES, ROLE_ORG_ADMIN, encode_subject_directory_attributes,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

const DAY: i64 = 86_400;

/// A passphrase file (mode 0600) for every `kring` run of this test process: the
/// key `enroll` writes is encrypted under it, and later commands unlock with it.
fn passphrase_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = FILE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passphrase");
        std::fs::write(&path, "correct horse battery staple\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        dir
    });
    dir.path().join("passphrase")
}

fn kring(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kring"))
        .env("KRING_PASSPHRASE_FILE", passphrase_file())
        .args(args)
        .env_remove("KRING_PROFILE")
        .env_remove("KRING_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn at(offset: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(offset)
}

fn ca(cn: &str, org: &str, path_len: u8) -> (CertificateParams, KeyPair) {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = at(-DAY);
    p.not_after = at(365 * DAY);
    (p, KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap())
}

/// An organisation CA `bz` certifies the request in `dir` (clearance NL:STG-GEHEIM,
/// org-admin, valid for `days` more days and an hour), and the user saves the
/// chain and the root next to the profile and fills in the relay.
fn certify(dir: &Path, days: i64) {
    let (root_params, root_key) = ca("Test root", "federation", 1);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let (org_params, org_key) = ca("CA bz", "bz", 0);
    let org = org_params.signed_by(&org_key, &root_issuer).unwrap();
    let org_issuer = Issuer::new(org_params, org_key);

    let csr = std::fs::read_to_string(dir.join("user.csr")).unwrap();
    let csr = CertificateSigningRequestParams::from_pem(&csr).unwrap();
    let mut p = csr.params;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = at(-3_600);
    p.not_after = at(days * DAY + 3_600);
    p.use_authority_key_identifier_extension = true;
    let clearance: Clearance = "NL:STG-GEHEIM".parse().unwrap();
    let sda = encode_subject_directory_attributes(Some(&clearance), &[ROLE_ORG_ADMIN.into()])
        .unwrap()
        .unwrap();
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &OID_SUBJECT_DIRECTORY_ATTRIBUTES,
        sda,
    )];
    let leaf = p.signed_by(&csr.public_key, &org_issuer).unwrap();
    std::fs::write(dir.join("user.crt"), format!("{}{}", leaf.pem(), org.pem())).unwrap();
    std::fs::write(dir.join("root.crt"), root.pem()).unwrap();
    let profile = dir.join("profile.toml");
    let completed = std::fs::read_to_string(&profile)
        .unwrap()
        .replace("relay = \"\"", "relay = \"127.0.0.1:9\"");
    std::fs::write(profile, completed).unwrap();
}

#[test]
fn enroll_certify_whoami_and_the_expiry_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("consul");
    let d = dir.to_str().unwrap();

    let o = kring(&["enroll", "--user", "consul@bz", "--out", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let steps = text(&o.stdout);
    assert!(steps.contains("user.csr"), "{steps}");
    assert!(steps.contains("next:"), "{steps}");

    // Before the certificate is there, whoami says what is missing.
    let o = kring(&["--profile", d, "whoami"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("relay is empty"),
        "{}",
        text(&o.stderr)
    );

    certify(&dir, 10);
    let o = kring(&["--profile", d, "whoami"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for needle in [
        "user          consul@bz",
        "home relay    bz (127.0.0.1:9)",
        "organisation  bz",
        "clearance     NL:STG-GEHEIM",
        "roles         org-admin",
        "(10 days left)",
        "chain         verifies against the profile's trust anchors",
    ] {
        assert!(out.contains(needle), "{needle}:\n{out}");
    }
    let stderr = text(&o.stderr);
    assert!(
        stderr.starts_with("kring: warning: the certificate of consul@bz expires in 10 days ("),
        "{stderr}"
    );

    let o = kring(&["--profile", d, "whoami", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(json["user"], "consul@bz");
    assert_eq!(json["organisation"], "bz");
    assert_eq!(json["clearance"], "NL:STG-GEHEIM");
    assert_eq!(json["roles"], serde_json::json!(["org-admin"]));
    assert_eq!(json["days_left"], 10);
    assert!(json["not_after"].as_str().unwrap().ends_with('Z'));
    assert!(
        json["warning"]
            .as_str()
            .unwrap()
            .contains("expires in 10 days")
    );

    // Any other command warns too (the relay is unreachable: it lists what the
    // device has); its log lines on this pipe carry no colour codes.
    let o = kring(&["--profile", d, "-vv", "notice", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("kring: warning: the certificate of consul@bz expires in 10 days"),
        "{stderr}"
    );
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "ANSI codes on a pipe: {stderr:?}");
}

#[test]
fn a_certificate_far_from_expiry_is_not_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("consul");
    let d = dir.to_str().unwrap();
    let o = kring(&["enroll", "--user", "consul@bz", "--out", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    certify(&dir, 31);
    let o = kring(&["--profile", d, "whoami"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("(31 days left)"));
    assert_eq!(text(&o.stderr), "");
}
