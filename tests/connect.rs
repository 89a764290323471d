//! End to end: the mesh CA and intentions on three real agents. A root made on one agent
//! replicates to all; an agent without the key gets its leaves signed by the one holding it
//! (over the sealed agent-to-agent stream); a rotation hands every waiting leaf query a leaf of
//! the new root; intentions written on one agent decide `authorize` and `check` on the others.

mod common;

use std::time::Duration;

use common::{Agent, OWN_ROOT, cluster, cluster_with, header, http, keygen, wait_until};
use murmur_proxy::ca::{leaf_identity, pem_der};
use serde_json::Value;

const SPREAD: Duration = Duration::from_secs(30);

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn active_root(agent: &Agent) -> String {
    agent.get("/v1/agent/connect/ca/roots")["ActiveRootID"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Checks that `leaf` (an IssuedCert) was signed by the root `root_pem` and says `uri`.
fn assert_signed_by(leaf: &Value, root_pem: &str, uri: &str) {
    let leaf_der = pem_der(leaf["CertPEM"].as_str().unwrap(), "leaf").unwrap();
    let root_der = pem_der(root_pem, "root").unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    cert.verify_signature(Some(root.public_key()))
        .expect("the leaf chains to the active root");
    assert_eq!(leaf_identity(&leaf_der).unwrap().uri(), uri);
    assert_eq!(leaf["ServiceURI"], uri);
    assert!(
        leaf["PrivateKeyPEM"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
}

fn authorize(agent: &Agent, source: &str, target: &str) -> (bool, String) {
    let body = format!(
        r#"{{"Target": "{target}", "ClientCertURI": "spiffe://murmur.consul/ns/default/dc/dc1/svc/{source}"}}"#
    );
    let (status, _, text) = agent.request("POST", "/v1/agent/connect/authorize", body.as_bytes());
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    (
        answer["Authorized"].as_bool().unwrap(),
        answer["Reason"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn roots_replicate_leaves_are_signed_by_the_key_holder_and_follow_rotation() {
    let agents = cluster_with("cn", 3, &keygen(), OWN_ROOT);
    // No root yet: the agents say what to do.
    let (status, _, text) = agents[2].request("GET", "/v1/agent/connect/ca/leaf/web", b"");
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("murmur ca init"), "{text}");

    // A root made on agent 0 reaches every agent.
    let said = ok(&agents[0].cli(&["ca", "rotate"]));
    assert!(said.contains("signs from now on"), "{said}");
    let first = active_root(&agents[0]);
    assert!(!first.is_empty());
    assert!(wait_until(SPREAD, || agents
        .iter()
        .all(|a| active_root(a) == first)));
    let roots = agents[2].get("/v1/agent/connect/ca/roots");
    assert_eq!(roots["TrustDomain"], "murmur.consul");
    let root_pem = roots["Roots"][0]["RootCert"].as_str().unwrap().to_owned();

    // Agent 2 holds no key: agent 0 signs for it.
    let (status, headers, text) = agents[2].request("GET", "/v1/agent/connect/ca/leaf/web", b"");
    assert_eq!(status, 200, "{text}");
    let leaf: Value = serde_json::from_str(&text).unwrap();
    assert_signed_by(
        &leaf,
        &root_pem,
        "spiffe://murmur.consul/ns/default/dc/dc1/svc/web",
    );
    let index = header(&headers, "x-consul-index").unwrap();
    let again = agents[2].get("/v1/agent/connect/ca/leaf/web");
    assert_eq!(
        again["SerialNumber"], leaf["SerialNumber"],
        "cached until renewal"
    );

    // A blocking leaf query returns a leaf of the new root when agent 1 rotates.
    let watcher = agents[2].http;
    let blocked = std::thread::spawn(move || {
        let path = format!("/v1/agent/connect/ca/leaf/web?index={index}&wait=60s");
        http(watcher, "GET", &path, b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    ok(&agents[1].cli(&["ca", "rotate"]));
    let (status, _, text) = blocked.join().unwrap().unwrap_or_else(|e| {
        panic!(
            "the leaf query did not return ({e}):\n{}\n{}",
            agents[1].log(),
            agents[2].log()
        )
    });
    assert_eq!(status, 200, "{text}");
    let renewed: Value = serde_json::from_str(&text).unwrap();
    let second = active_root(&agents[1]);
    assert_ne!(second, first);
    assert!(wait_until(SPREAD, || active_root(&agents[2]) == second));
    let roots = agents[2].get("/v1/agent/connect/ca/roots");
    let listed: Vec<&str> = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [second.as_str(), first.as_str()],
        "the old root is still trusted"
    );
    let new_pem = roots["Roots"][0]["RootCert"].as_str().unwrap();
    assert_signed_by(
        &renewed,
        new_pem,
        "spiffe://murmur.consul/ns/default/dc/dc1/svc/web",
    );

    // Bad input.
    let (status, _, text) = agents[0].request("GET", "/v1/agent/connect/ca/leaf/we%20b", b"");
    assert_eq!(status, 400, "{text}");
    let (status, _, text) = agents[0].request(
        "POST",
        "/v1/agent/connect/authorize",
        br#"{"Target": "db", "ClientCertURI": "https://web"}"#,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not a valid Connect identifier"), "{text}");
}

#[test]
fn intentions_written_anywhere_decide_everywhere() {
    let agents = cluster("it", 3, &keygen());
    // The default policy outside --dev is deny.
    assert_eq!(
        authorize(&agents[1], "web", "db"),
        (
            false,
            "No matching intention, default policy is deny".to_owned()
        )
    );
    ok(&agents[0].cli(&["intention", "create", "--allow", "web", "db"]));
    assert!(wait_until(SPREAD, || authorize(&agents[2], "web", "db").0));
    assert_eq!(
        authorize(&agents[2], "web", "db").1,
        "Matched intention: web => db (allow)"
    );
    assert_eq!(
        agents[2]
            .cli(&["intention", "check", "web", "db"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        agents[2]
            .cli(&["intention", "check", "api", "db"])
            .status
            .code(),
        Some(2)
    );

    // A second create of the pair is refused; --replace turns it into a deny. (Written as in
    // Consul's docs, with one dash: `-allow`, `-deny -replace`.)
    let out = agents[1].cli(&["intention", "create", "-allow", "web", "db"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate intention"));
    ok(&agents[1].cli(&["intention", "create", "-deny", "-replace", "web", "db"]));
    ok(&agents[1].cli(&["intention", "create", "--allow", "*", "db"]));
    // Two writes: agent 0 may hear them in either order.
    assert!(
        wait_until(SPREAD, || !authorize(&agents[0], "web", "db").0
            && authorize(&agents[0], "api", "db").0),
        "web→db denied, *→db allowing the others"
    );

    // Consul's shapes: list, match, exact, by id.
    let list = agents[0].get("/v1/connect/intentions");
    let pairs: Vec<(String, String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["SourceName"].as_str().unwrap().to_owned(),
                i["Action"].as_str().unwrap().to_owned(),
                i["Precedence"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("web".into(), "deny".into(), 9),
            ("*".into(), "allow".into(), 8)
        ]
    );
    let matched = agents[2].get("/v1/connect/intentions/match?by=destination&name=db");
    assert_eq!(matched["db"].as_array().unwrap().len(), 2);
    let exact = agents[2].get("/v1/connect/intentions/exact?source=web&destination=db");
    let id = exact["ID"].as_str().unwrap().to_owned();
    assert_eq!(
        agents[1].get(&format!("/v1/connect/intentions/{id}"))["Action"],
        "deny"
    );
    let (status, _, _) = agents[1].request("DELETE", &format!("/v1/connect/intentions/{id}"), b"");
    assert_eq!(status, 200);
    assert!(wait_until(SPREAD, || authorize(&agents[2], "web", "db").0));
    let (status, _, text) = agents[2].request(
        "GET",
        "/v1/connect/intentions/exact?source=web&destination=db",
        b"",
    );
    assert_eq!((status, text.as_str()), (404, "Intention not found"));
    let shown = ok(&agents[0].cli(&["intention", "list"]));
    assert!(shown.contains("allow") && shown.contains('*'), "{shown}");

    // Bad input.
    for (method, path, body, expected) in [
        (
            "POST",
            "/v1/connect/intentions",
            r#"{"SourceName": "a", "DestinationName": "b", "Action": "maybe"}"#,
            "allow or deny",
        ),
        (
            "POST",
            "/v1/connect/intentions",
            r#"{"SourceName": "a b", "DestinationName": "b", "Action": "allow"}"#,
            "must be a service name",
        ),
        (
            "PUT",
            "/v1/connect/intentions/exact?source=a",
            r#"{"Action": "allow"}"#,
            "'destination' not set",
        ),
        (
            "GET",
            "/v1/connect/intentions/match?by=sideways&name=a",
            "",
            "source or destination",
        ),
    ] {
        let (status, _, text) = agents[0].request(method, path, body.as_bytes());
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains(expected), "{path}: {text}");
    }
}

#[test]
fn ca_init_makes_a_root_that_the_agent_publishes_and_signs_with() {
    let mut agent = Agent::start(common::Spec {
        name: "ca0",
        key: None,
        join: None,
        extra: &[],
    });
    assert!(agent.terminate());
    let dir = agent.data_dir.to_str().unwrap().to_owned();
    let said = ok(&agent.cli(&["ca", "init", "--data-dir", &dir]));
    assert!(said.contains("Created CA root"), "{said}");
    let again = agent.cli(&["ca", "init", "--data-dir", &dir]);
    assert!(
        !again.status.success(),
        "a second init would orphan the first key"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a CA key"));
    agent.start_again(None, &[]);
    let root = active_root(&agent);
    assert!(said.contains(&root), "{said} / {root}");
    let leaf = agent.get("/v1/agent/connect/ca/leaf/db");
    let roots = agent.get("/v1/agent/connect/ca/roots");
    let pem = roots["Roots"][0]["RootCert"].as_str().unwrap();
    assert_signed_by(
        &leaf,
        pem,
        "spiffe://murmur.consul/ns/default/dc/dc1/svc/db",
    );
    let shown = ok(&agent.cli(&["ca", "roots"]));
    assert!(
        shown.contains(&root) && shown.contains("murmur.consul"),
        "{shown}"
    );
}
