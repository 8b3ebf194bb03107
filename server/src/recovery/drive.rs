//! Recovery after a restore, driven from here: asking each peer where it stands,
//! recovering trust, logs and copies from them, and finishing once every peer
//! has answered.

use super::*;

/// Starts asking every peer that has not answered (a restored relay).
pub fn start(relay: &Arc<Relay>) {
    let recovery = relay.recovery();
    if !recovery.active() {
        return;
    }
    let awaiting = recovery.awaiting();
    warn!(
        peers = %awaiting.iter().cloned().collect::<Vec<_>>().join(","),
        "restored from a backup: waiting for peers before ordering or sending anything new"
    );
    if awaiting.is_empty() {
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = finish(&relay).await {
                tracing::error!(error = %e, "cannot finish the recovery");
            }
        });
        return;
    }
    for peer in awaiting {
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                match ask(&relay, &peer).await {
                    Ok(()) => break,
                    Err(e) => {
                        info!(peer = %peer, error = %e, "recovery: peer not answered yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}

pub(super) async fn call(
    relay: &Relay,
    peer: &str,
    request: FedRequest,
) -> Result<FedResponse, RelayError> {
    let unavailable = |why: String| {
        RelayError::Refused(ErrorCode::Unavailable {
            reason: format!("relay {peer}: {why}"),
        })
    };
    relay
        .peer(peer)
        .ok_or_else(|| unavailable("not a peer".into()))?;
    let conn = relay
        .link(peer)
        .wait_conn(Duration::from_secs(30))
        .await
        .ok_or_else(|| unavailable("no link".into()))?;
    match crate::federation::call_peer(
        &conn,
        &request,
        relay.limits().max_frame,
        Duration::from_secs(15),
    )
    .await
    {
        Ok(FedResponse::Response(Response::Error(code))) => Err(RelayError::Refused(code)),
        Ok(r) => Ok(r),
        Err(why) => Err(unavailable(why.to_string())),
    }
}

/// Asks `peer` where it stands, recovers what it holds, and records its answer.
pub(super) async fn ask(relay: &Arc<Relay>, peer: &str) -> Result<(), RelayError> {
    let FedResponse::Whereabouts(w) = call(relay, peer, FedRequest::Whereabouts).await? else {
        return Err(RelayError::UnexpectedAnswer {
            peer: peer.to_string(),
            request: "Whereabouts",
        });
    };
    let mut report: Vec<String> = Vec::new();
    for mark in &w.logs {
        if home_relay(&mark.community) == relay.id() {
            recover_log(relay, peer, mark, &mut report).await?;
        } else if home_relay(&mark.community) == peer {
            recover_copy(relay, peer, mark, &mut report).await?;
        }
    }
    recover_trust(relay, peer, &mut report).await?;
    // Outbox: the items queued since the restore move past what the peer applied.
    let applied_here = get_obj::<u64>(relay.engine(), &applied_key(peer))?.unwrap_or(0);
    let shifted = relay.write(|w_, b| {
        let first = b
            .get_obj::<u64>(relay.engine(), &keys::outbox(peer))?
            .unwrap_or(1);
        let shift = outbox_shift(first, w.applied);
        if shift > 0 {
            // Items from `first` on, highest first so no key is overwritten.
            let mut items = Vec::new();
            let mut after = Some(outbox_key(peer, first - 1));
            loop {
                let page = relay
                    .engine()
                    .scan(&outbox_prefix(peer), after.as_deref(), 1024)?;
                let done = page.len() < 1024;
                after = page.last().map(|(k, _)| k.clone());
                items.extend(page);
                if done {
                    break;
                }
            }
            for (k, v) in items.iter().rev() {
                let mut rec: OutboxRecord = decode(k, v)?;
                b.delete(k.clone());
                rec.seq += shift;
                b.put_obj(outbox_key(peer, rec.seq), &rec)?;
            }
        }
        let next = w_.outbox_next.entry(peer.to_string()).or_insert(1);
        *next = next.saturating_add(shift).max(w.applied.saturating_add(1));
        b.put_obj(outbox_next_key(peer), &*next)?;
        b.put_obj(
            keys::peer(peer),
            &PeerAnswer {
                applied: w.applied,
                shifted: shift,
                at: now(),
            },
        )?;
        Ok(shift)
    })?;
    if let Some(oldest) = w.outbox_oldest
        && oldest > applied_here.saturating_add(1)
    {
        report.push(format!(
            "items {}-{} relay {peer} sent here before the crash were applied then and are \
             lost here (what they carried is recovered only as far as logs hold it)",
            applied_here + 1,
            oldest - 1
        ));
    } else if w.outbox_oldest.is_none() && w.outbox_next > applied_here.saturating_add(1) {
        report.push(format!(
            "items {}-{} relay {peer} sent here before the crash were applied then and are \
             lost here (what they carried is recovered only as far as logs hold it)",
            applied_here + 1,
            w.outbox_next - 1
        ));
    }
    let detail = format!(
        "relay {peer} had applied outbox items up to {}; {} item(s) queued since the restore \
         moved by {shifted}{}{}",
        w.applied,
        if shifted > 0 { "the" } else { "no" },
        if report.is_empty() { "" } else { "; " },
        report.join("; ")
    );
    info!(peer = %peer, %detail, "recovery: peer answered");
    relay.write(|wr, b| {
        wr.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Admin,
                relay.id(),
                peer,
                "restore-recovery",
                kring_protocol::wire::bounded_reason(&detail),
            ),
        )
    })?;
    relay.durable().await?;
    let recovery = relay.recovery();
    let done = {
        let mut awaiting = recovery
            .awaiting
            .lock()
            .map_err(|_| RelayError::Poisoned("recovery"))?;
        awaiting.remove(peer);
        awaiting.is_empty()
    };
    recovery.changed.send_modify(|v| *v = v.wrapping_add(1));
    if done {
        finish(relay).await?;
    }
    Ok(())
}

/// The most statement pages asked of one peer during a recovery: enough for every
/// organisation of the trust map at its cap, and a bound against a peer that pages
/// for ever.
pub(super) fn max_trust_pages(organisations: usize) -> usize {
    let per_page = kring_protocol::wire::limits::MAX_STATEMENTS.max(1);
    (organisations.max(1) * kring_protocol::revocation::MAX_STATEMENTS_PER_ORGANISATION)
        .div_ceil(per_page)
        + 1
}

/// Learns again the revocation statements and CRLs `peer` holds: this relay may
/// have applied some after its backup was taken and acknowledged them, so no
/// outbox sends them again. Each is checked as if it came in an outbox item
/// (signatures, trust map, per-organisation caps); what is new here is stored,
/// passed on and enforced.
pub(super) async fn recover_trust(
    relay: &Arc<Relay>,
    peer: &str,
    report: &mut Vec<String>,
) -> Result<(), RelayError> {
    let first = call(relay, peer, FedRequest::Trust { after: None }).await?;
    let FedResponse::Response(Response::Trust(state)) = first else {
        return Err(RelayError::UnexpectedAnswer {
            peer: peer.to_string(),
            request: "Trust",
        });
    };
    let mut statements = state.statements;
    let mut after = statements.last().map(|s| s.user.clone());
    let mut pages = 1;
    let max_pages = max_trust_pages(relay.trust().iter().count());
    while let Some(last) = after.take() {
        if pages >= max_pages {
            report.push(format!(
                "relay {peer} offered more than {max_pages} pages of revocation statements; \
                 the rest were not read"
            ));
            break;
        }
        pages += 1;
        let answer = call(
            relay,
            peer,
            FedRequest::Trust {
                after: Some(last.clone()),
            },
        )
        .await?;
        let FedResponse::Response(Response::TrustStatements {
            statements: page,
            more,
        }) = answer
        else {
            return Err(RelayError::UnexpectedAnswer {
                peer: peer.to_string(),
                request: "Trust",
            });
        };
        let next = page.last().map(|s| s.user.clone());
        statements.extend(page);
        // Pages run in user-id order; anything else ends the paging.
        if more && next.as_ref().is_some_and(|n| *n > last) {
            after = next;
        }
    }
    let (mut learned, mut refused) = (0usize, Vec::new());
    for statement in &statements {
        let user = statement.user.clone();
        let known = relay.revocations().user_revoked(&user).is_some();
        // One batch each: accepting a statement changes the relay's memory too.
        match relay.write(|w, b| {
            crate::revocation::apply_statement(relay, w, b, peer, statement).map(|_| ())
        }) {
            Ok(()) => {}
            Err(RelayError::Refused(code)) => refused.push(format!("{user}: {code}")),
            Err(e) => return Err(e),
        }
        if !known && relay.revocations().user_revoked(&user).is_some() {
            learned += 1;
        }
    }
    let mut crls = 0usize;
    for copy in &state.crls {
        match relay.write(|w, b| {
            crate::revocation::accept_crl(relay, w, b, &copy.crl, &copy.issuer, Some(peer))
        }) {
            Ok(Some(_)) => crls += 1,
            Ok(None) => {}
            Err(RelayError::Refused(code)) => refused.push(format!("a CRL: {code}")),
            Err(e) => return Err(e),
        }
    }
    relay.durable().await?;
    relay.enforce_soon();
    info!(
        peer = %peer,
        statements = statements.len(),
        learned,
        newer_crls = crls,
        refused = refused.len(),
        "recovery: revocations read again from a peer"
    );
    if learned > 0 || crls > 0 {
        report.push(format!(
            "{learned} revocation statement(s) and {crls} CRL(s) relay {peer} holds were \
             missing here and are applied again"
        ));
    }
    if !refused.is_empty() {
        report.push(format!(
            "{} revocation statement(s) or CRL(s) from relay {peer} refused: {}",
            refused.len(),
            refused.join("; ")
        ));
    }
    Ok(())
}

/// Recovers from `peer` the entries of `mark.community` (hubbed here) it holds
/// beyond this relay's log, and moves the numbering past its last seq.
pub(super) async fn recover_log(
    relay: &Arc<Relay>,
    peer: &str,
    mark: &LogMark,
    report: &mut Vec<String>,
) -> Result<(), RelayError> {
    let community = mark.community.as_str();
    let Some(rec) = relay.community(community)? else {
        let first = relay.write(|w, b| {
            let first = b.get(relay.engine(), &keys::lost(community))?.is_none();
            if first {
                b.put(keys::lost(community), Vec::new());
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Admin,
                        relay.id(),
                        community,
                        "restore-recovery",
                        format!(
                            "community {community} was created after the backup and is lost \
                             here (relay {peer} holds {} entries of it); re-create it under \
                             another name",
                            mark.seq
                        ),
                    ),
                )?;
            }
            Ok(first)
        })?;
        if first {
            warn!(%community, %peer, "recovery: community created after the backup is lost");
        }
        return Ok(());
    };
    if !has_members(&rec.members, peer) {
        // Only a relay with members holds this log: a mark from any other is ignored.
        warn!(%community, %peer, "recovery: ignored a mark from a relay without members");
        report.push(format!(
            "its mark for {community} was ignored: it has no members there"
        ));
        return Ok(());
    }
    let base = get_obj::<u64>(relay.engine(), &keys::base(community))?.unwrap_or(rec.last_seq);
    let target = capped_raise(mark.seq, base);
    if target < mark.seq {
        warn!(%community, %peer, seq = mark.seq, "recovery: capped a mark far past the log");
        report.push(format!(
            "its mark for {community} ({}) is more than {MAX_RAISE} past the log at the \
             restore ({base}): taken as {target}",
            mark.seq
        ));
    }
    let mut after = base;
    let mut recovered = 0usize;
    while after < target {
        let FedResponse::Log { entries, .. } = call(
            relay,
            peer,
            FedRequest::FetchLog {
                community: community.to_string(),
                after,
            },
        )
        .await?
        else {
            return Err(RelayError::UnexpectedAnswer {
                peer: peer.to_string(),
                request: "FetchLog",
            });
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            break;
        };
        if last <= after {
            break;
        }
        for entry in entries {
            if entry.seq <= after || entry.seq > target {
                continue;
            }
            if !plausible_sender(&rec.members, relay.id(), &entry.sender) {
                report.push(format!(
                    "entry {} of {community} refused: its sender {} is homed at no relay \
                     with members",
                    entry.seq, entry.sender
                ));
                continue;
            }
            if store_recovered(relay, community, entry, report)? {
                recovered += 1;
            }
        }
        after = last;
    }
    // Numbering continues after everything the peer has seen (withheld entries too),
    // and member relays that lack entries get them.
    relay.write(|w, b| {
        let Some(mut rec) = relay.community_in(b, community)? else {
            return Ok(());
        };
        if target > rec.last_seq {
            rec.last_seq = target;
            crate::relay::put_last_seq(b, community, target)?;
        }
        let mut marks = relay
            .recovery()
            .marks
            .lock()
            .map_err(|_| RelayError::Poisoned("recovery"))?;
        marks.insert((peer.to_string(), community.to_string()), target);
        let prefix = crate::store::keys::log_prefix(community);
        for ((holder, c), seq) in marks.iter_mut() {
            if c != community || *seq >= rec.last_seq || !has_members(&rec.members, holder) {
                continue;
            }
            let mut from = crate::store::keys::log(community, *seq);
            loop {
                let page = relay
                    .engine()
                    .scan(&prefix, Some(&from), limits::MAX_LOG_PAGE)?;
                let done = page.len() < limits::MAX_LOG_PAGE;
                for (k, v) in &page {
                    let entry: LogEntry = decode(k, v)?;
                    crate::core::outbox::enqueue_log_entry(relay, w, b, holder, &rec, &entry)?;
                }
                match page.last() {
                    Some((k, _)) if !done => from = k.clone(),
                    _ => break,
                }
            }
            *seq = rec.last_seq;
        }
        Ok(())
    })?;
    if recovered > 0 {
        info!(%community, %peer, recovered, "recovery: log entries recovered");
        report.push(format!("{recovered} entries of {community} recovered"));
    }
    Ok(())
}

