//! The native SDK: an application joins the mesh itself, with the same identity, authorization
//! and encryption as a sidecar gives it, and no proxy in the path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), murmur_proxy::native::MeshError> {
//! use murmur_proxy::native::{MeshClient, MeshListener};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! // A client: talks to "db" as the service "web".
//! let web = MeshClient::new("127.0.0.1:8500", "web").await?;
//! let mut db = web.connect("db").await?;
//! db.write_all(b"ping").await?;
//! // "db" of the datacenter dc2, found through the local agent's ?dc= and checked against
//! // dc2's roots.
//! let mut remote_db = web.connect_in("db", Some("dc2")).await?;
//! // A server: the instance "db-1" (registered on the local agent) takes mesh connections.
//! let listener = MeshListener::bind("127.0.0.1:8500", "db-1", "127.0.0.1:0".parse().unwrap()).await?;
//! let (mut stream, caller) = listener.accept().await?;
//! # Ok(()) }
//! ```
//!
//! Both sides learn their leaf and the roots from the local agent's HTTP API and fetch them
//! again when the leaf is due for renewal. When the agent cannot give one (no CA root yet, no
//! signer reachable, the agent restarting) neither side fails for it: both keep asking with
//! capped exponential backoff and jitter ([`crate::backoff`]); meanwhile a client's `connect`
//! answers [`MeshError::NoIdentityYet`] with the agent's reason, and a listener registers its
//! endpoint only once it can serve. A listener also follows the roots, so callers with
//! leaves of a new root get in at once after a rotation; a client whose handshake fails fetches
//! its identity again and retries once. A listener is
//! found by clients, sidecars included, as `<ID>-sidecar-proxy` in the catalog, like a sidecar;
//! the agent's `authorize` decides each accepted connection. Unlike a sidecar, a native
//! listener does not close open connections when an intention changes: it checks each new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rand::seq::SliceRandom;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::agent_api::AgentApiSettings;
use crate::backoff::Backoff;
use crate::ca::renew_at;
use crate::identity::ServiceId;
use crate::tls::{MeshIdentity, TlsError, peer_service};
use crate::trust::TrustedRoot;

/// What went wrong joining or using the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The agent could not be reached or refused.
    #[error("the murmur agent at {base}: {why}")]
    Agent {
        /// The agent's address.
        base: String,
        /// What happened.
        why: String,
    },
    /// Certificate or TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// QUIC.
    #[error("QUIC: {0}")]
    Quic(String),
    /// The agent could not give this service a leaf yet (no CA root, no signer reachable, no
    /// gossip encryption, the agent down); it is asked again in the background with capped
    /// backoff, and a later call succeeds once the cause is fixed.
    #[error("no mesh identity for {service} yet (asking the agent again in {retry_in:.1?}): {why}")]
    NoIdentityYet {
        /// The service whose leaf was asked for.
        service: String,
        /// The agent's answer.
        why: String,
        /// When it is asked again.
        retry_in: std::time::Duration,
    },
    /// No instance of the destination could be reached.
    #[error("no healthy instance of {0} could be reached")]
    Unreachable(String),
    /// Stream I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The catalog name under which the mesh endpoint of instances of `service` are found.
pub fn mesh_endpoint_name(service: &str) -> String {
    format!("{service}-sidecar-proxy")
}

/// The QUIC addresses in a `/v1/health/service` answer (the service's address, or its node's).
pub fn mesh_addresses(list: &Value) -> Vec<SocketAddr> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let service_addr = entry["Service"]["Address"].as_str().unwrap_or_default();
            let ip = if service_addr.is_empty() {
                entry["Node"]["Address"].as_str()?
            } else {
                service_addr
            };
            let port = u16::try_from(entry["Service"]["Port"].as_u64()?).ok()?;
            Some(SocketAddr::new(ip.parse().ok()?, port))
        })
        .collect()
}

/// The mesh identity in the agent's answers to `/v1/agent/connect/ca/leaf/:service` and
/// `/v1/agent/connect/ca/roots` (whose roots name their datacenter in `Datacenter`, a field
/// of murmur's beside Consul's).
pub fn identity_from_answers(leaf: &Value, roots: &Value) -> Result<MeshIdentity, TlsError> {
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let roots: Vec<TrustedRoot> = roots["Roots"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| TrustedRoot {
            datacenter: text(r, "Datacenter"),
            cert_pem: text(r, "RootCert"),
        })
        .collect();
    MeshIdentity::from_pem(&text(leaf, "CertPEM"), &text(leaf, "PrivateKeyPEM"), &roots)
}

