//! Revocation in the core: statements an org-admin hands in or a peer passes on,
//! wipe orders and what a revoked device is handed, and CRLs (verified, pinned,
//! newer than the one held, and rate-limited when peers pass them on).

use kring_certs_dev::{Authority, Pki};
use kring_protocol::identity::{CaFingerprint, TrustMap};
use kring_protocol::revocation::{MAX_STATEMENTS_PER_ORGANISATION, WipeOrder};

use super::*;
use crate::core::revocation::{CRLS_PER_MINUTE, accept_crl, revoke, wipe_answer};
use crate::keyspace::revocation as revocation_keys;

const DAY: i64 = 86_400;

/// `caller` hands in `statement` (and `wipe`); the answer and the call's record.
fn revoke_as(
    bz: &Bz,
    caller: &str,
    statement: RevocationStatement,
    wipe: Option<WipeOrder>,
) -> (Result<Response, RelayError>, Cx) {
    let mut cx = bz.cx();
    let answer = revoke(&bz.core, &mut cx, &bz.caller(caller), statement, wipe);
    (answer, cx)
}

/// `admin@bz` hands in a statement of their own revoking `user`, without a wipe
/// order.
fn admin_revokes(bz: &Bz, user: &str) -> (Result<Response, RelayError>, Cx) {
    revoke_as(bz, "admin@bz", bz.statement("admin@bz", user), None)
}

/// An order of org-admin `revoker` to wipe `user`'s device, signed now.
fn wipe_order(bz: &Bz, revoker: &str, user: &str) -> WipeOrder {
    let signer = bz.signer(revoker);
    WipeOrder::sign(
        bz.chain(revoker),
        |bytes| signer.sign(bytes).unwrap(),
        user,
        bz.now,
    )
    .unwrap()
}

/// Nothing of a revocation of `user` is held: no statement, no wipe order.
#[track_caller]
fn assert_not_revoked(bz: &Bz, user: &str) {
    assert_eq!(bz.core.revocations().user_revoked(user), None);
    let engine = bz.core.engine();
    assert_eq!(engine.get(&revocation_keys::statement(user)).unwrap(), None);
    assert_eq!(engine.get(&revocation_keys::wipe(user)).unwrap(), None);
}

/// The CA of organisation `org` of the development federation, with its key.
fn organisation_ca(org: &str) -> Authority {
    let dir = kring_certs_dev::org_dir(Path::new(""), org);
    load_authority(org, &dir.join("ca.crt"), &dir.join("ca.key"))
}

/// The root CA of the development federation, with its key.
fn root_ca() -> Authority {
    let dir = Path::new("ca");
    load_authority("root", &dir.join("root.crt"), &dir.join("root.key"))
}

fn load_authority(name: &str, cert: &Path, key: &Path) -> Authority {
    let federation = Federation::get();
    let text = |path: &Path| String::from_utf8(federation.file(path).to_vec()).unwrap();
    Authority::load(name, &text(cert), &text(key)).unwrap()
}

fn crl_item(crl: Vec<u8>, ca: &Authority) -> FedBody {
    FedBody::Crl {
        crl,
        issuer: ca.cert_der().to_vec(),
    }
}

/// The store is as `before` the refused CRLs, and no CRL is held.
#[track_caller]
fn assert_no_crl_taken(bz: &Bz, before: &[(Vec<u8>, Vec<u8>)]) {
    assert_eq!(bz.state(), before);
    assert_eq!(crls_held(bz), 0);
    assert_eq!(bz.core.revocations().crl_issuers(), 0);
}

fn crls_held(bz: &Bz) -> usize {
    bz.core
        .engine()
        .scan(revocation_keys::CRLS, None, usize::MAX)
        .unwrap()
        .len()
}

// ----- statements an org-admin hands in -------------------------------------------------

