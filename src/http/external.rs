//! `PUT /v1/catalog/register` and `PUT /v1/catalog/deregister`: nodes no murmur agent runs
//! (external services, as Consul calls them), written by whoever knows about them.
//!
//! In Consul these writes go to the leader; here they are shared data (see
//! `murmur_catalog::ExternalNodes`): any agent takes them, they replicate like KV entries and
//! outlive the agent that took them. Two differences from Consul, both said in the docs:
//! a node name that a murmur agent holds is refused (that agent owns its record: register its
//! services through its `/v1/agent/service/register`), and external nodes have no `serfHealth`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use murmur_catalog::{Check, ExternalNode, Health, PartKey, Service};
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, same_datacenter};
use crate::services::{field, string, string_map};

/// Longest node name (gossip's limit for agents' names too).
const MAX_NODE_NAME: usize = 64;

/// A parsed catalog registration.
#[derive(Debug, PartialEq)]
struct Registration {
    node: String,
    fields: ExternalNode,
    skip_node_update: bool,
    service: Option<Service>,
    checks: Vec<Check>,
}

/// `PUT /v1/catalog/register`.
pub async fn register(State(api): State<Api>, body: Bytes) -> ApiResult {
    super::limits::CATALOG_REGISTRATION.check(body.len())?;
    let object = json_object(&body)?;
    let registration = parse_registration(&object, &api.config.datacenter)?;
    same_datacenter(&api, &registration.fields.datacenter)?;
    api.agent
        .write(move |r, now| {
            refuse_agent_node(r, &registration.node)?;
            let known = r.external().get(&registration.node).map(|e| &e.record);
            for check in &registration.checks {
                let named = &check.service_id;
                let exists = registration
                    .service
                    .as_ref()
                    .is_some_and(|s| s.id == *named)
                    || known.is_some_and(|k| k.services.contains_key(named));
                if !named.is_empty() && !exists {
                    return Err(ApiError::bad_request(format!(
                        "check {:?} is for service {named:?}, which node {:?} does not have: \
                         register the service first or in the same request",
                        check.id, registration.node
                    )));
                }
            }
            r.register_external(
                &registration.node,
                registration.fields,
                registration.skip_node_update,
                registration.service.into_iter().collect(),
                registration.checks,
                now,
            );
            Ok(())
        })
        .await
        .map_err(ApiError::internal)??;
    Ok(axum::Json(json!(true)).into_response())
}

/// `PUT /v1/catalog/deregister`: the whole node, or its `ServiceID` (with the checks that
/// watch it), or its `CheckID`. Removing what is not there succeeds, as in Consul.
pub async fn deregister(State(api): State<Api>, body: Bytes) -> ApiResult {
    let object = json_object(&body)?;
    let node = node_name(&object)?;
    let service_id = string(&object, "ServiceID").map_err(ApiError::bad_request)?;
    let check_id = string(&object, "CheckID").map_err(ApiError::bad_request)?;
    same_datacenter(
        &api,
        &string(&object, "Datacenter").map_err(ApiError::bad_request)?,
    )?;
    api.agent
        .write(move |r, now| {
            refuse_agent_node(r, &node)?;
            let part = match (service_id.as_str(), check_id.as_str()) {
                ("", "") => PartKey::Node,
                (service, "") => PartKey::Service(service),
                ("", check) => PartKey::Check(check),
                _ => {
                    return Err(ApiError::bad_request(
                        "give ServiceID or CheckID, not both (neither removes the whole node)",
                    ));
                }
            };
            r.deregister_external(&node, part, now);
            Ok(())
        })
        .await
        .map_err(ApiError::internal)??;
    Ok(axum::Json(json!(true)).into_response())
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request(
            "Request decode failed: the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Request decode failed: {e}"))),
    }
}

/// An agent's own record is its own to write.
fn refuse_agent_node(r: &murmur_catalog::Replica, node: &str) -> Result<(), ApiError> {
    if r.records().entry(node).is_some() {
        return Err(ApiError::bad_request(format!(
            "node {node:?} is run by a murmur agent, which owns its record: register its \
             services through that agent's /v1/agent/service/register"
        )));
    }
    Ok(())
}

fn node_name(object: &Map<String, Value>) -> Result<String, ApiError> {
    let node = string(object, "Node").map_err(ApiError::bad_request)?;
    if node.is_empty() {
        return Err(ApiError::bad_request("Must provide node"));
    }
    if node.len() > MAX_NODE_NAME || node.contains(['/', '\n']) {
        return Err(ApiError::bad_request(format!(
            "node name {node:?} must be at most {MAX_NODE_NAME} bytes without '/' or a newline"
        )));
    }
    Ok(node)
}

fn parse_registration(
    object: &Map<String, Value>,
    local_dc: &str,
) -> Result<Registration, ApiError> {
    let bad = ApiError::bad_request;
    let node = node_name(object)?;
    let address = string(object, "Address").map_err(bad)?;
    if address.is_empty() {
        return Err(ApiError::bad_request("Must provide address"));
    }
    let datacenter = Some(string(object, "Datacenter").map_err(bad)?)
        .filter(|dc| !dc.is_empty())
        .unwrap_or_else(|| local_dc.to_owned());
    let skip_node_update = match field(object, "SkipNodeUpdate") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(format!(
                "SkipNodeUpdate must be true or false, not {other}"
            )));
        }
    };
    let service = match field(object, "Service") {
        None => None,
        Some(Value::Object(service)) => Some(parse_service(service)?),
        Some(other) => return Err(bad(format!("Service must be an object, not {other}"))),
    };
    let mut check_values: Vec<&Value> = field(object, "Check").into_iter().collect();
    match field(object, "Checks") {
        None => {}
        Some(Value::Array(many)) => check_values.extend(many),
        Some(other) => return Err(bad(format!("Checks must be a list, not {other}"))),
    }
    let checks = check_values
        .into_iter()
        .map(|c| parse_check(c, &node))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Registration {
        fields: ExternalNode {
            address,
            datacenter,
            meta: string_map(object, "NodeMeta").map_err(bad)?,
            tagged_addresses: string_map(object, "TaggedAddresses").map_err(bad)?,
        },
        node,
        skip_node_update,
        service,
        checks,
    })
}

