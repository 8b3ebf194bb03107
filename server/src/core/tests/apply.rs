//! Applying a peer's federation items: each exactly once, a refused one rolled
//! back, audited and skipped while the applied mark moves past it; entries only
//! from their hub and only as their MLS message says; notices only within the
//! accreditations at this hop; refusal reports only from the relay a notice went
//! to.

use super::*;
use crate::core::apply::{MAX_PEER_COMMUNITIES, MAX_PEER_COMMUNITIES_PER_USER};

fn declared(clients: &[&str]) -> FedBody {
    FedBody::DeclaredClients {
        clients: clients.iter().map(|c| c.to_string()).collect(),
    }
}

fn item(seq: u64, body: FedBody) -> FedItem {
    FedItem { seq, body }
}

fn declared_clients(bz: &Bz, peer: &str) -> Option<Vec<String>> {
    get_obj(bz.core.engine(), &fed_keys::declared_clients(peer)).unwrap()
}

fn refusal(notice_id: Uuid, hop: &str) -> FedBody {
    FedBody::Refusal {
        notice_id,
        hop: hop.to_string(),
        reason: "the label is above the accreditation".into(),
    }
}

/// How many Welcomes wait for `user`'s devices.
fn welcomes_waiting(bz: &Bz, user: &str) -> usize {
    bz.core
        .engine()
        .scan(&keys::welcome_ref_prefix(user), None, usize::MAX)
        .unwrap()
        .len()
}

/// The hops that refused notice `id`, as its record here says.
fn refusing_hops(bz: &Bz, id: Uuid) -> Vec<String> {
    let rec = bz.notice_record(id).unwrap();
    rec.refusals.into_iter().map(|r| r.hop).collect()
}

/// The store is as `before` the refused entry, and knows no `kring@nctv`.
#[track_caller]
fn assert_nothing_registered(bz: &Bz, before: &[(Vec<u8>, Vec<u8>)]) {
    assert_eq!(bz.state(), before);
    assert_eq!(bz.core.community("kring@nctv").unwrap(), None);
}

fn sent(items: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    items.iter().map(|(p, k)| (p.to_string(), *k)).collect()
}

// ----- exactly once ----------------------------------------------------------------

#[test]
fn an_item_already_applied_is_skipped_and_leaves_the_store_as_it_was() {
    let bz = Bz::open();
    let (applied, cx) = bz.deliver(
        "nctv",
        vec![item(1, declared(&["aivd"])), item(2, declared(&["bz"]))],
    );
    assert_eq!(applied.unwrap(), 2);
    assert!(cx.wrote > 0);
    let before = bz.state();

    // A retry after a lost acknowledgement applies nothing again.
    let (applied, cx) = bz.deliver(
        "nctv",
        vec![
            item(1, declared(&["post-a"])),
            item(2, declared(&["post-a"])),
        ],
    );
    assert_eq!(applied.unwrap(), 2);
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.state(), before);
    assert_eq!(bz.applied("nctv"), 2);

    // An old item among new ones is skipped; the mark stays at the newest.
    let (applied, _) = bz.deliver(
        "nctv",
        vec![item(3, declared(&["post-a"])), item(2, declared(&["aivd"]))],
    );
    assert_eq!(applied.unwrap(), 3);
    assert_eq!(bz.applied("nctv"), 3);
    assert_eq!(declared_clients(&bz, "nctv"), Some(vec!["post-a".into()]));
    // Each peer's items are numbered on their own.
    assert_eq!(bz.applied("aivd"), 0);
    assert!(bz.item_refusals("nctv").is_empty());
}

