//! Members rotate their leaf keys: `kring keys update` on request, and on schedule
//! from a clock the test controls; the hub orders the updates of any member, and
//! everyone keeps reading.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::sync::Arc;

use kring_client::cli::Out;
use kring_client::{Client, SyncEvent};
use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher};

const DAY: u64 = 86_400;

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// Runs `kring ARGS` (the command line, in this process); its stdout.
async fn kring(args: &[&str]) -> String {
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
    let code = kring_client::cli::run_args(
        std::iter::once("kring").chain(args.iter().copied()),
        &mut Out::new(Box::new(shared.clone())),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "kring {args:?}");
    String::from_utf8(shared.0.lock().unwrap().clone()).unwrap()
}

/// `kring community members ID --json` of `user`, by member id.
async fn members_json(
    fed: &Federation,
    user: &str,
    community: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let dir = fed.user_dir(user);
    let out = kring(&[
        "--profile",
        dir.to_str().unwrap(),
        "community",
        "members",
        community,
        "--json",
    ])
    .await;
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn leaf_key(c: &Client, community: &str, member: &str) -> String {
    c.member_leaves(community)
        .unwrap()
        .into_iter()
        .find(|l| l.id == member)
        .unwrap()
        .leaf_key
}

/// A community `c@bz` of liaison@bz (admin), admin@bz (a plain member here) and
/// liaison@nctv (at another relay).
async fn community(fed: &Federation) -> (Client, Client, Client) {
    let mut admin = ready(fed, "liaison@bz").await;
    let mut member = ready(fed, "admin@bz").await;
    let mut remote = ready(fed, "liaison@nctv").await;
    admin
        .create_community("c", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    admin
        .add_members("c", &["admin@bz".to_string(), "liaison@nctv".to_string()])
        .await
        .unwrap();
    join(&mut member, "c@bz").await;
    join(&mut remote, "c@bz").await;
    (admin, member, remote)
}

/// `kring keys update` by a member who is not an admin: the hub orders it, the
/// member's `leaf_key` changes for everyone (`community members --json`, with its
/// `leaf_updated_at`), the epoch moves, everybody reads what is filed after it, and
/// the hub's audit log records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_update_rotates_the_leaf_and_everyone_keeps_reading() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let (mut admin, member, mut remote) = community(&fed).await;
    let before = members_json_via(&mut admin, &fed, "c@bz").await;
    let old_key = before["admin@bz"]["leaf_key"].as_str().unwrap().to_string();
    assert_eq!(old_key.len(), 16);
    assert!(
        before["admin@bz"]["leaf_updated_at"].is_string(),
        "{before:?}"
    );
    assert_eq!(before["liaison@bz"]["admin"], true);
    let epoch_before = admin.community_info("c@bz").await.unwrap().epoch;

    // The member rotates with the command line (its own process would hold the
    // device state: close the in-process client first).
    drop(member);
    let dir = fed.user_dir("admin@bz");
    let out = kring(&[
        "--profile",
        dir.to_str().unwrap(),
        "keys",
        "update",
        "--community",
        "c",
    ])
    .await;
    assert!(out.starts_with("c@bz: new leaf key "), "{out}");
    let new_key = out.split_whitespace().nth(4).unwrap().to_string();
    assert_ne!(new_key, old_key);

    let after = members_json_via(&mut admin, &fed, "c@bz").await;
    assert_eq!(after["admin@bz"]["leaf_key"], new_key.as_str());
    assert_eq!(
        after["liaison@bz"]["leaf_key"],
        before["liaison@bz"]["leaf_key"]
    );
    assert_eq!(
        after["liaison@nctv"]["leaf_key"],
        before["liaison@nctv"]["leaf_key"]
    );
    assert!(after["admin@bz"]["leaf_updated_at"].is_string());
    assert_eq!(
        admin.community_info("c@bz").await.unwrap().epoch,
        epoch_before + 1
    );

    // Everyone reads what is filed after the update, the updater included.
    admin
        .file_notice(draft("c@bz", "NL:DEP-VERTROUWELIJK", "after"))
        .await
        .unwrap();
    remote
        .file_notice(draft("c@bz", "NL:DEP-VERTROUWELIJK", "from afar"))
        .await
        .unwrap();
    let mut member = fed.client("admin@bz").unwrap();
    sync_until(&mut member, "c@bz", &["after", "from afar"]).await;
    sync_until(&mut remote, "c@bz", &["after", "from afar"]).await;
    assert_eq!(leaf_key(&remote, "c@bz", "admin@bz"), new_key);

    // The hub audited the update as the member's (admin@bz is bz's org-admin).
    let mut lines = Vec::new();
    member
        .audit_each(false, |r| {
            lines.push(format!("{} {} {}", r.actor, r.subject, r.action))
        })
        .await
        .unwrap();
    assert!(
        lines.iter().any(|l| l == "admin@bz c@bz update-keys"),
        "{lines:?}"
    );
}

/// `community members --json` through the command line, after the in-process
/// client `c` synced (and let go of the device state).
async fn members_json_via(
    c: &mut Client,
    fed: &Federation,
    community: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    c.sync().await.unwrap();
    let user = c.user();
    c.disconnect().await;
    c.store().release().unwrap();
    members_json(fed, &user, community).await
}

/// The schedule, driven by the devices' clocks: nothing happens before the period
/// is over; after it, a sync updates the leaf; two devices due at once race and
/// both end up updated; a device back after longer than the period updates before
/// it files; a community's own period (`--update-days`) is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_fires_from_the_devices_clock() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let (mut admin, mut member, mut remote) = community(&fed).await;
    let t0 = kring_tests::now() as u64;
    let at = |t: u64| -> kring_client::Clock { Arc::new(move || t) };
    let key = |c: &Client, who: &str| leaf_key(c, "c@bz", who);
    let start = (
        key(&admin, "liaison@bz"),
        key(&admin, "admin@bz"),
        key(&admin, "liaison@nctv"),
    );
    let epoch0 = admin.community_info("c@bz").await.unwrap().epoch;

    // Six days on: not due yet (the default period is 7 days).
    member.set_clock(at(t0 + 6 * DAY));
    let report = member.sync().await.unwrap();
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, SyncEvent::KeysUpdated { .. })),
        "{report:?}"
    );
    assert_eq!(admin.community_info("c@bz").await.unwrap().epoch, epoch0);

    // Eight days on: the member's next sync updates its leaf.
    member.set_clock(at(t0 + 8 * DAY));
    let report = member.sync().await.unwrap();
    assert!(
        report.events.iter().any(|e| matches!(
            e,
            SyncEvent::KeysUpdated { community, epoch, .. }
                if community == "c@bz" && *epoch == epoch0 + 1
        )),
        "{report:?}"
    );
    admin.sync().await.unwrap();
    assert_ne!(key(&admin, "admin@bz"), start.1);
    assert_eq!(key(&admin, "liaison@bz"), start.0);
    // Updated: not due again the same day.
    let report = member.sync().await.unwrap();
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, SyncEvent::KeysUpdated { .. })),
        "{report:?}"
    );

    // Admin and remote member due at once: both sync together; the hub orders one
    // update per epoch, the loser drops its own and updates at a later sync.
    admin.set_clock(at(t0 + 8 * DAY));
    remote.set_clock(at(t0 + 8 * DAY));
    let (a, r) = tokio::join!(admin.sync(), remote.sync());
    a.unwrap();
    r.unwrap();
    for _ in 0..3 {
        admin.sync().await.unwrap();
        remote.sync().await.unwrap();
    }
    member.sync().await.unwrap();
    assert_ne!(key(&member, "liaison@bz"), start.0);
    assert_ne!(key(&member, "liaison@nctv"), start.2);
    assert_eq!(
        admin.community_info("c@bz").await.unwrap().epoch,
        epoch0 + 3
    );
    admin
        .file_notice(draft("c@bz", "NL:DEP-VERTROUWELIJK", "after the updates"))
        .await
        .unwrap();
    sync_until(&mut member, "c@bz", &["after the updates"]).await;
    sync_until(&mut remote, "c@bz", &["after the updates"]).await;

    // The remote member comes back twenty days later and files first thing: it
    // updates its leaf before the notice is encrypted. (The hub allows one
    // self-update per member per ten minutes of its own clock, remembered in
    // memory: a restart lets the remote member update again seconds later.)
    fed.stop("bz").unwrap();
    fed.start("bz").unwrap();
    remote.set_clock(at(t0 + 28 * DAY));
    let epoch = admin.community_info("c@bz").await.unwrap().epoch;
    let before = key(&remote, "liaison@nctv");
    let filed = remote
        .file_notice(draft("c@bz", "NL:DEP-VERTROUWELIJK", "back again"))
        .await
        .unwrap();
    assert_eq!(filed.epoch, epoch + 1);
    assert_ne!(key(&remote, "liaison@nctv"), before);
    sync_until(&mut member, "c@bz", &["after the updates", "back again"]).await;

    // A community with a one-day period: due a day after joining.
    admin
        .create_community_with("daily", "NL:STG-CONFIDENTIEEL", 1)
        .await
        .unwrap();
    admin
        .add_members("daily", &["admin@bz".to_string()])
        .await
        .unwrap();
    member.set_clock(at(t0 + 28 * DAY));
    join(&mut member, "daily@bz").await;
    assert!(!member.key_update_due("daily@bz").unwrap());
    member.set_clock(at(t0 + 29 * DAY));
    assert!(member.key_update_due("daily@bz").unwrap());
    assert!(!member.key_update_due("c@bz").unwrap());
    let report = member.sync().await.unwrap();
    let updated: Vec<&str> = report
        .events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::KeysUpdated { community, .. } => Some(community.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(updated, vec!["daily@bz"]);
}

