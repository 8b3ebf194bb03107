//! Retention and wipe.
//!
//! A community created with `--retention 1` keeps notices one day: `notice list`
//! says when each expires; every member's device deletes them once that day has
//! passed; the hub and a member relay drop their log entries only once every member
//! device they serve has acknowledged them, and the log's numbering continues.
//! Time moves forward without waiting: devices through their clock
//! (`Client::set_clock`), relays through the test-only `KRING_TEST_CLOCK_FILE`
//! (`kring_relay::retention::test_clock`).
//!
//! `kring admin revoke --wipe`: the revoked device deletes its private key and
//! passphrase file besides its archive; without `--wipe` only the archive and MLS
//! state go.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kring_client::cli::Out;
use kring_tests::steps::{draft, join, ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};

const DAY: i64 = 86_400;
const LABEL: &str = "NL:STG-CONFIDENTIEEL";
const CLOCK_VAR: &str = kring_relay::retention::test_clock::VAR;

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// Runs the `kring` command line in this process: its result and stdout.
async fn kring(args: &[&str]) -> (Result<i32, kring_client::ClientError>, String) {
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
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
    let result = kring_client::cli::run_args(
        std::iter::once("kring").chain(args.iter().copied()),
        &mut Out::new(Box::new(shared.clone())),
    )
    .await;
    let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
    (result, text)
}

fn profile(fed: &Federation, user: &str) -> String {
    fed.user_dir(user).to_str().unwrap().to_string()
}

/// The relay log of `id`.
fn relay_log(fed: &Federation, id: &str) -> PathBuf {
    fed.dir().join("logs").join(format!("{id}.log"))
}

/// A field `name=N` of a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// Retention passes relay `id` completed with its clock at `now`: (pruned, held)
/// of each.
fn passes_at(log: &Path, now: i64) -> Vec<(u64, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("retention pass") && field(l, "now") == Some(now as u64))
        .filter_map(|l| Some((field(l, "pruned")?, field(l, "held")?)))
        .collect()
}

