//! One relay carries a community end to end: real `kring-relay` processes, real MLS,
//! in-process clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use kring_client::Client;
use kring_protocol::wire::{ErrorCode, Response};
use kring_tests::steps::{draft, ready, titles};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

/// `admin` (liaison@bz) creates `c@bz` (maximum NL:STG-CONFIDENTIEEL) and adds
/// `member` (admin@bz), who joins.
async fn community_c(admin: &mut Client, member: &mut Client) {
    admin
        .create_community("c", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    admin
        .add_members("c", &["admin@bz".to_string()])
        .await
        .unwrap();
    member.sync().await.unwrap();
}

/// `fed` with `bz` started, and `c@bz` made by `liaison@bz` with `admin@bz` joined
/// ([`community_c`]): the federation, the admin and the member.
async fn relay_with_community_c(mut fed: Federation) -> (Federation, Client, Client) {
    fed.start("bz").unwrap();
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "admin@bz").await;
    community_c(&mut admin, &mut member).await;
    (fed, admin, member)
}

/// Three users on relay `bz`: an admin creates a community, adds two members, files;
/// a member offline during filing gets the notice on reconnect, exactly once; the
/// relay is restarted between filing and reading and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_add_file_deliver_restart() {
    let mut fed = federation();
    fed.issue_user("analist@bz", "NL:STG-GEHEIM", &[]).unwrap();
    fed.start("bz").unwrap();

    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "admin@bz").await;
    let mut late = ready(&fed, "analist@bz").await;

    let created = admin
        .create_community("desinformatie", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    assert_eq!(created.community, "desinformatie@bz");
    let added = admin
        .add_members(
            "desinformatie@bz",
            &["admin@bz".to_string(), "analist@bz".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(added.added.len(), 2);

    member.sync().await.unwrap();
    let filed = admin
        .file_notice(draft("desinformatie", "NL:DEP-VERTROUWELIJK", "first"))
        .await
        .unwrap();
    assert!(filed.seq.is_some_and(|s| s > 0));
    let report = member.sync().await.unwrap();
    let got: Vec<_> = report.notices().map(|n| n.title.clone()).collect();
    assert_eq!(got, vec!["first".to_string()]);
    assert_eq!(report.notices().next().unwrap().sender, "liaison@bz");

    // `late` has been offline the whole time; the relay restarts before it reads.
    admin
        .file_notice(draft("desinformatie", "NL:STG-CONFIDENTIEEL", "second"))
        .await
        .unwrap();
    admin.disconnect().await;
    member.disconnect().await;
    fed.stop("bz").unwrap();
    fed.start("bz").unwrap();

    late.sync().await.unwrap();
    assert_eq!(titles(&late, "desinformatie@bz"), vec!["first", "second"]);
    // Syncing again delivers nothing new: exactly once.
    let again = late.sync().await.unwrap();
    assert_eq!(again.notices().count(), 0);
    assert_eq!(titles(&late, "desinformatie@bz"), vec!["first", "second"]);

    member.sync().await.unwrap();
    assert_eq!(titles(&member, "desinformatie@bz"), vec!["first", "second"]);
}

/// Every single-relay refusal, each with its typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    let mut fed = federation();
    fed.issue_user("laag@bz", "NL:DEP-VERTROUWELIJK", &[])
        .unwrap();
    fed.issue_user("buiten@bz", "NL:STG-GEHEIM", &[]).unwrap();
    fed.start("bz").unwrap();
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "admin@bz").await;
    let _low = ready(&fed, "laag@bz").await;
    let mut outsider = ready(&fed, "buiten@bz").await;
    community_c(&mut admin, &mut member).await;

    // Filing above the community maximum: refused by the client (exit 3).
    let e = admin
        .file_notice(draft("c", "NL:STG-GEHEIM", "too high"))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");

    // An under-cleared member cannot be added; the reason names them.
    let e = admin
        .add_members("c", &["laag@bz".to_string()])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(e.to_string().contains("laag@bz"), "{e}");

    // A non-admin member cannot add.
    let e = member
        .add_members("c", &["buiten@bz".to_string()])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");

    // A non-member cannot file.
    let e = outsider
        .file_notice(draft("c@bz", "NL:ONGERUBRICEERD", "intruder"))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");

    // Nothing refused reached anybody.
    member.sync().await.unwrap();
    assert!(titles(&member, "c@bz").is_empty());
}

