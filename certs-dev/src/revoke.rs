//! `kring-certs-dev revoke-cert`: adds a user's certificate to its organisation's
//! CRL (`DIR/orgs/ORG/crl.pem`), which the relays listing it under `crls` re-read.
//!
//! The new CRL keeps every entry of the old one (with its revocation time and
//! reason code), has CRL number old + 1 and a thisUpdate strictly later than the
//! old one (relays accept a CRL only if it is newer than the one they hold), is
//! verified the way a relay verifies it, and replaces the old file atomically
//! (temporary file in the same directory, then rename). Two `revoke-cert` runs on
//! the same organisation at the same moment are not serialised: run them one
//! after the other.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kring_protocol::identity::{self, Identity, MAX_CRL_LEN};
use kring_protocol::revocation::{self, MAX_REASON_LEN};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::CertsError;
use crate::federation::{
    CRL_DAYS, CRL_FILE, PUBLIC_MODE, crl_path, io, load_authority, org_dir, read_text,
    root_cert_path, user_dir, write_file,
};
use crate::pki::{CrlEntry, DAY};

/// The file next to `crl.pem` that records why certificates were revoked.
pub const CRL_LOG_FILE: &str = "crl.log";

/// What `revoke-cert` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The user, `NAME@RELAY`.
    pub user: String,
    /// The organisation whose CA issued the certificate (its subject O).
    pub organisation: String,
    /// The certificate's serial number, lower-case hex of the DER INTEGER content
    /// bytes (as [`Identity::serial`] and the relays compare it).
    pub serial: String,
    /// `DIR/orgs/ORG/crl.pem`.
    pub crl_path: PathBuf,
    /// The CRL number of the CRL now in `crl_path`.
    pub crl_number: u64,
    /// Its thisUpdate, unix seconds.
    pub this_update: i64,
    /// Its nextUpdate, unix seconds.
    pub next_update: i64,
    /// How many certificates it revokes.
    pub entries: usize,
    /// The certificate was already in the CRL; nothing was written.
    pub already_revoked: bool,
}

/// Revokes the current certificate of `user` (`NAME@RELAY`, read from
/// `DIR/users/USER/user.crt`) in its organisation's CRL, without a reason text.
/// See [`revoke_user_certificate_with_reason`].
///
/// # Errors
/// As [`revoke_user_certificate_with_reason`].
pub fn revoke_user_certificate(
    dir: &Path,
    user: &str,
    now: i64,
) -> Result<RevokedEntry, CertsError> {
    revoke_user_certificate_with_reason(dir, user, None, now)
}

