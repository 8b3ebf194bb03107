//! Revocation: signed revocation statements by org-admins, CRLs
//! published by organisation CAs, and the set of revocations a relay enforces.
//!
//! * A [`RevocationStatement`] revokes a **user identity** (`NAME@RELAY`) for good:
//!   every certificate of that identity, past and future. It is signed with the
//!   org-admin's certificate key and carries the org-admin's chain, so any relay of
//!   the federation can check it on its own ([`RevocationStatement::verify`]).
//!   Re-admitting the person means a new user name.
//! * A CRL revokes **certificates** (by issuing CA and serial number). A relay
//!   accepts one only with its issuing CA (an organisation CA, or a federation
//!   anchor revoking organisation CAs), verified against the federation anchors
//!   ([`verify_crl`]), and not dated in the future. One CRL is held per issuing CA
//!   (by the CA certificate's fingerprint): the newest replaces the one before, so
//!   what is held is bounded by the current CRLs' sizes.
//! * [`Revocations`] is what a relay enforces: it answers "is this identity
//!   revoked, and why" for a certificate ([`Revocations::check`]) or, where only the
//!   id is known, for a user id ([`Revocations::user_revoked`]).
//!
//! Everything here is pure: callers pass bytes and the current time in.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use crate::identity::{
    self, CaFingerprint, Identity, IdentityKind, MAX_CERT_DER_LEN, MAX_CHAIN_LEN, MAX_CRL_LEN,
    ROLE_ORG_ADMIN, TrustMap,
};

/// Domain separator of the signed bytes of a statement.
const DOMAIN: &[u8] = b"kring-revocation-v1";
/// Longest reason accepted (bytes).
pub const MAX_REASON_LEN: usize = 512;
/// Most revoked serial numbers accepted in one CRL.
pub const MAX_CRL_ENTRIES: usize = 100_000;
/// How far in the future a statement's time or a CRL's thisUpdate may lie (clock
/// skew), seconds.
pub const MAX_CLOCK_SKEW: i64 = 300;
/// Most revocation statements a relay holds per organisation: beyond it, an
/// organisation's statements are refused, so that one organisation cannot crowd
/// out the others' in what devices are sent.
pub const MAX_STATEMENTS_PER_ORGANISATION: usize = 4096;

/// What is wrong with a revocation statement or a CRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// A field is empty, too long or malformed.
    #[error("invalid revocation statement: {0}")]
    Invalid(String),
    /// The org-admin's certificate chain does not verify.
    #[error("the revoker's certificate is not valid: {0}")]
    Revoker(String),
    /// The signer is not an org-admin.
    #[error("{0} is not an org-admin (the certificate has no org-admin role)")]
    NotOrgAdmin(String),
    /// The user belongs to another organisation than the org-admin's.
    #[error(
        "{user} is a user of organisation {user_org}; only org-admins of {user_org} may revoke it (the revoker is of {revoker_org})"
    )]
    OtherOrganisation {
        /// The revoked user.
        user: String,
        /// Their organisation.
        user_org: String,
        /// The revoker's organisation.
        revoker_org: String,
    },
    /// The signature does not match.
    #[error("the revocation statement's signature does not verify")]
    BadSignature,
    /// The CRL or its issuer is not acceptable.
    #[error("CRL refused: {0}")]
    Crl(String),
}

/// A signed statement by an org-admin: `user` is revoked, for `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationStatement {
    /// The revoked user, `NAME@RELAY`.
    pub user: String,
    /// The revoked user's organisation (= the revoker's).
    pub organisation: String,
    /// Why (shown to administrators and written to audit logs).
    pub reason: String,
    /// When it was signed, unix seconds.
    pub revoked_at: i64,
    /// The org-admin's certificate chain, leaf first (DER).
    pub revoker_chain: Vec<Vec<u8>>,
    /// Ed25519 signature by the revoker's certificate key over [`Self::signed_bytes`].
    pub signature: Vec<u8>,
}

