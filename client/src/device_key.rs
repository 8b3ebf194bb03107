//! The device's private key, wherever it lives: in memory (decrypted from the
//! profile's PKCS#8 file) or on a smartcard or HSM reached through PKCS#11
//! (`key = "pkcs11:..."`, an RFC 7512 URI, in `profile.toml`).
//!
//! [`DeviceKey`] is the one signing path of the client: the TLS client signature
//! ([`DeviceKey::tls_resolver`]) and every MLS signature
//! ([`kring_protocol::mls::DeviceSigner`], through `CertSigner`) go through it. A
//! token key never leaves the token: the token signs.
//!
//! URI attributes read: path `token=` (token label), `object=` (key label), `id=`
//! (key id, percent-encoded bytes); query `pin-source=` (`file:PATH` or `PATH`,
//! relative to the profile directory), `pin-value=`, `module-path=` (the PKCS#11
//! library; otherwise the profile's `pkcs11_module`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// Largest PIN file accepted.
const MAX_PIN_BYTES: u64 = 1024;
/// Longest `pkcs11:` URI accepted.
pub const MAX_URI_LEN: usize = 4096;

/// A parsed `pkcs11:` URI (RFC 7512), the attributes Kring uses.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `object=`: the private key's label.
    pub object: Option<String>,
    /// `id=`: the private key's id.
    pub id: Option<Vec<u8>>,
    /// `pin-source=`: a file holding the PIN (first line).
    pub pin_source: Option<String>,
    /// `pin-value=`: the PIN itself.
    pub pin_value: Option<String>,
    /// `module-path=`: the PKCS#11 library.
    pub module_path: Option<PathBuf>,
}

impl std::fmt::Debug for Pkcs11Uri {
    // Never print a PIN.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Uri")
            .field("token", &self.token)
            .field("object", &self.object)
            .field("id", &self.id)
            .field("pin_source", &self.pin_source)
            .field("module_path", &self.module_path)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a `pkcs11:` URI (RFC 7512); fix the profile's `key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs11UriError {
    /// The URI is longer than [`MAX_URI_LEN`].
    #[error("longer than {max} bytes", max = MAX_URI_LEN)]
    TooLong,
    /// It is not a `pkcs11:` URI at all.
    #[error("does not start with pkcs11:")]
    NotPkcs11,
    /// A path attribute is not `NAME=VALUE`.
    #[error("attribute {attr:?} has no value")]
    AttributeWithoutValue {
        /// The attribute as written.
        attr: String,
    },
    /// A query attribute is not `NAME=VALUE`.
    #[error("query attribute {attr:?} has no value")]
    QueryAttributeWithoutValue {
        /// The attribute as written.
        attr: String,
    },
    /// A `%` is not followed by two hexadecimal digits.
    #[error("bad percent-encoding in {value:?}")]
    BadPercentEncoding {
        /// The attribute value as written.
        value: String,
    },
    /// A text attribute does not decode to UTF-8.
    #[error("{value:?} is not UTF-8")]
    NotUtf8 {
        /// The attribute value as written.
        value: String,
    },
    /// Neither `object=` nor `id=` says which key to use.
    #[error("names no key: give object= (the key's label) or id=")]
    NoKey,
}

fn percent_decode(s: &str) -> std::result::Result<Vec<u8>, Pkcs11UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Pkcs11UriError::BadPercentEncoding { value: s.into() })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn decode_text(s: &str) -> std::result::Result<String, Pkcs11UriError> {
    String::from_utf8(percent_decode(s)?).map_err(|_| Pkcs11UriError::NotUtf8 { value: s.into() })
}

impl Pkcs11Uri {
    /// Whether a profile's `key` value names a token key.
    pub fn is_uri(key: &str) -> bool {
        key.starts_with("pkcs11:")
    }

    /// Parses a `pkcs11:` URI.
    ///
    /// # Errors
    /// A [`Pkcs11UriError`] saying what is wrong with it.
    pub fn parse(uri: &str) -> std::result::Result<Pkcs11Uri, Pkcs11UriError> {
        if uri.len() > MAX_URI_LEN {
            return Err(Pkcs11UriError::TooLong);
        }
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or(Pkcs11UriError::NotPkcs11)?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut out = Pkcs11Uri {
            token: None,
            object: None,
            id: None,
            pin_source: None,
            pin_value: None,
            module_path: None,
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| Pkcs11UriError::AttributeWithoutValue { attr: attr.into() })?;
            match k {
                "token" => out.token = Some(decode_text(v)?),
                "object" => out.object = Some(decode_text(v)?),
                "id" => out.id = Some(percent_decode(v)?),
                // Other path attributes (manufacturer, serial, type...) narrow the
                // match further in other tools; a private key is implied here.
                _ => {}
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| Pkcs11UriError::QueryAttributeWithoutValue { attr: attr.into() })?;
            match k {
                "pin-source" => out.pin_source = Some(decode_text(v)?),
                "pin-value" => out.pin_value = Some(decode_text(v)?),
                "module-path" => out.module_path = Some(PathBuf::from(decode_text(v)?)),
                _ => {}
            }
        }
        if out.object.is_none() && out.id.is_none() {
            return Err(Pkcs11UriError::NoKey);
        }
        Ok(out)
    }
}

