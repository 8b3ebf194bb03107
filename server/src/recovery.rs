//! The restored relay's side of recovery: asking each peer where this relay stands
//! and taking back what it lost (the state and decisions are in
//! [`crate::core::recovery`]).

use std::sync::Arc;
use std::time::Duration;

use kring_protocol::wire::{
    EntryKind, ErrorCode, FedRequest, FedResponse, LogEntry, LogMark, Response, limits,
};
use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditKind};
use crate::error::RelayError;
use crate::records::{NoticeRecord, OutboxRecord};
use crate::relay::{Caller, Relay, home_relay, now};
use crate::store::{decode, get_obj};

use crate::core::recovery::ranges_text;
pub use crate::core::recovery::*;
use crate::keyspace::federation::{
    applied as applied_key, outbox as outbox_key, outbox_next as outbox_next_key, outbox_prefix,
};
use std::sync::atomic::Ordering;

mod drive;

pub use drive::*;

/// [`Request::Cursors`](kring_protocol::wire::Request::Cursors) from a device,
/// answered once what it changed is durable.
pub async fn cursors(
    relay: &Relay,
    caller: &Caller,
    marks: Vec<LogMark>,
) -> Result<Response, RelayError> {
    relay
        .call(|core, cx| crate::core::recovery::cursors(core, cx, caller, marks))
        .await
}

#[cfg(test)]
mod tests;
