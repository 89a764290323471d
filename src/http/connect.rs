//! Service identity endpoints, in Consul's shapes: the CA roots to trust, this agent's leaf
//! certificate for a service (a blocking query that returns when the leaf is renewed or the
//! signing root changes), and the authorization check proxies make per connection. Plus one
//! of murmur's own: `PUT /v1/agent/connect/ca/rotate`.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use murmur_acl::{Access, Resource};
use murmur_catalog::CA_ROOT_PREFIX;
use murmur_proxy::authorize::authorize as decide;
use murmur_proxy::identity::ServiceId;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::acl::Auth;
use super::blocking::{self, Topic};
use super::{Api, ApiError, ApiResult, with_index};
use crate::agent::runtime::wall_ms;
use crate::connect::IssuedLeaf;
use crate::services::string;

/// RFC 3339, as Consul writes times.
pub(super) fn rfc3339(unix_s: u64) -> String {
    i64::try_from(unix_s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// One root in `/v1/agent/connect/ca/roots`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RootShape {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    /// murmur's own field: the datacenter whose leaves this root signs (each datacenter
    /// has its own; a leaf must chain to a root of the datacenter it names).
    datacenter: String,
    #[serde(rename = "SigningKeyID")]
    signing_key_id: String,
    not_before: String,
    not_after: String,
    root_cert: String,
    intermediate_certs: Vec<String>,
    active: bool,
    create_index: u64,
    modify_index: u64,
}

/// `GET /v1/agent/connect/ca/roots`: the roots to trust now, of every datacenter (the trust
/// bundle); this datacenter's signing root first and the one `Active`; blocking on the
/// roots' index.
pub async fn roots(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let overlap = api.connect.overlap_ms();
    let local = api.config.datacenter.as_str();
    let (index, (active, roots)) = blocking::query(&api.agent, &query, Topic::Other, |n| {
        let replica = n.replica();
        let index = replica.shared().prefix_index(CA_ROOT_PREFIX);
        let signing = murmur_proxy::roots::signing_root(replica.ca_roots(), local);
        let active = signing.map(|r| r.id.clone()).unwrap_or_default();
        let bundle =
            murmur_proxy::roots::trust_bundle(replica.ca_roots(), local, wall_ms(), overlap);
        let shapes: Vec<RootShape> = bundle
            .iter()
            .map(|entry| {
                let root = entry.root;
                RootShape {
                    id: root.id.clone(),
                    name: root.name.clone(),
                    datacenter: entry.datacenter_or(local).to_owned(),
                    signing_key_id: root.id.clone(),
                    not_before: rfc3339(root.not_before_s),
                    not_after: rfc3339(root.not_after_s),
                    root_cert: root.cert_pem.clone(),
                    intermediate_certs: Vec::new(),
                    active: signing.is_some_and(|s| std::ptr::eq(s, root)),
                    create_index: entry.modify_index,
                    modify_index: entry.modify_index,
                }
            })
            .collect();
        (index, (active, shapes))
    })
    .await?;
    Ok(with_index(
        index,
        json!({
            "ActiveRootID": active,
            "TrustDomain": api.connect.trust_domain().as_str(),
            "Roots": roots,
        }),
    ))
}

fn leaf_json(issued: &IssuedLeaf) -> Value {
    json!({
        "SerialNumber": issued.leaf.serial,
        "CertPEM": issued.leaf.cert_pem,
        "PrivateKeyPEM": issued.key_pem,
        "Service": issued.id.service,
        "ServiceURI": issued.id.uri(),
        "ValidAfter": rfc3339(issued.leaf.valid_after_s),
        "ValidBefore": rfc3339(issued.leaf.valid_before_s),
        "CreateIndex": issued.index,
        "ModifyIndex": issued.index,
    })
}

/// `GET /v1/agent/connect/ca/leaf/:service`: this agent's leaf for `service`. With `?index=`
/// it waits until a new leaf replaces that one (renewal, or a new signing root).
pub async fn leaf(
    State(api): State<Api>,
    auth: Auth,
    Path(service): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    // A leaf and its key let the holder act as the service: only who may write it gets one.
    auth.require(Resource::Service, &service, Access::Write)?;
    ServiceId::new(api.connect.trust_domain(), &api.config.datacenter, &service)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let index = blocking::index(&query)?;
    let deadline = tokio::time::Instant::now() + blocking::wait(&query)?;
    // Subscribed before the first look, so a root published meanwhile still wakes us.
    let subscription = api.agent.watchers.subscribe(Topic::Other);
    let mut changes = subscription.changes.clone();
    loop {
        changes.borrow_and_update();
        let issued = api
            .connect
            .leaf(&api.agent, &service)
            .await
            .map_err(ApiError::internal)?;
        if index == 0 || issued.index != index {
            return Ok(with_index(issued.index, leaf_json(&issued)));
        }
        let due = issued.renew_at_s.saturating_sub(wall_ms() / 1000);
        let renewal = tokio::time::Instant::now() + Duration::from_secs(due);
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(renewal.min(deadline)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(with_index(issued.index, leaf_json(&issued)));
        }
    }
}

/// `POST /v1/agent/connect/authorize`: may the holder of `ClientCertURI` reach `Target`?
pub async fn authorize(State(api): State<Api>, auth: Auth, body: Bytes) -> ApiResult {
    let object = match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => object,
        _ => {
            return Err(ApiError::bad_request(
                "Request decode failed: give a JSON object with Target and ClientCertURI",
            ));
        }
    };
    let target = string(&object, "Target").map_err(ApiError::bad_request)?;
    if target.is_empty() {
        return Err(ApiError::bad_request("Target service must be specified"));
    }
    auth.require(Resource::Service, &target, Access::Write)?;
    let uri = string(&object, "ClientCertURI").map_err(ApiError::bad_request)?;
    let caller = ServiceId::parse(&uri).map_err(|e| {
        ApiError::bad_request(format!("ClientCertURI not a valid Connect identifier: {e}"))
    })?;
    let decision = api.agent.view(|v| {
        decide(
            api.connect.trust_domain(),
            &caller,
            &target,
            v.replica().intentions(),
            api.connect.default_policy,
        )
    });
    let outcome = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    metrics::counter!("murmur_connect_authorize_total", "outcome" => outcome).increment(1);
    Ok(
        axum::Json(json!({"Authorized": decision.allowed, "Reason": decision.reason}))
            .into_response(),
    )
}

/// `PUT /v1/agent/connect/ca/rotate` (murmur's own): a new root, made and kept by this agent,
/// signs from now on; the old ones stay trusted for one leaf lifetime.
pub async fn rotate(
    State(api): State<Api>,
    auth: Auth,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    auth.require_operator(Access::Write)?;
    let root = api
        .connect
        .rotate(&api.agent)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(root = %root.id, "CA root rotated");
    Ok((
        StatusCode::OK,
        axum::Json(json!({"ID": root.id, "Name": root.name, "RootCert": root.cert_pem})),
    ))
}
