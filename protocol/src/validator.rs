//! The federation's [`CredentialValidator`]: an MLS credential is valid when its
//! X.509 chain verifies to the federation trust anchors at the given time, the leaf
//! is a Kring user or relay certificate whose organisation (and pinned CA) is the
//! one the [`TrustMap`] gives for the relay it names, it is not revoked, and the
//! MLS signature key is the certificate's key. Relays and clients use this one
//! validator.

use crate::identity::{Identity, TrustMap, verify_chain_trusted};
use crate::mls::{CredentialError, CredentialValidator, MemberId, leaf_key_matches};
use crate::revocation::Revocations;

/// Validates credentials against the federation trust anchors at a fixed time.
#[derive(Debug, Clone)]
pub struct FederationValidator<'a> {
    /// Trust anchors (DER).
    pub anchors: &'a [Vec<u8>],
    /// Which organisation (and CA) may speak for which relay.
    pub trust: &'a TrustMap,
    /// Unix seconds at which certificates must be valid.
    pub now: u64,
    /// Revoked identities and certificates, refused by `validate`.
    pub revoked: &'a Revocations,
}

impl<'a> FederationValidator<'a> {
    /// A validator with no revocations.
    pub fn new(anchors: &'a [Vec<u8>], trust: &'a TrustMap, now: u64) -> Self {
        Self {
            anchors,
            trust,
            now,
            revoked: Revocations::empty(),
        }
    }

    /// A validator that also refuses what `revoked` revokes.
    pub fn with_revocations(
        anchors: &'a [Vec<u8>],
        trust: &'a TrustMap,
        now: u64,
        revoked: &'a Revocations,
    ) -> Self {
        Self {
            anchors,
            trust,
            now,
            revoked,
        }
    }
}

/// A certificate already read, with its member id.
#[derive(Debug)]
struct Known {
    identity: Identity,
    id: String,
}

/// Certificates already read, keyed by their DER bytes. Reading every member's
/// certificate dominated verifying a commit in a large community (1,000 leaves per
/// commit); the result of [`Identity::from_der`] depends only on the bytes, so it is
/// kept. Keyed by the bytes themselves (certificates differ within their first few
/// dozen bytes, the serial number, so a lookup compares little) and shared by
/// `Arc`, so a hit neither hashes nor copies the identity. Bounded: cleared when
/// full.
type Cache = std::collections::BTreeMap<Vec<u8>, std::sync::Arc<Known>>;
static IDENTITIES: std::sync::Mutex<Cache> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
/// Most certificates kept in [`IDENTITIES`].
const MAX_CACHED_IDENTITIES: usize = 16_384;

fn read_identity(leaf: &[u8]) -> Result<std::sync::Arc<Known>, CredentialError> {
    if let Ok(cache) = IDENTITIES.lock()
        && let Some(known) = cache.get(leaf)
    {
        return Ok(known.clone());
    }
    let identity = Identity::from_der(leaf).map_err(CredentialError::Unreadable)?;
    let known = std::sync::Arc::new(Known {
        id: identity.id(),
        identity,
    });
    if let Ok(mut cache) = IDENTITIES.lock() {
        if cache.len() >= MAX_CACHED_IDENTITIES {
            cache.clear();
        }
        cache.insert(leaf.to_vec(), known.clone());
    }
    Ok(known)
}

fn leaf_identity(
    chain: &[Vec<u8>],
    signature_key: &[u8],
) -> Result<std::sync::Arc<Known>, CredentialError> {
    let leaf = chain.first().ok_or(CredentialError::EmptyChain)?;
    let known = read_identity(leaf)?;
    if !leaf_key_matches(signature_key, &known.identity.public_key) {
        return Err(CredentialError::KeyMismatch(known.id.clone()));
    }
    Ok(known)
}

impl CredentialValidator for FederationValidator<'_> {
    fn validate(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        let claimed = leaf_identity(chain, signature_key)?;
        let id = verify_chain_trusted(
            chain,
            self.anchors,
            self.now,
            claimed.identity.kind,
            self.trust,
        )
        .map_err(|reason| CredentialError::Untrusted {
            member: claimed.id.clone(),
            reason,
        })?;
        self.revoked.check_chain(&id, chain)?;
        Ok(id.id())
    }

    fn identify(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        Ok(leaf_identity(chain, signature_key)?.id.clone())
    }
}
