//! End to end: two datacenters of three real agents each on loopback pick their WAN gateways
//! without an election, link through them, share intentions (and nothing of their catalogs
//! or KV), answer `?dc=` for each other (HTTP, the CLI, python3-consul, DNS; blocking queries
//! too), fail prepared queries over to each other, replace a gateway killed with `kill -9`,
//! and answer Consul's error when the other side is gone; and a service of one reaches a
//! service of the other over mutual TLS, each datacenter signing with its own root, under
//! intentions written in either.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    Agent, Gateway, Spec, dns_udp, free_port, has_python_consul, keygen, python_client, wait_until,
};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use murmur_proxy::native::MeshClient;
use serde_json::Value;

/// Long enough for the LAN pool to declare a killed gateway failed, and one WAN join.
const REPLACE: Duration = Duration::from_secs(60);

/// Runs `tests/clients/python_consul_dc.py` against `agent`: python3-consul reads `service`
/// and `key` (holding `value`) of datacenter `dc` with `dc=`. Skipped without python3-consul.
fn python_asks(agent: &Agent, dc: &str, service: &str, key: &str, value: &str) {
    if !has_python_consul() {
        return;
    }
    let port = agent.http.port().to_string();
    let out = python_client("python_consul_dc.py", &[&port, dc, service, key, value]);
    assert!(
        out.status.success(),
        "python-consul with dc= failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The live WAN members an agent lists (empty unless it serves as a gateway).
fn wan_members(agent: &Agent) -> Vec<String> {
    let members = agent
        .try_get("/v1/agent/members?wan")
        .unwrap_or(Value::Null);
    let mut names: Vec<String> = members
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Status"] == 1)
        .filter_map(|m| m["Name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The gateways (`node.dc`) whose WAN coordinates `agent` lists, of datacenter `dc` or all.
fn directory_nodes(agent: &Agent, dc: Option<&str>) -> Vec<String> {
    let mut nodes: Vec<String> = agent
        .get("/v1/coordinate/datacenters")
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| dc.is_none_or(|dc| d["Datacenter"] == dc))
        .flat_map(|d| d["Coordinates"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["Node"].as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

/// The agents of `agents` that list the WAN pool as `expected`, by index.
fn gateways(agents: &[Agent], expected: &[String]) -> Vec<usize> {
    (0..agents.len())
        .filter(|&i| wan_members(&agents[i]) == expected)
        .collect()
}

/// Agents of datacenter `dc`, one per WAN address of `mine`, all eligible, one gateway
/// wanted; every agent is given every WAN address as a seed (only gateways listen on theirs).
fn datacenter(dc: &str, key: &str, wan: &[SocketAddr], mine: &[usize]) -> Vec<Agent> {
    let seeds: Vec<String> = wan
        .iter()
        .flat_map(|a| ["--retry-join-wan".to_owned(), a.to_string()])
        .collect();
    let mut agents: Vec<Agent> = Vec::new();
    for (i, &w) in mine.iter().enumerate() {
        let mut extra = vec![
            "--datacenter".to_owned(),
            dc.to_owned(),
            "--wan-eligible".into(),
            "--wan-gateways".into(),
            "1".into(),
            "--bind-wan".into(),
            wan[w].to_string(),
        ];
        extra.extend(seeds.iter().cloned());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        agents.push(Agent::start(Spec {
            name: &format!("{dc}-{i}"),
            key: Some(key),
            join: agents.first().map(|a| a.gossip),
            extra: &extra,
        }));
    }
    agents
}

/// Datacenters east and west of `per_dc` agents each, every agent with a WAN address of its
/// own (the list returned: east's first).
fn east_and_west(key: &str, per_dc: usize) -> (Vec<Agent>, Vec<Agent>, Vec<SocketAddr>) {
    let wan: Vec<SocketAddr> = (0..2 * per_dc)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mine = |dc: usize| (dc * per_dc..(dc + 1) * per_dc).collect::<Vec<_>>();
    let east = datacenter("east", key, &wan, &mine(0));
    let west = datacenter("west", key, &wan, &mine(1));
    (east, west, wan)
}

/// Waits until each datacenter (east, west) serves one gateway and the two are linked; the
/// WAN members (`node.dc`) they then list.
fn link(east: &[Agent], west: &[Agent]) -> Vec<String> {
    let mut linked = Vec::new();
    let serving = |agents: &[Agent]| -> Vec<usize> {
        (0..agents.len())
            .filter(|&i| !wan_members(&agents[i]).is_empty())
            .collect()
    };
    assert!(
        wait_until(REPLACE, || {
            linked = match (serving(east).as_slice(), serving(west).as_slice()) {
                (&[e], &[w]) => vec![
                    format!("{}.east", east[e].name),
                    format!("{}.west", west[w].name),
                ],
                _ => Vec::new(),
            };
            !linked.is_empty()
                && gateways(east, &linked).len() == 1
                && gateways(west, &linked).len() == 1
        }),
        "one gateway per datacenter, linked: east {:?}, west {:?}\n{}",
        east.iter().map(wan_members).collect::<Vec<_>>(),
        west.iter().map(wan_members).collect::<Vec<_>>(),
        east[0].log()
    );
    linked
}

#[test]
fn two_datacenters_link_through_one_gateway_each_and_a_killed_one_is_replaced() {
    let _one_at_a_time = one_at_a_time();
    let key = keygen();
    let (mut east, west, wan) = east_and_west(&key, 3);

    // Each datacenter settles on one gateway, and the two find each other.
    let linked = link(&east, &west);
    let gateway = gateways(&east, &linked)[0];
    let other = (0..east.len()).find(|&i| i != gateway).unwrap();

    // The gateway knows the other datacenter; the CLI lists the WAN pool as the API does.
    assert_eq!(
        east[gateway].get("/v1/catalog/datacenters"),
        serde_json::json!(["east", "west"])
    );
    let out = east[gateway].cli(&["members", "-wan"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in &linked {
        assert!(text.contains(name.as_str()), "{text}");
    }
    // Every agent sees who serves, in the node meta.
    let record = east[other].get(&format!("/v1/catalog/node/{}", east[gateway].name));
    assert_eq!(
        record["Node"]["Meta"]["murmur-wan-gateway"],
        wan[gateway].to_string(),
        "{record}"
    );
    // Joining the WAN is for gateways; the others say so.
    let path = format!("/v1/agent/join/{}?wan", wan[2]);
    let (status, _, body) = east[other].request("PUT", &path, b"");
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("not one of its datacenter's WAN gateways"),
        "{body}"
    );

    // The datacenter directory is global: an agent that is no gateway lists the datacenters
    // too, and the gateways' WAN coordinates once measured (one WAN probe period, 5 s).
    let wan_coordinates = |agent: &Agent| directory_nodes(agent, None);
    assert!(
        wait_until(REPLACE, || wan_coordinates(&east[other]) == linked),
        "the gateways' WAN coordinates reach a non-gateway: {:?}",
        wan_coordinates(&east[other])
    );
    assert_eq!(
        east[other].get("/v1/catalog/datacenters"),
        serde_json::json!(["east", "west"])
    );
    let out = east[other].cli(&["rtt", "-wan", &linked[0], &linked[1]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ms (using WAN coordinates)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Intentions are global: written on any agent of one datacenter, they reach every agent
    // of the other through the gateways; the KV store stays in its datacenter.
    let west_other = (0..west.len())
        .find(|&i| wan_members(&west[i]).is_empty())
        .unwrap();
    let put = |agent: &Agent, source: &str| {
        let path = format!("/v1/connect/intentions/exact?source={source}&destination=db");
        let (status, _, body) = agent.request("PUT", &path, br#"{"Action": "allow"}"#);
        assert_eq!(status, 200, "{body}");
    };
    let has = |agent: &Agent, source: &str| {
        let path = format!("/v1/connect/intentions/exact?source={source}&destination=db");
        agent.request("GET", &path, b"").0 == 200
    };
    put(&west[west_other], "web");
    let (status, _, _) = west[west_other].request("PUT", "/v1/kv/west-only", b"x");
    assert_eq!(status, 200);
    assert!(
        wait_until(REPLACE, || east.iter().all(|a| has(a, "web"))),
        "west's intention reached every east agent"
    );
    let holds = |agent: &Agent| agent.request("GET", "/v1/kv/west-only", b"").0 == 200;
    assert!(
        wait_until(REPLACE, || west.iter().all(holds)),
        "west's KV reached every west agent"
    );
    for agent in east.iter().chain(&west) {
        let here = west.iter().any(|w| w.name == agent.name);
        let (status, _, _) = agent.request("GET", "/v1/kv/west-only", b"");
        assert_eq!(
            status == 200,
            here,
            "{}: west's KV stays in west",
            agent.name
        );
    }
    let (status, _, body) = east[other].request(
        "DELETE",
        "/v1/connect/intentions/exact?source=web&destination=db",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(REPLACE, || west.iter().all(|a| !has(a, "web"))),
        "east's delete reached every west agent"
    );

    // `?dc=west` on a non-gateway east agent is answered by west, reads and writes alike,
    // through east's gateway and a west one; nothing of it lands in east.
    let asker = &east[other];
    let (status, _, body) = asker.request("GET", "/v1/kv/west-only?dc=west&raw", b"");
    assert_eq!((status, body.as_str()), (200, "x"), "a KV read of west");
    let (status, _, body) = asker.request("PUT", "/v1/kv/from-east?dc=west", b"1");
    assert_eq!((status, body.as_str()), (200, "true"), "a KV write to west");
    assert_eq!(asker.request("GET", "/v1/kv/from-east", b"").0, 404);
    assert!(
        wait_until(REPLACE, || west
            .iter()
            .all(|a| a.request("GET", "/v1/kv/from-east", b"").0 == 200)),
        "the forwarded write reached every west agent"
    );
    let mut nodes: Vec<String> = asker
        .get("/v1/catalog/nodes?dc=west")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["west-0", "west-1", "west-2"],
        "west's catalog, from east"
    );
    // The CLI asks another datacenter as Consul's does, with -datacenter.
    let out = asker.cli(&["kv", "get", "-datacenter=west", "west-only"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim() == "x", "{text}");
    let out = asker.cli(&["kv", "get", "-datacenter", "nowhere", "west-only"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("No path to datacenter"),
        "{text}"
    );
    let (status, _, body) = asker.request("GET", "/v1/kv/a?dc=nowhere", b"");
    assert_eq!((status, body.as_str()), (500, "No path to datacenter"));
    // A Consul client library asks west through east, unchanged.
    let (status, _, body) = west[0].request(
        "PUT",
        "/v1/agent/service/register",
        br#"{"Name": "west-web", "Port": 80}"#,
    );
    assert_eq!(status, 200, "{body}");
    python_asks(asker, "west", "west-web", "west-only", "x");
    // DNS names another datacenter as Consul's does, answered there too.
    let srv = |name: &str| {
        let reply = dns_udp(asker.dns, name, RecordType::SRV);
        let targets: Vec<String> = reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::SRV(s) => Some(format!("{} {}", s.port(), s.target())),
                _ => None,
            })
            .collect();
        (reply.response_code(), targets)
    };
    assert!(
        wait_until(REPLACE, || srv("west-web.service.west.consul.").1
            == ["80 west-0.node.west.consul."]),
        "west's instance by DNS from east: {:?}",
        srv("west-web.service.west.consul.")
    );
    let node = dns_udp(asker.dns, "west-1.node.west.consul.", RecordType::A);
    assert!(
        matches!(node.answers().first().map(|r| r.data()), Some(RData::A(a)) if a.0.is_loopback()),
        "{node:?}"
    );
    assert_eq!(
        srv("west-web.service.nowhere.consul.").0,
        ResponseCode::NXDomain,
        "an unknown datacenter"
    );
    if let Some(text) = common::dig(asker.dns, "west-web.service.west.consul", "SRV") {
        assert!(
            text.contains("80 west-0.node.west.consul."),
            "dig said: {text}"
        );
    }
    // A prepared query is global; executed where its service has no healthy instance, it
    // fails over to the nearest datacenter that has one (HTTP and DNS), and answers from
    // home as soon as home has one again.
    let (status, _, body) = asker.request(
        "POST",
        "/v1/query",
        br#"{"Name": "web-q", "Service": {"Service": "west-web", "Failover": {"NearestN": 1, "Datacenters": ["nowhere", "west"]}}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let execute = |agent: &Agent| -> (String, u64, Vec<u64>) {
        let answer = agent.get("/v1/query/web-q/execute");
        let ports = answer["Nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["Service"]["Port"].as_u64())
            .collect();
        (
            answer["Datacenter"].as_str().unwrap_or_default().to_owned(),
            answer["Failovers"].as_u64().unwrap_or(99),
            ports,
        )
    };
    assert_eq!(
        execute(asker),
        ("west".to_owned(), 1, vec![80]),
        "failed over to west"
    );
    assert_eq!(
        srv("web-q.query.consul.").1,
        ["80 west-0.node.west.consul."],
        "DNS fails over too"
    );
    assert!(
        wait_until(REPLACE, || west[1]
            .request("GET", "/v1/query/web-q/execute", b"")
            .0
            == 200),
        "the query reached west"
    );
    assert_eq!(
        execute(&west[1]),
        ("west".to_owned(), 0, vec![80]),
        "west answers itself"
    );
    let register = br#"{"Name": "west-web", "ID": "west-web", "Port": 81, "Check": {"TTL": "60s", "Status": "passing"}}"#;
    assert_eq!(
        asker
            .request("PUT", "/v1/agent/service/register", register)
            .0,
        200
    );
    assert!(
        wait_until(REPLACE, || execute(asker)
            == ("east".to_owned(), 0, vec![81])),
        "a healthy local instance wins: {:?}",
        execute(asker)
    );
    let (status, _, body) = asker.request("PUT", "/v1/agent/check/fail/service:west-web", b"");
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(REPLACE, || execute(asker)
            == ("west".to_owned(), 1, vec![80])),
        "critical at home: west again, {:?}",
        execute(asker)
    );
    let (status, _, body) =
        asker.request("POST", "/v1/query", br#"{"Name": "bad", "Service": {}}"#);
    assert_eq!(
        (status, body.as_str()),
        (
            500,
            "Invalid prepared query: Must provide a Service name to query"
        )
    );
    let (status, _, body) = asker.request("GET", "/v1/query/nothing/execute", b"");
    assert_eq!((status, body.as_str()), (404, "Query not found"));
    assert_eq!(
        srv("nothing.query.consul.").0,
        ResponseCode::NXDomain,
        "an unknown prepared query"
    );

    // A blocking query is forwarded whole: it waits in west and wakes on west's change.
    let (_, headers, _) = asker.request("GET", "/v1/kv/from-east?dc=west", b"");
    let index = common::header(&headers, "x-consul-index").expect("forwarded index");
    let blocked = {
        let http = asker.http;
        let path = format!("/v1/kv/from-east?dc=west&raw&index={index}&wait=30s");
        std::thread::spawn(move || common::http(http, "GET", &path, b"").unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(west[0].request("PUT", "/v1/kv/from-east", b"2").0, 200);
    let (status, _, body) = blocked.join().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "2"),
        "the blocking read woke"
    );

    // A killed gateway is replaced by another agent, which links to west again.
    // Every datacenter's catalog in brief reaches every agent as global data: no request
    // crosses the WAN to list what west runs.
    let west_brief = |agent: &Agent| -> Value {
        let listed = agent.get("/v1/catalog/datacenters?summary");
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["Datacenter"] == "west")
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(REPLACE, || {
            let brief = west_brief(&east[other]);
            brief["Nodes"] == 3 && brief["Services"]["west-web"]["Instances"] == 1
        }),
        "west's summary on a non-gateway east agent: {}",
        west_brief(&east[other])
    );
    let listed = east[other].get("/v1/catalog/datacenters?summary");
    assert_eq!(listed[0]["Datacenter"], "east", "{listed}");
    assert_eq!(
        listed[0]["Services"]["west-web"],
        serde_json::json!({"Instances": 1, "Passing": 0}),
        "east's own, computed now: its west-web fails its check"
    );

    // A would-be gateway of another cluster (another gossip key, or another cluster id)
    // knocking on east's WAN port is refused and counted there, never listed.
    let wan_port = wan[gateway];
    let wan_drops = |reason: &str| -> u64 {
        east[gateway].get("/v1/agent/self")["Stats"]["serf_wan"]["gossip_dropped"][reason]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = (wan_drops("undecryptable"), wan_drops("wrong_cluster"));
    let other_key = keygen();
    let intruders: Vec<Agent> = [
        ("mars", other_key.as_str(), None),
        ("venus", key.as_str(), Some("other")),
    ]
    .into_iter()
    .map(|(dc, their_key, cluster)| {
        let wan_addr = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
        let mut extra = vec![
            "--datacenter",
            dc,
            "--wan-eligible",
            "--wan-gateways",
            "1",
            "--bind-wan",
            &wan_addr,
            "--retry-join-wan",
        ];
        let seed = wan_port.to_string();
        extra.push(&seed);
        if let Some(id) = cluster {
            extra.extend(["--cluster-id", id]);
        }
        Agent::start(Spec {
            name: &format!("{dc}-0"),
            key: Some(their_key),
            join: None,
            extra: &extra,
        })
    })
    .collect();
    assert!(
        wait_until(REPLACE, || wan_drops("undecryptable") > before.0
            && wan_drops("wrong_cluster") > before.1),
        "the intruders' WAN messages were counted: {}",
        east[gateway].get("/v1/agent/self")["Stats"]["serf_wan"]
    );
    assert!(
        wan_members(&east[gateway])
            .iter()
            .all(|m| !m.ends_with(".mars") && !m.ends_with(".venus")),
        "{:?}",
        wan_members(&east[gateway])
    );
    drop(intruders);

    east[gateway].kill9();
    let mut successor = None;
    assert!(
        wait_until(REPLACE, || {
            successor = (0..east.len()).filter(|&i| i != gateway).find(|&i| {
                let members = wan_members(&east[i]);
                members.contains(&format!("{}.east", east[i].name))
                    && members.iter().any(|m| m.ends_with(".west"))
            });
            successor.is_some()
        }),
        "another east agent took over: {:?}\n{}",
        east.iter().map(wan_members).collect::<Vec<_>>(),
        east[other].log()
    );
    let survivor = format!("{}.east", east[successor.unwrap()].name);
    assert_eq!(
        east[other].get("/v1/catalog/datacenters"),
        serde_json::json!(["east", "west"])
    );
    // The killed gateway's directory entry is withdrawn by its successor, everywhere.
    let entries = |agent: &Agent| directory_nodes(agent, Some("east"));
    assert!(
        wait_until(REPLACE, || west
            .iter()
            .all(|w| entries(w) == [survivor.clone()])),
        "west lists only the new east gateway: {:?}",
        entries(&west[0])
    );
    // The new gateway relays too, and forwards.
    put(&east[other], "api");
    assert!(
        wait_until(REPLACE, || west.iter().all(|a| has(a, "api"))),
        "an intention written after the replacement reached west"
    );
    let (status, _, body) = east[other].request("GET", "/v1/kv/from-east?dc=west&raw", b"");
    assert_eq!(
        (status, body.as_str()),
        (200, "2"),
        "?dc= after the replacement"
    );

    // West gone: east keeps its own reads and writes, and answers Consul's error for west.
    for mut agent in west {
        agent.kill9();
    }
    let (status, _, body) = east[other].request("GET", "/v1/kv/from-east?dc=west", b"");
    assert_eq!(
        (status, body.as_str()),
        (500, "Remote DC has no server currently reachable")
    );
    let reply = dns_udp(
        east[other].dns,
        "west-web.service.west.consul.",
        RecordType::SRV,
    );
    assert_eq!(
        reply.response_code(),
        ResponseCode::ServFail,
        "DNS for an unreachable datacenter"
    );
    assert_eq!(east[other].request("PUT", "/v1/kv/east-local", b"y").0, 200);
    assert_eq!(east[other].request("GET", "/v1/kv/east-local", b"").0, 200);
}

/// The datacenters of the roots `agent` trusts, sorted.
fn bundle(agent: &Agent) -> Vec<String> {
    common::root_datacenters(&agent.get("/v1/agent/connect/ca/roots"))
}

/// Holds the other tests of this file off while one runs: each starts four or more agents,
/// plus gateways and proxies, and on a 2-core machine five at once starved the WAN gossip
/// past its deadlines.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// East and west of two agents each, linked, every agent trusting both datacenters' roots.
fn linked_with_roots(key: &str) -> (Vec<Agent>, Vec<Agent>) {
    let (east, west, _) = east_and_west(key, 2);
    link(&east, &west);
    assert!(
        wait_until(REPLACE, || east
            .iter()
            .chain(&west)
            .all(|a| bundle(a) == ["east", "west"])),
        "the trust bundle reached every agent: {:?} {:?}",
        bundle(&east[1]),
        bundle(&west[1])
    );
    (east, west)
}

#[test]
fn a_service_reaches_one_of_another_datacenter_over_mtls_under_intentions_written_anywhere() {
    let _one_at_a_time = one_at_a_time();
    // Each datacenter makes a root of its own, with no manual step; every agent of both
    // trusts both.
    let (east, west) = linked_with_roots(&keygen());
    // Each signs with its own root, for identities of its own datacenter.
    for (agent, dc) in [(&east[1], "east"), (&west[1], "west")] {
        let roots = agent.get("/v1/agent/connect/ca/roots");
        let active = roots["ActiveRootID"].as_str().unwrap().to_owned();
        let active_dc = roots["Roots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ID"] == active.as_str() && r["Active"] == true)
            .map(|r| r["Datacenter"].clone());
        assert_eq!(active_dc, Some(Value::from(dc)), "{roots}");
        let leaf = agent.get("/v1/agent/connect/ca/leaf/web");
        let uri = leaf["ServiceURI"].as_str().unwrap();
        assert!(uri.ends_with(&format!("/dc/{dc}/svc/web")), "{uri}");
    }

    // db runs in west behind its agent's sidecar; web in east has an upstream to west's db
    // (Consul's Upstreams[].Datacenter), which it dials directly.
    let app = common::echo_app();
    west[1].register_db_with_sidecar(app.addr.port());
    let port = free_port();
    east[1].register(&format!(
            r#"{{"Name": "web", "ID": "web-1", "Port": 8080, "Connect": {{"SidecarService": {{"Proxy":
                {{"Upstreams": [{{"DestinationName": "db", "Datacenter": "west", "LocalBindPort": {port}}}]}}}}}}}}"#
        ),
    );
    let upstream = SocketAddr::from(([127, 0, 0, 1], port));
    let through = || common::carries(upstream);

    // Intentions are global and enforced where the destination is: written in east, they
    // decide at db's proxy in west (agents with data dirs deny by default).
    east[0].intend("web", "db", "allow");
    assert!(
        wait_until(REPLACE, through),
        "web in east reached db in west:\n{}\n{}",
        east[1].log(),
        west[1].log()
    );
    // The native SDK reaches it the same way.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sdk = runtime
        .block_on(MeshClient::new(&east[0].http.to_string(), "web"))
        .unwrap();
    let sdk_round_trip = || {
        runtime.block_on(async {
            common::mesh_exchange(sdk.connect_in("db", Some("west")).await, b"sdk").await
        })
    };
    assert_eq!(sdk_round_trip().as_deref(), Some(&b"sdk"[..]));
    let unknown = runtime.block_on(sdk.connect_in("db", Some("nowhere")));
    assert!(unknown.is_err(), "a datacenter nobody knows");

    east[0].intend("web", "db", "deny");
    assert!(
        wait_until(REPLACE, || !through()),
        "east's deny closed the way at db's proxy in west"
    );
    assert!(sdk_round_trip().is_none_or(|b| b.is_empty()), "the SDK too");

    // The web UI of an east agent switches to west: its pages' reads go there with `?dc=`.
    let (status, _, body) = east[0].request("GET", "/v1/internal/ui/services?dc=west", b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""Name":"db""#), "{body}");
    let Some(binary) = browser::chromium() else {
        eprintln!("SKIPPED: the UI's datacenter switcher (chromium is not installed)");
        return;
    };
    let mut page = browser::Browser::launch(&binary);
    page.open(&format!("http://{}/ui/#/services", east[0].http));
    assert!(
        page.wait_for(
            r#"[...document.querySelectorAll('#dc option')].map(o => o.value).join() === 'east,west'
               && document.querySelector('[data-service="web"]')
               && !document.querySelector('[data-service="db"]')"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "east's own services first: {}",
        page.text()
    );
    page.eval(
        r#"const dc = document.getElementById('dc'); dc.value = 'west';
                 dc.dispatchEvent(new Event('change')); true"#,
    );
    assert!(
        page.wait_for(
            r#"document.querySelector('[data-service="db"]') && !document.querySelector('[data-service="web"]')"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "west's services once switched: {}",
        page.text()
    );
}

#[test]
fn a_sidecar_reaches_another_datacenter_through_mesh_gateways_local_and_remote() {
    let _one_at_a_time = one_at_a_time();
    let (east, west) = linked_with_roots(&keygen());
    let east_gateway = Gateway::start(&east[0], &[]);
    let west_gateway = Gateway::start(&west[0], &[]);
    let app = common::echo_app();
    west[1].register_db_with_sidecar(app.addr.port());
    let (local_port, remote_port) = (free_port(), free_port());
    east[1].register(&format!(
            r#"{{"Name": "web", "ID": "web-1", "Port": 8080, "Connect": {{"SidecarService": {{"Proxy":
                {{"Upstreams": [
                  {{"DestinationName": "db", "Datacenter": "west", "LocalBindPort": {local_port}, "MeshGateway": {{"Mode": "local"}}}},
                  {{"DestinationName": "db", "Datacenter": "west", "LocalBindPort": {remote_port}, "MeshGateway": {{"Mode": "remote"}}}}
                ]}}}}}}}}"#
        ),
    );
    east[0].intend("web", "db", "allow");

    // The gateways are in the catalog as Consul shows them.
    let gateways = west[1].get("/v1/health/service/mesh-gateway?passing");
    assert!(
        wait_until(REPLACE, || west[1]
            .get("/v1/health/service/mesh-gateway?passing")
            .as_array()
            .is_some_and(|l| l.len() == 1)),
        "{gateways}"
    );
    let passing = west[1].get("/v1/health/service/mesh-gateway?passing");
    let entry = &passing[0]["Service"];
    assert_eq!(
        entry["Kind"],
        "mesh-gateway",
        "passing a moment ago, now {passing}; all: {}\nwest[0]'s log:\n{}",
        west[1].get("/v1/health/service/mesh-gateway"),
        west[0].log()
    );
    assert_eq!(
        entry["TaggedAddresses"]["wan"]["Port"],
        west_gateway.wan.port(),
        "{entry}"
    );

    // Local mode: east's sidecar → east's gateway → west's gateway → db's sidecar.
    let local = SocketAddr::from(([127, 0, 0, 1], local_port));
    assert!(
        wait_until(REPLACE, || common::carries(local)),
        "no way to db in west through the local gateway:\n{}",
        east[1].log()
    );
    let remote_flows = "murmur_gateway_flows_total{route=\"remote\"";
    let local_flows = "murmur_gateway_flows_total{route=\"local\"";
    assert!(
        east_gateway.metric(remote_flows) >= 1.0,
        "east's gateway sent it on"
    );
    assert!(
        west_gateway.metric(local_flows) >= 1.0,
        "west's gateway took it in"
    );
    let through_west = west_gateway.metric(local_flows);

    // Remote mode: east's sidecar → west's gateway → db's sidecar.
    let remote = SocketAddr::from(([127, 0, 0, 1], remote_port));
    let east_before = east_gateway.metric(remote_flows);
    assert!(
        wait_until(REPLACE, || common::carries(remote)),
        "no way to db in west through its gateway"
    );
    assert!(
        west_gateway.metric(local_flows) > through_west,
        "west's gateway carried it"
    );
    assert_eq!(
        east_gateway.metric(remote_flows),
        east_before,
        "east's gateway was not used"
    );
    assert!(west_gateway.metric("murmur_gateway_bytes_total") > 0.0);

    // A deny written in east closes the way at db's proxy in west, gateways or not.
    east[0].intend("web", "db", "deny");
    assert!(
        wait_until(REPLACE, || !common::carries(local)
            && !common::carries(remote)),
        "the deny is enforced across the gateways"
    );

    // Garbage, an Initial-looking datagram and nothing at all: dropped and counted.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in [&b"hello"[..], &[0xc0, 0, 0, 0, 1, 8][..], &[]] {
        socket.send_to(datagram, west_gateway.wan).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || west_gateway
            .metric("murmur_gateway_dropped_total{reason=\"no_client_hello\"}")
            >= 3.0),
        "garbage counted as dropped"
    );
}