#[test]
fn a_refused_item_is_rolled_back_audited_and_skipped_without_holding_up_the_items_around_it() {
    let bz = Bz::open();
    let garbage = FedBody::Crl {
        crl: vec![1, 2, 3],
        issuer: vec![4, 5, 6],
    };
    let (applied, cx) = bz.deliver(
        "nctv",
        vec![
            item(1, declared(&["aivd"])),
            item(2, garbage),
            item(3, declared(&["post-a"])),
        ],
    );
    assert_eq!(applied.unwrap(), 3);
    assert!(cx.wrote > 0);
    assert!(cx.sent.is_empty());
    assert_eq!(bz.applied("nctv"), 3);
    assert_eq!(declared_clients(&bz, "nctv"), Some(vec!["post-a".into()]));
    let refusals = bz.item_refusals("nctv");
    assert!(
        matches!(refusals.as_slice(), [(subject, detail)]
            if subject == "item 2" && detail.contains("issuer certificate unreadable")),
        "{refusals:?}"
    );
    assert!(
        bz.core
            .engine()
            .scan(crate::keyspace::CRL, None, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(bz.core.revocations().crl_issuers(), 0);
    let metrics = bz.core.metrics().encode();
    assert!(
        metrics.contains(
            "kring_relay_refusals_total{kind=\"federation-item\",reason=\"bad-request\"} 1"
        ),
        "{metrics}"
    );
    // The audit chain, written past a rolled-back item, still verifies.
    bz.assert_audit_chain_verifies();
}

#[test]
fn an_item_the_store_cannot_read_fails_the_delivery_and_moves_nothing() {
    let bz = Bz::open();
    let (community, entry) = PeerCommunity::adding_liaison_at_bz(&bz);
    bz.put(keys::community("kring@nctv"), vec![0xff; 4]);
    let before = (bz.state(), bz.audited().len());
    let (applied, cx) = bz.deliver(
        "nctv",
        vec![
            item(1, declared(&["aivd"])),
            item(2, community.as_entry(entry)),
        ],
    );
    assert!(
        matches!(&applied, Err(RelayError::Corrupt { .. })),
        "{applied:?}"
    );
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.applied("nctv"), 0);
    assert_eq!((bz.state(), bz.audited().len()), before);
}

// ----- notices forwarded to this relay as the hub --------------------------------------

#[test]
fn a_notice_forwarded_for_a_user_of_another_relay_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let id = Uuid::from_u128(1);
    let notice = FedBody::Notice {
        community: "kring@bz".into(),
        notice_id: id,
        sender: "liaison@aivd".into(),
        message: liaison.notice("NL:STG-CONFIDENTIEEL"),
    };
    let before = bz.state();
    let cx = bz.receive_refused(
        "nctv",
        notice,
        "kring@bz",
        "liaison@aivd is not a user of relay nctv",
    );
    assert!(cx.sent.is_empty());
    assert_eq!(bz.state(), before);
    assert_eq!(bz.notice_record(id), None);
}

#[test]
fn a_forwarded_notice_the_hub_cannot_order_is_refused_back_to_the_filers_home_relay() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let not_member = ErrorCode::NotMember.to_string();
    let cases = [
        (
            "kring@bz",
            b"garbage".to_vec(),
            "not an MLS application message",
        ),
        // liaison@nctv is no member.
        (
            "kring@bz",
            liaison.notice("NL:STG-CONFIDENTIEEL"),
            not_member.as_str(),
        ),
        // Nor is the community hubbed here.
        (
            "kring@aivd",
            liaison.notice("NL:STG-CONFIDENTIEEL"),
            not_member.as_str(),
        ),
    ];
    for (n, (community, message, says)) in cases.into_iter().enumerate() {
        let id = Uuid::from_u128(n as u128 + 1);
        let notice = FedBody::Notice {
            community: community.into(),
            notice_id: id,
            sender: "liaison@nctv".into(),
            message,
        };
        let cx = bz.receive("nctv", notice);
        assert_eq!(cx.sent, sent(&[("nctv", "refusal")]));
        let rec = bz.notice_record(id).unwrap();
        assert_eq!((rec.sender.as_str(), rec.seq), ("liaison@nctv", None));
        assert!(
            matches!(rec.refusals.as_slice(), [r] if r.hop == "bz" && r.reason.contains(says)),
            "{rec:?}"
        );
        assert!(
            bz.audited_as("notice-hop")
                .iter()
                .any(|e| e.subject == format!("{community} notice {id}"))
        );
    }
    assert!(bz.log("kring@bz").is_empty());
    // The refusal was the hub's decision, reported; the item itself was taken.
    assert!(bz.item_refusals("nctv").is_empty());
}

