//! The credential validator the client hands to the MLS layer: the federation's
//! one validator ([`FederationValidator`]), with what it needs owned by the
//! device: the trust anchors, the trust map and the revocations its home relay
//! holds ([`Validator::update`], after each connect). Until the home relay has
//! said who may speak for which relay, it accepts nobody.

use std::time::{SystemTime, UNIX_EPOCH};

use kring_protocol::identity::{Identity, IdentityError, RelayTrust, TrustMap};
use kring_protocol::mls::{CredentialError, CredentialValidator, MemberId};
use kring_protocol::revocation::{Revocations, verify_crl};
use kring_protocol::validator::FederationValidator;
use kring_protocol::wire::TrustState;

/// Why the home relay's trust state is unusable ([`Validator::update`]); the
/// device does not trust the relay's statements until it sends a usable one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustStateError {
    /// The relay entries do not form a trust map.
    #[error("the home relay's trust map is unusable: {0}")]
    TrustMap(#[source] IdentityError),
    /// The home relay does not list itself as a relay of the user's organisation.
    #[error(
        "the home relay {relay} does not list itself as a relay of organisation {organisation}"
    )]
    HomeRelayElsewhere {
        /// The home relay.
        relay: String,
        /// The user's organisation.
        organisation: String,
    },
}

/// Validates MLS credentials: chain to the federation anchors now, organisation
/// and CA as the trust map gives them for the relay the certificate names, not
/// revoked, and the MLS signature key is the certificate's key.
#[derive(Debug, Clone)]
pub struct Validator {
    anchors: Vec<Vec<u8>>,
    trust: TrustMap,
    revoked: Revocations,
}

impl Validator {
    /// A validator trusting `anchors` (DER root certificates) and, until
    /// [`update`](Self::update), no relay.
    pub fn new(anchors: Vec<Vec<u8>>) -> Self {
        Self {
            anchors,
            trust: TrustMap::new(),
            revoked: Revocations::new(),
        }
    }

    /// Adopts the home relay's trust state. `me` is this device's own identity: the
    /// state must bind the user's home relay to the user's own organisation (the
    /// relay was authenticated as that relay of that organisation). Each statement
    /// and CRL is verified here; one that does not verify is skipped and reported.
    ///
    /// # Errors
    /// A [`TrustStateError`] when the state itself is unusable (bad relay entries,
    /// or the home relay bound to another organisation); the validator is then
    /// unchanged.
    pub fn update(
        &mut self,
        state: &TrustState,
        me: &Identity,
        now_unix: u64,
    ) -> Result<Vec<String>, TrustStateError> {
        let trust = TrustMap::from_entries(state.relays.iter().map(|r| {
            (
                r.relay.as_str(),
                RelayTrust {
                    organisation: r.organisation.clone(),
                    ca: r.ca,
                },
            )
        }))
        .map_err(TrustStateError::TrustMap)?;
        if trust.organisation_of(&me.home_relay) != Some(me.organisation.as_str()) {
            return Err(TrustStateError::HomeRelayElsewhere {
                relay: me.home_relay.clone(),
                organisation: me.organisation.clone(),
            });
        }
        let mut warnings = Vec::new();
        let mut revoked = Revocations::new();
        for s in &state.statements {
            match s.verify(&self.anchors, &trust, now_unix as i64) {
                Ok(_) => {
                    revoked.add_statement(s);
                }
                Err(e) => warnings.push(format!("revocation of {} ignored: {e}", s.user)),
            }
        }
        for c in &state.crls {
            let checked = verify_crl(&c.crl, &c.issuer, &self.anchors, now_unix as i64)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    trust
                        .check_organisation_ca(&v.organisation, &c.issuer)
                        .map(|()| v)
                        .map_err(|e| e.to_string())
                });
            match checked {
                Ok(v) => {
                    revoked.add_crl(&v);
                }
                Err(e) => warnings.push(format!("a CRL was ignored: {e}")),
            }
        }
        self.trust = trust;
        self.revoked = revoked;
        Ok(warnings)
    }

    /// What adopting `state` would change about relays the trust map in force
    /// already knows: a relay now said to belong to another organisation, or to
    /// have another (or no) pinned CA. One sentence each, for the user to see: the
    /// home relay is trusted for this map, and a compromised one could misstate
    /// its peers. Relays added or dropped are not reported.
    pub fn trust_changes(&self, state: &TrustState) -> Vec<String> {
        let mut out = Vec::new();
        for r in &state.relays {
            let Some(old) = self.trust.get(&r.relay) else {
                continue;
            };
            let pin = |ca: &Option<kring_protocol::identity::CaFingerprint>| {
                ca.map_or_else(|| "no pinned CA".to_string(), |c| format!("CA {c}"))
            };
            if old.organisation != r.organisation || old.ca != r.ca {
                out.push(format!(
                    "the home relay now says relay {} belongs to organisation {} ({}); it said organisation {} ({}) before",
                    r.relay,
                    r.organisation,
                    pin(&r.ca),
                    old.organisation,
                    pin(&old.ca)
                ));
            }
        }
        out
    }

    /// The trust map in force (empty before the first [`update`](Self::update)).
    pub fn trust(&self) -> &TrustMap {
        &self.trust
    }

    /// The revocations in force.
    pub fn revocations(&self) -> &Revocations {
        &self.revoked
    }

    /// The federation validator over this device's state, at `now_unix`.
    pub fn at(&self, now_unix: u64) -> FederationValidator<'_> {
        FederationValidator::with_revocations(&self.anchors, &self.trust, now_unix, &self.revoked)
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CredentialValidator for Validator {
    fn validate(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        self.at(now_unix()).validate(chain, signature_key)
    }

    fn identify(
        &self,
        chain: &[Vec<u8>],
        signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        // Used for members validated when they entered; expiry may have passed since.
        self.at(now_unix()).identify(chain, signature_key)
    }
}

