//! Tests of the development PKI: every demo certificate reads back as intended and
//! verifies; every quirk is caught by the specific check.

use std::fs;
use std::path::Path;
use std::str::FromStr;

use kring_policy::Clearance;
use kring_protocol::identity::{
    self, Identity, IdentityError, IdentityKind, RevocationCheck, RevocationDepth,
    UnknownRevocationStatus, verify_chain, verify_chain_with_revocation,
};
use kring_protocol::revocation::{Revocations, VerifiedCrl, verify_crl};
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use super::*;

const NOW: i64 = 1_750_000_000;

fn clearance(text: &str) -> Clearance {
    Clearance::from_str(text).unwrap()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn chain_of(path: &Path) -> Vec<Vec<u8>> {
    identity::certificates_from_pem(read(path).as_bytes()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The key file holds the private key of the certificate's public key.
fn assert_key_matches(key_path: &Path, id: &Identity) {
    let der = key_der_of(key_path);
    let key = rcgen::KeyPair::try_from(der.as_slice()).unwrap();
    assert_eq!(
        key.public_key_raw(),
        id.public_key.as_slice(),
        "{}",
        key_path.display()
    );
    #[cfg(unix)]
    assert_eq!(mode(key_path), 0o600, "{}", key_path.display());
}

fn toml_of(path: &Path) -> toml::Table {
    toml::from_str(&read(path)).unwrap()
}

fn s<'a>(t: &'a toml::Table, key: &str) -> &'a str {
    t.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("missing {key}"))
}

