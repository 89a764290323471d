//! The DNS interface (Consul's): UDP and TCP on `--dns-addr` (127.0.0.1:8600 by default),
//! answered from this agent's replica by [`answer`]. Over UDP a reply is cut to the client's
//! buffer (512 bytes, or its EDNS size) with the TC bit set, so the client retries over TCP.

pub mod answer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub use answer::DnsSettings;

use crate::agent::runtime::Agent;

/// Smallest UDP reply every client accepts (RFC 1035); EDNS clients may ask for more.
const UDP_LIMIT: usize = 512;
/// A TCP client idle this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Binds `addr` (UDP and TCP) and serves DNS from `agent` until the process ends.
pub async fn serve(
    agent: Arc<Agent>,
    addr: SocketAddr,
    settings: DnsSettings,
) -> anyhow::Result<()> {
    let in_use = |e: std::io::Error| {
        anyhow::anyhow!("cannot serve DNS on {addr}: {e} (choose another address with --dns-addr)")
    };
    let udp = UdpSocket::bind(addr).await.map_err(in_use)?;
    let tcp = TcpListener::bind(addr).await.map_err(in_use)?;
    let settings = Arc::new(settings);
    tokio::spawn(serve_udp(agent.clone(), udp, settings.clone()));
    tokio::spawn(serve_tcp(agent, tcp, settings));
    Ok(())
}

/// Answers `packet` from the agent's current replica.
fn respond(
    agent: &Arc<Agent>,
    settings: &DnsSettings,
    packet: &[u8],
    limit: Option<usize>,
) -> Option<Vec<u8>> {
    metrics::counter!("murmur_dns_queries", "transport" => if limit.is_some() { "udp" } else { "tcp" })
        .increment(1);
    agent.view(|v| {
        let failed = v.failed_owners();
        let view = v.replica().catalog(&failed);
        answer::respond(packet, &view, settings, &mut rand::rng(), limit)
    })
}

async fn serve_udp(agent: Arc<Agent>, socket: UdpSocket, settings: Arc<DnsSettings>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!(%err, "DNS receive failed");
                continue;
            }
        };
        // A packet too short to answer is dropped: there is nobody to tell.
        if let Some(reply) = respond(&agent, &settings, &buf[..len], Some(UDP_LIMIT))
            && let Err(err) = socket.send_to(&reply, from).await
        {
            tracing::debug!(%err, %from, "DNS reply not sent");
        }
    }
}

async fn serve_tcp(agent: Arc<Agent>, listener: TcpListener, settings: Arc<DnsSettings>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(agent.clone(), stream, settings.clone()));
    }
}

/// Answers length-prefixed queries on one connection until the client stops or idles.
async fn serve_connection(agent: Arc<Agent>, mut stream: TcpStream, settings: Arc<DnsSettings>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = respond(&agent, &settings, &packet, None) else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Checks the `--dns-domain` value: DNS labels separated by dots.
pub fn parse_domain(text: &str) -> anyhow::Result<String> {
    let domain = text.trim_matches('.').to_ascii_lowercase();
    let valid = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid
        .then_some(domain)
        .with_context(|| format!("--dns-domain {text:?} is not a DNS domain: use labels of letters, digits and '-' separated by dots, like consul"))
}
