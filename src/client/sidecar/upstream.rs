//! Upstreams: a loopback TCP listener per destination service. Each accepted connection
//! becomes one bidirectional QUIC stream on a pooled connection to a healthy instance of the
//! destination's proxy (so a new TCP connection costs no handshake); an instance that cannot
//! be reached is skipped for the next one. An upstream in another datacenter finds its
//! instances through the agent's `?dc=` and dials them directly (mesh gateways are for when
//! datacenters cannot reach each other).

use murmur_proxy::quinn;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use murmur_proxy::native::{mesh_addresses, mesh_health_path};
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpStream};

use super::Sidecar;
use super::splice::{count_bytes, splice};
use crate::client::gateway::{gateway_addresses, gateways_health_path};
use crate::client::watch::follow;
use murmur_proxy::gateway::GatewayMode;

/// One `--upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Destination service.
    pub service: String,
    /// Its datacenter, when not the local one.
    pub datacenter: Option<String>,
    /// Where the app connects.
    pub listen: SocketAddr,
    /// Through which gateways, if any, it is reached in its datacenter.
    pub mode: GatewayMode,
    /// Datacenters that serve it, in order, when the first has no passing instance.
    pub failover: Vec<String>,
}

/// Parses `NAME[@DCS[/MODE]]:PORT` (on 127.0.0.1) or `NAME[@DCS[/MODE]]:IP:PORT`, where DCS
/// is the datacenter and, after commas, those that serve when it has no passing instance
/// (an empty first one is the proxy's own: `db@,west:9191`).
pub fn parse(text: &str) -> anyhow::Result<Upstream> {
    let (name, addr) = text.split_once(':').with_context(|| {
        format!("--upstream {text:?} must be NAME[@DC[,FAILOVER_DC...][/MODE]]:PORT or …:IP:PORT, e.g. db:9191, db@dc2/local:9191 or db@,dc2:9191")
    })?;
    let (service, at) = match name.split_once('@') {
        Some((service, at)) => (service, Some(at)),
        None => (name, None),
    };
    let (dcs, mode) = match at.and_then(|at| at.split_once('/')) {
        Some((dcs, mode)) => (
            Some(dcs),
            GatewayMode::parse(mode).with_context(|| {
                format!("--upstream {text:?}: the mesh gateway mode {mode:?} must be none, local or remote")
            })?,
        ),
        None => (at, GatewayMode::None),
    };
    let (datacenter, failover) = match dcs {
        None => (None, Vec::new()),
        Some(dcs) => {
            let mut dcs = dcs.split(',');
            let primary = dcs.next().filter(|dc| !dc.is_empty()).map(str::to_owned);
            let failover: Vec<String> = dcs.map(str::to_owned).collect();
            if failover.iter().any(String::is_empty) || (primary.is_none() && failover.is_empty()) {
                bail!("--upstream {text:?} names no datacenter after '@' or ',', e.g. db@dc2:9191")
            }
            (primary, failover)
        }
    };
    let listen = match addr.parse::<u16>() {
        Ok(port) => SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
        Err(_) => crate::agent::config::parse_addr(addr, 0)
            .with_context(|| format!("--upstream {text:?}: bad address"))?,
    };
    if service.is_empty() || listen.port() == 0 {
        bail!("--upstream {text:?} must name a service and a port, e.g. db:9191");
    }
    Ok(Upstream {
        service: service.to_owned(),
        datacenter,
        listen,
        mode,
        failover,
    })
}

/// How long a QUIC handshake may take before the next candidate is tried: a dead instance or
/// gateway (whose datagrams vanish) would otherwise hold a new connection for the whole idle
/// timeout.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One datacenter an upstream may be served from: the primary, then each failover in order.
struct Target {
    /// `None`: the proxy's own datacenter.
    datacenter: Option<String>,
    /// Where connections to it are dialled from.
    endpoint: quinn::Endpoint,
    /// The addresses to dial (instances' proxies or gateways), as the agent last said.
    dial: Mutex<Vec<SocketAddr>>,
    /// Whether the datacenter has a passing instance: through gateways, the gateways pass
    /// whether or not it has, so this is followed apart (always true otherwise).
    serving: AtomicBool,
    /// Open connections by address.
    pool: Mutex<HashMap<SocketAddr, quinn::Connection>>,
}