/// Token keys opened by this process, by URI and profile directory: a token is
/// logged in to once per process, and its library stays initialised (finalising
/// it would close every other session on it).
type TokenKeys = Mutex<BTreeMap<(String, PathBuf), Arc<DeviceKey>>>;
static TOKEN_KEYS: TokenKeys = Mutex::new(BTreeMap::new());

/// The token key of a profile whose `key` is the `pkcs11:` URI `uri`, opened once
/// per process (see [`DeviceKey::open_pkcs11`]).
///
/// # Errors
/// As [`DeviceKey::open_pkcs11`].
pub fn token_key(
    uri: &str,
    profile: &crate::profile::Profile,
    cert_public_key: &[u8],
) -> Result<Arc<DeviceKey>> {
    let id = (uri.to_string(), profile.dir.clone());
    if let Some(key) = TOKEN_KEYS.lock().ok().and_then(|k| k.get(&id).cloned()) {
        return Ok(key);
    }
    let key = Arc::new(DeviceKey::open_pkcs11(
        uri,
        &profile.dir,
        profile.pkcs11_module.as_deref(),
        cert_public_key,
    )?);
    if let Ok(mut keys) = TOKEN_KEYS.lock() {
        keys.insert(id, key.clone());
    }
    Ok(key)
}

/// PKCS#11 libraries loaded and initialised by this process. Kept for the life of
/// the process: dropping the last handle of a library finalises it, which would
/// close every session on it.
static CONTEXTS: Mutex<BTreeMap<PathBuf, Pkcs11>> = Mutex::new(BTreeMap::new());

fn context(module: &Path) -> Result<Pkcs11> {
    let mut contexts = CONTEXTS
        .lock()
        .map_err(|_| key_err("key", "PKCS#11 library table poisoned"))?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        key_err(
            &module.display().to_string(),
            format!("cannot load the PKCS#11 library: {e}"),
        )
    })?;
    match ctx.initialize(CInitializeArgs::OsThreads) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(key_err(
                &module.display().to_string(),
                format!("cannot initialise the PKCS#11 library: {e}"),
            ));
        }
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// A private key on a PKCS#11 token, with a logged-in session.
pub struct Pkcs11Key {
    // Kept so the library stays loaded and initialised while the session lives.
    _ctx: Pkcs11,
    session: Mutex<Session>,
    handle: ObjectHandle,
    public: Vec<u8>,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key").finish_non_exhaustive()
    }
}

/// The device's private key (see the module documentation).
pub enum DeviceKey {
    /// Decrypted from the profile's PKCS#8 file, held in memory.
    Memory {
        /// The PKCS#8 document.
        pkcs8: Zeroizing<Vec<u8>>,
        /// The parsed key pair.
        pair: Ed25519KeyPair,
    },
    /// On a smartcard or HSM.
    Pkcs11(Pkcs11Key),
}

impl std::fmt::Debug for DeviceKey {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKey::Memory { .. } => f.write_str("DeviceKey::Memory"),
            DeviceKey::Pkcs11(_) => f.write_str("DeviceKey::Pkcs11"),
        }
    }
}

fn key_err(what: &str, reason: impl Into<String>) -> ClientError {
    ClientError::Profile {
        path: what.to_string(),
        reason: reason.into(),
    }
}

