//! Four relays of four organisations share communities: hub ordering,
//! federated membership, policy at every hop, store-and-forward across a stopped spoke.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_tests::steps::{draft, join, ready, sync_until, titles};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_story_across_four_relays() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let mut aivd = ready(&fed, "analist@aivd").await;
    let mut post = ready(&fed, "analist@post-a").await;

    // A disinformation community hubbed at bz, with members at all four relays.
    bz.create_community("desinformatie", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    let added = bz
        .add_members(
            "desinformatie@bz",
            &["analist@post-a", "liaison@nctv", "analist@aivd"],
        )
        .await
        .unwrap();
    assert_eq!(added.added.len(), 3);
    for c in [&mut nctv, &mut aivd, &mut post] {
        join(c, "desinformatie@bz").await;
    }

    // The embassy analyst files a signal: durable at post-a, ordered by the hub bz.
    let filed = post
        .file_notice(draft(
            "desinformatie@bz",
            "NL:DEP-VERTROUWELIJK",
            "signal 1",
        ))
        .await
        .unwrap();
    assert!(
        filed.seq.is_some(),
        "not ordered by the hub: {:?}",
        filed.ordering
    );
    for c in [&mut bz, &mut nctv, &mut aivd] {
        sync_until(c, "desinformatie@bz", &["signal 1"]).await;
        let n = &c.notices(Some("desinformatie@bz")).unwrap()[0];
        assert_eq!(n.sender, "analist@post-a");
    }

    // A state-actors community hubbed at nctv (max STG-GEHEIM) refuses the embassy
    // analyst: neither their clearance nor post-a's accreditation admits it.
    nctv.create_community("statelijke-actoren", "NL:STG-GEHEIM")
        .await
        .unwrap();
    let e = nctv
        .add_members("statelijke-actoren@nctv", &["analist@post-a"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(e.to_string().contains("analist@post-a"), "{e}");
    // bz's liaison can be added across relays.
    nctv.add_members("statelijke-actoren@nctv", &["liaison@bz"])
        .await
        .unwrap();
    join(&mut bz, "statelijke-actoren@nctv").await;

    // STG-GEHEIM above the disinformation community's maximum: refused.
    let e = bz
        .file_notice(draft("desinformatie@bz", "NL:STG-GEHEIM", "too high"))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");

    // post-a goes down; notices filed meanwhile reach the analist once it is back.
    post.disconnect().await;
    fed.stop("post-a").unwrap();
    for t in ["while down 1", "while down 2"] {
        bz.file_notice(draft("desinformatie@bz", "NL:STG-CONFIDENTIEEL", t))
            .await
            .unwrap();
    }
    fed.start("post-a").unwrap();
    sync_until(
        &mut post,
        "desinformatie@bz",
        &["signal 1", "while down 1", "while down 2"],
    )
    .await;
    // Exactly once: another sync changes nothing.
    post.sync().await.unwrap();
    assert_eq!(
        titles(&post, "desinformatie@bz"),
        vec!["signal 1", "while down 1", "while down 2"]
    );
    sync_until(
        &mut aivd,
        "desinformatie@bz",
        &["signal 1", "while down 1", "while down 2"],
    )
    .await;
}

/// The hub down: a spoke keeps a filed notice queued and delivers it once the hub is
/// back; a commit fails with "hub unreachable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_down_notices_queue_and_commits_fail_clearly() {
    let mut fed = federation();
    fed.start_all().unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    let _aivd = ready(&fed, "analist@aivd").await;
    bz.create_community("c", "NL:STG-GEHEIM").await.unwrap();
    bz.add_members("c@bz", &["liaison@nctv"]).await.unwrap();
    bz.set_admin("c@bz", kring_client::AdminChange::Add, "liaison@nctv")
        .await
        .unwrap();
    join(&mut nctv, "c@bz").await;

    bz.disconnect().await;
    fed.stop("bz").unwrap();
    let mut quick = draft("c@bz", "NL:STG-GEHEIM", "queued");
    quick.body = "while the hub is down".into();
    let filed = nctv.file_notice(quick).await.unwrap();
    assert!(filed.seq.is_none(), "ordered although the hub is down");
    let e = nctv
        .add_members("c@bz", &["analist@aivd"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    assert!(e.to_string().contains("hub unreachable"), "{e}");

    fed.start("bz").unwrap();
    sync_until(&mut bz, "c@bz", &["queued"]).await;
}

/// A hub that skips its own checks and pushes a STG-GEHEIM notice to post-a (accredited
/// only up to STG-CONFIDENTIEEL): post-a refuses it at receipt and its analyst never
/// sees it; a forged entry for a community post-a has no member in is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_label_notice_from_a_peer_is_refused_at_receipt() {
    use kring_protocol::wire::{
        CommunitySummary, EntryKind, FedBody, FedItem, FedRequest, FedResponse, LogEntry,
    };
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    bz.create_community("d", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    bz.add_members("d@bz", &["analist@post-a"]).await.unwrap();
    join(&mut post, "d@bz").await;
    bz.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "legit"))
        .await
        .unwrap();
    sync_until(&mut post, "d@bz", &["legit"]).await;
    let info = bz.community_info("d@bz").await.unwrap();

    // Stop the real bz so the forged link is the only one.
    bz.disconnect().await;
    fed.stop("bz").unwrap();
    let label: kring_policy::Label = "NL:STG-GEHEIM".parse().unwrap();
    let forged = |community: CommunitySummary, seq: u64, item_seq: u64| FedRequest::Deliver {
        items: vec![FedItem {
            seq: item_seq,
            body: FedBody::Entry {
                community: community.clone(),
                seq,
                entry: Some(LogEntry {
                    community: community.id.clone(),
                    seq,
                    sender: "liaison@bz".into(),
                    ordered_at: 0,
                    kind: EntryKind::Notice {
                        notice_id: uuid_from(seq),
                        label: label.to_bytes(),
                        epoch: info.epoch,
                    },
                    message: vec![0; 64],
                }),
            },
        }],
    };
    let next = info.last_seq + 1;
    let r = kring_tests::raw_federation_call(
        &fed,
        "bz",
        "post-a",
        &forged(info.clone(), next, 1_000_000),
    )
    .await
    .unwrap();
    assert!(matches!(r, FedResponse::Ack { upto: 1_000_000 }), "{r:?}");
    // A community post-a takes no part in.
    let mut other = info.clone();
    other.id = "geheim@bz".into();
    other.members = vec!["liaison@bz".into()];
    let r = kring_tests::raw_federation_call(&fed, "bz", "post-a", &forged(other, 1, 1_000_001))
        .await
        .unwrap();
    assert!(matches!(r, FedResponse::Ack { .. }), "{r:?}");

    // The analyst's device gets nothing: no notice, nothing unreadable.
    let report = post.sync().await.unwrap();
    for event in &report.events {
        assert!(
            !matches!(
                event,
                kring_client::SyncEvent::Notice(_)
                    | kring_client::SyncEvent::Unreadable { .. }
                    | kring_client::SyncEvent::Refused { .. }
            ),
            "forged entry reached the device: {event:?}"
        );
    }
    assert_eq!(titles(&post, "d@bz"), vec!["legit"]);
    assert!(
        post.list_communities()
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != "geheim@bz"),
        "post-a learned about a community it has no member in"
    );
}

