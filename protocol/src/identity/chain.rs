//! Certificate chain verification (rustls-webpki) for Kring identities, with an
//! optional revocation check against CRLs.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{
    BorrowedCertRevocationList, CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{Identity, IdentityError, IdentityKind, MAX_CERT_DER_LEN, TrustMap};

/// Most certificates accepted in a presented chain (leaf first).
pub const MAX_CHAIN_LEN: usize = 4;
/// Most trust anchors accepted.
pub const MAX_ANCHORS: usize = 64;
/// Most CRLs accepted in one revocation check.
pub const MAX_CRLS: usize = 256;
/// Largest CRL accepted (DER bytes).
pub const MAX_CRL_LEN: usize = 1024 * 1024;
/// Largest PEM input accepted by [`certificates_from_pem`] (bytes).
pub const MAX_PEM_LEN: usize = 1024 * 1024;

/// What to do when no given CRL covers a certificate of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownRevocationStatus {
    /// Accept the certificate (CRLs are checked where available).
    Allow,
    /// Reject with [`IdentityError::RevocationUnknown`].
    Deny,
}

/// Which certificates of the verified path are checked against the CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationDepth {
    /// Only the end-entity (user or relay) certificate, against its organisation
    /// CA's CRL.
    EndEntity,
    /// The end-entity certificate and every intermediate (organisation CA, against
    /// the root's CRL).
    Chain,
}

/// The revocation hook of [`verify_chain_with_revocation`]: CRLs (DER) published by
/// the organisation CAs (and possibly the root).
#[derive(Debug, Clone, Copy)]
pub struct RevocationCheck<'a> {
    /// The CRLs, DER-encoded, at most [`MAX_CRLS`] of at most [`MAX_CRL_LEN`] bytes.
    pub crls: &'a [Vec<u8>],
    /// Which certificates are checked.
    pub depth: RevocationDepth,
    /// What to do when no CRL covers a certificate.
    pub unknown_status: UnknownRevocationStatus,
    /// Whether a CRL past its nextUpdate is an error ([`IdentityError::BadCrl`]).
    pub enforce_next_update: bool,
}

/// Verifies a presented chain (leaf first, then its organisation CA) against the
/// federation trust anchors at `now_unix` and returns the leaf's identity.
///
/// Checks, in order: sizes; the Ed25519 signature chain from the leaf through an
/// intermediate to an anchor and every certificate's validity at `now_unix`
/// (rustls-webpki, EKU clientAuth); the shape of the path: exactly one CA (the
/// organisation CA) between the leaf and the anchor, so the leaf is issued neither
/// directly by an anchor nor through a sub-CA; [`Identity::from_der`] (the full profile, including the
/// EKU rules for the kind); the kind is `expected`; the issuing CA's O equals the
/// leaf's O. Revocation is not checked: see [`verify_chain_with_revocation`].
///
/// # Errors
/// A specific [`IdentityError`], e.g. [`IdentityError::Expired`],
/// [`IdentityError::UnknownIssuer`], [`IdentityError::WrongKind`].
pub fn verify_chain(
    chain_der: &[Vec<u8>],
    anchors_der: &[Vec<u8>],
    now_unix: u64,
    expected: IdentityKind,
) -> Result<Identity, IdentityError> {
    verify_chain_with_revocation(chain_der, anchors_der, now_unix, expected, None)
}

/// [`verify_chain`] plus, when `revocation` is given, a CRL check of the leaf (and,
/// with [`RevocationDepth::Chain`], the intermediates): [`IdentityError::Revoked`],
/// [`IdentityError::RevocationUnknown`], [`IdentityError::BadCrl`]. Each CRL's
/// signature is verified against its issuer in the path; CRLs of other issuers are
/// ignored. With [`RevocationDepth::Chain`] and [`UnknownRevocationStatus::Deny`], a
/// missing CRL for an intermediate may be reported as
/// [`IdentityError::RevocationUnknown`] even when the leaf is also revoked.
///
/// # Errors
/// As [`verify_chain`], plus the revocation errors above.
pub fn verify_chain_with_revocation(
    chain_der: &[Vec<u8>],
    anchors_der: &[Vec<u8>],
    now_unix: u64,
    expected: IdentityKind,
    revocation: Option<&RevocationCheck<'_>>,
) -> Result<Identity, IdentityError> {
    verify_path(chain_der, anchors_der, now_unix, expected, revocation).map(|(id, _)| id)
}

