//! How long to wait before asking the agent again for what it could not give yet (a leaf, the
//! roots): from [`Backoff::MIN`], doubling on each failure up to [`Backoff::MAX`], with jitter so
//! that a fleet that failed together does not ask again together. The sidecars and the SDK use
//! the same schedule. Decision only: the caller draws the jitter and sleeps.

use std::time::Duration;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    wait: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { wait: Self::MIN }
    }
}

impl Backoff {
    /// The first wait: an agent that could not give a leaf one second ago may now.
    pub const MIN: Duration = Duration::from_secs(1);
    /// The longest wait: what an operator fixed shows within half a minute.
    pub const MAX: Duration = Duration::from_secs(30);
    /// Jitter added to each wait, as a share of it at most.
    pub const JITTER: f64 = 0.25;

    /// After a failure: how long to wait now (`jitter` drawn uniformly in 0..1), doubling the
    /// next wait.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let now = self.wait + self.wait.mul_f64(jitter.clamp(0.0, 1.0) * Self::JITTER);
        self.wait = (self.wait * 2).min(Self::MAX);
        now
    }

    /// After a success: the next failure waits [`Self::MIN`] again.
    pub fn reset(&mut self) {
        self.wait = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| backoff.next(0.0).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next(0.0), Backoff::MIN);
    }

    proptest! {
        #[test]
        fn every_wait_lies_between_the_bounds(jitters in proptest::collection::vec(-1.0f64..2.0, 1..40)) {
            let mut backoff = Backoff::default();
            for jitter in jitters {
                let wait = backoff.next(jitter);
                prop_assert!(wait >= Backoff::MIN);
                prop_assert!(wait <= Backoff::MAX.mul_f64(1.0 + Backoff::JITTER));
            }
        }
    }
}
