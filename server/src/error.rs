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
    /// Writing to disk (fsync) failed; every write waiting for it fails alike and
    /// shares the one error.
    #[error("flush to disk failed: {0}")]
    Flush(std::sync::Arc<RelayError>),
    /// The store's writer has shut down (the relay is stopping).
    #[error("the store is shut down")]
    ShutDown,
    /// A flush of the store panicked; nothing it covered is acknowledged, and the
    /// next commit tries again. Restart the relay if it persists.
    #[error(
        "a flush of the store panicked (see the relay's log); restart the relay if it persists"
    )]
    FlushPanicked,
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
    /// The store's journal cannot be read or written.
    #[error("cannot read or write the store's journal {}: {source}", path.display())]
    Journal {
        /// The journal file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A journal record other than the last is damaged: the store cannot be
    /// brought up to date from it.
    #[error(
        "the store's journal {} is corrupt at byte {offset} ({reason}); restore the relay from a backup",
        path.display()
    )]
    JournalCorrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The journal does not continue where the store's engine, or its own previous
    /// whole record, stopped.
    #[error(
        "the store's journal {} continues at batch {found}, expected batch {expected}; restore the relay from a backup",
        path.display()
    )]
    JournalGap {
        /// The journal file.
        path: PathBuf,
        /// The batch the engine needs next.
        expected: u64,
        /// The batch the journal holds instead.
        found: u64,
    },
    /// An earlier journal write or sync failed, so what reached the disk is unknown.
    #[error(
        "an earlier write of the store's journal failed; nothing more is acknowledged until the relay restarts (it replays the journal)"
    )]
    JournalFailed,
    /// A write failed in a test's fault injection.
    #[cfg(test)]
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

/// Why a relay does not take what a peer sent it about a community: an entry of the
/// community's log from its hub, or a report that a later hop refused a notice.
/// Answered to the peer (an entry's refusal goes back toward the filer) and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRefusal {
    /// The entry's envelope names another community than the log it came in.
    #[error("entry {seq} of {community} names community {named}")]
    OtherCommunity {
        /// The entry's place in the log.
        seq: u64,
        /// The log it came in.
        community: String,
        /// The community the envelope names.
        named: String,
    },
    /// The entry's envelope names another place in the log.
    #[error("entry {seq} of {community} names seq {named}")]
    OtherSeq {
        /// The entry's place in the log.
        seq: u64,
        /// The log it came in.
        community: String,
        /// The seq the envelope names.
        named: u64,
    },
    /// The MLS message inside does not say what the envelope says.
    #[error("entry {seq} of {community}: {error}")]
    Message {
        /// The entry's place in the log.
        seq: u64,
        /// The log it came in.
        community: String,
        /// What is wrong with the message.
        error: kring_protocol::mls::MlsError,
    },
    /// A handshake of an epoch other than the one the community is at here.
    #[error("a handshake of epoch {epoch}, but the community is at epoch {held} here")]
    HandshakeEpoch {
        /// The handshake's epoch.
        epoch: u64,
        /// The epoch held here.
        held: u64,
    },
    /// A handshake the hub says leaves the community at an epoch it cannot lead to.
    #[error("a handshake of epoch {epoch} said to leave the community at epoch {after}")]
    HandshakeLeads {
        /// The handshake's epoch.
        epoch: u64,
        /// The epoch the hub says follows.
        after: u64,
    },
    /// A notice of an epoch the community has not reached.
    #[error("a notice of epoch {epoch}, but the community is at epoch {current}")]
    NoticeEpoch {
        /// The notice's epoch.
        epoch: u64,
        /// The community's epoch.
        current: u64,
    },
    /// The hub registers more communities here than any hub may.
    #[error("relay {hub} already hubs {count} communities known here (limit {limit})")]
    TooManyCommunities {
        /// The hub.
        hub: String,
        /// Communities it has registered here.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The hub makes a user of this relay a member of more of its communities than
    /// any hub may.
    #[error(
        "relay {hub} already made {user} a member of {count} of its communities ({community} refused) (limit {limit})"
    )]
    TooManyForUser {
        /// The hub.
        hub: String,
        /// The user of this relay.
        user: String,
        /// Communities of the hub the user is a member of.
        count: u64,
        /// The community refused.
        community: String,
        /// The limit.
        limit: u64,
    },
    /// A refusal report about a notice that neither was filed nor ordered here.
    #[error("the notice was not filed here, nor ordered here (its hub is {hub})")]
    NotOurs {
        /// The notice's hub.
        hub: String,
    },
    /// A refusal report from a relay the notice did not go to from here.
    #[error("the notice went from here to its hub {hub}, not to relay {peer}")]
    NotSentThere {
        /// The notice's hub.
        hub: String,
        /// The reporting peer.
        peer: String,
    },
    /// A refusal report about a notice the hub has not ordered.
    #[error("the notice was not ordered, so it went to no relay")]
    NotOrdered,
    /// A peer reporting another hop's refusal than its own.
    #[error("relay {peer} may only report its own refusal ({own_hop})")]
    NotOwnHop {
        /// The reporting peer.
        peer: String,
        /// The hop it may report.
        own_hop: String,
    },
    /// A refusal report from a relay with no member in the community.
    #[error("relay {peer} has no member in {community}, the notice did not go there")]
    NoMemberThere {
        /// The reporting peer.
        peer: String,
        /// The community.
        community: String,
    },
    /// A community's retention period from a relay that is not its hub.
    #[error("relay {peer} sent the retention period of {community}, whose hub it is not")]
    RetentionNotFromHub {
        /// The sending peer.
        peer: String,
        /// The community.
        community: String,
    },
    /// A retention period of zero or above the most a community may keep.
    #[error("retention period of {secs} s for {community} is out of bounds")]
    RetentionOutOfBounds {
        /// The period announced.
        secs: u64,
        /// The community.
        community: String,
    },
    /// A retention period for a community this relay does not hold.
    #[error("retention period for {community}, which this relay does not hold")]
    RetentionUnknownCommunity {
        /// The community.
        community: String,
    },
    /// A retention period other than the one the community was created with.
    #[error(
        "relay {peer} announced a retention period of {announced} for {community}, \
         which keeps log entries {held} since it was created"
    )]
    RetentionChanged {
        /// The sending peer.
        peer: String,
        /// The community.
        community: String,
        /// The period announced, as people read it.
        announced: String,
        /// The period held, as people read it.
        held: String,
    },
}

