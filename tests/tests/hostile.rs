//! Hostile input against a real relay: broken frames, floods, idle and half-open
//! connections, a device that never reads its pushes, malformed and replayed MLS
//! messages, a malicious peer relay rewriting a notice's label or lying about what an
//! entry holds, and refusals reported by relays a notice never went to; slow and half-sent
//! frames, too many connections of one identity, and subscription floods. Each case
//! gets a typed error (or is refused by every recipient) and the relay keeps serving
//! others.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::time::{Duration, Instant};

use kring_client::{Client, SyncEvent};
use kring_protocol::wire::{
    self, DEFAULT_MAX_FRAME, EntryKind, ErrorCode, FedBody, FedItem, FedRequest, FedResponse,
    LogEntry, NoticeUpload, Request, Response,
};
use kring_tests::chaos::{
    XorShift, decode_answer, files_containing, raw_endpoint, raw_request, raw_stream,
    raw_user_connect, stored_log,
};
use kring_tests::steps::join;
use kring_tests::{Federation, RelayLauncher};
use uuid::Uuid;

fn federation() -> Federation {
    Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap()
}

async fn ready(fed: &Federation, user: &str) -> Client {
    let mut c = fed.client(user).unwrap();
    c.publish_key_packages(3).await.unwrap();
    c
}

/// Another user of the relay still gets an answer.
async fn others_are_served(fed: &Federation, relay: &str, user: &str) {
    let dir = fed.user_dir(user);
    let r = kring_tests::raw_ping(fed, relay, &dir.join("user.crt"), &dir.join("user.key")).await;
    assert_eq!(r, Ok(Response::Pong), "{user} at {relay} after the attack");
}

fn ping_frame() -> Vec<u8> {
    wire::encode_frame(&Request::Ping, DEFAULT_MAX_FRAME).unwrap()
}

fn error_of(answer: &[u8]) -> ErrorCode {
    match decode_answer::<Response>(answer) {
        Ok(Response::Error(code)) => code,
        other => panic!("expected a typed error, got {other:?}"),
    }
}

async fn audit(fed: &Federation, admin: &str) -> Vec<wire::AuditRecordView> {
    let mut a = fed.client(admin).unwrap();
    let page = a.audit_all(true).await.unwrap();
    assert_eq!(page.verify.unwrap().first_bad, None, "audit chain broken");
    a.disconnect().await;
    page.records
}

/// Oversized, truncated and garbled frames, garbage after a valid frame, and a
/// wrong protocol version: each answered with a typed error on its stream, audited;
/// the same connection and other users are served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_get_typed_errors() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();

    // A length header above the 1 MiB cap: refused before any allocation.
    for len in [DEFAULT_MAX_FRAME as u32 + 1, u32::MAX] {
        let answer = raw_stream(&conn, &len.to_be_bytes(), false).await.unwrap();
        assert!(
            matches!(error_of(&answer), ErrorCode::TooLarge { .. }),
            "header {len}"
        );
    }
    // An oversized frame actually sent (its payload behind its header).
    let mut big = (DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
    big.extend(vec![0u8; DEFAULT_MAX_FRAME + 1]);
    let answer = raw_stream(&conn, &big, true).await.unwrap();
    assert!(matches!(error_of(&answer), ErrorCode::TooLarge { .. }));

    // Truncated: inside the header, inside the payload.
    let frame = ping_frame();
    let answer = raw_stream(&conn, &frame[..2], true).await.unwrap();
    assert!(
        matches!(error_of(&answer), ErrorCode::BadRequest { ref reason } if reason.contains("header")),
        "{:?}",
        error_of(&answer)
    );
    let mut long = 100u32.to_be_bytes().to_vec();
    long.extend_from_slice(&frame[4..]);
    let answer = raw_stream(&conn, &long, true).await.unwrap();
    assert!(
        matches!(error_of(&answer), ErrorCode::BadRequest { ref reason } if reason.contains("ended inside a frame")),
        "{:?}",
        error_of(&answer)
    );
    // Random payloads of random sizes.
    let mut rng = XorShift::new(0x5eed);
    for _ in 0..20 {
        let n = 1 + rng.below(300) as usize;
        let mut f = (n as u32).to_be_bytes().to_vec();
        f.extend(rng.bytes(n));
        let answer = raw_stream(&conn, &f, true).await.unwrap();
        assert!(
            matches!(error_of(&answer), ErrorCode::BadRequest { .. }),
            "{:?}",
            error_of(&answer)
        );
    }
    // Another protocol version.
    let mut v2 = frame.clone();
    v2[4] = 2;
    let answer = raw_stream(&conn, &v2, true).await.unwrap();
    assert!(
        matches!(error_of(&answer), ErrorCode::BadRequest { ref reason } if reason.contains("version")),
        "{:?}",
        error_of(&answer)
    );
    // Garbage inside the frame, after a valid message.
    let mut trailing = frame[4..].to_vec();
    trailing.extend_from_slice(b"garbage");
    let mut f = (trailing.len() as u32).to_be_bytes().to_vec();
    f.extend(trailing);
    let answer = raw_stream(&conn, &f, true).await.unwrap();
    assert!(
        matches!(error_of(&answer), ErrorCode::BadRequest { ref reason } if reason.contains("after the message")),
        "{:?}",
        error_of(&answer)
    );

    // The connection itself still works, and so does everybody else.
    assert_eq!(raw_request(&conn, &Request::Ping).await, Ok(Response::Pong));
    others_are_served(&fed, "bz", "admin@bz").await;
    let records = audit(&fed, "admin@bz").await;
    let decode_refusals = records
        .iter()
        .filter(|r| r.kind == "refusal" && r.actor == "liaison@bz" && r.action == "decode")
        .count();
    assert!(
        decode_refusals >= 26,
        "{decode_refusals} decode refusals audited"
    );
}

/// Bytes after a complete request frame on the same stream (one request per stream):
/// a protocol violation that must be refused, not silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_valid_frame_is_refused() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    let mut f = ping_frame();
    f.extend_from_slice(b"\x00\x00\x00\x05hello and more garbage");
    let answer = raw_stream(&conn, &f, true).await.unwrap();
    assert!(
        matches!(
            decode_answer::<Response>(&answer),
            Ok(Response::Error(ErrorCode::BadRequest { .. }))
        ),
        "{:?}",
        decode_answer::<Response>(&answer)
    );
    others_are_served(&fed, "bz", "admin@bz").await;
}

