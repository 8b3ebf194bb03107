//! The cryptography of the device archive at rest.
//!
//! * A random 256-bit **data key** seals every value of the local state
//!   ([`DataKey::seal`]): XChaCha20-Poly1305 with a fresh random 192-bit nonce per
//!   value (random nonces of that size do not collide in practice), the value's
//!   database key as associated data (a value moved to another key does not open).
//!   Sealed value: `version (1) | nonce (24) | ciphertext | tag (16)`.
//! * The data key is stored only **wrapped** ([`WrappedKey`]): sealed the same way
//!   under a key derived from the user's passphrase with Argon2id (RFC 9106; salt and
//!   cost parameters stored with it). Changing the passphrase re-wraps the data key;
//!   the archive is not re-encrypted.
//!
//! Nothing here touches files; see [`crate::unlock`].

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Length of keys (data key, wrapping key).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Format version of sealed values.
const SEALED_V1: u8 = 1;
/// Associated data of the wrapped data key.
const WRAP_AAD: &[u8] = b"kring archive data key v1";
/// Argon2id cost for new wrappings: RFC 9106's second recommended option
/// (64 MiB, 3 passes, 1 lane).
pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes for new wrappings.
pub const DEFAULT_ITERATIONS: u32 = 3;
/// Largest Argon2 memory accepted when unwrapping (a hostile file must not exhaust
/// the device): 1 GiB.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

/// Errors of the archive's cryptography.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The passphrase does not unwrap the data key.
    #[error("the passphrase does not unlock the local archive")]
    WrongPassphrase,
    /// A sealed value does not open: altered, moved, or sealed under another key.
    #[error("a stored value fails its integrity check (altered, or not from this archive)")]
    Tampered,
    /// A stored key or value is not in a form this version reads.
    #[error("{0}")]
    Malformed(String),
    /// The system random number generator or the key derivation failed.
    #[error("{0}")]
    Crypto(String),
}

fn random<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| VaultError::Crypto("the system random number generator failed".into()))?;
    Ok(out)
}

fn seal_with(key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, VaultError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| VaultError::Crypto("encryption failed".into()))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    let (version, rest) = sealed
        .split_first()
        .ok_or_else(|| VaultError::Malformed("empty sealed value".into()))?;
    if *version != SEALED_V1 {
        return Err(VaultError::Malformed(format!(
            "sealed value of unknown version {version}"
        )));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(VaultError::Malformed("sealed value too short".into()));
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| VaultError::Tampered)
}

/// The archive's data key. Never printed; zeroed when dropped.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, VaultError> {
        Ok(Self(Zeroizing::new(random()?)))
    }

    /// A key with these bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// `plain` sealed, bound to `aad` (the database key it is stored under).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, VaultError> {
        seal_with(&self.0, aad, plain)
    }

    /// The plaintext of a value [`seal`](Self::seal)ed with this key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        open_with(&self.0, aad, sealed)
    }
}

/// The data key wrapped under a passphrase, as stored (TOML) in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Format version (1).
    pub version: u32,
    /// Always `argon2id`.
    pub kdf: String,
    /// Argon2 memory cost in KiB.
    pub memory_kib: u32,
    /// Argon2 passes.
    pub iterations: u32,
    /// Argon2 lanes.
    pub parallelism: u32,
    /// Argon2 salt (hex, 16 bytes).
    pub salt: String,
    /// The sealed data key (hex; `version | nonce | ciphertext | tag`).
    pub wrapped: String,
}

impl WrappedKey {
    /// `key` wrapped under `passphrase` with a fresh salt and the default cost.
    pub fn wrap(key: &DataKey, passphrase: &[u8]) -> Result<Self, VaultError> {
        Self::wrap_with(key, passphrase, DEFAULT_MEMORY_KIB, DEFAULT_ITERATIONS)
    }

    /// `key` wrapped under `passphrase` with a fresh salt and the given cost.
    pub fn wrap_with(
        key: &DataKey,
        passphrase: &[u8],
        memory_kib: u32,
        iterations: u32,
    ) -> Result<Self, VaultError> {
        let salt: [u8; 16] = random()?;
        let mut w = WrappedKey {
            version: 1,
            kdf: "argon2id".into(),
            memory_kib,
            iterations,
            parallelism: 1,
            salt: hex::encode(salt),
            wrapped: String::new(),
        };
        let kek = w.derive(passphrase)?;
        w.wrapped = hex::encode(seal_with(&kek, WRAP_AAD, key.0.as_slice())?);
        Ok(w)
    }

