//! CRLs at a relay: accepting an organisation CA's CRL (from its file, a peer or a
//! device's upload), one per issuing CA, dated and rate-limited per organisation.

use super::*;

/// How often configured CRL files are checked for changes.
pub(super) const CRL_POLL: Duration = Duration::from_secs(1);

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