/// One identity floods the relay: beyond its burst it gets `RateLimited` with a
/// retry time (audited), while another user is served at the same time; after the
/// wait it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_rate_limited_per_identity() {
    let mut fed = federation();
    fed.set_relay_option("bz", "requests_per_second", 20.into())
        .unwrap();
    fed.start("bz").unwrap();
    let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    let (mut pong, mut limited, mut retry) = (0u64, 0u64, 0u64);
    let flood = Instant::now();
    for _ in 0..300 {
        match raw_request(&conn, &Request::Ping).await.unwrap() {
            Response::Pong => pong += 1,
            Response::Error(ErrorCode::RateLimited { retry_after_ms }) => {
                limited += 1;
                retry = retry.max(retry_after_ms);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = flood.elapsed();
    eprintln!("flood: {pong} served, {limited} rate limited (retry ≤ {retry} ms) in {took:?}");
    // A burst of 2 s worth (40), then 20 per second.
    let allowed = 40 + (took.as_secs_f64() * 20.0).ceil() as u64 + 1;
    assert!(pong >= 40, "the burst was not served: {pong}");
    assert!(
        pong <= allowed,
        "{pong} served in {took:?}, the limit allows {allowed}"
    );
    assert_eq!(pong + limited, 300);
    assert!(retry > 0 && retry <= 1000, "retry_after_ms {retry}");
    // Someone else is not affected.
    others_are_served(&fed, "bz", "admin@bz").await;
    // The flooder is served again after waiting.
    tokio::time::sleep(Duration::from_millis(retry + 100)).await;
    assert_eq!(raw_request(&conn, &Request::Ping).await, Ok(Response::Pong));
    let records = audit(&fed, "admin@bz").await;
    assert!(
        records
            .iter()
            .any(|r| r.kind == "refusal" && r.actor == "liaison@bz" && r.action == "rate-limit"),
        "no rate-limit record"
    );
}

/// Idle authenticated connections up to the cap: the next connection is refused
/// clearly; idle connections are closed after the idle timeout, and the relay serves
/// again. Then hundreds of half-open handshakes (a client whose packets reach the
/// relay but never hear back): refused beyond the cap, dropped after the handshake
/// timeout; the relay serves again within seconds and its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_capped_and_time_out() {
    const CAP: usize = 40;
    let mut fed = federation();
    fed.set_relay_option("bz", "max_connections", (CAP as i64).into())
        .unwrap();
    // One identity fills the relay-wide cap here, so its own cap must not stop it.
    fed.set_relay_option("bz", "max_connections_per_identity", (CAP as i64).into())
        .unwrap();
    fed.set_relay_option("bz", "idle_timeout_ms", 2000.into())
        .unwrap();
    fed.set_relay_option("bz", "handshake_timeout_ms", 1000.into())
        .unwrap();
    fed.start("bz").unwrap();
    let rss_before = fed.rss_kib("bz").unwrap();

    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(raw_user_connect(&fed, "liaison@bz").await.unwrap());
    }
    let dir = fed.user_dir("admin@bz");
    let refused =
        kring_tests::raw_ping(&fed, "bz", &dir.join("user.crt"), &dir.join("user.key")).await;
    // QUIC CONNECTION_REFUSED, before any TLS work.
    assert!(
        matches!(&refused, Err(e) if e.contains("server refused to accept a new connection")),
        "connection {} above the cap: {refused:?}",
        CAP + 1
    );
    // The idle timeout frees the slots.
    let started = Instant::now();
    loop {
        let r =
            kring_tests::raw_ping(&fed, "bz", &dir.join("user.crt"), &dir.join("user.key")).await;
        if r == Ok(Response::Pong) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "idle connections never timed out: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every idle connection is closed by the relay's idle timeout.
    loop {
        let closed = idle
            .iter()
            .filter(|(_, c)| c.close_reason().is_some())
            .count();
        if closed == CAP {
            eprintln!(
                "all {CAP} idle connections closed after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{closed} of {CAP} idle connections closed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(idle);

    let cap_refusals = |fed: &Federation| {
        std::fs::read_to_string(fed.log_file("bz"))
            .unwrap()
            .matches("connection cap reached")
            .count()
    };
    let refusals_before = cap_refusals(&fed);
    // Half-open handshakes through a one-way forwarder: client → relay only.
    let relay_addr = fed.relay_addr("bz").unwrap();
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let forwarder = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = hole.recv_from(&mut buf).await {
            if from != relay_addr {
                let _ = hole.send_to(&buf[..n], relay_addr).await;
            }
        }
    });
    let ep = raw_endpoint(
        &fed,
        &dir.join("user.crt"),
        &dir.join("user.key"),
        wire::ALPN_CLIENT,
    )
    .unwrap();
    let mut pending = Vec::new();
    for _ in 0..300 {
        let connecting = ep.connect(hole_addr, "bz.relay.kring").unwrap();
        pending.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), connecting).await;
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
    ep.close(0u32.into(), b"");
    forwarder.abort();
    let started = Instant::now();
    loop {
        let r =
            kring_tests::raw_ping(&fed, "bz", &dir.join("user.crt"), &dir.join("user.key")).await;
        if r == Ok(Response::Pong) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "relay still refuses after the half-open flood: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused = cap_refusals(&fed) - refusals_before;
    eprintln!(
        "half-open flood of 300: {refused} Initial packets refused at the cap; served again after {:?}",
        started.elapsed()
    );
    assert!(
        refused > 0,
        "no half-open connection was refused at the cap"
    );
    let rss_after = fed.rss_kib("bz").unwrap();
    eprintln!("relay RSS {rss_before} KiB before, {rss_after} KiB after the connection floods");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// Devices that open their push channel and never read it: the relay's memory does
/// not grow with what it cannot deliver (delivery reads from the store, QUIC flow
/// control holds the sender back), and other members get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_do_not_grow_relay_memory() {
    const SLOW: usize = 10;
    const NOTICES: usize = 120;
    const BODY: usize = 60 * 1024;
    let mut fed = federation();
    let slow: Vec<String> = (0..SLOW).map(|i| format!("traag{i}@bz")).collect();
    for u in &slow {
        fed.issue_user(u, "NL:STG-GEHEIM", &[]).unwrap();
    }
    fed.start("bz").unwrap();
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut reader = ready(&fed, "admin@bz").await;
    let mut members = vec!["admin@bz".to_string()];
    let mut slow_clients = Vec::new();
    for u in &slow {
        slow_clients.push(ready(&fed, u).await);
        members.push(u.clone());
    }
    admin.create_community("c", "NL:STG-GEHEIM").await.unwrap();
    admin.add_members("c@bz", &members).await.unwrap();
    join(&mut reader, "c@bz").await;
    for c in slow_clients.iter_mut() {
        join(c, "c@bz").await;
        c.disconnect().await;
    }
    // Before the slow devices subscribe: what their connections take counts as
    // growth too.
    let rss_before = fed.rss_kib("bz").unwrap();
    // Each slow device subscribes and then never reads.
    let mut subs = Vec::new();
    for u in &slow {
        let (ep, conn) = raw_user_connect(&fed, u).await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&wire::encode_frame(&Request::Subscribe, DEFAULT_MAX_FRAME).unwrap())
            .await
            .unwrap();
        subs.push((ep, conn, send, recv));
    }
    let body = "x".repeat(BODY);
    for i in 0..NOTICES {
        admin
            .file_notice(kring_tests::signal(
                "c@bz",
                "NL:DEP-VERTROUWELIJK",
                &format!("big {i}"),
                &body,
            ))
            .await
            .unwrap();
    }
    // A reading member gets everything: by then the relay has handed every entry
    // to every subscriber's delivery (the slow ones stall on flow control).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        reader.sync().await.unwrap();
        let n = reader.notices(Some("c@bz")).unwrap().len();
        if n == NOTICES {
            break;
        }
        assert!(Instant::now() < deadline, "reader has {n} of {NOTICES}");
    }
    let rss_after = fed.rss_kib("bz").unwrap();
    let data_kib = (NOTICES * BODY / 1024) as u64;
    eprintln!(
        "relay RSS {rss_before} KiB before, {rss_after} KiB after filing {data_kib} KiB \
         to {SLOW} devices that never read"
    );
    // Buffering what the slow devices did not read would need SLOW × data_kib more;
    // the store's cache of the log itself is allowed for (measured: about 2 × data).
    assert!(
        rss_after < rss_before + data_kib * 3 + 8 * 1024,
        "relay memory grew from {rss_before} to {rss_after} KiB"
    );
    others_are_served(&fed, "bz", "liaison@bz").await;
    drop(subs);
}

