//! The credential validator the client hands to the MLS layer: every member and the
//! hub relay must present an X.509 chain that verifies to the federation trust
//! anchors now, and the MLS signature key must be the leaf certificate's key.

use std::time::{SystemTime, UNIX_EPOCH};

use kring_protocol::identity::{Identity, verify_chain};
use kring_protocol::mls::{CredentialValidator, MemberId, leaf_key_matches};

/// Validates MLS credentials against the federation trust anchors.
///
/// The kind of identity (user or relay) is read from the leaf certificate and then
/// verified strictly for that kind (EKU, SAN and name rules of
/// [`kring_protocol::identity`]): users come out as `NAME@RELAY`, relays (the hub,
/// as external sender) as their relay id. Revocation is checked by the relays, which
/// hold the federation's CRLs; the client has none.
#[derive(Debug, Clone)]
pub struct Validator {
    anchors: Vec<Vec<u8>>,
}

impl Validator {
    /// A validator trusting `anchors` (DER root certificates).
    pub fn new(anchors: Vec<Vec<u8>>) -> Self {
        Self { anchors }
    }

    /// Verifies `chain` at `now_unix` and checks `signature_key` against the leaf.
    pub fn validate_at(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
        now_unix: u64,
    ) -> Result<Identity, String> {
        let leaf = chain
            .first()
            .ok_or("the credential's certificate chain is empty")?;
        let kind = Identity::from_der(leaf).map_err(|e| e.to_string())?.kind;
        let identity =
            verify_chain(chain, &self.anchors, now_unix, kind).map_err(|e| e.to_string())?;
        if !leaf_key_matches(signature_key, &identity.public_key) {
            return Err(format!(
                "the MLS signature key of {} is not its certificate's key",
                identity.id()
            ));
        }
        Ok(identity)
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CredentialValidator for Validator {
    fn validate(&self, chain: &[Vec<u8>], signature_key: &[u8]) -> Result<MemberId, String> {
        self.validate_at(chain, signature_key, now_unix())
            .map(|identity| identity.id())
    }

    fn identify(&self, chain: &[Vec<u8>], signature_key: &[u8]) -> Result<MemberId, String> {
        // Used for members validated when they entered; expiry may have passed since.
        let leaf = chain
            .first()
            .ok_or("the credential's certificate chain is empty")?;
        let identity = Identity::from_der(leaf).map_err(|e| e.to_string())?;
        if !leaf_key_matches(signature_key, &identity.public_key) {
            return Err(format!(
                "the MLS signature key of {} is not its certificate's key",
                identity.id()
            ));
        }
        Ok(identity.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki::Fed;

    fn key_of(leaf: &crate::testpki::Leaf) -> Vec<u8> {
        Identity::from_der(&leaf.chain[0]).unwrap().public_key
    }

    #[test]
    fn users_and_relays_validate_to_their_ids() {
        let fed = Fed::new("post-a");
        let v = Validator::new(vec![fed.root_der.clone()]);
        let user = fed.user("post-a", "analist", "post-a", "NL:STG-CONFIDENTIEEL");
        assert_eq!(
            v.validate(&user.chain, &key_of(&user)).unwrap(),
            "analist@post-a"
        );
        let relay = fed.relay("post-a", "post-a", "NL:STG-CONFIDENTIEEL");
        assert_eq!(v.validate(&relay.chain, &key_of(&relay)).unwrap(), "post-a");
        assert_eq!(
            v.identify(&user.chain, &key_of(&user)).unwrap(),
            "analist@post-a"
        );
    }

    #[test]
    fn a_foreign_key_or_federation_is_refused() {
        let fed = Fed::new("bz");
        let v = Validator::new(vec![fed.root_der.clone()]);
        let user = fed.user("bz", "liaison", "bz", "NL:STG-GEHEIM");
        let other = fed.user("bz", "admin", "bz", "NL:STG-GEHEIM");
        let err = v.validate(&user.chain, &key_of(&other)).unwrap_err();
        assert!(err.contains("not its certificate's key"), "{err}");
        assert!(v.identify(&user.chain, &key_of(&other)).is_err());

        let stranger = Fed::new("bz");
        let foreign = Validator::new(vec![stranger.root_der.clone()]);
        assert!(foreign.validate(&user.chain, &key_of(&user)).is_err());
        // Expired by the time it is checked.
        let later = now_unix() + 400 * 86_400;
        let err = v
            .validate_at(&user.chain, &key_of(&user), later)
            .unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[test]
    fn empty_chains_and_garbage_are_refused_with_reasons() {
        let v = Validator::new(vec![]);
        assert!(v.validate(&[], &[0; 32]).unwrap_err().contains("empty"));
        let err = v.validate(&[vec![1, 2, 3]], &[0; 32]).unwrap_err();
        assert!(err.contains("malformed"), "{err}");
    }
}