impl RevocationStatement {
    /// The bytes the revoker signs.
    pub fn signed_bytes(
        user: &str,
        organisation: &str,
        reason: &str,
        revoked_at: i64,
        revoker_leaf: &[u8],
    ) -> Vec<u8> {
        let body = postcard::to_stdvec(&(user, organisation, reason, revoked_at, revoker_leaf))
            .unwrap_or_default();
        [DOMAIN, &body].concat()
    }

    /// Builds and signs a statement with an org-admin's chain and signing function
    /// (the certificate key; see `mls::CertSigner`).
    ///
    /// # Errors
    /// [`RevocationError::Invalid`] for a bad user id or reason or an unreadable
    /// chain; [`RevocationError::NotOrgAdmin`] if the certificate has no org-admin
    /// role.
    pub fn sign(
        revoker_chain: Vec<Vec<u8>>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
        user: &str,
        reason: &str,
        revoked_at: i64,
    ) -> Result<Self, RevocationError> {
        check_fields(user, reason)?;
        let leaf = revoker_chain
            .first()
            .ok_or_else(|| RevocationError::Invalid("empty revoker chain".into()))?;
        let revoker =
            Identity::from_der(leaf).map_err(|e| RevocationError::Revoker(e.to_string()))?;
        if !revoker.has_role(ROLE_ORG_ADMIN) {
            return Err(RevocationError::NotOrgAdmin(revoker.id()));
        }
        let organisation = revoker.organisation.clone();
        let bytes = Self::signed_bytes(user, &organisation, reason, revoked_at, leaf);
        let signature = sign(&bytes);
        Ok(Self {
            user: user.to_string(),
            organisation,
            reason: reason.to_string(),
            revoked_at,
            revoker_chain,
            signature,
        })
    }

    /// Checks the statement on its own: fields in bounds, the revoker's chain valid
    /// at `revoked_at` (so a statement stays valid after the revoker's certificate
    /// expires) and `revoked_at` not in the future, the revoker an org-admin of
    /// `organisation`, not revoking themselves, and the signature. Returns the
    /// revoker.
    ///
    /// The revoker's certificate must be one `trust` accepts for its home relay
    /// (organisation and pinned CA), and the revoked user's home relay must belong
    /// to `organisation` according to `trust` ([`Self::check_home`]): an
    /// organisation revokes only its own users, whatever its CA signs.
    ///
    /// # Errors
    /// The [`RevocationError`] that says what is wrong.
    pub fn verify(
        &self,
        anchors: &[Vec<u8>],
        trust: &TrustMap,
        now: i64,
    ) -> Result<Identity, RevocationError> {
        check_fields(&self.user, &self.reason)?;
        let leaf = self
            .revoker_chain
            .first()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let bytes = Self::signed_bytes(
            &self.user,
            &self.organisation,
            &self.reason,
            self.revoked_at,
            leaf,
        );
        verify_signed(
            &Signed {
                user: &self.user,
                organisation: &self.organisation,
                at: self.revoked_at,
                revoker_chain: &self.revoker_chain,
                signature: &self.signature,
                bytes: &bytes,
            },
            anchors,
            trust,
            now,
        )
    }

    /// Checks that the revoked user's home relay belongs to the statement's
    /// organisation, given that relay's organisation as this relay knows it.
    ///
    /// # Errors
    /// [`RevocationError::OtherOrganisation`].
    pub fn check_home(&self, home_relay_org: &str) -> Result<(), RevocationError> {
        if home_relay_org != self.organisation {
            return Err(RevocationError::OtherOrganisation {
                user: self.user.clone(),
                user_org: home_relay_org.to_string(),
                revoker_org: self.organisation.clone(),
            });
        }
        Ok(())
    }

    /// The revoked user's home relay.
    pub fn home_relay(&self) -> &str {
        self.user
            .split_once('@')
            .map(|(_, r)| r)
            .unwrap_or_default()
    }
}