    /// The data key, if `passphrase` is the one it was wrapped under.
    pub fn unwrap_key(&self, passphrase: &[u8]) -> Result<DataKey, VaultError> {
        let kek = self.derive(passphrase)?;
        let sealed = hex::decode(&self.wrapped)
            .map_err(|_| VaultError::Malformed("wrapped key is not hex".into()))?;
        let plain = Zeroizing::new(open_with(&kek, WRAP_AAD, &sealed).map_err(|e| match e {
            VaultError::Tampered => VaultError::WrongPassphrase,
            other => other,
        })?);
        let bytes: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Malformed("wrapped key has the wrong length".into()))?;
        Ok(DataKey(Zeroizing::new(bytes)))
    }

    fn derive(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
        let malformed = |s: String| VaultError::Malformed(s);
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(malformed(format!(
                "archive key of version {} with {:?}; this kring reads version 1 with argon2id",
                self.version, self.kdf
            )));
        }
        if self.memory_kib > MAX_MEMORY_KIB
            || self.iterations > MAX_ITERATIONS
            || self.parallelism > MAX_PARALLELISM
        {
            return Err(malformed(format!(
                "unreasonable argon2id cost (m={} KiB, t={}, p={})",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        let salt = hex::decode(&self.salt).map_err(|_| malformed("the salt is not hex".into()))?;
        let params = Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| malformed(format!("argon2id parameters: {e}")))?;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, &salt, out.as_mut_slice())
            .map_err(|e| VaultError::Crypto(format!("argon2id: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests are about the construction, not the cost.
    fn wrap(key: &DataKey, pass: &[u8]) -> WrappedKey {
        WrappedKey::wrap_with(key, pass, 64, 1).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_database_key() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"n/1", b"the title").unwrap();
        assert_eq!(key.open(b"n/1", &sealed).unwrap(), b"the title");
        let other = DataKey::generate().unwrap();
        assert_eq!(other.open(b"n/1", &sealed), Err(VaultError::Tampered));
        assert_eq!(key.open(b"n/2", &sealed), Err(VaultError::Tampered));
        assert!(!sealed.windows(9).any(|w| w == b"the title"));
    }

    #[test]
    fn any_altered_byte_is_detected() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"k", b"some content").unwrap();
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(key.open(b"k", &bad), Err(VaultError::Tampered), "byte {i}");
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert!(matches!(
            key.open(b"k", &bad),
            Err(VaultError::Malformed(_))
        ));
        assert!(matches!(
            key.open(b"k", &sealed[..sealed.len() - 1 - NONCE_LEN]),
            Err(VaultError::Malformed(_))
        ));
        assert!(key.open(b"k", &[]).is_err());
    }

    #[test]
    fn nonces_are_fresh_for_every_value() {
        let key = DataKey::generate().unwrap();
        let mut nonces = std::collections::BTreeSet::new();
        let mut sealed = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let s = key.seal(b"k", b"same").unwrap();
            assert!(nonces.insert(s[1..1 + NONCE_LEN].to_vec()));
            assert!(sealed.insert(s));
        }
    }

    #[test]
    fn the_wrapped_key_unwraps_only_with_its_passphrase() {
        let key = DataKey::generate().unwrap();
        let w = wrap(&key, b"pass one");
        let back = w.unwrap_key(b"pass one").unwrap();
        assert_eq!(*back.0, *key.0);
        assert_eq!(
            w.unwrap_key(b"pass two").unwrap_err(),
            VaultError::WrongPassphrase
        );
        // Re-wrapping keeps the key (what `kring passphrase change` does).
        let w2 = wrap(&back, b"pass two");
        assert_ne!(w2.salt, w.salt);
        assert_eq!(*w2.unwrap_key(b"pass two").unwrap().0, *key.0);
        assert!(w2.unwrap_key(b"pass one").is_err());
        // The file form round-trips.
        let text = toml::to_string(&w2).unwrap();
        let parsed: WrappedKey = toml::from_str(&text).unwrap();
        assert_eq!(parsed, w2);
    }

    #[test]
    fn altered_or_hostile_wrappings_are_refused() {
        let key = DataKey::generate().unwrap();
        let w = wrap(&key, b"p");
        let mut salted = w.clone();
        salted.salt = hex::encode([0u8; 16]);
        assert_eq!(
            salted.unwrap_key(b"p").unwrap_err(),
            VaultError::WrongPassphrase
        );
        let mut costly = w.clone();
        costly.memory_kib = u32::MAX;
        assert!(matches!(
            costly.unwrap_key(b"p"),
            Err(VaultError::Malformed(_))
        ));
        let mut other = w.clone();
        other.kdf = "pbkdf2".into();
        assert!(matches!(
            other.unwrap_key(b"p"),
            Err(VaultError::Malformed(_))
        ));
        let mut garbled = w;
        garbled.wrapped = "zz".into();
        assert!(matches!(
            garbled.unwrap_key(b"p"),
            Err(VaultError::Malformed(_))
        ));
    }

    #[test]
    fn the_default_cost_is_rfc_9106s_second_recommendation() {
        let key = DataKey::generate().unwrap();
        let w = WrappedKey::wrap(&key, b"p").unwrap();
        assert_eq!((w.memory_kib, w.iterations, w.parallelism), (65536, 3, 1));
        assert!(w.unwrap_key(b"p").is_ok());
    }
}