#[test]
fn init_writes_a_federation_that_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fed");
    let summary = init_demo(&out, 47_200, false, NOW).unwrap();
    assert_eq!(summary.relays.len(), 4);
    assert_eq!(summary.users.len(), DEMO_USERS.len());
    assert!(!summary.replaced);

    let root = chain_of(&out.join("ca/root.crt"));
    assert_eq!(root.len(), 1);
    #[cfg(unix)]
    assert_eq!(mode(&out.join("ca/root.key")), 0o600);
    for org in ["bz", "nctv", "aivd", "post-a"] {
        let ca = chain_of(&out.join(format!("orgs/{org}/ca.crt")));
        assert_eq!(ca.len(), 1);
        // A CA is never an identity.
        assert_eq!(Identity::from_der(&ca[0]).unwrap_err(), IdentityError::IsCa);
        #[cfg(unix)]
        assert_eq!(mode(&out.join(format!("orgs/{org}/ca.key"))), 0o600);
    }
    let at = NOW as u64;

    for (i, (id, accreditation)) in DEMO_RELAYS.iter().enumerate() {
        let dir = out.join("relays").join(id);
        let chain = chain_of(&dir.join("relay.crt"));
        assert_eq!(chain.len(), 2, "relay chain is leaf + organisation CA");
        let parsed = Identity::from_der(&chain[0]).unwrap();
        assert_eq!(parsed.kind, IdentityKind::Relay);
        assert_eq!(parsed.id(), *id);
        assert_eq!(parsed.organisation, *id);
        assert_eq!(parsed.clearance, Some(clearance(accreditation)));
        assert!(parsed.roles.is_empty());
        assert_eq!(
            verify_chain(&chain, &root, at, IdentityKind::Relay).unwrap(),
            parsed
        );
        assert_eq!(
            verify_chain(&chain, &root, at, IdentityKind::User).unwrap_err(),
            IdentityError::WrongKind {
                expected: IdentityKind::User,
                found: IdentityKind::Relay
            }
        );
        assert_key_matches(&dir.join("relay.key"), &parsed);

        let config = toml_of(&dir.join("relay.toml"));
        assert_eq!(s(&config, "id"), *id);
        assert_eq!(s(&config, "listen"), format!("127.0.0.1:{}", 47_200 + i));
        assert_eq!(s(&config, "cert"), "relay.crt");
        assert_eq!(s(&config, "key"), "relay.key");
        assert_eq!(s(&config, "trust_anchors"), "../../ca/root.crt");
        assert_eq!(s(&config, "data_dir"), "data");
        assert!(
            config.get("accreditation").is_none(),
            "accreditation stays commented out"
        );
        assert!(
            read(&dir.join("relay.toml"))
                .contains(&format!("# accreditation = \"{accreditation}\""))
        );
        let admins = config["org_admins"].as_array().unwrap();
        assert_eq!(admins.len(), 1);
        assert_eq!(admins[0].as_str().unwrap(), format!("admin@{id}"));
        assert_eq!(
            fs::canonicalize(dir.join(s(&config, "trust_anchors"))).unwrap(),
            fs::canonicalize(out.join("ca/root.crt")).unwrap()
        );
        // The relay's own organisation's CRL (demo relay id = organisation id).
        let crls = config["crls"].as_array().unwrap();
        assert_eq!(crls.len(), 1);
        assert_eq!(
            crls[0].as_str().unwrap(),
            format!("../../orgs/{id}/crl.pem")
        );
        assert_eq!(
            fs::canonicalize(dir.join(crls[0].as_str().unwrap())).unwrap(),
            fs::canonicalize(out.join(format!("orgs/{id}/crl.pem"))).unwrap()
        );
        assert!(read(&dir.join("relay.toml")).contains("\n#   crls "));
        let peers = config["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 3);
        for peer in peers {
            let peer = peer.as_table().unwrap();
            let pid = s(peer, "id");
            assert_ne!(pid, *id);
            let j = DEMO_RELAYS.iter().position(|(r, _)| *r == pid).unwrap();
            assert_eq!(s(peer, "address"), format!("127.0.0.1:{}", 47_200 + j));
        }
    }

    for (user, label, roles) in DEMO_USERS {
        let dir = out.join("users").join(user);
        let chain = chain_of(&dir.join("user.crt"));
        assert_eq!(chain.len(), 2, "user chain is leaf + organisation CA");
        let parsed = Identity::from_der(&chain[0]).unwrap();
        let (name, relay) = identity::parse_user_id(user).unwrap();
        assert_eq!(parsed.kind, IdentityKind::User);
        assert_eq!(parsed.id(), user);
        assert_eq!(parsed.name, name);
        assert_eq!(parsed.home_relay, relay);
        assert_eq!(parsed.organisation, relay);
        assert_eq!(parsed.clearance, Some(clearance(label)));
        assert_eq!(
            parsed.roles,
            roles.iter().map(|r| r.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(
            verify_chain(&chain, &root, at, IdentityKind::User).unwrap(),
            parsed
        );
        assert_key_matches(&dir.join("user.key"), &parsed);

        let profile = toml_of(&dir.join("profile.toml"));
        assert_eq!(s(&profile, "user"), user);
        assert_eq!(s(&profile, "relay_id"), relay);
        let relay_config = toml_of(&out.join("relays").join(relay).join("relay.toml"));
        assert_eq!(s(&profile, "relay"), s(&relay_config, "listen"));
        assert_eq!(s(&profile, "cert"), "user.crt");
        assert_eq!(s(&profile, "key"), "user.key");
        assert_eq!(s(&profile, "trust_anchors"), "../../ca/root.crt");
        assert_eq!(s(&profile, "state_dir"), "state");
        assert_eq!(s(&profile, "passphrase_file"), "passphrase");
        assert!(
            read(&dir.join("profile.toml")).contains("DEVELOPMENT ONLY"),
            "the profile says the passphrase file is for development only"
        );
    }
    // The specific facts of the demo federation.
    let analist =
        Identity::from_der(&chain_of(&out.join("users/analist@aivd/user.crt"))[0]).unwrap();
    assert_eq!(
        analist.clearance.unwrap().to_string(),
        "NL:STG-ZEER-GEHEIM;CMP=CYBER"
    );
    let admin = Identity::from_der(&chain_of(&out.join("users/admin@bz/user.crt"))[0]).unwrap();
    assert!(admin.has_role("org-admin"));
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    // An existing empty directory is fine.
    init_demo(tmp.path(), DEFAULT_BASE_PORT, false, NOW).unwrap();
    let before = read(&tmp.path().join("ca/root.crt"));
    let e = init_demo(tmp.path(), DEFAULT_BASE_PORT, false, NOW).unwrap_err();
    assert!(matches!(e, CertsError::OutputNotEmpty { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("--force"));
    assert_eq!(
        read(&tmp.path().join("ca/root.crt")),
        before,
        "nothing was touched"
    );

    // --force replaces the managed directories, keeps other files.
    fs::write(tmp.path().join("notes.txt"), "keep me").unwrap();
    fs::create_dir_all(tmp.path().join("relays/bz/data")).unwrap();
    fs::write(tmp.path().join("relays/bz/data/stale"), "x").unwrap();
    let summary = init_demo(tmp.path(), DEFAULT_BASE_PORT, true, NOW).unwrap();
    assert!(summary.replaced);
    assert_ne!(read(&tmp.path().join("ca/root.crt")), before);
    assert_eq!(read(&tmp.path().join("notes.txt")), "keep me");
    assert!(!tmp.path().join("relays/bz/data").exists());

    // A file where the directory should be.
    let file = tmp.path().join("notes.txt");
    assert!(matches!(
        init_demo(&file, DEFAULT_BASE_PORT, true, NOW),
        Err(CertsError::NotADirectory { .. })
    ));
}

#[test]
fn base_port_must_leave_room() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [0u16, 65_533] {
        let e = init_demo(&tmp.path().join("x"), bad, false, NOW).unwrap_err();
        assert!(matches!(e, CertsError::InvalidArgument { .. }), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
    assert!(
        !tmp.path().join("x").exists(),
        "nothing written on a usage error"
    );
    init_demo(&tmp.path().join("y"), 65_532, false, NOW).unwrap();
}

/// A PKI with organisations bz and nctv.
fn pki() -> Pki {
    let mut pki = Pki::new(NOW).unwrap();
    pki.add_organisation("bz").unwrap();
    pki.add_organisation("nctv").unwrap();
    pki
}

fn user_spec() -> UserSpec {
    UserSpec::new("liaison", "bz", "bz")
        .with_clearance(clearance("NL:STG-GEHEIM"))
        .with_role("org-admin")
}

fn relay_spec() -> RelaySpec {
    RelaySpec::new("bz", "bz").with_accreditation(clearance("NL:STG-GEHEIM"))
}

/// Result of checking a certificate the way a relay does.
fn check(pki: &Pki, cert: &IssuedCert, kind: IdentityKind) -> Result<Identity, IdentityError> {
    Identity::from_der(&cert.cert_der)?;
    verify_chain(&cert.chain_der, &pki.anchors(), NOW as u64, kind)
}

#[test]
fn every_quirk_is_caught_by_its_check() {
    let pki = pki();
    for quirk in Quirk::ALL {
        for kind in [IdentityKind::User, IdentityKind::Relay] {
            let issued = match kind {
                IdentityKind::User => pki.issue_user(&user_spec().with_quirk(quirk)),
                IdentityKind::Relay => pki.issue_relay(&relay_spec().with_quirk(quirk)),
            };
            if !quirk.applies_to(kind) {
                assert!(
                    matches!(issued, Err(CertsError::QuirkNotApplicable { .. })),
                    "{quirk} {kind}"
                );
                continue;
            }
            let cert = issued.unwrap();
            let result = check(&pki, &cert, kind);
            let ok = match (quirk, kind, &result) {
                (Quirk::None, _, Ok(id)) => id.clearance == Some(clearance("NL:STG-GEHEIM")),
                (Quirk::NoClearance, IdentityKind::User, Ok(id)) => {
                    id.clearance.is_none() && id.roles == ["org-admin"]
                }
                (Quirk::NoClearance, IdentityKind::Relay, Ok(id)) => id.clearance.is_none(),
                (Quirk::Expired, _, Err(IdentityError::Expired { .. })) => true,
                (Quirk::NotYetValid, _, Err(IdentityError::NotYetValid { .. })) => true,
                (Quirk::ForeignCa, _, Err(IdentityError::UnknownIssuer)) => true,
                (Quirk::MalformedClearance, _, Err(IdentityError::BadClearance { .. })) => true,
                (
                    Quirk::RelayAsUser,
                    IdentityKind::User,
                    Err(IdentityError::EkuForbidden {
                        kind: IdentityKind::User,
                        ..
                    }),
                ) => true,
                (
                    Quirk::UserAsRelay,
                    IdentityKind::Relay,
                    Err(IdentityError::EkuMissing {
                        kind: IdentityKind::Relay,
                        missing: "serverAuth",
                    }),
                ) => true,
                (Quirk::WrongSan, IdentityKind::User, Err(IdentityError::NameMismatch { .. })) => {
                    true
                }
                (
                    Quirk::WrongSan,
                    IdentityKind::Relay,
                    Err(IdentityError::DnsSanMismatch { .. }),
                ) => true,
                (Quirk::NoUriSan, _, Err(IdentityError::MissingSan)) => true,
                (Quirk::NoOrganisation, _, Err(IdentityError::MissingOrganisation)) => true,
                _ => false,
            };
            assert!(ok, "{quirk} on a {kind} certificate gave {result:?}");
        }
    }
}

#[test]
fn relay_and_user_certificates_are_not_interchangeable() {
    let pki = pki();
    let relay = pki.issue_relay(&relay_spec()).unwrap();
    let user = pki.issue_user(&user_spec()).unwrap();
    assert!(matches!(
        check(&pki, &relay, IdentityKind::User),
        Err(IdentityError::WrongKind { .. })
    ));
    assert!(matches!(
        check(&pki, &user, IdentityKind::Relay),
        Err(IdentityError::WrongKind { .. })
    ));
}

#[test]
fn specs_are_validated() {
    let pki = pki();
    assert!(matches!(
        pki.issue_user(&UserSpec::new("Bad Name", "bz", "bz")),
        Err(CertsError::Identity(IdentityError::BadName { .. }))
    ));
    assert!(matches!(
        pki.issue_user(&UserSpec::new("a", "bz", "aivd")),
        Err(CertsError::UnknownOrganisation { .. })
    ));
    assert!(matches!(
        pki.issue_user(&user_spec().with_role("Not A Role")),
        Err(CertsError::Identity(IdentityError::BadRole { .. }))
    ));
    assert!(matches!(
        pki.issue_user(&user_spec().with_validity(Validity {
            not_before: NOW,
            not_after: NOW
        })),
        Err(CertsError::InvalidArgument { .. })
    ));
    // A custom validity window is honoured.
    let cert = pki
        .issue_user(&user_spec().with_validity(Validity::days_from(NOW, 2)))
        .unwrap();
    let id = Identity::from_der(&cert.cert_der).unwrap();
    assert_eq!(id.not_after, NOW + 2 * DAY);
    assert_eq!(
        id.serial,
        cert.serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // An organisation CA may not issue for another organisation.
    let mut wrong_org = user_spec();
    wrong_org.organisation = "nctv".into();
    let cert = pki.issue_user(&wrong_org).unwrap();
    let mut chain = cert.chain_der.clone();
    chain[1] = pki.organisation("bz").unwrap().cert_der().to_vec();
    assert!(verify_chain(&chain, &pki.anchors(), NOW as u64, IdentityKind::User).is_err());
}

#[test]
fn crls_revoke() {
    let pki = pki();
    let cert = pki.issue_user(&user_spec()).unwrap();
    let bz = pki.organisation("bz").unwrap();
    let crl = bz
        .crl(
            std::slice::from_ref(&cert.serial),
            1,
            NOW - DAY,
            NOW + 7 * DAY,
        )
        .unwrap();
    let check = RevocationCheck {
        crls: std::slice::from_ref(&crl),
        depth: RevocationDepth::EndEntity,
        unknown_status: UnknownRevocationStatus::Deny,
        enforce_next_update: true,
    };
    assert_eq!(
        verify_chain_with_revocation(
            &cert.chain_der,
            &pki.anchors(),
            NOW as u64,
            IdentityKind::User,
            Some(&check)
        )
        .unwrap_err(),
        IdentityError::Revoked
    );
    let other = pki.issue_user(&UserSpec::new("other", "bz", "bz")).unwrap();
    verify_chain_with_revocation(
        &other.chain_der,
        &pki.anchors(),
        NOW as u64,
        IdentityKind::User,
        Some(&check),
    )
    .unwrap();
    assert!(bz.crl(&[], 2, NOW, NOW).is_err());
}

#[test]
fn authorities_load_back_and_keep_issuing() {
    let pki = pki();
    let bz = pki.organisation("bz").unwrap();
    let loaded = Authority::load("bz", bz.cert_pem(), &bz.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), bz.cert_der());
    let root = Authority::load(
        ROOT_ORGANISATION,
        pki.root().cert_pem(),
        &pki.root().key_pem(),
    )
    .unwrap();
    let again = Pki::from_authorities(NOW, root, vec![loaded]);
    let cert = again.issue_user(&user_spec()).unwrap();
    check(&pki, &cert, IdentityKind::User).unwrap();
    // Mismatched key and certificate.
    let nctv = pki.organisation("nctv").unwrap();
    assert!(matches!(
        Authority::load("bz", bz.cert_pem(), &nctv.key_pem()),
        Err(CertsError::KeyMismatch { .. })
    ));
    assert!(matches!(
        Authority::load("bz", "junk", &bz.key_pem()),
        Err(CertsError::BadFile { .. })
    ));
    // An issued leaf is no CA.
    let leaf = pki.issue_user(&user_spec()).unwrap();
    assert!(matches!(
        Authority::load("bz", &leaf.cert_pem, &leaf.key_pem),
        Err(CertsError::BadFile { .. })
    ));
}

#[test]
fn issue_user_adds_a_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_demo(dir, 47_300, false, NOW).unwrap();
    let request = IssueUserRequest {
        user: "consul@post-a".into(),
        clearance: clearance("NL:STG-CONFIDENTIEEL;REL=NLD"),
        roles: vec!["org-admin".into()],
        not_after: Some(NOW + 30 * DAY),
        force: false,
    };
    let entry = issue_user_into(dir, &request, NOW).unwrap();
    assert_eq!(entry.organisation, "post-a");
    let udir = dir.join("users/consul@post-a");
    assert_eq!(entry.profile_dir, udir);
    let chain = chain_of(&udir.join("user.crt"));
    let root = chain_of(&dir.join("ca/root.crt"));
    let id = verify_chain(&chain, &root, NOW as u64, IdentityKind::User).unwrap();
    assert_eq!(id.id(), "consul@post-a");
    assert_eq!(id.organisation, "post-a");
    assert_eq!(
        id.clearance,
        Some(clearance("NL:STG-CONFIDENTIEEL;REL=NLD"))
    );
    assert_eq!(id.roles, ["org-admin"]);
    assert_eq!(id.not_after, NOW + 30 * DAY);
    assert_key_matches(&udir.join("user.key"), &id);
    let profile = toml_of(&udir.join("profile.toml"));
    assert_eq!(s(&profile, "relay"), "127.0.0.1:47303");
    assert_eq!(s(&profile, "relay_id"), "post-a");

    // Existing user: refused, then replaced with force.
    let e = issue_user_into(dir, &request, NOW).unwrap_err();
    assert!(matches!(e, CertsError::UserExists { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    let forced = IssueUserRequest {
        force: true,
        ..request.clone()
    };
    issue_user_into(dir, &forced, NOW).unwrap();
    assert_ne!(chain_of(&udir.join("user.crt"))[0], chain[0]);

    // Unknown relay, bad names.
    let e = issue_user_into(
        dir,
        &IssueUserRequest {
            user: "x@nowhere".into(),
            ..request.clone()
        },
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, CertsError::UnknownRelay { .. }), "{e}");
    assert!(matches!(
        issue_user_into(
            dir,
            &IssueUserRequest {
                user: "no-relay".into(),
                ..request.clone()
            },
            NOW
        ),
        Err(CertsError::Identity(IdentityError::BadName { .. }))
    ));
    // An already-expired certificate can be minted for tests; it verifies only in
    // its window.
    let expired = issue_user_into(
        dir,
        &IssueUserRequest {
            user: "old@bz".into(),
            not_after: Some(NOW - DAY),
            ..request.clone()
        },
        NOW,
    )
    .unwrap();
    let chain = chain_of(&expired.profile_dir.join("user.crt"));
    assert!(matches!(
        verify_chain(&chain, &root, NOW as u64, IdentityKind::User),
        Err(IdentityError::Expired { .. })
    ));
    // A damaged organisation CA key is detected.
    fs::remove_file(dir.join("orgs/nctv/ca.key")).unwrap();
    fs::write(
        dir.join("orgs/nctv/ca.key"),
        read(&dir.join("orgs/bz/ca.key")),
    )
    .unwrap();
    assert!(matches!(
        issue_user_into(
            dir,
            &IssueUserRequest {
                user: "y@nctv".into(),
                ..request
            },
            NOW
        ),
        Err(CertsError::KeyMismatch { .. })
    ));
}

/// The DER of a PEM `X509 CRL` file.
fn crl_der_of(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (rest, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
    assert!(rest.iter().all(u8::is_ascii_whitespace), "one PEM block");
    assert_eq!(pem.label, "X509 CRL");
    pem.contents
}

/// The organisation CA (DER) and the root (DER) of a federation directory.
fn ca_and_root(dir: &Path, org: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let ca = chain_of(&dir.join(format!("orgs/{org}/ca.crt")));
    (ca[0].clone(), chain_of(&dir.join("ca/root.crt")))
}

/// Verifies `DIR/orgs/ORG/crl.pem` the way a relay does.
fn verified_crl(dir: &Path, org: &str, now: i64) -> VerifiedCrl {
    let (ca, root) = ca_and_root(dir, org);
    verify_crl(
        &crl_der_of(&dir.join(format!("orgs/{org}/crl.pem"))),
        &ca,
        &root,
        now,
    )
    .unwrap()
}

/// (CRL number, nextUpdate, [(serial hex, revocationDate)]) of a CRL file.
fn crl_details(path: &Path) -> (u64, i64, Vec<(String, i64)>) {
    let der = crl_der_of(path);
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    let number = u64::try_from(crl.crl_number().unwrap()).unwrap();
    let next = crl.next_update().unwrap().timestamp();
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| {
            let hex: String = r.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
            (hex, r.revocation_date.timestamp())
        })
        .collect();
    (number, next, entries)
}

fn leaf_of(dir: &Path, user: &str) -> Identity {
    Identity::from_der(&chain_of(&dir.join(format!("users/{user}/user.crt")))[0]).unwrap()
}

#[test]
fn init_writes_empty_crls_that_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_demo(dir, 47_500, false, NOW).unwrap();
    for (org, _) in DEMO_RELAYS {
        let crl = verified_crl(dir, org, NOW);
        assert_eq!(crl.organisation, org);
        assert!(crl.serials.is_empty());
        assert_eq!(crl.this_update, NOW);
        let path = crl_path(dir, org);
        assert_eq!(path, dir.join(format!("orgs/{org}/crl.pem")));
        let (number, next, entries) = crl_details(&path);
        assert_eq!(number, 1);
        assert_eq!(next, NOW + CRL_DAYS * DAY);
        assert!(entries.is_empty());
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o644);
        // Signed by its own organisation's CA only.
        let (other_ca, root) = ca_and_root(dir, if org == "bz" { "nctv" } else { "bz" });
        assert!(verify_crl(&crl_der_of(&path), &other_ca, &root, NOW).is_err());
    }
}

#[test]
fn revoke_cert_adds_the_serial_once_and_is_always_newer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_demo(dir, 47_600, false, NOW).unwrap();
    let bz_crl = crl_path(dir, "bz");
    let mut enforced = Revocations::new();
    assert_eq!(
        enforced
            .add_crl(&verified_crl(dir, "bz", NOW))
            .map(|c| c.added),
        Some(Vec::new())
    );

    // In the same second as init: thisUpdate still moves forward.
    let liaison = leaf_of(dir, "liaison@bz");
    let first = revoke_user_certificate(dir, "liaison@bz", NOW).unwrap();
    assert_eq!(first.user, "liaison@bz");
    assert_eq!(first.organisation, "bz");
    assert_eq!(first.serial, liaison.serial);
    assert_eq!(first.crl_path, bz_crl);
    assert_eq!(first.crl_number, 2);
    assert_eq!(first.this_update, NOW + 1);
    assert_eq!(first.next_update, NOW + 1 + CRL_DAYS * DAY);
    assert_eq!(first.entries, 1);
    assert!(!first.already_revoked);
    let crl = verified_crl(dir, "bz", NOW);
    assert_eq!(crl.serials, vec![liaison.serial.clone()]);
    assert_eq!(crl.this_update, NOW + 1);
    assert_eq!(
        enforced.add_crl(&crl).map(|c| c.added),
        Some(vec![liaison.serial.clone()])
    );
    assert!(enforced.check(&liaison).is_err());
    assert!(enforced.check(&leaf_of(dir, "admin@bz")).is_ok());
    let (number, next, _) = crl_details(&bz_crl);
    assert_eq!((number, next), (2, NOW + 1 + CRL_DAYS * DAY));

    // Again: nothing changes, and it says so.
    let before = fs::read(&bz_crl).unwrap();
    let again = revoke_user_certificate(dir, "liaison@bz", NOW + 10).unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.serial, liaison.serial);
    assert_eq!((again.crl_number, again.entries), (2, 1));
    assert_eq!(again.this_update, NOW + 1);
    assert_eq!(
        fs::read(&bz_crl).unwrap(),
        before,
        "the CRL is not rewritten"
    );

    // A second revocation in the same second: number and thisUpdate grow again.
    let admin = leaf_of(dir, "admin@bz");
    let second =
        revoke_user_certificate_with_reason(dir, "admin@bz", Some("left the service"), NOW)
            .unwrap();
    assert_eq!(second.serial, admin.serial);
    assert_eq!((second.crl_number, second.this_update), (3, NOW + 2));
    assert_eq!(second.entries, 2);
    let crl = verified_crl(dir, "bz", NOW);
    assert_eq!(
        crl.serials,
        vec![liaison.serial.clone(), admin.serial.clone()]
    );
    assert_eq!(crl.this_update, NOW + 2);
    assert_eq!(
        enforced.add_crl(&crl).map(|c| c.added),
        Some(vec![admin.serial.clone()])
    );
    assert!(enforced.check(&admin).is_err() && enforced.check(&liaison).is_err());

    // The CRL also works for chain verification with revocation.
    let crl_der = crl_der_of(&bz_crl);
    let root = chain_of(&dir.join("ca/root.crt"));
    let check = RevocationCheck {
        crls: std::slice::from_ref(&crl_der),
        depth: RevocationDepth::EndEntity,
        unknown_status: UnknownRevocationStatus::Deny,
        enforce_next_update: true,
    };
    let verify = |user: &str| {
        verify_chain_with_revocation(
            &chain_of(&dir.join(format!("users/{user}/user.crt"))),
            &root,
            NOW as u64,
            IdentityKind::User,
            Some(&check),
        )
    };
    assert_eq!(verify("liaison@bz").unwrap_err(), IdentityError::Revoked);
    assert_eq!(verify("admin@bz").unwrap_err(), IdentityError::Revoked);

    // Re-issued later, then revoked later: old entries keep their revocation time.
    issue_user_into(
        dir,
        &IssueUserRequest {
            user: "liaison@bz".into(),
            clearance: clearance("NL:STG-GEHEIM"),
            roles: Vec::new(),
            not_after: None,
            force: true,
        },
        NOW + 50,
    )
    .unwrap();
    let renewed = leaf_of(dir, "liaison@bz");
    assert_ne!(renewed.serial, liaison.serial);
    assert!(
        enforced.check(&renewed).is_ok(),
        "a new certificate is not revoked"
    );
    let third = revoke_user_certificate(dir, "liaison@bz", NOW + 50).unwrap();
    assert_eq!((third.crl_number, third.this_update), (4, NOW + 50));
    assert_eq!(third.entries, 3);
    let (_, _, entries) = crl_details(&bz_crl);
    assert_eq!(
        entries,
        vec![
            (liaison.serial.clone(), NOW),
            (admin.serial.clone(), NOW),
            (renewed.serial.clone(), NOW + 50)
        ]
    );
    // Other organisations' CRLs are untouched.
    assert!(verified_crl(dir, "nctv", NOW).serials.is_empty());

    // The reasons are recorded for people.
    let log = read(&dir.join("orgs/bz/crl.log"));
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].contains(&liaison.serial) && lines[0].ends_with("(no reason given)"));
    assert!(lines[1].contains(&admin.serial) && lines[1].ends_with("\tadmin@bz\tleft the service"));
    assert!(lines[2].contains(&renewed.serial));
    // No temporary file is left behind.
    let names: Vec<String> = fs::read_dir(dir.join("orgs/bz"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key", "crl.log", "crl.pem"]);
}

#[test]
fn revoke_cert_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fed");
    init_demo(&dir, 47_700, false, NOW).unwrap();
    let usage = |e: CertsError| {
        assert_eq!(e.exit_code(), 2, "{e}");
        e
    };

    let e = usage(revoke_user_certificate(&dir, "nobody@bz", NOW).unwrap_err());
    assert!(matches!(e, CertsError::UnknownUser { .. }), "{e}");
    assert!(e.to_string().contains("nobody@bz"), "{e}");
    for bad in ["no-relay", "../../ca", "a@b@c", ""] {
        let e = usage(revoke_user_certificate(&dir, bad, NOW).unwrap_err());
        assert!(
            matches!(e, CertsError::InvalidArgument { .. }),
            "{bad}: {e}"
        );
    }
    for reason in ["line\nbreak", &"x".repeat(513)] {
        let e = usage(
            revoke_user_certificate_with_reason(&dir, "liaison@bz", Some(reason), NOW).unwrap_err(),
        );
        assert!(
            matches!(
                e,
                CertsError::InvalidArgument {
                    what: "--reason",
                    ..
                }
            ),
            "{e}"
        );
    }
    // Nothing was revoked by the refused calls.
    assert!(verified_crl(&dir, "bz", NOW).serials.is_empty());

    // A missing CRL starts a new one (number 1).
    fs::remove_file(crl_path(&dir, "nctv")).unwrap();
    let r = revoke_user_certificate(&dir, "liaison@nctv", NOW).unwrap();
    assert_eq!((r.crl_number, r.this_update, r.entries), (1, NOW, 1));
    assert_eq!(
        verified_crl(&dir, "nctv", NOW).serials,
        vec![leaf_of(&dir, "liaison@nctv").serial]
    );

    // A CRL of another CA is refused, and left alone.
    let bz_crl = fs::read(crl_path(&dir, "bz")).unwrap();
    fs::write(crl_path(&dir, "aivd"), &bz_crl).unwrap();
    let e = revoke_user_certificate(&dir, "analist@aivd", NOW).unwrap_err();
    assert!(matches!(e, CertsError::BadFile { .. }), "{e}");
    assert_eq!(e.exit_code(), 1);
    assert_eq!(fs::read(crl_path(&dir, "aivd")).unwrap(), bz_crl);
    fs::write(crl_path(&dir, "aivd"), "-----BEGIN X509 CRL-----\njunk\n").unwrap();
    assert!(matches!(
        revoke_user_certificate(&dir, "analist@aivd", NOW),
        Err(CertsError::BadFile { .. })
    ));

    // A certificate from another federation (not issued by this org CA).
    let other = tmp.path().join("other");
    init_demo(&other, 47_800, false, NOW).unwrap();
    fs::copy(
        other.join("users/admin@post-a/user.crt"),
        dir.join("users/admin@post-a/user.crt"),
    )
    .unwrap();
    let e = revoke_user_certificate(&dir, "admin@post-a", NOW).unwrap_err();
    assert!(
        matches!(&e, CertsError::BadFile { reason, .. } if reason.contains("not issued by")),
        "{e}"
    );
    // A certificate of someone else in the user's directory.
    fs::copy(
        dir.join("users/analist@post-a/user.crt"),
        dir.join("users/attache@post-a/user.crt"),
    )
    .unwrap();
    assert!(matches!(
        revoke_user_certificate(&dir, "attache@post-a", NOW),
        Err(CertsError::BadFile { .. })
    ));
    // A missing organisation CA key.
    fs::remove_file(dir.join("orgs/post-a/ca.key")).unwrap();
    let e = revoke_user_certificate(&dir, "analist@post-a", NOW).unwrap_err();
    assert!(matches!(e, CertsError::Io { .. }), "{e}");
    assert_eq!(e.exit_code(), 1);
    assert!(verified_crl(&dir, "post-a", NOW).serials.is_empty());
}

/// The DER inside a PEM `PRIVATE KEY` file.
/// The PKCS#8 DER of a key file: user keys are encrypted under the passphrase
/// beside them, the others are in the clear.
fn key_der_of(path: &Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let passphrase = path.with_file_name(crate::federation::PASSPHRASE_FILE);
    if path.file_name().is_some_and(|n| n == "user.key") {
        assert!(
            kring_protocol::keyfile::is_encrypted(&text),
            "{}",
            path.display()
        );
        let pass = fs::read_to_string(&passphrase).unwrap();
        let pass = pass.trim_end();
        assert!(pass.len() >= 32, "a random passphrase");
        assert_eq!(
            kring_protocol::keyfile::decrypt_pem(&text, b"not it"),
            Err(kring_protocol::keyfile::KeyFileError::WrongPassphrase)
        );
        #[cfg(unix)]
        assert_eq!(mode(&passphrase), 0o600);
        return kring_protocol::keyfile::decrypt_pem(&text, pass.as_bytes())
            .unwrap()
            .to_vec();
    }
    assert!(!passphrase.exists(), "{}", path.display());
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).unwrap();
    assert_eq!(pem.label, "PRIVATE KEY", "{}", path.display());
    pem.contents
}

