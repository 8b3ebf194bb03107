//! Limits between federated relays, from the side of a peer that misbehaves or a
//! link that was down: deliveries bounded in bytes (large notices queued for a peer
//! all arrive), accreditation checked again when an item is sent, a hub that makes
//! up thousands of communities "containing" a user, and a peer flooding requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_protocol::wire::{
    self, CommunitySummary, DEFAULT_MAX_FRAME, ErrorCode, FedBody, FedItem, FedRequest,
    FedResponse, Response,
};
use kring_tests::chaos::{decode_answer, raw_connect, raw_stream};
use kring_tests::steps::{draft, join, ready, sync_until};
use kring_tests::{Federation, RelayLauncher};

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

async fn audit(fed: &Federation, admin: &str) -> Vec<wire::AuditRecordView> {
    let mut a = fed.client(admin).unwrap();
    let page = a.audit_all(true).await.unwrap();
    assert_eq!(page.verify.unwrap().first_bad, None, "audit chain broken");
    a.disconnect().await;
    page.records
}

/// A federation connection to `to` as relay `as_relay` (its own certificate), for
/// requests that bypass every check `as_relay` would make.
async fn peer_connect(
    fed: &Federation,
    as_relay: &str,
    to: &str,
) -> (quinn::Endpoint, quinn::Connection) {
    let dir = fed.dir().join("relays").join(as_relay);
    raw_connect(
        fed,
        to,
        &dir.join("relay.crt"),
        &dir.join("relay.key"),
        wire::ALPN_FEDERATION,
    )
    .await
    .unwrap()
}

async fn fed_call(conn: &quinn::Connection, request: &FedRequest) -> FedResponse {
    let frame = wire::encode_frame(request, DEFAULT_MAX_FRAME).unwrap();
    decode_answer(&raw_stream(conn, &frame, true).await.unwrap()).unwrap()
}

/// bz and post-a with community `d@bz` of `liaison@bz` and `analist@post-a`; then
/// post-a stops (its device disconnected), so what bz sends it waits in the outbox.
async fn shared_community_with_post_a_down()
-> (Federation, kring_client::Client, kring_client::Client) {
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
    post.disconnect().await;
    fed.stop("post-a").unwrap();
    (fed, bz, post)
}

/// Notices queued at the hub for a relay that is down add up to more than one
/// frame: they go in several deliveries, and all of them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_notices_queued_for_a_peer_all_arrive() {
    let (mut fed, mut bz, mut post) = shared_community_with_post_a_down().await;

    // Each notice is padded to a size class of at least 256 KiB: 40 of them are
    // more than one 8 MiB frame.
    let body = "x".repeat(256 * 1024);
    let titles: Vec<String> = (0..40).map(|i| format!("groot {i:02}")).collect();
    for title in &titles {
        let mut d = draft("d@bz", "NL:DEP-VERTROUWELIJK", title);
        d.body = body.clone();
        bz.file_notice(d).await.unwrap();
    }
    bz.disconnect().await;
    fed.stop("bz").unwrap();
    let log = kring_tests::chaos::stored_log(&fed.open_store("bz").unwrap(), "d@bz").unwrap();
    let queued: usize = log.iter().map(|e| e.message.len()).sum();
    assert!(
        queued > DEFAULT_MAX_FRAME,
        "the notices ({queued} bytes) fit one frame: the test proves nothing"
    );
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let want: Vec<&str> = titles.iter().map(String::as_str).collect();
    sync_until(&mut post, "d@bz", &want).await;
}

/// Notices queued for a peer while its accreditation was higher: after the
/// accreditation is lowered, those above it are not sent (the peer gets the entry
/// without its content), the filer learns of the refusal, and it is audit-logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accreditation_is_checked_again_when_sending() {
    let (mut fed, mut bz, mut post) = shared_community_with_post_a_down().await;
    let high = bz
        .file_notice(draft("d@bz", "NL:STG-CONFIDENTIEEL", "hoog"))
        .await
        .unwrap();
    bz.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "laag"))
        .await
        .unwrap();
    bz.disconnect().await;
    fed.stop("bz").unwrap();
    fed.set_peer_accreditation("bz", "post-a", "NL:DEP-VERTROUWELIJK")
        .unwrap();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    sync_until(&mut post, "d@bz", &["laag"]).await;
    let status = bz.notice_status(high.notice.id).await.unwrap();
    let refusal = status
        .refusals
        .iter()
        .find(|r| r.hop == "bz->post-a")
        .unwrap_or_else(|| panic!("no refusal recorded: {status:?}"));
    assert!(refusal.reason.contains("post-a"), "{refusal:?}");
    bz.disconnect().await;
    let records = audit(&fed, "admin@bz").await;
    assert!(
        records
            .iter()
            .any(|r| r.kind == "withheld" && r.action == "send" && r.actor == "post-a"),
        "the notice withheld when sending was not audit-logged"
    );
    // And the notice never reached post-a's store.
    post.disconnect().await;
    fed.stop("post-a").unwrap();
    let log = kring_tests::chaos::stored_log(&fed.open_store("post-a").unwrap(), "d@bz").unwrap();
    assert!(
        !log.iter().any(|e| matches!(&e.kind,
            wire::EntryKind::Notice { notice_id, .. } if *notice_id == high.notice.id)),
        "the withheld notice is in post-a's log"
    );
}

