//! Tests for identities, attributes and chains, with certificates minted by rcgen.

use std::str::FromStr;

use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose as Ku, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::der::{self, tag};
use super::*;

pub(crate) const NOW: u64 = 1_750_000_000;
pub(crate) const DAY: i64 = 86_400;

pub(crate) fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

pub(crate) fn clearance(text: &str) -> Clearance {
    Clearance::from_str(text).unwrap()
}

pub(crate) struct Ca {
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca_params(cn: &str, org: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign, Ku::DigitalSignature];
    p.not_before = at(NOW as i64 - 10 * DAY);
    p.not_after = at(NOW as i64 + 3650 * DAY);
    p
}

pub(crate) fn root(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = ca_params(name, "federation", 1);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

pub(crate) fn org_ca(root: &Ca, org: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = ca_params(&format!("CA {org}"), org, 0);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &root.issuer).unwrap();
    Ca {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A test federation: a root and two organisation CAs.
pub(crate) struct Fed {
    pub(crate) root: Ca,
    pub(crate) bz: Ca,
    pub(crate) nctv: Ca,
}

pub(crate) fn fed() -> Fed {
    let root = root("Test root");
    let bz = org_ca(&root, "bz");
    let nctv = org_ca(&root, "nctv");
    Fed { root, bz, nctv }
}

pub(crate) fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

pub(crate) fn dns(s: &str) -> SanType {
    SanType::DnsName(s.to_string().try_into().unwrap())
}

pub(crate) fn sda(clearance: Option<&str>, roles: &[&str]) -> Option<CustomExtension> {
    let c = clearance.map(self::clearance);
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    encode_subject_directory_attributes(c.as_ref(), &roles)
        .unwrap()
        .map(|v| CustomExtension::from_oid_content(&OID_SUBJECT_DIRECTORY_ATTRIBUTES, v))
}

pub(crate) fn user_params(name: &str, relay: &str, org: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, org);
    p.distinguished_name = dn;
    p.subject_alt_names = vec![uri(&format!("kring:user:{name}@{relay}"))];
    p.extended_key_usages = vec![Eku::ClientAuth];
    p.key_usages = vec![Ku::DigitalSignature];
    p.not_before = at(NOW as i64 - DAY);
    p.not_after = at(NOW as i64 + 365 * DAY);
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(SerialNumber::from_slice(&[0x01, 0x23, 0x45]));
    p.custom_extensions = sda(Some("NL:STG-GEHEIM;CMP=CYBER"), &["org-admin"])
        .into_iter()
        .collect();
    p
}

pub(crate) fn relay_params(id: &str, org: &str) -> CertificateParams {
    let mut p = user_params(id, id, org);
    p.subject_alt_names = vec![
        uri(&format!("kring:relay:{id}")),
        dns(&format!("{id}.relay.kring")),
    ];
    p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    p.custom_extensions = sda(Some("NL:STG-GEHEIM"), &[]).into_iter().collect();
    p
}

pub(crate) struct Leaf {
    pub(crate) der: Vec<u8>,
    pub(crate) key: KeyPair,
}

pub(crate) fn sign(params: &CertificateParams, ca: &Ca) -> Leaf {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let der = params.signed_by(&key, &ca.issuer).unwrap().der().to_vec();
    Leaf { der, key }
}

fn parse_err(params: &CertificateParams) -> IdentityError {
    let f = fed();
    Identity::from_der(&sign(params, &f.bz).der).unwrap_err()
}

// ---------------------------------------------------------------- from_der

#[test]
fn user_certificate_is_read() {
    let f = fed();
    let leaf = sign(&user_params("analist", "bz", "bz"), &f.bz);
    let id = Identity::from_der(&leaf.der).unwrap();
    assert_eq!(id.kind, IdentityKind::User);
    assert_eq!(id.name, "analist");
    assert_eq!(id.home_relay, "bz");
    assert_eq!(id.id(), "analist@bz");
    assert_eq!(id.organisation, "bz");
    assert_eq!(id.clearance, Some(clearance("NL:STG-GEHEIM;CMP=CYBER")));
    assert_eq!(id.roles, vec!["org-admin".to_string()]);
    assert!(id.has_role(ROLE_ORG_ADMIN));
    assert!(!id.has_role("other"));
    assert_eq!(id.serial, "012345");
    assert_eq!(id.not_before, NOW as i64 - DAY);
    assert_eq!(id.not_after, NOW as i64 + 365 * DAY);
    assert_eq!(id.public_key, leaf.key.public_key_raw());
    assert_eq!(id.public_key.len(), 32);
}

#[test]
fn relay_certificate_is_read() {
    let f = fed();
    let leaf = sign(&relay_params("post-a", "bz"), &f.bz);
    let id = Identity::from_der(&leaf.der).unwrap();
    assert_eq!(id.kind, IdentityKind::Relay);
    assert_eq!(id.name, "post-a");
    assert_eq!(id.home_relay, "post-a");
    assert_eq!(id.id(), "post-a");
    assert_eq!(id.clearance, Some(clearance("NL:STG-GEHEIM")));
    assert!(id.roles.is_empty());
}

#[test]
fn certificate_without_attributes_has_no_clearance() {
    let mut p = user_params("analist", "bz", "bz");
    p.custom_extensions.clear();
    let f = fed();
    let id = Identity::from_der(&sign(&p, &f.bz).der).unwrap();
    assert_eq!(id.clearance, None);
    assert!(id.roles.is_empty());
}

#[test]
fn oversized_and_malformed_input_is_rejected() {
    assert!(matches!(
        Identity::from_der(&vec![0u8; MAX_CERT_DER_LEN + 1]),
        Err(IdentityError::CertificateTooLarge { .. })
    ));
    assert!(matches!(
        Identity::from_der(b"not a certificate"),
        Err(IdentityError::MalformedCertificate { .. })
    ));
    let f = fed();
    let mut der = sign(&user_params("a", "bz", "bz"), &f.bz).der;
    der.push(0);
    let e = Identity::from_der(&der).unwrap_err();
    assert!(
        matches!(&e, IdentityError::MalformedCertificate { reason } if reason.contains("trailing")),
        "{e}"
    );
}

#[test]
fn non_ed25519_key_is_rejected() {
    let f = fed();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let der = user_params("a", "bz", "bz")
        .signed_by(&key, &f.bz.issuer)
        .unwrap()
        .der()
        .to_vec();
    let e = Identity::from_der(&der).unwrap_err();
    assert!(matches!(e, IdentityError::UnsupportedKey { .. }), "{e}");
    assert!(e.to_string().contains("Ed25519"));
}

#[test]
fn ca_and_bad_key_usage_are_rejected() {
    let mut p = user_params("a", "bz", "bz");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(parse_err(&p), IdentityError::IsCa);
    // The real CA certificates are rejected too.
    assert_eq!(
        Identity::from_der(&fed().bz.der).unwrap_err(),
        IdentityError::IsCa
    );

    let mut p = user_params("a", "bz", "bz");
    p.key_usages = vec![Ku::KeyAgreement];
    assert!(matches!(parse_err(&p), IdentityError::BadKeyUsage { .. }));
    p.key_usages = vec![Ku::DigitalSignature, Ku::KeyCertSign];
    assert!(matches!(parse_err(&p), IdentityError::BadKeyUsage { .. }));
    // No keyUsage at all is fine.
    p.key_usages = vec![];
    Identity::from_der(&sign(&p, &fed().bz).der).unwrap();
}

#[test]
fn unknown_critical_extension_is_rejected() {
    let mut p = user_params("a", "bz", "bz");
    let mut ext = CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
    ext.set_criticality(true);
    p.custom_extensions.push(ext);
    assert_eq!(
        parse_err(&p),
        IdentityError::UnsupportedCriticalExtension {
            oid: "1.2.3.4".into()
        }
    );
    // The same extension, non-critical, is ignored.
    let mut p = user_params("a", "bz", "bz");
    p.custom_extensions.push(CustomExtension::from_oid_content(
        &[1, 2, 3, 4],
        vec![0x05, 0x00],
    ));
    Identity::from_der(&sign(&p, &fed().bz).der).unwrap();
}

#[test]
fn uri_san_rules() {
    let mut p = user_params("a", "bz", "bz");
    p.subject_alt_names = vec![];
    assert_eq!(parse_err(&p), IdentityError::MissingSan);
    p.subject_alt_names = vec![uri("https://example.org/")];
    assert!(matches!(parse_err(&p), IdentityError::MissingSan));
    p.subject_alt_names = vec![uri("kring:user:a@bz"), uri("kring:user:b@bz")];
    assert_eq!(parse_err(&p), IdentityError::AmbiguousSan { count: 2 });
    for bad in [
        "kring:user:a",
        "kring:user:a@b@bz",
        "kring:user:A@bz",
        "kring:user:a@BZ",
        "kring:user:@bz",
        "kring:group:a",
        "kring:relay:-bz",
        "kring:relay:b z",
    ] {
        p.subject_alt_names = vec![uri(bad)];
        let e = parse_err(&p);
        assert!(
            matches!(&e, IdentityError::BadSan { san, .. } if san == bad),
            "{bad}: {e}"
        );
    }
}

#[test]
fn other_san_rules() {
    let mut p = user_params("a", "bz", "bz");
    p.subject_alt_names.push(dns("a.relay.kring"));
    let e = parse_err(&p);
    assert!(
        matches!(&e, IdentityError::UnexpectedSan { kind: IdentityKind::User, san, .. } if san == "DNS:a.relay.kring"),
        "{e}"
    );
    let mut p = user_params("a", "bz", "bz");
    p.subject_alt_names
        .push(SanType::Rfc822Name("a@example.org".try_into().unwrap()));
    assert!(matches!(parse_err(&p), IdentityError::UnexpectedSan { .. }));

    let mut p = relay_params("bz", "bz");
    p.subject_alt_names = vec![uri("kring:relay:bz")];
    assert_eq!(
        parse_err(&p),
        IdentityError::MissingDnsSan {
            expected: "bz.relay.kring".into()
        }
    );
    p.subject_alt_names = vec![uri("kring:relay:bz"), dns("nctv.relay.kring")];
    assert_eq!(
        parse_err(&p),
        IdentityError::DnsSanMismatch {
            expected: "bz.relay.kring".into(),
            found: "nctv.relay.kring".into()
        }
    );
    p.subject_alt_names = vec![
        uri("kring:relay:bz"),
        dns("bz.relay.kring"),
        dns("nctv.relay.kring"),
    ];
    assert!(matches!(
        parse_err(&p),
        IdentityError::DnsSanMismatch { .. }
    ));
}

#[test]
fn subject_rules() {
    let mut p = user_params("a", "bz", "bz");
    p.distinguished_name.remove(DnType::CommonName);
    assert_eq!(
        parse_err(&p),
        IdentityError::MissingCommonName {
            expected: "a".into()
        }
    );
    let mut p = user_params("a", "bz", "bz");
    p.distinguished_name.push(DnType::CommonName, "b");
    assert_eq!(
        parse_err(&p),
        IdentityError::NameMismatch {
            cn: "b".into(),
            name: "a".into()
        }
    );
    let mut p = user_params("a", "bz", "bz");
    p.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "a");
    assert_eq!(
        parse_err(&p),
        IdentityError::AmbiguousSubject { attribute: "CN" }
    );
    let mut p = relay_params("bz", "bz");
    p.distinguished_name
        .push(DnType::CommonName, "bz.relay.kring");
    assert!(matches!(parse_err(&p), IdentityError::NameMismatch { .. }));

    let mut p = user_params("a", "bz", "bz");
    p.distinguished_name.remove(DnType::OrganizationName);
    assert_eq!(parse_err(&p), IdentityError::MissingOrganisation);
    p.distinguished_name
        .push(DnType::OrganizationName, "Buitenlandse Zaken");
    assert!(matches!(
        parse_err(&p),
        IdentityError::BadSubject { attribute: "O", .. }
    ));
}

