//! Records the relay keeps in its store (postcard-encoded, see [`crate::store::keys`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use kring_protocol::wire::{Bytes, HopRefusal};

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
