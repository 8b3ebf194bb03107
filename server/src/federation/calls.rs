//! Forwarded calls: commits to the hub and key package fetches to the user's home
//! relay, as request and answer on the link, with a deadline.

use super::*;

/// Why a call on a link got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The request did not leave this relay whole (no stream, or writing it
    /// failed before its end): the peer cannot have acted on it.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request was sent, but no answer came back (in time): the peer may have
    /// acted on it.
    #[error("no answer: {0}")]
    NoAnswer(String),
}

/// One request/response on a link.
pub(crate) async fn call(
    conn: &quinn::Connection,
    request: &FedRequest,
    max: usize,
    deadline: Duration,
) -> Result<FedResponse, CallError> {
    let sent = std::sync::atomic::AtomicBool::new(false);
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        write_frame(&mut send, request, max)
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        // The peer reads a request only once its stream has ended: from here on it
        // may act on it.
        sent.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = send.finish();
        match read_frame::<FedResponse>(&mut recv, max).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(CallError::NoAnswer(
                "the peer closed the stream without answering".to_string(),
            )),
            Err(e) => Err(CallError::NoAnswer(e.to_string())),
        }
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(result) => result,
        Err(_) if sent.load(std::sync::atomic::Ordering::SeqCst) => {
            Err(CallError::NoAnswer("no answer in time".to_string()))
        }
        Err(_) => Err(CallError::NotSent(
            "the request could not be sent in time".to_string(),
        )),
    }
}

/// One request/response on a link (for a restored relay's recovery); the error says why
/// no answer came.
pub(crate) async fn call_peer(
    conn: &quinn::Connection,
    request: &FedRequest,
    max: usize,
    deadline: Duration,
) -> Result<FedResponse, CallError> {
    call(conn, request, max, deadline).await
}

/// A forwarded request without a verdict.
pub(super) enum NoVerdict {
    /// Refused, or not delivered: the other relay did not act on it.
    Refused(RelayError),
    /// Delivered (or possibly so), but no answer came back in time: the other relay
    /// may or may not have acted on it.
    Unknown(String),
}

/// Sends `request` to peer `to`, within [`FORWARD_TIMEOUT`], and returns its answer.
pub(super) async fn exchange(
    relay: &Relay,
    to: &str,
    request: FedRequest,
) -> Result<Response, NoVerdict> {
    let unavailable = |why: String| {
        NoVerdict::Refused(RelayError::Refused(ErrorCode::Unavailable {
            reason: format!("relay {to} unreachable: {why}"),
        }))
    };
    let peer = relay
        .peer(to)
        .ok_or_else(|| unavailable("not a federation peer".into()))?;
    let started = tokio::time::Instant::now();
    let conn = relay
        .link(&peer.id)
        .wait_conn(FORWARD_TIMEOUT)
        .await
        .ok_or_else(|| unavailable(format!("no link within {} s", FORWARD_TIMEOUT.as_secs())))?;
    let left = FORWARD_TIMEOUT.saturating_sub(started.elapsed());
    match call(&conn, &request, relay.limits().max_frame, left).await {
        Ok(FedResponse::Response(Response::Error(code))) => Err(NoVerdict::Refused(code.into())),
        Ok(FedResponse::Response(r)) => Ok(r),
        Ok(FedResponse::Ack { .. } | FedResponse::Whereabouts(_) | FedResponse::Log { .. }) => Err(
            NoVerdict::Unknown(format!("relay {to} answered with something else")),
        ),
        Err(CallError::NotSent(why)) => Err(unavailable(why)),
        Err(CallError::NoAnswer(why)) => Err(NoVerdict::Unknown(format!(
            "relay {to} did not answer within {} s: {why}",
            FORWARD_TIMEOUT.as_secs()
        ))),
    }
}

/// [`exchange`] for requests whose repetition is harmless: no answer is
/// `Unavailable` like no link.
pub(super) async fn forward(
    relay: &Relay,
    to: &str,
    request: FedRequest,
) -> Result<Response, RelayError> {
    exchange(relay, to, request).await.map_err(|e| match e {
        NoVerdict::Refused(e) => e,
        NoVerdict::Unknown(why) => RelayError::Refused(ErrorCode::Unavailable {
            reason: format!("relay {to} unreachable: {why}"),
        }),
    })
}

/// Sends a member's commit to the community's hub and returns its verdict. A
/// commit the hub may have received without its answer coming back is
/// `OutcomeUnknown`, not a refusal: the hub may still order it, and the member
/// must keep it until the community log shows which commit won the epoch.
pub async fn forward_handshake(
    relay: &Relay,
    hub: &str,
    sender: &str,
    community: &str,
    message: &[u8],
    welcome: Option<Vec<u8>>,
) -> Result<Response, RelayError> {
    exchange(
        relay,
        hub,
        FedRequest::Handshake {
            community: community.to_string(),
            sender: sender.to_string(),
            message: message.to_vec(),
            welcome,
        },
    )
    .await
    .map_err(|e| match e {
        NoVerdict::Refused(RelayError::Refused(ErrorCode::Unavailable { reason })) => {
            RelayError::Refused(ErrorCode::Unavailable {
                reason: format!("hub unreachable: {reason}"),
            })
        }
        NoVerdict::Refused(other) => other,
        NoVerdict::Unknown(why) => RelayError::Refused(ErrorCode::OutcomeUnknown {
            reason: format!("hub {hub} may still apply the commit: {why}"),
        }),
    })
}

/// Fetches a key package of a user of another relay from that relay (which applies
/// the fetch limits and audit-logs the fetch); audit-logged here too.
pub async fn forward_fetch_key_package(
    relay: &Relay,
    home: &str,
    requester: &str,
    user: &str,
) -> Result<Response, RelayError> {
    let r = forward(
        relay,
        home,
        FedRequest::FetchKeyPackage {
            user: user.to_string(),
            requester: requester.to_string(),
        },
    )
    .await?;
    if matches!(r, Response::KeyPackage { .. }) {
        relay.audit_now(AuditEvent::new(
            AuditKind::Membership,
            requester,
            user,
            "fetch-key-package",
            format!("key package fetched from relay {home}"),
        ));
    }
    Ok(r)
}

/// Asks relay `to` for bytes of an attachment
/// ([`FedRequest::FetchBlob`]); asking again is harmless.
pub async fn fetch_blob(
    relay: &Relay,
    to: &str,
    request: FedRequest,
) -> Result<Response, RelayError> {
    forward(relay, to, request).await
}