#[test]
fn eku_rules() {
    let mut p = user_params("a", "bz", "bz");
    p.extended_key_usages = vec![];
    assert_eq!(
        parse_err(&p),
        IdentityError::EkuMissing {
            kind: IdentityKind::User,
            missing: "clientAuth"
        }
    );
    p.extended_key_usages = vec![Eku::ClientAuth, Eku::ServerAuth];
    let e = parse_err(&p);
    assert!(
        matches!(&e, IdentityError::EkuForbidden { kind: IdentityKind::User, eku } if eku.starts_with("serverAuth")),
        "{e}"
    );
    p.extended_key_usages = vec![Eku::ServerAuth];
    assert!(matches!(parse_err(&p), IdentityError::EkuMissing { .. }));
    p.extended_key_usages = vec![Eku::ClientAuth, Eku::Any];
    assert!(matches!(parse_err(&p), IdentityError::EkuForbidden { .. }));
    p.extended_key_usages = vec![Eku::ClientAuth, Eku::CodeSigning];
    assert!(matches!(parse_err(&p), IdentityError::EkuForbidden { .. }));
    p.extended_key_usages = vec![Eku::ClientAuth, Eku::Other(vec![1, 2, 3])];
    assert!(matches!(parse_err(&p), IdentityError::EkuForbidden { .. }));

    let mut p = relay_params("bz", "bz");
    p.extended_key_usages = vec![Eku::ClientAuth];
    assert_eq!(
        parse_err(&p),
        IdentityError::EkuMissing {
            kind: IdentityKind::Relay,
            missing: "serverAuth"
        }
    );
    p.extended_key_usages = vec![Eku::ServerAuth];
    assert_eq!(
        parse_err(&p),
        IdentityError::EkuMissing {
            kind: IdentityKind::Relay,
            missing: "clientAuth"
        }
    );
}