/// Serves one upstream until the process stops.
pub async fn serve(sidecar: Arc<Sidecar>, upstream: Upstream) -> anyhow::Result<()> {
    let listener = TcpListener::bind(upstream.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for upstream {}: is the port taken?",
            upstream.listen, upstream.service
        )
    })?;
    let mut targets = Vec::new();
    let mut watchers = tokio::task::JoinSet::new();
    for datacenter in std::iter::once(upstream.datacenter.clone())
        .chain(upstream.failover.iter().cloned().map(Some))
    {
        // Gateways are for other datacenters; the proxy's own is dialled directly.
        let mode = if datacenter.is_some() {
            upstream.mode
        } else {
            GatewayMode::None
        };
        // Through gateways, each target dials from a socket of its own: a gateway tells flows
        // apart by the client's address, so two sharing one would share one route.
        let endpoint = match mode {
            GatewayMode::None => sidecar.endpoint.clone(),
            GatewayMode::Local | GatewayMode::Remote => {
                let ip = sidecar.endpoint.local_addr()?.ip();
                murmur_proxy::udp::endpoint(SocketAddr::new(ip, 0), None, None).with_context(
                    || {
                        format!(
                            "cannot open a QUIC socket for upstream {}",
                            upstream.service
                        )
                    },
                )?
            }
        };
        // The instances' own proxies, or the mesh gateways of this datacenter (their LAN
        // addresses) or of the upstream's (their WAN addresses), which route by server name.
        let dc = datacenter.as_deref();
        let (path, tagged) = match (mode, dc) {
            (GatewayMode::Local, Some(_)) => (gateways_health_path(None), Some("lan")),
            (GatewayMode::Remote, Some(dc)) => (gateways_health_path(Some(dc)), Some("wan")),
            _ => (mesh_health_path(&upstream.service, dc), None),
        };
        // Through gateways, the datacenter's own health list says whether it can serve.
        let serving = tagged.map(|_| mesh_health_path(&upstream.service, dc));
        let target = Arc::new(Target {
            datacenter,
            endpoint,
            dial: Mutex::default(),
            serving: AtomicBool::new(serving.is_none()),
            pool: Mutex::default(),
        });
        targets.push(target.clone());
        let sidecar = sidecar.clone();
        watchers.spawn(async move {
            let dialled = target.clone();
            let dial = follow(&sidecar.client, &path, move |list| {
                *dialled.dial.lock().expect("dial poisoned") = match tagged {
                    Some(tagged) => gateway_addresses(list, tagged),
                    None => mesh_addresses(list),
                };
                Ok(())
            });
            let Some(path) = serving else {
                return dial.await;
            };
            let serving = follow(&sidecar.client, &path, move |list| {
                let any = list.as_array().is_some_and(|l| !l.is_empty());
                target.serving.store(any, Ordering::Relaxed);
                Ok(())
            });
            tokio::try_join!(dial, serving).map(drop)
        });
    }
    let accept = async {
        loop {
            let (tcp, _) = listener.accept().await?;
            // The first datacenter, in failover order, that has somewhere to dial.
            let chosen = targets.iter().find_map(|target| {
                if !target.serving.load(Ordering::Relaxed) {
                    return None;
                }
                let mut list = target.dial.lock().expect("dial poisoned").clone();
                (!list.is_empty()).then(|| {
                    list.shuffle(&mut rand::rng());
                    (target.clone(), list)
                })
            });
            let Some((target, candidates)) = chosen else {
                tracing::warn!(
                    service = %upstream.service,
                    "no healthy instance of {} in any datacenter it may be served from",
                    upstream.service
                );
                continue;
            };
            let (sidecar, upstream) = (sidecar.clone(), upstream.clone());
            tokio::spawn(async move {
                carry(&sidecar, &target, &upstream, &candidates, tcp).await;
            });
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    let watched = async {
        match watchers.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(panic)) => Err(anyhow::anyhow!("an upstream watcher failed: {panic}")),
            None => Ok(()),
        }
    };
    tokio::try_join!(watched, accept).map(drop)
}

