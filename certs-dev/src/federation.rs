//! Writing a federation to disk: `kring-certs-dev init` (the demo
//! federation) and `kring-certs-dev issue-user`; `kring-certs-dev revoke-cert`
//! lives in [`crate::revoke`].
//!
//! Layout under `DIR` (other tools rely on it exactly):
//!
//! ```text
//! ca/root.crt, ca/root.key                      federation root CA
//! orgs/ORG/ca.crt, orgs/ORG/ca.key              one CA per organisation
//! orgs/ORG/crl.pem                              the organisation's CRL (signed by its CA)
//! orgs/ORG/crl.log                              why certificates were revoked (revoke-cert)
//! relays/ID/relay.toml, relay.crt, relay.key    relay config, chain (relay, org CA), key
//! users/NAME@RELAY/profile.toml, user.crt, user.key (encrypted), passphrase
//! ```
//!
//! Keys are PKCS#8 v1 PEM (RFC 5208, the form `openssl genpkey` writes and OpenSSL
//! 3.0 reads), mode 0600. Certificate files are PEM; `relay.crt` and
//! `user.crt` hold the leaf followed by its organisation CA. `crl.pem` is a PEM
//! `X509 CRL`: `init` writes an empty one (CRL number 1, thisUpdate = now,
//! nextUpdate = now + [`CRL_DAYS`] days) and `revoke-cert` replaces it atomically
//! (CRL number + 1, thisUpdate strictly later). Each `relay.toml` lists its own
//! organisation's CRL under `crls`; the relay re-reads it when it changes.
//! `crl.log` is written only by `revoke-cert`: one tab-separated line per
//! revocation (time, serial, user, reason), for people; relays do not read it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kring_policy::Clearance;
use kring_protocol::identity::{self, CaFingerprint, Identity, IdentityKind, ROLE_ORG_ADMIN};
use serde::Deserialize;

use crate::error::CertsError;
use crate::pki::{Authority, DAY, HOUR, IssuedCert, Pki, RelaySpec, UserSpec, Validity};

/// Default first port (`--base-port`); relays use base, base+1, ... in [`DEMO_RELAYS`] order.
pub const DEFAULT_BASE_PORT: u16 = 47_100;
/// The host relays listen on.
pub const LISTEN_HOST: &str = "127.0.0.1";

/// The demo relays in port order: (id = organisation id, accreditation).
pub const DEMO_RELAYS: [(&str, &str); 4] = [
    ("bz", "NL:STG-GEHEIM"),
    ("nctv", "NL:STG-GEHEIM"),
    ("aivd", "NL:STG-ZEER-GEHEIM"),
    ("post-a", "NL:STG-CONFIDENTIEEL"),
];

/// The demo users: (`NAME@RELAY`, clearance, roles). Each belongs to its home
/// relay's organisation.
pub const DEMO_USERS: [(&str, &str, &[&str]); 9] = [
    ("analist@post-a", "NL:STG-CONFIDENTIEEL", &[]),
    ("attache@post-a", "NL:DEP-VERTROUWELIJK", &[]),
    ("liaison@bz", "NL:STG-GEHEIM", &[]),
    ("liaison@nctv", "NL:STG-GEHEIM", &[]),
    ("analist@aivd", "NL:STG-ZEER-GEHEIM;CMP=CYBER", &[]),
    ("admin@bz", "NL:STG-GEHEIM", &[ROLE_ORG_ADMIN]),
    ("admin@nctv", "NL:STG-GEHEIM", &[ROLE_ORG_ADMIN]),
    ("admin@aivd", "NL:STG-ZEER-GEHEIM", &[ROLE_ORG_ADMIN]),
    ("admin@post-a", "NL:STG-CONFIDENTIEEL", &[ROLE_ORG_ADMIN]),
];

/// Validity of a CRL written by `init` or `revoke-cert` (nextUpdate - thisUpdate), days.
pub const CRL_DAYS: i64 = 30;
/// The file name of an organisation's CRL in `orgs/ORG/`.
pub const CRL_FILE: &str = "crl.pem";

/// The sub-directories `init --force` replaces.
const MANAGED_DIRS: [&str; 4] = ["ca", "orgs", "relays", "users"];