/// A device that missed a commit files in the new epoch: its home relay refuses the
/// stale epoch (it would leave out the member the commit added), the device syncs
/// and encrypts again. Several notices filed together keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_filer_catches_up_and_a_filing_keeps_its_order() {
    let mut fed = federation();
    fed.issue_user("analist@bz", "NL:STG-GEHEIM", &[]).unwrap();
    fed.start("bz").unwrap();
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "admin@bz").await;
    let mut newcomer = ready(&fed, "analist@bz").await;
    community_c(&mut admin, &mut member).await;
    let added = admin
        .add_members("c", &["analist@bz".to_string()])
        .await
        .unwrap();

    // `member` has not seen that commit.
    let drafts = ["one", "two", "three"]
        .map(|t| draft("c", "NL:DEP-VERTROUWELIJK", t))
        .to_vec();
    let filed = member.file_notices(drafts).await.unwrap();
    assert_eq!(filed.len(), 3);
    assert!(filed.iter().all(|f| f.epoch == added.epoch), "{filed:?}");
    let seqs: Vec<u64> = filed.iter().map(|f| f.seq.unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    newcomer.sync().await.unwrap();
    assert_eq!(titles(&newcomer, "c@bz"), ["one", "two", "three"]);
    admin.sync().await.unwrap();
    assert_eq!(titles(&admin, "c@bz"), ["one", "two", "three"]);
    assert_eq!(titles(&member, "c@bz"), ["one", "two", "three"]);

    // A filing is checked whole before anything is sent: one label above the
    // maximum refuses all of it (exit 3), and nothing reaches anybody.
    let drafts = vec![
        draft("c", "NL:DEP-VERTROUWELIJK", "fine"),
        draft("c", "NL:STG-GEHEIM", "too high"),
    ];
    let e = member.file_notices(drafts).await.unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    newcomer.sync().await.unwrap();
    assert_eq!(titles(&newcomer, "c@bz"), ["one", "two", "three"]);
}

/// A filer seals its next filing while the previous one is on its way: the relay
/// gets them one after the other and orders them as filed. A filing sealed before
/// a commit it had not seen is refused for its epoch when sent, sealed again in the
/// new epoch and ordered; the member the commit added reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filings_sealed_ahead_keep_their_order_and_survive_a_new_epoch() {
    let mut fed = federation();
    fed.issue_user("analist@bz", "NL:STG-GEHEIM", &[]).unwrap();
    fed.start("bz").unwrap();
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "admin@bz").await;
    let mut newcomer = ready(&fed, "analist@bz").await;
    community_c(&mut admin, &mut member).await;
    let label = "NL:DEP-VERTROUWELIJK";
    let batch = |titles: &[&str]| titles.iter().map(|t| draft("c", label, t)).collect();

    let first = member.seal_notices(batch(&["a1", "a2"])).await.unwrap();
    let first = member.send_sealed(first).await.unwrap();
    // Sealed while the first is in flight, sent once it is answered.
    let second = member.seal_notices(batch(&["b1", "b2"])).await.unwrap();
    let one = member.finish_filing(first).await.unwrap();
    let second = member.send_sealed(second).await.unwrap();
    let two = member.finish_filing(second).await.unwrap();
    let seqs: Vec<u64> = one.iter().chain(&two).map(|f| f.seq.unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Sealed in the epoch before a commit `member` has not seen.
    let stale = member.seal_notices(batch(&["c1"])).await.unwrap();
    let epoch_sealed = stale.epoch();
    let added = admin
        .add_members("c", &["analist@bz".to_string()])
        .await
        .unwrap();
    let stale = member.send_sealed(stale).await.unwrap();
    let three = member.finish_filing(stale).await.unwrap();
    assert_eq!(three.len(), 1);
    assert!(epoch_sealed < added.epoch, "{epoch_sealed} {}", added.epoch);
    assert_eq!(three[0].epoch, added.epoch, "sealed again in the new epoch");
    assert!(three[0].seq.unwrap() > seqs[3]);

    newcomer.sync().await.unwrap();
    assert_eq!(titles(&newcomer, "c@bz"), ["c1"]);
    admin.sync().await.unwrap();
    assert_eq!(titles(&admin, "c@bz"), ["a1", "a2", "b1", "b2", "c1"]);
}

