//! What became of a filed notice at its community's hub.
//!
//! A notice filed in a community hubbed at the filer's home relay is ordered at once:
//! the relay answers [`Response::Accepted`](kring_protocol::wire::Response::Accepted)
//! with its sequence number. A community hubbed at another relay is different: the
//! home relay acknowledges the notice once it is durable there and queues it for the
//! hub ([`Response::Queued`](kring_protocol::wire::Response::Queued)). The hub orders
//! it later; its ordered entry comes back to the home relay, which then reports the
//! sequence number in its [`NoticeStatus`]. A hop may refuse it instead. The filer
//! polls the status for a while ([`PollSchedule`]) and ends with one [`Ordering`].

use std::time::Duration;

use kring_protocol::wire::{HopRefusal, NoticeStatus};
use uuid::Uuid;

use crate::error::{ClientError, EXIT_UNREACHABLE, Result};

/// How long filing waits for the hub's ordering unless told otherwise.
pub const DEFAULT_ORDERING_WAIT: Duration = Duration::from_secs(10);
/// The longest ordering wait the command line accepts, in seconds.
pub const MAX_ORDERING_WAIT_SECS: u64 = 600;
/// The first pause before asking the home relay for the notice's status.
pub const FIRST_POLL: Duration = Duration::from_millis(100);
/// The longest pause between two status requests.
pub const MAX_POLL: Duration = Duration::from_millis(500);
/// Time a status request may still take once the wait is over (so the last poll is
/// not cut off the moment it starts).
pub const LAST_POLL_GRACE: Duration = Duration::from_secs(1);

/// The outcome of filing a notice, as far as the filer knows when filing returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordering {
    /// The hub ordered the notice: it has this sequence number in the community log.
    /// For a community hubbed at the home relay this is the relay's immediate answer.
    Ordered {
        /// Sequence number in the hub's log.
        seq: u64,
    },
    /// The notice is durable at the home relay and queued for the hub, which had not
    /// ordered it when the wait ended. It stays queued and is delivered once the hub
    /// is reachable; `kring notice show` tells later what became of it.
    Queued {
        /// How long filing waited for the hub (zero: it did not wait).
        waited: Duration,
    },
    /// A hop (relay or link) refused the notice before the hub ordered it; it is
    /// withheld from that hop on.
    Refused {
        /// The relay or link that refused it (e.g. `bz`, `post-a->bz`).
        hop: String,
        /// Why.
        reason: String,
    },
}

impl Ordering {
    /// The outcome a status report settles, or `None` while the notice is still
    /// queued (no sequence number, no refusal). A sequence number wins over
    /// refusals: once the hub ordered the notice, a refusal can only concern a hop
    /// after the hub (the notice is withheld there, not everywhere).
    pub fn from_status(status: &NoticeStatus) -> Option<Ordering> {
        if let Some(seq) = status.seq {
            return Some(Ordering::Ordered { seq });
        }
        status.refusals.first().map(|r| Ordering::Refused {
            hop: r.hop.clone(),
            reason: r.reason.clone(),
        })
    }

    /// The sequence number, once ordered.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Ordering::Ordered { seq } => Some(*seq),
            Ordering::Queued { .. } | Ordering::Refused { .. } => None,
        }
    }

    /// Whether a hop refused the notice.
    pub fn is_refused(&self) -> bool {
        matches!(self, Ordering::Refused { .. })
    }
}

impl std::fmt::Display for Ordering {
    /// `ordered as #4`, `queued, not ordered within 10 s`, `not waited for`,
    /// `refused by bz: REASON`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ordering::Ordered { seq } => write!(f, "ordered as #{seq}"),
            Ordering::Queued { waited } if waited.is_zero() => {
                write!(f, "queued, ordering not waited for")
            }
            Ordering::Queued { waited } => {
                write!(f, "queued, not ordered within {} s", seconds(*waited))
            }
            Ordering::Refused { hop, reason } => write!(f, "refused by {hop}: {reason}"),
        }
    }
}

/// Pauses between status requests: [`FIRST_POLL`], doubling up to [`MAX_POLL`].
#[derive(Debug, Clone)]
pub struct PollSchedule {
    next: Duration,
}

impl Default for PollSchedule {
    fn default() -> Self {
        Self { next: FIRST_POLL }
    }
}

impl PollSchedule {
    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(MAX_POLL);
        pause
    }
}

/// Where [`await_ordering`] reads a notice's status from (the home relay; a fake in
/// tests).
pub(crate) trait StatusSource {
    /// The home relay's status of notice `id`, answered within `limit`.
    async fn status(&mut self, id: Uuid, limit: Duration) -> Result<NoticeStatus>;
}

