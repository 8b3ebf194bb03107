//! The client ↔ relay wire protocol (ALPN [`ALPN_CLIENT`]).
//!
//! # Transport
//! A client opens one QUIC connection (mutual TLS 1.3) to its home relay. Every request
//! travels on its own bidirectional stream: the client writes one [`Request`] frame and
//! finishes the stream; the relay answers with one [`Response`] frame. A
//! [`Request::Subscribe`] stream stays open instead: the relay writes a [`Push`] frame
//! for every log entry and welcome the device has not acknowledged yet, catch-up first,
//! then live.
//!
//! # Frames
//! A frame is a big-endian `u32` length followed by that many payload bytes; the payload
//! is a [`postcard`] encoding of a [`Versioned`] message. Decoding is strict: a length
//! above the configured maximum ([`DEFAULT_MAX_FRAME`] unless configured) is refused
//! before any allocation, trailing bytes after a message are refused, and every string
//! and list is checked against the bounds in [`limits`] by [`Validate`].
//!
//! This module does no I/O; [`FrameDecoder`] is a push-based decoder the async layers
//! (and the fuzz targets) feed with bytes.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::revocation::{RevocationStatement, WipeOrder};

/// ALPN protocol id for client ↔ relay connections.
pub const ALPN_CLIENT: &[u8] = b"kring/1";
/// ALPN protocol id for relay ↔ relay (federation) connections.
pub const ALPN_FEDERATION: &[u8] = b"kring-fed/1";
/// Version carried in every message; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Default maximum frame payload: 8 MiB. A Welcome into a community of N members
/// carries its ratchet tree (about 1 KiB per member), and an MLS message may be up
/// to `mls::MAX_MESSAGE_BYTES`; relays read a frame as it arrives, never allocating
/// what a header merely claims.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;

/// Bounds on individual fields, checked by [`Validate`] after decoding.
pub mod limits {
    /// Longest identity string (`NAME@RELAY`) or community id (`NAME@HUB`).
    pub const MAX_ID: usize = 128;
    /// Most key packages in one publish request.
    pub const MAX_KEY_PACKAGES_PER_PUBLISH: usize = 100;
    /// Longest free-text reason (refusals, revocation reasons).
    pub const MAX_REASON: usize = 1024;
    /// Most entries returned in one page.
    pub const MAX_PAGE: u32 = 1000;
    /// Most items in any listing.
    pub const MAX_LIST: usize = 10_000;
    /// Entries in one [`FedResponse::Log`](super::FedResponse::Log) page.
    pub const MAX_LOG_PAGE: usize = 256;
    /// Most notices in one [`Request::FileNotices`](super::Request::FileNotices).
    pub const MAX_NOTICES_PER_FILING: usize = 256;
    /// Most revocation statements in one [`TrustState`](super::TrustState).
    pub const MAX_STATEMENTS: usize = 4096;
    /// Most organisations a relay's organisation declares as its clients.
    pub const MAX_CLIENTS: usize = 256;
}

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

/// Opaque bytes (MLS messages, key packages, certificates).
pub type Bytes = Vec<u8>;

/// A message with the protocol version it was written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Always [`PROTOCOL_VERSION`] when written by this build.
    pub version: u16,
    /// The message.
    pub body: T,
}

/// Requests a client sends to its home relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Upload MLS key packages of the caller (consumed one per fetch); `last_resort`
    /// is kept and handed out when no other package remains.
    PublishKeyPackages {
        /// TLS-serialised `KeyPackage`s (as `MlsMessageOut` bytes).
        key_packages: Vec<Bytes>,
        /// Optional last-resort key package.
        #[serde(with = "serde_bytes")]
        last_resort: Option<Bytes>,
    },
    /// Take one key package of `user` (to add them to a community).
    FetchKeyPackage {
        /// `NAME@RELAY`.
        user: String,
    },
    /// Register a new community whose hub is this relay. The group was created by the
    /// caller; the relay checks the group context (id, maximum label, admins, external
    /// sender) and tracks it from now on.
    CreateCommunity {
        /// `NAME@HUB`, HUB being this relay.
        community: String,
        /// `MlsMessageOut` bytes of the GroupInfo.
        #[serde(with = "serde_bytes")]
        group_info: Bytes,
        /// TLS-serialised ratchet tree.
        #[serde(with = "serde_bytes")]
        ratchet_tree: Bytes,
    },
    /// A handshake message (commit or proposal, as PublicMessage) for a community.
    Handshake {
        /// Community id.
        community: String,
        /// `MlsMessageOut` bytes (PublicMessage).
        #[serde(with = "serde_bytes")]
        message: Bytes,
        /// Welcome for members the commit adds, if any.
        #[serde(with = "serde_bytes")]
        welcome: Option<Bytes>,
    },
    /// File a notice: an MLS application message whose authenticated data is the
    /// binary label.
    FileNotice {
        /// Community id.
        community: String,
        /// The notice id (also inside the ciphertext).
        notice_id: Uuid,
        /// `MlsMessageOut` bytes (PrivateMessage).
        #[serde(with = "serde_bytes")]
        message: Bytes,
    },
    /// Open the push channel for this device (the stream stays open).
    Subscribe,
    /// Acknowledge durable receipt of everything up to `seq` in `community`.
    Ack {
        /// Community id.
        community: String,
        /// Highest sequence number processed.
        seq: u64,
    },
    /// Acknowledge (and delete) a welcome delivered on the push channel.
    AckWelcome {
        /// Welcome id from [`Push::Welcome`].
        id: Uuid,
    },
    /// Communities the caller is a member of.
    ListCommunities,
    /// Members, admins, epoch and maximum label of a community (members only).
    CommunityInfo {
        /// Community id.
        community: String,
    },
    /// What the relays did with a notice the caller filed.
    NoticeStatus {
        /// Notice id.
        notice_id: Uuid,
    },
    /// The relay's audit log (org-admins of the relay's organisation only), records
    /// from `from` (1-based), at most `limit`; with `verify`, the whole hash chain is
    /// checked too.
    AuditLog {
        /// First record wanted.
        from: u64,
        /// Most records to return (capped at [`limits::MAX_PAGE`]).
        limit: u32,
        /// Check the whole chain.
        verify: bool,
    },
    /// Liveness check.
    Ping,
    /// Revoke a user of the caller's organisation (org-admins only): the statement is
    /// signed by the caller's certificate key, accepted by the user's home relay and
    /// spread to every relay of the federation.
    Revoke {
        /// The signed statement.
        statement: RevocationStatement,
    },
    // New variants go last: postcard numbers variants by position, and older
    // peers must keep decoding the ones they know.
    /// File several notices of one community at once, in this order: one atomic
    /// write and one fsync at the relay. Either all are accepted or none (the
    /// refusal names the notice). At most [`limits::MAX_NOTICES_PER_FILING`].
    FileNotices {
        /// Community id.
        community: String,
        /// The notices, in filing order.
        notices: Vec<NoticeUpload>,
    },
    /// What the home relay trusts, so that the device validates credentials as
    /// strictly as relays do: which organisation (and CA) may speak for which relay,
    /// and the revocations the relay holds.
    Trust,
    /// A head of the relay's audit log signed with the relay's certificate key
    /// (org-admins of the relay's organisation only), to keep outside the relay and
    /// verify the log against later: a cut or rewritten tail is then detected.
    AuditHead,
    /// The revocation statements the relay holds, in user-id order, one page at a
    /// time: those after `after` (from the first when `None`). A device pages
    /// through them all after [`Request::Trust`], whose statements are only the
    /// first page.
    TrustStatements {
        /// The last user id of the previous page.
        after: Option<String>,
    },
    /// The device's cursor in each of its communities (sent before
    /// [`Request::Subscribe`]). A relay restored from a backup learns from them how
    /// far its devices had got; it answers [`Response::Cursors`].
    Cursors {
        /// At most [`limits::MAX_LIST`] communities.
        cursors: Vec<LogMark>,
    },
    /// [`Request::Revoke`] with an order to wipe the revoked user's device (its
    /// private key and passphrase file besides its archive and MLS state): the
    /// user's home relay (which must be the caller's) keeps the order and hands it
    /// to the device with its refusal ([`Response::WipeOrdered`]).
    RevokeAndWipe {
        /// The signed statement.
        statement: RevocationStatement,
        /// The signed wipe order, for the same user and by the same org-admin.
        wipe: WipeOrder,
    },
    /// The organisations the home relay's organisation declares as its clients
    /// (`clients` in `relay.toml`): where the device may forward TLP:AMBER notices
    /// besides its own organisation. Answered with [`Response::DeclaredClients`].
    DeclaredClients,
}

