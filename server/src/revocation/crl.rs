//! CRLs at a relay: accepting an organisation CA's CRL (from its file, a peer or a
//! device's upload), one per issuing CA, dated and rate-limited per organisation.

use super::*;

/// How often configured CRL files are checked for changes.
pub(super) const CRL_POLL: Duration = Duration::from_secs(1);

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
    if relay.revocations().is_older(&verified) {
        return Ok(None);
    }
    let via = source
        .map(|s| format!(" (received from relay {s})"))
        .unwrap_or_default();
    // Files the operator configured are always read; what peers pass on is limited.
    if source.is_some() {
        match relay.admit_crl(&verified.organisation, now()) {
            CrlAdmission::Take => {}
            CrlAdmission::Drop => {
                debug!(organisation = %verified.organisation, "CRL dropped: over the rate limit");
                return Ok(None);
            }
            CrlAdmission::DropAndReport => {
                warn!(organisation = %verified.organisation, "CRLs dropped: over the rate limit");
                w.audit.append(
                    b,
                    now(),
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
    let Some(change) = relay.revocations_mut().add_crl(&verified) else {
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
        now(),
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

pub(super) async fn load_crl_files(
    relay: &Relay,
    files: &[PathBuf],
    seen: &mut [Option<SystemTime>],
) {
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
