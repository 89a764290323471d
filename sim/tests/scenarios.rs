//! Every built-in scenario keeps every invariant on a few seeds, and each measures what it is
//! there to measure.

use std::time::Duration;

use murmur_sim::scenario::BUILT_IN;
use murmur_sim::{ChaosConfig, Report, Scenario, run};

fn run_scenario(name: &str, nodes: usize, seed: u64) -> Report {
    let scenario = Scenario::load(name).expect("built-in");
    let duration = Duration::from_secs_f64(scenario.duration_s.unwrap_or(180.0));
    let report = run(ChaosConfig {
        nodes,
        seed,
        duration,
        scenario,
    });
    assert!(
        report.violations.is_empty(),
        "{name}, seed {seed}, {nodes} nodes: {:?}\n  replay: murmur sim --scenario {name} --nodes {nodes} --seed {seed}",
        report.violations
    );
    report
}

#[test]
fn every_built_in_scenario_keeps_every_invariant() {
    for (name, _) in BUILT_IN {
        let federated = Scenario::load(name).expect("built-in").federation.is_some();
        for seed in 0..3 {
            if federated {
                run_federated(name, 15 + 5 * seed as usize, seed);
            } else {
                run_scenario(name, 12 + 9 * seed as usize, seed);
            }
        }
    }
}

/// A federated scenario's run of `nodes` in all.
fn run_federated(name: &str, nodes: usize, seed: u64) -> murmur_sim::federation::FederationReport {
    let config = Scenario::load(name)
        .expect("built-in")
        .federation_config(nodes, seed)
        .unwrap();
    murmur_sim::federation::run(config).unwrap_or_else(|violation| {
        panic!("{violation}\n  replay: murmur sim --scenario {name} --nodes {nodes} --seed {seed}")
    })
}

#[test]
fn a_federation_scenario_refuses_what_does_not_apply_to_it() {
    let with = |extra: &str| {
        let text = format!("[network]\ndatacenters = 2\n[federation]\n{extra}");
        Scenario::parse("test", &text)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert!(with("").is_ok());
    let err = with("[faults]\nper_s = 1.0\n").unwrap_err();
    assert!(
        err.contains("[faults] does not apply to a federated run"),
        "{err}"
    );
    let err = with("cut = \"sideways\"\n").unwrap_err();
    assert!(err.contains("sideways"), "{err}");
    let one = Scenario::parse("one", "[federation]\n")
        .map(drop)
        .unwrap_err();
    assert!(
        one.to_string().contains("datacenters of at least 2"),
        "{one}"
    );
    let scenario = Scenario::load("federation").unwrap();
    let err = scenario.federation_config(12, 1).unwrap_err();
    assert!(
        err.contains("multiple of the scenario's 5 datacenters"),
        "{err}"
    );
}

#[test]
fn crashes_are_detected_within_the_bound() {
    let report = run_scenario("crashes", 25, 1);
    let detection = report.failure_detection;
    assert!(detection.count >= 5, "{detection}");
    assert!(detection.max <= report.detection_bound, "{detection}");
    assert!(
        report.join_spread.count >= 5,
        "restarts measured: {}",
        report.join_spread
    );
    // The plot's curves: one per crash, climbing to every node that had to declare it, the
    // last point at the time the percentiles count.
    let curves = &report.detection_curves;
    assert!(!curves.is_empty() && curves.len() <= detection.count.min(24));
    for d in curves {
        let points = &d.curve.points;
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1)
        );
        let (last_at, last) = *points.last().expect("a node declared it");
        assert_eq!(last, 1.0);
        assert!(
            Duration::from_secs_f64(last_at) <= detection.max,
            "{points:?}"
        );
    }
}

#[test]
fn a_partition_delays_writes_until_it_heals_and_none_is_lost() {
    let report = run_scenario("partition", 20, 2);
    // Writes made during the 60 s split reach the other side only after the heal.
    assert!(
        report.write_spread.max >= Duration::from_secs(30),
        "{}",
        report.write_spread
    );
    assert!(report.writes > 100);
}

#[test]
fn on_a_quiet_network_writes_reach_everyone_within_a_gossip_round_or_two() {
    let report = run_scenario("quiet", 30, 3);
    assert!(
        report.write_spread.p50 <= Duration::from_millis(250),
        "{}",
        report.write_spread
    );
    assert_eq!(report.false_failures, 0);
    assert_eq!(report.curves.len(), 24, "curves kept for plots");
}

#[test]
fn ten_percent_loss_declares_nobody_failed() {
    let report = run_scenario("lossy", 60, 4);
    assert_eq!(report.false_failures, 0, "{report:?}");
    assert!(report.write_spread.count > 100, "{}", report.write_spread);
}
