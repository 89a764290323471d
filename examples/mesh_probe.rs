//! A latency probe through the native SDK, for `bench/proxy.sh`: `tcp_probe`'s ping-pong and
//! new-connection measurements with a `MeshClient` as the client, so the only proxy in the
//! path is the destination's sidecar (or none, if the destination is native).
//!
//! ```text
//! mesh_probe SERVICE DESTINATION pingpong N   # N round trips of 64 bytes on one stream
//! mesh_probe SERVICE DESTINATION connect N    # N new streams, each with a 1-byte round trip
//! ```
//! Prints `p50_us p99_us` on one line. The destination must echo (`tcp_probe echo` behind a
//! sidecar); the agent is at `$MURMUR_HTTP_ADDR` (default `127.0.0.1:8500`).

use std::time::Instant;

use murmur_proxy::native::MeshClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/percentiles.rs"]
mod percentiles;

/// Exchanges done before timing: the first dial asks the agent and opens the QUIC connection.
const WARM_UP: usize = 100;

// One thread, as a latency-minded client would run it (and as the sidecars do).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let agent = std::env::var("MURMUR_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (service, destination, mode, count) = match &args[..] {
        [service, destination, mode, n] => match n.parse::<usize>() {
            Ok(n) => (service, destination, mode.as_str(), n),
            Err(_) => usage(),
        },
        _ => usage(),
    };
    let result = async {
        let client = MeshClient::new(&agent, service).await?;
        match mode {
            "pingpong" => pingpong(&client, destination, count).await,
            "connect" => connect(&client, destination, count).await,
            _ => usage(),
        }
    };
    match result.await {
        Ok(samples) => percentiles::report(samples),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: mesh_probe SERVICE DESTINATION pingpong|connect N");
    std::process::exit(2)
}

type Samples = Result<Vec<f64>, Box<dyn std::error::Error>>;

async fn pingpong(client: &MeshClient, destination: &str, n: usize) -> Samples {
    let mut stream = client.connect(destination).await?;
    let ping = [7u8; 64];
    let mut pong = [0u8; 64];
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let start = Instant::now();
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
        if i >= WARM_UP {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}

async fn connect(client: &MeshClient, destination: &str, n: usize) -> Samples {
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let start = Instant::now();
        let mut stream = client.connect(destination).await?;
        stream.write_all(b"x").await?;
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await?;
        if i >= WARM_UP {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}
