//! Hybrid logical clock (Kulkarni et al., 2014): stamps that follow wall-clock time closely,
//! never go backwards on one node, and order every causally related pair of events.
//!
//! A stamp is (physical ms, logical counter, node id); the node id makes every stamp unique,
//! which is what last-writer-wins registers need to converge when two nodes write in the same
//! millisecond. The clock never reads time itself: the caller passes the wall clock in, so the
//! simulator can skew it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One stamp. Ordered by physical time, then the logical counter, then the node id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as far as the clock can tell.
    pub physical_ms: u64,
    /// Orders events within one millisecond.
    pub logical: u32,
    /// The node that made the stamp; breaks ties so no two nodes make equal stamps.
    pub node: u64,
}

/// A remote stamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote clock stamp is {ahead_ms} ms ahead of this node's clock (the limit is {limit_ms} ms): \
     check the clocks (NTP) of both nodes"
)]
pub struct ClockError {
    /// How far ahead of the local wall clock the stamp was.
    pub ahead_ms: u64,
    /// The configured bound.
    pub limit_ms: u64,
}

/// The clock of one node.
#[derive(Debug, Clone)]
pub struct Clock {
    node: u64,
    last: Hlc,
    max_ahead: Duration,
    rejected: u64,
}

impl Clock {
    /// A clock for `node` that refuses remote stamps more than `max_ahead` in front of its wall
    /// clock, so one node with a wrong clock cannot drag every other clock into the future.
    pub fn new(node: u64, max_ahead: Duration) -> Self {
        Self {
            node,
            last: Hlc {
                physical_ms: 0,
                logical: 0,
                node,
            },
            max_ahead,
            rejected: 0,
        }
    }

    /// Restores a clock after a restart: stamps stay above `last` even if the wall clock went back.
    pub fn resume(node: u64, max_ahead: Duration, last: Hlc) -> Self {
        Self {
            last: Hlc { node, ..last },
            ..Self::new(node, max_ahead)
        }
    }

    /// The latest stamp made or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// How many remote stamps were refused as too far in the future.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// A stamp for a local event at wall-clock time `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let physical = self.last.physical_ms.max(wall_ms);
        let logical = if physical == self.last.physical_ms {
            self.last.logical.checked_add(1)
        } else {
            Some(0)
        };
        self.advance(physical, logical)
    }

    /// Takes a remote stamp into account (on receiving a message); returns the new local stamp,
    /// which is above both the remote stamp and everything made here before.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Result<Hlc, ClockError> {
        let limit_ms = u64::try_from(self.max_ahead.as_millis()).unwrap_or(u64::MAX);
        let ahead_ms = remote.physical_ms.saturating_sub(wall_ms);
        if ahead_ms > limit_ms {
            self.rejected += 1;
            return Err(ClockError { ahead_ms, limit_ms });
        }
        let local = self.last;
        let physical = local.physical_ms.max(remote.physical_ms).max(wall_ms);
        let logical = match (
            physical == local.physical_ms,
            physical == remote.physical_ms,
        ) {
            (true, true) => local.logical.max(remote.logical).checked_add(1),
            (true, false) => local.logical.checked_add(1),
            (false, true) => remote.logical.checked_add(1),
            (false, false) => Some(0),
        };
        Ok(self.advance(physical, logical))
    }

    /// Sets the new stamp; a logical counter that would overflow moves to the next millisecond.
    fn advance(&mut self, physical: u64, logical: Option<u32>) -> Hlc {
        self.last = match logical {
            Some(logical) => Hlc {
                physical_ms: physical,
                logical,
                node: self.node,
            },
            None => Hlc {
                physical_ms: physical + 1,
                logical: 0,
                node: self.node,
            },
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    #[test]
    fn follows_wall_clock_and_orders_within_a_millisecond() {
        let mut c = Clock::new(1, BOUND);
        let a = c.now(1000);
        let b = c.now(1000);
        let d = c.now(2000);
        assert_eq!((a.physical_ms, a.logical), (1000, 0));
        assert_eq!((b.physical_ms, b.logical), (1000, 1));
        assert_eq!((d.physical_ms, d.logical), (2000, 0));
    }

    #[test]
    fn wall_clock_going_back_never_moves_stamps_back() {
        let mut c = Clock::new(1, BOUND);
        let a = c.now(5000);
        let b = c.now(1000);
        assert!(b > a);
        let resumed = Clock::resume(1, BOUND, b).now(10);
        assert!(
            resumed > b,
            "a restart with a clock set back still stamps above the last stamp"
        );
    }

    #[test]
    fn absurd_future_stamps_are_refused_and_counted() {
        let mut c = Clock::new(1, BOUND);
        let before = c.now(1000);
        let far = Hlc {
            physical_ms: 1000 + 61_000,
            logical: 0,
            node: 2,
        };
        let err = c.observe(far, 1000).unwrap_err();
        assert_eq!(err.ahead_ms, 61_000);
        assert!(err.to_string().contains("NTP"));
        assert_eq!(c.rejected(), 1);
        assert_eq!(c.last(), before, "a refused stamp changes nothing");
        let near = Hlc {
            physical_ms: 1000 + 59_000,
            logical: 7,
            node: 2,
        };
        assert!(c.observe(near, 1000).unwrap() > near);
    }

    #[test]
    fn logical_overflow_moves_to_the_next_millisecond() {
        let last = Hlc {
            physical_ms: 10,
            logical: u32::MAX,
            node: 1,
        };
        let mut c = Clock::resume(1, BOUND, last);
        let next = c.now(10);
        assert_eq!((next.physical_ms, next.logical), (11, 0));
        assert!(next > last);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Local { node: usize, wall: u64 },
        Send { from: usize, to: usize, wall: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..4usize, 0..10_000u64).prop_map(|(node, wall)| Step::Local { node, wall }),
            (0..4usize, 0..4usize, 0..10_000u64).prop_map(|(from, to, wall)| Step::Send {
                from,
                to,
                wall
            }),
        ]
    }

    proptest! {
        /// Under any wall clocks (skewed per node, jumping back and forth), each node's stamps
        /// strictly increase, a received stamp is always below the receiver's next stamp
        /// (causality), and no two stamps anywhere are equal.
        #[test]
        fn monotonic_causal_and_unique_under_skew(
            skews in proptest::collection::vec(0..80_000u64, 4),
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut clocks: Vec<Clock> = (0..4).map(|n| Clock::new(n as u64, BOUND)).collect();
            let mut seen = std::collections::HashSet::new();
            for step in steps {
                match step {
                    Step::Local { node, wall } => {
                        let before = clocks[node].last();
                        let stamp = clocks[node].now(wall + skews[node]);
                        prop_assert!(stamp > before);
                        prop_assert!(seen.insert(stamp));
                    }
                    Step::Send { from, to, wall } => {
                        let sent = clocks[from].now(wall + skews[from]);
                        prop_assert!(seen.insert(sent));
                        let before = clocks[to].last();
                        match clocks[to].observe(sent, wall + skews[to]) {
                            Ok(got) => {
                                prop_assert!(got > sent && got > before);
                                prop_assert!(seen.insert(got));
                            }
                            Err(_) => prop_assert_eq!(clocks[to].last(), before),
                        }
                    }
                }
            }
        }
    }
}
