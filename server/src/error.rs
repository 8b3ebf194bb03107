//! The relay's error type.

use std::path::PathBuf;

use kring_protocol::wire::ErrorCode;

/// Everything that can go wrong inside a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The configuration is invalid; the message names the file and the problem.
    #[error("configuration {}: {reason}", path.display())]
    Config {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// TLS or QUIC setup failed.
    #[error("TLS/QUIC setup: {0}")]
    Tls(String),
    /// The store failed (disk full, I/O, …). The relay stops serving writes.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The relay's own certificate or key cannot sign audit checkpoints or MLS
    /// proposals: check `cert` and `key` in the configuration.
    #[error("the relay's {what}: {reason}")]
    OwnIdentity {
        /// What was being set up (e.g. "checkpoint key").
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The MLS layer failed on the relay's stored group state (not a refusal of the
    /// peer's request).
    #[error("MLS state: {0}")]
    Mls(kring_protocol::mls::MlsError),
    /// A peer relay answered a federation call with a different kind of answer.
    #[error("relay {peer} answered {request} with something else")]
    UnexpectedAnswer {
        /// The peer.
        peer: String,
        /// The request's kind.
        request: &'static str,
    },
    /// The restore state of the data directory forbids starting or continuing.
    #[error("restore: {0}")]
    Restore(&'static str),
    /// A lock was poisoned: a task panicked while holding it. Restart the relay.
    #[error("the {0} lock is poisoned (a task panicked while holding it); restart the relay")]
    Poisoned(&'static str),
    /// A background task of the relay failed.
    #[error("relay task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A stored record could not be decoded: the store is corrupt or from a newer version.
    #[error("corrupt store record {key}: {reason}")]
    Corrupt {
        /// Key of the bad record.
        key: String,
        /// Decoder message.
        reason: String,
    },
    /// Binding or socket I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A request was refused; the code goes back to the peer.
    #[error("refused: {0}")]
    Refused(ErrorCode),
}

impl RelayError {
    /// The code sent to the peer: refusals as they are, everything else as `Internal`
    /// (details stay in the relay's log).
    pub fn to_code(&self) -> ErrorCode {
        match self {
            RelayError::Refused(code) => code.clone(),
            _ => ErrorCode::Internal,
        }
    }
}

impl From<ErrorCode> for RelayError {
    fn from(code: ErrorCode) -> Self {
        RelayError::Refused(code)
    }
}

impl From<sled::Error> for RelayError {
    fn from(e: sled::Error) -> Self {
        RelayError::Store(StoreError::Engine(e))
    }
}

/// What went wrong in the relay's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O error, disk full, corruption it detected).
    #[error("{0}")]
    Engine(#[from] sled::Error),
    /// The data directory cannot be created: check its parent's permissions.
    #[error("cannot create data directory {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store cannot be opened (another relay may be running on it).
    #[error("cannot open store in {}: {source}", dir.display())]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// A record cannot be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(#[from] postcard::Error),
    /// Writing to disk (fsync) failed; every write waiting for it fails alike, so
    /// the engine's message is shared as text.
    #[error("flush to disk failed: {0}")]
    Flush(String),
    /// The store's writer has shut down (the relay is stopping).
    #[error("the store is shut down")]
    ShutDown,
    /// A community's MLS group state is missing.
    #[error("community {0} has no group state")]
    NoGroupState(String),
    /// A commit verified for one community was to be merged into another.
    #[error("a commit verified for community {verified} cannot be merged into {into}")]
    WrongCommunity {
        /// The community it was verified for.
        verified: String,
        /// The community it was to be merged into.
        into: String,
    },
    /// More of something than one record can count.
    #[error("{count} {what} in one record")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// The audit log's certificate history is full.
    #[error("the audit certificate history holds {0} certificates already")]
    CertHistoryFull(usize),
    /// A write failed in a test's fault injection.
    #[cfg(test)]
    #[error("injected fault: {0}")]
    Injected(&'static str),
}
