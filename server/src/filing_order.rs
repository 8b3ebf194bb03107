//! One connection's filings, ordered in the order the device opened their streams.
//!
//! A device may keep several filings in flight on one connection. Its MLS sender
//! ratchet numbers its messages, and a member can read a message only while it is
//! at most a few dozen generations behind the newest one it has read from that
//! sender; so the relay must order a device's filings in the order the device
//! sealed them, which is the order it opened their streams. QUIC hands a
//! connection's streams to the relay in stream-id order (`accept_bi`), which is the
//! order the device opened them, so the relay numbers streams as it accepts them.
//! A filing is ordered (the core's synchronous call that queues or orders it) only
//! once every earlier stream of its connection is *done*: read and found to be no
//! filing, refused, or ordered. Frames are still read concurrently; only the short
//! ordering step waits.
//!
//! [`Turnstile`] is the bookkeeping, plain and deterministic; [`StreamOrder`] and
//! [`Turn`] wrap it for the connection's tasks. A stream that never sends its frame
//! holds up the later filings of its own connection only until the frame deadline
//! refuses it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Which of a connection's streams are done, by number (0 is the first accepted).
#[derive(Debug, Default)]
pub struct Turnstile {
    /// Every stream below this one is done.
    next: u64,
    /// Streams done above `next`: kept while stream `next` is unread, which its
    /// frame deadline bounds.
    done: BTreeSet<u64>,
}

impl Turnstile {
    /// Every stream numbered below this is done: stream `n` may be ordered once
    /// this is `n`.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Marks stream `n` done (again: no effect); returns the new [`next`](Self::next).
    pub fn finish(&mut self, n: u64) -> u64 {
        if n == self.next {
            self.next += 1;
            while self.done.remove(&self.next) {
                self.next += 1;
            }
        } else if n > self.next {
            self.done.insert(n);
        }
        self.next
    }

    /// How many streams above [`next`](Self::next) are done.
    pub fn done_ahead(&self) -> usize {
        self.done.len()
    }
}

/// A connection's [`Turnstile`], shared by its stream tasks.
#[derive(Debug)]
pub struct StreamOrder {
    state: Mutex<Turnstile>,
    next: tokio::sync::watch::Sender<u64>,
}

impl Default for StreamOrder {
    fn default() -> Self {
        Self {
            state: Mutex::new(Turnstile::default()),
            next: tokio::sync::watch::channel(0).0,
        }
    }
}

impl StreamOrder {
    /// The turn of stream `n`: numbered in accept order, from 0, none skipped.
    pub fn turn(self: &Arc<Self>, n: u64) -> Turn {
        Turn {
            of: Some((Arc::clone(self), n)),
        }
    }

    fn finish(&self, n: u64) {
        let next = match self.state.lock() {
            Ok(mut t) => t.finish(n),
            // A panic while the lock was held (nothing in it can panic) would leave
            // a turnstile nobody can trust: later filings of this connection would
            // then wait until the connection ends.
            Err(_) => return,
        };
        self.next.send_if_modified(|v| {
            let moved = *v != next;
            *v = next;
            moved
        });
    }
}

/// A stream's place in its connection's order. Dropping it marks the stream done,
/// whichever way its handling ends.
#[derive(Debug)]
pub struct Turn {
    of: Option<(Arc<StreamOrder>, u64)>,
}

impl Turn {
    /// A turn that waits for nothing and holds up nothing (a request that is not
    /// a device's stream, or a test).
    pub fn free() -> Turn {
        Turn { of: None }
    }

    /// Waits until every earlier stream of the connection is done.
    pub async fn wait(&self) {
        let Some((order, n)) = &self.of else {
            return;
        };
        let mut next = order.next.subscribe();
        // The sender lives in `order`, which this turn holds: never closed here.
        let _ = next.wait_for(|next| *next >= *n).await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((order, n)) = self.of.take() {
            order.finish(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn next_moves_over_every_stream_done_in_a_row() {
        let mut t = Turnstile::default();
        assert_eq!(t.finish(1), 0);
        assert_eq!(t.finish(3), 0);
        assert_eq!(t.done_ahead(), 2);
        assert_eq!(t.finish(0), 2);
        assert_eq!(t.finish(0), 2, "done twice changes nothing");
        assert_eq!(t.finish(2), 4);
        assert_eq!(t.done_ahead(), 0);
    }

    proptest! {
        /// Whatever order streams finish in, `next` is the first stream not yet done.
        #[test]
        fn next_is_the_first_stream_not_done(order in Just((0..40u64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut t = Turnstile::default();
            let mut done = BTreeSet::new();
            for n in order {
                done.insert(n);
                let next = t.finish(n);
                let first_missing = (0..=40).find(|i| !done.contains(i)).unwrap_or(41);
                prop_assert_eq!(next, first_missing);
                prop_assert_eq!(t.done_ahead(), done.iter().filter(|d| **d > next).count());
            }
            prop_assert_eq!(t.next(), 40);
        }
    }

    #[tokio::test]
    async fn a_turn_waits_for_every_earlier_stream_and_a_dropped_turn_counts_as_done() {
        let order = Arc::new(StreamOrder::default());
        let (first, second, third) = (order.turn(0), order.turn(1), order.turn(2));
        let waiting = tokio::spawn(async move {
            third.wait().await;
            third
        });
        tokio::task::yield_now().await;
        drop(second);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "ordered before stream 0 was done");
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("stream 2 still waits once 0 and 1 are done")
            .expect("task");
        drop(third);
        assert_eq!(order.next.borrow().to_owned(), 3);
        Turn::free().wait().await;
    }
}