/// Every `*.key` file under `dir`.
fn key_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(key_files(&path));
        } else if path.extension().is_some_and(|e| e == "key") {
            out.push(path);
        }
    }
    out
}

#[test]
fn every_key_written_is_pkcs8_v1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_demo(dir, 47_900, false, NOW).unwrap();
    issue_user_into(
        dir,
        &IssueUserRequest {
            user: "consul@bz".into(),
            clearance: clearance("NL:STG-GEHEIM"),
            roles: Vec::new(),
            not_after: None,
            force: false,
        },
        NOW,
    )
    .unwrap();
    let keys = key_files(dir);
    // Root, 4 organisation CAs, 4 relays, the demo users and the new one.
    assert_eq!(keys.len(), 1 + 4 + 4 + DEMO_USERS.len() + 1, "{keys:?}");
    for key in keys {
        let der = key_der_of(&key);
        assert_eq!(der.len(), 48, "{}: not the 48-byte v1 form", key.display());
        assert_eq!(der[..16], ED25519_PKCS8_V1_PREFIX, "{}", key.display());
        // ring (rustls, MLS signing, the relay) reads it.
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
    }
    // The CA keys load back and keep issuing (rcgen reads v1 too).
    let pki = crate::federation::organisation_pki(dir, "bz", NOW).unwrap();
    let cert = pki
        .issue_user(&UserSpec::new("x", "bz", "bz").with_clearance(clearance("NL:STG-GEHEIM")))
        .unwrap();
    verify_chain(
        &cert.chain_der,
        &pki.anchors(),
        NOW as u64,
        IdentityKind::User,
    )
    .unwrap();
}

