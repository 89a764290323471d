//! `murmur sim`: runs seeded scenarios of the simulator and reports each run; a failing seed
//! prints the exact command that replays it.

mod plot;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use murmur_sim::federation::FederationReport;
use murmur_sim::{ChaosConfig, Progress, Report, Scenario, run_with_progress};

use crate::cli::SimArgs;

/// Runs the seeds and prints one line per run (and the details of a single run); fails when
/// any invariant broke.
pub fn run(args: &SimArgs) -> ExitCode {
    match plan(args) {
        Ok(plan) => execute(args, &plan),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What the flags and the scenario add up to.
struct Plan {
    scenario: Scenario,
    nodes: usize,
    duration: Duration,
    duration_text: String,
    seeds: std::ops::Range<u64>,
}

fn plan(args: &SimArgs) -> Result<Plan, String> {
    let scenario = Scenario::load(&args.scenario).map_err(|e| e.to_string())?;
    let duration_text = match (&args.duration, scenario.duration_s) {
        (Some(text), _) => text.clone(),
        (None, Some(s)) => format!("{s}s"),
        (None, None) => "120s".into(),
    };
    let duration = crate::duration::parse(&duration_text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!("--duration {duration_text:?} is not a positive duration such as 120s or 5m")
        })?;
    let nodes = args.nodes.or(scenario.nodes).unwrap_or(10);
    if nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    let seeds = match &args.seeds {
        None => args.seed..args.seed + 1,
        Some(range) => parse_range(range)
            .ok_or_else(|| format!("--seeds {range:?} must look like 0..200 (the end excluded)"))?,
    };
    Ok(Plan {
        scenario,
        nodes,
        duration,
        duration_text,
        seeds,
    })
}

fn execute(args: &SimArgs, plan: &Plan) -> ExitCode {
    if plan.scenario.federation.is_some() {
        return execute_federated(args, plan);
    }
    let total = plan.seeds.end - plan.seeds.start;
    let single = total == 1;
    let mut failed = 0;
    for (done, seed) in plan.seeds.clone().enumerate() {
        let started = Instant::now();
        let config = ChaosConfig {
            nodes: plan.nodes,
            seed,
            duration: plan.duration,
            scenario: plan.scenario.clone(),
        };
        // Progress for single runs that take a while; sweeps show one line per run.
        let mut shown = false;
        let report = run_with_progress(config, |p| {
            if single && started.elapsed() >= Duration::from_secs(2) {
                print_progress(p, started);
                shown = true;
            }
        });
        if shown && std::io::stderr().is_terminal() {
            eprint!("\r\x1b[K");
        }
        println!(
            "[{}/{total}] seed {seed}: {}, {:.1}s wall",
            done + 1,
            summary(plan.nodes, &report),
            started.elapsed().as_secs_f64()
        );
        if single {
            print_details(&report);
        }
        if !report.violations.is_empty() {
            failed += 1;
            for violation in &report.violations {
                println!("  violated: {violation}");
            }
            println!(
                "  replay: murmur sim --scenario {} --nodes {} --seed {seed} --duration {}",
                args.scenario, plan.nodes, plan.duration_text
            );
        }
        if let Some(path) = &args.plot {
            let title = format!(
                "{} nodes, scenario {}, seed {seed}",
                plan.nodes, args.scenario
            );
            match plot::write_curves(path, &title, &report.curves, &report.detection_curves) {
                Ok(()) => println!("  plot: {}", path.display()),
                Err(e) => {
                    eprintln!("error: cannot draw {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {total} runs broke an invariant");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs the seeds of a federated scenario (`[federation]`), one line each.
fn execute_federated(args: &SimArgs, plan: &Plan) -> ExitCode {
    if args.duration.is_some() || args.plot.is_some() {
        eprintln!(
            "error: --duration and --plot do not apply to a federated scenario: its phases are set in [federation]"
        );
        return ExitCode::FAILURE;
    }
    let total = plan.seeds.end - plan.seeds.start;
    let mut failed = 0;
    for (done, seed) in plan.seeds.clone().enumerate() {
        let started = Instant::now();
        let config = match plan.scenario.federation_config(plan.nodes, seed) {
            Ok(config) => config,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        let (dcs, per_dc) = (config.datacenters, config.nodes_per_dc);
        // A single run says what it is doing: a large one takes minutes.
        let progress = |phase: &str| {
            if total == 1 {
                eprintln!("  {:>6.1}s wall: {phase}", started.elapsed().as_secs_f64());
            }
        };
        match murmur_sim::federation::run_with_progress(config, progress) {
            Ok(report) => println!(
                "[{}/{total}] seed {seed}: {dcs} datacenters x {per_dc} nodes, {}, {:.1}s wall",
                done + 1,
                federated_summary(&report),
                started.elapsed().as_secs_f64()
            ),
            Err(violation) => {
                failed += 1;
                println!("[{}/{total}] seed {seed}: violated: {violation}", done + 1);
                println!(
                    "  replay: murmur sim --scenario {} --nodes {} --seed {seed}",
                    args.scenario, plan.nodes
                );
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {total} runs broke an invariant");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn federated_summary(report: &FederationReport) -> String {
    format!(
        "formed in {:.1}s, idle WAN {} B per datacenter-second, a global write reached every \
         node in {}, WAN cut {:?}: 0 LAN failures, ?dc= {} answered {} refused, agreed {:.1}s \
         after the heal, a crashed gateway replaced in {:.1}s, at most {} WAN members, trace {:016x}",
        report.formed_in.as_secs_f64(),
        report.wan_bytes_per_dc_s,
        report.global_write,
        report.cut,
        report.asks.0,
        report.asks.1,
        report.converged_in.as_secs_f64(),
        report.replaced_in.as_secs_f64(),
        report.most_wan_members,
        report.trace,
    )
}

fn summary(nodes: usize, report: &Report) -> String {
    let converged = report
        .converged_after
        .map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
    format!(
        "{nodes} nodes, {} writes, {} faults, agreed {converged} after the heal, \
         {:.1} datagrams and {:.0} B per node-second, {} duplicated, {} false failures \
         ({} false suspicions), trace {:016x}",
        report.writes,
        report.faults,
        report.datagrams_per_node_second,
        report.bytes_per_node_second,
        report.duplicates,
        report.false_failures,
        report.false_suspicions,
        report.trace_hash,
    )
}

fn print_details(report: &Report) {
    let b = &report.max_backlogs;
    println!("  writes reached every node: {}", report.write_spread);
    println!(
        "  restarted nodes seen alive by all: {}",
        report.join_spread
    );
    println!(
        "  crashes declared failed by all: {} (bound {:.0}s)",
        report.failure_detection,
        report.detection_bound.as_secs_f64()
    );
    println!(
        "  streams (push-pulls, anti-entropy): {:.0} B per node-second",
        report.stream_bytes_per_node_second
    );
    println!(
        "  largest queues: {} member updates, {} broadcasts, {} known members",
        b.member_updates, b.broadcasts, b.known_members
    );
}

/// A progress line: redrawn in place on a terminal, every tenth of the run otherwise.
fn print_progress(p: Progress, started: Instant) {
    let fraction = p.done.as_secs_f64() / p.total.as_secs_f64();
    let line = format!(
        "  {:>3.0}% {:.0}s of {:.0}s simulated, {:.1}s wall, {} updates queued (max {})",
        fraction * 100.0,
        p.done.as_secs_f64(),
        p.total.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        p.queued_member_updates,
        p.largest_member_updates,
    );
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    } else {
        let tenth = (p.total.as_secs() / 10).max(1);
        if p.done.as_secs().is_multiple_of(tenth) {
            let _ = writeln!(err, "{line}");
        }
    }
}

fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..")?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start < end).then_some(start..end)
}