/// Malformed MLS messages, a commit sent by a non-member, a commit replayed, a
/// notice replayed (same id, another member, a new id): typed errors from the relay,
/// or refused and reported by every recipient; nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_replayed_mls_messages() {
    let mut fed = federation();
    for u in ["lezer@bz", "buiten@bz"] {
        fed.issue_user(u, "NL:STG-GEHEIM", &[]).unwrap();
    }
    fed.start("bz").unwrap();
    let mut admin = ready(&fed, "liaison@bz").await;
    let mut member = ready(&fed, "admin@bz").await;
    let mut reader = ready(&fed, "lezer@bz").await;
    let _outsider = ready(&fed, "buiten@bz").await;
    admin.create_community("c", "NL:STG-GEHEIM").await.unwrap();
    admin
        .add_members("c@bz", &["admin@bz", "lezer@bz"])
        .await
        .unwrap();
    join(&mut member, "c@bz").await;
    join(&mut reader, "c@bz").await;
    let filed = admin
        .file_notice(kring_tests::signal(
            "c@bz",
            "NL:DEP-VERTROUWELIJK",
            "original",
            "the original",
        ))
        .await
        .unwrap();
    let seq = filed.seq.unwrap();
    reader.sync().await.unwrap();
    assert_eq!(reader.notices(Some("c@bz")).unwrap().len(), 1);

    // Capture the commit and the notice from the relay's store.
    admin.disconnect().await;
    member.disconnect().await;
    reader.disconnect().await;
    fed.stop("bz").unwrap();
    let log = stored_log(&fed.open_store("bz").unwrap(), "c@bz").unwrap();
    let commit = log
        .iter()
        .find(|e| matches!(e.kind, EntryKind::Handshake { .. }))
        .unwrap()
        .message
        .clone();
    let notice = log.iter().find(|e| e.seq == seq).unwrap().message.clone();
    fed.start("bz").unwrap();

    let (_e1, as_admin) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    let (_e2, as_member) = raw_user_connect(&fed, "admin@bz").await.unwrap();
    let (_e3, as_outsider) = raw_user_connect(&fed, "buiten@bz").await.unwrap();
    let req = |message: Vec<u8>, notice_id: Uuid| Request::FileNotice {
        community: "c@bz".into(),
        notice_id,
        message,
    };
    let handshake = |message: Vec<u8>| Request::Handshake {
        community: "c@bz".into(),
        message,
        welcome: None,
    };

    // Malformed MLS: random bytes as a notice and as a commit; a commit as a notice.
    let mut rng = XorShift::new(7);
    for n in [0usize, 1, 40, 700] {
        let r = raw_request(&as_admin, &req(rng.bytes(n), Uuid::new_v4()))
            .await
            .unwrap();
        assert!(
            matches!(&r, Response::Error(ErrorCode::BadRequest { reason }) if reason.contains("MLS")),
            "{n} random bytes as a notice: {r:?}"
        );
        let r = raw_request(&as_admin, &handshake(rng.bytes(n)))
            .await
            .unwrap();
        assert!(
            matches!(&r, Response::Error(ErrorCode::BadRequest { .. })),
            "{n} random bytes as a commit: {r:?}"
        );
    }
    let r = raw_request(&as_admin, &req(commit.clone(), Uuid::new_v4()))
        .await
        .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { .. })),
        "a commit as a notice: {r:?}"
    );
    // A truncated notice.
    let r = raw_request(
        &as_admin,
        &req(notice[..notice.len() / 2].to_vec(), Uuid::new_v4()),
    )
    .await
    .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { .. })),
        "a truncated notice: {r:?}"
    );

    // A commit sent by a non-member.
    let r = raw_request(&as_outsider, &handshake(commit.clone()))
        .await
        .unwrap();
    assert_eq!(
        r,
        Response::Error(ErrorCode::NotMember),
        "non-member commit"
    );
    // The same commit replayed by its author: the community has moved on.
    let r = raw_request(&as_admin, &handshake(commit.clone()))
        .await
        .unwrap();
    assert!(
        matches!(r, Response::Error(ErrorCode::WrongEpoch { .. })),
        "replayed commit: {r:?}"
    );
    // The notice replayed by its filer under its own id: the same answer, no new entry.
    let r = raw_request(&as_admin, &req(notice.clone(), filed.notice.id))
        .await
        .unwrap();
    assert!(
        matches!(r, Response::Accepted { seq: s, .. } if s == seq),
        "retried filing: {r:?}"
    );
    // A filing of several notices is all or none: the same notice twice, or a good
    // notice with a malformed one, is refused whole (naming the notice), and an
    // empty filing is refused; nothing is ordered (the replay below gets the next seq).
    let many = |items: Vec<(Vec<u8>, Uuid)>| Request::FileNotices {
        community: "c@bz".into(),
        notices: items
            .into_iter()
            .map(|(message, notice_id)| NoticeUpload { notice_id, message })
            .collect(),
    };
    let twice = Uuid::new_v4();
    let r = raw_request(
        &as_admin,
        &many(vec![(notice.clone(), twice), (notice.clone(), twice)]),
    )
    .await
    .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { reason }) if reason.contains("twice")),
        "the same notice twice in one filing: {r:?}"
    );
    let bad = Uuid::new_v4();
    let r = raw_request(
        &as_admin,
        &many(vec![(notice.clone(), Uuid::new_v4()), (rng.bytes(40), bad)]),
    )
    .await
    .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { reason }) if reason.contains(&bad.to_string())),
        "a malformed notice in a filing: {r:?}"
    );
    let r = raw_request(&as_admin, &many(Vec::new())).await.unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { .. })),
        "an empty filing: {r:?}"
    );
    // By another member under the same id: refused.
    let r = raw_request(&as_member, &req(notice.clone(), filed.notice.id))
        .await
        .unwrap();
    assert!(
        matches!(&r, Response::Error(ErrorCode::BadRequest { reason }) if reason.contains("already filed")),
        "replay under the same id: {r:?}"
    );
    // By another member under a new id: the relay cannot tell (it cannot decrypt),
    // but every recipient refuses the reused message and reports it.
    let replay = raw_request(&as_member, &req(notice.clone(), Uuid::new_v4()))
        .await
        .unwrap();
    let report = reader.sync().await.unwrap();
    eprintln!(
        "another member's message replayed under a new id: relay {replay:?}, recipient {:?}",
        report.events
    );
    match replay {
        Response::Accepted { seq: s2, .. } => {
            assert!(s2 > seq);
            assert!(
                report.events.iter().any(|e| matches!(e,
                    SyncEvent::Unreadable { seq: s, .. } | SyncEvent::Refused { seq: s, .. } if *s == s2)),
                "the replay was not reported: {:?}",
                report.events
            );
        }
        Response::Error(_) => {}
        other => panic!("replay under a new id: {other:?}"),
    }
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, SyncEvent::Notice(_))),
        "a replay was stored as a notice: {:?}",
        report.events
    );
    let titles: Vec<String> = reader
        .notices(Some("c@bz"))
        .unwrap()
        .into_iter()
        .map(|n| n.title)
        .collect();
    assert_eq!(titles, vec!["original"]);

    others_are_served(&fed, "bz", "lezer@bz").await;
    drop(member); // its store: audit() opens admin@bz's profile
    let records = audit(&fed, "admin@bz").await;
    assert!(
        records
            .iter()
            .any(|r| r.kind == "refusal" && r.actor == "buiten@bz"),
        "the non-member's commit was not audited"
    );
}

