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
    /// The store failed (disk full, corruption, …). The relay stops serving writes.
    #[error("store: {0}")]
    Store(String),
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
        RelayError::Store(e.to_string())
    }
}
