//! `murmur connect proxy --sidecar-for ID`: the sidecar proxy of one service instance.
//!
//! It learns everything from the local agent's HTTP API, as Consul's built-in proxy does: the
//! instance it fronts (`/v1/agent/services`), its leaf and the roots (blocking queries, so a
//! renewal or a rotation reaches it at once and new connections use it while existing ones
//! live on), the intentions that name its service (a blocking `match`, so a new deny closes
//! the connections it now refuses), and the healthy instances of each upstream's proxies.
//!
//! It registers itself as `<ID>-sidecar-proxy` (service `<name>-sidecar-proxy`, port = its
//! QUIC port) with a TTL check it keeps passing, so upstream proxies find it in the catalog
//! and stop picking it when it dies; it deregisters when it stops. Until the agent can give it
//! a leaf (no CA root yet, no signer reachable, gossip not encrypted), it keeps asking with
//! capped backoff and keeps that check critical with the reason, then comes up by itself.

mod inbound;
mod refusals;
mod splice;
mod upstream;

use murmur_proxy::quinn;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use murmur_proxy::backoff::Backoff;
use murmur_proxy::busy_poll::BusyPoll;
use murmur_proxy::native::{identity_from_answers, mesh_endpoint_name};
use murmur_proxy::tls::MeshIdentity;
use rand::RngExt;
use serde_json::{Value, json};

use super::Client;
use super::watch::follow;
use crate::cli::ProxyArgs;

/// How often the proxy reports its health (its own, and its app's) to the agent; its TTL
/// check lasts five times that, so a dead proxy leaves the catalog's passing list by itself.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a stopping proxy waits for open streams to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// The service instance a sidecar fronts.
#[derive(Clone)]
pub(in crate::client) struct Fronted {
    /// The id its proxy's registration derives from.
    pub id: String,
    /// The service whose identity the proxy presents and whose intentions it applies.
    pub name: String,
    /// Where the app listens.
    pub app: SocketAddr,
    /// TLS to the app, for a service outside the mesh that a terminating gateway reaches
    /// over TLS; plain TCP when `None`.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// The meta key of a proxy's registration that names the instance it fronts: what tells a
/// proxy's registration from others.
pub const PROXY_FOR_META: &str = "murmur-proxy-for";

/// What every task of a sidecar shares.
struct Sidecar {
    client: Client,
    fronted: Fronted,
    identity: RwLock<MeshIdentity>,
    endpoint: quinn::Endpoint,
    /// Decisions per source service, until the intentions change.
    decisions: Mutex<HashMap<String, bool>>,
    /// Inbound connections with their source service, re-checked when intentions change.
    inbound: Mutex<Vec<(String, quinn::Connection)>>,
    /// Streams being spliced now (both directions), for the drain.
    active: std::sync::atomic::AtomicUsize,
    /// Refused callers, counted and logged without flooding.
    refusals: refusals::Refusals,
}

impl Sidecar {
    fn identity(&self) -> MeshIdentity {
        self.identity.read().expect("identity poisoned").clone()
    }
}

/// Runs the proxy until SIGINT or SIGTERM, then drains and deregisters.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    serve(args, crate::agent::shutdown_signal()).await
}

/// Runs the proxy until `stop` returns, then drains and deregisters: what `murmur connect
/// proxy` runs, and what the agent runs for services registered with a sidecar.
pub async fn serve(args: ProxyArgs, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    if args.target.datacenter().is_some() {
        bail!(
            "--datacenter does not apply to a proxy: it serves a service of its local agent, in that agent's datacenter; drop the flag"
        );
    }
    let client = Client::new(&args.target)?;
    let fronted = fronted(&client, &args.sidecar_for).await?;
    serve_fronted(args, client, fronted, stop).await
}

