//! Outboxes, the writing side: what this relay must tell a peer is written as an
//! [`OutboxRecord`] in the same batch as the change that caused it (the federation
//! shell sends it once durable).

use kring_protocol::wire::{EntryKind, ErrorCode, FedBody, LogEntry};

use super::Core;
use crate::core::Writer;
use crate::error::RelayError;
use crate::keyspace::federation as keys;
use crate::records::{CommunityRecord, OutboxRecord, Outgoing};
use crate::store::{Batch, Engine, decode, get_obj};

/// Bytes of a federation frame kept free for the envelope of a delivery (the request,
/// its version and item count): a delivery's items fill at most `max_frame` less this.
pub const DELIVER_MARGIN: usize = 4096;

pub(crate) fn get_u64(engine: &dyn Engine, key: &[u8]) -> Result<u64, RelayError> {
    Ok(get_obj::<u64>(engine, key)?.unwrap_or(0))
}

/// The kind of an outbox item, as [`Cx::sent`](super::Cx::sent) names it.
pub fn outgoing_kind(item: &Outgoing) -> &'static str {
    match item {
        Outgoing::LogEntry { .. } => "entry",
        Outgoing::NoticeEntry { .. } => "notice-entry",
        Outgoing::Body(body) => match body {
            FedBody::Notice { .. } => "notice",
            FedBody::Entry { .. } => "entry",
            FedBody::Welcome { .. } => "welcome",
            FedBody::Refusal { .. } => "refusal",
            FedBody::Revocation { .. } => "revocation",
            FedBody::Crl { .. } => "crl",
            FedBody::NoticeEntry { entry: None, .. } => "withheld",
            FedBody::NoticeEntry { .. } => "notice-entry",
            FedBody::Welcomes { .. } => "welcomes",
            FedBody::Retention { .. } => "retention",
            FedBody::DeclaredClients { .. } => "declared-clients",
        },
    }
}

/// Loads the next outbox sequence number of every peer.
pub fn load_outbox_heads(
    engine: &dyn Engine,
    peers: &[crate::config::PeerToml],
) -> Result<std::collections::HashMap<String, u64>, RelayError> {
    let mut out = std::collections::HashMap::new();
    for p in peers {
        let next = get_u64(engine, &keys::outbox_next(&p.id))?.max(1);
        out.insert(p.id.clone(), next);
    }
    Ok(out)
}

/// Adds an item for `peer` to the batch (durable with it).
pub fn enqueue(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    body: FedBody,
) -> Result<(), RelayError> {
    check_item_len(core, peer, SEQ_LEN + encoded_len(&body))?;
    store_outgoing(core, w, b, peer, Outgoing::Body(body))
}

/// Most bytes the seq of a [`FedItem`](kring_protocol::wire::FedItem) takes (a varint u64).
pub const SEQ_LEN: usize = 10;

/// Bytes of the postcard encoding of `value` (`usize::MAX` if it cannot be encoded).
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
    .unwrap_or(usize::MAX)
}

/// Bytes of items one delivery may carry with frames of `max_frame` bytes.
pub fn delivery_budget(max_frame: usize) -> usize {
    max_frame.saturating_sub(DELIVER_MARGIN)
}

/// Refuses an item of `len` bytes for `peer` that no delivery could carry: it
/// would block every item queued after it.
pub fn check_item_len(core: &Core, peer: &str, len: usize) -> Result<(), RelayError> {
    let budget = delivery_budget(core.limits().max_frame);
    if len > budget {
        return Err(ErrorCode::TooLarge {
            what: format!(
                "an item of {len} bytes for relay {peer} does not fit in one federation \
                 delivery ({budget} bytes with max_frame {})",
                core.limits().max_frame
            ),
        }
        .into());
    }
    Ok(())
}

/// Adds `entry` of this hub's log of `rec` for `peer` to the batch: the entry itself
/// is read from the log when it is sent. A commit goes with the community as it
/// stands after it; a notice goes with the community's id only.
pub fn enqueue_log_entry(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    rec: &CommunityRecord,
    entry: &LogEntry,
) -> Result<(), RelayError> {
    // Sent as the body with the entry in it: the body without it, plus the entry.
    let (item, len) = match entry.kind {
        EntryKind::Notice { .. } => {
            let body = FedBody::NoticeEntry {
                community: rec.id.clone(),
                seq: entry.seq,
                entry: None,
            };
            let item = Outgoing::NoticeEntry {
                community: rec.id.clone(),
                seq: entry.seq,
            };
            (item, encoded_len(&body))
        }
        EntryKind::Handshake { .. } => {
            let community = super::summary(rec);
            let len = encoded_len(&FedBody::Entry {
                community: community.clone(),
                seq: entry.seq,
                entry: None,
            });
            let item = Outgoing::LogEntry {
                community,
                seq: entry.seq,
            };
            (item, len)
        }
    };
    check_item_len(core, peer, SEQ_LEN + len + encoded_len(entry))?;
    store_outgoing(core, w, b, peer, item)
}

pub fn store_outgoing(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    item: Outgoing,
) -> Result<(), RelayError> {
    if !core.is_peer(peer) {
        return Err(ErrorCode::Unavailable {
            reason: format!("relay {peer} is not a federation peer of {}", core.id()),
        }
        .into());
    }
    let next = w.outbox_next.entry(peer.to_string()).or_insert(1);
    let seq = *next;
    *next += 1;
    let kind = outgoing_kind(&item);
    b.put_obj(keys::outbox(peer, seq), &OutboxRecord { seq, item })?;
    b.put_obj(keys::outbox_next(peer), &(seq + 1))?;
    w.sent.push((peer.to_string(), kind));
    if let Some(at) = w.mono {
        core.metrics().outbox_enqueued(peer, seq, at);
    }
    Ok(())
}

/// The outbox to `peer` as the store holds it: how many items wait, and the seq of
/// the oldest (none when empty).
pub fn outbox_state(core: &Core, peer: &str) -> Result<(u64, Option<u64>), RelayError> {
    let engine = core.engine();
    let Some((k, v)) = engine
        .scan(&keys::outbox_prefix(peer), None, 1)?
        .into_iter()
        .next()
    else {
        return Ok((0, None));
    };
    let head = decode::<OutboxRecord>(&k, &v)?.seq;
    // Items are acknowledged (and deleted) in order: everything from the oldest to
    // the last one enqueued waits.
    let next = get_u64(engine, &keys::outbox_next(peer))?;
    Ok((next.saturating_sub(head).max(1), Some(head)))
}