/// A device with several filings in flight on one connection: the relay orders them
/// in the order they were sent, and the other members read every notice in that
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_filings_in_flight_are_ordered_as_sent() {
    let (_fed, mut admin, mut member) = relay_with_community_c(federation()).await;
    let label = "NL:DEP-VERTROUWELIJK";
    let (filings, per_filing) = (6, 20);
    let mut in_flight = Vec::new();
    let mut sent = Vec::new();
    for f in 0..filings {
        let names: Vec<String> = (0..per_filing).map(|i| format!("f{f}n{i}")).collect();
        let drafts = names.iter().map(|t| draft("c", label, t)).collect();
        let sealed = member.seal_notices(drafts).await.unwrap();
        in_flight.push(member.send_sealed(sealed).await.unwrap());
        sent.extend(names);
    }
    let mut seqs = Vec::new();
    for pending in in_flight {
        let filed = member.finish_filing(pending).await.unwrap();
        seqs.extend(filed.iter().map(|f| f.seq.unwrap()));
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(titles(&member, "c@bz"), sent);
    admin.sync().await.unwrap();
    assert_eq!(titles(&admin, "c@bz"), sent);
}

/// Filings in flight that the relay refuses as over its rate limit (before reading
/// them) are not sent again behind later ones: with others in flight the refusal is
/// the outcome (those notices are not filed); the last, alone in flight, is sent
/// again as it was. Every member reads every filed notice, in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_filings_in_flight_are_not_sent_again_behind_later_ones() {
    let fed = federation();
    fed.set_relay_option("bz", "requests_per_second", 5.into())
        .unwrap();
    let (_fed, mut admin, mut member) = relay_with_community_c(fed).await;
    // Sixteen at once: more than the burst of ten the limit allows. Filings of 30
    // notices, so that one sent again behind a later one would be unreadable.
    let label = "NL:DEP-VERTROUWELIJK";
    let mut in_flight = Vec::new();
    for f in 0..16 {
        let names: Vec<String> = (0..30).map(|i| format!("r{f}n{i}")).collect();
        let sealed = member
            .seal_notices(names.iter().map(|t| draft("c", label, t)).collect())
            .await
            .unwrap();
        in_flight.push((member.send_sealed(sealed).await.unwrap(), names));
    }
    let (mut filed, mut refused) = (Vec::new(), 0);
    for (pending, names) in in_flight {
        match member.finish_filing(pending).await {
            Ok(_) => filed.extend(names),
            Err(kring_client::ClientError::Relay(ErrorCode::RateLimited { .. })) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "no filing was rate limited");
    assert!(!filed.is_empty());
    assert_eq!(titles(&member, "c@bz"), filed, "stored once, by its filer");
    admin.sync().await.unwrap();
    assert_eq!(
        titles(&admin, "c@bz"),
        filed,
        "every member reads every filed notice"
    );
}

/// The relay orders a connection's filings in the order their streams were opened,
/// not in the order their frames arrive: a second filing whose frame arrives first
/// waits for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filing_waits_for_the_earlier_streams_of_its_connection() {
    let (fed, mut admin, mut member) = relay_with_community_c(federation()).await;
    let label = "NL:DEP-VERTROUWELIJK";
    let batch = |prefix: &str| {
        (0..80)
            .map(|i| draft("c", label, &format!("{prefix}{i}")))
            .collect::<Vec<_>>()
    };
    // Sealed in this order: 80 messages each, more than a member's ratchet keeps
    // for messages that arrive late.
    let first = member.seal_notices(batch("a")).await.unwrap().request();
    let second = member.seal_notices(batch("b")).await.unwrap().request();
    let frame = |r| kring_protocol::wire::encode_frame(&r, 1 << 20).unwrap();
    let (first, second) = (frame(first), frame(second));

    let (_ep, conn) = kring_tests::chaos::raw_user_connect(&fed, "admin@bz")
        .await
        .unwrap();
    let (mut send_a, recv_a) = conn.open_bi().await.unwrap();
    let (mut send_b, recv_b) = conn.open_bi().await.unwrap();
    send_b.write_all(&second).await.unwrap();
    send_b.finish().unwrap();
    let read = |mut recv: quinn::RecvStream| async move {
        let bytes = recv.read_to_end(1 << 20).await.unwrap();
        let mut decoder = kring_protocol::wire::FrameDecoder::new(1 << 20);
        decoder.feed(&bytes).unwrap();
        let payload = decoder.next_payload().unwrap().unwrap();
        kring_protocol::wire::decode_payload::<Response>(&payload).unwrap()
    };
    let mut answer_b = tokio::spawn(read(recv_b));
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut answer_b).await;
    assert!(
        early.is_err(),
        "the second filing was answered before the first arrived"
    );
    send_a.write_all(&first).await.unwrap();
    send_a.finish().unwrap();
    let seqs = |r: Response| match r {
        Response::Filed { seqs, .. } => seqs.into_iter().map(Option::unwrap).collect::<Vec<_>>(),
        other => panic!("not filed: {other:?}"),
    };
    let a = seqs(read(recv_a).await);
    let b = seqs(answer_b.await.unwrap());
    assert!(a.last().unwrap() < b.first().unwrap(), "{a:?} {b:?}");

    admin.sync().await.unwrap();
    let expected: Vec<String> = (0..80)
        .map(|i| format!("a{i}"))
        .chain((0..80).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(titles(&admin, "c@bz"), expected);
}