/// How [`await_ordering`] ended.
#[derive(Debug)]
pub(crate) struct Waited {
    /// The outcome.
    pub ordering: Ordering,
    /// The refusals of the last status read.
    pub refusals: Vec<HopRefusal>,
    /// Why the status could not be read, if the wait ended early for that reason.
    pub failure: Option<ClientError>,
}

/// Reads the status of notice `id` from `source` (pausing per [`PollSchedule`])
/// until the hub ordered it, a hop refused it, or `wait` is over; the last request
/// may take [`LAST_POLL_GRACE`] longer, and no request longer than `request_limit`.
/// An unreachable home relay is asked again until the wait is over; any other
/// failure ends the wait at once ([`Ordering::Queued`] with the failure).
pub(crate) async fn await_ordering<S: StatusSource>(
    source: &mut S,
    id: Uuid,
    wait: Duration,
    request_limit: Duration,
) -> Waited {
    let mut waited = Waited {
        ordering: Ordering::Queued { waited: wait },
        refusals: Vec::new(),
        failure: None,
    };
    if wait.is_zero() {
        return waited;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut schedule = PollSchedule::default();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return waited;
        }
        tokio::time::sleep(schedule.next_pause().min(left)).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let limit = left.max(LAST_POLL_GRACE).min(request_limit);
        match source.status(id, limit).await {
            Ok(status) if status.notice_id != id => {
                waited.failure = Some(ClientError::Protocol(format!(
                    "asked for the status of notice {id}, the relay answered for {}",
                    status.notice_id
                )));
                return waited;
            }
            Ok(status) => {
                if let Some(ordering) = Ordering::from_status(&status) {
                    waited.ordering = ordering;
                    waited.refusals = status.refusals;
                    return waited;
                }
                waited.refusals = status.refusals;
            }
            Err(e) if e.exit_code() == EXIT_UNREACHABLE => {
                tracing::debug!(%id, "no status yet: {e}");
            }
            Err(e) => {
                waited.failure = Some(e);
                return waited;
            }
        }
    }
}

