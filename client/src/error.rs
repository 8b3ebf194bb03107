//! The client's single error type and its mapping to the documented exit codes (README.md).

use kring_protocol::wire::{ErrorCode, WireError};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: any failure without a more specific code.
pub const EXIT_OTHER: i32 = 1;
/// Exit code: bad usage (unknown command, bad flag, unparsable input).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: refused by label policy (at any hop).
pub const EXIT_POLICY: i32 = 3;
/// Exit code: authentication or authorisation failure.
pub const EXIT_AUTH: i32 = 4;
/// Exit code: the relay cannot be reached, timed out or reported a hop unavailable.
pub const EXIT_UNREACHABLE: i32 = 5;

/// Everything that can go wrong in the client. Every message says what went wrong and,
/// where there is one, what the user can do about it; none carries notice content.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line or an input value is wrong.
    #[error("{0}")]
    Usage(String),

    /// No profile was named.
    #[error("no profile given; pass --profile DIR or set KRING_PROFILE")]
    NoProfile,

    /// The profile directory or one of the files it names cannot be used.
    #[error("profile {path}: {reason}")]
    Profile {
        /// The file or directory concerned.
        path: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },

    /// The label or clearance text does not parse.
    #[error("invalid {what}: {reason}")]
    InvalidLabel {
        /// "label", "clearance" or "maximum label".
        what: &'static str,
        /// The parser's explanation.
        reason: String,
    },

    /// Refused by label policy on this device (before anything was sent) or on receipt.
    #[error("refused by policy: {0}")]
    PolicyDenied(String),

    /// Authentication or authorisation failed locally (e.g. not an admin of the group,
    /// the relay's certificate was rejected).
    #[error("{0}")]
    Auth(String),

    /// The relay cannot be reached or did not answer in time.
    #[error("relay {relay} unreachable: {reason}")]
    Unreachable {
        /// The relay id and address.
        relay: String,
        /// What happened (timeout, connection refused, connection lost...).
        reason: String,
    },

    /// The community's hub is another relay and the home relay could not reach it in
    /// time; a commit sent to it was not applied (and has been discarded on this
    /// device, so the command can simply be run again).
    #[error(
        "hub {hub} of {community} unreachable: {reason}; the change was not made, \
         run the command again when the hub is reachable"
    )]
    HubUnreachable {
        /// The hub relay.
        hub: String,
        /// The community.
        community: String,
        /// What the home relay reported.
        reason: String,
    },

    /// A commit of this device reached (or may have reached) the community's hub, but
    /// its answer did not come back: the hub may still order it. The commit is kept
    /// on this device until the community log shows whether it won its epoch (a
    /// later sync settles it; running the command again first sends the same commit
    /// again).
    #[error(
        "the outcome of the change to {community} is not known yet: {reason}; \
         run `kring community members {community}` later to see whether it was made \
         (it syncs first; running the command again sends the same change once more)"
    )]
    CommitOutcomeUnknown {
        /// The community.
        community: String,
        /// What happened.
        reason: String,
    },

    /// A hop (relay or link) on a filed notice's path refused it; the notice is
    /// withheld from that hop on.
    #[error("refused by {hop}: {reason}")]
    RefusedAtHop {
        /// The relay or link that refused it.
        hop: String,
        /// Why.
        reason: String,
    },

    /// The relay answered with a refusal.
    #[error("the relay refused the request: {0}")]
    Relay(ErrorCode),

    /// The relay sent something this client does not understand.
    #[error("protocol error talking to the relay: {0}")]
    Protocol(String),

    /// The MLS layer failed.
    #[error("{0}")]
    Mls(#[from] kring_protocol::mls::MlsError),

    /// The local state store failed.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),

    /// The thing asked for does not exist locally.
    #[error("{0}")]
    NotFound(String),

    /// A local file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's or parser's explanation.
        reason: String,
    },

    /// The operation is not implemented in this version.
    #[error("{0} is not yet available in this version of kring")]
    NotYetAvailable(&'static str),

    /// The home relay refused this device as revoked and handed over an org-admin's
    /// order to wipe it (`kring admin revoke --wipe`); the device checks it before
    /// acting on it.
    #[error("this device's certificate is revoked, and an org-admin ordered this device wiped")]
    WipeOrdered(Box<kring_protocol::revocation::WipeOrder>),
}

