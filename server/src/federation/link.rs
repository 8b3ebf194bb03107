//! Links: dialling and accepting peers, authenticating them, and serving the
//! requests a peer opens on a link.

use super::*;

/// Starts the dialler and the outbox sender of every peer.
pub fn start_links(relay: &Arc<Relay>) {
    for peer in relay.peer_list() {
        start_link(relay, peer);
    }
}

/// Starts the dialler (if this relay dials it) and the outbox sender of `peer`;
/// both stop when the peer is retired.
pub fn start_link(relay: &Arc<Relay>, peer: Arc<Peer>) {
    {
        let span = info_span!("link", peer = %peer.id);
        if relay.id() < peer.id.as_str() {
            tokio::spawn(dial_loop(relay.clone(), peer.clone()).instrument(span.clone()));
        }
        tokio::spawn(outbox_loop(relay.clone(), peer.clone()).instrument(span));
    }
}

pub(super) async fn dial_loop(relay: Arc<Relay>, peer: Arc<Peer>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if peer.is_retired() {
            return;
        }
        if let Some(c) = relay.link(&peer.id).conn() {
            c.closed().await;
            continue;
        }
        let Some((endpoint, config)) = relay.endpoint.get() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let name = format!("{}.relay.kring", peer.id);
        let attempt = match endpoint.connect_with(config.clone(), peer.address, &name) {
            Ok(connecting) => tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(conn) => match authenticate_peer(&relay, &conn, Some(&peer.id)) {
                Ok(identity) => {
                    // Registered like every connection: connection cap, request byte
                    // budget, cut off when revoked or expired.
                    let chain = crate::frames::peer_chain(&conn).unwrap_or_default();
                    match relay.register_connection(&identity, &chain, conn.clone()) {
                        Ok(registration) => {
                            backoff = Duration::from_millis(100);
                            run_link(relay.clone(), peer.clone(), conn, identity).await;
                            drop(registration);
                        }
                        Err(code) => {
                            warn!(error = %code, "link refused");
                            relay
                                .metrics()
                                .refused(crate::metrics::KIND_CONNECTION, &code);
                            relay.audit_now(AuditEvent::new(
                                AuditKind::Connection,
                                peer.id.clone(),
                                peer.address.to_string(),
                                "link-refused",
                                code.to_string(),
                            ));
                            conn.close(CloseCode::Refused.code().into(), b"connection cap");
                        }
                    }
                }
                Err(refusal) => {
                    let reason = refusal.to_string();
                    warn!(%reason, "peer refused");
                    relay
                        .metrics()
                        .refused_for(crate::metrics::KIND_CONNECTION, "unauthenticated");
                    relay.audit_now(AuditEvent::new(
                        AuditKind::Connection,
                        peer.id.clone(),
                        peer.address.to_string(),
                        "link-refused",
                        reason.clone(),
                    ));
                    conn.close(CloseCode::Refused.code().into(), reason.as_bytes());
                }
            },
            Err(e) => debug!(error = %e, "dial failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

pub(super) fn authenticate_peer(
    relay: &Relay,
    conn: &quinn::Connection,
    expected: Option<&str>,
) -> Result<Identity, PeerAuthError> {
    let chain: Vec<Vec<u8>> = conn
        .peer_identity()
        .and_then(|a| {
            a.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .ok_or(PeerAuthError::NoCertificate)?;
    let identity = relay
        .authenticate(&chain, IdentityKind::Relay)
        .map_err(PeerAuthError::Refused)?;
    if !relay.is_peer(&identity.name) {
        return Err(PeerAuthError::NotAPeer(identity.name));
    }
    if let Some(expected) = expected
        && identity.name != expected
    {
        return Err(PeerAuthError::WrongRelay {
            expected: expected.to_string(),
            got: identity.name,
        });
    }
    Ok(identity)
}

/// Serves a peer relay that connected to us.
pub async fn serve_peer(relay: Arc<Relay>, conn: quinn::Connection, identity: Identity) {
    let peer = match relay.peer(&identity.name) {
        Some(p) => p,
        None => {
            relay.audit_now(AuditEvent::new(
                AuditKind::Link,
                identity.name.clone(),
                relay.id(),
                "link-refused",
                "not a configured peer",
            ));
            conn.close(CloseCode::Refused.code().into(), b"not a configured peer");
            return;
        }
    };
    run_link(relay, peer, conn, identity).await;
}

pub(super) async fn run_link(
    relay: Arc<Relay>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
    identity: Identity,
) {
    // `authenticate` bound the certificate to the peer's configured organisation
    // (and CA); this is the last line before anything about the peer is recorded.
    let trust = relay.trust();
    let configured = trust.organisation_of(&peer.id);
    if identity.name != peer.id || configured != Some(identity.organisation.as_str()) {
        relay.audit_now(AuditEvent::new(
            AuditKind::Link,
            identity.id(),
            relay.id(),
            "link-refused",
            format!(
                "certificate of {} (organisation {}) cannot speak for peer {}",
                identity.id(),
                identity.organisation,
                peer.id
            ),
        ));
        conn.close(CloseCode::Refused.code().into(), b"wrong organisation");
        return;
    }
    // A link made for a peer a reload has since removed or replaced is not
    // installed: the current peer's own link follows.
    let current = relay.peer(&peer.id).is_some_and(|p| Arc::ptr_eq(&p, &peer));
    if peer.is_retired() || !current {
        conn.close(CloseCode::Reconfigured.code().into(), b"peer reconfigured");
        return;
    }
    let granted = identity.clearance.clone();
    if let Ok(mut a) = peer.accreditation.lock() {
        *a = granted.clone();
    }
    let info = PeerInfo {
        organisation: identity.organisation.clone(),
        ca: crate::frames::peer_chain(&conn)
            .and_then(|c| relay.verified_issuer(&c))
            .unwrap_or_default(),
    };
    if let Ok(mut i) = peer.info.lock() {
        *i = Some(info.clone());
    }
    let accreditation = peer.accreditation();
    let text = accreditation
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "none".into());
    let _ = relay.write(|w, b| {
        // A certificate without a Clearance grants nothing: what an earlier one
        // granted must not come back after a restart.
        match &granted {
            Some(a) => b.put_obj(keys::accreditation(&peer.id), &a.to_string())?,
            None => b.delete(keys::accreditation(&peer.id)),
        }
        b.put_obj(crate::revocation::keys::peer_info(&peer.id), &info)?;
        w.audit.append(
            b,
            now(),
            AuditEvent::new(
                AuditKind::Link,
                relay.id(),
                peer.id.clone(),
                "link-up",
                format!("accreditation {text}"),
            ),
        )
    });
    let link = relay.link(&peer.id);
    link.set_conn(Some(conn.clone()));
    info!(accreditation = %text, "link up");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let relay = relay.clone();
                let peer_id = peer.id.clone();
                tokio::spawn(
                    handle_stream(relay, peer_id, send, recv).instrument(info_span!("fed-req")),
                );
            }
            Err(e) => {
                info!(reason = %e, "link down");
                break;
            }
        }
    }
    // Only clear the slot if it still holds this connection.
    link.clear_if(&conn);
    relay.audit_now(AuditEvent::new(
        AuditKind::Link,
        relay.id(),
        peer.id.clone(),
        "link-down",
        conn.close_reason()
            .map(|r| r.to_string())
            .unwrap_or_default(),
    ));
}

pub(super) async fn handle_stream(
    relay: Arc<Relay>,
    peer: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = relay.limits().max_frame;
    // Bounded like a device's request: a rate per peer, charged before the frame is
    // read; a deadline for the frame, its bytes charged to the peer's request byte
    // budget until the answer is sent.
    let deadline = Duration::from_millis(relay.limits().frame_timeout_ms);
    if let Some(p) = relay.peer(&peer) {
        let at = Instant::now();
        if let Some(n) = p.refusals_unrecorded(at) {
            relay.audit_now(crate::core::peers::unrecorded_event(&peer, n));
        }
        let per_second = relay
            .limits()
            .requests_per_second
            .saturating_mul(PEER_RATE_FACTOR);
        if let Err(retry_after_ms) = p.check_rate(per_second, at) {
            let code = ErrorCode::RateLimited { retry_after_ms };
            relay.metrics().refused(crate::metrics::KIND_UNREAD, &code);
            audit_peer_refusal_now(
                &relay,
                &peer,
                AuditEvent::new(
                    AuditKind::Refusal,
                    peer.clone(),
                    "-",
                    "rate-limit",
                    format!(
                        "federation request rate above {per_second} per second \
                         ({PEER_RATE_FACTOR} x requests_per_second)"
                    ),
                ),
            );
            let _ = write_frame(
                &mut send,
                &FedResponse::Response(Response::Error(code)),
                max,
            )
            .await;
            let _ = send.finish();
            let _ = recv.stop(0u32.into());
            return;
        }
    }
    let budget = relay.request_budget(&peer);
    let read = match crate::frames::read_request_frame(&mut recv, max, &budget, deadline).await {
        Ok(Some((r, hold))) => crate::frames::expect_end(&mut recv)
            .await
            .map(|()| (r, hold))
            .map_err(|code| ("federation-decode", code.to_string(), code)),
        Ok(None) => return,
        Err(r) if r.action == "decode" => Err(("federation-decode", r.detail, r.code)),
        Err(r) => Err((r.action, r.detail, r.code)),
    };
    let (request, _hold): (FedRequest, _) = match read {
        Ok(r) => r,
        Err((action, detail, code)) => {
            relay.metrics().refused(crate::metrics::KIND_UNREAD, &code);
            // A frame that does not decode, bytes after it, a frame too slow or over
            // the peer's budget: refused and audited.
            audit_peer_refusal_now(
                &relay,
                &peer,
                AuditEvent::new(AuditKind::Refusal, peer.clone(), "-", action, detail),
            );
            let _ = write_frame(
                &mut send,
                &FedResponse::Response(Response::Error(code)),
                max,
            )
            .await;
            let _ = send.finish();
            return;
        }
    };
    let kind = fed_request_kind(&request);
    relay.metrics().request(kind);
    let response = match request {
        FedRequest::Deliver { items } => match apply_items(&relay, &peer, items).await {
            Ok(upto) => FedResponse::Ack { upto },
            Err(e) => {
                relay.metrics().refused(kind, &e.to_code());
                tracing::error!(error = %e, "applying federation items failed");
                FedResponse::Response(Response::Error(e.to_code()))
            }
        },
        FedRequest::Handshake {
            community,
            sender,
            message,
            welcome,
        } => {
            let r = if home_relay(&sender) != peer {
                Err(RelayError::Refused(ErrorCode::Unauthenticated {
                    reason: format!("{sender} is not a user of relay {peer}"),
                }))
            } else {
                relay
                    .call(|core, cx| {
                        core.handshake_at_hub(
                            cx,
                            &sender,
                            Some(peer.as_str()),
                            &community,
                            &message,
                            welcome,
                        )
                    })
                    .await
            };
            FedResponse::Response(match r {
                Ok(r) => r,
                Err(e) => {
                    let code = e.to_code();
                    relay.metrics().refused(kind, &code);
                    audit_peer_refusal_now(
                        &relay,
                        &peer,
                        AuditEvent::new(
                            AuditKind::Refusal,
                            sender.as_str(),
                            community.as_str(),
                            "handshake",
                            code.to_string(),
                        ),
                    );
                    Response::Error(code)
                }
            })
        }
        FedRequest::Whereabouts => crate::core::recovery::whereabouts(&relay, &peer)
            .unwrap_or_else(|e| {
                relay.metrics().refused(kind, &e.to_code());
                FedResponse::Response(Response::Error(e.to_code()))
            }),
        FedRequest::FetchLog { community, after } => {
            crate::core::recovery::fetch_log(&relay, &peer, &community, after).unwrap_or_else(|e| {
                relay.metrics().refused(kind, &e.to_code());
                FedResponse::Response(Response::Error(e.to_code()))
            })
        }
        FedRequest::Trust { after } => {
            let answer = match after {
                None => crate::revocation::trust_state(&relay).map(Response::Trust),
                Some(user) => crate::revocation::trust_statements(&relay, Some(&user)),
            };
            FedResponse::Response(answer.unwrap_or_else(|e| {
                relay.metrics().refused(kind, &e.to_code());
                Response::Error(e.to_code())
            }))
        }
        FedRequest::FetchBlob {
            community,
            notice_id,
            blob,
            offset,
        } => {
            let r = relay
                .fetch_blob_for_peer(&peer, &community, &notice_id, &blob, offset)
                .await;
            FedResponse::Response(match r {
                Ok(r) => r,
                Err(e) => {
                    let code = e.to_code();
                    relay.metrics().refused(kind, &code);
                    if !matches!(code, ErrorCode::Unavailable { .. }) {
                        audit_peer_refusal_now(
                            &relay,
                            &peer,
                            AuditEvent::new(
                                AuditKind::Refusal,
                                peer.as_str(),
                                format!("{community} notice {notice_id}"),
                                "fetch-blob",
                                code.to_string(),
                            ),
                        );
                    }
                    Response::Error(code)
                }
            })
        }
        FedRequest::FetchKeyPackage { user, requester } => {
            let r = match check_fetch(&relay, &peer, &requester, &user) {
                Ok(()) => {
                    relay
                        .call(|core, cx| core.take_key_package(cx, &requester, &user))
                        .await
                }
                Err(code) => Err(RelayError::Refused(code)),
            };
            FedResponse::Response(match r {
                Ok(r) => r,
                Err(e) => {
                    let code = e.to_code();
                    relay.metrics().refused(kind, &code);
                    audit_peer_refusal_now(
                        &relay,
                        &peer,
                        AuditEvent::new(
                            AuditKind::Refusal,
                            requester.as_str(),
                            user.as_str(),
                            "fetch-key-package",
                            code.to_string(),
                        ),
                    );
                    Response::Error(code)
                }
            })
        }
    };
    let _ = write_frame(&mut send, &response, max).await;
    let _ = send.finish();
}

/// Whether `peer` may fetch a key package of `user` for `requester`: both well-formed
/// user ids, the requester a user of `peer`, the user one of this relay who has key
/// packages, and the requester one of at most [`MAX_REQUESTERS_PER_PEER`] the peer
/// fetched for lately (the fetch limits keep counters per requester).
pub(super) fn check_fetch(
    relay: &Relay,
    peer: &str,
    requester: &str,
    user: &str,
) -> Result<(), ErrorCode> {
    use kring_protocol::identity::parse_user_id;
    if let Err(e) = parse_user_id(requester).and_then(|_| parse_user_id(user)) {
        return Err(ErrorCode::BadRequest {
            reason: e.to_string(),
        });
    }
    if home_relay(requester) != peer || home_relay(user) != relay.id() {
        return Err(ErrorCode::BadRequest {
            reason:
                "key packages are fetched from the user's home relay by the requester's home relay"
                    .into(),
        });
    }
    // A revoked user is refused as such (as `take_key_package` would), not as one
    // without key packages: revocation deleted them.
    if relay.revocations().user_revoked(user).is_some() {
        return Err(ErrorCode::Revoked);
    }
    let engine = relay.engine();
    let has_packages = matches!(
        engine.get(&crate::store::keys::last_resort(user)),
        Ok(Some(_))
    ) || engine
        .scan(&crate::store::keys::key_package_prefix(user), None, 1)
        .is_ok_and(|p| !p.is_empty());
    if !has_packages {
        return Err(ErrorCode::KeyMaterialExhausted {
            user: user.to_string(),
        });
    }
    let admitted = relay.peer(peer).is_some_and(|p| {
        p.requesters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(requester, Instant::now())
    });
    if !admitted {
        return Err(ErrorCode::RateLimited {
            retry_after_ms: u64::try_from(REQUESTER_WINDOW.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// Short name of a federation request for metrics (never its content).
pub fn fed_request_kind(r: &FedRequest) -> &'static str {
    match r {
        FedRequest::Deliver { .. } => "federation-deliver",
        FedRequest::Handshake { .. } => "federation-handshake",
        FedRequest::FetchKeyPackage { .. } => "federation-fetch-key-package",
        FedRequest::Whereabouts => "federation-whereabouts",
        FedRequest::FetchLog { .. } => "federation-fetch-log",
        FedRequest::Trust { .. } => "federation-trust",
        FedRequest::FetchBlob { .. } => "federation-fetch-blob",
    }
}