/// Runs the proxy of `fronted` until `stop` returns: what [`serve`] runs for a service of the
/// agent, and what a terminating gateway runs for each service outside the mesh it links.
pub(in crate::client) async fn serve_fronted(
    args: ProxyArgs,
    client: Client,
    fronted: Fronted,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = match &args.metrics_addr {
        Some(text) => Some(metrics_listener(text).await?),
        None => None,
    };
    let upstreams = args
        .upstream
        .iter()
        .map(|u| upstream::parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listen = match &args.listen {
        Some(text) => crate::agent::config::parse_addr(text, 0).context("--listen")?,
        None => SocketAddr::new(agent_ip(&client).await?, 0),
    };
    let busy_poll = args.busy_poll.map(BusyPoll::new);
    // Bound first and taking connections only once it has an identity: until then the proxy
    // is in the catalog with its check critical and the reason (so the health API says why).
    let endpoint =
        murmur_proxy::udp::endpoint(listen, None, busy_poll.clone()).with_context(|| {
            format!("cannot listen for QUIC on {listen}: pick another with --listen")
        })?;
    let bound = endpoint.local_addr()?;
    let proxy_id = register(&client, &fronted, bound).await?;
    tokio::pin!(stop);
    let identity = tokio::select! {
        identity = await_identity(&client, &fronted.name, &proxy_id) => identity,
        () = &mut stop => {
            deregister(&client, &proxy_id).await;
            return Ok(());
        }
    };
    endpoint.set_server_config(Some(identity.server_config()?));
    let sidecar = Arc::new(Sidecar {
        client,
        fronted,
        identity: RwLock::new(identity),
        endpoint,
        decisions: Mutex::new(HashMap::new()),
        inbound: Mutex::new(Vec::new()),
        active: std::sync::atomic::AtomicUsize::new(0),
        refusals: refusals::Refusals::default(),
    });
    report(&sidecar, &proxy_id).await?;
    tracing::info!(
        service = %sidecar.fronted.id, quic = %bound, app = %sidecar.fronted.app,
        upstreams = upstreams.len(), "sidecar proxy running"
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(follow_identity(sidecar.clone()));
    tasks.spawn(inbound::follow_intentions(sidecar.clone()));
    tasks.spawn(inbound::accept(sidecar.clone()));
    tasks.spawn(heartbeat(sidecar.clone(), proxy_id.clone()));
    for spec in upstreams {
        tasks.spawn(upstream::serve(sidecar.clone(), spec));
    }
    if let Some(listener) = metrics {
        tasks.spawn(serve_metrics(listener));
    }
    if let Some(busy_poll) = busy_poll {
        tasks.spawn(async move {
            busy_poll.run().await;
            Ok(())
        });
    }
    tokio::select! {
        () = &mut stop => {}
        Some(ended) = tasks.join_next() => {
            // A task ends only on a fatal error (a port in use, an agent that is no agent).
            let err = match ended {
                Ok(Err(err)) => err,
                Ok(Ok(())) => anyhow!("a proxy task ended"),
                Err(panic) => anyhow!("a proxy task failed: {panic}"),
            };
            deregister(&sidecar.client, &proxy_id).await;
            return Err(err);
        }
    }
    drain(&sidecar, &proxy_id).await;
    Ok(())
}

/// Binds `--metrics-addr` and starts recording (before any traffic, so nothing is lost).
pub(super) async fn metrics_listener(text: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = crate::agent::config::parse_addr(text, 0).context("--metrics-addr")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}: pick another --metrics-addr"))?;
    crate::http::install_metrics();
    if let Ok(bound) = listener.local_addr() {
        tracing::info!("metrics for Prometheus at http://{bound}/metrics");
    }
    Ok(listener)
}

/// Serves `GET /metrics` in Prometheus' format until the proxy stops.
pub(super) async fn serve_metrics(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { crate::http::render_metrics() }),
    );
    axum::serve(listener, app)
        .await
        .context("the metrics listener failed")
}

/// Stops taking connections, lets open streams finish (up to [`DRAIN`]), and leaves.
async fn drain(sidecar: &Sidecar, proxy_id: &str) {
    deregister(&sidecar.client, proxy_id).await;
    sidecar.endpoint.set_server_config(None);
    let started = tokio::time::Instant::now();
    while sidecar.active.load(std::sync::atomic::Ordering::Relaxed) > 0 && started.elapsed() < DRAIN
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidecar.endpoint.close(0u32.into(), b"proxy stopping");
    tracing::info!("sidecar proxy stopped");
}

