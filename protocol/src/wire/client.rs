//! Client ↔ relay messages: [`Request`], [`Response`] and the [`Push`] frames of a
//! subscription, with what they carry.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validate::*;
use super::{Bytes, ErrorCode, Validate, WireError, limits};
use crate::attachment::{BlobId, BlobRef};
use crate::revocation::{RevocationStatement, WipeOrder};

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
    /// Announce a sealed attachment ([`crate::attachment`]) before uploading it for
    /// a notice of `community`: its name and sealed size. Answered with
    /// [`Response::BlobProgress`]: how much of it the relay holds already (all of
    /// it when the relay has it; what survived an interrupted upload otherwise).
    OfferBlob {
        /// Community the notice is for (the caller must be a member).
        community: String,
        /// The blob.
        blob: BlobRef,
    },
    /// Bytes of an announced blob, from `offset` (what the relay holds). The relay
    /// answers [`Response::BlobProgress`]; with the last bytes it checks the whole
    /// blob against its name and keeps it (durably) or discards it.
    PutBlob {
        /// The blob.
        blob: BlobId,
        /// Where these bytes go.
        offset: u64,
        /// At most [`TRANSFER_CHUNK`](crate::attachment::TRANSFER_CHUNK) bytes.
        #[serde(with = "serde_bytes")]
        data: Bytes,
    },
    /// Bytes of an attachment of a notice the caller may read, from `offset`.
    /// Answered with [`Response::BlobChunk`].
    GetBlob {
        /// The notice's community.
        community: String,
        /// The notice.
        notice_id: Uuid,
        /// One of its blobs.
        blob: BlobId,
        /// First byte wanted.
        offset: u64,
    },
    /// [`Request::Ack`] for several communities at once: the device's new cursor in
    /// each (one request for a run of entries of many communities). All or none.
    AckMany {
        /// One to [`limits::MAX_LIST`] cursors.
        marks: Vec<LogMark>,
    },
}

impl Request {
    /// The requests that acknowledge `marks`: one `Ack` for a single community,
    /// `AckMany` for several (at most [`limits::MAX_LIST`] per request); none for
    /// no marks.
    pub fn acknowledging(marks: Vec<LogMark>) -> Vec<Request> {
        match <[LogMark; 1]>::try_from(marks) {
            Ok([one]) => vec![Request::Ack {
                community: one.community,
                seq: one.seq,
            }],
            Err(marks) => marks
                .chunks(limits::MAX_LIST)
                .map(|chunk| Request::AckMany {
                    marks: chunk.to_vec(),
                })
                .collect(),
        }
    }
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
    /// Answer to [`Request::OfferBlob`] and [`Request::PutBlob`]: the relay holds
    /// the first `received` of `size` bytes; all of them (durably, checked against
    /// the blob's name) when `received == size`.
    BlobProgress {
        /// Bytes held.
        received: u64,
        /// The blob's sealed size.
        size: u64,
    },
    /// Answer to [`Request::GetBlob`] (and a relay's
    /// [`FedRequest::FetchBlob`](super::FedRequest::FetchBlob)): the blob's bytes
    /// from `offset`, at most [`TRANSFER_CHUNK`](crate::attachment::TRANSFER_CHUNK).
    BlobChunk {
        /// The blob's sealed size.
        size: u64,
        /// Where these bytes start.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Bytes,
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
            Request::OfferBlob { community, blob } => {
                check_qualified_id("community", community)?;
                check_blob_size(blob.size)
            }
            Request::PutBlob { data, .. } => check_transfer("data", data),
            Request::CreateCommunity { community, .. }
            | Request::GetBlob { community, .. }
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
            Request::AckMany { marks } => {
                if marks.is_empty() {
                    return Err(WireError::Invalid {
                        field: "marks",
                        reason: "no cursor to acknowledge".into(),
                    });
                }
                check_marks("marks", marks)
            }
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
            Response::BlobProgress { received, size } => {
                check_blob_size(*size)?;
                if received > size {
                    return Err(WireError::Invalid {
                        field: "received",
                        reason: "more than the blob's size".into(),
                    });
                }
                Ok(())
            }
            Response::BlobChunk { size, data, .. } => {
                check_blob_size(*size)?;
                check_transfer("data", data)
            }
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

impl Validate for Push {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Push::Entry(e) => check_qualified_id("community", &e.community),
            Push::Welcome { community, .. } => check_qualified_id("community", community),
            Push::CaughtUp | Push::Closed(_) => Ok(()),
        }
    }
}
