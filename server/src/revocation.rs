//! Revocation at a relay: accepting statements (`kring admin revoke`) and CRLs,
//! spreading them across the federation, and enforcing them.
//!
//! - **Accepting** ([`accept_statement`], [`accept_crl`]) runs inside the writer's
//!   critical section: the statement or CRL, its audit record and an outbox item for
//!   every peer (but the one it came from) go into one atomic batch, so a
//!   revocation that was acknowledged is durable and will reach every peer. A relay
//!   passes on only what is new to it, so statements flood any topology once.
//! - **Enforcing** ([`enforce_loop`]) runs whenever the set changes (and after every
//!   commit at a hub): it closes the revoked identities' connections, and at every
//!   community hubbed here proposes the removal of every member whose credential is
//!   revoked (as the group's external sender), appending the proposal to the
//!   community log so that the first online member's client commits it.
//! - Everything else checks [`Relay::revocations`] where it decides: the TLS
//!   identity at connect and at every request, delivery, key package hand-out,
//!   commits (credentials are validated with the set) and notices at the hub.
//!
//! Store keys: `x/USER` statements, `X/ORG` the newest CRL of each organisation
//! with its issuing CA, `P/PEER` what a peer's certificate said (organisation, CA).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kring_protocol::identity::{Identity, ROLE_ORG_ADMIN, certificates_from_pem};
use kring_protocol::mls::CertSigner;
use kring_protocol::revocation::{RevocationStatement, Revocations, verify_crl};
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
use crate::store::{Batch, Engine, decode, get_obj, keys as store_keys};

/// Store keys of revocation.
pub mod keys {
    /// Prefix of revocation statements.
    pub const STATEMENTS: &[u8] = b"x/";
    /// Prefix of CRLs.
    pub const CRLS: &[u8] = b"X/";
    /// A statement revoking `user`.
    pub fn statement(user: &str) -> Vec<u8> {
        [STATEMENTS, user.as_bytes()].concat()
    }
    /// The newest CRL of `org`.
    pub fn crl(org: &str) -> Vec<u8> {
        [CRLS, org.as_bytes()].concat()
    }
    /// What a peer's certificate said when last seen.
    pub fn peer_info(peer: &str) -> Vec<u8> {
        [b"P/", peer.as_bytes()].concat()
    }
}

/// How often configured CRL files are checked for changes.
const CRL_POLL: Duration = Duration::from_secs(1);

/// A CRL as stored: the DER and its issuing CA certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrlRecord {
    /// CRL, DER.
    pub crl: Vec<u8>,
    /// Issuing organisation CA, DER.
    pub issuer: Vec<u8>,
}

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
    let max = kring_protocol::wire::limits::MAX_STATEMENTS;
    let mut statements = Vec::new();
    for (k, v) in relay.engine().scan(keys::STATEMENTS, None, max + 1)? {
        statements.push(decode::<RevocationStatement>(&k, &v)?);
    }
    if statements.len() > max {
        warn!(
            max,
            "more revocation statements than a device can be sent; devices get the first {max}"
        );
        statements.truncate(max);
    }
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

fn refused(code: ErrorCode) -> RelayError {
    RelayError::Refused(code)
}

/// `Request::Revoke`: an org-admin of this relay's organisation revokes a user of
/// that organisation.
pub async fn revoke(
    relay: &Relay,
    caller: &Caller,
    statement: RevocationStatement,
) -> Result<Response, RelayError> {
    if !caller.identity.has_role(ROLE_ORG_ADMIN) {
        return Err(refused(ErrorCode::Unauthenticated {
            reason: format!(
                "{} is not an org-admin; only org-admins may revoke",
                caller.id
            ),
        }));
    }
    if statement.revoker_chain.first() != caller.chain.first() {
        return Err(refused(ErrorCode::Unauthenticated {
            reason: "the statement must be signed with the caller's own certificate".into(),
        }));
    }
    // The revoker's organisation and the revoked user's home relay are checked
    // against the configured trust map, never against what a certificate claims.
    statement
        .verify(relay.anchors(), relay.trust(), now())
        .map_err(|e| statement_refusal(&e))?;
    let peers = relay
        .write(|w, b| accept_statement(relay, w, b, &statement, None))?
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
        .peers
        .keys()
        .filter(|p| Some(p.as_str()) != source)
        .cloned()
        .collect();
    for p in &peers {
        crate::federation::enqueue(relay, w, b, p, body.clone())?;
    }
    Ok(peers)
}

