//! End to end: the health, catalog-node, status and agent-listing endpoints on real agents, in
//! Consul's shapes; a killed agent's instances leave `?passing` on the others.

mod common;

use std::time::Duration;

use common::{cluster, keygen, wait_until};
use serde_json::Value;

fn passing_nodes(agent: &common::Agent, service: &str) -> Vec<String> {
    let list = agent.get(&format!("/v1/health/service/{service}?passing"));
    let mut nodes: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn health_catalog_and_status_speak_consul_and_follow_membership() {
    let mut agents = cluster("hl", 3, &keygen());
    for (i, agent) in agents.iter().enumerate() {
        let body = format!(
            r#"{{"Name": "web", "ID": "web-{i}", "Port": {}, "Tags": ["v{i}"]}}"#,
            8080 + i
        );
        let (status, _, text) = agent.request("PUT", "/v1/agent/service/register", body.as_bytes());
        assert_eq!(status, 200, "{text}");
    }
    let all = ["hl0", "hl1", "hl2"];
    assert!(
        wait_until(Duration::from_secs(30), || agents
            .iter()
            .all(|a| passing_nodes(a, "web") == all)),
        "every agent lists the three instances as passing"
    );

    // A health entry: node, service and checks, serfHealth first and passing.
    let entries = agents[0].get("/v1/health/service/web?tag=v1");
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["Node"]["Node"], "hl1");
    assert_eq!(entry["Node"]["Datacenter"], "dc1");
    assert!(
        entry["Node"]["Address"]
            .as_str()
            .unwrap()
            .starts_with("127.")
    );
    assert_eq!(entry["Service"]["ID"], "web-1");
    assert_eq!(entry["Service"]["Service"], "web");
    assert_eq!(entry["Service"]["Port"], 8081);
    assert_eq!(entry["Service"]["Weights"]["Passing"], 1);
    assert_eq!(entry["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(entry["Checks"][0]["Status"], "passing");
    assert_eq!(entry["Checks"][0]["ServiceTags"], Value::Array(vec![]));

    let checks = agents[0].get("/v1/health/node/hl2");
    assert_eq!(checks[0]["CheckID"], "serfHealth");
    assert_eq!(
        agents[0].get("/v1/health/node/nobody"),
        Value::Array(vec![])
    );
    let passing = agents[0].get("/v1/health/state/passing");
    assert_eq!(passing.as_array().unwrap().len(), 3, "{passing}");
    assert_eq!(
        agents[0].get("/v1/health/state/critical"),
        Value::Array(vec![])
    );

    assert_eq!(common::node_names(&agents[1]), all);
    let node = agents[1].get("/v1/catalog/node/hl0");
    assert_eq!(node["Node"]["Node"], "hl0");
    assert_eq!(node["Services"]["web-0"]["Service"], "web");
    assert_eq!(agents[1].get("/v1/catalog/node/nobody"), Value::Null);
    assert_eq!(
        agents[1].get("/v1/catalog/datacenters"),
        serde_json::json!(["dc1"])
    );
    let services = agents[2].get("/v1/agent/services");
    assert_eq!(services["web-2"]["Port"], 8082);
    assert_eq!(services.as_object().unwrap().len(), 1, "only its own");
    assert!(
        agents[2]
            .get("/v1/agent/checks")
            .as_object()
            .unwrap()
            .is_empty()
    );

    let leader = agents[0].get("/v1/status/leader");
    assert_eq!(leader, Value::String(agents[0].gossip.to_string()));
    assert_eq!(
        agents[0].get("/v1/status/peers").as_array().unwrap().len(),
        3
    );

    // ?filter= with Consul's expression language, on lists and maps.
    let filtered = agents[0].get("/v1/health/service/web?filter=Service.Port%20%3D%3D%208082");
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered[0]["Node"]["Node"], "hl2");
    let tagged = agents[0].get("/v1/catalog/service/web?filter=%22v0%22%20in%20ServiceTags");
    assert_eq!(tagged.as_array().unwrap().len(), 1, "{tagged}");
    let mine = agents[2].get("/v1/agent/services?filter=Port%20%3D%3D%201");
    assert!(mine.as_object().unwrap().is_empty(), "{mine}");

    // Bad input is a clear 400, another datacenter Consul's 500.
    for (path, status, message) in [
        ("/v1/health/service/web?passing=maybe", 400, "passing"),
        ("/v1/health/state/sideways", 400, "Invalid check state"),
        ("/v1/health/service/web?index=x", 400, "Invalid index"),
        (
            "/v1/catalog/nodes?dc=elsewhere",
            500,
            "No path to datacenter",
        ),
        (
            "/v1/health/service/web?filter=Service.Port%20%3D%3D",
            400,
            "Failed to create boolean expression evaluator",
        ),
    ] {
        let (got, _, body) = agents[0].request("GET", path, b"");
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(message), "{path}: {body}");
    }
    // `?dc=` is decided for every datacenter-scoped route alike (the KV endpoints once
    // ignored it and answered from the local store); the local datacenter passes.
    for path in [
        "/v1/kv/a",
        "/v1/connect/intentions",
        "/v1/health/state/any",
        "/v1/catalog/services",
        "/v1/status/leader",
    ] {
        let (got, _, body) = agents[0].request("GET", &format!("{path}?dc=elsewhere"), b"");
        assert_eq!(
            (got, body.as_str()),
            (500, "No path to datacenter"),
            "{path}"
        );
        let (got, _, body) = agents[0].request("GET", &format!("{path}?dc=dc1"), b"");
        assert!(
            got == 200 || (got == 404 && path == "/v1/kv/a"),
            "{path}: {got} {body}"
        );
    }
    let (got, _, _) = agents[0].request("PUT", "/v1/kv/a?dc=elsewhere", b"lost");
    assert_eq!(
        got, 500,
        "a write for another datacenter is refused, not kept here"
    );
    let (got, _, _) = agents[0].request("GET", "/v1/kv/a", b"");
    assert_eq!(got, 404, "the refused write left nothing behind");
    assert_eq!(
        agents[0]
            .get("/v1/health/service/web?passing=false")
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A killed agent's instance turns critical through serfHealth on the others, and a
    // blocking health query (what consul-template holds) returns with it.
    let (_, headers, _) = agents[1].request("GET", "/v1/health/service/web?passing", b"");
    let index = common::header(&headers, "x-consul-index").unwrap();
    let watcher = agents[1].http;
    // Another change (the first agent's record naming it CA signer) may wake it first: as
    // consul-template does, it asks again from the new index until the answer moves.
    let blocked = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut index = index;
        loop {
            let path = format!("/v1/health/service/web?passing&index={index}&wait=60s");
            let (_, headers, body) = common::http(watcher, "GET", &path, b"").unwrap();
            if !body.contains("\"hl2\"") || started.elapsed() > Duration::from_secs(60) {
                return (started.elapsed(), body);
            }
            index = common::header(&headers, "x-consul-index").unwrap();
        }
    });
    agents[2].kill9();
    let (waited, body) = blocked.join().unwrap();
    assert!(
        waited < Duration::from_secs(30),
        "woken by the failure after {waited:?}, not by the wait's end"
    );
    assert!(
        !body.contains("\"hl2\""),
        "the woken answer lacks the dead: {body}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || passing_nodes(&agents[0], "web")
            == ["hl0", "hl1"]
            && passing_nodes(&agents[1], "web") == ["hl0", "hl1"]),
        "the dead instance left ?passing everywhere"
    );
    let critical = agents[0].get("/v1/health/state/critical");
    assert_eq!(critical[0]["Node"], "hl2", "{critical}");
    assert_eq!(critical[0]["CheckID"], "serfHealth");
    let all_entries = agents[0].get("/v1/health/service/web");
    assert_eq!(
        all_entries.as_array().unwrap().len(),
        3,
        "still listed, as critical"
    );
}
