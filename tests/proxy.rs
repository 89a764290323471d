//! End to end: two agents, `web` on one and `db` on the other, each with its sidecar proxy
//! (`murmur connect proxy`). An app connects to web's `db` upstream on loopback and talks to
//! db's app through QUIC with mutual TLS: refused until an intention allows it, then data both
//! ways (100 MB, and many connections at once); a deny closes the open connection and refuses
//! new ones; datagrams that are not QUIC and a caller with a certificate from another CA never
//! reach the app. db's proxy runs with `--busy-poll`, web's without.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    Agent, BIN, EchoApp, OWN_ROOT, Spec, carries, cluster, cluster_with, echo_app, free_port,
    keygen, round_trip, wait_until,
};
use murmur_proxy::native::MeshClient;
use murmur_proxy::trust::TrustedRoot;
use serde_json::Value;

const SPREAD: Duration = Duration::from_secs(30);

/// A sidecar proxy process, killed when dropped.
struct Proxy {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(agent: &Agent, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("proxy.log");
        let child = Command::new(BIN)
            .args(["connect", "proxy", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("MURMUR_HTTP_ADDR", agent.http.to_string())
            .env("MURMUR_LOG", "info,murmur=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many CA roots `agent` trusts.
fn root_count(agent: &Agent) -> usize {
    agent.get("/v1/agent/connect/ca/roots")["Roots"]
        .as_array()
        .map_or(0, Vec::len)
}

/// The sidecar of `web-1` on `agent`, with its `db` upstream on a free loopback port.
fn web_sidecar(agent: &Agent) -> (Proxy, SocketAddr, SocketAddr) {
    let upstream = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(
        agent,
        &[
            "--sidecar-for",
            "web-1",
            "--upstream",
            &format!("db:{}", upstream.port()),
            "--metrics-addr",
            &metrics.to_string(),
        ],
    );
    (proxy, upstream, metrics)
}

/// Creates the intention that lets web reach db, through `agent`.
fn allow_web_to_db(agent: &Agent) {
    let out = agent.cli(&["intention", "create", "-allow", "web", "db"]);
    assert!(out.status.success(), "{out:?}");
}

/// Registers web-1 on `agent` with a sidecar whose db upstream listens on loopback `port`;
/// the address web dials.
fn register_web_with_db_upstream(agent: &Agent, port: u16) -> SocketAddr {
    agent.register_with_upstream("web", 8080, "db", port)
}

#[test]
fn web_reaches_db_through_the_mesh_only_when_intentions_allow() {
    // No `ca init`: the first agent makes the datacenter's root by itself.
    let agents = cluster("px", 2, &keygen());
    let EchoApp {
        addr: app,
        accepted,
        ..
    } = echo_app();
    agents[1].register(&format!(
        r#"{{"Name": "db", "ID": "db-1", "Port": {}}}"#,
        app.port()
    ));
    agents[0].register(r#"{"Name": "web", "ID": "web-1", "Port": 8080}"#);
    assert!(wait_until(SPREAD, || root_count(&agents[1]) > 0));

    // db's proxy polls busily: the same traffic must pass either way.
    let mut db_proxy = Proxy::start(
        &agents[1],
        &["--sidecar-for", "db-1", "--busy-poll", "200us"],
    );
    let (web_proxy, upstream, web_metrics) = web_sidecar(&agents[0]);
    let logs = || {
        format!(
            "web proxy:\n{}\ndb proxy:\n{}",
            web_proxy.log(),
            db_proxy.log()
        )
    };
    assert!(
        wait_until(SPREAD, || {
            agents[0]
                .get("/v1/health/service/db-sidecar-proxy?passing")
                .as_array()
                .is_some_and(|l| l.len() == 1)
                && TcpStream::connect(upstream).is_ok()
        }),
        "the proxies did not come up:\n{}",
        logs()
    );

    // Deny by default (not --dev): the app never sees the caller.
    let refused = round_trip(upstream, b"hello").unwrap_or_default();
    assert!(
        refused.is_empty(),
        "denied traffic came back: {refused:?}\n{}",
        logs()
    );
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        0,
        "a refused caller reached the app"
    );

    // Allowed: bytes flow both ways.
    let out = agents[0].cli(&["intention", "create", "--allow", "web", "db"]);
    assert!(out.status.success());
    assert!(
        wait_until(SPREAD, || round_trip(upstream, b"hello")
            .is_ok_and(|b| b == b"hello")),
        "allowed traffic does not flow:\n{}",
        logs()
    );
    let big: Vec<u8> = (0..100 * 1024 * 1024)
        .map(|i: usize| (i % 251) as u8)
        .collect();
    let back = round_trip(upstream, &big).unwrap();
    assert!(
        back == big,
        "100 MB came back altered ({} bytes)",
        back.len()
    );
    // web's proxy serves its own metrics (--metrics-addr): the 100 MB went up and came back.
    // (A connection's bytes are counted when it ends, just after the app saw it end.)
    let scrape = || common::http(web_metrics, "GET", "/metrics", b"").ok();
    let pair = r#"{source="web",destination="db"}"#;
    let upstream_side = r#"{source="web",destination="db",side="upstream"}"#;
    let counted = |text: &str| {
        [
            ("murmur_proxy_upstream_connections_total", pair, 2.0),
            ("murmur_proxy_bytes_out_total", upstream_side, 100e6),
            ("murmur_proxy_bytes_in_total", upstream_side, 100e6),
        ]
        .iter()
        .all(|(metric, labels, at_least)| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{metric}{labels} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= *at_least)
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || scrape()
            .is_some_and(|(status, _, text)| status == 200 && counted(&text))),
        "web's proxy does not export what it carried:\n{:?}",
        scrape()
    );
    let many: Vec<_> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                let payload = format!("connection {i}").repeat(1000).into_bytes();
                round_trip(upstream, &payload).map(|b| b == payload)
            })
        })
        .collect();
    for handle in many {
        assert!(
            handle.join().unwrap().unwrap(),
            "a concurrent connection failed"
        );
    }

