//! Private key files under a passphrase: PKCS#8 `ENCRYPTED PRIVATE KEY` (RFC 5958)
//! with PBES2 (RFC 8018): scrypt (N = 2^14, r = 8, p = 1, OpenSSL's defaults and
//! within its memory limit) and AES-256-CBC. `openssl pkey -in user.key -passin
//! file:passphrase` reads what [`encrypt_pem`] writes, and [`decrypt_pem`] reads
//! keys OpenSSL encrypted (`openssl pkcs8 -topk8 -v2 aes-256-cbc [-scrypt]`).
//!
//! Decryption refuses key-derivation parameters that would take unreasonable memory
//! or time (a hostile key file must not exhaust the device).

use pkcs8::der::Decode as _;
use pkcs8::pkcs5::{self, pbes2};
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use zeroize::Zeroizing;

/// PEM label of an encrypted key.
pub const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// PEM label of a key in the clear.
pub const PLAIN_LABEL: &str = "PRIVATE KEY";
/// log2 of scrypt's N for keys written here.
const SCRYPT_LOG_N: u8 = 14;
/// Largest scrypt N·r accepted when reading (2^20 · 8: 1 GiB).
const MAX_SCRYPT_NR: u64 = (1 << 20) * 8;
/// Largest PBKDF2 iteration count accepted when reading.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// Errors of key files.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    /// The passphrase does not decrypt the key.
    #[error("the passphrase does not unlock the private key")]
    WrongPassphrase,
    /// The file is not a PEM PKCS#8 key, encrypted or not.
    #[error("not a PKCS#8 private key in PEM form ({0})")]
    Malformed(String),
    /// Encrypted in a way this version does not read.
    #[error("encrypted with unsupported or unreasonable parameters ({0})")]
    Unsupported(String),
    /// Encryption failed.
    #[error("cannot encrypt the private key: {0}")]
    Encrypt(String),
}

/// Whether `pem` holds an encrypted key (rather than one in the clear).
pub fn is_encrypted(pem: &str) -> bool {
    pem.contains(&format!("-----BEGIN {ENCRYPTED_LABEL}-----"))
}

/// `der` (PKCS#8) encrypted under `passphrase`, as PEM (`ENCRYPTED PRIVATE KEY`).
pub fn encrypt_pem(der: &[u8], passphrase: &[u8]) -> Result<Zeroizing<String>, KeyFileError> {
    use rand_core::RngCore as _;
    let enc = |e: &dyn std::fmt::Display| KeyFileError::Encrypt(e.to_string());
    let info = PrivateKeyInfo::from_der(der).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut salt)
        .and_then(|()| rand_core::OsRng.try_fill_bytes(&mut iv))
        .map_err(|e| enc(&e))?;
    let scrypt = pkcs5::scrypt::Params::new(SCRYPT_LOG_N, 8, 1, 32).map_err(|e| enc(&e))?;
    let params = pbes2::Parameters::scrypt_aes256cbc(scrypt, &salt, &iv).map_err(|e| enc(&e))?;
    let doc = info
        .encrypt_with_params(params, passphrase)
        .map_err(|e| enc(&e))?;
    let pem = doc
        .to_pem(ENCRYPTED_LABEL, pkcs8::LineEnding::LF)
        .map_err(|e| enc(&e))?;
    Ok(pem)
}

/// The PKCS#8 DER key in `pem`: decrypted with `passphrase` when it is an
/// `ENCRYPTED PRIVATE KEY`, as is when it is a `PRIVATE KEY` (then `passphrase` is
/// not used).
pub fn decrypt_pem(pem: &str, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let malformed = |e: &dyn std::fmt::Display| KeyFileError::Malformed(e.to_string());
    let (label, doc) =
        pkcs8::SecretDocument::from_pem(pem.trim_start()).map_err(|e| malformed(&e))?;
    match label {
        PLAIN_LABEL => {
            PrivateKeyInfo::from_der(doc.as_bytes()).map_err(|e| malformed(&e))?;
            Ok(Zeroizing::new(doc.as_bytes().to_vec()))
        }
        ENCRYPTED_LABEL => {
            let info =
                EncryptedPrivateKeyInfo::from_der(doc.as_bytes()).map_err(|e| malformed(&e))?;
            check_parameters(&info.encryption_algorithm)?;
            let plain = info
                .decrypt(passphrase)
                .map_err(|_| KeyFileError::WrongPassphrase)?;
            // A wrong passphrase usually fails the padding check; when it does not,
            // the result does not parse.
            PrivateKeyInfo::from_der(plain.as_bytes())
                .map_err(|_| KeyFileError::WrongPassphrase)?;
            Ok(Zeroizing::new(plain.as_bytes().to_vec()))
        }
        other => Err(KeyFileError::Malformed(format!(
            "PEM label {other:?}, expected {PLAIN_LABEL:?} or {ENCRYPTED_LABEL:?}"
        ))),
    }
}

fn check_parameters(scheme: &pkcs5::EncryptionScheme<'_>) -> Result<(), KeyFileError> {
    let unsupported = |s: String| KeyFileError::Unsupported(s);
    let pkcs5::EncryptionScheme::Pbes2(params) = scheme else {
        return Err(unsupported("PBES1; re-encrypt the key with PBES2".into()));
    };
    match &params.kdf {
        pbes2::Kdf::Scrypt(s) => {
            let n = s.cost_parameter;
            let nr = n.saturating_mul(u64::from(s.block_size));
            if nr > MAX_SCRYPT_NR || s.parallelization > 16 {
                return Err(unsupported(format!(
                    "scrypt N={n} r={} p={}",
                    s.block_size, s.parallelization
                )));
            }
        }
        pbes2::Kdf::Pbkdf2(p) => {
            if p.iteration_count > MAX_PBKDF2_ITERATIONS {
                return Err(unsupported(format!(
                    "PBKDF2 with {} iterations",
                    p.iteration_count
                )));
            }
        }
        _ => return Err(unsupported("an unknown key derivation".into())),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key_der() -> Vec<u8> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_der()
    }

    #[test]
    fn encrypted_keys_round_trip_and_refuse_the_wrong_passphrase() {
        let der = key_der();
        let pem = encrypt_pem(&der, b"correct horse").unwrap();
        assert!(is_encrypted(&pem));
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
        assert_eq!(*decrypt_pem(&pem, b"correct horse").unwrap(), der);
        assert_eq!(
            decrypt_pem(&pem, b"correct horsf").unwrap_err(),
            KeyFileError::WrongPassphrase
        );
        assert_eq!(
            decrypt_pem(&pem, b"").unwrap_err(),
            KeyFileError::WrongPassphrase
        );
    }

    #[test]
    fn keys_in_the_clear_still_read() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let pem = kp.serialize_pem();
        assert!(!is_encrypted(&pem));
        assert_eq!(*decrypt_pem(&pem, b"ignored").unwrap(), kp.serialize_der());
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(
                matches!(decrypt_pem(bad, b"x"), Err(KeyFileError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