/// A position in a community log: the community and a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMark {
    /// Community id.
    pub community: String,
    /// Sequence number.
    pub seq: u64,
}

/// One notice of a [`Request::FileNotices`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeUpload {
    /// The notice id (also inside the ciphertext).
    pub notice_id: Uuid,
    /// `MlsMessageOut` bytes (PrivateMessage).
    #[serde(with = "serde_bytes")]
    pub message: Bytes,
}

/// A relay's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request took effect (and is durable).
    Ok,
    /// Number of key packages now held for the caller.
    KeyPackagesStored {
        /// Packages held (not counting the last-resort one).
        count: u32,
    },
    /// A key package of the requested user.
    KeyPackage {
        /// `MlsMessageOut` bytes of the key package.
        #[serde(with = "serde_bytes")]
        key_package: Bytes,
    },
    /// A notice is durable at the filer's home relay and queued for the community's
    /// hub (another relay), which orders it. Poll [`Request::NoticeStatus`] for the
    /// hub's sequence number or refusals.
    Queued {
        /// The notice id.
        notice_id: Uuid,
        /// The hub relay that will order it.
        hub: String,
    },
    /// A handshake or notice was accepted and ordered.
    Accepted {
        /// Sequence number in the community log.
        seq: u64,
        /// Group epoch after the message (unchanged for notices).
        epoch: u64,
    },
    /// Answer to [`Request::ListCommunities`].
    Communities {
        /// Communities the caller belongs to.
        communities: Vec<CommunitySummary>,
    },
    /// Answer to [`Request::CommunityInfo`].
    Community(CommunitySummary),
    /// Answer to [`Request::NoticeStatus`].
    Status(NoticeStatus),
    /// Answer to [`Request::AuditLog`].
    AuditLog(AuditPage),
    /// Answer to [`Request::Ping`].
    Pong,
    /// The request was refused or failed.
    Error(ErrorCode),
    /// A revocation took effect at this relay (durable) and is on its way to `peers`.
    Revoked {
        /// The revoked user.
        user: String,
        /// Federation peers it was queued for.
        peers: Vec<String>,
        /// Communities hubbed here from which the user's removal is being proposed.
        removals: Vec<String>,
    },
    /// Answer to [`Request::FileNotices`]: every notice is durable at this relay.
    Filed {
        /// The community's hub.
        hub: String,
        /// The group epoch (unchanged by notices).
        epoch: u64,
        /// One per notice, in request order: its sequence number when this relay is
        /// the hub (ordered), `None` when it is queued for the hub.
        seqs: Vec<Option<u64>>,
    },
    /// Answer to [`Request::Trust`].
    Trust(TrustState),
    /// Answer to [`Request::AuditHead`].
    AuditHead(crate::audit::AuditHeadPage),
    /// Answer to [`Request::TrustStatements`]: at most
    /// [`limits::MAX_STATEMENTS`] statements.
    TrustStatements {
        /// Statements, in user-id order.
        statements: Vec<RevocationStatement>,
        /// Whether more follow (ask again with the last user id here).
        more: bool,
    },
    /// Answer to [`Request::Cursors`]: communities whose cursor the device must
    /// move back to `seq` (the relay was restored from a backup and numbered new
    /// entries after `seq` again; entries the device has already are skipped by
    /// notice id). Empty almost always.
    Cursors {
        /// At most [`limits::MAX_LIST`] communities.
        rewind: Vec<LogMark>,
    },
    /// The caller's identity is revoked and an org-admin ordered its device wiped
    /// (`kring admin revoke --wipe`): the refusal, in place of
    /// `Error(ErrorCode::Revoked)`, with the signed order for the device to check.
    WipeOrdered(WipeOrder),
    /// Answer to [`Request::DeclaredClients`].
    DeclaredClients {
        /// The relay's organisation.
        organisation: String,
        /// The organisations it declares as its clients (at most
        /// [`limits::MAX_CLIENTS`]).
        clients: Vec<String>,
    },
}

