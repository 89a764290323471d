//! The health endpoints: service instances with their checks, and checks by service, node or
//! state, in Consul's shapes. Every agent answers from its own replica and membership view
//! (`serfHealth` turns critical on the agents that see a node failed).

use compact_str::CompactString;
use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use murmur_acl::{Access, Resource};
use murmur_catalog::{CatalogView, Check, Health, Instance, NodeRecord, Service};
use serde::Serialize;

use super::acl::Auth;
use super::blocking::Topic;
use super::{
    Api, ApiError, ApiResult, blocking, encode, filter_of, flag_or_value, json_bytes, node_uuid,
};
use crate::agent::view::View;

/// A node in Consul's shape (`/v1/catalog/nodes`, `Node` of a health entry). Answers are built
/// from these typed shapes (owned, so they are serialized after the node lock is released),
/// not from `serde_json::Value` trees: a map per object was most of a health read's time.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NodeShape {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

/// A node in Consul's shape.
pub(super) fn node_json(name: &str, record: &NodeRecord, id: u64, index: u64) -> NodeShape {
    NodeShape {
        id: node_uuid(id),
        node: name.to_owned(),
        address: record.address.clone(),
        datacenter: record.datacenter.clone(),
        tagged_addresses: record.tagged_addresses.clone(),
        meta: record.meta.clone(),
        create_index: index,
        modify_index: index,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
    warning: u32,
}

/// A service instance as the agent and health endpoints show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceShape {
    #[serde(rename = "ID")]
    id: CompactString,
    service: CompactString,
    kind: String,
    tags: Vec<CompactString>,
    address: CompactString,
    tagged_addresses: BTreeMap<String, TaggedAddress>,
    meta: BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

/// One of a service's tagged addresses, in Consul's shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TaggedAddress {
    address: String,
    port: u16,
}

/// A service's tagged addresses in Consul's shape (`{"wan": {"Address", "Port"}}`).
pub(super) fn tagged_addresses_json(s: &Service) -> BTreeMap<String, TaggedAddress> {
    crate::services::tagged_addresses(s)
        .into_iter()
        .map(|(name, (address, port))| (name, TaggedAddress { address, port }))
        .collect()
}

/// A service instance in Consul's shape.
pub(super) fn service_json(s: &Service, index: u64) -> ServiceShape {
    ServiceShape {
        id: s.id.clone(),
        service: s.name.clone(),
        kind: crate::services::kind(s).to_owned(),
        tags: s.tags.clone(),
        address: s.address.clone(),
        tagged_addresses: tagged_addresses_json(s),
        meta: s.meta.clone(),
        port: s.port,
        weights: Weights {
            passing: s.weight_passing,
            warning: s.weight_warning,
        },
        enable_tag_override: false,
        create_index: index,
        modify_index: index,
    }
}

/// A check as the health and agent endpoints show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CheckShape {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: CompactString,
    name: CompactString,
    status: &'static str,
    notes: &'static str,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: CompactString,
    service_name: CompactString,
    service_tags: Vec<CompactString>,
    #[serde(rename = "Type")]
    kind: &'static str,
    create_index: u64,
    modify_index: u64,
}

/// A check; `service` names the instance it belongs to (none for a node-level check).
pub(super) fn check_json(
    node: &str,
    c: &Check,
    service: Option<&Service>,
    index: u64,
) -> CheckShape {
    CheckShape {
        node: node.to_owned(),
        check_id: c.id.clone(),
        name: c.name.clone(),
        status: c.status.as_str(),
        notes: "",
        output: c.output.clone(),
        service_id: c.service_id.clone(),
        service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
        service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
        kind: "",
        create_index: index,
        modify_index: index,
    }
}

/// One entry of `/v1/health/service/:name`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HealthEntry {
    node: NodeShape,
    service: ServiceShape,
    checks: Vec<CheckShape>,
}

/// Runs `answer` over this agent's catalog view as a blocking query on the records' index;
/// the answer is serialized after the node lock is released. With a `cache_key`, an answer
/// kept for the current index is served as it is (see `answers.rs`).
pub(super) async fn catalog_query<T: Serialize>(
    api: &Api,
    query: &HashMap<String, String>,
    cache_key: Option<String>,
    answer: impl Fn(&View<'_>, &CatalogView<'_>) -> T,
) -> ApiResult {
    let filter = filter_of(query)?;
    if let Some(key) = &cache_key {
        let wanted = blocking::index(query)?;
        let current = api.agent.view(|v| v.replica().records_index()).max(1);
        if (wanted == 0 || wanted != current)
            && let Some(bytes) = api.answers.get(key, current)
        {
            return Ok(json_bytes(current, bytes));
        }
    }
    let (index, body) = blocking::query(&api.agent, query, Topic::Catalog, |v| {
        let failed = v.failed_owners();
        let replica = v.replica();
        (
            replica.records_index(),
            answer(v, &replica.catalog(&failed)),
        )
    })
    .await?;
    let bytes = encode(filter.as_ref(), body)?;
    if let Some(key) = cache_key {
        api.answers.put(key, index, bytes.clone());
    }
    Ok(json_bytes(index, bytes))
}