#[test]
fn only_an_org_admin_revokes_and_only_with_statements_signed_with_their_own_certificate() {
    let bz = Bz::open();
    let statement = bz.statement("admin@bz", "liaison@bz");
    let (answer, cx) = revoke_as(&bz, "liaison@bz", statement.clone(), None);
    assert_unauthenticated(
        &refused(answer),
        "liaison@bz is not an org-admin; only org-admins may revoke",
    );
    assert_eq!(cx.wrote, 0);

    // Another org-admin handing in admin@bz's statement.
    let own_certificate = "the statement must be signed with the caller's own certificate";
    let (answer, cx) = revoke_as(&bz, "admin@nctv", statement.clone(), None);
    assert_unauthenticated(&refused(answer), own_certificate);
    assert_eq!(cx.wrote, 0);
    // admin@bz's own statement, with a wipe order another org-admin signed.
    let order = wipe_order(&bz, "admin@nctv", "liaison@bz");
    let (answer, cx) = revoke_as(&bz, "admin@bz", statement, Some(order));
    assert_unauthenticated(&refused(answer), own_certificate);
    assert_eq!(cx.wrote, 0);
    assert!(cx.sent.is_empty());
    assert_not_revoked(&bz, "liaison@bz");
}

#[test]
fn an_org_admin_revokes_only_other_users_of_their_own_organisation() {
    let bz = Bz::open();
    let (answer, cx) = admin_revokes(&bz, "liaison@nctv");
    assert_unauthenticated(
        &refused(answer),
        "liaison@nctv is a user of organisation nctv; only org-admins of nctv may revoke it",
    );
    assert_eq!(cx.wrote, 0);
    let (answer, cx) = admin_revokes(&bz, "admin@bz");
    assert_bad_request(&refused(answer), "an org-admin cannot revoke themselves");
    assert_eq!(cx.wrote, 0);
    assert_not_revoked(&bz, "liaison@nctv");
    assert_not_revoked(&bz, "admin@bz");
}

#[test]
fn a_wipe_order_is_taken_only_for_the_revoked_user_and_only_at_their_home_relay() {
    let bz = Bz::open();
    let statement = bz.statement("admin@bz", "liaison@bz");
    let elsewhere = wipe_order(&bz, "admin@bz", "analist@bz");
    let (answer, cx) = revoke_as(&bz, "admin@bz", statement, Some(elsewhere));
    assert_bad_request(
        &refused(answer),
        "the wipe order is for analist@bz, the revocation for liaison@bz",
    );
    assert_eq!(cx.wrote, 0);
    assert_not_revoked(&bz, "liaison@bz");

    // A second relay of organisation bz, whose users admin@bz may revoke.
    let trust = bz.core.trust();
    let own = trust.get("bz").unwrap().clone();
    let entries = trust
        .iter()
        .map(|(relay, t)| (relay, t.clone()))
        .chain([("annex", own)]);
    bz.core.set_trust(TrustMap::from_entries(entries).unwrap());
    let user = "liaison@annex";
    let order = wipe_order(&bz, "admin@bz", user);
    let (answer, cx) = revoke_as(&bz, "admin@bz", bz.statement("admin@bz", user), Some(order));
    assert_bad_request(
        &refused(answer),
        "liaison@annex is a user of relay annex: a wipe order is kept by the user's home relay",
    );
    assert_eq!(cx.wrote, 0);
    assert_not_revoked(&bz, user);
    // Without the order the revocation is taken.
    let (answer, _) = admin_revokes(&bz, user);
    assert!(matches!(answer, Ok(Response::Revoked { .. })), "{answer:?}");
    assert!(bz.core.revocations().user_revoked(user).is_some());
    assert_eq!(
        bz.core.engine().get(&revocation_keys::wipe(user)).unwrap(),
        None
    );
}

