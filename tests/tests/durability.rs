//! A crash between write and fsync. The store's failpoint `abort-before-log-flush`
//! (`kring_relay::store::failpoint`, in test builds only) stops the hub after a
//! notice is in its store and before the flush that would make it durable, and holds
//! it there while everything that could read the store is provoked: the outbox
//! sender's link comes up again, another hub delivers entries (which a member relay
//! releases to its devices before its own flush), a device reads. Nothing of the
//! un-flushed batch may leave the relay; after the restart no acknowledged notice is
//! lost and no seq carries two different notices on any device or relay.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_client::Client;
use kring_client::conn::Timeouts;
use kring_protocol::wire::EntryKind;
use kring_tests::chaos::stored_log;
use kring_tests::steps::{draft, join, ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};
use uuid::Uuid;

/// Hubbed at bz, the relay that crashes; members at bz and nctv.
const A: &str = "durable@bz";
/// Hubbed at nctv; a member at bz.
const B: &str = "durable@nctv";
const LABEL: &str = "NL:DEP-VERTROUWELIJK";
/// `kring_relay::store::failpoint::EXIT_CODE`.
const FAILPOINT_EXIT: i32 = 86;

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// Waits until relay `id`'s log contains `text`.
fn wait_for_log(fed: &Federation, id: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(fed.log_file(id)).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay {id} never logged {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(seq, notice id)` of every notice in relay `id`'s copy of `community`'s log (the
/// relay must be stopped).
fn relay_notices(fed: &Federation, id: &str, community: &str) -> Vec<(u64, Uuid)> {
    let engine = fed.open_store(id).unwrap();
    stored_log(&engine, community)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::Notice { notice_id, .. } => Some((e.seq, notice_id)),
            EntryKind::Handshake { .. } => None,
        })
        .collect()
}

/// `(seq, notice id)` of every notice a device holds in `community`.
fn device_notices(c: &Client, community: &str) -> Vec<(u64, Uuid)> {
    let mut out: Vec<(u64, Uuid)> = c
        .stored_notices(Some(community))
        .unwrap()
        .into_iter()
        .map(|n| (n.seq.expect("a received notice has its seq"), n.notice.id))
        .collect();
    out.sort();
    out
}

/// Syncs until the device holds notice `id` in `community`.
async fn sync_until_has(c: &mut Client, community: &str, id: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.sync().await.unwrap();
        if device_notices(c, community).iter().any(|(_, n)| *n == id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never received acknowledged notice {id}: it holds {:?}",
            c.user(),
            titles(c, community)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_not_yet_flushed_never_leaves_the_relay() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut filer = ready(&fed, "liaison@bz").await;
    let mut reader = ready(&fed, "admin@bz").await;
    let mut remote = ready(&fed, "liaison@nctv").await;

    filer
        .create_community("durable", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    filer
        .add_members(A, &["admin@bz", "liaison@nctv"])
        .await
        .unwrap();
    join(&mut reader, A).await;
    join(&mut remote, A).await;
    remote
        .create_community("durable", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    remote.add_members(B, &["admin@bz"]).await.unwrap();
    join(&mut reader, B).await;
    let a1 = filer.file_notice(draft(A, LABEL, "a1")).await.unwrap();
    let a1_seq = a1.seq.expect("ordered by the hub");
    remote.file_notice(draft(B, LABEL, "b1")).await.unwrap();
    sync_until(&mut reader, A, &["a1"]).await;
    sync_until(&mut remote, A, &["a1"]).await;
    sync_until(&mut reader, B, &["b1"]).await;

    // bz again, armed: it will stop before flushing the next notice it orders.
    filer.disconnect().await;
    reader.disconnect().await;
    fed.stop("bz").unwrap();
    let release = fed.dir().join("failpoint-release");
    let spec = format!("abort-before-log-flush:{}", release.display());
    fed.start_with_env("bz", &[("KRING_FAILPOINT", &spec)])
        .unwrap();

    filer.set_timeouts(Timeouts {
        request: Duration::from_secs(3),
        ..Timeouts::default()
    });
    let filing = tokio::spawn(async move {
        let r = filer.file_notice(draft(A, LABEL, "x")).await;
        (filer, r)
    });
    wait_for_log(&fed, "bz", "failpoint abort-before-log-flush: holding");

    // "x" is in bz's store, not on disk. Provoke every reader of the store:
    // - the link to nctv comes up again (bz's outbox sender reads its outbox);
    // - nctv, the hub of B, delivers an entry (bz releases it to its devices at once);
    // - a device of bz reads the log.
    remote.disconnect().await;
    fed.stop("nctv").unwrap();
    fed.start("nctv").unwrap();
    remote.file_notice(draft(B, LABEL, "b2")).await.unwrap();
    sync_until(&mut reader, B, &["b1", "b2"]).await;
    reader.sync().await.unwrap();
    remote.sync().await.unwrap();
    assert_eq!(
        titles(&reader, A),
        ["a1"],
        "a device of bz received a notice bz had not flushed"
    );
    assert_eq!(
        titles(&remote, A),
        ["a1"],
        "a device of nctv received a notice bz had not flushed"
    );

    // The crash.
    std::fs::write(&release, b"").unwrap();
    let status = fed
        .wait_exit("bz", Duration::from_secs(30))
        .expect("bz did not stop at the failpoint");
    assert_eq!(
        status.code(),
        Some(FAILPOINT_EXIT),
        "bz ended otherwise: {status}"
    );
    let (mut filer, filed) = filing.await.unwrap();
    assert!(filed.is_err(), "x was acknowledged: {filed:?}");

    // nctv never got the entry from bz.
    reader.disconnect().await;
    remote.disconnect().await;
    fed.stop("nctv").unwrap();
    let at_nctv = relay_notices(&fed, "nctv", A);
    assert_eq!(
        at_nctv.last().map(|(seq, _)| *seq),
        Some(a1_seq),
        "nctv holds an entry bz had not flushed: {at_nctv:?}"
    );
    fed.start("nctv").unwrap();

    // The crash took "x" back: its seq is free again at the hub.
    let at_bz = relay_notices(&fed, "bz", A);
    assert_eq!(
        at_bz.last().map(|(seq, _)| *seq),
        Some(a1_seq),
        "the failpoint left the un-flushed notice in bz's store: {at_bz:?}"
    );
    // After the restart: a notice acknowledged now reaches every member, and every
    // seq means the same notice everywhere.
    fed.start("bz").unwrap();
    filer.set_timeouts(Timeouts::default());
    filer.disconnect().await;
    let y = filer.file_notice(draft(A, LABEL, "y")).await.unwrap();
    assert!(y.seq.is_some(), "y not ordered: {:?}", y.ordering);
    for c in [&mut reader, &mut remote] {
        sync_until_has(c, A, y.notice.id).await;
    }
    // nctv's outbox to bz is in order: b3 at bz means b2 came again before it.
    remote.file_notice(draft(B, LABEL, "b3")).await.unwrap();
    sync_until(&mut reader, B, &["b1", "b2", "b3"]).await;

    for c in [&mut filer, &mut reader, &mut remote] {
        c.disconnect().await;
    }
    fed.stop("bz").unwrap();
    fed.stop("nctv").unwrap();
    let hub = relay_notices(&fed, "bz", A);
    assert!(hub.iter().any(|(_, id)| *id == y.notice.id));
    assert!(hub.iter().any(|(_, id)| *id == a1.notice.id));
    assert_eq!(relay_notices(&fed, "nctv", A), hub, "nctv's copy");
    assert_eq!(device_notices(&reader, A), hub, "admin@bz's notices");
    assert_eq!(device_notices(&remote, A), hub, "liaison@nctv's notices");
    // The entry of B that bz released before its flush came again after the crash,
    // with the same seq, and reached the device once.
    let b = relay_notices(&fed, "nctv", B);
    assert_eq!(b.len(), 3);
    assert_eq!(relay_notices(&fed, "bz", B), b, "bz's copy of {B}");
    assert_eq!(device_notices(&reader, B), b, "admin@bz's notices of {B}");
}
