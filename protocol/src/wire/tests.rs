use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use super::validate::*;
use super::*;
use crate::revocation::{RevocationStatement, WipeOrder};
use proptest::prelude::*;

fn roundtrip<T: Serialize + DeserializeOwned + Validate + PartialEq + std::fmt::Debug>(msg: T) {
    let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.feed(&frame).unwrap();
    let payload = dec.next_payload().unwrap().unwrap();
    assert_eq!(decode_payload::<T>(&payload).unwrap(), msg);
    assert!(dec.next_payload().unwrap().is_none());
    dec.finish().unwrap();
}

#[test]
fn requests_round_trip() {
    roundtrip(Request::Ping);
    roundtrip(Request::FileNotice {
        community: "desinformatie@bz".into(),
        notice_id: Uuid::from_u128(7),
        message: vec![1, 2, 3],
    });
    roundtrip(Request::FileNotices {
        community: "desinformatie@bz".into(),
        notices: vec![NoticeUpload {
            notice_id: Uuid::from_u128(8),
            message: vec![4, 5],
        }],
    });
    roundtrip(Response::Filed {
        hub: "bz".into(),
        epoch: 3,
        seqs: vec![Some(4), None],
    });
    roundtrip(Request::Handshake {
        community: "a@b".into(),
        message: vec![9; 100],
        welcome: Some(vec![4; 10]),
    });
}

#[test]
fn responses_and_pushes_round_trip() {
    roundtrip(Response::Error(ErrorCode::WrongEpoch { current: 4 }));
    roundtrip(Response::Error(ErrorCode::PolicyDenied {
        reason: "level STG-GEHEIM is above clearance STG-CONFIDENTIEEL".into(),
    }));
    roundtrip(Push::Entry(LogEntry {
        community: "x@bz".into(),
        seq: 12,
        sender: "analist@post-a".into(),
        ordered_at: 1_700_000_000,
        kind: EntryKind::Notice {
            notice_id: Uuid::from_u128(1),
            label: vec![1, 0, 3],
            epoch: 2,
        },
        message: vec![0; 64],
    }));
}