#[test]
fn a_notice_forwarded_by_the_filers_home_relay_is_ordered_and_fanned_out() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let mut member = bz.add(&mut liaison, "liaison@nctv");
    let id = Uuid::from_u128(1);
    let notice = FedBody::Notice {
        community: "kring@bz".into(),
        notice_id: id,
        sender: "liaison@nctv".into(),
        message: member.notice("NL:STG-CONFIDENTIEEL"),
    };
    let cx = bz.receive("nctv", notice);
    assert_eq!(cx.sent, sent(&[("nctv", "notice-entry")]));
    let log = bz.log("kring@bz");
    assert!(
        matches!(log.last(), Some(LogEntry {
            seq: 2,
            sender,
            kind: EntryKind::Notice { notice_id, .. },
            ..
        }) if sender == "liaison@nctv" && *notice_id == id),
        "{log:?}"
    );
    assert_eq!(bz.notice_record(id).unwrap().seq, Some(2));
    assert!(bz.item_refusals("nctv").is_empty());
}

// ----- Welcomes -------------------------------------------------------------------------

#[test]
fn a_welcome_not_routed_via_its_hub_to_its_members_home_relay_is_refused() {
    let bz = Bz::open();
    let mut community = PeerCommunity::kring_at_nctv(&bz);
    let (_, welcome) = community.commit_adding(&bz, "liaison@bz");
    let welcome_for = |users: &[&str]| FedBody::Welcomes {
        users: users.iter().map(|u| u.to_string()).collect(),
        community: "kring@nctv".into(),
        welcome: welcome.clone(),
        ratchet_tree: Vec::new(),
    };
    let one = |user: &str| FedBody::Welcome {
        user: user.into(),
        community: "kring@nctv".into(),
        welcome: welcome.clone(),
        ratchet_tree: Vec::new(),
    };
    let before = bz.state();
    bz.receive_refused(
        "aivd",
        one("liaison@bz"),
        "kring@nctv",
        "welcome for its members not routed via its hub to its home relay",
    );
    bz.receive_refused(
        "nctv",
        one("liaison@aivd"),
        "kring@nctv",
        "welcome for liaison@aivd not routed via its hub to its home relay",
    );
    bz.receive_refused(
        "nctv",
        welcome_for(&["liaison@bz", "analist@aivd"]),
        "kring@nctv",
        "welcome for analist@aivd not routed",
    );
    // A name that would land under another user's keys.
    bz.receive_refused(
        "nctv",
        welcome_for(&["liaison@bz", "liaison@bz\0junk@bz"]),
        "kring@nctv",
        "welcome for a malformed user id \"liaison@bz\\0junk@bz\"",
    );
    assert_eq!(bz.state(), before);
    assert_eq!(welcomes_waiting(&bz, "liaison@bz"), 0);

    // From the hub, for users of this relay, it waits for their devices.
    bz.receive("nctv", one("liaison@bz"));
    assert_eq!(welcomes_waiting(&bz, "liaison@bz"), 1);
    bz.receive("nctv", welcome_for(&["admin@bz", "liaison@bz"]));
    assert_eq!(welcomes_waiting(&bz, "admin@bz"), 1);
    assert_eq!(welcomes_waiting(&bz, "liaison@bz"), 2);
}

// ----- entries from the hub ----------------------------------------------------------

