//! Revocation statements, CRL verification and the revocation set.

use rcgen::CertificateParams;

use super::*;
use crate::identity::tests::{DAY, Fed, Leaf, NOW, crl, fed, sda, sign, user_params};

fn user(f: &Fed, name: &str, org_admin: bool) -> Leaf {
    let mut p: CertificateParams = user_params(name, "bz", "bz");
    let roles: &[&str] = if org_admin { &["org-admin"] } else { &[] };
    p.custom_extensions = sda(Some("NL:STG-GEHEIM"), roles).into_iter().collect();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[name.len() as u8 + 1, 7]));
    sign(&p, &f.bz)
}

/// bz and nctv, each run by the organisation of the same name.
fn trust() -> TrustMap {
    TrustMap::from_entries([
        (
            "bz",
            crate::identity::RelayTrust {
                organisation: "bz".into(),
                ca: None,
            },
        ),
        (
            "nctv",
            crate::identity::RelayTrust {
                organisation: "nctv".into(),
                ca: None,
            },
        ),
    ])
    .unwrap()
}

fn signer(leaf: &Leaf) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
    move |bytes| {
        let kp =
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&leaf.key.serialize_der())
                .unwrap();
        kp.sign(bytes).as_ref().to_vec()
    }
}

fn statement(f: &Fed, admin: &Leaf, user: &str) -> RevocationStatement {
    RevocationStatement::sign(
        vec![admin.der.clone(), f.bz.der.clone()],
        signer(admin),
        user,
        "device lost",
        NOW as i64,
    )
    .unwrap()
}

#[test]
fn a_signed_statement_verifies_and_names_its_revoker() {
    let f = fed();
    let admin = user(&f, "admin", true);
    let s = statement(&f, &admin, "liaison@bz");
    let anchors = vec![f.root.der.clone()];
    let revoker = s.verify(&anchors, &trust(), NOW as i64).unwrap();
    assert_eq!(revoker.id(), "admin@bz");
    assert_eq!(s.organisation, "bz");
    assert_eq!(s.home_relay(), "bz");
    s.check_home("bz").unwrap();
    assert!(matches!(
        s.check_home("nctv"),
        Err(RevocationError::OtherOrganisation { .. })
    ));
    // Still valid long after: the chain is checked at the time of signing.
    s.verify(&anchors, &trust(), NOW as i64 + 2000 * DAY)
        .unwrap();
}

#[test]
fn tampered_forged_and_unauthorised_statements_are_refused() {
    let f = fed();
    let admin = user(&f, "admin", true);
    let plain = user(&f, "liaison", false);
    let anchors = vec![f.root.der.clone()];
    let good = statement(&f, &admin, "liaison@bz");

    let mut other_user = good.clone();
    other_user.user = "analist@bz".into();
    assert_eq!(
        other_user.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::BadSignature)
    );
    let mut other_reason = good.clone();
    other_reason.reason = "something else".into();
    assert_eq!(
        other_reason.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::BadSignature)
    );
    let mut other_org = good.clone();
    other_org.organisation = "nctv".into();
    assert!(matches!(
        other_org.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::OtherOrganisation { .. })
    ));
    // A non-admin cannot even sign one, and a hand-made one is refused.
    assert!(matches!(
        RevocationStatement::sign(
            vec![plain.der.clone(), f.bz.der.clone()],
            signer(&plain),
            "analist@bz",
            "x",
            NOW as i64
        ),
        Err(RevocationError::NotOrgAdmin(_))
    ));
    let mut forged = good.clone();
    forged.revoker_chain = vec![plain.der.clone(), f.bz.der.clone()];
    assert!(matches!(
        forged.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::NotOrgAdmin(_))
    ));
    // A foreign federation's admin.
    let other = fed();
    assert!(matches!(
        good.verify(std::slice::from_ref(&other.root.der), &trust(), NOW as i64),
        Err(RevocationError::Revoker(_))
    ));
    // Self-revocation, empty reason, future time.
    let own = statement(&f, &admin, "admin@bz");
    assert!(matches!(
        own.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::Invalid(_))
    ));
    assert!(matches!(
        RevocationStatement::sign(
            vec![admin.der.clone(), f.bz.der.clone()],
            signer(&admin),
            "liaison@bz",
            "  ",
            NOW as i64
        ),
        Err(RevocationError::Invalid(_))
    ));
    assert!(matches!(
        good.verify(&anchors, &trust(), NOW as i64 - 3600),
        Err(RevocationError::Invalid(_))
    ));
}

