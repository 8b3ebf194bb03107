//! Retention in the core: where a relay keeps a community's retention period and
//! how it takes one announced by the community's hub.

use crate::audit::{AuditEvent, AuditKind};
use crate::core::{Core, Writer, home_relay};
use crate::error::{EntryRefusal, RelayError};
use crate::keyspace::retention as keys;
use crate::store::Batch;

/// The longest retention period a relay takes from a hub (that of the protocol).
pub const MAX_RETENTION_SECS: u64 =
    kring_protocol::mls::MAX_RETENTION_DAYS as u64 * kring_protocol::mls::DAY_SECS;

/// The retention period of `community` at this relay, if it has one.
pub fn retention_of(core: &Core, b: &Batch, community: &str) -> Result<Option<u64>, RelayError> {
    Ok(b.get(core.engine(), &keys::retention(community))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes))
}

/// Stores a community's retention period (in the caller's batch).
pub fn put_retention(b: &mut Batch, community: &str, secs: u64) {
    b.put(keys::retention(community), secs.to_be_bytes().to_vec());
}

/// `FedBody::Retention` from `peer`: taken only from the community's hub, for a
/// community this relay holds, within bounds; audited when it changes.
/// `Ok(Err(why))` when refused.
pub fn apply_from_hub(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    community: &str,
    secs: u64,
) -> Result<Result<(), EntryRefusal>, RelayError> {
    if home_relay(community) != peer {
        return Ok(Err(EntryRefusal::RetentionNotFromHub {
            peer: peer.into(),
            community: community.into(),
        }));
    }
    if secs == 0 || secs > MAX_RETENTION_SECS {
        return Ok(Err(EntryRefusal::RetentionOutOfBounds {
            secs,
            community: community.into(),
        }));
    }
    if core.community_in(b, community)?.is_none() {
        return Ok(Err(EntryRefusal::RetentionUnknownCommunity {
            community: community.into(),
        }));
    }
    // A community's period is fixed when it is created (it is in its group context):
    // the first one a hub announced stays, a different one later is refused.
    match retention_of(core, b, community)? {
        Some(held) if held == secs => return Ok(Ok(())),
        Some(held) => {
            return Ok(Err(EntryRefusal::RetentionChanged {
                peer: peer.into(),
                community: community.into(),
                announced: describe(secs),
                held: describe(held),
            }));
        }
        None => {}
    }
    put_retention(b, community, secs);
    w.audit.append(
        b,
        w.now,
        AuditEvent::new(
            AuditKind::Membership,
            peer,
            community,
            "community-retention",
            format!("log entries kept {}", describe(secs)),
        ),
    )?;
    Ok(Ok(()))
}

/// A retention period as people read it.
pub fn describe(secs: u64) -> String {
    let day = kring_protocol::mls::DAY_SECS;
    if secs.is_multiple_of(day) {
        format!("{} day(s)", secs / day)
    } else {
        format!("{secs} s")
    }
}
