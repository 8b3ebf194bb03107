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
    assert_eq!(
        why,
        Revoked::ByStatement {
            user: "liaison@bz".into(),
            reason: "device lost".into()
        }
    );
    assert_eq!(why.to_string(), "liaison@bz is revoked: device lost");
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
    assert_eq!(set.add_crl(&v).map(|c| c.added), Some(vec![serial.clone()]));
    assert_eq!(set.add_crl(&v), None, "not newer than the one held");
    let why = set.check(&id(&analist)).unwrap_err();
    assert!(
        matches!(&why, Revoked::ByCrl { serial: s, organisation, .. } if *s == serial && organisation == "bz"),
        "{why:?}"
    );
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

/// A CRL of `ca` issued at `this_update` revoking `serials`.
fn crl_at(ca: &crate::identity::tests::Ca, serials: &[Vec<u8>], this_update: i64) -> Vec<u8> {
    use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
    CertificateRevocationListParams {
        this_update: crate::identity::tests::at(this_update),
        next_update: crate::identity::tests::at(this_update + 7 * DAY),
        crl_number: SerialNumber::from_slice(&this_update.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: crate::identity::tests::at(NOW as i64 - DAY),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .unwrap()
    .der()
    .to_vec()
}

fn serial_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_crl_dated_in_the_future_is_refused() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let now = NOW as i64;
    let late = crl_at(&f.bz, &[vec![1, 2]], now + MAX_CLOCK_SKEW + 60);
    let err = verify_crl(&late, &f.bz.der, &anchors, now).unwrap_err();
    assert!(err.to_string().contains("in the future"), "{err}");
    // Within the clock skew it is taken.
    let skewed = crl_at(&f.bz, &[vec![1, 2]], now + MAX_CLOCK_SKEW - 60);
    verify_crl(&skewed, &f.bz.der, &anchors, now).unwrap();
}

#[test]
fn a_hundred_crls_in_a_row_leave_only_the_newest_held() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let mut set = Revocations::new();
    const PER_CRL: u16 = 50;
    let mut generation = set.generation();
    for round in 0..100u16 {
        let serials: Vec<Vec<u8>> = (0..PER_CRL)
            .map(|i| {
                let n = round * PER_CRL + i + 1;
                vec![0x10, (n >> 8) as u8, n as u8]
            })
            .collect();
        let der = crl_at(&f.bz, &serials, NOW as i64 - 10_000 + i64::from(round));
        let v = verify_crl(&der, &f.bz.der, &anchors, NOW as i64).unwrap();
        let change = set.add_crl(&v).unwrap();
        assert_eq!(change.added.len(), usize::from(PER_CRL));
        assert_eq!(change.dropped, if round == 0 { 0 } else { 50 });
        assert_ne!(set.generation(), generation, "new serials change the set");
        generation = set.generation();
        assert_eq!(set.revoked_certificates(), usize::from(PER_CRL));
        assert_eq!(set.crl_issuers(), 1);
        // The same CRL again, or an older one, changes nothing.
        assert_eq!(set.add_crl(&v), None);
        assert_eq!(set.generation(), generation);
    }
    // A newer CRL listing the same serials: taken, but nothing newly revoked.
    let held: Vec<Vec<u8>> = (0..PER_CRL)
        .map(|i| {
            let n = 99 * PER_CRL + i + 1;
            vec![0x10, (n >> 8) as u8, n as u8]
        })
        .collect();
    let der = crl_at(&f.bz, &held, NOW as i64);
    let v = verify_crl(&der, &f.bz.der, &anchors, NOW as i64).unwrap();
    let change = set.add_crl(&v).unwrap();
    assert!(change.added.is_empty() && change.dropped == 0, "{change:?}");
    assert_eq!(set.generation(), generation);
}

#[test]
fn crls_are_held_per_issuing_ca() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    // bz rotates its CA: both CAs are in use for a while.
    let bz2 = crate::identity::tests::org_ca(&f.root, "bz");
    let old = user(&f, "liaison", false);
    let mut p: CertificateParams = user_params("analist", "bz", "bz");
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42]));
    let new = sign(&p, &bz2);
    let id = |l: &Leaf| Identity::from_der(&l.der).unwrap();
    let old_serial = serial_bytes(&id(&old).serial);

    let mut set = Revocations::new();
    let crl1 = crl_at(&f.bz, std::slice::from_ref(&old_serial), NOW as i64 - 100);
    set.add_crl(&verify_crl(&crl1, &f.bz.der, &anchors, NOW as i64).unwrap())
        .unwrap();
    // CA2's CRL, newer and listing the same serial bytes as CA2's own analist has
    // under CA1's numbering: it does not replace CA1's.
    let crl2 = crl_at(&bz2, &[vec![0x42]], NOW as i64 - 50);
    set.add_crl(&verify_crl(&crl2, &bz2.der, &anchors, NOW as i64).unwrap())
        .unwrap();
    assert_eq!(set.crl_issuers(), 2);
    let chain1 = vec![old.der.clone(), f.bz.der.clone()];
    let chain2 = vec![new.der.clone(), bz2.der.clone()];
    assert!(
        set.check_chain(&id(&old), &chain1).is_err(),
        "CA1's revocation stays"
    );
    assert!(set.check_chain(&id(&new), &chain2).is_err(), "CA2's too");
    // CA1's entry does not revoke a CA2 certificate that happens to share the
    // serial.
    let mut p: CertificateParams = user_params("other", "bz", "bz");
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&old_serial));
    let twin = sign(&p, &bz2);
    set.check_chain(&id(&twin), &[twin.der.clone(), bz2.der.clone()])
        .unwrap();
}