/// Answer to [`Request::Trust`]: the relay's trust configuration and revocations.
/// A device checks every statement and CRL itself before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustState {
    /// Who may speak for which relay (the relay itself and its configured peers).
    pub relays: Vec<TrustedRelay>,
    /// The first revocation statements the relay holds, in user-id order (at most
    /// [`limits::MAX_STATEMENTS`]); the rest through [`Request::TrustStatements`].
    pub statements: Vec<RevocationStatement>,
    /// The newest CRL of each issuing CA the relay holds, with that CA.
    pub crls: Vec<CrlCopy>,
}

/// One relay of a [`TrustState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedRelay {
    /// Relay id.
    pub relay: String,
    /// Its organisation.
    pub organisation: String,
    /// Its pinned CA, if any.
    pub ca: Option<crate::identity::CaFingerprint>,
}

/// A CRL and the organisation CA certificate that signed it (both DER).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlCopy {
    /// The CRL.
    #[serde(with = "serde_bytes")]
    pub crl: Bytes,
    /// The issuing organisation CA certificate.
    #[serde(with = "serde_bytes")]
    pub issuer: Bytes,
}

/// What a client knows about a community without decrypting anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunitySummary {
    /// `NAME@HUB`.
    pub id: String,
    /// Canonical text of the maximum label.
    pub max_label: String,
    /// Current MLS epoch at this relay.
    pub epoch: u64,
    /// Member ids (`NAME@RELAY`).
    pub members: Vec<String>,
    /// Community admins.
    pub admins: Vec<String>,
    /// Highest sequence number in the log.
    pub last_seq: u64,
}

/// A page of a relay's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// The relay.
    pub relay: String,
    /// Number of records in the log.
    pub total: u64,
    /// The records asked for.
    pub records: Vec<AuditRecordView>,
    /// The chain check, if asked for.
    pub verify: Option<AuditVerdict>,
}

/// One audit record as shown to an org-admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecordView {
    /// 1-based position.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// Category (`refusal`, `membership`, `withheld`, `admin`, `link`, `revocation`,
    /// `connection`).
    pub kind: String,
    /// Who acted.
    pub actor: String,
    /// What it concerned.
    pub subject: String,
    /// Action name.
    pub action: String,
    /// Reason or detail.
    pub detail: String,
    /// The record's chain hash (hex).
    pub hash: String,
}

/// The result of checking an audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerdict {
    /// Records checked.
    pub records: u64,
    /// The first bad record, if any.
    pub first_bad: Option<u64>,
    /// What is wrong with it.
    pub reason: Option<String>,
    /// Signed checkpoints whose relay signature verified.
    pub checkpoints: u64,
    /// Records after the last signed checkpoint (hash chain only).
    pub unsigned_tail: u64,
}

/// The fate of a filed notice as far as the relay knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeStatus {
    /// Notice id.
    pub notice_id: Uuid,
    /// Community id.
    pub community: String,
    /// Sequence number in the hub's log, once ordered.
    pub seq: Option<u64>,
    /// Refusals reported by any hop, with the hop's id and reason.
    pub refusals: Vec<HopRefusal>,
}

/// A refusal at one hop of a notice's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopRefusal {
    /// Relay or link that refused (e.g. `bz`, `bz->post-a`).
    pub hop: String,
    /// Why.
    pub reason: String,
}

/// Frames the relay writes on a [`Request::Subscribe`] stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// An entry of a community log, in sequence order.
    Entry(LogEntry),
    /// A Welcome into a community for this device.
    Welcome {
        /// Id to acknowledge with [`Request::AckWelcome`].
        id: Uuid,
        /// Community id.
        community: String,
        /// `MlsMessageOut` bytes of the Welcome.
        #[serde(with = "serde_bytes")]
        welcome: Bytes,
        /// Ratchet tree of the group at the welcome's epoch.
        #[serde(with = "serde_bytes")]
        ratchet_tree: Bytes,
    },
    /// Catch-up is complete: everything stored for this device up to now was sent.
    CaughtUp,
    /// The device's access ended (e.g. revocation); the relay closes the channel.
    Closed(ErrorCode),
}

/// One entry of a community log, as stored at a relay and pushed to devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Community id.
    pub community: String,
    /// Hub sequence number (1-based, gap-free).
    pub seq: u64,
    /// Sender identity as authenticated by its home relay.
    pub sender: String,
    /// Seconds since the Unix epoch when the hub ordered it.
    pub ordered_at: i64,
    /// What it is.
    pub kind: EntryKind,
    /// `MlsMessageOut` bytes.
    #[serde(with = "serde_bytes")]
    pub message: Bytes,
}

/// The kind of a [`LogEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A commit or proposal (PublicMessage) moving the group from `epoch`.
    Handshake {
        /// Epoch the message was sent in.
        epoch: u64,
    },
    /// An encrypted notice.
    Notice {
        /// Notice id.
        notice_id: Uuid,
        /// Binary label (also the MLS authenticated data).
        #[serde(with = "serde_bytes")]
        label: Bytes,
        /// Epoch the message was sent in.
        epoch: u64,
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

/// Requests one relay sends another over a federation link (ALPN
/// [`ALPN_FEDERATION`]). Same framing as client requests: one request per stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FedRequest {
    /// Durable items from the sender's outbox to this relay, in outbox order. The
    /// receiver applies each item exactly once (items at or below the last applied
    /// `seq` from this peer are skipped) and answers [`FedResponse::Ack`] once they
    /// are durable.
    Deliver {
        /// Items, ascending `seq`.
        items: Vec<FedItem>,
    },
    /// A member's handshake, forwarded by their home relay to the community's hub;
    /// the hub answers with its verdict (like [`Request::Handshake`]).
    Handshake {
        /// Community id (hubbed at the receiver).
        community: String,
        /// The member (a user of the sending relay).
        sender: String,
        /// `MlsMessageOut` bytes (PublicMessage).
        #[serde(with = "serde_bytes")]
        message: Bytes,
        /// Welcome for added members, if any.
        #[serde(with = "serde_bytes")]
        welcome: Option<Bytes>,
    },
    /// Take one key package of a user of the receiving relay.
    FetchKeyPackage {
        /// `NAME@RELAY` (RELAY = the receiver).
        user: String,
        /// Who asks (a user of the sending relay), for the audit log.
        requester: String,
    },
    /// From a relay restored from a backup: where does the receiver stand with it
    /// (answered with [`FedResponse::Whereabouts`]).
    Whereabouts,
    /// Entries of a community log after `after` (one page), from a relay that
    /// keeps a copy: asked by the community's hub after a restore, or by a member
    /// relay of its hub. Answered with [`FedResponse::Log`].
    FetchLog {
        /// Community id.
        community: String,
        /// Entries after this seq.
        after: u64,
    },
    /// From a relay restored from a backup: the revocation statements and CRLs the
    /// receiver holds (the asker may have applied some after its backup was taken,
    /// and acknowledged them, so no outbox sends them again). `after: None` is
    /// answered with [`Response::Trust`] (the first page of statements and every
    /// CRL), `Some(user)` with [`Response::TrustStatements`] (the page after that
    /// user), each inside [`FedResponse::Response`].
    Trust {
        /// The last user id of the previous page, if any.
        after: Option<String>,
    },
}

