//! Publishing this agent's LAN coordinate (`coordinate/<node>`), so every agent of the
//! datacenter estimates round trips between any two nodes (`/v1/coordinate/nodes`,
//! `?near=`, `murmur rtt`).
//!
//! The coordinate moves with every ping (once a second); it is published at Consul's pace
//! instead: every 15 s, slower in large datacenters so that the whole datacenter writes
//! about 64 coordinates a second. Each reaches every agent riding on the probes and acks sent
//! anyway (a background change, `Change::is_background`), not by gossip rounds of its own.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use super::runtime::Agent;

/// Consul's least interval between two updates of one node's coordinate.
const MIN_INTERVAL: Duration = Duration::from_secs(15);
/// Consul's cap on coordinate updates per second for a whole datacenter.
const DATACENTER_RATE: f64 = 64.0;
/// The first publication waits for a few samples, not a whole interval.
const FIRST_AFTER: Duration = Duration::from_secs(3);

/// How long an agent of a datacenter of `nodes` waits between publications.
pub fn interval(nodes: usize) -> Duration {
    MIN_INTERVAL.max(Duration::from_secs_f64(nodes as f64 / DATACENTER_RATE))
}

/// Publishes the LAN coordinate for as long as the agent runs, once it has measured.
pub async fn publish(agent: Arc<Agent>) {
    let mut wait = FIRST_AFTER;
    loop {
        // Up to a quarter more, so agents started together do not publish in step.
        let stagger = 1.0 + rand::rng().random_range(0.0..0.25);
        tokio::time::sleep(wait.mul_f64(stagger)).await;
        let nodes = agent.with_node(|n| {
            if n.node().stats().coordinate_samples > 0 {
                let coordinate = n.node().coordinate().clone();
                n.write(|replica, now| replica.put_coordinate(coordinate, now));
            }
            n.replica().records().len()
        });
        wait = interval(nodes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_consuls() {
        assert_eq!(interval(1), Duration::from_secs(15));
        assert_eq!(interval(960), Duration::from_secs(15));
        assert_eq!(interval(6400), Duration::from_secs(100));
    }
}
