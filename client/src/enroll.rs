//! `kring enroll`: a new device key and a certificate signing request for the
//! organisation's CA.
//!
//! The Ed25519 key is generated on this device and written only to `DIR/user.key`
//! (PKCS#8 `ENCRYPTED PRIVATE KEY` PEM under the user's passphrase, mode 0600; see
//! [`kring_protocol::keyfile`]); it never leaves the device. `DIR/user.csr` is a
//! PKCS#10 request signed with that key, asking for subject `CN=NAME, O=ORG` and
//! the subjectAltName URI `kring:user:NAME@RELAY`: what the CA needs to issue a
//! Kring user certificate (`kring-certs-dev sign-csr`, or OpenSSL as in
//! `docs/certificates.md`; the CA adds clearance, roles and key usages).
//! `DIR/profile.toml` is a profile template the user completes: the relay's
//! address, the certificate chain the CA returns (`user.crt`) and the federation
//! root CA certificate (`root.crt`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kring_protocol::identity::{self, USER_URI_PREFIX};
use ring::rand::SecureRandom as _;

use crate::error::{ClientError, Result};
use crate::profile::PROFILE_FILE;

/// The key file `kring enroll` writes.
pub const KEY_FILE: &str = "user.key";
/// The certificate signing request `kring enroll` writes.
pub const CSR_FILE: &str = "user.csr";
/// Where the profile expects the chain the CA returns.
pub const CERT_FILE: &str = "user.crt";
/// Where the profile expects the federation root CA certificate(s).
pub const ROOT_FILE: &str = "root.crt";

/// The DER bytes before the 32-byte seed of an RFC 5208 (PKCS#8 v1) Ed25519
/// private key (RFC 8410 section 7): the form OpenSSL writes and reads.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What to enrol.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// `NAME@RELAY`.
    pub user: String,
    /// The organisation (certificate O); `None`: the home relay's id (the
    /// development federation's convention).
    pub organisation: Option<String>,
    /// The directory to write (created if missing; must not hold a key, request or
    /// profile already).
    pub dir: PathBuf,
    /// The passphrase the key is encrypted under (it also protects the device's
    /// archive).
    pub passphrase: crate::unlock::Passphrase,
}

/// What `enroll` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// `NAME@RELAY`.
    pub user: String,
    /// The home relay id.
    pub relay: String,
    /// The organisation the request names.
    pub organisation: String,
    /// The directory.
    pub dir: PathBuf,
    /// `DIR/user.key`.
    pub key: PathBuf,
    /// `DIR/user.csr`.
    pub csr: PathBuf,
    /// `DIR/profile.toml`.
    pub profile: PathBuf,
    /// SHA-256 of the public key's SubjectPublicKeyInfo (DER), lower-case hex: for
    /// the CA to confirm the request with the user by another channel.
    pub key_fingerprint: String,
}

fn usage(e: impl ToString) -> ClientError {
    ClientError::Usage(e.to_string())
}

/// A new Ed25519 key (PKCS#8 v1 DER) from the system's random number generator.
fn new_key() -> Result<rcgen::KeyPair> {
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
    der.resize(48, 0);
    ring::rand::SystemRandom::new()
        .fill(&mut der[16..])
        .map_err(|_| ClientError::Io {
            path: "the system random number generator".into(),
            reason: "failed".into(),
        })?;
    rcgen::KeyPair::try_from(der.as_slice()).map_err(|e| ClientError::Io {
        path: "new Ed25519 key".into(),
        reason: e.to_string(),
    })
}

/// The certificate signing request for `name@relay` of `organisation`, signed by `key`.
fn csr_pem(key: &rcgen::KeyPair, name: &str, relay: &str, organisation: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    dn.push(rcgen::DnType::OrganizationName, organisation);
    params.distinguished_name = dn;
    let uri = format!("{USER_URI_PREFIX}{name}@{relay}");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| usage(format!("{uri:?} is not ASCII")))?,
    )];
    let failed = |e: rcgen::Error| ClientError::Io {
        path: "certificate signing request".into(),
        reason: e.to_string(),
    };
    params
        .serialize_request(key)
        .map_err(failed)?
        .pem()
        .map_err(failed)
}

