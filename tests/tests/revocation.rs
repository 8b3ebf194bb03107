//! Revocation across the federation: an org-admin revokes a user of their
//! organisation; every relay cuts them off, refuses them, and the hubs of their
//! communities have them removed by the first admin online, while the others carry
//! on without a gap. Also: who may revoke, CRL entries, a peer relay revoked by its
//! CA's CRL, and a device whose certificate expires while it is connected.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_client::Client;
use kring_tests::steps::{draft, join, ready, sync_until, watch_online};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// Syncs `admin` (which commits pending removals) until `user` is no longer a
/// member of `community`; returns the epoch then.
async fn removed(admin: &mut Client, community: &str, user: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        admin.sync().await.unwrap();
        let info = admin.community_info(community).await.unwrap();
        if !info.members.iter().any(|m| m == user) {
            return info.epoch;
        }
        assert!(
            Instant::now() < deadline,
            "{user} still a member of {community}: {:?}",
            info.members
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a relay's audit log as its org-admin and returns the records' lines.
async fn audit_lines(c: &mut Client) -> Vec<String> {
    let mut lines = Vec::new();
    c.audit_each(false, |r| {
        lines.push(format!(
            "{} {} {} {} {}",
            r.kind, r.actor, r.subject, r.action, r.detail
        ))
    })
    .await
    .unwrap();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_is_cut_off_everywhere_and_removed_from_every_community() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let mut aivd = ready(&fed, "analist@aivd").await;

    // liaison@nctv is in two communities, hubbed at bz and at aivd.
    bz.create_community("kring", "NL:STG-GEHEIM").await.unwrap();
    bz.add_members("kring@bz", &["liaison@nctv", "analist@aivd"])
        .await
        .unwrap();
    aivd.create_community("analyse", "NL:STG-GEHEIM")
        .await
        .unwrap();
    aivd.add_members("analyse@aivd", &["liaison@nctv", "liaison@bz"])
        .await
        .unwrap();
    join(&mut nctv, "kring@bz").await;
    join(&mut nctv, "analyse@aivd").await;
    join(&mut aivd, "kring@bz").await;
    join(&mut bz, "analyse@aivd").await;
    bz.file_notice(draft("kring@bz", "NL:STG-CONFIDENTIEEL", "before"))
        .await
        .unwrap();
    sync_until(&mut nctv, "kring@bz", &["before"]).await;

    // The liaison's device is connected to nctv and watching.
    let watcher = watch_online(nctv).await.unwrap();

    // The nctv org-admin revokes the liaison.
    let mut admin = fed.client("admin@nctv").unwrap();
    let started = Instant::now();
    let r = admin
        .revoke("liaison@nctv", "device lost in transit")
        .await
        .unwrap();
    assert_eq!(r.user, "liaison@nctv");
    let mut peers = r.peers.clone();
    peers.sort();
    assert_eq!(peers, vec!["aivd", "bz", "post-a"]);

    // Cut off: the watch ends with "revoked" (exit 4), well within a generous bound.
    let (_, ended, result) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the revoked device was not cut off within 10 s")
        .unwrap();
    let cut_off = ended.duration_since(started);
    eprintln!("revoked device cut off {cut_off:?} after the revocation was acknowledged");
    assert!(cut_off < Duration::from_secs(5), "{cut_off:?}");
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");

    // It cannot reconnect.
    let mut again = fed.client("liaison@nctv").unwrap();
    let e = again.sync().await.unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");

    // Removed from both communities once their admins come online (their clients
    // commit the hubs' removal proposals without being asked).
    let epoch_kring = removed(&mut bz, "kring@bz", "liaison@nctv").await;
    let epoch_analyse = removed(&mut aivd, "analyse@aivd", "liaison@nctv").await;
    assert!(epoch_kring >= 2 && epoch_analyse >= 2);

    // Nobody can add the revoked user again: the home relay refuses its key packages.
    let e = bz
        .add_members("kring@bz", &["liaison@nctv"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");

    // The others carry on without a gap; the notice is encrypted in an epoch the
    // revoked member's keys never reach.
    aivd.file_notice(draft("kring@bz", "NL:STG-CONFIDENTIEEL", "after"))
        .await
        .unwrap();
    sync_until(&mut bz, "kring@bz", &["before", "after"]).await;
    sync_until(&mut aivd, "kring@bz", &["before", "after"]).await;
    let info = bz.community_info("kring@bz").await.unwrap();
    assert!(info.epoch >= epoch_kring);
    assert!(!info.members.iter().any(|m| m == "liaison@nctv"));

    // Every relay's audit log says so: the home relay the revocation and the cut-off,
    // the hub the statement received over federation and its removal proposal.
    let at_nctv = audit_lines(&mut admin).await;
    assert!(
        at_nctv
            .iter()
            .any(|l| l.contains("revocation admin@nctv liaison@nctv revoke device lost")),
        "{at_nctv:#?}"
    );
    assert!(
        at_nctv.iter().any(|l| l.contains("cut-off")),
        "{at_nctv:#?}"
    );
    let at_bz = audit_lines(&mut fed.client("admin@bz").unwrap()).await;
    assert!(
        at_bz
            .iter()
            // Flooded: it may come first from nctv or from a relay that passed it on.
            .any(|l| l.contains("liaison@nctv revoke device lost")
                && l.contains("received from relay")),
        "{at_bz:#?}"
    );
    assert!(
        at_bz
            .iter()
            .any(|l| l.contains("propose-removal") && l.contains("liaison@nctv")),
        "{at_bz:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_org_admins_of_the_users_organisation_may_revoke() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let mut target = ready(&fed, "liaison@nctv").await;

    // An org-admin of another organisation: refused (exit 4), whether or not bz has
    // seen nctv's certificate yet.
    let mut bz_admin = fed.client("admin@bz").unwrap();
    let e = bz_admin
        .revoke("liaison@nctv", "not mine to revoke")
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("organisation"), "{e}");

    // A user without the org-admin role: refused before anything is sent.
    let mut liaison = fed.client("liaison@bz").unwrap();
    let e = liaison
        .revoke("analist@bz", "I am not an admin")
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("org-admin"), "{e}");

    // Usage errors: oneself, no reason, not a user id.
    for (user, reason) in [("admin@bz", "me"), ("liaison@bz", " "), ("not-a-user", "x")] {
        let e = bz_admin.revoke(user, reason).await.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{user}: {e}");
    }

    // Nothing was revoked: the target still works.
    target.sync().await.unwrap();
    target.publish_key_packages(1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_entry_cuts_off_and_removes_like_a_revocation() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    nctv.create_community("statelijke-actoren", "NL:STG-GEHEIM")
        .await
        .unwrap();
    nctv.add_members("statelijke-actoren@nctv", &["liaison@bz"])
        .await
        .unwrap();
    join(&mut bz, "statelijke-actoren@nctv").await;

    let watcher = watch_online(bz).await.unwrap();

    // bz's CA publishes a new CRL with the liaison's certificate; relay bz reads
    // its configured CRL file when it changes.
    let started = Instant::now();
    let entry =
        kring_certs_dev::revoke_user_certificate(fed.dir(), "liaison@bz", kring_tests::now())
            .unwrap();
    assert!(!entry.already_revoked);
    let (_, ended, result) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the device with a CRL-revoked certificate was not cut off within 10 s")
        .unwrap();
    eprintln!(
        "CRL-revoked device cut off {:?} after the CRL file was written",
        ended.duration_since(started)
    );
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    let e = fed.client("liaison@bz").unwrap().sync().await.unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");

    // The CRL spread to nctv, the community's hub, which proposed the removal; the
    // admin's client commits it.
    removed(&mut nctv, "statelijke-actoren@nctv", "liaison@bz").await;
    let at_nctv = audit_lines(&mut fed.client("admin@nctv").unwrap()).await;
    assert!(
        at_nctv
            .iter()
            .any(|l| l.contains("ca:bz crl:bz crl") && l.contains(&entry.serial)),
        "{at_nctv:#?}"
    );
}

/// Waits (polling the audit log of `admin`'s relay) until `done` holds for its
/// lines; returns them.
async fn audit_until(
    admin: &mut Client,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = audit_lines(admin).await;
        if done(&lines) {
            return lines;
        }
        assert!(Instant::now() < deadline, "{what}: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A device whose certificate expires while it is connected is cut off when it
/// expires (QUIC close code 8, "certificate expired"), and the cut is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_certificate_expires_while_connected_is_cut_off() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let not_after = kring_tests::now() + 8;
    kring_certs_dev::issue_user_into(
        fed.dir(),
        &kring_certs_dev::IssueUserRequest {
            user: "kort@bz".into(),
            clearance: "NL:STG-GEHEIM".parse().unwrap(),
            roles: Vec::new(),
            not_after: Some(not_after),
            force: false,
        },
        kring_tests::now(),
    )
    .unwrap();
    let (_ep, conn) = kring_tests::chaos::raw_user_connect(&fed, "kort@bz")
        .await
        .unwrap();
    assert_eq!(
        kring_tests::chaos::raw_request(&conn, &kring_protocol::wire::Request::Ping).await,
        Ok(kring_protocol::wire::Response::Pong)
    );
    let why = tokio::time::timeout(Duration::from_secs(30), conn.closed())
        .await
        .expect("the connection outlived its certificate");
    let closed_at = kring_tests::now();
    eprintln!("closed at {closed_at}, certificate valid until {not_after}: {why}");
    match why {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(8));
            assert_eq!(&close.reason[..], b"certificate expired");
        }
        other => panic!("closed by {other}, not for the expired certificate"),
    }
    assert!(
        closed_at > not_after,
        "closed before the certificate expired"
    );
    let lines = audit_lines(&mut fed.client("admin@bz").unwrap()).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("connection bz kort@bz expired-cut-off")),
        "{lines:#?}"
    );
}

/// Hex text (of a certificate serial) as bytes.
fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A peer relay whose certificate its organisation's CA revokes (a CRL entry for its
/// serial) loses its link while connected: nctv reads the new CRL and passes it on,
/// bz closes the link as soon as the CRL reaches it, audits the cut, and refuses
/// nctv from then on (its re-dial is refused; the link never comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_relay_revoked_by_crl_loses_its_link() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    // The link works: a key package of nctv's user travels over it.
    let _nctv = ready(&fed, "liaison@nctv").await;
    let mut bz = ready(&fed, "liaison@bz").await;
    bz.create_community("kring", "NL:STG-GEHEIM").await.unwrap();
    bz.add_members("kring@bz", &["liaison@nctv"]).await.unwrap();

    // nctv's CA publishes a CRL with the certificate of relay nctv.
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let leaf = kring_protocol::identity::certificates_from_pem(
        read(fed.dir().join("relays/nctv/relay.crt")).as_bytes(),
    )
    .unwrap()
    .remove(0);
    let relay = kring_protocol::identity::Identity::from_der(&leaf).unwrap();
    let org_dir = kring_certs_dev::org_dir(fed.dir(), "nctv");
    let ca = kring_certs_dev::Authority::load(
        "nctv",
        &read(org_dir.join("ca.crt")),
        &read(org_dir.join("ca.key")),
    )
    .unwrap();
    let this_update = kring_tests::now() + 1;
    let crl = ca
        .crl_with_entries(
            &[kring_certs_dev::CrlEntry::key_compromise(
                unhex(&relay.serial),
                this_update,
            )],
            1000,
            this_update,
            this_update + 30 * 86_400,
        )
        .unwrap();
    std::fs::write(kring_certs_dev::crl_path(fed.dir(), "nctv"), crl.pem).unwrap();
    let started = Instant::now();

    let mut admin = fed.client("admin@bz").unwrap();
    let cut = "revocation bz nctv cut-off";
    let lines = audit_until(
        &mut admin,
        "bz kept its link to the revoked relay nctv",
        |lines| {
            let at = lines.iter().position(|l| l.starts_with(cut));
            // ... and its re-dial is refused.
            at.is_some_and(|at| {
                lines[at..]
                    .iter()
                    .any(|l| l.starts_with("revocation nctv bz connect-refused"))
            })
        },
    )
    .await;
    eprintln!(
        "link to the revoked peer cut within {:?}",
        started.elapsed()
    );
    let at = lines.iter().position(|l| l.starts_with(cut)).unwrap();
    assert!(
        lines[at].contains(&relay.serial),
        "the cut names the revoked certificate: {}",
        lines[at]
    );
    assert!(
        !lines[at..]
            .iter()
            .any(|l| l.starts_with("link bz nctv link-up")),
        "the link came back: {lines:#?}"
    );
}

