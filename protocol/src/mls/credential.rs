//! X.509 MLS credentials, the validation hook, and the certificate-key signer.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, VLBytes};
use openmls::prelude::{Credential, CredentialType, CredentialWithKey, SignatureScheme};
use openmls_traits::signatures::{Signer, SignerError};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use x509_parser::oid_registry::OID_SIG_ED25519;

use super::{MAX_CERT_BYTES, MAX_CHAIN_CERTS, MemberId, MlsError};

/// Length of an Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// Builds an MLS `x509` credential from a certificate chain (leaf first, DER).
///
/// The content is encoded as RFC 9420 §5.3 specifies (`Certificate chain<V>`, each
/// `opaque cert_data<V>`). openmls stores the *body* of the outer vector, so the
/// content here is the concatenation of the length-prefixed certificates.
///
/// # Errors
/// [`MlsError::InvalidCredential`] if the chain is empty, longer than
/// [`MAX_CHAIN_CERTS`], or a certificate is empty or larger than [`MAX_CERT_BYTES`].
pub fn x509_credential(chain: &[Vec<u8>]) -> Result<Credential, MlsError> {
    check_chain_shape(chain)?;
    let mut content = Vec::new();
    for cert in chain {
        VLBytes::new(cert.clone())
            .tls_serialize(&mut content)
            .map_err(|e| MlsError::InvalidCredential(format!("cannot encode certificate: {e}")))?;
    }
    Ok(Credential::new(CredentialType::X509, content))
}

/// Returns the certificate chain (leaf first, DER) inside an `x509` credential.
///
/// # Errors
/// [`MlsError::InvalidCredential`] if the credential is not of type `x509`, its
/// encoding is not canonical, or the chain breaks the bounds of [`x509_credential`].
pub fn credential_chain(credential: &Credential) -> Result<Vec<Vec<u8>>, MlsError> {
    if credential.credential_type() != CredentialType::X509 {
        return Err(MlsError::InvalidCredential(format!(
            "credential type {:?} is not x509",
            credential.credential_type()
        )));
    }
    let mut rest = credential.serialized_content();
    MlsError::check_len(
        "credential",
        rest.len(),
        MAX_CHAIN_CERTS * (MAX_CERT_BYTES + 4),
    )
    .map_err(|e| MlsError::InvalidCredential(e.to_string()))?;
    let mut chain = Vec::new();
    while !rest.is_empty() {
        if chain.len() == MAX_CHAIN_CERTS {
            return Err(MlsError::InvalidCredential(format!(
                "certificate chain has more than {MAX_CHAIN_CERTS} certificates"
            )));
        }
        // `Read`-based decoding: tls_codec's slice decoder `debug_assert`s on
        // truncated input.
        let cert = VLBytes::tls_deserialize(&mut rest)
            .map_err(|e| MlsError::InvalidCredential(format!("bad certificate encoding: {e}")))?;
        chain.push(cert.as_slice().to_vec());
    }
    check_chain_shape(&chain)?;
    // Canonical form only: re-encoding must give the same bytes.
    if x509_credential(&chain)?.serialized_content() != credential.serialized_content() {
        return Err(MlsError::InvalidCredential(
            "certificate chain is not canonically encoded".into(),
        ));
    }
    Ok(chain)
}

fn check_chain_shape(chain: &[Vec<u8>]) -> Result<(), MlsError> {
    if chain.is_empty() {
        return Err(MlsError::InvalidCredential(
            "certificate chain is empty".into(),
        ));
    }
    if chain.len() > MAX_CHAIN_CERTS {
        return Err(MlsError::InvalidCredential(format!(
            "certificate chain has {} certificates, at most {MAX_CHAIN_CERTS} allowed",
            chain.len()
        )));
    }
    for cert in chain {
        if cert.is_empty() || cert.len() > MAX_CERT_BYTES {
            return Err(MlsError::InvalidCredential(format!(
                "certificate of {} bytes (must be 1..={MAX_CERT_BYTES})",
                cert.len()
            )));
        }
    }
    Ok(())
}