/// Answer to [`FedRequest::Whereabouts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whereabouts {
    /// The last item of the asker's outbox the receiver applied.
    pub applied: u64,
    /// The oldest item of the receiver's outbox to the asker not yet acknowledged.
    pub outbox_oldest: Option<u64>,
    /// The next seq of the receiver's outbox to the asker.
    pub outbox_next: u64,
    /// The last seq of every log the receiver keeps that the asker is the hub of,
    /// and of every log hubbed at the receiver the asker has members in (at most
    /// [`limits::MAX_LIST`]).
    pub logs: Vec<LogMark>,
}

/// Answers to [`FedRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FedResponse {
    /// Every item up to and including `upto` is durable (or was already applied).
    Ack {
        /// Highest item `seq` applied.
        upto: u64,
    },
    /// The answer to a forwarded handshake or key package fetch.
    Response(Response),
    /// Answer to [`FedRequest::Whereabouts`].
    Whereabouts(Whereabouts),
    /// Answer to [`FedRequest::FetchLog`]: at most [`limits::MAX_LOG_PAGE`]
    /// entries in seq order (withheld ones missing), the last seq of the log as
    /// the receiver holds it, and the community as it stands (when the receiver is
    /// its hub).
    Log {
        /// Entries after the asked seq.
        entries: Vec<LogEntry>,
        /// The log's last seq here.
        last_seq: u64,
        /// The community now (from its hub only).
        community: Option<CommunitySummary>,
    },
}

/// One item of a relay-to-relay outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FedItem {
    /// Position in the sender's outbox for this peer (1-based, gap-free).
    pub seq: u64,
    /// What it carries.
    pub body: FedBody,
}

/// The content of a [`FedItem`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FedBody {
    /// Home relay → hub: a notice filed by a user of the home relay.
    Notice {
        /// Community id.
        community: String,
        /// Notice id.
        notice_id: Uuid,
        /// The filer.
        sender: String,
        /// `MlsMessageOut` bytes (PrivateMessage).
        #[serde(with = "serde_bytes")]
        message: Bytes,
    },
    /// Hub → member relays: the next entry of a community log, with the community
    /// as it stands after it. A hub sends commits this way and notices as
    /// [`FedBody::NoticeEntry`]; a receiver takes either kind in either form.
    /// `entry` is `None` when the hub withheld the entry from this relay (its label
    /// is above the relay's accreditation): the sequence number is still consumed
    /// so logs stay gap-free.
    Entry {
        /// The community after this entry.
        community: CommunitySummary,
        /// Sequence number.
        seq: u64,
        /// The entry, unless withheld.
        entry: Option<LogEntry>,
    },
    /// Hub → a member's home relay: a Welcome for that member.
    Welcome {
        /// The new member.
        user: String,
        /// Community id.
        community: String,
        /// Welcome bytes.
        #[serde(with = "serde_bytes")]
        welcome: Bytes,
        /// Ratchet tree at the welcome's epoch.
        #[serde(with = "serde_bytes")]
        ratchet_tree: Bytes,
    },
    /// Any hop → the hub, and hub → the filer's home relay: a notice was refused.
    Refusal {
        /// Notice id.
        notice_id: Uuid,
        /// Who refused (`RELAY` or `FROM->TO`).
        hop: String,
        /// Why.
        reason: String,
    },
    /// Any relay → its peers: a revocation statement (flooded: a relay passes on
    /// what is new to it).
    Revocation {
        /// The signed statement.
        statement: RevocationStatement,
    },
    /// Any relay → its peers: an organisation CA's CRL with the CA certificate that
    /// signed it (flooded like revocations).
    Crl {
        /// CRL, DER.
        #[serde(with = "serde_bytes")]
        crl: Bytes,
        /// The issuing organisation CA certificate, DER.
        #[serde(with = "serde_bytes")]
        issuer: Bytes,
    },
    /// Hub → member relays: the next entry of a community log when it is a notice.
    /// A notice leaves the community as it was, so only its id travels, not the
    /// member list ([`FedBody::Entry`] carries that for commits). `entry` is `None`
    /// when the hub withheld the notice from this relay.
    NoticeEntry {
        /// Community id.
        community: String,
        /// Sequence number.
        seq: u64,
        /// The entry, unless withheld.
        entry: Option<LogEntry>,
    },
    /// Hub → a relay: one Welcome for all the members one commit added who are users
    /// of that relay (one copy per commit and relay, not per member).
    Welcomes {
        /// The new members, all users of the receiving relay.
        users: Vec<String>,
        /// Community id.
        community: String,
        /// Welcome bytes.
        #[serde(with = "serde_bytes")]
        welcome: Bytes,
        /// Ratchet tree at the welcome's epoch.
        #[serde(with = "serde_bytes")]
        ratchet_tree: Bytes,
    },
    /// Hub → member relays: the community's retention period (from its group
    /// context, which member relays do not hold), so that they drop their copies of
    /// its log entries as the hub does. Sent with every commit entry.
    Retention {
        /// Community id.
        community: String,
        /// Seconds an entry is kept (once every member device acknowledged it).
        seconds: u64,
    },
    /// A forwarder's home relay → the hub: the organisations the sending relay's
    /// organisation declares as its clients, sent just before each forwarded notice
    /// ([`FedBody::Notice`] whose authenticated data is a forward,
    /// [`crate::notice_aad`]). The hub applies the TLP:AMBER rule to the forward with
    /// the declaration last received from the forwarder's home relay.
    DeclaredClients {
        /// At most [`limits::MAX_CLIENTS`] organisations.
        clients: Vec<String>,
    },
}

