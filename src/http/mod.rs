//! The HTTP API: the agent, catalog, KV, event, keyring and metrics endpoints, in Consul's shapes
//! (`shared/CONSUL-API.md`), so Consul clients and tools work against murmur.
//!
//! murmur has no leader: `X-Consul-KnownLeader` is always `true` (every agent serves) and
//! `X-Consul-Effective-Consistency` is `stale`: each agent answers from its own replica.

mod acl;
pub use acl::Acl;
mod answers;
pub mod blocking;
mod catalog;
mod checks;
mod connect;
mod coordinate;
mod datacenter;
mod external;
mod filter;
mod health;
mod intentions;
mod kv;
mod limits;
pub mod query;
pub mod serve;
pub mod tls;
pub mod ui;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use murmur_acl::{Access, Resource};
use murmur_gossip::{
    EventFilter, GossipError, KeyringOp, MemberState, MemberStatus, PROTOCOL_VERSION, SecretKey,
    UserEvent,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::agent::config::{AgentConfig, resolve_seeds};
use crate::agent::runtime::Agent;
use crate::checks::{CheckError, Checks};
use crate::connect::Connect;
use crate::connect::sidecars::Sidecars;

/// What every handler shares.
#[derive(Clone)]
struct Api {
    agent: Arc<Agent>,
    leave: Arc<Notify>,
    config: Arc<AgentConfig>,
    checks: Arc<Checks>,
    connect: Arc<Connect>,
    sidecars: Arc<Sidecars>,
    /// Encoded catalog answers by query, for the current catalog index.
    answers: Arc<answers::Answers>,
    /// Runs prepared queries (with failover to other datacenters).
    queries: Arc<query::Executor>,
    /// ACL settings and cached authorizers.
    acl: Arc<acl::Acl>,
}

/// An error answer: status plus a plain-text message, as Consul sends them.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A 400 with Consul's wording.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 500 for what the agent itself failed to do (e.g. make a write durable).
    pub fn internal(err: anyhow::Error) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

impl From<CheckError> for ApiError {
    fn from(err: CheckError) -> Self {
        let status = match err {
            CheckError::Unknown(_) => StatusCode::NOT_FOUND,
            CheckError::NotTtl(_) | CheckError::NoService(_) => StatusCode::BAD_REQUEST,
            CheckError::Write(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.to_string())
    }
}

impl From<GossipError> for ApiError {
    fn from(err: GossipError) -> Self {
        let status = match err {
            GossipError::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GossipError::InvalidEvent(_) | GossipError::InvalidKey(_) | GossipError::Keyring(_) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.to_string())
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

/// What the HTTP API serves from: the agent and the services beside it.
pub struct ApiParts {
    pub agent: Arc<Agent>,
    /// Notified by `/v1/agent/leave`.
    pub leave: Arc<Notify>,
    pub config: AgentConfig,
    pub checks: Arc<Checks>,
    pub connect: Arc<Connect>,
    pub sidecars: Arc<Sidecars>,
    pub queries: Arc<query::Executor>,
    /// Shared with DNS, which answers with the anonymous token's view.
    pub acl: Arc<Acl>,
}

/// Builds the router.
pub fn router(parts: ApiParts) -> Router {
    let ApiParts {
        agent,
        leave,
        config,
        checks,
        connect,
        sidecars,
        queries,
        acl,
    } = parts;
    let forwarder = queries.forwarder().clone();
    let acl_policy = config.acl_enabled.then_some(if config.acl_default_allow {
        "allow"
    } else {
        "deny"
    });
    let config = Arc::new(config);
    let api = Api {
        agent,
        leave,
        config: config.clone(),
        checks,
        connect,
        sidecars,
        answers: Arc::default(),
        queries,
        acl,
    };
    // Requests for a datacenter (`?dc=`): catalog, health, KV, event fire, intentions, status.
    let datacenter_scoped = Router::new()
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/node/{name}", get(catalog::node))
        .route("/v1/catalog/register", put(external::register))
        .route("/v1/catalog/deregister", put(external::deregister))
        .route(
            "/v1/connect/intentions",
            get(intentions::list).post(intentions::create),
        )
        .route(
            "/v1/connect/intentions/exact",
            get(intentions::get_exact)
                .put(intentions::put_exact)
                .delete(intentions::delete_exact),
        )
        .route("/v1/connect/intentions/check", get(intentions::check_pair))
        .route("/v1/connect/intentions/match", get(intentions::match_names))
        .route(
            "/v1/connect/intentions/{id}",
            get(intentions::get_id)
                .put(intentions::put_id)
                .delete(intentions::delete_id),
        )
        .route("/v1/internal/ui/services", get(ui::services))
        .route("/v1/internal/ui/nodes", get(ui::nodes))
        .route(
            "/v1/internal/ui/service-topology/{service}",
            get(ui::topology),
        )
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/checks/{name}", get(health::checks))
        .route("/v1/health/node/{name}", get(health::node))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/event/fire/{name}", put(event_fire))
        .route("/v1/coordinate/nodes", get(coordinate::nodes))
        .route("/v1/query", get(query::list).post(query::create))
        .route(
            "/v1/query/{id}",
            get(query::get).put(query::update).delete(query::delete),
        )
        .route("/v1/query/{id}/execute", get(query::execute))
        .route("/v1/query/{id}/explain", get(query::explain))
        .route(query::REMOTE_EXECUTE, post(query::execute_remote))
        .route("/v1/coordinate/node/{name}", get(coordinate::node))
        .route_layer(datacenter::DatacenterLayer::new(
            &api.config.datacenter,
            forwarder.clone(),
        ));
    // Requests for this agent itself: Consul's `/v1/agent/*`, the keyring, event list.
    let router = Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/agent/join/{addr}", put(agent_join))
        .route("/v1/agent/leave", put(agent_leave))
        .route("/v1/agent/metrics", get(agent_metrics))
        .route("/v1/agent/service/register", put(catalog::register))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(catalog::deregister).get(catalog::deregister),
        )
        .route("/v1/agent/check/register", put(checks::register))
        // GET too, on deregistrations and TTL reports: Consul accepted it before 1.0 and
        // clients of that era (python-consul 0.7, Debian's) still send it.
        .route(
            "/v1/agent/check/deregister/{id}",
            put(checks::deregister).get(checks::deregister),
        )
        .route(
            "/v1/agent/check/pass/{id}",
            put(checks::pass).get(checks::pass),
        )
        .route(
            "/v1/agent/check/warn/{id}",
            put(checks::warn).get(checks::warn),
        )
        .route(
            "/v1/agent/check/fail/{id}",
            put(checks::fail).get(checks::fail),
        )
        .route("/v1/agent/check/update/{id}", put(checks::update))
        .route("/v1/agent/maintenance", put(checks::maintenance))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(checks::service_maintenance),
        )
        .route("/v1/agent/services", get(catalog::agent_services))
        .route("/v1/agent/checks", get(catalog::agent_checks))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/coordinate/datacenters", get(coordinate::datacenters))
        .route("/v1/agent/connect/ca/roots", get(connect::roots))
        .route("/v1/agent/connect/ca/leaf/{service}", get(connect::leaf))
        .route("/v1/agent/connect/authorize", post(connect::authorize))
        .route("/v1/agent/connect/ca/rotate", put(connect::rotate))
        .route("/v1/event/list", get(event_list))
        .route("/v1/acl/bootstrap", put(acl::bootstrap))
        .route("/v1/acl/token", put(acl::create_token))
        .route("/v1/acl/token/self", get(acl::token_self))
        .route(
            "/v1/acl/token/{accessor}",
            get(acl::read_token)
                .put(acl::update_token)
                .delete(acl::delete_token),
        )
        .route("/v1/acl/tokens", get(acl::list_tokens))
        .route("/v1/acl/policy", put(acl::create_policy))
        .route(
            "/v1/acl/policy/{id}",
            get(acl::read_policy)
                .put(acl::update_policy)
                .delete(acl::delete_policy),
        )
        .route("/v1/acl/policy/name/{name}", get(acl::read_policy_by_name))
        .route("/v1/acl/policies", get(acl::list_policies))
        .route("/v1/acl/role", put(acl::create_role))
        .route(
            "/v1/acl/role/{id}",
            get(acl::read_role)
                .put(acl::update_role)
                .delete(acl::delete_role),
        )
        .route("/v1/acl/role/name/{name}", get(acl::read_role_by_name))
        .route("/v1/acl/roles", get(acl::list_roles))
        .route(
            "/v1/operator/keyring",
            get(keyring_list)
                .post(keyring_install)
                .put(keyring_use)
                .delete(keyring_remove),
        )
        .merge(datacenter_scoped)
        .merge(if config.ui {
            crate::ui::routes()
        } else {
            Router::new()
        })
        // tower's synchronous map keeps the headers step inside the route's future; axum's
        // `middleware::map_response` boxed one more future (712 bytes) for every request, which
        // a parked blocking query holds for as long as it waits.
        .layer(tower::util::MapResponseLayer::new(move |r| {
            consul_headers(r, acl_policy)
        }))
        .with_state(api);
    forwarder.serve(router.clone());
    router
}

/// Headers Consul clients rely on for every answer; with ACLs on, the default policy.
fn consul_headers(mut response: Response, acl_policy: Option<&'static str>) -> Response {
    let headers = response.headers_mut();
    if let Some(policy) = acl_policy {
        headers.insert(
            "X-Consul-Default-ACL-Policy",
            HeaderValue::from_static(policy),
        );
    }
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    headers.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static("stale"),
    );
    response
}

/// A fresh random UUID (version 4), as Consul makes IDs: prepared queries, ACL tokens
/// (accessor and secret), policies and roles.
fn new_uuid() -> String {
    let mut id = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    murmur_catalog::uuid_text(&id)
}

fn with_index(index: u64, body: Value) -> Response {
    indexed(index, Json(body))
}

/// Any answer with `X-Consul-Index`, which Consul clients read even from a 404; never 0.
fn indexed(index: u64, answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    response
        .headers_mut()
        .insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    response
}

/// The request's `?filter=`, parsed; a bad one is a 400 naming what is wrong.
fn filter_of(query: &HashMap<String, String>) -> Result<Option<filter::Filter>, ApiError> {
    match query.get("filter").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => filter::Filter::parse(text)
            .map(Some)
            .map_err(ApiError::bad_request),
    }
}

