//! One request in, one answer out: the revocation gate, dispatch to the handler
//! of each request kind, and the audit record of every refusal.

use super::*;

impl Relay {
    /// Handles one request; refusals come back as [`Response::Error`] and are audited.
    pub async fn handle(&self, caller: &Caller, request: Request) -> Response {
        let action = crate::net::request_kind(&request);
        let subject = request_subject(&request);
        let result = if self
            .revocations()
            .check_chain(&caller.identity, &caller.chain)
            .is_err()
        {
            // An org-admin may have ordered the device wiped: the order goes in
            // place of the refusal.
            if let Some(answer) = crate::revocation::wipe_answer(self, &caller.id) {
                self.metrics.refused(action, &ErrorCode::Revoked);
                return answer;
            }
            Err(RelayError::Refused(ErrorCode::Revoked))
        } else {
            self.dispatch(caller, request).await
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

    pub(super) async fn dispatch(
        &self,
        caller: &Caller,
        request: Request,
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
                self.publish_key_packages(caller, key_packages, last_resort)
                    .await
            }
            Request::FetchKeyPackage { user } => self.fetch_key_package(caller, &user).await,
            Request::CreateCommunity {
                community,
                group_info,
                ratchet_tree,
            } => {
                self.create_community(caller, &community, &group_info, &ratchet_tree)
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
                self.file_notice(caller, &community, notice_id, message)
                    .await
            }
            Request::FileNotices { community, notices } => {
                self.file_notices(caller, &community, notices).await
            }
            Request::Ack { community, seq } => self.ack(caller, &community, seq).await,
            Request::AckWelcome { id } => {
                self.write(|_, b| {
                    b.delete(keys::welcome(&caller.id, &id));
                    release_welcome(self.engine(), b, &caller.id, &id)
                })?;
                self.durable().await?;
                Ok(Response::Ok)
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
            Request::AuditHead => self.audit_head(caller).await,
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
}

pub(super) fn request_subject(r: &Request) -> String {
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
        _ => "-".into(),
    }
}
