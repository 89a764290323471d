//! The agent's check endpoints: register and deregister checks, and the reports of TTL checks
//! (`pass`, `warn`, `fail` with `?note=`, `update` with a `{"Status", "Output"}` body).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use murmur_catalog::Health;
use serde_json::Value;

use super::{Api, ApiError, ApiResult};
use crate::services::{field, string};

/// `PUT /v1/agent/check/register`: a node-level check, or one of a service of this agent
/// (`ServiceID`).
pub async fn register(State(api): State<Api>, body: Bytes) -> ApiResult<StatusCode> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let definition =
        crate::checks::definition::parse(&value, None, None, api.config.enable_script_checks)
            .map_err(ApiError::bad_request)?;
    api.checks.register(definition, false).await?;
    Ok(StatusCode::OK)
}

/// `PUT /v1/agent/check/deregister/:id`.
pub async fn deregister(State(api): State<Api>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    api.checks.deregister(&id).await?;
    Ok(StatusCode::OK)
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
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    report(&api, &id, Health::Passing, q.get("note")).await
}

/// `PUT /v1/agent/check/warn/:id?note=`.
pub async fn warn(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    report(&api, &id, Health::Warning, q.get("note")).await
}

/// `PUT /v1/agent/check/fail/:id?note=`.
pub async fn fail(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    report(&api, &id, Health::Critical, q.get("note")).await
}

/// `PUT /v1/agent/check/update/:id` with `{"Status": "passing|warning|critical", "Output": …}`.
pub async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
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
