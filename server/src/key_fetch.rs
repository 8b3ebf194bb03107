//! Limits on fetching other users' key packages, so that nobody can drain someone's
//! one-time packages (each fetch consumes one).
//!
//! Per hour (a window that starts with the first fetch it counts):
//! - one requester gets at most [`KeyFetchLimits::one_time_per_pair`] one-time
//!   packages of one user, and
//! - all requesters together get at most [`KeyFetchLimits::one_time_per_target`] of one
//!   user.
//!
//! Past either, the user's last-resort package is handed out instead (it is never
//! consumed, so adding the user keeps working). One requester may fetch one user's
//! packages at most [`KeyFetchLimits::fetches_per_pair`] times per hour in all; past
//! that, fetches are refused with `RateLimited`. Counters live in memory, at most
//! [`KeyFetchLimits::max_tracked`] of each kind: when full (and nothing has expired),
//! only last-resort packages are handed out until windows expire.
//!
//! The relay that holds the packages (the user's home relay) applies the limits, for
//! its own users' requests and for requests forwarded by peers alike; every fetch is
//! audit-logged there with requester, user and which kind of package was handed out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFetchLimits {
    /// One-time packages one requester gets of one user per window.
    pub one_time_per_pair: u32,
    /// One-time packages all requesters together get of one user per window.
    pub one_time_per_target: u32,
    /// Fetches (of any kind) one requester may make for one user per window.
    pub fetches_per_pair: u32,
    /// The window.
    pub window: Duration,
    /// Most counters kept of each kind.
    pub max_tracked: usize,
}

impl Default for KeyFetchLimits {
    fn default() -> Self {
        Self {
            one_time_per_pair: ONE_TIME_PER_PAIR,
            one_time_per_target: ONE_TIME_PER_TARGET,
            fetches_per_pair: FETCHES_PER_PAIR,
            window: WINDOW,
            max_tracked: 100_000,
        }
    }
}

/// Default: one-time packages one requester gets of one user per hour.
pub const ONE_TIME_PER_PAIR: u32 = 3;
/// Default: one-time packages all requesters together get of one user per hour.
pub const ONE_TIME_PER_TARGET: u32 = 12;
/// Default: fetches one requester may make for one user per hour.
pub const FETCHES_PER_PAIR: u32 = 30;
/// Default window.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// What a fetch may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A one-time package (if any is left), else the last-resort one.
    OneTime,
    /// Only the last-resort package: the one-time ones are protected.
    LastResortOnly {
        /// Why (for the audit log).
        why: String,
        /// When one-time packages may be handed out again.
        retry_after: Duration,
    },
}

/// A refused fetch: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    fetches: u32,
    one_time: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            fetches: 0,
            one_time: 0,
        }
    }
}

/// The counters.
#[derive(Debug, Default)]
pub struct KeyFetchLimiter {
    limits: KeyFetchLimits,
    pairs: HashMap<(String, String), Window>,
    targets: HashMap<String, Window>,
}

/// The window of `key`, restarted if it has expired; `None` if a new one cannot be
/// tracked (full even after dropping expired ones).
fn window<'a, K: std::hash::Hash + Eq>(
    map: &'a mut HashMap<K, Window>,
    key: K,
    now: Instant,
    limits: &KeyFetchLimits,
) -> Option<&'a mut Window> {
    if !map.contains_key(&key) && map.len() >= limits.max_tracked {
        map.retain(|_, w| now.duration_since(w.start) < limits.window);
        if map.len() >= limits.max_tracked {
            return None;
        }
    }
    let w = map.entry(key).or_insert_with(|| Window::new(now));
    if now.duration_since(w.start) >= limits.window {
        *w = Window::new(now);
    }
    Some(w)
}

