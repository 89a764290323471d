//! End to end: real agents on loopback replicate services and KV, converge on concurrent
//! writes, keep what they hold across a crash, and catch up after being stopped.

mod common;

use std::time::Duration;

use common::{Agent, Spec, cluster, keygen, wait_until};
use serde_json::Value;

/// Eager push takes milliseconds; the bound leaves room for anti-entropy rounds on a loaded machine.
const SPREAD: Duration = Duration::from_secs(30);

fn put(agent: &Agent, key: &str, value: &str) {
    let (status, _, body) = agent.request("PUT", &format!("/v1/kv/{key}"), value.as_bytes());
    assert_eq!(
        (status, body.as_str()),
        (200, "true"),
        "PUT {key} on {}",
        agent.name
    );
}

/// The raw value of `key` on `agent`, if it has one.
fn value(agent: &Agent, key: &str) -> Option<String> {
    let (status, _, body) = agent.request("GET", &format!("/v1/kv/{key}?raw"), b"");
    (status == 200).then_some(body)
}

fn register(agent: &Agent, definition: &str) {
    let (status, _, body) =
        agent.request("PUT", "/v1/agent/service/register", definition.as_bytes());
    assert_eq!(status, 200, "register on {}: {body}", agent.name);
}

/// The nodes listing an instance of `service`, as `agent` sees them.
fn nodes_of(agent: &Agent, service: &str) -> Vec<String> {
    let list = agent.get(&format!("/v1/catalog/service/{service}"));
    let mut nodes: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes
}