/// A delivery is applied as one batch, but a refused item in it is rolled back on its
/// own: the items after it are still applied, and later items read what earlier ones
/// of the same delivery wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_item_in_a_delivery_leaves_no_trace_and_blocks_nothing() {
    use kring_protocol::wire::{CommunitySummary, FedBody, FedItem, FedRequest, FedResponse};
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let mut post = ready(&fed, "analist@post-a").await;
    fed.stop("bz").unwrap();
    let summary = |id: &str, max_label: &str, last_seq: u64| CommunitySummary {
        id: id.into(),
        max_label: max_label.into(),
        epoch: 1,
        members: vec!["liaison@bz".into(), "analist@post-a".into()],
        admins: vec!["liaison@bz".into()],
        last_seq,
    };
    let entry = |seq: u64, community: CommunitySummary, s: u64| FedItem {
        seq,
        body: FedBody::Entry {
            community,
            seq: s,
            entry: None,
        },
    };
    let notice = |seq: u64, community: &str, s: u64| FedItem {
        seq,
        body: FedBody::NoticeEntry {
            community: community.into(),
            seq: s,
            entry: None,
        },
    };
    let items = vec![
        entry(10, summary("eerst@bz", "NL:STG-CONFIDENTIEEL", 1), 1),
        // Refused: an unreadable maximum label for a community new to post-a.
        entry(11, summary("kapot@bz", "NL:NONSENSE", 1), 1),
        entry(12, summary("eerst@bz", "NL:STG-CONFIDENTIEEL", 2), 2),
        entry(13, summary("eerst@bz", "NL:STG-CONFIDENTIEEL", 3), 3),
        // Refused: a notice of a community post-a never heard of.
        notice(14, "onbekend@bz", 1),
        // A notice the hub withheld from post-a: its seq is consumed.
        notice(15, "eerst@bz", 4),
    ];
    let r = kring_tests::raw_federation_call(&fed, "bz", "post-a", &FedRequest::Deliver { items })
        .await
        .unwrap();
    assert!(matches!(r, FedResponse::Ack { upto: 15 }), "{r:?}");

    let communities = post.list_communities().await.unwrap();
    let ids: Vec<&str> = communities.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["eerst@bz"], "{communities:?}");
    assert_eq!(communities[0].last_seq, 4);
}