/// A relay as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEntry {
    /// Relay id.
    pub id: String,
    /// Organisation id.
    pub organisation: String,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Accreditation (canonical label text).
    pub accreditation: String,
    /// `DIR/relays/ID/relay.toml`.
    pub config: PathBuf,
}

/// A user as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// `NAME@RELAY`.
    pub id: String,
    /// Organisation id.
    pub organisation: String,
    /// Clearance (canonical label text).
    pub clearance: String,
    /// Roles.
    pub roles: Vec<String>,
    /// `DIR/users/NAME@RELAY`.
    pub profile_dir: PathBuf,
}

/// What `init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSummary {
    /// The federation directory.
    pub dir: PathBuf,
    /// The relays, in port order.
    pub relays: Vec<RelayEntry>,
    /// The users.
    pub users: Vec<UserEntry>,
    /// Whether existing `ca/ orgs/ relays/ users/` were replaced (`--force`).
    pub replaced: bool,
}

/// `DIR/relays/ID`.
pub fn relay_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join("relays").join(id)
}

/// `DIR/users/NAME@RELAY`.
pub fn user_dir(dir: &Path, user: &str) -> PathBuf {
    dir.join("users").join(user)
}

/// `DIR/orgs/ORG`.
pub fn org_dir(dir: &Path, org: &str) -> PathBuf {
    dir.join("orgs").join(org)
}

/// `DIR/orgs/ORG/crl.pem`.
pub fn crl_path(dir: &Path, org: &str) -> PathBuf {
    org_dir(dir, org).join(CRL_FILE)
}

/// `DIR/ca/root.crt`.
pub fn root_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca").join("root.crt")
}

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertsError {
    let path = path.to_path_buf();
    move |source| CertsError::Io {
        action,
        path,
        source,
    }
}

fn parse_clearance(label: &str) -> Result<Clearance, CertsError> {
    Clearance::from_str(label).map_err(|e| CertsError::BadClearance {
        label: label.to_string(),
        reason: e.to_string(),
    })
}

/// A TOML basic string literal for `s`.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Writes a new file with the given Unix permission bits (fails if it exists).
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io("cannot create", path))?;
    file.write_all(contents).map_err(io("cannot write", path))?;
    file.sync_all().map_err(io("cannot sync", path))?;
    Ok(())
}

pub(crate) const KEY_MODE: u32 = 0o600;
pub(crate) const PUBLIC_MODE: u32 = 0o644;

fn create_dir(path: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(path).map_err(io("cannot create directory", path))
}

/// Makes sure `out` can receive a federation, removing the managed
/// sub-directories when `force` is set. Returns whether anything was replaced.
fn prepare_out(out: &Path, force: bool) -> Result<bool, CertsError> {
    match fs::metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir(out)?;
            Ok(false)
        }
        Err(e) => Err(io("cannot inspect", out)(e)),
        Ok(meta) if !meta.is_dir() => Err(CertsError::NotADirectory {
            path: out.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = fs::read_dir(out).map_err(io("cannot read directory", out))?;
            if entries.next().is_none() {
                return Ok(false);
            }
            if !force {
                return Err(CertsError::OutputNotEmpty {
                    dir: out.to_path_buf(),
                });
            }
            let mut replaced = false;
            for sub in MANAGED_DIRS {
                let path = out.join(sub);
                match fs::symlink_metadata(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("cannot inspect", &path)(e)),
                    Ok(meta) if meta.is_dir() => {
                        fs::remove_dir_all(&path).map_err(io("cannot remove", &path))?;
                        replaced = true;
                    }
                    Ok(_) => {
                        fs::remove_file(&path).map_err(io("cannot remove", &path))?;
                        replaced = true;
                    }
                }
            }
            Ok(replaced)
        }
    }
}

