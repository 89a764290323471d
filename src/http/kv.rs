//! `/v1/kv/*`: Consul's key/value endpoint over the replica's KV view.
//!
//! `?cas=` is checked against this agent's replica (murmur has no leader): two agents can both
//! accept a CAS on one index, and last-writer-wins then picks one value everywhere.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use murmur_acl::{Access, Resource};
use murmur_catalog::{KvEntry, KvError, KvValue};
use serde_json::{Value, json};

use super::acl::Auth;
use super::blocking::Topic;
use super::{Api, ApiError, ApiResult, blocking, flag, indexed, with_index};

fn entry_json(e: &KvEntry<'_>) -> Value {
    json!({
        "LockIndex": 0,
        "Key": e.key,
        "Flags": e.value.flags,
        "Value": if e.value.value.is_empty() { Value::Null } else { Value::String(BASE64.encode(&e.value.value)) },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
        "Session": "",
    })
}

fn number(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    query
        .get(name)
        .map(|text| {
            text.parse()
                .map_err(|_| ApiError::bad_request(format!("Invalid {name} value: {text:?}")))
        })
        .transpose()
}

impl From<KvError> for ApiError {
    fn from(err: KvError) -> Self {
        let status = match err {
            KvError::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, err.to_string())
    }
}

fn refuse_sessions(query: &HashMap<String, String>) -> ApiResult<()> {
    if query.contains_key("acquire") || query.contains_key("release") {
        return Err(ApiError::bad_request(
            "sessions (?acquire, ?release) need a leader and are not supported by murmur: use ?cas for optimistic updates",
        ));
    }
    Ok(())
}

/// `GET /v1/kv/` (the whole store, with `?recurse` or `?keys`).
pub async fn get_root(
    state: State<Api>,
    auth: Auth,
    query: Query<HashMap<String, String>>,
) -> ApiResult {
    get(state, auth, Path(String::new()), query).await
}

/// `GET /v1/kv/:key` with `?recurse`, `?keys&separator=`, `?raw`, `?index&wait`.
pub async fn get(
    State(api): State<Api>,
    auth: Auth,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let recurse = flag(&query, "recurse");
    if !recurse && !flag(&query, "keys") {
        auth.require(Resource::Key, &key, Access::Read)?;
    }
    if flag(&query, "keys") {
        // Consul accepts its historical misspelling too.
        let separator = query.get("separator").or(query.get("seperator")).cloned();
        let (index, keys) = blocking::query(&api.agent, &query, Topic::Kv(key.clone()), |n| {
            let kv = n.replica().kv();
            let mut keys = kv.keys(&key, separator.as_deref());
            keys.retain(|k| auth.can(Resource::Key, k, Access::List));
            (kv.prefix_index(&key), keys)
        })
        .await?;
        if keys.is_empty() {
            return Ok(indexed(index, StatusCode::NOT_FOUND));
        }
        return Ok(with_index(index, json!(keys)));
    }
    let (index, entries) = blocking::query(&api.agent, &query, Topic::Kv(key.clone()), |n| {
        let kv = n.replica().kv();
        let entries: Vec<(Value, Vec<u8>)> = if recurse {
            kv.list(&key)
                .filter(|e| auth.can(Resource::Key, e.key, Access::Read))
                .map(|e| (entry_json(&e), Vec::new()))
                .collect()
        } else {
            kv.get(&key)
                .map(|e| (entry_json(&e), e.value.value.clone()))
                .into_iter()
                .collect()
        };
        (kv.prefix_index(&key), entries)
    })
    .await?;
    if entries.is_empty() {
        return Ok(indexed(index, StatusCode::NOT_FOUND));
    }
    if flag(&query, "raw") && !recurse {
        let raw: Vec<u8> = entries.into_iter().flat_map(|(_, raw)| raw).collect();
        let body = ([(header::CONTENT_TYPE, "application/octet-stream")], raw);
        return Ok(indexed(index, body));
    }
    let list: Vec<Value> = entries.into_iter().map(|(json, _)| json).collect();
    Ok(with_index(index, Value::Array(list)))
}

/// `PUT /v1/kv/:key` with the value as the body, `?flags=`, `?cas=`.
pub async fn put(
    State(api): State<Api>,
    auth: Auth,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    refuse_sessions(&query)?;
    auth.require(Resource::Key, &key, Access::Write)?;
    let value = KvValue {
        flags: number(&query, "flags")?.unwrap_or(0),
        value: body.to_vec(),
    };
    let cas = number(&query, "cas")?;
    let written = api
        .agent
        .write(|r, now| r.kv_write(&key, Some(value), cas, now))
        .await
        .map_err(ApiError::internal)??;
    Ok(axum::Json(json!(written)).into_response())
}

/// `PUT /v1/kv/` has no key: Consul's 400.
pub async fn put_root() -> ApiError {
    ApiError::bad_request("Missing key name")
}

/// `DELETE /v1/kv/:key` with `?recurse` or `?cas=`.
pub async fn delete(
    State(api): State<Api>,
    auth: Auth,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let cas = number(&query, "cas")?;
    auth.require(Resource::Key, &key, Access::Write)?;
    let deleted = if flag(&query, "recurse") {
        if cas.is_some() {
            return Err(ApiError::bad_request("cas cannot be combined with recurse"));
        }
        api.agent
            .write(|r, now| {
                let keys: Vec<String> = r.kv().list(&key).map(|e| e.key.to_owned()).collect();
                // A recursive delete needs write on every key it would remove, as Consul's.
                if let Some(k) = keys
                    .iter()
                    .find(|k| !auth.can(Resource::Key, k, Access::Write))
                {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("Permission denied: token lacks permission 'key:write' on {k:?}"),
                    ));
                }
                keys.iter()
                    .try_for_each(|k| r.kv_write(k, None, None, now).map(drop))
                    .map(|()| true)
                    .map_err(ApiError::from)
            })
            .await
    } else {
        api.agent
            .write(|r, now| {
                if cas.is_none() && r.kv().get(&key).is_none() {
                    // Nothing to delete: no tombstone for a key that is not there.
                    return Ok(true);
                }
                r.kv_write(&key, None, cas, now).map_err(ApiError::from)
            })
            .await
    };
    let deleted = deleted.map_err(ApiError::internal)??;
    Ok(axum::Json(json!(deleted)).into_response())
}

/// `DELETE /v1/kv/` with `?recurse`: the whole store.
pub async fn delete_root(
    state: State<Api>,
    auth: Auth,
    query: Query<HashMap<String, String>>,
) -> ApiResult {
    if !flag(&query, "recurse") {
        return Err(ApiError::bad_request("Missing key name"));
    }
    delete(state, auth, Path(String::new()), query).await
}
