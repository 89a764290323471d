//! Federated datacenters on the simulator: every seed forms 2 to 5 datacenters, writes in all,
//! asks across them, cuts the WAN (whole, between two, one way), heals, crashes a gateway and
//! restarts it, and checks the federation invariants (`murmur_sim::federation::run`).

use murmur_sim::federation::{FederationConfig, FederationReport, run};

/// One run of `datacenters` × `nodes` with `seed`, panicking with the violation.
fn check(datacenters: usize, nodes: usize, seed: u64) -> FederationReport {
    match run(FederationConfig::new(datacenters, nodes, seed)) {
        Ok(report) => report,
        Err(violation) => panic!("{violation}"),
    }
}

#[test]
fn sweep() {
    for seed in 1..=16u64 {
        let dcs = 2 + (seed as usize % 4);
        let nodes = 3 + (seed as usize % 3);
        let report = check(dcs, nodes, seed);
        eprintln!("{dcs}x{nodes} {report:?}");
    }
}

#[test]
fn one_seed_is_one_run() {
    assert_eq!(check(3, 4, 77), check(3, 4, 77));
}
