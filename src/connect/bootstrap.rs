//! The mesh CA with no leader: which agent makes its datacenter's root, and when.
//!
//! Consul's servers make a CA on their first start; murmur has no servers, so every agent runs
//! the same rule each second and at most one is expected to act on it: **the first by name of
//! the datacenter's active agents that may bootstrap makes a root, once it has seen its
//! cluster (it was told to join no one, or it finished an anti-entropy round) and the need has
//! held for a settling time**. The need is either no root in the datacenter, or a signing root
//! whose key no active agent has held for a minute (its holders died or left for good: without
//! a new root the datacenter could never sign a leaf again). Two agents that both act (views
//! that disagree, or clusters made apart and joined later) make two roots; the existing root
//! rules settle that: the newest signs everywhere and the other stays trusted for one leaf
//! lifetime, so nothing a leaf of either allows is cut off.
//!
//! [`Bootstrap`] is the decision alone (what the agent sees and the time in, whether to make a
//! root out), so it is tested without agents; [`run`] feeds it from the agent.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::runtime::{Agent, elapsed};
use crate::connect::Connect;

/// Node meta key of an agent started with `--ca-bootstrap=false`: the rule passes it over, so
/// the next agent by name makes the root instead of nobody.
pub const NO_BOOTSTRAP_META: &str = "murmur-ca-bootstrap";
/// How long a datacenter with no root waits, once the first agent has seen its cluster, before
/// that agent makes one: long enough for a root already made elsewhere to arrive by gossip.
pub const NO_ROOT_SETTLE: Duration = Duration::from_secs(3);
/// How long no active agent may hold the signing root's key before a new root is made: longer
/// than failure detection and a restart, so a signer that comes back is not replaced.
pub const SIGNER_LOST_SETTLE: Duration = Duration::from_secs(60);

/// What one agent sees, each time the rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    /// The datacenter has a root.
    pub has_root: bool,
    /// An active agent (this one included) holds the key of the datacenter's signing root.
    pub signer_alive: bool,
    /// This agent has seen its cluster: it has no seeds, or it finished an anti-entropy round.
    pub synced: bool,
    /// This agent is the first by name of its datacenter's active agents that may bootstrap.
    pub first: bool,
}

/// Why a root is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The datacenter has none.
    NoRoot,
    /// No active agent holds the signing root's key.
    SignerLost,
}

impl Need {
    fn of(outlook: &Outlook) -> Option<Self> {
        if !outlook.synced || !outlook.first {
            None
        } else if !outlook.has_root {
            Some(Self::NoRoot)
        } else if !outlook.signer_alive {
            Some(Self::SignerLost)
        } else {
            None
        }
    }

    fn settle(self) -> Duration {
        match self {
            Self::NoRoot => NO_ROOT_SETTLE,
            Self::SignerLost => SIGNER_LOST_SETTLE,
        }
    }

    /// The metric label and log wording.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoot => "no-root",
            Self::SignerLost => "signer-lost",
        }
    }
}

/// The rule's memory: since when the need it saw last has held without a break.
#[derive(Debug, Default)]
pub struct Bootstrap {
    holding: Option<(Need, Duration)>,
}

impl Bootstrap {
    /// Runs the rule at `now` (any monotonic clock): the need to act on, once it has held
    /// for its settling time. Acting on it makes the outlook change, so it is returned once.
    pub fn step(&mut self, outlook: &Outlook, now: Duration) -> Option<Need> {
        let Some(need) = Need::of(outlook) else {
            self.holding = None;
            return None;
        };
        let since = match self.holding {
            Some((held, since)) if held == need => since,
            _ => {
                self.holding = Some((need, now));
                now
            }
        };
        if now.saturating_sub(since) < need.settle() {
            return None;
        }
        self.holding = None;
        Some(need)
    }
}

/// Runs the rule once a second for as long as the agent runs. `has_seeds`: the agent was told
/// to join someone, so it waits for its first anti-entropy round before deciding that its
/// datacenter has no root.
pub async fn run(agent: Arc<Agent>, connect: Arc<Connect>, has_seeds: bool) {
    let mut rule = Bootstrap::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let outlook = connect.outlook(&agent, has_seeds);
        let Some(need) = rule.step(&outlook, elapsed()) else {
            continue;
        };
        match connect.rotate(&agent).await {
            Ok(root) => {
                metrics::counter!("murmur_connect_ca_bootstrapped_total", "reason" => need.as_str())
                    .increment(1);
                tracing::info!(
                    root = %root.id, reason = need.as_str(),
                    "made this datacenter's CA root: no agent held one (the first agent by name makes it; --ca-bootstrap=false opts out)"
                );
            }
            Err(err) => tracing::warn!("cannot make this datacenter's CA root: {err:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEN: Outlook = Outlook {
        has_root: false,
        signer_alive: false,
        synced: true,
        first: true,
    };

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn the_first_synced_agent_makes_a_root_once_no_root_has_held_for_the_settling_time() {
        let mut rule = Bootstrap::default();
        assert_eq!(rule.step(&SEEN, s(10)), None);
        assert_eq!(rule.step(&SEEN, s(12)), None);
        assert_eq!(rule.step(&SEEN, s(13)), Some(Need::NoRoot));
        // Returned once: the next step starts the clock again.
        assert_eq!(rule.step(&SEEN, s(14)), None);
    }

    #[test]
    fn an_agent_that_is_not_first_or_has_not_synced_never_acts() {
        let mut rule = Bootstrap::default();
        for outlook in [
            Outlook {
                first: false,
                ..SEEN
            },
            Outlook {
                synced: false,
                ..SEEN
            },
        ] {
            for t in 0..1000 {
                assert_eq!(rule.step(&outlook, s(t)), None, "{outlook:?}");
            }
        }
    }

    #[test]
    fn a_break_in_the_need_restarts_the_clock() {
        let mut rule = Bootstrap::default();
        let rooted = Outlook {
            has_root: true,
            signer_alive: true,
            ..SEEN
        };
        assert_eq!(rule.step(&SEEN, s(0)), None);
        assert_eq!(rule.step(&rooted, s(2)), None);
        assert_eq!(rule.step(&SEEN, s(3)), None);
        assert_eq!(rule.step(&SEEN, s(5)), None);
        assert_eq!(rule.step(&SEEN, s(6)), Some(Need::NoRoot));
    }

    #[test]
    fn a_lost_signer_is_replaced_only_after_a_minute() {
        let mut rule = Bootstrap::default();
        let lost = Outlook {
            has_root: true,
            ..SEEN
        };
        assert_eq!(rule.step(&lost, s(0)), None);
        assert_eq!(rule.step(&lost, s(59)), None);
        assert_eq!(rule.step(&lost, s(60)), Some(Need::SignerLost));
    }

    #[test]
    fn a_change_of_need_restarts_the_clock() {
        let mut rule = Bootstrap::default();
        let lost = Outlook {
            has_root: true,
            ..SEEN
        };
        assert_eq!(rule.step(&lost, s(0)), None);
        // The root vanished from view (say, replaced): the no-root clock starts now.
        assert_eq!(rule.step(&SEEN, s(59)), None);
        assert_eq!(rule.step(&SEEN, s(61)), None);
        assert_eq!(rule.step(&SEEN, s(62)), Some(Need::NoRoot));
    }
}
