//! Backup of a running relay, a crash, a restore: the restored hub is behind its
//! peers and its devices, and must never number anything new at a seq one of them
//! has seen. Every member device gets every notice exactly once, the notices filed
//! between the backup and the crash included (recovered from the member relay's
//! copy), and a notice filed after the restore.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_client::Client;
use kring_tests::steps::{draft, join, ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};

/// Hubbed at bz (restored); members at bz and nctv.
const SHARED: &str = "restored@bz";
/// Hubbed at bz; members at bz only: what was filed after the backup exists only
/// on the devices.
const LOCAL: &str = "local@bz";
const LABEL: &str = "NL:DEP-VERTROUWELIJK";

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

fn wait_for_log(fed: &Federation, id: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(fed.log_file(id)).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay {id} never logged {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(fed: &Federation, id: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = fed.relay_tool(id, args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Syncs every client until each holds exactly `want` in `community`.
async fn all_hold(clients: &mut [&mut Client], community: &str, want: &[&str]) {
    for c in clients.iter_mut() {
        sync_until(c, community, want).await;
    }
}

/// Syncs until the device holds exactly the notices titled `want`, in any order.
async fn holds_in_any_order(c: &mut Client, community: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.sync().await.unwrap();
        let mut got = titles(c, community);
        got.sort();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: have {got:?}, want {want:?}",
            c.user()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_hub_never_numbers_again_what_peers_and_devices_have_seen() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut filer = ready(&fed, "liaison@bz").await;
    let mut reader = ready(&fed, "admin@bz").await;
    let mut remote = ready(&fed, "liaison@nctv").await;
    filer
        .create_community("restored", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    filer
        .add_members(SHARED, &["admin@bz", "liaison@nctv"])
        .await
        .unwrap();
    filer
        .create_community("local", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    filer.add_members(LOCAL, &["admin@bz"]).await.unwrap();
    join(&mut reader, SHARED).await;
    join(&mut reader, LOCAL).await;
    join(&mut remote, SHARED).await;
    filer.file_notice(draft(SHARED, LABEL, "s1")).await.unwrap();
    filer.file_notice(draft(LOCAL, LABEL, "l1")).await.unwrap();
    all_hold(&mut [&mut filer, &mut reader, &mut remote], SHARED, &["s1"]).await;
    all_hold(&mut [&mut filer, &mut reader], LOCAL, &["l1"]).await;

    // A backup of the running relay.
    let backup = fed.dir().join("bz.backup");
    let (code, out) = run(&fed, "bz", &["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "backup failed: {out}");
    assert!(out.contains("backup of relay bz"), "{out}");
    assert!(fed.is_running("bz"), "the backup stopped the relay");

    // More notices, seen by every device, then a crash.
    filer.file_notice(draft(SHARED, LABEL, "s2")).await.unwrap();
    remote
        .file_notice(draft(SHARED, LABEL, "s3"))
        .await
        .unwrap();
    filer.file_notice(draft(LOCAL, LABEL, "l2")).await.unwrap();
    all_hold(
        &mut [&mut filer, &mut reader, &mut remote],
        SHARED,
        &["s1", "s2", "s3"],
    )
    .await;
    all_hold(&mut [&mut filer, &mut reader], LOCAL, &["l1", "l2"]).await;
    for c in [&mut filer, &mut reader, &mut remote] {
        c.disconnect().await;
    }
    fed.kill("bz");

    // Restore: only into an empty data directory, only a backup of this relay.
    let data = fed.data_dir("bz");
    let (code, out) = run(&fed, "bz", &["restore", "--from", backup.to_str().unwrap()]);
    assert_eq!(code, Some(2), "restored over a store: {out}");
    assert!(out.contains("empty data directory"), "{out}");
    std::fs::rename(&data, fed.dir().join("bz-data-crashed")).unwrap();
    let (code, out) = run(
        &fed,
        "nctv",
        &["restore", "--from", backup.to_str().unwrap()],
    );
    assert_ne!(code, Some(0), "nctv took bz's backup: {out}");
    assert!(out.contains("not of nctv"), "{out}");
    let (code, out) = run(&fed, "bz", &["restore", "--from", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "restore failed: {out}");

    fed.start("bz").unwrap();
    // nctv, the only relay with members, answers; aivd and post-a are down (and
    // hold nothing of bz's communities), so the recovery as a whole stays open.
    wait_for_log(&fed, "bz", "recovery: peer answered peer=nctv");
    // A notice filed now: in the shared community after everything nctv had seen,
    // in the local one at seqs the devices had seen before the crash.
    filer.file_notice(draft(SHARED, LABEL, "s4")).await.unwrap();
    filer.file_notice(draft(LOCAL, LABEL, "l3")).await.unwrap();
    all_hold(
        &mut [&mut filer, &mut reader, &mut remote],
        SHARED,
        &["s1", "s2", "s3", "s4"],
    )
    .await;
    // l3 has the seq l2 had (lost at the relay, seen by the devices, which were
    // told to take the seqs from there again): its place among them is not fixed.
    for c in [&mut filer, &mut reader] {
        holds_in_any_order(c, LOCAL, &["l1", "l2", "l3"]).await;
    }
    // Once more after a sync round: nothing came twice.
    for c in [&mut filer, &mut reader, &mut remote] {
        c.sync().await.unwrap();
    }
    assert_eq!(titles(&reader, SHARED), ["s1", "s2", "s3", "s4"]);
    let mut local = titles(&reader, LOCAL);
    local.sort();
    assert_eq!(local, ["l1", "l2", "l3"]);
    assert_eq!(titles(&remote, SHARED), ["s1", "s2", "s3", "s4"]);

    // What could not be recovered is in the audit log, which still verifies.
    for c in [&mut filer, &mut reader, &mut remote] {
        c.disconnect().await;
    }
    fed.stop("bz").unwrap();
    let (code, out) = run(&fed, "bz", &["audit", "verify"]);
    assert_eq!(code, Some(0), "audit verify: {out}");
    let engine = fed.open_store("bz").unwrap();
    let records = kring_tests::chaos::audit_actions(&engine);
    assert!(
        records
            .iter()
            .any(|(action, detail)| action == "restore-recovery"
                && detail.contains("relay nctv had applied outbox items")),
        "no recovery record: {records:?}"
    );
    assert!(
        records
            .iter()
            .any(|(action, detail)| action == "restore-recovery"
                && detail.contains("admin@bz")
                && detail.contains(LOCAL)),
        "the device that had seen lost entries is not in the audit log: {records:?}"
    );
}

/// Whether the home relay of `c` holds a revocation statement for `revoked`.
async fn relay_knows_revocation(c: &mut Client, revoked: &str) -> bool {
    use kring_protocol::wire::{Request, Response};
    match c.call(&Request::Trust).await {
        Ok(Response::Trust(state)) => state.statements.iter().any(|s| s.user == revoked),
        _ => false,
    }
}

/// Polls until `c`'s home relay holds a statement for `revoked`, or fails.
async fn until_relay_knows(c: &mut Client, revoked: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !relay_knows_revocation(c, revoked).await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_relay_learns_again_the_revocations_it_had_after_its_backup() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut local = ready(&fed, "admin@bz").await;
    let mut nctv_admin = fed.client("admin@nctv").unwrap();

    let backup = fed.dir().join("bz.backup");
    let (code, out) = run(&fed, "bz", &["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "backup failed: {out}");

    // Revoked after the backup: bz applies nctv's statement and acknowledges it, so
    // nctv's outbox will never send it again.
    nctv_admin
        .revoke("liaison@nctv", "laptop seized at a border")
        .await
        .unwrap();
    until_relay_knows(
        &mut local,
        "liaison@nctv",
        "bz never received the revocation before the crash",
    )
    .await;
    local.disconnect().await;
    fed.kill("bz");
    std::fs::rename(fed.data_dir("bz"), fed.dir().join("bz-data-crashed")).unwrap();
    let (code, out) = run(&fed, "bz", &["restore", "--from", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "restore failed: {out}");

    fed.start("bz").unwrap();
    wait_for_log(&fed, "bz", "recovery: peer answered peer=nctv");
    until_relay_knows(
        &mut local,
        "liaison@nctv",
        "the restored relay does not know a revocation it had applied before the crash",
    )
    .await;
    local.disconnect().await;
    fed.stop("bz").unwrap();
    let engine = fed.open_store("bz").unwrap();
    let records = kring_tests::chaos::audit_actions(&engine);
    assert!(
        records
            .iter()
            .any(|(action, detail)| action == "restore-recovery"
                && detail.contains("1 revocation statement(s) and")
                && detail.contains("relay nctv holds were missing here")),
        "the recovery does not report the revocation it learned again: {records:?}"
    );
    assert!(
        records
            .iter()
            .any(|(action, detail)| action == "revoke"
                && detail.contains("received from relay nctv")),
        "no audit record of the revocation: {records:?}"
    );
}