/// A malicious relay (holding the hub's certificate, federation ALPN) delivers real
/// notices with the label rewritten: once in the entry the relays read, once inside
/// the MLS message's authenticated data. The receiving relay refuses the first (its
/// label is not the message's authenticated data); it stores and pushes the second,
/// whose entry agrees with its altered message, but the recipient device refuses it
/// and reports it, and no plaintext is stored anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_rewritten_in_transit_is_refused_by_every_recipient() {
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

    // Two notices post-a has not received yet.
    post.disconnect().await;
    fed.stop("post-a").unwrap();
    let marker = "MARKER-7f3a9c-plaintext";
    let mut seqs = Vec::new();
    for i in 0..2 {
        let f = bz
            .file_notice(kring_tests::signal(
                "d@bz",
                "NL:DEP-VERTROUWELIJK",
                &format!("rewritten {i}"),
                &format!("{marker} {i}"),
            ))
            .await
            .unwrap();
        seqs.push(f.seq.unwrap());
    }
    let info = bz.community_info("d@bz").await.unwrap();
    bz.disconnect().await;
    fed.stop("bz").unwrap();
    let log = stored_log(&fed.open_store("bz").unwrap(), "d@bz").unwrap();
    let entry = |seq: u64| log.iter().find(|e| e.seq == seq).unwrap().clone();
    fed.start("post-a").unwrap();

    let real: kring_policy::Label = "NL:DEP-VERTROUWELIJK".parse().unwrap();
    // A lowered label for the entry; a raised one of the same encoded length for
    // the authenticated data inside the message (so the message still parses).
    let lowered: kring_policy::Label = "NL:ONGERUBRICEERD".parse().unwrap();
    let raised: kring_policy::Label = "NL:STG-CONFIDENTIEEL".parse().unwrap();
    let (real_b, lowered_b, fake_b) = (real.to_bytes(), lowered.to_bytes(), raised.to_bytes());
    assert_eq!(real_b.len(), fake_b.len(), "labels of equal encoded length");

    // 1: the label relays read differs from the authenticated data.
    let mut e1: LogEntry = entry(seqs[0]);
    if let EntryKind::Notice { label, .. } = &mut e1.kind {
        assert_eq!(label, &real_b);
        *label = lowered_b.clone();
    }
    // 2: the authenticated data inside the message rewritten (and the entry's label
    // to match it).
    let mut e2: LogEntry = entry(seqs[1]);
    let at = e2
        .message
        .windows(real_b.len())
        .position(|w| w == real_b.as_slice())
        .expect("the label is in the message");
    e2.message[at..at + real_b.len()].copy_from_slice(&fake_b);
    if let EntryKind::Notice { label, .. } = &mut e2.kind {
        *label = fake_b.clone();
    }
    for (i, e) in [e1, e2].into_iter().enumerate() {
        let item_seq = 2_000_000 + i as u64;
        let req = FedRequest::Deliver {
            items: vec![FedItem {
                seq: item_seq,
                body: FedBody::Entry {
                    community: info.clone(),
                    seq: e.seq,
                    entry: Some(e),
                },
            }],
        };
        let r = kring_tests::raw_federation_call(&fed, "bz", "post-a", &req)
            .await
            .unwrap();
        assert!(matches!(r, FedResponse::Ack { .. }), "{r:?}");
    }

    let report = post.sync().await.unwrap();
    let reported = |seq: u64| {
        report.events.iter().any(|e| {
            matches!(e,
            SyncEvent::Unreadable { seq: s, .. } | SyncEvent::Refused { seq: s, .. } if *s == seq)
        })
    };
    assert!(
        !reported(seqs[0]),
        "the relay passed on an entry whose label is not its message's: {:?}",
        report.events
    );
    assert!(
        reported(seqs[1]),
        "seq {}: no refusal reported: {:?}",
        seqs[1],
        report.events
    );
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, SyncEvent::Notice(_))),
        "a rewritten notice was accepted: {:?}",
        report.events
    );
    assert!(post.notices(Some("d@bz")).unwrap().is_empty());
    post.disconnect().await;
    // No plaintext at the recipient, nor at either relay.
    for dir in [
        fed.user_dir("analist@post-a"),
        fed.data_dir("post-a"),
        fed.data_dir("bz"),
    ] {
        let found = files_containing(&dir, marker.as_bytes());
        assert!(found.is_empty(), "plaintext in {found:?}");
    }
    others_are_served(&fed, "post-a", "analist@post-a").await;
}