/// The profile template for the user to complete.
fn profile_template(user: &str, relay: &str, organisation: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "# Kring client profile of {user}, written by `kring enroll`. Complete it:\n\
         #   relay          the address (HOST:PORT) of your home relay {relay}\n\
         #   cert           the certificate chain the CA of {organisation} issues for\n\
         #                  {CSR_FILE} (your certificate, then the organisation CA), PEM:\n\
         #                  save it as {CERT_FILE} next to this file\n\
         #   trust_anchors  the federation root CA certificate(s), PEM: save them as\n\
         #                  {ROOT_FILE} next to this file (get them from your\n\
         #                  organisation by a channel you trust)\n\
         # Paths are relative to the directory of this file. {KEY_FILE} is your private\n\
         # key, encrypted under your passphrase: it never leaves this device. Check\n\
         # with: kring --profile DIR whoami\n\
         # The passphrase is asked for on the terminal; for unattended use name a\n\
         # file (mode 0600) holding it: passphrase_file = \"FILE\" (or set\n\
         # KRING_PASSPHRASE_FILE).\n\
         \n\
         user = {}\n\
         relay = \"\"\n\
         relay_id = {}\n\
         cert = {}\n\
         key = {}\n\
         trust_anchors = {}\n\
         state_dir = \"state\"\n",
        q(user),
        q(relay),
        q(CERT_FILE),
        q(KEY_FILE),
        q(ROOT_FILE),
    )
}

/// Writes a new file (never replaces one) with Unix permission bits `mode`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| ClientError::io(path, format!("cannot create: {e}")))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| ClientError::io(path, format!("cannot write: {e}")))
}

/// The checks [`enroll`] makes before it writes anything (so that the command line
/// can make them before it asks for a passphrase): a valid user and organisation,
/// and no key, request or profile in `dir` yet.
pub fn check(user: &str, organisation: Option<&str>, dir: &Path) -> Result<()> {
    let (_, relay) = identity::parse_user_id(user).map_err(usage)?;
    identity::validate_organisation(organisation.unwrap_or(relay)).map_err(usage)?;
    for file in [KEY_FILE, CSR_FILE, PROFILE_FILE] {
        let path = dir.join(file);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(usage(format!(
                "{} already exists; kring enroll never replaces a key, request or \
                 profile: choose another --out directory",
                path.display()
            )));
        }
    }
    Ok(())
}

/// `kring enroll`: generates the device key and the request in `request.dir`
/// (see the [module documentation](self)). Nothing is replaced: if the directory
/// already holds a key, request or profile, nothing is written.
///
/// # Errors
/// [`ClientError::Usage`] (exit 2) for an invalid user or organisation or files
/// already there; [`ClientError::Io`] when writing fails.
pub fn enroll(request: &EnrollRequest) -> Result<Enrolment> {
    check(&request.user, request.organisation.as_deref(), &request.dir)?;
    let (name, relay) = identity::parse_user_id(&request.user).map_err(usage)?;
    let organisation = request.organisation.as_deref().unwrap_or(relay);
    let dir = &request.dir;
    let key_path = dir.join(KEY_FILE);
    let csr_path = dir.join(CSR_FILE);
    let profile_path = dir.join(PROFILE_FILE);
    let key = new_key()?;
    let csr = csr_pem(&key, name, relay, organisation)?;
    let fingerprint = {
        use rcgen::PublicKeyData as _;
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };

    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| ClientError::io(dir, format!("cannot create the directory: {e}")))?;
    let der = zeroize::Zeroizing::new(key.serialize_der());
    let pem = kring_protocol::keyfile::encrypt_pem(&der, request.passphrase.as_bytes())
        .map_err(|e| ClientError::io(&key_path, e.to_string()))?;
    write_new(&key_path, pem.as_bytes(), 0o600)?;
    write_new(&csr_path, csr.as_bytes(), 0o644)?;
    write_new(
        &profile_path,
        profile_template(&request.user, relay, organisation).as_bytes(),
        0o644,
    )?;
    Ok(Enrolment {
        user: request.user.clone(),
        relay: relay.to_string(),
        organisation: organisation.to_string(),
        dir: dir.clone(),
        key: key_path,
        csr: csr_path,
        profile: profile_path,
        key_fingerprint: fingerprint,
    })
}