/// An indexed JSON answer, keeping only what passes `filter` when there is one.
fn filtered<T: serde::Serialize>(
    index: u64,
    filter: Option<&filter::Filter>,
    body: T,
) -> ApiResult {
    Ok(json_bytes(index, encode(filter, body)?))
}

/// The JSON of `body`, through `filter` if there is one.
fn encode<T: serde::Serialize>(
    filter: Option<&filter::Filter>,
    body: T,
) -> Result<axum::body::Bytes, ApiError> {
    let encoded = match filter {
        None => serde_json::to_vec(&body),
        Some(f) => serde_json::to_value(body).and_then(|v| serde_json::to_vec(&f.apply(v))),
    };
    encoded
        .map(axum::body::Bytes::from)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cannot encode the answer: {e}")))
}

/// An answer of encoded JSON with its index.
fn json_bytes(index: u64, bytes: axum::body::Bytes) -> Response {
    indexed(index, ([(header::CONTENT_TYPE, "application/json")], bytes))
}

/// Consul reads its boolean parameters as Go's `strconv.ParseBool` does.
pub(crate) use murmur_proxy::agent_api::go_bool;

/// A Consul-style presence flag: `?flag`, `?flag=`, `?flag=1`, `?flag=true` all mean on, and
/// only a Go false (`0`, `f`, `false`, …) turns it off.
fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.is_empty() || go_bool(v) != Some(false))
}