/// A certificate signing request as `kring enroll` makes one.
fn csr_pem(key: &rcgen::KeyPair, cn: &str, org: Option<&str>, uris: &[&str]) -> String {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(rcgen::DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn ed25519() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()
}

fn sign_request(csr: &str) -> SignCsrRequest {
    SignCsrRequest {
        csr: csr.as_bytes().to_vec(),
        clearance: clearance("NL:STG-GEHEIM;CMP=CYBER"),
        roles: vec!["org-admin".into()],
        not_after: Some(NOW + 90 * DAY),
    }
}

#[test]
fn sign_csr_certifies_the_requested_key_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fed");
    init_demo(&dir, 48_000, false, NOW).unwrap();
    let key = ed25519();
    let csr = csr_pem(
        &key,
        "consul",
        Some("post-a"),
        &["kring:user:consul@post-a"],
    );
    let read = read_csr(csr.as_bytes()).unwrap();
    assert_eq!(read.id(), "consul@post-a");
    assert_eq!(read.organisation.as_deref(), Some("post-a"));
    assert_eq!(read.public_key.as_slice(), key.public_key_raw());

    let out = tmp.path().join("user.crt");
    let certified = sign_csr_into(&dir, &sign_request(&csr), &out, NOW).unwrap();
    assert_eq!(certified.id, "consul@post-a");
    assert_eq!(certified.organisation, "post-a");
    assert_eq!(certified.roles, ["org-admin"]);
    assert_eq!(certified.not_after, NOW + 90 * DAY);
    let chain = chain_of(&out);
    assert_eq!(chain.len(), 2, "certificate, then organisation CA");
    assert_eq!(chain[1], chain_of(&dir.join("orgs/post-a/ca.crt"))[0]);
    let root = chain_of(&dir.join("ca/root.crt"));
    let id = verify_chain(&chain, &root, NOW as u64, IdentityKind::User).unwrap();
    assert_eq!(id.public_key.as_slice(), key.public_key_raw());
    assert_eq!(id.clearance, Some(clearance("NL:STG-GEHEIM;CMP=CYBER")));
    assert_eq!(id.serial, certified.serial);

    // No organisation in the request: the home relay's. The chain file is never
    // overwritten.
    let no_org = csr_pem(&key, "consul", None, &["kring:user:consul@post-a"]);
    let e = sign_csr_into(&dir, &sign_request(&no_org), &out, NOW).unwrap_err();
    assert!(matches!(e, CertsError::OutputExists { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    let out2 = tmp.path().join("user2.crt");
    let c = sign_csr_into(&dir, &sign_request(&no_org), &out2, NOW).unwrap();
    assert_eq!(c.organisation, "post-a");
}

#[test]
fn sign_csr_refuses_requests_it_cannot_vouch_for() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fed");
    init_demo(&dir, 48_100, false, NOW).unwrap();
    let key = ed25519();
    let good = csr_pem(&key, "consul", Some("bz"), &["kring:user:consul@bz"]);
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // The same request with one byte of the subject name changed: the signature
    // no longer verifies.
    let tampered = {
        let der = x509_parser::pem::parse_x509_pem(good.as_bytes())
            .unwrap()
            .1
            .contents;
        let at = der.windows(6).position(|w| w == b"consul").unwrap();
        let mut der = der;
        der[at] = b'k';
        der
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "another organisation",
            csr_pem(&key, "consul", Some("nctv"), &["kring:user:consul@bz"]).into_bytes(),
            "organisation",
        ),
        (
            "CN is not the SAN's user",
            csr_pem(&key, "consul", Some("bz"), &["kring:user:other@bz"]).into_bytes(),
            "CN",
        ),
        (
            "no SAN",
            csr_pem(&key, "consul", Some("bz"), &[]).into_bytes(),
            "exactly one subjectAltName",
        ),
        (
            "two SANs",
            csr_pem(
                &key,
                "consul",
                Some("bz"),
                &["kring:user:consul@bz", "kring:user:consul@nctv"],
            )
            .into_bytes(),
            "exactly one subjectAltName",
        ),
        (
            "a relay identity",
            csr_pem(&key, "bz", Some("bz"), &["kring:relay:bz"]).into_bytes(),
            "not a user identity",
        ),
        (
            "unknown home relay",
            csr_pem(&key, "consul", Some("bz"), &["kring:user:consul@mars"]).into_bytes(),
            "mars",
        ),
        (
            "not Ed25519",
            csr_pem(&p256, "consul", Some("bz"), &["kring:user:consul@bz"]).into_bytes(),
            "Ed25519",
        ),
        ("altered", tampered, "signature"),
        ("not a request", b"hello".to_vec(), "PEM"),
        (
            "a certificate instead",
            read(&dir.join("orgs/bz/ca.crt")).into_bytes(),
            "CERTIFICATE REQUEST",
        ),
        ("too large", vec![b'-'; MAX_CSR_BYTES + 1], "allowed"),
    ];
    for (what, csr, needle) in cases {
        let out = tmp.path().join("never.crt");
        let request = SignCsrRequest {
            csr,
            ..sign_request(&good)
        };
        let e = sign_csr_into(&dir, &request, &out, NOW).unwrap_err();
        assert!(e.to_string().contains(needle), "{what}: {e}");
        assert_eq!(e.exit_code(), 2, "{what}: {e}");
        assert!(!out.exists(), "{what}: nothing written");
    }
    // A bad role.
    let request = SignCsrRequest {
        roles: vec!["Root!".into()],
        ..sign_request(&good)
    };
    let e = sign_csr_into(&dir, &request, &tmp.path().join("x.crt"), NOW).unwrap_err();
    assert!(matches!(e, CertsError::Identity(_)), "{e}");
}

#[test]
fn clearance_der_is_the_certificates_extension() {
    let pki = pki();
    let spec = user_spec().with_clearance(clearance("NL:STG-GEHEIM;CMP=CYBER"));
    let cert = pki.issue_user(&spec).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert_der).unwrap();
    let ext = parsed
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.5.29.9")
        .unwrap();
    let der = clearance_der(
        &clearance("NL:STG-GEHEIM;CMP=CYBER"),
        &["org-admin".to_string()],
    )
    .unwrap();
    assert_eq!(ext.value, der.as_slice());
    assert!(clearance_der(&clearance("NL:STG-GEHEIM"), &["Bad Role".to_string()]).is_err());
}