#[test]
fn attribute_extension_rules() {
    let mut p = user_params("a", "bz", "bz");
    p.custom_extensions[0].set_criticality(true);
    assert_eq!(
        parse_err(&p),
        IdentityError::UnsupportedCriticalExtension {
            oid: "2.5.29.9".into()
        }
    );

    // Bad DER inside the Clearance attribute value.
    let bad = der::constructed(
        tag::SEQUENCE,
        &[der::constructed(
            tag::SEQUENCE,
            &[
                der::tlv(tag::OID, &[0x55, 0x04, 0x37]),
                der::tlv(tag::SET, &[0x30, 0x05, 0x06]),
            ],
        )],
    );
    let mut p = user_params("a", "bz", "bz");
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &OID_SUBJECT_DIRECTORY_ATTRIBUTES,
        bad,
    )];
    assert!(matches!(parse_err(&p), IdentityError::BadClearance { .. }));

    let mut p = relay_params("bz", "bz");
    p.custom_extensions = sda(Some("NL:STG-GEHEIM"), &["org-admin"])
        .into_iter()
        .collect();
    assert!(matches!(parse_err(&p), IdentityError::BadRole { .. }));
}

#[test]
fn name_validation() {
    assert!(validate_user_name("analist.2_x-y").is_ok());
    for bad in ["", "Analist", "-a", ".a", "a b", "a@b", &"a".repeat(65)] {
        assert!(validate_user_name(bad).is_err(), "{bad:?}");
    }
    assert!(validate_relay_id("post-a").is_ok());
    for bad in ["", "Post", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
        assert!(validate_relay_id(bad).is_err(), "{bad:?}");
    }
    assert!(validate_organisation("aivd").is_ok());
    assert_eq!(
        parse_user_id("analist@post-a").unwrap(),
        ("analist", "post-a")
    );
    assert!(parse_user_id("analist").is_err());
    assert!(parse_user_id("a@b@c").is_err());
    assert!(validate_role_name("org-admin").is_ok());
    for bad in ["", "Org", "1x", "a_b", &"a".repeat(65)] {
        assert!(validate_role_name(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------- attributes

/// The Clearance value (full TLV) inside an encoded extension.
fn clearance_value(ext: &[u8]) -> Vec<u8> {
    let seq = der::read_single(ext, tag::SEQUENCE, "sda").unwrap();
    let attr = der::read_single(seq.content, tag::SEQUENCE, "attr").unwrap();
    let mut r = der::Reader::new(attr.content);
    r.read(tag::OID, "oid").unwrap();
    let set = r.read(tag::SET, "set").unwrap();
    set.content.to_vec()
}

/// Wraps a Clearance value into an extension.
fn wrap_clearance(value: &[u8]) -> Vec<u8> {
    der::constructed(
        tag::SEQUENCE,
        &[der::constructed(
            tag::SEQUENCE,
            &[
                der::tlv(tag::OID, &[0x55, 0x04, 0x37]),
                der::tlv(tag::SET, value),
            ],
        )],
    )
}

fn decode_err(ext: &[u8]) -> IdentityError {
    decode_subject_directory_attributes(ext).unwrap_err()
}

fn nl_policy_oid() -> Vec<u8> {
    der::oid_content(2, 25, &[KRING_OID_UUID, 1, 1])
}

fn clearance_with_bits(bits: &[u8]) -> Vec<u8> {
    wrap_clearance(&der::constructed(
        tag::SEQUENCE,
        &[
            der::tlv(tag::OID, &nl_policy_oid()),
            der::tlv(tag::BIT_STRING, bits),
        ],
    ))
}

#[test]
fn oid_table_matches_the_arc() {
    assert_eq!(
        KRING_OID_ARC,
        format!("2.25.{KRING_OID_UUID}"),
        "documented arc must match the UUID"
    );
    let oid = der::oid_content(2, 25, &[KRING_OID_UUID, 2, 2]);
    assert_eq!(der::oid_to_string(&oid), format!("{KRING_OID_ARC}.2.2"));
}

#[test]
fn class_list_encoding_is_exact() {
    let ext = encode_subject_directory_attributes(Some(&clearance("NL:STG-ZEER-GEHEIM")), &[])
        .unwrap()
        .unwrap();
    let value = clearance_value(&ext);
    let mut want = der::tlv(tag::OID, &nl_policy_oid());
    want.extend(der::tlv(tag::BIT_STRING, &[0x02, 0x7C]));
    assert_eq!(value, der::tlv(tag::SEQUENCE, &want));

    let ext = encode_subject_directory_attributes(Some(&clearance("NL:DEP-VERTROUWELIJK")), &[])
        .unwrap()
        .unwrap();
    let mut want = der::tlv(tag::OID, &nl_policy_oid());
    want.extend(der::tlv(tag::BIT_STRING, &[0x05, 0x60]));
    assert_eq!(clearance_value(&ext), der::tlv(tag::SEQUENCE, &want));

    // Rank 0 is the DEFAULT {unclassified}: omitted.
    let ext = encode_subject_directory_attributes(Some(&clearance("NL:ONGERUBRICEERD")), &[])
        .unwrap()
        .unwrap();
    assert_eq!(
        clearance_value(&ext),
        der::tlv(tag::SEQUENCE, &der::tlv(tag::OID, &nl_policy_oid()))
    );
    let back = decode_subject_directory_attributes(&ext).unwrap();
    assert_eq!(back.clearance, Some(clearance("NL:ONGERUBRICEERD")));
}

#[test]
fn class_list_decoding_is_strict() {
    // Each level decodes to its rank.
    for (bits, level) in [
        (&[0x05u8, 0x60][..], "NL:DEP-VERTROUWELIJK"),
        (&[0x04, 0x70], "NL:STG-CONFIDENTIEEL"),
        (&[0x03, 0x78], "NL:STG-GEHEIM"),
        (&[0x02, 0x7C], "NL:STG-ZEER-GEHEIM"),
    ] {
        let got = decode_subject_directory_attributes(&clearance_with_bits(bits)).unwrap();
        assert_eq!(got.clearance, Some(clearance(level)));
    }
    for (bits, what) in [
        (&[0x00u8][..], "empty"),
        (&[0x00, 0x00][..], "empty"),
        (&[0x06, 0x40][..], "DEFAULT"), // {unclassified} written out
        (&[0x03, 0x68][..], "inconsistent"), // bits 1,2,4
        (&[0x03, 0x38][..], "inconsistent"), // bits 2,3,4
        (&[0x02, 0xFC][..], "unmarked"), // bit 0
        (&[0x01, 0x7E][..], "undefined bit 6"),
        (&[0x03, 0x79][..], "unused bits"),   // non-zero padding
        (&[0x02, 0x78][..], "trailing zero"), // length not minimal
        (&[0x08, 0x00][..], "unused bits"),
        (&[0x00, 0x7C, 0x00][..], "bytes long"),
    ] {
        let e = decode_err(&clearance_with_bits(bits));
        assert!(
            matches!(&e, IdentityError::BadClearance { reason } if reason.contains(what)),
            "{bits:02X?}: {e}"
        );
    }
}

#[test]
fn clearance_structure_errors() {
    let policy = der::tlv(tag::OID, &nl_policy_oid());
    let cat = |oid: Vec<u8>, values: &[&str]| {
        let vals: Vec<Vec<u8>> = values
            .iter()
            .map(|v| der::tlv(tag::UTF8_STRING, v.as_bytes()))
            .collect();
        der::constructed(
            tag::SEQUENCE,
            &[
                der::tlv(tag::CONTEXT_0_PRIMITIVE, &oid),
                der::tlv(
                    tag::CONTEXT_1_CONSTRUCTED,
                    &der::constructed(tag::SEQUENCE, &vals),
                ),
            ],
        )
    };
    let rel = der::oid_content(2, 25, &[KRING_OID_UUID, 2, 1]);
    let cmp = der::oid_content(2, 25, &[KRING_OID_UUID, 2, 2]);
    let unknown = der::oid_content(2, 25, &[KRING_OID_UUID, 2, 9]);
    let with_cats = |cats: Vec<Vec<u8>>| {
        wrap_clearance(&der::constructed(
            tag::SEQUENCE,
            &[policy.clone(), der::constructed(tag::SET, &cats)],
        ))
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            wrap_clearance(&der::constructed(
                tag::SEQUENCE,
                &[der::tlv(tag::OID, &[0x2A, 0x03])],
            )),
            "unknown clearance policy 1.2.3",
        ),
        (with_cats(vec![]), "empty"),
        (
            with_cats(vec![cat(unknown, &["X"])]),
            "unknown security category",
        ),
        (with_cats(vec![cat(cmp.clone(), &[])]), "no values"),
        (with_cats(vec![cat(cmp.clone(), &["B", "A"])]), "ascending"),
        (with_cats(vec![cat(cmp.clone(), &["A", "A"])]), "ascending"),
        (
            with_cats(vec![cat(cmp.clone(), &["A,B"])]),
            "not a valid tag value",
        ),
        (with_cats(vec![cat(cmp.clone(), &["cyber"])]), "canonical"),
        (
            with_cats(vec![cat(cmp.clone(), &["A"]), cat(cmp.clone(), &["B"])]),
            "more than once",
        ),
        (
            // Not in DER SET OF order (CMP's encoding sorts before REL's? use reverse of sorted).
            {
                let mut v = vec![cat(rel.clone(), &["NLD"]), cat(cmp.clone(), &["CYBER"])];
                v.sort();
                v.reverse();
                with_cats(v)
            },
            "sorted",
        ),
        (
            wrap_clearance(&der::constructed(
                tag::SEQUENCE,
                &[policy.clone(), der::tlv(tag::UTF8_STRING, b"x")],
            )),
            "trailing",
        ),
        (
            wrap_clearance(
                &[
                    der::constructed(tag::SEQUENCE, std::slice::from_ref(&policy)),
                    der::constructed(tag::SEQUENCE, std::slice::from_ref(&policy)),
                ]
                .concat(),
            ),
            "exactly one",
        ),
        (wrap_clearance(&[0x30, 0x05, 0x06]), "remain"),
    ];
    for (ext, what) in cases {
        let e = decode_err(&ext);
        assert!(
            matches!(&e, IdentityError::BadClearance { reason } if reason.contains(what)),
            "expected {what:?}, got {e}"
        );
    }
    // A well-formed category decodes.
    let ok = decode_subject_directory_attributes(&with_cats(vec![cat(cmp, &["CYBER"])])).unwrap();
    assert_eq!(ok.clearance, Some(clearance("NL:ONGERUBRICEERD;CMP=CYBER")));
}

fn role_attr(values: Vec<Vec<u8>>) -> Vec<u8> {
    der::constructed(
        tag::SEQUENCE,
        &[der::constructed(
            tag::SEQUENCE,
            &[
                der::tlv(tag::OID, &[0x55, 0x04, 0x48]),
                der::constructed(tag::SET, &values),
            ],
        )],
    )
}

fn role_value(uri: &str) -> Vec<u8> {
    der::constructed(
        tag::SEQUENCE,
        &[der::tlv(
            tag::CONTEXT_1_CONSTRUCTED,
            &der::tlv(tag::CONTEXT_6_PRIMITIVE, uri.as_bytes()),
        )],
    )
}

#[test]
fn role_errors() {
    let ok =
        decode_subject_directory_attributes(&role_attr(vec![role_value("kring:role:org-admin")]))
            .unwrap();
    assert_eq!(ok.roles, vec!["org-admin"]);
    assert_eq!(ok.clearance, None);

    let with_authority = der::constructed(
        tag::SEQUENCE,
        &[
            der::tlv(
                tag::CONTEXT_0_CONSTRUCTED,
                &der::tlv(tag::CONTEXT_6_PRIMITIVE, b"kring:relay:bz"),
            ),
            der::tlv(
                tag::CONTEXT_1_CONSTRUCTED,
                &der::tlv(tag::CONTEXT_6_PRIMITIVE, b"kring:role:org-admin"),
            ),
        ],
    );
    let dns_name = der::constructed(
        tag::SEQUENCE,
        &[der::tlv(
            tag::CONTEXT_1_CONSTRUCTED,
            &der::tlv(0x82, b"org-admin"),
        )],
    );
    let mut unsorted = vec![role_value("kring:role:a"), role_value("kring:role:b")];
    unsorted.reverse();
    for (ext, what) in [
        (role_attr(vec![with_authority]), "roleAuthority"),
        (role_attr(vec![dns_name]), "uniformResourceIdentifier"),
        (
            role_attr(vec![role_value("urn:role:org-admin")]),
            "does not start",
        ),
        (role_attr(vec![role_value("kring:role:Org")]), "invalid"),
        (role_attr(unsorted), "sorted"),
        (
            [
                role_attr(vec![role_value("kring:role:a")]),
                role_attr(vec![role_value("kring:role:b")]),
            ]
            .concat(),
            "trailing",
        ),
    ] {
        let e = decode_err(&ext);
        let ok = match &e {
            IdentityError::BadRole { reason } | IdentityError::BadAttributes { reason } => {
                reason.contains(what)
            }
            _ => false,
        };
        assert!(ok, "expected {what:?}, got {e}");
    }
    // Two Role attributes in one extension.
    let two = der::constructed(
        tag::SEQUENCE,
        &[
            clearance_value_attr_role("kring:role:a"),
            clearance_value_attr_role("kring:role:b"),
        ],
    );
    assert!(matches!(decode_err(&two), IdentityError::BadRole { .. }));
}

fn clearance_value_attr_role(uri: &str) -> Vec<u8> {
    der::constructed(
        tag::SEQUENCE,
        &[
            der::tlv(tag::OID, &[0x55, 0x04, 0x48]),
            der::constructed(tag::SET, &[role_value(uri)]),
        ],
    )
}

#[test]
fn extension_structure_errors() {
    let empty = der::constructed(tag::SEQUENCE, &[]);
    assert!(matches!(
        decode_err(&empty),
        IdentityError::BadAttributes { .. }
    ));
    assert!(matches!(
        decode_err(&vec![0u8; MAX_ATTRIBUTES_LEN + 1]),
        IdentityError::BadAttributes { .. }
    ));
    // Unknown attributes are skipped, within bounds.
    let other = der::constructed(
        tag::SEQUENCE,
        &[
            der::tlv(tag::OID, &[0x55, 0x04, 0x03]),
            der::constructed(tag::SET, &[der::tlv(tag::UTF8_STRING, b"x")]),
        ],
    );
    let one = der::constructed(tag::SEQUENCE, std::slice::from_ref(&other));
    assert_eq!(
        decode_subject_directory_attributes(&one).unwrap(),
        DirectoryAttributes::default()
    );
    let many = der::constructed(tag::SEQUENCE, &vec![other; MAX_ATTRIBUTES + 1]);
    assert!(matches!(
        decode_err(&many),
        IdentityError::BadAttributes { .. }
    ));
    let no_values = der::constructed(
        tag::SEQUENCE,
        &[der::constructed(
            tag::SEQUENCE,
            &[
                der::tlv(tag::OID, &[0x55, 0x04, 0x37]),
                der::constructed(tag::SET, &[]),
            ],
        )],
    );
    assert!(matches!(
        decode_err(&no_values),
        IdentityError::BadClearance { .. }
    ));
    // Duplicate Clearance attributes.
    let c = clearance_with_bits(&[0x03, 0x78]);
    let inner = der::read_single(&c, tag::SEQUENCE, "x")
        .unwrap()
        .content
        .to_vec();
    let twice = der::tlv(tag::SEQUENCE, &[inner.clone(), inner].concat());
    let e = decode_err(&twice);
    assert!(
        matches!(&e, IdentityError::BadClearance { reason } if reason.contains("twice")),
        "{e}"
    );
}

#[test]
fn encoding_rejects_what_it_cannot_carry() {
    assert_eq!(
        encode_subject_directory_attributes(None, &[]).unwrap(),
        None
    );
    let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches!(
        encode_subject_directory_attributes(None, &roles(&["Org-Admin"])),
        Err(IdentityError::BadRole { .. })
    ));
    assert!(matches!(
        encode_subject_directory_attributes(None, &roles(&["a", "a"])),
        Err(IdentityError::BadRole { .. })
    ));
    let too_many: Vec<String> = (0..=MAX_ROLES).map(|i| format!("r{i}")).collect();
    assert!(matches!(
        encode_subject_directory_attributes(None, &too_many),
        Err(IdentityError::BadRole { .. })
    ));
    let ext = encode_subject_directory_attributes(None, &roles(&["b", "a", "org-admin"]))
        .unwrap()
        .unwrap();
    assert_eq!(
        decode_subject_directory_attributes(&ext).unwrap().roles,
        roles(&["a", "b", "org-admin"])
    );
}

fn clearance_strategy() -> impl Strategy<Value = Clearance> {
    let policy = prop_oneof![Just("NL"), Just("EU"), Just("NATO")];
    let countries = prop::collection::btree_set(
        prop_oneof![
            Just("NLD"),
            Just("DEU"),
            Just("BEL"),
            Just("FRA"),
            Just("USA")
        ],
        0..4,
    );
    let compartments = prop::collection::btree_set("[A-Z][A-Z0-9-]{0,11}", 0..4);
    (policy, 0u8..5, countries, compartments).prop_map(|(policy, rank, rel, cmp)| {
        let level = kring_policy::level_name(policy, rank).unwrap();
        let mut text = format!("{policy}:{level}");
        if !rel.is_empty() {
            text.push_str(&format!(
                ";REL={}",
                rel.into_iter().collect::<Vec<_>>().join(",")
            ));
        }
        if !cmp.is_empty() {
            text.push_str(&format!(
                ";CMP={}",
                cmp.into_iter().collect::<Vec<_>>().join(",")
            ));
        }
        clearance(&text)
    })
}

proptest! {
    #[test]
    fn attributes_round_trip(
        c in proptest::option::of(clearance_strategy()),
        roles in prop::collection::btree_set("[a-z][a-z0-9-]{0,20}", 0..5),
    ) {
        let roles: Vec<String> = roles.into_iter().collect();
        match encode_subject_directory_attributes(c.as_ref(), &roles).unwrap() {
            None => prop_assert!(c.is_none() && roles.is_empty()),
            Some(ext) => {
                let back = decode_subject_directory_attributes(&ext).unwrap();
                prop_assert_eq!(back.clearance, c);
                prop_assert_eq!(back.roles, roles);
            }
        }
    }

    #[test]
    fn decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_subject_directory_attributes(&bytes);
        let _ = Identity::from_der(&bytes);
    }

    /// DER is canonical: whenever corrupted bytes still decode to a clearance,
    /// they are exactly the encoding of what they decode to.
    #[test]
    fn decoding_is_canonical(
        c in clearance_strategy(),
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let ext = encode_subject_directory_attributes(Some(&c), &[]).unwrap().unwrap();
        let mut bad = ext.clone();
        let i = pos.index(bad.len());
        bad[i] ^= flip;
        if let Ok(back) = decode_subject_directory_attributes(&bad)
            && back.clearance.is_some()
        {
            let again = encode_subject_directory_attributes(back.clearance.as_ref(), &back.roles)
                .unwrap()
                .unwrap();
            prop_assert_eq!(again, bad);
        }
    }
}

// ---------------------------------------------------------------- chains

fn chain(leaf: &Leaf, ca: &Ca) -> Vec<Vec<u8>> {
    vec![leaf.der.clone(), ca.der.clone()]
}

#[test]
fn valid_chains_verify() {
    let f = fed();
    let user = sign(&user_params("liaison", "bz", "bz"), &f.bz);
    let anchors = vec![f.root.der.clone()];
    let id = verify_chain(&chain(&user, &f.bz), &anchors, NOW, IdentityKind::User).unwrap();
    assert_eq!(id.id(), "liaison@bz");
    let relay = sign(&relay_params("nctv", "nctv"), &f.nctv);
    let id = verify_chain(&chain(&relay, &f.nctv), &anchors, NOW, IdentityKind::Relay).unwrap();
    assert_eq!(id.id(), "nctv");
    // The root may be included at the end of the chain.
    let mut with_root = chain(&user, &f.bz);
    with_root.push(f.root.der.clone());
    verify_chain(&with_root, &anchors, NOW, IdentityKind::User).unwrap();
}

#[test]
fn chain_input_limits() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    assert_eq!(
        verify_chain(&[], &anchors, NOW, IdentityKind::User).unwrap_err(),
        IdentityError::EmptyChain
    );
    let user = sign(&user_params("a", "bz", "bz"), &f.bz);
    let long = vec![user.der.clone(); MAX_CHAIN_LEN + 1];
    assert!(matches!(
        verify_chain(&long, &anchors, NOW, IdentityKind::User),
        Err(IdentityError::ChainTooLong { .. })
    ));
    assert_eq!(
        verify_chain(&chain(&user, &f.bz), &[], NOW, IdentityKind::User).unwrap_err(),
        IdentityError::NoTrustAnchors
    );
    assert!(matches!(
        verify_chain(
            &chain(&user, &f.bz),
            &[b"junk".to_vec()],
            NOW,
            IdentityKind::User
        ),
        Err(IdentityError::BadTrustAnchor { index: 0, .. })
    ));
    assert!(matches!(
        verify_chain(
            &chain(&user, &f.bz),
            &vec![f.root.der.clone(); MAX_ANCHORS + 1],
            NOW,
            IdentityKind::User
        ),
        Err(IdentityError::TooMany { .. })
    ));
    assert!(matches!(
        verify_chain(
            &[vec![0; MAX_CERT_DER_LEN + 1]],
            &anchors,
            NOW,
            IdentityKind::User
        ),
        Err(IdentityError::CertificateTooLarge { .. })
    ));
    assert!(matches!(
        verify_chain(&[b"junk".to_vec()], &anchors, NOW, IdentityKind::User),
        Err(IdentityError::ChainInvalid { .. })
    ));
}

