//! The catalog endpoints and the agent's service registration, thin over the replica's
//! catalog queries. The local agent owns its record: registering or deregistering rewrites it
//! and spreads it; every agent answers catalog reads from its own replica.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use murmur_acl::{Access, Resource};
use murmur_catalog::{DcSummary, Instance, NodeRecord};
use serde_json::{Value, json};

use super::acl::Auth;
use super::blocking::Topic;
use super::coordinate::sort_near;
use super::health::{NodeShape, ServiceShape, check_json, node_json, service_json};
use super::health::{catalog_query, split_query};
use super::{Api, ApiError, ApiResult, blocking, filter_of, filtered, node_uuid, with_index};
use crate::agent::runtime::wall_ms;
use crate::connect::sidecars::SidecarSpec;

/// `GET /v1/catalog/services`: every service name with its tags.
pub async fn services(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (index, services) = blocking::query(&api.agent, &query, Topic::Catalog, |n| {
        let failed = n.failed_owners();
        let replica = n.replica();
        let services: BTreeMap<String, Vec<String>> = replica
            .catalog(&failed)
            .services()
            .into_iter()
            .filter(|(name, _)| auth.can(Resource::Service, name, Access::Read))
            .map(|(name, tags)| {
                (
                    name.to_owned(),
                    tags.into_iter().map(str::to_owned).collect(),
                )
            })
            .collect();
        (replica.records_index(), services)
    })
    .await?;
    Ok(with_index(index, json!(services)))
}