    // A deny closes the open connection and refuses new ones.
    let mut open = TcpStream::connect(upstream).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    open.write_all(b"ping").unwrap();
    let mut four = [0u8; 4];
    open.read_exact(&mut four).unwrap();
    let out = agents[1].cli(&["intention", "create", "--deny", "--replace", "web", "db"]);
    assert!(out.status.success());
    let mut rest = Vec::new();
    let closed = open.read_to_end(&mut rest);
    let timed_out = closed.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(
        !timed_out && rest.is_empty(),
        "the open connection is closed: {closed:?}\n{}",
        logs()
    );
    assert!(wait_until(SPREAD, || round_trip(upstream, b"x")
        .is_ok_and(|b| b.is_empty())));

    let db_quic = agents[0].get("/v1/health/service/db-sidecar-proxy")[0]["Service"]["Port"]
        .as_u64()
        .unwrap();
    let before = accepted.load(Ordering::Relaxed);

    // Datagrams that are not QUIC (one byte, zeros, a bogus version, HTTP) are dropped by
    // quinn before any state is made, and a TCP connection to the QUIC port finds no
    // listener (it is a UDP port): none reaches the app, and the proxy keeps running and
    // judging handshakes (the foreign caller below is refused and logged after them).
    let quic = SocketAddr::from(([127, 0, 0, 1], db_quic as u16));
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in [
        &b"x"[..],
        &[0; 40],
        &[0xff; 1200],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        stranger.send_to(datagram, quic).unwrap();
    }
    assert!(TcpStream::connect_timeout(&quic, Duration::from_secs(5)).is_err());

