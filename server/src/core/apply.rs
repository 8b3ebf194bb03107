//! Applying what a peer delivers, in the core: each outbox item exactly once,
//! checked against policy at this hop (accreditations, hub, filer's home relay,
//! epochs), with the limits on what a peer may register here. The shell
//! ([`crate::federation`]) reads deliveries off the link, runs these inside one
//! write, makes them durable and acknowledges.

use kring_policy::{Label, decide};
use kring_protocol::mls::{MessageHeader, MessageKind};
use kring_protocol::wire::{CommunitySummary, EntryKind, ErrorCode, FedBody, FedItem, LogEntry};

use crate::audit::{AuditEvent, AuditKind};
use crate::core::outbox::enqueue;
use crate::core::peers::audit_peer_refusal;
use crate::core::{Core, Writer, home_relay};
use crate::error::{EntryRefusal, RelayError};
use crate::groups;
use crate::keyspace::federation as keys;
use crate::records::{CommunityRecord, NoticeRecord};
use crate::store::Batch;

/// Most communities hubbed at one peer that one user of this relay may be a member
/// of here; a hub registering the user in more is refused.
pub const MAX_PEER_COMMUNITIES_PER_USER: u64 = 1_000;
/// Most communities one peer hub may register at this relay.
pub const MAX_PEER_COMMUNITIES: u64 = 100_000;

/// Applies `item` into `b` unless `upto` (the last item applied) covers it; returns
/// the new `upto`.
pub fn apply_once(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    upto: u64,
    item: FedItem,
) -> Result<u64, RelayError> {
    let seq = item.seq;
    if seq <= upto {
        return Ok(upto); // already applied: a retry after a lost ack
    }
    let mark = b.mark();
    let saved = w.clone();
    match apply_item(core, w, b, peer, item.body) {
        Ok(()) => {}
        Err(RelayError::Refused(code)) => {
            b.rollback(mark);
            *w = saved;
            core.metrics()
                .refused(crate::metrics::KIND_FEDERATION_ITEM, &code);
            audit_peer_refusal(
                core,
                w,
                b,
                peer,
                AuditEvent::new(
                    AuditKind::Refusal,
                    peer,
                    format!("item {seq}"),
                    "federation-item",
                    code.to_string(),
                ),
            )?;
        }
        Err(other) => return Err(other),
    }
    b.put_obj(keys::applied(peer), &seq)?;
    Ok(seq)
}

pub fn refuse(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    what: &str,
    reason: String,
) -> Result<(), RelayError> {
    w.counts.items_not_accepted += 1;
    audit_peer_refusal(
        core,
        w,
        b,
        peer,
        AuditEvent::new(AuditKind::Refusal, peer, what, "federation-item", reason),
    )
}