fn instance_json(i: &Instance<'_>, node_id: u64, index: u64) -> Value {
    let s = i.service;
    json!({
        "ID": node_uuid(node_id),
        "Node": i.node,
        "Address": i.record.address,
        "Datacenter": i.record.datacenter,
        "TaggedAddresses": i.record.tagged_addresses,
        "NodeMeta": i.record.meta,
        "ServiceKind": crate::services::kind(s),
        "ServiceTaggedAddresses": super::health::tagged_addresses_json(s),
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServicePort": s.port,
        "ServiceMeta": s.meta,
        "ServiceWeights": {"Passing": s.weight_passing, "Warning": s.weight_warning},
        "ServiceEnableTagOverride": false,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// `GET /v1/catalog/service/:name` with any number of `?tag=`.
pub async fn service(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let (query, tags) = split_query(pairs, "tag");
    let readable = auth.can(Resource::Service, &name, Access::Read);
    let answer = catalog_query(&api, &query, None, |v, view| {
        if !readable {
            return Vec::new();
        }
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let mut instances = view.instances(&name, &tags);
        sort_near(v, &query, &mut instances, |i| i.node);
        instances
            .iter()
            .map(|i| instance_json(i, v.node_id(i.node), view.node_index(i.node)))
            .collect::<Vec<Value>>()
    })
    .await;
    super::acl::filtered_unless(readable, answer)
}

/// `PUT /v1/agent/service/register`: adds or replaces a service on this agent's record.
///
/// A service with a sidecar block on an agent that cannot hand out a leaf yet is registered
/// all the same (its sidecar waits, critical, and comes up once the cause is fixed), and the
/// answer says why in [`super::WARNING_HEADER`], so the mistake shows where it is made.
pub async fn register(
    State(api): State<Api>,
    auth: Auth,
    body: Bytes,
) -> ApiResult<axum::response::Response> {
    super::limits::SERVICE.check(body.len())?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let definition = crate::services::parse(&value).map_err(ApiError::bad_request)?;
    // A sidecar (`<name>-sidecar-proxy`) is written by who may write the service it fronts,
    // as in Consul, where a proxy registration needs write on its destination service.
    let governing = definition
        .service
        .name
        .strip_suffix("-sidecar-proxy")
        .unwrap_or(&definition.service.name);
    auth.require(Resource::Service, governing, Access::Write)?;
    // Replacing an instance of another service needs write on that one too.
    let replaced = api.agent.view(|v| {
        v.replica()
            .own_record()
            .and_then(|r| r.services.get(&definition.service.id))
            .map(|s| s.name.clone())
    });
    if let Some(name) = replaced {
        auth.require(Resource::Service, &name, Access::Write)?;
    }
    // Every check is validated before anything is written: a bad one leaves nothing behind.
    let checks = definition
        .check_definitions(api.config.enable_script_checks)
        .map_err(ApiError::bad_request)?;
    let (id, sidecar) = (definition.service.id.clone(), definition.sidecar.clone());
    let gateway =
        crate::services::mesh_gateway_addresses(&definition.service, api.config.advertise.ip())
            .map_err(ApiError::bad_request)?;
    api.agent
        .write(|r, _| {
            let mut record = r.own_record().cloned().unwrap_or_default();
            record
                .services
                .insert(definition.service.id.clone(), definition.service);
            // The record is one replicated value: it must fit an anti-entropy message.
            let size = serde_json::to_vec(&record).map_or(usize::MAX, |v| v.len());
            super::limits::NODE_RECORD.check(size)?;
            r.set_own_record(Some(record));
            Ok::<_, ApiError>(())
        })
        .await
        .map_err(ApiError::internal)??;
    for check in checks {
        api.checks.register(check, false).await?;
    }
    let mut response = StatusCode::OK.into_response();
    match (&sidecar, gateway) {
        (_, Some(addresses)) => {
            let spec = SidecarSpec {
                upstreams: Vec::new(),
                token: auth.secret.clone(),
                mesh_gateway: Some(addresses),
            };
            api.sidecars.start(&id, spec).map_err(ApiError::internal)?;
        }
        (Some(upstreams), None) => {
            let spec = SidecarSpec {
                upstreams: upstreams.clone(),
                token: auth.secret.clone(),
                mesh_gateway: None,
            };
            api.sidecars.start(&id, spec).map_err(ApiError::internal)?;
            if let Some(why) = api.connect.why_no_leaf(&api.agent) {
                tracing::warn!(service = %id, "its sidecar cannot get a leaf yet: {why}");
                if let Ok(value) = axum::http::HeaderValue::from_str(&why) {
                    response.headers_mut().insert(super::WARNING_HEADER, value);
                }
            }
        }
        (None, None) => api.sidecars.stop(&id).map_err(ApiError::internal)?,
    }
    Ok(response)
}

/// `PUT /v1/agent/service/deregister/:id`.
pub async fn deregister(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let name = api.agent.view(|v| {
        v.replica()
            .own_record()
            .and_then(|r| r.services.get(id.as_str()))
            .map(|s| s.name.clone())
    });
    if let Some(name) = name {
        auth.require(Resource::Service, &name, Access::Write)?;
    }
    let found = api
        .agent
        .write(|r, _| {
            let mut record = r.own_record().cloned().unwrap_or_default();
            if record.services.remove(id.as_str()).is_none() {
                return false;
            }
            record.checks.retain(|_, c| c.service_id != id);
            r.set_own_record(Some(record));
            true
        })
        .await
        .map_err(ApiError::internal)?;
    api.checks.forget_service(&id).map_err(ApiError::internal)?;
    api.sidecars.stop(&id).map_err(ApiError::internal)?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
            ),
        ));
    }
    Ok(StatusCode::OK)
}

/// `GET /v1/catalog/nodes`: every live node, in name order (or nearest first, `?near=`).
pub async fn nodes(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    catalog_query(&api, &query, None, |v, view| {
        let mut nodes: Vec<_> = view
            .nodes()
            .filter(|(name, _)| auth.can(Resource::Node, name, Access::Read))
            .collect();
        sort_near(v, &query, &mut nodes, |(name, _)| name);
        nodes
            .into_iter()
            .map(|(name, record)| node_json(name, record, v.node_id(name), view.node_index(name)))
            .collect::<Vec<NodeShape>>()
    })
    .await
}

/// `GET /v1/catalog/node/:name`: the node and its services by id; `null` for an unknown node,
/// as Consul answers.
pub async fn node(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    auth.require(Resource::Node, &name, Access::Read)?;
    let (index, body) = blocking::query(&api.agent, &query, Topic::Catalog, |v| {
        let failed = v.failed_owners();
        let replica = v.replica();
        let view = replica.catalog(&failed);
        let body = view.node(&name).and_then(|record| {
            let index = view.node_index(&name);
            let services: BTreeMap<&str, ServiceShape> = record
                .services
                .iter()
                .filter(|(_, s)| auth.can(Resource::Service, &s.name, Access::Read))
                .map(|(sid, s)| (sid.as_str(), service_json(s, index)))
                .collect();
            serde_json::to_value(CatalogNode {
                node: node_json(&name, record, v.node_id(&name), index),
                services,
            })
            .ok()
        });
        (replica.records_index(), body.unwrap_or(Value::Null))
    })
    .await?;
    Ok(with_index(index, body))
}

