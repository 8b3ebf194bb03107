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
//!   refused beyond [`MAX_STATEMENTS_PER_ORGANISATION`].
//! - **Enforcing** ([`enforce_loop`]) runs whenever something becomes revoked that
//!   was not (and after every commit at a hub): it closes the revoked identities' connections, and at every
//!   community hubbed here proposes the removal of every member whose credential is
//!   revoked (as the group's external sender), appending the proposal to the
//!   community log so that the first online member's client commits it.
//! - Everything else checks [`Relay::revocations`] where it decides: the TLS
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kring_protocol::identity::{Identity, ROLE_ORG_ADMIN, certificates_from_pem};
use kring_protocol::mls::CertSigner;
use kring_protocol::revocation::{
    MAX_STATEMENTS_PER_ORGANISATION, RevocationStatement, Revocations, WipeOrder, verify_crl,
};
use kring_protocol::wire::{
    CrlCopy, EntryKind, ErrorCode, FedBody, LogEntry, Response, TrustState, TrustedRelay,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::RelayError;
use crate::groups;
use crate::records::CommunityRecord;
use crate::relay::{Caller, Relay, Writer, home_relay, now};
use crate::store::{Batch, Engine, decode, keys as store_keys};

/// Store keys of revocation.
pub use crate::keyspace::revocation as keys;

mod crl;
mod enforce;

pub use crl::*;
pub use enforce::*;

/// Most bytes of statements in one answer to a device (half the default frame:
/// the rest is left for the trust map and the CRLs).
const STATEMENT_PAGE_BYTES: usize = kring_protocol::wire::DEFAULT_MAX_FRAME / 2;

/// What a peer relay's certificate said: its organisation and its organisation CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    /// Organisation (the certificate's O).
    pub organisation: String,
    /// The organisation CA certificate from its chain, DER (empty if none).
    pub ca: Vec<u8>,
}

/// Loads the revocation set from the store (everything in it was verified when it
/// was accepted; CRLs are re-verified so a damaged record cannot revoke at random).
pub fn load(engine: &dyn Engine, anchors: &[Vec<u8>]) -> Result<Revocations, RelayError> {
    let mut set = Revocations::new();
    for (k, v) in engine.scan(keys::STATEMENTS, None, usize::MAX)? {
        let s: RevocationStatement = decode(&k, &v)?;
        set.add_statement(&s);
    }
    for (k, v) in engine.scan(keys::CRLS, None, usize::MAX)? {
        let r: CrlRecord = decode(&k, &v)?;
        match verify_crl(&r.crl, &r.issuer, anchors, now()) {
            Ok(v) => {
                set.add_crl(&v);
            }
            Err(e) => warn!(error = %e, "stored CRL no longer verifies; ignored"),
        }
    }
    Ok(set)
}

/// `Request::Trust`: this relay's trust map and the revocations it holds, for its
/// own devices to validate credentials with (they verify every statement and CRL
/// themselves).
pub fn trust_state(relay: &Relay) -> Result<TrustState, RelayError> {
    let relays = relay
        .trust()
        .iter()
        .map(|(id, t)| TrustedRelay {
            relay: id.to_string(),
            organisation: t.organisation.clone(),
            ca: t.ca,
        })
        .collect();
    let (statements, _) = statement_page(relay, None)?;
    let mut crls = Vec::new();
    for (k, v) in relay
        .engine()
        .scan(keys::CRLS, None, kring_protocol::identity::MAX_CRLS)?
    {
        let r: CrlRecord = decode(&k, &v)?;
        crls.push(CrlCopy {
            crl: r.crl,
            issuer: r.issuer,
        });
    }
    Ok(TrustState {
        relays,
        statements,
        crls,
    })
}

/// `Request::TrustStatements`: the statements after user `after`, one page.
pub fn trust_statements(relay: &Relay, after: Option<&str>) -> Result<Response, RelayError> {
    let (statements, more) = statement_page(relay, after)?;
    Ok(Response::TrustStatements { statements, more })
}