pub fn apply_item(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    body: FedBody,
) -> Result<(), RelayError> {
    match body {
        FedBody::Notice {
            community,
            notice_id,
            sender,
            message,
        } => {
            if home_relay(&sender) != peer {
                return refuse(
                    core,
                    w,
                    b,
                    peer,
                    &community,
                    format!("{sender} is not a user of relay {peer}"),
                );
            }
            let result = groups::read_application(&message)
                .map_err(|reason| {
                    RelayError::Refused(ErrorCode::BadRequest {
                        reason: format!("not an MLS application message: {reason}"),
                    })
                })
                .and_then(|app| {
                    let mut rec = core.hub_community(b, &community, &sender)?;
                    core.order_notice(
                        w,
                        b,
                        &mut rec,
                        &sender,
                        None,
                        Some(peer),
                        notice_id,
                        app,
                        message,
                    )
                });
            match result {
                Ok(_) => Ok(()),
                Err(RelayError::Refused(code)) => {
                    // The refusal goes back to the filer's home relay with the reason.
                    core.record_refusal_for(
                        w,
                        b,
                        &notice_id,
                        &community,
                        &sender,
                        core.id(),
                        &code.to_string(),
                    )
                }
                Err(other) => Err(other),
            }
        }
        FedBody::Entry {
            community,
            seq,
            entry,
        } => {
            let id = community.id.clone();
            apply_entry(core, w, b, peer, &id, Some(community), seq, entry)
        }
        FedBody::NoticeEntry {
            community,
            seq,
            entry,
        } => {
            if entry
                .as_ref()
                .is_some_and(|e| !matches!(e.kind, EntryKind::Notice { .. }))
            {
                return refuse(
                    core,
                    w,
                    b,
                    peer,
                    &community,
                    "a commit sent as a notice".into(),
                );
            }
            apply_entry(core, w, b, peer, &community, None, seq, entry)
        }
        FedBody::Welcome {
            user,
            community,
            welcome,
            ratchet_tree,
        } => apply_welcomes(
            core,
            w,
            b,
            peer,
            &[user],
            &community,
            &welcome,
            &ratchet_tree,
        ),
        FedBody::Welcomes {
            users,
            community,
            welcome,
            ratchet_tree,
        } => apply_welcomes(
            core,
            w,
            b,
            peer,
            &users,
            &community,
            &welcome,
            &ratchet_tree,
        ),
        FedBody::Revocation { statement } => {
            crate::core::revocation::apply_statement(core, w, b, peer, &statement)
        }
        FedBody::DeclaredClients { clients } => {
            // What the peer's organisation declares: kept for the forwards that follow.
            b.put_obj(keys::declared_clients(peer), &clients)?;
            Ok(())
        }
        FedBody::Retention { community, seconds } => {
            match crate::core::retention::apply_from_hub(core, w, b, peer, &community, seconds)? {
                Ok(()) => Ok(()),
                Err(why) => refuse(core, w, b, peer, &community, why.to_string()),
            }
        }
        FedBody::Crl { crl, issuer } => {
            crate::core::revocation::accept_crl(core, w, b, &crl, &issuer, Some(peer)).map(|_| ())
        }
        FedBody::Refusal {
            notice_id,
            hop,
            reason,
        } => {
            let rec: Option<NoticeRecord> =
                b.get_obj(core.engine(), &crate::store::keys::notice(&notice_id))?;
            let Some(rec) = rec else {
                let reason =
                    format!("refusal by {hop} ignored: notice {notice_id} is unknown here");
                return refuse(core, w, b, peer, &format!("notice {notice_id}"), reason);
            };
            if let Err(why) = refusal_source(core, b, peer, &rec, &hop)? {
                let what = format!("{} notice {notice_id}", rec.community);
                let reason = format!("refusal by {hop} ignored: {why}");
                return refuse(
                    core,
                    w,
                    b,
                    peer,
                    &what,
                    kring_protocol::wire::bounded_reason(&reason),
                );
            }
            if rec.seq.is_none() && hop == home_relay(&rec.community) {
                // The hub refused it: it will never be ordered, and its files are
                // handed to nobody (the sweep removes them in time).
                b.delete(crate::keyspace::attachments::notice(
                    &rec.community,
                    &notice_id,
                ));
            }
            core.record_refusal_for(w, b, &notice_id, &rec.community, &rec.sender, &hop, &reason)
        }
    }
}

/// Whether `peer` may report that `hop` refused the notice of `rec`: only the core
/// the notice went to from here. At the filer's home relay that is the community's
/// hub (which also passes on the refusals of the relays after it); at the hub, a
/// relay with members in the community, about itself (`HUB->PEER`), once the
/// notice is ordered. `Ok(Err(why))` if not.
pub fn refusal_source(
    core: &Core,
    b: &Batch,
    peer: &str,
    rec: &NoticeRecord,
    hop: &str,
) -> Result<Result<(), EntryRefusal>, RelayError> {
    let hub = home_relay(&rec.community);
    if hub != core.id() {
        if home_relay(&rec.sender) != core.id() {
            return Ok(Err(EntryRefusal::NotOurs { hub: hub.into() }));
        }
        if peer != hub {
            return Ok(Err(EntryRefusal::NotSentThere {
                hub: hub.into(),
                peer: peer.into(),
            }));
        }
        return Ok(Ok(()));
    }
    if rec.seq.is_none() {
        return Ok(Err(EntryRefusal::NotOrdered));
    }
    let own_hop = format!("{hub}->{peer}");
    if hop != own_hop {
        return Ok(Err(EntryRefusal::NotOwnHop {
            peer: peer.into(),
            own_hop,
        }));
    }
    let went_there = core
        .community_in(b, &rec.community)?
        .is_some_and(|c| c.members.iter().any(|m| home_relay(m) == peer));
    if !went_there {
        return Ok(Err(EntryRefusal::NoMemberThere {
            peer: peer.into(),
            community: rec.community.clone(),
        }));
    }
    Ok(Ok(()))
}

