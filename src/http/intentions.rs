//! `/v1/connect/intentions`: Consul's intention endpoints over the replicated intentions.
//!
//! An intention is keyed by its `source → destination` pair, which any agent may write (last
//! writer wins). Consul's ids are handed out by its leader; murmur's are derived from the pair
//! ([`Intention::id`]), so every agent shows the same id for the same intention and the id
//! endpoints work anywhere.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use murmur_acl::Access;
use murmur_catalog::{
    Action, INTENTION_PREFIX, Intention, MatchBy, Replica, WILDCARD, check, matching, ordered,
};
use murmur_proxy::authorize::action_name;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::acl::Auth;
use super::blocking::{self, Topic};
use super::{Api, ApiError, ApiResult, filter_of, filtered, with_index};
use crate::services::{string, string_map};

/// An intention in Consul's shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct IntentionShape {
    #[serde(rename = "ID")]
    id: String,
    description: String,
    #[serde(rename = "SourceNS")]
    source_ns: &'static str,
    source_name: String,
    #[serde(rename = "DestinationNS")]
    destination_ns: &'static str,
    destination_name: String,
    source_type: &'static str,
    action: &'static str,
    meta: BTreeMap<String, String>,
    precedence: u8,
    create_index: u64,
    modify_index: u64,
}

fn shape(replica: &Replica, i: &Intention) -> IntentionShape {
    let index = replica
        .shared()
        .entry(&Intention::key(&i.source, &i.destination))
        .map_or(0, |e| e.modify_index);
    IntentionShape {
        id: Intention::id(&i.source, &i.destination),
        description: i.description.clone(),
        source_ns: "default",
        source_name: i.source.clone(),
        destination_ns: "default",
        destination_name: i.destination.clone(),
        source_type: "consul",
        action: action_name(i.action),
        meta: i.meta.clone(),
        precedence: i.precedence(),
        create_index: index,
        modify_index: index,
    }
}

fn intentions_index(replica: &Replica) -> u64 {
    replica.shared().prefix_index(INTENTION_PREFIX)
}

/// A service name or `*`, as intentions take them.
fn service_name(text: &str, what: &str) -> Result<String, ApiError> {
    let ok = text == WILDCARD
        || (!text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {text:?} must be a service name (letters, digits, '-', '_', '.') or *"
        )))
    }
}

fn action(text: &str) -> Result<Action, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        _ => Err(ApiError::bad_request(format!(
            "Action {text:?} must be allow or deny"
        ))),
    }
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    super::limits::INTENTION.check(body.len())?;
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request(
            "Request decode failed: the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Request decode failed: {e}"))),
    }
}

/// The intention a body describes, for `source → destination` unless the body names them.
fn parse(
    object: &Map<String, Value>,
    source: Option<&str>,
    destination: Option<&str>,
) -> Result<Intention, ApiError> {
    let bad = ApiError::bad_request;
    let named = |key: &str, given: Option<&str>| -> Result<String, ApiError> {
        match given {
            Some(name) => Ok(name.to_owned()),
            None => service_name(&string(object, key).map_err(bad)?, key),
        }
    };
    Ok(Intention {
        source: named("SourceName", source)?,
        destination: named("DestinationName", destination)?,
        action: action(&string(object, "Action").map_err(bad)?)?,
        description: string(object, "Description").map_err(bad)?,
        meta: string_map(object, "Meta").map_err(bad)?,
    })
}

fn pair(query: &HashMap<String, String>) -> Result<(String, String), ApiError> {
    let get = |key: &str| {
        query
            .get(key)
            .ok_or_else(|| {
                ApiError::bad_request(format!("required query parameter '{key}' not set"))
            })
            .and_then(|v| service_name(v, key))
    };
    Ok((get("source")?, get("destination")?))
}

async fn put_intention(api: &Api, auth: &Auth, intention: Intention) -> Result<(), ApiError> {
    auth.require_intention(&intention.destination, Access::Write)?;
    api.agent
        .write(move |r, now| r.put_intention(intention, now))
        .await
        .map_err(ApiError::internal)
}

async fn delete_pair(
    api: &Api,
    auth: &Auth,
    source: String,
    destination: String,
) -> Result<(), ApiError> {
    auth.require_intention(&destination, Access::Write)?;
    api.agent
        .write(move |r, now| r.delete_intention(&source, &destination, now))
        .await
        .map_err(ApiError::internal)
        .map(drop)
}

/// `GET /v1/connect/intentions`: every intention, in precedence order; blocking, `?filter=`.
pub async fn list(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let filter = filter_of(&query)?;
    let (index, list) = blocking::query(&api.agent, &query, Topic::Other, |v| {
        let all = ordered(v.replica().intentions());
        (
            intentions_index(v.replica()),
            all.iter()
                .filter(|i| auth.can_intention(&i.destination, Access::Read))
                .map(|i| shape(v.replica(), i))
                .collect::<Vec<_>>(),
        )
    })
    .await?;
    filtered(index, filter.as_ref(), list)
}

