//! The health endpoints: service instances with their checks, and checks by service, node or
//! state, in Consul's shapes. Every agent answers from its own replica and membership view
//! (`serfHealth` turns critical on the agents that see a node failed).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use murmur_catalog::{CatalogView, Check, Health, Instance, NodeRecord, Service};
use murmur_gossip::Node;
use serde_json::{Value, json};

use super::blocking::Topic;
use super::{
    Api, ApiError, ApiResult, blocking, flag_or_value, local_datacenter, node_uuid, with_index,
};

/// Node ids by name, for the `ID` fields (Consul shows node ids as UUIDs).
pub(super) fn node_ids(n: &Node) -> HashMap<String, u64> {
    n.members()
        .into_iter()
        .map(|m| (m.identity.name.to_string(), m.identity.node_id))
        .collect()
}

/// A node in Consul's shape (`/v1/catalog/nodes`, `Node` of a health entry).
pub(super) fn node_json(name: &str, record: &NodeRecord, id: u64, index: u64) -> Value {
    json!({
        "ID": node_uuid(id),
        "Node": name,
        "Address": record.address,
        "Datacenter": record.datacenter,
        "TaggedAddresses": record.tagged_addresses,
        "Meta": record.meta,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// A service instance as the agent and health endpoints show it.
pub(super) fn service_json(s: &Service, index: u64) -> Value {
    json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Address": s.address,
        "Meta": s.meta,
        "Port": s.port,
        "Weights": {"Passing": s.weight_passing, "Warning": s.weight_warning},
        "EnableTagOverride": false,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// A check; `service` names the instance it belongs to (none for a node-level check).
pub(super) fn check_json(node: &str, c: &Check, service: Option<&Service>, index: u64) -> Value {
    json!({
        "Node": node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": "",
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": service.map_or("", |s| s.name.as_str()),
        "ServiceTags": service.map_or(&[][..], |s| s.tags.as_slice()),
        "Type": "",
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// The local index of `node`'s record (its last change here).
fn record_index(n: &Node, node: &str) -> u64 {
    n.replica()
        .records()
        .entry(node)
        .map_or(0, |e| e.modify_index)
}

/// Runs `answer` over this agent's catalog view as a blocking query on the records' index.
async fn catalog_query(
    api: &Api,
    query: &HashMap<String, String>,
    answer: impl Fn(&Node, &CatalogView<'_>) -> Value,
) -> ApiResult {
    local_datacenter(api, query)?;
    let (index, body) = blocking::query(&api.agent, query, Topic::Catalog, |n| {
        let failed = n.failed_owners();
        let replica = n.replica();
        (
            replica.records_index(),
            answer(n, &replica.catalog(&failed)),
        )
    })
    .await?;
    Ok(with_index(index, body))
}

/// The query pairs as a map (the last of a repeated key wins) and the values of `repeated`.
fn split_query(
    pairs: Vec<(String, String)>,
    repeated: &str,
) -> (HashMap<String, String>, Vec<String>) {
    let values = pairs
        .iter()
        .filter(|(k, _)| k == repeated)
        .map(|(_, v)| v.clone())
        .collect();
    (pairs.into_iter().collect(), values)
}

fn entry_json(n: &Node, ids: &HashMap<String, u64>, i: &Instance<'_>) -> Value {
    let index = record_index(n, i.node);
    let id = ids.get(i.node).copied().unwrap_or(0);
    let checks: Vec<Value> = i
        .checks
        .iter()
        .map(|c| {
            let service = (!c.service_id.is_empty()).then_some(i.service);
            check_json(i.node, c, service, index)
        })
        .collect();
    json!({
        "Node": node_json(i.node, i.record, id, index),
        "Service": service_json(i.service, index),
        "Checks": checks,
    })
}

/// `GET /v1/health/service/:name`: instances with their node and checks; `?passing` keeps only
/// those whose every check passes, `?tag=` (repeatable) those carrying every tag.
pub async fn service(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let (query, tags) = split_query(pairs, "tag");
    let passing = flag_or_value(&query, "passing")?;
    catalog_query(&api, &query, |n, view| {
        let ids = node_ids(n);
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let entries: Vec<Value> = view
            .instances(&name, &tags)
            .iter()
            .filter(|i| !passing || i.health == Health::Passing)
            .map(|i| entry_json(n, &ids, i))
            .collect();
        Value::Array(entries)
    })
    .await
}

/// `GET /v1/health/checks/:service`: the checks of every instance of a service (node-level
/// checks included, as they decide the instances' health).
pub async fn checks(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    catalog_query(&api, &query, |n, view| {
        let checks: Vec<Value> = view
            .instances(&name, &[])
            .iter()
            .flat_map(|i| {
                let index = record_index(n, i.node);
                i.checks
                    .iter()
                    .filter(|c| c.service_id == i.service.id)
                    .map(move |c| check_json(i.node, c, Some(i.service), index))
                    .collect::<Vec<_>>()
            })
            .collect();
        Value::Array(checks)
    })
    .await
}

fn service_of<'a>(view: &CatalogView<'a>, node: &str, c: &Check) -> Option<&'a Service> {
    view.node(node)
        .and_then(|record| record.services.get(&c.service_id))
}

/// `GET /v1/health/node/:node`: every check of a node, `serfHealth` first; `[]` when unknown.
pub async fn node(
    State(api): State<Api>,
    Path(node): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    catalog_query(&api, &query, |n, view| {
        let index = record_index(n, &node);
        let checks: Vec<Value> = view
            .node_checks(&node)
            .unwrap_or_default()
            .iter()
            .map(|c| check_json(&node, c, service_of(view, &node, c), index))
            .collect();
        Value::Array(checks)
    })
    .await
}

/// `GET /v1/health/state/:state`: every check in `passing`, `warning`, `critical` or
/// `maintenance`, or all of them with `any`.
pub async fn state(
    State(api): State<Api>,
    Path(state): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let wanted = match state.as_str() {
        "any" => None,
        "passing" => Some(Health::Passing),
        "warning" => Some(Health::Warning),
        "critical" => Some(Health::Critical),
        "maintenance" => Some(Health::Maintenance),
        _ => return Err(ApiError::bad_request("Invalid check state")),
    };
    catalog_query(&api, &query, |n, view| {
        let checks: Vec<Value> = view
            .all_checks()
            .iter()
            .filter(|(_, c)| wanted.is_none_or(|w| c.status == w))
            .map(|(node, c)| check_json(node, c, service_of(view, node, c), record_index(n, node)))
            .collect();
        Value::Array(checks)
    })
    .await
}