/// Stores a Welcome from `peer`, the community's hub, for `users`, all users of
/// this relay, once.
#[allow(clippy::too_many_arguments)]
pub fn apply_welcomes(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    users: &[String],
    community: &str,
    welcome: &[u8],
    ratchet_tree: &[u8],
) -> Result<(), RelayError> {
    let stray = users.iter().find(|u| home_relay(u) != core.id());
    if home_relay(community) != peer || stray.is_some() {
        let whom = stray.map_or("its members", |u| u.as_str());
        let reason = format!("welcome for {whom} not routed via its hub to its home relay");
        return refuse(core, w, b, peer, community, reason);
    }
    // A name with a `\0` or other bytes no user id has would be stored under
    // another user's keys, where it waits for ever.
    if let Some(bad) = users
        .iter()
        .find(|u| kring_protocol::identity::parse_user_id(u).is_err())
    {
        let reason = format!("welcome for a malformed user id {bad:?}");
        return refuse(core, w, b, peer, community, reason);
    }
    crate::core::store_welcome(b, users, community, welcome, ratchet_tree)
}

/// Applies entry `seq` of `id`'s log from its hub `peer`: with the community as it
/// stands after it (`summary`, a commit) or as it was (`None`, a notice).
#[allow(clippy::too_many_arguments)]
pub fn apply_entry(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    id: &str,
    summary: Option<CommunitySummary>,
    seq: u64,
    entry: Option<LogEntry>,
) -> Result<(), RelayError> {
    if home_relay(id) != peer {
        return refuse(
            core,
            w,
            b,
            peer,
            id,
            format!("relay {peer} is not the hub of {id}"),
        );
    }
    // The envelope must say what the MLS message inside says: neither the hub nor
    // anybody holding its link moves an entry into another community's log, to
    // another seq or epoch, or past an accreditation check with another label.
    let header = match entry
        .as_ref()
        .map(|e| check_envelope(id, seq, e))
        .transpose()
    {
        Ok(header) => header,
        Err(reason) => return refuse_entry(core, w, b, peer, id, entry.as_ref(), reason),
    };
    let has_local = |members: &[String]| members.iter().any(|m| home_relay(m) == core.id());
    let existing = core.community_in(b, id)?;
    // Every handshake of a community reaches a relay while it has members there, so
    // the next one must be of the epoch the relay holds (at least that epoch after
    // a time without members).
    let continuous = existing.as_ref().is_some_and(|r| has_local(&r.members));
    let held_epoch = existing.as_ref().map_or(0, |r| r.epoch);
    let new_community = existing.is_none();
    let mut rec = match (existing, &summary) {
        (Some(rec), _) => rec,
        (None, None) => {
            return refuse(
                core,
                w,
                b,
                peer,
                id,
                "a notice of a community unknown here".into(),
            );
        }
        (None, Some(summary)) => {
            if !has_local(&summary.members) {
                return refuse(
                    core,
                    w,
                    b,
                    peer,
                    id,
                    "no user of this relay is a member".into(),
                );
            }
            let max: Label =
                summary
                    .max_label
                    .parse()
                    .map_err(|e: kring_policy::PolicyError| {
                        RelayError::Refused(ErrorCode::BadRequest {
                            reason: e.to_string(),
                        })
                    })?;
            CommunityRecord {
                id: id.to_string(),
                hub: peer.to_string(),
                max_label: max.to_bytes(),
                admins: Vec::new(),
                members: Vec::new(),
                epoch: 0,
                last_seq: seq.saturating_sub(1),
                created_by: String::new(),
                created_at: w.now,
            }
        }
    };
    if seq <= rec.last_seq {
        return Ok(()); // already have it
    }
    if let (Some(header), Some(e)) = (&header, &entry)
        && let Err(reason) = check_epoch(header, &e.kind, summary.as_ref(), held_epoch, continuous)
    {
        return refuse_entry(core, w, b, peer, id, Some(e), reason);
    }
    if let Some(summary) = &summary
        && let Err(reason) = count_registrations(core, b, peer, id, new_community, summary)?
    {
        return refuse_entry(core, w, b, peer, id, entry.as_ref(), reason);
    }
    if let Some(entry) = entry {
        let mut keep = true;
        if let EntryKind::Notice { notice_id, .. } = &entry.kind {
            // The label is the message's authenticated data (`check_envelope`
            // made sure the entry's label is the same).
            let label: &[u8] = match header.as_ref().map(|h| &h.kind) {
                Some(MessageKind::Application { aad }) => aad,
                _ => &[],
            };
            let verdict = kring_protocol::notice_aad::label_of(label)
                .map_err(|e| format!("unreadable label: {e}"))
                .and_then(|label| {
                    let own = decide(&label, &core.accreditation());
                    if !own.allowed {
                        return Err(format!(
                            "relay {} is not accredited for {label}: {own}",
                            core.id()
                        ));
                    }
                    let theirs = kring_policy::decide_opt(
                        Some(&label),
                        core.relay_accreditation(peer).as_ref(),
                    );
                    if !theirs.allowed {
                        return Err(format!(
                            "relay {peer} is not accredited for {label}: {theirs}"
                        ));
                    }
                    Ok(())
                });
            if let Err(reason) = verdict {
                keep = false;
                let hop = format!("{peer}->{}", core.id());
                audit_peer_refusal(
                    core,
                    w,
                    b,
                    peer,
                    AuditEvent::new(
                        AuditKind::Withheld,
                        peer,
                        format!("{id} notice {notice_id}"),
                        "receive",
                        reason.clone(),
                    ),
                )?;
                enqueue(
                    core,
                    w,
                    b,
                    peer,
                    FedBody::Refusal {
                        notice_id: *notice_id,
                        hop,
                        reason: kring_protocol::wire::bounded_reason(&reason),
                    },
                )?;
            } else {
                // The filer's home relay learns the hub's ordering.
                let key = crate::store::keys::notice(notice_id);
                if let Some(mut n) = b.get_obj::<NoticeRecord>(core.engine(), &key)?
                    && n.community == id
                {
                    n.seq = Some(seq);
                    b.put_obj(key, &n)?;
                }
            }
        }
        if keep {
            if let EntryKind::Notice {
                notice_id, label, ..
            } = &entry.kind
            {
                // Its blobs come from the hub when a member here asks for them
                // (unless it was filed here, with them).
                crate::core::put_notice_blobs(core, b, notice_id, id, label, Some(peer))?;
            }
            b.put_obj(crate::store::keys::log(id, seq), &entry)?;
        }
    }
    rec.last_seq = seq;
    let Some(summary) = summary else {
        return crate::core::put_last_seq(b, id, seq);
    };
    let members_changed = rec.members != summary.members;
    let before = std::mem::replace(&mut rec.members, summary.members);
    rec.admins = summary.admins;
    rec.epoch = summary.epoch;
    crate::core::put_community(b, &rec)?;
    if members_changed {
        core.update_local_members(b, &rec, &before, seq)?;
    }
    Ok(())
}

