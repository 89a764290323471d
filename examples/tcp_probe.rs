//! A TCP latency probe for `bench/proxy.sh`, in Rust so the probe's own cost stays far below
//! what it measures (a Python loop adds tens of microseconds per round trip).
//!
//! ```text
//! tcp_probe echo ADDR            # echo server: every connection gets its bytes back
//! tcp_probe pingpong ADDR N      # N round trips of 64 bytes on one connection
//! tcp_probe paced ADDR N US      # the same with a pause of US microseconds after each
//! tcp_probe connect ADDR N       # N new connections, each with a 1-byte round trip
//! ```
//! The two clients print `p50_us p99_us` on one line.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[path = "support/percentiles.rs"]
mod percentiles;
use percentiles::report;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tcp_probe echo ADDR | pingpong ADDR N | paced ADDR N US | connect ADDR N";
    let (mode, addr) = match (args.get(1), args.get(2)) {
        (Some(mode), Some(addr)) => (mode.as_str(), addr.as_str()),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let number = |i: usize| -> u64 {
        args.get(i).and_then(|n| n.parse().ok()).unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2)
        })
    };
    let count = || number(3) as usize;
    match mode {
        "echo" => echo(addr),
        "pingpong" => report(pingpong(addr, count(), Duration::ZERO)),
        "paced" => report(pingpong(addr, count(), Duration::from_micros(number(4)))),
        "connect" => report(connect(addr, count())),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

fn echo(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind the echo address");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut reader = stream.try_clone().expect("clone the socket");
            let mut writer = stream;
            let mut buf = [0u8; 65536];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if writer.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// `n` timed round trips, each followed by `pause` (a paced client leaves the path idle in
/// between, as most request traffic does).
fn pingpong(addr: &str, n: usize, pause: Duration) -> Vec<f64> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let ping = [7u8; 64];
    let mut pong = [0u8; 64];
    // Warm up: the first exchanges open the path (a proxy's stream, caches).
    for _ in 0..100 {
        stream.write_all(&ping).expect("send");
        stream.read_exact(&mut pong).expect("receive");
    }
    (0..n)
        .map(|_| {
            let start = Instant::now();
            stream.write_all(&ping).expect("send");
            stream.read_exact(&mut pong).expect("receive");
            let took = start.elapsed().as_secs_f64() * 1e6;
            std::thread::sleep(pause);
            took
        })
        .collect()
}

fn connect(addr: &str, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            stream.write_all(b"x").expect("send");
            let mut one = [0u8; 1];
            stream.read_exact(&mut one).expect("receive");
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}
