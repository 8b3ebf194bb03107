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

/// Standard output of the `kring` command line, captured.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `kring admin audit --verify [--against HEAD_FILE]`: exit code and output.
async fn cli_verify(
    client: &mut kring_client::Client,
    against: Option<&std::path::Path>,
) -> (i32, String) {
    let captured = Captured::default();
    let mut out = kring_client::cli::Out::new(Box::new(captured.clone()));
    let code = kring_client::cli::audit::run(client, true, against, false, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (code, text)
}

/// `kring-relay --config relay.toml audit verify [--against HEAD_FILE]` on the
/// stopped relay `id`: exit code and output.
fn relay_verify(
    fed: &Federation,
    id: &str,
    against: Option<&std::path::Path>,
) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kring-demo"));
    cmd.arg("relay")
        .arg("--config")
        .arg(fed.relay_config(id))
        .args(["audit", "verify"]);
    if let Some(path) = against {
        cmd.arg("--against").arg(path);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// An org-admin exports a signed head of bz's log (`kring admin audit --head`); the
/// log checks out against it on the device, at the relay and offline. With the
/// relay stopped, the tail of the chain is cut off in the store: the chain alone
/// still verifies (a prefix of a valid chain is valid), but checked against the
/// head, offline and from the device after a restart, the cut is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_is_detected_against_an_exported_head() {
    use kring_client::audit::AuditHeadError;
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    fed.start("bz").unwrap();
    let mut liaison = fed.client("liaison@bz").unwrap();
    liaison.publish_key_packages(2).await.unwrap();
    liaison
        .create_community("knip", "NL:DEP-VERTROUWELIJK")
        .await
        .unwrap();
    // Refusals to fill the log: each is a record.
    for _ in 0..20 {
        let err = liaison.audit_log(1, 1, false).await.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
    }
    drop(liaison);

    let mut admin = fed.client("admin@bz").unwrap();
    let head = admin.audit_head().await.unwrap().head;
    assert_eq!(head.relay, "bz");
    assert!(head.records > 20, "{head:?}");
    let head_file = fed.dir().join("bz-audit-head.json");
    std::fs::write(&head_file, head.to_json()).unwrap();
    let (code, text) = cli_verify(&mut admin, Some(&head_file)).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("audit chain intact"), "{text}");
    assert!(text.contains("checked on this device"), "{text}");
    assert!(text.contains("matches the head relay bz signed"), "{text}");
    drop(admin);
    fed.stop("bz").unwrap();
    let (code, text) = relay_verify(&fed, "bz", Some(&head_file));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("matches the signed head"), "{text}");

    // Cut the tail: the second half of what the head covers, and everything after.
    let keep = head.records / 2;
    {
        use kring_relay::store::{Batch, Engine, keys};
        let store = fed.open_store("bz").unwrap();
        let mut cut = Batch::default();
        for (k, _) in store
            .scan(keys::AUDIT, Some(&keys::audit(keep)), 100_000)
            .unwrap()
        {
            cut.delete(k);
        }
        assert!(!cut.is_empty());
        store.apply(cut).unwrap();
    }
    let (code, text) = relay_verify(&fed, "bz", None);
    assert_eq!(code, Some(0), "the chain alone cannot see a cut: {text}");
    let (code, text) = relay_verify(&fed, "bz", Some(&head_file));
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("TRUNCATED"), "{text}");

    fed.start("bz").unwrap();
    let mut admin = fed.client("admin@bz").unwrap();
    let plain = admin.audit_each(true, |_| {}).await.unwrap();
    assert_eq!(plain.verify.unwrap().first_bad, None);
    assert!(plain.local.unwrap().intact());
    let against = admin
        .audit_each_against(true, Some(&head), |_| {})
        .await
        .unwrap();
    let local = against.local.unwrap();
    assert!(
        matches!(&local.against, Some(Err(AuditHeadError::Truncated { want, .. })) if *want == head.records),
        "{local:?}"
    );
    let (code, text) = cli_verify(&mut admin, Some(&head_file)).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "audit log TRUNCATED: the signed head covers {} records",
            head.records
        )),
        "{text}"
    );
}