/// A flag that is on when given empty and otherwise must be a boolean (`?passing`,
/// `?passing=false`), as Consul parses it; anything else is a 400 naming the parameter.
fn flag_or_value(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None => Ok(false),
        Some("") => Ok(true),
        Some(v) => go_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Failed to parse {name} parameter {v:?}: use true or false"
            ))
        }),
    }
}

/// Refuses a `Datacenter` named in a request body (a catalog registration's) that is not
/// this agent's, with Consul's answer; empty means the local one. `?dc=` is decided before
/// the handler, by [`datacenter::DatacenterLayer`].
fn same_datacenter(api: &Api, dc: &str) -> Result<(), ApiError> {
    if dc.is_empty() || dc == api.config.datacenter {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            murmur_federation::forward::NO_PATH,
        ))
    }
}

fn member_json(m: &MemberState) -> Value {
    let id = &m.identity;
    let mut tags: BTreeMap<String, String> = id.tags.iter().cloned().collect();
    tags.insert("dc".into(), id.datacenter.to_string());
    tags.insert("role".into(), "node".into());
    tags.insert("id".into(), node_uuid(id.node_id));
    tags.insert("vsn".into(), PROTOCOL_VERSION.to_string());
    tags.insert("build".into(), env!("CARGO_PKG_VERSION").into());
    tags.insert("generation".into(), id.generation.to_string());
    json!({
        "Name": id.name,
        "Addr": id.addr.ip().to_string(),
        "Port": id.addr.port(),
        "Tags": tags,
        "Status": m.status.code(),
        "ProtocolMin": 1, "ProtocolMax": PROTOCOL_VERSION, "ProtocolCur": PROTOCOL_VERSION,
        "DelegateMin": 1, "DelegateMax": PROTOCOL_VERSION, "DelegateCur": PROTOCOL_VERSION,
    })
}

