//! Refused callers are counted always and logged at most once per [`LOG_EVERY`] per reason,
//! with how many went unlogged since: a scanner or a misconfigured caller must not flood the
//! log, and one line must still say that it is happening.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two log lines of one reason.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals by reason, with when each reason was last logged.
#[derive(Default)]
pub struct Refusals {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Refusals {
    /// Counts a refusal for `reason` and logs it unless that reason was logged recently.
    pub fn note(&self, reason: &'static str, detail: &str) {
        metrics::counter!("murmur_proxy_refused_total", "reason" => reason).increment(1);
        if let Some(unlogged) = self.due(reason, Instant::now()) {
            tracing::warn!(reason, unlogged_since_last = unlogged, "refused: {detail}");
        }
    }

    /// Whether a refusal for `reason` at `now` is logged: `Some(refusals not logged since the
    /// last line)` if so.
    fn due(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().expect("refusals poisoned");
        match last.get_mut(reason) {
            Some((at, unlogged)) if now.duration_since(*at) < LOG_EVERY => {
                *unlogged += 1;
                None
            }
            Some((at, unlogged)) => {
                let skipped = *unlogged;
                (*at, *unlogged) = (now, 0);
                Some(skipped)
            }
            None => {
                last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_period_with_the_count_of_the_rest() {
        let refusals = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(refusals.due("handshake", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(
                refusals.due("handshake", t0 + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(refusals.due("intention", t0), Some(0), "reasons are apart");
        assert_eq!(refusals.due("handshake", t0 + LOG_EVERY), Some(5));
        assert_eq!(refusals.due("handshake", t0 + LOG_EVERY), None);
    }
}
