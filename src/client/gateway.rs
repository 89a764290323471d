//! `murmur connect gateway --kind mesh`: a mesh gateway. It registers itself (Kind
//! `mesh-gateway`, its LAN and WAN addresses in `TaggedAddresses`, a TTL check), reads the
//! server name of each new QUIC flow from the client's first datagram, and forwards the flow's
//! datagrams, both ways, to a healthy mesh endpoint of that service in this datacenter or to
//! a passing gateway of the datacenter the name carries. It never terminates TLS: the mutual
//! TLS and the intention check stay between the two proxies.
//!
//! The decisions are `murmur_proxy::gateway`'s (pure); this module does the I/O: one UDP
//! socket per listening address, and one per flow, taking answers from the flow's destination
//! only and sending them back to the client from the address it wrote to. Both move whole
//! GRO/GSO batches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use murmur_proxy::gateway::{Arrival, Decision, Flows, Route, source_datacenter};
use murmur_proxy::native::{mesh_addresses, mesh_health_path};
use murmur_proxy::udp::{BatchedSocket, batched_socket};
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

use super::Client;
use crate::cli::GatewayArgs;

/// How often the gateway reports itself alive (its TTL check is five times this).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A flow with no datagram either way for this long is forgotten (QUIC's idle timeout is
/// shorter, so a live connection always has traffic within it).
const FLOW_IDLE: Duration = Duration::from_secs(60);
/// How long a route's destinations are kept before the agent is asked again.
const ROUTE_CACHE: Duration = Duration::from_secs(1);
/// The name mesh gateways register under, which sidecars look for (Consul's default).
pub const MESH_GATEWAY_SERVICE: &str = "mesh-gateway";

/// The gateway's shared state.
struct Gateway {
    client: Client,
    datacenter: String,
    trust_domain: String,
    started: Instant,
    flows: Mutex<Flows>,
    /// One connected socket per open flow, by client.
    sockets: Mutex<HashMap<SocketAddr, Arc<FlowSocket>>>,
    /// This datacenter's mesh endpoints by service, with when they were asked for.
    local_routes: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
    /// The other datacenters the directory knows, each with its passing gateways' WAN
    /// addresses, refreshed with each heartbeat: where remote flows go, and where a flow that
    /// arrives from another datacenter came from.
    remote_gateways: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl Gateway {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Forgets the sockets of `clients`' flows, ending their tasks.
    fn close(&self, clients: impl IntoIterator<Item = SocketAddr>) {
        let mut sockets = self.sockets.lock().expect("sockets poisoned");
        for client in clients {
            if let Some(flow) = sockets.remove(&client) {
                flow.closed.notify_one();
            }
        }
    }
}

/// A flow's socket towards its destination, and the signal that ends the task carrying its
/// answers back (no timer per datagram: a flow's task waits on the socket and this only).
struct FlowSocket {
    socket: BatchedSocket,
    /// Where the flow goes: answers from anywhere else are dropped.
    to: SocketAddr,
    closed: tokio::sync::Notify,
}

/// Runs the gateway until SIGINT or SIGTERM, then deregisters.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    if args.target.datacenter().is_some() {
        bail!(
            "--datacenter does not apply to a gateway: it serves its local agent's datacenter; drop the flag"
        );
    }
    match args.kind.as_str() {
        "mesh" if args.link.is_empty() && args.link_tls.is_empty() => run_mesh(args).await,
        "mesh" => bail!("--link is for --kind terminating: a mesh gateway routes by server name"),
        "terminating" => run_terminating(args).await,
        other => bail!("--kind {other:?} is not a gateway murmur runs: use mesh or terminating"),
    }
}

