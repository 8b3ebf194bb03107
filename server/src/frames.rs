//! Frames on QUIC streams: reading one bounded, length-prefixed frame (charged to
//! the sender's request byte budget), writing one, the end of a request stream, the
//! certificate chain a connection presented, and the short names of requests.

use std::sync::Arc;
use std::time::Duration;

use kring_protocol::wire::{self, ErrorCode, FRAME_HEADER, Push, Request};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Smallest step a frame's buffer grows by (it doubles after that, up to the
/// frame's length).
const FRAME_READ_CHUNK: usize = 64 * 1024;
/// Retry time named to an identity whose request bytes in flight are over its budget.
const BUDGET_RETRY_MS: u64 = 250;

/// Request bytes one identity may have in flight, being received or handled, across
/// all its streams and connections (`request_bytes_per_identity`). A stream takes
/// bytes as its frame's buffer grows (never what a header merely claims) and gives
/// them back when its request is done; a stream that would go over is refused.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Bytes of a [`ByteBudget`] a request holds until it is dropped.
pub type BudgetHold = Option<OwnedSemaphorePermit>;

impl ByteBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes taken now.
    pub fn in_use(&self) -> usize {
        self.total.saturating_sub(self.bytes.available_permits())
    }

    /// Whether no request holds any of it.
    pub fn is_unused(&self) -> bool {
        self.in_use() == 0
    }

    /// Takes `n` more bytes into `hold`, or `false` if that would go over.
    fn take(&self, n: usize, hold: &mut BudgetHold) -> bool {
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match hold {
                    Some(h) => h.merge(p),
                    None => *hold = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// A request frame refused while it was read: the audit action, what to tell the
/// peer, and the audit detail.
#[derive(Debug)]
pub struct FrameRefusal {
    /// Audit action: `decode`, `request-budget` or `frame-timeout`.
    pub action: &'static str,
    /// The typed error for the peer.
    pub code: ErrorCode,
    /// The audit record's detail.
    pub detail: String,
}

impl FrameRefusal {
    fn decode(code: ErrorCode) -> Self {
        Self {
            action: "decode",
            detail: code.to_string(),
            code,
        }
    }
}

/// Reads one frame from a QUIC stream. `Ok(None)` at a clean end of stream. For
/// answers to this relay's own requests (their count is this relay's); request
/// streams opened by a device or peer use [`read_request_frame`].
pub async fn read_frame<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<Option<T>, ErrorCode> {
    match read_frame_charged(recv, max_frame, None).await {
        Ok(r) => Ok(r.map(|(msg, _)| msg)),
        Err(r) => Err(r.code),
    }
}

/// Reads the one frame of a request stream opened by a device or peer relay: it must
/// arrive whole within `deadline` (else `BadRequest`), and its buffer is charged to
/// the identity's `budget` as it grows (over it: `RateLimited`). The returned hold
/// keeps the bytes taken until the request is done. `Ok(None)` at a clean end of
/// stream.
pub async fn read_request_frame<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    budget: &ByteBudget,
    deadline: Duration,
) -> Result<Option<(T, BudgetHold)>, FrameRefusal> {
    match tokio::time::timeout(deadline, read_frame_charged(recv, max_frame, Some(budget))).await {
        Ok(r) => r,
        Err(_) => {
            let reason = format!(
                "the request frame did not arrive whole within {} ms",
                deadline.as_millis()
            );
            Err(FrameRefusal {
                action: "frame-timeout",
                detail: reason.clone(),
                code: ErrorCode::BadRequest { reason },
            })
        }
    }
}

async fn read_frame_charged<T: DeserializeOwned + wire::Validate>(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
    budget: Option<&ByteBudget>,
) -> Result<Option<(T, BudgetHold)>, FrameRefusal> {
    let mut hdr = [0u8; FRAME_HEADER];
    match recv.read_exact(&mut hdr).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                reason: format!("stream ended inside a frame header ({n} of 4 bytes)"),
            }));
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                reason: format!("stream error: {e}"),
            }));
        }
    }
    let len = wire::frame_len(hdr, max_frame).map_err(|e| {
        FrameRefusal::decode(ErrorCode::TooLarge {
            what: e.to_string(),
        })
    })?;
    // Grow the buffer as bytes arrive (QUIC flow control bounds how fast), rather
    // than allocating what the header claims before the peer has sent anything;
    // every growth is charged to the budget before it is allocated.
    let mut hold: BudgetHold = None;
    let mut charged = 0usize;
    let mut payload: Vec<u8> = Vec::new();
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => {
                let need = payload.len() + chunk.bytes.len();
                if need > charged {
                    let grown = need
                        .max(charged.saturating_mul(2))
                        .max(FRAME_READ_CHUNK)
                        .min(len);
                    if let Some(budget) = budget
                        && !budget.take(grown - charged, &mut hold)
                    {
                        let detail = format!(
                            "request bytes in flight would exceed the budget of {} bytes \
                             ({} in use; this frame is {len} bytes)",
                            budget.total(),
                            budget.in_use()
                        );
                        return Err(FrameRefusal {
                            action: "request-budget",
                            detail,
                            code: ErrorCode::RateLimited {
                                retry_after_ms: BUDGET_RETRY_MS,
                            },
                        });
                    }
                    payload.reserve_exact(grown - payload.len());
                    charged = grown;
                }
                payload.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                    reason: format!(
                        "stream ended inside a frame ({} of {len} bytes)",
                        payload.len()
                    ),
                }));
            }
            Err(e) => {
                return Err(FrameRefusal::decode(ErrorCode::BadRequest {
                    reason: format!("stream error: {e}"),
                }));
            }
        }
    }
    wire::decode_payload(&payload)
        .map(|msg| Some((msg, hold)))
        .map_err(|e| {
            FrameRefusal::decode(ErrorCode::BadRequest {
                reason: e.to_string(),
            })
        })
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    max_frame: usize,
) -> Result<(), ErrorCode> {
    let frame = wire::encode_frame(msg, max_frame).map_err(|e| ErrorCode::TooLarge {
        what: e.to_string(),
    })?;
    send.write_all(&frame)
        .await
        .map_err(|e| ErrorCode::Unavailable {
            reason: format!("write failed: {e}"),
        })
}