/// Longest hop of a [`FedBody::Refusal`] (`FROM->TO`, two relay ids).
pub const MAX_HOP: usize = 2 * limits::MAX_ID + 2;

fn check_refusal(hop: &str, reason: &str) -> Result<(), WireError> {
    if hop.is_empty() || hop.len() > MAX_HOP {
        return Err(WireError::Invalid {
            field: "hop",
            reason: format!("empty or longer than {MAX_HOP} bytes"),
        });
    }
    if reason.len() > limits::MAX_REASON {
        return Err(WireError::Invalid {
            field: "reason",
            reason: format!("longer than {} bytes", limits::MAX_REASON),
        });
    }
    Ok(())
}

/// `reason` cut to at most [`limits::MAX_REASON`] bytes, on a character boundary:
/// what a relay stores or sends of a free-text reason.
pub fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(limits::MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default().to_owned()
}

fn check_statement(s: &RevocationStatement) -> Result<(), WireError> {
    check_qualified_id("user", &s.user)?;
    check_name("organisation", &s.organisation)?;
    if s.reason.len() > limits::MAX_REASON {
        return Err(WireError::Invalid {
            field: "reason",
            reason: "too long".into(),
        });
    }
    if s.revoker_chain.len() > 4 || s.signature.len() > 128 {
        return Err(WireError::Invalid {
            field: "revoker_chain",
            reason: "too many certificates or signature too long".into(),
        });
    }
    Ok(())
}

/// Checks a list of declared client organisations.
pub fn check_clients(clients: &[String]) -> Result<(), WireError> {
    if clients.len() > limits::MAX_CLIENTS {
        return Err(WireError::Invalid {
            field: "clients",
            reason: format!(
                "{} organisations; at most {}",
                clients.len(),
                limits::MAX_CLIENTS
            ),
        });
    }
    clients.iter().try_for_each(|c| check_name("clients", c))
}

fn check_wipe(w: &WipeOrder) -> Result<(), WireError> {
    check_qualified_id("user", &w.user)?;
    check_name("organisation", &w.organisation)?;
    if w.revoker_chain.len() > 4 || w.signature.len() > 128 {
        return Err(WireError::Invalid {
            field: "revoker_chain",
            reason: "too many certificates or signature too long".into(),
        });
    }
    Ok(())
}

/// Checks the bounds of a decoded message.
pub trait Validate {
    /// Returns the first field that is out of bounds.
    fn validate(&self) -> Result<(), WireError>;
}

fn check_id(field: &'static str, s: &str) -> Result<(), WireError> {
    let invalid = |reason: &str| WireError::Invalid {
        field,
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(invalid("empty"));
    }
    if s.len() > limits::MAX_ID {
        return Err(invalid("longer than 128 bytes"));
    }
    let ok = s.chars().all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '@')
    });
    if !ok {
        return Err(invalid(
            "only lower-case letters, digits, '-', '_', '.' and '@' are allowed",
        ));
    }
    if s.matches('@').count() > 1 {
        return Err(invalid("more than one '@'"));
    }
    Ok(())
}

/// Checks a list of log positions (bounded, community ids well formed).
fn check_marks(field: &'static str, marks: &[LogMark]) -> Result<(), WireError> {
    if marks.len() > limits::MAX_LIST {
        return Err(WireError::Invalid {
            field,
            reason: "too many".into(),
        });
    }
    marks
        .iter()
        .try_for_each(|m| check_qualified_id("community", &m.community))
}

/// Checks a `NAME@RELAY` / `NAME@HUB` identifier (two non-empty parts).
pub fn check_qualified_id(field: &'static str, s: &str) -> Result<(), WireError> {
    check_id(field, s)?;
    match s.split_once('@') {
        Some((name, relay)) if !name.is_empty() && !relay.is_empty() => Ok(()),
        _ => Err(WireError::Invalid {
            field,
            reason: format!("'{s}' is not of the form NAME@RELAY"),
        }),
    }
}

/// Checks a bare name or relay id (no '@').
pub fn check_name(field: &'static str, s: &str) -> Result<(), WireError> {
    check_id(field, s)?;
    if s.contains('@') {
        return Err(WireError::Invalid {
            field,
            reason: "must not contain '@'".into(),
        });
    }
    Ok(())
}

impl Validate for Request {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Request::PublishKeyPackages {
                key_packages,
                last_resort: _,
            } => {
                if key_packages.len() > limits::MAX_KEY_PACKAGES_PER_PUBLISH {
                    return Err(WireError::Invalid {
                        field: "key_packages",
                        reason: format!(
                            "{} packages; at most {} per request",
                            key_packages.len(),
                            limits::MAX_KEY_PACKAGES_PER_PUBLISH
                        ),
                    });
                }
                Ok(())
            }
            Request::FetchKeyPackage { user } => check_qualified_id("user", user),
            Request::CreateCommunity { community, .. }
            | Request::Handshake { community, .. }
            | Request::FileNotice { community, .. }
            | Request::Ack { community, .. }
            | Request::CommunityInfo { community } => check_qualified_id("community", community),
            Request::Subscribe
            | Request::AckWelcome { .. }
            | Request::ListCommunities
            | Request::NoticeStatus { .. }
            | Request::AuditLog { .. }
            | Request::Trust
            | Request::DeclaredClients
            | Request::AuditHead
            | Request::Ping => Ok(()),
            Request::Revoke { statement } => check_statement(statement),
            Request::RevokeAndWipe { statement, wipe } => {
                check_statement(statement)?;
                check_wipe(wipe)
            }
            Request::TrustStatements { after } => match after {
                Some(user) => check_qualified_id("after", user),
                None => Ok(()),
            },
            Request::Cursors { cursors } => check_marks("cursors", cursors),
            Request::FileNotices { community, notices } => {
                check_qualified_id("community", community)?;
                if notices.is_empty() || notices.len() > limits::MAX_NOTICES_PER_FILING {
                    return Err(WireError::Invalid {
                        field: "notices",
                        reason: format!(
                            "{} notices; 1 to {} per request",
                            notices.len(),
                            limits::MAX_NOTICES_PER_FILING
                        ),
                    });
                }
                Ok(())
            }
        }
    }
}