#[test]
fn an_entry_from_a_relay_that_is_not_the_communitys_hub_is_refused() {
    let bz = Bz::open();
    let (community, entry) = PeerCommunity::adding_liaison_at_bz(&bz);
    let before = bz.state();
    let cx = bz.receive_refused(
        "aivd",
        community.as_entry(entry.clone()),
        "kring@nctv",
        "relay aivd is not the hub of kring@nctv",
    );
    assert!(cx.sent.is_empty());
    assert_nothing_registered(&bz, &before);

    // From its hub the same entry registers the community.
    bz.receive("nctv", community.as_entry(entry));
    let rec = bz.record("kring@nctv");
    assert_eq!(rec.members, vec!["liaison@nctv", "liaison@bz"]);
    let member: MemberRecord = get_obj(bz.core.engine(), &keys::member("liaison@bz", "kring@nctv"))
        .unwrap()
        .unwrap();
    assert_eq!((member.joined_seq, member.removed_seq), (1, None));
    assert_eq!(bz.log("kring@nctv").len(), 1);
}

#[test]
fn an_entry_whose_envelope_does_not_say_what_its_message_says_is_refused() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut community = PeerCommunity::registered(&bz);
    let id = Uuid::from_u128(1);
    let honest = community.notice(id, "NL:STG-GEHEIM");
    let mut other_group = PeerCommunity::create(&bz, "liaison@nctv", "ander@nctv", "NL:STG-GEHEIM");

    let mut renamed = honest.clone();
    renamed.community = "ander@nctv".into();
    let mut moved = honest.clone();
    moved.seq = 7;
    let mut relabelled = honest.clone();
    let mut wrong_epoch = honest.clone();
    if let EntryKind::Notice { label: aad, .. } = &mut relabelled.kind {
        *aad = NoticeAad::plain(label("NL:STG-CONFIDENTIEEL")).to_bytes();
    }
    if let EntryKind::Notice { epoch, .. } = &mut wrong_epoch.kind {
        *epoch = 0;
    }
    let mut garbage = honest.clone();
    garbage.message = b"garbage".to_vec();
    let mut foreign = honest.clone();
    foreign.message = other_group.device.notice("NL:STG-GEHEIM");
    let cases = [
        (renamed, "entry 2 of kring@nctv names community ander@nctv"),
        (moved, "entry 2 of kring@nctv names seq 7"),
        (
            relabelled,
            "the label of the entry is not the authenticated data of its message",
        ),
        (
            wrong_epoch,
            "the entry names epoch 0, its message was sent in epoch 1",
        ),
        (garbage, "entry 2 of kring@nctv: malformed MLS message"),
        (
            foreign,
            "entry 2 of kring@nctv: message belongs to group \"ander@nctv\", not to \"kring@nctv\"",
        ),
    ];
    for (entry, says) in cases {
        let body = FedBody::NoticeEntry {
            community: "kring@nctv".into(),
            seq: 2,
            entry: Some(entry),
        };
        let cx = bz.receive_refused("nctv", body, "kring@nctv", says);
        // A notice refused here is reported to the hub, which tells its filer.
        assert_eq!(cx.sent, sent(&[("nctv", "refusal")]));
        assert_eq!(bz.last_seq("kring@nctv"), 1);
    }
    // A handshake whose message is a notice is refused too (and not reported).
    let mut not_a_commit = honest.clone();
    not_a_commit.kind = EntryKind::Handshake { epoch: 1 };
    let cx = bz.receive_refused(
        "nctv",
        community.as_entry(not_a_commit),
        "kring@nctv",
        "a handshake entry whose message is not a PublicMessage commit or proposal",
    );
    assert!(cx.sent.is_empty());
    assert_eq!(bz.log("kring@nctv").len(), 1);

    // The entry as its message says is taken.
    let cx = bz.receive("nctv", community.as_notice_entry(honest));
    assert!(cx.sent.is_empty());
    assert_eq!(bz.log("kring@nctv").len(), 2);
    assert_eq!(bz.last_seq("kring@nctv"), 2);
}

