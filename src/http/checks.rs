//! The agent's check endpoints: register and deregister checks, and the reports of TTL checks
//! (`pass`, `warn`, `fail` with `?note=`, `update` with a `{"Status", "Output"}` body).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use murmur_acl::{Access, Resource};
use murmur_catalog::Health;
use serde_json::Value;

use super::acl::Auth;
use super::{Api, ApiError, ApiResult};
use crate::services::{field, string};

/// `PUT /v1/agent/check/register`: a node-level check, or one of a service of this agent
/// (`ServiceID`).
pub async fn register(State(api): State<Api>, auth: Auth, body: Bytes) -> ApiResult<StatusCode> {
    super::limits::CHECK.check(body.len())?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let definition =
        crate::checks::definition::parse(&value, None, None, api.config.enable_script_checks)
            .map_err(ApiError::bad_request)?;
    may_write_check(&api, &auth, None, Some(&definition.service_id))?;
    api.checks.register(definition, false).await?;
    Ok(StatusCode::OK)
}

/// `PUT /v1/agent/check/deregister/:id`.
pub async fn deregister(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    may_write_check(&api, &auth, Some(&id), None)?;
    api.checks.deregister(&id).await?;
    Ok(StatusCode::OK)
}

/// May the request write the check `id` (or, for a new check, one of `service_id`)? A
/// service's check needs `service:write` on the service (a sidecar's, on the service it
/// fronts), a node's `node:write` on this agent's node, as Consul checks them.
fn may_write_check(
    api: &Api,
    auth: &Auth,
    id: Option<&str>,
    service_id: Option<&str>,
) -> Result<(), ApiError> {
    let service_name = api.agent.view(|v| {
        let record = v.replica().own_record()?;
        let service_id = match (service_id, id) {
            (Some(s), _) if !s.is_empty() => s.into(),
            (_, Some(id)) => record.checks.get(id)?.service_id.clone(),
            _ => return None,
        };
        record.services.get(&service_id).map(|s| s.name.clone())
    });
    match service_name {
        Some(name) => {
            let governing = name.strip_suffix("-sidecar-proxy").unwrap_or(&name);
            auth.require(Resource::Service, governing, Access::Write)
        }
        None => auth.require(Resource::Node, &api.config.node, Access::Write),
    }
}

async fn report(
    api: &Api,
    id: &str,
    status: Health,
    note: Option<&String>,
) -> ApiResult<StatusCode> {
    api.checks
        .report(id, status, note.cloned().unwrap_or_default())
        .await?;
    Ok(StatusCode::OK)
}

/// `PUT /v1/agent/check/pass/:id?note=`.
pub async fn pass(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    may_write_check(&api, &auth, Some(&id), None)?;
    report(&api, &id, Health::Passing, q.get("note")).await
}

/// `PUT /v1/agent/check/warn/:id?note=`.
pub async fn warn(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    may_write_check(&api, &auth, Some(&id), None)?;
    report(&api, &id, Health::Warning, q.get("note")).await
}

/// `PUT /v1/agent/check/fail/:id?note=`.
pub async fn fail(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    may_write_check(&api, &auth, Some(&id), None)?;
    report(&api, &id, Health::Critical, q.get("note")).await
}

/// `PUT /v1/agent/check/update/:id` with `{"Status": "passing|warning|critical", "Output": …}`.
pub async fn update(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    super::limits::CHECK_UPDATE.check(body.len())?;
    may_write_check(&api, &auth, Some(&id), None)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let status = match string(object, "Status")
        .map_err(ApiError::bad_request)?
        .as_str()
    {
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        "critical" => Health::Critical,
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid check status: {other:?}: use passing, warning or critical"
            )));
        }
    };
    let output = match field(object, "Output") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Output must be a string, not {other}"
            )));
        }
    };
    api.checks.report(&id, status, output).await?;
    Ok(StatusCode::OK)
}

/// Check id Consul gives node maintenance.
const NODE_MAINTENANCE: &str = "_node_maintenance";
/// Output when maintenance is enabled without a reason (Consul's wording).
const NO_REASON: &str =
    "Maintenance mode is enabled, but no reason was provided. This is a default message.";

/// `?enable=` of the maintenance endpoints: required, a boolean.
fn enable(query: &HashMap<String, String>) -> ApiResult<bool> {
    match query.get("enable").map(String::as_str) {
        None | Some("") => Err(ApiError::bad_request("Missing value for enable")),
        Some(text) => super::go_bool(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid value for enable: {text:?}: use true or false (or 1, t, T, TRUE, True; 0, f, F, FALSE, False)"
            ))
        }),
    }
}

/// Puts the maintenance check `id` (critical, like Consul's) on this agent's record, or takes
/// it off. Returns false when `service_id` names no service here.
async fn set_maintenance(
    api: &Api,
    id: String,
    service_id: String,
    on: bool,
    reason: Option<&String>,
) -> ApiResult<bool> {
    let output = reason
        .filter(|r| !r.is_empty())
        .cloned()
        .unwrap_or_else(|| NO_REASON.to_owned());
    let name = if service_id.is_empty() {
        "Node Maintenance Mode".to_owned()
    } else {
        "Service Maintenance Mode".to_owned()
    };
    api.agent
        .write(move |r, _| {
            let mut record = r.own_record().cloned().unwrap_or_default();
            if !service_id.is_empty() && !record.services.contains_key(service_id.as_str()) {
                return false;
            }
            let changed = if on {
                let check = murmur_catalog::Check {
                    id: id.clone().into(),
                    name: name.into(),
                    status: Health::Critical,
                    output,
                    service_id: service_id.into(),
                };
                record.checks.insert(id.into(), check.clone()) != Some(check)
            } else {
                record.checks.remove(id.as_str()).is_some()
            };
            if changed {
                r.set_own_record(Some(record));
            }
            true
        })
        .await
        .map_err(ApiError::internal)
}

/// `PUT /v1/agent/maintenance?enable=true|false&reason=`: the whole node out of service (every
/// instance on it critical) or back.
pub async fn maintenance(
    State(api): State<Api>,
    auth: Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    auth.require(Resource::Node, &api.config.node, Access::Write)?;
    let on = enable(&q)?;
    set_maintenance(
        &api,
        NODE_MAINTENANCE.into(),
        String::new(),
        on,
        q.get("reason"),
    )
    .await?;
    Ok(StatusCode::OK)
}

/// `PUT /v1/agent/service/maintenance/:id?enable=true|false&reason=`: one instance.
pub async fn service_maintenance(
    State(api): State<Api>,
    auth: Auth,
    Path(service_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    may_write_check(&api, &auth, None, Some(&service_id))?;
    let on = enable(&q)?;
    let id = format!("_service_maintenance:{service_id}");
    let found = set_maintenance(&api, id, service_id.clone(), on, q.get("reason")).await?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {service_id:?}"),
        ));
    }
    Ok(StatusCode::OK)
}
