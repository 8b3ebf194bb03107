//! Who may speak for which relay: the organisation (and optionally the CA) that each
//! relay id belongs to.
//!
//! A chain that verifies to the federation root proves only that *some* organisation
//! CA of the federation issued it. Without more, the CA of one organisation could
//! mint `kring:relay:bz` or `kring:user:liaison@bz` and be taken for relay `bz` or its
//! users. A [`TrustMap`] binds every relay id to the organisation configured for it
//! (each relay's own id to its own organisation, each `[[peers]]` entry to the
//! `organisation` it names) and, where pinned, to the SHA-256 fingerprint of that
//! organisation's CA certificate. [`TrustMap::check`] then accepts:
//!
//! * a relay certificate for `X` only if its O is `X`'s organisation and, where
//!   pinned, it was issued by the pinned CA;
//! * a user certificate `NAME@X` only under the same two conditions for `X`;
//! * nothing that names a relay the map does not know.
//!
//! Pure: callers pass certificates in; nothing here reads files or clocks.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    Identity, IdentityError, IdentityKind, TrustRefusal, validate_organisation, validate_relay_id,
};

/// Most relays a [`TrustMap`] holds (a federation is tens of relays).
pub const MAX_TRUSTED_RELAYS: usize = 1024;

/// The SHA-256 fingerprint of a CA certificate (DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CaFingerprint(pub [u8; 32]);

impl CaFingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Reads 64 hex digits, upper- or lower-case, optionally separated by `:` (as
    /// `openssl x509 -fingerprint -sha256` prints them).
    ///
    /// # Errors
    /// [`IdentityError::BadFingerprint`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let bad = |reason: &str| IdentityError::BadFingerprint {
            value: text.chars().take(100).collect(),
            reason: reason.to_string(),
        };
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(bad("a SHA-256 fingerprint is 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| bad("not a hex digit"))?;
            let lo = hex_value(pair[1]).ok_or_else(|| bad("not a hex digit"))?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for CaFingerprint {
    /// Lower-case hex, no separators.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFingerprint({self})")
    }
}

/// What may speak for one relay id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTrust {
    /// The relay's organisation: the O its certificate and its users' must carry.
    pub organisation: String,
    /// If pinned, the fingerprint of the only CA that may issue its certificates.
    pub ca: Option<CaFingerprint>,
}

/// Relay id → [`RelayTrust`]: which organisation (and, where pinned, which CA) may
/// speak for each relay of the federation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustMap {
    relays: BTreeMap<String, RelayTrust>,
}

impl TrustMap {
    /// An empty map: it accepts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `relay`. Adding the same relay twice is refused, also with the same
    /// values: a configuration that lists a relay twice is a mistake.
    ///
    /// # Errors
    /// [`IdentityError::BadName`] for an invalid relay or organisation id,
    /// [`IdentityError::TooMany`] past [`MAX_TRUSTED_RELAYS`],
    /// [`IdentityError::DuplicateRelay`].
    pub fn insert(&mut self, relay: &str, trust: RelayTrust) -> Result<(), IdentityError> {
        validate_relay_id(relay)?;
        validate_organisation(&trust.organisation)?;
        if self.relays.contains_key(relay) {
            return Err(IdentityError::DuplicateRelay {
                relay: relay.to_string(),
            });
        }
        if self.relays.len() >= MAX_TRUSTED_RELAYS {
            return Err(IdentityError::TooMany {
                what: "relays in the trust map",
                len: self.relays.len() + 1,
                max: MAX_TRUSTED_RELAYS,
            });
        }
        self.relays.insert(relay.to_string(), trust);
        Ok(())
    }