/// A hub (or whoever holds its certificate) delivers entries whose envelope lies
/// about the MLS message inside: another community, another seq, another epoch,
/// another label, a commit said to lead to another epoch, an old commit replayed
/// under a new seq. The member relay refuses each (audit-logged) and stores none;
/// the genuine entries that follow are taken, and the device gets exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_whose_envelope_lies_about_their_message_are_refused() {
    let mut fed = federation();
    fed.start("bz").unwrap();
    fed.start("post-a").unwrap();
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    for name in ["d", "e"] {
        bz.create_community(name, "NL:STG-CONFIDENTIEEL")
            .await
            .unwrap();
        bz.add_members(&format!("{name}@bz"), &["analist@post-a"])
            .await
            .unwrap();
        join(&mut post, &format!("{name}@bz")).await;
    }
    post.disconnect().await;
    fed.stop("post-a").unwrap();
    // A commit (epoch 1 -> 2) and a notice (epoch 2) post-a has not received.
    bz.set_admin("d@bz", kring_client::AdminChange::Add, "analist@post-a")
        .await
        .unwrap();
    bz.file_notice(kring_tests::signal(
        "d@bz",
        "NL:DEP-VERTROUWELIJK",
        "echt",
        "body",
    ))
    .await
    .unwrap();
    let info = bz.community_info("d@bz").await.unwrap();
    bz.disconnect().await;
    fed.stop("bz").unwrap();
    let log = stored_log(&fed.open_store("bz").unwrap(), "d@bz").unwrap();
    let (add, commit, notice) = (log[0].clone(), log[1].clone(), log[2].clone());
    assert!(matches!(add.kind, EntryKind::Handshake { epoch: 0 }));
    assert!(matches!(commit.kind, EntryKind::Handshake { epoch: 1 }));
    assert!(matches!(notice.kind, EntryKind::Notice { epoch: 2, .. }));
    assert_eq!((commit.seq, notice.seq), (2, 3));
    fed.start("post-a").unwrap();

    let as_notice = |community: &str, seq: u64, entry: LogEntry| FedBody::NoticeEntry {
        community: community.into(),
        seq,
        entry: Some(entry),
    };
    let as_commit = |epoch: u64, seq: u64, entry: LogEntry| FedBody::Entry {
        community: wire::CommunitySummary {
            epoch,
            ..info.clone()
        },
        seq,
        entry: Some(entry),
    };
    let changed = |f: &dyn Fn(&mut LogEntry)| {
        let mut e = notice.clone();
        f(&mut e);
        e
    };
    let lowered = "NL:ONGERUBRICEERD"
        .parse::<kring_policy::Label>()
        .unwrap()
        .to_bytes();
    let lies = vec![
        // d's notice as an entry of e (both members of post-a).
        as_notice("e@bz", 3, changed(&|e| e.community = "e@bz".into())),
        as_notice("e@bz", 3, notice.clone()),
        as_notice("d@bz", 3, changed(&|e| e.seq = 4)),
        as_notice(
            "d@bz",
            3,
            changed(&|e| {
                if let EntryKind::Notice { epoch, .. } = &mut e.kind {
                    *epoch = 1;
                }
            }),
        ),
        as_notice(
            "d@bz",
            3,
            changed(&|e| {
                if let EntryKind::Notice { label, .. } = &mut e.kind {
                    *label = lowered.clone();
                }
            }),
        ),
        // The commit said to lead to epoch 7; the first commit replayed as seq 9.
        as_commit(7, 2, commit.clone()),
        as_commit(info.epoch, 9, {
            let mut e = add.clone();
            e.seq = 9;
            e
        }),
    ];
    let why = [
        "not to \"e@bz\"",
        "names community d@bz",
        "names seq 4",
        "names epoch 1",
        "label of the entry is not the authenticated data",
        "leave the community at epoch 7",
        "a handshake of epoch 0",
    ];
    let genuine = [
        as_commit(info.epoch, 2, commit.clone()),
        as_notice("d@bz", 3, notice.clone()),
    ];
    let items = lies
        .into_iter()
        .chain(genuine)
        .enumerate()
        .map(|(i, body)| FedItem {
            seq: 3_000_000 + i as u64,
            body,
        })
        .collect();
    let r = kring_tests::raw_federation_call(&fed, "bz", "post-a", &FedRequest::Deliver { items })
        .await
        .unwrap();
    assert!(matches!(r, FedResponse::Ack { .. }), "{r:?}");

    let report = post.sync().await.unwrap();
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, SyncEvent::Unreadable { .. } | SyncEvent::Refused { .. })),
        "a refused entry reached the device: {:?}",
        report.events
    );
    assert!(
        report.events.iter().any(|e| matches!(e,
            SyncEvent::Changed { community, epoch: 2, .. } if community == "d@bz")),
        "the genuine commit did not arrive: {:?}",
        report.events
    );
    let titles: Vec<String> = post
        .notices(Some("d@bz"))
        .unwrap()
        .into_iter()
        .map(|n| n.title)
        .collect();
    assert_eq!(titles, vec!["echt".to_string()]);
    assert!(post.notices(Some("e@bz")).unwrap().is_empty());
    post.disconnect().await;
    let records = audit(&fed, "admin@post-a").await;
    for reason in why {
        assert!(
            records.iter().any(|r| r.kind == "refusal"
                && r.actor == "bz"
                && r.action == "federation-item"
                && r.detail.contains(reason)),
            "no audited refusal for {reason:?}"
        );
    }
    others_are_served(&fed, "post-a", "analist@post-a").await;
}

