//! Enforcing revocations: closing revoked identities' connections and proposing the
//! removal of revoked members from every community hubbed here.

use super::*;

/// Runs until the relay stops: enforces the revocation set when it changes and
/// looks again at a community hubbed here when a commit lands in it (only then:
/// nothing is re-verified while nothing changes); re-reads configured CRL files
/// when they change.
pub async fn enforce_loop(relay: Arc<Relay>) {
    let mut rx = relay.enforce_signal();
    let mut crl_files: Vec<PathBuf> = Vec::new();
    let mut seen: Vec<Option<SystemTime>> = Vec::new();
    loop {
        // The files as last configured (a reload may change them).
        let files = relay.crl_files();
        if files != crl_files {
            seen = vec![None; files.len()];
            crl_files = files;
        }
        load_crl_files(&relay, &crl_files, &mut seen).await;
        rx.mark_unchanged();
        let due = std::mem::take(&mut *relay.enforce_due());
        if !due.is_empty()
            && let Err(e) = enforce(&relay, &due).await
        {
            warn!(error = %e, "enforcing revocations failed; will retry");
            relay.enforce_due().merge(due);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(CRL_POLL) => {}
        }
    }
}

/// One enforcement pass over what is `due`: after a change of the revocation set
/// cuts off revoked identities and looks at every community hubbed here, after a
/// commit only at that community; proposes the removal of every member whose
/// credential no longer passes. Members are checked outside the writer; only a
/// community with removals due enters it.
pub async fn enforce(relay: &Relay, due: &EnforceDue) -> Result<(), RelayError> {
    debug!(
        all = due.all,
        communities = due.communities.len(),
        "enforcement pass"
    );
    let cut = if due.all {
        relay.cut_off_revoked()
    } else {
        Vec::new()
    };
    for (id, why) in &cut {
        relay.audit_now(AuditEvent::new(
            AuditKind::Revocation,
            relay.id(),
            id.clone(),
            "cut-off",
            format!("connection closed: {why}"),
        ));
    }
    if relay.revocations().is_empty() {
        return Ok(());
    }
    let communities: Vec<String> = if due.all {
        hubbed_communities(relay)?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        due.communities
            .iter()
            .filter(|c| home_relay(c) == relay.id())
            .cloned()
            .collect()
    };
    // A copy, so that the writer is never held up on the set's lock meanwhile.
    let revoked = relay.revocations().clone();
    let mut signer = None;
    let mut wrote = false;
    for community in communities {
        let invalid = groups::invalid_members(
            relay.engine_arc(),
            &community,
            relay.anchors(),
            &relay.trust(),
            now() as u64,
            &revoked,
        )?;
        if invalid.is_empty() {
            continue;
        }
        let signer = match &signer {
            Some(s) => s,
            None => signer.insert(
                CertSigner::from_pkcs8(relay.cert_chain(), &relay.own().key_pkcs8).map_err(
                    |e| RelayError::OwnIdentity {
                        what: "MLS signer",
                        reason: e.to_string(),
                    },
                )?,
            ),
        };
        wrote |= relay.write(|w, b| propose_removals(relay, w, b, &community, signer, &invalid))?;
    }
    if wrote || !cut.is_empty() {
        relay.durable().await?;
    }
    Ok(())
}

fn propose_removals(
    relay: &Relay,
    w: &mut Writer,
    b: &mut Batch,
    community: &str,
    signer: &CertSigner,
    due: &[(String, String)],
) -> Result<bool, RelayError> {
    let Some(mut rec) = relay.community_in(b, community)? else {
        return Ok(false);
    };
    let overlay = groups::Overlay::new(relay.engine_arc());
    let proposed = {
        let revoked = relay.revocations();
        groups::propose_removals(
            &overlay,
            community,
            relay.anchors(),
            &relay.trust(),
            now() as u64,
            &revoked,
            signer,
            due,
        )?
    };
    if proposed.is_empty() {
        return Ok(false);
    }
    relay.recovery().may_order(
        relay.engine(),
        b,
        relay.id(),
        community,
        &rec.members,
        crate::relay::next_seq(&rec)?,
    )?;
    b.extend(overlay.into_batch());
    for p in proposed {
        let seq = crate::relay::next_seq(&rec)?;
        let entry = LogEntry {
            community: community.to_string(),
            seq,
            sender: relay.id().to_string(),
            ordered_at: now(),
            kind: EntryKind::Handshake { epoch: p.epoch },
            message: p.message,
        };
        b.put_obj(store_keys::log(community, seq), &entry)?;
        rec.last_seq = seq;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Membership,
                relay.id(),
                community,
                "propose-removal",
                format!("{} at epoch {}: {}", p.member, p.epoch, p.reason),
            ),
        )?;
        relay.fan_out_entry(w, b, &rec, &entry)?;
    }
    crate::relay::put_community(b, &rec)?;
    Ok(true)
}
