//! The certificate matrix against a running relay (revocation is tested
//! with the revocation work): every defective user certificate on the client ALPN,
//! and user and defective relay certificates on the federation ALPN, each refused at
//! the right place (TLS handshake or the relay's identity check) with a specific
//! reason, an audit record, and the relay serving others afterwards.
//! `single_relay::bad_certificates_are_refused_by_the_relay` covers the client-side
//! view of expired, not-yet-valid, foreign-CA and relay-as-user certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::path::{Path, PathBuf};

use kring_certs_dev::Quirk;
use kring_protocol::wire::{self, ErrorCode, Response};
use kring_tests::chaos::{decode_answer, raw_connect, raw_stream};
use kring_tests::{Federation, RelayLauncher, now};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// What happened to a connection attempt (the strings are read through `Debug` in
/// failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Outcome {
    /// The TLS handshake failed (the relay's rustls verifier refused the chain).
    Handshake(String),
    /// The relay answered with a typed refusal.
    Refused(ErrorCode),
    /// The relay answered something else (it let the certificate in).
    Served(String),
    /// The connection failed otherwise.
    Other(String),
}

async fn attempt(fed: &Federation, relay: &str, chain: &Path, key: &Path, alpn: &[u8]) -> Outcome {
    let (_ep, conn) = match raw_connect(fed, relay, chain, key, alpn).await {
        Ok(c) => c,
        Err(e) => return Outcome::Handshake(e),
    };
    let frame = wire::encode_frame(&wire::Request::Ping, wire::DEFAULT_MAX_FRAME).unwrap();
    let bytes = match raw_stream(&conn, &frame, true).await {
        Ok(b) => b,
        Err(e) => return Outcome::Other(e),
    };
    match decode_answer::<Response>(&bytes) {
        Ok(Response::Error(code)) => Outcome::Refused(code),
        Ok(other) => Outcome::Served(format!("{other:?}")),
        Err(e) => Outcome::Served(format!("undecodable answer ({e})")),
    }
}

/// Mints a relay certificate for `id` (signed by its organisation CA) with a quirk,
/// into a scratch directory. Returns (chain PEM file, key PEM file).
fn quirky_relay(fed: &Federation, id: &str, quirk: Quirk, tag: &str) -> (PathBuf, PathBuf) {
    let pki = fed.org_pki(id).unwrap();
    let spec = kring_certs_dev::RelaySpec::new(id, id)
        .with_accreditation("NL:STG-GEHEIM".parse().unwrap())
        .with_quirk(quirk);
    let cert = pki.issue_relay(&spec).unwrap();
    let dir = fed.dir().join("quirky-relays").join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (dir.join("relay.crt"), dir.join("relay.key"));
    std::fs::write(&crt, &cert.chain_pem).unwrap();
    std::fs::write(&key, &cert.key_pem).unwrap();
    (crt, key)
}

/// TLS 1.3 verifies the client certificate after the client considers the
/// handshake done: the refusal arrives as the connection's close reason.
fn refused_by_tls(outcome: &Outcome, needle: &str) -> bool {
    match outcome {
        Outcome::Handshake(e) | Outcome::Other(e) => {
            e.contains("invalid peer certificate") && e.contains(needle)
        }
        _ => false,
    }
}

fn note(o: &Outcome, refusals: &mut Vec<String>, tls: &mut usize) {
    match o {
        Outcome::Refused(ErrorCode::Unauthenticated { reason }) => refusals.push(reason.clone()),
        Outcome::Handshake(e) | Outcome::Other(e) if e.contains("invalid peer certificate") => {
            *tls += 1
        }
        _ => {}
    }
}

fn refused_with(outcome: &Outcome, needle: &str) -> bool {
    match outcome {
        Outcome::Refused(ErrorCode::Unauthenticated { reason }) => reason.contains(needle),
        _ => false,
    }
}