/// What a revocation statement and a wipe order have in common: signed by an
/// org-admin of `organisation` about `user` at `at`, over `bytes`.
struct Signed<'a> {
    user: &'a str,
    organisation: &'a str,
    at: i64,
    revoker_chain: &'a [Vec<u8>],
    signature: &'a [u8],
    bytes: &'a [u8],
}

/// The checks of [`RevocationStatement::verify`] and [`WipeOrder::verify`] after
/// their own fields': the revoker's chain valid at `at` (and trusted for its home
/// relay), `at` not in the future, the revoker an org-admin of `organisation`, not
/// the user, the signature, and the user's home relay of `organisation`.
fn verify_signed(
    signed: &Signed<'_>,
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: i64,
) -> Result<Identity, RevocationError> {
    if signed.revoker_chain.is_empty()
        || signed.revoker_chain.len() > MAX_CHAIN_LEN
        || signed
            .revoker_chain
            .iter()
            .any(|c| c.len() > MAX_CERT_DER_LEN)
    {
        return Err(RevocationError::Invalid(
            "the revoker chain is empty or too large".into(),
        ));
    }
    if signed.signature.len() != 64 {
        return Err(RevocationError::BadSignature);
    }
    if signed.at > now + MAX_CLOCK_SKEW || signed.at < 0 {
        return Err(RevocationError::Invalid(format!(
            "signed at {}, which is in the future",
            signed.at
        )));
    }
    let revoker = identity::verify_chain_trusted(
        signed.revoker_chain,
        anchors,
        signed.at as u64,
        IdentityKind::User,
        trust,
    )
    .map_err(|e| RevocationError::Revoker(e.to_string()))?;
    if !revoker.has_role(ROLE_ORG_ADMIN) {
        return Err(RevocationError::NotOrgAdmin(revoker.id()));
    }
    if revoker.organisation != signed.organisation {
        return Err(RevocationError::OtherOrganisation {
            user: signed.user.to_string(),
            user_org: signed.organisation.to_string(),
            revoker_org: revoker.organisation.clone(),
        });
    }
    if revoker.id() == signed.user {
        return Err(RevocationError::Invalid(
            "an org-admin cannot revoke themselves; ask another org-admin".into(),
        ));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &revoker.public_key)
        .verify(signed.bytes, signed.signature)
        .map_err(|_| RevocationError::BadSignature)?;
    let home = home_relay_of(signed.user);
    let home_org = trust.organisation_of(home).ok_or_else(|| {
        RevocationError::Invalid(format!(
            "{} is homed at relay {home}, which is not a relay of this federation as configured here",
            signed.user
        ))
    })?;
    if home_org != signed.organisation {
        return Err(RevocationError::OtherOrganisation {
            user: signed.user.to_string(),
            user_org: home_org.to_string(),
            revoker_org: signed.organisation.to_string(),
        });
    }
    Ok(revoker)
}

fn home_relay_of(user: &str) -> &str {
    user.split_once('@').map(|(_, r)| r).unwrap_or_default()
}

/// Domain separator of the signed bytes of a wipe order.
const WIPE_DOMAIN: &[u8] = b"kring-wipe-v1";

/// A signed order by an org-admin, given with a revocation (`kring admin revoke
/// --wipe`): besides its local archive and MLS state (which every revoked device
/// deletes), the revoked user's device is to destroy its private key and the
/// passphrase file its profile names. A separate statement, so that revocation
/// statements keep their form: the user's home relay keeps it and hands it to the
/// device with the refusal; the device checks the signature itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeOrder {
    /// The user whose device is to be wiped, `NAME@RELAY`.
    pub user: String,
    /// The user's organisation (= the revoker's).
    pub organisation: String,
    /// When it was signed, unix seconds.
    pub ordered_at: i64,
    /// The org-admin's certificate chain, leaf first (DER).
    pub revoker_chain: Vec<Vec<u8>>,
    /// Ed25519 signature by the revoker's certificate key over
    /// [`Self::signed_bytes`].
    pub signature: Vec<u8>,
}

