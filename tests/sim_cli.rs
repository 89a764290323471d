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