#[test]
fn statements_beyond_the_most_a_relay_holds_for_one_organisation_are_refused() {
    let bz = Bz::open();
    for i in 0..MAX_STATEMENTS_PER_ORGANISATION {
        let made_up = RevocationStatement {
            user: format!("user{i}@bz"),
            organisation: "bz".into(),
            reason: "made up".into(),
            revoked_at: bz.now,
            revoker_chain: Vec::new(),
            signature: Vec::new(),
        };
        assert!(bz.core.add_revocation_statement(&made_up));
    }
    let (answer, cx) = admin_revokes(&bz, "liaison@bz");
    assert_bad_request(
        &refused(answer),
        &format!(
            "organisation bz already has {MAX_STATEMENTS_PER_ORGANISATION} revocation statements, \
             the most a relay holds for one organisation; liaison@bz is not revoked here"
        ),
    );
    assert_eq!(cx.wrote, 0);
    assert!(cx.sent.is_empty());
    assert_not_revoked(&bz, "liaison@bz");

    // Another organisation's statements are held apart.
    let statement = bz.statement("admin@nctv", "liaison@nctv");
    bz.receive("nctv", FedBody::Revocation { statement });
    assert!(bz.core.revocations().user_revoked("liaison@nctv").is_some());
}

#[test]
fn a_revocation_is_stored_audited_and_passed_on_to_every_peer_once() {
    let bz = Bz::open();
    bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let kps = vec![bz.key_package("liaison@bz", false)];
    let (stored, _) = bz.publish("liaison@bz", kps, Some(bz.key_package("liaison@bz", true)));
    assert!(stored.is_ok(), "{stored:?}");
    let statement = bz.statement("admin@bz", "liaison@bz");
    let order = wipe_order(&bz, "admin@bz", "liaison@bz");
    let (answer, cx) = revoke_as(&bz, "admin@bz", statement.clone(), Some(order.clone()));
    assert_eq!(
        answer.unwrap(),
        Response::Revoked {
            user: "liaison@bz".into(),
            peers: vec!["aivd".into(), "nctv".into(), "post-a".into()],
            removals: vec!["kring@bz".into()],
        }
    );
    assert!(cx.wrote > 0);
    let revocations = vec![
        ("aivd".to_string(), "revocation"),
        ("nctv".to_string(), "revocation"),
        ("post-a".to_string(), "revocation"),
    ];
    assert_eq!(cx.sent, revocations);
    let engine = bz.core.engine();
    let held: Option<RevocationStatement> =
        get_obj(engine, &revocation_keys::statement("liaison@bz")).unwrap();
    assert_eq!(held, Some(statement));
    let kept: Option<WipeOrder> = get_obj(engine, &revocation_keys::wipe("liaison@bz")).unwrap();
    assert_eq!(kept, Some(order));
    assert_eq!(
        bz.core.revocations().user_revoked("liaison@bz"),
        Some("laptop lost")
    );
    // The user's key packages go with the revocation.
    assert_eq!(bz.key_packages_held("liaison@bz"), 0);
    assert_eq!(bz.last_resort_of("liaison@bz"), None);
    let revoked = bz.audited_as("revoke");
    assert!(
        matches!(revoked.as_slice(), [e] if e.kind == AuditKind::Revocation
            && e.actor == "admin@bz"
            && e.subject == "liaison@bz"
            && e.detail == "laptop lost"),
        "{revoked:#?}"
    );
    assert_eq!(bz.audited_as("wipe-ordered").len(), 1);

    // Revoking the user again passes nothing on and writes nothing.
    let (answer, cx) = admin_revokes(&bz, "liaison@bz");
    assert_eq!(
        answer.unwrap(),
        Response::Revoked {
            user: "liaison@bz".into(),
            peers: Vec::new(),
            removals: vec!["kring@bz".into()],
        }
    );
    assert_eq!(cx.wrote, 0);
    assert!(cx.sent.is_empty());
    assert_eq!(bz.audited_as("revoke").len(), 1);
}