/// Revokes the current certificate of `user` (`NAME@RELAY`, read from
/// `DIR/users/USER/user.crt`, leaf first) in the CRL of the organisation that
/// issued it (`DIR/orgs/ORG/crl.pem`, created when missing), signed with that
/// organisation's CA (`orgs/ORG/ca.crt`, `ca.key`).
///
/// The new CRL keeps the old entries, has CRL number old + 1, thisUpdate =
/// max(`now`, old thisUpdate + 1) and nextUpdate = thisUpdate + [`CRL_DAYS`] days.
/// `reason` (free text, at most 512 bytes, no control characters) is recorded in
/// `DIR/orgs/ORG/crl.log`; a CRL itself carries only a reason code
/// (keyCompromise). Revoking a certificate that is already in the CRL changes
/// nothing and returns `already_revoked: true`.
///
/// # Errors
/// [`CertsError::InvalidArgument`] for a malformed user id or reason,
/// [`CertsError::UnknownUser`] when the user has no profile directory,
/// [`CertsError::UnknownOrganisation`] when the issuing organisation has no CA in
/// `dir`, [`CertsError::BadFile`] / [`CertsError::KeyMismatch`] for damaged files
/// (e.g. a certificate not issued by that CA, a CRL that does not verify),
/// [`CertsError::Io`], [`CertsError::CrlCheck`] if the new CRL fails its own check.
pub fn revoke_user_certificate_with_reason(
    dir: &Path,
    user: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<RevokedEntry, CertsError> {
    if let Some(reason) = reason {
        check_reason(reason)?;
    }
    identity::parse_user_id(user).map_err(|e| CertsError::InvalidArgument {
        what: "USER",
        reason: e.to_string(),
    })?;
    let udir = user_dir(dir, user);
    if !udir.is_dir() {
        return Err(CertsError::UnknownUser {
            user: user.to_string(),
            dir: dir.to_path_buf(),
        });
    }

    // The user's certificate.
    let cert_path = udir.join("user.crt");
    let bad_cert = |reason: String| CertsError::BadFile {
        path: cert_path.clone(),
        reason,
    };
    let chain = identity::certificates_from_pem(read_text(&cert_path)?.as_bytes())
        .map_err(|e| bad_cert(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad_cert("holds no certificate".to_string()))?;
    let id = Identity::from_der(leaf).map_err(|e| bad_cert(e.to_string()))?;
    if id.id() != user {
        return Err(bad_cert(format!(
            "holds the certificate of {}, not of {user}",
            id.id()
        )));
    }
    let (_, leaf_x509) =
        X509Certificate::from_der(leaf).map_err(|e| bad_cert(format!("does not parse: {e}")))?;
    let serial = leaf_x509.raw_serial().to_vec();
    if serial.first().is_none_or(|b| *b >= 0x80) || hex(&serial) != id.serial {
        return Err(bad_cert(format!(
            "the serial number {} is not a positive DER INTEGER",
            id.serial
        )));
    }

    // Its organisation's CA and the federation root.
    let org = id.organisation.clone();
    let odir = org_dir(dir, &org);
    if !odir.join("ca.crt").is_file() {
        return Err(CertsError::UnknownOrganisation { org });
    }
    let ca = load_authority(&odir, &org, "ca.crt", "ca.key")?;
    let (_, ca_x509) =
        X509Certificate::from_der(ca.cert_der()).map_err(|e| CertsError::BadFile {
            path: odir.join("ca.crt"),
            reason: format!("does not parse: {e}"),
        })?;
    if leaf_x509.issuer() != ca_x509.subject()
        || leaf_x509
            .verify_signature(Some(ca_x509.public_key()))
            .is_err()
    {
        return Err(bad_cert(format!(
            "the certificate was not issued by the CA of {org} in {} (another federation?)",
            odir.join("ca.crt").display()
        )));
    }
    let root_path = root_cert_path(dir);
    let anchors =
        identity::certificates_from_pem(read_text(&root_path)?.as_bytes()).map_err(|e| {
            CertsError::BadFile {
                path: root_path.clone(),
                reason: e.to_string(),
            }
        })?;

    // The CRL it holds now.
    let path = crl_path(dir, &org);
    let old = read_crl(&path, ca.cert_der(), &anchors, &org, now)?;
    let serial_hex = hex(&serial);
    if let Some(old) = &old
        && old.entries.iter().any(|e| e.serial == serial)
    {
        return Ok(RevokedEntry {
            user: user.to_string(),
            organisation: org,
            serial: serial_hex,
            crl_path: path,
            crl_number: old.number,
            this_update: old.this_update,
            next_update: old.next_update,
            entries: old.entries.len(),
            already_revoked: true,
        });
    }

    // The new CRL.
    let (mut entries, number, this_update) = match old {
        Some(old) => (
            old.entries,
            old.number
                .checked_add(1)
                .ok_or_else(|| CertsError::BadFile {
                    path: path.clone(),
                    reason: "the CRL number cannot grow any further".to_string(),
                })?,
            now.max(old.this_update.saturating_add(1)),
        ),
        None => (Vec::new(), 1, now),
    };
    entries.push(CrlEntry::key_compromise(serial, now));
    let next_update = this_update + CRL_DAYS * DAY;
    let crl = ca.crl_with_entries(&entries, number, this_update, next_update)?;
    let expected: Vec<String> = entries.iter().map(|e| hex(&e.serial)).collect();
    let verified = check_crl(&crl.der, ca.cert_der(), &anchors, now, &expected, &org)?;
    if verified.this_update != this_update {
        return Err(CertsError::CrlCheck {
            what: format!("the new CRL of {org}"),
            reason: format!(
                "thisUpdate reads back as {}, expected {this_update}",
                verified.this_update
            ),
        });
    }
    replace_file(&path, crl.pem.as_bytes())?;
    append_log(&odir, now, &serial_hex, user, reason)?;
    Ok(RevokedEntry {
        user: user.to_string(),
        organisation: org,
        serial: serial_hex,
        crl_path: path,
        crl_number: number,
        this_update,
        next_update,
        entries: entries.len(),
        already_revoked: false,
    })
}

fn check_reason(reason: &str) -> Result<(), CertsError> {
    let bad = |why: String| CertsError::InvalidArgument {
        what: "--reason",
        reason: why,
    };
    if reason.len() > MAX_REASON_LEN {
        return Err(bad(format!("longer than {MAX_REASON_LEN} bytes")));
    }
    if reason.chars().any(char::is_control) {
        return Err(bad("must not contain control characters".to_string()));
    }
    Ok(())
}

/// Lower-case hex, as [`Identity::serial`].
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies a CRL the way a relay does (`revocation::verify_crl`) and checks that
/// it is `org`'s and revokes exactly `expected` (lower-case hex serials).
pub(crate) fn check_crl(
    der: &[u8],
    ca_der: &[u8],
    anchors: &[Vec<u8>],
    now: i64,
    expected: &[String],
    org: &str,
) -> Result<revocation::VerifiedCrl, CertsError> {
    let fail = |reason: String| CertsError::CrlCheck {
        what: format!("the CRL of {org}"),
        reason,
    };
    let verified =
        revocation::verify_crl(der, ca_der, anchors, now).map_err(|e| fail(e.to_string()))?;
    if verified.organisation != org {
        return Err(fail(format!(
            "issued by organisation {}",
            verified.organisation
        )));
    }
    let got: BTreeSet<&String> = verified.serials.iter().collect();
    let want: BTreeSet<&String> = expected.iter().collect();
    if got != want || verified.serials.len() != expected.len() {
        return Err(fail(format!(
            "revokes {:?}, expected {:?}",
            verified.serials, expected
        )));
    }
    Ok(verified)
}

/// An existing CRL, read back.
struct OldCrl {
    entries: Vec<CrlEntry>,
    number: u64,
    this_update: i64,
    next_update: i64,
}

/// Reads and verifies `path` (PEM or DER); `None` if it does not exist.
fn read_crl(
    path: &Path,
    ca_der: &[u8],
    anchors: &[Vec<u8>],
    org: &str,
    now: i64,
) -> Result<Option<OldCrl>, CertsError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("cannot read", path)(e)),
    };
    let bad = |reason: String| CertsError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let der = crl_der(&bytes).map_err(bad)?;
    if der.len() > MAX_CRL_LEN {
        return Err(bad(format!("larger than {MAX_CRL_LEN} bytes")));
    }
    let verified = revocation::verify_crl(&der, ca_der, anchors, now).map_err(|e| {
        bad(format!(
            "{e}; a relay would refuse it too. Move it away to start a new, empty CRL \
             (its revocations are then lost)"
        ))
    })?;
    if verified.organisation != org {
        return Err(bad(format!(
            "is the CRL of organisation {}, not of {org}",
            verified.organisation
        )));
    }
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| bad(format!("CRL unreadable: {e}")))?;
    let number = match crl.crl_number() {
        Some(n) => u64::try_from(n).map_err(|_| bad("the CRL number exceeds 2^64".to_string()))?,
        None => 0,
    };
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| CrlEntry {
            serial: r.raw_serial().to_vec(),
            revoked_at: r.revocation_date.timestamp(),
            reason_code: r.reason_code().map(|(_, code)| code.0),
        })
        .collect();
    Ok(Some(OldCrl {
        entries,
        number,
        this_update: crl.last_update().timestamp(),
        next_update: crl
            .next_update()
            .map_or(crl.last_update().timestamp(), |t| t.timestamp()),
    }))
}