/// The blocking health query (ending in `&`) that finds the healthy mesh endpoints of
/// `service` in `datacenter` (the agent's own when `None`).
pub fn mesh_health_path(service: &str, datacenter: Option<&str>) -> String {
    let dc = datacenter.map(|dc| format!("dc={dc}&")).unwrap_or_default();
    format!(
        "/v1/health/service/{}?passing&{dc}",
        mesh_endpoint_name(service)
    )
}

/// The local agent's HTTP API, as much as the SDK needs.
#[derive(Clone)]
struct Agent {
    base: String,
    http: reqwest::Client,
}

impl Agent {
    /// The agent at `addr` (`host:port` or a URL), asked as the environment says
    /// ([`AgentApiSettings::from_env`]): with the ACL token in `MURMUR_HTTP_TOKEN` or Consul's
    /// `CONSUL_HTTP_TOKEN` (the leaf of a service needs `service:write` on it when the agents
    /// run with ACLs), over HTTPS with `MURMUR_HTTP_SSL` and the CA in `MURMUR_CACERT`.
    fn new(addr: &str) -> Result<Self, MeshError> {
        let api = AgentApiSettings::from_env(Some(addr))
            .and_then(|settings| settings.connect())
            .map_err(|e| MeshError::Agent {
                base: addr.to_owned(),
                why: e.to_string(),
            })?;
        Ok(Self {
            base: api.base,
            http: api.http,
        })
    }