#[test]
fn an_upstream_fails_over_to_another_datacenter_and_a_killed_gateway_is_replaced() {
    let _one_at_a_time = one_at_a_time();
    let (east, west) = linked_with_roots(&keygen());
    let mut east_gateways = [Gateway::start(&east[0], &[]), Gateway::start(&east[1], &[])];
    let _west_gateway = Gateway::start(&west[0], &[]);
    // db runs in both datacenters; east's has a TTL check the test fails.
    let (east_app, west_app) = (common::echo_app(), common::echo_app());
    east[0].register(&format!(
        r#"{{"Name": "db", "ID": "db-1", "Port": {}, "Check": {{"TTL": "30s"}},
            "Connect": {{"SidecarService": {{}}}}}}"#,
        east_app.addr.port()
    ));
    let ttl = "/v1/agent/check/pass/service:db-1";
    assert_eq!(east[0].request("PUT", ttl, b"").0, 200);
    west[1].register_db_with_sidecar(west_app.addr.port());
    let port = free_port();
    east[1].register(&format!(
        r#"{{"Name": "web", "ID": "web-1", "Port": 8080, "Connect": {{"SidecarService": {{"Proxy":
            {{"Upstreams": [{{"DestinationName": "db", "LocalBindPort": {port},
              "Failover": {{"Datacenters": ["west"]}}, "MeshGateway": {{"Mode": "local"}}}}]}}}}}}}}"#
    ));
    east[0].intend("web", "db", "allow");
    let upstream = SocketAddr::from(([127, 0, 0, 1], port));
    let served_by = |dc: &str| {
        let (_, _, text) = east[1].request("GET", "/v1/agent/metrics?format=prometheus", b"");
        let series = format!(
            r#"murmur_proxy_upstream_datacenter_connections_total{{source="web",destination="db",datacenter="{dc}"}} "#
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };

    // While east's db passes, east serves.
    assert!(
        wait_until(REPLACE, || common::carries(upstream)),
        "web reaches db:\n{}",
        east[1].log()
    );
    assert!(served_by("east") >= 1.0 && served_by("west") == 0.0);

    // East's db fails: new connections go to west's, through the gateways.
    assert_eq!(
        east[0]
            .request("PUT", "/v1/agent/check/fail/service:db-1", b"")
            .0,
        200
    );
    let west_before = west_app.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(REPLACE, || common::carries(upstream)
            && west_app.accepted.load(std::sync::atomic::Ordering::SeqCst)
                > west_before),
        "web's connections did not fail over to west:\n{}",
        east[1].log()
    );
    assert!(served_by("west") >= 1.0, "the metrics say west served");

    // One of east's two gateways is killed: new connections go through the other.
    // (Bytes, not flows: a connection already pooled through the survivor carries new TCP
    // connections without opening a flow.)
    let carried = |g: &Gateway| g.metric("murmur_gateway_bytes_total{direction=\"to_destination\"");
    east_gateways[0].child.kill().unwrap();
    east_gateways[0].child.wait().unwrap();
    let survivor = carried(&east_gateways[1]);
    let started = std::time::Instant::now();
    assert!(
        wait_until(REPLACE, || {
            common::carries(upstream) && carried(&east_gateways[1]) > survivor
        }),
        "no new connection through the surviving gateway:\n{}",
        east[1].log()
    );
    eprintln!(
        "new connections went through the other gateway {:?} after one was killed",
        started.elapsed()
    );
    // And back: east's db passes again, east serves again.
    assert_eq!(east[0].request("PUT", ttl, b"").0, 200);
    let east_before = served_by("east");
    assert!(
        wait_until(REPLACE, || common::carries(upstream)
            && served_by("east") > east_before),
        "back to east once its db passes"
    );
}