/// [`verify_chain`], then [`TrustMap::check`]: the certificate may speak only for a
/// relay `trust` knows, and only with that relay's organisation (and pinned CA).
/// This is the check for every certificate received from another party: a TLS
/// peer, an MLS credential, a revoker.
///
/// # Errors
/// As [`verify_chain`], plus [`IdentityError::UnknownRelay`],
/// [`IdentityError::WrongOrganisation`] and [`IdentityError::CaNotPinned`].
pub fn verify_chain_trusted(
    chain_der: &[Vec<u8>],
    anchors_der: &[Vec<u8>],
    now_unix: u64,
    expected: IdentityKind,
    trust: &TrustMap,
) -> Result<Identity, IdentityError> {
    verify_chain_trusted_issuer(chain_der, anchors_der, now_unix, expected, trust)
        .map(|(identity, _)| identity)
}

/// [`verify_chain_trusted`], also returning the DER of the organisation CA the
/// chain verified through (not merely the second certificate presented): the CA
/// to record for a peer, and to check against its issuer's CRL.
///
/// # Errors
/// As [`verify_chain_trusted`].
pub fn verify_chain_trusted_issuer(
    chain_der: &[Vec<u8>],
    anchors_der: &[Vec<u8>],
    now_unix: u64,
    expected: IdentityKind,
    trust: &TrustMap,
) -> Result<(Identity, Vec<u8>), IdentityError> {
    let (identity, issuer) = verify_path(chain_der, anchors_der, now_unix, expected, None)?;
    trust.check(&identity, &issuer)?;
    Ok((identity, issuer))
}