/// A hub (nctv, through its own link) makes up more communities "containing" a
/// user of post-a than one listing holds. Past the per-user limit they are refused
/// (audited, in a bounded number of records); the user's real community is still
/// listed and its notices still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_communities_do_not_hide_real_ones() {
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

    // Made-up communities sort before the real one.
    let fakes = wire::limits::MAX_LIST + 1;
    let (_ep, conn) = peer_connect(&fed, "nctv", "post-a").await;
    let mut seq = 0u64;
    for chunk in (0..fakes)
        .collect::<Vec<_>>()
        .chunks(wire::limits::MAX_PAGE as usize)
    {
        let items = chunk
            .iter()
            .map(|i| {
                seq += 1;
                FedItem {
                    seq,
                    body: FedBody::Entry {
                        community: CommunitySummary {
                            id: format!("c{i:05}@nctv"),
                            max_label: "NL:DEP-VERTROUWELIJK".into(),
                            admins: vec!["liaison@nctv".into()],
                            members: vec!["liaison@nctv".into(), "analist@post-a".into()],
                            epoch: 1,
                            last_seq: 1,
                        },
                        seq: 1,
                        entry: None,
                    },
                }
            })
            .collect();
        let r = fed_call(&conn, &FedRequest::Deliver { items }).await;
        assert!(matches!(r, FedResponse::Ack { .. }), "{r:?}");
    }
    conn.close(0u32.into(), b"done");

    bz.file_notice(draft("d@bz", "NL:DEP-VERTROUWELIJK", "echt"))
        .await
        .unwrap();
    sync_until(&mut post, "d@bz", &["echt"]).await;
    let listed = post.list_communities().await.unwrap();
    assert!(
        listed.iter().any(|c| c.id == "d@bz"),
        "the real community is not listed"
    );
    let from_nctv = listed.iter().filter(|c| c.id.ends_with("@nctv")).count();
    assert!(
        (1..=1_000).contains(&from_nctv),
        "{from_nctv} communities of nctv registered"
    );
    post.disconnect().await;
    let records = audit(&fed, "admin@post-a").await;
    assert!(
        records.iter().any(|r| r.kind == "refusal"
            && r.actor == "nctv"
            && r.detail.contains("already made analist@post-a a member")),
        "the refused registrations were not audit-logged"
    );
    let from_peer = records.iter().filter(|r| r.actor == "nctv").count();
    assert!(
        from_peer < 100,
        "{from_peer} audit records for one peer's junk"
    );
}

/// A peer flooding requests is refused with `RateLimited` past its rate; requests
/// naming made-up or malformed requesters are refused; the audit log gets a bounded
/// number of records for it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flood_is_rate_limited() {
    let mut fed = federation();
    // 5 per second per identity: a peer gets 50 per second, a burst of 100.
    fed.set_relay_option("post-a", "requests_per_second", 5.into())
        .unwrap();
    fed.start("post-a").unwrap();
    let mut post = fed.client("analist@post-a").unwrap();
    post.publish_key_packages(3).await.unwrap();
    post.disconnect().await;

    let (_ep, conn) = peer_connect(&fed, "nctv", "post-a").await;
    let malformed = fed_call(
        &conn,
        &FedRequest::FetchKeyPackage {
            user: "analist@post-a".into(),
            requester: "nctv".into(),
        },
    )
    .await;
    assert!(
        matches!(
            malformed,
            FedResponse::Response(Response::Error(ErrorCode::BadRequest { .. }))
        ),
        "{malformed:?}"
    );
    let (mut served, mut limited) = (0u64, 0u64);
    let flood = Instant::now();
    for i in 0..300 {
        let r = fed_call(
            &conn,
            &FedRequest::FetchKeyPackage {
                user: "analist@post-a".into(),
                requester: format!("made-up-{i}@nctv"),
            },
        )
        .await;
        match r {
            FedResponse::Response(Response::Error(ErrorCode::RateLimited { .. })) => limited += 1,
            _ => served += 1,
        }
    }
    let took = flood.elapsed();
    let allowed = 100 + (took.as_secs_f64() * 50.0).ceil() as u64 + 1;
    assert!(limited > 0, "no request of the flood was rate limited");
    assert!(
        served <= allowed,
        "{served} served in {took:?}, the limit allows {allowed}"
    );
    // Served again after a pause.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = fed_call(
        &conn,
        &FedRequest::FetchKeyPackage {
            user: "analist@post-a".into(),
            requester: "made-up-0@nctv".into(),
        },
    )
    .await;
    assert!(
        !matches!(
            again,
            FedResponse::Response(Response::Error(ErrorCode::RateLimited { .. }))
        ),
        "{again:?}"
    );
    conn.close(0u32.into(), b"done");
    let records = audit(&fed, "admin@post-a").await;
    assert!(
        records
            .iter()
            .any(|r| r.kind == "refusal" && r.actor == "nctv" && r.action == "rate-limit"),
        "no rate-limit record"
    );
    let refusals = records
        .iter()
        .filter(|r| r.kind == "refusal" && (r.actor == "nctv" || r.actor.ends_with("@nctv")))
        .count();
    assert!(refusals <= 40, "{refusals} refusal records for one peer");
}