/// Takes a CRL into the batch if it verifies and is newer than the one held for its
/// organisation: stored, audited, queued for every peer but `source`. `None` if it
/// is not newer.
pub fn accept_crl(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    crl: &[u8],
    issuer: &[u8],
    source: Option<&str>,
) -> Result<Option<Vec<String>>, RelayError> {
    let verified = verify_crl(crl, issuer, relay.anchors(), now()).map_err(|e| {
        refused(ErrorCode::BadRequest {
            reason: e.to_string(),
        })
    })?;
    relay
        .trust()
        .check_organisation_ca(&verified.organisation, issuer)
        .map_err(|e| {
            refused(ErrorCode::Unauthenticated {
                reason: format!("CRL refused: {e}"),
            })
        })?;
    let held: Option<CrlRecord> = get_obj(relay.engine(), &keys::crl(&verified.organisation))?;
    if let Some(h) = held
        && let Ok(old) = verify_crl(&h.crl, &h.issuer, relay.anchors(), now())
        && old.this_update >= verified.this_update
    {
        return Ok(None);
    }
    let Some(new) = relay.revocations_mut().add_crl(&verified) else {
        return Ok(None);
    };
    b.put_obj(
        keys::crl(&verified.organisation),
        &CrlRecord {
            crl: crl.to_vec(),
            issuer: issuer.to_vec(),
        },
    )?;
    let via = source
        .map(|s| format!(" (received from relay {s})"))
        .unwrap_or_default();
    w.audit.append(
        b,
        now(),
        AuditEvent::new(
            AuditKind::Revocation,
            format!("ca:{}", verified.organisation),
            format!("crl:{}", verified.organisation),
            "crl",
            format!(
                "{} revoked certificate(s), {} new: {}{via}",
                verified.serials.len(),
                new.len(),
                new.join(", ")
            ),
        ),
    )?;
    let peers = pass_on(
        relay,
        w,
        b,
        source,
        FedBody::Crl {
            crl: crl.to_vec(),
            issuer: issuer.to_vec(),
        },
    )?;
    Ok(Some(peers))
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
        .verify(relay.anchors(), relay.trust(), now())
        .map_err(|e| statement_refusal(&e))?;
    accept_statement(relay, w, b, statement, Some(peer))?;
    Ok(())
}

// ----- enforcement -------------------------------------------------------------------

/// What the enforcement task has to look at next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnforceDue {
    /// Everything: the revocation set changed (or the relay started).
    pub all: bool,
    /// Communities hubbed here where a commit landed since the last pass.
    pub communities: BTreeSet<String>,
}

impl EnforceDue {
    /// Everything is due.
    pub fn everything() -> Self {
        Self {
            all: true,
            communities: BTreeSet::new(),
        }
    }

    /// Nothing is due.
    pub fn is_empty(&self) -> bool {
        !self.all && self.communities.is_empty()
    }

    /// Adds what `other` has due.
    pub fn merge(&mut self, other: EnforceDue) {
        self.all |= other.all;
        self.communities.extend(other.communities);
    }
}

/// Runs until the relay stops: enforces the revocation set when it changes and
/// looks again at a community hubbed here when a commit lands in it (only then:
/// nothing is re-verified while nothing changes); re-reads configured CRL files
/// when they change.
pub async fn enforce_loop(relay: Arc<Relay>, crl_files: Vec<PathBuf>) {
    let mut rx = relay.enforce_signal();
    let mut seen: Vec<Option<SystemTime>> = vec![None; crl_files.len()];
    loop {
        load_crl_files(&relay, &crl_files, &mut seen).await;
        rx.mark_unchanged();
        let due = std::mem::take(&mut *relay.enforce_due());
        if !due.is_empty()
            && let Err(e) = enforce(&relay, &due).await
        {
            warn!(error = %e, "enforcing revocations failed; will retry");
            relay.enforce_due().merge(due);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(CRL_POLL) => {}
        }
    }
}

async fn load_crl_files(relay: &Relay, files: &[PathBuf], seen: &mut [Option<SystemTime>]) {
    for (path, seen) in files.iter().zip(seen.iter_mut()) {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == *seen {
            continue;
        }
        match read_crl_file(relay, path).await {
            Ok(()) => *seen = modified,
            Err(e) => warn!(file = %path.display(), error = %e, "CRL file not loaded; will retry"),
        }
    }
}