/// A notice filed at post-a goes to its hub bz, and from bz to the relays with
/// members (nctv). A refusal of it is taken only from a relay it went to: at post-a
/// from bz, at bz from a member relay about itself. Refusals from relays it never went
/// to, about a hop other than the sender's own, or about a notice nobody filed are
/// ignored and audit-logged; an over-long reason is refused with the frame; the
/// one genuine refusal reaches the filer's status, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_count_only_from_the_relay_the_notice_went_to() {
    let mut fed = federation();
    for id in ["bz", "nctv", "post-a"] {
        fed.start(id).unwrap();
    }
    let mut bz = ready(&fed, "liaison@bz").await;
    let mut post = ready(&fed, "analist@post-a").await;
    let _nctv = ready(&fed, "liaison@nctv").await;
    bz.create_community("r", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    bz.add_members("r@bz", &["analist@post-a", "liaison@nctv"])
        .await
        .unwrap();
    join(&mut post, "r@bz").await;
    let filed = post
        .file_notice(kring_tests::signal(
            "r@bz",
            "NL:DEP-VERTROUWELIJK",
            "status",
            "body",
        ))
        .await
        .unwrap();
    let id = filed.notice.id;
    let deadline = Instant::now() + Duration::from_secs(30);
    while post.notice_status(id).await.unwrap().seq.is_none() {
        assert!(Instant::now() < deadline, "never ordered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusal = |notice_id: Uuid, hop: &str, reason: &str| FedBody::Refusal {
        notice_id,
        hop: hop.into(),
        reason: reason.into(),
    };
    let deliver = |first: u64, bodies: Vec<FedBody>| FedRequest::Deliver {
        items: bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| FedItem {
                seq: first + i as u64,
                body,
            })
            .collect(),
    };
    let acked = |r: Result<FedResponse, String>| {
        assert!(matches!(r, Ok(FedResponse::Ack { .. })), "{r:?}");
    };
    // At the filer's home relay: nctv never had the notice; nobody filed the other.
    let r = kring_tests::raw_federation_call(
        &fed,
        "nctv",
        "post-a",
        &deliver(
            1_000_000,
            vec![
                refusal(id, "nctv", "made up"),
                refusal(Uuid::from_u128(77), "nctv", "made up"),
            ],
        ),
    )
    .await;
    acked(r);
    // At the hub: aivd has no member; nctv may report only its own hop. (Only
    // relays whose link to bz this test no longer needs stand in.)
    let r = kring_tests::raw_federation_call(
        &fed,
        "aivd",
        "bz",
        &deliver(1_000_000, vec![refusal(id, "bz->aivd", "made up")]),
    )
    .await;
    acked(r);
    let r = kring_tests::raw_federation_call(
        &fed,
        "nctv",
        "bz",
        &deliver(1_000_000, vec![refusal(id, "bz->post-a", "made up")]),
    )
    .await;
    acked(r);
    // A reason longer than the bound: the frame is refused with a typed error.
    let long = "x".repeat(wire::limits::MAX_REASON + 1);
    let r = kring_tests::raw_federation_call(
        &fed,
        "nctv",
        "bz",
        &deliver(1_000_001, vec![refusal(id, "bz->nctv", &long)]),
    )
    .await;
    assert!(
        matches!(
            r,
            Ok(FedResponse::Response(Response::Error(
                ErrorCode::BadRequest { .. }
            )))
        ),
        "{r:?}"
    );
    // nctv about its own hop: taken, and passed on to the filer's home relay.
    let r = kring_tests::raw_federation_call(
        &fed,
        "nctv",
        "bz",
        &deliver(1_000_001, vec![refusal(id, "bz->nctv", "genuine")]),
    )
    .await;
    acked(r);
    let only_genuine = |status: &wire::NoticeStatus| {
        status
            .refusals
            .iter()
            .map(|r| (r.hop.as_str(), r.reason.as_str()))
            .collect::<Vec<_>>()
            == vec![("bz->nctv", "genuine")]
    };
    let at_hub = bz.notice_status(id).await.unwrap();
    assert!(only_genuine(&at_hub), "{:?}", at_hub.refusals);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = post.notice_status(id).await.unwrap();
        if only_genuine(&status) {
            break;
        }
        assert!(
            status.refusals.len() <= 1 && Instant::now() < deadline,
            "{:?}",
            status.refusals
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bz.disconnect().await;
    post.disconnect().await;
    let ignored = |records: &[wire::AuditRecordView], actor: &str| {
        records
            .iter()
            .filter(|r| {
                r.kind == "refusal"
                    && r.actor == actor
                    && r.action == "federation-item"
                    && r.detail.contains("ignored")
            })
            .count()
    };
    let at_post = audit(&fed, "admin@post-a").await;
    assert_eq!(ignored(&at_post, "nctv"), 2);
    let at_bz = audit(&fed, "admin@bz").await;
    assert_eq!(ignored(&at_bz, "aivd"), 1);
    assert_eq!(ignored(&at_bz, "nctv"), 1);
}

/// One user fetching another's key packages over and over gets a few one-time
/// packages an hour, then only the last-resort one (never consumed), then
/// `RateLimited`; a user of another relay, fetching through their own relay, is held
/// to the same limits at the user's home relay. Every fetch is audit-logged with
/// requester and user (never key material). Adding the user to a community still
/// works, with a one-time package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_cannot_be_drained() {
    use kring_relay::key_fetch::{FETCHES_PER_PAIR, ONE_TIME_PER_PAIR};
    let pair_fetches = FETCHES_PER_PAIR as usize;
    let one_time = ONE_TIME_PER_PAIR as usize;
    let mut fed = federation();
    fed.issue_user("mallory@bz", "NL:DEP-VERTROUWELIJK", &[])
        .unwrap();
    fed.start("bz").unwrap();
    fed.start("nctv").unwrap();
    let mut victim = fed.client("liaison@bz").unwrap();
    victim.publish_key_packages(10).await.unwrap();

    let fetch = |conn: quinn::Connection| async move {
        raw_request(
            &conn,
            &Request::FetchKeyPackage {
                user: "liaison@bz".into(),
            },
        )
        .await
        .unwrap()
    };
    let package = |r: Response| match r {
        Response::KeyPackage { key_package } => key_package,
        other => panic!("expected a key package, got {other:?}"),
    };

    let (_ep, mallory) = raw_user_connect(&fed, "mallory@bz").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..pair_fetches {
        got.push(package(fetch(mallory.clone()).await));
    }
    match fetch(mallory.clone()).await {
        Response::Error(ErrorCode::RateLimited { retry_after_ms }) => {
            assert!(retry_after_ms > 0, "{retry_after_ms}")
        }
        Response::KeyPackage { .. } => panic!("expected RateLimited, got another key package"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    let last_resort = got[one_time].clone();
    let distinct: std::collections::BTreeSet<&Vec<u8>> = got[..one_time].iter().collect();
    assert_eq!(distinct.len(), one_time, "one-time packages repeat");
    assert!(!distinct.contains(&last_resort));
    assert!(
        got[one_time..].iter().all(|kp| *kp == last_resort),
        "more than {one_time} one-time packages went to one requester"
    );

    // Through another relay: the same limits, applied by the user's home relay.
    let (_ep2, remote) = raw_user_connect(&fed, "liaison@nctv").await.unwrap();
    let mut remote_got = Vec::new();
    for _ in 0..=one_time {
        remote_got.push(package(fetch(remote.clone()).await));
    }
    assert_eq!(remote_got[one_time], last_resort);
    for kp in &remote_got[..one_time] {
        assert!(
            *kp != last_resort && !got.contains(kp),
            "not a fresh one-time package"
        );
    }

    // The normal flow: an admin adds the user, who joins.
    let mut admin = fed.client("admin@bz").unwrap();
    admin.publish_key_packages(2).await.unwrap();
    admin
        .create_community("sleutels", "NL:DEP-VERTROUWELIJK")
        .await
        .unwrap();
    admin
        .add_members("sleutels@bz", &["liaison@bz".to_string()])
        .await
        .unwrap();
    join(&mut victim, "sleutels@bz").await;
    victim.disconnect().await;
    drop(admin);

    let records = audit(&fed, "admin@bz").await;
    let fetches = |actor: &str, detail: &str| {
        records
            .iter()
            .filter(|r| {
                r.kind == "membership"
                    && r.action == "fetch-key-package"
                    && r.actor == actor
                    && r.subject == "liaison@bz"
                    && r.detail.contains(detail)
            })
            .count()
    };
    assert_eq!(
        fetches("mallory@bz", "one-time key package handed out"),
        one_time
    );
    assert_eq!(
        fetches("mallory@bz", "one-time packages protected"),
        pair_fetches - one_time
    );
    assert_eq!(
        fetches("liaison@nctv", "one-time key package handed out"),
        one_time
    );
    assert_eq!(fetches("liaison@nctv", "one-time packages protected"), 1);
    assert_eq!(fetches("admin@bz", "one-time key package handed out"), 1);
    assert!(
        records.iter().any(|r| r.kind == "refusal"
            && r.actor == "mallory@bz"
            && r.action == "fetch-key-package"
            && r.detail.contains("rate limited")),
        "the refused fetch is not audited"
    );
}

/// The first frame the relay sends on `recv`, within 10 s (the stream may stay open).
async fn first_frame(recv: &mut quinn::RecvStream) -> Vec<u8> {
    let mut decoder = wire::FrameDecoder::new(DEFAULT_MAX_FRAME);
    let read = async {
        loop {
            if let Some(payload) = decoder.next_payload().unwrap() {
                return payload;
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => decoder.feed(&chunk.bytes).unwrap(),
                other => panic!("stream ended before a frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no frame within 10 s")
}

fn refusals(records: &[wire::AuditRecordView], actor: &str, action: &str) -> usize {
    records
        .iter()
        .filter(|r| r.kind == "refusal" && r.actor == actor && r.action == action)
        .count()
}

/// A request frame that trickles in (one byte every 100 ms) or stops halfway through
/// its header is cut at the frame deadline (`frame_timeout_ms`, 1 s here) with
/// `BadRequest`, audited; the connection and everybody else are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_frame_is_cut_at_the_deadline() {
    let mut fed = federation();
    fed.set_relay_option("bz", "frame_timeout_ms", 1000.into())
        .unwrap();
    fed.start("bz").unwrap();
    let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let started = Instant::now();
    send.write_all(&200u32.to_be_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if send.write_all(&[0]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        send
    });
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(64 * 1024))
        .await
        .expect("the trickling frame was not cut within 10 s")
        .unwrap();
    let took = started.elapsed();
    eprintln!("trickling frame cut after {took:?}");
    assert!(
        matches!(error_of(&answer), ErrorCode::BadRequest { ref reason } if reason.contains("within 1000 ms")),
        "{:?}",
        error_of(&answer)
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    trickle.abort();

    // Half a header, then nothing (the stream stays open).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(64 * 1024))
        .await
        .expect("the half header was not cut within 10 s")
        .unwrap();
    assert!(
        matches!(error_of(&answer), ErrorCode::BadRequest { ref reason } if reason.contains("within 1000 ms")),
        "{:?}",
        error_of(&answer)
    );
    drop(send);

    assert_eq!(raw_request(&conn, &Request::Ping).await, Ok(Response::Pong));
    others_are_served(&fed, "bz", "admin@bz").await;
    let records = audit(&fed, "admin@bz").await;
    assert_eq!(refusals(&records, "liaison@bz", "frame-timeout"), 2);
}

/// Sixty large frames half sent on one connection (each header claims 8 MiB, 960 KiB
/// follow, the stream is never finished): the identity's request byte budget (8 MiB
/// by default, `request_bytes_per_identity`) admits a few, every other stream is
/// refused at once with `RateLimited` (audited) and its bytes dropped. The relay's
/// memory grows by about the budget, not by the 56 MiB sent; other users are served
/// during the attack, and the attacker again once its connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_large_frames_are_held_to_the_identity_budget() {
    const STREAMS: usize = 60;
    const SENT: usize = 960 * 1024;
    let budget_streams = DEFAULT_MAX_FRAME / (1 << 20);
    let mut fed = federation();
    fed.set_relay_option("bz", "frame_timeout_ms", 120_000.into())
        .unwrap();
    fed.start("bz").unwrap();
    let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    assert_eq!(raw_request(&conn, &Request::Ping).await, Ok(Response::Pong));
    others_are_served(&fed, "bz", "admin@bz").await;
    let rss_before = fed.rss_kib("bz").unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        let conn = conn.clone();
        let tx = tx.clone();
        held.push(tokio::spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let mut bytes = (DEFAULT_MAX_FRAME as u32).to_be_bytes().to_vec();
            bytes.extend(vec![7u8; SENT]);
            // The relay stops reading a refused stream: the write may fail.
            let _ = send.write_all(&bytes).await;
            // Never finished: an admitted frame waits for the rest.
            let answer = recv.read_to_end(64 * 1024).await;
            let _ = tx.send(answer.map_err(|e| e.to_string()));
            send
        }));
    }
    let refused_needed = STREAMS - budget_streams;
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused < refused_needed {
        let answer = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {refused} of {STREAMS} half-sent frames refused; relay RSS {:?} KiB, \
                     {rss_before} KiB before",
                    fed.rss_kib("bz")
                )
            })
            .unwrap()
            .unwrap();
        match error_of(&answer) {
            ErrorCode::RateLimited { retry_after_ms } => assert!(retry_after_ms > 0),
            other => panic!("expected RateLimited, got {other:?}"),
        }
        refused += 1;
    }
    let rss_during = fed.rss_kib("bz").unwrap();
    let sent_kib = (STREAMS * SENT / 1024) as u64;
    eprintln!(
        "{refused} of {STREAMS} half-sent frames refused; relay RSS {rss_before} KiB before, \
         {rss_during} KiB with {sent_kib} KiB sent"
    );
    assert!(
        rss_during < rss_before + 24 * 1024,
        "relay memory grew from {rss_before} to {rss_during} KiB"
    );
    // Another user is served while the attack holds the attacker's budget.
    others_are_served(&fed, "bz", "admin@bz").await;

    // The attacker's connection goes: its budget is free again.
    conn.close(0u32.into(), b"");
    for h in held {
        h.abort();
    }
    let (_ep2, again) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match raw_request(&again, &Request::Ping).await.unwrap() {
            Response::Pong => break,
            Response::Error(ErrorCode::RateLimited { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("the attacker is not served again: {other:?}"),
        }
    }
    let records = audit(&fed, "admin@bz").await;
    assert!(
        refusals(&records, "liaison@bz", "request-budget") >= refused_needed,
        "budget refusals not audited"
    );
}