/// Verifies a freshly minted certificate the way its users will, and that it
/// says what was intended.
pub(crate) fn self_check(
    cert: &IssuedCert,
    anchors: &[Vec<u8>],
    now: i64,
    kind: IdentityKind,
    clearance: &Clearance,
    roles: &[String],
) -> Result<Identity, CertsError> {
    let fail = |source| CertsError::SelfCheck {
        what: format!("the certificate of {}", cert.identity),
        source,
    };
    let at = u64::try_from(now.max(0)).unwrap_or(0);
    let id = match identity::verify_chain(&cert.chain_der, anchors, at, kind) {
        Ok(id) => id,
        // A deliberately expired certificate (issue-user --not-after in the past)
        // must fail for that reason only.
        Err(identity::IdentityError::Expired { .. }) if cert_expired(cert, now) => {
            Identity::from_der(&cert.cert_der).map_err(fail)?
        }
        Err(e) => return Err(fail(e)),
    };
    let mut want_roles = roles.to_vec();
    want_roles.sort();
    if id.id() != cert.identity
        || id.clearance.as_ref() != Some(clearance)
        || id.roles != want_roles
    {
        return Err(fail(identity::IdentityError::MalformedCertificate {
            reason: format!(
                "reads back as {} with clearance {:?} and roles {:?}",
                id.id(),
                id.clearance.as_ref().map(ToString::to_string),
                id.roles
            ),
        }));
    }
    Ok(id)
}

/// Whether the leaf of `cert` ends before `now`.
fn cert_expired(cert: &IssuedCert, now: i64) -> bool {
    Identity::from_der(&cert.cert_der).is_ok_and(|id| id.not_after < now)
}

