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
    assert!(common::wait_until(Duration::from_secs(5), || http(
        agent.http,
        "GET",
        "/v1/agent/self",
        b""
    )
    .is_ok_and(|(s, _, _)| s == 200)));

    let agent = self::agent("capped-total", &["--http-max-conns", "8"]);
    let held = open(agent.http, 8, b"");
    let (status, _, body) = http(agent.http, "GET", "/v1/agent/self", b"").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--http-max-conns"), "{body}");
    drop(held);
    assert!(common::wait_until(Duration::from_secs(5), || http(
        agent.http,
        "GET",
        "/v1/agent/self",
        b""
    )
    .is_ok_and(|(s, _, _)| s == 200)));
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
