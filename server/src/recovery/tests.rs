use std::collections::BTreeSet;

use super::*;
use crate::records::CommunityRecord;
use crate::store::{Batch, Engine};

#[test]
fn queued_items_move_past_what_the_peer_applied() {
    // The peer applied up to 80; 50 was next at the restore: 50 → 81.
    assert_eq!(outbox_shift(50, 80), 31);
    // The peer is behind the backup: nothing moves.
    assert_eq!(outbox_shift(50, 40), 0);
    assert_eq!(outbox_shift(50, 49), 0);
    assert_eq!(outbox_shift(1, 0), 0);
}

#[test]
fn a_device_past_the_log_moves_the_numbering_and_one_that_saw_reused_seqs_rewinds() {
    // Before anything new was ordered: the log moves past the device.
    assert_eq!(
        device_verdict(30, 20, 20, None, true),
        DeviceVerdict {
            raise_to: Some(30),
            rewind_to: None
        }
    );
    // Behind the log: nothing to do.
    assert_eq!(
        device_verdict(10, 20, 20, None, true),
        DeviceVerdict {
            raise_to: None,
            rewind_to: None
        }
    );
    // New entries from 21 on; the device saw old ones up to 25: back to 20.
    assert_eq!(
        device_verdict(25, 30, 20, Some(21), true),
        DeviceVerdict {
            raise_to: None,
            rewind_to: Some(20)
        }
    );
    // ... and up to 40, past the log: both.
    assert_eq!(
        device_verdict(40, 30, 20, Some(21), true),
        DeviceVerdict {
            raise_to: Some(40),
            rewind_to: Some(20)
        }
    );
    // It stopped before the resumption: nothing.
    assert_eq!(
        device_verdict(20, 30, 20, Some(21), true),
        DeviceVerdict {
            raise_to: None,
            rewind_to: None
        }
    );
}

#[test]
fn a_device_moves_the_numbering_only_while_recovering_and_only_so_far() {
    // After the recovery: a cursor far past the log moves nothing.
    assert_eq!(device_verdict(u64::MAX, 30, 20, None, false).raise_to, None);
    assert_eq!(device_verdict(40, 30, 20, None, false).raise_to, None);
    // While recovering: at most MAX_RAISE past where the log stood at the restore.
    assert_eq!(
        device_verdict(u64::MAX, 30, 20, None, true).raise_to,
        Some(20 + MAX_RAISE)
    );
    // Already that far: nothing more.
    assert_eq!(
        device_verdict(u64::MAX, 20 + MAX_RAISE, 20, None, true).raise_to,
        None
    );
    assert_eq!(capped_raise(u64::MAX, u64::MAX), u64::MAX);
    assert_eq!(outbox_shift(1, u64::MAX), u64::MAX - 1);
}

#[test]
fn the_next_seq_is_refused_rather_than_wrapped() {
    let mut rec = CommunityRecord {
        id: "x@bz".into(),
        hub: "bz".into(),
        max_label: Default::default(),
        admins: Vec::new(),
        members: Vec::new(),
        epoch: 0,
        last_seq: 41,
        created_by: "a@bz".into(),
        created_at: 0,
    };
    assert_eq!(crate::relay::next_seq(&rec).unwrap(), 42);
    rec.last_seq = u64::MAX;
    let err = crate::relay::next_seq(&rec).unwrap_err();
    assert!(
        matches!(err, RelayError::Refused(ErrorCode::Unavailable { .. })),
        "{err:?}"
    );
}

#[test]
fn marks_count_only_from_relays_with_members() {
    let members: Vec<String> = ["a@bz", "b@nctv"].iter().map(|s| s.to_string()).collect();
    assert!(has_members(&members, "nctv"));
    assert!(!has_members(&members, "aivd"), "a relay without members");
    assert!(!has_members(&members, ""));
    // Recovered entries: sent by this relay, or by users homed at member relays.
    assert!(plausible_sender(&members, "bz", "bz"));
    assert!(plausible_sender(&members, "bz", "x@bz"));
    assert!(plausible_sender(&members, "bz", "y@nctv"));
    assert!(!plausible_sender(&members, "bz", "z@aivd"));
    assert!(!plausible_sender(&members, "bz", "aivd"));
}