/// One identity may hold `max_connections_per_identity` connections (3 here): the
/// next is refused with `Unavailable` on its first stream and closed, audited;
/// another user is not affected, and once one of the three closes a new one is
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_identity_cap_are_refused() {
    const CAP: usize = 3;
    let mut fed = federation();
    fed.set_relay_option("bz", "max_connections_per_identity", (CAP as i64).into())
        .unwrap();
    fed.start("bz").unwrap();
    let mut open = Vec::new();
    for _ in 0..CAP {
        let (ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
        assert_eq!(raw_request(&conn, &Request::Ping).await, Ok(Response::Pong));
        open.push((ep, conn));
    }
    let (_ep, extra) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    match raw_request(&extra, &Request::Ping).await {
        Ok(Response::Error(ErrorCode::Unavailable { reason })) => {
            assert!(reason.contains("already has 3 connections"), "{reason}")
        }
        other => panic!("connection {} of one identity: {other:?}", CAP + 1),
    }
    tokio::time::timeout(Duration::from_secs(10), extra.closed())
        .await
        .expect("the refused connection was not closed");
    others_are_served(&fed, "bz", "admin@bz").await;

    // One closes: a new connection is accepted (once the relay has seen the close).
    let (ep, first) = open.remove(0);
    first.close(0u32.into(), b"bye");
    ep.wait_idle().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
        match raw_request(&conn, &Request::Ping).await {
            Ok(Response::Pong) => break,
            other => assert!(
                Instant::now() < deadline,
                "no connection after one closed: {other:?}"
            ),
        }
    }
    let records = audit(&fed, "admin@bz").await;
    assert!(
        records.iter().any(|r| r.kind == "connection"
            && r.actor == "liaison@bz"
            && r.action == "connection-cap"),
        "the refused connection is not audited"
    );
}

