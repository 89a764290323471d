//! End to end: health checks run by the agent that owns the service — HTTP, TCP, TTL — whose
//! results replicate to every agent, survive a restart, and reap a service left critical.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use common::{Agent, cluster, keygen, wait_until};

const SPREAD: Duration = Duration::from_secs(30);

/// The URL of a health endpoint answering with the status in `code`.
fn health_server(code: Arc<AtomicU16>) -> String {
    format!("http://{}/health", common::health_server(code))
}

/// Status of check `id` as `agent` sees it in `/v1/health/state/any`.
fn status_of(agent: &Agent, id: &str) -> Option<String> {
    let checks = agent.try_get("/v1/health/state/any")?;
    checks
        .as_array()?
        .iter()
        .find(|c| c["CheckID"] == id)
        .and_then(|c| c["Status"].as_str().map(str::to_owned))
}

fn put(agent: &Agent, path: &str, body: &str) -> (u16, String) {
    let (status, _, text) = agent.request("PUT", path, body.as_bytes());
    (status, text)
}

fn everywhere(agents: &[Agent], id: &str, status: &str) -> bool {
    agents
        .iter()
        .all(|a| status_of(a, id).as_deref() == Some(status))
}

#[test]
fn checks_run_where_the_service_lives_and_their_status_replicates() {
    let mut agents = cluster("ck", 2, &keygen());
    let code = Arc::new(AtomicU16::new(200));
    let url = health_server(code.clone());
    let body = format!(
        r#"{{"Name": "web", "Port": 80, "Check": {{"HTTP": "{url}", "Interval": "1s", "Timeout": "2s"}}}}"#
    );
    assert_eq!(put(&agents[0], "/v1/agent/service/register", &body).0, 200);
    assert!(
        wait_until(SPREAD, || everywhere(&agents, "service:web", "passing")),
        "the HTTP check passes on both agents"
    );
    code.store(429, Ordering::SeqCst);
    assert!(wait_until(SPREAD, || everywhere(
        &agents,
        "service:web",
        "warning"
    )));
    code.store(500, Ordering::SeqCst);
    assert!(wait_until(SPREAD, || everywhere(
        &agents,
        "service:web",
        "critical"
    )));
    assert!(
        wait_until(SPREAD, || agents[1]
            .get("/v1/health/service/web?passing")
            .as_array()
            .unwrap()
            .is_empty()),
        "a failing instance leaves ?passing"
    );
    let output = &agents[1].get("/v1/health/checks/web")[0]["Output"];
    assert!(output.as_str().unwrap().contains("500"), "{output}");
    code.store(200, Ordering::SeqCst);

    // TCP: a listening port passes; a closed one fails with the address in the output.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let tcp = format!(r#"{{"Name": "port", "TCP": "{open}", "Interval": "1s"}}"#);
    assert_eq!(put(&agents[0], "/v1/agent/check/register", &tcp).0, 200);
    assert!(wait_until(SPREAD, || everywhere(
        &agents, "port", "passing"
    )));
    drop(listener);
    assert!(wait_until(SPREAD, || everywhere(
        &agents, "port", "critical"
    )));

    // TTL: critical until reported, reports move it, silence expires it.
    let ttl = r#"{"Name": "app", "CheckID": "app-ttl", "TTL": "3s"}"#;
    assert_eq!(put(&agents[0], "/v1/agent/check/register", ttl).0, 200);
    assert_eq!(
        status_of(&agents[0], "app-ttl").as_deref(),
        Some("critical")
    );
    assert_eq!(
        put(&agents[0], "/v1/agent/check/pass/app-ttl?note=fine", "").0,
        200
    );
    assert!(wait_until(SPREAD, || everywhere(
        &agents, "app-ttl", "passing"
    )));
    let update = r#"{"Status": "warning", "Output": "slow disk"}"#;
    assert_eq!(
        put(&agents[0], "/v1/agent/check/update/app-ttl", update).0,
        200
    );
    assert!(wait_until(SPREAD, || everywhere(
        &agents, "app-ttl", "warning"
    )));
    assert!(
        wait_until(SPREAD, || everywhere(&agents, "app-ttl", "critical")),
        "silence past the TTL"
    );
    let checks = agents[0].get("/v1/agent/checks");
    assert!(
        checks["app-ttl"]["Output"]
            .as_str()
            .unwrap()
            .contains("TTL expired")
    );

    // Bad input: named, never half-written.
    for (path, body, status, message) in [
        ("/v1/agent/check/pass/nothing", "", 404, "Unknown check ID"),
        (
            "/v1/agent/check/pass/service:web",
            "",
            400,
            "not a TTL check",
        ),
        (
            "/v1/agent/check/update/app-ttl",
            r#"{"Status": "great"}"#,
            400,
            "Invalid check status",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "x", "Args": ["true"], "Interval": "1s"}"#,
            400,
            "--enable-script-checks",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "x", "HTTP": "http://a"}"#,
            400,
            "Interval",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "x", "TTL": "1s", "ServiceID": "nope"}"#,
            400,
            "does not exist",
        ),
        (
            "/v1/agent/check/register",
            "{",
            400,
            "Request decode failed",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "half", "Check": {"TTL": "soon"}}"#,
            400,
            "not a duration",
        ),
        (
            "/v1/agent/check/deregister/nothing",
            "",
            404,
            "Unknown check ID",
        ),
    ] {
        let (got, text) = put(&agents[0], path, body);
        assert_eq!(got, status, "{path} {body}: {text}");
        assert!(text.contains(message), "{path} {body}: {text}");
    }
    assert!(
        agents[0].get("/v1/agent/services").get("half").is_none(),
        "nothing half-written"
    );

    // A restart keeps the definitions: the TTL check still takes reports.
    agents[0].kill9();
    let seed = agents[1].gossip;
    agents[0].start_again(Some(seed), &[]);
    assert_eq!(put(&agents[0], "/v1/agent/check/pass/app-ttl", "").0, 200);
    assert!(wait_until(SPREAD, || everywhere(
        &agents, "app-ttl", "passing"
    )));
    assert!(wait_until(SPREAD, || everywhere(
        &agents,
        "service:web",
        "passing"
    )));

    // DeregisterCriticalServiceAfter takes a service left critical away everywhere.
    let doomed =
        r#"{"Name": "doomed", "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "1s"}}"#;
    assert_eq!(put(&agents[0], "/v1/agent/service/register", doomed).0, 200);
    assert!(
        wait_until(SPREAD, || agents
            .iter()
            .all(|a| a.get("/v1/catalog/services").get("doomed").is_none())),
        "the critical service was deregistered"
    );
    assert_eq!(
        put(&agents[0], "/v1/agent/check/deregister/port", "").0,
        200
    );
    assert!(wait_until(SPREAD, || status_of(&agents[1], "port").is_none()));

    // Maintenance: a service, then the whole node, out of service everywhere and back.
    let passing = |a: &Agent| {
        a.get("/v1/health/service/web?passing")
            .as_array()
            .unwrap()
            .len()
    };
    assert!(wait_until(SPREAD, || passing(&agents[1]) == 1));
    // `True`/`False` as python-consul sends them: Go's ParseBool reads them, so does murmur.
    let on = "/v1/agent/service/maintenance/web?enable=True&reason=upgrading";
    assert_eq!(put(&agents[0], on, "").0, 200);
    assert!(wait_until(SPREAD, || passing(&agents[1]) == 0));
    let checks = agents[1].get("/v1/health/checks/web");
    let maint = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "_service_maintenance:web")
        .expect("the maintenance check replicated");
    assert_eq!(maint["Output"], "upgrading");
    let off = "/v1/agent/service/maintenance/web?enable=False";
    assert_eq!(put(&agents[0], off, "").0, 200);
    assert!(wait_until(SPREAD, || passing(&agents[1]) == 1));
    assert_eq!(
        put(&agents[0], "/v1/agent/maintenance?enable=true", "").0,
        200
    );
    assert!(wait_until(SPREAD, || passing(&agents[1]) == 0));
    assert_eq!(
        put(&agents[0], "/v1/agent/maintenance?enable=false", "").0,
        200
    );
    assert!(wait_until(SPREAD, || passing(&agents[1]) == 1));
    for (path, status, message) in [
        ("/v1/agent/maintenance", 400, "Missing value for enable"),
        (
            "/v1/agent/maintenance?enable=yes",
            400,
            "Invalid value for enable",
        ),
        (
            "/v1/agent/service/maintenance/nope?enable=true",
            404,
            "Unknown service ID",
        ),
    ] {
        let (got, text) = put(&agents[0], path, "");
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.contains(message), "{path}: {text}");
    }
}