async fn read_crl_file(relay: &Relay, path: &std::path::Path) -> Result<(), RelayError> {
    let bytes = std::fs::read(path).map_err(|e| RelayError::Config {
        path: path.to_path_buf(),
        reason: format!("cannot read CRL: {e}"),
    })?;
    let der = crl_der(&bytes).ok_or_else(|| RelayError::Config {
        path: path.to_path_buf(),
        reason: "not a DER or PEM CRL".into(),
    })?;
    let cas = relay.known_cas();
    let Some(issuer) = cas
        .iter()
        .find(|ca| verify_crl(&der, ca, relay.anchors(), now()).is_ok())
    else {
        return Err(RelayError::Config {
            path: path.to_path_buf(),
            reason: "no known organisation CA signed this CRL (its organisation's relay has not been seen yet?)".into(),
        });
    };
    let accepted = relay.write(|w, b| accept_crl(relay, w, b, &der, issuer, None))?;
    if accepted.is_some() {
        relay.durable().await?;
        relay.enforce_soon();
        info!(file = %path.display(), "CRL loaded");
    }
    Ok(())
}

/// DER of a CRL given as DER or PEM (`-----BEGIN X509 CRL-----`).
fn crl_der(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.first() == Some(&0x30) {
        return Some(bytes.to_vec());
    }
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    CertificateRevocationListDer::from_pem_slice(bytes)
        .ok()
        .map(|c| c.as_ref().to_vec())
}

/// CA certificates a PEM file holds (for tests and tools).
pub fn ca_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    certificates_from_pem(pem).unwrap_or_default()
}

/// One enforcement pass over what is `due`: after a change of the revocation set
/// cuts off revoked identities and looks at every community hubbed here, after a
/// commit only at that community; proposes the removal of every member whose
/// credential no longer passes. Members are checked outside the writer; only a
/// community with removals due enters it.
pub async fn enforce(relay: &Relay, due: &EnforceDue) -> Result<(), RelayError> {
    debug!(
        all = due.all,
        communities = due.communities.len(),
        "enforcement pass"
    );
    let cut = if due.all {
        relay.cut_off_revoked()
    } else {
        Vec::new()
    };
    for (id, why) in &cut {
        relay.audit_now(AuditEvent::new(
            AuditKind::Revocation,
            relay.id(),
            id.clone(),
            "cut-off",
            format!("connection closed: {why}"),
        ));
    }
    if relay.revocations().is_empty() {
        return Ok(());
    }
    let communities: Vec<String> = if due.all {
        hubbed_communities(relay)?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        due.communities
            .iter()
            .filter(|c| home_relay(c) == relay.id())
            .cloned()
            .collect()
    };
    // A copy, so that the writer is never held up on the set's lock meanwhile.
    let revoked = relay.revocations().clone();
    let mut signer = None;
    let mut wrote = false;
    for community in communities {
        let invalid = groups::invalid_members(
            relay.engine_arc(),
            &community,
            relay.anchors(),
            relay.trust(),
            now() as u64,
            &revoked,
        )?;
        if invalid.is_empty() {
            continue;
        }
        let signer = match &signer {
            Some(s) => s,
            None => signer.insert(
                CertSigner::from_pkcs8(relay.cert_chain.clone(), &relay.key_pkcs8)
                    .map_err(|e| RelayError::Store(format!("relay signer: {e}")))?,
            ),
        };
        wrote |= relay.write(|w, b| propose_removals(relay, w, b, &community, signer, &invalid))?;
    }
    if wrote || !cut.is_empty() {
        relay.durable().await?;
    }
    Ok(())
}

fn propose_removals(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    community: &str,
    signer: &CertSigner,
    due: &[(String, String)],
) -> Result<bool, RelayError> {
    let Some(mut rec) = relay.community_in(b, community)? else {
        return Ok(false);
    };
    let overlay = groups::Overlay::new(relay.engine_arc());
    let proposed = {
        let revoked = relay.revocations();
        groups::propose_removals(
            &overlay,
            community,
            relay.anchors(),
            relay.trust(),
            now() as u64,
            &revoked,
            signer,
            due,
        )?
    };
    if proposed.is_empty() {
        return Ok(false);
    }
    b.extend(overlay.into_batch());
    for p in proposed {
        let seq = rec.last_seq + 1;
        let entry = LogEntry {
            community: community.to_string(),
            seq,
            sender: relay.id().to_string(),
            ordered_at: now(),
            kind: EntryKind::Handshake { epoch: p.epoch },
            message: p.message,
        };
        b.put_obj(store_keys::log(community, seq), &entry)?;
        rec.last_seq = seq;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Membership,
                relay.id(),
                community,
                "propose-removal",
                format!("{} at epoch {}: {}", p.member, p.epoch, p.reason),
            ),
        )?;
        relay.fan_out_entry(w, b, &rec, &entry)?;
    }
    crate::relay::put_community(b, &rec)?;
    Ok(true)
}