impl Validate for Response {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Response::AuditLog(page) if page.records.len() > limits::MAX_PAGE as usize => {
                Err(WireError::Invalid {
                    field: "records",
                    reason: "too many".into(),
                })
            }
            Response::Filed { seqs, .. } if seqs.len() > limits::MAX_NOTICES_PER_FILING => {
                Err(WireError::Invalid {
                    field: "seqs",
                    reason: "too many".into(),
                })
            }
            Response::Communities { communities } if communities.len() > limits::MAX_LIST => {
                Err(WireError::Invalid {
                    field: "communities",
                    reason: "too many".into(),
                })
            }
            Response::Trust(state) => {
                if state.relays.len() > crate::identity::MAX_TRUSTED_RELAYS
                    || state.statements.len() > limits::MAX_STATEMENTS
                    || state.crls.len() > crate::identity::MAX_CRLS
                {
                    return Err(WireError::Invalid {
                        field: "trust",
                        reason: "too many relays, statements or CRLs".into(),
                    });
                }
                state.statements.iter().try_for_each(check_statement)
            }
            Response::TrustStatements { statements, .. } => {
                if statements.len() > limits::MAX_STATEMENTS {
                    return Err(WireError::Invalid {
                        field: "statements",
                        reason: "too many".into(),
                    });
                }
                statements.iter().try_for_each(check_statement)
            }
            Response::AuditHead(page) => page.check_sizes().map_err(|e| WireError::Invalid {
                field: "audit head",
                reason: e.to_string(),
            }),
            Response::Cursors { rewind } => check_marks("rewind", rewind),
            Response::WipeOrdered(wipe) => check_wipe(wipe),
            Response::DeclaredClients {
                organisation,
                clients,
            } => {
                check_name("organisation", organisation)?;
                check_clients(clients)
            }
            _ => Ok(()),
        }
    }
}

impl Validate for FedRequest {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            FedRequest::Deliver { items } => {
                if items.len() > limits::MAX_PAGE as usize {
                    return Err(WireError::Invalid {
                        field: "items",
                        reason: "too many items in one delivery".into(),
                    });
                }
                for item in items {
                    match &item.body {
                        FedBody::Notice {
                            community, sender, ..
                        } => {
                            check_qualified_id("community", community)?;
                            check_qualified_id("sender", sender)?;
                        }
                        FedBody::Entry { community, .. } => {
                            check_qualified_id("community", &community.id)?
                        }
                        FedBody::NoticeEntry { community, .. } => {
                            check_qualified_id("community", community)?
                        }
                        FedBody::Welcomes {
                            users, community, ..
                        } => {
                            check_qualified_id("community", community)?;
                            if users.is_empty() || users.len() > limits::MAX_LIST {
                                return Err(WireError::Invalid {
                                    field: "users",
                                    reason: "none, or too many in one welcome".into(),
                                });
                            }
                            for user in users {
                                check_qualified_id("user", user)?;
                            }
                        }
                        FedBody::Welcome {
                            user, community, ..
                        } => {
                            check_qualified_id("user", user)?;
                            check_qualified_id("community", community)?;
                        }
                        FedBody::Refusal { hop, reason, .. } => check_refusal(hop, reason)?,
                        FedBody::Crl { .. } => {}
                        FedBody::Revocation { statement } => check_statement(statement)?,
                        FedBody::Retention { community, .. } => {
                            check_qualified_id("community", community)?
                        }
                        FedBody::DeclaredClients { clients } => check_clients(clients)?,
                    }
                }
                Ok(())
            }
            FedRequest::Handshake {
                community, sender, ..
            } => {
                check_qualified_id("community", community)?;
                check_qualified_id("sender", sender)
            }
            FedRequest::FetchKeyPackage { user, requester } => {
                check_qualified_id("user", user)?;
                check_qualified_id("requester", requester)
            }
            FedRequest::Whereabouts => Ok(()),
            FedRequest::FetchLog { community, .. } => check_qualified_id("community", community),
            FedRequest::Trust { after } => match after {
                Some(user) => check_qualified_id("after", user),
                None => Ok(()),
            },
        }
    }
}

impl Validate for FedResponse {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            FedResponse::Ack { .. } => Ok(()),
            FedResponse::Response(r) => r.validate(),
            FedResponse::Whereabouts(w) => check_marks("logs", &w.logs),
            FedResponse::Log {
                entries, community, ..
            } => {
                if entries.len() > limits::MAX_LOG_PAGE {
                    return Err(WireError::Invalid {
                        field: "entries",
                        reason: "too many".into(),
                    });
                }
                for e in entries {
                    check_qualified_id("community", &e.community)?;
                }
                match community {
                    Some(c) => check_qualified_id("community", &c.id),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Validate for Push {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Push::Entry(e) => check_qualified_id("community", &e.community),
            Push::Welcome { community, .. } => check_qualified_id("community", community),
            Push::CaughtUp | Push::Closed(_) => Ok(()),
        }
    }
}

/// Encodes `body` as one frame (length prefix included).
///
/// Fails with [`WireError::TooLarge`] if the payload exceeds `max_frame`.
pub fn encode_frame<T: Serialize>(body: &T, max_frame: usize) -> Result<Vec<u8>, WireError> {
    let versioned = Versioned {
        version: PROTOCOL_VERSION,
        body,
    };
    let mut out = vec![0u8; FRAME_HEADER];
    out = postcard::to_extend(&versioned, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - FRAME_HEADER;
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len,
        max: max_frame,
    })?;
    out[..FRAME_HEADER].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Decodes one frame payload (without the length prefix) strictly: right version,
/// no trailing bytes, fields within bounds.
pub fn decode_payload<T: DeserializeOwned + Validate>(payload: &[u8]) -> Result<T, WireError> {
    // Read the version first so a peer of another version gets a precise error even if
    // its message layout differs.
    let (version, _) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { got: version });
    }
    let (msg, rest) = postcard::take_from_bytes::<Versioned<T>>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    msg.body.validate()?;
    Ok(msg.body)
}

/// Parses the length prefix of a frame, refusing lengths above `max_frame`.
pub fn frame_len(header: [u8; FRAME_HEADER], max_frame: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(len)
}