impl ClientError {
    /// The process exit code for this error: 2 usage, 3 policy, 4
    /// authentication/authorisation, 5 unreachable/timeout, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_)
            | ClientError::NoProfile
            | ClientError::InvalidLabel { .. }
            | ClientError::NotYetAvailable(_) => EXIT_USAGE,
            ClientError::PolicyDenied(_) | ClientError::RefusedAtHop { .. } => EXIT_POLICY,
            ClientError::Auth(_) | ClientError::WipeOrdered(_) => EXIT_AUTH,
            ClientError::Unreachable { .. }
            | ClientError::HubUnreachable { .. }
            | ClientError::CommitOutcomeUnknown { .. } => EXIT_UNREACHABLE,
            ClientError::Relay(code) => relay_exit_code(code),
            ClientError::Mls(e) => mls_exit_code(e),
            ClientError::Profile { .. }
            | ClientError::Protocol(_)
            | ClientError::Store(_)
            | ClientError::NotFound(_)
            | ClientError::Io { .. } => EXIT_OTHER,
        }
    }

    /// The error for a relay's refusal of a handshake in `community`: a hub the home
    /// relay could not reach ([`ErrorCode::Unavailable`]) becomes
    /// [`ClientError::HubUnreachable`], a hub whose answer did not come back
    /// ([`ErrorCode::OutcomeUnknown`]) [`ClientError::CommitOutcomeUnknown`],
    /// anything else [`ClientError::Relay`].
    pub fn handshake_refused(community: &str, code: ErrorCode) -> Self {
        match code {
            ErrorCode::Unavailable { reason } => ClientError::HubUnreachable {
                hub: crate::ids::hub_of(community).to_string(),
                community: community.to_string(),
                reason,
            },
            ErrorCode::OutcomeUnknown { reason } => ClientError::CommitOutcomeUnknown {
                community: community.to_string(),
                reason,
            },
            other => ClientError::Relay(other),
        }
    }

    /// Shorthand for an I/O error on `path`.
    pub(crate) fn io(path: impl AsRef<std::path::Path>, reason: impl ToString) -> Self {
        ClientError::Io {
            path: path.as_ref().display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Exit code for a relay's typed refusal.
pub fn relay_exit_code(code: &ErrorCode) -> i32 {
    match code {
        ErrorCode::PolicyDenied { .. } => EXIT_POLICY,
        ErrorCode::NotMember
        | ErrorCode::NotAdmin
        | ErrorCode::Unauthenticated { .. }
        | ErrorCode::Revoked => EXIT_AUTH,
        ErrorCode::Unavailable { .. } | ErrorCode::OutcomeUnknown { .. } => EXIT_UNREACHABLE,
        ErrorCode::WrongEpoch { .. }
        | ErrorCode::KeyMaterialExhausted { .. }
        | ErrorCode::TooLarge { .. }
        | ErrorCode::RateLimited { .. }
        | ErrorCode::BadRequest { .. }
        | ErrorCode::NotFound { .. }
        | ErrorCode::Internal => EXIT_OTHER,
    }
}

fn mls_exit_code(e: &kring_protocol::mls::MlsError) -> i32 {
    use kring_protocol::mls::MlsError;
    match e {
        MlsError::NotAdmin(_) | MlsError::Evicted | MlsError::InvalidCredential(_) => EXIT_AUTH,
        _ => EXIT_OTHER,
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_codes_map_to_documented_exit_codes() {
        let cases = [
            (ErrorCode::PolicyDenied { reason: "x".into() }, 3),
            (ErrorCode::NotMember, 4),
            (ErrorCode::NotAdmin, 4),
            (ErrorCode::Unauthenticated { reason: "x".into() }, 4),
            (ErrorCode::Revoked, 4),
            (
                ErrorCode::Unavailable {
                    reason: "hub".into(),
                },
                5,
            ),
            (ErrorCode::WrongEpoch { current: 3 }, 1),
            (ErrorCode::Internal, 1),
            (
                ErrorCode::NotFound {
                    what: "notice".into(),
                },
                1,
            ),
        ];
        for (code, want) in cases {
            assert_eq!(
                ClientError::Relay(code.clone()).exit_code(),
                want,
                "{code:?}"
            );
        }
    }

    #[test]
    fn local_errors_map_to_documented_exit_codes() {
        assert_eq!(ClientError::Usage("x".into()).exit_code(), 2);
        assert_eq!(ClientError::NoProfile.exit_code(), 2);
        assert_eq!(
            ClientError::InvalidLabel {
                what: "label",
                reason: "x".into()
            }
            .exit_code(),
            2
        );
        assert_eq!(ClientError::PolicyDenied("x".into()).exit_code(), 3);
        assert_eq!(ClientError::Auth("x".into()).exit_code(), 4);
        assert_eq!(
            ClientError::Unreachable {
                relay: "bz".into(),
                reason: "timeout".into()
            }
            .exit_code(),
            5
        );
        assert_eq!(ClientError::Protocol("x".into()).exit_code(), 1);
        assert_eq!(ClientError::NotFound("x".into()).exit_code(), 1);
        assert_eq!(
            ClientError::NotYetAvailable("notice forward").exit_code(),
            2
        );
    }

    #[test]
    fn an_unreachable_hub_refusing_a_commit_is_exit_5_and_says_so() {
        let e = ClientError::handshake_refused(
            "desinformatie@bz",
            ErrorCode::Unavailable {
                reason: "no answer from bz within 10 s".into(),
            },
        );
        assert_eq!(e.exit_code(), 5);
        let msg = e.to_string();
        assert!(
            msg.starts_with("hub bz of desinformatie@bz unreachable: no answer from bz"),
            "{msg}"
        );
        assert!(msg.contains("run the command again"), "{msg}");
        let unknown = ClientError::handshake_refused(
            "desinformatie@bz",
            ErrorCode::OutcomeUnknown {
                reason: "hub bz did not answer within 10 s".into(),
            },
        );
        assert_eq!(unknown.exit_code(), 5);
        let msg = unknown.to_string();
        assert!(
            msg.starts_with("the outcome of the change to desinformatie@bz is not known yet"),
            "{msg}"
        );
        assert!(
            msg.contains("kring community members desinformatie@bz"),
            "{msg}"
        );
        let other = ClientError::handshake_refused("c@bz", ErrorCode::NotAdmin);
        assert!(matches!(other, ClientError::Relay(ErrorCode::NotAdmin)));
        assert_eq!(other.exit_code(), 4);
    }

    #[test]
    fn a_refusal_at_a_hop_is_a_policy_refusal() {
        let e = ClientError::RefusedAtHop {
            hop: "bz".into(),
            reason: "label above the community maximum".into(),
        };
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "refused by bz: label above the community maximum"
        );
    }

    #[test]
    fn messages_name_the_problem() {
        let e = ClientError::Relay(ErrorCode::NotAdmin);
        assert_eq!(
            e.to_string(),
            "the relay refused the request: only community admins may do this"
        );
        assert!(ClientError::NoProfile.to_string().contains("KRING_PROFILE"));
    }
}
