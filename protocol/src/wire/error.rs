//! What goes wrong: [`WireError`] for framing and decoding, [`ErrorCode`] for the
//! typed refusals a relay answers with.

use serde::{Deserialize, Serialize};

use super::PROTOCOL_VERSION;

/// Errors of this module: framing and message decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame is longer than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes follow a complete message inside its frame.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got}; this build speaks version {PROTOCOL_VERSION}")]
    Version {
        /// Version the peer sent.
        got: u16,
    },
    /// A field is outside its bounds or has an invalid form.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Typed refusals a client can act on. Never carries internal detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    /// Refused by label policy.
    #[error("refused by policy: {reason}")]
    PolicyDenied {
        /// Human-readable reason.
        reason: String,
    },
    /// The caller (or the named user) is not a member of the community.
    #[error("not a member of the community")]
    NotMember,
    /// Only community admins may do this.
    #[error("only community admins may do this")]
    NotAdmin,
    /// The message was for an old epoch; sync and retry.
    #[error("the community has moved on to epoch {current}; sync and retry")]
    WrongEpoch {
        /// The community's current epoch.
        current: u64,
    },
    /// The caller is not authenticated (or not as the right kind of identity).
    #[error("not authenticated: {reason}")]
    Unauthenticated {
        /// What was missing or wrong.
        reason: String,
    },
    /// The caller's certificate has been revoked.
    #[error("certificate revoked")]
    Revoked,
    /// The user has no key package left; they must run `kring keys publish`.
    #[error("no key package left for {user}; they must run `kring keys publish`")]
    KeyMaterialExhausted {
        /// The user.
        user: String,
    },
    /// The request or a field is larger than allowed.
    #[error("too large: {what}")]
    TooLarge {
        /// What was too large.
        what: String,
    },
    /// Too many requests; retry later.
    #[error("rate limited; retry in {retry_after_ms} ms")]
    RateLimited {
        /// Suggested wait.
        retry_after_ms: u64,
    },
    /// The request was malformed.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What was wrong.
        reason: String,
    },
    /// The thing asked for does not exist (or is not visible to the caller).
    #[error("not found: {what}")]
    NotFound {
        /// What was not found.
        what: String,
    },
    /// A relay on the path (e.g. the hub) cannot be reached right now.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Which relay and why.
        reason: String,
    },
    /// The relay failed internally; details are in the relay's log only.
    #[error("internal relay error")]
    Internal,
    /// A forwarded request (a commit sent on to the community's hub) reached the
    /// next relay, but its answer did not come back in time: it may or may not have
    /// been applied. For a commit, keep it pending until the community log shows
    /// which commit won the epoch.
    #[error("outcome not known yet: {reason}")]
    OutcomeUnknown {
        /// Which relay did not answer, and why.
        reason: String,
    },
}

impl ErrorCode {
    /// The code's name, without its detail: a fixed set of words (for metrics labels,
    /// logs and file names).
    pub fn name(&self) -> &'static str {
        match self {
            ErrorCode::PolicyDenied { .. } => "policy-denied",
            ErrorCode::NotMember => "not-member",
            ErrorCode::NotAdmin => "not-admin",
            ErrorCode::WrongEpoch { .. } => "wrong-epoch",
            ErrorCode::Unauthenticated { .. } => "unauthenticated",
            ErrorCode::Revoked => "revoked",
            ErrorCode::KeyMaterialExhausted { .. } => "key-material-exhausted",
            ErrorCode::TooLarge { .. } => "too-large",
            ErrorCode::RateLimited { .. } => "rate-limited",
            ErrorCode::BadRequest { .. } => "bad-request",
            ErrorCode::NotFound { .. } => "not-found",
            ErrorCode::Unavailable { .. } => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::OutcomeUnknown { .. } => "outcome-unknown",
        }
    }
}
