//! Starts real `murmur` agents on loopback with free ports, talks to them over HTTP and the CLI,
//! and always stops them (on drop, even when a test fails).

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_murmur");

/// A port free for both TCP and UDP on 127.0.0.1 right now, and never handed out before in
/// this test process.
///
/// The port is released before an agent binds it, and the kernel may give the same port to the
/// next `bind(0)`: a test that picks WAN addresses first and starts agents after once had an
/// agent's HTTP API take a WAN address picked for an agent not started yet (CI, federation.rs).
/// Remembering every port handed out keeps one test's picks, and its neighbours' in the same
/// process, apart.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && HANDED_OUT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(port)
        {
            return port;
        }
    }
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// One agent process.
pub struct Agent {
    pub name: String,
    pub gossip: SocketAddr,
    pub http: SocketAddr,
    /// DNS address (UDP and TCP).
    pub dns: SocketAddr,
    pub data_dir: PathBuf,
    pub key: Option<String>,
    child: Option<Child>,
    log: PathBuf,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

/// How to start an agent.
pub struct Spec<'a> {
    pub name: &'a str,
    pub key: Option<&'a str>,
    pub join: Option<SocketAddr>,
    pub extra: &'a [&'a str],
}

impl Agent {
    /// An agent with a fresh data dir and free ports, not started yet.
    fn prepare(name: &str, key: Option<&str>) -> Self {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        Self {
            name: name.to_owned(),
            gossip: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dns: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir: dir.path().join("data"),
            key: key.map(str::to_owned),
            child: None,
            log: dir.path().join("agent.log"),
            _dir: dir,
        }
    }