impl WipeOrder {
    /// The bytes the revoker signs.
    pub fn signed_bytes(
        user: &str,
        organisation: &str,
        ordered_at: i64,
        revoker_leaf: &[u8],
    ) -> Vec<u8> {
        let body = postcard::to_stdvec(&(user, organisation, ordered_at, revoker_leaf))
            .unwrap_or_default();
        [WIPE_DOMAIN, &body].concat()
    }

    /// Builds and signs a wipe order with an org-admin's chain and signing function.
    ///
    /// # Errors
    /// As [`RevocationStatement::sign`].
    pub fn sign(
        revoker_chain: Vec<Vec<u8>>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
        user: &str,
        ordered_at: i64,
    ) -> Result<Self, RevocationError> {
        identity::parse_user_id(user).map_err(|e| RevocationError::Invalid(e.to_string()))?;
        let leaf = revoker_chain
            .first()
            .ok_or_else(|| RevocationError::Invalid("empty revoker chain".into()))?;
        let revoker =
            Identity::from_der(leaf).map_err(|e| RevocationError::Revoker(e.to_string()))?;
        if !revoker.has_role(ROLE_ORG_ADMIN) {
            return Err(RevocationError::NotOrgAdmin(revoker.id()));
        }
        let organisation = revoker.organisation.clone();
        let signature = sign(&Self::signed_bytes(user, &organisation, ordered_at, leaf));
        Ok(Self {
            user: user.to_string(),
            organisation,
            ordered_at,
            revoker_chain,
            signature,
        })
    }

    /// Checks the order as [`RevocationStatement::verify`] checks a statement;
    /// returns the revoker.
    ///
    /// # Errors
    /// The [`RevocationError`] that says what is wrong.
    pub fn verify(
        &self,
        anchors: &[Vec<u8>],
        trust: &TrustMap,
        now: i64,
    ) -> Result<Identity, RevocationError> {
        identity::parse_user_id(&self.user).map_err(|e| RevocationError::Invalid(e.to_string()))?;
        let leaf = self
            .revoker_chain
            .first()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let bytes = Self::signed_bytes(&self.user, &self.organisation, self.ordered_at, leaf);
        verify_signed(
            &Signed {
                user: &self.user,
                organisation: &self.organisation,
                at: self.ordered_at,
                revoker_chain: &self.revoker_chain,
                signature: &self.signature,
                bytes: &bytes,
            },
            anchors,
            trust,
            now,
        )
    }

    /// The revoker's id (`NAME@RELAY`), as its certificate names it, unverified.
    pub fn revoker(&self) -> Option<String> {
        self.revoker_chain
            .first()
            .and_then(|c| Identity::from_der(c).ok())
            .map(|i| i.id())
    }
}