/// A terminating gateway: for each `--link`ed service (one outside the mesh, registered with
/// `/v1/catalog/register`), a proxy that presents that service's mesh identity, applies its
/// intentions, and dials the service's catalog address in plain TCP. Each is the sidecar
/// proxy itself with the service's address as its app, so the mesh finds it as it finds any
/// instance (`<service>-sidecar-proxy`, registered on this agent) and its check says whether
/// the service answers.
async fn run_terminating(args: GatewayArgs) -> anyhow::Result<()> {
    if args.link.is_empty() {
        bail!("a terminating gateway needs the services it fronts: give --link NAME (repeatable)");
    }
    for spec in &args.link_tls {
        match spec.split_once('=') {
            Some((service, ca)) if args.link.contains(&service.to_owned()) && !ca.is_empty() => {}
            _ => bail!(
                "--link-tls {spec:?} must be NAME=CA_FILE for a service also given with --link"
            ),
        }
    }
    let address = crate::agent::config::parse_addr(&args.address, 0).context("--address")?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| args.service_name().to_owned());
    let mut proxies = tokio::task::JoinSet::new();
    for (i, name) in args.link.iter().enumerate() {
        let client = Client::new(&args.target)?;
        let app = external_address(&client, name).await?;
        let fronted = super::sidecar::Fronted {
            id: format!("{id}-{name}"),
            name: name.clone(),
            app,
            tls: tls_to(&args.link_tls, name)?,
        };
        let proxy = crate::cli::ProxyArgs {
            sidecar_for: fronted.id.clone(),
            upstream: Vec::new(),
            listen: Some(SocketAddr::new(address.ip(), 0).to_string()),
            worker_threads: 1,
            busy_poll: None,
            // One process: its metrics are served once, by the first proxy.
            metrics_addr: if i == 0 {
                args.metrics_addr.clone()
            } else {
                None
            },
            target: args.target.clone(),
        };
        tracing::info!(service = %name, %app, "terminating gateway fronting it");
        proxies.spawn(super::sidecar::serve_fronted(
            proxy,
            client,
            fronted,
            crate::agent::shutdown_signal(),
        ));
    }
    while let Some(ended) = proxies.join_next().await {
        match ended {
            Ok(result) => result?,
            Err(panic) => bail!("a terminating gateway's proxy failed: {panic}"),
        }
    }
    Ok(())
}

/// The TLS connector for linked service `name`, if `--link-tls NAME=CA_FILE` names it: it
/// trusts that CA only, and checks the certificate for the service's catalog address.
fn tls_to(link_tls: &[String], name: &str) -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
    let Some(ca_file) = link_tls.iter().find_map(|spec| {
        let (service, ca) = spec.split_once('=')?;
        (service == name).then_some(ca)
    }) else {
        return Ok(None);
    };
    let flag = format!("--link-tls {name}");
    let roots = crate::http::tls::root_store(std::path::Path::new(ca_file), &flag)?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    ))))
}

/// Where the service `name` outside the mesh listens, from the catalog.
async fn external_address(client: &Client, name: &str) -> anyhow::Result<SocketAddr> {
    let instances = client.get(&format!("/v1/catalog/service/{name}")).await?;
    let first = instances
        .as_array()
        .and_then(|list| list.first())
        .with_context(|| {
            format!(
                "no service {name:?} in the catalog: register it first (PUT /v1/catalog/register)"
            )
        })?;
    let address = match first["ServiceAddress"].as_str() {
        Some(a) if !a.is_empty() => a,
        _ => first["Address"].as_str().unwrap_or_default(),
    };
    let port = first["ServicePort"].as_u64().unwrap_or(0);
    let ip: std::net::IpAddr = address
        .parse()
        .with_context(|| format!("service {name:?} has address {address:?}, not an IP"))?;
    if port == 0 {
        bail!("service {name:?} has no port in the catalog");
    }
    Ok(SocketAddr::new(ip, port as u16))
}

/// A mesh gateway: registers itself and forwards flows until SIGINT or SIGTERM.
async fn run_mesh(args: GatewayArgs) -> anyhow::Result<()> {
    let metrics = match &args.metrics_addr {
        Some(text) => Some(super::sidecar::metrics_listener(text).await?),
        None => None,
    };
    let client = Client::new(&args.target)?;
    let lan = crate::agent::config::parse_addr(&args.address, 0).context("--address")?;
    let wan = match &args.wan_address {
        Some(text) => crate::agent::config::parse_addr(text, 0).context("--wan-address")?,
        None => lan,
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| args.service_name().to_owned());
    let body = json!({
        "ID": id, "Name": args.service_name(), "Kind": "mesh-gateway",
        "Address": lan.ip().to_string(), "Port": lan.port(),
        "TaggedAddresses": {
            "lan": {"Address": lan.ip().to_string(), "Port": lan.port()},
            "wan": {"Address": wan.ip().to_string(), "Port": wan.port()},
        },
        "Check": {"Name": "mesh gateway", "TTL": format!("{}s", HEARTBEAT.as_secs() * 5)},
        // This process serves the gateway: the agent must not start one on the same ports
        // (it did, and failed on the taken ports every second).
        "Meta": {crate::services::SELF_RUN_META: "true"},
    });
    // Bound before it is registered, so that nobody is sent to a port it could not take.
    let listeners = listeners(lan, wan)?;
    client
        .put("/v1/agent/service/register", serde_json::to_vec(&body)?)
        .await
        .context("cannot register the mesh gateway")?;
    let heartbeat = Some(id.clone());
    let ended = forward(
        client.clone(),
        listeners,
        heartbeat,
        metrics,
        crate::agent::shutdown_signal(),
    )
    .await;
    let path = format!("/v1/agent/service/deregister/{id}");
    if let Err(err) = client.put(&path, Vec::new()).await {
        tracing::warn!("cannot deregister the mesh gateway: {err:#}");
    }
    ended
}

