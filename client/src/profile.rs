//! A user's profile: who they are, where their home relay is, and where their key,
//! certificate, trust anchors and local state live.
//!
//! `kring-certs-dev init` writes `profile.toml` into `DIR/users/NAME@RELAY/`:
//!
//! ```toml
//! user = "analist@post-a"
//! relay = "127.0.0.1:47103"
//! relay_id = "post-a"
//! cert = "user.crt"                      # PEM chain: leaf, then organisation CA
//! key = "user.key"                       # PKCS#8 Ed25519 private key, PEM, encrypted
//! trust_anchors = "../../ca/root.crt"    # PEM federation root(s)
//! state_dir = "state"
//! passphrase_file = "passphrase"         # development only: unattended use
//! ```
//!
//! The passphrase unlocks the private key and the local archive ([`crate::unlock`]):
//! read from the file `KRING_PASSPHRASE_FILE` names, else from `passphrase_file`,
//! else asked on the terminal.
//!
//! Relative paths are relative to the profile directory. `kring enroll`
//! ([`crate::enroll`]) writes a template of it next to a new key, for the user to
//! complete (`relay`, and the files `cert` and `trust_anchors` name).
//!
//! [`Profile::certificate`] reads the identity the profile's certificate carries
//! (offline, for `kring whoami`); [`expiry_warning`] says when it is about to end.

use std::path::{Path, PathBuf};

use kring_protocol::identity::{self, Identity, IdentityKind};
use kring_protocol::wire::{check_name, check_qualified_id};
use serde::Deserialize;

use crate::error::{ClientError, Result};

/// File name of the profile inside the profile directory.
pub const PROFILE_FILE: &str = "profile.toml";
/// Largest profile file accepted.
pub const MAX_PROFILE_BYTES: u64 = 64 * 1024;
/// Largest certificate, key or trust-anchor file accepted.
pub const MAX_PEM_BYTES: u64 = 256 * 1024;
/// A certificate ending within this many days is warned about (by every command
/// that uses the profile, and `kring whoami`).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

#[derive(Debug, Deserialize)]
struct RawProfile {
    user: String,
    relay: String,
    relay_id: String,
    cert: PathBuf,
    key: String,
    trust_anchors: PathBuf,
    state_dir: PathBuf,
    #[serde(default)]
    passphrase_file: Option<PathBuf>,
    #[serde(default)]
    pkcs11_module: Option<PathBuf>,
}

/// A loaded and checked profile. Paths are absolute or relative to the current
/// directory (already joined with the profile directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile directory.
    pub dir: PathBuf,
    /// The user's identity, `NAME@RELAY`.
    pub user: String,
    /// The home relay's address (`host:port`).
    pub relay_addr: String,
    /// The home relay's id (the `RELAY` in `NAME@RELAY`).
    pub relay_id: String,
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM PKCS#8 private key (for a `pkcs11:` key, the profile directory joined
    /// with the URI text; use [`Profile::key_uri`] instead).
    pub key: PathBuf,
    /// The `pkcs11:` URI (RFC 7512) of a key on a smartcard or HSM, when `key` is one.
    pub key_uri: Option<String>,
    /// The PKCS#11 library for a `pkcs11:` key whose URI has no `module-path`.
    pub pkcs11_module: Option<PathBuf>,
    /// PEM trust anchors (federation root CAs).
    pub trust_anchors: PathBuf,
    /// Directory of the local state database.
    pub state_dir: PathBuf,
    /// File holding the passphrase (first line), for unattended use.
    pub passphrase_file: Option<PathBuf>,
}