fn relay_toml(
    id: &str,
    organisation: &str,
    address: &str,
    accreditation: &str,
    peers: &[PeerLine],
    org_admins: &[String],
) -> String {
    let mut s = format!(
        "# Kring relay configuration for relay {id:?}, written by kring-certs-dev.\n\
         #\n\
         # Paths are relative to the directory of this file.\n\
         #   id             this relay's id; must match its certificate\n\
         #                  (URI SAN kring:relay:ID, DNS SAN ID.relay.kring)\n\
         #   listen         address:port where clients and peer relays connect\n\
         #                  (TLS 1.3, mutual authentication)\n\
         #   cert           PEM chain: this relay's certificate, then its organisation CA\n\
         #   key            the certificate's private key (PKCS#8 PEM, Ed25519; keep it 0600)\n\
         #   trust_anchors  PEM file with the federation root CA certificate(s)\n\
         #   crls           CRL files (PEM or DER) of organisation CAs; re-read every\n\
         #                  second when changed (kring-certs-dev revoke-cert updates them)\n\
         #   data_dir       the relay's durable state (created when missing)\n\
         #   accreditation  optional clearance label; may only LOWER the accreditation\n\
         #                  carried in the certificate ({accreditation}), never raise it\n\
         #   org_admins     informative list of this organisation's administrators;\n\
         #                  roles are granted by certificates, not by this list\n\
         #   [[peers]]      every other relay of the federation: its id, address:port,\n\
         #                  organisation (only certificates with that O speak for it and\n\
         #                  its users) and ca_fingerprint (SHA-256 of that organisation's\n\
         #                  CA certificate: only that CA may issue them)\n\
         \n\
         id = {}\n\
         listen = {}\n\
         cert = \"relay.crt\"\n\
         key = \"relay.key\"\n\
         trust_anchors = \"../../ca/root.crt\"\n\
         crls = [{}]\n\
         data_dir = \"data\"\n\
         # accreditation = {}\n\
         org_admins = [{}]\n",
        toml_str(id),
        toml_str(address),
        toml_str(&format!("../../orgs/{organisation}/{CRL_FILE}")),
        toml_str(accreditation),
        org_admins
            .iter()
            .map(|a| toml_str(a))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for peer in peers {
        s.push_str(&format!(
            "\n[[peers]]\nid = {}\naddress = {}\norganisation = {}\nca_fingerprint = {}\n",
            toml_str(&peer.id),
            toml_str(&peer.address),
            toml_str(&peer.organisation),
            toml_str(&peer.ca_fingerprint.to_string()),
        ));
    }
    s
}

/// One `[[peers]]` entry of a generated `relay.toml`.
struct PeerLine {
    id: String,
    address: String,
    organisation: String,
    ca_fingerprint: CaFingerprint,
}

fn profile_toml(
    user: &str,
    relay_address: &str,
    relay_id: &str,
    clearance: &str,
    roles: &[String],
) -> String {
    let roles = if roles.is_empty() {
        "none".to_string()
    } else {
        roles.join(", ")
    };
    format!(
        "# Kring client profile of {user:?}, written by kring-certs-dev.\n\
         # Use it with: kring --profile THIS_DIRECTORY <command>   (or KRING_PROFILE=...)\n\
         #\n\
         # Paths are relative to the directory of this file.\n\
         #   user           your identity NAME@RELAY; must match your certificate\n\
         #                  (URI SAN kring:user:NAME@RELAY)\n\
         #   relay          address:port of your home relay\n\
         #   relay_id       your home relay's id (its certificate carries RELAY.relay.kring)\n\
         #   cert           PEM chain: your certificate, then your organisation CA\n\
         #   key            your certificate's private key (PKCS#8 PEM, Ed25519; keep it 0600),\n\
         #                  encrypted under the passphrase\n\
         #   trust_anchors  PEM file with the federation root CA certificate(s)\n\
         #   state_dir      the client's local state, encrypted under the passphrase\n\
         #                  (created when missing)\n\
         #   passphrase_file  DEVELOPMENT ONLY: the passphrase of the key and the local\n\
         #                  state, in a file next to them, so that the demo runs\n\
         #                  unattended. A real device leaves this out (kring then asks\n\
         #                  on the terminal) or names a file on other storage;\n\
         #                  KRING_PASSPHRASE_FILE overrides it.\n\
         #\n\
         # Your certificate grants clearance {clearance}; roles: {roles}.\n\
         \n\
         user = {}\n\
         relay = {}\n\
         relay_id = {}\n\
         cert = \"user.crt\"\n\
         key = \"user.key\"\n\
         trust_anchors = \"../../ca/root.crt\"\n\
         state_dir = \"state\"\n\
         # Development only (see above).\n\
         passphrase_file = \"{PASSPHRASE_FILE}\"\n",
        toml_str(user),
        toml_str(relay_address),
        toml_str(relay_id),
    )
}

fn address(port: u16) -> String {
    format!("{LISTEN_HOST}:{port}")
}

/// Everything `init` writes, generated in memory first.
struct Planned {
    pki: Pki,
    /// (organisation, empty CRL PEM).
    crls: Vec<(String, String)>,
    relays: Vec<(RelayEntry, IssuedCert, String)>,
    users: Vec<(UserEntry, IssuedCert, String)>,
}

fn plan_demo(base_port: u16, now: i64) -> Result<Planned, CertsError> {
    let last = usize::from(base_port) + DEMO_RELAYS.len() - 1;
    if base_port == 0 || last > usize::from(u16::MAX) {
        return Err(CertsError::InvalidArgument {
            what: "--base-port",
            reason: format!(
                "{base_port}: the {} relays need ports base..=base+{}, which must lie in 1..=65535",
                DEMO_RELAYS.len(),
                DEMO_RELAYS.len() - 1
            ),
        });
    }
    let mut pki = Pki::new(now)?;
    let anchors = pki.anchors();
    let ports: Vec<(String, String)> = DEMO_RELAYS
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let port = u16::try_from(usize::from(base_port) + i).unwrap_or(u16::MAX);
            (id.to_string(), address(port))
        })
        .collect();
    // Every relay's organisation is its id; each relay pins its peers' CAs.
    let mut all_peers = Vec::new();
    for (id, addr) in &ports {
        let ca = pki.add_organisation(id)?;
        all_peers.push(PeerLine {
            id: id.clone(),
            address: addr.clone(),
            organisation: id.clone(),
            ca_fingerprint: CaFingerprint::of(ca.cert_der()),
        });
    }
    let mut relays = Vec::new();
    for ((id, accreditation), (_, addr)) in DEMO_RELAYS.iter().zip(&ports) {
        let acc = parse_clearance(accreditation)?;
        let cert = pki.issue_relay(&RelaySpec::new(id, id).with_accreditation(acc.clone()))?;
        self_check(&cert, &anchors, now, IdentityKind::Relay, &acc, &[])?;
        let peers: Vec<PeerLine> = all_peers
            .iter()
            .filter(|p| p.id != *id)
            .map(|p| PeerLine {
                id: p.id.clone(),
                address: p.address.clone(),
                organisation: p.organisation.clone(),
                ca_fingerprint: p.ca_fingerprint,
            })
            .collect();
        let admins: Vec<String> = DEMO_USERS
            .iter()
            .filter(|(u, _, roles)| {
                roles.contains(&ROLE_ORG_ADMIN) && u.ends_with(&format!("@{id}"))
            })
            .map(|(u, _, _)| u.to_string())
            .collect();
        let config = relay_toml(id, id, addr, &acc.to_string(), &peers, &admins);
        relays.push((
            RelayEntry {
                id: id.to_string(),
                organisation: id.to_string(),
                address: addr.clone(),
                accreditation: acc.to_string(),
                config: PathBuf::new(),
            },
            cert,
            config,
        ));
    }
    let mut users = Vec::new();
    for (user, label, roles) in DEMO_USERS {
        let (name, relay) = identity::parse_user_id(user)?;
        let clearance = parse_clearance(label)?;
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let mut spec = UserSpec::new(name, relay, relay).with_clearance(clearance.clone());
        spec.roles.clone_from(&roles);
        let cert = pki.issue_user(&spec)?;
        self_check(&cert, &anchors, now, IdentityKind::User, &clearance, &roles)?;
        let relay_addr = ports
            .iter()
            .find(|(id, _)| id == relay)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| CertsError::UnknownOrganisation {
                org: relay.to_string(),
            })?;
        let profile = profile_toml(user, &relay_addr, relay, &clearance.to_string(), &roles);
        users.push((
            UserEntry {
                id: user.to_string(),
                organisation: relay.to_string(),
                clearance: clearance.to_string(),
                roles,
                profile_dir: PathBuf::new(),
            },
            cert,
            profile,
        ));
    }
    let mut crls = Vec::new();
    for org in pki.organisations() {
        let ca = pki
            .organisation(org)
            .ok_or_else(|| CertsError::UnknownOrganisation {
                org: org.to_string(),
            })?;
        let crl = ca.crl_with_entries(&[], 1, now, now + CRL_DAYS * DAY)?;
        crate::revoke::check_crl(&crl.der, ca.cert_der(), &anchors, now, &[], org)?;
        crls.push((org.to_string(), crl.pem));
    }
    Ok(Planned {
        pki,
        crls,
        relays,
        users,
    })
}