/// After a restart, a device that missed more than a page of notices in a quiet
/// community (nothing appended to it since the relay started) gets all of them in
/// one sync, once: delivery keeps looking at a log until it has handed it on to its
/// end, not only at the logs appended to since its last round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_more_than_a_page_of_a_quiet_community_is_delivered() {
    const NOTICES: usize = 300; // more than the relay's page of 256 entries
    let (mut fed, mut admin, mut member) = relay_with_community_c(federation()).await;
    member.disconnect().await;

    let want: Vec<String> = (0..NOTICES).map(|i| format!("n{i:03}")).collect();
    for chunk in want.chunks(100) {
        let drafts = chunk
            .iter()
            .map(|t| draft("c", "NL:DEP-VERTROUWELIJK", t))
            .collect();
        admin.file_notices(drafts).await.unwrap();
    }
    admin.disconnect().await;
    fed.stop("bz").unwrap();
    fed.start("bz").unwrap();

    member.sync().await.unwrap();
    let got = titles(&member, "c@bz");
    assert_eq!(
        got.len(),
        NOTICES,
        "first {:?}, last {:?}",
        got.first(),
        got.last()
    );
    assert_eq!(got, want);
    let again = member.sync().await.unwrap();
    assert_eq!(again.notices().count(), 0);
}

/// Two admins commit for the same epoch: one wins, the other is refused with
/// WrongEpoch by the relay (counted in its metrics), syncs, retries at the next
/// epoch and succeeds. Both commit at once, round after round, until the relay has
/// seen a conflict (each round's two adds race; a round without a conflict proves
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_one_wins_other_retries() {
    const ROUNDS: usize = 10;
    let mut fed = federation();
    let newcomers: Vec<String> = (0..2 * ROUNDS).map(|i| format!("nieuw{i}@bz")).collect();
    for u in ["a1@bz", "a2@bz"]
        .iter()
        .map(|u| u.to_string())
        .chain(newcomers.clone())
    {
        fed.issue_user(&u, "NL:STG-GEHEIM", &[]).unwrap();
    }
    let metrics = kring_tests::scrape::enable_metrics(&fed, "bz").unwrap();
    fed.start("bz").unwrap();
    let lost_epochs = || {
        let (status, text) = kring_tests::scrape::get(metrics, "/metrics").unwrap();
        assert_eq!(status, 200, "{text}");
        kring_tests::scrape::value(
            &text,
            "kring_relay_refusals_total{kind=\"handshake\",reason=\"wrong-epoch\"}",
        )
    };
    let mut a1 = ready(&fed, "a1@bz").await;
    let mut a2 = ready(&fed, "a2@bz").await;
    for u in &newcomers {
        let _ = ready(&fed, u).await;
    }
    a1.create_community("c", "NL:STG-GEHEIM").await.unwrap();
    a1.add_members("c", &["a2@bz".to_string()]).await.unwrap();
    a1.set_admin("c", kring_client::AdminChange::Add, "a2@bz")
        .await
        .unwrap();
    a2.sync().await.unwrap();
    assert_eq!(lost_epochs(), 0.0);
    let mut added = Vec::new();
    for pair in newcomers.chunks(2) {
        let (x, y) = ([pair[0].clone()], [pair[1].clone()]);
        let (r1, r2) = tokio::join!(a1.add_members("c@bz", &x), a2.add_members("c@bz", &y));
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert_ne!(r1.epoch, r2.epoch, "two commits landed at one epoch");
        added.extend(pair.iter().cloned());
        if lost_epochs() >= 1.0 {
            break;
        }
    }
    assert!(
        lost_epochs() >= 1.0,
        "no commit lost its epoch in {ROUNDS} rounds of concurrent commits"
    );
    let info = a1.community_info("c@bz").await.unwrap();
    let mut members = info.members.clone();
    members.sort();
    let mut want: Vec<String> = ["a1@bz", "a2@bz"].iter().map(|u| u.to_string()).collect();
    want.extend(added);
    want.sort();
    assert_eq!(members, want);
}