/// Consul shows node ids as UUIDs; murmur's 64-bit id fills the first half.
fn node_uuid(id: u64) -> String {
    if id == 0 {
        return String::new(); // no agent: an external node, whose ID Consul leaves empty too
    }
    let h = format!("{id:016x}");
    format!("{}-{}-{}-0000-000000000000", &h[..8], &h[8..12], &h[12..16])
}

async fn agent_self(State(api): State<Api>, auth: acl::Auth) -> ApiResult<Json<Value>> {
    auth.require(Resource::Agent, &api.config.node, Access::Read)?;
    let (my_name, members, stats, encrypted, coord) = api.agent.view(|v| {
        (
            v.me().name.clone(),
            v.members(),
            v.stats().clone(),
            v.encrypted(),
            coordinate::CoordShape::from(v.coordinate()),
        )
    });
    // A gateway's WAN pool, as Consul's servers show theirs (null on other agents).
    let wan = api.agent.read_wan(|n| {
        let (stats, members) = (n.node().stats(), n.node().members());
        json!({
            "members": members.len().to_string(),
            "alive": members.iter().filter(|m| m.status.code() == 1).count().to_string(),
            "packets_received": stats.packets_received.to_string(),
            "packets_sent": stats.packets_sent.to_string(),
            "bytes_received": stats.bytes_received.to_string(),
            "bytes_sent": stats.bytes_sent.to_string(),
            "dropped": stats.dropped.total().to_string(),
            "gossip_dropped": drop_counts(stats),
        })
    });
    let me = members.iter().find(|m| m.identity.name == my_name).cloned();
    let me = me.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this agent is missing from its own member list",
        )
    })?;
    let count = |code: u8| {
        members
            .iter()
            .filter(|m| m.status.code() == code)
            .count()
            .to_string()
    };
    let dropped = drop_counts(&stats);
    Ok(Json(json!({
        "Config": {
            "Datacenter": me.identity.datacenter,
            "NodeName": me.identity.name,
            "NodeID": node_uuid(me.identity.node_id),
            "Server": false,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": member_json(&me),
        "Coord": coord,
        "Meta": {},
        "Stats": {
            "agent": { "generation": me.identity.generation.to_string(), "cluster_id": api.config.cluster_id },
            "serf_lan": {
                "members": members.len().to_string(),
                "alive": count(1), "leaving": count(2), "left": count(3), "failed": count(4),
                "encrypted": encrypted.to_string(),
                "packets_received": stats.packets_received.to_string(),
                "packets_sent": stats.packets_sent.to_string(),
                "dropped": stats.dropped.total().to_string(),
            },
            "gossip_dropped": dropped,
            "serf_wan": wan,
        },
    })))
}