#[test]
fn concurrent_registrations_are_all_kept_across_a_restart() {
    let mut agent = Agent::start(common::Spec {
        name: "cc0",
        key: None,
        join: None,
        extra: &[],
    });
    let http = agent.http;
    let writers: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"ID": "ttl-{i}", "Name": "ttl {i}", "TTL": "60s"}}"#);
                common::http(http, "PUT", "/v1/agent/check/register", body.as_bytes())
                    .unwrap()
                    .0
            })
        })
        .collect();
    for writer in writers {
        assert_eq!(
            writer.join().unwrap(),
            200,
            "every registration is acknowledged"
        );
    }
    assert!(agent.terminate());
    agent.start_again(None, &[]);
    let checks = agent.get("/v1/agent/checks");
    let ids = checks.as_object().unwrap().len();
    assert_eq!(
        ids, 16,
        "an acknowledged registration survives the restart: {checks}"
    );
}

#[test]
fn a_flip_on_a_node_with_many_services_replicates_as_a_patch() {
    // A node with many services has a record too large for a datagram; a check flip on it
    // travels as a patch against the version before, not as the whole record.
    let agents = cluster("cp", 3, &keygen());
    for i in 0..40 {
        let body = format!(
            r#"{{"Name": "web", "ID": "web-{i}", "Port": {}, "Check": {{"CheckID": "web-{i}-ttl", "TTL": "600s"}}}}"#,
            8000 + i
        );
        agents[0].register(&body);
    }
    assert!(
        wait_until(SPREAD, || agents[1..].iter().all(|a| a
            .get("/v1/health/service/web")
            .as_array()
            .is_some_and(|instances| instances.len() == 40))),
        "every registration reaches every agent"
    );
    let applied = |a: &Agent| a.metric("murmur_replica_patches_total{outcome=\"applied\"}");
    let before: Vec<f64> = agents[1..].iter().map(applied).collect();
    for (status, path) in [
        ("passing", "pass"),
        ("warning", "warn"),
        ("critical", "fail"),
    ] {
        let flip = format!("/v1/agent/check/{path}/web-17-ttl");
        assert_eq!(put(&agents[0], &flip, "").0, 200);
        assert!(
            wait_until(SPREAD, || everywhere(&agents, "web-17-ttl", status)),
            "the flip to {status} reaches every agent"
        );
    }
    for (agent, before) in agents[1..].iter().zip(before) {
        assert!(
            applied(agent) >= before + 3.0,
            "{} applied the three flips as patches ({before} before, {} after)",
            agent.name,
            applied(agent)
        );
    }
}
