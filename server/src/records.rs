//! Records the relay keeps in its store (postcard-encoded, see [`crate::store::keys`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use kring_protocol::wire::{Bytes, CommunitySummary, FedBody, HopRefusal};

/// Kring's view of a community, next to the MLS public group state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunityRecord {
    /// `NAME@HUB`.
    pub id: String,
    /// Hub relay id.
    pub hub: String,
    /// Binary maximum label.
    #[serde(with = "serde_bytes")]
    pub max_label: Bytes,
    /// Community admins.
    pub admins: Vec<String>,
    /// Current members.
    pub members: Vec<String>,
    /// Current MLS epoch.
    pub epoch: u64,
    /// Highest log sequence number.
    pub last_seq: u64,
    /// Who created it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: i64,
}

/// A user's membership in a community, as the log sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Log position of the commit that added them (entries after it are theirs).
    pub joined_seq: u64,
    /// Log position of the commit that removed them, if any (entries after it are not).
    pub removed_seq: Option<u64>,
}

/// What the relay knows of a filed notice (de-duplication and status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// Community id.
    pub community: String,
    /// Sender id.
    pub sender: String,
    /// Log position, once ordered.
    pub seq: Option<u64>,
    /// Refusals reported by hops.
    pub refusals: Vec<HopRefusal>,
}

/// A Welcome waiting for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeRecord {
    /// Id acknowledged by the device.
    pub id: Uuid,
    /// Community id.
    pub community: String,
    /// Welcome bytes.
    #[serde(with = "serde_bytes")]
    pub welcome: Bytes,
    /// Ratchet tree at the welcome's epoch.
    #[serde(with = "serde_bytes")]
    pub ratchet_tree: Bytes,
}

/// A pending welcome of one user that shares its Welcome with the other members the
/// same commit added at this relay (`v/USER\0ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeRef {
    /// Id acknowledged by the device.
    pub id: Uuid,
    /// Community id.
    pub community: String,
    /// The shared [`WelcomeBlob`] (`W/BLOB`).
    pub blob: Uuid,
}

/// A Welcome and the ratchet tree at its epoch, stored once per commit and relay
/// (`W/BLOB`); `V/BLOB` counts the [`WelcomeRef`]s still pointing at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeBlob {
    /// Welcome bytes.
    #[serde(with = "serde_bytes")]
    pub welcome: Bytes,
    /// Ratchet tree at the welcome's epoch.
    #[serde(with = "serde_bytes")]
    pub ratchet_tree: Bytes,
}

/// An outbox item as stored (`o/PEER\0SEQ`); sent as a
/// [`FedItem`](kring_protocol::wire::FedItem) with the same `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// Position in the peer's outbox.
    pub seq: u64,
    /// What to send.
    pub item: Outgoing,
}

/// What an outbox item sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outgoing {
    /// This body.
    Body(FedBody),
    /// Entry `seq` of this hub's log of `community` (read from the log when sent, so
    /// a hub stores each notice once, not once more per member relay), with the
    /// community as it was when the entry was ordered.
    LogEntry {
        /// The community at that entry.
        community: CommunitySummary,
        /// The entry's sequence number.
        seq: u64,
    },
    /// Notice `seq` of this hub's log of `community`, sent as
    /// [`FedBody::NoticeEntry`] (no member list: a notice leaves membership as it was).
    NoticeEntry {
        /// Community id.
        community: String,
        /// The entry's sequence number.
        seq: u64,
    },
}
