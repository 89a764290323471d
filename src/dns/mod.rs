//! The DNS interface (Consul's): UDP and TCP on `--dns-addr` (127.0.0.1:8600 by default),
//! answered from this agent's replica by [`answer`]. Over UDP a reply is cut to the client's
//! buffer (512 bytes, or its EDNS size) with the TC bit set, so the client retries over TCP.
//!
//! A name that carries another datacenter (`web.service.dc2.consul`) is answered in that
//! datacenter, forwarded as `?dc=` is ([`Forwarder`]), within a few seconds: SERVFAIL when
//! none of its gateways answered, NXDOMAIN when no datacenter of that name is known.

pub mod answer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_proto::op::ResponseCode;
use murmur_federation::forward::Forwarded;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use answer::Destination;
pub use answer::DnsSettings;

use crate::agent::runtime::Agent;
use crate::forward::Forwarder;
use crate::http::query::{Executed, Executor};

/// What answers a query: the agent's replica, or another datacenter through the forwarder.
struct Answerer {
    agent: Arc<Agent>,
    forwarder: Arc<Forwarder>,
    queries: Arc<Executor>,
    settings: DnsSettings,
}

/// Smallest UDP reply every client accepts (RFC 1035); EDNS clients may ask for more.
const UDP_LIMIT: usize = 512;
/// UDP queries for other datacenters waiting for their answer at once, at most.
const MAX_WAITING: usize = 256;
/// A TCP client idle this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Binds `addr` (UDP and TCP) and serves DNS from `agent` until the process ends; queries
/// for other datacenters go through `forwarder`, prepared queries through `queries`.
pub async fn serve(
    agent: Arc<Agent>,
    addr: SocketAddr,
    settings: DnsSettings,
    forwarder: Arc<Forwarder>,
    queries: Arc<Executor>,
) -> anyhow::Result<()> {
    let in_use = |e: std::io::Error| {
        anyhow::anyhow!("cannot serve DNS on {addr}: {e} (choose another address with --dns-addr)")
    };
    let udp = UdpSocket::bind(addr).await.map_err(in_use)?;
    let tcp = TcpListener::bind(addr).await.map_err(in_use)?;
    let answerer = Arc::new(Answerer {
        agent,
        forwarder,
        queries,
        settings,
    });
    tokio::spawn(serve_udp(answerer.clone(), Arc::new(udp)));
    tokio::spawn(serve_tcp(answerer, tcp));
    Ok(())
}

/// Answers `packet` from the agent's current replica, in `settings`; `None` when the bytes
/// are not a DNS message at all.
pub fn answer_locally(
    agent: &Agent,
    settings: &DnsSettings,
    packet: &[u8],
    limit: Option<usize>,
) -> Option<Vec<u8>> {
    agent.view(|v| {
        let failed = v.failed_owners();
        let view = v.replica().catalog(&failed);
        // With ACLs on, answers show only what the anonymous token may read (from the ACL
        // cache, emptied whenever ACL data changes).
        let filtered;
        let settings = match &settings.acl {
            None => settings,
            Some(acl) => {
                filtered = DnsSettings {
                    reader: acl.anonymous(v.replica()),
                    ..settings.clone()
                };
                &filtered
            }
        };
        answer::respond(packet, &view, settings, &mut rand::rng(), limit)
    })
}

impl Answerer {
    /// Who answers `packet`.
    fn destination(&self, packet: &[u8]) -> Destination {
        answer::destination(packet, &self.settings)
    }

    /// Answers `packet` here, in the datacenter it names, or with the prepared query it names.
    async fn respond(&self, packet: Vec<u8>, limit: Option<usize>) -> Option<Vec<u8>> {
        self.respond_to(self.destination(&packet), packet, limit)
            .await
    }

