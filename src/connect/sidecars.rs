//! Sidecar proxies the agent runs itself, for services registered with Consul's
//! `Connect.SidecarService` block: the same proxy as `murmur connect proxy`, as a task of the
//! agent, so its metrics are the agent's (`/v1/agent/metrics`). Re-registering the service
//! replaces its proxy; deregistering it stops the proxy (which drains and deregisters itself).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::cli::{HttpTarget, ProxyArgs};
use crate::services::Upstream;

/// The agent's own sidecars, by the ID of the service each fronts.
pub struct Sidecars {
    http: SocketAddr,
    running: Mutex<HashMap<String, Running>>,
}

/// One proxy the agent runs: its upstreams, and how to stop it.
struct Running {
    upstreams: Vec<Upstream>,
    stop: Arc<Notify>,
}

impl Sidecars {
    /// Sidecars that reach their agent at `http`.
    pub fn new(http: SocketAddr) -> Self {
        Self {
            http,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().expect("sidecars poisoned")
    }

    /// Starts the proxy of service `id` with `upstreams`; one already running with the same
    /// upstreams is kept (a service registered again keeps its connections), one with
    /// others is replaced.
    pub fn start(&self, id: &str, upstreams: &[Upstream]) {
        if self
            .running()
            .get(id)
            .is_some_and(|r| r.upstreams == upstreams)
        {
            return;
        }
        self.stop(id);
        let stop = Arc::new(Notify::new());
        self.running().insert(
            id.to_owned(),
            Running {
                upstreams: upstreams.to_vec(),
                stop: stop.clone(),
            },
        );
        let args = ProxyArgs {
            sidecar_for: id.to_owned(),
            upstream: upstreams.iter().map(Upstream::flag).collect(),
            listen: None,
            // Runs on the agent's runtime: the flag only sizes the runtime of a standalone
            // `murmur connect proxy`.
            worker_threads: 1,
            // Spinning on the agent's shared runtime would keep the agent's threads busy, not
            // a proxy's: busy polling is for standalone proxies.
            busy_poll: None,
            // The agent's own /v1/agent/metrics exports them.
            metrics_addr: None,
            target: HttpTarget {
                http_addr: self.http.to_string(),
                datacenter: None,
            },
        };
        let id = id.to_owned();
        tokio::spawn(async move {
            let stopped = async move { stop.notified().await };
            if let Err(err) = crate::client::sidecar::serve(args, stopped).await {
                tracing::warn!(service = %id, "the sidecar proxy stopped: {err:#}");
            }
        });
    }

    /// Stops the proxy of service `id`, if the agent runs one.
    pub fn stop(&self, id: &str) {
        if let Some(running) = self.running().remove(id) {
            running.stop.notify_one();
        }
    }
}
