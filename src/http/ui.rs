//! The web UI's own reads (`/v1/internal/ui/*`, the prefix Consul's UI uses for its own):
//! a summary per service, the nodes with their membership status and services, and a
//! service's topology. Each is one request for one page, filtered by the token as the public
//! endpoints are; the first two block on the catalog as they do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use murmur_acl::{Access, Resource};
use murmur_catalog::Health;
use murmur_gossip::MemberStatus;
use serde_json::{Value, json};

use super::acl::Auth;
use super::health::catalog_query;
use super::{Api, ApiResult, with_index};
use crate::agent::runtime::{Agent, PeerRequests, PendingAnswer, Via};
use crate::client::sidecar::PROXY_FOR_META;
use crate::ui::topology::{AgentReport, PROXY_STATS, Topology, pairs_from_prometheus};

/// `GET /v1/internal/ui/services`: each readable service with its tags, its instances by
/// health, its checks by status (Consul's `ChecksPassing`, …) and the nodes it runs on.
pub(super) async fn services(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    catalog_query(&api, &query, None, |_, view| {
        let mut summaries = view.service_summaries();
        view.services()
            .into_iter()
            .filter(|(name, _)| auth.can(Resource::Service, name, Access::Read))
            .map(|(name, tags)| {
                let s = summaries.remove(name).unwrap_or_default();
                let [passing, warning, critical, maintenance] = s.instances;
                let [
                    checks_passing,
                    checks_warning,
                    checks_critical,
                    checks_maintenance,
                ] = s.checks;
                json!({
                    "Name": name,
                    "Tags": tags,
                    "InstanceCount": s.instances.iter().sum::<usize>(),
                    "InstancesPassing": passing,
                    "InstancesWarning": warning,
                    "InstancesCritical": critical + maintenance,
                    "ChecksPassing": checks_passing,
                    "ChecksWarning": checks_warning,
                    "ChecksCritical": checks_critical + checks_maintenance,
                    "Nodes": s.nodes,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
}

/// `GET /v1/internal/ui/nodes`: the datacenter's members the token may read, with their
/// gossip status (`alive`, `suspect`, `failed`, `left`, `leaving`), address and services.
pub(super) async fn nodes(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    catalog_query(&api, &query, None, |v, view| {
        let status: BTreeMap<String, &str> = v
            .members()
            .iter()
            .map(|m| (m.identity.name.to_string(), m.status.as_str()))
            .collect();
        view.nodes()
            .filter(|(name, _)| auth.can(Resource::Node, name, Access::Read))
            .map(|(name, record)| {
                let services: Vec<Value> = record
                    .services
                    .values()
                    .filter(|s| auth.can(Resource::Service, &s.name, Access::Read))
                    .map(|s| json!({"ID": s.id, "Service": s.name, "Tags": s.tags, "Port": s.port}))
                    .collect();
                let critical = record
                    .checks
                    .values()
                    .filter(|c| c.status == Health::Critical)
                    .count();
                json!({
                    "Node": name,
                    "Address": record.address,
                    "Datacenter": record.datacenter,
                    // External nodes have no agent, so no gossip status.
                    "Status": status.get(name.as_str()).copied().unwrap_or("external"),
                    "Services": services,
                    "ChecksCritical": critical,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
}

/// How long the agents running proxies have to report their figures.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /v1/internal/ui/service-topology/:service`: who calls the service and whom it calls,
/// from the sidecars' declared upstreams, the intentions that name it, and the figures every
/// agent's proxies counted (asked of each live agent that runs a proxy; those that do not
/// answer in time are listed in `Unreachable`). Pairs with a service the token may not read are left out.
pub(super) async fn topology(
    State(api): State<Api>,
    auth: Auth,
    Path(service): Path<String>,
) -> ApiResult {
    auth.require(Resource::Service, &service, Access::Read)?;
    let (index, peers, intentions) = api.agent.view(|v| {
        // Only agents whose record has a proxy (a service with `murmur-proxy-for` meta) can
        // have figures or declared upstreams to report.
        let failed = v.failed_owners();
        let catalog = v.replica().catalog(&failed);
        let runs_proxies = |name: &str| {
            catalog.node(name).is_some_and(|record| {
                record
                    .services
                    .values()
                    .any(|s| s.meta.contains_key(PROXY_FOR_META))
            })
        };
        let peers: Vec<(String, std::net::SocketAddr)> = v
            .members()
            .iter()
            .filter(|m| m.status == MemberStatus::Alive && m.identity.name != api.config.node)
            .filter(|m| runs_proxies(&m.identity.name))
            .map(|m| (m.identity.name.to_string(), m.identity.addr))
            .collect();
        let intentions: Vec<(String, String, String)> = v
            .replica()
            .intentions()
            .filter(|i| i.source == service || i.destination == service)
            .map(|i| {
                (
                    i.source.clone(),
                    i.destination.clone(),
                    murmur_proxy::authorize::action_name(i.action).to_owned(),
                )
            })
            .collect();
        (v.replica().records_index(), peers, intentions)
    });
    let mut reports = vec![own_report(&api.agent, &api.sidecars)];
    let mut unreachable = Vec::new();
    let asked = peers.into_iter().map(|(name, addr)| {
        let agent = api.agent.clone();
        async move {
            let answer = tokio::time::timeout(
                REPORT_TIMEOUT,
                agent.ask_peer(addr, PROXY_STATS, Vec::new()),
            )
            .await;
            let report = match answer {
                Ok(Ok(bytes)) => serde_json::from_slice::<AgentReport>(&bytes)
                    .map_err(|e| format!("a report that does not parse: {e}")),
                Ok(Err(err)) => Err(format!("{err:#}")),
                Err(_) => Err(format!("no answer within {REPORT_TIMEOUT:?}")),
            };
            (name, report)
        }
    });
    for (name, report) in futures_util::future::join_all(asked).await {
        match report {
            Ok(report) => reports.push(report),
            Err(why) => unreachable.push(format!("{name}: {why}")),
        }
    }
    let mut topology = Topology::of(&service, &reports, &intentions);
    let readable = |name: &str| auth.can(Resource::Service, name, Access::Read);
    topology.downstreams.retain(|l| readable(&l.name));
    topology.upstreams.retain(|l| readable(&l.name));
    topology.unreachable = unreachable;
    Ok(with_index(index, json!(topology)))
}

/// What this agent's own proxies counted and declare.
fn own_report(agent: &Agent, sidecars: &crate::connect::sidecars::Sidecars) -> AgentReport {
    let declared = agent.view(|v| {
        let services = v
            .replica()
            .own_record()
            .map(|r| r.services.clone())
            .unwrap_or_default();
        sidecars
            .declared()
            .into_iter()
            .filter_map(|(id, destination)| {
                Some((services.get(id.as_str())?.name.to_string(), destination))
            })
            .collect()
    });
    AgentReport {
        pairs: pairs_from_prometheus(&super::prometheus().render()),
        declared,
    }
}

/// Answers peers' `proxy-stats` requests with [`own_report`].
pub struct ProxyStats {
    pub sidecars: Arc<crate::connect::sidecars::Sidecars>,
}

impl PeerRequests for ProxyStats {
    fn answer(&self, agent: Arc<Agent>, _via: Via, _body: Vec<u8>) -> PendingAnswer {
        let report = own_report(&agent, &self.sidecars);
        Box::pin(std::future::ready(
            serde_json::to_vec(&report).map_err(|e| e.to_string()),
        ))
    }
}