/// A header of murmur's own: what the agent did but could not complete (a sidecar that
/// cannot get a leaf yet), on an answer that is otherwise Consul's.
pub const WARNING_HEADER: &str = "X-Murmur-Warning";

/// A pool's dropped messages by reason, as `/v1/agent/self` lists them.
fn drop_counts(stats: &murmur_gossip::Stats) -> BTreeMap<&'static str, String> {
    stats
        .dropped
        .named()
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect()
}

async fn agent_members(
    State(api): State<Api>,
    auth: acl::Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    // With `?wan`, a gateway lists the WAN pool; other agents, like Consul's clients, have
    // no WAN members to list.
    let members = if flag(&query, "wan") {
        api.agent
            .read_wan(|n| n.node().members())
            .unwrap_or_default()
    } else {
        api.agent.view(|v| v.members())
    };
    Ok(Json(Value::Array(
        members
            .iter()
            .filter(|m| auth.can(Resource::Node, &m.identity.name, Access::Read))
            .map(member_json)
            .collect(),
    )))
}

/// `PUT /v1/agent/join/:addr`, into the LAN pool, or with `?wan` the WAN pool (gateways
/// only, as only Consul's servers join the WAN).
async fn agent_join(
    State(api): State<Api>,
    auth: acl::Auth,
    Path(addr): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    auth.require(Resource::Agent, &api.config.node, Access::Write)?;
    let (addrs, errors) = resolve_seeds(std::slice::from_ref(&addr)).await;
    if let Some(err) = errors.into_iter().next() {
        return Err(ApiError::bad_request(err));
    }
    let joined = if flag(&query, "wan") {
        api.agent.join_wan(&addrs).await
    } else {
        api.agent.join(&addrs).await
    };
    joined
        .map(|_| StatusCode::OK)
        .map_err(|errors| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, errors.join("; ")))
}

async fn agent_leave(State(api): State<Api>, auth: acl::Auth) -> ApiResult<StatusCode> {
    auth.require(Resource::Agent, &api.config.node, Access::Write)?;
    api.leave.notify_one();
    Ok(StatusCode::OK)
}

pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
    })
}

/// Installs the Prometheus recorder so counters recorded before the first scrape are kept.
pub fn install_metrics() {
    prometheus();
}

/// Everything recorded so far, in Prometheus' text format (what a scrape gets).
pub fn render_metrics() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