/// The mesh gateway an agent runs for a `Kind: "mesh-gateway"` registration: it listens at
/// the registration's LAN and WAN addresses and forwards until `stop` returns. The
/// registration is the user's, so the gateway neither registers nor deregisters; its health
/// is the checks the registration came with.
pub async fn serve_registered(
    target: crate::cli::HttpTarget,
    lan: SocketAddr,
    wan: SocketAddr,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = Client::new(&target)?;
    let listeners = listeners(lan, wan)?;
    forward(client, listeners, None, None, stop).await
}

/// The sockets of a gateway's LAN and WAN addresses (one when they are the same).
fn listeners(lan: SocketAddr, wan: SocketAddr) -> anyhow::Result<Vec<BatchedSocket>> {
    let mut listeners = vec![bind(lan)?];
    if wan != lan {
        listeners.push(bind(wan)?);
    }
    Ok(listeners)
}

/// Forwards flows arriving on `listeners` until `stop` returns or a task fails; with
/// `heartbeat`, passes that service's TTL check every [`HEARTBEAT`].
async fn forward(
    client: Client,
    listeners: Vec<BatchedSocket>,
    heartbeat: Option<String>,
    metrics: Option<tokio::net::TcpListener>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let me = client.get("/v1/agent/self").await?;
    let datacenter = me["Config"]["Datacenter"]
        .as_str()
        .context("the agent did not say its datacenter")?
        .to_owned();
    let roots = client.get("/v1/agent/connect/ca/roots").await?;
    let trust_domain = roots["TrustDomain"]
        .as_str()
        .filter(|t| !t.is_empty())
        .context("the agent knows no mesh trust domain yet (no CA root): start the gateway once the datacenter has one")?
        .to_owned();
    let addresses: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let gateway = Arc::new(Gateway {
        client,
        datacenter,
        trust_domain,
        started: Instant::now(),
        flows: Mutex::new(Flows::new(FLOW_IDLE)),
        sockets: Mutex::default(),
        local_routes: Mutex::default(),
        remote_gateways: Mutex::default(),
    });
    tracing::info!(
        listening = ?addresses, datacenter = %gateway.datacenter, "mesh gateway running"
    );
    let mut tasks = tokio::task::JoinSet::new();
    let shared = listeners.len() == 1;
    for (i, listener) in listeners.into_iter().enumerate() {
        let arrival = match (shared, i) {
            (true, _) => Arrival::Shared,
            (false, 0) => Arrival::Lan,
            (false, _) => Arrival::Wan,
        };
        tasks.spawn(listen(gateway.clone(), Arc::new(listener), arrival));
    }
    tasks.spawn(refresh(gateway.clone(), heartbeat));
    tasks.spawn(expire(gateway.clone()));
    if let Some(listener) = metrics {
        tasks.spawn(super::sidecar::serve_metrics(listener));
    }
    let ended = tokio::select! {
        () = stop => Ok(()),
        Some(ended) = tasks.join_next() => match ended {
            Ok(result) => result,
            Err(panic) => Err(anyhow::anyhow!("a gateway task failed: {panic}")),
        },
    };
    // The listening tasks end with the set, each flow's task when its socket is closed, and
    // with them the last holds on the listening sockets.
    tasks.abort_all();
    let clients: Vec<SocketAddr> = gateway
        .sockets
        .lock()
        .expect("sockets poisoned")
        .keys()
        .copied()
        .collect();
    gateway.close(clients);
    ended
}

fn bind(addr: SocketAddr) -> anyhow::Result<BatchedSocket> {
    batched_socket(addr)
        .with_context(|| format!("cannot listen for QUIC on {addr}: is the port taken?"))
}