/// The answer of `/v1/catalog/node/:name`.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogNode<'a> {
    node: NodeShape,
    services: BTreeMap<&'a str, ServiceShape>,
}

/// `GET /v1/catalog/datacenters`: this agent's datacenter first, then the others the
/// datacenter directory (or, on a gateway, the WAN pool) knows, nearest first.
///
/// With `?summary` (murmur's own), each datacenter comes with its catalog in brief: its node
/// count and, per service, its instances and how many pass, from the summaries the gateways
/// publish as global data (`Updated` says when; this datacenter's is computed now), so no
/// request crosses the WAN; `null` for a datacenter whose summary has not arrived.
pub async fn datacenters(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let local = api.config.datacenter.as_str();
    let (_, ranked) = super::coordinate::ranked_datacenters(&api.agent, local);
    let names = ranked.into_iter().map(|(dc, _)| dc);
    if !super::flag(&query, "summary") {
        return Json(json!(names.collect::<Vec<_>>()));
    }
    let shape = |summary: Option<&DcSummary>, updated_ms: u64| {
        let services: Option<BTreeMap<&str, Value>> = summary.map(|s| {
            s.services
                .iter()
                .map(|(name, c)| {
                    let counts = json!({"Instances": c.instances, "Passing": c.passing});
                    (name.as_str(), counts)
                })
                .collect()
        });
        json!({
            "Nodes": summary.map(|s| s.nodes),
            "Services": services,
            "Updated": summary.map(|_| super::connect::rfc3339(updated_ms / 1000)),
        })
    };
    let listed: Vec<Value> = api.agent.view(|v| {
        let failed = v.failed_owners();
        let here = DcSummary::of(local, &v.replica().catalog(&failed));
        let published: BTreeMap<&str, (&DcSummary, u64)> = v
            .replica()
            .summaries()
            .map(|(s, at)| (s.datacenter.as_str(), (s, at)))
            .collect();
        names
            .map(|dc| {
                let mut entry = match published.get(dc.as_str()) {
                    _ if dc == local => shape(Some(&here), wall_ms()),
                    Some((summary, at)) => shape(Some(summary), *at),
                    None => shape(None, 0),
                };
                entry["Datacenter"] = json!(dc);
                entry
            })
            .collect()
    });
    Json(json!(listed))
}

/// Lists something of this agent's own record by id, as the `/v1/agent/*` listings do; `list`
/// gets the node's name, its record and the record's local index.
fn own_listing<T: serde::Serialize>(
    api: &Api,
    query: &HashMap<String, String>,
    list: impl Fn(&str, &NodeRecord, u64) -> BTreeMap<String, T>,
) -> ApiResult {
    let filter = filter_of(query)?;
    let listed = api.agent.view(|v| {
        let replica = v.replica();
        let me = v.me().name.to_string();
        let index = replica.records().entry(&me).map_or(0, |e| e.modify_index);
        replica
            .own_record()
            .map_or_else(BTreeMap::new, |record| list(&me, record, index))
    });
    filtered(1, filter.as_ref(), listed)
}

/// `GET /v1/agent/services`: the services this agent registered, by id.
pub async fn agent_services(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    own_listing(&api, &query, |_, record, index| {
        record
            .services
            .iter()
            .filter(|(_, s)| auth.can(Resource::Service, &s.name, Access::Read))
            .map(|(id, s)| (id.to_string(), service_json(s, index)))
            .collect()
    })
}

/// `GET /v1/agent/checks`: the checks this agent's record holds, by id.
pub async fn agent_checks(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    own_listing(&api, &query, |me, record, index| {
        record
            .checks
            .iter()
            .map(|(id, c)| {
                let service = record.services.get(&c.service_id);
                (id.to_string(), check_json(me, c, service, index))
            })
            .collect()
    })
}
