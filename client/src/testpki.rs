//! A small test federation for the client's unit tests (tests only): a thin
//! adapter over the development PKI of `kring-certs-dev` (one root, one
//! organisation CA, relay and user certificates of Kring's certificate profile),
//! with profile directories for the users.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use kring_certs_dev::{IssuedCert, Pki, RelaySpec, UserSpec};
use kring_policy::Clearance;
use rcgen::KeyPair;

pub(crate) struct Leaf {
    pub(crate) chain: Vec<Vec<u8>>,
    pub(crate) chain_pem: String,
    pub(crate) key: KeyPair,
}

impl From<IssuedCert> for Leaf {
    fn from(issued: IssuedCert) -> Leaf {
        Leaf {
            key: KeyPair::from_pem(&issued.key_pem).unwrap(),
            chain: issued.chain_der,
            chain_pem: issued.chain_pem,
        }
    }
}

pub(crate) struct Fed {
    pub(crate) root_der: Vec<u8>,
    pub(crate) root_pem: String,
    pki: Pki,
}

impl Fed {
    /// A root and the organisation CA of `org`.
    pub(crate) fn new(org: &str) -> Fed {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut pki = Pki::new(now).unwrap();
        pki.add_organisation(org).unwrap();
        Fed {
            root_der: pki.root().cert_der().to_vec(),
            root_pem: pki.root().cert_pem().to_string(),
            pki,
        }
    }

    /// A user certificate `name@relay` of organisation `org`.
    pub(crate) fn user(&self, org: &str, name: &str, relay: &str, clearance: &str) -> Leaf {
        let spec =
            UserSpec::new(name, relay, org).with_clearance(Clearance::from_str(clearance).unwrap());
        self.pki.issue_user(&spec).unwrap().into()
    }

    /// An org-admin `name@relay` of organisation `org`.
    pub(crate) fn admin(&self, org: &str, name: &str, relay: &str) -> Leaf {
        let spec = UserSpec::new(name, relay, org)
            .with_clearance(Clearance::from_str("NL:STG-GEHEIM").unwrap())
            .with_role(kring_protocol::identity::ROLE_ORG_ADMIN);
        self.pki.issue_user(&spec).unwrap().into()
    }

    /// A relay certificate.
    pub(crate) fn relay(&self, org: &str, id: &str, accreditation: &str) -> Leaf {
        let spec =
            RelaySpec::new(id, org).with_accreditation(Clearance::from_str(accreditation).unwrap());
        self.pki.issue_relay(&spec).unwrap().into()
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
