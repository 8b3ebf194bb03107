//! One request in, one answer out: the revocation gate, dispatch to the core's
//! handler of each request kind (or to the federation for what another relay
//! decides: a commit to a community hubbed elsewhere, another relay's user's key
//! package, an attachment fetched through), durability before the answer, and the
//! audit record of every refusal.

use kring_protocol::attachment::{BlobId, BlobRef};
use kring_protocol::wire::{ErrorCode, Request, Response};
use uuid::Uuid;

use crate::error::RelayError;
use crate::filing_order::Turn;
use crate::relay::{Caller, Relay, home_relay, release_welcome, summary};
use crate::store::keys;

impl Relay {
    /// Handles one request; refusals come back as [`Response::Error`] and are audited.
    pub async fn handle(&self, caller: &Caller, request: Request) -> Response {
        self.handle_in_turn(caller, request, Turn::free()).await
    }

    /// [`handle`](Self::handle) for a stream with a place in its connection's order
    /// ([`crate::filing_order`]): a filing gives up its turn once the core has
    /// ordered or queued it (or refused it), before its fsync is waited for.
    pub async fn handle_in_turn(&self, caller: &Caller, request: Request, turn: Turn) -> Response {
        let action = crate::frames::request_kind(&request);
        let subject = request_subject(&request);
        let result = if caller.check_revocation(&self.revocations()).is_err() {
            // An org-admin may have ordered the device wiped: the order goes in
            // place of the refusal.
            if let Some(answer) = crate::revocation::wipe_answer(self, &caller.id) {
                self.metrics.refused(action, &ErrorCode::Revoked);
                return answer;
            }
            Err(RelayError::Refused(ErrorCode::Revoked))
        } else {
            self.dispatch(caller, request, turn).await
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                let code = e.to_code();
                self.metrics.refused(action, &code);
                match &e {
                    RelayError::Refused(_) => {}
                    other => tracing::error!(error = %other, action, "request failed"),
                }
                if !matches!(code, ErrorCode::NotFound { .. }) {
                    self.audit_refusal(&caller.id, &subject, action, &code);
                }
                Response::Error(code)
            }
        }
    }

    async fn dispatch(
        &self,
        caller: &Caller,
        request: Request,
        turn: Turn,
    ) -> Result<Response, RelayError> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::DeclaredClients => Ok(Response::DeclaredClients {
                organisation: self.organisation.clone(),
                clients: self.clients(),
            }),
            Request::Trust => crate::revocation::trust_state(self).map(Response::Trust),
            Request::TrustStatements { after } => {
                crate::revocation::trust_statements(self, after.as_deref())
            }
            Request::PublishKeyPackages {
                key_packages,
                last_resort,
            } => {
                self.call(|core, cx| {
                    core.publish_key_packages(cx, caller, key_packages, last_resort)
                })
                .await
            }
            Request::FetchKeyPackage { user } => self.fetch_key_package(caller, &user).await,
            Request::CreateCommunity {
                community,
                group_info,
                ratchet_tree,
            } => {
                self.call(|core, cx| {
                    core.create_community(cx, caller, &community, &group_info, &ratchet_tree)
                })
                .await
            }
            Request::Handshake {
                community,
                message,
                welcome,
            } => self.handshake(caller, &community, &message, welcome).await,
            Request::FileNotice {
                community,
                notice_id,
                message,
            } => {
                self.call_in_turn(turn, |core, cx| {
                    core.file_notice(cx, caller, &community, notice_id, message)
                })
                .await
            }
            Request::FileNotices { community, notices } => {
                self.call_in_turn(turn, |core, cx| {
                    core.file_notices(cx, caller, &community, notices)
                })
                .await
            }
            Request::Ack { community, seq } => {
                self.call(|core, cx| core.ack(cx, caller, &community, seq))
                    .await
            }
            Request::AckMany { marks } => {
                let marks: Vec<(&str, u64)> = marks
                    .iter()
                    .map(|m| (m.community.as_str(), m.seq))
                    .collect();
                self.call(|core, cx| core.ack_many(cx, caller, &marks))
                    .await
            }
            Request::AckWelcome { id } => {
                self.call(|core, cx| {
                    core.write(cx, |_, b| {
                        b.delete(keys::welcome(&caller.id, &id));
                        release_welcome(core.engine(), b, &caller.id, &id)
                    })?;
                    Ok(Response::Ok)
                })
                .await
            }
            Request::ListCommunities => self.list_communities(caller),
            Request::CommunityInfo { community } => {
                let rec = self.member_community(caller, &community)?;
                Ok(Response::Community(summary(&rec)))
            }
            Request::NoticeStatus { notice_id } => self.notice_status(caller, notice_id),
            Request::AuditLog {
                from,
                limit,
                verify,
            } => self.audit_log(caller, from, limit, verify),
            Request::AuditHead => self.call(|core, cx| core.audit_head(cx, caller)).await,
            Request::Revoke { statement } => {
                crate::revocation::revoke(self, caller, statement, None).await
            }
            Request::RevokeAndWipe { statement, wipe } => {
                crate::revocation::revoke(self, caller, statement, Some(wipe)).await
            }
            Request::Cursors { cursors } => crate::recovery::cursors(self, caller, cursors).await,
            Request::OfferBlob { community, blob } => {
                self.offer_blob(caller, &community, blob).await
            }
            Request::PutBlob { blob, offset, data } => {
                self.put_blob(caller, &blob, offset, &data).await
            }
            Request::GetBlob {
                community,
                notice_id,
                blob,
                offset,
            } => {
                self.get_blob(caller, &community, &notice_id, &blob, offset)
                    .await
            }
            Request::Subscribe => Err(ErrorCode::BadRequest {
                reason: "subscribe is handled on its own stream".into(),
            }
            .into()),
        }
    }

    /// [`Request::Handshake`]: ordered here if this relay is the community's hub,
    /// otherwise forwarded to the hub, whose verdict is the answer.
    async fn handshake(
        &self,
        caller: &Caller,
        community: &str,
        message: &[u8],
        welcome: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let rec = self.member_community(caller, community)?;
        if rec.hub != self.id() {
            return crate::federation::forward_handshake(
                self, &rec.hub, &caller.id, community, message, welcome,
            )
            .await;
        }
        self.call(|core, cx| {
            core.handshake_at_hub(cx, &caller.id, None, community, message, welcome)
        })
        .await
    }

    /// [`Request::FetchKeyPackage`]: handed out here for a user of this relay,
    /// otherwise fetched from the user's home relay.
    async fn fetch_key_package(&self, caller: &Caller, user: &str) -> Result<Response, RelayError> {
        let home = home_relay(user);
        if home != self.id() {
            if !self.is_peer(home) {
                return Err(ErrorCode::NotFound {
                    what: format!("{user}: relay {home} is not a peer of relay {}", self.id()),
                }
                .into());
            }
            return crate::federation::forward_fetch_key_package(self, home, &caller.id, user)
                .await;
        }
        self.call(|core, cx| core.take_key_package(cx, &caller.id, user))
            .await
    }

    /// [`Request::OfferBlob`]: a member announces a blob for a notice of `community`.
    async fn offer_blob(
        &self,
        caller: &Caller,
        community: &str,
        blob: BlobRef,
    ) -> Result<Response, RelayError> {
        self.member_community(caller, community)?;
        let received = self.blobs.offer(&caller.id, blob, crate::now()).await?;
        Ok(Response::BlobProgress {
            received,
            size: blob.size,
        })
    }

    /// [`Request::PutBlob`]: bytes of a blob the caller announced.
    async fn put_blob(
        &self,
        caller: &Caller,
        blob: &BlobId,
        offset: u64,
        data: &[u8],
    ) -> Result<Response, RelayError> {
        let (received, size) = self.blobs.put(&caller.id, blob, offset, data).await?;
        Ok(Response::BlobProgress { received, size })
    }

    /// [`Request::GetBlob`]: a member whose clearance admits the notice's label.
    /// A miss is audited too (it may be someone probing for blobs).
    async fn get_blob(
        &self,
        caller: &Caller,
        community: &str,
        notice_id: &Uuid,
        blob: &BlobId,
        offset: u64,
    ) -> Result<Response, RelayError> {
        self.member_community(caller, community)?;
        let (rec, blob, label) = match self.notice_blob(community, notice_id, blob) {
            Ok(found) => found,
            Err(RelayError::Refused(code)) => {
                self.audit_refusal(
                    &caller.id,
                    &format!("{community} notice {notice_id} blob {blob}"),
                    "get-blob",
                    &code,
                );
                return Err(code.into());
            }
            Err(e) => return Err(e),
        };
        let d = kring_policy::decide_opt(Some(&label), caller.identity.clearance.as_ref());
        if !d.allowed {
            return Err(ErrorCode::PolicyDenied {
                reason: format!("the attachment's notice is labelled {label}: {d}"),
            }
            .into());
        }
        self.serve_blob(&rec, notice_id, blob, offset).await
    }
}

fn request_subject(r: &Request) -> String {
    match r {
        Request::FetchKeyPackage { user } => user.clone(),
        Request::CreateCommunity { community, .. }
        | Request::Handshake { community, .. }
        | Request::Ack { community, .. }
        | Request::CommunityInfo { community } => community.clone(),
        Request::FileNotice {
            community,
            notice_id,
            ..
        } => format!("{community} notice {notice_id}"),
        Request::FileNotices { community, notices } => match notices.as_slice() {
            [one] => format!("{community} notice {}", one.notice_id),
            more => format!("{community} {} notices", more.len()),
        },
        Request::NoticeStatus { notice_id } => notice_id.to_string(),
        Request::OfferBlob { community, blob } => format!("{community} blob {}", blob.id),
        Request::PutBlob { blob, .. } => format!("blob {blob}"),
        Request::GetBlob {
            community,
            notice_id,
            blob,
            ..
        } => format!("{community} notice {notice_id} blob {blob}"),
        Request::AckWelcome { id } => id.to_string(),
        Request::AckMany { marks } => format!("{} cursors", marks.len()),
        _ => "-".into(),
    }
}
