//! CRLs an organisation CA signs: their entries and the signed result.

use super::*;

/// One revoked certificate in a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// The serial number: the content bytes of its DER INTEGER (positive).
    pub serial: Vec<u8>,
    /// When it was revoked (revocationDate), unix seconds.
    pub revoked_at: i64,
    /// The RFC 5280 reasonCode value (1 = keyCompromise), or `None` for no
    /// reasonCode extension.
    pub reason_code: Option<u8>,
}

impl CrlEntry {
    /// RFC 5280 reasonCode keyCompromise.
    pub const KEY_COMPROMISE: u8 = 1;

    /// An entry revoking `serial` at `revoked_at` for key compromise.
    pub fn key_compromise(serial: Vec<u8>, revoked_at: i64) -> CrlEntry {
        CrlEntry {
            serial,
            revoked_at,
            reason_code: Some(Self::KEY_COMPROMISE),
        }
    }
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCrl {
    /// DER.
    pub der: Vec<u8>,
    /// PEM (`-----BEGIN X509 CRL-----`).
    pub pem: String,
}

pub(super) fn revocation_reason(code: u8) -> Result<RevocationReason, CertsError> {
    Ok(match code {
        0 => RevocationReason::Unspecified,
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => {
            return Err(CertsError::InvalidArgument {
                what: "CRL reason code",
                reason: format!("{code} is not an RFC 5280 reasonCode"),
            });
        }
    })
}

pub(super) fn time_at(unix: i64) -> Result<OffsetDateTime, CertsError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CertsError::InvalidArgument {
        what: "time",
        reason: format!("{unix} is not a representable unix time: {e}"),
    })
}