/// Stores one entry of a log hubbed here recovered from a peer (unless held);
/// replays a commit into the MLS state. True if stored.
pub(super) fn store_recovered(
    relay: &Relay,
    community: &str,
    entry: LogEntry,
    report: &mut Vec<String>,
) -> Result<bool, RelayError> {
    let header = match crate::federation::check_envelope(community, entry.seq, &entry) {
        Ok(h) => h,
        Err(why) => {
            report.push(format!("entry {} of {community} refused: {why}", entry.seq));
            return Ok(false);
        }
    };
    let seq = entry.seq;
    let mut note = None;
    let stored = relay.write(|_, b| {
        let key = crate::store::keys::log(community, seq);
        if b.get(relay.engine(), &key)?.is_some() {
            return Ok(false);
        }
        let Some(mut rec) = relay.community_in(b, community)? else {
            return Ok(false);
        };
        match &entry.kind {
            EntryKind::Notice { notice_id, .. } => {
                let nkey = crate::store::keys::notice(notice_id);
                if b.get(relay.engine(), &nkey)?.is_none() {
                    b.put_obj(
                        nkey,
                        &NoticeRecord {
                            community: community.to_string(),
                            sender: entry.sender.clone(),
                            seq: Some(seq),
                            refusals: Vec::new(),
                        },
                    )?;
                }
            }
            EntryKind::Handshake { .. } => {
                let replayed = (header.epoch == rec.epoch
                    && matches!(header.kind, kring_protocol::mls::MessageKind::Commit))
                .then(|| {
                    let overlay = crate::groups::Overlay::new(relay.engine_arc());
                    let revoked = relay.revocations();
                    crate::groups::process_handshake(
                        &overlay,
                        community,
                        &entry.message,
                        relay.anchors(),
                        &relay.trust(),
                        now() as u64,
                        &revoked,
                    )
                    .and_then(|staged| {
                        let added: Vec<String> =
                            staged.added.iter().map(|(u, _)| u.clone()).collect();
                        crate::groups::merge(
                            &overlay,
                            community,
                            staged,
                            relay.anchors(),
                            &relay.trust(),
                            now() as u64,
                        )
                        .map(|view| (overlay, view, added))
                    })
                });
                match replayed {
                    Some(Ok((overlay, view, added))) => {
                        b.extend(overlay.into_batch());
                        let before = std::mem::replace(&mut rec.members, view.members);
                        rec.admins = view.admins;
                        rec.epoch = view.epoch;
                        rec.last_seq = rec.last_seq.max(seq);
                        crate::relay::put_community(b, &rec)?;
                        relay.update_local_members(b, &rec, &before, seq)?;
                        let local: Vec<&String> = added
                            .iter()
                            .filter(|u| home_relay(u) == relay.id())
                            .collect();
                        if !local.is_empty() {
                            note = Some(format!(
                                "the Welcome of the commit at {seq} of {community} for {} is \
                                 lost: add them again",
                                local
                                    .iter()
                                    .map(|u| u.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                        }
                    }
                    Some(Err(e)) => {
                        note = Some(format!(
                            "the commit at {seq} of {community} could not be replayed ({e}): \
                             the community needs re-creating"
                        ));
                    }
                    None => {
                        note = Some(format!(
                            "the handshake at {seq} of {community} (epoch {}) was not replayed \
                             (the group is at epoch {})",
                            header.epoch, rec.epoch
                        ));
                    }
                }
            }
        }
        b.put_obj(key, &entry)?;
        if seq > rec.last_seq {
            crate::relay::put_last_seq(b, community, seq)?;
        }
        Ok(true)
    })?;
    if let Some(note) = note {
        warn!(%community, seq, "recovery: {note}");
        report.push(note);
    }
    Ok(stored)
}

/// Recovers from `peer`, the hub of `mark.community`, the entries this relay's
/// copy lacks (notices; commits are stored and the community taken as the hub says
/// it stands now).
pub(super) async fn recover_copy(
    relay: &Arc<Relay>,
    peer: &str,
    mark: &LogMark,
    report: &mut Vec<String>,
) -> Result<(), RelayError> {
    let community = mark.community.as_str();
    let Some(rec) = relay.community(community)? else {
        return Ok(());
    };
    let mut after = rec.last_seq;
    let mut recovered = 0usize;
    let mut now_summary = None;
    while after < mark.seq {
        let FedResponse::Log {
            entries,
            last_seq,
            community: summary,
        } = call(
            relay,
            peer,
            FedRequest::FetchLog {
                community: community.to_string(),
                after,
            },
        )
        .await?
        else {
            return Err(RelayError::UnexpectedAnswer {
                peer: peer.to_string(),
                request: "FetchLog",
            });
        };
        now_summary = summary.or(now_summary);
        let last = entries.last().map_or(last_seq, |e| e.seq);
        relay.write(|_, b| {
            for entry in &entries {
                if entry.seq <= after
                    || crate::federation::check_envelope(community, entry.seq, entry).is_err()
                {
                    continue;
                }
                let key = crate::store::keys::log(community, entry.seq);
                if b.get(relay.engine(), &key)?.is_none() {
                    b.put_obj(key, entry)?;
                    if let EntryKind::Notice {
                        notice_id, label, ..
                    } = &entry.kind
                    {
                        crate::relay::put_notice_blobs(
                            relay,
                            b,
                            notice_id,
                            community,
                            label,
                            Some(peer),
                        )?;
                    }
                    recovered += 1;
                }
            }
            crate::relay::put_last_seq(b, community, last.max(after))
        })?;
        if last <= after || entries.is_empty() {
            break;
        }
        after = last;
    }
    if let Some(summary) = now_summary {
        relay.write(|_, b| {
            let Some(mut rec) = relay.community_in(b, community)? else {
                return Ok(());
            };
            if rec.members != summary.members || rec.epoch != summary.epoch {
                let before = std::mem::replace(&mut rec.members, summary.members.clone());
                rec.admins = summary.admins.clone();
                rec.epoch = summary.epoch;
                crate::relay::put_community(b, &rec)?;
                relay.update_local_members(b, &rec, &before, rec.last_seq)?;
            }
            Ok(())
        })?;
    }
    if recovered > 0 {
        report.push(format!(
            "{recovered} entries of {community} recovered from its hub"
        ));
    }
    Ok(())
}

/// All peers have answered: reports what no peer held and ends the recovery.
pub(super) async fn finish(relay: &Arc<Relay>) -> Result<(), RelayError> {
    let engine = relay.engine();
    let mut lines = Vec::new();
    for (k, v) in engine.scan(keys::BASES, None, usize::MAX)? {
        let community = String::from_utf8_lossy(&k[keys::BASES.len()..]).into_owned();
        let base: u64 = decode(&k, &v)?;
        let Some(rec) = relay.community(&community)? else {
            continue;
        };
        let prefix = crate::store::keys::log_prefix(&community);
        let present: Vec<u64> = engine
            .scan(
                &prefix,
                Some(&crate::store::keys::log(&community, base)),
                usize::MAX,
            )?
            .into_iter()
            .filter_map(|(k, _)| {
                k.get(k.len().saturating_sub(8)..)
                    .and_then(|s| s.try_into().ok())
                    .map(u64::from_be_bytes)
            })
            .collect();
        let missing = missing_ranges(present, base, rec.last_seq);
        if !missing.is_empty() {
            lines.push(format!(
                "entries {} of {community} are held by no peer (withheld from every other \
                 relay, or only for this relay's devices) and cannot be recovered",
                ranges_text(&missing)
            ));
        }
    }
    let detail = if lines.is_empty() {
        "recovery complete: every peer answered; nothing found missing".to_string()
    } else {
        format!("recovery complete: {}", lines.join("; "))
    };
    warn!(%detail, "recovery: complete");
    relay.write(|w, b| {
        let mut state = load(relay.engine())?
            .ok_or_else(|| RelayError::Restore("the restore state disappeared during recovery"))?;
        state.finished = true;
        b.put_obj(keys::STATE.to_vec(), &state)?;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Admin,
                relay.id(),
                "-",
                "restore-recovery",
                kring_protocol::wire::bounded_reason(&detail),
            ),
        )
    })?;
    relay.durable().await?;
    relay.recovery().active.store(false, Ordering::Release);
    relay
        .recovery()
        .changed
        .send_modify(|v| *v = v.wrapping_add(1));
    // Removals held back while recovering are proposed now.
    relay.enforce_soon();
    Ok(())
}
