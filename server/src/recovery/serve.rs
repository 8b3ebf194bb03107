//! What a restored relay's peers ask of this relay: where its outbox to them
//! stands, and the entries of a log it holds for them.

use super::*;

/// Answers [`FedRequest::Whereabouts`] from `peer`.
pub fn whereabouts(relay: &Relay, peer: &str) -> Result<FedResponse, RelayError> {
    let engine = relay.engine();
    let applied = get_obj::<u64>(engine, &applied_key(peer))?.unwrap_or(0);
    let outbox_oldest = engine
        .scan(&outbox_prefix(peer), None, 1)?
        .into_iter()
        .next()
        .map(|(k, v)| decode::<OutboxRecord>(&k, &v).map(|r| r.seq))
        .transpose()?;
    let outbox_next = get_obj::<u64>(engine, &outbox_next_key(peer))?
        .unwrap_or(0)
        .max(1);
    let mut logs = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    'pages: loop {
        let page = engine.scan(crate::store::keys::COMMUNITIES, after.as_deref(), 1024)?;
        let done = page.len() < 1024;
        for (k, v) in &page {
            let rec: CommunityRecord = decode(k, v)?;
            let theirs = rec.hub == peer;
            let ours_with_them =
                rec.hub == relay.id() && rec.members.iter().any(|m| home_relay(m) == peer);
            if !theirs && !ours_with_them {
                continue;
            }
            let last = relay
                .community(&rec.id)?
                .map_or(rec.last_seq, |r| r.last_seq);
            logs.push(LogMark {
                community: rec.id,
                seq: last,
            });
            if logs.len() >= limits::MAX_LIST {
                break 'pages;
            }
        }
        after = page.last().map(|(k, _)| k.clone());
        if done || after.is_none() {
            break;
        }
    }
    Ok(FedResponse::Whereabouts(Whereabouts {
        applied,
        outbox_oldest,
        outbox_next,
        logs,
    }))
}

/// Answers [`FedRequest::FetchLog`] from `peer`: only the community's hub (for
/// its own log, restored) or a relay with members in a community hubbed here.
pub fn fetch_log(
    relay: &Relay,
    peer: &str,
    community: &str,
    after: u64,
) -> Result<FedResponse, RelayError> {
    let rec = relay.community(community)?.ok_or(ErrorCode::NotFound {
        what: format!("community {community}"),
    })?;
    let hubbed_here = rec.hub == relay.id();
    let allowed = if hubbed_here {
        rec.members.iter().any(|m| home_relay(m) == peer)
    } else {
        rec.hub == peer
    };
    if !allowed {
        return Err(ErrorCode::NotMember.into());
    }
    let engine = relay.engine();
    let prefix = crate::store::keys::log_prefix(community);
    let readable = relay.readable_upto(&prefix);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let max_bytes = relay.limits().max_frame / 2;
    for (k, v) in engine.scan(
        &prefix,
        Some(&crate::store::keys::log(community, after)),
        limits::MAX_LOG_PAGE,
    )? {
        let entry: LogEntry = decode(&k, &v)?;
        if entry.seq > readable {
            break;
        }
        if hubbed_here && let EntryKind::Notice { label, .. } = &entry.kind {
            // As the fan-out would: nothing above the peer's accreditation.
            let allowed = kring_protocol::notice_aad::label_of(label).is_ok_and(|l| {
                kring_policy::decide_opt(Some(&l), relay.relay_accreditation(peer).as_ref()).allowed
            });
            if !allowed {
                continue;
            }
        }
        if !fits_budget(entries.len(), bytes, v.len(), max_bytes) {
            break;
        }
        bytes += v.len();
        entries.push(entry);
    }
    Ok(FedResponse::Log {
        entries,
        last_seq: rec.last_seq.min(readable),
        community: hubbed_here.then(|| crate::relay::summary(&rec)),
    })
}

// ----- the restored relay's side -----------------------------------------------------