#[test]
fn crls_verify_against_their_organisation_ca_only() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let der = crl(&f.bz, &[&[0x01, 0x23, 0x45]], NOW as i64 + 7 * DAY);
    let v = verify_crl(&der, &f.bz.der, &anchors, NOW as i64).unwrap();
    assert_eq!(v.organisation, "bz");
    assert_eq!(v.serials, vec!["012345".to_string()]);
    // Wrong issuer, foreign root, garbage.
    assert!(verify_crl(&der, &f.nctv.der, &anchors, NOW as i64).is_err());
    let other = fed();
    assert!(
        verify_crl(
            &der,
            &f.bz.der,
            std::slice::from_ref(&other.root.der),
            NOW as i64
        )
        .is_err()
    );
    assert!(verify_crl(&der[..der.len() - 3], &f.bz.der, &anchors, NOW as i64).is_err());
    let mut flipped = der.clone();
    let n = flipped.len() - 5;
    flipped[n] ^= 1;
    assert!(verify_crl(&flipped, &f.bz.der, &anchors, NOW as i64).is_err());
    // A leaf is not a CA.
    let leaf = user(&f, "liaison", false);
    assert!(verify_crl(&der, &leaf.der, &anchors, NOW as i64).is_err());
}

#[test]
fn the_revocation_set_checks_identities_and_certificates() {
    let f = fed();
    let admin = user(&f, "admin", true);
    let liaison = user(&f, "liaison", false);
    let analist = user(&f, "analist", false);
    let anchors = vec![f.root.der.clone()];
    let id = |l: &Leaf| Identity::from_der(&l.der).unwrap();
    let mut set = Revocations::new();
    assert!(set.is_empty());
    assert!(set.check(&id(&liaison)).is_ok());

    let s = statement(&f, &admin, "liaison@bz");
    s.verify(&anchors, &trust(), NOW as i64).unwrap();
    assert!(set.add_statement(&s));
    assert!(!set.add_statement(&s), "a second copy is not new");
    let why = set.check(&id(&liaison)).unwrap_err();
    assert!(why.contains("liaison@bz is revoked: device lost"), "{why}");
    assert_eq!(set.user_revoked("liaison@bz"), Some("device lost"));
    assert!(set.check(&id(&analist)).is_ok());

    let serial = id(&analist).serial;
    let bytes = (0..serial.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&serial[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let v = verify_crl(
        &crl(&f.bz, &[&bytes], NOW as i64 + DAY),
        &f.bz.der,
        &anchors,
        NOW as i64,
    )
    .unwrap();
    assert_eq!(set.add_crl(&v), Some(vec![serial.clone()]));
    assert_eq!(set.add_crl(&v), None, "not newer than the one held");
    let why = set.check(&id(&analist)).unwrap_err();
    assert!(why.contains("revoked by the CRL of bz"), "{why}");
    // The same serial under another organisation is not revoked.
    let mut foreign = id(&analist);
    foreign.organisation = "nctv".into();
    assert!(set.check(&foreign).is_ok());
}

#[test]
fn only_the_configured_organisation_revokes_a_relays_users() {
    let f = fed();
    let admin = user(&f, "admin", true);
    let anchors = vec![f.root.der.clone()];
    // bz's admin revoking a user of nctv (another organisation's relay): refused
    // although the statement itself names organisation bz.
    let foreign = statement(&f, &admin, "liaison@nctv");
    assert!(matches!(
        foreign.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::OtherOrganisation { .. })
    ));
    // Relay bz configured as organisation nctv's: bz's CA no longer speaks for it,
    // so its admin's certificate is not accepted as a revoker.
    let moved = TrustMap::from_entries([(
        "bz",
        crate::identity::RelayTrust {
            organisation: "nctv".into(),
            ca: None,
        },
    )])
    .unwrap();
    let own = statement(&f, &admin, "liaison@bz");
    let err = own.verify(&anchors, &moved, NOW as i64).unwrap_err();
    assert!(err.to_string().contains("organisation"), "{err}");
    // A home relay nobody configured: refused.
    let unknown = statement(&f, &admin, "liaison@elsewhere");
    assert!(unknown.verify(&anchors, &trust(), NOW as i64).is_err());
}
