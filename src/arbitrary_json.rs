//! A proptest strategy for JSON bodies shaped like the API's (Consul's field names, values of
//! every JSON type, nested): the decoders of request bodies are run on them and must answer
//! with a value or an error, never a panic. The binary crate cannot be a `cargo fuzz` target,
//! so this is its fuzzing; the wire decoders of the library crates are under `fuzz/`.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names the API's decoders look for, and a few they do not.
const FIELDS: &[&str] = &[
    "Name",
    "ID",
    "Tags",
    "Address",
    "Port",
    "Meta",
    "Weights",
    "Passing",
    "Warning",
    "Connect",
    "SidecarService",
    "Proxy",
    "Upstreams",
    "DestinationName",
    "Datacenter",
    "LocalBindPort",
    "Check",
    "Checks",
    "CheckID",
    "TTL",
    "HTTP",
    "TCP",
    "Args",
    "Interval",
    "Timeout",
    "Header",
    "Method",
    "Body",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "DeregisterCriticalServiceAfter",
    "SourceName",
    "DestinationName",
    "Action",
    "Description",
    "SourceType",
    "Node",
    "NodeMeta",
    "TaggedAddresses",
    "Service",
    "SkipNodeUpdate",
    "Failover",
    "NearestN",
    "Datacenters",
    "OnlyPassing",
    "Template",
    "Type",
    "Regexp",
    "name",
    "id",
    "port",
    "checks",
    "check",
    "service",
    "services",
    "sidecar_service",
    "unknown",
];

/// A JSON value of any shape, with the API's field names as object keys.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "10s",
            "-1s",
            "1h2m",
            "web",
            "*",
            "allow",
            "deny",
            "passing",
            "critical",
            "http://x",
            "127.0.0.1:1",
            "",
            "0",
            "true",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|fields| {
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<String, Value>>(),
                )
            }),
        ]
    })
}

/// A JSON object of the API's fields.
pub fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((prop::sample::select(FIELDS), json()), 0..10)
        .prop_map(|fields| fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}