#[test]
fn validity_is_checked_at_now() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let user = sign(&user_params("a", "bz", "bz"), &f.bz);
    let c = chain(&user, &f.bz);
    let late = NOW + 400 * DAY as u64;
    assert_eq!(
        verify_chain(&c, &anchors, late, IdentityKind::User).unwrap_err(),
        IdentityError::Expired {
            not_after: NOW + 365 * DAY as u64,
            now: late
        }
    );
    let early = NOW - 2 * DAY as u64;
    assert_eq!(
        verify_chain(&c, &anchors, early, IdentityKind::User).unwrap_err(),
        IdentityError::NotYetValid {
            not_before: NOW - DAY as u64,
            now: early
        }
    );
}

#[test]
fn foreign_and_missing_issuers_are_rejected() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let other = self::root("Foreign root");
    let foreign_ca = org_ca(&other, "bz");
    let user = sign(&user_params("a", "bz", "bz"), &foreign_ca);
    assert_eq!(
        verify_chain(
            &chain(&user, &foreign_ca),
            &anchors,
            NOW,
            IdentityKind::User
        )
        .unwrap_err(),
        IdentityError::UnknownIssuer
    );
    // Leaf without its organisation CA.
    let user = sign(&user_params("a", "bz", "bz"), &f.bz);
    assert_eq!(
        verify_chain(
            std::slice::from_ref(&user.der),
            &anchors,
            NOW,
            IdentityKind::User
        )
        .unwrap_err(),
        IdentityError::UnknownIssuer
    );
    // Leaf issued directly by the root.
    let direct = sign(&user_params("a", "bz", "bz"), &f.root);
    assert_eq!(
        verify_chain(
            std::slice::from_ref(&direct.der),
            &anchors,
            NOW,
            IdentityKind::User
        )
        .unwrap_err(),
        IdentityError::NotIssuedByOrganisationCa
    );
}