/// Keys under `prefix` in the stopped relay `id`'s store.
fn stored_keys(fed: &Federation, id: &str, prefix: &[u8]) -> usize {
    use kring_relay::store::{Engine, SledEngine};
    let store = SledEngine::open(&fed.data_dir(id)).unwrap();
    store.scan(prefix, None, usize::MAX).unwrap().len()
}

/// A commit that adds several members of one relay stores its Welcome there once,
/// not once per member, and the copy goes when the last of them has taken it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_is_stored_once_per_commit_and_relay() {
    let mut fed = federation();
    for user in ["een@nctv", "twee@nctv"] {
        fed.issue_user(user, "NL:STG-GEHEIM", &[]).unwrap();
    }
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut een = ready(&fed, "een@nctv").await;
    let mut twee = ready(&fed, "twee@nctv").await;
    let mut liaison = ready(&fed, "liaison@nctv").await;
    bz.create_community("w", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    let added = bz
        .add_members("w@bz", &["een@nctv", "twee@nctv", "liaison@nctv"])
        .await
        .unwrap();
    assert_eq!(added.added.len(), 3);
    join(&mut een, "w@bz").await;
    een.disconnect().await;
    fed.stop("nctv").unwrap();
    // One Welcome for the three, two references left after one member took theirs.
    assert_eq!(stored_keys(&fed, "nctv", b"W/"), 1);
    assert_eq!(stored_keys(&fed, "nctv", b"v/"), 2);
    assert_eq!(stored_keys(&fed, "nctv", b"w/"), 0);

    fed.start("nctv").unwrap();
    join(&mut twee, "w@bz").await;
    join(&mut liaison, "w@bz").await;
    bz.file_notice(draft("w@bz", "NL:DEP-VERTROUWELIJK", "welkom"))
        .await
        .unwrap();
    sync_until(&mut twee, "w@bz", &["welkom"]).await;
    twee.disconnect().await;
    liaison.disconnect().await;
    fed.stop("nctv").unwrap();
    assert_eq!(stored_keys(&fed, "nctv", b"W/"), 0);
    assert_eq!(stored_keys(&fed, "nctv", b"V/"), 0);
    assert_eq!(stored_keys(&fed, "nctv", b"v/"), 0);
}

fn uuid_from(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(0xdead_0000_0000_0000_0000_0000_0000_0000 | u128::from(n))
}

/// A spoke killed with SIGKILL mid-stream and restarted catches up in hub order with
/// no duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoke_killed_mid_stream_catches_up_in_order() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    bz.create_community("d", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    bz.add_members("d@bz", &["analist@post-a"]).await.unwrap();
    join(&mut post, "d@bz").await;
    let mut want = Vec::new();
    for round in 0..3 {
        for i in 0..8 {
            let t = format!("n{round}-{i}");
            bz.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", &t))
                .await
                .unwrap();
            want.push(t);
            if round < 2 && i == 3 {
                post.disconnect().await;
                fed.kill("post-a");
            }
        }
        fed.start("post-a").unwrap();
    }
    let want: Vec<&str> = want.iter().map(|s| s.as_str()).collect();
    sync_until(&mut post, "d@bz", &want).await;
    post.sync().await.unwrap();
    assert_eq!(titles(&post, "d@bz"), want);
}

