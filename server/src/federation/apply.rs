//! Applying what a peer delivers: each outbox item exactly once, checked against
//! policy at this hop (accreditations, hub, filer's home relay, epochs), with the
//! limits on what a peer may register here.

use super::*;
use crate::core::outbox::get_u64;

/// Applies items from `peer` exactly once each, then makes them durable.
///
/// Items that only touch the store are applied in one batch (reads inside see the
/// batch's earlier writes); a revocation or CRL, which also changes the relay's
/// memory, gets a batch of its own. A refused item is rolled back, recorded and
/// skipped: it must not block the link.
pub(crate) async fn apply_items(
    relay: &Relay,
    peer: &str,
    items: Vec<FedItem>,
) -> Result<u64, RelayError> {
    let touches_memory =
        |body: &FedBody| matches!(body, FedBody::Revocation { .. } | FedBody::Crl { .. });
    let revocations_changed = items.iter().any(|i| touches_memory(&i.body));
    // A delivery of nothing but entries of the logs `peer` is the hub of may reach
    // this relay's devices before the flush (`Relay::deliver_early`); anything else
    // (a Welcome for the members a commit adds, above all) waits for the flush.
    let only_entries = items
        .iter()
        .all(|i| matches!(i.body, FedBody::Entry { .. } | FedBody::NoticeEntry { .. }));
    let mut early: Vec<String> = Vec::new();
    if only_entries {
        for item in &items {
            let id = match &item.body {
                FedBody::Entry { community, .. } => community.id.as_str(),
                FedBody::NoticeEntry { community, .. } => community.as_str(),
                _ => continue,
            };
            if home_relay(id) == peer && !early.iter().any(|c| c == id) {
                early.push(id.to_string());
            }
        }
    }
    let mut writes = Vec::new();
    let mut upto = get_u64(relay.engine(), &keys::applied(peer))?;
    let mut items = items.into_iter().peekable();
    while let Some(first) = items.next() {
        let alone = touches_memory(&first.body);
        let (applied, write) = relay.write_numbered(|w, b| {
            let mut upto = b
                .get_obj::<u64>(relay.engine(), &keys::applied(peer))?
                .unwrap_or(0);
            let mut next = Some(first);
            while let Some(item) = next.take() {
                upto = crate::core::apply::apply_once(relay, w, b, peer, upto, item)?;
                if !alone {
                    next = items.next_if(|i| !touches_memory(&i.body));
                }
            }
            Ok(upto)
        })?;
        upto = applied;
        if write != 0 {
            writes.push(write);
        }
    }
    relay.deliver_early(&writes, &early);
    relay.durable().await?;
    if revocations_changed {
        relay.enforce_soon();
    }
    Ok(upto)
}