/// Certificates that must not get in, refused by the relay itself (not only by the
/// client): a relay certificate used as a user, an expired certificate, one from a
/// foreign CA, one not yet valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_by_the_relay() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    // Control: a good user certificate gets an answer.
    let good = fed.user_dir("liaison@bz");
    let ok = kring_tests::raw_ping(&fed, "bz", &good.join("user.crt"), &good.join("user.key"))
        .await
        .unwrap();
    assert_eq!(ok, kring_protocol::wire::Response::Pong);

    // A user of another relay (and organisation) is not served here.
    let other = fed.user_dir("liaison@nctv");
    let r =
        kring_tests::raw_ping(&fed, "bz", &other.join("user.crt"), &other.join("user.key")).await;
    // The refusal reaches the peer as a typed `Unauthenticated` answer.
    assert!(
        matches!(
            &r,
            Ok(kring_protocol::wire::Response::Error(
                kring_protocol::wire::ErrorCode::Unauthenticated { reason }
            )) if reason.contains("not a user of relay bz")
        ),
        "foreign user: {r:?}"
    );

    // The relay's own certificate presented as a user's.
    let relay = fed.dir().join("relays/bz");
    let r = kring_tests::raw_ping(
        &fed,
        "bz",
        &relay.join("relay.crt"),
        &relay.join("relay.key"),
    )
    .await;
    assert!(
        matches!(
            &r,
            Ok(kring_protocol::wire::Response::Error(
                kring_protocol::wire::ErrorCode::Unauthenticated { reason }
            )) if reason.contains("relay")
        ),
        "relay certificate as a user: {r:?}"
    );
    for (user, quirk) in [
        ("relaycert@bz", kring_certs_dev::Quirk::RelayAsUser),
        ("verlopen@bz", kring_certs_dev::Quirk::Expired),
        ("vreemd@bz", kring_certs_dev::Quirk::ForeignCa),
        ("toekomst@bz", kring_certs_dev::Quirk::NotYetValid),
    ] {
        let dir = kring_tests::issue_quirky_user(&fed, user, quirk).unwrap();
        let r =
            kring_tests::raw_ping(&fed, "bz", &dir.join("user.crt"), &dir.join("user.key")).await;
        assert!(
            !matches!(r, Ok(kring_protocol::wire::Response::Pong)),
            "{user} ({quirk}) got in: {r:?}"
        );
        // Through the client library the user gets nowhere either: the profile is
        // refused on opening, or every request fails.
        if let Ok(mut c) = Client::open(&dir) {
            let e = c.ping().await.unwrap_err();
            assert!(matches!(e.exit_code(), 4 | 5), "{user}: {e}");
        }
    }
}

/// A relay that was killed and restarted resets the connections of its earlier run
/// at their next packet (its stateless-reset and connection-id keys derive from its
/// private key): a device learns at once that its connection is gone instead of
/// waiting out its request timeout, and its next request reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_resets_connections_of_its_earlier_run() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let mut c = ready(&fed, "liaison@bz").await;
    c.set_timeouts(kring_client::conn::Timeouts {
        connect: std::time::Duration::from_secs(10),
        request: std::time::Duration::from_secs(600),
        handshake: std::time::Duration::from_secs(600),
        ordering: std::time::Duration::ZERO,
    });
    c.ping().await.unwrap();
    fed.kill("bz");
    fed.start("bz").unwrap();
    // Without the reset this would wait the whole (600 s) request timeout. With it,
    // the ping fails with the reset, or (when a keep-alive drew the reset first)
    // the client has seen its connection end and reconnects.
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), c.ping())
        .await
        .expect("the old connection was not reset: the ping waited for its timeout");
    if let Err(e) = first {
        assert!(e.to_string().contains("reset"), "{e}");
        assert_eq!(e.exit_code(), 5, "{e}");
    }
    c.ping().await.unwrap();
}