    /// Builds a map from entries, as [`insert`](Self::insert) one by one.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, RelayTrust)>,
    ) -> Result<Self, IdentityError> {
        let mut map = Self::new();
        for (relay, trust) in entries {
            map.insert(relay, trust)?;
        }
        Ok(map)
    }

    /// What may speak for `relay`, if it is known.
    pub fn get(&self, relay: &str) -> Option<&RelayTrust> {
        self.relays.get(relay)
    }

    /// The organisation of `relay`, if it is known.
    pub fn organisation_of(&self, relay: &str) -> Option<&str> {
        self.relays.get(relay).map(|t| t.organisation.as_str())
    }

    /// Every relay, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RelayTrust)> {
        self.relays.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of relays.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Whether the CA certificate `ca_der` may speak for organisation
    /// `organisation` (e.g. sign its CRL): yes unless a relay of that organisation
    /// is pinned to other CAs only.
    ///
    /// # Errors
    /// [`IdentityError::CaNotPinned`] naming the organisation.
    pub fn check_organisation_ca(
        &self,
        organisation: &str,
        ca_der: &[u8],
    ) -> Result<(), IdentityError> {
        let found = CaFingerprint::of(ca_der);
        let mut pins = self
            .relays
            .iter()
            .filter(|(_, t)| t.organisation == organisation)
            .filter_map(|(relay, t)| t.ca.map(|ca| (relay, ca)))
            .peekable();
        let Some((relay, pinned)) = pins.peek().map(|(r, p)| ((*r).clone(), *p)) else {
            return Ok(());
        };
        if pins.any(|(_, ca)| ca == found) {
            return Ok(());
        }
        Err(IdentityError::CaNotPinned(Box::new(TrustRefusal {
            identity: format!("a CA of organisation {organisation}"),
            relay,
            found: found.to_string(),
            expected: pinned.to_string(),
        })))
    }

    /// Whether the certificate `identity`, issued by the CA certificate
    /// `issuer_der` (the one its chain verified through), may speak for the relay
    /// it names: the relay itself (relay certificates) or its home relay (users).
    ///
    /// # Errors
    /// [`IdentityError::UnknownRelay`], [`IdentityError::WrongOrganisation`] or
    /// [`IdentityError::CaNotPinned`].
    pub fn check(&self, identity: &Identity, issuer_der: &[u8]) -> Result<(), IdentityError> {
        let relay = match identity.kind {
            IdentityKind::Relay => &identity.name,
            IdentityKind::User => &identity.home_relay,
        };
        let trust = self
            .relays
            .get(relay)
            .ok_or_else(|| IdentityError::UnknownRelay {
                identity: identity.id(),
                relay: relay.clone(),
            })?;
        if identity.organisation != trust.organisation {
            return Err(IdentityError::WrongOrganisation(Box::new(TrustRefusal {
                identity: identity.id(),
                relay: relay.clone(),
                found: identity.organisation.clone(),
                expected: trust.organisation.clone(),
            })));
        }
        if let Some(pinned) = trust.ca {
            let found = CaFingerprint::of(issuer_der);
            if found != pinned {
                return Err(IdentityError::CaNotPinned(Box::new(TrustRefusal {
                    identity: identity.id(),
                    relay: relay.clone(),
                    found: found.to_string(),
                    expected: pinned.to_string(),
                })));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::{NOW, fed, org_ca, relay_params, sign, user_params};
    use crate::identity::verify_chain_trusted;

    fn map(entries: &[(&str, &str, Option<CaFingerprint>)]) -> TrustMap {
        TrustMap::from_entries(entries.iter().map(|(relay, org, ca)| {
            (
                *relay,
                RelayTrust {
                    organisation: org.to_string(),
                    ca: *ca,
                },
            )
        }))
        .unwrap()
    }

    #[test]
    fn certificates_speak_only_for_relays_of_their_organisation() {
        let f = fed();
        let anchors = vec![f.root.der.clone()];
        let trust = map(&[("bz", "bz", None), ("nctv", "nctv", None)]);
        let verify =
            |leaf: &crate::identity::tests::Leaf, ca: &crate::identity::tests::Ca, kind| {
                verify_chain_trusted(
                    &[leaf.der.clone(), ca.der.clone()],
                    &anchors,
                    NOW,
                    kind,
                    &trust,
                )
            };
        // The genuine ones.
        let bz = sign(&relay_params("bz", "bz"), &f.bz);
        assert_eq!(verify(&bz, &f.bz, IdentityKind::Relay).unwrap().id(), "bz");
        let liaison = sign(&user_params("liaison", "bz", "bz"), &f.bz);
        verify(&liaison, &f.bz, IdentityKind::User).unwrap();
        // nctv's CA minting relay bz and a user of bz: valid chains, refused.
        let fake_relay = sign(&relay_params("bz", "nctv"), &f.nctv);
        let err = verify(&fake_relay, &f.nctv, IdentityKind::Relay).unwrap_err();
        assert!(
            matches!(&err, IdentityError::WrongOrganisation(r)
                if r.relay == "bz" && r.found == "nctv" && r.expected == "bz"),
            "{err}"
        );
        let fake_user = sign(&user_params("liaison", "bz", "nctv"), &f.nctv);
        let err = verify(&fake_user, &f.nctv, IdentityKind::User).unwrap_err();
        assert!(matches!(err, IdentityError::WrongOrganisation(_)), "{err}");
        // A relay nobody configured.
        let stranger = sign(&relay_params("aivd", "bz"), &f.bz);
        let err = verify(&stranger, &f.bz, IdentityKind::Relay).unwrap_err();
        assert!(matches!(err, IdentityError::UnknownRelay { .. }), "{err}");
    }

    #[test]
    fn a_pinned_ca_is_the_only_one_accepted() {
        let f = fed();
        let anchors = vec![f.root.der.clone()];
        // A second CA for organisation bz under the same root.
        let rogue = org_ca(&f.root, "bz");
        let pinned = map(&[("bz", "bz", Some(CaFingerprint::of(&f.bz.der)))]);
        let good = sign(&relay_params("bz", "bz"), &f.bz);
        verify_chain_trusted(
            &[good.der.clone(), f.bz.der.clone()],
            &anchors,
            NOW,
            IdentityKind::Relay,
            &pinned,
        )
        .unwrap();
        let other = sign(&relay_params("bz", "bz"), &rogue);
        let chain = [other.der.clone(), rogue.der.clone()];
        let err =
            verify_chain_trusted(&chain, &anchors, NOW, IdentityKind::Relay, &pinned).unwrap_err();
        assert!(matches!(err, IdentityError::CaNotPinned(_)), "{err}");
        // Without the pin, organisation alone decides.
        let unpinned = map(&[("bz", "bz", None)]);
        verify_chain_trusted(&chain, &anchors, NOW, IdentityKind::Relay, &unpinned).unwrap();
    }

    #[test]
    fn a_sub_ca_under_an_organisation_ca_cannot_speak_for_another_organisation() {
        use crate::identity::tests::{Ca, ca_params};
        use rcgen::{BasicConstraints, IsCa, Issuer, KeyPair};
        // A federation whose root and nctv's CA carry no path length limit: nctv
        // can mint a sub-CA, and gives it O=bz.
        let ca = |params: rcgen::CertificateParams, by: Option<&Ca>| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let cert = match by {
                Some(by) => params.signed_by(&key, &by.issuer).unwrap(),
                None => params.self_signed(&key).unwrap(),
            };
            Ca {
                der: cert.der().to_vec(),
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        };
        let unconstrained = |cn: &str, org: &str| {
            let mut p = ca_params(cn, org, 0);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.use_authority_key_identifier_extension = true;
            p
        };
        let root = ca(unconstrained("Root", "federation"), None);
        let nctv = ca(unconstrained("CA nctv", "nctv"), Some(&root));
        let sub = ca(unconstrained("CA bz", "bz"), Some(&nctv));
        let anchors = vec![root.der.clone()];
        let trust = map(&[("bz", "bz", None), ("nctv", "nctv", None)]);
        let relay = sign(&relay_params("bz", "bz"), &sub);
        let user = sign(&user_params("liaison", "bz", "bz"), &sub);
        for (leaf, kind) in [(&relay, IdentityKind::Relay), (&user, IdentityKind::User)] {
            let chain = [leaf.der.clone(), sub.der.clone(), nctv.der.clone()];
            let err = verify_chain_trusted(&chain, &anchors, NOW, kind, &trust).unwrap_err();
            assert!(
                matches!(&err, IdentityError::ChainInvalid { reason } if reason.contains("2 CAs")),
                "{err}"
            );
            // The same holds without a trust map (a device checking its home relay
            // binds the organisation from the chain) and with the root appended.
            let mut with_root = chain.to_vec();
            with_root.push(root.der.clone());
            assert!(crate::identity::verify_chain(&with_root, &anchors, NOW, kind).is_err());
        }
        // nctv's own relay, one level down, still verifies.
        let genuine = sign(&relay_params("nctv", "nctv"), &nctv);
        verify_chain_trusted(
            &[genuine.der.clone(), nctv.der.clone()],
            &anchors,
            NOW,
            IdentityKind::Relay,
            &trust,
        )
        .unwrap();
    }

    #[test]
    fn an_organisations_crl_signer_must_be_its_pinned_ca() {
        let f = fed();
        let rogue = org_ca(&f.root, "bz");
        let pinned = map(&[("bz", "bz", Some(CaFingerprint::of(&f.bz.der)))]);
        pinned.check_organisation_ca("bz", &f.bz.der).unwrap();
        let err = pinned.check_organisation_ca("bz", &rogue.der).unwrap_err();
        assert!(matches!(err, IdentityError::CaNotPinned(_)), "{err}");
        // Unpinned organisations: any CA of theirs under the root.
        pinned.check_organisation_ca("nctv", &f.nctv.der).unwrap();
    }

    #[test]
    fn fingerprints_parse_in_the_usual_forms_and_nothing_else() {
        let f = CaFingerprint([0xab; 32]);
        let hex = f.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(CaFingerprint::parse(&hex).unwrap(), f);
        assert_eq!(CaFingerprint::parse(&hex.to_uppercase()).unwrap(), f);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(CaFingerprint::parse(&colons).unwrap(), f);
        assert!(CaFingerprint::parse(&hex[..62]).is_err());
        assert!(CaFingerprint::parse(&format!("{}zz", &hex[..62])).is_err());
        assert!(CaFingerprint::parse("").is_err());
    }

    #[test]
    fn a_map_refuses_duplicates_and_bad_names() {
        let mut m = map(&[("bz", "bz", None)]);
        let again = RelayTrust {
            organisation: "bz".into(),
            ca: None,
        };
        assert!(matches!(
            m.insert("bz", again.clone()),
            Err(IdentityError::DuplicateRelay { .. })
        ));
        assert!(m.insert("Not A Relay", again).is_err());
        let bad_org = RelayTrust {
            organisation: "".into(),
            ca: None,
        };
        assert!(m.insert("nctv", bad_org).is_err());
        assert_eq!(m.len(), 1);
        assert_eq!(m.organisation_of("bz"), Some("bz"));
    }
}
