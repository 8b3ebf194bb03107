//! Outboxes: what this relay must tell each peer, written in the same batch as the
//! change that caused it, and the sender that delivers it in order once durable,
//! refusing or withholding at send what the peer may not receive.

use super::*;
use crate::core::outbox::encoded_len;

/// How many of the next items, of `lens` bytes each, one delivery carries: as many
/// as fit in `budget` bytes (at most [`BATCH`]), and always at least one.
pub(super) fn batch_len(lens: &[usize], budget: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for len in lens.iter().take(BATCH) {
        total = total.saturating_add(*len);
        if n > 0 && total > budget {
            break;
        }
        n += 1;
    }
    n
}

pub(super) async fn outbox_loop(relay: Arc<Relay>, peer: Arc<Peer>) {
    let mut changes = relay.changes();
    let slot = relay.link(&peer.id);
    let mut link = slot.subscribe();
    // Bytes of items per delivery: the frame less the envelope, halved after a
    // delivery that failed (a peer may read smaller frames), grown again after one
    // that went through. One item always goes, whatever its size.
    let full = delivery_budget(relay.limits().max_frame);
    let mut budget = full;
    let mut recovery = relay.recovery().changes();
    loop {
        if peer.is_retired() {
            return;
        }
        changes.mark_unchanged();
        let Some(conn) = slot.conn() else {
            let _ = link.changed().await;
            continue;
        };
        if relay.recovery().holds(&peer.id) {
            // Restored from a backup: nothing goes out before the peer has said
            // which of this outbox's items it has (`recovery`).
            tokio::select! {
                _ = recovery.changed() => {}
                _ = link.changed() => {}
            }
            continue;
        }
        let items = match pending(&relay, &peer.id, budget) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "cannot read outbox");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if items.is_empty() {
            tokio::select! {
                _ = changes.changed() => {}
                _ = link.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        let items = match withhold_at_send(&relay, &peer, items) {
            Ok(items) if items.is_empty() => continue,
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "cannot record a notice withheld from a peer");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let several = items.len() > 1;
        let request = FedRequest::Deliver { items };
        match call(
            &conn,
            &request,
            relay.limits().max_frame,
            Duration::from_secs(15),
        )
        .await
        {
            Ok(FedResponse::Ack { upto }) => {
                budget = budget.saturating_mul(2).min(full);
                let mut acknowledged = 0;
                if let Err(e) = relay.write(|_, b| {
                    if let FedRequest::Deliver { items } = &request {
                        for item in items.iter().filter(|i| i.seq <= upto) {
                            b.delete(keys::outbox(&peer.id, item.seq));
                            acknowledged += 1;
                        }
                    }
                    Ok(())
                }) {
                    tracing::error!(error = %e, "cannot trim outbox");
                } else {
                    relay.metrics().delivered_to_peer(acknowledged);
                }
            }
            Ok(other) => {
                warn!(answer = ?other, "peer did not acknowledge; retrying");
                if several {
                    budget = (budget / 2).max(1);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                // Treat the link as broken: the dialler reconnects.
                debug!(error = %e, "delivery to peer failed; closing the link and retrying");
                if several {
                    budget = (budget / 2).max(1);
                }
                conn.close(CloseCode::DeliveryFailed.code().into(), b"delivery failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The next items for `peer`, in order, as many as fit in `budget` bytes (at least
/// one): only those on disk (a crash must not give an outbox seq the peer has
/// applied to another item).
pub(super) fn pending(
    relay: &Relay,
    peer: &str,
    budget: usize,
) -> Result<Vec<FedItem>, RelayError> {
    let engine = relay.engine();
    let prefix = keys::outbox_prefix(peer);
    let page = engine.scan_bounded(&prefix, None, BATCH, budget)?;
    // After the read, never before: a batch is recorded in the watermark before it
    // is applied, so an item the read saw that is not on disk yet is held back.
    let durable = relay.readable_upto(&prefix);
    let mut items = Vec::new();
    let mut lens = Vec::new();
    for (k, v) in page {
        let stored: OutboxRecord = decode(&k, &v)?;
        if stored.seq > durable {
            break;
        }
        let read = |community: &str, seq: u64| -> Result<LogEntry, RelayError> {
            let key = crate::store::keys::log(community, seq);
            get_obj(engine, &key)?.ok_or_else(|| RelayError::Corrupt {
                key: format!("outbox {peer} {}", stored.seq),
                reason: format!("entry {seq} of {community} is not in the log"),
            })
        };
        let body = match stored.item {
            Outgoing::Body(body) => body,
            Outgoing::LogEntry { community, seq } => FedBody::Entry {
                entry: Some(read(&community.id, seq)?),
                community,
                seq,
            },
            Outgoing::NoticeEntry { community, seq } => FedBody::NoticeEntry {
                entry: Some(read(&community, seq)?),
                community,
                seq,
            },
        };
        let item = FedItem {
            seq: stored.seq,
            body,
        };
        lens.push(encoded_len(&item));
        if batch_len(&lens, budget) < lens.len() {
            break;
        }
        items.push(item);
    }
    Ok(items)
}

/// Why a peer accredited `accreditation` must not be sent `body` now, if so: the
/// notice it carries and the reason. Accreditation was decided when the item was
/// queued; it may have been lowered since (configuration, or a new certificate).
pub(super) fn refused_at_send(
    body: &FedBody,
    peer: &str,
    accreditation: Option<&Clearance>,
) -> Option<(uuid::Uuid, String)> {
    let (notice_id, label) = match body {
        FedBody::NoticeEntry {
            entry:
                Some(LogEntry {
                    kind:
                        EntryKind::Notice {
                            notice_id, label, ..
                        },
                    ..
                }),
            ..
        } => (*notice_id, label.clone()),
        FedBody::Notice {
            notice_id, message, ..
        } => (
            *notice_id,
            groups::read_application(message)
                .map(|a| a.aad)
                .unwrap_or_default(),
        ),
        _ => return None,
    };
    let reason = match kring_protocol::notice_aad::label_of(&label) {
        Ok(label) => {
            let d = kring_policy::decide_opt(Some(&label), accreditation);
            if d.allowed {
                return None;
            }
            format!("relay {peer} is not accredited for {label}: {d}")
        }
        Err(e) => format!("unreadable label: {e}"),
    };
    Some((notice_id, reason))
}

/// Checks every notice about to go to `peer` against the peer's accreditation as it
/// is now. A notice entry above it goes without its content (`entry: None`, as when
/// the hub withholds it at queueing); a notice for the hub is not sent and leaves
/// the outbox. Either way the refusal is recorded for the filer and audit-logged,
/// once per notice and hop.
pub(super) fn withhold_at_send(
    relay: &Relay,
    peer: &Peer,
    mut items: Vec<FedItem>,
) -> Result<Vec<FedItem>, RelayError> {
    let accreditation = peer.accreditation();
    let mut refused = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some((notice_id, reason)) =
            refused_at_send(&item.body, &peer.id, accreditation.as_ref())
        {
            refused.push((i, notice_id, reason));
        }
    }
    if refused.is_empty() {
        return Ok(items);
    }
    let hop = format!("{}->{}", relay.id(), peer.id);
    let mut unsent = Vec::new();
    relay.write(|w, b| {
        for (i, notice_id, reason) in &refused {
            let item = &items[*i];
            let (community, sender) = match &item.body {
                FedBody::NoticeEntry {
                    community,
                    entry: Some(e),
                    ..
                } => (community.clone(), e.sender.clone()),
                FedBody::Notice {
                    community, sender, ..
                } => {
                    b.delete(keys::outbox(&peer.id, item.seq));
                    unsent.push(*i);
                    (community.clone(), sender.clone())
                }
                _ => continue,
            };
            let known: Option<NoticeRecord> =
                b.get_obj(relay.engine(), &crate::store::keys::notice(notice_id))?;
            if known.is_some_and(|n| n.refusals.iter().any(|r| r.hop == hop)) {
                continue; // recorded when an earlier delivery of it failed
            }
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Withheld,
                    peer.id.clone(),
                    format!("{community} notice {notice_id}"),
                    "send",
                    reason.clone(),
                ),
            )?;
            relay.record_refusal_for(w, b, notice_id, &community, &sender, &hop, reason)?;
        }
        Ok(())
    })?;
    for (i, _, _) in &refused {
        if let FedBody::NoticeEntry { entry, .. } = &mut items[*i].body {
            *entry = None;
        }
    }
    let mut i = 0;
    items.retain(|_| {
        let keep = !unsent.contains(&i);
        i += 1;
        keep
    });
    Ok(items)
}