/// The query pairs as a map (the last of a repeated key wins) and the values of `repeated`.
pub(super) fn split_query(
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

pub(super) fn entry_json(v: &View<'_>, view: &CatalogView<'_>, i: &Instance<'_>) -> HealthEntry {
    let index = view.node_index(i.node);
    let checks = i
        .checks
        .iter()
        .map(|c| {
            let service = (!c.service_id.is_empty()).then_some(i.service);
            check_json(i.node, c, service, index)
        })
        .collect();
    HealthEntry {
        node: node_json(i.node, i.record, v.node_id(i.node), index),
        service: service_json(i.service, index),
        checks,
    }
}

/// `GET /v1/health/service/:name`: instances with their node and checks; `?passing` keeps only
/// those whose every check passes, `?tag=` (repeatable) those carrying every tag.
pub async fn service(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let (query, tags) = split_query(pairs, "tag");
    let passing = flag_or_value(&query, "passing")?;
    let readable = auth.can(Resource::Service, &name, Access::Read);
    // An answer sorted `?near=` depends on coordinates too, which the kept answers are not
    // keyed by: it is made afresh; so is one filtered by ACLs (the kept ones are shared).
    let key = (readable && !query.contains_key("near")).then(|| {
        format!(
            "health/service\n{name}\n{passing}\n{}\n{}",
            query.get("filter").map_or("", String::as_str),
            tags.join("\n")
        )
    });
    let answer = catalog_query(&api, &query, key, |v, view| {
        if !readable {
            return Vec::new();
        }
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let mut instances: Vec<_> = view
            .instances(&name, &tags)
            .into_iter()
            .filter(|i| !passing || i.health == Health::Passing)
            .collect();
        super::coordinate::sort_near(v, &query, &mut instances, |i| i.node);
        instances
            .iter()
            .map(|i| entry_json(v, view, i))
            .collect::<Vec<_>>()
    })
    .await;
    super::acl::filtered_unless(readable, answer)
}

/// `GET /v1/health/checks/:service`: the checks of every instance of a service (node-level
/// checks included, as they decide the instances' health).
pub async fn checks(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let readable = auth.can(Resource::Service, &name, Access::Read);
    let answer = catalog_query(&api, &query, None, |_, view| {
        if !readable {
            return Vec::new();
        }
        view.instances(&name, &[])
            .iter()
            .flat_map(|i| {
                let index = view.node_index(i.node);
                i.checks
                    .iter()
                    .filter(|c| c.service_id == i.service.id)
                    .map(move |c| check_json(i.node, c, Some(i.service), index))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    })
    .await;
    super::acl::filtered_unless(readable, answer)
}

fn service_of<'a>(view: &CatalogView<'a>, node: &str, c: &Check) -> Option<&'a Service> {
    view.node(node)
        .and_then(|record| record.services.get(&c.service_id))
}

/// `GET /v1/health/node/:node`: every check of a node, `serfHealth` first; `[]` when unknown.
pub async fn node(
    State(api): State<Api>,
    auth: Auth,
    Path(node): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    auth.require(Resource::Node, &node, Access::Read)?;
    catalog_query(&api, &query, None, |_, view| {
        let index = view.node_index(&node);
        view.node_checks(&node)
            .unwrap_or_default()
            .iter()
            .map(|c| check_json(&node, c, service_of(view, &node, c), index))
            .collect::<Vec<_>>()
    })
    .await
}

/// `GET /v1/health/state/:state`: every check in `passing`, `warning`, `critical` or
/// `maintenance`, or all of them with `any`.
pub async fn state(
    State(api): State<Api>,
    auth: Auth,
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
    catalog_query(&api, &query, None, |_, view| {
        view.all_checks()
            .iter()
            .filter(|(_, c)| wanted.is_none_or(|w| c.status == w))
            .filter(|(node, c)| {
                // A service's check is read with the service, a node's with the node.
                let service = service_of(view, node, c);
                auth.can(Resource::Node, node, Access::Read)
                    && service.is_none_or(|s| auth.can(Resource::Service, &s.name, Access::Read))
            })
            .map(|(node, c)| check_json(node, c, service_of(view, node, c), view.node_index(node)))
            .collect::<Vec<_>>()
    })
    .await
}
