//! ACLs end to end: two agents with `--acl-enabled --acl-default-policy deny`, tokens and
//! policies made through the CLI and the API, checked on both agents the way clients reach
//! them (HTTP headers, `?token=`, the CLI with `CONSUL_HTTP_TOKEN`).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Agent, BIN, Spec, http, keygen, wait_until};
use serde_json::Value;

const ACL: &[&str] = &["--acl-enabled", "--acl-default-policy", "deny"];

fn pair() -> Vec<Agent> {
    let key = keygen();
    let first = Agent::start(Spec {
        name: "acl-0",
        key: Some(&key),
        join: None,
        extra: ACL,
    });
    let seed = first.gossip;
    vec![
        first,
        Agent::start(Spec {
            name: "acl-1",
            key: Some(&key),
            join: Some(seed),
            extra: ACL,
        }),
    ]
}

/// A request with `token` in `X-Consul-Token`: status and body.
fn call(agent: &Agent, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let (status, _, body) =
        common::http_as(agent.http, method, path, body.as_bytes(), token).unwrap();
    (status, body)
}

/// How many answers an A query for `name` gets from `agent`'s DNS (`None`: NXDOMAIN).
fn dns_answers(agent: &Agent, name: &str) -> Option<usize> {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut query = Message::new();
    query
        .set_id(7)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&query.to_vec().unwrap(), agent.dns).unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    (reply.response_code() != ResponseCode::NXDomain).then(|| reply.answers().len())
}

/// Runs the CLI against `agent` with `CONSUL_HTTP_TOKEN` (Consul's variable) set to `token`.
fn cli(agent: &Agent, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("CONSUL_HTTP_ADDR", agent.http.to_string())
        .env_remove("MURMUR_HTTP_ADDR")
        .env_remove("MURMUR_HTTP_TOKEN");
    match token {
        Some(t) => cmd.env("CONSUL_HTTP_TOKEN", t),
        None => cmd.env_remove("CONSUL_HTTP_TOKEN"),
    };
    cmd.output().unwrap()
}

/// The `SecretID:` line of a token the CLI printed.
fn secret_of(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("SecretID:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no SecretID in {text}"))
}