/// Waits until relay `id` has completed a retention pass at `now` that `ok`
/// accepts; returns the entries pruned in all passes at `now` so far.
async fn pass_until(log: &Path, now: i64, what: &str, ok: impl Fn(u64, u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let passes = passes_at(log, now);
        if passes.iter().any(|(p, h)| ok(*p, *h)) {
            return passes.iter().map(|(p, _)| p).sum();
        }
        let last = &passes[passes.len().saturating_sub(5)..];
        assert!(
            Instant::now() < deadline,
            "{what}: {} passes at {now}, the last (pruned, held): {last:?} ({})",
            passes.len(),
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn set_relay_clock(file: &Path, now: i64) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, now.to_string()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn at(t: i64) -> kring_client::Clock {
    Arc::new(move || t as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_expire_on_devices_and_relays_drop_only_what_every_device_has() {
    let mut fed = federation();
    let clock_bz = fed.dir().join("clock-bz");
    let clock_post = fed.dir().join("clock-post-a");
    fed.start_with_env("bz", &[(CLOCK_VAR, clock_bz.to_str().unwrap())])
        .unwrap();
    fed.start_with_env("post-a", &[(CLOCK_VAR, clock_post.to_str().unwrap())])
        .unwrap();
    let mut admin = ready(&fed, "admin@bz").await;
    let mut analist = ready(&fed, "analist@post-a").await;

    // The community keeps notices one day.
    let (code, out) = kring(&[
        "--profile",
        &profile(&fed, "liaison@bz"),
        "community",
        "create",
        "kort",
        "--max-label",
        LABEL,
        "--retention",
        "1",
    ])
    .await;
    assert_eq!(code.unwrap(), 0);
    assert!(out.contains("notices are kept 1 day(s)"), "{out}");
    let mut liaison = fed.client("liaison@bz").unwrap();
    liaison
        .add_members("kort@bz", &["admin@bz", "analist@post-a"])
        .await
        .unwrap();
    join(&mut admin, "kort@bz").await;
    join(&mut analist, "kort@bz").await;
    let filed_at = kring_tests::now();
    for title in ["een", "twee", "drie"] {
        liaison
            .file_notice(draft("kort@bz", LABEL, title))
            .await
            .unwrap();
    }
    sync_until(&mut liaison, "kort@bz", &["een", "twee", "drie"]).await;
    let own = liaison.stored_notices(Some("kort@bz")).unwrap();
    let expiry = liaison.notice_expiry(&own[0]).unwrap().unwrap();
    assert!(
        (filed_at + DAY - 5..=kring_tests::now() + DAY + 5).contains(&expiry),
        "expires at {expiry}, filed at {filed_at}"
    );
    drop(liaison);

    // `notice list` says when each expires (the JSON form keeps its fields).
    let liaison_dir = profile(&fed, "liaison@bz");
    let (code, out) = kring(&["--profile", &liaison_dir, "notice", "list"]).await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines().all(|l| l.contains(" expires 20")),
        "every notice says when it expires: {out}"
    );
    let (code, json) = kring(&["--profile", &liaison_dir, "notice", "list", "--json"]).await;
    assert_eq!(code.unwrap(), 0);
    assert!(!json.contains("expires"), "{json}");
    let id = own[0].notice.id.simple().to_string();
    let (code, shown) = kring(&["--profile", &liaison_dir, "notice", "show", &id]).await;
    assert_eq!(code.unwrap(), 0);
    assert!(shown.contains("  expires 20"), "{shown}");
    let mut liaison = fed.client("liaison@bz").unwrap();

    // Two days later at both relays: admin@bz and analist@post-a have not
    // acknowledged the notices, so neither relay drops them (only the commit that
    // added them, which is not theirs).
    let later = kring_tests::now() + 2 * DAY;
    set_relay_clock(&clock_bz, later);
    set_relay_clock(&clock_post, later);
    let bz_log = relay_log(&fed, "bz");
    let post_log = relay_log(&fed, "post-a");
    pass_until(&bz_log, later, "bz holds the notices", |_, held| held == 3).await;
    pass_until(&post_log, later, "post-a holds the notices", |_, held| {
        held == 3
    })
    .await;

    // Devices: the notices are still there until their own clock says two days
    // have passed; then a sync deletes them.
    liaison.sync().await.unwrap();
    assert_eq!(titles(&liaison, "kort@bz"), ["een", "twee", "drie"]);
    liaison.set_clock(at(later));
    liaison.sync().await.unwrap();
    assert!(titles(&liaison, "kort@bz").is_empty());

    // admin@bz receives and acknowledges them: bz drops its entries, post-a
    // (whose member has not) keeps its copies.
    sync_until(&mut admin, "kort@bz", &["een", "twee", "drie"]).await;
    let pruned = pass_until(&bz_log, later, "bz drops the notices", |_, held| held == 0).await;
    assert_eq!(pruned, 4, "the commit and the three notices");
    let post_passes = passes_at(&post_log, later);
    assert!(
        post_passes.last().is_some_and(|(_, held)| *held == 3),
        "post-a still holds them: {post_passes:?}"
    );
    // Then analist@post-a: post-a drops its copies too.
    sync_until(&mut analist, "kort@bz", &["een", "twee", "drie"]).await;
    let pruned = pass_until(&post_log, later, "post-a drops the notices", |_, held| {
        held == 0
    })
    .await;
    assert_eq!(pruned, 4);
    admin.set_clock(at(later));
    admin.sync().await.unwrap();
    assert!(titles(&admin, "kort@bz").is_empty());

    // The log's numbering goes on after what was dropped; the dropping is audited.
    liaison.set_clock(at(kring_tests::now()));
    let filed = liaison
        .file_notice(draft("kort@bz", LABEL, "vier"))
        .await
        .unwrap();
    assert!(
        matches!(filed.ordering, kring_client::Ordering::Ordered { seq: 5 }),
        "{:?}",
        filed.ordering
    );
    sync_until(&mut analist, "kort@bz", &["een", "twee", "drie", "vier"]).await;
    let mut records = Vec::new();
    admin
        .audit_each(false, |r| {
            if r.action == "log-pruned" {
                records.push(r.detail.clone());
            }
        })
        .await
        .unwrap();
    assert!(
        records.iter().any(|d| d.contains("up to #4")),
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_wipes_the_archive_and_a_wipe_order_the_key_too() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.issue_user("consul@bz", "NL:STG-GEHEIM", &[]).unwrap();
    let mut admin = ready(&fed, "admin@bz").await;
    for user in ["liaison@bz", "consul@bz"] {
        // Each device has an archive (and key packages at the relay).
        drop(ready(&fed, user).await);
    }
    let liaison = kring_client::profile::Profile::load(fed.user_dir("liaison@bz")).unwrap();
    let consul = kring_client::profile::Profile::load(fed.user_dir("consul@bz")).unwrap();
    for p in [&liaison, &consul] {
        assert!(p.state_dir.exists() && p.key.exists());
        assert!(p.passphrase_file.as_ref().is_some_and(|f| f.exists()));
    }

    // Without --wipe: the archive and MLS state go, the key stays.
    admin
        .revoke("liaison@bz", "left the service")
        .await
        .unwrap();
    let (result, _) = kring(&["--profile", &profile(&fed, "liaison@bz"), "notice", "list"]).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("local archive and MLS state"), "{msg}");
    assert!(!msg.contains("private key"), "{msg}");
    assert!(!liaison.state_dir.exists());
    assert!(liaison.key.exists());
    assert!(liaison.passphrase_file.as_ref().unwrap().exists());

    // --wipe only for users of the org-admin's own relay.
    let admin_dir = profile(&fed, "admin@bz");
    drop(admin);
    let (result, _) = kring(&[
        "--profile",
        &admin_dir,
        "admin",
        "revoke",
        "liaison@nctv",
        "--reason",
        "lost",
        "--wipe",
    ])
    .await;
    assert_eq!(result.unwrap_err().exit_code(), 2);

    // With --wipe: the device deletes its key and passphrase file as well.
    let (result, out) = kring(&[
        "--profile",
        &admin_dir,
        "admin",
        "revoke",
        "consul@bz",
        "--reason",
        "laptop stolen",
        "--wipe",
    ])
    .await;
    assert_eq!(result.unwrap(), 0);
    assert!(out.contains("wipe ordered"), "{out}");
    let (result, _) = kring(&["--profile", &profile(&fed, "consul@bz"), "notice", "list"]).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("local archive and MLS state"), "{msg}");
    assert!(msg.contains("by order of admin@bz"), "{msg}");
    assert!(
        msg.contains("private key") && msg.contains("overwritten and deleted"),
        "{msg}"
    );
    assert!(!consul.state_dir.exists());
    assert!(!consul.key.exists());
    assert!(!consul.passphrase_file.as_ref().unwrap().exists());

    // The relay's audit log has the order and its delivery.
    let mut admin = fed.client("admin@bz").unwrap();
    let mut actions = Vec::new();
    admin
        .audit_each(false, |r| {
            if r.subject == "consul@bz" {
                actions.push(r.action.clone());
            }
        })
        .await
        .unwrap();
    for want in ["revoke", "wipe-ordered", "wipe-order-sent"] {
        assert!(actions.iter().any(|a| a == want), "{want}: {actions:?}");
    }
}

/// A member removed while offline, whose whole backlog up to the removal has since
/// been dropped by retention, while more than a page of later entries is still
/// held for others: its device's next sync ends normally (the relay finds nothing
/// of the log left for it, rather than looking for it again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_whose_backlog_expired_syncs_to_the_end() {
    const LATER: usize = 300; // more than the relay's page of 256 entries
    let mut fed = federation();
    fed.issue_user("weg@bz", LABEL, &[]).unwrap();
    let clock_bz = fed.dir().join("clock-bz");
    fed.start_with_env("bz", &[(CLOCK_VAR, clock_bz.to_str().unwrap())])
        .unwrap();
    let mut liaison = ready(&fed, "liaison@bz").await;
    let mut admin = ready(&fed, "admin@bz").await;
    let mut gone = ready(&fed, "weg@bz").await;
    liaison
        .create_community_retaining("kort", LABEL, 30, Some(1))
        .await
        .unwrap();
    liaison
        .add_members("kort@bz", &["admin@bz", "weg@bz"])
        .await
        .unwrap();
    join(&mut admin, "kort@bz").await;
    join(&mut gone, "kort@bz").await;
    gone.disconnect().await;
    for title in ["een", "twee"] {
        liaison
            .file_notice(draft("kort@bz", LABEL, title))
            .await
            .unwrap();
    }
    liaison
        .remove_members("kort@bz", &["weg@bz"])
        .await
        .unwrap();
    // The remaining devices have everything up to the removal; then they go
    // offline and the later entries wait for them.
    sync_until(&mut admin, "kort@bz", &["een", "twee"]).await;
    admin.disconnect().await;
    liaison.sync().await.unwrap();
    let titles_later: Vec<String> = (0..LATER).map(|i| format!("n{i:03}")).collect();
    for chunk in titles_later.chunks(100) {
        let drafts = chunk.iter().map(|t| draft("kort@bz", LABEL, t)).collect();
        liaison.file_notices(drafts).await.unwrap();
    }
    liaison.disconnect().await;

    let later = kring_tests::now() + 2 * DAY;
    set_relay_clock(&clock_bz, later);
    let pruned = pass_until(
        &relay_log(&fed, "bz"),
        later,
        "bz holds the later entries",
        |_, held| held > 0,
    )
    .await;
    // Everything up to the removal went (in that pass or one just before it).
    let log = std::fs::read_to_string(relay_log(&fed, "bz")).unwrap();
    assert!(
        pruned > 0 || log.contains("action=log-pruned"),
        "nothing of kort@bz was dropped"
    );

    let report = tokio::time::timeout(Duration::from_secs(60), gone.sync())
        .await
        .expect("the removed member's sync ends")
        .unwrap();
    assert_eq!(report.notices().count(), 0);
    assert!(titles(&gone, "kort@bz").is_empty());
}
