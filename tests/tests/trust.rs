//! Who may speak for a relay, against running relays: certificates that one
//! organisation's CA mints for another organisation's relay id or users chain to
//! the federation root, yet are refused at the link, at the relay and on devices;
//! nothing queued for the real peer is lost while an impostor knocks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::path::{Path, PathBuf};

use kring_protocol::wire::{self, ErrorCode, Response};
use kring_tests::chaos::{decode_answer, raw_connect, raw_stream};
use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

fn write_cert(
    fed: &Federation,
    tag: &str,
    cert: &kring_certs_dev::IssuedCert,
) -> (PathBuf, PathBuf) {
    let dir = fed.dir().join("impostors").join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&crt, &cert.chain_pem).unwrap();
    std::fs::write(&key, &cert.key_pem).unwrap();
    (crt, key)
}

/// A relay certificate for relay `id` minted by organisation `org`'s CA (O = org).
fn relay_cert_by(fed: &Federation, id: &str, org: &str) -> (PathBuf, PathBuf) {
    let spec = kring_certs_dev::RelaySpec::new(id, org)
        .with_accreditation("NL:STG-ZEER-GEHEIM".parse().unwrap());
    let cert = fed.org_pki(org).unwrap().issue_relay(&spec).unwrap();
    write_cert(fed, &format!("relay-{id}-by-{org}"), &cert)
}

/// A user certificate for `name@relay` minted by organisation `org`'s CA.
fn user_cert_by(fed: &Federation, name: &str, relay: &str, org: &str) -> (PathBuf, PathBuf) {
    let spec = kring_certs_dev::UserSpec::new(name, relay, org)
        .with_clearance("NL:STG-ZEER-GEHEIM".parse().unwrap());
    let cert = fed.org_pki(org).unwrap().issue_user(&spec).unwrap();
    write_cert(fed, &format!("user-{name}@{relay}-by-{org}"), &cert)
}

/// Connects to `relay` with the given certificate and ALPN and sends a `Ping`;
/// returns the typed refusal, or panics with what happened instead.
async fn refusal(fed: &Federation, relay: &str, crt: &Path, key: &Path, alpn: &[u8]) -> String {
    let (_ep, conn) = raw_connect(fed, relay, crt, key, alpn)
        .await
        .unwrap_or_else(|e| panic!("the TLS handshake itself failed: {e}"));
    let frame = wire::encode_frame(&wire::Request::Ping, wire::DEFAULT_MAX_FRAME).unwrap();
    let bytes = raw_stream(&conn, &frame, true).await.unwrap();
    match decode_answer::<Response>(&bytes) {
        Ok(Response::Error(ErrorCode::Unauthenticated { reason })) => reason,
        other => panic!("the impostor was not refused: {other:?}"),
    }
}

/// The audit details `admin` reads at their relay.
async fn audit_details(fed: &Federation, admin: &str) -> Vec<String> {
    let mut a = fed.client(admin).unwrap();
    let page = a.audit_all(true).await.unwrap();
    page.records.into_iter().map(|r| r.detail).collect()
}

/// post-a's CA mints `kring:relay:bz` (O = post-a): a chain to the federation root,
/// but bz belongs to organisation bz. nctv refuses it at the link with the reason
/// and an audit record, and the notice queued for the real bz meanwhile reaches
/// bz's member once bz is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organisations_ca_cannot_pose_as_a_peer_relay() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let mut bz = ready(&fed, "liaison@bz").await;
    nctv.create_community("dreiging", "NL:STG-GEHEIM")
        .await
        .unwrap();
    nctv.add_members("dreiging@nctv", &["liaison@bz"])
        .await
        .unwrap();
    join(&mut bz, "dreiging@nctv").await;
    bz.disconnect().await;
    fed.stop("bz").unwrap();

    // Queued in nctv's outbox for bz.
    nctv.file_notice(draft("dreiging@nctv", "NL:STG-GEHEIM", "queued for bz"))
        .await
        .unwrap();

    let (crt, key) = relay_cert_by(&fed, "bz", "post-a");
    for _ in 0..3 {
        let why = refusal(&fed, "nctv", &crt, &key, wire::ALPN_FEDERATION).await;
        assert!(why.contains("belongs to organisation \"bz\""), "{why}");
    }
    // A relay id nobody configured, minted by a federation CA, is refused too.
    let (crt, key) = relay_cert_by(&fed, "schaduw", "post-a");
    let why = refusal(&fed, "nctv", &crt, &key, wire::ALPN_FEDERATION).await;
    assert!(why.contains("not a relay of this federation"), "{why}");

    let details = audit_details(&fed, "admin@nctv").await;
    assert!(
        details
            .iter()
            .any(|d| d.contains("bz") && d.contains("belongs to organisation \"bz\"")),
        "no audit record of the impostor: {details:#?}"
    );

    // The real bz comes back: nothing queued for it was handed to the impostor.
    fed.start("bz").unwrap();
    sync_until(&mut bz, "dreiging@nctv", &["queued for bz"]).await;
}

/// post-a's CA mints `liaison@bz` (O = post-a) with a higher clearance: refused by
/// bz (the relay it names) and by post-a (not its home relay), with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organisations_ca_cannot_mint_a_relays_users() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let (crt, key) = user_cert_by(&fed, "liaison", "bz", "post-a");
    let why = refusal(&fed, "bz", &crt, &key, wire::ALPN_CLIENT).await;
    assert!(why.contains("belongs to organisation \"bz\""), "{why}");
    let why = refusal(&fed, "post-a", &crt, &key, wire::ALPN_CLIENT).await;
    assert!(why.contains("belongs to organisation \"bz\""), "{why}");
    // bz's own CA minting it is fine: the genuine user still gets in.
    let dir = fed.user_dir("liaison@bz");
    let ok = kring_tests::raw_ping(&fed, "bz", &dir.join("user.crt"), &dir.join("user.key")).await;
    assert_eq!(ok, Ok(Response::Pong));
}