/// Counts, in `b`, a community `id` that hub `peer` registers here (`new`) and the
/// users of this relay it makes members for the first time, within
/// [`MAX_PEER_COMMUNITIES`] and [`MAX_PEER_COMMUNITIES_PER_USER`]: a hub cannot
/// bury a user's real communities under made-up ones, nor fill this relay's disk.
/// `Ok(Err(why))` (nothing counted) past a limit.
pub fn count_registrations(
    core: &Core,
    b: &mut Batch,
    peer: &str,
    id: &str,
    new: bool,
    summary: &CommunitySummary,
) -> Result<Result<(), EntryRefusal>, RelayError> {
    let engine = core.engine();
    let mut counts = Vec::new();
    if new {
        let key = keys::hubbed(peer);
        let n = b.get_obj::<u64>(engine, &key)?.unwrap_or(0);
        if n >= MAX_PEER_COMMUNITIES {
            return Ok(Err(EntryRefusal::TooManyCommunities {
                hub: peer.into(),
                count: n,
                limit: MAX_PEER_COMMUNITIES,
            }));
        }
        counts.push((key, n + 1));
    }
    let mut seen = std::collections::HashSet::new();
    for user in summary
        .members
        .iter()
        .filter(|u| home_relay(u) == core.id())
    {
        if !seen.insert(user.as_str())
            || b.get(engine, &crate::store::keys::member(user, id))?
                .is_some()
        {
            continue;
        }
        let key = keys::hubbed_for(peer, user);
        let n = b.get_obj::<u64>(engine, &key)?.unwrap_or(0);
        if n >= MAX_PEER_COMMUNITIES_PER_USER {
            return Ok(Err(EntryRefusal::TooManyForUser {
                hub: peer.into(),
                user: user.clone(),
                count: n,
                community: id.into(),
                limit: MAX_PEER_COMMUNITIES_PER_USER,
            }));
        }
        counts.push((key, n + 1));
    }
    for (key, n) in counts {
        b.put_obj(key, &n)?;
    }
    Ok(Ok(()))
}

