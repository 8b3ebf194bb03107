//! What to put in a user or relay certificate ([`UserSpec`], [`RelaySpec`]), and the
//! deliberately unusual certificates tests ask for ([`Quirk`]).

use super::*;

/// A deliberate deviation from the Kring certificate profile, for testing that
/// verifiers refuse such certificates. Each names the check that must catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Quirk {
    /// A normal certificate.
    #[default]
    None,
    /// Validity ended one day before the PKI's `now` (`verify_chain`: `Expired`).
    Expired,
    /// Validity starts one day after the PKI's `now` (`verify_chain`: `NotYetValid`).
    NotYetValid,
    /// Signed by an organisation CA (same O) under a root outside the federation;
    /// the chain carries that foreign CA (`verify_chain`: `UnknownIssuer`).
    ForeignCa,
    /// No Clearance attribute, even if the spec has one (`from_der`: `clearance: None`).
    NoClearance,
    /// The Clearance attribute holds bad DER (`from_der`: `BadClearance`).
    MalformedClearance,
    /// Users only: a user identity issued with the relay profile, i.e. with
    /// serverAuth and a DNS SAN (`from_der`: `EkuForbidden`).
    RelayAsUser,
    /// Relays only: a relay identity issued with the user profile, i.e. clientAuth
    /// only and no DNS SAN (`from_der`: `EkuMissing` serverAuth).
    UserAsRelay,
    /// Users: the URI SAN names another user than the CN (`from_der`: `NameMismatch`).
    /// Relays: the DNS SAN names another relay (`from_der`: `DnsSanMismatch`).
    WrongSan,
    /// No `kring:` URI SAN (`from_der`: `MissingSan`).
    NoUriSan,
    /// No organisation (O) in the subject (`from_der`: `MissingOrganisation`).
    NoOrganisation,
}

impl Quirk {
    /// Every quirk, for exhaustive tests.
    pub const ALL: [Quirk; 11] = [
        Quirk::None,
        Quirk::Expired,
        Quirk::NotYetValid,
        Quirk::ForeignCa,
        Quirk::NoClearance,
        Quirk::MalformedClearance,
        Quirk::RelayAsUser,
        Quirk::UserAsRelay,
        Quirk::WrongSan,
        Quirk::NoUriSan,
        Quirk::NoOrganisation,
    ];

    /// The quirk's name (as in the source).
    pub fn name(self) -> &'static str {
        match self {
            Quirk::None => "None",
            Quirk::Expired => "Expired",
            Quirk::NotYetValid => "NotYetValid",
            Quirk::ForeignCa => "ForeignCa",
            Quirk::NoClearance => "NoClearance",
            Quirk::MalformedClearance => "MalformedClearance",
            Quirk::RelayAsUser => "RelayAsUser",
            Quirk::UserAsRelay => "UserAsRelay",
            Quirk::WrongSan => "WrongSan",
            Quirk::NoUriSan => "NoUriSan",
            Quirk::NoOrganisation => "NoOrganisation",
        }
    }

    /// Whether the quirk applies to certificates of `kind`.
    pub fn applies_to(self, kind: IdentityKind) -> bool {
        match self {
            Quirk::RelayAsUser => kind == IdentityKind::User,
            Quirk::UserAsRelay => kind == IdentityKind::Relay,
            _ => true,
        }
    }
}

impl fmt::Display for Quirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to put in a user certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// User name (CN), e.g. `analist`.
    pub name: String,
    /// Home relay id, e.g. `post-a`.
    pub relay: String,
    /// Organisation id (O); its CA signs the certificate.
    pub organisation: String,
    /// The clearance, if any.
    pub clearance: Option<Clearance>,
    /// Roles, e.g. `org-admin`.
    pub roles: Vec<String>,
    /// Validity; `None` = [`Validity::days_from`]`(now, `[`USER_DAYS`]`)`.
    pub validity: Option<Validity>,
    /// A deliberate deviation, for tests.
    pub quirk: Quirk,
}

impl UserSpec {
    /// A user `name@relay` of `organisation`, without clearance or roles.
    pub fn new(name: &str, relay: &str, organisation: &str) -> UserSpec {
        UserSpec {
            name: name.to_string(),
            relay: relay.to_string(),
            organisation: organisation.to_string(),
            clearance: None,
            roles: Vec::new(),
            validity: None,
            quirk: Quirk::None,
        }
    }

    /// Sets the clearance.
    pub fn with_clearance(mut self, clearance: Clearance) -> UserSpec {
        self.clearance = Some(clearance);
        self
    }

    /// Adds a role.
    pub fn with_role(mut self, role: &str) -> UserSpec {
        self.roles.push(role.to_string());
        self
    }

    /// Sets the validity window.
    pub fn with_validity(mut self, validity: Validity) -> UserSpec {
        self.validity = Some(validity);
        self
    }

    /// Sets a quirk.
    pub fn with_quirk(mut self, quirk: Quirk) -> UserSpec {
        self.quirk = quirk;
        self
    }

    /// `name@relay`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.relay)
    }
}

/// What to put in a relay certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    /// Relay id (CN, `kring:relay:ID`, DNS `ID.relay.kring`), e.g. `bz`.
    pub id: String,
    /// Organisation id (O); its CA signs the certificate.
    pub organisation: String,
    /// The accreditation (carried as a Clearance attribute), if any.
    pub accreditation: Option<Clearance>,
    /// Validity; `None` = [`Validity::days_from`]`(now, `[`RELAY_DAYS`]`)`.
    pub validity: Option<Validity>,
    /// A deliberate deviation, for tests.
    pub quirk: Quirk,
}

impl RelaySpec {
    /// A relay `id` of `organisation`, without accreditation.
    pub fn new(id: &str, organisation: &str) -> RelaySpec {
        RelaySpec {
            id: id.to_string(),
            organisation: organisation.to_string(),
            accreditation: None,
            validity: None,
            quirk: Quirk::None,
        }
    }

    /// Sets the accreditation.
    pub fn with_accreditation(mut self, accreditation: Clearance) -> RelaySpec {
        self.accreditation = Some(accreditation);
        self
    }

    /// Sets the validity window.
    pub fn with_validity(mut self, validity: Validity) -> RelaySpec {
        self.validity = Some(validity);
        self
    }

    /// Sets a quirk.
    pub fn with_quirk(mut self, quirk: Quirk) -> RelaySpec {
        self.quirk = quirk;
        self
    }
}