#[test]
fn oversized_frame_is_refused_before_reading_payload() {
    let mut dec = FrameDecoder::new(16);
    dec.feed(&(1_000_000u32).to_be_bytes()).unwrap();
    assert_eq!(
        dec.next_payload(),
        Err(WireError::TooLarge {
            len: 1_000_000,
            max: 16
        })
    );
    let big = Request::PublishKeyPackages {
        key_packages: vec![vec![0; 64]],
        last_resort: None,
    };
    assert!(matches!(
        encode_frame(&big, 16),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn truncated_frame_is_reported() {
    let frame = encode_frame(&Request::ListCommunities, DEFAULT_MAX_FRAME).unwrap();
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.feed(&frame[..frame.len() - 1]).unwrap();
    assert_eq!(dec.next_payload(), Ok(None));
    assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));
}

#[test]
fn trailing_bytes_and_wrong_version_are_refused() {
    let frame = encode_frame(&Request::Ping, DEFAULT_MAX_FRAME).unwrap();
    let mut payload = frame[FRAME_HEADER..].to_vec();
    payload.push(0);
    assert_eq!(
        decode_payload::<Request>(&payload),
        Err(WireError::TrailingBytes(1))
    );
    let other = postcard::to_stdvec(&Versioned {
        version: 9,
        body: Request::Ping,
    })
    .unwrap();
    assert_eq!(
        decode_payload::<Request>(&other),
        Err(WireError::Version { got: 9 })
    );
}

#[test]
fn ids_are_validated() {
    for bad in ["", "UPPER@bz", "a@b@c", "noat", "@bz", "x@", "sp ace@bz"] {
        let r = Request::CommunityInfo {
            community: bad.into(),
        };
        assert!(r.validate().is_err(), "{bad:?} accepted");
    }
    let long = format!("{}@bz", "a".repeat(200));
    assert!(Request::FetchKeyPackage { user: long }.validate().is_err());
    Request::FetchKeyPackage {
        user: "analist@post-a".into(),
    }
    .validate()
    .unwrap();
}

/// One request acknowledges a run of entries of several communities: at least one
/// cursor, at most [`limits::MAX_LIST`], each naming a community; it travels as the
/// last request variant.
#[test]
fn many_cursors_are_acknowledged_in_one_bounded_request() {
    let mark = |community: &str, seq| LogMark {
        community: community.into(),
        seq,
    };
    let many = Request::AckMany {
        marks: vec![mark("a@bz", 3), mark("b@nctv", 9)],
    };
    many.validate().unwrap();
    let frame = encode_frame(&many, DEFAULT_MAX_FRAME).unwrap();
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.feed(&frame).unwrap();
    let payload = dec.next_payload().unwrap().unwrap();
    assert_eq!(decode_payload::<Request>(&payload).unwrap(), many);
    assert!(Request::AckMany { marks: Vec::new() }.validate().is_err());
    let too_many = vec![mark("a@bz", 1); limits::MAX_LIST + 1];
    assert!(Request::AckMany { marks: too_many }.validate().is_err());
    let unqualified = vec![mark("a@bz", 1), mark("nowhere", 2)];
    assert!(Request::AckMany { marks: unqualified }.validate().is_err());
    let tag = |r: &Request| encode_frame(r, DEFAULT_MAX_FRAME).unwrap()[FRAME_HEADER + 1];
    let last_before = Request::GetBlob {
        community: "a@bz".into(),
        notice_id: uuid::Uuid::nil(),
        blob: crate::attachment::BlobId([0; 32]),
        offset: 0,
    };
    assert_eq!(tag(&many), tag(&last_before) + 1);
    // One community goes as a plain Ack, many as AckMany in requests of at most
    // MAX_LIST.
    assert_eq!(
        Request::acknowledging(vec![mark("a@bz", 4)]),
        [Request::Ack {
            community: "a@bz".into(),
            seq: 4
        }]
    );
    assert!(Request::acknowledging(Vec::new()).is_empty());
    let lots = Request::acknowledging(vec![mark("a@bz", 1); limits::MAX_LIST + 1]);
    assert_eq!(lots.len(), 2);
    assert!(lots.iter().all(|r| r.validate().is_ok()));
}

/// Postcard numbers enum variants by position: a variant added in the middle
/// would make an older peer read one request as another. New ones go last.
#[test]
fn variant_positions_are_stable() {
    let tag = |frame: Vec<u8>| frame[FRAME_HEADER + 1];
    let frame = |r: &Request| encode_frame(r, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(tag(frame(&Request::Subscribe)), 5);
    assert_eq!(tag(frame(&Request::Ping)), 12);
    let filing = Request::FileNotices {
        community: "x@bz".into(),
        notices: Vec::new(),
    };
    assert_eq!(tag(frame(&filing)), 14);
    let answer = |r: &Response| encode_frame(r, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(tag(answer(&Response::Pong)), 9);
    let filed = Response::Filed {
        hub: "bz".into(),
        epoch: 1,
        seqs: Vec::new(),
    };
    assert_eq!(tag(answer(&filed)), 12);
    assert_eq!(tag(frame(&Request::Trust)), 15);
    let trust = Response::Trust(TrustState {
        relays: Vec::new(),
        statements: Vec::new(),
        crls: Vec::new(),
    });
    assert_eq!(tag(answer(&trust)), 13);
    assert_eq!(tag(frame(&Request::AuditHead)), 16);
    let head = Response::AuditHead(crate::audit::AuditHeadPage {
        head: crate::audit::SignedAuditHead {
            relay: "bz".into(),
            records: 1,
            hash: [0; 32],
            at: 0,
            signature: vec![0; crate::audit::SIGNATURE_LEN],
            chain: vec![vec![0]],
        },
        certificates: Vec::new(),
    });
    assert_eq!(tag(answer(&head)), 14);
    let page = Request::TrustStatements { after: None };
    assert_eq!(tag(frame(&page)), 17);
    let statements = Response::TrustStatements {
        statements: Vec::new(),
        more: false,
    };
    assert_eq!(tag(answer(&statements)), 15);
    let item = |body: FedBody| {
        let request = FedRequest::Deliver {
            items: vec![FedItem { seq: 1, body }],
        };
        // After the tag of `Deliver`: item count, item seq, the body's variant.
        encode_frame(&request, DEFAULT_MAX_FRAME).unwrap()[FRAME_HEADER + 4]
    };
    let notice_entry = FedBody::NoticeEntry {
        community: "x@bz".into(),
        seq: 1,
        entry: None,
    };
    assert_eq!(item(notice_entry), 6);
    let welcomes = FedBody::Welcomes {
        users: vec!["a@bz".into()],
        community: "x@bz".into(),
        welcome: Vec::new(),
        ratchet_tree: Vec::new(),
    };
    assert_eq!(item(welcomes), 7);
    let retention = FedBody::Retention {
        community: "x@bz".into(),
        seconds: 86_400,
    };
    assert_eq!(item(retention), 8);
    let wipe = WipeOrder {
        user: "a@bz".into(),
        organisation: "bz".into(),
        ordered_at: 0,
        revoker_chain: Vec::new(),
        signature: Vec::new(),
    };
    assert_eq!(tag(answer(&Response::WipeOrdered(wipe.clone()))), 17);
    let statement = RevocationStatement {
        user: "a@bz".into(),
        organisation: "bz".into(),
        reason: "r".into(),
        revoked_at: 0,
        revoker_chain: Vec::new(),
        signature: Vec::new(),
    };
    assert_eq!(tag(frame(&Request::RevokeAndWipe { statement, wipe })), 19);
    assert_eq!(tag(frame(&Request::DeclaredClients)), 20);
    let declared = Response::DeclaredClients {
        organisation: "bz".into(),
        clients: vec!["post-a".into()],
    };
    assert_eq!(tag(answer(&declared)), 18);
    assert_eq!(
        item(FedBody::DeclaredClients {
            clients: vec!["post-a".into()]
        }),
        9
    );
    let code = |c: &ErrorCode| postcard::to_allocvec(c).unwrap()[0];
    assert_eq!(code(&ErrorCode::Internal), 12);
    let unknown = ErrorCode::OutcomeUnknown {
        reason: "no answer from bz".into(),
    };
    assert_eq!(code(&unknown), 13);
}

#[test]
fn refusals_are_bounded() {
    let deliver = |hop: &str, reason: &str| FedRequest::Deliver {
        items: vec![FedItem {
            seq: 1,
            body: FedBody::Refusal {
                notice_id: Uuid::from_u128(1),
                hop: hop.into(),
                reason: reason.into(),
            },
        }],
    };
    deliver("bz->nctv", "not accredited").validate().unwrap();
    let long = "x".repeat(limits::MAX_REASON + 1);
    assert!(deliver("bz", &long).validate().is_err());
    assert!(deliver("", "why").validate().is_err());
    assert!(deliver(&"h".repeat(MAX_HOP + 1), "why").validate().is_err());
    deliver("bz", &bounded_reason(&long)).validate().unwrap();
    // Cut on a character boundary: 'é' is two bytes.
    let accents = "é".repeat(limits::MAX_REASON);
    let cut = bounded_reason(&accents);
    assert!(cut.len() <= limits::MAX_REASON && cut.len() >= limits::MAX_REASON - 1);
    assert!(cut.chars().all(|c| c == 'é'));
    assert_eq!(bounded_reason("short"), "short");
}

#[test]
fn filings_are_bounded() {
    let filing = |n: usize| Request::FileNotices {
        community: "x@bz".into(),
        notices: (0..n)
            .map(|i| NoticeUpload {
                notice_id: Uuid::from_u128(i as u128),
                message: vec![1],
            })
            .collect(),
    };
    assert!(filing(0).validate().is_err());
    filing(1).validate().unwrap();
    filing(limits::MAX_NOTICES_PER_FILING).validate().unwrap();
    assert!(
        filing(limits::MAX_NOTICES_PER_FILING + 1)
            .validate()
            .is_err()
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_payload::<Request>(&bytes);
        let _ = decode_payload::<Response>(&bytes);
        let _ = decode_payload::<Push>(&bytes);
        let mut dec = FrameDecoder::new(256);
        if dec.feed(&bytes).is_ok() {
            while let Ok(Some(p)) = dec.next_payload() {
                let _ = decode_payload::<Request>(&p);
            }
        }
    }

    #[test]
    fn split_feeding_yields_the_same_frames(split in 0usize..64, seq in any::<u64>()) {
        let msg = Request::Ack { community: "c@bz".into(), seq };
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let split = split.min(two.len());
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.feed(&two[..split]).unwrap();
        let mut got = Vec::new();
        while let Some(p) = dec.next_payload().unwrap() { got.push(p); }
        dec.feed(&two[split..]).unwrap();
        while let Some(p) = dec.next_payload().unwrap() { got.push(p); }
        prop_assert_eq!(got.len(), 2);
        for p in got {
            prop_assert_eq!(decode_payload::<Request>(&p).unwrap(), msg.clone());
        }
    }
}