#[test]
fn tampered_signature_is_rejected() {
    let f = fed();
    let mut user = sign(&user_params("a", "bz", "bz"), &f.bz);
    let last = user.der.len() - 1;
    user.der[last] ^= 0x01;
    assert_eq!(
        verify_chain(
            &chain(&user, &f.bz),
            std::slice::from_ref(&f.root.der),
            NOW,
            IdentityKind::User
        )
        .unwrap_err(),
        IdentityError::BadSignature
    );
}

#[test]
fn kind_and_profile_are_enforced() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let relay = sign(&relay_params("bz", "bz"), &f.bz);
    assert_eq!(
        verify_chain(&chain(&relay, &f.bz), &anchors, NOW, IdentityKind::User).unwrap_err(),
        IdentityError::WrongKind {
            expected: IdentityKind::User,
            found: IdentityKind::Relay
        }
    );
    let user = sign(&user_params("a", "bz", "bz"), &f.bz);
    assert_eq!(
        verify_chain(&chain(&user, &f.bz), &anchors, NOW, IdentityKind::Relay).unwrap_err(),
        IdentityError::WrongKind {
            expected: IdentityKind::Relay,
            found: IdentityKind::User
        }
    );
    // A user certificate that could serve TLS servers fails the profile.
    let mut p = user_params("a", "bz", "bz");
    p.extended_key_usages.push(Eku::ServerAuth);
    let bad = sign(&p, &f.bz);
    assert!(matches!(
        verify_chain(&chain(&bad, &f.bz), &anchors, NOW, IdentityKind::User),
        Err(IdentityError::EkuForbidden { .. })
    ));
    // Without clientAuth webpki already refuses.
    let mut p = relay_params("bz", "bz");
    p.extended_key_usages = vec![Eku::ServerAuth];
    let bad = sign(&p, &f.bz);
    assert_eq!(
        verify_chain(&chain(&bad, &f.bz), &anchors, NOW, IdentityKind::Relay).unwrap_err(),
        IdentityError::EkuMissing {
            kind: IdentityKind::Relay,
            missing: "clientAuth"
        }
    );
}

