//! A small test federation minted with rcgen (tests only): a root, an organisation
//! CA, relay and user certificates following Kring's certificate profile, and
//! profile directories for the users.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use kring_policy::Clearance;
use kring_protocol::identity::{
    OID_SUBJECT_DIRECTORY_ATTRIBUTES, encode_subject_directory_attributes,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair, KeyUsagePurpose as Ku, SanType,
};

pub(crate) struct Leaf {
    pub(crate) chain: Vec<Vec<u8>>,
    pub(crate) chain_pem: String,
    pub(crate) key: KeyPair,
}

pub(crate) struct Fed {
    pub(crate) root_der: Vec<u8>,
    pub(crate) root_pem: String,
    org_der: Vec<u8>,
    org_pem: String,
    org: Issuer<'static, KeyPair>,
}

fn days(d: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(d)
}

fn ca_params(cn: &str, org: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign, Ku::DigitalSignature];
    p.not_before = days(-1);
    p.not_after = days(365);
    p
}

impl Fed {
    /// A root and the organisation CA of `org`.
    pub(crate) fn new(org: &str) -> Fed {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let root_params = ca_params("Test root", "federation", 1);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let org_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut org_params = ca_params(&format!("CA {org}"), org, 0);
        org_params.use_authority_key_identifier_extension = true;
        let org_cert = org_params.signed_by(&org_key, &root_issuer).unwrap();
        Fed {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            org_der: org_cert.der().to_vec(),
            org_pem: org_cert.pem(),
            org: Issuer::new(org_params, org_key),
        }
    }

    fn leaf(&self, p: CertificateParams, org: &str, name: &str, clearance: &str) -> Leaf {
        self.leaf_with_roles(p, org, name, clearance, &[])
    }

    fn leaf_with_roles(
        &self,
        mut p: CertificateParams,
        org: &str,
        name: &str,
        clearance: &str,
        roles: &[String],
    ) -> Leaf {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, org);
        p.distinguished_name = dn;
        p.key_usages = vec![Ku::DigitalSignature];
        p.not_before = days(-1);
        p.not_after = days(300);
        p.use_authority_key_identifier_extension = true;
        let c = Clearance::from_str(clearance).unwrap();
        let sda = encode_subject_directory_attributes(Some(&c), roles)
            .unwrap()
            .unwrap();
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &OID_SUBJECT_DIRECTORY_ATTRIBUTES,
            sda,
        )];
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = p.signed_by(&key, &self.org).unwrap();
        Leaf {
            chain: vec![cert.der().to_vec(), self.org_der.clone()],
            chain_pem: format!("{}{}", cert.pem(), self.org_pem),
            key,
        }
    }

    /// A user certificate `name@relay` of organisation `org`.
    pub(crate) fn user(&self, org: &str, name: &str, relay: &str, clearance: &str) -> Leaf {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            format!("kring:user:{name}@{relay}").try_into().unwrap(),
        )];
        p.extended_key_usages = vec![Eku::ClientAuth];
        self.leaf(p, org, name, clearance)
    }

    /// An org-admin `name@relay` of organisation `org`.
    pub(crate) fn admin(&self, org: &str, name: &str, relay: &str) -> Leaf {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            format!("kring:user:{name}@{relay}").try_into().unwrap(),
        )];
        p.extended_key_usages = vec![Eku::ClientAuth];
        let roles = [kring_protocol::identity::ROLE_ORG_ADMIN.to_string()];
        self.leaf_with_roles(p, org, name, "NL:STG-GEHEIM", &roles)
    }

    /// A relay certificate.
    pub(crate) fn relay(&self, org: &str, id: &str, accreditation: &str) -> Leaf {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![
            SanType::URI(format!("kring:relay:{id}").try_into().unwrap()),
            SanType::DnsName(format!("{id}.relay.kring").try_into().unwrap()),
        ];
        p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        self.leaf(p, org, id, accreditation)
    }

    /// Writes a profile directory for `leaf` as `user` at `relay_id` under `dir`.
    pub(crate) fn profile(&self, dir: &Path, user: &str, relay_id: &str, leaf: &Leaf) -> PathBuf {
        let p = dir.join(user);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("user.crt"), &leaf.chain_pem).unwrap();
        std::fs::write(p.join("user.key"), leaf.key.serialize_pem()).unwrap();
        std::fs::write(p.join("root.crt"), &self.root_pem).unwrap();
        std::fs::write(
            p.join("profile.toml"),
            format!(
                "user = \"{user}\"\nrelay = \"127.0.0.1:9\"\nrelay_id = \"{relay_id}\"\n\
                 cert = \"user.crt\"\nkey = \"user.key\"\ntrust_anchors = \"root.crt\"\n\
                 state_dir = \"state\"\npassphrase_file = \"passphrase\"\n"
            ),
        )
        .unwrap();
        std::fs::write(p.join("passphrase"), "test passphrase\n").unwrap();
        p
    }
}
