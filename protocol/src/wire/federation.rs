//! Relay ↔ relay messages (ALPN [`super::ALPN_FEDERATION`]): [`FedRequest`],
//! [`FedResponse`] and the outbox items ([`FedItem`], [`FedBody`]) a link carries.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validate::*;
use super::{Bytes, CommunitySummary, LogEntry, LogMark, Response, Validate, WireError, limits};
use crate::revocation::RevocationStatement;

/// Requests one relay sends another over a federation link (ALPN
/// [`ALPN_FEDERATION`](super::ALPN_FEDERATION)). Same framing as client requests: one request per stream.
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
    /// the hub answers with its verdict (like [`Request::Handshake`](super::Request::Handshake)).
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
    /// Bytes of an attachment of a notice, from a relay that holds it (the filer's
    /// home relay, asked by the hub; the hub, asked by a member relay). Answered with
    /// [`Response::BlobChunk`] inside [`FedResponse::Response`].
    FetchBlob {
        /// The notice's community.
        community: String,
        /// The notice.
        notice_id: Uuid,
        /// One of its blobs.
        blob: crate::attachment::BlobId,
        /// First byte wanted.
        offset: u64,
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
            FedRequest::FetchLog { community, .. } | FedRequest::FetchBlob { community, .. } => {
                check_qualified_id("community", community)
            }
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
