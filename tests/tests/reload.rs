//! `kring-relay reload` on a running relay: a certificate renewed with a new key is
//! taken without a restart (links keep working, notices flow, old and new
//! checkpoints verify, offline too), and a peer removed from the configuration is
//! cut off, refused and audited.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher};

const SHARED: &str = "renewed@bz";
const LABEL: &str = "NL:DEP-VERTROUWELIJK";

fn run(fed: &Federation, id: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = fed.relay_tool(id, args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Removes `peer` from `relay`'s `[[peers]]`.
fn remove_peer(fed: &Federation, relay: &str, peer: &str) {
    let path = fed.relay_config(relay);
    let mut t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    if let Some(toml::Value::Array(peers)) = t.get_mut("peers") {
        peers.retain(|p| p.get("id").and_then(|v| v.as_str()) != Some(peer));
    }
    std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_and_a_removed_peer_are_taken_on_reload() {
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut filer = ready(&fed, "liaison@bz").await;
    let mut remote = ready(&fed, "liaison@nctv").await;
    filer
        .create_community("renewed", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    filer.add_members(SHARED, &["liaison@nctv"]).await.unwrap();
    join(&mut remote, SHARED).await;
    filer.file_notice(draft(SHARED, LABEL, "n1")).await.unwrap();
    sync_until(&mut remote, SHARED, &["n1"]).await;
    let mut admin = fed.client("admin@bz").unwrap();
    let old_head = admin.audit_head().await.unwrap();
    assert_eq!(old_head.certificates.len(), 1);
    drop(admin);

    // Nothing changed: the reload says so and succeeds.
    let (code, out) = run(&fed, "bz", &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing changed"), "{out}");

    // A new certificate with a new key, taken while running.
    fed.renew_relay_certificate("bz").unwrap();
    let (code, out) = run(&fed, "bz", &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("new certificate"), "{out}");
    assert!(fed.is_running("bz"));

    // A new connection sees the new certificate; the history holds both.
    let mut admin = fed.client("admin@bz").unwrap();
    let new_head = admin.audit_head().await.unwrap();
    assert_eq!(new_head.certificates.len(), 2);
    assert_ne!(new_head.head.chain[0], old_head.head.chain[0]);
    // Notices still flow both ways over the federation link.
    filer.file_notice(draft(SHARED, LABEL, "n2")).await.unwrap();
    remote
        .file_notice(draft(SHARED, LABEL, "n3"))
        .await
        .unwrap();
    sync_until(&mut remote, SHARED, &["n1", "n2", "n3"]).await;
    sync_until(&mut filer, SHARED, &["n1", "n2", "n3"]).await;
    let summary = admin
        .audit_each_against(true, Some(&old_head.head), |_| {})
        .await
        .unwrap();
    assert_eq!(summary.verify.as_ref().unwrap().first_bad, None);
    assert!(summary.local.unwrap().intact());

    // An invalid configuration is refused by the relay, which keeps running as it
    // was.
    let path = fed.relay_config("bz");
    let good = std::fs::read_to_string(&path).unwrap();
    let mut t: toml::Table = good.parse().unwrap();
    t.insert("accreditation".into(), "NO-SUCH-LABEL".into());
    std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    let (code, out) = run(&fed, "bz", &["reload"]);
    std::fs::write(&path, &good).unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not valid"), "{out}");
    // A change that needs a restart is refused by the relay, with the reason.
    let mut t: toml::Table = good.parse().unwrap();
    t.insert("listen".into(), "127.0.0.1:1".into());
    std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    let (code, out) = run(&fed, "bz", &["reload"]);
    std::fs::write(&path, &good).unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("listen address") && out.contains("restart"),
        "{out}"
    );

    // nctv removed from bz's peers: its link is closed and refused afterwards.
    remove_peer(&fed, "bz", "nctv");
    let (code, out) = run(&fed, "bz", &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("peers removed: nctv"), "{out}");
    let refused = kring_tests::raw_federation_call(
        &fed,
        "nctv",
        "bz",
        &kring_protocol::wire::FedRequest::Deliver { items: vec![] },
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    let log = admin.audit_all(true).await.unwrap();
    assert_eq!(log.verify.unwrap().first_bad, None);
    let has = |action: &str, who: &str| {
        log.records
            .iter()
            .any(|r| r.action == action && (r.actor == who || r.subject == who))
    };
    assert!(has("peer-removed", "nctv"), "{:#?}", log.records);
    // Refused at the handshake: nctv is no longer a relay of this federation here.
    assert!(
        log.records
            .iter()
            .any(|r| r.kind == "connection" && r.detail.contains("nctv")),
        "{:#?}",
        log.records
    );
    assert!(has("config-reloaded", "bz"));
    assert!(has("reload-refused", "bz"));
    drop(admin);

    // Offline: every checkpoint, old key and new, verifies.
    fed.stop("bz").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kring-demo"))
        .args(["relay", "--config"])
        .arg(fed.relay_config("bz"))
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