/// The `Service` block: Consul names the service `Service` here (`Name` in agent
/// registrations); either is taken, then the agent registration's rules apply.
fn parse_service(service: &Map<String, Value>) -> Result<Service, ApiError> {
    let mut definition = service.clone();
    if field(service, "Name").is_none()
        && let Some(name) = field(service, "Service")
    {
        definition.insert("Name".into(), name.clone());
    }
    crate::services::parse(&Value::Object(definition))
        .map(|d| d.service)
        .map_err(ApiError::bad_request)
}

/// One `Check` block: a status as reported by whoever registers it (murmur runs no probe for
/// an external node). `CheckID` defaults to `Name`, the status to critical, as in Consul.
fn parse_check(value: &Value, node: &str) -> Result<Check, ApiError> {
    let bad = ApiError::bad_request;
    let object = value
        .as_object()
        .ok_or_else(|| bad(format!("Check must be an object, not {value}")))?;
    let check_node = string(object, "Node").map_err(bad)?;
    if !check_node.is_empty() && check_node != node {
        return Err(bad(format!(
            "check is for node {check_node:?} but the registration is for {node:?}"
        )));
    }
    let name = string(object, "Name").map_err(bad)?;
    let id = Some(string(object, "CheckID").map_err(bad)?)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    if id.is_empty() {
        return Err(ApiError::bad_request(
            "Missing check ID: give CheckID or Name",
        ));
    }
    let status = match string(object, "Status").map_err(bad)?.as_str() {
        "" | "critical" => Health::Critical,
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        "maintenance" => Health::Maintenance,
        other => {
            return Err(bad(format!(
                "Status {other:?} is not a check status: use passing, warning or critical"
            )));
        }
    };
    Ok(Check {
        name: if name.is_empty() {
            id.clone().into()
        } else {
            name.into()
        },
        id: id.into(),
        status,
        output: string(object, "Output").map_err(bad)?,
        service_id: string(object, "ServiceID").map_err(bad)?.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_body_is_a_registration_or_an_error_never_a_panic(object in crate::arbitrary_json::object()) {
            let _ = parse_registration(&object, "dc1");
        }
    }

    fn parse(value: Value) -> Result<Registration, String> {
        let Value::Object(object) = value else {
            panic!("test input must be an object")
        };
        parse_registration(&object, "dc1").map_err(|e| e.to_string())
    }

    #[test]
    fn consuls_documented_example_parses() {
        let r = parse(json!({
            "Datacenter": "dc1",
            "Node": "foobar",
            "Address": "192.168.10.10",
            "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
            "NodeMeta": {"somekey": "somevalue"},
            "Service": {
                "ID": "redis1", "Service": "redis", "Tags": ["primary", "v1"],
                "Address": "127.0.0.1", "Meta": {"redis_version": "4.0"}, "Port": 8000
            },
            "Check": {
                "Node": "foobar", "CheckID": "service:redis1", "Name": "Redis health check",
                "Status": "passing", "ServiceID": "redis1"
            },
            "SkipNodeUpdate": false
        }))
        .unwrap();
        assert_eq!(r.node, "foobar");
        assert_eq!(r.fields.tagged_addresses["wan"], "10.0.10.10");
        let service = r.service.unwrap();
        assert_eq!(
            (service.id.as_str(), service.name.as_str()),
            ("redis1", "redis")
        );
        assert_eq!(service.port, 8000);
        assert_eq!(r.checks[0].status, Health::Passing);
        assert_eq!(r.checks[0].service_id, "redis1");
    }

    #[test]
    fn defaults_follow_consul() {
        let r =
            parse(json!({"node": "n", "address": "10.0.0.1", "checks": [{"name": "up"}]})).unwrap();
        assert_eq!(r.fields.datacenter, "dc1");
        assert_eq!(r.checks[0].id, "up");
        assert_eq!(r.checks[0].status, Health::Critical);
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        for (input, expected) in [
            (json!({"Address": "10.0.0.1"}), "Must provide node"),
            (json!({"Node": "n"}), "Must provide address"),
            (json!({"Node": "a/b", "Address": "x"}), "without '/'"),
            (
                json!({"Node": "n", "Address": "x", "Service": {}}),
                "Missing service name",
            ),
            (
                json!({"Node": "n", "Address": "x", "Service": {"Service": "s", "Port": -1}}),
                "Port must be a whole number",
            ),
            (
                json!({"Node": "n", "Address": "x", "Check": {}}),
                "Missing check ID",
            ),
            (
                json!({"Node": "n", "Address": "x", "Check": {"Name": "c", "Status": "ok"}}),
                "not a check status",
            ),
            (
                json!({"Node": "n", "Address": "x", "Check": {"Name": "c", "Node": "m"}}),
                "is for node \"m\"",
            ),
            (
                json!({"Node": "n", "Address": "x", "Checks": {}}),
                "Checks must be a list",
            ),
        ] {
            let err = parse(input.clone()).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