/// The certificate chain the peer of `conn` presented in TLS, leaf first.
pub fn peer_chain(conn: &quinn::Connection) -> Option<Vec<Vec<u8>>> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.iter().map(|c| c.to_vec()).collect())
}

/// How long a peer may take to finish a request stream after its frame.
const END_OF_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request stream carries exactly one frame: after it, the stream must end.
pub async fn expect_end(recv: &mut quinn::RecvStream) -> Result<(), ErrorCode> {
    match tokio::time::timeout(END_OF_REQUEST_TIMEOUT, recv.read_to_end(0)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(quinn::ReadToEndError::TooLong)) => Err(ErrorCode::BadRequest {
            reason: "bytes after the request frame (one request per stream)".into(),
        }),
        Ok(Err(quinn::ReadToEndError::Read(e))) => Err(ErrorCode::BadRequest {
            reason: format!("stream error after the request frame: {e}"),
        }),
        Err(_) => Err(ErrorCode::BadRequest {
            reason: "the request stream was not finished after its frame".into(),
        }),
    }
}

/// Short name of a request for spans and audit records (never its content).
pub fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::PublishKeyPackages { .. } => "publish-key-packages",
        Request::FetchKeyPackage { .. } => "fetch-key-package",
        Request::CreateCommunity { .. } => "create-community",
        Request::Handshake { .. } => "handshake",
        Request::FileNotice { .. } => "file-notice",
        Request::FileNotices { .. } => "file-notices",
        Request::Subscribe => "subscribe",
        Request::Ack { .. } => "ack",
        Request::AckWelcome { .. } => "ack-welcome",
        Request::ListCommunities => "list-communities",
        Request::CommunityInfo { .. } => "community-info",
        Request::NoticeStatus { .. } => "notice-status",
        Request::AuditLog { .. } => "audit-log",
        Request::Ping => "ping",
        Request::Revoke { .. } => "revoke",
        Request::RevokeAndWipe { .. } => "revoke-wipe",
        Request::Trust => "trust",
        Request::AuditHead => "audit-head",
        Request::TrustStatements { .. } => "trust-statements",
        Request::Cursors { .. } => "cursors",
        Request::DeclaredClients => "declared-clients",
        Request::OfferBlob { .. } => "offer-blob",
        Request::PutBlob { .. } => "put-blob",
        Request::GetBlob { .. } => "get-blob",
        Request::AckMany { .. } => "ack-many",
    }
}

/// Sends a push frame; `false` if the device went away.
pub async fn push(send: &mut quinn::SendStream, msg: &Push, max_frame: usize) -> bool {
    write_frame(send, msg, max_frame).await.is_ok()
}