/// Statements in user-id order after `after`: at most
/// [`MAX_STATEMENTS`](kring_protocol::wire::limits::MAX_STATEMENTS) and about
/// [`STATEMENT_PAGE_BYTES`] (always at least one); whether more follow.
fn statement_page(
    relay: &Relay,
    after: Option<&str>,
) -> Result<(Vec<RevocationStatement>, bool), RelayError> {
    let max = kring_protocol::wire::limits::MAX_STATEMENTS;
    let after_key = after.map(keys::statement);
    let mut statements = Vec::new();
    let mut bytes = 0usize;
    for (k, v) in relay
        .engine()
        .scan(keys::STATEMENTS, after_key.as_deref(), max + 1)?
    {
        bytes = bytes.saturating_add(v.len());
        if statements.len() == max || (!statements.is_empty() && bytes > STATEMENT_PAGE_BYTES) {
            return Ok((statements, true));
        }
        statements.push(decode::<RevocationStatement>(&k, &v)?);
    }
    Ok((statements, false))
}

fn refused(code: ErrorCode) -> RelayError {
    RelayError::Refused(code)
}

/// `Request::Revoke` (and, with `wipe`, `Request::RevokeAndWipe`): an org-admin of
/// this relay's organisation revokes a user of that organisation, and may order the
/// user's device wiped (the user must be homed here: the order is kept by the home
/// relay, which alone serves the device).
pub async fn revoke(
    relay: &Relay,
    caller: &Caller,
    statement: RevocationStatement,
    wipe: Option<WipeOrder>,
) -> Result<Response, RelayError> {
    if !caller.identity.has_role(ROLE_ORG_ADMIN) {
        return Err(refused(ErrorCode::Unauthenticated {
            reason: format!(
                "{} is not an org-admin; only org-admins may revoke",
                caller.id
            ),
        }));
    }
    if statement.revoker_chain.first() != caller.chain.first()
        || wipe
            .as_ref()
            .is_some_and(|w| w.revoker_chain.first() != caller.chain.first())
    {
        return Err(refused(ErrorCode::Unauthenticated {
            reason: "the statement must be signed with the caller's own certificate".into(),
        }));
    }
    // The revoker's organisation and the revoked user's home relay are checked
    // against the configured trust map, never against what a certificate claims.
    statement
        .verify(relay.anchors(), &relay.trust(), now())
        .map_err(|e| statement_refusal(&e))?;
    if let Some(w) = &wipe {
        if w.user != statement.user {
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "the wipe order is for {}, the revocation for {}",
                    w.user, statement.user
                ),
            }));
        }
        if home_relay(&w.user) != relay.id() {
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "{} is a user of relay {}: a wipe order is kept by the user's home \
                     relay, so an org-admin homed there must give it",
                    w.user,
                    home_relay(&w.user)
                ),
            }));
        }
        w.verify(relay.anchors(), &relay.trust(), now())
            .map_err(|e| statement_refusal(&e))?;
    }
    let peers = relay
        .write(|w, b| {
            let peers = accept_statement(relay, w, b, &statement, None)?;
            if let Some(order) = &wipe {
                b.put_obj(keys::wipe(&order.user), order)?;
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Revocation,
                        caller.id.clone(),
                        order.user.clone(),
                        "wipe-ordered",
                        "the device is to delete its archive, MLS state, private key and \
                         passphrase file when it next reaches this relay",
                    ),
                )?;
            }
            Ok(peers)
        })?
        .unwrap_or_default();
    relay.durable().await?;
    relay.enforce_soon();
    let removals = hubbed_with_member(relay, &statement.user)?;
    Ok(Response::Revoked {
        user: statement.user,
        peers,
        removals,
    })
}

/// The answer to a revoked device of `user` for which an org-admin ordered a wipe
/// (audited each time it is handed out); `None` if there is no order (the device
/// gets `Error(Revoked)`).
pub fn wipe_answer(relay: &Relay, user: &str) -> Option<Response> {
    let order: WipeOrder = match relay.engine().get(&keys::wipe(user)) {
        Ok(Some(v)) => match decode(&keys::wipe(user), &v) {
            Ok(order) => order,
            Err(e) => {
                warn!(error = %e, user, "stored wipe order unreadable");
                return None;
            }
        },
        Ok(None) => return None,
        Err(e) => {
            warn!(error = %e, user, "cannot read the wipe orders");
            return None;
        }
    };
    relay.audit_now(AuditEvent::new(
        AuditKind::Revocation,
        relay.id(),
        user,
        "wipe-order-sent",
        "the wipe order went to the revoked device with the refusal",
    ));
    Some(Response::WipeOrdered(order))
}

