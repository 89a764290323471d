//! Sidecar proxies the agent runs itself, for services registered with Consul's
//! `Connect.SidecarService` block: the same proxy as `murmur connect proxy`, as a task of the
//! agent, so its metrics are the agent's (`/v1/agent/metrics`). Re-registering the service
//! replaces its proxy; deregistering it stops the proxy (which drains and deregisters itself).
//! Which services have one is kept in the data dir (`sidecars.json`), so a restarted agent
//! runs them again, as it restores the services themselves.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use murmur_proxy::backoff::Backoff;
use rand::RngExt;
use tokio::sync::Notify;

use crate::agent::persist::DataDir;
use crate::cli::{HttpTarget, ProxyArgs};
use crate::services::Upstream;

/// A sidecar that ran this long before it failed starts again after the shortest wait.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// File under `--data-dir` with the upstreams of each sidecar the agent runs.
const SIDECARS_FILE: &str = "sidecars.json";

/// The agent's own sidecars, by the ID of the service each fronts.
pub struct Sidecars {
    http: SocketAddr,
    /// Where the proxies listen for mesh traffic: the agent's advertised address (given, so a
    /// proxy need not ask `/v1/agent/self`, which needs `agent:read` under ACLs).
    listen_ip: std::net::IpAddr,
    store: Option<DataDir>,
    running: Mutex<HashMap<String, Running>>,
}

/// What a sidecar is started with: its upstreams, and the ACL token of the registration that
/// asked for it (the proxy acts with it, as Consul's sidecars use their service's token).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SidecarSpec {
    /// Its upstreams.
    pub upstreams: Vec<Upstream>,
    /// The registration's token, if it came with one (kept in the data dir, 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// For a `Kind: "mesh-gateway"` registration: the gateway's LAN and WAN addresses; the
    /// agent runs a mesh gateway there instead of a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_gateway: Option<(SocketAddr, SocketAddr)>,
}

/// One proxy the agent runs: what it runs with, and how to stop it.
struct Running {
    spec: SidecarSpec,
    stop: Arc<Notify>,
}

impl Sidecars {
    /// Sidecars that reach their agent at `http` and listen on `listen_ip`, kept in `store`
    /// (none with `--dev`).
    pub fn new(http: SocketAddr, listen_ip: std::net::IpAddr, store: Option<DataDir>) -> Self {
        Self {
            http,
            listen_ip,
            store,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The sidecars that ran before a restart, by service ID.
    pub fn persisted(&self) -> anyhow::Result<BTreeMap<String, SidecarSpec>> {
        DataDir::read_json(
            self.store.as_ref(),
            SIDECARS_FILE,
            "delete it and register the services with sidecars again",
        )
    }

    /// Writes which sidecars run, under the lock that changed them.
    fn persist(&self, running: &HashMap<String, Running>) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let kept: BTreeMap<&String, &SidecarSpec> =
            running.iter().map(|(id, r)| (id, &r.spec)).collect();
        store.write(SIDECARS_FILE, &serde_json::to_string_pretty(&kept)?)
    }

    /// The upstreams the running sidecars declare: (service id, destination service).
    pub fn declared(&self) -> Vec<(String, String)> {
        self.running()
            .iter()
            .flat_map(|(id, r)| {
                r.spec
                    .upstreams
                    .iter()
                    .map(move |u| (id.clone(), u.destination.clone()))
            })
            .collect()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().expect("sidecars poisoned")
    }

    /// Starts the proxy of service `id` as `spec` says; one already running the same way is
    /// kept (a service registered again keeps its connections), another is replaced.
    pub fn start(&self, id: &str, spec: SidecarSpec) -> anyhow::Result<()> {
        let stop = Arc::new(Notify::new());
        let upstreams = spec.upstreams.clone();
        let token = spec.token.clone();
        let gateway = spec.mesh_gateway;
        {
            let mut running = self.running();
            if running.get(id).is_some_and(|r| r.spec == spec) {
                return Ok(());
            }
            let replaced = running.insert(
                id.to_owned(),
                Running {
                    spec,
                    stop: stop.clone(),
                },
            );
            if let Some(old) = replaced {
                old.stop.notify_one();
            }
            self.persist(&running)?;
        }
        let args = ProxyArgs {
            sidecar_for: id.to_owned(),
            upstream: upstreams.iter().map(Upstream::flag).collect(),
            listen: Some(SocketAddr::new(self.listen_ip, 0).to_string()),
            // Runs on the agent's runtime: the flag only sizes the runtime of a standalone
            // `murmur connect proxy`.
            worker_threads: 1,
            // Spinning on the agent's shared runtime would keep the agent's threads busy, not
            // a proxy's: busy polling is for standalone proxies.
            busy_poll: None,
            // The agent's own /v1/agent/metrics exports them.
            metrics_addr: None,
            target: HttpTarget {
                token,
                // The scheme said, so that an HTTPS setting in the agent's environment (meant
                // for the CLI) does not turn the sidecars to the plain listener.
                ..HttpTarget::at(format!("http://{}", self.http))
            },
        };
        tokio::spawn(keep_running(id.to_owned(), args, gateway, stop));
        Ok(())
    }

    /// Stops the proxy of service `id`, if the agent runs one.
    pub fn stop(&self, id: &str) -> anyhow::Result<()> {
        let mut running = self.running();
        if let Some(stopped) = running.remove(id) {
            stopped.stop.notify_one();
            self.persist(&running)?;
        }
        Ok(())
    }
}

/// Runs the proxy of service `id` until `stop` is notified; a proxy that fails (its upstream
/// port taken, say) is started again with capped backoff, so fixing the cause brings it back
/// without re-registering the service.
async fn keep_running(
    id: String,
    args: ProxyArgs,
    gateway: Option<(SocketAddr, SocketAddr)>,
    stop: Arc<Notify>,
) {
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        let stopped = stop.notified();
        let ran = match gateway {
            None => crate::client::sidecar::serve(args.clone(), stopped).await,
            Some((lan, wan)) => {
                crate::client::gateway::serve_registered(args.target.clone(), lan, wan, stopped)
                    .await
            }
        };
        let Err(err) = ran else {
            return;
        };
        if started.elapsed() > HEALTHY_RUN {
            backoff.reset();
        }
        let wait = backoff.next(rand::rng().random_range(0.0..1.0));
        metrics::counter!("murmur_sidecar_restarts_total").increment(1);
        let what = if gateway.is_some() {
            "the mesh gateway"
        } else {
            "the sidecar proxy"
        };
        tracing::warn!(service = %id, "{what} stopped: {err:#}; starting it again in {wait:.1?}");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.notified() => return,
        }
    }
}