#[test]
fn a_revoked_device_is_handed_its_wipe_order_each_time_it_asks_and_each_time_audited() {
    let bz = Bz::open();
    let answer_to = |user: &str| {
        let mut cx = bz.cx();
        let answer = wipe_answer(&bz.core, &mut cx, user);
        (answer, cx)
    };
    let (answer, cx) = answer_to("liaison@bz");
    assert_eq!(answer, None);
    assert_eq!(cx.wrote, 0);

    let order = wipe_order(&bz, "admin@bz", "liaison@bz");
    let statement = bz.statement("admin@bz", "liaison@bz");
    let (revoked, _) = revoke_as(&bz, "admin@bz", statement, Some(order.clone()));
    assert!(revoked.is_ok(), "{revoked:?}");
    for _ in 0..2 {
        let (answer, cx) = answer_to("liaison@bz");
        assert_eq!(answer, Some(Response::WipeOrdered(order.clone())));
        assert!(cx.wrote > 0);
    }
    let sent = bz.audited_as("wipe-order-sent");
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|e| e.subject == "liaison@bz"));

    // An order the store cannot read is not handed out.
    bz.put(revocation_keys::wipe("analist@bz"), vec![0xff; 3]);
    let (answer, cx) = answer_to("analist@bz");
    assert_eq!(answer, None);
    assert_eq!(cx.wrote, 0);
}

// ----- statements peers pass on ---------------------------------------------------------

#[test]
fn a_statement_from_a_peer_whose_signature_does_not_verify_is_refused_and_not_passed_on() {
    let bz = Bz::open();
    let mut statement = bz.statement("admin@nctv", "liaison@nctv");
    statement.signature[0] ^= 1;
    let before = bz.state();
    let cx = bz.receive_refused(
        "nctv",
        FedBody::Revocation { statement },
        "item 1",
        "the revocation statement's signature does not verify",
    );
    assert!(cx.sent.is_empty());
    assert_eq!(bz.state(), before);
    assert_not_revoked(&bz, "liaison@nctv");
}

#[test]
fn a_statement_from_a_peer_is_taken_and_passed_on_to_every_other_peer_once() {
    let bz = Bz::open();
    let statement = bz.statement("admin@nctv", "liaison@nctv");
    let cx = bz.receive(
        "nctv",
        FedBody::Revocation {
            statement: statement.clone(),
        },
    );
    assert_eq!(
        cx.sent,
        vec![
            ("aivd".to_string(), "revocation"),
            ("post-a".to_string(), "revocation")
        ]
    );
    assert!(bz.core.revocations().user_revoked("liaison@nctv").is_some());
    let revoked = bz.audited_as("revoke");
    assert!(
        matches!(revoked.as_slice(), [e] if e.actor == "admin@nctv"
            && e.detail == "laptop lost (received from relay nctv)"),
        "{revoked:#?}"
    );
    // The flood comes back from another peer: already held, it stops here.
    let before = bz.state();
    let cx = bz.receive("aivd", FedBody::Revocation { statement });
    assert!(cx.sent.is_empty());
    assert_eq!(bz.state(), before);
    assert_eq!(bz.audited_as("revoke").len(), 1);
}

// ----- CRLs -----------------------------------------------------------------------------

#[test]
fn a_crl_that_does_not_verify_against_the_federation_is_refused() {
    let bz = Bz::open();
    let t = bz.now - 100;
    let nctv = organisation_ca("nctv");
    let aivd = organisation_ca("aivd");
    let crl = nctv.crl(&[vec![1]], 1, t, t + DAY).unwrap();
    let mut outside = Pki::new(bz.now).unwrap();
    let stranger = outside.add_organisation("nctv").unwrap();
    let stranger_crl = stranger.crl(&[vec![1]], 1, t, t + DAY).unwrap();
    let cases = [
        (crl_item(b"garbage".to_vec(), &nctv), "CRL unreadable"),
        (crl_item(crl, &aivd), "not by the given CA"),
        (
            crl_item(stranger_crl, stranger),
            "the issuer CA is not signed by a federation trust anchor",
        ),
    ];
    let before = bz.state();
    for (seq, (body, says)) in (1..).zip(cases) {
        let cx = bz.receive_refused("nctv", body, &format!("item {seq}"), says);
        assert!(cx.sent.is_empty());
    }
    assert_no_crl_taken(&bz, &before);
}