async fn agent_metrics(
    State(api): State<Api>,
    auth: acl::Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    auth.require(Resource::Agent, &api.config.node, Access::Read)?;
    if query.get("format").map(String::as_str) != Some("prometheus") {
        return Err(ApiError::bad_request(
            "murmur serves metrics as ?format=prometheus",
        ));
    }
    let (stats, members, replica, backlogs) = api.agent.view(|v| {
        let r = v.replica();
        let sizes = (r.index(), r.records().len(), r.shared().len(), r.stats());
        (v.stats().clone(), v.members(), sizes, v.backlogs())
    });
    for (queue, n) in [
        ("member_updates", backlogs.member_updates),
        ("broadcasts", backlogs.broadcasts),
    ] {
        metrics::gauge!("murmur_gossip_backlog", "queue" => queue).set(n as f64);
    }
    let (index, records, keys, replicated) = replica;
    metrics::gauge!("murmur_replica_index").set(index as f64);
    metrics::gauge!("murmur_replica_records").set(records as f64);
    metrics::gauge!("murmur_replica_shared_keys").set(keys as f64);
    for (outcome, n) in [
        ("applied", replicated.applied),
        ("redundant", replicated.redundant),
        ("refused_clock", replicated.refused_clock),
        ("refused_malformed", replicated.refused_malformed),
        ("refused_stale", replicated.refused_stale),
    ] {
        metrics::counter!("murmur_replica_changes_total", "outcome" => outcome).absolute(n);
    }
    for (outcome, n) in [
        ("applied", replicated.patches_applied),
        ("waited", replicated.patches_waited),
        ("dropped", replicated.patches_dropped),
    ] {
        metrics::counter!("murmur_replica_patches_total", "outcome" => outcome).absolute(n);
    }
    metrics::counter!("murmur_replica_tombstones_collected_total")
        .absolute(replicated.tombstones_collected);
    metrics::counter!("murmur_replica_reset_dropped_total").absolute(replicated.reset_dropped);
    metrics::counter!("murmur_gossip_changes_dropped_total").absolute(stats.changes_dropped);
    for (outcome, n) in [
        ("wanted", stats.offered_changes_wanted),
        ("known", stats.offered_changes_known),
        ("asked_again", stats.offered_changes_asked_again),
    ] {
        metrics::counter!("murmur_gossip_offered_changes_total", "outcome" => outcome).absolute(n);
    }
    metrics::counter!("murmur_gossip_packets_received_total").absolute(stats.packets_received);
    metrics::counter!("murmur_gossip_packets_sent_total").absolute(stats.packets_sent);
    metrics::counter!("murmur_gossip_bytes_received_total").absolute(stats.bytes_received);
    metrics::counter!("murmur_gossip_bytes_sent_total").absolute(stats.bytes_sent);
    for (reason, n) in stats.dropped.named() {
        metrics::counter!("murmur_gossip_dropped_total", "reason" => reason).absolute(n);
    }
    for (stage, n) in stats.unreachable.named() {
        metrics::counter!("murmur_gossip_unreachable_total", "stage" => stage).absolute(n);
    }
    for status in ["alive", "suspect", "leaving", "left", "failed"] {
        let n = members
            .iter()
            .filter(|m| m.status.as_str() == status)
            .count();
        metrics::gauge!("murmur_members", "status" => status).set(n as f64);
    }
    Ok(render_metrics().into_response())
}

fn event_json(e: &UserEvent) -> Value {
    json!({
        "ID": e.id_string(),
        "Name": e.name,
        "Payload": if e.payload.is_empty() { Value::Null } else { Value::String(BASE64.encode(&e.payload)) },
        "NodeFilter": e.filter.node,
        "ServiceFilter": e.filter.service,
        "TagFilter": e.filter.tag,
        "Version": 1,
        "LTime": e.ltime,
    })
}

async fn event_fire(
    State(api): State<Api>,
    auth: acl::Auth,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    auth.require(Resource::Event, &name, Access::Write)?;
    let param = |key: &str| query.get(key).cloned().unwrap_or_default();
    let filter = EventFilter {
        node: param("node"),
        service: param("service"),
        tag: param("tag"),
    };
    let event = api
        .agent
        .with_node(|n| n.fire_event(&name, &body, filter))?;
    Ok(Json(event_json(&event)))
}