impl Profile {
    /// Loads `DIR/profile.toml` and checks it: the identity is `NAME@RELAY` with
    /// `RELAY == relay_id`, the relay address is `host:port`, and the files it names
    /// exist. The state directory is created on first use, not here.
    pub fn load(dir: impl AsRef<Path>) -> Result<Profile> {
        let dir = dir.as_ref();
        let file = dir.join(PROFILE_FILE);
        let text = read_text(&file, MAX_PROFILE_BYTES).map_err(|e| ClientError::Profile {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(dir, &text)
    }

    /// Parses the text of a profile whose directory is `dir`.
    pub fn parse(dir: &Path, text: &str) -> Result<Profile> {
        let file = dir.join(PROFILE_FILE);
        let bad = |reason: String| ClientError::Profile {
            path: file.display().to_string(),
            reason,
        };
        let raw: RawProfile =
            toml::from_str(text).map_err(|e| bad(format!("not a valid profile: {e}")))?;
        check_qualified_id("user", &raw.user)
            .map_err(|e| bad(format!("user {:?}: {e}", raw.user)))?;
        check_name("relay_id", &raw.relay_id)
            .map_err(|e| bad(format!("relay_id {:?}: {e}", raw.relay_id)))?;
        let home = raw.user.split_once('@').map(|(_, r)| r).unwrap_or_default();
        if home != raw.relay_id {
            return Err(bad(format!(
                "user {} belongs to relay {home}, but relay_id is {}",
                raw.user, raw.relay_id
            )));
        }
        if raw.relay.trim().is_empty() {
            return Err(bad(format!(
                "relay is empty: fill in the address (HOST:PORT) of your home relay {}",
                raw.relay_id
            )));
        }
        check_relay_addr(&raw.relay).map_err(|reason| bad(format!("relay: {reason}")))?;
        let profile = Profile {
            dir: dir.to_path_buf(),
            user: raw.user,
            relay_addr: raw.relay,
            relay_id: raw.relay_id,
            cert: dir.join(raw.cert),
            key: dir.join(&raw.key),
            key_uri: crate::device_key::Pkcs11Uri::is_uri(&raw.key).then(|| raw.key.clone()),
            pkcs11_module: raw.pkcs11_module,
            trust_anchors: dir.join(raw.trust_anchors),
            state_dir: dir.join(raw.state_dir),
            passphrase_file: raw.passphrase_file.map(|p| dir.join(p)),
        };
        for (what, path) in [
            ("cert", &profile.cert),
            ("key", &profile.key),
            ("trust_anchors", &profile.trust_anchors),
        ] {
            if what == "key" && profile.key_uri.is_some() {
                continue;
            }
            if !path.is_file() {
                return Err(bad(format!(
                    "{what} file {} does not exist; fix the path, or put the file there \
                     (after `kring enroll`: the chain your organisation's CA issued as \
                     cert, the federation root CA certificate as trust_anchors)",
                    path.display()
                )));
            }
        }
        Ok(profile)
    }

    /// The user's name without the relay (`analist` for `analist@post-a`).
    pub fn user_name(&self) -> &str {
        self.user.split_once('@').map_or(&self.user, |(n, _)| n)
    }

    /// Reads the certificate chain the profile names (DER, leaf first) and the
    /// identity its leaf certifies, which must be a user certificate for the
    /// profile's user. Only the certificate file is read; nothing is verified here
    /// (see [`identity::verify_chain`]).
    pub fn certificate(&self) -> Result<(Vec<Vec<u8>>, Identity)> {
        let bad = |reason: String| ClientError::Profile {
            path: self.cert.display().to_string(),
            reason,
        };
        let pem = read_bounded(&self.cert, MAX_PEM_BYTES).map_err(|e| bad(e.to_string()))?;
        let chain = identity::certificates_from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad("no certificate in the file".into()))?;
        let me = Identity::from_der(leaf)
            .map_err(|e| bad(format!("not a usable Kring certificate: {e}")))?;
        if me.kind != IdentityKind::User {
            return Err(bad(format!(
                "is a {} certificate, not a user certificate",
                me.kind
            )));
        }
        if me.id() != self.user {
            return Err(bad(format!(
                "the certificate is for {}, but the profile is for {}",
                me.id(),
                self.user
            )));
        }
        Ok((chain, me))
    }
}

/// A UTC time as RFC 3339 (`2030-01-01T00:00:00Z`), or the unix seconds if it
/// cannot be represented.
pub fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Whole days from `now` until `not_after` (negative once it has passed).
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// A warning when `identity`'s certificate has ended or ends within
/// [`EXPIRY_WARNING_DAYS`] days of `now` (unix seconds); `None` otherwise.
pub fn expiry_warning(identity: &Identity, now: i64) -> Option<String> {
    let end = utc(identity.not_after);
    let who = identity.id();
    if identity.not_after <= now {
        return Some(format!(
            "the certificate of {who} expired at {end}; your home relay refuses it: ask \
             your organisation's CA for a new one"
        ));
    }
    let days = days_left(identity.not_after, now);
    (days < EXPIRY_WARNING_DAYS).then(|| {
        let within = match days {
            0 => "within a day".to_string(),
            1 => "in 1 day".to_string(),
            n => format!("in {n} days"),
        };
        format!(
            "the certificate of {who} expires {within} ({end}); ask your organisation's \
             CA for a new one before then"
        )
    })
}

/// What is wrong with a profile's `relay` address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayAddrError {
    /// There is no `:` separating a host and a port; write the address as `HOST:PORT`.
    #[error("{addr:?} is not of the form HOST:PORT")]
    NotHostPort {
        /// The address as written.
        addr: String,
    },
    /// The host part is empty or longer than 253 characters.
    #[error("{addr:?} has no valid host")]
    NoHost {
        /// The address as written.
        addr: String,
    },
    /// The port part is not a number from 1 to 65535.
    #[error("{addr:?} has no valid port (1-65535)")]
    NoPort {
        /// The address as written.
        addr: String,
    },
}