/// bz's certificate is renewed with a new key: the checkpoints signed with the old
/// key still verify (the certificate history keeps the old certificate, chained to
/// the anchors), on the device, at the relay and offline, and so does a head
/// exported before the renewal. Then the stored certificate is swapped for another
/// relay's genuine certificate: detected everywhere, naming the record from which
/// it was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_key_keeps_old_checkpoints_valid_and_a_swapped_certificate_is_detected() {
    use kring_protocol::audit::CertificateUse;
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    fed.start("bz").unwrap();
    let mut liaison = fed.client("liaison@bz").unwrap();
    liaison.publish_key_packages(2).await.unwrap();
    drop(liaison);
    let mut admin = fed.client("admin@bz").unwrap();
    let old_head = admin.audit_head().await.unwrap();
    assert_eq!(old_head.certificates.len(), 1);
    let head_file = fed.dir().join("bz-audit-head.json");
    std::fs::write(&head_file, old_head.head.to_json()).unwrap();
    drop(admin);
    // Stopping writes a checkpoint with the old key.
    fed.stop("bz").unwrap();

    fed.renew_relay_certificate("bz").unwrap();
    fed.start("bz").unwrap();
    let mut admin = fed.client("admin@bz").unwrap();
    let new_head = admin.audit_head().await.unwrap();
    assert_eq!(new_head.certificates.len(), 2);
    assert_ne!(new_head.head.chain[0], old_head.head.chain[0]);
    let mut records = Vec::new();
    let summary = admin
        .audit_each_against(true, Some(&old_head.head), |r| records.push(r))
        .await
        .unwrap();
    assert_eq!(summary.verify.as_ref().unwrap().first_bad, None);
    let local = summary.local.unwrap();
    assert!(local.intact(), "{local:?}");
    assert_eq!(local.certificates, 2);
    assert!(local.chain.as_ref().unwrap().checkpoints >= 1);
    let announced = records
        .iter()
        .filter(|r| r.action == "audit-certificate")
        .count();
    assert_eq!(announced, 2, "{records:#?}");
    drop(admin);
    // And a checkpoint with the new key.
    fed.stop("bz").unwrap();
    let (code, text) = relay_verify(&fed, "bz", Some(&head_file));
    assert_eq!(code, Some(0), "{text}");
    {
        let store = fed.open_store("bz").unwrap();
        let ok = kring_relay::audit::verify_signed(
            &store,
            &kring_relay::audit::Expected {
                relay: "bz",
                organisation: Some("bz"),
                anchors: &kring_protocol::identity::certificates_from_pem(
                    &std::fs::read(fed.dir().join("ca/root.crt")).unwrap(),
                )
                .unwrap(),
            },
        )
        .unwrap()
        .unwrap();
        assert!(ok.checkpoints >= 2, "{ok:?}");
    }

    // The first certificate of the history swapped for relay nctv's (genuine,
    // chained to the same root).
    {
        use kring_relay::store::{Batch, Engine};
        let store = fed.open_store("bz").unwrap();
        let key = kring_relay::audit::cert_key(0);
        let mut entry: CertificateUse =
            kring_relay::store::decode(&key, &store.get(&key).unwrap().unwrap()).unwrap();
        entry.chain = kring_protocol::identity::certificates_from_pem(
            &std::fs::read(fed.dir().join("relays/nctv/relay.crt")).unwrap(),
        )
        .unwrap();
        let mut swap = Batch::default();
        swap.put_obj(key, &entry).unwrap();
        store.apply(swap).unwrap();
    }
    let (code, text) = relay_verify(&fed, "bz", None);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("relay nctv's, not relay bz's"), "{text}");

    fed.start("bz").unwrap();
    let mut admin = fed.client("admin@bz").unwrap();
    let summary = admin.audit_each(true, |_| {}).await.unwrap();
    let verdict = summary.verify.unwrap();
    assert_eq!(verdict.first_bad, Some(1), "{verdict:?}");
    assert!(verdict.reason.unwrap().contains("relay nctv's"));
    let local = summary.local.unwrap().chain.unwrap_err();
    assert_eq!(local.seq, 1);
    assert!(local.reason.contains("relay nctv's"), "{local}");
    let (code, text) = cli_verify(&mut admin, None).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("BROKEN at record 1 (checked on this device)"),
        "{text}"
    );
    assert!(admin.audit_all(true).await.is_err());
}