fn statement_refusal(e: &kring_protocol::revocation::RevocationError) -> RelayError {
    use kring_protocol::revocation::RevocationError as E;
    refused(match e {
        E::NotOrgAdmin(_) | E::OtherOrganisation { .. } | E::Revoker(_) | E::BadSignature => {
            ErrorCode::Unauthenticated {
                reason: e.to_string(),
            }
        }
        E::Invalid(_) | E::Crl(_) => ErrorCode::BadRequest {
            reason: e.to_string(),
        },
    })
}

/// Communities hubbed here that have `user` as a member.
fn hubbed_with_member(relay: &Relay, user: &str) -> Result<Vec<String>, RelayError> {
    Ok(hubbed_communities(relay)?
        .into_iter()
        .filter(|c| c.members.iter().any(|m| m == user))
        .map(|c| c.id)
        .collect())
}

fn hubbed_communities(relay: &Relay) -> Result<Vec<CommunityRecord>, RelayError> {
    let mut out = Vec::new();
    for (k, v) in relay
        .engine()
        .scan(store_keys::COMMUNITIES, None, usize::MAX)?
    {
        let c: CommunityRecord = decode(&k, &v)?;
        if c.hub == relay.id() {
            out.push(c);
        }
    }
    Ok(out)
}

/// Takes a verified statement into the batch: stored, audited, the user's key
/// packages deleted (if local), queued for every peer but `source`. `None` if the
/// user was already revoked here (nothing is passed on).
pub fn accept_statement(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    statement: &RevocationStatement,
    source: Option<&str>,
) -> Result<Option<Vec<String>>, RelayError> {
    if relay
        .engine()
        .get(&keys::statement(&statement.user))?
        .is_some()
    {
        return Ok(None);
    }
    let held = relay.revocations().statements_of(&statement.organisation);
    if held >= MAX_STATEMENTS_PER_ORGANISATION {
        return Err(refused(ErrorCode::BadRequest {
            reason: format!(
                "organisation {} already has {held} revocation statements, the most a relay holds for one organisation; {} is not revoked here",
                statement.organisation, statement.user
            ),
        }));
    }
    b.put_obj(keys::statement(&statement.user), statement)?;
    let revoker = statement
        .revoker_chain
        .first()
        .and_then(|c| Identity::from_der(c).ok())
        .map(|i| i.id())
        .unwrap_or_else(|| "-".into());
    let via = source
        .map(|s| format!(" (received from relay {s})"))
        .unwrap_or_default();
    w.audit.append(
        b,
        now(),
        AuditEvent::new(
            AuditKind::Revocation,
            revoker,
            statement.user.clone(),
            "revoke",
            format!("{}{via}", statement.reason),
        ),
    )?;
    if home_relay(&statement.user) == relay.id() {
        for (k, _) in relay.engine().scan(
            &store_keys::key_package_prefix(&statement.user),
            None,
            usize::MAX,
        )? {
            b.delete(k);
        }
        b.delete(store_keys::last_resort(&statement.user));
    }
    let peers = pass_on(
        relay,
        w,
        b,
        source,
        FedBody::Revocation {
            statement: statement.clone(),
        },
    )?;
    relay.revocations_mut().add_statement(statement);
    Ok(Some(peers))
}

fn pass_on(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    source: Option<&str>,
    body: FedBody,
) -> Result<Vec<String>, RelayError> {
    let peers: Vec<String> = relay
        .peer_list()
        .iter()
        .map(|p| p.id.clone())
        .filter(|p| Some(p.as_str()) != source)
        .collect();
    for p in &peers {
        crate::core::outbox::enqueue(relay, w, b, p, body.clone())?;
    }
    Ok(peers)
}

/// Applies a revocation statement received from `peer` (inside the batch of the
/// federation item).
pub fn apply_statement(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    statement: &RevocationStatement,
) -> Result<(), RelayError> {
    statement
        .verify(relay.anchors(), &relay.trust(), now())
        .map_err(|e| statement_refusal(&e))?;
    accept_statement(relay, w, b, statement, Some(peer))?;
    Ok(())
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
    use crate::store::SledEngine;

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
        let loaded = load(relay.engine(), relay.anchors()).unwrap();
        assert_eq!(loaded.crl_issuers(), 2);
        assert_eq!(loaded.revoked_certificates(), 2);
    }
}
