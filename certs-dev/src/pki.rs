//! Minting Kring certificates: a federation root CA, organisation CAs, and relay
//! and user certificates (Ed25519, rcgen with ring), including deliberately
//! unusual certificates for tests ([`Quirk`]).

use std::collections::BTreeMap;
use std::fmt;

use kring_policy::Clearance;
use kring_protocol::identity::{
    self, IdentityKind, OID_SUBJECT_DIRECTORY_ATTRIBUTES, RELAY_DNS_SUFFIX, RELAY_URI_PREFIX,
    USER_URI_PREFIX,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::error::{CertsError, generate};

mod crl;
mod spec;

pub use crl::{CrlEntry, SignedCrl};
use crl::{revocation_reason, time_at};
pub use spec::*;

/// One hour, in seconds.
pub const HOUR: i64 = 3_600;
/// One day, in seconds.
pub const DAY: i64 = 86_400;
/// Default lifetime of user certificates (days).
pub const USER_DAYS: i64 = 365;
/// Default lifetime of relay certificates (days).
pub const RELAY_DAYS: i64 = 730;
/// Lifetime of organisation CA certificates (days).
pub const ORG_CA_DAYS: i64 = 3_650;
/// Lifetime of the root CA certificate (days).
pub const ROOT_DAYS: i64 = 7_305;
/// Subject O of the federation root CA.
pub const ROOT_ORGANISATION: &str = "kring-federation";

/// A validity window in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second of validity.
    pub not_before: i64,
    /// Last second of validity.
    pub not_after: i64,
}

impl Validity {
    /// From one hour before `now` (tolerating clock skew) to `days` days after it.
    pub fn days_from(now: i64, days: i64) -> Validity {
        Validity {
            not_before: now - HOUR,
            not_after: now + days * DAY,
        }
    }
}

/// A minted end-entity certificate with its key and chain.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The intended identity (`NAME@RELAY` or `RELAY`).
    pub identity: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 v1 PEM (RFC 5208, as OpenSSL writes it); empty for
    /// a certificate of a key the PKI never had ([`Pki::certify_user`]).
    pub key_pem: String,
    /// The chain, leaf first, then the issuing organisation CA (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// The same chain as concatenated PEM (what `user.crt` / `relay.crt` hold).
    pub chain_pem: String,
    /// The serial number bytes (as in CRLs).
    pub serial: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

