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

use kring_policy::{Clearance, Label, decide};
use kring_protocol::close::CloseCode;
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::mls::{MessageHeader, MessageKind};
use kring_protocol::wire::{
    CommunitySummary, EntryKind, ErrorCode, FedBody, FedItem, FedRequest, FedResponse, LogEntry,
    Response,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::{EntryRefusal, PeerAuthError, RelayError};
use crate::frames::{read_frame, write_frame};
use crate::groups;
use crate::records::{CommunityRecord, NoticeRecord, OutboxRecord, Outgoing};
use crate::relay::{Relay, Writer, home_relay, now};
use crate::revocation::PeerInfo;
use crate::store::{Batch, decode, get_obj};

/// How long a forwarded commit or key package fetch may take, link set-up included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Items per delivery.
const BATCH: usize = 64;
pub use crate::config::MIN_MAX_FRAME;
/// Federation requests one peer relay may make per second, as a multiple of the
/// per-identity `requests_per_second` (a peer speaks for all its users); the burst
/// is twice that.
pub const PEER_RATE_FACTOR: u32 = 10;
/// Most communities hubbed at one peer that one user of this relay may be a member
/// of here; a hub registering the user in more is refused.
pub const MAX_PEER_COMMUNITIES_PER_USER: u64 = 1_000;
/// Most communities one peer hub may register at this relay.
pub const MAX_PEER_COMMUNITIES: u64 = 100_000;
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
use crate::core::peers::Record;
#[cfg(test)]
use crate::core::peers::{AuditThrottle, RecentNames, TokenBucket};
pub use crate::core::peers::{
    MAX_REQUESTERS_PER_PEER, Peer, REFUSAL_AUDIT_PER_WINDOW, REFUSAL_AUDIT_WINDOW, REQUESTER_WINDOW,
};
pub(crate) use apply::*;
pub use calls::*;
pub use link::*;
use outbox::*;

/// Audit-logs a refusal of `peer`'s input in the writer's batch, within the cap of
/// `AuditThrottle`.
pub fn audit_peer_refusal(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    event: AuditEvent,
) -> Result<(), RelayError> {
    for e in throttled(relay, peer, event) {
        w.audit.append(b, now(), e)?;
    }
    Ok(())
}

/// [`audit_peer_refusal`] in a batch of its own.
fn audit_peer_refusal_now(relay: &Relay, peer: &str, event: AuditEvent) {
    for e in throttled(relay, peer, event) {
        relay.audit_now(e);
    }
}

fn unrecorded_event(peer: &str, n: u64) -> AuditEvent {
    AuditEvent::new(
        AuditKind::Refusal,
        peer,
        "-",
        "peer-refusals-summary",
        format!(
            "{n} further refusals of relay {peer}'s requests and items were counted, not \
             recorded one by one (at most {REFUSAL_AUDIT_PER_WINDOW} per {} s)",
            REFUSAL_AUDIT_WINDOW.as_secs()
        ),
    )
}

/// The audit records to write for `event`, a refusal of `peer`'s input.
fn throttled(relay: &Relay, peer: &str, event: AuditEvent) -> Vec<AuditEvent> {
    let Some(p) = relay.peer(peer) else {
        return vec![event];
    };
    let verdict = p.refusal_verdict(Instant::now());
    let mut out = Vec::new();
    if let Some(n) = verdict.unrecorded {
        out.push(unrecorded_event(peer, n));
    }
    match verdict.record {
        Record::Full => out.push(event),
        Record::Note => out.push(AuditEvent::new(
            AuditKind::Refusal,
            peer,
            "-",
            "peer-refusals-summary",
            format!(
                "more than {REFUSAL_AUDIT_PER_WINDOW} refusals of relay {peer}'s input in {} s: \
                 further ones in this window are counted, then recorded as one summary",
                REFUSAL_AUDIT_WINDOW.as_secs()
            ),
        )),
        Record::Count => {}
    }
    out
}

#[cfg(test)]
mod tests;