#[test]
fn a_crl_of_another_ca_than_the_one_pinned_for_its_organisation_is_refused() {
    let bz = Bz::open();
    let mut pki = Pki::from_authorities(bz.now, root_ca(), Vec::new());
    let second = pki.add_organisation("nctv").unwrap();
    let t = bz.now - 100;
    let crl = second.crl(&[vec![1]], 1, t, t + DAY).unwrap();
    let before = bz.state();
    let cx = bz.receive_refused("nctv", crl_item(crl, second), "item 1", "CRL refused: ");
    assert!(cx.sent.is_empty());
    assert_no_crl_taken(&bz, &before);
}

#[test]
fn a_crl_not_newer_than_the_one_held_changes_nothing() {
    let bz = Bz::open();
    let nctv = organisation_ca("nctv");
    let t = bz.now - 100;
    let newer = nctv.crl(&[vec![1], vec![2]], 2, t, t + DAY).unwrap();
    let older = nctv.crl(&[vec![3]], 1, t - 10, t + DAY).unwrap();
    let cx = bz.receive("nctv", crl_item(newer.clone(), &nctv));
    assert_eq!(
        cx.sent,
        vec![("aivd".to_string(), "crl"), ("post-a".to_string(), "crl")]
    );
    let key = revocation_keys::crl(&CaFingerprint::of(nctv.cert_der()));
    assert!(bz.core.engine().get(&key).unwrap().is_some());
    assert_eq!(crls_held(&bz), 1);
    assert_eq!(bz.core.revocations().revoked_certificates(), 2);
    let taken = bz.audited_as("crl");
    assert!(
        matches!(taken.as_slice(), [e] if e.detail.contains("2 newly revoked")
            && e.detail.ends_with("(received from relay nctv)")),
        "{taken:#?}"
    );

    let before = (bz.state(), bz.audited().len());
    for crl in [older, newer] {
        let cx = bz.receive("aivd", crl_item(crl, &nctv));
        assert!(cx.sent.is_empty());
    }
    assert_eq!((bz.state(), bz.audited().len()), before);
    assert_eq!(bz.core.revocations().revoked_certificates(), 2);
    assert!(bz.item_refusals("aivd").is_empty());
}

#[test]
fn crls_peers_pass_on_beyond_the_rate_limit_are_dropped_and_the_first_drop_is_audited() {
    let bz = Bz::open();
    let nctv = organisation_ca("nctv");
    let t = bz.now - 1000;
    let crl = |n: u32| {
        let serial = n.to_be_bytes().to_vec();
        nctv.crl(&[serial], u64::from(n), t + i64::from(n), t + DAY)
            .unwrap()
    };
    for n in 1..=CRLS_PER_MINUTE {
        let cx = bz.receive("aivd", crl_item(crl(n), &nctv));
        assert_eq!(cx.sent.len(), 2, "CRL {n} is passed on");
    }
    let before = bz.state();
    for n in CRLS_PER_MINUTE + 1..CRLS_PER_MINUTE + 4 {
        let cx = bz.receive("aivd", crl_item(crl(n), &nctv));
        assert!(cx.sent.is_empty());
    }
    assert_eq!(bz.state(), before);
    let dropped = bz.audited_as("crl-dropped");
    assert!(
        matches!(dropped.as_slice(), [e] if e.subject == "crl:nctv"
            && e.detail.contains(&format!("faster than {CRLS_PER_MINUTE} a minute"))
            && e.detail.ends_with("(received from relay aivd)")),
        "{dropped:#?}"
    );
    assert_eq!(bz.audited_as("crl").len(), CRLS_PER_MINUTE as usize);
    assert!(bz.item_refusals("aivd").is_empty());

    // What the operator configured is always read, and goes to every peer.
    let mut cx = bz.cx();
    let newest = crl(CRLS_PER_MINUTE + 10);
    let taken = bz
        .core
        .write(&mut cx, |w, b| {
            accept_crl(&bz.core, w, b, &newest, nctv.cert_der(), None)
        })
        .unwrap();
    assert_eq!(
        taken,
        Some(vec!["aivd".into(), "nctv".into(), "post-a".into()])
    );
}