fn write_authority(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    ca: &Authority,
) -> Result<(), CertsError> {
    create_dir(dir)?;
    write_file(&dir.join(cert_name), ca.cert_pem().as_bytes(), PUBLIC_MODE)?;
    write_file(&dir.join(key_name), ca.key_pem().as_bytes(), KEY_MODE)
}

/// The file beside each demo profile holding its passphrase (development only).
pub const PASSPHRASE_FILE: &str = "passphrase";

/// A random passphrase for a demo user (development only).
fn new_passphrase() -> Result<String, CertsError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertsError::Generate {
            what: "a passphrase".into(),
            reason: "the system random number generator failed".into(),
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A user's profile: the profile, the certificate chain, the private key encrypted
/// under a random passphrase, and that passphrase in `passphrase` (development only).
fn write_user(dir: &Path, cert: &IssuedCert, profile: &str) -> Result<(), CertsError> {
    use rustls_pki_types::pem::PemObject as _;
    let passphrase = new_passphrase()?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| CertsError::Generate {
            what: "the encrypted user key".into(),
            reason: e.to_string(),
        })?;
    let key_pem =
        kring_protocol::keyfile::encrypt_pem(der.secret_pkcs8_der(), passphrase.as_bytes())
            .map_err(|e| CertsError::Generate {
                what: "the encrypted user key".into(),
                reason: e.to_string(),
            })?;
    create_dir(dir)?;
    write_file(&dir.join("profile.toml"), profile.as_bytes(), PUBLIC_MODE)?;
    write_file(
        &dir.join("user.crt"),
        cert.chain_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    write_file(
        &dir.join(PASSPHRASE_FILE),
        format!("{passphrase}\n").as_bytes(),
        KEY_MODE,
    )?;
    write_file(&dir.join("user.key"), key_pem.as_bytes(), KEY_MODE)
}

/// `kring-certs-dev init`: writes the demo federation into `out`.
///
/// All certificates are generated and self-checked (chain to the root, identity,
/// clearance and roles read back), and each organisation's empty CRL verified as
/// a relay verifies it, before anything is written. An existing,
/// non-empty `out` is refused unless `force`, which replaces its `ca/`, `orgs/`,
/// `relays/` and `users/` (other files are left alone).
///
/// # Errors
/// [`CertsError::OutputNotEmpty`], [`CertsError::InvalidArgument`] (port range),
/// [`CertsError::Io`], or a generation/self-check error.
pub fn init_demo(
    out: &Path,
    base_port: u16,
    force: bool,
    now: i64,
) -> Result<InitSummary, CertsError> {
    let planned = plan_demo(base_port, now)?;
    let replaced = prepare_out(out, force)?;

    write_authority(&out.join("ca"), "root.crt", "root.key", planned.pki.root())?;
    for org in planned.pki.organisations() {
        if let Some(ca) = planned.pki.organisation(org) {
            write_authority(&org_dir(out, org), "ca.crt", "ca.key", ca)?;
        }
    }
    for (org, crl_pem) in &planned.crls {
        write_file(&crl_path(out, org), crl_pem.as_bytes(), PUBLIC_MODE)?;
    }
    let mut relays = Vec::new();
    for (mut entry, cert, config) in planned.relays {
        let dir = relay_dir(out, &entry.id);
        create_dir(&dir)?;
        entry.config = dir.join("relay.toml");
        write_file(&entry.config, config.as_bytes(), PUBLIC_MODE)?;
        write_file(
            &dir.join("relay.crt"),
            cert.chain_pem.as_bytes(),
            PUBLIC_MODE,
        )?;
        write_file(&dir.join("relay.key"), cert.key_pem.as_bytes(), KEY_MODE)?;
        relays.push(entry);
    }
    let mut users = Vec::new();
    for (mut entry, cert, profile) in planned.users {
        entry.profile_dir = user_dir(out, &entry.id);
        write_user(&entry.profile_dir, &cert, &profile)?;
        users.push(entry);
    }
    Ok(InitSummary {
        dir: out.to_path_buf(),
        relays,
        users,
        replaced,
    })
}

/// What `issue-user` should mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueUserRequest {
    /// `NAME@RELAY`; RELAY must exist in the federation directory.
    pub user: String,
    /// The clearance to grant.
    pub clearance: Clearance,
    /// Roles to grant (e.g. `org-admin`).
    pub roles: Vec<String>,
    /// End of validity (unix seconds); default one year from now.
    pub not_after: Option<i64>,
    /// Replace an existing profile of this user.
    pub force: bool,
}

