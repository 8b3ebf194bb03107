//! Relay-to-relay federation (ALPN `kring-fed/1`).
//!
//! - **Links**: one QUIC connection per pair of relays, dialled by the relay with the
//!   smaller id and re-dialled with backoff after a cut; either side opens request
//!   streams on it. Only configured peers are accepted, and a peer's id must match
//!   its certificate. A peer's accreditation is its certificate's Clearance, lowered
//!   by the `accreditation` of its `[[peers]]` entry if set.
//! - **Outboxes**: everything a relay must tell a peer is written as an
//!   [`OutboxRecord`] under `o/PEER\0SEQ` in the same atomic batch as the change that
//!   caused it (a hub's log entries by reference: the entry is read from the log when
//!   sent; a commit travels with the community's member list, a notice with its id
//!   only), and sent as [`FedItem`]s in order, only once durable, until the peer
//!   acknowledges durable receipt. The receiver applies each item exactly once
//!   (`r/PEER` holds the last applied seq, updated in the same batch as the item's
//!   effect), all items of one delivery in one batch (a revocation or CRL in its own).
//! - **Synchronous calls**: commits are forwarded to the hub and key package fetches
//!   to the user's home relay as request/response on the link, with a deadline.
//!
//! Policy at every hop: the hub withholds a notice from a relay whose accreditation
//! does not admit it ([`crate::core::Core::relay_accreditation`]); a receiving relay checks every
//! notice against its own accreditation and the sending peer's, accepts entries only
//! from the community's hub and notices only from the filer's home relay, and learns
//! about a community only when one of its users is a member.
//!
//! This module holds the peers; `link` (dial, accept, serve), `outbox` (write and
//! send), `apply` (receive, exactly once, policy at this hop) and `calls` (forwarded
//! commits and key package fetches) do the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kring_policy::Clearance;
use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::wire::{
    EntryKind, ErrorCode, FedBody, FedItem, FedRequest, FedResponse, LogEntry, Response,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::{PeerAuthError, RelayError};
use crate::frames::{read_frame, write_frame};
use crate::groups;
use crate::records::{NoticeRecord, OutboxRecord, Outgoing};
use crate::relay::{Relay, home_relay, now};
use crate::revocation::PeerInfo;
use crate::store::{decode, get_obj};

/// How long a forwarded commit or key package fetch may take, link set-up included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Items per delivery.
const BATCH: usize = 64;
pub use crate::config::MIN_MAX_FRAME;
/// Federation requests one peer relay may make per second, as a multiple of the
/// per-identity `requests_per_second` (a peer speaks for all its users); the burst
/// is twice that.
pub const PEER_RATE_FACTOR: u32 = 10;
pub use crate::core::apply::{MAX_PEER_COMMUNITIES, MAX_PEER_COMMUNITIES_PER_USER, check_envelope};
/// Longest wait between dial attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

use crate::keyspace::federation as keys;

mod apply;
mod blobs;
mod calls;
mod link;
mod outbox;

pub use crate::core::outbox::{
    DELIVER_MARGIN, check_item_len, delivery_budget, enqueue, enqueue_log_entry, load_outbox_heads,
    outbox_state, store_outgoing,
};
pub use crate::core::peers::{
    MAX_REQUESTERS_PER_PEER, Peer, REFUSAL_AUDIT_PER_WINDOW, REFUSAL_AUDIT_WINDOW, REQUESTER_WINDOW,
};
pub(crate) use apply::*;
pub use calls::*;
pub use link::*;
use outbox::*;

/// Audit-logs a refusal of `peer`'s input in a batch of its own, within the cap of
/// the peer's audit throttle.
fn audit_peer_refusal_now(relay: &Relay, peer: &str, event: AuditEvent) {
    for e in crate::core::peers::throttled(relay, peer, event, Instant::now()) {
        relay.audit_now(e);
    }
}

#[cfg(test)]
mod tests;
