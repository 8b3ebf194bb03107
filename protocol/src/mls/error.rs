//! The single error type of the MLS glue.

use thiserror::Error;

/// Everything that can go wrong in the MLS glue.
///
/// Variants say what went wrong and, where there is one, what the caller can do about
/// it. Errors never carry secret material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MlsError {
    /// An input exceeds the bound this module accepts; nothing was parsed.
    #[error("{what} is {len} bytes, at most {max} are accepted")]
    TooLarge {
        /// What was too large (e.g. "handshake message").
        what: &'static str,
        /// Its size in bytes (or count, for lists).
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes that do not decode as what they claim to be.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The message was made for another epoch than the group's current one. For a
    /// refused commit: process the commits of the newer epochs first, then rebuild
    /// and resend.
    #[error(
        "message is for epoch {message_epoch} but the group is at epoch {current}; \
         process the newer commits first and retry"
    )]
    WrongEpoch {
        /// The group's current epoch.
        current: u64,
        /// The epoch the message was made for.
        message_epoch: u64,
    },
    /// The message belongs to another MLS group (community).
    #[error("message belongs to group {got:?}, not to {expected:?}")]
    WrongGroup {
        /// This group's id (the community id).
        expected: String,
        /// The group id found in the message (lossy UTF-8).
        got: String,
    },
    /// A credential (X.509 chain + signature key) was refused by the
    /// [`CredentialValidator`](super::CredentialValidator) or is not a well-formed
    /// Kring credential.
    #[error("invalid credential: {0}")]
    InvalidCredential(String),
    /// The named member is not in the community.
    #[error("{0} is not a member of this community")]
    NotMember(String),
    /// The named member is already in the community (or named twice in one request).
    #[error("{0} is already a member of this community")]
    AlreadyMember(String),
    /// The operation needs a community admin and the named member is not one.
    #[error("{0} is not an admin of this community")]
    NotAdmin(String),
    /// The operation is not allowed in a Kring community (e.g. external commits,
    /// standalone proposals from members, changing the maximum label).
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The community metadata group-context extension is missing or invalid.
    #[error("invalid community metadata: {0}")]
    InvalidMeta(String),
    /// A signature, tag or MLS validity check failed: the message was altered, is not
    /// from who it claims, or does not fit the group state.
    #[error("MLS verification failed: {0}")]
    Verification(String),
    /// This client was removed from the community; its group state is read-only.
    #[error("this device is no longer a member of the community")]
    Evicted,
    /// Proposals (e.g. removals by the hub) are pending; commit them first with
    /// `commit_pending_proposals`.
    #[error("pending proposals must be committed before sending application messages")]
    PendingProposals,
    /// A commit of this client awaits the hub's verdict; call `commit_accepted` or
    /// `commit_refused` first.
    #[error("a commit of this device is still pending at the hub")]
    PendingCommit,
    /// `commit_accepted`/`commit_refused` was called without a pending commit.
    #[error("no commit of this device is pending")]
    NoPendingCommit,
    /// The envelope a message travels in (e.g. a log entry's epoch or label) says
    /// something else than the message itself.
    #[error("the envelope does not match its MLS message: {0}")]
    EnvelopeMismatch(String),
    /// The storage provider failed.
    #[error("MLS storage error: {0}")]
    Storage(String),
    /// Signing or another local cryptographic operation failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
    /// An unexpected internal openmls error (a bug, not bad input).
    #[error("internal MLS error: {0}")]
    Internal(String),
    /// A commit leaves out removals the hub relay proposed in this epoch (named
    /// here). Every commit must include them; the member to be removed cannot
    /// commit at all. Process the hub's proposals, then commit them
    /// (`commit_pending_proposals`).
    #[error(
        "the commit leaves out the hub's pending removal of {0}; sync, then commit the \
         pending proposals"
    )]
    UncommittedRemovals(String),
}

impl MlsError {
    /// Shorthand for [`MlsError::Malformed`].
    pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Self::Malformed {
            what,
            reason: reason.to_string(),
        }
    }

    /// Returns [`MlsError::TooLarge`] if `len > max`.
    pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), Self> {
        if len > max {
            Err(Self::TooLarge { what, len, max })
        } else {
            Ok(())
        }
    }
}