#[cfg(test)]
mod tests {
    use kring_protocol::identity::CaFingerprint;
    use kring_protocol::wire::TrustedRelay;

    use super::*;
    use crate::testpki::Fed;

    fn key_of(leaf: &crate::testpki::Leaf) -> Vec<u8> {
        Identity::from_der(&leaf.chain[0]).unwrap().public_key
    }

    fn entry(relay: &str, organisation: &str, ca: Option<CaFingerprint>) -> TrustedRelay {
        TrustedRelay {
            relay: relay.into(),
            organisation: organisation.into(),
            ca,
        }
    }

    /// A validator for a device of `me`, told that `relays` exist.
    fn device(fed: &Fed, me: &crate::testpki::Leaf, relays: Vec<TrustedRelay>) -> Validator {
        let mut v = Validator::new(vec![fed.root_der.clone()]);
        let state = TrustState {
            relays,
            statements: Vec::new(),
            crls: Vec::new(),
        };
        let me = Identity::from_der(&me.chain[0]).unwrap();
        assert!(v.update(&state, &me, now_unix()).unwrap().is_empty());
        v
    }

    #[test]
    fn a_changed_organisation_or_ca_of_a_known_relay_is_reported() {
        let fed = Fed::new("post-a");
        let user = fed.user("post-a", "analist", "post-a", "NL:STG-CONFIDENTIEEL");
        let state = |relays| TrustState {
            relays,
            statements: Vec::new(),
            crls: Vec::new(),
        };
        let first = vec![entry("post-a", "post-a", None), entry("nctv", "nctv", None)];
        let fresh = Validator::new(vec![fed.root_der.clone()]);
        assert!(
            fresh.trust_changes(&state(first.clone())).is_empty(),
            "nothing known yet"
        );
        let v = device(&fed, &user, first.clone());
        assert!(v.trust_changes(&state(first.clone())).is_empty());
        let mut grown = first.clone();
        grown.push(entry("aivd", "aivd", None));
        assert!(
            v.trust_changes(&state(grown)).is_empty(),
            "a new relay is no change"
        );
        let moved = vec![
            entry("post-a", "post-a", None),
            entry("nctv", "post-a", None),
        ];
        let changes = v.trust_changes(&state(moved));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].contains("relay nctv belongs to organisation post-a"),
            "{changes:?}"
        );
        let pinned = vec![
            entry("post-a", "post-a", None),
            entry("nctv", "nctv", Some(CaFingerprint([7; 32]))),
        ];
        assert_eq!(v.trust_changes(&state(pinned)).len(), 1);
    }

    #[test]
    fn users_and_relays_validate_to_their_ids() {
        let fed = Fed::new("post-a");
        let user = fed.user("post-a", "analist", "post-a", "NL:STG-CONFIDENTIEEL");
        let v = device(&fed, &user, vec![entry("post-a", "post-a", None)]);
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
    fn nobody_is_accepted_before_the_home_relay_said_who_may_speak() {
        let fed = Fed::new("bz");
        let user = fed.user("bz", "liaison", "bz", "NL:STG-GEHEIM");
        let v = Validator::new(vec![fed.root_der.clone()]);
        let err = v.validate(&user.chain, &key_of(&user)).unwrap_err();
        assert!(matches!(err, CredentialError::Untrusted { .. }), "{err:?}");
        assert!(
            err.to_string().contains("not a relay of this federation"),
            "{err}"
        );
    }

    /// One organisation's CA minting a user or relay certificate for another
    /// organisation's relay id: valid chain, wrong organisation.
    #[test]
    fn another_organisations_ca_cannot_speak_for_a_relay() {
        let fed = Fed::new("post-a");
        let me = fed.user("post-a", "analist", "post-a", "NL:STG-CONFIDENTIEEL");
        let v = device(
            &fed,
            &me,
            vec![entry("post-a", "post-a", None), entry("bz", "bz", None)],
        );
        let forged_user = fed.user("post-a", "liaison", "bz", "NL:STG-GEHEIM");
        let err = v
            .validate(&forged_user.chain, &key_of(&forged_user))
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to organisation \"bz\""), "{err}");
        let forged_relay = fed.relay("post-a", "bz", "NL:STG-GEHEIM");
        let err = v
            .validate(&forged_relay.chain, &key_of(&forged_relay))
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to organisation \"bz\""), "{err}");
        // A pinned CA: the right organisation, but not the pinned CA.
        let pinned = device(
            &fed,
            &me,
            vec![
                entry("post-a", "post-a", Some(CaFingerprint([7; 32]))),
                entry("bz", "bz", None),
            ],
        );
        let err = pinned
            .validate(&me.chain, &key_of(&me))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pinned"), "{err}");
    }

    #[test]
    fn a_home_relay_of_another_organisation_is_refused() {
        let fed = Fed::new("post-a");
        let me = fed.user("post-a", "analist", "post-a", "NL:STG-CONFIDENTIEEL");
        let mut v = Validator::new(vec![fed.root_der.clone()]);
        let state = TrustState {
            relays: vec![entry("post-a", "bz", None)],
            statements: Vec::new(),
            crls: Vec::new(),
        };
        let me = Identity::from_der(&me.chain[0]).unwrap();
        let err = v.update(&state, &me, now_unix()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the home relay post-a does not list itself as a relay of organisation post-a"
        );
        assert!(v.trust().is_empty());
    }

    #[test]
    fn a_foreign_key_or_federation_is_refused() {
        let fed = Fed::new("bz");
        let user = fed.user("bz", "liaison", "bz", "NL:STG-GEHEIM");
        let v = device(&fed, &user, vec![entry("bz", "bz", None)]);
        let other = fed.user("bz", "admin", "bz", "NL:STG-GEHEIM");
        let err = v.validate(&user.chain, &key_of(&other)).unwrap_err();
        assert_eq!(err, CredentialError::KeyMismatch("liaison@bz".into()));
        assert!(v.identify(&user.chain, &key_of(&other)).is_err());

        let stranger = Fed::new("bz");
        let foreign = device(&stranger, &user, vec![entry("bz", "bz", None)]);
        assert!(foreign.validate(&user.chain, &key_of(&user)).is_err());
        // Expired by the time it is checked.
        let later = now_unix() + 400 * 86_400;
        let err = v
            .at(later)
            .validate(&user.chain, &key_of(&user))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired"), "{err}");
    }

    /// The device applies the revocations its home relay holds, after verifying
    /// each: a revoked member's credential is refused; a statement by another
    /// organisation's admin is ignored with a warning.
    #[test]
    fn revocations_from_the_home_relay_are_verified_and_enforced() {
        use kring_protocol::revocation::RevocationStatement;
        use openmls_traits::signatures::Signer as _;
        let fed = Fed::new("bz");
        let me = fed.user("bz", "liaison", "bz", "NL:STG-GEHEIM");
        let lost = fed.user("bz", "attache", "bz", "NL:STG-GEHEIM");
        let admin = fed.admin("bz", "admin", "bz");
        let signer = kring_protocol::mls::CertSigner::from_pkcs8(
            admin.chain.clone(),
            &admin.key.serialize_der(),
        )
        .unwrap();
        let sign = |user: &str| {
            RevocationStatement::sign(
                admin.chain.clone(),
                |bytes| signer.sign(bytes).unwrap(),
                user,
                "laptop lost",
                now_unix() as i64 - 10,
            )
            .unwrap()
        };
        let state = TrustState {
            relays: vec![entry("bz", "bz", None), entry("nctv", "nctv", None)],
            statements: vec![sign("attache@bz"), sign("liaison@nctv")],
            crls: Vec::new(),
        };
        let mut v = Validator::new(vec![fed.root_der.clone()]);
        let warnings = v
            .update(
                &state,
                &Identity::from_der(&me.chain[0]).unwrap(),
                now_unix(),
            )
            .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("liaison@nctv"), "{warnings:?}");
        let err = v.validate(&lost.chain, &key_of(&lost)).unwrap_err();
        assert_eq!(
            err,
            CredentialError::Revoked(kring_protocol::revocation::Revoked::ByStatement {
                user: "attache@bz".into(),
                reason: "laptop lost".into()
            })
        );
        v.validate(&me.chain, &key_of(&me)).unwrap();
    }

    #[test]
    fn empty_chains_and_garbage_are_refused_with_reasons() {
        let v = Validator::new(vec![]);
        assert_eq!(
            v.validate(&[], &[0; 32]).unwrap_err(),
            CredentialError::EmptyChain
        );
        let err = v.validate(&[vec![1, 2, 3]], &[0; 32]).unwrap_err();
        assert!(matches!(err, CredentialError::Unreadable(_)), "{err:?}");
        assert!(err.to_string().contains("malformed"), "{err}");
    }
}
