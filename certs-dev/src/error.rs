//! The one error type of the development PKI.

use std::path::PathBuf;

use kring_protocol::identity::IdentityError;

/// Everything that can go wrong while minting certificates or writing a federation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// `init --out DIR` where DIR already holds something.
    #[error(
        "{} already exists and is not empty; pass --force to replace its ca/, orgs/, relays/ \
         and users/ (this destroys that federation's keys and relay data), or choose another \
         directory",
        dir.display()
    )]
    OutputNotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A path that must be a directory is something else.
    #[error("{} exists but is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot write", ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what the PKI wrote.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A command-line or API argument is invalid.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A clearance label did not parse.
    #[error("invalid clearance {label:?}: {reason}")]
    BadClearance {
        /// The label as given.
        label: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The requested organisation has no CA in this PKI.
    #[error("organisation {org:?} has no CA in this PKI; add it first")]
    UnknownOrganisation {
        /// The organisation id.
        org: String,
    },
    /// The requested relay does not exist in the federation directory.
    #[error("relay {relay:?} does not exist in {} (no relays/{relay}/relay.toml)", dir.display())]
    UnknownRelay {
        /// The relay id.
        relay: String,
        /// The federation directory.
        dir: PathBuf,
    },
    /// The user has no profile directory in the federation directory.
    #[error("user {user:?} does not exist in {} (no users/{user}/ directory)", dir.display())]
    UnknownUser {
        /// The user id.
        user: String,
        /// The federation directory.
        dir: PathBuf,
    },
    /// A freshly signed CRL failed its own verification (a bug or a damaged
    /// federation directory).
    #[error("self-check of {what} failed: {reason}")]
    CrlCheck {
        /// What was checked.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The user already has a profile directory.
    #[error("{} already exists; pass --force to replace that user's certificate and key", dir.display())]
    UserExists {
        /// The profile directory.
        dir: PathBuf,
    },
    /// A certificate signing request cannot be certified.
    #[error("the certificate signing request cannot be used: {reason}")]
    BadCsr {
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate signing request names another organisation than the one of the
    /// user's home relay.
    #[error(
        "the request of {user} names organisation {requested:?}, but its home relay \
         belongs to {organisation:?}; only that organisation's CA certifies its users"
    )]
    OrganisationMismatch {
        /// `NAME@RELAY`.
        user: String,
        /// The O of the request.
        requested: String,
        /// The home relay's organisation.
        organisation: String,
    },
    /// An output file already exists.
    #[error("{} already exists; remove it or choose another --out", path.display())]
    OutputExists {
        /// The file.
        path: PathBuf,
    },
    /// A quirk was requested for a kind of certificate it does not apply to.
    #[error("quirk {quirk} does not apply to a {kind} certificate")]
    QuirkNotApplicable {
        /// The quirk.
        quirk: &'static str,
        /// `user` or `relay`.
        kind: &'static str,
    },
    /// A CA private key does not belong to its certificate.
    #[error("{}: the private key does not match the CA certificate next to it", path.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
    },
    /// rcgen refused to build a certificate, key or CRL.
    #[error("cannot create {what}: {reason}")]
    Generate {
        /// What was being created.
        what: String,
        /// rcgen's explanation.
        reason: String,
    },
    /// Clearance or roles cannot be encoded, or a certificate does not read back.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A freshly minted certificate failed its own verification (a bug or a
    /// damaged federation directory).
    #[error("self-check of {what} failed: {source}")]
    SelfCheck {
        /// What was checked.
        what: String,
        /// Why it failed.
        #[source]
        source: IdentityError,
    },
}

impl CertsError {
    /// The process exit code for this error: 2 for usage errors (bad arguments,
    /// refusing to overwrite), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::OutputNotEmpty { .. }
            | Self::InvalidArgument { .. }
            | Self::BadClearance { .. }
            | Self::UnknownRelay { .. }
            | Self::UnknownUser { .. }
            | Self::UserExists { .. }
            | Self::BadCsr { .. }
            | Self::OrganisationMismatch { .. }
            | Self::OutputExists { .. }
            | Self::NotADirectory { .. } => 2,
            _ => 1,
        }
    }
}

pub(crate) fn generate(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |e| CertsError::Generate {
        what,
        reason: e.to_string(),
    }
}