    // A caller with a certificate of another CA is refused in the handshake.
    let roots: Vec<TrustedRoot> = agents[0].get("/v1/agent/connect/ca/roots")["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| TrustedRoot {
            datacenter: r["Datacenter"].as_str().unwrap().to_owned(),
            cert_pem: r["RootCert"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert!(foreign_caller_is_refused(db_quic as u16, roots));
    assert_eq!(accepted.load(Ordering::Relaxed), before);
    assert!(
        db_proxy.child.try_wait().unwrap().is_none(),
        "db's proxy exited:\n{}",
        db_proxy.log()
    );
    // Both kinds of refusal are in the log. The proxy logs a refused handshake after it has
    // sent the refusal, so the caller may see the refusal first: wait for the line.
    for reason in ["handshake", "intention"] {
        let logged = || {
            db_proxy
                .log()
                .lines()
                .any(|l| l.contains(&format!("reason=\"{reason}\"")))
        };
        assert!(
            wait_until(Duration::from_secs(5), logged),
            "the {reason} refusal is logged:\n{}",
            db_proxy.log()
        );
    }
}

/// Waits until `agent` lists `n` passing proxies of db.
fn passing_db_proxies(agent: &Agent, n: usize) -> bool {
    agent
        .get("/v1/health/service/db-sidecar-proxy?passing")
        .as_array()
        .is_some_and(|l| l.len() == n)
}

#[test]
fn connections_go_to_the_healthy_instance_and_survive_a_ca_rotation() {
    // Roots made by hand only, so that the rotation below is counted.
    let agents = cluster_with("pf", 2, &keygen(), OWN_ROOT);
    let out = agents[0].cli(&["ca", "rotate"]);
    assert!(out.status.success());
    let out = agents[0].cli(&["intention", "create", "--allow", "web", "db"]);
    assert!(out.status.success());
    let apps = [echo_app(), echo_app()];
    for (i, agent) in agents.iter().enumerate() {
        let port = apps[i].addr.port();
        agent.register(&format!(
            r#"{{"Name": "db", "ID": "db-{i}", "Port": {port}}}"#
        ));
    }
    agents[0].register(r#"{"Name": "web", "ID": "web-1", "Port": 8080}"#);
    assert!(wait_until(SPREAD, || agents
        .iter()
        .all(|a| root_count(a) > 0)));
    let db0 = Proxy::start(&agents[0], &["--sidecar-for", "db-0"]);
    let db1 = Proxy::start(&agents[1], &["--sidecar-for", "db-1"]);
    let (web, upstream, _) = web_sidecar(&agents[0]);
    assert!(
        wait_until(SPREAD, || passing_db_proxies(&agents[0], 2)
            && round_trip(upstream, b"up").is_ok_and(|b| b == b"up")),
        "the mesh did not come up: {}\n{}\n{}\n{}",
        agents[0].get("/v1/health/service/db-sidecar-proxy"),
        web.log(),
        db0.log(),
        db1.log()
    );

    // A long-lived connection across a CA rotation: it stays up, and new ones work too.
    let mut steady = TcpStream::connect(upstream).unwrap();
    steady
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ping = |stream: &mut TcpStream| {
        stream.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).map(|()| back == *b"ping")
    };
    assert!(ping(&mut steady).unwrap());
    let out = agents[1].cli(&["ca", "rotate"]);
    assert!(out.status.success());
    let rotated = || root_count(&agents[0]) == 2;
    assert!(wait_until(SPREAD, rotated));
    for _ in 0..20 {
        assert!(
            ping(&mut steady).unwrap(),
            "the open connection survives the rotation"
        );
        assert_eq!(round_trip(upstream, b"new").unwrap(), b"new");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A native SDK client dials db while both instances are up: it learns them once.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sdk = runtime
        .block_on(MeshClient::new(&agents[0].http.to_string(), "web"))
        .unwrap();
    let sdk_round_trip = |payload: &[u8]| {
        runtime.block_on(async { common::mesh_exchange(sdk.connect("db").await, payload).await })
    };
    assert_eq!(sdk_round_trip(b"sdk").as_deref(), Some(&b"sdk"[..]));

    // db-0's app dies: its proxy turns critical and new connections all go to db-1, from the
    // sidecar's upstream and from the SDK (which follows the instances with a blocking query:
    // were its list stale, half its dials would reach db-0's proxy and fail).
    apps[0].stop.store(true, Ordering::Relaxed);
    assert!(wait_until(SPREAD, || passing_db_proxies(&agents[0], 1)));
    assert!(wait_until(Duration::from_secs(5), || (0..5)
        .all(|_| sdk_round_trip(b"x").is_some())));
    let before = apps[0].accepted.load(Ordering::Relaxed);
    for i in 0..20 {
        let payload = format!("after {i}");
        assert_eq!(
            round_trip(upstream, payload.as_bytes()).unwrap(),
            payload.as_bytes()
        );
        assert_eq!(
            sdk_round_trip(payload.as_bytes()).as_deref(),
            Some(payload.as_bytes())
        );
    }
    assert_eq!(apps[0].accepted.load(Ordering::Relaxed), before);
}

/// Dials db's proxy with a leaf of a CA of its own (trusting the mesh's real roots, so only
/// the server can refuse); true when the connection is refused.
fn foreign_caller_is_refused(port: u16, mesh_roots: Vec<TrustedRoot>) -> bool {
    use murmur_proxy::ca::{Authority, leaf_key};
    use murmur_proxy::identity::{ServiceId, TrustDomain};
    use murmur_proxy::tls::MeshIdentity;
    let td = TrustDomain::of_cluster("murmur").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ca = Authority::generate(&td, now.as_millis() as u64, [3; 16]).unwrap();
    let web = ServiceId::new(&td, "dc1", "web").unwrap();
    let (key, public) = leaf_key().unwrap();
    let leaf = ca
        .sign_leaf(&web, &public, now.as_secs(), 600, [4; 16])
        .unwrap();
    let identity = MeshIdentity::from_pem(&leaf.cert_pem, &key, &mesh_roots).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut endpoint =
            murmur_proxy::quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(identity.client_config().unwrap());
        let db = ServiceId::new(&td, "dc1", "db").unwrap();
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let attempt = async {
            let connection = endpoint.connect(target, &db.dns_name()).ok()?.await.ok()?;
            let (mut send, mut recv) = connection.open_bi().await.ok()?;
            send.write_all(b"hi").await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(16).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .ok()
            .flatten()
            .is_none()
    })
}

/// Runs the native SDK example (`examples/mesh_native.rs`) against `agent`.
fn native(agent: &Agent, args: &[&str]) -> Command {
    let example = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/mesh_native");
    let mut cmd = Command::new(example);
    cmd.args(args)
        .env("MURMUR_HTTP_ADDR", agent.http.to_string())
        .env("MURMUR_LOG", "info");
    cmd
}

#[test]
fn the_native_sdk_talks_to_a_sidecar_fronted_service_and_serves_one_itself() {
    let agents = cluster("nv", 2, &keygen());
    let out = agents[0].cli(&["intention", "create", "--allow", "web", "*"]);
    assert!(out.status.success());
    // db: an echo app behind a sidecar on agent 1.
    let EchoApp { addr: app, .. } = echo_app();
    agents[1].register(&format!(
        r#"{{"Name": "db", "ID": "db-1", "Port": {}}}"#,
        app.port()
    ));
    // api: a native server on agent 1.
    agents[1].register(r#"{"Name": "api", "ID": "api-1", "Port": 1}"#);
    assert!(wait_until(SPREAD, || root_count(&agents[1]) > 0));
    let _db = Proxy::start(&agents[1], &["--sidecar-for", "db-1"]);
    let mut server = native(&agents[1], &["server", "api-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listed = |name: &str| {
        agents[0]
            .get(&format!("/v1/health/service/{name}-sidecar-proxy?passing"))
            .as_array()
            .is_some_and(|l| l.len() == 1)
    };
    let up = wait_until(SPREAD, || listed("db") && listed("api"));
    let talk = |destination: &str, message: &str| {
        let out = native(&agents[0], &["client", "web", destination, message])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let to_db = up.then(|| talk("db", "through db's sidecar"));
    let to_api = up.then(|| talk("api", "to a native server"));
    // Without an intention for it (the default is deny), the native server refuses.
    let denied = native(&agents[0], &["client", "cache", "api", "x"])
        .output()
        .unwrap();
    // After a rotation a new client holds a leaf of the new root; the running listener
    // follows the roots and lets it in.
    let serial = |a: &Agent| a.get("/v1/agent/connect/ca/leaf/web")["SerialNumber"].clone();
    let before = serial(&agents[0]);
    assert!(agents[1].cli(&["ca", "rotate"]).status.success());
    let rotated = wait_until(SPREAD, || serial(&agents[0]) != before);
    let after_rotation = rotated.then(|| talk("api", "after the rotation"));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        up,
        "db's sidecar and api's native listener are in the catalog"
    );
    let (ok, said, err) = to_db.unwrap();
    assert!(ok && said == "through db's sidecar", "{said} {err}");
    let (ok, said, err) = to_api.unwrap();
    assert!(ok && said == "to a native server", "{said} {err}");
    assert!(
        !denied.status.success(),
        "a caller with no intention got an answer"
    );
    let (ok, said, err) = after_rotation.expect("the rotation reached both agents");
    assert!(ok && said == "after the rotation", "{said} {err}");
}

#[test]
fn the_agent_runs_sidecars_of_services_registered_with_one_and_exports_their_metrics() {
    let agents = cluster("as", 2, &keygen());
    allow_web_to_db(&agents[0]);
    let EchoApp { addr: app, .. } = echo_app();
    let upstream = free_port();
    agents[1].register_db_with_sidecar(app.port());
    assert!(wait_until(SPREAD, || root_count(&agents[0]) > 0));
    let upstream = register_web_with_db_upstream(&agents[0], upstream);
    assert!(
        wait_until(SPREAD, || carries(upstream)),
        "the agents' own sidecars carry web's connection to db:\n{}\n{}",
        agents[0].log(),
        agents[1].log()
    );
    // Their metrics are the agents' own.
    let metrics = |agent: &Agent| {
        agent
            .request("GET", "/v1/agent/metrics?format=prometheus", b"")
            .2
    };
    let web_side = metrics(&agents[0]);
    assert!(
        web_side
            .contains("murmur_proxy_upstream_connections_total{source=\"web\",destination=\"db\"}"),
        "{web_side}"
    );
    assert!(
        web_side.contains("murmur_proxy_connect_seconds"),
        "{web_side}"
    );
    let db_side = metrics(&agents[1]);
    assert!(
        db_side
            .contains("murmur_proxy_inbound_connections_total{source=\"web\",destination=\"db\"}"),
        "{db_side}"
    );
    // Deregistering web stops its proxy: the upstream closes, the proxy leaves the catalog.
    let (status, _, _) = agents[0].request("PUT", "/v1/agent/service/deregister/web-1", b"");
    assert_eq!(status, 200);
    assert!(wait_until(SPREAD, || TcpStream::connect(upstream).is_err()
        && agents[0]
            .get("/v1/agent/services")
            .get("web-1-sidecar-proxy")
            .is_none()));
}

/// The output of the check of `proxy_id` on `agent` (empty while it has none).
fn proxy_check_output_of(agent: &Agent, proxy_id: &str) -> String {
    agent.get("/v1/agent/checks")[format!("service:{proxy_id}")]["Output"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_sidecar_without_an_identity_says_why_and_comes_up_once_there_is_one() {
    // Agents that bring their own root, before they have one: the agent-run sidecar cannot
    // get a leaf.
    let agents = cluster_with("wt", 2, &keygen(), OWN_ROOT);
    let EchoApp { addr: app, .. } = echo_app();
    agents[1].register_db_with_sidecar(app.port());
    // It is in the catalog, critical, and its check says why, instead of stopping for good.
    assert!(
        wait_until(SPREAD, || proxy_check_output_of(
            &agents[1],
            "db-1-sidecar-proxy"
        )
        .contains("has no CA root yet")),
        "{:?}\n{}",
        proxy_check_output_of(&agents[1], "db-1-sidecar-proxy"),
        agents[1].log()
    );
    let critical = agents[0].get("/v1/health/checks/db-sidecar-proxy");
    assert_eq!(critical[0]["Status"], "critical", "{critical}");
    assert!(!passing_db_proxies(&agents[0], 1));

    // A root appears: the same sidecar comes up by itself, with no restart and no
    // re-registration, and carries web's connections.
    assert!(agents[0].cli(&["ca", "rotate"]).status.success());
    allow_web_to_db(&agents[0]);
    assert!(
        wait_until(Duration::from_secs(60), || passing_db_proxies(
            &agents[0], 1
        )),
        "{:?}\n{}",
        proxy_check_output_of(&agents[1], "db-1-sidecar-proxy"),
        agents[1].log()
    );
    let upstream = register_web_with_db_upstream(&agents[0], free_port());
    assert!(
        wait_until(SPREAD, || carries(upstream)),
        "{}\n{}",
        agents[0].log(),
        agents[1].log()
    );
}

#[test]
fn a_registration_with_a_sidecar_says_at_once_why_it_cannot_get_a_leaf() {
    // Gossip without encryption: an agent holding no CA key cannot ask one that does.
    let first = Agent::start(Spec {
        name: "plain-0",
        key: None,
        join: None,
        extra: OWN_ROOT,
    });
    let second = Agent::start(Spec {
        name: "plain-1",
        key: None,
        join: Some(first.gossip),
        extra: OWN_ROOT,
    });
    let body = br#"{"Name": "db", "ID": "db-1", "Port": 5432, "Connect": {"SidecarService": {}}}"#;
    let (status, headers, text) = second.request("PUT", "/v1/agent/service/register", body);
    assert_eq!(status, 200, "registered all the same: {text}");
    let warning = common::header(&headers, "x-murmur-warning").unwrap_or_default();
    assert!(warning.contains("has no CA root yet"), "{headers:?}");

    assert!(first.cli(&["ca", "rotate"]).status.success());
    assert!(wait_until(SPREAD, || root_count(&second) > 0));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.json");
    let mut definition = b"{\"service\": ".to_vec();
    definition.extend_from_slice(body);
    definition.push(b'}');
    std::fs::write(&file, definition).unwrap();
    let out = second.cli(&["services", "register", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("--encrypt"),
        "the CLI says why: {stderr}"
    );
    // The agent that holds the key signs for itself: no warning there.
    let (status, headers, _) = first.request("PUT", "/v1/agent/service/register", body);
    assert_eq!(status, 200);
    assert_eq!(common::header(&headers, "x-murmur-warning"), None);
}

#[test]
fn with_the_signer_down_open_connections_flow_and_new_leaves_wait_for_it() {
    // sd0, the first by name, makes the root and holds its key.
    let mut agents = cluster("sd", 3, &keygen());
    allow_web_to_db(&agents[0]);
    assert!(wait_until(SPREAD, || root_count(&agents[2]) > 0));
    let EchoApp { addr: app, .. } = echo_app();
    agents[1].register_db_with_sidecar(app.port());
    let upstream = register_web_with_db_upstream(&agents[2], free_port());
    assert!(
        wait_until(SPREAD, || carries(upstream)),
        "{}",
        agents[2].log()
    );
    // A connection opened before the signer dies keeps flowing after.
    let mut open = TcpStream::connect(upstream).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = |payload: &[u8]| -> Vec<u8> {
        open.write_all(payload).unwrap();
        let mut back = vec![0; payload.len()];
        open.read_exact(&mut back).unwrap();
        back
    };
    assert_eq!(echo(b"before"), b"before");
    agents[0].kill9();
    assert_eq!(echo(b"after"), b"after", "the open connection flows on");
    assert_eq!(
        round_trip(upstream, b"new").unwrap(),
        b"new",
        "new connections too: the leaves in use stay valid"
    );
    // A service registered now cannot get a leaf until the signer is back, and says so.
    let body =
        br#"{"Name": "cache", "ID": "cache-1", "Port": 6379, "Connect": {"SidecarService": {}}}"#;
    assert!(wait_until(SPREAD, || {
        let (_, headers, _) = agents[2].request("PUT", "/v1/agent/service/register", body);
        common::header(&headers, "x-murmur-warning")
            .is_some_and(|w| w.contains("no live agent holds the key"))
    }));
    let cache_passing_or_app_down = |agent: &Agent| {
        proxy_check_output_of(agent, "cache-1-sidecar-proxy").contains("the app at")
    };
    assert!(!cache_passing_or_app_down(&agents[2]));
    let seed = agents[1].gossip;
    agents[0].start_again(Some(seed), &[]);
    // With a leaf, the proxy goes on to check its app (none listens): its reason changes.
    assert!(
        wait_until(Duration::from_secs(60), || cache_passing_or_app_down(
            &agents[2]
        )),
        "{:?}",
        proxy_check_output_of(&agents[2], "cache-1-sidecar-proxy")
    );
}

/// The ID of the root `agent` signs with ("" while there is none).
fn active_root(agent: &Agent) -> String {
    agent.get("/v1/agent/connect/ca/roots")["ActiveRootID"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn two_agents_with_data_dirs_and_a_key_and_no_ca_init_connect_sidecars_within_30_s() {
    // The README's mesh quick start, as a new user runs it: no `ca init`, no manual step.
    let started = std::time::Instant::now();
    let agents = cluster("fr", 2, &keygen());
    allow_web_to_db(&agents[0]);
    let EchoApp { addr: app, .. } = echo_app();
    agents[1].register_db_with_sidecar(app.port());
    let upstream = register_web_with_db_upstream(&agents[0], free_port());
    let limit = Duration::from_secs(30).saturating_sub(started.elapsed());
    assert!(
        wait_until(limit, || carries(upstream)),
        "web's sidecar did not reach db's within 30 s of start:\n{}\n{}",
        agents[0].log(),
        agents[1].log()
    );
    // One root, made by the first agent by name, which holds its key.
    let roots = agents[1].get("/v1/agent/connect/ca/roots");
    assert_eq!(roots["Roots"].as_array().map(Vec::len), Some(1), "{roots}");
    let holder = agents[1].get("/v1/catalog/node/fr0")["Node"]["Meta"]["murmur-ca-signer"].clone();
    assert_eq!(holder, roots["ActiveRootID"], "fr0 signs");
}

#[test]
fn agents_that_each_made_a_root_apart_end_with_one_active_root_once_joined() {
    let key = keygen();
    let apart: Vec<Agent> = ["race-0", "race-1"]
        .into_iter()
        .map(|name| {
            Agent::start(Spec {
                name,
                key: Some(&key),
                join: None,
                extra: &[],
            })
        })
        .collect();
    // Each is alone, so each is the first of its datacenter and makes a root.
    assert!(
        wait_until(SPREAD, || apart.iter().all(|a| !active_root(a).is_empty())),
        "{}",
        apart[0].log()
    );
    let own = [active_root(&apart[0]), active_root(&apart[1])];
    assert_ne!(own[0], own[1]);
    let joined = apart[1].cli(&["join", &apart[0].gossip.to_string()]);
    assert!(joined.status.success(), "{joined:?}");
    // The newest root signs everywhere; the other stays trusted, and neither agent makes a
    // third.
    let agreed = || {
        let active = active_root(&apart[0]);
        own.contains(&active)
            && apart
                .iter()
                .all(|a| active_root(a) == active && root_count(a) == 2)
    };
    assert!(
        wait_until(SPREAD, agreed),
        "{}\n{}",
        apart[0].get("/v1/agent/connect/ca/roots"),
        apart[1].get("/v1/agent/connect/ca/roots")
    );
    let active = active_root(&apart[0]);
    for agent in &apart {
        let leaf = agent.get("/v1/agent/connect/ca/leaf/web");
        assert_eq!(
            leaf["ServiceURI"],
            "spiffe://murmur.consul/ns/default/dc/dc1/svc/web"
        );
        let roots = agent.get("/v1/agent/connect/ca/roots");
        let actives: Vec<&Value> = roots["Roots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["Active"] == true)
            .collect();
        assert_eq!(actives.len(), 1, "{roots}");
        assert_eq!(actives[0]["ID"], active.as_str());
    }
    std::thread::sleep(Duration::from_secs(4));
    assert!(apart.iter().all(|a| root_count(a) == 2), "no third root");
}

#[test]
fn without_a_key_the_sidecar_says_why_and_comes_up_when_the_agents_restart_with_one() {
    let first = Agent::start(Spec {
        name: "nokey-0",
        key: None,
        join: None,
        extra: &[],
    });
    let seed = first.gossip;
    let second = Agent::start(Spec {
        name: "nokey-1",
        key: None,
        join: Some(seed),
        extra: &[],
    });
    let mut agents = [first, second];
    // nokey-0 makes the root; nokey-1 holds no key and cannot ask for leaves unencrypted.
    let body = br#"{"Name": "db", "ID": "db-1", "Port": 1, "Connect": {"SidecarService": {}}}"#;
    assert!(
        wait_until(SPREAD, || {
            let (_, headers, _) = agents[1].request("PUT", "/v1/agent/service/register", body);
            common::header(&headers, "x-murmur-warning").is_some_and(|w| w.contains("--encrypt"))
        }),
        "{}",
        agents[1].log()
    );
    assert!(
        wait_until(SPREAD, || proxy_check_output_of(
            &agents[1],
            "db-1-sidecar-proxy"
        )
        .contains("--encrypt")),
        "{:?}",
        proxy_check_output_of(&agents[1], "db-1-sidecar-proxy")
    );

    // Restarted with a key, on the same data dirs, and nothing registered again: the sidecar
    // gets its leaf and goes on to check its app (none listens on port 1).
    let key = keygen();
    for agent in &mut agents {
        assert!(agent.terminate());
        agent.key = Some(key.clone());
    }
    agents[0].start_again(None, &[]);
    agents[1].start_again(Some(seed), &[]);
    assert!(
        wait_until(Duration::from_secs(60), || proxy_check_output_of(
            &agents[1],
            "db-1-sidecar-proxy"
        )
        .contains("the app at")),
        "{:?}\n{}",
        proxy_check_output_of(&agents[1], "db-1-sidecar-proxy"),
        agents[1].log()
    );
}

#[test]
fn the_native_sdk_made_before_there_is_a_root_says_why_and_works_once_there_is_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agents = cluster_with("sk", 2, &keygen(), OWN_ROOT);
    agents[1].register(r#"{"Name": "api", "ID": "api-1", "Port": 1}"#);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Both sides are made with no root in the cluster: neither fails, and the client says why.
    let listener = runtime
        .block_on(murmur_proxy::native::MeshListener::bind(
            &agents[1].http.to_string(),
            "api-1",
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
        .unwrap();
    let client = runtime
        .block_on(MeshClient::new(&agents[0].http.to_string(), "web"))
        .unwrap();
    let early = runtime.block_on(client.connect("api")).err().unwrap();
    assert!(early.to_string().contains("has no CA root yet"), "{early}");
    runtime.spawn(async move {
        while let Ok((mut stream, _caller)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = stream.read_to_end(&mut buf).await;
                let _ = stream.write_all(&buf).await;
                let _ = stream.shutdown().await;
            });
        }
    });

    // A root and an intention appear: the same client and listener come up by themselves.
    assert!(agents[0].cli(&["ca", "rotate"]).status.success());
    assert!(
        agents[0]
            .cli(&["intention", "create", "-allow", "web", "api"])
            .status
            .success()
    );
    let exchange = || {
        runtime.block_on(async { common::mesh_exchange(client.connect("api").await, b"hi").await })
    };
    assert!(
        wait_until(Duration::from_secs(60), || exchange().as_deref()
            == Some(&b"hi"[..])),
        "{:?}\n{}",
        runtime.block_on(client.connect("api")).err(),
        agents[1].get("/v1/health/service/api-sidecar-proxy")
    );
}

#[test]
fn an_agent_run_sidecar_that_fails_is_started_again_and_all_come_back_after_kill_9() {
    let mut agents = cluster("rs", 2, &keygen());
    allow_web_to_db(&agents[0]);
    let EchoApp { addr: app, .. } = echo_app();
    agents[1].register_db_with_sidecar(app.port());
    // web's upstream port is taken: its sidecar fails at start, and the agent starts it again
    // with backoff instead of leaving it stopped.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = register_web_with_db_upstream(&agents[0], taken.local_addr().unwrap().port());
    assert!(
        wait_until(SPREAD, || agents[0].log().contains("starting it again")),
        "{}",
        agents[0].log()
    );
    drop(taken);
    assert!(
        wait_until(Duration::from_secs(60), || carries(upstream)),
        "the sidecar came back once its port was free:\n{}",
        agents[0].log()
    );

    // kill -9 of the agent that runs web's sidecar: an open flow ends (no hang), and once the
    // agent is back on its data dir its sidecars are too, with nothing registered again.
    let mut open = TcpStream::connect(upstream).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    open.read_exact(&mut back).unwrap();
    agents[0].kill9();
    let ended = open.read(&mut back);
    assert!(
        matches!(ended, Ok(0))
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the open flow ended: {ended:?}"
    );
    let seed = agents[1].gossip;
    let restarted = std::time::Instant::now();
    agents[0].start_again(Some(seed), &[]);
    assert!(
        wait_until(SPREAD, || carries(upstream)),
        "new connections within 30 s of the restart:\n{}",
        agents[0].log()
    );
    eprintln!(
        "new connections flowed {:?} after the restart",
        restarted.elapsed()
    );
}

#[test]
fn a_terminating_gateway_fronts_a_service_outside_the_mesh_under_its_intentions() {
    let agents = cluster("tg", 2, &keygen());
    // A database on a host murmur does not run on: in the catalog through catalog/register.
    let app = common::echo_app();
    agents[0].register_external("legacy-host", "legacy-db", app.addr.port());
    let gateway = common::Gateway::start(
        &agents[0],
        &[
            "--kind",
            "terminating",
            "--service",
            "terminating-gateway",
            "--link",
            "legacy-db",
        ],
    );
    let upstream = agents[1].register_with_upstream("web", 8080, "legacy-db", free_port());

    // The gateway is found as legacy-db's mesh endpoint, passing while legacy-db answers.
    assert!(
        wait_until(Duration::from_secs(30), || agents[1]
            .get("/v1/health/service/legacy-db-sidecar-proxy?passing")
            .as_array()
            .is_some_and(|l| l.len() == 1)),
        "the terminating gateway's endpoint for legacy-db"
    );
    // Default deny (agents with data dirs): refused by the gateway, the app never reached.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!carries(upstream), "reached without an intention");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
    let out = agents[0].cli(&["intention", "create", "-allow", "web", "legacy-db"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(30), || carries(upstream)),
        "web reaches legacy-db through the terminating gateway"
    );
    assert!(app.accepted.load(Ordering::SeqCst) >= 1);
    assert!(
        gateway.metric(
            "murmur_proxy_inbound_connections_total{source=\"web\",destination=\"legacy-db\"}"
        ) >= 1.0,
        "the gateway counted the connection it terminated"
    );
    let out = agents[0].cli(&[
        "intention",
        "create",
        "-replace",
        "-deny",
        "web",
        "legacy-db",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(30), || !carries(upstream)),
        "a deny closes it again"
    );
}

/// A TLS echo server on loopback with `pki`'s server certificate: each connection's bytes,
/// read to the client's close, are sent back.
fn tls_echo(pki: &pki::Pki) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut got = Vec::new();
                if tls.read_to_end(&mut got).is_ok() {
                    let _ = tls.write_all(&got);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
    });
    addr
}

#[test]
fn a_terminating_gateway_speaks_tls_to_a_service_that_asks_for_it() {
    let agents = cluster("tgt", 2, &keygen());
    let pki = pki::Pki::new();
    let service = tls_echo(&pki);
    agents[0].register_external("secure-host", "secure-db", service.port());
    let tls = format!("secure-db={}", pki.arg("ca.pem"));
    let _gateway = common::Gateway::start(
        &agents[0],
        &[
            "--kind",
            "terminating",
            "--link",
            "secure-db",
            "--link-tls",
            &tls,
        ],
    );
    let upstream = agents[1].register_with_upstream("web", 8080, "secure-db", free_port());
    let out = agents[0].cli(&["intention", "create", "-allow", "web", "secure-db"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(30), || carries(upstream)),
        "web reaches secure-db over TLS through the terminating gateway"
    );
    // Half a flag is refused at start, naming the form.
    let out = Command::new(common::BIN)
        .args([
            "connect",
            "gateway",
            "--kind",
            "terminating",
            "--address",
            "127.0.0.1:0",
        ])
        .args(["--link", "secure-db", "--link-tls", "secure-db"])
        .env("MURMUR_HTTP_ADDR", agents[0].http.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NAME=CA_FILE"), "{stderr}");
    // The same service under another name, trusted with a CA its certificate does not chain
    // to: the gateway's handshake with it fails and nothing is carried.
    agents[0].register_external("secure-host", "spoofed-db", service.port());
    let wrong = format!("spoofed-db={}", pki.arg("other-ca.pem"));
    let _wrong_gateway = common::Gateway::start(
        &agents[0],
        &[
            "--kind",
            "terminating",
            "--id",
            "tg2",
            "--link",
            "spoofed-db",
            "--link-tls",
            &wrong,
        ],
    );
    let spoofed = agents[1].register_with_upstream("api", 8081, "spoofed-db", free_port());
    let out = agents[0].cli(&["intention", "create", "-allow", "api", "spoofed-db"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(30), || agents[1]
            .get("/v1/health/service/spoofed-db-sidecar-proxy?passing")
            .as_array()
            .is_some_and(|l| l.len() == 1)),
        "the second gateway's endpoint"
    );
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        assert!(
            !carries(spoofed),
            "carried to a service whose certificate is not trusted"
        );
    }
}