#[test]
fn an_anchors_crl_revoking_an_organisation_ca_cuts_every_certificate_under_it() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let liaison = user(&f, "liaison", false);
    let chain = vec![liaison.der.clone(), f.bz.der.clone()];
    let id = Identity::from_der(&liaison.der).unwrap();
    let (_, bz_ca) = X509Certificate::from_der(&f.bz.der).unwrap();
    let bz_serial = bz_ca.raw_serial().to_vec();

    let mut set = Revocations::new();
    set.check_chain(&id, &chain).unwrap();
    let root_crl = crl_at(&f.root, &[bz_serial], NOW as i64 - 10);
    let v = verify_crl(&root_crl, &f.root.der, &anchors, NOW as i64).unwrap();
    assert!(v.anchor);
    assert!(!set.add_crl(&v).unwrap().added.is_empty());
    let why = set.check_chain(&id, &chain).unwrap_err();
    assert!(
        matches!(&why, Revoked::IssuingCa { ca_organisation, .. } if ca_organisation == "bz"),
        "{why:?}"
    );
    // nctv's CA is not revoked.
    let mut p: CertificateParams = user_params("liaison", "nctv", "nctv");
    p.custom_extensions = sda(Some("NL:STG-GEHEIM"), &[]).into_iter().collect();
    let other = sign(&p, &f.nctv);
    let other_id = Identity::from_der(&other.der).unwrap();
    set.check_chain(&other_id, &[other.der.clone(), f.nctv.der.clone()])
        .unwrap();
}

#[test]
fn a_wipe_order_verifies_on_its_own_and_is_not_a_statement() {
    let f = fed();
    let admin = user(&f, "admin", true);
    let plain = user(&f, "liaison", false);
    let anchors = vec![f.root.der.clone()];
    let chain = vec![admin.der.clone(), f.bz.der.clone()];
    let order = WipeOrder::sign(chain.clone(), signer(&admin), "liaison@bz", NOW as i64).unwrap();
    assert_eq!(order.organisation, "bz");
    assert_eq!(order.revoker().as_deref(), Some("admin@bz"));
    let revoker = order.verify(&anchors, &trust(), NOW as i64).unwrap();
    assert_eq!(revoker.id(), "admin@bz");

    // Another user, another time, another organisation: the signature no longer fits.
    let mut other = order.clone();
    other.user = "analist@bz".into();
    assert_eq!(
        other.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::BadSignature)
    );
    let mut later = order.clone();
    later.ordered_at += 1;
    assert_eq!(
        later.verify(&anchors, &trust(), NOW as i64 + 10),
        Err(RevocationError::BadSignature)
    );
    // A statement's signature does not make a wipe order (domain separation).
    let s = statement(&f, &admin, "liaison@bz");
    let mut borrowed = order.clone();
    borrowed.signature = s.signature.clone();
    assert_eq!(
        borrowed.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::BadSignature)
    );
    // Only an org-admin signs one; not for themselves; not from the future.
    assert!(matches!(
        WipeOrder::sign(
            vec![plain.der.clone(), f.bz.der.clone()],
            signer(&plain),
            "analist@bz",
            NOW as i64
        ),
        Err(RevocationError::NotOrgAdmin(_))
    ));
    let own = WipeOrder::sign(chain.clone(), signer(&admin), "admin@bz", NOW as i64).unwrap();
    assert!(matches!(
        own.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::Invalid(_))
    ));
    let future = WipeOrder::sign(chain, signer(&admin), "liaison@bz", NOW as i64 + 3600).unwrap();
    assert!(matches!(
        future.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::Invalid(_))
    ));
    // A user of another organisation's relay is not bz's to wipe.
    let foreign = WipeOrder::sign(
        vec![admin.der.clone(), f.bz.der.clone()],
        signer(&admin),
        "liaison@nctv",
        NOW as i64,
    )
    .unwrap();
    assert!(matches!(
        foreign.verify(&anchors, &trust(), NOW as i64),
        Err(RevocationError::OtherOrganisation { .. })
    ));
}
