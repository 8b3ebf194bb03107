//! Federation peers as the core sees them: configured address, accreditation (as
//! its certificate last said, lowered by configuration), organisation and CA, and
//! the limits on its requests and on the audit records its refusals write.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_policy::Clearance;

use crate::audit::{AuditEvent, AuditKind};
use crate::core::{Core, Writer};
use crate::error::RelayError;
use crate::keyspace::federation as keys;
use crate::store::Batch;
use crate::store::{Engine, get_obj};

pub use crate::core::revocation::PeerInfo;

/// Refusals of one peer's input recorded one by one per [`REFUSAL_AUDIT_WINDOW`];
/// beyond that they are counted and recorded as one summary.
pub const REFUSAL_AUDIT_PER_WINDOW: u32 = 32;
/// The window of [`REFUSAL_AUDIT_PER_WINDOW`].
pub const REFUSAL_AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct requesters one peer may fetch key packages for per
/// [`REQUESTER_WINDOW`]; beyond that a fetch is refused (`RateLimited`).
pub const MAX_REQUESTERS_PER_PEER: usize = 1_000;
/// The window of [`MAX_REQUESTERS_PER_PEER`].
pub const REQUESTER_WINDOW: Duration = Duration::from_secs(3600);

/// A configured federation peer: where it is, what it may receive, and the
/// limits on what it may ask (its link lives in the shell: [`crate::relay::Link`]).
#[derive(Debug)]
pub struct Peer {
    /// Peer relay id.
    pub id: String,
    /// Where to dial it.
    pub address: SocketAddr,
    cap: Option<Clearance>,
    pub(crate) accreditation: Mutex<Option<Clearance>>,
    pub(crate) info: Mutex<Option<PeerInfo>>,
    rate: Mutex<Option<TokenBucket>>,
    refusals: Mutex<AuditThrottle>,
    pub(crate) requesters: Mutex<RecentNames>,
    /// Set when a reload removed or replaced this peer: its dialler and outbox
    /// sender stop, its link is closed.
    pub(crate) retired: std::sync::atomic::AtomicBool,
}

impl Peer {
    /// A peer from its `[[peers]]` entry.
    pub fn from_config(p: &crate::config::PeerToml, engine: &dyn Engine) -> Arc<Self> {
        let cap = p.accreditation.as_ref().and_then(|a| a.parse().ok());
        Arc::new(Self::new(&p.id, p.address, cap, engine))
    }

    /// Marks the peer removed or replaced by a reload (its link tasks stop).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a reload removed or replaced this peer.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A peer from configuration; its last known accreditation comes from the store.
    pub fn new(id: &str, address: SocketAddr, cap: Option<Clearance>, engine: &dyn Engine) -> Self {
        let known = get_obj::<String>(engine, &keys::accreditation(id))
            .ok()
            .flatten()
            .and_then(|t| t.parse().ok());
        let info = get_obj::<PeerInfo>(engine, &crate::keyspace::revocation::peer_info(id))
            .ok()
            .flatten();
        Self {
            info: Mutex::new(info),
            id: id.to_string(),
            address,
            cap,
            accreditation: Mutex::new(known),
            rate: Mutex::new(None),
            refusals: Mutex::new(AuditThrottle::default()),
            requesters: Mutex::new(RecentNames::new(MAX_REQUESTERS_PER_PEER, REQUESTER_WINDOW)),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Charges one federation request to the peer's token bucket (`per_second`,
    /// burst twice that); `Err(retry_after_ms)` if it is empty.
    pub(crate) fn check_rate(&self, per_second: u32, now: Instant) -> Result<(), u64> {
        let mut rate = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rate.get_or_insert_with(|| TokenBucket::new(per_second, now))
            .take(now)
    }

    /// Whether a refusal of this peer's input may be recorded one by one now (see
    /// [`AuditThrottle`]).
    pub(crate) fn refusal_verdict(&self, now: Instant) -> ThrottleVerdict {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(now, REFUSAL_AUDIT_PER_WINDOW, REFUSAL_AUDIT_WINDOW)
    }

    /// Refusals counted but not recorded in a window that has ended, if any.
    pub(crate) fn refusals_unrecorded(&self, now: Instant) -> Option<u64> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush(now, REFUSAL_AUDIT_WINDOW)
    }

    /// The peer's effective accreditation, if known: what its certificate grants
    /// (as last seen), lowered by this relay's configuration.
    pub fn accreditation(&self) -> Option<Clearance> {
        let granted = self.accreditation.lock().ok().and_then(|a| a.clone());
        self.effective(granted)
    }

    fn effective(&self, granted: Option<Clearance>) -> Option<Clearance> {
        match (granted, &self.cap) {
            (Some(g), Some(cap)) => kring_policy::meet(&g, cap).ok(),
            (g, _) => g,
        }
    }

    /// The peer's organisation and CA as its certificate said when last seen.
    pub fn info(&self) -> Option<PeerInfo> {
        self.info.lock().ok().and_then(|i| i.clone())
    }
}

/// A token bucket: `per_second` tokens a second, at most twice that held.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second * 2.0,
            last: now,
        }
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_second * 1000.0).ceil() as u64)
        }
    }
}