/// Subscriptions cost a request like any other: a flood of `Subscribe` streams
/// beyond the identity's burst is refused with `RateLimited` (audited) before the
/// frame is read; of those let through, each takes the place of the push channel
/// before it (or, if that does not end in time, is refused as a second channel), so
/// a device holds one delivery task per connection: every served channel but the
/// last is ended by the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_floods_are_rate_limited() {
    const STREAMS: usize = 60;
    let mut fed = federation();
    fed.set_relay_option("bz", "requests_per_second", 10.into())
        .unwrap();
    fed.start("bz").unwrap();
    let (_ep, conn) = raw_user_connect(&fed, "liaison@bz").await.unwrap();
    let frame = wire::encode_frame(&Request::Subscribe, DEFAULT_MAX_FRAME).unwrap();
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        let _ = send.finish();
        streams.push((send, recv));
    }
    let took = started.elapsed();
    let (mut served, mut second, mut limited) = (0u64, 0u64, 0u64);
    for (_, recv) in streams.iter_mut() {
        let payload = first_frame(recv).await;
        if let Ok(Response::Error(ErrorCode::RateLimited { .. })) =
            wire::decode_payload::<Response>(&payload)
        {
            limited += 1;
        } else if let Ok(wire::Push::CaughtUp) = wire::decode_payload::<wire::Push>(&payload) {
            served += 1;
        } else if let Ok(wire::Push::Closed(ErrorCode::BadRequest { reason })) =
            wire::decode_payload::<wire::Push>(&payload)
        {
            assert!(reason.contains("one per connection"), "{reason}");
            second += 1;
        } else {
            panic!("neither CaughtUp, a second push channel nor RateLimited: {payload:?}");
        }
    }
    eprintln!(
        "{STREAMS} subscriptions in {took:?}: {served} served, {second} refused as a second \
         push channel, {limited} rate limited"
    );
    // A burst of 20 and then 10 per second get past the rate limit.
    let allowed = 20 + (took.as_secs_f64() * 10.0).ceil() as u64 + 1;
    assert!(served >= 1, "no push channel was served");
    // One push channel per connection: all served ones but one end.
    let mut still_open = 0;
    for (_, recv) in streams.iter_mut() {
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => rest.extend_from_slice(&buf[..n]),
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await;
        if ended.is_err() {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 1, "push channels open on one connection");
    assert!(served + second >= 20, "the burst was not let through");
    assert!(
        served + second <= allowed,
        "{} passed in {took:?}",
        served + second
    );
    assert_eq!(served + second + limited, STREAMS as u64);
    others_are_served(&fed, "bz", "admin@bz").await;
    drop(streams);
    let records = audit(&fed, "admin@bz").await;
    assert!(refusals(&records, "liaison@bz", "rate-limit") as u64 >= limited);
    assert!(refusals(&records, "liaison@bz", "subscribe") as u64 >= second);
}
