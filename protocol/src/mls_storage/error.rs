//! Errors of the MLS storage provider.

/// What went wrong when openmls read or wrote its state through
/// [`KvStorage`](super::KvStorage).
///
/// openmls surfaces this error from every group operation that touches storage
/// (creating, joining, loading a group, processing or creating messages).
#[derive(Debug, thiserror::Error)]
pub enum MlsStorageError {
    /// The key-value backend failed.
    #[error(
        "the MLS state store failed to {operation}: {source}; check that the database \
         is available, writable and not full, then retry"
    )]
    Backend {
        /// The operation that failed (`read`, `write`, `delete` or `write batch`).
        operation: &'static str,
        /// The backend's own error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A key (JSON) or value (MessagePack) could not be encoded.
    #[error("could not encode the {what} for the MLS state store: {source}")]
    Encode {
        /// The kind of entry (its storage label).
        what: &'static str,
        /// The encoder's error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A stored value does not decode to the type openmls expects.
    #[error(
        "the stored {what} is corrupt or was written by an incompatible version and \
         cannot be decoded ({source}); restore the MLS state from a backup or leave and \
         rejoin the affected group"
    )]
    Decode {
        /// The kind of entry (its storage label).
        what: &'static str,
        /// The decoder's error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// An encoded key is longer than [`MAX_KEY_LEN`](super::MAX_KEY_LEN).
    #[error(
        "the key of a {what} is {len} bytes, over the MLS state store's limit of {max} \
         bytes; the group or key identifier is unreasonably long"
    )]
    KeyTooLarge {
        /// The kind of entry (its storage label).
        what: &'static str,
        /// The encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// An encoded or stored value is longer than
    /// [`MAX_VALUE_LEN`](super::MAX_VALUE_LEN).
    #[error(
        "the {what} is {len} bytes, over the MLS state store's limit of {max} bytes; \
         the group is too large for this store"
    )]
    ValueTooLarge {
        /// The kind of entry (its storage label).
        what: &'static str,
        /// The encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A list-valued entry (proposal queue, own leaf nodes) is full.
    #[error(
        "the {what} list already holds {max} entries, the MLS state store's limit; \
         commit or clear the pending proposals of the group before adding more"
    )]
    ListFull {
        /// The kind of entry (its storage label).
        what: &'static str,
        /// The limit ([`MAX_LIST_LEN`](super::MAX_LIST_LEN)).
        max: usize,
    },

    /// Entries that must exist together do not (for example a queued proposal
    /// reference without its proposal).
    #[error(
        "the MLS state store is inconsistent: {detail}; restore the MLS state from a \
         backup or leave and rejoin the affected group"
    )]
    Inconsistent {
        /// What is missing.
        detail: &'static str,
    },
}

impl MlsStorageError {
    /// Wraps a backend error that happened during `operation`.
    pub(super) fn backend<E>(operation: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::Backend {
            operation,
            source: Box::new(source),
        }
    }
}