/// Takes batches of datagrams on one listening socket (a batch is one client's) and acts on
/// the gateway's decision for each, made on its first datagram.
async fn listen(
    gateway: Arc<Gateway>,
    listener: Arc<BatchedSocket>,
    arrival: Arrival,
) -> anyhow::Result<()> {
    let mut buffer = vec![0u8; 65536];
    let to_destination =
        metrics::counter!("murmur_gateway_bytes_total", "direction" => "to_destination");
    loop {
        let batch = listener.recv(&mut buffer).await?;
        let (n, client) = (batch.len, batch.from);
        let datagram = &buffer[..batch.stride.min(n)];
        // The datacenters are looked at only for a flow to open, not for each batch.
        let known = |dc: &str| {
            let remote = gateway.remote_gateways.lock().expect("gateways poisoned");
            remote.contains_key(dc)
        };
        let decision = gateway.flows.lock().expect("flows poisoned").on_datagram(
            gateway.now(),
            client,
            datagram,
            &gateway.trust_domain,
            &gateway.datacenter,
            known,
        );
        match decision {
            Decision::Forward { .. } => {
                let socket = gateway
                    .sockets
                    .lock()
                    .expect("sockets poisoned")
                    .get(&client)
                    .cloned();
                if let Some(flow) = socket {
                    to_destination.increment(n as u64);
                    let _ = flow.socket.send(flow.to, &buffer[..n], batch.stride).await;
                }
            }
            Decision::Open { route } => {
                let first = (buffer[..n].to_vec(), batch.stride);
                let source = source_datacenter(
                    client.ip(),
                    arrival,
                    &gateway.datacenter,
                    &gateway.remote_gateways.lock().expect("gateways poisoned"),
                )
                .to_owned();
                tokio::spawn(open(
                    gateway.clone(),
                    listener.clone(),
                    client,
                    source,
                    route,
                    first,
                ));
            }
            Decision::Opening => {}
            Decision::Drop(why) => {
                metrics::counter!("murmur_gateway_dropped_total", "reason" => why.label())
                    .increment(1);
                tracing::debug!(%client, "datagram dropped: {why}");
            }
        }
    }
}

/// Opens the flow of `client` along `route`: picks a destination, connects a socket to it,
/// sends the first datagram, and carries the answers back until the flow is forgotten.
async fn open(
    gateway: Arc<Gateway>,
    listener: Arc<BatchedSocket>,
    client: SocketAddr,
    source: String,
    route: Route,
    first: (Vec<u8>, usize),
) {
    let (dc, service, kind) = match &route {
        Route::Local { service } => (gateway.datacenter.clone(), service.clone(), "local"),
        Route::Remote {
            datacenter,
            service,
        } => (datacenter.clone(), service.clone(), "remote"),
    };
    let destination = match gateway.destinations(&route).await {
        Ok(list) => list.choose(&mut rand::rng()).copied(),
        Err(err) => {
            tracing::warn!(%client, "cannot find where {service} in {dc} is: {err:#}");
            None
        }
    };
    let Some(to) = destination else {
        gateway.flows.lock().expect("flows poisoned").failed(client);
        metrics::counter!("murmur_gateway_dropped_total", "reason" => "no_destination")
            .increment(1);
        return;
    };
    let socket = match socket_towards(to) {
        Ok(socket) => Arc::new(FlowSocket {
            socket,
            to,
            closed: tokio::sync::Notify::new(),
        }),
        Err(err) => {
            tracing::warn!(%to, "cannot open a flow: {err:#}");
            gateway.flows.lock().expect("flows poisoned").failed(client);
            return;
        }
    };
    let replaced = gateway
        .sockets
        .lock()
        .expect("sockets poisoned")
        .insert(client, socket.clone());
    if let Some(old) = replaced {
        old.closed.notify_one();
    }
    gateway
        .flows
        .lock()
        .expect("flows poisoned")
        .opened(gateway.now(), client, to);
    metrics::counter!("murmur_gateway_flows_total", "route" => kind, "source_datacenter" => source, "destination_datacenter" => dc.clone(), "destination_service" => service.clone())
        .increment(1);
    tracing::debug!(%client, %to, service, dc, "flow opened");
    let _ = socket.socket.send(to, &first.0, first.1).await;
    let mut buffer = vec![0u8; 65536];
    let to_client = metrics::counter!("murmur_gateway_bytes_total", "direction" => "to_client");
    loop {
        let batch = tokio::select! {
            received = socket.socket.recv(&mut buffer) => match received {
                Ok(batch) if batch.from == to => batch,
                _ => continue,
            },
            () = socket.closed.notified() => return,
        };
        gateway
            .flows
            .lock()
            .expect("flows poisoned")
            .answered(gateway.now(), client);
        to_client.increment(batch.len as u64);
        let _ = listener
            .send(client, &buffer[..batch.len], batch.stride)
            .await;
    }
}

/// A socket for a flow towards `to`, on an address of its family and a free port.
fn socket_towards(to: SocketAddr) -> anyhow::Result<BatchedSocket> {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    Ok(batched_socket(any)?)
}