fn check_fields(user: &str, reason: &str) -> Result<(), RevocationError> {
    identity::parse_user_id(user).map_err(|e| RevocationError::Invalid(e.to_string()))?;
    if reason.trim().is_empty() {
        return Err(RevocationError::Invalid(
            "a revocation needs a reason (--reason TEXT)".into(),
        ));
    }
    if reason.len() > MAX_REASON_LEN {
        return Err(RevocationError::Invalid(format!(
            "the reason is longer than {MAX_REASON_LEN} bytes"
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(RevocationError::Invalid(
            "the reason must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// A CRL whose signature verified against its issuing CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// The issuing organisation (the CA's subject O).
    pub organisation: String,
    /// Revoked serial numbers, lower-case hex as in [`Identity::serial`].
    pub serials: Vec<String>,
    /// thisUpdate, unix seconds (newer CRLs of the same issuer replace older ones).
    pub this_update: i64,
    /// The fingerprint of the issuing CA certificate: the CRL's key in
    /// [`Revocations`].
    pub issuer: CaFingerprint,
    /// Whether the issuer is a federation trust anchor (its CRL revokes
    /// organisation CAs, and with them every certificate they issued).
    pub anchor: bool,
    /// The issuer's subject name (DER), which the certificates it issued name as
    /// their issuer.
    pub issuer_name: Vec<u8>,
}

fn subject_org(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string)
}

/// Verifies a CRL (DER) and its issuing CA certificate (DER): the CA is a CA,
/// valid at `now`, signed by one of the federation `anchors` (or is one); the CRL
/// is issued by that CA and signed by its key, its thisUpdate is no later than
/// `now` plus [`MAX_CLOCK_SKEW`], and it lists at most [`MAX_CRL_ENTRIES`]
/// certificates. An expired CRL (past nextUpdate) is still accepted: its entries
/// stay revoked.
///
/// # Errors
/// [`RevocationError::Crl`] saying what is wrong.
pub fn verify_crl(
    crl_der: &[u8],
    issuer_der: &[u8],
    anchors: &[Vec<u8>],
    now: i64,
) -> Result<VerifiedCrl, RevocationError> {
    let bad = |s: String| RevocationError::Crl(s);
    if crl_der.len() > MAX_CRL_LEN || issuer_der.len() > MAX_CERT_DER_LEN {
        return Err(bad("CRL or issuer certificate too large".into()));
    }
    let (rest, ca) = X509Certificate::from_der(issuer_der)
        .map_err(|e| bad(format!("issuer certificate unreadable: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the issuer certificate".into()));
    }
    if !ca.is_ca() {
        return Err(bad("the issuer certificate is not a CA".into()));
    }
    let at = ASN1Time::from_timestamp(now).map_err(|e| bad(e.to_string()))?;
    if !ca.validity().is_valid_at(at) {
        return Err(bad("the issuer CA certificate is not valid now".into()));
    }
    let anchored = anchors.iter().any(|a| {
        X509Certificate::from_der(a).is_ok_and(|(_, root)| {
            root.subject() == ca.issuer() && ca.verify_signature(Some(root.public_key())).is_ok()
        })
    });
    if !anchored {
        return Err(bad(
            "the issuer CA is not signed by a federation trust anchor".into(),
        ));
    }
    let organisation = subject_org(&ca).ok_or_else(|| bad("the issuer CA has no O".into()))?;
    let (rest, crl) = CertificateRevocationList::from_der(crl_der)
        .map_err(|e| bad(format!("CRL unreadable: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the CRL".into()));
    }
    if crl.issuer() != ca.subject() {
        return Err(bad(format!(
            "the CRL is issued by {}, not by the given CA {}",
            crl.issuer(),
            ca.subject()
        )));
    }
    crl.verify_signature(ca.public_key())
        .map_err(|e| bad(format!("the CRL signature does not verify: {e}")))?;
    let this_update = crl.last_update().timestamp();
    if this_update > now.saturating_add(MAX_CLOCK_SKEW) {
        return Err(bad(format!(
            "its thisUpdate ({this_update}, unix) is more than {MAX_CLOCK_SKEW} s in the future"
        )));
    }
    let serials: Vec<String> = crl
        .iter_revoked_certificates()
        .take(MAX_CRL_ENTRIES + 1)
        .map(|r| hex(r.raw_serial()))
        .collect();
    if serials.len() > MAX_CRL_ENTRIES {
        return Err(bad(format!(
            "it lists more than {MAX_CRL_ENTRIES} certificates, the most accepted from one CA"
        )));
    }
    Ok(VerifiedCrl {
        organisation,
        serials,
        this_update,
        issuer: CaFingerprint::of(issuer_der),
        anchor: anchors.iter().any(|a| a.as_slice() == issuer_der),
        issuer_name: ca.subject().as_raw().to_vec(),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The revocations a relay (or a device) enforces: users revoked by statements,
/// and one CRL per issuing CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    users: BTreeMap<String, String>,
    statements_per_org: BTreeMap<String, usize>,
    crls: BTreeMap<CaFingerprint, HeldCrl>,
    generation: u64,
}

/// The CRL held for one issuing CA.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldCrl {
    organisation: String,
    this_update: i64,
    anchor: bool,
    issuer_name: Vec<u8>,
    serials: BTreeSet<String>,
}

/// What taking a newer CRL changed ([`Revocations::add_crl`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlChange {
    /// Serials revoked now that the issuer's previous CRL did not list.
    pub added: Vec<String>,
    /// How many serials the previous CRL listed that this one does not.
    pub dropped: usize,
    /// How many serials the CRL lists.
    pub listed: usize,
}

static EMPTY: Revocations = Revocations::new();

/// How a certificate is revoked ([`Revocations::check_chain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    /// A revocation statement of the user's organisation revokes the user.
    #[error("{user} is revoked: {reason}")]
    ByStatement {
        /// The user.
        user: String,
        /// The statement's reason.
        reason: String,
    },
    /// The CRL of the holder's organisation lists the certificate.
    #[error(
        "the certificate of {holder} (serial {serial}) is revoked by the CRL of {organisation}"
    )]
    ByCrl {
        /// The certificate's holder.
        holder: String,
        /// Its serial number (hex).
        serial: String,
        /// The organisation whose CRL lists it.
        organisation: String,
    },
    /// A federation anchor's CRL revokes the CA that issued the certificate.
    #[error(
        "the certificate of {user} was issued by the CA of {ca_organisation} (serial {serial}), which is revoked by the CRL of the federation anchor of {anchor_organisation}"
    )]
    IssuingCa {
        /// The certificate's holder.
        user: String,
        /// The organisation of the revoked CA.
        ca_organisation: String,
        /// The CA certificate's serial number (hex).
        serial: String,
        /// The organisation of the anchor whose CRL revokes it.
        anchor_organisation: String,
    },
}