/// What to record of one refusal of a peer's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThrottleVerdict {
    /// Refusals of an earlier window that were counted, not recorded: record a
    /// summary of them first.
    pub(crate) unrecorded: Option<u64>,
    /// Record this one.
    pub(crate) record: Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// In full.
    Full,
    /// Not in full, but say that from now on refusals are counted only.
    Note,
    /// Count it only.
    Count,
}

/// Caps the audit records one peer's refusals write: `per_window` in full per
/// window, then one note, then a count, recorded as one summary when a later
/// window starts (or a later request of the peer comes after the window ends).
#[derive(Debug, Default)]
pub(crate) struct AuditThrottle {
    start: Option<Instant>,
    recorded: u32,
    counted: u64,
}

impl AuditThrottle {
    fn roll(&mut self, now: Instant, window: Duration) -> Option<u64> {
        let ended = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= window);
        if !ended {
            return None;
        }
        self.start = Some(now);
        self.recorded = 0;
        Some(std::mem::take(&mut self.counted)).filter(|n| *n > 0)
    }

    pub(crate) fn admit(
        &mut self,
        now: Instant,
        per_window: u32,
        window: Duration,
    ) -> ThrottleVerdict {
        let unrecorded = self.roll(now, window);
        let record = if self.recorded < per_window {
            self.recorded += 1;
            Record::Full
        } else if self.counted == 0 {
            self.counted = 1;
            Record::Note
        } else {
            self.counted += 1;
            Record::Count
        };
        ThrottleVerdict { unrecorded, record }
    }

    /// The count of a window that has ended (and starts no new one unless it had).
    pub(crate) fn flush(&mut self, now: Instant, window: Duration) -> Option<u64> {
        if self.counted == 0 {
            return None;
        }
        self.roll(now, window)
    }
}

/// Distinct names seen in a window, at most `max` at once.
#[derive(Debug)]
pub(crate) struct RecentNames {
    max: usize,
    window: Duration,
    seen: std::collections::HashMap<String, Instant>,
}

impl RecentNames {
    pub(crate) fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            seen: std::collections::HashMap::new(),
        }
    }

    /// Whether `name` may be used now: it was seen within the window, or there is
    /// room for it (after forgetting names whose window has ended).
    pub(crate) fn admit(&mut self, name: &str, now: Instant) -> bool {
        let window = self.window;
        if let Some(at) = self.seen.get(name)
            && now.saturating_duration_since(*at) < window
        {
            return true;
        }
        if self.seen.len() >= self.max {
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < window);
            if self.seen.len() >= self.max {
                return false;
            }
        }
        self.seen.insert(name.to_string(), now);
        true
    }
}

/// Audit-logs a refusal of `peer`'s input in the writer's batch, within the cap of
/// `AuditThrottle`.
pub fn audit_peer_refusal(
    core: &Core,
    w: &mut Writer,
    b: &mut Batch,
    peer: &str,
    event: AuditEvent,
) -> Result<(), RelayError> {
    // Without a monotonic reading (no write has set one) every refusal is
    // recorded in full.
    let events = match w.mono {
        Some(at) => throttled(core, peer, event, at),
        None => vec![event],
    };
    for e in events {
        w.audit.append(b, w.now, e)?;
    }
    Ok(())
}

pub fn unrecorded_event(peer: &str, n: u64) -> AuditEvent {
    AuditEvent::new(
        AuditKind::Refusal,
        peer,
        "-",
        "peer-refusals-summary",
        format!(
            "{n} further refusals of relay {peer}'s requests and items were counted, not \
             recorded one by one (at most {REFUSAL_AUDIT_PER_WINDOW} per {} s)",
            REFUSAL_AUDIT_WINDOW.as_secs()
        ),
    )
}

/// The audit records to write for `event`, a refusal of `peer`'s input at `now`.
pub fn throttled(core: &Core, peer: &str, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
    let Some(p) = core.peer(peer) else {
        return vec![event];
    };
    let verdict = p.refusal_verdict(now);
    let mut out = Vec::new();
    if let Some(n) = verdict.unrecorded {
        out.push(unrecorded_event(peer, n));
    }
    match verdict.record {
        Record::Full => out.push(event),
        Record::Note => out.push(AuditEvent::new(
            AuditKind::Refusal,
            peer,
            "-",
            "peer-refusals-summary",
            format!(
                "more than {REFUSAL_AUDIT_PER_WINDOW} refusals of relay {peer}'s input in {} s: \
                 further ones in this window are counted, then recorded as one summary",
                REFUSAL_AUDIT_WINDOW.as_secs()
            ),
        )),
        Record::Count => {}
    }
    out
}