#[test]
fn a_fetch_log_answer_keeps_one_entry_and_stays_within_its_budget() {
    let take = |sizes: &[usize], max: usize| {
        let (mut taken, mut used) = (0usize, 0usize);
        for &n in sizes {
            if !fits_budget(taken, used, n, max) {
                break;
            }
            taken += 1;
            used += n;
        }
        (taken, used)
    };
    // One entry larger than the budget still goes alone.
    assert_eq!(take(&[500, 10], 100), (1, 500));
    // Otherwise the answer never passes the budget.
    assert_eq!(take(&[40, 40, 40], 100), (2, 80));
    assert_eq!(take(&[50, 50, 1], 100), (2, 100));
    assert_eq!(take(&[], 100), (0, 0));
}

#[test]
fn missing_ranges_name_every_gap() {
    assert_eq!(
        missing_ranges([11, 12, 15, 18], 10, 20),
        vec![(13, 14), (16, 17), (19, 20)]
    );
    assert_eq!(missing_ranges([], 10, 12), vec![(11, 12)]);
    assert_eq!(
        missing_ranges([5, 11, 12], 10, 12),
        Vec::<(u64, u64)>::new()
    );
    assert_eq!(missing_ranges([11, 30], 10, 12), vec![(12, 12)]);
    assert_eq!(missing_ranges([], 12, 12), Vec::<(u64, u64)>::new());
    assert_eq!(ranges_text(&[(13, 14), (16, 16)]), "13-14, 16");
    assert_eq!(
        missing_ranges([u64::MAX], u64::MAX - 2, u64::MAX),
        vec![(u64::MAX - 1, u64::MAX - 1)]
    );
}

#[test]
fn ordering_waits_only_for_peers_with_members() {
    let members: Vec<String> = ["a@bz", "b@nctv", "c@post-a", "d@nctv"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let awaiting: BTreeSet<String> = ["nctv".to_string(), "aivd".to_string()].into();
    let blocking = blocking_peers(&members, "bz", &awaiting);
    assert_eq!(blocking.into_iter().collect::<Vec<_>>(), vec!["nctv"]);
    let only_local = vec!["a@bz".to_string()];
    assert!(blocking_peers(&only_local, "bz", &awaiting).is_empty());
}

#[test]
fn a_restored_store_waits_for_its_peers_and_a_fresh_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let e = crate::store::SledEngine::open(dir.path()).unwrap();
    let peers: Vec<crate::config::PeerToml> = Vec::new();
    let fresh = Recovery::open(&e, "bz", &peers).unwrap();
    assert!(!fresh.restored() && !fresh.active());
    let header = crate::backup::BackupHeader {
        format: crate::backup::FORMAT,
        relay: "bz".into(),
        created_at: 5,
        pairs: 0,
        sha256: String::new(),
        chain: Vec::new(),
        signature: String::new(),
    };
    e.apply(mark_restoring(&header).unwrap()).unwrap();
    let err = Recovery::open(&e, "bz", &peers).unwrap_err().to_string();
    assert!(err.contains("interrupted restore"), "{err}");
    e.apply(mark_restored(&header, 6).unwrap()).unwrap();
    let restored = Recovery::open(&e, "bz", &peers).unwrap();
    assert!(restored.restored() && restored.active());
    assert!(load(&e).unwrap().unwrap().initialized);
    // Ordering with no peer awaited records where numbering resumed, once.
    let mut b = Batch::default();
    let members = vec!["a@bz".to_string()];
    restored
        .may_order(&e, &mut b, "bz", "x@bz", &members, 8)
        .unwrap();
    restored
        .may_order(&e, &mut b, "bz", "x@bz", &members, 9)
        .unwrap();
    assert_eq!(
        b.get_obj::<u64>(&e, &keys::resumed("x@bz")).unwrap(),
        Some(8)
    );
    assert!(
        restored.may_create(&e, "bz", "y@bz").is_err(),
        "not while recovering"
    );
}
