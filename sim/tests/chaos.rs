//! The CI sweep: seeded chaos runs of clusters of 5 to 50 nodes, every invariant checked; and
//! determinism. A failing seed prints the command that replays it.

use std::time::Duration;

use murmur_sim::{ChaosConfig, Scenario, run};

/// Seeds in the sweep.
const SEEDS: u64 = 200;

fn config(seed: u64) -> ChaosConfig {
    ChaosConfig {
        nodes: 5 + (seed * 7 % 46) as usize,
        seed,
        duration: Duration::from_secs(120),
        scenario: Scenario::chaos(),
    }
}

#[test]
fn a_sweep_of_seeds_keeps_every_invariant() {
    // Two threads, each with its own seeds: runs are independent and each is deterministic.
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                s.spawn(move || {
                    (w..SEEDS)
                        .step_by(2)
                        .filter_map(|seed| {
                            let c = config(seed);
                            let nodes = c.nodes;
                            let report = run(c);
                            (!report.violations.is_empty()).then(|| {
                                format!(
                                    "seed {seed} ({nodes} nodes): {:?}\n  replay: murmur sim --nodes {nodes} --seed {seed} --duration 120s",
                                    report.violations
                                )
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("sweep worker"))
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_seed_gives_one_run() {
    let a = run(config(7));
    let b = run(config(7));
    assert_eq!(a, b);
    assert!(a.writes > 0 && a.faults > 0, "{a:?}");
    assert_ne!(a.trace_hash, run(config(8)).trace_hash);
}

/// Seeds the simulator once failed on, kept so the bug stays fixed. Each names what it caught.
#[test]
fn seeds_that_once_failed_keep_every_invariant() {
    let regressions = [(
        // A crash declared by 196 of 199 members within 12 s; the one member every copy of
        // the Down missed held its suspicion until the crashed node came back 32 s later,
        // because only the member whose probe failed timed suspicions out. Fixed in the
        // vendored foca: whoever adopts a suspicion runs the timer (vendor/foca/PATCHED.md).
        // Since joins are spaced while the cluster forms (`JOIN_SPACING`) this seed takes
        // another path; the fix keeps its own test in foca
        // (`a_suspicion_heard_is_timed_out_by_the_hearer_too`), and the seed stays as a
        // 200-node chaos run.
        "suspicion never timed out by a member the Down missed",
        200,
        1,
        70,
    )];
    for (what, nodes, seed, secs) in regressions {
        let report = run(ChaosConfig {
            nodes,
            seed,
            duration: Duration::from_secs(secs),
            scenario: Scenario::chaos(),
        });
        assert!(
            report.violations.is_empty(),
            "{what}: {:?}\n  replay: murmur sim --nodes {nodes} --seed {seed} --duration {secs}s",
            report.violations
        );
    }
}