/// `POST /v1/connect/intentions` (Consul's legacy create): `{"ID": …}`; 409 when the pair has
/// one already (use `PUT …/exact` to replace).
pub async fn create(State(api): State<Api>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    let intention = parse(&body_object(&body)?, None, None)?;
    let exists = api.agent.view(|v| {
        v.replica()
            .intentions()
            .any(|i| i.source == intention.source && i.destination == intention.destination)
    });
    if exists {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "duplicate intention found: {} => {} (use PUT /v1/connect/intentions/exact to replace it)",
                intention.source, intention.destination
            ),
        ));
    }
    let id = Intention::id(&intention.source, &intention.destination);
    put_intention(&api, &auth, intention).await?;
    Ok(Json(json!({"ID": id})).into_response())
}

/// `GET /v1/connect/intentions/exact?source=&destination=`.
pub async fn get_exact(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (source, destination) = pair(&query)?;
    one(&api, |i| i.source == source && i.destination == destination)
}

/// `PUT /v1/connect/intentions/exact?source=&destination=`: create or replace; `true`.
pub async fn put_exact(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Response> {
    let (source, destination) = pair(&query)?;
    let intention = parse(&body_object(&body)?, Some(&source), Some(&destination))?;
    put_intention(&api, &auth, intention).await?;
    Ok(Json(json!(true)).into_response())
}

/// `DELETE /v1/connect/intentions/exact?source=&destination=`: `true`, also when absent.
pub async fn delete_exact(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (source, destination) = pair(&query)?;
    delete_pair(&api, &auth, source, destination).await?;
    Ok(Json(json!(true)).into_response())
}

/// The pair of the intention with id `id`, if there is one.
fn by_id(api: &Api, id: &str) -> Result<(String, String), ApiError> {
    api.agent
        .view(|v| {
            v.replica()
                .intentions()
                .find(|i| Intention::id(&i.source, &i.destination) == id)
                .map(|i| (i.source.clone(), i.destination.clone()))
        })
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Intention not found"))
}

/// `GET /v1/connect/intentions/:id`.
pub async fn get_id(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let (source, destination) = by_id(&api, &id)?;
    one(&api, |i| i.source == source && i.destination == destination)
}

/// `PUT /v1/connect/intentions/:id`: replaces the intention (its pair may not change, since
/// the pair is its identity).
pub async fn put_id(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let (source, destination) = by_id(&api, &id)?;
    let object = body_object(&body)?;
    let intention = parse(&object, None, None)
        .or_else(|_| parse(&object, Some(&source), Some(&destination)))?;
    if intention.source != source || intention.destination != destination {
        return Err(ApiError::bad_request(
            "an intention's source and destination cannot change: delete it and create another",
        ));
    }
    put_intention(&api, &auth, intention).await?;
    Ok(Json(json!(true)).into_response())
}

/// `DELETE /v1/connect/intentions/:id`.
pub async fn delete_id(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (source, destination) = by_id(&api, &id)?;
    delete_pair(&api, &auth, source, destination).await?;
    Ok(Json(json!(true)).into_response())
}

fn one(api: &Api, wanted: impl Fn(&Intention) -> bool) -> ApiResult {
    let (index, found) = api.agent.view(|v| {
        let found = v
            .replica()
            .intentions()
            .find(|i| wanted(i))
            .map(|i| shape(v.replica(), i));
        (intentions_index(v.replica()), found)
    });
    match found {
        Some(found) => Ok(with_index(index, json!(found))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "Intention not found")),
    }
}

/// `GET /v1/connect/intentions/check?source=&destination=`: `{"Allowed": …}`, the decision a
/// proxy would make (the default policy when nothing matches).
pub async fn check_pair(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (source, destination) = pair(&query)?;
    let allowed = api.agent.view(|v| {
        check(
            v.replica().intentions(),
            &source,
            &destination,
            api.connect.default_policy,
        )
        .0 == Action::Allow
    });
    Ok(Json(json!({"Allowed": allowed})).into_response())
}

/// `GET /v1/connect/intentions/match?by=source|destination&name=…` (repeatable): for each
/// name, the intentions that apply to it, in precedence order; blocking.
pub async fn match_names(
    State(api): State<Api>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let (query, names) = super::health::split_query(pairs, "name");
    let by = match query.get("by").map(String::as_str) {
        Some("source") => MatchBy::Source,
        Some("destination") => MatchBy::Destination,
        _ => {
            return Err(ApiError::bad_request(
                "required query parameter 'by' must be source or destination",
            ));
        }
    };
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "required query parameter 'name' not set",
        ));
    }
    let (index, answer) = blocking::query(&api.agent, &query, Topic::Other, |v| {
        let answer: BTreeMap<&String, Vec<IntentionShape>> = names
            .iter()
            .map(|name| {
                let list = matching(v.replica().intentions(), by, name);
                (name, list.iter().map(|i| shape(v.replica(), i)).collect())
            })
            .collect();
        (intentions_index(v.replica()), json!(answer))
    })
    .await?;
    Ok(with_index(index, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_body_is_an_intention_or_an_error_never_a_panic(object in crate::arbitrary_json::object()) {
            let _ = parse(&object, None, None);
            let _ = parse(&object, Some("web"), Some("db"));
        }
    }
}
