use super::keys;
use super::{BATCH, DELIVER_MARGIN, MIN_MAX_FRAME, batch_len, delivery_budget, refused_at_send};
use crate::core::apply::{check_envelope, check_epoch};
use crate::core::outbox::encoded_len;
use crate::core::peers::{AuditThrottle, RecentNames, Record, TokenBucket};
use crate::error::EntryRefusal;
use kring_protocol::wire::{FedBody, FedItem};
use std::time::{Duration, Instant};

#[test]
fn deliveries_are_filled_up_to_the_frame_and_carry_at_least_one_item() {
    let budget = delivery_budget(8 << 20);
    assert_eq!(budget, (8 << 20) - DELIVER_MARGIN);
    let four = 4 << 20;
    // Two notices of about 4 MiB do not fit one frame together: one each.
    assert_eq!(batch_len(&[four + 100, four + 100], budget), 1);
    // Whatever the size, one item goes.
    assert_eq!(batch_len(&[20 << 20, 10], budget), 1);
    assert_eq!(batch_len(&[10, 20 << 20], budget), 1);
    assert_eq!(batch_len(&[budget / 2, budget / 2, 1], budget), 2);
    // Small items: up to the item count.
    assert_eq!(batch_len(&[100; 200], budget), BATCH);
    assert_eq!(batch_len(&[], budget), 0);
    // The smallest frame carries the largest notice.
    let message = vec![0u8; kring_protocol::mls::MAX_MESSAGE_BYTES];
    let item = FedItem {
        seq: u64::MAX,
        body: FedBody::Notice {
            community: format!("{}@{}", "c".repeat(60), "r".repeat(63)),
            notice_id: uuid::Uuid::from_u128(1),
            sender: format!("{}@{}", "u".repeat(60), "r".repeat(63)),
            message,
        },
    };
    assert!(encoded_len(&item) <= delivery_budget(MIN_MAX_FRAME));
    // And what fits the budget fits a frame with the delivery's envelope.
    let request = kring_protocol::wire::FedRequest::Deliver { items: vec![item] };
    kring_protocol::wire::encode_frame(&request, MIN_MAX_FRAME).unwrap();
}

#[test]
fn a_notice_above_the_peers_accreditation_now_is_not_sent() {
    let label = |t: &str| t.parse::<kring_policy::Label>().unwrap().to_bytes();
    let entry = |l: Vec<u8>| FedBody::NoticeEntry {
        community: "d@bz".into(),
        seq: 3,
        entry: Some(LogEntry {
            community: "d@bz".into(),
            seq: 3,
            sender: "a@bz".into(),
            ordered_at: 0,
            kind: EntryKind::Notice {
                notice_id: uuid::Uuid::from_u128(7),
                label: l,
                epoch: 1,
            },
            message: Vec::new(),
        }),
    };
    let low: kring_policy::Clearance = "NL:DEP-VERTROUWELIJK".parse().unwrap();
    let high: kring_policy::Clearance = "NL:STG-GEHEIM".parse().unwrap();
    let geheim = entry(label("NL:STG-CONFIDENTIEEL"));
    assert!(refused_at_send(&geheim, "post-a", Some(&high)).is_none());
    let (id, why) = refused_at_send(&geheim, "post-a", Some(&low)).unwrap();
    assert_eq!(id, uuid::Uuid::from_u128(7));
    assert!(why.contains("post-a"), "{why}");
    // No accreditation known: nothing labelled goes.
    assert!(refused_at_send(&geheim, "post-a", None).is_some());
    // An entry already withheld, and commits, are not notices.
    let withheld = FedBody::NoticeEntry {
        community: "d@bz".into(),
        seq: 3,
        entry: None,
    };
    assert!(refused_at_send(&withheld, "post-a", None).is_none());
    // A notice for the hub whose label cannot be read is not sent either.
    let notice = FedBody::Notice {
        community: "d@bz".into(),
        notice_id: uuid::Uuid::from_u128(8),
        sender: "a@post-a".into(),
        message: b"not mls".to_vec(),
    };
    assert!(refused_at_send(&notice, "bz", Some(&high)).is_some());
}

#[test]
fn peer_requests_are_rate_limited() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(10, t0);
    for _ in 0..20 {
        bucket.take(t0).unwrap();
    }
    let wait = bucket.take(t0).unwrap_err();
    assert!(wait > 0 && wait <= 100, "{wait}");
    bucket.take(t0 + Duration::from_millis(100)).unwrap();
}

#[test]
fn refusal_records_of_a_peer_are_capped_per_window() {
    let t0 = Instant::now();
    let window = Duration::from_secs(60);
    let mut t = AuditThrottle::default();
    for _ in 0..3 {
        let v = t.admit(t0, 3, window);
        assert_eq!((v.unrecorded, v.record), (None, Record::Full));
    }
    assert_eq!(t.admit(t0, 3, window).record, Record::Note);
    for _ in 0..1000 {
        assert_eq!(t.admit(t0, 3, window).record, Record::Count);
    }
    // Not before the window ends; then once.
    assert_eq!(t.flush(t0 + Duration::from_secs(59), window), None);
    let later = t0 + window;
    assert_eq!(t.flush(later, window), Some(1001));
    assert_eq!(t.flush(later, window), None);
    let v = t.admit(later, 3, window);
    assert_eq!((v.unrecorded, v.record), (None, Record::Full));
    // A window's count also comes with the next window's first refusal.
    for _ in 0..5 {
        t.admit(later, 3, window);
    }
    let v = t.admit(later + window, 3, window);
    assert_eq!((v.unrecorded, v.record), (Some(3), Record::Full));
}