impl DeviceKey {
    /// An in-memory key from a PKCS#8 Ed25519 document.
    ///
    /// # Errors
    /// [`ClientError::Profile`] if it is not one.
    pub fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>, path: &Path) -> Result<DeviceKey> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| {
            key_err(
                &path.display().to_string(),
                format!("not an Ed25519 PKCS#8 private key: {e}"),
            )
        })?;
        Ok(DeviceKey::Memory { pkcs8, pair })
    }

    /// Opens the token key a `pkcs11:` URI names, logs in with its PIN and checks
    /// that it signs for `cert_public_key` (the leaf certificate's raw Ed25519 key).
    /// Relative `pin-source` paths are read from `dir`; `module` is the library
    /// used when the URI has no `module-path`.
    ///
    /// # Errors
    /// [`ClientError::Auth`] (exit 4) for a wrong or missing PIN, a missing token or
    /// key, or a key that is not the certificate's; [`ClientError::Profile`] for a
    /// malformed URI or a library that cannot be loaded.
    pub fn open_pkcs11(
        uri_text: &str,
        dir: &Path,
        module: Option<&Path>,
        cert_public_key: &[u8],
    ) -> Result<DeviceKey> {
        let uri = Pkcs11Uri::parse(uri_text)
            .map_err(|e| key_err("key", format!("invalid pkcs11: URI: {e}")))?;
        let module = uri
            .module_path
            .as_deref()
            .or(module)
            .ok_or_else(|| {
                key_err(
                    "key",
                    "a pkcs11: key needs the PKCS#11 library: set module-path= in the URI \
                     or pkcs11_module in profile.toml",
                )
            })?
            .to_path_buf();
        let pin = match (&uri.pin_value, &uri.pin_source) {
            (Some(v), _) => Zeroizing::new(v.clone()),
            (None, Some(src)) => {
                let path = dir.join(src.strip_prefix("file:").unwrap_or(src));
                let raw = Zeroizing::new(
                    crate::profile::read_bounded(&path, MAX_PIN_BYTES)
                        .map_err(|r| key_err(&path.display().to_string(), r.to_string()))?,
                );
                let text = std::str::from_utf8(&raw).map_err(|_| {
                    key_err(&path.display().to_string(), "PIN file is not UTF-8 text")
                })?;
                Zeroizing::new(text.lines().next().unwrap_or_default().to_string())
            }
            (None, None) => {
                return Err(ClientError::Auth(
                    "the pkcs11: key URI gives no PIN: add pin-source=FILE or pin-value=PIN".into(),
                ));
            }
        };
        let ctx = context(&module)?;
        let auth = |reason: String| ClientError::Auth(reason);
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| auth(format!("cannot list PKCS#11 tokens: {e}")))?;
        let want = uri.token.as_deref();
        let slot = slots
            .into_iter()
            .find(|s| match want {
                None => true,
                Some(label) => ctx
                    .get_token_info(*s)
                    .map(|i| i.label().trim_end() == label)
                    .unwrap_or(false),
            })
            .ok_or_else(|| {
                auth(format!(
                    "PKCS#11 token {} is not present; insert it (SoftHSM2: set SOFTHSM2_CONF \
                     to the configuration of its token directory); nothing was changed",
                    want.unwrap_or("(any)")
                ))
            })?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| auth(format!("cannot open a session on the token: {e}")))?;
        let pin = AuthPin::new(pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
                return Err(auth(
                    "wrong PIN: the token refused the PIN of the pkcs11: key; nothing was \
                     changed"
                        .into(),
                ));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(auth("the token's PIN is locked".into()));
            }
            Err(e) => return Err(auth(format!("cannot log in to the token: {e}"))),
        }
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(label) = &uri.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = session
            .find_objects(&template)
            .map_err(|e| auth(format!("cannot search the token: {e}")))?;
        let handle = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(auth(
                    "the token holds no private key matching the pkcs11: URI".into(),
                ));
            }
            _ => {
                return Err(auth(
                    "several private keys on the token match the pkcs11: URI; add id= or \
                     object="
                        .into(),
                ));
            }
        };
        let key = Pkcs11Key {
            _ctx: ctx,
            session: Mutex::new(session),
            handle,
            public: cert_public_key.to_vec(),
        };
        // The token signs a probe that the certificate's key must verify: a token
        // key that is not the certificate's is refused here, not at the relay.
        let probe = b"kring device key probe";
        let sig = key
            .sign(probe)
            .map_err(|e| auth(format!("the token cannot sign with the key: {e}")))?;
        UnparsedPublicKey::new(&ED25519, cert_public_key)
            .verify(probe, &sig)
            .map_err(|_| {
                auth("the token's key does not belong to the profile's certificate".into())
            })?;
        Ok(DeviceKey::Pkcs11(key))
    }

    /// The PKCS#8 document of an in-memory key (none for a token key).
    pub fn pkcs8(&self) -> Option<&[u8]> {
        match self {
            DeviceKey::Memory { pkcs8, .. } => Some(pkcs8),
            DeviceKey::Pkcs11(_) => None,
        }
    }

    /// A TLS client certificate resolver presenting `chain` and signing with this key.
    pub fn tls_resolver(
        self: &Arc<Self>,
        chain: Vec<CertificateDer<'static>>,
    ) -> Arc<dyn rustls::client::ResolvesClientCert> {
        let signing: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsKey(self.clone()));
        Arc::new(Resolver(Arc::new(CertifiedKey::new(chain, signing))))
    }
}