#[test]
fn a_notice_of_a_community_unknown_here_is_refused() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut community = PeerCommunity::kring_at_nctv(&bz);
    let notice = community.notice(Uuid::from_u128(1), "NL:STG-CONFIDENTIEEL");
    let before = bz.state();
    bz.receive_refused(
        "nctv",
        community.as_notice_entry(notice),
        "kring@nctv",
        "a notice of a community unknown here",
    );
    assert_nothing_registered(&bz, &before);
}

#[test]
fn a_hub_registers_no_community_here_without_a_member_homed_here() {
    let bz = Bz::open();
    let mut community = PeerCommunity::kring_at_nctv(&bz);
    let (entry, _) = community.commit_adding(&bz, "analist@aivd");
    let before = bz.state();
    bz.receive_refused(
        "nctv",
        community.as_entry(entry),
        "kring@nctv",
        "no user of this relay is a member",
    );
    assert_nothing_registered(&bz, &before);
}

#[test]
fn a_community_whose_maximum_label_does_not_parse_refuses_the_whole_item() {
    let bz = Bz::open();
    let mut community = PeerCommunity::kring_at_nctv(&bz);
    community.max = "NL:NO-SUCH-LEVEL".into();
    let (entry, _) = community.commit_adding(&bz, "liaison@bz");
    let before = bz.state();
    bz.receive_refused(
        "nctv",
        community.as_entry(entry),
        "item 1",
        "unknown level 'NO-SUCH-LEVEL' for policy NL",
    );
    assert_nothing_registered(&bz, &before);
}

#[test]
fn an_entry_already_held_is_taken_again_without_changing_anything() {
    let bz = Bz::open();
    let (community, entry) = PeerCommunity::adding_liaison_at_bz(&bz);
    let body = community.as_entry(entry);
    bz.receive("nctv", body.clone());
    let before = bz.state();
    // The hub sends it again as a new item (its outbox was restored, say).
    let cx = bz.receive("nctv", body);
    assert!(cx.sent.is_empty());
    assert_eq!(bz.state(), before);
    assert!(bz.item_refusals("nctv").is_empty());
}

#[test]
fn a_handshake_of_another_epoch_than_the_one_held_here_or_leading_elsewhere_is_refused() {
    let bz = Bz::open();
    let mut community = PeerCommunity::kring_at_nctv(&bz);
    let (first, _) = community.commit_adding(&bz, "liaison@bz");
    bz.receive("nctv", community.as_entry(first.clone()));

    // The commit of epoch 0 again, as entry 2: the community is at epoch 1 here.
    let mut replayed = first;
    replayed.seq = 2;
    let cx = bz.receive_refused(
        "nctv",
        community.as_entry(replayed),
        "kring@nctv",
        "a handshake of epoch 0, but the community is at epoch 1 here",
    );
    assert!(cx.sent.is_empty());

    // A commit of epoch 1 the hub says leaves the community at epoch 5.
    let update = community.self_update(&bz);
    let mut after = community.summary();
    after.epoch = 5;
    let lying = FedBody::Entry {
        community: after,
        seq: 2,
        entry: Some(update.clone()),
    };
    bz.receive_refused(
        "nctv",
        lying,
        "kring@nctv",
        "a handshake of epoch 1 said to leave the community at epoch 5",
    );
    let rec = bz.record("kring@nctv");
    assert_eq!((rec.epoch, rec.last_seq), (1, 1));

    // As the hub ordered it, it is taken.
    bz.receive("nctv", community.as_entry(update));
    let rec = bz.record("kring@nctv");
    assert_eq!((rec.epoch, rec.last_seq), (2, 2));
}

