//! A relay's `/metrics` and `/healthz` (`[metrics] listen`): the exposition passes
//! `promtool check metrics`, and the counters move as notices flow, refusals happen
//! and a peer goes down and comes back.
//!
//! Needs `promtool` (Debian's `prometheus` package; `.ci/run` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher};

/// How long a metric may take to show what happened across relays.
const DEADLINE: Duration = Duration::from_secs(30);

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// `promtool` on the PATH; fails the test (never skips it) when missing.
fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found on PATH: this test checks the relay's metrics with it. \
                 Install Debian's prometheus package: \
                 `apt-get install -y --no-install-recommends prometheus` (.ci/run does)"
            )
        })
}

fn enable_metrics(fed: &Federation, id: &str) -> SocketAddr {
    kring_tests::scrape::enable_metrics(fed, id).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    kring_tests::scrape::get(addr, path).unwrap()
}

/// Scrapes `/metrics` and checks it with `promtool check metrics`.
fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    body
}

use kring_tests::scrape::value;

/// Scrapes until `ok` holds for the exposition, within [`DEADLINE`].
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr);
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_with_traffic() {
    promtool();
    let mut fed = federation();
    let bz_metrics = enable_metrics(&fed, "bz");
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();

    let (status, body) = get(bz_metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(bz_metrics, "/nothing").0, 404);

    let before = scrape_until(bz_metrics, "the link to nctv up", |t| {
        value(t, "kring_relay_link_up{peer=\"nctv\"}") == 1.0
    })
    .await;
    for series in [
        "kring_relay_notices_ordered_total",
        "kring_relay_commits_ordered_total",
        "kring_relay_deliveries_total{to=\"device\"}",
        "kring_relay_outbox_items{peer=\"nctv\"}",
        "kring_relay_revocations{kind=\"user\"}",
    ] {
        assert_eq!(value(&before, series), 0.0, "{series}\n{before}");
    }
    assert!(
        before.contains("kring_relay_link_up{peer=\"aivd\"} 0"),
        "{before}"
    );
    assert!(
        value(&before, "kring_relay_store_size_bytes") > 0.0,
        "{before}"
    );
    let expiry = value(&before, "kring_relay_certificate_expiry_timestamp_seconds");
    assert!(expiry > kring_tests::now() as f64, "{before}");

    // A community hubbed at bz with a member at nctv; three notices flow.
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "liaison@nctv").await;
    let mut outsider = ready(&fed, "admin@bz").await;
    admin
        .create_community("metingen", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    admin
        .add_members("metingen@bz", &["liaison@nctv"])
        .await
        .unwrap();
    join(&mut member, "metingen@bz").await;
    for title in ["een", "twee", "drie"] {
        admin
            .file_notice(draft("metingen@bz", "NL:DEP-VERTROUWELIJK", title))
            .await
            .unwrap();
    }
    sync_until(&mut member, "metingen@bz", &["een", "twee", "drie"]).await;
    sync_until(&mut admin, "metingen@bz", &["een", "twee", "drie"]).await;
    // A refusal: a user of bz who is not a member asks about the community.
    outsider.community_info("metingen@bz").await.unwrap_err();

    let after = scrape_until(bz_metrics, "the notices acknowledged by nctv", |t| {
        value(t, "kring_relay_outbox_items{peer=\"nctv\"}") == 0.0
            && value(t, "kring_relay_deliveries_total{to=\"peer\"}") >= 3.0
    })
    .await;
    assert_eq!(
        value(&after, "kring_relay_notices_ordered_total"),
        3.0,
        "{after}"
    );
    assert!(
        value(&after, "kring_relay_commits_ordered_total") >= 1.0,
        "{after}"
    );
    assert!(
        value(&after, "kring_relay_requests_total{kind=\"file-notice\"}")
            + value(&after, "kring_relay_requests_total{kind=\"file-notices\"}")
            >= 3.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "kring_relay_refusals_total{kind=\"community-info\",reason=\"not-member\"}"
        ),
        1.0,
        "{after}"
    );
    assert!(
        value(&after, "kring_relay_deliveries_total{to=\"device\"}") >= 3.0,
        "{after}"
    );
    assert!(
        value(&after, "kring_relay_connections{kind=\"device\"}") >= 1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "kring_relay_connections{kind=\"peer\"}"),
        1.0,
        "{after}"
    );
    assert!(
        value(&after, "kring_relay_fsync_duration_seconds_count")
            > value(&before, "kring_relay_fsync_duration_seconds_count"),
        "{after}"
    );
    // Label values never name a community, user or notice.
    for secret in ["metingen", "liaison", "@bz", "@nctv"] {
        assert!(!after.contains(secret), "{secret} exposed:\n{after}");
    }

    // nctv goes down: its link drops, the notice for it waits in the outbox and ages.
    fed.stop("nctv").unwrap();
    scrape_until(bz_metrics, "the link to nctv down", |t| {
        value(t, "kring_relay_link_up{peer=\"nctv\"}") == 0.0
    })
    .await;
    admin
        .file_notice(draft("metingen@bz", "NL:DEP-VERTROUWELIJK", "vier"))
        .await
        .unwrap();
    let waiting = scrape_until(bz_metrics, "an item for nctv waiting a while", |t| {
        value(t, "kring_relay_outbox_oldest_age_seconds{peer=\"nctv\"}") >= 1.0
    })
    .await;
    assert_eq!(
        value(&waiting, "kring_relay_outbox_items{peer=\"nctv\"}"),
        1.0,
        "{waiting}"
    );
    assert_eq!(
        value(&waiting, "kring_relay_connections{kind=\"peer\"}"),
        0.0,
        "{waiting}"
    );

    // nctv is back: the outbox drains and its age is 0 again.
    fed.start("nctv").unwrap();
    sync_until(&mut member, "metingen@bz", &["een", "twee", "drie", "vier"]).await;
    let drained = scrape_until(bz_metrics, "the outbox to nctv drained", |t| {
        value(t, "kring_relay_outbox_items{peer=\"nctv\"}") == 0.0
    })
    .await;
    assert_eq!(
        value(
            &drained,
            "kring_relay_outbox_oldest_age_seconds{peer=\"nctv\"}"
        ),
        0.0,
        "{drained}"
    );
    assert_eq!(
        value(&drained, "kring_relay_link_up{peer=\"nctv\"}"),
        1.0,
        "{drained}"
    );
    assert_eq!(
        value(&drained, "kring_relay_notices_ordered_total"),
        4.0,
        "{drained}"
    );
}