/// Checks that entry `seq` of `id`'s log, as its hub sent it, says what its MLS
/// message says; returns the message's header or why not.
pub fn check_envelope(id: &str, seq: u64, entry: &LogEntry) -> Result<MessageHeader, EntryRefusal> {
    if entry.community != id {
        return Err(EntryRefusal::OtherCommunity {
            seq,
            community: id.into(),
            named: entry.community.clone(),
        });
    }
    if entry.seq != seq {
        return Err(EntryRefusal::OtherSeq {
            seq,
            community: id.into(),
            named: entry.seq,
        });
    }
    kring_protocol::mls::check_entry(entry).map_err(|error| EntryRefusal::Message {
        seq,
        community: id.into(),
        error,
    })
}

/// Checks the epoch of a verified entry against the community as this relay holds
/// it (`held`, of a community whose handshakes all reached this relay if
/// `continuous`) and as the hub says it stands after the entry (`after`).
pub fn check_epoch(
    header: &MessageHeader,
    kind: &EntryKind,
    after: Option<&CommunitySummary>,
    held: u64,
    continuous: bool,
) -> Result<(), EntryRefusal> {
    let epoch = header.epoch;
    match kind {
        EntryKind::Handshake { .. } => {
            if epoch < held || (continuous && epoch != held) {
                return Err(EntryRefusal::HandshakeEpoch { epoch, held });
            }
            let next = match header.kind {
                MessageKind::Commit => epoch.saturating_add(1),
                _ => epoch,
            };
            match after {
                Some(after) if after.epoch != next => Err(EntryRefusal::HandshakeLeads {
                    epoch,
                    after: after.epoch,
                }),
                _ => Ok(()),
            }
        }
        EntryKind::Notice { .. } => {
            let current = after.map_or(held, |a| a.epoch);
            if epoch > current {
                return Err(EntryRefusal::NoticeEpoch { epoch, current });
            }
            Ok(())
        }
    }
}

/// Refuses entry `entry` of `id` from its hub `peer`: audit-logged, and for a
/// notice reported back to the hub (which tells the filer's home relay).
pub fn refuse_entry(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    id: &str,
    entry: Option<&LogEntry>,
    reason: EntryRefusal,
) -> Result<(), RelayError> {
    let reason = kring_protocol::wire::bounded_reason(&reason.to_string());
    refuse(core, w, b, peer, id, reason.clone())?;
    if let Some(LogEntry {
        kind: EntryKind::Notice { notice_id, .. },
        ..
    }) = entry
    {
        enqueue(
            core,
            w,
            b,
            peer,
            FedBody::Refusal {
                notice_id: *notice_id,
                hop: format!("{peer}->{}", core.id()),
                reason,
            },
        )?;
    }
    Ok(())
}