/// Why a credential is not accepted (by a [`CredentialValidator`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The credential carries no certificate.
    #[error("empty certificate chain")]
    EmptyChain,
    /// The leaf certificate cannot be read as a Kring certificate.
    #[error("unreadable certificate: {0}")]
    Unreadable(crate::identity::IdentityError),
    /// The MLS signature key is not the leaf certificate's key.
    #[error("the MLS signature key of {0} is not its certificate's key")]
    KeyMismatch(MemberId),
    /// The chain does not verify to the federation's anchors and trust map.
    #[error("credential of {member}: {reason}")]
    Untrusted {
        /// Whom the leaf names.
        member: MemberId,
        /// Why it does not verify.
        reason: crate::identity::IdentityError,
    },
    /// The certificate is revoked.
    #[error(transparent)]
    Revoked(#[from] crate::revocation::Revoked),
    /// The credential is valid but not the one this check expects (e.g. a key
    /// package that is not the caller's own certificate's).
    #[error("{0}")]
    NotExpected(&'static str),
}

/// The hook through which every credential this module accepts is checked.
///
/// It is called for the creator and members of a group (on creation, on join from a
/// Welcome, when a relay starts tracking a group), for every member added by a
/// commit, for key packages, for the senders of application messages and commits,
/// and for the hub relay as external sender.
///
/// The real implementation (chain to the federation root, expiry, revocation, EKU,
/// and leaf public key == `signature_key`, see [`leaf_key_matches`]) lives elsewhere.
pub trait CredentialValidator {
    /// Fully validates a credential and returns the identity it proves:
    /// `NAME@RELAY` for users, the relay id (e.g. `bz`) for relays.
    ///
    /// `chain` is leaf first, DER; `signature_key` is the raw Ed25519 MLS signature
    /// key that must equal the leaf certificate's public key.
    ///
    /// # Errors
    /// Why the credential is not accepted.
    fn validate(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError>;

    /// Reads the identity of a credential that was fully validated earlier, without
    /// the time-dependent checks (expiry, revocation) that may now fail.
    ///
    /// Used to name members that are being removed and to list members, so that a
    /// revoked member can still be identified and removed. The default is
    /// [`validate`](Self::validate); implementations should override it to skip
    /// revocation and expiry but still check the leaf key.
    ///
    /// # Errors
    /// Why the credential cannot be identified.
    fn identify(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        self.validate(chain, signature_key)
    }
}

/// Validates an MLS credential + signature key with `validator` (strict).
pub(crate) fn validate_credential(
    validator: &impl CredentialValidator,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<MemberId, MlsError> {
    let chain = credential_chain(credential)?;
    validator
        .validate(&chain, signature_key)
        .map_err(|e| MlsError::InvalidCredential(e.to_string()))
}

/// Identifies an MLS credential + signature key with `validator` (lenient).
pub(crate) fn identify_credential(
    validator: &impl CredentialValidator,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<MemberId, MlsError> {
    let chain = credential_chain(credential)?;
    validator
        .identify(&chain, signature_key)
        .map_err(|e| MlsError::InvalidCredential(e.to_string()))
}

/// True if an MLS signature key equals a certificate's Ed25519 public key (both raw,
/// 32 bytes). Keys are public, so a plain comparison is fine.
pub fn leaf_key_matches(signature_key: &[u8], cert_public_key: &[u8]) -> bool {
    signature_key.len() == ED25519_PUBLIC_KEY_LEN && signature_key == cert_public_key
}

/// Extracts the raw Ed25519 public key from a DER certificate.
///
/// # Errors
/// [`MlsError::InvalidCredential`] if the certificate does not parse, has trailing
/// bytes, or its key is not Ed25519.
pub fn leaf_public_key(cert_der: &[u8]) -> Result<Vec<u8>, MlsError> {
    MlsError::check_len("certificate", cert_der.len(), MAX_CERT_BYTES)
        .map_err(|e| MlsError::InvalidCredential(e.to_string()))?;
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| MlsError::InvalidCredential(format!("certificate does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(MlsError::InvalidCredential(
            "trailing bytes after certificate".into(),
        ));
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return Err(MlsError::InvalidCredential(format!(
            "certificate key algorithm {} is not Ed25519",
            spki.algorithm.algorithm
        )));
    }
    let key = spki.subject_public_key.data.to_vec();
    if key.len() != ED25519_PUBLIC_KEY_LEN {
        return Err(MlsError::InvalidCredential(format!(
            "Ed25519 key of {} bytes",
            key.len()
        )));
    }
    Ok(key)
}

/// An Ed25519 signing key wherever it lives: in memory, or on a smartcard or HSM
/// that signs without ever handing the key out. The key of a [`CertSigner`].
pub trait DeviceSigner: Send + Sync {
    /// The raw 32-byte Ed25519 public key.
    fn public_key(&self) -> &[u8];
    /// An Ed25519 signature of `message`.
    ///
    /// # Errors
    /// A description of why the key could not sign (a token removed, a session closed).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// An Ed25519 key held in memory.
struct MemoryKey(Ed25519KeyPair);

impl DeviceSigner for MemoryKey {
    fn public_key(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        Ok(self.0.sign(message).as_ref().to_vec())
    }
}

/// The MLS signer of a user or relay: its certificate chain and the certificate's
/// Ed25519 private key. The MLS signature key *is* the certificate key.
pub struct CertSigner {
    chain: Vec<Vec<u8>>,
    key: std::sync::Arc<dyn DeviceSigner>,
}

impl std::fmt::Debug for CertSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSigner")
            .field("chain_len", &self.chain.len())
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl CertSigner {
    /// Builds a signer from a certificate chain (leaf first, DER) and the leaf's
    /// PKCS#8 Ed25519 private key (v1 or v2, as written by rcgen/ring/OpenSSL).
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] if the chain is malformed, the key is not a
    /// valid Ed25519 PKCS#8 document, or the key does not belong to the leaf
    /// certificate.
    pub fn from_pkcs8(chain: Vec<Vec<u8>>, pkcs8_der: &[u8]) -> Result<Self, MlsError> {
        MlsError::check_len("private key", pkcs8_der.len(), 1024)
            .map_err(|e| MlsError::InvalidCredential(e.to_string()))?;
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8_der).map_err(|e| {
            MlsError::InvalidCredential(format!("not an Ed25519 PKCS#8 private key: {e}"))
        })?;
        Self::from_device_key(chain, std::sync::Arc::new(MemoryKey(key_pair)))
    }

    /// Builds a signer from a certificate chain (leaf first, DER) and the leaf's
    /// key wherever it lives (see [`DeviceSigner`]).
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] if the chain is malformed or the key does not
    /// belong to the leaf certificate.
    pub fn from_device_key(
        chain: Vec<Vec<u8>>,
        key: std::sync::Arc<dyn DeviceSigner>,
    ) -> Result<Self, MlsError> {
        check_chain_shape(&chain)?;
        let leaf = chain
            .first()
            .ok_or_else(|| MlsError::InvalidCredential("certificate chain is empty".into()))?;
        let cert_key = leaf_public_key(leaf)?;
        if !leaf_key_matches(key.public_key(), &cert_key) {
            return Err(MlsError::InvalidCredential(
                "private key does not belong to the leaf certificate".into(),
            ));
        }
        Ok(Self { chain, key })
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The raw Ed25519 public key (= MLS signature key = certificate key).
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    /// The MLS credential (x509 chain) together with the signature key.
    ///
    /// # Errors
    /// Only if the chain breaks the bounds of [`x509_credential`] (checked at
    /// construction, so in practice never).
    pub fn credential_with_key(&self) -> Result<CredentialWithKey, MlsError> {
        Ok(CredentialWithKey {
            credential: x509_credential(&self.chain)?,
            signature_key: self.public_key().into(),
        })
    }
}

impl Signer for CertSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.key
            .sign(payload)
            .map_err(|_| SignerError::SigningError)
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