#[test]
fn organisation_ca_may_only_issue_for_its_organisation() {
    let f = fed();
    let user = sign(&user_params("a", "nctv", "nctv"), &f.bz);
    assert_eq!(
        verify_chain(
            &chain(&user, &f.bz),
            std::slice::from_ref(&f.root.der),
            NOW,
            IdentityKind::User
        )
        .unwrap_err(),
        IdentityError::OrganisationMismatch {
            leaf: "nctv".into(),
            issuer: "bz".into()
        }
    );
}

pub(crate) fn crl(ca: &Ca, revoked: &[&[u8]], next_update: i64) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: at(NOW as i64 - DAY),
        next_update: at(next_update),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: at(NOW as i64 - DAY),
                reason_code: Some(RevocationReason::KeyCompromise),
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

#[test]
fn revocation_hook() {
    let f = fed();
    let anchors = vec![f.root.der.clone()];
    let user = sign(&user_params("a", "bz", "bz"), &f.bz);
    let c = chain(&user, &f.bz);
    let week = NOW as i64 + 7 * DAY;
    let check_at = |depth, crls: &[Vec<u8>], unknown, enforce| {
        verify_chain_with_revocation(
            &c,
            &anchors,
            NOW,
            IdentityKind::User,
            Some(&RevocationCheck {
                crls,
                depth,
                unknown_status: unknown,
                enforce_next_update: enforce,
            }),
        )
    };
    let check = |crls: &[Vec<u8>], unknown, enforce| {
        check_at(RevocationDepth::Chain, crls, unknown, enforce)
    };
    let leaf_only = |crls: &[Vec<u8>], unknown, enforce| {
        check_at(RevocationDepth::EndEntity, crls, unknown, enforce)
    };
    use UnknownRevocationStatus::{Allow, Deny};
    let revoking = crl(&f.bz, &[&[0x01, 0x23, 0x45]], week);
    let clean = crl(&f.bz, &[&[0x09]], week);
    let other_org = crl(&f.nctv, &[&[0x01, 0x23, 0x45]], week);
    let stale = crl(&f.bz, &[], NOW as i64 - 1);

    assert_eq!(
        check(std::slice::from_ref(&revoking), Allow, true).unwrap_err(),
        IdentityError::Revoked
    );
    assert_eq!(
        leaf_only(std::slice::from_ref(&revoking), Deny, true).unwrap_err(),
        IdentityError::Revoked
    );
    check(std::slice::from_ref(&clean), Allow, true).unwrap();
    leaf_only(std::slice::from_ref(&clean), Deny, true).unwrap();
    // The org CA itself has no CRL from the root: with the whole chain, Deny refuses.
    assert_eq!(
        check(std::slice::from_ref(&clean), Deny, true).unwrap_err(),
        IdentityError::RevocationUnknown
    );
    assert!(check(std::slice::from_ref(&revoking), Deny, true).is_err());
    let root_crl = crl(&f.root, &[], week);
    check(&[clean, root_crl.clone()], Deny, true).unwrap();
    assert_eq!(
        check(&[revoking, root_crl], Deny, true).unwrap_err(),
        IdentityError::Revoked
    );
    // A CRL of another organisation does not cover this certificate.
    check(std::slice::from_ref(&other_org), Allow, true).unwrap();
    assert_eq!(
        leaf_only(&[other_org], Deny, true).unwrap_err(),
        IdentityError::RevocationUnknown
    );
    assert_eq!(
        check(&[], Deny, true).unwrap_err(),
        IdentityError::RevocationUnknown
    );
    check(&[], Allow, true).unwrap();
    assert!(matches!(
        check(&[b"junk".to_vec()], Allow, true),
        Err(IdentityError::BadCrl { index: 0, .. })
    ));
    assert!(matches!(
        check(std::slice::from_ref(&stale), Allow, true),
        Err(IdentityError::BadCrl { .. })
    ));
    check(&[stale], Allow, false).unwrap();
    // Without the hook nothing is checked.
    verify_chain(&c, &anchors, NOW, IdentityKind::User).unwrap();
}

