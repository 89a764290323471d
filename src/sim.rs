//! `murmur sim`: runs seeded chaos scenarios of the simulator and reports each run; a failing
//! seed prints the exact command that replays it.

use std::process::ExitCode;
use std::time::Instant;

use murmur_sim::{ChaosConfig, run as run_chaos};

use crate::cli::SimArgs;

/// Runs the seeds and prints one line per run; fails when any invariant broke.
pub fn run(args: &SimArgs) -> ExitCode {
    let Some(duration) = crate::duration::parse(&args.duration).filter(|d| !d.is_zero()) else {
        eprintln!(
            "error: --duration {:?} is not a positive duration such as 120s or 5m",
            args.duration
        );
        return ExitCode::FAILURE;
    };
    if args.nodes < 2 {
        eprintln!("error: --nodes must be at least 2");
        return ExitCode::FAILURE;
    }
    let seeds = match &args.seeds {
        None => args.seed..args.seed + 1,
        Some(range) => match parse_range(range) {
            Some(range) => range,
            None => {
                eprintln!("error: --seeds {range:?} must look like 0..200 (the end excluded)");
                return ExitCode::FAILURE;
            }
        },
    };
    let total = seeds.end - seeds.start;
    let mut failed = 0;
    for (done, seed) in seeds.enumerate() {
        let started = Instant::now();
        let config = ChaosConfig {
            nodes: args.nodes,
            seed,
            duration,
        };
        let report = run_chaos(config);
        let converged = report
            .converged_after
            .map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
        println!(
            "[{}/{total}] seed {seed}: {} nodes, {} writes, {} faults, agreed {converged} after the heal, \
             {:.1} datagrams and {:.0} B per node-second, {} duplicated, {} false failures, \
             trace {:016x}, {:.1}s wall",
            done + 1,
            args.nodes,
            report.writes,
            report.faults,
            report.datagrams_per_node_second,
            report.bytes_per_node_second,
            report.duplicates,
            report.false_failures,
            report.trace_hash,
            started.elapsed().as_secs_f64()
        );
        if !report.violations.is_empty() {
            failed += 1;
            for violation in &report.violations {
                println!("  violated: {violation}");
            }
            println!(
                "  replay: murmur sim --nodes {} --seed {seed} --duration {}",
                args.nodes, args.duration
            );
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {total} runs broke an invariant");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..")?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start < end).then_some(start..end)
}
