//! Certifying keys generated elsewhere: `kring-certs-dev sign-csr` signs a PKCS#10
//! certificate signing request (as `kring enroll` writes it on a user's device)
//! with the organisation CA of the user's home relay, and `kring-certs-dev
//! clearance-der` prints the clearance extension for a CA run with OpenSSL
//! (`docs/certificates.md`).
//!
//! A request is read strictly: its signature must verify with its own key, the key
//! must be Ed25519, the subject must have exactly one CN (the user name) and at
//! most one O (the organisation, which must be the home relay's), and it must ask
//! for exactly one subjectAltName, the URI `kring:user:NAME@RELAY` with NAME = CN.
//! Nothing else of the request reaches the certificate: the CA writes the Kring
//! user profile (CN, O, the URI SAN, clientAuth, digitalSignature, clearance and
//! roles) itself.

use std::fs;
use std::path::{Path, PathBuf};

use kring_policy::Clearance;
use kring_protocol::identity::{self, IdentityKind, USER_URI_PREFIX};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::error::CertsError;
use crate::federation::{
    HomeRelay, PUBLIC_MODE, io, organisation_pki, self_check, user_validity, write_file,
};
use crate::pki::UserSpec;

/// Largest certificate signing request accepted (PEM or DER bytes).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What a certificate signing request asks for, after its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRequest {
    /// The user name (CN).
    pub name: String,
    /// The home relay (from the URI SAN).
    pub relay: String,
    /// The organisation (O), if the request names one.
    pub organisation: Option<String>,
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
}

impl CsrRequest {
    /// `NAME@RELAY`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.relay)
    }
}

fn bad(reason: impl Into<String>) -> CertsError {
    CertsError::BadCsr {
        reason: reason.into(),
    }
}

/// Reads and checks a certificate signing request, PEM (`CERTIFICATE REQUEST`) or
/// DER: its signature must verify with its own key, the key must be Ed25519, the
/// subject must have exactly one CN and at most one O, and it must ask for exactly
/// one subjectAltName, the URI `kring:user:NAME@RELAY` with NAME = CN.
///
/// # Errors
/// [`CertsError::BadCsr`] saying what is wrong.
pub fn read_csr(data: &[u8]) -> Result<CsrRequest, CertsError> {
    if data.len() > MAX_CSR_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the {MAX_CSR_BYTES} allowed",
            data.len()
        )));
    }
    let pem;
    let der: &[u8] = if data.first() == Some(&0x30) {
        data
    } else {
        let (_, p) = x509_parser::pem::parse_x509_pem(data)
            .map_err(|e| bad(format!("neither DER nor PEM: {e}")))?;
        if p.label != "CERTIFICATE REQUEST" && p.label != "NEW CERTIFICATE REQUEST" {
            return Err(bad(format!(
                "the PEM block is {:?}, expected \"CERTIFICATE REQUEST\"",
                p.label
            )));
        }
        pem = p;
        &pem.contents
    };
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| bad(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the request", rest.len())));
    }
    let public_key = ed25519_key(&csr)?;
    csr.verify_signature().map_err(|e| {
        bad(format!(
            "its signature does not verify with its own key ({e}): it was altered or \
             not made with that key"
        ))
    })?;
    let subject = &csr.certification_request_info.subject;
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>, what: &str| {
        attr.as_str()
            .map(str::to_string)
            .map_err(|e| bad(format!("subject {what} is not a string: {e}")))
    };
    let cns: Vec<_> = subject.iter_common_name().collect();
    let [cn] = cns.as_slice() else {
        return Err(bad(format!(
            "the subject must have exactly one CN (the user name), found {}",
            cns.len()
        )));
    };
    let cn = text(cn, "CN")?;
    let orgs: Vec<_> = subject.iter_organization().collect();
    let organisation = match orgs.as_slice() {
        [] => None,
        [o] => Some(text(o, "O")?),
        _ => {
            return Err(bad(format!(
                "the subject has {} O attributes; at most one (the organisation) is allowed",
                orgs.len()
            )));
        }
    };
    if let Some(org) = &organisation {
        identity::validate_organisation(org)?;
    }
    let (name, relay) = user_uri(&csr)?;
    if name != cn {
        return Err(bad(format!(
            "the subject CN {cn:?} is not the user {name:?} of its subjectAltName"
        )));
    }
    Ok(CsrRequest {
        name,
        relay,
        organisation,
        public_key,
    })
}

fn ed25519_key(csr: &X509CertificationRequest<'_>) -> Result<[u8; 32], CertsError> {
    let spki = &csr.certification_request_info.subject_pki;
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519
        || spki.algorithm.parameters.is_some()
    {
        return Err(bad(format!(
            "its key is of algorithm {}; Kring requires Ed25519 (1.3.101.112)",
            spki.algorithm.algorithm.to_id_string()
        )));
    }
    let key = &spki.subject_public_key;
    <[u8; 32]>::try_from(key.data.as_ref())
        .ok()
        .filter(|_| key.unused_bits == 0)
        .ok_or_else(|| {
            bad(format!(
                "an Ed25519 key of {} bytes (expected 32)",
                key.data.len()
            ))
        })
}

