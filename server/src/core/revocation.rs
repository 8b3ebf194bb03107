//! Revocation in the core: the revocation set as the store holds it, statements
//! and CRLs taken (verified, stored, audited, passed on to every peer but the one
//! they came from), the trust state devices read, wipe orders, and what
//! enforcement has to look at.

use std::collections::{BTreeMap, BTreeSet};

use kring_protocol::identity::{Identity, ROLE_ORG_ADMIN};
use kring_protocol::revocation::{
    MAX_STATEMENTS_PER_ORGANISATION, RevocationStatement, Revocations, WipeOrder, verify_crl,
};
use kring_protocol::wire::{CrlCopy, ErrorCode, FedBody, Response, TrustState, TrustedRelay};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::core::{Caller, Core, Cx, Writer, home_relay};
use crate::error::RelayError;
use crate::keyspace::revocation as keys;
use crate::records::CommunityRecord;
use crate::store::{Batch, Engine, decode, keys as store_keys};

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
pub fn load(engine: &dyn Engine, anchors: &[Vec<u8>], now: i64) -> Result<Revocations, RelayError> {
    let mut set = Revocations::new();
    for (k, v) in engine.scan(keys::STATEMENTS, None, usize::MAX)? {
        let s: RevocationStatement = decode(&k, &v)?;
        set.add_statement(&s);
    }
    for (k, v) in engine.scan(keys::CRLS, None, usize::MAX)? {
        let r: CrlRecord = decode(&k, &v)?;
        match verify_crl(&r.crl, &r.issuer, anchors, now) {
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
pub fn trust_state(core: &Core) -> Result<TrustState, RelayError> {
    let relays = core
        .trust()
        .iter()
        .map(|(id, t)| TrustedRelay {
            relay: id.to_string(),
            organisation: t.organisation.clone(),
            ca: t.ca,
        })
        .collect();
    let (statements, _) = statement_page(core, None)?;
    let mut crls = Vec::new();
    for (k, v) in core
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
pub fn trust_statements(core: &Core, after: Option<&str>) -> Result<Response, RelayError> {
    let (statements, more) = statement_page(core, after)?;
    Ok(Response::TrustStatements { statements, more })
}

/// Statements in user-id order after `after`: at most
/// [`MAX_STATEMENTS`](kring_protocol::wire::limits::MAX_STATEMENTS) and about
/// [`STATEMENT_PAGE_BYTES`] (always at least one); whether more follow.
fn statement_page(
    core: &Core,
    after: Option<&str>,
) -> Result<(Vec<RevocationStatement>, bool), RelayError> {
    let max = kring_protocol::wire::limits::MAX_STATEMENTS;
    let after_key = after.map(keys::statement);
    let mut statements = Vec::new();
    let mut bytes = 0usize;
    for (k, v) in core
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
pub fn revoke(
    core: &Core,
    cx: &mut Cx,
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
        .verify(core.anchors(), &core.trust(), cx.now)
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
        if home_relay(&w.user) != core.id() {
            return Err(refused(ErrorCode::BadRequest {
                reason: format!(
                    "{} is a user of relay {}: a wipe order is kept by the user's home \
                     relay, so an org-admin homed there must give it",
                    w.user,
                    home_relay(&w.user)
                ),
            }));
        }
        w.verify(core.anchors(), &core.trust(), cx.now)
            .map_err(|e| statement_refusal(&e))?;
    }
    let peers = core
        .write(cx, |w, b| {
            let peers = accept_statement(core, w, b, &statement, None)?;
            if let Some(order) = &wipe {
                b.put_obj(keys::wipe(&order.user), order)?;
                w.audit.append(
                    b,
                    w.now,
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
    let removals = hubbed_with_member(core, &statement.user)?;
    Ok(Response::Revoked {
        user: statement.user,
        peers,
        removals,
    })
}

/// The answer to a revoked device of `user` for which an org-admin ordered a wipe
/// (audited each time it is handed out); `None` if there is no order (the device
/// gets `Error(Revoked)`).
pub fn wipe_answer(core: &Core, cx: &mut Cx, user: &str) -> Option<Response> {
    let order: WipeOrder = match core.engine().get(&keys::wipe(user)) {
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
    core.audit(
        cx,
        AuditEvent::new(
            AuditKind::Revocation,
            core.id(),
            user,
            "wipe-order-sent",
            "the wipe order went to the revoked device with the refusal",
        ),
    );
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
fn hubbed_with_member(core: &Core, user: &str) -> Result<Vec<String>, RelayError> {
    Ok(hubbed_communities(core)?
        .into_iter()
        .filter(|c| c.members.iter().any(|m| m == user))
        .map(|c| c.id)
        .collect())
}

pub(crate) fn hubbed_communities(core: &Core) -> Result<Vec<CommunityRecord>, RelayError> {
    let mut out = Vec::new();
    for (k, v) in core
        .engine()
        .scan(store_keys::COMMUNITIES, None, usize::MAX)?
    {
        let c: CommunityRecord = decode(&k, &v)?;
        if c.hub == core.id() {
            out.push(c);
        }
    }
    Ok(out)
}

/// Takes a verified statement into the batch: stored, audited, the user's key
/// packages deleted (if local), queued for every peer but `source`. `None` if the
/// user was already revoked here (nothing is passed on).
pub fn accept_statement(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    statement: &RevocationStatement,
    source: Option<&str>,
) -> Result<Option<Vec<String>>, RelayError> {
    if core
        .engine()
        .get(&keys::statement(&statement.user))?
        .is_some()
    {
        return Ok(None);
    }
    let held = core.revocations().statements_of(&statement.organisation);
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
        w.now,
        AuditEvent::new(
            AuditKind::Revocation,
            revoker,
            statement.user.clone(),
            "revoke",
            format!("{}{via}", statement.reason),
        ),
    )?;
    if home_relay(&statement.user) == core.id() {
        for (k, _) in core.engine().scan(
            &store_keys::key_package_prefix(&statement.user),
            None,
            usize::MAX,
        )? {
            b.delete(k);
        }
        b.delete(store_keys::last_resort(&statement.user));
    }
    let peers = pass_on(
        core,
        w,
        b,
        source,
        FedBody::Revocation {
            statement: statement.clone(),
        },
    )?;
    core.add_revocation_statement(statement);
    Ok(Some(peers))
}

fn pass_on(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    source: Option<&str>,
    body: FedBody,
) -> Result<Vec<String>, RelayError> {
    let peers: Vec<String> = core
        .peer_list()
        .iter()
        .map(|p| p.id.clone())
        .filter(|p| Some(p.as_str()) != source)
        .collect();
    for p in &peers {
        crate::core::outbox::enqueue(core, w, b, p, body.clone())?;
    }
    Ok(peers)
}

/// Applies a revocation statement received from `peer` (inside the batch of the
/// federation item).
pub fn apply_statement(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    statement: &RevocationStatement,
) -> Result<(), RelayError> {
    statement
        .verify(core.anchors(), &core.trust(), w.now)
        .map_err(|e| statement_refusal(&e))?;
    accept_statement(core, w, b, statement, Some(peer))?;
    Ok(())
}

/// Most CRLs taken from peers per issuing organisation in one minute.
pub const CRLS_PER_MINUTE: u32 = 6;

/// Most newly revoked serials an accepted CRL's audit record names (the count is
/// always there).
pub const AUDITED_SERIALS: usize = 8;

/// What [`CrlRateLimit::admit`] decides for one CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlAdmission {
    /// Take it.
    Take,
    /// Drop it, and write one audit record saying that this organisation's CRLs
    /// are being dropped (the first drop of the minute).
    DropAndReport,
    /// Drop it quietly (already reported this minute).
    Drop,
}

/// The limit on CRLs taken from peers: at most [`CRLS_PER_MINUTE`] per issuing
/// organisation in each minute. Sans-IO: the caller passes the time in.
#[derive(Debug, Default)]
pub struct CrlRateLimit {
    windows: BTreeMap<String, CrlWindow>,
}

#[derive(Debug, Clone, Copy)]
struct CrlWindow {
    start: i64,
    taken: u32,
    reported: bool,
}

impl CrlRateLimit {
    /// Decides for a CRL of `organisation` arriving at `now` (unix seconds).
    pub fn admit(&mut self, organisation: &str, now: i64) -> CrlAdmission {
        // Forget organisations whose window has passed (keeps the map small).
        self.windows.retain(|_, w| now.saturating_sub(w.start) < 60);
        let w = self
            .windows
            .entry(organisation.to_string())
            .or_insert(CrlWindow {
                start: now,
                taken: 0,
                reported: false,
            });
        if w.taken < CRLS_PER_MINUTE {
            w.taken += 1;
            CrlAdmission::Take
        } else if !w.reported {
            w.reported = true;
            CrlAdmission::DropAndReport
        } else {
            CrlAdmission::Drop
        }
    }
}

/// A CRL as stored: the DER and its issuing CA certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrlRecord {
    /// CRL, DER.
    pub crl: Vec<u8>,
    /// Issuing organisation CA, DER.
    pub issuer: Vec<u8>,
}

/// Takes a CRL into the batch if it verifies and is newer than the one held for its
/// issuing CA: the held set replaced, stored, audited (a count and the first
/// [`AUDITED_SERIALS`] new serials), queued for every peer but `source`. `None` if
/// it is not newer, or if it came from a peer beyond [`CRLS_PER_MINUTE`] for its
/// organisation (dropped; the first drop of the minute is audited).
pub fn accept_crl(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    crl: &[u8],
    issuer: &[u8],
    source: Option<&str>,
) -> Result<Option<Vec<String>>, RelayError> {
    let verified = verify_crl(crl, issuer, core.anchors(), w.now).map_err(|e| {
        refused(ErrorCode::BadRequest {
            reason: e.to_string(),
        })
    })?;
    core.trust()
        .check_organisation_ca(&verified.organisation, issuer)
        .map_err(|e| {
            refused(ErrorCode::Unauthenticated {
                reason: format!("CRL refused: {e}"),
            })
        })?;
    if core.revocations().is_older(&verified) {
        return Ok(None);
    }
    let via = source
        .map(|s| format!(" (received from relay {s})"))
        .unwrap_or_default();
    // Files the operator configured are always read; what peers pass on is limited.
    if source.is_some() {
        match core.admit_crl(&verified.organisation, w.now) {
            CrlAdmission::Take => {}
            CrlAdmission::Drop => {
                debug!(organisation = %verified.organisation, "CRL dropped: over the rate limit");
                return Ok(None);
            }
            CrlAdmission::DropAndReport => {
                warn!(organisation = %verified.organisation, "CRLs dropped: over the rate limit");
                w.audit.append(
                    b,
                    w.now,
                    AuditEvent::new(
                        AuditKind::Revocation,
                        format!("ca:{}", verified.organisation),
                        format!("crl:{}", verified.organisation),
                        "crl-dropped",
                        format!(
                            "CRLs of organisation {} arrive faster than {CRLS_PER_MINUTE} a minute; the rest of this minute's are dropped{via}",
                            verified.organisation
                        ),
                    ),
                )?;
                return Ok(None);
            }
        }
    }
    let Some(change) = core.add_crl(&verified) else {
        return Ok(None);
    };
    b.put_obj(
        keys::crl(&verified.issuer),
        &CrlRecord {
            crl: crl.to_vec(),
            issuer: issuer.to_vec(),
        },
    )?;
    let named = change
        .added
        .iter()
        .take(AUDITED_SERIALS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let rest = change.added.len().saturating_sub(AUDITED_SERIALS);
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    w.audit.append(
        b,
        w.now,
        AuditEvent::new(
            AuditKind::Revocation,
            format!("ca:{}", verified.organisation),
            format!("crl:{}", verified.organisation),
            "crl",
            format!(
                "CA {}: {} revoked certificate(s), {} newly revoked{}{more}, {} no longer listed{via}",
                verified.issuer,
                change.listed,
                change.added.len(),
                if named.is_empty() {
                    String::new()
                } else {
                    format!(": {named}")
                },
                change.dropped,
            ),
        ),
    )?;
    let peers = pass_on(
        core,
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