    /// Answers `packet`, whose destination is `to`.
    async fn respond_to(
        &self,
        to: Destination,
        packet: Vec<u8>,
        limit: Option<usize>,
    ) -> Option<Vec<u8>> {
        let transport = if limit.is_some() { "udp" } else { "tcp" };
        metrics::counter!("murmur_dns_queries", "transport" => transport).increment(1);
        let dc = match to {
            Destination::Here => {
                return answer_locally(&self.agent, &self.settings, &packet, limit);
            }
            Destination::Query(name) => return self.prepared_query(&name, &packet, limit).await,
            Destination::Datacenter(dc) => dc,
        };
        let outcome = self
            .forwarder
            .dns(dc, packet.clone(), self.settings.domain.clone(), limit)
            .await;
        match outcome {
            Forwarded::Dns(reply) => Some(reply),
            Forwarded::NoPath => answer::failure(&packet, ResponseCode::NXDomain, &self.settings),
            Forwarded::NoServer | Forwarded::Http { .. } => {
                answer::failure(&packet, ResponseCode::ServFail, &self.settings)
            }
        }
    }

    /// Answers `<name>.query.<domain>`: the prepared query run as the HTTP API runs it,
    /// failover included; NXDOMAIN for a query that does not exist.
    async fn prepared_query(
        &self,
        name: &str,
        packet: &[u8],
        limit: Option<usize>,
    ) -> Option<Vec<u8>> {
        let query = match self.queries.resolve(name) {
            Ok(query) => query,
            Err(why) => {
                tracing::warn!(query = %name, "prepared query does not render: {why}");
                None
            }
        };
        let Some(query) = query else {
            return answer::respond_with_targets(packet, None, None, &self.settings, limit);
        };
        let ttl = crate::duration::parse(&query.dns_ttl)
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let executed = self.queries.execute(query, None, None, true).await;
        let targets = targets(&executed);
        answer::respond_with_targets(packet, Some(&targets), ttl, &self.settings, limit)
    }
}

/// Where the instances a prepared query found are, from their health entries.
fn targets(executed: &Executed) -> Vec<answer::Target> {
    executed
        .nodes
        .iter()
        .map(|entry| {
            let (node, service) = (&entry["Node"], &entry["Service"]);
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            let ip = text(&service["Address"])
                .parse()
                .or_else(|_| text(&node["Address"]).parse())
                .ok();
            answer::Target {
                node: text(&node["Node"]),
                datacenter: text(&node["Datacenter"]),
                ip,
                port: service["Port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                weight: service["Weights"]["Passing"]
                    .as_u64()
                    .and_then(|w| u16::try_from(w).ok())
                    .unwrap_or(1)
                    .max(1),
            }
        })
        .collect()
}

async fn serve_udp(answerer: Arc<Answerer>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!(%err, "DNS receive failed");
                continue;
            }
        };
        let packet = buf[..len].to_vec();
        let to = answerer.destination(&packet);
        if to == Destination::Here {
            // Answered in turn, as fast as the replica answers.
            let reply = answerer.respond_to(to, packet, Some(UDP_LIMIT)).await;
            send_udp(&socket, from, reply).await;
            continue;
        }
        // A query for another datacenter (or a prepared query, which may fail over) waits for
        // its answer on its own, so that it holds up no other; past MAX_WAITING of them the
        // client is told to come back.
        let Ok(slot) = waiting.clone().try_acquire_owned() else {
            metrics::counter!("murmur_dns_forward_refused_total").increment(1);
            let busy = answer::failure(&packet, ResponseCode::ServFail, &answerer.settings);
            send_udp(&socket, from, busy).await;
            continue;
        };
        let (answerer, socket) = (answerer.clone(), socket.clone());
        tokio::spawn(async move {
            let reply = answerer.respond_to(to, packet, Some(UDP_LIMIT)).await;
            send_udp(&socket, from, reply).await;
            drop(slot);
        });
    }
}

/// Sends `reply` to `to`; none (a packet too short to answer) is dropped: there is nobody
/// to tell.
async fn send_udp(socket: &UdpSocket, to: SocketAddr, reply: Option<Vec<u8>>) {
    if let Some(reply) = reply
        && let Err(err) = socket.send_to(&reply, to).await
    {
        tracing::debug!(%err, %to, "DNS reply not sent");
    }
}

async fn serve_tcp(answerer: Arc<Answerer>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(answerer.clone(), stream));
    }
}

/// Answers length-prefixed queries on one connection until the client stops or idles.
async fn serve_connection(answerer: Arc<Answerer>, mut stream: TcpStream) {
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
        let Some(reply) = answerer.respond(packet, None).await else {
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