/// A push-based frame splitter: feed it bytes as they arrive, take complete payloads.
///
/// Memory is bounded: it never buffers more than one frame header plus `max_frame`
/// bytes of the frame being assembled, and refuses an oversized length before
/// reading its payload.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame,
            buf: Vec::new(),
        }
    }

    /// Appends received bytes. Fails if the buffered frame would exceed the maximum.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.buf.len() >= FRAME_HEADER {
            let mut hdr = [0u8; FRAME_HEADER];
            hdr.copy_from_slice(&self.buf[..FRAME_HEADER]);
            frame_len(hdr, self.max_frame)?;
        }
        let limit = FRAME_HEADER
            .saturating_add(self.max_frame)
            .saturating_mul(2);
        if self.buf.len().saturating_add(bytes.len()) > limit {
            // Take what fits; callers feed again after draining frames.
            return Err(WireError::TooLarge {
                len: self.buf.len() + bytes.len(),
                max: limit,
            });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Returns the next complete payload, if one is buffered.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let mut hdr = [0u8; FRAME_HEADER];
        hdr.copy_from_slice(&self.buf[..FRAME_HEADER]);
        let len = frame_len(hdr, self.max_frame)?;
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let payload = self.buf[FRAME_HEADER..FRAME_HEADER + len].to_vec();
        self.buf.drain(..FRAME_HEADER + len);
        Ok(Some(payload))
    }

    /// Called at end of stream: fails if a partial frame is buffered.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() < FRAME_HEADER {
            FRAME_HEADER
        } else {
            let mut hdr = [0u8; FRAME_HEADER];
            hdr.copy_from_slice(&self.buf[..FRAME_HEADER]);
            FRAME_HEADER + u32::from_be_bytes(hdr) as usize
        };
        Err(WireError::Truncated {
            got: self.buf.len(),
            want,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip<T: Serialize + DeserializeOwned + Validate + PartialEq + std::fmt::Debug>(msg: T) {
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.feed(&frame).unwrap();
        let payload = dec.next_payload().unwrap().unwrap();
        assert_eq!(decode_payload::<T>(&payload).unwrap(), msg);
        assert!(dec.next_payload().unwrap().is_none());
        dec.finish().unwrap();
    }

    #[test]
    fn requests_round_trip() {
        roundtrip(Request::Ping);
        roundtrip(Request::FileNotice {
            community: "desinformatie@bz".into(),
            notice_id: Uuid::from_u128(7),
            message: vec![1, 2, 3],
        });
        roundtrip(Request::FileNotices {
            community: "desinformatie@bz".into(),
            notices: vec![NoticeUpload {
                notice_id: Uuid::from_u128(8),
                message: vec![4, 5],
            }],
        });
        roundtrip(Response::Filed {
            hub: "bz".into(),
            epoch: 3,
            seqs: vec![Some(4), None],
        });
        roundtrip(Request::Handshake {
            community: "a@b".into(),
            message: vec![9; 100],
            welcome: Some(vec![4; 10]),
        });
    }

    #[test]
    fn responses_and_pushes_round_trip() {
        roundtrip(Response::Error(ErrorCode::WrongEpoch { current: 4 }));
        roundtrip(Response::Error(ErrorCode::PolicyDenied {
            reason: "level STG-GEHEIM is above clearance STG-CONFIDENTIEEL".into(),
        }));
        roundtrip(Push::Entry(LogEntry {
            community: "x@bz".into(),
            seq: 12,
            sender: "analist@post-a".into(),
            ordered_at: 1_700_000_000,
            kind: EntryKind::Notice {
                notice_id: Uuid::from_u128(1),
                label: vec![1, 0, 3],
                epoch: 2,
            },
            message: vec![0; 64],
        }));
    }

    #[test]
    fn oversized_frame_is_refused_before_reading_payload() {
        let mut dec = FrameDecoder::new(16);
        dec.feed(&(1_000_000u32).to_be_bytes()).unwrap();
        assert_eq!(
            dec.next_payload(),
            Err(WireError::TooLarge {
                len: 1_000_000,
                max: 16
            })
        );
        let big = Request::PublishKeyPackages {
            key_packages: vec![vec![0; 64]],
            last_resort: None,
        };
        assert!(matches!(
            encode_frame(&big, 16),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frame_is_reported() {
        let frame = encode_frame(&Request::ListCommunities, DEFAULT_MAX_FRAME).unwrap();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.feed(&frame[..frame.len() - 1]).unwrap();
        assert_eq!(dec.next_payload(), Ok(None));
        assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn trailing_bytes_and_wrong_version_are_refused() {
        let frame = encode_frame(&Request::Ping, DEFAULT_MAX_FRAME).unwrap();
        let mut payload = frame[FRAME_HEADER..].to_vec();
        payload.push(0);
        assert_eq!(
            decode_payload::<Request>(&payload),
            Err(WireError::TrailingBytes(1))
        );
        let other = postcard::to_stdvec(&Versioned {
            version: 9,
            body: Request::Ping,
        })
        .unwrap();
        assert_eq!(
            decode_payload::<Request>(&other),
            Err(WireError::Version { got: 9 })
        );
    }

    #[test]
    fn ids_are_validated() {
        for bad in ["", "UPPER@bz", "a@b@c", "noat", "@bz", "x@", "sp ace@bz"] {
            let r = Request::CommunityInfo {
                community: bad.into(),
            };
            assert!(r.validate().is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@bz", "a".repeat(200));
        assert!(Request::FetchKeyPackage { user: long }.validate().is_err());
        Request::FetchKeyPackage {
            user: "analist@post-a".into(),
        }
        .validate()
        .unwrap();
    }

    /// Postcard numbers enum variants by position: a variant added in the middle
    /// would make an older peer read one request as another. New ones go last.
    #[test]
    fn variant_positions_are_stable() {
        let tag = |frame: Vec<u8>| frame[FRAME_HEADER + 1];
        let frame = |r: &Request| encode_frame(r, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(tag(frame(&Request::Subscribe)), 5);
        assert_eq!(tag(frame(&Request::Ping)), 12);
        let filing = Request::FileNotices {
            community: "x@bz".into(),
            notices: Vec::new(),
        };
        assert_eq!(tag(frame(&filing)), 14);
        let answer = |r: &Response| encode_frame(r, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(tag(answer(&Response::Pong)), 9);
        let filed = Response::Filed {
            hub: "bz".into(),
            epoch: 1,
            seqs: Vec::new(),
        };
        assert_eq!(tag(answer(&filed)), 12);
        assert_eq!(tag(frame(&Request::Trust)), 15);
        let trust = Response::Trust(TrustState {
            relays: Vec::new(),
            statements: Vec::new(),
            crls: Vec::new(),
        });
        assert_eq!(tag(answer(&trust)), 13);
        assert_eq!(tag(frame(&Request::AuditHead)), 16);
        let head = Response::AuditHead(crate::audit::AuditHeadPage {
            head: crate::audit::SignedAuditHead {
                relay: "bz".into(),
                records: 1,
                hash: [0; 32],
                at: 0,
                signature: vec![0; crate::audit::SIGNATURE_LEN],
                chain: vec![vec![0]],
            },
            certificates: Vec::new(),
        });
        assert_eq!(tag(answer(&head)), 14);
        let page = Request::TrustStatements { after: None };
        assert_eq!(tag(frame(&page)), 17);
        let statements = Response::TrustStatements {
            statements: Vec::new(),
            more: false,
        };
        assert_eq!(tag(answer(&statements)), 15);
        let item = |body: FedBody| {
            let request = FedRequest::Deliver {
                items: vec![FedItem { seq: 1, body }],
            };
            // After the tag of `Deliver`: item count, item seq, the body's variant.
            encode_frame(&request, DEFAULT_MAX_FRAME).unwrap()[FRAME_HEADER + 4]
        };
        let notice_entry = FedBody::NoticeEntry {
            community: "x@bz".into(),
            seq: 1,
            entry: None,
        };
        assert_eq!(item(notice_entry), 6);
        let welcomes = FedBody::Welcomes {
            users: vec!["a@bz".into()],
            community: "x@bz".into(),
            welcome: Vec::new(),
            ratchet_tree: Vec::new(),
        };
        assert_eq!(item(welcomes), 7);
        let retention = FedBody::Retention {
            community: "x@bz".into(),
            seconds: 86_400,
        };
        assert_eq!(item(retention), 8);
        let wipe = WipeOrder {
            user: "a@bz".into(),
            organisation: "bz".into(),
            ordered_at: 0,
            revoker_chain: Vec::new(),
            signature: Vec::new(),
        };
        assert_eq!(tag(answer(&Response::WipeOrdered(wipe.clone()))), 17);
        let statement = RevocationStatement {
            user: "a@bz".into(),
            organisation: "bz".into(),
            reason: "r".into(),
            revoked_at: 0,
            revoker_chain: Vec::new(),
            signature: Vec::new(),
        };
        assert_eq!(tag(frame(&Request::RevokeAndWipe { statement, wipe })), 19);
        assert_eq!(tag(frame(&Request::DeclaredClients)), 20);
        let declared = Response::DeclaredClients {
            organisation: "bz".into(),
            clients: vec!["post-a".into()],
        };
        assert_eq!(tag(answer(&declared)), 18);
        assert_eq!(
            item(FedBody::DeclaredClients {
                clients: vec!["post-a".into()]
            }),
            9
        );
        let code = |c: &ErrorCode| postcard::to_allocvec(c).unwrap()[0];
        assert_eq!(code(&ErrorCode::Internal), 12);
        let unknown = ErrorCode::OutcomeUnknown {
            reason: "no answer from bz".into(),
        };
        assert_eq!(code(&unknown), 13);
    }

    #[test]
    fn refusals_are_bounded() {
        let deliver = |hop: &str, reason: &str| FedRequest::Deliver {
            items: vec![FedItem {
                seq: 1,
                body: FedBody::Refusal {
                    notice_id: Uuid::from_u128(1),
                    hop: hop.into(),
                    reason: reason.into(),
                },
            }],
        };
        deliver("bz->nctv", "not accredited").validate().unwrap();
        let long = "x".repeat(limits::MAX_REASON + 1);
        assert!(deliver("bz", &long).validate().is_err());
        assert!(deliver("", "why").validate().is_err());
        assert!(deliver(&"h".repeat(MAX_HOP + 1), "why").validate().is_err());
        deliver("bz", &bounded_reason(&long)).validate().unwrap();
        // Cut on a character boundary: 'é' is two bytes.
        let accents = "é".repeat(limits::MAX_REASON);
        let cut = bounded_reason(&accents);
        assert!(cut.len() <= limits::MAX_REASON && cut.len() >= limits::MAX_REASON - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded_reason("short"), "short");
    }

    #[test]
    fn filings_are_bounded() {
        let filing = |n: usize| Request::FileNotices {
            community: "x@bz".into(),
            notices: (0..n)
                .map(|i| NoticeUpload {
                    notice_id: Uuid::from_u128(i as u128),
                    message: vec![1],
                })
                .collect(),
        };
        assert!(filing(0).validate().is_err());
        filing(1).validate().unwrap();
        filing(limits::MAX_NOTICES_PER_FILING).validate().unwrap();
        assert!(
            filing(limits::MAX_NOTICES_PER_FILING + 1)
                .validate()
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload::<Request>(&bytes);
            let _ = decode_payload::<Response>(&bytes);
            let _ = decode_payload::<Push>(&bytes);
            let mut dec = FrameDecoder::new(256);
            if dec.feed(&bytes).is_ok() {
                while let Ok(Some(p)) = dec.next_payload() {
                    let _ = decode_payload::<Request>(&p);
                }
            }
        }

        #[test]
        fn split_feeding_yields_the_same_frames(split in 0usize..64, seq in any::<u64>()) {
            let msg = Request::Ack { community: "c@bz".into(), seq };
            let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
            let mut two = frame.clone();
            two.extend_from_slice(&frame);
            let split = split.min(two.len());
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
            dec.feed(&two[..split]).unwrap();
            let mut got = Vec::new();
            while let Some(p) = dec.next_payload().unwrap() { got.push(p); }
            dec.feed(&two[split..]).unwrap();
            while let Some(p) = dec.next_payload().unwrap() { got.push(p); }
            prop_assert_eq!(got.len(), 2);
            for p in got {
                prop_assert_eq!(decode_payload::<Request>(&p).unwrap(), msg.clone());
            }
        }
    }
}