/// A `--config-dir` holding one file of these service definitions (JSON objects).
fn config_dir_of(services: impl Iterator<Item = String>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<String> = services.collect();
    let body = format!(r#"{{"services": [{}]}}"#, services.join(","));
    std::fs::write(dir.path().join("many.json"), body).unwrap();
    dir
}

fn all_hold(agents: &[Agent], key: &str, expected: &str) -> bool {
    agents
        .iter()
        .all(|a| value(a, key).as_deref() == Some(expected))
}

#[test]
fn services_and_kv_reach_every_agent_and_concurrent_writes_converge() {
    let agents = cluster("rep", 5, &keygen());
    register(
        &agents[0],
        r#"{"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"]}"#,
    );
    assert!(
        wait_until(SPREAD, || agents
            .iter()
            .all(|a| nodes_of(a, "web") == ["rep0"])),
        "the service did not reach every agent"
    );
    let services = agents[3].get("/v1/catalog/services");
    assert_eq!(services["web"], serde_json::json!(["v1"]));

    put(&agents[1], "app/config", "blue");
    assert!(
        wait_until(SPREAD, || all_hold(&agents, "app/config", "blue")),
        "the KV write did not reach every agent"
    );

    // The same key written on two agents at once: one value wins everywhere.
    let (a, b) = (&agents[2], &agents[4]);
    std::thread::scope(|s| {
        s.spawn(|| put(a, "race", "from-2"));
        s.spawn(|| put(b, "race", "from-4"));
    });
    let agreed = wait_until(SPREAD, || {
        let first = value(&agents[0], "race");
        first.is_some() && agents.iter().all(|a| value(a, "race") == first)
    });
    let seen: Vec<Option<String>> = agents.iter().map(|a| value(a, "race")).collect();
    assert!(agreed, "agents disagree on the raced key: {seen:?}");

    // A value too large for a datagram is flooded by stream, offered by key first: every
    // agent asks for it once, and declines the other members' offers.
    let large = "x".repeat(20_000);
    put(&agents[3], "app/large", &large);
    assert!(
        wait_until(SPREAD, || all_hold(&agents, "app/large", &large)),
        "the large value did not reach every agent"
    );
    let offered = |outcome: &str| -> Vec<f64> {
        let name = format!("murmur_gossip_offered_changes_total{{outcome=\"{outcome}\"}}");
        agents.iter().map(|a| a.metric(&name)).collect()
    };
    let (wanted, known) = (offered("wanted"), offered("known"));
    assert!(
        wanted.iter().all(|&n| n <= 1.0) && known.iter().sum::<f64>() >= 1.0,
        "offers wanted {wanted:?}, declined {known:?}"
    );

    let (_, _, metrics) = agents[0].request("GET", "/v1/agent/metrics?format=prometheus", b"");
    let applied = metrics
        .lines()
        .find(|l| l.starts_with("murmur_replica_changes_total{outcome=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert!(applied.is_some_and(|n| n >= 2.0), "{metrics}");
}

#[test]
fn a_blocking_query_returns_when_a_write_on_another_agent_arrives() {
    let agents = cluster("blk", 2, &keygen());
    put(&agents[0], "watched", "1");
    assert!(wait_until(SPREAD, || value(&agents[1], "watched").is_some()));
    let (_, headers, _) = agents[1].request("GET", "/v1/kv/watched", b"");
    let index = headers
        .iter()
        .find(|(k, _)| k == "x-consul-index")
        .map(|(_, v)| v.clone())
        .unwrap();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            agents[1].request(
                "GET",
                &format!("/v1/kv/watched?index={index}&wait=20s"),
                b"",
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        put(&agents[0], "watched", "2");
        let (status, _, body) = waiter.join().unwrap();
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list[0]["Value"], "Mg==", "the new value, base64");
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woke on the write, not the timeout"
    );
}

#[test]
fn a_killed_agent_keeps_its_services_and_kv_and_a_stopped_one_catches_up() {
    let mut agents = cluster("dur", 5, &keygen());
    let seed = agents[0].gossip;
    register(&agents[2], r#"{"Name": "db", "Port": 5432}"#);
    put(&agents[2], "held", "x");
    assert!(wait_until(SPREAD, || all_hold(&agents, "held", "x")));

    // Killed right after acknowledging: the data comes back from its own data dir, before it
    // talks to anyone.
    agents[2].kill9();
    agents[2].start_again(None, &[]);
    assert_eq!(value(&agents[2], "held").as_deref(), Some("x"));
    assert_eq!(nodes_of(&agents[2], "db"), ["dur2"]);
    agents[2].kill9();
    agents[2].start_again(Some(seed), &[]);

    // Stopped while the others write; it catches up through anti-entropy when it returns.
    agents[1].kill9();
    put(&agents[0], "while-away", "y");
    agents[1].start_again(Some(seed), &[]);
    assert!(
        wait_until(SPREAD, || value(&agents[1], "while-away").as_deref()
            == Some("y")),
        "the returning agent did not catch up:\n{}",
        agents[1].log()
    );

    // A graceful leave empties its record everywhere at once; a restart registers it again.
    assert!(agents[2].terminate());
    assert!(wait_until(SPREAD, || nodes_of(&agents[0], "db").is_empty()));
    agents[2].start_again(Some(seed), &[]);
    assert!(wait_until(SPREAD, || nodes_of(&agents[0], "db") == ["dur2"]));
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let mut agent = Agent::start(Spec {
        name: "ack",
        key: None,
        join: None,
        extra: &[],
    });
    // Concurrent writers share group commits; each answer means "on disk".
    std::thread::scope(|s| {
        for t in 0..4 {
            let agent = &agent;
            s.spawn(move || {
                for i in 0..50 {
                    put(agent, &format!("acked/{t}/{i}"), &format!("{t}-{i}"));
                }
            });
        }
    });
    agent.kill9();
    agent.start_again(None, &[]);
    let keys = agent.get("/v1/kv/acked/?keys");
    assert_eq!(keys.as_array().map(Vec::len), Some(200), "{keys}");
    assert_eq!(value(&agent, "acked/3/49").as_deref(), Some("3-49"));
}

#[test]
fn config_dir_services_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.json"),
        r#"{"services": [{"name": "web", "port": 80}, {"name": "api", "port": 81}]}"#,
    )
    .unwrap();
    let config_dir = dir.path().to_str().unwrap();
    let agent = Agent::start(Spec {
        name: "cfg",
        key: None,
        join: None,
        extra: &["--config-dir", config_dir],
    });
    assert_eq!(nodes_of(&agent, "web"), ["cfg"]);
    assert_eq!(nodes_of(&agent, "api"), ["cfg"]);

    let cases: [(&str, &str, &[u8], u16, &str); 5] = [
        (
            "PUT",
            "/v1/agent/service/register",
            b"{nope",
            400,
            "Request decode failed",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            br#"{"Name":"x","Port":-1}"#,
            400,
            "Port",
        ),
        (
            "PUT",
            "/v1/agent/service/deregister/absent",
            b"",
            404,
            "Unknown service ID",
        ),
        ("PUT", "/v1/kv/k?cas=abc", b"v", 400, "Invalid cas"),
        (
            "PUT",
            "/v1/kv/big",
            &[b'x'; 600 * 1024],
            413,
            "Value exceeds",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let (got, _, text) = agent.request(method, path, body);
        assert_eq!(got, status, "{method} {path}: {text}");
        assert!(text.contains(message), "{method} {path}: {text}");
    }
    assert_eq!(value(&agent, "big"), None, "nothing half-written");
    // The largest value allowed arrives whole through the HTTP/1 read buffer, which starts
    // at 512 bytes (vendor/hyper/PATCHED.md) and grows while the body streams in.
    let largest: String = (0..512 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let (status, _, text) = agent.request("PUT", "/v1/kv/largest", largest.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert_eq!(value(&agent, "largest").as_deref(), Some(largest.as_str()));

    std::fs::write(dir.path().join("bad.json"), r#"{"service": {"port": 1}}"#).unwrap();
    let out = Agent::run_to_exit(Spec {
        name: "cfg2",
        key: None,
        join: None,
        extra: &["--config-dir", config_dir],
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.json") && stderr.contains("Missing service name"),
        "{stderr}"
    );
}

#[test]
fn an_agent_joining_with_many_services_is_listed_by_every_agent_before_a_sync_round() {
    // The joiner writes its record (40 services, ~2 KB: too large for a datagram) before it
    // knows anyone, so that first flood reaches nobody. It spreads the record again once it
    // caught up with its seed; otherwise the agents other than the seed would get it from
    // anti-entropy rounds, every 10 s.
    let key = keygen();
    let agents = cluster("early", 3, &key);
    let dir = config_dir_of(
        (0..40).map(|i| format!(r#"{{"name": "late-svc-{i}", "port": {}}}"#, 9000 + i)),
    );
    let _late = Agent::start(Spec {
        name: "late",
        key: Some(&key),
        join: Some(agents[0].gossip),
        extra: &["--config-dir", dir.path().to_str().unwrap()],
    });
    let listed = wait_until(Duration::from_secs(5), || {
        agents[1..]
            .iter()
            .all(|a| nodes_of(a, "late-svc-39") == ["late"])
    });
    assert!(
        listed,
        "agents other than the seed did not list the newcomer's services within 5 s"
    );
}

#[test]
fn a_config_dir_too_large_to_replicate_is_refused_at_start() {
    // 10,000 services with a 200-byte tag each: about 2.3 MB as a record, over the 2 MiB one
    // record may take (it travels whole in one anti-entropy message).
    let tag = "t".repeat(200);
    let dir = config_dir_of(
        (0..10_000).map(|i| format!(r#"{{"name": "svc-{i}", "port": 80, "tags": ["{tag}"]}}"#)),
    );
    let out = Agent::run_to_exit(Spec {
        name: "huge",
        key: None,
        join: None,
        extra: &["--config-dir", dir.path().to_str().unwrap()],
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("10000 services") && stderr.contains("over the 2097152 bytes"),
        "{stderr}"
    );
}

#[test]
fn a_damaged_data_dir_is_a_clear_error_and_is_left_alone() {
    let mut agent = Agent::start(Spec {
        name: "dmg",
        key: None,
        join: None,
        extra: &[],
    });
    put(&agent, "k", "v");
    agent.kill9();
    let snapshot = agent.data_dir.join("state/snapshot");
    std::fs::write(&snapshot, b"not a snapshot").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "agent",
            "--node",
            "dmg",
            "--bind",
            &agent.gossip.to_string(),
        ])
        .args(["--http-addr", &agent.http.to_string(), "--data-dir"])
        .arg(&agent.data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("snapshot is damaged") && stderr.contains("backup"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&snapshot).unwrap(), b"not a snapshot");
}