/// The instance `id` as the local agent has it registered.
async fn fronted(client: &Client, id: &str) -> anyhow::Result<Fronted> {
    let services = client.get("/v1/agent/services").await?;
    let Some(service) = services.get(id) else {
        bail!(
            "no service with ID {id:?} is registered on this agent: register it first (murmur services register) and give its ID, not its name"
        );
    };
    let name = service["Service"].as_str().unwrap_or_default().to_owned();
    let port = service["Port"].as_u64().unwrap_or(0);
    if port == 0 {
        bail!("service {id:?} has no port: the proxy needs the port its app listens on");
    }
    let ip: IpAddr = match service["Address"].as_str() {
        Some(text) if !text.is_empty() => text
            .parse()
            .with_context(|| format!("service {id:?} has address {text:?}, not an IP"))?,
        _ => IpAddr::from([127, 0, 0, 1]),
    };
    Ok(Fronted {
        id: id.to_owned(),
        name,
        app: SocketAddr::new(ip, port as u16),
        tls: None,
    })
}

/// The agent's own address, where the proxy listens unless told otherwise.
async fn agent_ip(client: &Client) -> anyhow::Result<IpAddr> {
    let me = client.get("/v1/agent/self").await?;
    me["Member"]["Addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("the agent did not say its address: give --listen"))
}

/// The mesh identity of `service`, asked of the agent again with capped exponential backoff
/// (and jitter, so a fleet does not retry in step) until it hands one out: a cluster with no
/// CA root yet, no signer reachable, or gossip without encryption are conditions an operator
/// fixes while the proxy waits, and it then comes up with no restart. Meanwhile the proxy's
/// check (`proxy_id`) stays critical with the reason, renewed every [`HEARTBEAT`] so its TTL
/// does not replace the reason.
async fn await_identity(client: &Client, service: &str, proxy_id: &str) -> MeshIdentity {
    let mut backoff = Backoff::default();
    let mut next_ask = tokio::time::Instant::now();
    let mut why = String::new();
    loop {
        if tokio::time::Instant::now() >= next_ask {
            match fetch_identity(client, service).await {
                Ok(identity) => return identity,
                Err(err) => {
                    let wait = backoff.next(rand::rng().random_range(0.0..1.0));
                    why = format!("no mesh identity yet (asking again in {wait:.1?}): {err:#}");
                    tracing::warn!(service, "{why}");
                    next_ask = tokio::time::Instant::now() + wait;
                }
            }
        }
        if let Err(err) = set_check(client, proxy_id, "fail", &why).await {
            tracing::warn!("cannot report the proxy's health: {err:#}");
        }
        let now = tokio::time::Instant::now();
        tokio::time::sleep(HEARTBEAT.min(next_ask.saturating_duration_since(now))).await;
    }
}

async fn fetch_identity(client: &Client, service: &str) -> anyhow::Result<MeshIdentity> {
    let leaf = client
        .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await?;
    let roots = client.get("/v1/agent/connect/ca/roots").await?;
    Ok(identity_from_answers(&leaf, &roots)?)
}

/// Keeps the identity current: a new leaf (renewal, rotation) or a new set of roots makes a
/// new server config for new connections; open connections keep theirs and are not dropped.
async fn follow_identity(sidecar: Arc<Sidecar>) -> anyhow::Result<()> {
    let latest: Arc<Mutex<(Value, Value)>> = Arc::default();
    let leaf_path = format!("/v1/agent/connect/ca/leaf/{}?", sidecar.fronted.name);
    let apply = |sidecar: &Sidecar, latest: &Mutex<(Value, Value)>| {
        let (leaf, roots) = latest.lock().expect("identity poisoned").clone();
        if leaf.is_null() || roots.is_null() {
            return;
        }
        match identity_from_answers(&leaf, &roots).and_then(|id| Ok((id.server_config()?, id))) {
            Ok((config, identity)) => {
                sidecar.endpoint.set_server_config(Some(config));
                *sidecar.identity.write().expect("identity poisoned") = identity;
                tracing::info!("mesh identity renewed");
            }
            Err(err) => tracing::warn!("cannot use the new leaf or roots: {err:#}"),
        }
    };
    let leaves = follow(&sidecar.client, &leaf_path, |leaf| {
        latest.lock().expect("identity poisoned").0 = leaf.clone();
        apply(&sidecar, &latest);
        Ok(())
    });
    let roots = follow(&sidecar.client, "/v1/agent/connect/ca/roots?", |roots| {
        latest.lock().expect("identity poisoned").1 = roots.clone();
        apply(&sidecar, &latest);
        Ok(())
    });
    tokio::try_join!(leaves, roots).map(drop)
}

/// Registers the proxy in the catalog with a TTL check (critical until reported); returns
/// its service ID.
async fn register(client: &Client, fronted: &Fronted, bound: SocketAddr) -> anyhow::Result<String> {
    let id = mesh_endpoint_name(&fronted.id);
    let body = json!({
        "ID": id,
        "Name": mesh_endpoint_name(&fronted.name),
        "Address": bound.ip().to_string(),
        "Port": bound.port(),
        "Meta": {
            PROXY_FOR_META: fronted.id,
            "murmur-destination-service": fronted.name,
        },
        "Check": {"Name": "sidecar proxy and its app", "TTL": format!("{}s", HEARTBEAT.as_secs() * 5)},
    });
    client
        .put("/v1/agent/service/register", serde_json::to_vec(&body)?)
        .await
        .context("cannot register the sidecar proxy")?;
    Ok(id)
}

/// Reports the proxy's health: passing while its app accepts connections and none of the
/// app's own checks is critical, else critical with the reason, so upstreams stop picking an
/// instance whose app is down (as Consul's alias check does) even while the proxy lives.
async fn report(sidecar: &Sidecar, id: &str) -> anyhow::Result<()> {
    let (verdict, note) = match app_health(sidecar).await {
        Ok(()) => ("pass", "proxy and app up".to_owned()),
        Err(why) => ("fail", why),
    };
    set_check(&sidecar.client, id, verdict, &note).await
}

/// Sets the proxy `id`'s TTL check: `verdict` is `pass` or `fail`, `note` its output.
async fn set_check(client: &Client, id: &str, verdict: &str, note: &str) -> anyhow::Result<()> {
    let path = format!(
        "/v1/agent/check/{verdict}/service:{id}?note={}",
        super::urlencode(note)
    );
    client.put(&path, Vec::new()).await.map(drop)
}

async fn app_health(sidecar: &Sidecar) -> Result<(), String> {
    let app = sidecar.fronted.app;
    tokio::time::timeout(HEARTBEAT, tokio::net::TcpStream::connect(app))
        .await
        .map_err(|_| format!("the app at {app} does not answer"))?
        .map_err(|e| format!("the app at {app} refuses connections: {e}"))?;
    let checks = sidecar
        .client
        .get("/v1/agent/checks")
        .await
        .map_err(|e| format!("cannot read the app's checks: {e:#}"))?;
    let critical =
        checks.as_object().into_iter().flatten().find(|(_, c)| {
            c["ServiceID"] == sidecar.fronted.id.as_str() && c["Status"] == "critical"
        });
    match critical {
        Some((check, _)) => Err(format!("the app's check {check} is critical")),
        None => Ok(()),
    }
}

/// Keeps reporting the proxy's health.
async fn heartbeat(sidecar: Arc<Sidecar>, id: String) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(err) = report(&sidecar, &id).await {
            tracing::warn!("cannot report the proxy's health: {err:#}");
        }
    }
}

async fn deregister(client: &Client, id: &str) {
    let path = format!("/v1/agent/service/deregister/{id}");
    if let Err(err) = client.put(&path, Vec::new()).await {
        tracing::warn!("cannot deregister the sidecar proxy: {err:#}");
    }
}
