//! Upstreams: a loopback TCP listener per destination service. Each accepted connection
//! becomes one bidirectional QUIC stream on a pooled connection to a healthy instance of the
//! destination's proxy (so a new TCP connection costs no handshake); an instance that cannot
//! be reached is skipped for the next one. An upstream in another datacenter finds its
//! instances through the agent's `?dc=` and dials them directly (mesh gateways are for when
//! datacenters cannot reach each other).

use murmur_proxy::quinn;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use murmur_proxy::native::{mesh_addresses, mesh_health_path};
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpStream};

use super::Sidecar;
use super::splice::{count_bytes, splice};
use crate::client::gateway::{MESH_GATEWAY_SERVICE, gateway_addresses};
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
}

/// Parses `NAME[@DC[/MODE]]:PORT` (on 127.0.0.1) or `NAME[@DC[/MODE]]:IP:PORT`.
pub fn parse(text: &str) -> anyhow::Result<Upstream> {
    let (name, addr) = text.split_once(':').with_context(|| {
        format!("--upstream {text:?} must be NAME[@DC[/MODE]]:PORT or NAME[@DC[/MODE]]:IP:PORT, e.g. db:9191 or db@dc2/local:9191")
    })?;
    let (service, datacenter) = match name.split_once('@') {
        Some((_, "")) => {
            bail!("--upstream {text:?} names no datacenter after '@', e.g. db@dc2:9191")
        }
        Some((service, dc)) => (service, Some(dc.to_owned())),
        None => (name, None),
    };
    let (datacenter, mode) = match datacenter.as_deref().and_then(|dc| dc.split_once('/')) {
        Some((dc, mode)) => (
            Some(dc.to_owned()),
            GatewayMode::parse(mode).with_context(|| {
                format!("--upstream {text:?}: the mesh gateway mode {mode:?} must be none, local or remote")
            })?,
        ),
        None => (datacenter, GatewayMode::None),
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
    })
}

/// Serves one upstream until the process stops.
pub async fn serve(sidecar: Arc<Sidecar>, upstream: Upstream) -> anyhow::Result<()> {
    let listener = TcpListener::bind(upstream.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for upstream {}: is the port taken?",
            upstream.listen, upstream.service
        )
    })?;
    // Through gateways, each upstream dials from a socket of its own: a gateway tells flows
    // apart by the client's address, so two upstreams sharing one would share one route.
    let endpoint = match upstream.mode {
        GatewayMode::None => sidecar.endpoint.clone(),
        GatewayMode::Local | GatewayMode::Remote => {
            let ip = sidecar.endpoint.local_addr()?.ip();
            murmur_proxy::udp::endpoint(SocketAddr::new(ip, 0), None, None).with_context(|| {
                format!(
                    "cannot open a QUIC socket for upstream {}",
                    upstream.service
                )
            })?
        }
    };
    let instances: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let pool: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>> = Arc::default();
    // The instances' own proxies, or the mesh gateways of this datacenter (their LAN
    // addresses) or of the upstream's (their WAN addresses), which route by server name.
    let dc = upstream.datacenter.as_deref();
    let gateways = |dc: Option<&str>| {
        let dc = dc.map(|dc| format!("dc={dc}&")).unwrap_or_default();
        format!("/v1/health/service/{MESH_GATEWAY_SERVICE}?passing&{dc}")
    };
    let (path, tagged) = match (upstream.mode, dc) {
        (GatewayMode::Local, Some(_)) => (gateways(None), Some("lan")),
        (GatewayMode::Remote, Some(dc)) => (gateways(Some(dc)), Some("wan")),
        _ => (mesh_health_path(&upstream.service, dc), None),
    };
    let known = instances.clone();
    let watcher = follow(&sidecar.client, &path, move |list| {
        *known.lock().expect("instances poisoned") = match tagged {
            Some(tagged) => gateway_addresses(list, tagged),
            None => mesh_addresses(list),
        };
        Ok(())
    });
    let accept = async {
        loop {
            let (tcp, _) = listener.accept().await?;
            let (sidecar, instances, pool) = (sidecar.clone(), instances.clone(), pool.clone());
            let endpoint = endpoint.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let candidates = {
                    let mut list = instances.lock().expect("instances poisoned").clone();
                    list.shuffle(&mut rand::rng());
                    list
                };
                carry(&sidecar, &endpoint, &pool, &upstream, &candidates, tcp).await;
            });
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    tokio::try_join!(watcher, accept).map(drop)
}

/// Opens a stream to the first candidate that answers and splices `tcp` with it.
async fn carry(
    sidecar: &Sidecar,
    endpoint: &quinn::Endpoint,
    pool: &Mutex<HashMap<SocketAddr, quinn::Connection>>,
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
        let stream = match connection(sidecar, endpoint, pool, upstream, addr).await {
            Ok(connection) => connection.open_bi().await.map_err(anyhow::Error::from),
            Err(err) => Err(err),
        };
        match stream {
            Ok((send, recv)) => {
                metrics::histogram!("murmur_proxy_connect_seconds", &labels)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("murmur_proxy_upstream_connections_total", &labels).increment(1);
                if let Ok((up, down)) = splice(sidecar, tcp, send, recv).await {
                    count_bytes(&labels, "upstream", up, down);
                }
                return;
            }
            Err(err) => {
                pool.lock().expect("pool poisoned").remove(&addr);
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
    endpoint: &quinn::Endpoint,
    pool: &Mutex<HashMap<SocketAddr, quinn::Connection>>,
    upstream: &Upstream,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Connection> {
    if let Some(open) = pool.lock().expect("pool poisoned").get(&addr)
        && open.close_reason().is_none()
    {
        return Ok(open.clone());
    }
    let identity = sidecar.identity();
    let destination = identity.destination(&upstream.service, upstream.datacenter.as_deref());
    let connection = endpoint
        .connect_with(identity.client_config()?, addr, &destination.dns_name())?
        .await
        .with_context(|| format!("QUIC handshake with {addr}"))?;
    pool.lock()
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
            }
        );
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
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