/// A device at a spoke with several filings in flight to a community hubbed at
/// another relay: its relay queues them in the order sent, the hub orders them so,
/// and a member at the hub reads every notice in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filings_in_flight_at_a_spoke_reach_the_hub_in_the_order_sent() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    bz.create_community("d", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    bz.add_members("d@bz", &["analist@post-a"]).await.unwrap();
    join(&mut post, "d@bz").await;
    let mut in_flight = Vec::new();
    let mut want = Vec::new();
    for f in 0..5 {
        let names: Vec<String> = (0..30).map(|i| format!("f{f}n{i}")).collect();
        let drafts = names
            .iter()
            .map(|t| draft("d@bz", "NL:DEP-VERTROUWELIJK", t))
            .collect();
        let sealed = post.seal_notices(drafts).await.unwrap();
        in_flight.push(post.send_sealed(sealed).await.unwrap());
        want.extend(names);
    }
    let mut seqs = Vec::new();
    for pending in in_flight {
        let filed = post.finish_filing(pending).await.unwrap();
        seqs.extend(filed.iter().map(|f| f.seq.expect("ordered by the hub")));
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let want: Vec<&str> = want.iter().map(|s| s.as_str()).collect();
    sync_until(&mut bz, "d@bz", &want).await;
    assert_eq!(titles(&bz, "d@bz"), want);
}

/// Adding a member is refused when the hub's view of their home relay's accreditation
/// does not admit the community's maximum; and when a relay's accreditation is
/// lowered after it joined, the hub withholds notices above it from that relay,
/// tells the filer's home relay, and the filer sees the refusal while the rest of
/// the community gets the notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_at_a_later_hop_reaches_the_filer() {
    let mut fed = federation();
    fed.set_peer_accreditation("bz", "nctv", "NL:DEP-VERTROUWELIJK")
        .unwrap();
    fed.start_all().unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut aivd = ready(&fed, "analist@aivd").await;
    let _nctv = ready(&fed, "liaison@nctv").await;
    let mut post = ready(&fed, "analist@post-a").await;
    bz.create_community("d", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    let e = bz.add_members("d@bz", &["liaison@nctv"]).await.unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(e.to_string().contains("nctv"), "{e}");
    bz.add_members("d@bz", &["analist@post-a", "analist@aivd"])
        .await
        .unwrap();
    join(&mut post, "d@bz").await;
    join(&mut aivd, "d@bz").await;

    // bz now lets aivd hold only DEP-VERTROUWELIJK.
    bz.disconnect().await;
    fed.stop("bz").unwrap();
    fed.set_peer_accreditation("bz", "aivd", "NL:DEP-VERTROUWELIJK")
        .unwrap();
    fed.start("bz").unwrap();
    let filed = post
        .file_notice(draft("d@bz", "NL:STG-CONFIDENTIEEL", "not for aivd"))
        .await
        .unwrap();
    let seq = filed.seq.expect("ordered by the hub");
    post.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "for all"))
        .await
        .unwrap();
    sync_until(&mut bz, "d@bz", &["not for aivd", "for all"]).await;
    sync_until(&mut aivd, "d@bz", &["for all"]).await;
    // The filer's home relay learns of the refusal at the hub → aivd hop.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = post.notice_status(filed.notice.id).await.unwrap();
        assert_eq!(status.seq, Some(seq));
        if let Some(r) = status.refusals.iter().find(|r| r.hop == "bz->aivd") {
            assert!(r.reason.contains("aivd"), "{r:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A remote member removed by the hub's admin: their home relay learns it, their
/// device leaves the group, and later notices never reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_removal() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    fed.start("nctv").unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    let mut nctv = ready(&fed, "liaison@nctv").await;
    bz.create_community("d", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    bz.add_members("d@bz", &["analist@post-a", "liaison@nctv"])
        .await
        .unwrap();
    join(&mut post, "d@bz").await;
    join(&mut nctv, "d@bz").await;
    bz.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "before"))
        .await
        .unwrap();
    sync_until(&mut post, "d@bz", &["before"]).await;

    let removed = bz
        .remove_members("d@bz", &["analist@post-a"])
        .await
        .unwrap();
    assert_eq!(removed.removed, vec!["analist@post-a".to_string()]);
    bz.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "after"))
        .await
        .unwrap();
    sync_until(&mut nctv, "d@bz", &["before", "after"]).await;
    // post-a no longer lists the community for the analyst, who gets nothing new.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        post.sync().await.unwrap();
        if post
            .list_communities()
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != "d@bz")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "post-a still lists the analyst as a member"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post.sync().await.unwrap();
    assert_eq!(titles(&post, "d@bz"), vec!["before"]);
    let e = post
        .file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "ghost"))
        .await
        .unwrap_err();
    // Not a member any more: an authorisation refusal (exit 4), not a policy one.
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("member"), "{e}");
}