/// Verifies the chain and returns the leaf's identity and the DER of the
/// organisation CA it verified through.
fn verify_path(
    chain_der: &[Vec<u8>],
    anchors_der: &[Vec<u8>],
    now_unix: u64,
    expected: IdentityKind,
    revocation: Option<&RevocationCheck<'_>>,
) -> Result<(Identity, Vec<u8>), IdentityError> {
    let (leaf, intermediates) = chain_der.split_first().ok_or(IdentityError::EmptyChain)?;
    if chain_der.len() > MAX_CHAIN_LEN {
        return Err(IdentityError::ChainTooLong {
            len: chain_der.len(),
            max: MAX_CHAIN_LEN,
        });
    }
    if let Some(big) = chain_der.iter().find(|c| c.len() > MAX_CERT_DER_LEN) {
        return Err(IdentityError::CertificateTooLarge {
            len: big.len(),
            max: MAX_CERT_DER_LEN,
        });
    }
    if anchors_der.is_empty() {
        return Err(IdentityError::NoTrustAnchors);
    }
    if anchors_der.len() > MAX_ANCHORS {
        return Err(IdentityError::TooMany {
            what: "trust anchors",
            len: anchors_der.len(),
            max: MAX_ANCHORS,
        });
    }
    let anchor_ders: Vec<CertificateDer<'_>> = anchors_der
        .iter()
        .map(|a| CertificateDer::from(a.as_slice()))
        .collect();
    let anchors: Vec<TrustAnchor<'_>> = anchor_ders
        .iter()
        .enumerate()
        .map(|(index, der)| {
            if der.len() > MAX_CERT_DER_LEN {
                return Err(IdentityError::BadTrustAnchor {
                    index,
                    reason: format!("{} bytes is too large", der.len()),
                });
            }
            webpki::anchor_from_trusted_cert(der).map_err(|e| IdentityError::BadTrustAnchor {
                index,
                reason: format!("{e:?}"),
            })
        })
        .collect::<Result<_, _>>()?;

    let crls = match revocation {
        Some(check) => parse_crls(check.crls)?,
        None => Vec::new(),
    };
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    let revocation_options = match (revocation, RevocationOptionsBuilder::new(&crl_refs)) {
        (Some(check), Ok(builder)) => Some(
            builder
                .with_depth(match check.depth {
                    RevocationDepth::EndEntity => RevocationCheckDepth::EndEntity,
                    RevocationDepth::Chain => RevocationCheckDepth::Chain,
                })
                .with_status_policy(match check.unknown_status {
                    UnknownRevocationStatus::Allow => UnknownStatusPolicy::Allow,
                    UnknownRevocationStatus::Deny => UnknownStatusPolicy::Deny,
                })
                .with_expiration_policy(if check.enforce_next_update {
                    ExpirationPolicy::Enforce
                } else {
                    ExpirationPolicy::Ignore
                })
                .build(),
        ),
        (Some(check), Err(_)) if check.unknown_status == UnknownRevocationStatus::Deny => {
            return Err(IdentityError::RevocationUnknown);
        }
        _ => None,
    };

    let leaf_der = CertificateDer::from(leaf.as_slice());
    let ee = EndEntityCert::try_from(&leaf_der).map_err(|e| map_webpki(e, now_unix, expected))?;
    let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let path = ee
        .verify_for_usage(
            &[webpki::ring::ED25519],
            &anchors,
            &intermediate_ders,
            UnixTime::since_unix_epoch(Duration::from_secs(now_unix)),
            KeyUsage::client_auth(),
            revocation_options,
            None,
        )
        .map_err(|e| map_webpki(e, now_unix, expected))?;
    // The one shape a Kring chain has: leaf <- organisation CA <- anchor. webpki
    // has checked that every intermediate is a CA and the leaf is not; a path
    // through a second CA (a sub-CA minted under an organisation CA that lacks
    // `pathlen:0`) could carry any O and is refused here.
    let mut path_cas = path.intermediate_certificates();
    let issuer_der: Vec<u8> = match (path_cas.next(), path_cas.count()) {
        (Some(issuer), 0) => issuer.der().to_vec(),
        (None, _) => return Err(IdentityError::NotIssuedByOrganisationCa),
        (Some(_), more) => {
            return Err(IdentityError::ChainInvalid {
                reason: format!(
                    "the certificate is issued through {} CAs; it must be issued by an organisation CA that a federation trust anchor issued directly",
                    more + 1
                ),
            });
        }
    };

    let identity = Identity::from_der(leaf)?;
    if identity.kind != expected {
        return Err(IdentityError::WrongKind {
            expected,
            found: identity.kind,
        });
    }
    let issuer_org = issuer_organisation(&issuer_der)?;
    if issuer_org != identity.organisation {
        return Err(IdentityError::OrganisationMismatch {
            leaf: identity.organisation,
            issuer: issuer_org,
        });
    }
    Ok((identity, issuer_der))
}

fn parse_crls(crls: &[Vec<u8>]) -> Result<Vec<CertRevocationList<'_>>, IdentityError> {
    if crls.len() > MAX_CRLS {
        return Err(IdentityError::TooMany {
            what: "CRLs",
            len: crls.len(),
            max: MAX_CRLS,
        });
    }
    crls.iter()
        .enumerate()
        .map(|(index, der)| {
            if der.len() > MAX_CRL_LEN {
                return Err(IdentityError::BadCrl {
                    index,
                    reason: format!("{} bytes is more than the {MAX_CRL_LEN} allowed", der.len()),
                });
            }
            BorrowedCertRevocationList::from_der(der)
                .map(CertRevocationList::from)
                .map_err(|e| IdentityError::BadCrl {
                    index,
                    reason: format!("{e:?}"),
                })
        })
        .collect()
}