    /// Starts an agent and waits until its HTTP API answers. A port found free can be taken
    /// by another test before the agent binds it (ports are picked, then released); an agent
    /// that failed on a taken port is started again on fresh ports (three attempts in all).
    pub fn start(spec: Spec<'_>) -> Self {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut agent = Self::prepare(spec.name, spec.key);
            agent.spawn(spec.join, spec.extra);
            wait_until(Duration::from_secs(10), || {
                agent.answers() || agent.exited()
            });
            // Ports are picked free, then bound by the agent: another process can take one in
            // between. The agent says so in its own words ("... is already in use"), the OS in
            // its ("Address already in use").
            let port_taken = agent.exited() && agent.log().contains("already in use");
            if port_taken && attempt < ATTEMPTS {
                continue;
            }
            agent.wait_ready("come up");
            return agent;
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Whether the agent's API answers (`/v1/status/leader`, which needs no ACL token).
    fn answers(&self) -> bool {
        self.try_get("/v1/status/leader").is_some()
    }

    /// Whether the agent's process has ended.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    fn wait_ready(&self, what: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.answers()),
            "agent {} did not {what}:\n{}",
            self.name,
            self.log()
        );
    }

    fn command(&self, join: Option<SocketAddr>, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--node", &self.name])
            .args([
                "--bind",
                &self.gossip.to_string(),
                "--http-addr",
                &self.http.to_string(),
                "--dns-addr",
                &self.dns.to_string(),
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra)
            .env("MURMUR_LOG", "info,murmur=debug");
        if let Some(key) = &self.key {
            cmd.args(["--encrypt", key]);
        }
        if let Some(seed) = join {
            cmd.args(["--join", &seed.to_string()]);
        }
        cmd
    }

    fn spawn(&mut self, join: Option<SocketAddr>, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command(join, extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn murmur agent");
        self.child = Some(child);
    }

    /// Runs an agent to completion (for agents expected to fail at start).
    pub fn run_to_exit(spec: Spec<'_>) -> Output {
        Self::prepare(spec.name, spec.key).rerun_to_exit(spec.join, spec.extra)
    }

    /// Runs this (stopped) agent again on its data dir to completion, for a start expected
    /// to fail.
    pub fn rerun_to_exit(&self, join: Option<SocketAddr>, extra: &[&str]) -> Output {
        let mut child = self
            .command(join, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if !exits_within(&mut child, Duration::from_secs(20)) {
            let _ = child.kill();
            panic!("agent expected to exit kept running");
        }
        child.wait_with_output().unwrap()
    }

    /// The process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no leave, the cluster must detect the failure.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
            // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        self.wait_exit()
    }

    /// Waits (bounded) for the process to exit by itself; returns whether it exited with 0.
    pub fn wait_exit(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let clean =
            exits_within(&mut child, Duration::from_secs(10)) && child.wait().unwrap().success();
        let _ = child.kill();
        let _ = child.wait();
        clean
    }

    /// Kills the agent and starts it again with the same name, ports and data dir.
    pub fn restart(&mut self, join: Option<SocketAddr>) {
        self.kill9();
        self.start_again(join, &[]);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_get(&self, path: &str) -> Option<Value> {
        let (status, _, body) = http(self.http, "GET", path, b"").ok()?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    pub fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} on {} failed:\n{}", self.name, self.log()))
    }

    /// Status code of `name` in this agent's member list (1 alive, 2 leaving, 3 left, 4 failed).
    pub fn status_of(&self, name: &str) -> Option<u64> {
        let members = self.try_get("/v1/agent/members")?;
        members
            .as_array()?
            .iter()
            .find(|m| m["Name"] == name)
            .and_then(|m| m["Status"].as_u64())
    }

    /// The sum of the agent's Prometheus metric lines that start with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, _, text) = self.request("GET", "/v1/agent/metrics?format=prometheus", b"");
        metric_sum(&text, prefix)
    }

    /// Sends a request; panics with the agent's log when it cannot be sent.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        http(self.http, method, path, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} on {} failed: {e}\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// Starts the agent again (after `kill9` or `terminate`) with the same name, ports and
    /// data dir, joining through `join`.
    pub fn start_again(&mut self, join: Option<SocketAddr>, extra: &[&str]) {
        self.spawn(join, extra);
        self.wait_ready("come back");
    }

    /// Registers a service on this agent (`PUT /v1/agent/service/register`), which must
    /// answer 200.
    pub fn register(&self, definition: &str) {
        let (status, _, body) =
            self.request("PUT", "/v1/agent/service/register", definition.as_bytes());
        assert_eq!(status, 200, "register on {}: {body}", self.name);
    }

    /// Registers `{name}-1` (service port `service_port`) with a sidecar whose `upstream`
    /// listens on loopback `local_port`; the address the service dials.
    pub fn register_with_upstream(
        &self,
        name: &str,
        service_port: u16,
        upstream: &str,
        local_port: u16,
    ) -> SocketAddr {
        self.register(&format!(
            r#"{{"Name": "{name}", "ID": "{name}-1", "Port": {service_port}, "Connect": {{"SidecarService": {{"Proxy":
                {{"Upstreams": [{{"DestinationName": "{upstream}", "LocalBindPort": {local_port}}}]}}}}}}}}"#
        ));
        SocketAddr::from(([127, 0, 0, 1], local_port))
    }

    /// Registers `service` on external node `node` at 127.0.0.1:`port` through
    /// `/v1/catalog/register` (a service no agent runs), which must answer 200.
    pub fn register_external(&self, node: &str, service: &str, port: u16) {
        let body = format!(
            r#"{{"Node": "{node}", "Address": "127.0.0.1", "Service": {{"Service": "{service}", "Port": {port}}}}}"#
        );
        let (status, _, answer) = self.request("PUT", "/v1/catalog/register", body.as_bytes());
        assert_eq!(status, 200, "catalog register on {}: {answer}", self.name);
    }

    /// Writes the intention `source` → `destination` deciding `action` (`allow` or `deny`).
    pub fn intend(&self, source: &str, destination: &str, action: &str) {
        let path =
            format!("/v1/connect/intentions/exact?source={source}&destination={destination}");
        let body = format!(r#"{{"Action": "{action}"}}"#);
        let (status, _, answer) = self.request("PUT", &path, body.as_bytes());
        assert_eq!(
            (status, answer.trim()),
            (200, "true"),
            "intention on {}",
            self.name
        );
    }

    /// Registers db-1 (its app on `port`) with Consul's sidecar block.
    pub fn register_db_with_sidecar(&self, port: u16) {
        self.register(&format!(
            r#"{{"Name": "db", "ID": "db-1", "Port": {port}, "Connect": {{"SidecarService": {{}}}}}}"#
        ));
    }

    /// Runs a CLI command against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("MURMUR_HTTP_ADDR", self.http.to_string())
            .output()
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The node names `/v1/catalog/nodes` lists on `agent`, in its order.
pub fn node_names(agent: &Agent) -> Vec<String> {
    agent
        .get("/v1/catalog/nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap().to_owned())
        .collect()
}

/// Status, headers (lower-cased names) and body of an HTTP answer.
pub type Answer = (u16, Vec<(String, String)>, String);

/// The value of header `name` (lower case) of an answer.
pub fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Polls a child until it exits or `limit` passes; returns whether it exited.
fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A minimal HTTP/1.1 client (one request per connection), enough for JSON APIs.
/// Returns status, headers (lower-cased names) and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<Answer> {
    http_as(addr, method, path, body, None)
}

/// [`http`] with an ACL token in `X-Consul-Token`.
pub fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let token = token
        .map(|t| format!("X-Consul-Token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{token}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

/// A fresh gossip key from `murmur keygen`.
pub fn keygen() -> String {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Flags of agents that bring their own CA root (`ca init`, `ca rotate`) and never make one
/// by themselves: for tests that count roots or need a datacenter with none.
pub const OWN_ROOT: &[&str] = &["--ca-bootstrap=false"];

/// A seed plus `n - 1` agents joined through it, all seeing all alive.
pub fn cluster(prefix: &str, n: usize, key: &str) -> Vec<Agent> {
    cluster_with(prefix, n, key, &[])
}

/// [`cluster`] with `extra` flags for every agent.
pub fn cluster_with(prefix: &str, n: usize, key: &str, extra: &[&str]) -> Vec<Agent> {
    let seed = Agent::start(Spec {
        name: &format!("{prefix}0"),
        key: Some(key),
        join: None,
        extra,
    });
    let seed_addr = seed.gossip;
    let mut agents = vec![seed];
    for i in 1..n {
        agents.push(Agent::start(Spec {
            name: &format!("{prefix}{i}"),
            key: Some(key),
            join: Some(seed_addr),
            extra,
        }));
    }
    let converged = wait_until(Duration::from_secs(20), || {
        agents
            .iter()
            .all(|a| agents.iter().all(|b| a.status_of(&b.name) == Some(1)))
    });
    assert!(converged, "{n} agents did not all see each other alive");
    agents
}

/// Debian's interpreter, where `python3-consul` installs (a `python3` earlier on PATH may be
/// another one).
const PYTHON: &str = "/usr/bin/python3";

/// Whether Debian's python3-consul is installed; says the test is skipped when not.
pub fn has_python_consul() -> bool {
    let has = Command::new(PYTHON)
        .args(["-c", "import consul"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("SKIPPED: python3-consul is not installed (apt-get install python3-consul)");
    }
    has
}

/// Runs the client script `tests/clients/<script>` with `args` under Debian's interpreter.
pub fn python_client(script: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    Command::new(PYTHON).arg(path).args(args).output().unwrap()
}

/// A DNS query for `name`, with id 42 and recursion desired, as stub resolvers send.
pub fn dns_request(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(42)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// Asks the DNS server at `dns` about `name` over UDP, waiting at most 5 s.
pub fn dns_udp(dns: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(&dns_request(name, qtype), dns).unwrap();
    let mut buf = [0u8; 4096];
    let (len, _) = socket.recv_from(&mut buf).expect("a DNS answer over UDP");
    Message::from_vec(&buf[..len]).unwrap()
}

/// `dig`'s answer lines for `name` of `qtype` from the DNS server at `dns` (`+short`); none
/// when dig is not installed (`.ci/run` installs it).
pub fn dig(dns: SocketAddr, name: &str, qtype: &str) -> Option<String> {
    let out = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+short",
            name,
            qtype,
        ])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An echo server standing in for db's app; counts the connections that brought it data (the
/// proxy's health probes connect and bring none), and stops listening (new connections
/// refused) when `stop` is set.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
}

pub fn echo_app() -> EchoApp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (count, stopped) = (accepted.clone(), stop.clone());
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                if std::io::copy(&mut reader, &mut stream).is_ok_and(|n| n > 0) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    EchoApp {
        addr,
        accepted,
        stop,
    }
}

/// Sends `payload` through `upstream` and returns what came back (an echo, if allowed).
pub fn round_trip(upstream: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut writer = stream.try_clone()?;
    let sent = payload.to_vec();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    stream.read_to_end(&mut back)?;
    let _ = sender.join();
    Ok(back)
}

/// Whether a connection to `upstream` (a sidecar's upstream listener) echoes "hi" back.
pub fn carries(upstream: SocketAddr) -> bool {
    round_trip(upstream, b"hi").is_ok_and(|b| b == b"hi")
}

/// Writes `payload` on a mesh stream (the SDK's dial, as it came), closes the sending side
/// and reads what comes back; `None` when any step failed.
pub async fn mesh_exchange(
    stream: Result<murmur_proxy::native::MeshStream, murmur_proxy::native::MeshError>,
    payload: &[u8],
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream.ok()?;
    stream.write_all(payload).await.ok()?;
    stream.shutdown().await.ok()?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.ok()?;
    Some(back)
}

impl Agent {
    /// The resident memory of the agent's process, in KiB (0 when it is not running).
    pub fn rss_kib(&self) -> u64 {
        let Some(child) = &self.child else { return 0 };
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

/// A tiny HTTP server on loopback answering every request with the status in `code` (and a
/// body naming it); runs until the test process ends (its thread only accepts).
pub fn health_server(code: Arc<std::sync::atomic::AtomicU16>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let status = code.load(Ordering::SeqCst);
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: 10\r\nConnection: close\r\n\r\nstatus {status}"
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    addr
}

/// A `murmur connect gateway` process beside `agent` (`--kind mesh` unless `args` say
/// otherwise), on free loopback ports, stopped when dropped.
pub struct Gateway {
    pub child: Child,
    pub wan: SocketAddr,
    pub metrics: SocketAddr,
}

impl Gateway {
    pub fn start(agent: &Agent, args: &[&str]) -> Self {
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (lan, wan, metrics) = (port(0), port(1), port(2));
        let child = Command::new(BIN)
            .args(["connect", "gateway", "--address"])
            .arg(lan.to_string())
            .arg("--wan-address")
            .arg(wan.to_string())
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .arg("--http-addr")
            .arg(agent.http.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            wan,
            metrics,
        }
    }

    /// The sum of the gateway's metric lines that start with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        http(self.metrics, "GET", "/metrics", b"")
            .map(|(_, _, text)| metric_sum(&text, prefix))
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the values of the Prometheus lines of `text` that start with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The datacenters of the roots in a `/v1/agent/connect/ca/roots` answer, sorted.
pub fn root_datacenters(roots: &Value) -> Vec<String> {
    let mut dcs: Vec<String> = roots["Roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["Datacenter"].as_str().map(str::to_owned))
        .collect();
    dcs.sort();
    dcs.dedup();
    dcs
}