/// The audit records of `relay` read by its org-admin.
async fn audit_details(fed: &Federation, admin: &str) -> Vec<(String, String, String)> {
    let mut a = fed.client(admin).unwrap();
    let page = a.audit_all(true).await.unwrap();
    assert_eq!(page.verify.unwrap().first_bad, None);
    page.records
        .into_iter()
        .map(|r| (r.kind, r.action, r.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_defective_certificate_is_refused_at_the_right_place() {
    let mut fed = federation();
    fed.start("bz").unwrap();

    // Users on the client ALPN. (quirk, where, what the reason must say)
    let user_cases: [(&str, Quirk, &str, &str); 9] = [
        ("verlopen@bz", Quirk::Expired, "tls", "certificate expired"),
        ("toekomst@bz", Quirk::NotYetValid, "tls", "not valid yet"),
        ("vreemd@bz", Quirk::ForeignCa, "tls", "UnknownIssuer"),
        (
            "relaycert@bz",
            Quirk::RelayAsUser,
            "relay",
            "extended key usage",
        ),
        ("verkeerd@bz", Quirk::WrongSan, "relay", "does not match"),
        // No clearance: let in (a user may still ping and list), refused by policy
        // wherever a label is decided; checked below.
        ("zonder@bz", Quirk::NoClearance, "served", ""),
        ("kapot@bz", Quirk::MalformedClearance, "relay", "Clearance"),
        ("naamloos@bz", Quirk::NoUriSan, "relay", "subjectAltName"),
        (
            "stateloos@bz",
            Quirk::NoOrganisation,
            "relay",
            "organizationName",
        ),
    ];
    let mut failures = Vec::new();
    let mut refusals: Vec<String> = Vec::new();
    let mut tls_refusals = 0;
    for (user, quirk, place, needle) in user_cases {
        let dir = kring_tests::issue_quirky_user(&fed, user, quirk).unwrap();
        let o = attempt(
            &fed,
            "bz",
            &dir.join("user.crt"),
            &dir.join("user.key"),
            wire::ALPN_CLIENT,
        )
        .await;
        eprintln!("user {user} ({quirk}): {o:?}");
        note(&o, &mut refusals, &mut tls_refusals);
        let ok = match place {
            "tls" => refused_by_tls(&o, needle),
            "served" => matches!(&o, Outcome::Served(_)),
            _ => refused_with(&o, needle),
        };
        if !ok {
            failures.push(format!(
                "user {user} ({quirk}): {o:?}, wanted {place} / {needle}"
            ));
        }
    }

    // A user certificate on the federation ALPN.
    let liaison = fed.user_dir("liaison@bz");
    let o = attempt(
        &fed,
        "bz",
        &liaison.join("user.crt"),
        &liaison.join("user.key"),
        wire::ALPN_FEDERATION,
    )
    .await;
    eprintln!("user certificate as a relay: {o:?}");
    note(&o, &mut refusals, &mut tls_refusals);
    if !refused_with(&o, "relay") {
        failures.push(format!("user certificate as a relay: {o:?}"));
    }
    // Defective certificates of a configured peer (nctv) on the federation ALPN.
    let relay_cases: [(Quirk, &str, &str); 6] = [
        (Quirk::UserAsRelay, "relay", "serverAuth"),
        (Quirk::WrongSan, "relay", "DNS"),
        // No accreditation: accepted as a peer whose accreditation admits no label.
        (Quirk::NoClearance, "served", ""),
        (Quirk::MalformedClearance, "relay", "Clearance"),
        (Quirk::Expired, "tls", "certificate expired"),
        (Quirk::ForeignCa, "tls", "UnknownIssuer"),
    ];
    for (i, (quirk, place, needle)) in relay_cases.into_iter().enumerate() {
        let (crt, key) = quirky_relay(&fed, "nctv", quirk, &format!("nctv-{i}"));
        let o = attempt(&fed, "bz", &crt, &key, wire::ALPN_FEDERATION).await;
        eprintln!("relay nctv ({quirk}): {o:?}");
        note(&o, &mut refusals, &mut tls_refusals);
        let ok = match place {
            "tls" => refused_by_tls(&o, needle),
            "served" => matches!(&o, Outcome::Served(_)),
            _ => refused_with(&o, needle),
        };
        if !ok {
            failures.push(format!(
                "relay nctv ({quirk}): {o:?}, wanted {place} / {needle}"
            ));
        }
    }

    // The relay serves a good user afterwards.
    let admin = fed.user_dir("admin@bz");
    let r =
        kring_tests::raw_ping(&fed, "bz", &admin.join("user.crt"), &admin.join("user.key")).await;
    assert_eq!(r, Ok(Response::Pong));

    // Every refusal is in the audit log with its specific reason.
    let records = audit_details(&fed, "admin@bz").await;
    for needle in ["certificate expired", "not valid yet", "UnknownIssuer"] {
        if !records
            .iter()
            .any(|(k, a, d)| k == "connection" && a == "handshake" && d.contains(needle))
        {
            failures.push(format!("no audited TLS refusal naming {needle}"));
        }
    }
    // ... and every identity refusal with the reason the peer was given.
    for reason in &refusals {
        if !records
            .iter()
            .any(|(k, a, d)| k == "connection" && a == "connect" && d.contains(reason.as_str()))
        {
            failures.push(format!("refusal not audited: {reason}"));
        }
    }
    let handshakes = records
        .iter()
        .filter(|(k, a, _)| k == "connection" && a == "handshake")
        .count();
    if handshakes < tls_refusals {
        failures.push(format!(
            "{handshakes} TLS refusals audited, {tls_refusals} happened"
        ));
    }
    eprintln!(
        "{} identity refusals and {tls_refusals} TLS refusals, all audited",
        refusals.len()
    );

    // The user without a clearance got in, but policy keeps them out of everything
    // labelled: they cannot be added to a community, whose maximum needs a clearance.
    let mut zonder = fed.client("zonder@bz").unwrap();
    zonder.publish_key_packages(2).await.unwrap();
    let mut liaison = fed.client("liaison@bz").unwrap();
    liaison.publish_key_packages(2).await.unwrap();
    liaison
        .create_community("open", "NL:ONGERUBRICEERD")
        .await
        .unwrap();
    let e = liaison
        .add_members("open@bz", &["zonder@bz"])
        .await
        .unwrap_err();
    eprintln!("adding the user without a clearance: {e}");
    if e.exit_code() != 3 || !e.to_string().contains("zonder@bz") {
        failures.push(format!("user without clearance added or wrong error: {e}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// MLS credentials that do not match the certificate presenting them: a user
/// publishing another user's key package (its credential is the other user's
/// certificate) is refused with a reason, audited, and nothing is stored for them;
/// a credential whose signature key is not its certificate's key fails the
/// federation validator every relay and client uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mls_credentials_must_match_the_certificate() {
    use kring_protocol::mls::CredentialValidator;
    use kring_protocol::wire::Request;
    let mut fed = federation();
    fed.start("bz").unwrap();
    let mut liaison = fed.client("liaison@bz").unwrap();
    liaison.publish_key_packages(2).await.unwrap();
    liaison.disconnect().await;

    let (_ep, conn) = kring_tests::chaos::raw_user_connect(&fed, "admin@bz")
        .await
        .unwrap();
    let kp = match kring_tests::chaos::raw_request(
        &conn,
        &Request::FetchKeyPackage {
            user: "liaison@bz".into(),
        },
    )
    .await
    .unwrap()
    {
        Response::KeyPackage { key_package } => key_package,
        other => panic!("{other:?}"),
    };
    let r = kring_tests::chaos::raw_request(
        &conn,
        &Request::PublishKeyPackages {
            key_packages: vec![kp.clone()],
            last_resort: None,
        },
    )
    .await
    .unwrap();
    eprintln!("admin@bz publishing liaison@bz's key package: {r:?}");
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { reason })
            if reason.contains("not the caller's own certificate")),
        "{r:?}"
    );
    let r = kring_tests::chaos::raw_request(
        &conn,
        &Request::PublishKeyPackages {
            key_packages: vec![],
            last_resort: Some(kp),
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { .. })),
        "as last resort: {r:?}"
    );
    // Nothing was stored for admin@bz: fetching their key package finds none.
    let r = kring_tests::chaos::raw_request(
        &conn,
        &Request::FetchKeyPackage {
            user: "admin@bz".into(),
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::KeyMaterialExhausted { .. })),
        "{r:?}"
    );
    conn.close(0u32.into(), b"");

    // The validator itself: liaison's chain with admin's key as the MLS signature key.
    let pem = |p: PathBuf| {
        kring_protocol::identity::certificates_from_pem(&std::fs::read(p).unwrap()).unwrap()
    };
    let liaison_chain = pem(fed.user_dir("liaison@bz").join("user.crt"));
    let admin_chain = pem(fed.user_dir("admin@bz").join("user.crt"));
    let key_of = |chain: &[Vec<u8>]| {
        kring_protocol::identity::Identity::from_der(&chain[0])
            .unwrap()
            .public_key
    };
    let anchors = pem(fed.dir().join("ca/root.crt"));
    let trust = kring_protocol::identity::TrustMap::from_entries([(
        "bz",
        kring_protocol::identity::RelayTrust {
            organisation: "bz".into(),
            ca: None,
        },
    )])
    .unwrap();
    let v = kring_protocol::validator::FederationValidator::new(&anchors, &trust, now() as u64);
    assert_eq!(
        v.validate(&liaison_chain, &key_of(&liaison_chain)),
        Ok("liaison@bz".to_string())
    );
    let e = v
        .validate(&liaison_chain, &key_of(&admin_chain))
        .unwrap_err();
    assert_eq!(
        e,
        kring_protocol::mls::CredentialError::KeyMismatch("liaison@bz".into())
    );

    let records = audit_details(&fed, "admin@bz").await;
    assert!(
        records.iter().any(|(k, a, d)| k == "refusal"
            && a == "publish-key-packages"
            && d.contains("not the caller's own certificate")),
        "no audit record of the refused key package: {records:#?}"
    );
}