/// A certificate authority: its certificate and signing key.
pub struct Authority {
    name: String,
    cert_der: Vec<u8>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The organisation id this CA serves (or [`ROOT_ORGANISATION`] for the root).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM (v1 for a CA this PKI created; a loaded
    /// CA keeps the form it was read in).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Loads a CA from its certificate and PKCS#8 key (PEM), checking that the key
    /// belongs to the certificate. `name` is the organisation id it serves.
    ///
    /// # Errors
    /// [`CertsError::BadFile`] for unreadable PEM, [`CertsError::KeyMismatch`] when
    /// the key is not the certificate's.
    pub fn load(name: &str, cert_pem: &str, key_pem: &str) -> Result<Authority, CertsError> {
        let bad = |reason: String| CertsError::BadFile {
            path: format!("CA certificate of {name}").into(),
            reason,
        };
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| bad(format!("private key is not PKCS#8 PEM: {e}")))?;
        let certs =
            identity::certificates_from_pem(cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let [cert_der] = certs.as_slice() else {
            return Err(bad(format!(
                "expected exactly one certificate, found {}",
                certs.len()
            )));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
        if !parsed.is_ca() {
            return Err(bad("certificate is not a CA certificate".to_string()));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertsError::KeyMismatch {
                path: format!("CA key of {name}").into(),
            });
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| bad(format!("cannot use the certificate as issuer: {e}")))?;
        Ok(Authority {
            name: name.to_string(),
            cert_der: cert_der.clone(),
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// Creates a CRL signed by this CA, revoking the given serial numbers
    /// (key compromise), valid from `this_update` until `next_update` (unix seconds).
    ///
    /// # Errors
    /// [`CertsError::Generate`] if rcgen refuses (e.g. `next_update <= this_update`).
    pub fn crl(
        &self,
        revoked_serials: &[Vec<u8>],
        crl_number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<Vec<u8>, CertsError> {
        let entries: Vec<CrlEntry> = revoked_serials
            .iter()
            .map(|s| CrlEntry::key_compromise(s.clone(), this_update))
            .collect();
        Ok(self
            .signed_crl(&entries, crl_number, this_update, next_update)?
            .der()
            .to_vec())
    }

    /// Creates a CRL signed by this CA with the given entries (each keeps its own
    /// revocation time and reason code), as DER and PEM (`-----BEGIN X509 CRL-----`).
    ///
    /// # Errors
    /// [`CertsError::Generate`] if rcgen refuses (e.g. `next_update <= this_update`),
    /// [`CertsError::InvalidArgument`] for an unrepresentable time or reason code.
    pub fn crl_with_entries(
        &self,
        entries: &[CrlEntry],
        crl_number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<SignedCrl, CertsError> {
        let crl = self.signed_crl(entries, crl_number, this_update, next_update)?;
        let pem = crl
            .pem()
            .map_err(generate(format!("PEM of the CRL of {}", self.name)))?;
        Ok(SignedCrl {
            der: crl.der().to_vec(),
            pem,
        })
    }

    fn signed_crl(
        &self,
        entries: &[CrlEntry],
        crl_number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<rcgen::CertificateRevocationList, CertsError> {
        if next_update <= this_update {
            return Err(CertsError::Generate {
                what: format!("CRL of {}", self.name),
                reason: "nextUpdate must be later than thisUpdate".to_string(),
            });
        }
        let params = CertificateRevocationListParams {
            this_update: time_at(this_update)?,
            next_update: time_at(next_update)?,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|e| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&e.serial),
                        revocation_time: time_at(e.revoked_at)?,
                        reason_code: e.reason_code.map(revocation_reason).transpose()?,
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, CertsError>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(generate(format!("CRL of {}", self.name)))
    }
}

/// The DER bytes before the 32-byte seed in an RFC 5208 (PKCS#8 v1) Ed25519
/// PrivateKeyInfo: SEQUENCE { INTEGER 0, AlgorithmIdentifier { id-Ed25519 },
/// OCTET STRING { OCTET STRING seed } } (RFC 8410 section 7), 48 bytes in all.
pub const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The PKCS#8 v1 document of an Ed25519 private key seed. OpenSSL 3.0 reads only
/// this form (not the v2 form with the public key that ring generates); every
/// reader of Kring keys accepts both.
pub fn ed25519_pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = Vec::with_capacity(ED25519_PKCS8_V1_PREFIX.len() + seed.len());
    der.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
    der.extend_from_slice(seed);
    der
}

/// A fresh Ed25519 key whose PEM ([`KeyPair::serialize_pem`]) is PKCS#8 v1.
fn new_key() -> Result<KeyPair, CertsError> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| CertsError::Generate {
            what: "Ed25519 key".to_string(),
            reason: "the system random number generator failed".to_string(),
        })?;
    let der = ed25519_pkcs8_v1(&seed);
    seed.fill(0);
    KeyPair::try_from(der.as_slice()).map_err(generate("Ed25519 key"))
}

/// A random positive 16-byte serial number (first byte 0x01..=0x7F, so that its
/// DER INTEGER encoding is exactly these bytes).
fn random_serial() -> Result<Vec<u8>, CertsError> {
    let mut bytes = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertsError::Generate {
            what: "serial number".to_string(),
            reason: "the system random number generator failed".to_string(),
        })?;
    bytes[0] = (bytes[0] & 0x7F).max(1);
    Ok(bytes)
}

fn ca_params(
    cn: &str,
    org: &str,
    validity: Validity,
    path_len: u8,
) -> Result<CertificateParams, CertsError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time_at(validity.not_before)?;
    p.not_after = time_at(validity.not_after)?;
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn new_root(cn: &str, now: i64) -> Result<Authority, CertsError> {
    let key = new_key()?;
    let params = ca_params(
        cn,
        ROOT_ORGANISATION,
        Validity::days_from(now, ROOT_DAYS),
        1,
    )?;
    let cert = params.self_signed(&key).map_err(generate("root CA"))?;
    Ok(Authority {
        name: ROOT_ORGANISATION.to_string(),
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

fn new_org_ca(root: &Authority, cn: &str, org: &str, now: i64) -> Result<Authority, CertsError> {
    identity::validate_organisation(org)?;
    let key = new_key()?;
    let params = ca_params(cn, org, Validity::days_from(now, ORG_CA_DAYS), 0)?;
    let cert = params
        .signed_by(&key, &root.issuer)
        .map_err(generate(format!("organisation CA {org}")))?;
    Ok(Authority {
        name: org.to_string(),
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

fn uri(s: String) -> Result<SanType, CertsError> {
    s.clone()
        .try_into()
        .map(SanType::URI)
        .map_err(|_| CertsError::InvalidArgument {
            what: "subjectAltName",
            reason: format!("{s:?} is not IA5 (ASCII)"),
        })
}

fn dns(s: String) -> Result<SanType, CertsError> {
    s.clone()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| CertsError::InvalidArgument {
            what: "subjectAltName",
            reason: format!("{s:?} is not IA5 (ASCII)"),
        })
}

/// A subjectDirectoryAttributes value whose Clearance attribute holds bad DER: a
/// `Clearance` SEQUENCE whose policyId declares 5 content bytes but holds 1.
fn malformed_clearance_extension() -> Vec<u8> {
    let clearance_value: &[u8] = &[0x30, 0x03, 0x06, 0x05, 0x2B];
    let mut attribute = vec![0x06, 0x03, 0x55, 0x04, 0x37]; // OID 2.5.4.55
    attribute.push(0x31); // SET OF
    attribute.push(clearance_value.len() as u8);
    attribute.extend_from_slice(clearance_value);
    let mut attr_seq = vec![0x30, attribute.len() as u8];
    attr_seq.extend(attribute);
    let mut out = vec![0x30, attr_seq.len() as u8];
    out.extend(attr_seq);
    out
}

/// An Ed25519 public key held by someone else (from a certificate signing request).
struct Ed25519PublicKey([u8; 32]);

impl rcgen::PublicKeyData for Ed25519PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// The pieces of an end-entity certificate shared by users and relays.
struct Leaf<'a> {
    kind: IdentityKind,
    cn: &'a str,
    organisation: &'a str,
    uri: String,
    dns: Option<String>,
    clearance: Option<&'a Clearance>,
    roles: &'a [String],
    validity: Validity,
    quirk: Quirk,
}

/// The federation PKI: a root CA and one CA per organisation.
#[derive(Debug)]
pub struct Pki {
    now: i64,
    root: Authority,
    orgs: BTreeMap<String, Authority>,
}

impl Pki {
    /// A new PKI with a fresh root CA (`CN=Kring federation root CA`,
    /// `O=kring-federation`); `now` (unix seconds) anchors every default validity.
    ///
    /// # Errors
    /// [`CertsError::Generate`] if key or certificate generation fails.
    pub fn new(now: i64) -> Result<Pki, CertsError> {
        Ok(Pki {
            now,
            root: new_root("Kring federation root CA", now)?,
            orgs: BTreeMap::new(),
        })
    }

    /// A PKI around existing CAs (e.g. loaded with [`Authority::load`]).
    pub fn from_authorities(now: i64, root: Authority, orgs: Vec<Authority>) -> Pki {
        Pki {
            now,
            root,
            orgs: orgs.into_iter().map(|a| (a.name.clone(), a)).collect(),
        }
    }

    /// The time defaults are computed from (unix seconds).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The root CA.
    pub fn root(&self) -> &Authority {
        &self.root
    }

    /// The root certificate as the single trust anchor (DER), for `verify_chain`.
    pub fn anchors(&self) -> Vec<Vec<u8>> {
        vec![self.root.cert_der.clone()]
    }

    /// Adds (or replaces) the CA of organisation `org` (`CN=Kring organisation CA
    /// ORG`, `O=ORG`, path length 0), signed by the root.
    ///
    /// # Errors
    /// [`CertsError::Identity`] for an invalid organisation id; [`CertsError::Generate`].
    pub fn add_organisation(&mut self, org: &str) -> Result<&Authority, CertsError> {
        let ca = new_org_ca(
            &self.root,
            &format!("Kring organisation CA {org}"),
            org,
            self.now,
        )?;
        self.orgs.insert(org.to_string(), ca);
        self.orgs
            .get(org)
            .ok_or_else(|| CertsError::UnknownOrganisation {
                org: org.to_string(),
            })
    }

    /// The CA of organisation `org`.
    pub fn organisation(&self, org: &str) -> Option<&Authority> {
        self.orgs.get(org)
    }

    /// The organisation ids, sorted.
    pub fn organisations(&self) -> impl Iterator<Item = &str> {
        self.orgs.keys().map(String::as_str)
    }

    /// Issues a user certificate signed by the CA of `spec.organisation`.
    ///
    /// # Errors
    /// [`CertsError::UnknownOrganisation`], [`CertsError::QuirkNotApplicable`],
    /// [`CertsError::Identity`] for invalid names, clearance or roles,
    /// [`CertsError::Generate`].
    pub fn issue_user(&self, spec: &UserSpec) -> Result<IssuedCert, CertsError> {
        identity::validate_user_name(&spec.name)?;
        identity::validate_relay_id(&spec.relay)?;
        let mut leaf = Leaf {
            kind: IdentityKind::User,
            cn: &spec.name,
            organisation: &spec.organisation,
            uri: format!("{USER_URI_PREFIX}{}", spec.id()),
            dns: None,
            clearance: spec.clearance.as_ref(),
            roles: &spec.roles,
            validity: spec
                .validity
                .unwrap_or_else(|| Validity::days_from(self.now, USER_DAYS)),
            quirk: spec.quirk,
        };
        if spec.quirk == Quirk::WrongSan {
            leaf.uri = format!("{USER_URI_PREFIX}someone-else@{}", spec.relay);
        }
        if spec.quirk == Quirk::RelayAsUser {
            leaf.dns = Some(format!("{}{RELAY_DNS_SUFFIX}", spec.relay));
        }
        self.issue(&leaf, spec.id(), None)
    }

    /// Issues a user certificate for a key the user holds (from a certificate
    /// signing request: [`crate::read_csr`]), signed by the CA of
    /// `spec.organisation`. The returned [`IssuedCert::key_pem`] is empty: the
    /// private key never leaves the user's device.
    ///
    /// # Errors
    /// As [`Pki::issue_user`].
    pub fn certify_user(
        &self,
        spec: &UserSpec,
        public_key: &[u8; 32],
    ) -> Result<IssuedCert, CertsError> {
        identity::validate_user_name(&spec.name)?;
        identity::validate_relay_id(&spec.relay)?;
        let leaf = Leaf {
            kind: IdentityKind::User,
            cn: &spec.name,
            organisation: &spec.organisation,
            uri: format!("{USER_URI_PREFIX}{}", spec.id()),
            dns: None,
            clearance: spec.clearance.as_ref(),
            roles: &spec.roles,
            validity: spec
                .validity
                .unwrap_or_else(|| Validity::days_from(self.now, USER_DAYS)),
            quirk: Quirk::None,
        };
        self.issue(&leaf, spec.id(), Some(&Ed25519PublicKey(*public_key)))
    }

    /// Issues a relay certificate signed by the CA of `spec.organisation`.
    ///
    /// # Errors
    /// As [`Pki::issue_user`].
    pub fn issue_relay(&self, spec: &RelaySpec) -> Result<IssuedCert, CertsError> {
        identity::validate_relay_id(&spec.id)?;
        let mut leaf = Leaf {
            kind: IdentityKind::Relay,
            cn: &spec.id,
            organisation: &spec.organisation,
            uri: format!("{RELAY_URI_PREFIX}{}", spec.id),
            dns: Some(format!("{}{RELAY_DNS_SUFFIX}", spec.id)),
            clearance: spec.accreditation.as_ref(),
            roles: &[],
            validity: spec
                .validity
                .unwrap_or_else(|| Validity::days_from(self.now, RELAY_DAYS)),
            quirk: spec.quirk,
        };
        match spec.quirk {
            Quirk::WrongSan => leaf.dns = Some(format!("not-{}{RELAY_DNS_SUFFIX}", spec.id)),
            Quirk::UserAsRelay => leaf.dns = None,
            _ => {}
        }
        self.issue(&leaf, spec.id.clone(), None)
    }

    /// Issues the certificate of `leaf` for `subject_key`, or for a fresh key
    /// (returned in [`IssuedCert::key_pem`]) when that is `None`.
    fn issue(
        &self,
        leaf: &Leaf<'_>,
        identity: String,
        subject_key: Option<&Ed25519PublicKey>,
    ) -> Result<IssuedCert, CertsError> {
        if !leaf.quirk.applies_to(leaf.kind) {
            return Err(CertsError::QuirkNotApplicable {
                quirk: leaf.quirk.name(),
                kind: match leaf.kind {
                    IdentityKind::User => "user",
                    IdentityKind::Relay => "relay",
                },
            });
        }
        identity::validate_organisation(leaf.organisation)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.cn);
        if leaf.quirk != Quirk::NoOrganisation {
            dn.push(DnType::OrganizationName, leaf.organisation);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = Vec::new();
        if leaf.quirk != Quirk::NoUriSan {
            p.subject_alt_names.push(uri(leaf.uri.clone())?);
        }
        if let Some(d) = &leaf.dns {
            p.subject_alt_names.push(dns(d.clone())?);
        }
        let relay_profile = match leaf.kind {
            IdentityKind::Relay => leaf.quirk != Quirk::UserAsRelay,
            IdentityKind::User => leaf.quirk == Quirk::RelayAsUser,
        };
        p.extended_key_usages = if relay_profile {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let validity = match leaf.quirk {
            Quirk::Expired => Validity {
                not_before: self.now - 2 * DAY,
                not_after: self.now - DAY,
            },
            Quirk::NotYetValid => Validity {
                not_before: self.now + DAY,
                not_after: self.now + 366 * DAY,
            },
            _ => leaf.validity,
        };
        if validity.not_after <= validity.not_before {
            return Err(CertsError::InvalidArgument {
                what: "validity",
                reason: "not_after must be later than not_before".to_string(),
            });
        }
        p.not_before = time_at(validity.not_before)?;
        p.not_after = time_at(validity.not_after)?;
        let serial = random_serial()?;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.use_authority_key_identifier_extension = true;
        let sda = match leaf.quirk {
            Quirk::MalformedClearance => Some(malformed_clearance_extension()),
            Quirk::NoClearance => identity::encode_subject_directory_attributes(None, leaf.roles)?,
            _ => identity::encode_subject_directory_attributes(leaf.clearance, leaf.roles)?,
        };
        if let Some(value) = sda {
            p.custom_extensions.push(CustomExtension::from_oid_content(
                &OID_SUBJECT_DIRECTORY_ATTRIBUTES,
                value,
            ));
        }

        let foreign;
        let ca = if leaf.quirk == Quirk::ForeignCa {
            let root = new_root("Foreign root CA", self.now)?;
            foreign = new_org_ca(
                &root,
                &format!("Foreign organisation CA {}", leaf.organisation),
                leaf.organisation,
                self.now,
            )?;
            &foreign
        } else {
            self.orgs
                .get(leaf.organisation)
                .ok_or_else(|| CertsError::UnknownOrganisation {
                    org: leaf.organisation.to_string(),
                })?
        };
        let (cert, key_pem) = match subject_key {
            Some(given) => (p.signed_by(given, &ca.issuer), String::new()),
            None => {
                let key = new_key()?;
                (p.signed_by(&key, &ca.issuer), key.serialize_pem())
            }
        };
        let cert = cert.map_err(generate(format!("certificate for {identity}")))?;
        let cert_pem = cert.pem();
        Ok(IssuedCert {
            identity,
            cert_der: cert.der().to_vec(),
            chain_der: vec![cert.der().to_vec(), ca.cert_der.clone()],
            chain_pem: format!("{cert_pem}{}", ca.cert_pem),
            cert_pem,
            key_pem,
            serial,
        })
    }
}
