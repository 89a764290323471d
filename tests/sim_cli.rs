//! `murmur sim` as users run it: a sweep reports every run, one seed replays identically, and
//! bad flags are one clear line.

mod common;

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(common::BIN)
        .arg("sim")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_sweep_reports_each_run_and_a_seed_replays_identically() {
    let sweep = sim(&["--nodes", "5", "--seeds", "3..5", "--duration", "30s"]);
    let text = String::from_utf8_lossy(&sweep.stdout);
    assert!(sweep.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].starts_with("[2/2] seed 4: 5 nodes"), "{text}");
    let trace = |line: &str| line.split("trace ").nth(1).map(|t| t[..16].to_owned());
    let replay = sim(&["--nodes", "5", "--seed", "4", "--duration", "30s"]);
    let again = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(trace(lines[1]), trace(again.lines().next().unwrap()));
}

#[test]
fn bad_flags_are_one_clear_line() {
    let out = sim(&["--seeds", "9..3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--seeds") && err.contains("0..200"), "{err}");
    let out = sim(&["--duration", "soon"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
}

#[test]
fn a_scenario_runs_with_its_report_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("spread.svg");
    let out = sim(&[
        "--scenario",
        "crashes",
        "--nodes",
        "12",
        "--seed",
        "2",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "writes reached every node: p50",
        "crashes declared failed by all: p50",
        "restarted nodes seen alive by all: p50",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawing.starts_with("<svg") && drawing.contains("<polyline"),
        "{drawing:.200}"
    );
    for panel in ["How writes spread", "How killed processes came to be known"] {
        assert!(drawing.contains(panel), "{panel:?} missing from the plot");
    }
}

#[test]
fn a_scenario_file_with_a_mistake_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.toml");
    std::fs::write(&file, "[network]\nlatency_ms = 3\n").unwrap();
    let out = sim(&["--scenario", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mine.toml") && err.contains("latency_ms"),
        "{err}"
    );
    let out = sim(&["--scenario", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chaos, quiet, partition"), "{err}");
}

#[test]
fn a_federated_scenario_runs_its_phases_and_refuses_what_does_not_apply() {
    let run = sim(&["--scenario", "federation", "--nodes", "15", "--seed", "2"]);
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{out}{err}");
    assert!(
        out.starts_with("[1/1] seed 2: 5 datacenters x 3 nodes"),
        "{out}"
    );
    assert!(out.contains("0 LAN failures"), "{out}");
    assert!(
        err.contains("cutting the WAN"),
        "a single run says its phases: {err}"
    );
    let uneven = sim(&["--scenario", "federation", "--nodes", "12"]);
    let err = String::from_utf8_lossy(&uneven.stderr);
    assert!(
        !uneven.status.success() && err.contains("multiple of"),
        "{err}"
    );
    let timed = sim(&["--scenario", "federation", "--duration", "30s"]);
    let err = String::from_utf8_lossy(&timed.stderr);
    assert!(
        !timed.status.success() && err.contains("do not apply"),
        "{err}"
    );
}
