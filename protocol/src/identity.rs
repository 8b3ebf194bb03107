//! Kring identities read from X.509 certificates, the RFC 5755
//! clearance/role attributes they carry, and certificate chain verification.
//!
//! * [`Identity::from_der`] reads a user or relay end-entity certificate and
//!   enforces Kring's certificate profile (SAN, CN, O, EKU, key type, attributes).
//!   It does **not** check signatures or validity dates.
//! * [`verify_chain`] / [`verify_chain_with_revocation`] additionally verify the
//!   signature chain to a trust anchor at a given time (rustls-webpki), the
//!   issuing organisation CA, and (optionally) revocation via CRLs.
//! * [`verify_chain_trusted`] adds [`TrustMap::check`]: the certificate's
//!   organisation (and, where pinned, its CA) must be the one configured for the
//!   relay it speaks for. Every certificate received from another party goes
//!   through it.
//! * [`encode_subject_directory_attributes`] / [`decode_subject_directory_attributes`]
//!   translate a [`Clearance`] and roles to and from the certificate extension.
//!
//! Everything here is pure: callers pass bytes and the current time in.
//!
//! # Certificate profile
//!
//! | | user `NAME@RELAY` | relay `RELAY` |
//! |---|---|---|
//! | URI SAN (exactly one `kring:` URI) | `kring:user:NAME@RELAY` | `kring:relay:RELAY` |
//! | DNS SAN | none allowed | exactly `RELAY.relay.kring` |
//! | subject CN (exactly one) | `NAME` | `RELAY` |
//! | subject O (exactly one) | organisation id | organisation id |
//! | extendedKeyUsage | clientAuth, **not** serverAuth | serverAuth and clientAuth |
//! | key | Ed25519 | Ed25519 |
//! | subjectDirectoryAttributes | clearance, roles | accreditation (as a clearance) |
//!
//! Names, relay ids and organisation ids are lower-case (see [`validate_user_name`],
//! [`validate_relay_id`], [`validate_organisation`]). The certificate must not be a
//! CA; if it has keyUsage, that must include digitalSignature and must not include
//! keyCertSign or cRLSign. Only basicConstraints, keyUsage, extendedKeyUsage and
//! subjectAltName may be critical.

mod attributes;
mod chain;
mod der;
mod fields;
mod trust;

use fields::*;

use std::fmt;

use kring_policy::Clearance;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{X509Name, X509Version};

pub use attributes::{
    DirectoryAttributes, KRING_OID_ARC, KRING_OID_UUID, MAX_ATTRIBUTES, MAX_ATTRIBUTES_LEN,
    MAX_CATEGORIES, MAX_CATEGORY_VALUES, MAX_ROLE_LEN, MAX_ROLES, MAX_VALUE_LEN,
    OID_CLEARANCE_ATTRIBUTE, OID_ROLE_ATTRIBUTE, OID_SUBJECT_DIRECTORY_ATTRIBUTES, POLICY_OID_ARCS,
    ROLE_URI_PREFIX, TAG_OID_ARCS, decode_subject_directory_attributes,
    encode_subject_directory_attributes, validate_role_name,
};
pub use chain::{
    MAX_ANCHORS, MAX_CHAIN_LEN, MAX_CRL_LEN, MAX_CRLS, MAX_PEM_LEN, RevocationCheck,
    RevocationDepth, UnknownRevocationStatus, certificates_from_pem, chain_not_after, verify_chain,
    verify_chain_trusted, verify_chain_trusted_issuer, verify_chain_with_revocation,
};
pub use trust::{CaFingerprint, MAX_TRUSTED_RELAYS, RelayTrust, TrustMap};

/// Largest certificate accepted (DER bytes).
pub const MAX_CERT_DER_LEN: usize = 16 * 1024;
/// Longest user name accepted (bytes).
pub const MAX_NAME_LEN: usize = 64;
/// Longest relay id / organisation id accepted (bytes; a DNS label).
pub const MAX_RELAY_ID_LEN: usize = 63;
/// URI SAN prefix of a user identity.
pub const USER_URI_PREFIX: &str = "kring:user:";
/// URI SAN prefix of a relay identity.
pub const RELAY_URI_PREFIX: &str = "kring:relay:";
/// DNS SAN suffix of a relay: a relay `bz` carries `bz.relay.kring`.
pub const RELAY_DNS_SUFFIX: &str = ".relay.kring";
/// The role that lets a user administer their organisation.
pub const ROLE_ORG_ADMIN: &str = "org-admin";