/// The DER of a CRL file: PEM `X509 CRL` (exactly one) or DER as is.
fn crl_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let mut blocks = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| format!("bad PEM: {e}"))?;
        if pem.label != "X509 CRL" {
            return Err(format!(
                "holds a PEM {:?} block; expected X509 CRL",
                pem.label
            ));
        }
        blocks.push(pem.contents);
    }
    match <[Vec<u8>; 1]>::try_from(blocks) {
        Ok([der]) => Ok(der),
        Err(blocks) => Err(format!(
            "holds {} X509 CRL blocks; expected exactly one",
            blocks.len()
        )),
    }
}

/// Replaces `path` atomically: writes a temporary file in the same directory, then
/// renames it over `path`.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CertsError> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = parent.join(format!(".{CRL_FILE}.{}.tmp", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove", &tmp)(e)),
    }
    write_file(&tmp, contents, PUBLIC_MODE)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io("cannot replace", path)(e));
    }
    // Make the rename durable; not every platform can sync a directory.
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn append_log(
    odir: &Path,
    now: i64,
    serial: &str,
    user: &str,
    reason: Option<&str>,
) -> Result<(), CertsError> {
    let path = odir.join(CRL_LOG_FILE);
    let when = OffsetDateTime::from_unix_timestamp(now)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| now.to_string());
    let reason = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("(no reason given)");
    let line = format!("{when}\t{serial}\t{user}\t{reason}\n");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(io("cannot open (the CRL itself was updated)", &path))?;
    file.write_all(line.as_bytes())
        .map_err(io("cannot append to (the CRL itself was updated)", &path))
}