/// Why a peer's connection is not taken as the relay it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    /// The TLS peer presented no certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// Its certificate is refused (chain, trust map, revocation).
    #[error("{0}")]
    Refused(ErrorCode),
    /// It is a relay this relay has no `[[peers]]` entry for.
    #[error("relay {0} is not a configured peer")]
    NotAPeer(String),
    /// The relay dialled answered with another relay's certificate.
    #[error("dialled {expected} but the certificate is for relay {got}")]
    WrongRelay {
        /// The peer dialled.
        expected: String,
        /// The relay its certificate names.
        got: String,
    },
}

/// Why a reload (SIGHUP, `kring-relay reload`) changed nothing: the relay keeps
/// running as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file cannot be read or is not valid.
    #[error("the configuration is not valid, nothing changed: {0}")]
    Invalid(RelayError),
    /// It changes what only a restart can change (each named with old → new).
    #[error("{} changed: that needs a restart (nothing was changed)", .0.join(", "))]
    NeedsRestart(Vec<String>),
    /// The new certificate or key cannot be used.
    #[error("the new certificate cannot be used: {0}")]
    Certificate(RelayError),
    /// A new or changed peer cannot be set up.
    #[error("peer {peer}: {error}")]
    Peer {
        /// The peer's id.
        peer: String,
        /// What went wrong.
        error: RelayError,
    },
    /// The relay is stopping or does not take reloads.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// What is wrong with a relay's configured key, accreditation or limits (reported
/// as [`RelayError::Config`] with the file it is in).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// The key file holds no Ed25519 PKCS#8 key.
    #[error("the private key is not a valid Ed25519 PKCS#8 key")]
    KeyNotEd25519,
    /// The key is not the certificate's.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// A configured accreditation above the certificate's.
    #[error("configured accreditation {lowered} would raise the certificate's {granted}")]
    AccreditationRaises {
        /// The configured accreditation.
        lowered: String,
        /// The certificate's.
        granted: String,
    },
    /// A configured accreditation with tag values the certificate does not hold.
    #[error(
        "configured accreditation {lowered} holds {tag} values the certificate's {granted} does not"
    )]
    AccreditationAddsTags {
        /// The configured accreditation.
        lowered: String,
        /// The tag.
        tag: String,
        /// The certificate's.
        granted: String,
    },
    /// `max_frame` out of range.
    #[error(
        "max_frame must be between {min} bytes (the largest notice with its envelope, in one \
         federation delivery) and 64 MiB"
    )]
    MaxFrame {
        /// The smallest allowed.
        min: usize,
    },
    /// A connection or rate limit of zero.
    #[error("max_connections and requests_per_second must be positive")]
    NotPositive,
    /// `max_connections_per_identity` out of range.
    #[error("max_connections_per_identity must be between 1 and max_connections ({max})")]
    ConnectionsPerIdentity {
        /// `max_connections`.
        max: usize,
    },
    /// `request_bytes_per_identity` out of range.
    #[error(
        "request_bytes_per_identity must be between max_frame ({max_frame}) and {max} (1 GiB): \
         a request of max_frame bytes must fit"
    )]
    RequestBytes {
        /// `max_frame`.
        max_frame: usize,
        /// The largest allowed.
        max: usize,
    },
    /// `frame_timeout_ms` out of range.
    #[error("frame_timeout_ms must be between {min} and {max}")]
    FrameTimeout {
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
}

/// A file given on the command line that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// It is not what it must be.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}