    fn error(&self, why: impl std::fmt::Display) -> MeshError {
        MeshError::Agent {
            base: self.base.clone(),
            why: why.to_string(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, MeshError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        Ok(self.answer(request, path).await?.0)
    }

    /// Sends `request` (for `path`); the answer's JSON (`null` when empty: registrations
    /// answer 200 with no body) and its `X-Consul-Index`, or why it failed.
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<(Value, Option<u64>), MeshError> {
        let response = request.send().await.map_err(|e| self.error(e))?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = response.text().await.map_err(|e| self.error(e))?;
        if !status.is_success() {
            return Err(self.error(format!("{path} answered {status}: {}", text.trim())));
        }
        if text.trim().is_empty() {
            return Ok((Value::Null, index));
        }
        let value = serde_json::from_str(&text).map_err(|e| self.error(format!("{path}: {e}")))?;
        Ok((value, index))
    }

    async fn get(&self, path: &str) -> Result<Value, MeshError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// A blocking query: `path` (ending in `?` or `&`) answered once its index passes `index`
    /// or after five minutes, with the answer's `X-Consul-Index`.
    async fn get_after(&self, path: &str, index: u64) -> Result<(Value, u64), MeshError> {
        let url = format!("{}{path}index={index}&wait=5m", self.base);
        let (value, next) = self.answer(self.http.get(&url), path).await?;
        let next = next.ok_or_else(|| self.error(format!("{path}: no X-Consul-Index")))?;
        Ok((value, next))
    }
}

/// A service's identity as last fetched, with when to fetch it again.
struct Current {
    identity: MeshIdentity,
    renew_at_s: u64,
    /// When its leaf expires: until then it serves even if a renewal fails.
    valid_before_s: u64,
}

/// The last failed fetch, and when the next may be tried.
struct Failure {
    why: String,
    retry_at: tokio::time::Instant,
}

/// What [`Identity`] holds between calls.
#[derive(Default)]
struct Held {
    current: Option<Arc<Current>>,
    failure: Option<Failure>,
    backoff: Backoff,
}

/// This process's identity in the mesh, refreshed from the agent when due. Failed fetches
/// are retried with capped exponential backoff and jitter ([`Backoff`]): between two tries a
/// call answers at once with the last reason instead of asking the agent again, and a leaf
/// that is still valid keeps serving meanwhile.
struct Identity {
    agent: Agent,
    service: String,
    held: Mutex<Held>,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Identity {
    fn new(agent: Agent, service: &str) -> Self {
        Self {
            agent,
            service: service.to_owned(),
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("identity poisoned")
    }

    /// The identity, fetched again if due, or if `stale` is the one in use (a handshake
    /// failed with it: the roots may have moved, as after a rotation).
    async fn get(&self, stale: Option<&Arc<Current>>) -> Result<Arc<Current>, MeshError> {
        {
            let held = self.held();
            let usable = held.current.clone().filter(|c| now_s() < c.valid_before_s);
            if let Some(current) = &usable
                && !stale.is_some_and(|s| Arc::ptr_eq(s, current))
                && now_s() < current.renew_at_s
            {
                return Ok(current.clone());
            }
            if let Some(failure) = &held.failure {
                let now = tokio::time::Instant::now();
                if now < failure.retry_at {
                    return usable.ok_or_else(|| MeshError::NoIdentityYet {
                        service: self.service.clone(),
                        why: failure.why.clone(),
                        retry_in: failure.retry_at - now,
                    });
                }
            }
        }
        match self.fetch().await {
            Ok(current) => {
                let mut held = self.held();
                held.current = Some(current.clone());
                held.failure = None;
                held.backoff.reset();
                Ok(current)
            }
            Err(err) => {
                let mut held = self.held();
                let retry_in = held.backoff.next(rand::random());
                tracing::warn!(service = %self.service, "no mesh identity (asking again in {retry_in:.1?}): {err}");
                held.failure = Some(Failure {
                    why: err.to_string(),
                    retry_at: tokio::time::Instant::now() + retry_in,
                });
                match held.current.clone().filter(|c| now_s() < c.valid_before_s) {
                    Some(current) => Ok(current),
                    None => Err(MeshError::NoIdentityYet {
                        service: self.service.clone(),
                        why: err.to_string(),
                        retry_in,
                    }),
                }
            }
        }
    }

    /// Asks the agent for the leaf and the roots.
    async fn fetch(&self) -> Result<Arc<Current>, MeshError> {
        let leaf = self
            .agent
            .get(&format!("/v1/agent/connect/ca/leaf/{}", self.service))
            .await?;
        let roots = self.agent.get("/v1/agent/connect/ca/roots").await?;
        let identity = identity_from_answers(&leaf, &roots)?;
        // Fetch again at 60% of what is left of the leaf's life: the agent hands out the same
        // leaf until it renews it.
        let now = now_s();
        let valid_before = leaf["ValidBefore"]
            .as_str()
            .and_then(rfc3339_s)
            .unwrap_or(now + 60);
        Ok(Arc::new(Current {
            identity,
            renew_at_s: renew_at(now, valid_before, 0.0),
            valid_before_s: valid_before,
        }))
    }

    /// How long until the identity should be asked for again: at its renewal, or at the
    /// next try after a failure.
    fn next_due(&self) -> std::time::Duration {
        let held = self.held();
        if let Some(failure) = &held.failure {
            return failure
                .retry_at
                .saturating_duration_since(tokio::time::Instant::now());
        }
        let renew_at = held.current.as_ref().map_or(0, |c| c.renew_at_s);
        std::time::Duration::from_secs(renew_at.saturating_sub(now_s()))
    }
}

/// Keeps `identity` fetched: at start, after each failure once its backoff has passed, and
/// when due for renewal; each new one goes to `on_new`. Runs until its task is aborted.
async fn keep_fetched(identity: Arc<Identity>, mut on_new: impl FnMut(Arc<Current>)) {
    let mut last: Option<Arc<Current>> = None;
    loop {
        if let Ok(current) = identity.get(None).await
            && !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &current))
        {
            on_new(current.clone());
            last = Some(current);
        }
        tokio::time::sleep(
            identity
                .next_due()
                .max(std::time::Duration::from_millis(100)),
        )
        .await;
    }
}

/// Unix seconds of an RFC 3339 time.
fn rfc3339_s(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// A service to dial and its datacenter (`None`: the local one).
type Destination = (String, Option<String>);

/// Dials mesh services as one service.
pub struct MeshClient {
    identity: Arc<Identity>,
    endpoint: quinn::Endpoint,
    pool: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// The healthy instances of each destination (service, datacenter) dialed so far, kept
    /// current by a blocking query per destination (so a new connection asks the agent
    /// nothing).
    instances: Arc<Mutex<HashMap<Destination, Vec<SocketAddr>>>>,
    followers: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl MeshClient {
    /// Joins the mesh as `service` through the agent at `agent_http` (e.g. `127.0.0.1:8500`).
    ///
    /// The identity is asked for at once and kept current in the background. If the agent
    /// cannot give one yet (no CA root, no signer, the agent restarting) the client is made
    /// all the same: it keeps asking with capped backoff, [`Self::connect`] answers
    /// [`MeshError::NoIdentityYet`] with the agent's reason meanwhile, and works once the
    /// cause is fixed, with no new client.
    pub async fn new(agent_http: &str, service: &str) -> Result<Self, MeshError> {
        let identity = Arc::new(Identity::new(Agent::new(agent_http)?, service));
        let _ready_now = identity.get(None).await;
        let endpoint = crate::udp::endpoint(SocketAddr::from(([0, 0, 0, 0], 0)), None, None)?;
        let keeper = tokio::spawn(keep_fetched(identity.clone(), |_| {}));
        Ok(Self {
            identity,
            endpoint,
            pool: Mutex::new(HashMap::new()),
            instances: Arc::default(),
            followers: Mutex::new(vec![keeper.abort_handle()]),
        })
    }

    /// The healthy instances of `destination`: as last seen, or asked of the agent (once:
    /// then a blocking query keeps them current).
    async fn instances(&self, destination: &Destination) -> Result<Vec<SocketAddr>, MeshError> {
        if let Some(known) = self.known(destination) {
            return Ok(known);
        }
        let path = mesh_health_path(&destination.0, destination.1.as_deref());
        let (list, index) = self.identity.agent.get_after(&path, 0).await?;
        let mut instances = self.instances.lock().expect("instances poisoned");
        if !instances.contains_key(destination) {
            instances.insert(destination.clone(), mesh_addresses(&list));
            let (agent, known) = (self.identity.agent.clone(), self.instances.clone());
            let destination = destination.clone();
            let follower = tokio::spawn(async move {
                follow(&agent, &path, index, |list| {
                    let mut known = known.lock().expect("instances poisoned");
                    known.insert(destination.clone(), mesh_addresses(&list));
                    std::future::ready(())
                })
                .await
            });
            let mut followers = self.followers.lock().expect("followers poisoned");
            followers.push(follower.abort_handle());
        }
        Ok(instances[destination].clone())
    }

    fn known(&self, destination: &Destination) -> Option<Vec<SocketAddr>> {
        let instances = self.instances.lock().expect("instances poisoned");
        instances.get(destination).cloned()
    }

    /// A stream to a healthy instance of `destination` in this datacenter (another one if a
    /// dial fails), over a pooled connection when there is one.
    pub async fn connect(&self, destination: &str) -> Result<MeshStream, MeshError> {
        self.connect_in(destination, None).await
    }

    /// A stream to a healthy instance of `destination` in `datacenter` (this one's when
    /// `None`): its instances come from the local agent (`?dc=`, answered by that
    /// datacenter), and its leaf must chain to one of that datacenter's roots.
    pub async fn connect_in(
        &self,
        destination: &str,
        datacenter: Option<&str>,
    ) -> Result<MeshStream, MeshError> {
        // Without an identity no dial can succeed: say why, rather than that nothing answered.
        self.identity.get(None).await?;
        let target = (destination.to_owned(), datacenter.map(str::to_owned));
        let mut candidates = self.instances(&target).await?;
        candidates.shuffle(&mut rand::rng());
        for addr in candidates {
            match self.stream(&target, addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => {
                    tracing::debug!(%addr, destination, ?datacenter, "mesh dial failed: {err}");
                    self.pool.lock().expect("pool poisoned").remove(&addr);
                }
            }
        }
        Err(MeshError::Unreachable(match datacenter {
            Some(dc) => format!("{destination} in datacenter {dc}"),
            None => destination.to_owned(),
        }))
    }

    async fn stream(
        &self,
        destination: &Destination,
        addr: SocketAddr,
    ) -> Result<MeshStream, MeshError> {
        let pooled = self.pool.lock().expect("pool poisoned").get(&addr).cloned();
        let connection = match pooled.filter(|c| c.close_reason().is_none()) {
            Some(connection) => connection,
            None => {
                let current = self.identity.get(None).await?;
                let connection = match self.dial(&current, destination, addr).await {
                    Ok(connection) => connection,
                    // The roots may have moved (a rotation): fetch them and try once more.
                    Err(_) => {
                        let fresh = self.identity.get(Some(&current)).await?;
                        self.dial(&fresh, destination, addr).await?
                    }
                };
                self.pool
                    .lock()
                    .expect("pool poisoned")
                    .insert(addr, connection.clone());
                connection
            }
        };
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| MeshError::Quic(e.to_string()))?;
        Ok(MeshStream { send, recv })
    }

    async fn dial(
        &self,
        current: &Current,
        (service, datacenter): &Destination,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, MeshError> {
        let server = current.identity.destination(service, datacenter.as_deref());
        self.endpoint
            .connect_with(current.identity.client_config()?, addr, &server.dns_name())
            .map_err(|e| MeshError::Quic(e.to_string()))?
            .await
            .map_err(|e| MeshError::Quic(e.to_string()))
    }
}

/// Takes mesh connections for one service instance registered on the local agent.
pub struct MeshListener {
    agent: Agent,
    endpoint: quinn::Endpoint,
    registration: String,
    streams: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(MeshStream, ServiceId)>>,
    /// The accept loop and the roots follower.
    tasks: [tokio::task::JoinHandle<()>; 2],
}

/// Streams of authorized callers waiting for `accept`.
const BACKLOG: usize = 1024;

impl MeshListener {
    /// Listens at `addr` for the instance `service_id` (registered on the agent at
    /// `agent_http`) and registers the endpoint so that clients and sidecars find it.
    ///
    /// The service must be registered (an error says so otherwise). If the agent cannot give
    /// it a leaf yet, the listener is made all the same: it keeps asking with capped backoff,
    /// and takes connections and registers its endpoint once it has one, with no new
    /// listener.
    pub async fn bind(
        agent_http: &str,
        service_id: &str,
        addr: SocketAddr,
    ) -> Result<Self, MeshError> {
        let agent = Agent::new(agent_http)?;
        let services = agent.get("/v1/agent/services").await?;
        let service = services[service_id]["Service"]
            .as_str()
            .ok_or_else(|| {
                agent.error(format!(
                    "no service with ID {service_id:?} is registered on this agent: register it first"
                ))
            })?
            .to_owned();
        let identity = Arc::new(Identity::new(agent.clone(), &service));
        let current = identity.get(None).await.ok();
        let server_config = current
            .as_ref()
            .map(|c| c.identity.server_config())
            .transpose()?;
        let endpoint = crate::udp::endpoint(addr, server_config, None)?;
        let bound = endpoint.local_addr()?;
        let registration = mesh_endpoint_name(service_id);
        let body = json!({
            "ID": registration,
            "Name": mesh_endpoint_name(&service),
            "Address": bound.ip().to_string(),
            "Port": bound.port(),
            "Meta": {"murmur-proxy-for": service_id, "murmur-native": "true"},
        });
        let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
        let in_use: Arc<Mutex<Option<Arc<Current>>>> = Arc::new(Mutex::new(current));
        let serving = tokio::spawn(serve_and_follow(
            identity.clone(),
            endpoint.clone(),
            in_use.clone(),
            body,
        ));
        let acceptor = tokio::spawn(accept_loop(identity, endpoint.clone(), tx, in_use));
        Ok(Self {
            agent,
            endpoint,
            registration,
            streams: tokio::sync::Mutex::new(rx),
            tasks: [acceptor, serving],
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The next stream of an authorized caller, with the caller's identity. Callers the
    /// handshake or the intentions refuse are turned away before this and never returned.
    pub async fn accept(&self) -> Result<(MeshStream, ServiceId), MeshError> {
        self.streams
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| MeshError::Quic("the listener is closed".into()))
    }

    /// Deregisters the endpoint and closes the listener.
    pub async fn close(self) -> Result<(), MeshError> {
        let path = format!("/v1/agent/service/deregister/{}", self.registration);
        let result = self.agent.call(reqwest::Method::PUT, &path, None).await;
        self.endpoint.close(0u32.into(), b"closed");
        result.map(drop)
    }
}

/// Makes `current` the identity new connections are accepted with, if it is not already.
fn serve_with(
    endpoint: &quinn::Endpoint,
    in_use: &Mutex<Option<Arc<Current>>>,
    current: Arc<Current>,
) {
    let mut in_use = in_use.lock().expect("identity poisoned");
    if in_use.as_ref().is_some_and(|c| Arc::ptr_eq(c, &current)) {
        return;
    }
    if let Ok(config) = current.identity.server_config() {
        endpoint.set_server_config(Some(config));
        *in_use = Some(current);
    }
}

/// Follows `path` (ending in `?` or `&`) with blocking queries from `index` (0: the first
/// answer is the starting point, not a change), handing every changed answer to `on_change`.
/// Errors are retried after a second; an index that goes back (a restarted agent) starts
/// over, as Consul's clients do. Runs until its task is aborted.
async fn follow<F, Fut>(agent: &Agent, path: &str, mut index: u64, mut on_change: F)
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        match agent.get_after(path, index).await {
            Ok((value, next)) => {
                if index != 0 && next != index {
                    on_change(value).await;
                }
                index = if next < index { 0 } else { next };
            }
            Err(err) => {
                tracing::debug!(path, "blocking query failed: {err}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Waits for an identity (asking with backoff), serves with it, registers the endpoint
/// (`registration`, retried with backoff while the agent refuses), then follows the roots:
/// when they change (a rotation) it fetches the leaf and roots again, so callers with leaves
/// of the new root are let in at once; renewals are taken as they come due.
async fn serve_and_follow(
    identity: Arc<Identity>,
    endpoint: quinn::Endpoint,
    in_use: Arc<Mutex<Option<Arc<Current>>>>,
    registration: Value,
) {
    let (identity, endpoint, in_use) = (&identity, &endpoint, &in_use);
    let ready = Arc::new(tokio::sync::Notify::new());
    let keeper = keep_fetched(identity.clone(), {
        let ready = ready.clone();
        move |current| {
            serve_with(endpoint, in_use, current);
            ready.notify_one();
        }
    });
    let register_and_follow = async {
        ready.notified().await;
        let mut backoff = Backoff::default();
        while let Err(err) = identity
            .agent
            .call(
                reqwest::Method::PUT,
                "/v1/agent/service/register",
                Some(registration.clone()),
            )
            .await
        {
            let wait = backoff.next(rand::random());
            tracing::warn!("cannot register the mesh endpoint (again in {wait:.1?}): {err}");
            tokio::time::sleep(wait).await;
        }
        follow(
            &identity.agent,
            "/v1/agent/connect/ca/roots?",
            0,
            |_| async move {
                let stale = in_use.lock().expect("identity poisoned").clone();
                if let Ok(fresh) = identity.get(stale.as_ref()).await {
                    serve_with(endpoint, in_use, fresh);
                }
            },
        )
        .await;
    };
    tokio::join!(keeper, register_and_follow);
}

impl Drop for MeshClient {
    fn drop(&mut self) {
        for follower in self.followers.lock().expect("followers poisoned").iter() {
            follower.abort();
        }
    }
}

impl Drop for MeshListener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Takes connections, asks the agent to authorize each caller, and hands the streams of the
/// authorized ones to `accept`; the leaf is refreshed when due, for new connections.
async fn accept_loop(
    identity: Arc<Identity>,
    endpoint: quinn::Endpoint,
    streams: tokio::sync::mpsc::Sender<(MeshStream, ServiceId)>,
    in_use: Arc<Mutex<Option<Arc<Current>>>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        if let Ok(current) = identity.get(None).await {
            serve_with(&endpoint, &in_use, current);
        }
        let (identity, streams) = (identity.clone(), streams.clone());
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return; // refused in the handshake
            };
            let Ok(caller) = peer_service(&connection) else {
                connection.close(1u32.into(), b"no service identity");
                return;
            };
            if !authorized(&identity, &caller).await {
                connection.close(1u32.into(), b"denied by intention");
                return;
            }
            while let Ok((send, recv)) = connection.accept_bi().await {
                if streams
                    .send((MeshStream { send, recv }, caller.clone()))
                    .await
                    .is_err()
                {
                    return; // the listener is gone
                }
            }
        });
    }
}

async fn authorized(identity: &Identity, caller: &ServiceId) -> bool {
    let body = json!({"Target": identity.service, "ClientCertURI": caller.uri()});
    let answer = identity
        .agent
        .call(
            reqwest::Method::POST,
            "/v1/agent/connect/authorize",
            Some(body),
        )
        .await;
    answer.is_ok_and(|a| a["Authorized"].as_bool() == Some(true))
}

/// One mesh connection as the application sees it: a byte stream both ways.
pub struct MeshStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(Into::into)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