impl Revocations {
    /// No revocations.
    pub const fn new() -> Self {
        Self {
            users: BTreeMap::new(),
            statements_per_org: BTreeMap::new(),
            crls: BTreeMap::new(),
            generation: 0,
        }
    }

    /// A shared empty set.
    pub fn empty() -> &'static Self {
        &EMPTY
    }

    /// Records a verified statement; `false` if the user was already revoked.
    pub fn add_statement(&mut self, s: &RevocationStatement) -> bool {
        if self.users.contains_key(&s.user) {
            return false;
        }
        self.users.insert(s.user.clone(), s.reason.clone());
        *self
            .statements_per_org
            .entry(s.organisation.clone())
            .or_default() += 1;
        self.generation = self.generation.wrapping_add(1);
        true
    }

    /// How many statements of `organisation` are held.
    pub fn statements_of(&self, organisation: &str) -> usize {
        self.statements_per_org
            .get(organisation)
            .copied()
            .unwrap_or(0)
    }

    /// Records a verified CRL: it replaces the CRL held for its issuing CA if it is
    /// newer (a later thisUpdate), and what changed is returned; `None` if it is
    /// not newer. The set held for an issuer is exactly its newest CRL's, so memory
    /// is bounded by the current CRLs (at most [`MAX_CRL_ENTRIES`] each).
    pub fn add_crl(&mut self, crl: &VerifiedCrl) -> Option<CrlChange> {
        if self.is_older(crl) {
            return None;
        }
        let serials: BTreeSet<String> = crl.serials.iter().cloned().collect();
        let previous = self.crls.remove(&crl.issuer);
        let (added, dropped) = match &previous {
            Some(old) => (
                serials.difference(&old.serials).cloned().collect(),
                old.serials.difference(&serials).count(),
            ),
            None => (serials.iter().cloned().collect::<Vec<_>>(), 0),
        };
        let change = CrlChange {
            added,
            dropped,
            listed: serials.len(),
        };
        self.crls.insert(
            crl.issuer,
            HeldCrl {
                organisation: crl.organisation.clone(),
                this_update: crl.this_update,
                anchor: crl.anchor,
                issuer_name: crl.issuer_name.clone(),
                serials,
            },
        );
        if !change.added.is_empty() {
            self.generation = self.generation.wrapping_add(1);
        }
        Some(change)
    }

    /// Whether `crl` is not newer than the CRL held for its issuer (taking it
    /// would change nothing).
    pub fn is_older(&self, crl: &VerifiedCrl) -> bool {
        self.crls
            .get(&crl.issuer)
            .is_some_and(|held| held.this_update >= crl.this_update)
    }

    /// A number that changes whenever something becomes revoked that was not
    /// (a new statement, or a CRL listing a serial its predecessor did not): what
    /// is enforced needs looking at again only then.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Why `user` (`NAME@RELAY`) is revoked, if a statement revoked them.
    pub fn user_revoked(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Whether the certificate `id` may be used: `Err` with a reason a person can
    /// read if its identity was revoked by a statement or the certificate by a CRL
    /// of a CA of its organisation. Where the chain is at hand, use
    /// [`Self::check_chain`], which also checks the organisation CA.
    ///
    /// # Errors
    /// [`Revoked`]: which statement or CRL revoked it.
    pub fn check(&self, id: &Identity) -> Result<(), Revoked> {
        self.check_leaf(id, |_| true)
    }

    /// [`Self::check`] for a certificate presented with its chain (leaf first): the
    /// leaf against the CRL of the CA in the chain that issued it, and every CA of
    /// the chain against the CRLs of the federation anchors, so that an anchor's
    /// CRL revoking an organisation CA cuts off every certificate under it.
    ///
    /// # Errors
    /// How the certificate is revoked.
    pub fn check_chain(&self, id: &Identity, chain: &[Vec<u8>]) -> Result<(), Revoked> {
        if self.crls.is_empty() {
            return self.check_leaf(id, |_| false);
        }
        let cas: Vec<X509Certificate<'_>> = chain
            .iter()
            .skip(1)
            .take(MAX_CHAIN_LEN)
            .filter(|der| der.len() <= MAX_CERT_DER_LEN)
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
            .collect();
        let presented: BTreeSet<CaFingerprint> = chain
            .iter()
            .skip(1)
            .take(MAX_CHAIN_LEN)
            .map(|der| CaFingerprint::of(der))
            .collect();
        self.check_leaf(id, |issuer| presented.contains(issuer))?;
        for ca in &cas {
            let serial = hex(ca.raw_serial());
            let issuer_name = ca.issuer().as_raw();
            if let Some(root) = self.crls.values().find(|held| {
                held.anchor && held.issuer_name == issuer_name && held.serials.contains(&serial)
            }) {
                return Err(Revoked::IssuingCa {
                    user: id.id(),
                    ca_organisation: subject_org(ca)
                        .unwrap_or_else(|| "an unnamed organisation".into()),
                    serial,
                    anchor_organisation: root.organisation.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_leaf(
        &self,
        id: &Identity,
        issued_by: impl Fn(&CaFingerprint) -> bool,
    ) -> Result<(), Revoked> {
        if id.kind == IdentityKind::User
            && let Some(reason) = self.user_revoked(&id.id())
        {
            return Err(Revoked::ByStatement {
                user: id.id(),
                reason: reason.to_string(),
            });
        }
        let revoked = self.crls.iter().any(|(issuer, held)| {
            !held.anchor
                && held.organisation == id.organisation
                && issued_by(issuer)
                && held.serials.contains(&id.serial)
        });
        if revoked {
            return Err(Revoked::ByCrl {
                holder: id.id(),
                serial: id.serial.clone(),
                organisation: id.organisation.clone(),
            });
        }
        Ok(())
    }

    /// Users revoked by statements.
    pub fn users(&self) -> impl Iterator<Item = (&str, &str)> {
        self.users.iter().map(|(u, r)| (u.as_str(), r.as_str()))
    }

    /// How many certificates the CRLs held revoke (summed over the issuers).
    pub fn revoked_certificates(&self) -> usize {
        self.crls.values().map(|c| c.serials.len()).sum()
    }

    /// How many issuing CAs a CRL is held for.
    pub fn crl_issuers(&self) -> usize {
        self.crls.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.crls.values().all(|c| c.serials.is_empty())
    }
}

#[cfg(test)]
mod tests;