#[derive(Deserialize)]
struct RelayConfigPeek {
    id: String,
    listen: String,
}

/// What a federation directory says about a relay users are homed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HomeRelay {
    /// Its organisation (O of `relays/ID/relay.crt`): the CA of its users.
    pub(crate) organisation: String,
    /// Its `listen` address.
    pub(crate) listen: String,
}

impl HomeRelay {
    /// Reads `DIR/relays/RELAY/relay.toml` and the certificate next to it.
    pub(crate) fn read(dir: &Path, relay: &str) -> Result<HomeRelay, CertsError> {
        let config_path = relay_dir(dir, relay).join("relay.toml");
        if !config_path.is_file() {
            return Err(CertsError::UnknownRelay {
                relay: relay.to_string(),
                dir: dir.to_path_buf(),
            });
        }
        let config: RelayConfigPeek =
            toml::from_str(&read_text(&config_path)?).map_err(|e| CertsError::BadFile {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        if config.id != relay {
            return Err(CertsError::BadFile {
                path: config_path,
                reason: format!("declares id {:?}, expected {relay:?}", config.id),
            });
        }
        let relay_cert_path = relay_dir(dir, relay).join("relay.crt");
        let relay_chain = identity::certificates_from_pem(read_text(&relay_cert_path)?.as_bytes())
            .map_err(|e| CertsError::BadFile {
                path: relay_cert_path.clone(),
                reason: e.to_string(),
            })?;
        let relay_identity = relay_chain
            .first()
            .ok_or(identity::IdentityError::EmptyChain)
            .and_then(|der| Identity::from_der(der))
            .map_err(|e| CertsError::BadFile {
                path: relay_cert_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(HomeRelay {
            organisation: relay_identity.organisation,
            listen: config.listen,
        })
    }
}

/// The root CA and the CA of `org` from a federation directory.
pub(crate) fn organisation_pki(dir: &Path, org: &str, now: i64) -> Result<Pki, CertsError> {
    let root = load_authority(
        &dir.join("ca"),
        crate::pki::ROOT_ORGANISATION,
        "root.crt",
        "root.key",
    )?;
    let org_ca = load_authority(&org_dir(dir, org), org, "ca.crt", "ca.key")?;
    Ok(Pki::from_authorities(now, root, vec![org_ca]))
}

/// The validity of a user certificate ending at `not_after` (default: one year).
pub(crate) fn user_validity(not_after: Option<i64>, now: i64) -> Validity {
    match not_after {
        Some(not_after) => Validity {
            not_before: (now - HOUR).min(not_after - DAY),
            not_after,
        },
        None => Validity::days_from(now, crate::pki::USER_DAYS),
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(io("cannot read", path))
}

pub(crate) fn load_authority(
    dir: &Path,
    name: &str,
    cert: &str,
    key: &str,
) -> Result<Authority, CertsError> {
    let cert_path = dir.join(cert);
    let key_path = dir.join(key);
    Authority::load(name, &read_text(&cert_path)?, &read_text(&key_path)?).map_err(|e| match e {
        CertsError::KeyMismatch { .. } => CertsError::KeyMismatch { path: key_path },
        CertsError::BadFile { reason, .. } => CertsError::BadFile {
            path: cert_path,
            reason,
        },
        other => other,
    })
}

/// `kring-certs-dev issue-user`: adds a user to an existing federation directory,
/// signed by the CA of the home relay's organisation, with the same profile layout
/// as `init`. The certificate is self-checked before anything is written.
///
/// # Errors
/// [`CertsError::UnknownRelay`], [`CertsError::UserExists`] (without `force`),
/// [`CertsError::BadFile`] / [`CertsError::KeyMismatch`] for a damaged directory,
/// [`CertsError::Identity`] for an invalid user id or role, [`CertsError::Io`].
pub fn issue_user_into(
    dir: &Path,
    request: &IssueUserRequest,
    now: i64,
) -> Result<UserEntry, CertsError> {
    let (name, relay) = identity::parse_user_id(&request.user)?;
    for role in &request.roles {
        identity::validate_role_name(role)?;
    }
    let home = HomeRelay::read(dir, relay)?;
    let org = home.organisation.clone();
    let pki = organisation_pki(dir, &org, now)?;
    let validity = user_validity(request.not_after, now);
    let mut spec = UserSpec::new(name, relay, &org)
        .with_clearance(request.clearance.clone())
        .with_validity(validity);
    spec.roles.clone_from(&request.roles);
    let cert = pki.issue_user(&spec)?;
    self_check(
        &cert,
        &pki.anchors(),
        now,
        IdentityKind::User,
        &request.clearance,
        &request.roles,
    )?;

    let profile_dir = user_dir(dir, &request.user);
    if profile_dir.exists() {
        if !request.force {
            return Err(CertsError::UserExists { dir: profile_dir });
        }
        fs::remove_dir_all(&profile_dir).map_err(io("cannot remove", &profile_dir))?;
    }
    let profile = profile_toml(
        &request.user,
        &home.listen,
        relay,
        &request.clearance.to_string(),
        &request.roles,
    );
    write_user(&profile_dir, &cert, &profile)?;
    Ok(UserEntry {
        id: request.user.clone(),
        organisation: org,
        clearance: request.clearance.to_string(),
        roles: request.roles.clone(),
        profile_dir,
    })
}
