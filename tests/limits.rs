//! Hardening end to end: the HTTP API's limits on held-open and too many connections, each
//! answered with a clear error, and the agent still answering afterwards.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Agent, Spec, http};

fn agent(name: &str, extra: &[&str]) -> Agent {
    Agent::start(Spec {
        name,
        key: None,
        join: None,
        extra,
    })
}

/// Whether the server has closed `stream` (a read sees the end, or a reset).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => true,
        // A 408 (or other answer) followed by the close counts as closed too.
        Ok(_) => stream.read(&mut buf).is_ok_and(|n| n == 0),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Whether the agent at `addr` answers a request again within 5 s.
fn answers_again(addr: SocketAddr) -> bool {
    common::wait_until(Duration::from_secs(5), || {
        http(addr, "GET", "/v1/agent/self", b"").is_ok_and(|(s, _, _)| s == 200)
    })
}

fn open(addr: SocketAddr, n: usize, send: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(send).unwrap();
            stream
        })
        .collect()
}

#[test]
fn connections_that_send_nothing_or_half_a_header_are_closed_after_the_header_timeout() {
    let agent = agent("slowloris", &["--http-header-timeout", "1s"]);
    let started = Instant::now();
    let mut silent = open(agent.http, 100, b"");
    let mut half = open(
        agent.http,
        100,
        b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n",
    );
    // A keep-alive connection idle after an answer is closed the same way.
    let mut kept = TcpStream::connect(agent.http).unwrap();
    kept.write_all(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 256];
    assert!(kept.read(&mut answer).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(2500));
    let held = silent
        .iter_mut()
        .chain(&mut half)
        .map(closed_by_server)
        .filter(|closed| !closed)
        .count();
    assert_eq!(
        held,
        0,
        "connections still held {:?} after start",
        started.elapsed()
    );
    assert!(closed_by_server(&mut kept), "an idle keep-alive connection");
    let (status, _, _) = http(agent.http, "GET", "/v1/agent/self", b"").unwrap();
    assert_eq!(status, 200, "the agent answers afterwards");
}

#[test]
fn past_the_connection_caps_new_connections_get_429_or_503_naming_the_flag() {
    // Every test client is 127.0.0.1: the per-client cap is met first when it is the lower.
    let agent = agent("capped", &["--http-max-conns-per-client", "5"]);
    let held = open(agent.http, 5, b"");
    let (status, headers, body) = http(agent.http, "GET", "/v1/agent/self", b"").unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("--http-max-conns-per-client"), "{body}");
    assert_eq!(
        common::header(&headers, "retry-after").as_deref(),
        Some("1")
    );
    drop(held);
    assert!(answers_again(agent.http));

    let agent = self::agent("capped-total", &["--http-max-conns", "8"]);
    let held = open(agent.http, 8, b"");
    let (status, _, body) = http(agent.http, "GET", "/v1/agent/self", b"").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--http-max-conns"), "{body}");
    drop(held);
    assert!(answers_again(agent.http));
}

#[test]
fn a_zero_cap_is_refused_at_start_with_the_flag_named() {
    let out = Agent::run_to_exit(Spec {
        name: "zero-cap",
        key: None,
        join: None,
        extra: &["--http-max-conns", "0"],
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--http-max-conns 0"), "{stderr}");
}

#[test]
fn oversized_writes_get_413_naming_the_limit_and_leave_nothing_behind() {
    let agent = agent("sizes", &[]);
    let put = |path: &str, body: &[u8]| http(agent.http, "PUT", path, body).unwrap();
    let big_tags = |bytes: usize| {
        let tag = "t".repeat(1000);
        let tags: Vec<String> = (0..bytes / 1004).map(|i| format!("\"{i}{tag}\"")).collect();
        tags.join(",")
    };

    // A 1.5 MB service registration (once accepted and gossiped to every agent).
    let body = format!(r#"{{"Name": "huge", "Tags": [{}]}}"#, big_tags(1_500_000));
    let (status, _, text) = put("/v1/agent/service/register", body.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("limit of 65536 bytes"), "{text}");
    let services = agent.get("/v1/agent/services");
    assert!(
        services.get("huge").is_none(),
        "nothing written: {services}"
    );

    // A 1 MB intention description.
    let body = format!(
        r#"{{"SourceName": "web", "DestinationName": "db", "Action": "allow", "Description": "{}"}}"#,
        "d".repeat(1_000_000)
    );
    let (status, _, text) = put(
        "/v1/connect/intentions/exact?source=web&destination=db",
        body.as_bytes(),
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("an intention of"), "{text}");

    // A KV value over Consul's 512 KiB.
    let (status, _, text) = put("/v1/kv/big", &vec![b'v'; 600 * 1024]);
    assert_eq!(status, 413, "{text}");

    // Services that each fit, until the node record as a whole would not.
    let mut refused = None;
    for i in 0..12 {
        let body = format!(r#"{{"Name": "s{i}", "Tags": [{}]}}"#, big_tags(60_000));
        let (status, _, text) = put("/v1/agent/service/register", body.as_bytes());
        if status != 200 {
            refused = Some((i, status, text));
            break;
        }
    }
    let (i, status, text) = refused.expect("the node record is capped");
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("node record"), "{text}");
    assert!(i >= 8, "{i} services of 60 KB fit under 512 KiB");

    // A TTL check's long output is kept cut to 4 KiB, as Consul cuts it.
    let (status, _, text) = put(
        "/v1/agent/check/register",
        br#"{"Name": "beat", "TTL": "60s"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let body = format!(
        r#"{{"Status": "passing", "Output": "{}"}}"#,
        "o".repeat(10_000)
    );
    let (status, _, text) = put("/v1/agent/check/update/beat", body.as_bytes());
    assert_eq!(status, 200, "{text}");
    let checks = agent.get("/v1/agent/checks");
    assert_eq!(checks["beat"]["Output"].as_str().map(str::len), Some(4096));

    let (status, _, _) = http(agent.http, "GET", "/v1/agent/self", b"").unwrap();
    assert_eq!(status, 200, "the agent answers afterwards");
}
