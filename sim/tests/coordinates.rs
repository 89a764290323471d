//! Network coordinates on a virtual network whose latencies are known: after a couple of
//! minutes of pings every node estimates its round trips to the others close to the truth,
//! and ranks the nodes of its own datacenter before those of the other.

use std::time::Duration;

use murmur_sim::{LinkModel, cluster};

#[test]
fn coordinates_estimate_lan_and_wan_round_trips() {
    let n = 12;
    let mut net = cluster(n, 11);
    // Node i sits in datacenter i % 2: 2–3 ms one way inside one, 40–50 ms between them.
    net.link = LinkModel {
        datacenters: 2,
        ..LinkModel::default()
    };
    net.run_for(Duration::from_secs(180));
    let coordinates: Vec<_> = (0..n)
        .map(|i| net.node(i).node().coordinate().clone())
        .collect();
    for i in 0..n {
        let mut farthest_lan = Duration::ZERO;
        let mut nearest_wan = Duration::MAX;
        for j in (0..n).filter(|&j| j != i) {
            let estimate = coordinates[i].distance(&coordinates[j]);
            if i % 2 == j % 2 {
                assert!(
                    estimate < Duration::from_millis(20),
                    "{i}-{j} (LAN): {estimate:?}"
                );
                farthest_lan = farthest_lan.max(estimate);
            } else {
                assert!(
                    (Duration::from_millis(65)..Duration::from_millis(120)).contains(&estimate),
                    "{i}-{j} (WAN, truly 80–100 ms): {estimate:?}"
                );
                nearest_wan = nearest_wan.min(estimate);
            }
        }
        assert!(
            farthest_lan < nearest_wan,
            "node {i} ranks its own datacenter first"
        );
        assert!(net.node(i).node().stats().coordinate_samples > 100);
        assert_eq!(net.node(i).node().coordinate_resets(), 0);
    }
}
