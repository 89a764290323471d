//! End to end: real agents on loopback find each other, detect failures, leave, restart, and
//! refuse outsiders, as users see it through the HTTP API and the CLI.

mod common;

use std::time::Duration;

use common::{Agent, Spec, cluster, http, keygen, wait_until};

const DETECT: Duration = Duration::from_secs(30);

#[test]
fn five_agents_through_one_seed_all_list_five_alive() {
    let agents = cluster("five", 5, &keygen());
    for agent in &agents {
        let out = agent.cli(&["members"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().filter(|l| l.contains(" alive ")).count(),
            5,
            "{text}"
        );
    }
    let out = agents[0].cli(&["members", "--status", "failed"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "only the header"
    );
}

#[test]
fn killed_agent_is_marked_failed_by_all() {
    let mut agents = cluster("kill", 4, &keygen());
    // Each agent ties itself to every other of so small a cluster, within a second or two.
    let tied = "murmur_gossip_tethers{pool=\"lan\",side=\"tied\"}";
    assert!(
        wait_until(DETECT, || agents[2].metric(tied) == 3.0),
        "agent 2 tied itself to the 3 others: {}",
        agents[2].metric(tied)
    );
    agents[2].kill9();
    let name = agents[2].name.clone();
    let others = [0, 1, 3];
    assert!(
        wait_until(DETECT, || others
            .iter()
            .all(|&i| agents[i].status_of(&name) == Some(4))),
        "kill -9 not detected by all within {DETECT:?}"
    );
    let sum = |metric: &str| -> f64 { others.iter().map(|&i| agents[i].metric(metric)).sum() };
    // Its kernel closed the streams it held open to the others, and each holder checked it.
    let lost = sum("murmur_gossip_unreachable_total{stage=\"tether_lost\"}");
    assert_eq!(lost, 3.0, "each of the three holders lost its tether");
    // Its host answered the checks (ICMP port unreachable to its gossip port), and the
    // survivors confirmed it among themselves: no suspicion had to run out.
    let declared = sum("murmur_gossip_unreachable_total{stage=\"declared\"}");
    assert!(declared > 0.0, "declared on the host's word");
}

#[test]
fn leave_command_marks_agent_left_and_exits() {
    let mut agents = cluster("leave", 3, &keygen());
    let out = agents[1].cli(&["leave"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(agents[1].wait_exit(), "agent exits cleanly after leaving");
    let name = agents[1].name.clone();
    assert!(wait_until(Duration::from_secs(10), || [0, 2]
        .iter()
        .all(|&i| agents[i].status_of(&name) == Some(3))));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        agents[0].status_of(&name),
        Some(3),
        "left stays left, never failed"
    );
}

#[test]
fn sigterm_is_a_graceful_leave() {
    let mut agents = cluster("term", 3, &keygen());
    assert!(agents[2].terminate(), "SIGTERM exits 0");
    let name = agents[2].name.clone();
    assert!(wait_until(Duration::from_secs(10), || agents[0]
        .status_of(&name)
        == Some(3)));
}

#[test]
fn wrong_gossip_key_cannot_join_and_says_why() {
    let agents = cluster("key", 2, &keygen());
    let out = Agent::run_to_exit(Spec {
        name: "intruder",
        key: Some(&keygen()),
        join: Some(agents[0].gossip),
        extra: &[],
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gossip key mismatch"), "{stderr}");
    assert_eq!(agents[0].status_of("intruder"), None);
    let dropped =
        agents[0].get("/v1/agent/self")["Stats"]["gossip_dropped"]["undecryptable"].clone();
    assert_ne!(dropped, "0", "the refused message was counted");
}

#[test]
fn taken_node_name_is_refused() {
    let key = keygen();
    let agents = cluster("dup", 2, &key);
    let out = Agent::run_to_exit(Spec {
        name: "dup1",
        key: Some(&key),
        join: Some(agents[0].gossip),
        extra: &[],
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already taken"), "{stderr}");
}

#[test]
fn unreachable_seed_and_bad_key_are_one_clear_line() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let out = Agent::run_to_exit(Spec {
        name: "lonely",
        key: None,
        join: Some(dead),
        extra: &[],
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot connect"),
        "{stderr}"
    );
    let out = Agent::run_to_exit(Spec {
        name: "badkey",
        key: Some("not-a-key"),
        join: None,
        extra: &[],
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--encrypt") && stderr.contains("murmur keygen"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_is_one_clear_line() {
    let agents = cluster("port", 1, &keygen());
    let out = std::process::Command::new(common::BIN)
        .args([
            "agent",
            "--dev",
            "--node",
            "port-b",
            "--bind",
            &agents[0].gossip.to_string(),
        ])
        .args(["--http-addr", &format!("127.0.0.1:{}", common::free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("already in use") && error_lines[0].contains("--bind"),
        "{stderr}"
    );
}

#[test]
fn restarted_agent_becomes_alive_again_with_a_new_generation() {
    let mut agents = cluster("restart", 3, &keygen());
    let name = agents[1].name.clone();
    let generation = |a: &Agent| {
        a.get("/v1/agent/self")["Stats"]["agent"]["generation"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = generation(&agents[1]);
    agents[1].kill9();
    let seed = agents[0].gossip;
    agents[1].restart(Some(seed));
    assert!(generation(&agents[1]) > before);
    assert!(
        wait_until(Duration::from_secs(20), || agents
            .iter()
            .all(|a| a.status_of(&name) == Some(1))),
        "restarted agent not alive everywhere"
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        agents[2].status_of(&name),
        Some(1),
        "the ghost's failure does not override the new life"
    );
}

#[test]
fn event_fired_on_one_agent_is_listed_on_all() {
    let agents = cluster("event", 4, &keygen());
    let index = |a: &Agent| {
        let (_, headers, _) = http(a.http, "GET", "/v1/event/list", b"").unwrap();
        common::header(&headers, "x-consul-index")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    let start_index = index(&agents[3]);
    assert!(start_index > 0, "X-Consul-Index is never 0");
    // A blocking query on agent 3 wakes when the event fired on agent 0 arrives.
    let watcher = agents[3].http;
    let blocked = std::thread::spawn(move || {
        http(
            watcher,
            "GET",
            &format!("/v1/event/list?index={start_index}&wait=20s"),
            b"",
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = agents[0].cli(&["event", "deploy", "v42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, body) = blocked.join().unwrap();
    assert!(
        body.contains("\"deploy\""),
        "blocking query woke with the event: {body}"
    );
    for agent in &agents {
        assert!(wait_until(Duration::from_secs(5), || {
            agent
                .try_get("/v1/event/list?name=deploy")
                .and_then(|v| v.as_array().map(Vec::len))
                == Some(1)
        }));
        assert_eq!(
            agent.get("/v1/event/list")[0]["Payload"],
            "djQy",
            "payload is base64"
        );
    }
    let out = agents[0].cli(&["event", "huge", &"x".repeat(600)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit is 512"));

    // Service and tag filters: only agent 2 runs a `web` tagged `canary`.
    let (status, _, text) = agents[2].request(
        "PUT",
        "/v1/agent/service/register",
        br#"{"Name": "web", "Tags": ["canary"]}"#,
    );
    assert_eq!(status, 200, "{text}");
    let out = agents[0].cli(&["event", "--service", "^web$", "--tag", "canary", "web-only"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fired = agents[0].cli(&["event", "everyone"]);
    assert!(fired.status.success());
    let listed = |a: &Agent, name: &str| {
        a.get(&format!("/v1/event/list?name={name}"))
            .as_array()
            .map_or(0, Vec::len)
    };
    // Events from one sender arrive in order, so once `everyone` is listed, `web-only` would be.
    for agent in &agents {
        assert!(wait_until(Duration::from_secs(5), || listed(
            agent, "everyone"
        ) == 1));
    }
    let got: Vec<usize> = (0..4)
        .filter(|&i| listed(&agents[i], "web-only") == 1)
        .collect();
    assert_eq!(
        got,
        [2],
        "only the agent running web tagged canary records it"
    );
    assert_eq!(
        agents[2].get("/v1/event/list?name=web-only")[0]["TagFilter"],
        "canary"
    );
    let (status, _, text) = http(agents[0].http, "PUT", "/v1/event/fire/x?tag=v1", b"").unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("without service filter"), "{text}");
}

#[test]
fn keyring_rotation_spreads_to_every_member() {
    let old = keygen();
    let new = keygen();
    let agents = cluster("ring", 3, &old);
    for args in [
        ["keyring", "--install", &new],
        ["keyring", "--use", &new],
        ["keyring", "--remove", &old],
    ] {
        let out = agents[1].cli(&args);
        assert!(
            out.status.success(),
            "{:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = agents[0].cli(&["keyring", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{new}  [3/3] [primary]")) && !text.contains(&old),
        "{text}"
    );
    // The cluster still works on the new key: a newcomer with it joins, one with the old cannot.
    let newcomer = Agent::start(Spec {
        name: "ring-new",
        key: Some(&new),
        join: Some(agents[0].gossip),
        extra: &[],
    });
    assert!(wait_until(Duration::from_secs(10), || agents[2]
        .status_of(&newcomer.name)
        == Some(1)));
    let out = Agent::run_to_exit(Spec {
        name: "ring-old",
        key: Some(&old),
        join: Some(agents[0].gossip),
        extra: &[],
    });
    assert!(!out.status.success());
}

#[test]
fn api_speaks_consul() {
    let agents = cluster("api", 1, &keygen());
    let me = agents[0].get("/v1/agent/self");
    assert_eq!(me["Config"]["NodeName"], "api0");
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    let (status, headers, _) = http(agents[0].http, "GET", "/v1/agent/members", b"").unwrap();
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-consul-knownleader").as_deref(), Some("true"));
    assert_eq!(header("x-consul-lastcontact").as_deref(), Some("0"));
    assert!(
        header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let (status, _, body) = http(agents[0].http, "GET", "/v1/event/list?index=abc", b"").unwrap();
    assert_eq!((status, body.as_str()), (400, "Invalid index"));
    let (status, _, body) = http(
        agents[0].http,
        "GET",
        "/v1/event/list?index=1&wait=soon",
        b"",
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (400, "Invalid wait time"));
    let (status, _, body) = http(
        agents[0].http,
        "GET",
        "/v1/agent/metrics?format=prometheus",
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("murmur_members"), "{body}");
}
