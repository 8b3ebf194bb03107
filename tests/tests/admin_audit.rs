//! `kring admin audit`: an org-admin reads the relay's audit log through the client
//! library; the log records what happened (including refusals) and its hash chain
//! checks out; a user who is not an org-admin is turned away with exit 4.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use kring_protocol::wire::AuditRecordView;
use kring_tests::{Federation, RelayLauncher};

fn find<'a>(
    records: &'a [AuditRecordView],
    kind: &str,
    actor: &str,
    action: &str,
) -> &'a AuditRecordView {
    records
        .iter()
        .find(|r| r.kind == kind && r.actor == actor && r.action == action)
        .unwrap_or_else(|| panic!("no {kind} record of {actor} doing {action} in {records:#?}"))
}

/// On relay bz: liaison@bz creates a community up to STG-CONFIDENTIEEL and tries to
/// add an under-cleared user (refused on the device, exit 3); the under-cleared user
/// then asks the relay about the community and is refused (exit 4, audited); liaison
/// (no org-admin) asks for the audit log and is refused (exit 4, audited). admin@bz
/// reads the whole log: creation, key package hand-out and both refusals are there,
/// in order, and the relay's chain check covers every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_admin_reads_a_verified_log_with_the_refusals() {
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    fed.issue_user("laag@bz", "NL:DEP-VERTROUWELIJK", &[])
        .unwrap();
    fed.start("bz").unwrap();

    let mut laag = fed.client("laag@bz").unwrap();
    laag.publish_key_packages(2).await.unwrap();
    let mut liaison = fed.client("liaison@bz").unwrap();
    liaison.publish_key_packages(2).await.unwrap();
    liaison
        .create_community("hoog", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    let err = liaison
        .add_members("hoog@bz", &["laag@bz"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains("laag@bz may not join"), "{err}");

    let err = laag.community_info("hoog@bz").await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");

    let err = liaison.audit_all(true).await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("org-admins"), "{err}");
    let err = liaison.audit_log(1, 10, false).await.unwrap_err();
    assert_eq!(err.exit_code(), 4, "{err}");

    let mut admin = fed.client("admin@bz").unwrap();
    let log = admin.audit_all(true).await.unwrap();
    assert_eq!(log.relay, "bz");
    let records = &log.records;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    assert_eq!(log.total, records.len() as u64);

    let created = find(records, "membership", "liaison@bz", "create-community");
    assert_eq!(created.subject, "hoog@bz");
    assert!(
        created.detail.contains("NL:STG-CONFIDENTIEEL"),
        "{created:?}"
    );
    let handed = find(records, "membership", "liaison@bz", "fetch-key-package");
    assert_eq!(handed.subject, "laag@bz");
    let refused = find(records, "refusal", "laag@bz", "community-info");
    assert_eq!(refused.subject, "hoog@bz");
    let turned_away = find(records, "refusal", "liaison@bz", "audit-log");
    assert!(turned_away.detail.contains("org-admins"), "{turned_away:?}");
    assert!(created.seq < handed.seq && handed.seq < refused.seq);
    assert!(refused.seq < turned_away.seq);
    for r in records {
        assert_eq!(r.hash.len(), 64, "{r:?}");
        assert!(r.hash.bytes().all(|b| b.is_ascii_hexdigit()), "{r:?}");
    }
    let hashes: std::collections::BTreeSet<_> = records.iter().map(|r| &r.hash).collect();
    assert_eq!(hashes.len(), records.len(), "chain hashes are distinct");

    let verdict = log.verify.unwrap();
    assert_eq!(verdict.first_bad, None, "{verdict:?}");
    assert_eq!(verdict.reason, None);
    assert_eq!(verdict.records, log.total);

    // One page at a time: the page asked for, and the relay's total.
    let page = admin.audit_log(2, 2, false).await.unwrap();
    assert_eq!(page.total, log.total);
    assert!(page.verify.is_none());
    assert_eq!(page.records, records[1..3].to_vec());
    let page = admin.audit_log(log.total + 1, 5, true).await.unwrap();
    assert!(page.records.is_empty());
    assert_eq!(page.verify.unwrap().first_bad, None);
}

async fn joined(c: &mut kring_client::Client, community: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.notices(Some(community)).is_err() || c.community_info(community).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never joined");
        c.sync().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Community admins across relays: only admins change membership or admins; an admin
/// appoints an admin at another relay, who then takes over; the last admin cannot
/// step down; every change is a commit the hub verified and audit-logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_admins_are_appointed_and_dropped_across_relays() {
    use kring_client::community::AdminChange;
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    fed.start_all().unwrap();
    let mut bz = fed.client("liaison@bz").unwrap();
    let mut nctv = fed.client("liaison@nctv").unwrap();
    let mut aivd = fed.client("analist@aivd").unwrap();
    for c in [&mut bz, &mut nctv, &mut aivd] {
        c.publish_key_packages(2).await.unwrap();
    }
    bz.create_community("beheer", "NL:STG-GEHEIM")
        .await
        .unwrap();
    bz.add_members("beheer@bz", &["liaison@nctv"])
        .await
        .unwrap();
    joined(&mut nctv, "beheer@bz").await;

    // Not an admin (yet): no adds, no admin changes.
    let e = nctv
        .add_members("beheer@bz", &["analist@aivd"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    let e = nctv
        .set_admin("beheer@bz", AdminChange::Add, "liaison@nctv")
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");

    // The creator appoints the nctv liaison, who takes over from another relay.
    bz.set_admin("beheer@bz", AdminChange::Add, "liaison@nctv")
        .await
        .unwrap();
    let info = bz.community_info("beheer@bz").await.unwrap();
    assert_eq!(info.admins, vec!["liaison@bz", "liaison@nctv"]);
    nctv.add_members("beheer@bz", &["analist@aivd"])
        .await
        .unwrap();
    joined(&mut aivd, "beheer@bz").await;
    nctv.set_admin("beheer@bz", AdminChange::Remove, "liaison@bz")
        .await
        .unwrap();
    let info = nctv.community_info("beheer@bz").await.unwrap();
    assert_eq!(info.admins, vec!["liaison@nctv"]);
    // The former admin cannot change anything any more; the last admin cannot step down.
    let e = bz
        .remove_members("beheer@bz", &["analist@aivd"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    let e = nctv
        .set_admin("beheer@bz", AdminChange::Remove, "liaison@nctv")
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("last admin"), "{e}");
    nctv.remove_members("beheer@bz", &["analist@aivd"])
        .await
        .unwrap();
    let info = nctv.community_info("beheer@bz").await.unwrap();
    assert_eq!(info.members.len(), 2, "{:?}", info.members);
    assert!(!info.members.contains(&"analist@aivd".to_string()));

    // The hub audit-logged each change, with the relay that forwarded it.
    let mut admin = fed.client("admin@bz").unwrap();
    let log = admin.audit_all(true).await.unwrap();
    let admin_changes: Vec<&AuditRecordView> = log
        .records
        .iter()
        .filter(|r| r.action == "set-admins")
        .collect();
    assert_eq!(admin_changes.len(), 2, "{admin_changes:#?}");
    assert_eq!(admin_changes[0].actor, "liaison@bz");
    assert_eq!(admin_changes[1].actor, "liaison@nctv");
    let removal = find(&log.records, "membership", "liaison@nctv", "remove-member");
    assert!(
        removal.detail.contains("forwarded by relay nctv"),
        "{removal:?}"
    );
    assert_eq!(log.verify.as_ref().and_then(|v| v.first_bad), None);
}
