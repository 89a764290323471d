//! End to end: network coordinates of real agents on loopback. Each agent publishes its LAN
//! coordinate a few seconds after it starts; the coordinate endpoints list them in Consul's
//! shape, `?near=` answers (sorted, or as they are for an unknown node), and `murmur rtt`
//! prints the estimate as `consul rtt` does.

mod common;

use std::time::Duration;

use common::{Agent, cluster, keygen, wait_until};
use serde_json::Value;

fn coordinate_nodes(agent: &Agent) -> Vec<String> {
    agent
        .try_get("/v1/coordinate/nodes")
        .unwrap_or(Value::Null)
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["Node"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn agents_publish_coordinates_and_answer_near_and_rtt() {
    let agents = cluster("co", 3, &keygen());
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    assert!(
        wait_until(Duration::from_secs(30), || agents
            .iter()
            .all(|a| coordinate_nodes(a) == names)),
        "every agent lists every coordinate: {:?}",
        coordinate_nodes(&agents[0])
    );
    let listed = agents[0].get("/v1/coordinate/nodes");
    let coord = &listed[0]["Coord"];
    assert_eq!(coord["Vec"].as_array().map(Vec::len), Some(8), "{listed}");
    for field in ["Error", "Adjustment", "Height"] {
        assert!(coord[field].is_number(), "{field}: {listed}");
    }
    assert_eq!(listed[0]["Segment"], "");
    let one = agents[1].get(&format!("/v1/coordinate/node/{}", names[2]));
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0]["Node"], names[2].as_str());
    let (status, _, _) = agents[1].request("GET", "/v1/coordinate/node/nobody", b"");
    assert_eq!(status, 404);
    assert!(agents[0].get("/v1/agent/self")["Coord"]["Vec"].is_array());

    // `?near=` sorts by estimated round trip; every node is still there, and a node
    // without a coordinate leaves the order alone, as in Consul.
    let nodes = |query: &str| -> Vec<String> {
        let mut names: Vec<String> = agents[0]
            .get(&format!("/v1/catalog/nodes?{query}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Node"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(nodes("near=_agent"), names);
    assert_eq!(nodes(&format!("near={}", names[1])), names);
    let unsorted = agents[0].get("/v1/catalog/nodes?near=nobody");
    let in_order: Vec<&str> = unsorted
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap())
        .collect();
    assert_eq!(in_order, names, "an unknown node leaves the name order");
    let (status, _, body) = agents[0].request("GET", "/v1/health/service/nothing?near=_agent", b"");
    assert_eq!((status, body.as_str()), (200, "[]"));

    // `murmur rtt` as `consul rtt`: two nodes, or one and the local agent.
    let out = agents[0].cli(&["rtt", &names[1], &names[2]]);
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!("Estimated {} <-> {} rtt: ", names[1], names[2]);
    assert!(
        out.status.success() && text.starts_with(&expected),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("ms (using LAN coordinates)"),
        "{text}"
    );
    let out = agents[0].cli(&["rtt", &names[1]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("<-> {} rtt", names[0])), "{text}");
    let out = agents[0].cli(&["rtt", "nobody"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("Could not find a coordinate for node \"nobody\""),
        "{text}"
    );
}
