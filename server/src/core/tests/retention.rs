//! A community's retention period as its hub announces it to this relay: taken
//! only from the hub, within bounds, for a community held here, and fixed by the
//! first announcement.

use super::*;
use crate::core::retention::{MAX_RETENTION_SECS, retention_of};

fn days(n: u64) -> u64 {
    n * kring_protocol::mls::DAY_SECS
}

fn retention(seconds: u64) -> FedBody {
    FedBody::Retention {
        community: "kring@nctv".into(),
        seconds,
    }
}

fn held(bz: &Bz) -> Option<u64> {
    retention_of(&bz.core, &crate::store::Batch::default(), "kring@nctv").unwrap()
}

#[test]
fn a_retention_period_is_taken_only_from_the_hub_within_bounds_for_a_community_held_here() {
    let bz = Bz::open();
    bz.receive_refused(
        "nctv",
        retention(days(30)),
        "kring@nctv",
        "retention period for kring@nctv, which this relay does not hold",
    );
    PeerCommunity::registered(&bz);
    let before = bz.state();
    bz.receive_refused(
        "aivd",
        retention(days(30)),
        "kring@nctv",
        "relay aivd sent the retention period of kring@nctv, whose hub it is not",
    );
    for seconds in [0, MAX_RETENTION_SECS + 1] {
        bz.receive_refused(
            "nctv",
            retention(seconds),
            "kring@nctv",
            &format!("retention period of {seconds} s for kring@nctv is out of bounds"),
        );
    }
    assert_eq!(bz.state(), before);
    assert_eq!(held(&bz), None);
    assert!(bz.audited_as("community-retention").is_empty());
}

#[test]
fn the_first_retention_period_a_hub_announces_is_kept_and_audited_and_a_different_one_refused() {
    let bz = Bz::open();
    PeerCommunity::registered(&bz);
    bz.receive("nctv", retention(days(30)));
    assert_eq!(held(&bz), Some(days(30)));
    let events = bz.audited_as("community-retention");
    assert!(
        matches!(events.as_slice(), [e] if e.kind == AuditKind::Membership
            && e.actor == "nctv"
            && e.subject == "kring@nctv"
            && e.detail == "log entries kept 30 day(s)"),
        "{events:#?}"
    );

    // The hub announces it with every commit: the same period changes nothing.
    let before = (bz.state(), bz.audited().len());
    bz.receive("nctv", retention(days(30)));
    assert_eq!((bz.state(), bz.audited().len()), before);

    // A different one is refused; the first stays.
    bz.receive_refused(
        "nctv",
        retention(days(7)),
        "kring@nctv",
        "relay nctv announced a retention period of 7 day(s) for kring@nctv, which keeps \
         log entries 30 day(s) since it was created",
    );
    assert_eq!(held(&bz), Some(days(30)));
    assert_eq!(bz.audited_as("community-retention").len(), 1);
}
