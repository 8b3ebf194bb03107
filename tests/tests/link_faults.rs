//! Link faults between relays: a relay-to-relay link cut for longer than
//! the retry backoff (5 s) while notices flow both ways, then healed: catch-up is
//! complete, in hub order, exactly once. A stalled peer (its process frozen with
//! SIGSTOP) does not hold back the hub's other links. A commit whose answer is lost
//! on the way back is kept by the device and settled by the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_client::Client;
use kring_tests::chaos::UdpLink;
use kring_tests::steps::{join, titles};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

async fn ready(fed: &Federation, user: &str) -> Client {
    let mut c = fed.client(user).unwrap();
    c.set_timeouts(kring_client::conn::Timeouts {
        ordering: Duration::ZERO,
        ..kring_client::conn::Timeouts::default()
    });
    c.publish_key_packages(3).await.unwrap();
    c
}

/// Syncs until `c` has a notice titled `title`; how long that took.
async fn wait_for(c: &mut Client, community: &str, title: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        c.sync().await.unwrap();
        if titles(c, community).iter().any(|t| t == title) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{}: {title} did not arrive within {limit:?}",
            c.user()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Syncs until every title in `want` is there; then checks the whole list is
/// exactly the hub's order (the hub's own device's list), with no duplicates and
/// every sequence number known.
async fn caught_up(c: &mut Client, community: &str, hub_order: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        c.sync().await.unwrap();
        let have = c.stored_notices(Some(community)).unwrap();
        if have.len() >= hub_order.len() && have.iter().all(|s| s.seq.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {} notices after the link healed",
            c.user(),
            have.len(),
            hub_order.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(titles(c, community), hub_order, "{}", c.user());
    let seqs: Vec<u64> = c
        .stored_notices(Some(community))
        .unwrap()
        .iter()
        .map(|s| s.seq.unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// The bz→nctv link runs through a forwarder that the test cuts for 8 s while bz
/// (hub) and nctv (spoke) both file, and post-a keeps receiving meanwhile. After
/// the link heals, nctv's member has everything in hub order, once; nctv's filings
/// queued during the cut are ordered and reach the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_heals_and_catches_up_in_order() {
    let mut fed = federation();
    let link = UdpLink::start(fed.relay_addr("nctv").unwrap())
        .await
        .unwrap();
    fed.set_peer_address("bz", "nctv", link.addr()).unwrap();
    for id in ["bz", "nctv", "post-a"] {
        fed.start(id).unwrap();
    }
    let c = "knip@bz";
    let mut hub = ready(&fed, "liaison@bz").await;
    let mut spoke = ready(&fed, "liaison@nctv").await;
    let mut other = ready(&fed, "analist@post-a").await;
    hub.create_community("knip", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    hub.add_members(c, &["liaison@nctv", "analist@post-a"])
        .await
        .unwrap();
    join(&mut spoke, c).await;
    join(&mut other, c).await;
    let draft = |t: &str| kring_tests::signal(c, "NL:DEP-VERTROUWELIJK", t, "body");
    hub.file_notice(draft("before")).await.unwrap();
    wait_for(&mut spoke, c, "before", Duration::from_secs(20)).await;

    link.set_cut(true);
    let cut_at = Instant::now();
    let mut i = 0;
    while cut_at.elapsed() < Duration::from_secs(8) {
        i += 1;
        let t = format!("hub during cut {i}");
        hub.file_notice(draft(&t)).await.unwrap();
        // The other link is not affected.
        let took = wait_for(&mut other, c, &t, Duration::from_secs(10)).await;
        assert!(
            took < Duration::from_secs(5),
            "post-a took {took:?} during the cut"
        );
        let t = format!("spoke during cut {i}");
        let filed = spoke.file_notice(draft(&t)).await.unwrap();
        assert!(filed.seq.is_none(), "ordered although the link is cut");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The spoke got nothing from the hub during the cut.
    spoke.sync().await.unwrap();
    assert!(
        !titles(&spoke, c)
            .iter()
            .any(|t| t.starts_with("hub during")),
        "notices crossed a cut link"
    );
    link.set_cut(false);
    let healed = Instant::now();
    let last = format!("spoke during cut {i}");
    wait_for(&mut hub, c, &last, Duration::from_secs(30)).await;
    eprintln!(
        "link cut for {:?}; {i} + {i} notices filed meanwhile; caught up {:?} after healing",
        healed - cut_at,
        healed.elapsed()
    );
    let hub_order = titles(&hub, c);
    assert_eq!(hub_order.len(), 1 + 2 * i, "{hub_order:?}");
    // The hub ordered each spoke notice after the cut, in filing order.
    let spoke_seen: Vec<&String> = hub_order
        .iter()
        .filter(|t| t.starts_with("spoke"))
        .collect();
    let spoke_want: Vec<String> = (1..=i).map(|k| format!("spoke during cut {k}")).collect();
    assert_eq!(
        spoke_seen,
        spoke_want.iter().collect::<Vec<_>>(),
        "spoke notices out of order"
    );
    caught_up(&mut spoke, c, &hub_order).await;
    caught_up(&mut other, c, &hub_order).await;
}

/// post-a's relay is frozen (SIGSTOP): the hub keeps delivering to nctv promptly
/// and filing at the hub is not slowed; after SIGCONT post-a catches up in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_does_not_block_other_links() {
    let mut fed = federation();
    for id in ["bz", "nctv", "post-a"] {
        fed.start(id).unwrap();
    }
    let c = "traag@bz";
    let mut hub = ready(&fed, "liaison@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let mut post = ready(&fed, "analist@post-a").await;
    hub.create_community("traag", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    hub.add_members(c, &["liaison@nctv", "analist@post-a"])
        .await
        .unwrap();
    join(&mut nctv, c).await;
    join(&mut post, c).await;
    post.disconnect().await;

    fed.signal("post-a", "STOP").unwrap();
    let stalled = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    // Longer than the link idle timeout (3 s) and the redial backoff (5 s).
    while stalled.elapsed() < Duration::from_secs(8) {
        i += 1;
        let t = format!("while post-a is frozen {i}");
        let filing = Instant::now();
        hub.file_notice(kring_tests::signal(c, "NL:DEP-VERTROUWELIJK", &t, "body"))
            .await
            .unwrap();
        assert!(
            filing.elapsed() < Duration::from_secs(3),
            "filing at the hub took {:?}",
            filing.elapsed()
        );
        let took = wait_for(&mut nctv, c, &t, Duration::from_secs(10)).await;
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "post-a frozen for {:?}; slowest delivery to nctv {slowest:?}",
        stalled.elapsed()
    );
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    fed.signal("post-a", "CONT").unwrap();
    let order = titles(&hub, c);
    assert_eq!(order.len(), i);
    caught_up(&mut post, c, &order).await;
    caught_up(&mut nctv, c, &order).await;
}

/// A commit forwarded to the hub whose answer is lost (the hub's datagrams to the
/// spoke are dropped, so the spoke's link times out after the hub ordered the
/// commit): the device is told the outcome is not known yet (exit 5) and keeps the
/// commit; running the command again while the hub is out of reach keeps it too.
/// Once the link heals, the next sync merges it from the log: the device is at the
/// hub's epoch, and notices go both ways (no fork).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_settled_by_the_log() {
    let mut fed = federation();
    let link = UdpLink::start(fed.relay_addr("nctv").unwrap())
        .await
        .unwrap();
    fed.set_peer_address("bz", "nctv", link.addr()).unwrap();
    for id in ["bz", "nctv"] {
        fed.start(id).unwrap();
    }
    let c = "onzeker@bz";
    let mut hub = ready(&fed, "liaison@bz").await;
    let mut spoke = ready(&fed, "liaison@nctv").await;
    let _admin = ready(&fed, "admin@bz").await;
    hub.create_community("onzeker", "NL:STG-GEHEIM")
        .await
        .unwrap();
    hub.add_members(c, &["liaison@nctv", "admin@bz"])
        .await
        .unwrap();
    hub.set_admin(c, kring_client::AdminChange::Add, "liaison@nctv")
        .await
        .unwrap();
    join(&mut spoke, c).await;
    spoke.sync().await.unwrap();
    let before = hub.community_info(c).await.unwrap().epoch;

    // The spoke's commit reaches the hub; the hub's answer does not come back.
    link.set_cut_to_server(true);
    let e = spoke
        .remove_members(c, &["admin@bz"])
        .await
        .expect_err("the answer cannot have arrived");
    assert_eq!(e.exit_code(), 5, "{e}");
    assert!(e.to_string().contains("not known yet"), "{e}");
    let at_hub = hub.community_info(c).await.unwrap();
    assert_eq!(at_hub.epoch, before + 1, "the hub ordered the commit");
    assert!(!at_hub.members.iter().any(|m| m == "admin@bz"));

    // Again while the hub is out of reach: the same commit, still not settled.
    let again = spoke
        .remove_members(c, &["admin@bz"])
        .await
        .expect_err("the hub is out of reach");
    assert_eq!(again.exit_code(), 5, "{again}");
    assert!(again.to_string().contains("not known yet"), "{again}");

    link.set_cut_to_server(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    loop {
        events.extend(spoke.sync().await.unwrap().events);
        let merged = events.iter().any(|e| {
            matches!(e, kring_client::SyncEvent::Changed { community, epoch, committer, removed, .. }
                if community == c && *epoch == before + 1 && committer == "liaison@nctv"
                    && removed == &["admin@bz".to_string()])
        });
        if merged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spoke never merged its commit: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, kring_client::SyncEvent::Unreadable { .. })),
        "{events:?}"
    );
    // Same epoch, same keys: notices go both ways.
    let draft = |t: &str| kring_tests::signal(c, "NL:DEP-VERTROUWELIJK", t, "body");
    spoke.file_notice(draft("from the spoke")).await.unwrap();
    wait_for(&mut hub, c, "from the spoke", Duration::from_secs(30)).await;
    hub.file_notice(draft("from the hub")).await.unwrap();
    wait_for(&mut spoke, c, "from the hub", Duration::from_secs(30)).await;
    assert_eq!(spoke.community_info(c).await.unwrap().epoch, before + 1);
}
