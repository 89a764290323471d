//! End to end: external services through `PUT /v1/catalog/register|deregister`, the way
//! consul-esm and hand-written scripts use them: registered on one agent, read on every other
//! (catalog, health, DNS), their health reported by whoever registers them, removed part by
//! part; bad registrations are refused with Consul's messages.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{cluster, keygen, wait_until};
use serde_json::Value;

const SPREAD: Duration = Duration::from_secs(30);

fn register(agent: &common::Agent, body: &str) -> (u16, String) {
    let (status, _, text) = agent.request("PUT", "/v1/catalog/register", body.as_bytes());
    (status, text)
}

fn passing(agent: &common::Agent, service: &str) -> Vec<String> {
    let list = agent.get(&format!("/v1/health/service/{service}?passing"));
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn external_services_replicate_report_health_and_leave_part_by_part() {
    let agents = cluster("ex", 3, &keygen());
    let rds = r#"{
        "Datacenter": "dc1", "Node": "rds", "Address": "10.1.2.3",
        "NodeMeta": {"external-node": "true"},
        "Service": {"ID": "pg1", "Service": "pg", "Port": 5432, "Tags": ["primary"]},
        "Check": {"CheckID": "pg1-alive", "Name": "pg alive", "Status": "passing",
                  "ServiceID": "pg1", "Output": "probed by esm"}
    }"#;
    let (status, text) = register(&agents[0], rds);
    assert_eq!((status, text.trim()), (200, "true"));
    assert!(
        wait_until(SPREAD, || agents
            .iter()
            .all(|a| passing(a, "pg") == ["pg1"])),
        "every agent lists the external instance as passing"
    );

    // Consul's shapes, with no serfHealth on a node no agent runs.
    let entry = &agents[2].get("/v1/health/service/pg")[0];
    assert_eq!(entry["Node"]["Node"], "rds");
    assert_eq!(entry["Node"]["Address"], "10.1.2.3");
    assert_eq!(entry["Node"]["ID"], "");
    assert_eq!(entry["Node"]["Meta"]["external-node"], "true");
    assert_eq!(entry["Service"]["Port"], 5432);
    let checks = entry["Checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0]["CheckID"], "pg1-alive");
    assert_eq!(checks[0]["Output"], "probed by esm");
    assert_eq!(common::node_names(&agents[1]), ["ex0", "ex1", "ex2", "rds"]);
    let node = agents[1].get("/v1/catalog/node/rds");
    assert_eq!(node["Services"]["pg1"]["Service"], "pg");
    assert_eq!(
        agents[1].get("/v1/catalog/service/pg")[0]["ServiceAddress"],
        ""
    );

    if let Ok(out) = Command::new("dig")
        .args(["@127.0.0.1", "-p", &agents[2].dns.port().to_string()])
        .args(["+short", "pg.service.consul", "A"])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "10.1.2.3", "dig said: {text}");
    } else {
        eprintln!("dig is not installed: DNS through dig not checked here (tests/dns.rs is)");
    }

    // A second service on the same node from another agent; the first one's check fails,
    // reported (as consul-esm does) by registering the check again, this time from agent 2.
    let second = r#"{"Node": "rds", "Address": "10.1.2.3", "SkipNodeUpdate": true,
                     "Service": {"ID": "pg2", "Service": "pg", "Port": 5433}}"#;
    assert_eq!(register(&agents[1], second).0, 200);
    let failing = r#"{"Node": "rds", "Address": "10.1.2.3", "SkipNodeUpdate": true,
                      "Check": {"CheckID": "pg1-alive", "Name": "pg alive", "Status": "critical",
                                "ServiceID": "pg1", "Output": "connection refused"}}"#;
    assert_eq!(register(&agents[2], failing).0, 200);
    assert!(
        wait_until(SPREAD, || agents
            .iter()
            .all(|a| passing(a, "pg") == ["pg2"])),
        "the failing instance leaves ?passing everywhere, the other one stays"
    );

    // Deregistering a service takes its checks; then the whole node.
    let (status, _, _) = agents[0].request(
        "PUT",
        "/v1/catalog/deregister",
        br#"{"Node": "rds", "ServiceID": "pg1"}"#,
    );
    assert_eq!(status, 200);
    assert!(wait_until(SPREAD, || {
        agents.iter().all(|a| {
            let checks = a.get("/v1/health/node/rds");
            checks.as_array().is_some_and(Vec::is_empty)
                && a.get("/v1/catalog/service/pg").as_array().map(Vec::len) == Some(1)
        })
    }));
    let (status, _, _) = agents[1].request("PUT", "/v1/catalog/deregister", br#"{"Node": "rds"}"#);
    assert_eq!(status, 200);
    assert!(wait_until(SPREAD, || agents
        .iter()
        .all(|a| a.get("/v1/catalog/node/rds") == Value::Null)));
}

#[test]
fn bad_registrations_are_refused_and_write_nothing() {
    let agents = cluster("eb", 1, &keygen());
    let agent = &agents[0];
    for (body, status, expected) in [
        (r#"{"Address": "10.0.0.1"}"#, 400, "Must provide node"),
        (r#"{"Node": "x"}"#, 400, "Must provide address"),
        (
            r#"{"Node": "x", "Address": "a", "Service": {"Service": "s", "Port": "80"}}"#,
            400,
            "Port must be a whole number",
        ),
        (
            r#"{"Node": "x", "Address": "a", "Check": {"Name": "c", "ServiceID": "nope"}}"#,
            400,
            "does not have",
        ),
        (
            r#"{"Node": "eb0", "Address": "a"}"#,
            400,
            "run by a murmur agent",
        ),
        (
            r#"{"Node": "x", "Address": "a", "Datacenter": "dc9"}"#,
            500,
            "No path to datacenter",
        ),
        (r#"{"Node": "x", "#, 400, "Request decode failed"),
        (r#"["x"]"#, 400, "must be a JSON object"),
    ] {
        let (got, text) = register(agent, body);
        assert_eq!(got, status, "{body}: {text}");
        assert!(text.contains(expected), "{body}: {text}");
    }
    let nodes = agent.get("/v1/catalog/nodes");
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "nothing half-written: {nodes}"
    );
    let (status, _, text) = agent.request(
        "PUT",
        "/v1/catalog/deregister",
        br#"{"Node": "x", "ServiceID": "a", "CheckID": "b"}"#,
    );
    assert_eq!(status, 400, "{text}");
}