/// The single O of the issuing CA certificate's subject.
fn issuer_organisation(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::ChainInvalid {
        reason: format!("issuing CA certificate cannot be parsed: {e}"),
    })?;
    let orgs: Vec<_> = cert.subject().iter_organization().collect();
    match orgs.as_slice() {
        [one] => one
            .as_str()
            .map(str::to_string)
            .map_err(|e| IdentityError::ChainInvalid {
                reason: format!("issuing CA organizationName is unreadable: {e}"),
            }),
        _ => Err(IdentityError::ChainInvalid {
            reason: format!(
                "issuing CA certificate must have exactly one organizationName (O), has {}",
                orgs.len()
            ),
        }),
    }
}

fn map_webpki(e: webpki::Error, now: u64, expected: IdentityKind) -> IdentityError {
    use webpki::Error as W;
    match e {
        W::CertExpired { not_after, .. } => IdentityError::Expired {
            not_after: not_after.as_secs(),
            now,
        },
        W::CertNotValidYet { not_before, .. } => IdentityError::NotYetValid {
            not_before: not_before.as_secs(),
            now,
        },
        W::UnknownIssuer => IdentityError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => IdentityError::BadSignature,
        W::CertRevoked => IdentityError::Revoked,
        W::UnknownRevocationStatus => IdentityError::RevocationUnknown,
        W::CrlExpired { next_update, .. } => IdentityError::BadCrl {
            index: usize::MAX,
            reason: format!(
                "a CRL expired at {} (unix); fetch a fresh CRL from its organisation",
                next_update.as_secs()
            ),
        },
        W::InvalidCrlSignatureForPublicKey => IdentityError::BadCrl {
            index: usize::MAX,
            reason: "a CRL's signature does not verify against its issuer".to_string(),
        },
        W::RequiredEkuNotFoundContext(_) => IdentityError::EkuMissing {
            kind: expected,
            missing: "clientAuth",
        },
        W::CaUsedAsEndEntity => IdentityError::IsCa,
        other => IdentityError::ChainInvalid {
            reason: format!("{other:?}"),
        },
    }
}

/// When the first certificate of a presented chain (leaf first, at most
/// [`MAX_CHAIN_LEN`]) expires: the earliest notAfter, unix seconds. A chain that
/// [`verify_chain`] accepted stays valid until then (as far as its certificates go;
/// the anchors are the verifier's own). `None` for an empty chain or a certificate
/// that does not parse.
pub fn chain_not_after(chain: &[Vec<u8>]) -> Option<i64> {
    let mut earliest: Option<i64> = None;
    for der in chain.iter().take(MAX_CHAIN_LEN) {
        if der.len() > MAX_CERT_DER_LEN {
            return None;
        }
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let t = cert.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
    }
    earliest
}

/// Reads every `CERTIFICATE` block of a PEM file (e.g. `relay.crt`: leaf then
/// organisation CA; or `root.crt`), in order, as DER. Other PEM blocks are ignored.
///
/// # Errors
/// [`IdentityError::BadPem`] for malformed PEM, more than [`MAX_PEM_LEN`] bytes,
/// more than [`MAX_ANCHORS`] certificates, or no certificate at all.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, IdentityError> {
    if pem.len() > MAX_PEM_LEN {
        return Err(IdentityError::BadPem {
            reason: format!("{} bytes is more than the {MAX_PEM_LEN} allowed", pem.len()),
        });
    }
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let cert = item.map_err(|e| IdentityError::BadPem {
            reason: format!("{e}"),
        })?;
        if out.len() >= MAX_ANCHORS {
            return Err(IdentityError::BadPem {
                reason: format!("more than {MAX_ANCHORS} certificates"),
            });
        }
        out.push(cert.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(IdentityError::BadPem {
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    Ok(out)
}