async fn event_list(
    State(api): State<Api>,
    auth: acl::Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let index = blocking::index(&query)?;
    let wait = blocking::wait(&query)?;
    let index = blocking::block(api.agent.event_index.subscribe(), index, wait).await;
    let name = query.get("name").filter(|n| !n.is_empty());
    let events: Vec<Value> = api.agent.view(|v| {
        v.events()
            .recent()
            .filter(|e| name.is_none_or(|want| &e.name == want))
            .filter(|e| auth.can(Resource::Event, &e.name, Access::Read))
            .map(event_json)
            .collect()
    });
    Ok(with_index(index, Value::Array(events)))
}

/// Reads `{"Key": "..."}` (any letter case, as Go's JSON decoding accepts).
fn key_from_body(body: &Bytes) -> ApiResult<SecretKey> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let key = value
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("key")))
        .and_then(|(_, v)| v.as_str())
        .ok_or_else(|| ApiError::bad_request("Request body needs a \"Key\""))?;
    Ok(SecretKey::from_base64(key)?)
}

async fn keyring(api: &Api, op: KeyringOp) -> ApiResult {
    let report =
        api.agent
            .keyring(op.clone())
            .await
            .map_err(|e| match e.downcast::<GossipError>() {
                Ok(err) => ApiError::from(err),
                Err(err) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
            })?;
    let failed = !report.errors.is_empty();
    if op != KeyringOp::List {
        return if failed {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{} of {} members did not apply the change: {}",
                    report.errors.len(),
                    report.nodes,
                    report.errors.join("; ")
                ),
            ))
        } else {
            Ok(StatusCode::OK.into_response())
        };
    }
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    let mut primary: BTreeMap<String, usize> = BTreeMap::new();
    for ring in &report.keys {
        for (i, key) in ring.iter().enumerate() {
            *keys.entry(key.to_base64()).or_default() += 1;
            if i == 0 {
                *primary.entry(key.to_base64()).or_default() += 1;
            }
        }
    }
    let messages: BTreeMap<String, String> = report
        .errors
        .iter()
        .enumerate()
        .map(|(i, e)| (i.to_string(), e.clone()))
        .collect();
    Ok(Json(json!([{
        "WAN": false,
        "Datacenter": api.config.datacenter,
        "Segment": "",
        "Keys": keys,
        "PrimaryKeys": primary,
        "NumNodes": report.nodes,
        "Messages": messages,
    }]))
    .into_response())
}

async fn keyring_list(State(api): State<Api>, auth: acl::Auth) -> ApiResult {
    auth.require_keyring(Access::Read)?;
    keyring(&api, KeyringOp::List).await
}

async fn keyring_install(State(api): State<Api>, auth: acl::Auth, body: Bytes) -> ApiResult {
    auth.require_keyring(Access::Write)?;
    keyring(&api, KeyringOp::Install(*key_from_body(&body)?.as_bytes())).await
}

async fn keyring_use(State(api): State<Api>, auth: acl::Auth, body: Bytes) -> ApiResult {
    auth.require_keyring(Access::Write)?;
    keyring(&api, KeyringOp::Use(*key_from_body(&body)?.as_bytes())).await
}

async fn keyring_remove(State(api): State<Api>, auth: acl::Auth, body: Bytes) -> ApiResult {
    auth.require_keyring(Access::Write)?;
    keyring(&api, KeyringOp::Remove(*key_from_body(&body)?.as_bytes())).await
}

/// `GET /v1/status/leader`: murmur has no leader; every agent serves, so it names itself.
async fn status_leader(State(api): State<Api>) -> Json<Value> {
    let me = api.agent.view(|v| v.me().addr);
    Json(json!(me.to_string()))
}

/// `GET /v1/status/peers`: with no Raft peers, the alive members (every one of them serves).
async fn status_peers(State(api): State<Api>) -> Json<Value> {
    let members = api.agent.view(|v| v.members());
    let mut peers: Vec<String> = members
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| m.identity.addr.to_string())
        .collect();
    peers.sort();
    Json(json!(peers))
}