/// The `(NAME, RELAY)` of the one requested subjectAltName `kring:user:NAME@RELAY`.
fn user_uri(csr: &X509CertificationRequest<'_>) -> Result<(String, String), CertsError> {
    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_string()),
                    other => {
                        return Err(bad(format!(
                            "it asks for the subjectAltName {other}; a user certificate \
                             carries only the URI kring:user:NAME@RELAY"
                        )));
                    }
                }
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(bad(format!(
            "it must ask for exactly one subjectAltName URI kring:user:NAME@RELAY, found {}",
            uris.len()
        )));
    };
    let id = uri.strip_prefix(USER_URI_PREFIX).ok_or_else(|| {
        bad(format!(
            "its subjectAltName {uri:?} is not a user identity ({USER_URI_PREFIX}NAME@RELAY)"
        ))
    })?;
    let (name, relay) = identity::parse_user_id(id)?;
    Ok((name.to_string(), relay.to_string()))
}

/// What `sign-csr` should certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignCsrRequest {
    /// The request, PEM or DER.
    pub csr: Vec<u8>,
    /// The clearance to grant.
    pub clearance: Clearance,
    /// Roles to grant (e.g. `org-admin`).
    pub roles: Vec<String>,
    /// End of validity (unix seconds); default one year from now.
    pub not_after: Option<i64>,
}

/// A certificate `sign-csr` issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedUser {
    /// `NAME@RELAY`.
    pub id: String,
    /// Organisation id.
    pub organisation: String,
    /// Clearance (canonical label text).
    pub clearance: String,
    /// Roles, sorted.
    pub roles: Vec<String>,
    /// The serial number, lower-case hex (as in CRLs and `kring whoami`).
    pub serial: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The chain file written: the certificate, then its organisation CA (PEM).
    pub chain_path: PathBuf,
}

/// `kring-certs-dev sign-csr`: certifies the key of a user's request with the CA of
/// the home relay's organisation in the federation directory `dir`, granting
/// `request.clearance` and `request.roles`, and writes the chain (certificate, then
/// organisation CA; what a profile's `cert` names) to `out`, which must not exist.
/// The certificate is self-checked before anything is written.
///
/// # Errors
/// [`CertsError::BadCsr`], [`CertsError::OrganisationMismatch`] (the request names
/// another organisation than the home relay's), [`CertsError::UnknownRelay`],
/// [`CertsError::OutputExists`], [`CertsError::Identity`] for a bad role,
/// [`CertsError::BadFile`] / [`CertsError::KeyMismatch`] for a damaged directory,
/// [`CertsError::Io`].
pub fn sign_csr_into(
    dir: &Path,
    request: &SignCsrRequest,
    out: &Path,
    now: i64,
) -> Result<CertifiedUser, CertsError> {
    let csr = read_csr(&request.csr)?;
    for role in &request.roles {
        identity::validate_role_name(role)?;
    }
    let home = HomeRelay::read(dir, &csr.relay)?;
    if let Some(org) = &csr.organisation
        && *org != home.organisation
    {
        return Err(CertsError::OrganisationMismatch {
            user: csr.id(),
            requested: org.clone(),
            organisation: home.organisation,
        });
    }
    if fs::symlink_metadata(out).is_ok() {
        return Err(CertsError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    let pki = organisation_pki(dir, &home.organisation, now)?;
    let mut spec = UserSpec::new(&csr.name, &csr.relay, &home.organisation)
        .with_clearance(request.clearance.clone())
        .with_validity(user_validity(request.not_after, now));
    spec.roles.clone_from(&request.roles);
    let cert = pki.certify_user(&spec, &csr.public_key)?;
    let id = self_check(
        &cert,
        &pki.anchors(),
        now,
        IdentityKind::User,
        &request.clearance,
        &request.roles,
    )?;
    if id.public_key != csr.public_key {
        return Err(CertsError::Generate {
            what: format!("certificate for {}", csr.id()),
            reason: "it does not carry the requested key".to_string(),
        });
    }
    write_file(out, cert.chain_pem.as_bytes(), PUBLIC_MODE)?;
    Ok(CertifiedUser {
        id: csr.id(),
        organisation: id.organisation,
        clearance: request.clearance.to_string(),
        roles: id.roles,
        serial: id.serial,
        not_after: id.not_after,
        chain_path: out.to_path_buf(),
    })
}

/// Reads a request file of at most [`MAX_CSR_BYTES`].
///
/// # Errors
/// [`CertsError::Io`], [`CertsError::BadCsr`] when larger.
pub fn read_csr_file(path: &Path) -> Result<Vec<u8>, CertsError> {
    use std::io::Read as _;
    let file = fs::File::open(path).map_err(io("cannot open", path))?;
    let mut data = Vec::new();
    file.take(MAX_CSR_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(io("cannot read", path))?;
    if data.len() > MAX_CSR_BYTES {
        return Err(bad(format!(
            "{} is larger than the {MAX_CSR_BYTES} bytes allowed",
            path.display()
        )));
    }
    Ok(data)
}

/// The value (DER) of the subjectDirectoryAttributes extension (OID 2.5.29.9,
/// [`identity::OID_SUBJECT_DIRECTORY_ATTRIBUTES`]) that carries `clearance` and `roles`: for
/// a CA run with OpenSSL, `2.5.29.9 = DER:<hex>` in its extension file
/// (`kring-certs-dev clearance-der`). A relay's accreditation is the same
/// extension without roles.
///
/// # Errors
/// [`CertsError::Identity`] for an invalid role or an unencodable clearance.
pub fn clearance_der(clearance: &Clearance, roles: &[String]) -> Result<Vec<u8>, CertsError> {
    for role in roles {
        identity::validate_role_name(role)?;
    }
    identity::encode_subject_directory_attributes(Some(clearance), roles)?.ok_or_else(|| {
        CertsError::Generate {
            what: "subjectDirectoryAttributes".to_string(),
            reason: "nothing to encode".to_string(),
        }
    })
}