#[test]
fn a_notice_of_an_epoch_the_community_has_not_reached_here_is_refused_back_to_the_hub() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut community = PeerCommunity::registered(&bz);
    // The creator's device moved to epoch 2 with a commit this relay never got.
    community.self_update(&bz);
    let mut ahead = community.notice(Uuid::from_u128(1), "NL:STG-CONFIDENTIEEL");
    ahead.seq = 2;
    let body = FedBody::NoticeEntry {
        community: "kring@nctv".into(),
        seq: 2,
        entry: Some(ahead),
    };
    let cx = bz.receive_refused(
        "nctv",
        body,
        "kring@nctv",
        "a notice of epoch 2, but the community is at epoch 1",
    );
    assert_eq!(cx.sent, sent(&[("nctv", "refusal")]));
    assert_eq!(bz.last_seq("kring@nctv"), 1);
    assert_eq!(bz.log("kring@nctv").len(), 1);
}

// ----- what a hub may register here --------------------------------------------------

#[test]
fn a_hub_registers_no_more_communities_here_than_any_hub_may() {
    let bz = Bz::open();
    let hubbed = |bz: &Bz| get_obj::<u64>(bz.core.engine(), &fed_keys::hubbed("nctv")).unwrap();
    bz.put_obj(fed_keys::hubbed("nctv"), &MAX_PEER_COMMUNITIES);
    let (community, entry) = PeerCommunity::adding_liaison_at_bz(&bz);
    let before = bz.state();
    bz.receive_refused(
        "nctv",
        community.as_entry(entry.clone()),
        "kring@nctv",
        &format!(
            "relay nctv already hubs {MAX_PEER_COMMUNITIES} communities known here (limit {MAX_PEER_COMMUNITIES})"
        ),
    );
    assert_nothing_registered(&bz, &before);

    // One below the limit it is registered, and both counts move.
    bz.put_obj(fed_keys::hubbed("nctv"), &(MAX_PEER_COMMUNITIES - 1));
    bz.receive("nctv", community.as_entry(entry));
    assert!(bz.core.community("kring@nctv").unwrap().is_some());
    assert_eq!(hubbed(&bz), Some(MAX_PEER_COMMUNITIES));
    let for_user = get_obj::<u64>(
        bz.core.engine(),
        &fed_keys::hubbed_for("nctv", "liaison@bz"),
    );
    assert_eq!(for_user.unwrap(), Some(1));
}

#[test]
fn a_hub_makes_a_user_of_this_relay_a_member_of_no_more_of_its_communities_than_any_hub_may() {
    let bz = Bz::open();
    let limit = MAX_PEER_COMMUNITIES_PER_USER;
    bz.put_obj(fed_keys::hubbed_for("nctv", "liaison@bz"), &limit);
    let (community, entry) = PeerCommunity::adding_liaison_at_bz(&bz);
    let before = bz.state();
    bz.receive_refused(
        "nctv",
        community.as_entry(entry),
        "kring@nctv",
        &format!(
            "relay nctv already made liaison@bz a member of {limit} of its communities (kring@nctv refused) (limit {limit})"
        ),
    );
    // Nothing counted, nothing registered.
    assert_eq!(bz.state(), before);
    assert_eq!(
        get_obj::<u64>(bz.core.engine(), &fed_keys::hubbed("nctv")).unwrap(),
        None
    );
}

// ----- notices at this hop ------------------------------------------------------------