fn check_relay_addr(addr: &str) -> std::result::Result<(), RelayAddrError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| RelayAddrError::NotHostPort { addr: addr.into() })?;
    if host.is_empty() || host.len() > 253 {
        return Err(RelayAddrError::NoHost { addr: addr.into() });
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(RelayAddrError::NoPort { addr: addr.into() }),
    }
}

/// Why a file of the profile (or another small local file) could not be read; the
/// caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened (missing, no permission...).
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    /// Reading the opened file failed.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// The file is larger than the limit for its kind: not the file expected.
    #[error("larger than the limit of {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: u64,
    },
    /// A text file holds bytes that are not UTF-8.
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// Reads a whole file of at most `max` bytes.
pub(crate) fn read_bounded(path: &Path, max: u64) -> std::result::Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadError::Open)?;
    let mut buf = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(ReadError::Read)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(buf)
}

/// Reads a whole UTF-8 text file of at most `max` bytes.
pub(crate) fn read_text(path: &Path, max: u64) -> std::result::Result<String, ReadError> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| ReadError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
user = "analist@post-a"
relay = "127.0.0.1:47103"
relay_id = "post-a"
cert = "user.crt"
key = "user.key"
trust_anchors = "ca/root.crt"
state_dir = "state"
"#;

    fn dir_with_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user.crt"), "x").unwrap();
        std::fs::write(dir.path().join("user.key"), "x").unwrap();
        std::fs::create_dir(dir.path().join("ca")).unwrap();
        std::fs::write(dir.path().join("ca/root.crt"), "x").unwrap();
        dir
    }

    #[test]
    fn loads_a_good_profile_relative_to_its_dir() {
        let dir = dir_with_files();
        std::fs::write(dir.path().join(PROFILE_FILE), GOOD).unwrap();
        let p = Profile::load(dir.path()).unwrap();
        assert_eq!(p.user, "analist@post-a");
        assert_eq!(p.user_name(), "analist");
        assert_eq!(p.relay_id, "post-a");
        assert_eq!(p.relay_addr, "127.0.0.1:47103");
        assert_eq!(p.cert, dir.path().join("user.crt"));
        assert_eq!(p.trust_anchors, dir.path().join("ca/root.crt"));
        assert_eq!(p.state_dir, dir.path().join("state"));
    }

    #[test]
    fn missing_profile_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Profile::load(dir.path()).unwrap_err();
        assert!(matches!(err, ClientError::Profile { .. }));
        assert!(err.to_string().contains("profile.toml"), "{err}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn mismatched_relay_is_refused() {
        let dir = dir_with_files();
        let text = GOOD.replace("relay_id = \"post-a\"", "relay_id = \"bz\"");
        let err = Profile::parse(dir.path(), &text).unwrap_err();
        assert!(err.to_string().contains("belongs to relay post-a"), "{err}");
    }

    #[test]
    fn bad_fields_are_refused_with_reasons() {
        let dir = dir_with_files();
        for (from, to, needle) in [
            ("\"analist@post-a\"", "\"analist\"", "NAME@RELAY"),
            ("\"127.0.0.1:47103\"", "\"127.0.0.1\"", "HOST:PORT"),
            ("\"127.0.0.1:47103\"", "\"127.0.0.1:0\"", "port"),
            ("\"user.key\"", "\"missing.key\"", "does not exist"),
            ("state_dir = \"state\"", "", "state_dir"),
        ] {
            let text = GOOD.replace(from, to);
            let err = Profile::parse(dir.path(), &text).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn an_empty_relay_address_says_what_to_fill_in() {
        let dir = dir_with_files();
        let text = GOOD.replace("\"127.0.0.1:47103\"", "\"\"");
        let err = Profile::parse(dir.path(), &text).unwrap_err();
        assert!(
            err.to_string().contains(
                "relay is empty: fill in the address (HOST:PORT) of your home relay post-a"
            ),
            "{err}"
        );
    }

    fn identity(not_after: i64) -> Identity {
        Identity {
            kind: IdentityKind::User,
            name: "analist".into(),
            home_relay: "post-a".into(),
            organisation: "post-a".into(),
            clearance: None,
            roles: Vec::new(),
            serial: "01".into(),
            not_before: 0,
            not_after,
            public_key: vec![0; 32],
        }
    }

    #[test]
    fn expiry_is_warned_about_within_30_days() {
        const DAY: i64 = 86_400;
        let now = 1_750_000_000;
        let end = now + 30 * DAY;
        assert_eq!(utc(end), "2025-07-15T15:06:40Z");
        assert_eq!(expiry_warning(&identity(end + 1), now), None);
        assert_eq!(expiry_warning(&identity(end), now), None, "30 days left");
        let w = expiry_warning(&identity(end - 1), now).unwrap();
        assert!(
            w.starts_with(
                "the certificate of analist@post-a expires in 29 days (2025-07-15T15:06:39Z)"
            ),
            "{w}"
        );
        let w = expiry_warning(&identity(now + DAY + 5), now).unwrap();
        assert!(w.contains("expires in 1 day ("), "{w}");
        let w = expiry_warning(&identity(now + 5), now).unwrap();
        assert!(w.contains("expires within a day"), "{w}");
        let w = expiry_warning(&identity(now), now).unwrap();
        assert!(w.contains("expired at"), "{w}");
        assert_eq!(days_left(now - 1, now), -1);
        assert_eq!(days_left(now + DAY, now), 1);
    }

    /// The PKCS#8 v1 (RFC 5208, as OpenSSL writes it) and v2 (RFC 5958, with the
    /// public key, as ring writes it) forms of an Ed25519 key.
    fn both_forms(key: &rcgen::KeyPair) -> (Vec<u8>, Vec<u8>) {
        const V1_PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        const V2_PREFIX: [u8; 16] = [
            0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let der = key.serialize_der();
        assert!(der[..16] == V1_PREFIX || der[..16] == V2_PREFIX, "{der:?}");
        let seed = &der[16..48];
        let public = key.public_key_raw();
        assert_eq!(public.len(), 32);
        let v1 = [&V1_PREFIX[..], seed].concat();
        let v2 = [&V2_PREFIX[..], seed, &[0x81, 0x21, 0x00][..], public].concat();
        (v1, v2)
    }

    #[test]
    fn device_keys_in_pkcs8_v1_and_v2_both_load() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let fed = crate::testpki::Fed::new("bz");
        let leaf = fed.user("bz", "analist", "bz", "NL:STG-GEHEIM");
        let (v1, v2) = both_forms(&leaf.key);
        assert_eq!((v1.len(), v2.len()), (48, 83));
        for (form, der) in [("v1", v1), ("v2", v2)] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = fed.profile(tmp.path(), "analist@bz", "bz", &leaf);
            let pem = rcgen::KeyPair::try_from(der.as_slice())
                .unwrap()
                .serialize_pem();
            std::fs::write(dir.join("user.key"), pem).unwrap();
            // Profile, credentials and the MLS signer (Client::open), and TLS.
            let client = crate::Client::open(&dir).unwrap_or_else(|e| panic!("{form}: {e}"));
            let creds = crate::conn::Credentials::load(client.profile()).unwrap();
            assert_eq!(creds.key.pkcs8(), Some(der.as_slice()), "{form}");
            rustls::crypto::ring::default_provider()
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
                .unwrap_or_else(|e| panic!("{form}: {e}"));
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; 100]).unwrap();
        let err = read_bounded(&path, 99).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { max: 99 }), "{err}");
        assert_eq!(err.to_string(), "larger than the limit of 99 bytes");
        assert_eq!(read_bounded(&path, 100).unwrap().len(), 100);
    }
}
