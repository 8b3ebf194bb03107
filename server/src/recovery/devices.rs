//! Devices of a restored relay report their cursors before they subscribe.

use super::*;

/// Answers [`Request::Cursors`](kring_protocol::wire::Request::Cursors) from a device.
pub async fn cursors(
    relay: &Relay,
    caller: &Caller,
    marks: Vec<LogMark>,
) -> Result<Response, RelayError> {
    if !relay.recovery().restored() {
        return Ok(Response::Cursors { rewind: Vec::new() });
    }
    let (rewind, notes) = relay.write(|w, b| {
        let mut rewind = Vec::new();
        let mut notes = Vec::new();
        for mark in &marks {
            let community = mark.community.as_str();
            if home_relay(community) != relay.id() {
                continue;
            }
            let reported = keys::device(&caller.id, community);
            if b.get(relay.engine(), &reported)?.is_some() {
                continue;
            }
            let Some(m) = b.get_obj::<MemberRecord>(
                relay.engine(),
                &crate::store::keys::member(&caller.id, community),
            )?
            else {
                continue;
            };
            let Some(rec) = relay.community_in(b, community)? else {
                continue;
            };
            let resumed = b.get_obj::<u64>(relay.engine(), &keys::resumed(community))?;
            let base = b
                .get_obj::<u64>(relay.engine(), &keys::base(community))?
                .unwrap_or(rec.last_seq);
            let verdict = device_verdict(
                mark.seq,
                rec.last_seq,
                base,
                resumed,
                relay.recovery().active(),
            );
            if let Some(raise) = verdict.raise_to {
                crate::relay::put_last_seq(b, community, raise)?;
                notes.push(format!(
                    "{} had seen {community} up to {raise}, past its log ({}): entries {}-{raise} \
                     are lost here and numbering continues after {raise}",
                    caller.id,
                    rec.last_seq,
                    rec.last_seq.saturating_add(1)
                ));
            }
            if let Some(to) = verdict.rewind_to {
                let ckey = crate::store::keys::cursor(&caller.id, community);
                let current = relay.cursor_of(&caller.id, community, &m)?;
                if current > to {
                    b.put(ckey, to.max(m.joined_seq).to_be_bytes().to_vec());
                }
                rewind.push(LogMark {
                    community: community.to_string(),
                    seq: to,
                });
                notes.push(format!(
                    "{} had seen old entries of {community} up to {}, numbered again since \
                     the restore from {}: its cursor goes back to {to}",
                    caller.id,
                    mark.seq,
                    to.saturating_add(1)
                ));
            }
            b.put(reported, Vec::new());
        }
        for note in &notes {
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Admin,
                    relay.id(),
                    caller.id.clone(),
                    "restore-recovery",
                    kring_protocol::wire::bounded_reason(note),
                ),
            )?;
        }
        Ok((rewind, notes))
    })?;
    for note in notes {
        warn!("recovery: {note}");
    }
    relay.durable().await?;
    Ok(Response::Cursors { rewind })
}