/// Makes a policy with `rules` and a token linked to it; the token's secret.
fn token_with(agent: &Agent, management: &str, name: &str, rules: &str) -> String {
    let out = cli(
        agent,
        Some(management),
        &["acl", "policy", "create", "--name", name, "--rules", rules],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    secret_of(&cli(
        agent,
        Some(management),
        &["acl", "token", "create", "--policy-name", name],
    ))
}

#[test]
fn tokens_and_policies_decide_what_each_request_may_do_on_every_agent() {
    let agents = pair();
    let (a, b) = (&agents[0], &agents[1]);

    // Anonymous, default deny: nothing readable, nothing writable.
    let (status, body) = call(
        a,
        "PUT",
        "/v1/agent/service/register",
        None,
        r#"{"Name": "web"}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.starts_with("Permission denied"), "{body}");
    assert_eq!(call(a, "PUT", "/v1/kv/app/x", None, "v").0, 403);

    // Bootstrap once; a second time is refused.
    let management = secret_of(&cli(a, None, &["acl", "bootstrap"]));
    let again = cli(b, None, &["acl", "bootstrap"]);
    assert!(!again.status.success());
    assert!(
        wait_until(Duration::from_secs(30), || {
            let out = cli(b, None, &["acl", "bootstrap"]);
            String::from_utf8_lossy(&out.stderr).contains("no longer allowed")
        }),
        "the bootstrap token reached the other agent"
    );

    let web = token_with(
        a,
        &management,
        "web-writer",
        r#"service "web" { policy = "write" }"#,
    );
    let app = token_with(
        a,
        &management,
        "app-kv",
        r#"key_prefix "app/" { policy = "write" }"#,
    );
    assert!(wait_until(Duration::from_secs(30), || call(
        b,
        "GET",
        "/v1/acl/token/self",
        Some(&web),
        ""
    )
    .0 == 200));

    // web's token registers web, not db; gets web's leaf, not db's.
    let register = |token: &str, name: &str| {
        call(
            b,
            "PUT",
            "/v1/agent/service/register",
            Some(token),
            &format!(r#"{{"Name": "{name}", "Port": 80}}"#),
        )
        .0
    };
    assert_eq!(register(&web, "web"), 200);
    assert_eq!(register(&web, "db"), 403);
    assert_eq!(register(&management, "db"), 200);
    assert_eq!(
        call(b, "GET", "/v1/agent/connect/ca/leaf/db", Some(&web), "").0,
        403
    );
    assert!(
        wait_until(Duration::from_secs(30), || call(
            b,
            "GET",
            "/v1/agent/connect/ca/leaf/web",
            Some(&web),
            ""
        )
        .0 == 200),
        "web's leaf for web's token"
    );
    // What each may read: the anonymous token sees no services, web's only web.
    let services = |token: Option<&str>| {
        let (status, body) = call(b, "GET", "/v1/catalog/services", token, "");
        assert_eq!(status, 200, "{body}");
        let map: Value = serde_json::from_str(&body).unwrap();
        let mut names: Vec<String> = map.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    };
    assert!(services(None).is_empty());
    assert_eq!(services(Some(&web)), ["web"]);
    assert_eq!(services(Some(&management)), ["db", "web"]);
    let (status, body) = call(b, "GET", "/v1/health/service/db", Some(&web), "");
    assert_eq!((status, body.as_str()), (200, "[]"));

    // A service's TTL check is reported by who may write the service; a node's by node:write.
    let (status, body) = call(
        b,
        "PUT",
        "/v1/agent/check/register",
        Some(&web),
        r#"{"Name": "beat", "ServiceID": "web", "TTL": "30s"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        call(b, "PUT", "/v1/agent/check/pass/beat", Some(&web), "").0,
        200
    );
    assert_eq!(call(b, "PUT", "/v1/agent/check/pass/beat", None, "").0, 403);
    let (status, _) = call(
        b,
        "PUT",
        "/v1/agent/check/register",
        Some(&web),
        r#"{"Name": "disk", "TTL": "30s"}"#,
    );
    assert_eq!(status, 403, "a node check needs node:write");
    // Nodes are read with node:read: web's token has none.
    let (status, body) = call(b, "GET", "/v1/catalog/nodes", Some(&web), "");
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, body) = call(b, "GET", "/v1/catalog/nodes", Some(&management), "");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&body).unwrap().len(), 2);
    assert_eq!(
        call(b, "GET", "/v1/catalog/node/acl-0", Some(&web), "").0,
        403
    );

    // DNS answers as the anonymous token: nothing, until the anonymous token (Consul's
    // accessor 00…02) is given a policy that reads services and nodes.
    assert_eq!(
        dns_answers(b, "web.service.consul."),
        None,
        "NXDOMAIN for anonymous"
    );
    let out = cli(
        a,
        Some(&management),
        &[
            "acl",
            "policy",
            "create",
            "--name",
            "dns-read",
            "--rules",
            r#"service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }"#,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = call(
        a,
        "PUT",
        "/v1/acl/token",
        Some(&management),
        r#"{"AccessorID": "00000000-0000-0000-0000-000000000002", "Description": "Anonymous Token", "Policies": [{"Name": "dns-read"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(30), || dns_answers(
            b,
            "web.service.consul."
        ) == Some(1)),
        "DNS answers once the anonymous token may read"
    );

    // app's keys: app/ only.
    assert_eq!(
        call(a, "PUT", "/v1/kv/app/color", Some(&app), "blue").0,
        200
    );
    assert_eq!(call(a, "PUT", "/v1/kv/other", Some(&app), "x").0, 403);
    assert_eq!(
        call(a, "PUT", "/v1/kv/other", Some(&management), "x").0,
        200
    );
    assert_eq!(call(a, "GET", "/v1/kv/other", Some(&app), "").0, 403);
    let (status, body) = call(a, "GET", "/v1/kv/?recurse", Some(&app), "");
    assert_eq!(status, 200);
    let keys: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(keys.len(), 1, "only app/ is listed: {body}");
    // ?token= and Authorization: Bearer are read too.
    let (status, _, _) = http(
        a.http,
        "GET",
        &format!("/v1/kv/app/color?raw&token={app}"),
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);

    // The CLI with Consul's CONSUL_HTTP_TOKEN.
    let out = cli(a, Some(&app), &["kv", "put", "app/size", "L"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(a, None, &["kv", "put", "app/size", "L"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    // A token deleted on one agent is refused on the other within seconds.
    let accessor: Value =
        serde_json::from_str(&call(a, "GET", "/v1/acl/token/self", Some(&app), "").1).unwrap();
    let accessor = accessor["AccessorID"].as_str().unwrap().to_owned();
    let out = cli(a, Some(&management), &["acl", "token", "delete", &accessor]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deleted = std::time::Instant::now();
    let gone = wait_until(Duration::from_secs(10), || {
        let (status, body) = call(b, "GET", "/v1/kv/app/color", Some(&app), "");
        status == 403 && body.contains("ACL not found")
    });
    eprintln!(
        "the deleted token was refused on the other agent {:?} after the delete answered",
        deleted.elapsed()
    );
    assert!(
        gone,
        "the deleted token still works on the other agent: {:?} / on a: {:?}",
        call(b, "GET", "/v1/kv/app/color", Some(&app), ""),
        call(a, "GET", "/v1/kv/app/color", Some(&app), ""),
    );
}

#[test]
fn bad_rules_tokens_and_headers_are_refused_with_the_reason_and_change_nothing() {
    let agents = pair();
    let a = &agents[0];
    let management = secret_of(&cli(a, None, &["acl", "bootstrap"]));
    let (status, body) = call(
        a,
        "PUT",
        "/v1/acl/policy",
        Some(&management),
        r#"{"Name": "broken", "Rules": "service \"web\" { policy = \"writ\" }"}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("Failed to parse ACL rules"), "{body}");
    let (status, body) = call(
        a,
        "PUT",
        "/v1/acl/token",
        Some(&management),
        r#"{"Policies": [{"Name": "no-such-policy"}]}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("no-such-policy"), "{body}");
    let (status, body) = call(a, "GET", "/v1/kv/x", Some("not-a-known-secret"), "");
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    let (status, _) = call(a, "GET", "/v1/kv/x?token=%01%02", None, "");
    assert_eq!(status, 400, "a token with control characters");
    let (status, body) = call(a, "GET", "/v1/acl/policies", Some(&management), "");
    assert_eq!(status, 200);
    let policies: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(policies.len(), 1, "only the builtin policy: {body}");
    let by_name = call(
        a,
        "GET",
        "/v1/acl/policy/name/global-management",
        Some(&management),
        "",
    );
    let by_id = call(
        a,
        "GET",
        "/v1/acl/policy/00000000-0000-0000-0000-000000000001",
        Some(&management),
        "",
    );
    assert_eq!(by_name, by_id);
    assert_eq!(by_name.0, 200);
    assert_eq!(
        call(a, "GET", "/v1/acl/policy/name/nope", Some(&management), "").0,
        404
    );
    assert_eq!(
        call(a, "GET", "/v1/acl/policies", None, "").0,
        403,
        "acl:read needed"
    );
    let (status, _) = call(a, "GET", "/v1/status/leader", None, "");
    assert_eq!(status, 200, "the agent answers afterwards");
    let (status, body) = call(a, "GET", "/v1/agent/self", None, "");
    assert_eq!(
        status, 403,
        "agent:read for the agent's own endpoints: {body}"
    );
    assert_eq!(
        call(a, "GET", "/v1/agent/self", Some(&management), "").0,
        200
    );
}

#[test]
fn python_consul_passes_its_token_and_gets_consuls_answers() {
    if !common::has_python_consul() {
        return;
    }
    let agents = pair();
    let a = &agents[0];
    let management = secret_of(&cli(a, None, &["acl", "bootstrap"]));
    let app = token_with(
        a,
        &management,
        "app-kv",
        r#"key_prefix "app/" { policy = "write" }"#,
    );
    let out = common::python_client("python_consul_acl.py", &[&a.http.port().to_string(), &app]);
    assert!(
        out.status.success(),
        "python-consul failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sidecars_registered_with_service_tokens_carry_the_mesh_under_default_deny() {
    let agents = pair();
    let (a, b) = (&agents[0], &agents[1]);
    let management = secret_of(&cli(a, None, &["acl", "bootstrap"]));
    let rules = |service: &str| {
        format!(
            r#"service "{service}" {{ policy = "write" }} service_prefix "" {{ policy = "read" }} node_prefix "" {{ policy = "read" }}"#
        )
    };
    let db = token_with(a, &management, "db-svc", &rules("db"));
    let web = token_with(a, &management, "web-svc", &rules("web"));
    let out = cli(
        a,
        Some(&management),
        &["intention", "create", "-allow", "web", "db"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = common::echo_app();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let register = |agent: &Agent, token: &str, body: String| {
        assert!(
            wait_until(Duration::from_secs(30), || call(
                agent,
                "PUT",
                "/v1/agent/service/register",
                Some(token),
                &body
            )
            .0 == 200),
            "registered with its token"
        );
    };
    register(
        b,
        &db,
        format!(
            r#"{{"Name": "db", "ID": "db-1", "Port": {}, "Connect": {{"SidecarService": {{}}}}}}"#,
            app.addr.port()
        ),
    );
    register(
        a,
        &web,
        format!(
            r#"{{"Name": "web", "ID": "web-1", "Port": 8080, "Connect": {{"SidecarService": {{"Proxy":
                {{"Upstreams": [{{"DestinationName": "db", "LocalBindPort": {}}}]}}}}}}}}"#,
            upstream.port()
        ),
    );
    assert!(
        wait_until(Duration::from_secs(60), || common::carries(upstream)),
        "web's sidecar reaches db's, each acting with its service's token:\n{}\n{}",
        a.log(),
        b.log()
    );
}

#[test]
fn a_role_gives_its_tokens_its_policies_and_changing_the_role_changes_them_all() {
    let agents = pair();
    let (a, b) = (&agents[0], &agents[1]);
    let management = secret_of(&cli(a, None, &["acl", "bootstrap"]));
    let put = |path: &str, body: &str| {
        let (status, text) = call(a, "PUT", path, Some(&management), body);
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    put(
        "/v1/acl/policy",
        r#"{"Name": "web-writer", "Rules": "service \"web\" { policy = \"write\" }"}"#,
    );
    let role = put(
        "/v1/acl/role",
        r#"{"Name": "web-role", "Policies": [{"Name": "web-writer"}]}"#,
    );
    let token = put("/v1/acl/token", r#"{"Roles": [{"Name": "web-role"}]}"#);
    assert_eq!(token["Roles"][0]["Name"], "web-role");
    let secret = token["SecretID"].as_str().unwrap().to_owned();
    let register = |name: &str| {
        call(
            b,
            "PUT",
            "/v1/agent/service/register",
            Some(&secret),
            &format!(r#"{{"Name": "{name}"}}"#),
        )
        .0
    };
    assert!(wait_until(Duration::from_secs(30), || register("web") == 200));
    assert_eq!(register("db"), 403);
    // The role loses its policy: every token of the role loses what it gave.
    let id = role["ID"].as_str().unwrap();
    put(
        &format!("/v1/acl/role/{id}"),
        r#"{"Name": "web-role", "Policies": []}"#,
    );
    assert!(
        wait_until(Duration::from_secs(30), || register("web") == 403),
        "the role's change reached the other agent"
    );
    let (status, body) = call(
        a,
        "GET",
        "/v1/acl/role/name/web-role",
        Some(&management),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        a,
        "PUT",
        "/v1/acl/token",
        Some(&management),
        r#"{"Roles": [{"Name": "nope"}]}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("cannot find role \"nope\""), "{body}");
}