/// What to tell the user after [`enroll`]: the files and the next steps.
pub fn next_steps(e: &Enrolment) -> String {
    let dir = e.dir.display();
    format!(
        "enrolled {user} on this device\n\
         \x20 key      {key}  (private, mode 0600: it never leaves this device)\n\
         \x20 request  {csr}  (CN={name}, O={org}, URI kring:user:{user})\n\
         \x20 profile  {profile}  (to complete)\n\
         \x20 key fingerprint (SHA-256 of the public key) {fp}\n\
         next:\n\
         \x20 1. send {csr} to the CA of organisation {org}; it grants your clearance and\n\
         \x20    roles (read the fingerprint above to them by another channel)\n\
         \x20 2. save the certificate chain it returns (your certificate, then the\n\
         \x20    organisation CA) as {dir}/{CERT_FILE}\n\
         \x20 3. save the federation root CA certificate as {dir}/{ROOT_FILE}\n\
         \x20 4. fill in `relay` (HOST:PORT of relay {relay}) in {profile}\n\
         \x20 5. kring --profile {dir} whoami; then kring --profile {dir} keys publish",
        user = e.user,
        name = e.user.split_once('@').map_or(e.user.as_str(), |(n, _)| n),
        org = e.organisation,
        relay = e.relay,
        key = e.key.display(),
        csr = e.csr.display(),
        profile = e.profile.display(),
        fp = e.key_fingerprint,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_der(path: &Path, label: &str) -> Vec<u8> {
        use rustls::pki_types::pem::{PemObject as _, SectionKind};
        let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_file(path).unwrap();
        assert_eq!(format!("{kind:?}"), label, "{}", path.display());
        der
    }

    fn passphrase() -> crate::unlock::Passphrase {
        crate::unlock::Passphrase::new(b"enrol me".to_vec()).unwrap()
    }

    #[test]
    fn enroll_writes_an_encrypted_v1_key_a_request_and_a_profile_template() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("me");
        let e = enroll(&EnrollRequest {
            user: "consul@post-a".into(),
            organisation: None,
            dir: dir.clone(),
            passphrase: passphrase(),
        })
        .unwrap();
        assert_eq!(e.organisation, "post-a");
        assert_eq!(e.relay, "post-a");

        // The key: encrypted under the passphrase; inside PKCS#8 v1, 48 bytes, mode
        // 0600, a valid Ed25519 key.
        let pem = fs::read_to_string(&e.key).unwrap();
        assert!(
            pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{pem}"
        );
        assert_eq!(
            kring_protocol::keyfile::decrypt_pem(&pem, b"wrong").unwrap_err(),
            kring_protocol::keyfile::KeyFileError::WrongPassphrase
        );
        let key = kring_protocol::keyfile::decrypt_pem(&pem, b"enrol me")
            .unwrap()
            .to_vec();
        assert_eq!(key.len(), 48);
        assert_eq!(key[..16], ED25519_PKCS8_V1_PREFIX);
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&e.key), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }

        // The request: signed by that key, CN, O and the Kring URI.
        let csr = pem_der(&e.csr, "Csr");
        let params = rcgen::CertificateSigningRequestParams::from_der(&csr.as_slice().into())
            .expect("a request whose signature verifies");
        use rcgen::PublicKeyData as _;
        use ring::signature::KeyPair as _;
        assert_eq!(params.public_key.der_bytes(), pair.public_key().as_ref());
        let dn: Vec<String> = params
            .params
            .distinguished_name
            .iter()
            .map(|(t, v)| format!("{t:?}={v:?}"))
            .collect();
        assert!(
            dn.iter()
                .any(|d| d.contains("CommonName") && d.contains("consul")),
            "{dn:?}"
        );
        assert!(
            dn.iter()
                .any(|d| d.contains("OrganizationName") && d.contains("post-a")),
            "{dn:?}"
        );
        assert_eq!(params.params.subject_alt_names.len(), 1);
        assert!(
            format!("{:?}", params.params.subject_alt_names[0])
                .contains("kring:user:consul@post-a")
        );

        // The template: a profile once relay, cert and root are filled in.
        let text = fs::read_to_string(&e.profile).unwrap();
        let err = crate::profile::Profile::parse(&dir, &text).unwrap_err();
        assert!(err.to_string().contains("relay is empty"), "{err}");
        let filled = text.replace("relay = \"\"", "relay = \"127.0.0.1:4000\"");
        let err = crate::profile::Profile::parse(&dir, &filled).unwrap_err();
        assert!(err.to_string().contains("user.crt"), "{err}");
        fs::write(dir.join(CERT_FILE), "x").unwrap();
        fs::write(dir.join(ROOT_FILE), "x").unwrap();
        let profile = crate::profile::Profile::parse(&dir, &filled).unwrap();
        assert_eq!(profile.user, "consul@post-a");
        assert_eq!(profile.key, e.key);

        let steps = next_steps(&e);
        for needle in [CSR_FILE, CERT_FILE, ROOT_FILE, "whoami", &e.key_fingerprint] {
            assert!(steps.contains(needle), "{needle}: {steps}");
        }
    }

    #[test]
    fn enroll_never_replaces_and_checks_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let request = EnrollRequest {
            user: "consul@bz".into(),
            organisation: Some("ministerie".into()),
            dir: dir.clone(),
            passphrase: passphrase(),
        };
        let e = enroll(&request).unwrap();
        assert_eq!(e.organisation, "ministerie");
        let key = fs::read(&e.key).unwrap();
        let err = enroll(&request).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(&e.key).unwrap(), key, "the key is never replaced");

        for (user, org) in [
            ("consul", None),
            ("Consul@bz", None),
            ("consul@bz@x", None),
            ("consul@bz", Some("Ministerie")),
        ] {
            let err = enroll(&EnrollRequest {
                user: user.into(),
                organisation: org.map(str::to_string),
                dir: tmp.path().join("other"),
                passphrase: passphrase(),
            })
            .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{user} {org:?}: {err}");
            assert!(!tmp.path().join("other").exists());
        }
    }
}
