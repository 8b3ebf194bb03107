//! Key packages: creation (client) and verification (relays and clients).

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    KeyPackage, KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, OpenMlsCrypto,
    ProtocolVersion,
};
use openmls::storage::OpenMlsProvider;

use super::context::leaf_capabilities;
use super::credential::{credential_chain, validate_credential};
use super::{
    CIPHERSUITE, CertSigner, CredentialValidator, MAX_KEY_PACKAGE_BYTES, MemberId, MlsError,
};

/// A verified key package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// The identity of the key package's owner.
    pub id: MemberId,
    /// True if it is a last-resort key package (may be used more than once).
    pub last_resort: bool,
    /// The key package reference (hash), a stable id for storage and de-duplication.
    pub hash_ref: Vec<u8>,
    /// The owner's leaf certificate (DER), from which an admin reads the clearance
    /// before adding them.
    pub certificate: Vec<u8>,
}

/// Creates a key package for `signer` (x509 credential, Kring capabilities), stores
/// its private keys in the provider, and returns it as an `MLSMessage`.
///
/// A `last_resort` key package may be used for several joins; publish one so that
/// the user can always be added.
///
/// # Errors
/// [`MlsError::Crypto`] or [`MlsError::Storage`].
pub fn key_package<P: OpenMlsProvider>(
    provider: &P,
    signer: &CertSigner,
    last_resort: bool,
) -> Result<Vec<u8>, MlsError> {
    let mut builder = KeyPackage::builder().leaf_node_capabilities(leaf_capabilities());
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(CIPHERSUITE, provider, signer, signer.credential_with_key()?)
        .map_err(|e| MlsError::Crypto(format!("key package: {e}")))?;
    MlsMessageOut::from(bundle.key_package().clone())
        .to_bytes()
        .map_err(|e| MlsError::Internal(e.to_string()))
}

/// Verifies a key package (`MLSMessage`): signature, ciphersuite, Kring
/// capabilities and the owner's credential. For relays storing published keys and
/// for clients before adding.
///
/// # Errors
/// [`MlsError::TooLarge`], [`MlsError::Malformed`], [`MlsError::Verification`],
/// [`MlsError::Forbidden`] (wrong ciphersuite or capabilities),
/// [`MlsError::InvalidCredential`].
pub fn verify_key_package(
    crypto: &impl OpenMlsCrypto,
    validator: &impl CredentialValidator,
    bytes: &[u8],
) -> Result<KeyPackageInfo, MlsError> {
    let (key_package, id) = parse_key_package(crypto, validator, bytes)?;
    let certificate = credential_chain(key_package.leaf_node().credential())?
        .into_iter()
        .next()
        .ok_or_else(|| MlsError::InvalidCredential("empty certificate chain".into()))?;
    Ok(KeyPackageInfo {
        certificate,
        id,
        last_resort: key_package.last_resort(),
        hash_ref: key_package
            .hash_ref(crypto)
            .map_err(|e| MlsError::Internal(e.to_string()))?
            .as_slice()
            .to_vec(),
    })
}

pub(crate) fn parse_key_package(
    crypto: &impl OpenMlsCrypto,
    validator: &impl CredentialValidator,
    bytes: &[u8],
) -> Result<(KeyPackage, MemberId), MlsError> {
    MlsError::check_len("key package", bytes.len(), MAX_KEY_PACKAGE_BYTES)?;
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::malformed("key package", e))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(MlsError::malformed(
            "key package",
            "not a KeyPackage message",
        ));
    };
    let key_package: KeyPackage =
        KeyPackageIn::validate(key_package, crypto, ProtocolVersion::Mls10)
            .map_err(|e| MlsError::Verification(format!("key package: {e}")))?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(MlsError::Forbidden(format!(
            "key package ciphersuite {:?} is not {CIPHERSUITE:?}",
            key_package.ciphersuite()
        )));
    }
    let leaf = key_package.leaf_node();
    let wanted = leaf_capabilities();
    if !wanted
        .extensions()
        .iter()
        .all(|e| leaf.capabilities().extensions().contains(e))
        || !wanted
            .credentials()
            .iter()
            .all(|c| leaf.capabilities().credentials().contains(c))
    {
        return Err(MlsError::Forbidden(
            "key package lacks the Kring capabilities".into(),
        ));
    }
    let id = validate_credential(
        validator,
        leaf.credential(),
        leaf.signature_key().as_slice(),
    )?;
    Ok((key_package, id))
}