#[test]
fn a_notice_entry_above_an_accreditation_at_this_hop_is_withheld_and_reported_to_the_hub() {
    let mut bz = Bz::open();
    let mut community = PeerCommunity::registered(&bz);
    let withheld = |bz: &Bz, id: Uuid| -> String {
        let events = bz.audited_as("receive");
        let event = events
            .iter()
            .find(|e| e.subject == format!("kring@nctv notice {id}"))
            .unwrap_or_else(|| panic!("{events:#?}"));
        assert_eq!(
            (event.kind, event.actor.as_str()),
            (AuditKind::Withheld, "nctv")
        );
        event.detail.clone()
    };

    // nctv's certificate has not been seen here: nothing says it may hold it.
    let unknown = Uuid::from_u128(1);
    let entry = community.notice(unknown, "NL:STG-CONFIDENTIEEL");
    let cx = bz.receive("nctv", community.as_notice_entry(entry));
    assert_eq!(cx.sent, sent(&[("nctv", "refusal")]));
    assert!(withheld(&bz, unknown).contains("relay nctv is not accredited for"));

    // This relay's own accreditation, lowered by a reload.
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    bz.config.accreditation = "NL:STG-CONFIDENTIEEL".parse().unwrap();
    bz.core.set_accreditation(&bz.config);
    let above = Uuid::from_u128(2);
    let entry = community.notice(above, "NL:STG-GEHEIM");
    let cx = bz.receive("nctv", community.as_notice_entry(entry));
    assert_eq!(cx.sent, sent(&[("nctv", "refusal")]));
    assert!(withheld(&bz, above).contains("relay bz is not accredited for"));

    // A label that does not decode.
    let unreadable = Uuid::from_u128(3);
    let entry = community.notice_with_aad(unreadable, vec![0xff; 16]);
    let cx = bz.receive("nctv", community.as_notice_entry(entry));
    assert_eq!(cx.sent, sent(&[("nctv", "refusal")]));
    assert!(withheld(&bz, unreadable).contains("unreadable label"));

    // None of them is kept, but their seqs are consumed and the items taken.
    assert_eq!(bz.log("kring@nctv").len(), 1);
    assert_eq!(bz.last_seq("kring@nctv"), 4);
    assert!(bz.item_refusals("nctv").is_empty());

    // Within both accreditations a notice is kept.
    let fine = Uuid::from_u128(4);
    let entry = community.notice(fine, "NL:STG-CONFIDENTIEEL");
    let cx = bz.receive("nctv", community.as_notice_entry(entry));
    assert!(cx.sent.is_empty());
    assert!(matches!(
        bz.log("kring@nctv").last(),
        Some(LogEntry { seq: 5, kind: EntryKind::Notice { notice_id, .. }, .. }) if *notice_id == fine
    ));
}

#[test]
fn an_entry_the_hub_withheld_from_this_relay_consumes_its_seq_and_stores_nothing() {
    let bz = Bz::open();
    PeerCommunity::registered(&bz);
    let withheld = FedBody::NoticeEntry {
        community: "kring@nctv".into(),
        seq: 2,
        entry: None,
    };
    let cx = bz.receive("nctv", withheld);
    assert!(cx.sent.is_empty());
    assert_eq!(bz.last_seq("kring@nctv"), 2);
    assert_eq!(bz.log("kring@nctv").len(), 1);
}

#[test]
fn a_notice_filed_here_learns_its_seq_from_its_hubs_entry() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut community = PeerCommunity::registered(&bz);
    let id = Uuid::from_u128(1);
    let filed = NoticeRecord {
        community: "kring@nctv".into(),
        sender: "liaison@bz".into(),
        seq: None,
        refusals: Vec::new(),
    };
    bz.put_obj(keys::notice(&id), &filed);
    let entry = community.notice(id, "NL:STG-CONFIDENTIEEL");
    bz.receive("nctv", community.as_notice_entry(entry));
    assert_eq!(bz.notice_record(id).unwrap().seq, Some(2));
}

// ----- refusal reports ----------------------------------------------------------------

#[test]
fn a_refusal_report_about_a_notice_unknown_here_is_ignored() {
    let bz = Bz::open();
    let id = Uuid::from_u128(9);
    let before = bz.state();
    bz.receive_refused(
        "nctv",
        refusal(id, "nctv"),
        &format!("notice {id}"),
        &format!("refusal by nctv ignored: notice {id} is unknown here"),
    );
    assert_eq!(bz.state(), before);
}