/// Why a token did not sign.
#[derive(Debug, thiserror::Error)]
pub enum TokenSignError {
    /// A thread panicked while using the token's session; restart kring.
    #[error("token session poisoned")]
    SessionPoisoned,
    /// The token (or its PKCS#11 library) refused or failed.
    #[error("{0}")]
    Token(#[from] CkError),
}

impl Pkcs11Key {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, TokenSignError> {
        let session = self
            .session
            .lock()
            .map_err(|_| TokenSignError::SessionPoisoned)?;
        Ok(session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            self.handle,
            message,
        )?)
    }
}

impl kring_protocol::mls::DeviceSigner for DeviceKey {
    fn public_key(&self) -> &[u8] {
        match self {
            DeviceKey::Memory { pair, .. } => pair.public_key().as_ref(),
            DeviceKey::Pkcs11(k) => &k.public,
        }
    }

    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, String> {
        match self {
            DeviceKey::Memory { pair, .. } => Ok(pair.sign(message).as_ref().to_vec()),
            // The trait (kring_protocol) carries the reason as text.
            DeviceKey::Pkcs11(k) => k.sign(message).map_err(|e| e.to_string()),
        }
    }
}

/// The device key as a rustls signing key (Ed25519 only).
#[derive(Debug)]
struct TlsKey(Arc<DeviceKey>);

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(TlsSigner(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct TlsSigner(Arc<DeviceKey>);

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        kring_protocol::mls::DeviceSigner::sign(self.0.as_ref(), message)
            .map_err(|e| rustls::Error::General(format!("device key: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SignatureScheme::ED25519)
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::sign::SigningKey;

    #[test]
    fn uri_attributes_are_read_and_decoded() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=kring%20demo;object=analist;id=%01%02;type=private\
             ?pin-source=file:user.pin&module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("kring demo"));
        assert_eq!(u.object.as_deref(), Some("analist"));
        assert_eq!(u.id, Some(vec![1, 2]));
        assert_eq!(u.pin_source.as_deref(), Some("file:user.pin"));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        let v = Pkcs11Uri::parse("pkcs11:object=k?pin-value=1234").unwrap();
        assert_eq!(v.pin_value.as_deref(), Some("1234"));
        assert!(!format!("{v:?}").contains("1234"), "Debug prints no PIN");
    }

    #[test]
    fn malformed_uris_are_refused() {
        for (bad, says) in [
            ("file:user.key", "does not start with pkcs11:"),
            (
                "pkcs11:token=t",
                "names no key: give object= (the key's label) or id=",
            ),
            ("pkcs11:object=%zz", "bad percent-encoding in \"%zz\""),
            ("pkcs11:object=%ff", "\"%ff\" is not UTF-8"),
            ("pkcs11:object", "attribute \"object\" has no value"),
            (
                "pkcs11:object=k?pin-value",
                "query attribute \"pin-value\" has no value",
            ),
        ] {
            let err = Pkcs11Uri::parse(bad).unwrap_err();
            assert_eq!(err.to_string(), says, "{bad}");
        }
        assert_eq!(
            Pkcs11Uri::parse(&format!("pkcs11:object={}", "a".repeat(5000))),
            Err(Pkcs11UriError::TooLong)
        );
        assert_eq!(
            Pkcs11UriError::TooLong.to_string(),
            format!("longer than {MAX_URI_LEN} bytes")
        );
    }

    #[test]
    fn memory_keys_sign_for_tls_and_mls_alike() {
        use kring_protocol::mls::DeviceSigner;
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Arc::new(
            DeviceKey::from_pkcs8(Zeroizing::new(doc.as_ref().to_vec()), Path::new("k")).unwrap(),
        );
        let public = key.public_key().to_vec();
        let mls = key.sign(b"m").unwrap();
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"m", &mls)
            .unwrap();
        let tls = TlsKey(key.clone())
            .choose_scheme(&[SignatureScheme::ED25519])
            .unwrap()
            .sign(b"t")
            .unwrap();
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"t", &tls)
            .unwrap();
        assert!(
            TlsKey(key)
                .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
                .is_none()
        );
    }

    #[test]
    fn a_token_key_without_pin_or_library_is_refused_before_loading_anything() {
        let dir = Path::new("/nonexistent");
        let err = DeviceKey::open_pkcs11("pkcs11:object=k", dir, None, &[0; 32]).unwrap_err();
        assert!(err.to_string().contains("PKCS#11 library"), "{err}");
        let err = DeviceKey::open_pkcs11(
            "pkcs11:object=k?module-path=/nonexistent/lib.so",
            dir,
            None,
            &[0; 32],
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains("no PIN"), "{err}");
    }
}