impl KeyFetchLimiter {
    /// With these limits.
    pub fn new(limits: KeyFetchLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Counts a fetch of `target`'s key package by `requester` and says what it
    /// may take; refused past [`KeyFetchLimits::fetches_per_pair`].
    pub fn admit(
        &mut self,
        requester: &str,
        target: &str,
        now: Instant,
    ) -> Result<Grant, RetryAfter> {
        let limits = self.limits;
        let Some(pair) = window(
            &mut self.pairs,
            (requester.to_string(), target.to_string()),
            now,
            &limits,
        ) else {
            return Ok(Grant::LastResortOnly {
                why: "too many key package fetches are being tracked".into(),
                retry_after: limits.window,
            });
        };
        if pair.fetches >= limits.fetches_per_pair {
            let left = limits.window.saturating_sub(now.duration_since(pair.start));
            return Err(RetryAfter(left));
        }
        pair.fetches += 1;
        if pair.one_time >= limits.one_time_per_pair {
            return Ok(Grant::LastResortOnly {
                why: format!(
                    "{requester} already got {} one-time key packages of {target} this hour",
                    pair.one_time
                ),
                retry_after: limits.window.saturating_sub(now.duration_since(pair.start)),
            });
        }
        let Some(all) = window(&mut self.targets, target.to_string(), now, &limits) else {
            return Ok(Grant::LastResortOnly {
                why: "too many key package fetches are being tracked".into(),
                retry_after: limits.window,
            });
        };
        if all.one_time >= limits.one_time_per_target {
            return Ok(Grant::LastResortOnly {
                why: format!(
                    "{} one-time key packages of {target} were handed out this hour",
                    all.one_time
                ),
                retry_after: limits.window.saturating_sub(now.duration_since(all.start)),
            });
        }
        Ok(Grant::OneTime)
    }

    /// Records that a one-time package of `target` went to `requester` (after
    /// [`admit`](Self::admit) granted it).
    pub fn took_one_time(&mut self, requester: &str, target: &str, now: Instant) {
        let limits = self.limits;
        if let Some(pair) = window(
            &mut self.pairs,
            (requester.to_string(), target.to_string()),
            now,
            &limits,
        ) {
            pair.one_time += 1;
        }
        if let Some(all) = window(&mut self.targets, target.to_string(), now, &limits) {
            all.one_time += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> KeyFetchLimits {
        KeyFetchLimits {
            one_time_per_pair: 2,
            one_time_per_target: 3,
            fetches_per_pair: 4,
            window: Duration::from_secs(3600),
            max_tracked: 8,
        }
    }

    /// Takes a one-time package whenever granted; returns what was granted.
    fn fetch(l: &mut KeyFetchLimiter, who: &str, whom: &str, now: Instant) -> Option<bool> {
        match l.admit(who, whom, now) {
            Ok(Grant::OneTime) => {
                l.took_one_time(who, whom, now);
                Some(true)
            }
            Ok(Grant::LastResortOnly { .. }) => Some(false),
            Err(_) => None,
        }
    }

    #[test]
    fn one_requester_cannot_drain_a_user() {
        let mut l = KeyFetchLimiter::new(limits());
        let t = Instant::now();
        let got: Vec<_> = (0..5).map(|_| fetch(&mut l, "m@bz", "v@bz", t)).collect();
        assert_eq!(
            got,
            [Some(true), Some(true), Some(false), Some(false), None]
        );
        match l.admit("m@bz", "v@bz", t) {
            Err(RetryAfter(d)) => assert_eq!(d, Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
        // Another requester still gets one-time packages; another user is untouched.
        assert_eq!(fetch(&mut l, "a@bz", "v@bz", t), Some(true));
        assert_eq!(fetch(&mut l, "m@bz", "w@bz", t), Some(true));
        // After the window, everything starts afresh.
        let later = t + Duration::from_secs(3600);
        assert_eq!(fetch(&mut l, "m@bz", "v@bz", later), Some(true));
    }

    #[test]
    fn many_requesters_together_cannot_drain_a_user() {
        let mut l = KeyFetchLimiter::new(limits());
        let t = Instant::now();
        let got: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|who| fetch(&mut l, &format!("{who}@nctv"), "v@bz", t))
            .collect();
        assert_eq!(
            got,
            [Some(true), Some(true), Some(true), Some(false), Some(false)]
        );
        match l.admit("f@nctv", "v@bz", t) {
            Ok(Grant::LastResortOnly { why, retry_after }) => {
                assert!(why.contains("3 one-time"), "{why}");
                assert_eq!(retry_after, Duration::from_secs(3600));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counters_are_bounded_and_full_means_last_resort_only() {
        let mut l = KeyFetchLimiter::new(limits());
        let t = Instant::now();
        for i in 0..8 {
            assert_eq!(fetch(&mut l, &format!("u{i}@bz"), "v@bz", t), Some(i < 3));
        }
        assert!(l.pairs.len() <= 8 && l.targets.len() <= 8);
        assert_eq!(fetch(&mut l, "u9@bz", "w@bz", t), Some(false));
        // Expired counters make room again.
        let later = t + Duration::from_secs(3601);
        assert_eq!(fetch(&mut l, "u9@bz", "w@bz", later), Some(true));
        assert!(l.pairs.len() <= 8);
    }
}