#[test]
fn at_the_filers_home_relay_only_the_hub_reports_refusals_and_its_own_frees_the_notices_files() {
    let bz = Bz::open();
    let ours = Uuid::from_u128(1);
    let theirs = Uuid::from_u128(2);
    for (id, sender) in [(ours, "liaison@bz"), (theirs, "liaison@aivd")] {
        let rec = NoticeRecord {
            community: "kring@nctv".into(),
            sender: sender.into(),
            seq: None,
            refusals: Vec::new(),
        };
        bz.put_obj(keys::notice(&id), &rec);
    }
    let files = crate::keyspace::attachments::notice("kring@nctv", &ours);
    bz.put(files.clone(), vec![1]);
    let before = bz.state();
    bz.receive_refused(
        "aivd",
        refusal(ours, "aivd"),
        &format!("kring@nctv notice {ours}"),
        "refusal by aivd ignored: the notice went from here to its hub nctv, not to relay aivd",
    );
    bz.receive_refused(
        "nctv",
        refusal(theirs, "nctv"),
        &format!("kring@nctv notice {theirs}"),
        "refusal by nctv ignored: the notice was not filed here, nor ordered here (its hub is nctv)",
    );
    assert_eq!(bz.state(), before);

    // A relay after the hub, as the hub passes it on: recorded, the files kept.
    let cx = bz.receive("nctv", refusal(ours, "nctv->aivd"));
    assert!(cx.sent.is_empty());
    assert!(bz.core.engine().get(&files).unwrap().is_some());
    // The hub itself: the notice will never be ordered, and its files go to nobody.
    bz.receive("nctv", refusal(ours, "nctv"));
    assert_eq!(bz.core.engine().get(&files).unwrap(), None);
    assert_eq!(refusing_hops(&bz, ours), vec!["nctv->aivd", "nctv"]);
    assert_eq!(bz.audited_as("notice-hop").len(), 2);
}

#[test]
fn at_the_hub_a_relay_reports_only_its_own_refusal_of_a_notice_that_went_there() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let file = |liaison: &mut Device, n: u128| {
        let id = Uuid::from_u128(n);
        let message = liaison.notice("NL:STG-CONFIDENTIEEL");
        let (filed, _) = bz.file("liaison@bz", "kring@bz", &[(id, message)]);
        assert!(matches!(filed_seqs(filed).as_slice(), [Some(_)]));
        id
    };
    // Ordered while nctv has no member: it did not go there.
    let unsent = file(&mut liaison, 1);
    bz.receive_refused(
        "nctv",
        refusal(unsent, "bz->nctv"),
        &format!("kring@bz notice {unsent}"),
        "refusal by bz->nctv ignored: relay nctv has no member in kring@bz, the notice did not go there",
    );
    bz.add(&mut liaison, "liaison@nctv");
    let sent_there = file(&mut liaison, 2);
    let subject = format!("kring@bz notice {sent_there}");
    bz.receive_refused(
        "nctv",
        refusal(sent_there, "bz->aivd"),
        &subject,
        "refusal by bz->aivd ignored: relay nctv may only report its own refusal (bz->nctv)",
    );
    let unordered = Uuid::from_u128(3);
    let rec = NoticeRecord {
        community: "kring@bz".into(),
        sender: "liaison@bz".into(),
        seq: None,
        refusals: Vec::new(),
    };
    bz.put_obj(keys::notice(&unordered), &rec);
    bz.receive_refused(
        "nctv",
        refusal(unordered, "bz->nctv"),
        &format!("kring@bz notice {unordered}"),
        "the notice was not ordered, so it went to no relay",
    );
    for id in [unsent, sent_there, unordered] {
        assert!(refusing_hops(&bz, id).is_empty());
    }

    // Its own refusal is recorded where the filer reads the notice's status.
    let cx = bz.receive("nctv", refusal(sent_there, "bz->nctv"));
    assert!(cx.sent.is_empty());
    match bz.core.notice_status(&bz.caller("liaison@bz"), sent_there) {
        Ok(Response::Status(status)) => assert!(
            matches!(status.refusals.as_slice(), [r] if r.hop == "bz->nctv"
                && r.reason == "the label is above the accreditation"),
            "{status:?}"
        ),
        other => panic!("{other:?}"),
    }
}