impl Gateway {
    /// Asks which other datacenters the directory knows, and the passing gateways of each
    /// (the listening loops and new flows read the last answer).
    async fn refresh_remote_gateways(&self) {
        let datacenters: Vec<String> = match self.client.get("/v1/catalog/datacenters").await {
            Ok(list) => list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .filter(|dc| *dc != self.datacenter)
                .collect(),
            Err(err) => {
                tracing::warn!("cannot list the datacenters: {err:#}");
                return;
            }
        };
        let mut remote_gateways = HashMap::new();
        for dc in datacenters {
            let path = gateways_health_path(Some(&dc));
            match self.client.get(path.trim_end_matches('&')).await {
                Ok(answer) => {
                    remote_gateways.insert(dc, gateway_addresses(&answer, "wan"));
                }
                Err(err) => tracing::warn!("cannot list the gateways of {dc}: {err:#}"),
            }
        }
        *self.remote_gateways.lock().expect("gateways poisoned") = remote_gateways;
    }

    /// Where flows along `route` may go now: the mesh endpoints of a local service (asked of
    /// the agent at most once per [`ROUTE_CACHE`]), or the WAN addresses of another
    /// datacenter's passing mesh gateways.
    async fn destinations(&self, route: &Route) -> anyhow::Result<Vec<SocketAddr>> {
        let service = match route {
            Route::Local { service } => service,
            Route::Remote { datacenter, .. } => {
                let remote = self.remote_gateways.lock().expect("gateways poisoned");
                return Ok(remote.get(datacenter).cloned().unwrap_or_default());
            }
        };
        if let Some((at, list)) = self
            .local_routes
            .lock()
            .expect("routes poisoned")
            .get(service)
            && at.elapsed() < ROUTE_CACHE
        {
            return Ok(list.clone());
        }
        let path = mesh_health_path(service, None);
        let list = mesh_addresses(&self.client.get(path.trim_end_matches('&')).await?);
        self.local_routes
            .lock()
            .expect("routes poisoned")
            .insert(service.clone(), (Instant::now(), list.clone()));
        Ok(list)
    }
}

/// The blocking health query (ending in `&`) for the passing mesh gateways of `datacenter`
/// (this one when `None`): what sidecars follow and gateways ask.
pub fn gateways_health_path(datacenter: Option<&str>) -> String {
    let dc = datacenter.map(|dc| format!("dc={dc}&")).unwrap_or_default();
    format!("/v1/health/service/{MESH_GATEWAY_SERVICE}?passing&{dc}")
}

/// The `tagged` (`lan` or `wan`) addresses of the mesh gateways in a health answer. A gateway
/// without that tagged address is reached at its service address (its node's when it gives
/// none) and port, as Consul does.
pub fn gateway_addresses(answer: &Value, tagged: &str) -> Vec<SocketAddr> {
    answer
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["Service"]["Kind"] == "mesh-gateway")
        .filter_map(|entry| {
            let service = &entry["Service"];
            let (address, port) = match &service["TaggedAddresses"][tagged] {
                Value::Object(a) => (a.get("Address")?.as_str()?, a.get("Port")?.as_u64()?),
                _ => {
                    let address = service["Address"]
                        .as_str()
                        .filter(|a| !a.is_empty())
                        .or_else(|| entry["Node"]["Address"].as_str())?;
                    (address, service["Port"].as_u64()?)
                }
            };
            Some(SocketAddr::new(
                address.parse().ok()?,
                u16::try_from(port).ok()?,
            ))
        })
        .collect()
}

/// Every [`HEARTBEAT`]: learns the other datacenters' gateways anew, sets the open-flows
/// gauge, and passes
/// the TTL check of `heartbeat` (the gateway's own registration) if there is one.
async fn refresh(gateway: Arc<Gateway>, heartbeat: Option<String>) -> anyhow::Result<()> {
    loop {
        gateway.refresh_remote_gateways().await;
        if let Some(id) = &heartbeat {
            let path = format!("/v1/agent/check/pass/service:{id}?note=forwarding");
            if let Err(err) = gateway.client.put(&path, Vec::new()).await {
                tracing::warn!("cannot report the gateway's health: {err:#}");
            }
        }
        let open = gateway.flows.lock().expect("flows poisoned").len();
        metrics::gauge!("murmur_gateway_flows_open").set(open as f64);
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Forgets idle flows and closes their sockets.
async fn expire(gateway: Arc<Gateway>) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let gone = gateway
            .flows
            .lock()
            .expect("flows poisoned")
            .expire(gateway.now());
        gateway.close(gone);
    }
}