#[test]
fn requesters_of_one_peer_are_bounded() {
    let t0 = Instant::now();
    let mut names = RecentNames::new(2, Duration::from_secs(10));
    assert!(names.admit("a@post-a", t0));
    assert!(names.admit("b@post-a", t0));
    assert!(names.admit("a@post-a", t0));
    assert!(!names.admit("c@post-a", t0));
    assert!(names.admit("c@post-a", t0 + Duration::from_secs(10)));
}

use kring_protocol::mls::{MessageHeader, MessageKind};
use kring_protocol::wire::{CommunitySummary, EntryKind, LogEntry};

fn header(epoch: u64, kind: MessageKind) -> MessageHeader {
    MessageHeader {
        group_id: b"d@bz".to_vec(),
        epoch,
        kind,
    }
}

fn after(epoch: u64) -> CommunitySummary {
    CommunitySummary {
        id: "d@bz".into(),
        max_label: "NL:STG-GEHEIM".into(),
        admins: Vec::new(),
        members: Vec::new(),
        epoch,
        last_seq: 0,
    }
}

#[test]
fn handshakes_follow_the_epoch_held_here() {
    let commit = header(4, MessageKind::Commit);
    let proposal = header(4, MessageKind::Proposal);
    let hs = EntryKind::Handshake { epoch: 4 };
    // The next commit of a community whose handshakes all came here.
    check_epoch(&commit, &hs, Some(&after(5)), 4, true).unwrap();
    check_epoch(&proposal, &hs, Some(&after(4)), 4, true).unwrap();
    // After a time without members here, a later epoch is fine; an earlier never.
    check_epoch(&commit, &hs, Some(&after(5)), 2, false).unwrap();
    assert_eq!(
        check_epoch(&commit, &hs, Some(&after(5)), 2, true),
        Err(EntryRefusal::HandshakeEpoch { epoch: 4, held: 2 })
    );
    assert_eq!(
        check_epoch(&commit, &hs, Some(&after(5)), 5, false),
        Err(EntryRefusal::HandshakeEpoch { epoch: 4, held: 5 })
    );
    // The community after it must be where the message leads.
    let leads = |after| Err(EntryRefusal::HandshakeLeads { epoch: 4, after });
    assert_eq!(
        check_epoch(&commit, &hs, Some(&after(4)), 4, true),
        leads(4)
    );
    assert_eq!(
        check_epoch(&commit, &hs, Some(&after(9)), 4, true),
        leads(9)
    );
    assert_eq!(
        check_epoch(&proposal, &hs, Some(&after(5)), 4, true),
        leads(5)
    );
}

#[test]
fn notices_are_never_of_a_later_epoch() {
    let kind = EntryKind::Notice {
        notice_id: uuid::Uuid::from_u128(1),
        label: Vec::new(),
        epoch: 3,
    };
    let app = header(3, MessageKind::Application { aad: Vec::new() });
    check_epoch(&app, &kind, None, 3, true).unwrap();
    check_epoch(&app, &kind, None, 5, true).unwrap();
    assert_eq!(
        check_epoch(&app, &kind, None, 2, true),
        Err(EntryRefusal::NoticeEpoch {
            epoch: 3,
            current: 2
        })
    );
    check_epoch(&app, &kind, Some(&after(3)), 2, true).unwrap();
}

#[test]
fn the_envelope_names_its_community_and_seq() {
    let entry = |community: &str, seq: u64| LogEntry {
        community: community.into(),
        seq,
        sender: "a@bz".into(),
        ordered_at: 0,
        kind: EntryKind::Handshake { epoch: 0 },
        message: b"not mls".to_vec(),
    };
    let e = check_envelope("d@bz", 7, &entry("e@bz", 7)).unwrap_err();
    assert_eq!(
        e,
        EntryRefusal::OtherCommunity {
            seq: 7,
            community: "d@bz".into(),
            named: "e@bz".into()
        }
    );
    assert_eq!(e.to_string(), "entry 7 of d@bz names community e@bz");
    let e = check_envelope("d@bz", 7, &entry("d@bz", 8)).unwrap_err();
    assert!(
        matches!(e, EntryRefusal::OtherSeq { named: 8, .. }),
        "{e:?}"
    );
    // Then the message itself (here: not one).
    let e = check_envelope("d@bz", 7, &entry("d@bz", 7)).unwrap_err();
    assert!(
        matches!(
            &e,
            EntryRefusal::Message {
                error: kring_protocol::mls::MlsError::Malformed { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn outbox_items_are_held_back_until_durable() {
    // `pending` sends only what the store's watermark releases: that needs the
    // outbox keys to be a gated sequence, named by `outbox_prefix`.
    assert!(crate::store::is_gated(&keys::outbox("nctv", 1)));
    assert!(!crate::store::is_gated(&keys::outbox_next("nctv")));
    assert!(!crate::store::is_gated(&keys::applied("nctv")));
    let key = keys::outbox("nctv", 7);
    assert_eq!(
        &key[..key.len() - 8],
        keys::outbox_prefix("nctv").as_slice()
    );
}
