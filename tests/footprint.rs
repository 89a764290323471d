//! An agent's memory footprint, end to end: it maps no `libm.so` (src/math.rs), and once it has
//! started it sheds the pages of code it mapped to start (src/agent/shed.rs).

mod common;

use std::time::Duration;

use common::{Agent, Spec, wait_until};

/// Each mapping of the process's `/proc/PID/smaps` whose header contains `path_part`, with
/// its permissions and its resident kB.
fn resident(pid: u32, path_part: &str) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if first == "Rss:" {
            if let Some(perms) = current.take() {
                found.push((perms, fields.next().unwrap().parse().unwrap()));
            }
        } else if !first.ends_with(':') {
            // A mapping's header: range, permissions, offset, device, inode, path.
            let perms = fields.next().unwrap_or_default().to_owned();
            current = line.contains(path_part).then_some(perms);
        }
    }
    found
}

#[test]
fn an_agent_maps_no_libm_and_sheds_its_start_up_code() {
    let agent = Agent::start(Spec {
        name: "footprint",
        key: None,
        join: None,
        extra: &[],
    });
    let pid = agent.pid().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        !maps.contains("/libm.so"),
        "the agent maps glibc's libm: some code calls a math function src/math.rs does not \
         define (`nm -D --undefined-only` of the binary lists it):\n{maps}"
    );

    let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_murmur")).unwrap();
    let binary = binary.to_str().unwrap();
    let code = |pid| -> u64 {
        resident(pid, binary)
            .iter()
            .filter(|(perms, _)| perms == "r-xp")
            .map(|(_, kb)| kb)
            .sum()
    };
    let started = code(pid);
    assert!(started > 0, "the binary's code is mapped");
    assert!(
        wait_until(Duration::from_secs(30), || agent
            .log()
            .contains("shed the code mapped while starting")),
        "the agent never shed its start-up code:\n{}",
        agent.log()
    );
    // What it runs from then on faults back in; what only starting ran does not. (A release
    // build, whose idle functions are placed together, keeps far less: BENCHMARKS.md.)
    std::thread::sleep(Duration::from_secs(1));
    let idle = code(pid);
    assert!(
        idle < started,
        "the binary's resident code went from {started} kB to {idle} kB after shedding"
    );
    assert!(
        agent.try_get("/v1/agent/self").is_some(),
        "the agent still answers"
    );
}