/// The hub takes one self-update per member and community per ten minutes: a
/// second `update_keys` right after the first is refused with a clear reason,
/// audited, and leaves the community working; other members still update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_self_update_within_the_interval_is_refused() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let (mut admin, mut member, mut remote) = community(&fed).await;
    let epoch = admin.community_info("c@bz").await.unwrap().epoch;

    member.update_keys(Some("c@bz")).await.unwrap();
    let key = leaf_key(&member, "c@bz", "admin@bz");
    let refused = member.update_keys(Some("c@bz")).await.unwrap_err();
    assert!(
        refused.to_string().contains("once every 10 minutes"),
        "{refused}"
    );
    assert_eq!(leaf_key(&member, "c@bz", "admin@bz"), key);
    assert_eq!(admin.community_info("c@bz").await.unwrap().epoch, epoch + 1);

    // Another member is not held back, and everyone keeps reading.
    remote.update_keys(Some("c@bz")).await.unwrap();
    admin
        .file_notice(draft("c@bz", "NL:DEP-VERTROUWELIJK", "still here"))
        .await
        .unwrap();
    sync_until(&mut member, "c@bz", &["still here"]).await;
    sync_until(&mut remote, "c@bz", &["still here"]).await;

    // The refusal is in the hub's audit log (admin@bz is bz's org-admin).
    let mut lines = Vec::new();
    let mut refusals = Vec::new();
    member
        .audit_each(false, |r| {
            lines.push(format!("{} {} {}", r.actor, r.subject, r.action));
            if r.action == "handshake" && r.detail.contains("once every 10 minutes") {
                refusals.push(r.actor.clone());
            }
        })
        .await
        .unwrap();
    assert_eq!(refusals, vec!["admin@bz".to_string()], "{lines:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| *l == "admin@bz c@bz update-keys")
            .count(),
        1,
        "{lines:?}"
    );
}
