//! Revocation at a relay: accepting statements (`kring admin revoke`) and CRLs,
//! spreading them across the federation, and enforcing them.
//!
//! - **Accepting** ([`accept_statement`], [`accept_crl`]) runs inside the writer's
//!   critical section: the statement or CRL, its audit record and an outbox item for
//!   every peer (but the one it came from) go into one atomic batch, so a
//!   revocation that was acknowledged is durable and will reach every peer. A relay
//!   passes on only what is new to it, so statements flood any topology once.
//! - **Bounds.** One CRL is held per issuing CA (by its fingerprint), the newest
//!   replacing the one before; a CRL dated in the future is refused; CRLs received
//!   from peers are taken at most [`CRLS_PER_MINUTE`] a minute per issuing
//!   organisation (the excess is dropped, with one audit record a minute saying
//!   so); an accepted CRL's audit record names only the first
//!   [`AUDITED_SERIALS`] newly revoked serials; an organisation's statements are
//!   refused beyond [`MAX_STATEMENTS_PER_ORGANISATION`](kring_protocol::revocation::MAX_STATEMENTS_PER_ORGANISATION).
//! - **Enforcing** ([`enforce_loop`]) runs whenever something becomes revoked that
//!   was not (and after every commit at a hub): it closes the revoked identities' connections, and at every
//!   community hubbed here proposes the removal of every member whose credential is
//!   revoked (as the group's external sender), appending the proposal to the
//!   community log so that the first online member's client commits it.
//! - Everything else checks [`crate::core::Core::revocations`] where it decides: the TLS
//!   identity at connect and at every request, delivery, key package hand-out,
//!   commits (credentials are validated with the set) and notices at the hub.
//!
//! - **Wipe orders** (`kring admin revoke --wipe`): a signed
//!   [`WipeOrder`] given with the statement, accepted only at the revoked user's
//!   home relay (the caller's own), kept under `y/USER` in the statement's batch,
//!   and handed to the user's device in place of the refusal
//!   ([`Response::WipeOrdered`], [`wipe_answer`]), at connect and on any request.
//!   It does not travel: only the home relay serves the device.
//!
//! CRLs are in `crl` (accepting, the rate limit, the files named in `relay.toml`);
//! enforcing is in `enforce`.
//!
//! Store keys: `y/USER` wipe orders, `x/USER` statements, `X/FINGERPRINT` the newest CRL of each issuing
//! CA with that CA (records stored under `X/ORG` are read too), `P/PEER` what a
//! peer's certificate said (organisation, verified CA).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kring_protocol::identity::certificates_from_pem;
use kring_protocol::mls::CertSigner;
use kring_protocol::revocation::{RevocationStatement, WipeOrder, verify_crl};
use kring_protocol::wire::{EntryKind, LogEntry, Response};
use tracing::{debug, info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::RelayError;
use crate::groups;
use crate::relay::{Caller, Relay, Writer, home_relay, now};
use crate::store::{Batch, keys as store_keys};

pub use crate::core::revocation::*;
/// Store keys of revocation.
pub use crate::keyspace::revocation as keys;

mod crl;
mod enforce;

pub use crl::*;
pub use enforce::*;

/// `Request::Revoke` (and, with `wipe`, `Request::RevokeAndWipe`), decided by the
/// core ([`crate::core::revocation::revoke`]); once durable, enforcement runs over
/// everything.
pub async fn revoke(
    relay: &Relay,
    caller: &Caller,
    statement: RevocationStatement,
    wipe: Option<WipeOrder>,
) -> Result<Response, RelayError> {
    let answer = relay
        .call(|core, cx| crate::core::revocation::revoke(core, cx, caller, statement, wipe))
        .await?;
    relay.enforce_soon();
    Ok(answer)
}

/// [`crate::core::revocation::wipe_answer`] at the time now.
pub fn wipe_answer(relay: &Relay, user: &str) -> Option<Response> {
    crate::core::revocation::wipe_answer(relay, &mut relay.cx(), user)
}

// ----- enforcement -------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use kring_certs_dev::{Authority, Pki};
    use kring_protocol::identity::CaFingerprint;
    use kring_protocol::revocation::MAX_CLOCK_SKEW;

    use super::*;
    use crate::audit::AuditRecord;
    use crate::config::RelayConfig;
    use crate::store::{Engine, SledEngine, decode};
    use kring_protocol::revocation::MAX_STATEMENTS_PER_ORGANISATION;

    fn authority(dir: &Path, name: &str, cert: &str, key: &str) -> Authority {
        Authority::load(
            name,
            &std::fs::read_to_string(dir.join(cert)).unwrap(),
            &std::fs::read_to_string(dir.join(key)).unwrap(),
        )
        .unwrap()
    }

    /// Relay bz of the demo federation, with nctv's CA left unpinned (so that a
    /// second CA of nctv's is taken); and nctv's CA and the root.
    fn relay_bz(dir: &Path) -> (Arc<Relay>, Authority, Authority) {
        kring_certs_dev::init_demo(dir, 47_900, false, now()).unwrap();
        let config_path = kring_certs_dev::relay_dir(dir, "bz").join("relay.toml");
        let text = std::fs::read_to_string(&config_path).unwrap();
        let nctv_pin = text
            .lines()
            .skip_while(|l| *l != "id = \"nctv\"")
            .find(|l| l.starts_with("ca_fingerprint"))
            .unwrap()
            .to_string();
        std::fs::write(&config_path, text.replace(&nctv_pin, "")).unwrap();
        let config = RelayConfig::load(&config_path).unwrap();
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&config.data_dir).unwrap());
        let relay = Relay::open(&config, engine).unwrap();
        let nctv = authority(
            &kring_certs_dev::org_dir(dir, "nctv"),
            "nctv",
            "ca.crt",
            "ca.key",
        );
        let root = authority(&dir.join("ca"), "root", "root.crt", "root.key");
        (relay, nctv, root)
    }

    fn accept(
        relay: &Relay,
        crl: &[u8],
        ca: &Authority,
        source: Option<&str>,
    ) -> Result<Option<Vec<String>>, RelayError> {
        relay.write(|w, b| accept_crl(relay, w, b, crl, ca.cert_der(), source))
    }

    fn audit_records(relay: &Relay) -> Vec<AuditRecord> {
        relay
            .engine()
            .scan(store_keys::AUDIT, None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, v)| decode(&k, &v).unwrap())
            .collect()
    }

    #[test]
    fn the_crl_rate_limit_takes_a_few_a_minute_and_reports_the_first_drop() {
        let mut limit = CrlRateLimit::default();
        for _ in 0..CRLS_PER_MINUTE {
            assert_eq!(limit.admit("nctv", 1000), CrlAdmission::Take);
        }
        assert_eq!(limit.admit("nctv", 1010), CrlAdmission::DropAndReport);
        assert_eq!(limit.admit("nctv", 1020), CrlAdmission::Drop);
        assert_eq!(
            limit.admit("aivd", 1020),
            CrlAdmission::Take,
            "per organisation"
        );
        assert_eq!(
            limit.admit("nctv", 1060),
            CrlAdmission::Take,
            "a new minute"
        );
    }

    #[tokio::test]
    async fn a_flood_of_crls_from_a_peer_stays_bounded_in_memory_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, nctv, _) = relay_bz(dir.path());
        let before = audit_records(&relay).len();
        let t = now() - 1000;
        let mut taken = 0;
        for round in 0..100u32 {
            let serials: Vec<Vec<u8>> = (0..500u32)
                .map(|i| (round * 500 + i + 1).to_be_bytes().to_vec())
                .collect();
            let crl = nctv
                .crl(
                    &serials,
                    u64::from(round) + 1,
                    t + i64::from(round),
                    t + 86_400,
                )
                .unwrap();
            if accept(&relay, &crl, &nctv, Some("nctv")).unwrap().is_some() {
                taken += 1;
            }
            assert!(relay.revocations().revoked_certificates() <= 500);
        }
        assert_eq!(taken, CRLS_PER_MINUTE);
        assert_eq!(relay.revocations().crl_issuers(), 1);
        let records = audit_records(&relay);
        let new = &records[before..];
        assert_eq!(new.len(), CRLS_PER_MINUTE as usize + 1, "{new:#?}");
        assert_eq!(
            new.iter()
                .filter(|r| r.event.action == "crl-dropped")
                .count(),
            1
        );
        for r in new {
            assert!(r.event.detail.len() < 600, "{}", r.event.detail);
        }
        assert!(
            new[0].event.detail.contains("500 newly revoked"),
            "{}",
            new[0].event.detail
        );
        assert!(
            new[0].event.detail.contains("and 492 more"),
            "{}",
            new[0].event.detail
        );
        // One record per issuer in the store.
        let stored = relay.engine().scan(keys::CRLS, None, usize::MAX).unwrap();
        assert_eq!(stored.len(), 1);
    }

    fn made_up(user: &str, organisation: &str) -> RevocationStatement {
        RevocationStatement {
            user: user.into(),
            organisation: organisation.into(),
            reason: "made up".into(),
            revoked_at: now(),
            revoker_chain: vec![vec![0; 600]],
            signature: vec![0; 64],
        }
    }

    #[tokio::test]
    async fn statements_are_capped_per_organisation_and_devices_get_them_all_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, _, _) = relay_bz(dir.path());
        // One organisation files as many as it may, sorting before everyone else.
        for i in 0..MAX_STATEMENTS_PER_ORGANISATION {
            let s = made_up(&format!("{i:05}@nctv"), "nctv");
            let taken = relay
                .write(|w, b| accept_statement(&relay, w, b, &s, Some("nctv")))
                .unwrap();
            assert!(taken.is_some());
        }
        let over = made_up("99999@nctv", "nctv");
        let err = relay
            .write(|w, b| accept_statement(&relay, w, b, &over, Some("nctv")))
            .unwrap_err();
        assert!(err.to_string().contains("the most a relay holds"), "{err}");
        // Another organisation's real revocation, sorting after all of them.
        let real = made_up("liaison@aivd", "aivd");
        relay
            .write(|w, b| accept_statement(&relay, w, b, &real, Some("aivd")))
            .unwrap()
            .unwrap();
        // What a device does: Trust, then pages until none are left.
        let mut got = trust_state(&relay).unwrap().statements;
        let mut pages = 1;
        loop {
            let after = got.last().map(|s| s.user.clone());
            let Response::TrustStatements { statements, more } =
                trust_statements(&relay, after.as_deref()).unwrap()
            else {
                panic!("not a page");
            };
            pages += 1;
            assert!(statements.len() <= kring_protocol::wire::limits::MAX_STATEMENTS);
            got.extend(statements);
            if !more {
                break;
            }
        }
        assert!(pages >= 2);
        assert_eq!(got.len(), MAX_STATEMENTS_PER_ORGANISATION + 1);
        assert_eq!(got.last().unwrap().user, "liaison@aivd");
    }

    #[tokio::test]
    async fn a_crl_dated_in_the_future_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, nctv, _) = relay_bz(dir.path());
        let t = now() + MAX_CLOCK_SKEW + 3600;
        let crl = nctv.crl(&[vec![1]], 1, t, t + 86_400).unwrap();
        let err = accept(&relay, &crl, &nctv, Some("nctv")).unwrap_err();
        assert!(err.to_string().contains("in the future"), "{err}");
        assert_eq!(relay.revocations().crl_issuers(), 0);
    }

    #[tokio::test]
    async fn after_a_ca_rotation_both_cas_revocations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, nctv, root) = relay_bz(dir.path());
        let mut pki = Pki::from_authorities(now(), root, Vec::new());
        let nctv2 = pki.add_organisation("nctv").unwrap();
        let t = now() - 100;
        let crl1 = nctv.crl(&[vec![0x11]], 1, t, t + 86_400).unwrap();
        let crl2 = nctv2.crl(&[vec![0x22]], 1, t + 10, t + 86_400).unwrap();
        assert!(accept(&relay, &crl1, &nctv, None).unwrap().is_some());
        assert!(accept(&relay, &crl2, nctv2, None).unwrap().is_some());
        assert_eq!(relay.revocations().revoked_certificates(), 2);
        for ca in [&nctv, nctv2] {
            let key = keys::crl(&CaFingerprint::of(ca.cert_der()));
            assert!(relay.engine().get(&key).unwrap().is_some());
        }
        // What a restart loads.
        let loaded = load(relay.engine(), relay.anchors(), now()).unwrap();
        assert_eq!(loaded.crl_issuers(), 2);
        assert_eq!(loaded.revoked_certificates(), 2);
    }
}