/// Raw Ed25519 public key length.
const ED25519_KEY_LEN: usize = 32;

/// Everything that can be wrong with a Kring certificate or chain.
///
/// Each message says what is wrong; most also say what a Kring certificate must
/// look like instead, so that an administrator can reissue it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate is larger than [`MAX_CERT_DER_LEN`].
    #[error("certificate is {len} bytes, more than the {max} allowed")]
    CertificateTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a well-formed X.509 certificate.
    #[error("malformed certificate: {reason}")]
    MalformedCertificate {
        /// What the parser found.
        reason: String,
    },
    /// The certificate key is not an Ed25519 key.
    #[error(
        "certificate key is {found}; Kring requires Ed25519 keys (MLS ciphersuite \
         MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)"
    )]
    UnsupportedKey {
        /// What was found instead.
        found: String,
    },
    /// The certificate is a CA certificate, not a user or relay certificate.
    #[error(
        "certificate is a CA certificate (basicConstraints cA=TRUE); a user or relay certificate must be an end-entity certificate"
    )]
    IsCa,
    /// keyUsage does not fit an end-entity signing key.
    #[error("bad keyUsage: {reason}")]
    BadKeyUsage {
        /// What is wrong.
        reason: String,
    },
    /// A critical extension Kring does not understand.
    #[error("certificate has an unsupported critical extension {oid}")]
    UnsupportedCriticalExtension {
        /// Its dotted OID.
        oid: String,
    },
    /// No `kring:` URI subjectAltName.
    #[error(
        "certificate has no Kring identity: expected a subjectAltName URI \
         kring:user:NAME@RELAY or kring:relay:RELAY"
    )]
    MissingSan,
    /// More than one `kring:` URI subjectAltName.
    #[error("certificate has {count} kring: URI subjectAltNames; exactly one is allowed")]
    AmbiguousSan {
        /// How many were found.
        count: usize,
    },
    /// A `kring:` URI subjectAltName that is not a valid identity.
    #[error("subjectAltName {san:?} is not a valid Kring identity: {reason}")]
    BadSan {
        /// The SAN as found.
        san: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A subjectAltName that this kind of certificate must not carry.
    #[error("unexpected subjectAltName {san} in a {kind} certificate: {reason}")]
    UnexpectedSan {
        /// The kind of certificate.
        kind: IdentityKind,
        /// The SAN as found.
        san: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// The certificate is for the other kind of identity.
    #[error("certificate identifies a {found}, but a {expected} certificate is required")]
    WrongKind {
        /// What the caller required.
        expected: IdentityKind,
        /// What the certificate is.
        found: IdentityKind,
    },
    /// A relay certificate without its DNS SAN.
    #[error("relay certificate lacks the DNS subjectAltName {expected}")]
    MissingDnsSan {
        /// The DNS name it must carry.
        expected: String,
    },
    /// A relay certificate whose DNS SAN names another relay.
    #[error(
        "relay certificate DNS subjectAltName {found} does not match its identity; expected {expected}"
    )]
    DnsSanMismatch {
        /// The DNS name it must carry.
        expected: String,
        /// What it carries.
        found: String,
    },
    /// The subject has no commonName.
    #[error("certificate subject has no commonName (CN); it must equal {expected:?}")]
    MissingCommonName {
        /// The name it must carry.
        expected: String,
    },
    /// The subject CN differs from the identity in the SAN.
    #[error("certificate subject CN {cn:?} does not match the identity's name {name:?}")]
    NameMismatch {
        /// The subject CN.
        cn: String,
        /// The name from the SAN.
        name: String,
    },
    /// The subject has no organizationName.
    #[error("certificate subject has no organizationName (O); Kring needs the organisation id")]
    MissingOrganisation,
    /// A subject attribute appears more than once.
    #[error("certificate subject has more than one {attribute}")]
    AmbiguousSubject {
        /// `CN` or `O`.
        attribute: &'static str,
    },
    /// A subject attribute that cannot be read or is not a valid id.
    #[error("certificate subject {attribute} is invalid: {reason}")]
    BadSubject {
        /// `CN` or `O`.
        attribute: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A user name, relay id or organisation id that is not valid.
    #[error("{what} {value:?} is invalid: {reason}")]
    BadName {
        /// What kind of name.
        what: &'static str,
        /// The value.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A required extended key usage is missing.
    #[error("{kind} certificate lacks the extended key usage {missing}")]
    EkuMissing {
        /// The kind of certificate.
        kind: IdentityKind,
        /// The missing purpose (`clientAuth` or `serverAuth`).
        missing: &'static str,
    },
    /// An extended key usage the kind of certificate must not have.
    #[error("{kind} certificate must not have the extended key usage {eku}")]
    EkuForbidden {
        /// The kind of certificate.
        kind: IdentityKind,
        /// The forbidden purpose.
        eku: String,
    },
    /// The subjectDirectoryAttributes extension is malformed.
    #[error("bad subjectDirectoryAttributes extension: {reason}")]
    BadAttributes {
        /// What is wrong.
        reason: String,
    },
    /// The Clearance attribute is malformed, inconsistent or unknown.
    #[error("bad Clearance attribute: {reason}")]
    BadClearance {
        /// What is wrong.
        reason: String,
    },
    /// The Role attribute is malformed or names an invalid role.
    #[error("bad Role attribute: {reason}")]
    BadRole {
        /// What is wrong.
        reason: String,
    },
    /// No certificates were given.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// Too many certificates were given.
    #[error("the certificate chain has {len} certificates, more than the {max} allowed")]
    ChainTooLong {
        /// How many were given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No trust anchors were given.
    #[error("no trust anchors configured; cannot verify any certificate")]
    NoTrustAnchors,
    /// Too many trust anchors or CRLs were given.
    #[error("too many {what}: {len}, at most {max}")]
    TooMany {
        /// What was given.
        what: &'static str,
        /// How many.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A trust anchor certificate could not be used.
    #[error("trust anchor #{index} is not a usable CA certificate: {reason}")]
    BadTrustAnchor {
        /// Its position in the list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// PEM input could not be read.
    #[error("bad PEM: {reason}")]
    BadPem {
        /// What is wrong.
        reason: String,
    },
    /// The certificate (or a CA in its chain) has expired.
    #[error("certificate expired: valid until {not_after} (unix), checked at {now}")]
    Expired {
        /// End of validity (unix seconds).
        not_after: u64,
        /// The verification time (unix seconds).
        now: u64,
    },
    /// The certificate (or a CA in its chain) is not yet valid.
    #[error("certificate not yet valid: valid from {not_before} (unix), checked at {now}")]
    NotYetValid {
        /// Start of validity (unix seconds).
        not_before: u64,
        /// The verification time (unix seconds).
        now: u64,
    },
    /// No path to a trust anchor: issued by a CA outside this federation, or the
    /// organisation CA is missing from the chain.
    #[error(
        "certificate is not issued by a CA of this federation (no path to a trust anchor); include the organisation CA certificate in the chain"
    )]
    UnknownIssuer,
    /// A signature in the chain does not verify.
    #[error("a signature in the certificate chain is invalid")]
    BadSignature,
    /// The chain is otherwise invalid.
    #[error("certificate chain rejected: {reason}")]
    ChainInvalid {
        /// The verifier's reason.
        reason: String,
    },
    /// The end-entity certificate was issued directly by a trust anchor instead of
    /// by an organisation CA.
    #[error(
        "certificate is issued directly by the federation root; Kring certificates must be issued by an organisation CA"
    )]
    NotIssuedByOrganisationCa,
    /// The issuing organisation CA belongs to another organisation.
    #[error(
        "certificate of organisation {leaf:?} was issued by the CA of organisation {issuer:?}; an organisation CA may only issue certificates for its own organisation"
    )]
    OrganisationMismatch {
        /// O of the end-entity certificate.
        leaf: String,
        /// O of the issuing CA.
        issuer: String,
    },
    /// The certificate names a relay (itself, or a user's home relay) that this
    /// party has no trust entry for.
    #[error(
        "{identity} names relay {relay:?}, which is not a relay of this federation as configured here (not this relay and not a [[peers]] entry)"
    )]
    UnknownRelay {
        /// The identity presented.
        identity: String,
        /// The relay it names.
        relay: String,
    },
    /// The certificate's organisation is not the one configured for the relay it
    /// names: another organisation's CA tried to speak for that relay.
    #[error(
        "{} carries organisation {:?}, but relay {:?} belongs to organisation {:?}; only {:?}'s CA may issue certificates for {:?}",
        .0.identity, .0.found, .0.relay, .0.expected, .0.expected, .0.relay
    )]
    WrongOrganisation(Box<TrustRefusal>),
    /// The certificate was issued by a CA other than the one pinned for its relay
    /// (`found` and `expected` are SHA-256 fingerprints).
    #[error(
        "{} was issued by the CA with SHA-256 {}, but relay {:?} is pinned to the CA {}",
        .0.identity, .0.found, .0.relay, .0.expected
    )]
    CaNotPinned(Box<TrustRefusal>),
    /// A relay is listed twice in a trust map.
    #[error("relay {relay:?} is listed twice")]
    DuplicateRelay {
        /// The relay.
        relay: String,
    },
    /// A CA fingerprint could not be read.
    #[error("bad CA fingerprint {value:?}: {reason}")]
    BadFingerprint {
        /// The text given (at most 100 characters).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate (or a CA in its chain) is revoked.
    #[error("certificate has been revoked by its organisation")]
    Revoked,
    /// Revocation status is required but no CRL covers the certificate.
    #[error("revocation status unknown: no CRL from the issuing CA was available")]
    RevocationUnknown,
    /// A CRL is malformed, badly signed or expired.
    #[error("bad CRL #{index}: {reason}")]
    BadCrl {
        /// Its position in the list (or `usize::MAX` if unknown).
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Why a certificate may not speak for the relay it names (see [`TrustMap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRefusal {
    /// The identity presented.
    pub identity: String,
    /// The relay it names (itself, or a user's home relay).
    pub relay: String,
    /// What the certificate has: its O, or its CA's fingerprint.
    pub found: String,
    /// What the trust map requires: the organisation, or the pinned fingerprint.
    pub expected: String,
}

/// The two kinds of Kring identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKind {
    /// A person, `NAME@RELAY`.
    User,
    /// A relay, `RELAY`.
    Relay,
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::Relay => "relay",
        })
    }
}

/// A Kring identity as certified by an X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User or relay.
    pub kind: IdentityKind,
    /// The user name (subject CN) or the relay id.
    pub name: String,
    /// The user's home relay id; for a relay, its own id.
    pub home_relay: String,
    /// The organisation id (subject O).
    pub organisation: String,
    /// The clearance (users) or accreditation (relays), if the certificate has one.
    /// A certificate without one is valid but is cleared for nothing.
    pub clearance: Option<Clearance>,
    /// Roles granted by the certificate (e.g. [`ROLE_ORG_ADMIN`]), sorted.
    pub roles: Vec<String>,
    /// The certificate serial number: its DER INTEGER content bytes in lower-case
    /// hex (as in CRLs; may start with `00` when the top bit is set).
    pub serial: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The raw Ed25519 public key (32 bytes).
    pub public_key: Vec<u8>,
}

impl Identity {
    /// The full identity string: `NAME@RELAY` for users, `RELAY` for relays.
    pub fn id(&self) -> String {
        match self.kind {
            IdentityKind::User => format!("{}@{}", self.name, self.home_relay),
            IdentityKind::Relay => self.name.clone(),
        }
    }

    /// Whether the certificate grants `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Reads a Kring user or relay certificate (DER) and checks it against the
    /// certificate profile in the [module documentation](self).
    ///
    /// This does not verify signatures, validity dates or revocation: use
    /// [`verify_chain`] for certificates received from others.
    ///
    /// # Errors
    /// A specific [`IdentityError`] for the first profile violation found.
    pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
        if der.len() > MAX_CERT_DER_LEN {
            return Err(IdentityError::CertificateTooLarge {
                len: der.len(),
                max: MAX_CERT_DER_LEN,
            });
        }
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::MalformedCertificate {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        if cert.version() != X509Version::V3 {
            return Err(malformed("not an X.509 v3 certificate"));
        }
        check_extensions(&cert)?;
        let public_key = ed25519_key(&cert)?;
        check_not_ca(&cert)?;

        let sans = subject_alt_names(&cert)?;
        let (kind, name, home_relay) = kring_uri(&sans)?;
        check_subject_name(cert.subject(), &name)?;
        let organisation = single_subject_attr(cert.subject(), Attr::O)?
            .ok_or(IdentityError::MissingOrganisation)?;
        validate_organisation(&organisation).map_err(|e| IdentityError::BadSubject {
            attribute: "O",
            reason: e.to_string(),
        })?;
        check_eku(&cert, kind)?;
        check_other_sans(&sans, kind, &home_relay)?;

        // check_extensions() has ruled out duplicate extensions.
        let sda_oid = der::oid_content(2, 5, &[29, 9]);
        let attrs = match cert
            .extensions()
            .iter()
            .find(|ext| ext.oid.as_bytes() == sda_oid.as_slice())
        {
            // Never critical here: check_extensions() refuses that (RFC 5280 requires
            // subjectDirectoryAttributes to be non-critical).
            Some(ext) => decode_subject_directory_attributes(ext.value)?,
            None => DirectoryAttributes::default(),
        };
        if kind == IdentityKind::Relay && !attrs.roles.is_empty() {
            return Err(IdentityError::BadRole {
                reason: format!(
                    "relay certificates carry no roles, found {}",
                    attrs.roles.join(", ")
                ),
            });
        }

        let validity = cert.validity();
        Ok(Identity {
            kind,
            name,
            home_relay,
            organisation,
            clearance: attrs.clearance,
            roles: attrs.roles,
            serial: der::hex(cert.raw_serial()),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            public_key,
        })
    }
}

fn malformed(reason: impl Into<String>) -> IdentityError {
    IdentityError::MalformedCertificate {
        reason: reason.into(),
    }
}

/// Checks a user name: 1..=[`MAX_NAME_LEN`] bytes of `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or digit (e.g. `analist`).
pub fn validate_user_name(name: &str) -> Result<(), IdentityError> {
    let bad = |reason| {
        Err(IdentityError::BadName {
            what: "user name",
            value: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("must be 1 to 64 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return bad("must start with a lower-case letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may only contain a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

fn validate_label(what: &'static str, id: &str) -> Result<(), IdentityError> {
    let bad = |reason| {
        Err(IdentityError::BadName {
            what,
            value: id.to_string(),
            reason,
        })
    };
    if id.is_empty() || id.len() > MAX_RELAY_ID_LEN {
        return bad("must be 1 to 63 characters long (a DNS label)");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("may only contain a-z, 0-9 and '-' (a DNS label)");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return bad("must not start or end with '-' (a DNS label)");
    }
    Ok(())
}

/// Checks a relay id: a lower-case DNS label (1..=63 of `a-z`, `0-9`, `-`, not
/// starting or ending with `-`), e.g. `post-a`.
pub fn validate_relay_id(id: &str) -> Result<(), IdentityError> {
    validate_label("relay id", id)
}

/// Checks an organisation id (certificate O): same rules as a relay id.
pub fn validate_organisation(org: &str) -> Result<(), IdentityError> {
    validate_label("organisation id", org)
}

/// Splits and checks a user identity `NAME@RELAY` into `(NAME, RELAY)`.
///
/// # Errors
/// [`IdentityError::BadName`] if there is not exactly one `@` or either part is invalid.
pub fn parse_user_id(id: &str) -> Result<(&str, &str), IdentityError> {
    let mut parts = id.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(relay), None) => {
            validate_user_name(name)?;
            validate_relay_id(relay)?;
            Ok((name, relay))
        }
        _ => Err(IdentityError::BadName {
            what: "user identity",
            value: id.to_string(),
            reason: "must have the form NAME@RELAY",
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests;