#[test]
fn pem_reading() {
    let f = fed();
    let text = format!("{}{}", f.bz.pem, f.root.pem);
    let certs = certificates_from_pem(text.as_bytes()).unwrap();
    assert_eq!(certs, vec![f.bz.der.clone(), f.root.der.clone()]);
    assert!(matches!(
        certificates_from_pem(b""),
        Err(IdentityError::BadPem { .. })
    ));
    assert!(matches!(
        certificates_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
        Err(IdentityError::BadPem { .. })
    ));
}

#[test]
fn a_chain_expires_with_its_first_certificate() {
    let f = fed();
    let leaf = sign(&user_params("analist", "bz", "bz"), &f.bz);
    assert_eq!(
        chain_not_after(&[leaf.der.clone(), f.bz.der.clone()]),
        Some(NOW as i64 + 365 * DAY)
    );
    // An organisation CA that expires before the leaf ends the chain's validity.
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = ca_params("CA short", "bz", 0);
    params.not_after = at(NOW as i64 + 30 * DAY);
    let short_der = params
        .signed_by(&key, &f.root.issuer)
        .unwrap()
        .der()
        .to_vec();
    let short = Ca {
        der: short_der.clone(),
        pem: String::new(),
        issuer: Issuer::new(params, key),
    };
    let leaf = sign(&user_params("analist", "bz", "bz"), &short);
    assert_eq!(
        chain_not_after(&[leaf.der, short_der]),
        Some(NOW as i64 + 30 * DAY)
    );
    assert_eq!(chain_not_after(&[]), None);
    assert_eq!(chain_not_after(&[b"not a certificate".to_vec()]), None);
}