#[test]
fn agents_run_mesh_gateways_registered_with_kind_mesh_gateway() {
    let _one_at_a_time = one_at_a_time();
    let (east, west) = linked_with_roots(&keygen());
    let gateway = |agent: &Agent| {
        let (lan, wan) = (free_port(), free_port());
        agent.register(&format!(
            r#"{{"Name": "mesh-gateway", "Kind": "mesh-gateway", "Address": "127.0.0.1", "Port": {lan},
                "TaggedAddresses": {{"wan": {{"Address": "127.0.0.1", "Port": {wan}}}}}}}"#
        ));
        (lan, wan)
    };
    let (east_lan, _) = gateway(&east[0]);
    gateway(&west[0]);
    let app = common::echo_app();
    west[1].register_db_with_sidecar(app.addr.port());
    let port = free_port();
    east[1].register(&format!(
        r#"{{"Name": "web", "ID": "web-1", "Port": 8080, "Connect": {{"SidecarService": {{"Proxy":
            {{"Upstreams": [{{"DestinationName": "db", "Datacenter": "west", "LocalBindPort": {port},
              "MeshGateway": {{"Mode": "local"}}}}]}}}}}}}}"#
    ));
    east[0].intend("web", "db", "allow");
    let upstream = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(REPLACE, || common::carries(upstream)),
        "web in east reaches db in west through the agents' gateways:\n{}",
        east[0].log()
    );
    let (_, _, metrics) = east[0].request("GET", "/v1/agent/metrics?format=prometheus", b"");
    assert!(
        metrics.contains(r#"murmur_gateway_flows_total{route="remote",source_datacenter="east",destination_datacenter="west",destination_service="db"}"#),
        "east's agent-run gateway forwarded the flow"
    );
    // A registration that cannot be a gateway is refused, and leaves nothing behind.
    let (status, _, body) = east[0].request(
        "PUT",
        "/v1/agent/service/register",
        br#"{"Name": "bad-gateway", "Kind": "mesh-gateway"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Port"), "{body}");
    // Deregistered, the gateway stops and its port is free again.
    assert_eq!(
        east[0]
            .request("PUT", "/v1/agent/service/deregister/mesh-gateway", b"")
            .0,
        200
    );
    assert!(
        wait_until(Duration::from_secs(10), || std::net::UdpSocket::bind((
            "127.0.0.1",
            east_lan
        ))
        .is_ok()),
        "the gateway's port is released"
    );
}