/// Opens a stream to the first candidate that answers and splices `tcp` with it.
async fn carry(
    sidecar: &Sidecar,
    target: &Target,
    upstream: &Upstream,
    candidates: &[SocketAddr],
    tcp: TcpStream,
) {
    let service = upstream.service.as_str();
    let labels = [
        ("source", sidecar.fronted.name.clone()),
        ("destination", service.to_owned()),
    ];
    let started = std::time::Instant::now();
    for &addr in candidates {
        let stream = match connection(sidecar, target, upstream, addr).await {
            Ok(connection) => connection.open_bi().await.map_err(anyhow::Error::from),
            Err(err) => Err(err),
        };
        match stream {
            Ok((send, recv)) => {
                metrics::histogram!("murmur_proxy_connect_seconds", &labels)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("murmur_proxy_upstream_connections_total", &labels).increment(1);
                let datacenter = sidecar
                    .identity()
                    .destination(service, target.datacenter.as_deref())
                    .datacenter;
                metrics::counter!(
                    "murmur_proxy_upstream_datacenter_connections_total",
                    "source" => labels[0].1.clone(), "destination" => labels[1].1.clone(),
                    "datacenter" => datacenter
                )
                .increment(1);
                if let Ok((up, down)) = splice(sidecar, tcp, send, recv).await {
                    count_bytes(&labels, "upstream", up, down);
                }
                return;
            }
            Err(err) => {
                target.pool.lock().expect("pool poisoned").remove(&addr);
                metrics::counter!("murmur_proxy_upstream_errors_total", &labels).increment(1);
                tracing::warn!(%addr, service, "upstream instance failed, trying another: {err:#}");
            }
        }
    }
    tracing::warn!(service, "no healthy instance of {service} could be reached");
}

/// The pooled connection to `addr`, or a new one.
async fn connection(
    sidecar: &Sidecar,
    target: &Target,
    upstream: &Upstream,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Connection> {
    if let Some(open) = target.pool.lock().expect("pool poisoned").get(&addr)
        && open.close_reason().is_none()
    {
        return Ok(open.clone());
    }
    let identity = sidecar.identity();
    let destination = identity.destination(&upstream.service, target.datacenter.as_deref());
    let connecting =
        target
            .endpoint
            .connect_with(identity.client_config()?, addr, &destination.dns_name())?;
    let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {HANDSHAKE_TIMEOUT:?}"))
        .and_then(|done| done.map_err(anyhow::Error::from))
        .with_context(|| format!("QUIC handshake with {addr}"))?;
    target
        .pool
        .lock()
        .expect("pool poisoned")
        .insert(addr, connection.clone());
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags_parse_or_say_why() {
        assert_eq!(
            parse("db:9191").unwrap(),
            Upstream {
                service: "db".into(),
                datacenter: None,
                listen: "127.0.0.1:9191".parse().unwrap(),
                mode: GatewayMode::None,
                failover: vec![],
            }
        );
        let failover = parse("db@,west,south/local:9191").unwrap();
        assert_eq!(failover.datacenter, None);
        assert_eq!(failover.failover, ["west", "south"]);
        assert_eq!(failover.mode, GatewayMode::Local);
        let local = parse("db@dc2/local:9191").unwrap();
        assert_eq!(
            (local.datacenter.as_deref(), local.mode),
            (Some("dc2"), GatewayMode::Local)
        );
        assert_eq!(
            parse("db@dc2/remote:9191").unwrap().mode,
            GatewayMode::Remote
        );
        let remote = parse("db@dc2:10.0.0.1:9191").unwrap();
        assert_eq!(remote.datacenter.as_deref(), Some("dc2"));
        assert_eq!(remote.service, "db");
        assert_eq!(
            parse("db:10.0.0.1:9191").unwrap().listen,
            "10.0.0.1:9191".parse().unwrap()
        );
        for bad in [
            "db",
            "db:",
            ":9191",
            "db:0",
            "db:x:y",
            "db@:9191",
            "@dc2:9191",
            "db@dc2/sideways:9191",
            "db@dc2,:9191",
            "db@,:9191",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