/// `10`, `2.5`: a duration in seconds as people write it.
pub fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", secs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kring_protocol::wire::HopRefusal;
    use uuid::Uuid;

    /// Test fixture: hop refusals from `(hop, reason)` pairs.
    pub(crate) fn hop_refusals(refusals: &[(&str, &str)]) -> Vec<HopRefusal> {
        refusals
            .iter()
            .map(|(hop, reason)| HopRefusal {
                hop: (*hop).into(),
                reason: (*reason).into(),
            })
            .collect()
    }

    /// Test fixture: a notice status in `desinformatie@bz`.
    pub(crate) fn status(seq: Option<u64>, refusals: &[(&str, &str)]) -> NoticeStatus {
        NoticeStatus {
            notice_id: Uuid::from_u128(1),
            community: "desinformatie@bz".into(),
            seq,
            refusals: hop_refusals(refusals),
        }
    }

    #[test]
    fn a_status_without_seq_or_refusal_is_still_queued() {
        assert_eq!(Ordering::from_status(&status(None, &[])), None);
    }

    #[test]
    fn a_sequence_number_means_ordered_even_with_later_refusals() {
        assert_eq!(
            Ordering::from_status(&status(Some(7), &[])),
            Some(Ordering::Ordered { seq: 7 })
        );
        let o = Ordering::from_status(&status(Some(9), &[("bz->nctv", "accreditation")]));
        assert_eq!(o, Some(Ordering::Ordered { seq: 9 }));
        assert_eq!(o.and_then(|o| o.seq()), Some(9));
    }

    #[test]
    fn the_first_refusal_settles_an_unordered_notice() {
        let o = Ordering::from_status(&status(
            None,
            &[("bz", "above the community maximum"), ("x", "y")],
        ))
        .unwrap();
        assert_eq!(
            o,
            Ordering::Refused {
                hop: "bz".into(),
                reason: "above the community maximum".into()
            }
        );
        assert!(o.is_refused());
        assert_eq!(o.seq(), None);
        let queued = Ordering::Queued {
            waited: Duration::ZERO,
        };
        assert!(!queued.is_refused());
        assert_eq!(queued.seq(), None);
    }

    #[test]
    fn outcomes_read_as_one_phrase() {
        assert_eq!(Ordering::Ordered { seq: 4 }.to_string(), "ordered as #4");
        assert_eq!(
            Ordering::Queued {
                waited: Duration::from_secs(10)
            }
            .to_string(),
            "queued, not ordered within 10 s"
        );
        assert_eq!(
            Ordering::Queued {
                waited: Duration::ZERO
            }
            .to_string(),
            "queued, ordering not waited for"
        );
        assert_eq!(
            Ordering::Refused {
                hop: "bz".into(),
                reason: "too high".into()
            }
            .to_string(),
            "refused by bz: too high"
        );
    }

    #[test]
    fn polling_backs_off_from_100_to_500_ms() {
        let mut s = PollSchedule::default();
        let pauses: Vec<u64> = (0..6).map(|_| s.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, vec![100, 200, 400, 500, 500, 500]);
    }

    /// Answers from a script, one per request; records the limits asked for.
    struct Script {
        answers: std::collections::VecDeque<Result<NoticeStatus>>,
        limits: Vec<Duration>,
    }

    impl Script {
        fn new(answers: Vec<Result<NoticeStatus>>) -> Self {
            Self {
                answers: answers.into(),
                limits: Vec::new(),
            }
        }
    }

    impl StatusSource for Script {
        async fn status(&mut self, _id: Uuid, limit: Duration) -> Result<NoticeStatus> {
            self.limits.push(limit);
            self.answers
                .pop_front()
                .unwrap_or_else(|| Ok(status(None, &[])))
        }
    }

    fn unreachable() -> ClientError {
        ClientError::Unreachable {
            relay: "post-a".into(),
            reason: "connection lost".into(),
        }
    }

    const ID: Uuid = Uuid::from_u128(1);
    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn waiting_ends_when_the_hub_has_ordered_it() {
        let mut s = Script::new(vec![
            Ok(status(None, &[])),
            Err(unreachable()),
            Ok(status(Some(31), &[])),
        ]);
        let start = std::time::Instant::now();
        let w = await_ordering(&mut s, ID, Duration::from_secs(10), LIMIT).await;
        assert_eq!(w.ordering, Ordering::Ordered { seq: 31 });
        assert!(w.failure.is_none());
        assert_eq!(s.limits.len(), 3, "an unreachable relay is asked again");
        assert!(s.limits.iter().all(|l| *l <= LIMIT));
        // 100 + 200 + 400 ms of pauses, not the whole wait.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn waiting_ends_with_the_first_refusal() {
        let mut s = Script::new(vec![
            Ok(status(None, &[])),
            Ok(status(None, &[("bz", "too high"), ("post-a->bz", "link")])),
        ]);
        let w = await_ordering(&mut s, ID, Duration::from_secs(10), LIMIT).await;
        assert_eq!(
            w.ordering,
            Ordering::Refused {
                hop: "bz".into(),
                reason: "too high".into()
            }
        );
        assert_eq!(w.refusals.len(), 2);
        assert_eq!(s.limits.len(), 2);
    }

    #[tokio::test]
    async fn an_unordered_notice_stays_queued_after_the_wait() {
        let wait = Duration::from_millis(450);
        let mut s = Script::new(Vec::new());
        let start = std::time::Instant::now();
        let w = await_ordering(&mut s, ID, wait, LIMIT).await;
        let took = start.elapsed();
        assert_eq!(w.ordering, Ordering::Queued { waited: wait });
        assert!(w.failure.is_none());
        assert!(took >= wait, "{took:?}");
        assert!(took < wait + Duration::from_secs(5), "{took:?}");
        // Pauses of 100 and 200 ms, then the rest of the wait (fewer polls if the
        // machine is slow); each request may take at most the grace period, as less
        // than that is left of the wait.
        assert!((1..=3).contains(&s.limits.len()), "{:?}", s.limits);
        assert!(
            s.limits.iter().all(|l| *l == LAST_POLL_GRACE),
            "{:?}",
            s.limits
        );
    }

    #[tokio::test]
    async fn a_zero_wait_asks_nothing() {
        let mut s = Script::new(Vec::new());
        let w = await_ordering(&mut s, ID, Duration::ZERO, LIMIT).await;
        assert_eq!(
            w.ordering,
            Ordering::Queued {
                waited: Duration::ZERO
            }
        );
        assert!(s.limits.is_empty());
    }

    #[tokio::test]
    async fn other_failures_and_wrong_answers_end_the_wait_with_the_reason() {
        let mut s = Script::new(vec![Err(ClientError::Auth("revoked".into()))]);
        let w = await_ordering(&mut s, ID, Duration::from_secs(10), LIMIT).await;
        assert!(matches!(w.ordering, Ordering::Queued { .. }));
        assert!(matches!(w.failure, Some(ClientError::Auth(_))));
        assert_eq!(s.limits.len(), 1);

        let mut other = status(Some(3), &[]);
        other.notice_id = Uuid::from_u128(2);
        let mut s = Script::new(vec![Ok(other)]);
        let w = await_ordering(&mut s, ID, Duration::from_secs(10), LIMIT).await;
        assert!(matches!(w.ordering, Ordering::Queued { .. }));
        let failure = w.failure.unwrap().to_string();
        assert!(failure.contains("answered for"), "{failure}");
    }

    #[test]
    fn seconds_are_written_plainly() {
        assert_eq!(seconds(Duration::from_secs(10)), "10");
        assert_eq!(seconds(Duration::ZERO), "0");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5");
    }
}