/// Enforcement passes of relay `id` so far (its log at debug level for
/// `kring_relay::revocation`).
fn enforcement_passes(fed: &Federation, id: &str) -> usize {
    std::fs::read_to_string(fed.log_file(id))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("enforcement pass"))
        .count()
}

/// Waits until relay `id` has run at least `at_least` enforcement passes; returns
/// how many it has run.
async fn passes_reach(fed: &Federation, id: &str, at_least: usize, what: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = enforcement_passes(fed, id);
        if n >= at_least {
            return n;
        }
        assert!(Instant::now() < deadline, "{what}: {n} passes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches relay `id` for `window` and asserts it ran no enforcement pass beyond
/// `passes` meanwhile. (Absence can only be observed over a window.)
async fn no_pass_for(fed: &Federation, id: &str, passes: usize, window: Duration) {
    let started = Instant::now();
    while started.elapsed() < window {
        assert_eq!(
            enforcement_passes(fed, id),
            passes,
            "a pass ran after {:?} while nothing changed",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Once a revocation exists, the hub does not re-verify its communities while
/// nothing changes: an enforcement pass runs at start, when the revocation set
/// changes and when a commit lands (then for that community only), never on a timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_runs_only_when_something_changes() {
    let mut fed = federation();
    fed.start_with_env("bz", &[("KRING_LOG", "info,kring_relay::revocation=debug")])
        .unwrap();
    fed.issue_user("kort@bz", "NL:STG-GEHEIM", &[]).unwrap();
    fed.issue_user("ander@bz", "NL:STG-GEHEIM", &[]).unwrap();
    let mut hub = ready(&fed, "liaison@bz").await;
    let _kort = ready(&fed, "kort@bz").await;
    let _ander = ready(&fed, "ander@bz").await;
    hub.create_community("stil", "NL:STG-GEHEIM").await.unwrap();
    hub.add_members("stil@bz", &["kort@bz"]).await.unwrap();
    let start = passes_reach(&fed, "bz", 2, "start-up and the add").await;

    let mut admin = fed.client("admin@bz").unwrap();
    admin.revoke("kort@bz", "left the service").await.unwrap();
    let revoked = passes_reach(&fed, "bz", start + 1, "after the revocation").await;
    // A revocation exists and the hub proposed the removal: three seconds (three
    // periods of the CRL file check, which used to re-verify every member) pass
    // without a pass.
    no_pass_for(&fed, "bz", revoked, Duration::from_secs(3)).await;

    // Commits land (the liaison's device commits the hub's removal as it syncs,
    // then the add): a pass each, and the revoked member is gone.
    hub.add_members("stil@bz", &["ander@bz"]).await.unwrap();
    let info = hub.community_info("stil@bz").await.unwrap();
    assert!(
        !info.members.iter().any(|m| m == "kort@bz"),
        "{:?}",
        info.members
    );
    assert!(info.members.iter().any(|m| m == "ander@bz"));
    let committed = passes_reach(&fed, "bz", revoked + 2, "after two commits").await;
    no_pass_for(&fed, "bz", committed, Duration::from_secs(2)).await;
}
