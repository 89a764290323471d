//! Consul's service definitions: the JSON body of `PUT /v1/agent/service/register` and the
//! `{"service": {...}}` / `{"services": [...]}` files of `--config-dir`.
//!
//! Keys are matched without regard to letter case, as Go's JSON decoding does, so `"Name"`,
//! `"name"` and `"NAME"` all work, nor to underscores, so the config files' snake case
//! (`"sidecar_service"`) reads like the API's (`"SidecarService"`). Unknown keys are ignored, as Consul ignores them; a known key
//! with a value of the wrong type is an error that names the key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use murmur_catalog::Service;
use murmur_proxy::gateway::GatewayMode;

use crate::checks::CheckDefinition;
use serde_json::Value;

/// A parsed service definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The instance.
    pub service: Service,
    /// Its `Check` and `Checks` blocks, parsed by [`Definition::check_definitions`] once the
    /// agent's settings (script checks allowed or not) are known.
    pub checks: Vec<Value>,
    /// `Connect.SidecarService`: the agent runs a sidecar proxy for it, with these upstreams.
    pub sidecar: Option<Vec<Upstream>>,
}

/// An upstream of a sidecar (`DestinationName`, `Datacenter`, `LocalBindPort`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upstream {
    /// The service it reaches.
    pub destination: String,
    /// Its datacenter, when not the local one.
    pub datacenter: Option<String>,
    /// The loopback port the app dials.
    pub port: u16,
    /// How it is reached when in another datacenter (`MeshGateway.Mode`).
    #[serde(default)]
    pub mesh_gateway: GatewayMode,
    /// Datacenters that serve it, in order, when its own has no passing instance
    /// (`Failover.Datacenters`, as Consul's service-resolver names them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
}

impl Upstream {
    /// The `--upstream` flag of `murmur connect proxy` that serves it.
    pub fn flag(&self) -> String {
        let mut dcs = self.datacenter.clone().unwrap_or_default();
        for dc in &self.failover {
            dcs.push(',');
            dcs.push_str(dc);
        }
        let mode = match self.mesh_gateway {
            GatewayMode::None => String::new(),
            mode => format!("/{}", mode.as_str()),
        };
        if dcs.is_empty() {
            format!("{}:{}", self.destination, self.port)
        } else {
            format!("{}@{dcs}{mode}:{}", self.destination, self.port)
        }
    }
}

/// `Connect.SidecarService.Proxy.Upstreams`, as Consul's service definitions write them.
fn sidecar(object: &serde_json::Map<String, Value>) -> Result<Option<Vec<Upstream>>, String> {
    let Some(connect) = field(object, "Connect") else {
        return Ok(None);
    };
    let connect = connect.as_object().ok_or("Connect must be an object")?;
    let Some(sidecar) = field(connect, "SidecarService") else {
        return Ok(None);
    };
    let sidecar = sidecar
        .as_object()
        .ok_or("Connect.SidecarService must be an object")?;
    let proxy = match field(sidecar, "Proxy") {
        None => return Ok(Some(Vec::new())),
        Some(Value::Object(proxy)) => proxy,
        Some(_) => return Err("Connect.SidecarService.Proxy must be an object".into()),
    };
    let upstreams = match field(proxy, "Upstreams") {
        None => return Ok(Some(Vec::new())),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("Proxy.Upstreams must be a list".into()),
    };
    upstreams
        .iter()
        .map(|u| {
            let u = u.as_object().ok_or("each upstream must be an object")?;
            let destination = string(u, "DestinationName")?;
            if destination.is_empty() {
                return Err("an upstream needs DestinationName".to_owned());
            }
            let port = integer(u, "LocalBindPort", u64::from(u16::MAX))? as u16;
            if port == 0 {
                return Err(format!("upstream {destination:?} needs LocalBindPort"));
            }
            let datacenter = string(u, "Datacenter")?;
            if datacenter.contains(['@', ':', '/', ',']) {
                return Err(format!(
                    "upstream {destination:?}: Datacenter {datacenter:?} is not a datacenter name"
                ));
            }
            let mode = match field(u, "MeshGateway") {
                None => String::new(),
                Some(Value::Object(gateway)) => string(gateway, "Mode")?,
                Some(_) => return Err("MeshGateway must be an object {\"Mode\": …}".into()),
            };
            let mesh_gateway = GatewayMode::parse(&mode).ok_or_else(|| {
                format!("upstream {destination:?}: MeshGateway.Mode {mode:?} must be none, local or remote")
            })?;
            let failover = match field(u, "Failover") {
                None => Vec::new(),
                Some(Value::Object(failover)) => strings::<String>(failover, "Datacenters")?,
                Some(_) => {
                    return Err("Failover must be an object {\"Datacenters\": [...]}".into());
                }
            };
            if failover.iter().any(|dc| dc.is_empty() || dc.contains(['@', ':', '/', ','])) {
                return Err(format!(
                    "upstream {destination:?}: Failover.Datacenters {failover:?} holds a name that is not a datacenter's"
                ));
            }
            if mesh_gateway != GatewayMode::None && datacenter.is_empty() && failover.is_empty() {
                return Err(format!(
                    "upstream {destination:?}: MeshGateway.Mode {mode:?} is for an upstream in another datacenter: give its Datacenter"
                ));
            }
            Ok(Upstream {
                destination,
                datacenter: (!datacenter.is_empty()).then_some(datacenter),
                port,
                mesh_gateway,
                failover,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

impl Definition {
    /// The health checks of this service, with Consul's default ids (`service:ID`, and
    /// `service:ID:N` when there are several).
    pub fn check_definitions(&self, script_checks: bool) -> Result<Vec<CheckDefinition>, String> {
        let service = Some((self.service.id.as_str(), self.service.name.as_str()));
        let several = self.checks.len() > 1;
        self.checks
            .iter()
            .enumerate()
            .map(|(i, check)| {
                crate::checks::definition::parse(
                    check,
                    service,
                    several.then_some(i + 1),
                    script_checks,
                )
                .map_err(|why| format!("service {:?}: {why}", self.service.id))
            })
            .collect()
    }
}

/// Looks a key up in a JSON object regardless of case and of underscores, as Consul reads its
/// API's `SidecarService` and its config files' `sidecar_service` alike.
pub(crate) fn field<'a>(
    object: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| letters(k).eq(letters(name)))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// A key's letters, lower case, without underscores.
fn letters(text: &str) -> impl Iterator<Item = u8> + '_ {
    text.bytes()
        .filter(|&b| b != b'_')
        .map(|b| b.to_ascii_lowercase())
}

pub(crate) fn string(
    object: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<String, String> {
    match field(object, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{name} must be a string, not {other}")),
    }
}

fn strings<T: for<'a> From<&'a str>>(
    object: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Vec<T>, String> {
    match field(object, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(T::from)
                    .ok_or_else(|| format!("{name} must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{name} must be a list of strings")),
    }
}

pub(crate) fn string_map(
    object: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<BTreeMap<String, String>, String> {
    match field(object, name) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_owned()))
                    .ok_or_else(|| format!("{name}.{k} must be a string"))
            })
            .collect(),
        Some(_) => Err(format!("{name} must be an object of strings")),
    }
}

fn integer(object: &serde_json::Map<String, Value>, name: &str, max: u64) -> Result<u64, String> {
    match field(object, name) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("{name} must be a whole number from 0 to {max}, not {v}")),
    }
}

/// The meta key that keeps a registration's `Kind` (`mesh-gateway`, …): the replicated
/// service record has no field of its own for it.
pub const KIND_META: &str = "murmur-kind";
/// The prefix of the meta keys that keep a registration's `TaggedAddresses` (`lan`, `wan`),
/// each as `address:port`.
pub const TAGGED_META_PREFIX: &str = "murmur-tagged-";

/// The kinds of service Consul registers beside typical ones, that murmur knows.
const KINDS: &[&str] = &["connect-proxy", "mesh-gateway", "terminating-gateway"];

/// A service's `Kind` ("" for a typical service).
pub fn kind(service: &Service) -> &str {
    service.meta.get(KIND_META).map_or("", String::as_str)
}

/// A service's tagged addresses, by name: (address, port).
pub fn tagged_addresses(service: &Service) -> BTreeMap<String, (String, u16)> {
    service
        .meta
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(TAGGED_META_PREFIX)?;
            let (address, port) = value.rsplit_once(':')?;
            Some((name.to_owned(), (address.to_owned(), port.parse().ok()?)))
        })
        .collect()
}

/// Meta key a gateway process (`murmur connect gateway`) sets on its own registration: it
/// serves the gateway itself, so the agent must not start one on the same ports.
pub const SELF_RUN_META: &str = "murmur-gateway-process";

/// For a `Kind: "mesh-gateway"` service, where the agent runs its gateway: its address and
/// port (the agent's address when it gives none), and its `wan` tagged address (the same when
/// it gives none); `None` for other kinds and for a gateway process's own registration
/// ([`SELF_RUN_META`]). A gateway needs a port to listen on.
pub fn mesh_gateway_addresses(
    service: &Service,
    agent_ip: std::net::IpAddr,
) -> Result<Option<(std::net::SocketAddr, std::net::SocketAddr)>, String> {
    if kind(service) != "mesh-gateway" || service.meta.contains_key(SELF_RUN_META) {
        return Ok(None);
    }
    if service.port == 0 {
        return Err(
            "a mesh-gateway registration needs the Port the agent's gateway listens on".into(),
        );
    }
    let ip = |text: &str| -> Result<std::net::IpAddr, String> {
        if text.is_empty() {
            return Ok(agent_ip);
        }
        text.parse().map_err(|_| {
            format!("a mesh-gateway registration needs IP addresses (the agent listens on them), not {text:?}")
        })
    };
    let lan = std::net::SocketAddr::new(ip(&service.address)?, service.port);
    let wan = match tagged_addresses(service).get("wan") {
        Some((address, port)) => std::net::SocketAddr::new(ip(address)?, *port),
        None => lan,
    };
    Ok(Some((lan, wan)))
}

/// `Kind` and `TaggedAddresses` of a definition, as the meta keys that keep them.
fn kind_and_tagged_meta(
    object: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, String>, String> {
    let mut meta = BTreeMap::new();
    let kind = string(object, "Kind")?;
    if !kind.is_empty() {
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!(
                "Kind {kind:?} is not one murmur knows: use {}, or none for a typical service",
                KINDS.join(", ")
            ));
        }
        meta.insert(KIND_META.to_owned(), kind);
    }
    match field(object, "TaggedAddresses") {
        None => {}
        Some(Value::Object(tagged)) => {
            for (name, value) in tagged {
                let entry = value.as_object().ok_or_else(|| {
                    format!("TaggedAddresses.{name} must be {{\"Address\", \"Port\"}}")
                })?;
                let address = string(entry, "Address")?;
                let port = integer(entry, "Port", u64::from(u16::MAX))?;
                meta.insert(
                    format!("{TAGGED_META_PREFIX}{name}"),
                    format!("{address}:{port}"),
                );
            }
        }
        Some(_) => return Err("TaggedAddresses must be an object".into()),
    }
    Ok(meta)
}

/// Parses one service definition.
pub fn parse(value: &Value) -> Result<Definition, String> {
    let object = value
        .as_object()
        .ok_or("a service definition must be a JSON object")?;
    let name = string(object, "Name")?;
    if name.is_empty() {
        return Err("Missing service name".into());
    }
    if name.contains('/') || name.contains('\n') {
        return Err(format!(
            "service name {name:?} must not contain '/' or a newline"
        ));
    }
    let id = Some(string(object, "ID")?)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let port = integer(object, "Port", u64::from(u16::MAX))? as u16;
    let (weight_passing, weight_warning) = match field(object, "Weights") {
        None => (1, 1),
        Some(Value::Object(weights)) => (
            integer(weights, "Passing", u64::from(u32::MAX))?.max(1) as u32,
            integer(weights, "Warning", u64::from(u32::MAX))? as u32,
        ),
        Some(_) => return Err("Weights must be an object".into()),
    };
    let mut checks: Vec<Value> = field(object, "Check").cloned().into_iter().collect();
    match field(object, "Checks") {
        None => {}
        Some(Value::Array(many)) => checks.extend(many.iter().cloned()),
        Some(_) => return Err("Checks must be a list of check definitions".into()),
    }
    Ok(Definition {
        service: Service {
            id: id.into(),
            name: name.into(),
            tags: strings(object, "Tags")?,
            address: string(object, "Address")?.into(),
            port,
            meta: {
                let mut meta = string_map(object, "Meta")?;
                meta.extend(kind_and_tagged_meta(object)?);
                meta
            },
            weight_passing,
            weight_warning,
        },
        checks,
        sidecar: sidecar(object)?,
    })
}

/// The definitions of a file, unparsed: `{"service": {...}}` or `{"services": [...]}` (the
/// CLI sends them to the agent as they are, checks included).
pub fn definition_values(value: &Value) -> Result<Vec<&Value>, String> {
    let object = value
        .as_object()
        .ok_or("the file must hold a JSON object with \"service\" or \"services\"")?;
    match (field(object, "service"), field(object, "services")) {
        (Some(one), None) => Ok(vec![one]),
        (None, Some(Value::Array(many))) => Ok(many.iter().collect()),
        (None, Some(_)) => Err("\"services\" must be a list of service definitions".into()),
        (Some(_), Some(_)) => Err("use either \"service\" or \"services\", not both".into()),
        (None, None) => Err("no \"service\" or \"services\" key".into()),
    }
}

/// Parses a definitions file: `{"service": {...}}` or `{"services": [...]}`.
pub fn parse_file(value: &Value) -> Result<Vec<Definition>, String> {
    definition_values(value)?.into_iter().map(parse).collect()
}

/// Reads every `*.json` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Definition>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --config-dir {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut all = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let definitions =
            parse_file(&value).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
        all.extend(definitions);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kind_and_tagged_addresses_are_kept_and_read_back() {
        let gateway = parse(&json!({
            "Name": "mesh-gateway", "Kind": "mesh-gateway", "Port": 8443,
            "TaggedAddresses": {
                "lan": {"Address": "10.0.0.1", "Port": 8443},
                "wan": {"Address": "198.51.100.1", "Port": 443},
            },
        }))
        .unwrap()
        .service;
        assert_eq!(kind(&gateway), "mesh-gateway");
        let tagged = tagged_addresses(&gateway);
        assert_eq!(tagged["wan"], ("198.51.100.1".to_owned(), 443));
        assert_eq!(tagged["lan"], ("10.0.0.1".to_owned(), 8443));
        assert_eq!(kind(&parse(&json!({"Name": "web"})).unwrap().service), "");
        let err = parse(&json!({"Name": "x", "Kind": "rocket"})).unwrap_err();
        assert!(err.contains("mesh-gateway"), "{err}");
        let err = parse(&json!({"Name": "x", "TaggedAddresses": {"wan": "1.2.3.4"}})).unwrap_err();
        assert!(err.contains("TaggedAddresses.wan"), "{err}");
    }

    #[test]
    fn the_agent_runs_a_registered_gateway_unless_a_gateway_process_registered_itself() {
        let agent_ip = std::net::IpAddr::from([10, 0, 0, 9]);
        let registered = |meta: serde_json::Value| {
            let body = json!({"Name": "mesh-gateway", "Kind": "mesh-gateway", "Port": 8443,
                              "Meta": meta});
            mesh_gateway_addresses(&parse(&body).unwrap().service, agent_ip).unwrap()
        };
        let at = std::net::SocketAddr::new(agent_ip, 8443);
        assert_eq!(registered(json!({})), Some((at, at)));
        assert_eq!(registered(json!({SELF_RUN_META: "true"})), None);
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_a_definition_or_an_error_never_a_panic(value in crate::arbitrary_json::json()) {
            let _ = parse(&value);
            let _ = parse_file(&value);
            if let Ok(definition) = parse(&value) {
                let _ = definition.check_definitions(true);
            }
        }
    }

    #[test]
    fn consul_shape_in_any_letter_case() {
        let def = parse(&json!({
            "name": "web", "ID": "web-1", "TAGS": ["v1"], "Port": 8080,
            "Meta": {"team": "a"}, "Weights": {"Passing": 5, "Warning": 1},
            "Check": {"TTL": "10s"}, "Unknown": true
        }))
        .unwrap();
        assert_eq!(def.service.id, "web-1");
        assert_eq!(def.service.tags, ["v1"]);
        assert_eq!(def.service.port, 8080);
        assert_eq!(def.service.weight_passing, 5);
        assert_eq!(def.service.meta["team"], "a");
        assert_eq!(def.checks.len(), 1);
        let checks = def.check_definitions(false).unwrap();
        assert_eq!(checks[0].id, "service:web-1");
        assert_eq!(parse(&json!({"Name": "db"})).unwrap().service.id, "db");
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (json!({}), "Missing service name"),
            (
                json!({"Name": "web", "Port": -1}),
                "Port must be a whole number",
            ),
            (
                json!({"Name": "web", "Port": "80"}),
                "Port must be a whole number",
            ),
            (json!({"Name": "web", "Port": 70000}), "from 0 to 65535"),
            (json!({"Name": "web", "Tags": "v1"}), "Tags must be a list"),
            (
                json!({"Name": "web", "Meta": {"a": 1}}),
                "Meta.a must be a string",
            ),
            (json!(["web"]), "must be a JSON object"),
        ];
        for (input, expected) in cases {
            let err = parse(&input).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn a_sidecar_service_block_asks_for_a_proxy_with_its_upstreams() {
        let def = parse(&json!({
            "Name": "web", "Port": 8080,
            "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                {"DestinationName": "db", "LocalBindPort": 9191},
                {"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9192},
                {"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9193,
                 "MeshGateway": {"Mode": "local"}}
            ]}}}
        }))
        .unwrap();
        let upstreams = def.sidecar.unwrap();
        assert_eq!(
            upstreams,
            [
                Upstream {
                    destination: "db".into(),
                    datacenter: None,
                    port: 9191,
                    mesh_gateway: GatewayMode::None,
                    failover: vec![],
                },
                Upstream {
                    destination: "db".into(),
                    datacenter: Some("dc2".into()),
                    port: 9192,
                    mesh_gateway: GatewayMode::None,
                    failover: vec![],
                },
                Upstream {
                    destination: "db".into(),
                    datacenter: Some("dc2".into()),
                    port: 9193,
                    mesh_gateway: GatewayMode::Local,
                    failover: vec![],
                }
            ]
        );
        let flags: Vec<String> = upstreams.iter().map(Upstream::flag).collect();
        assert_eq!(flags, ["db:9191", "db@dc2:9192", "db@dc2/local:9193"]);
        let err = parse(&json!({"Name": "x", "Connect": {"SidecarService": {"Proxy":
            {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 1, "MeshGateway": {"Mode": "local"}}]}}}}))
        .unwrap_err();
        assert!(err.contains("give its Datacenter"), "{err}");
        let failover = parse(&json!({"Name": "web", "Connect": {"SidecarService": {"Proxy":
            {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9194,
              "Failover": {"Datacenters": ["west", "south"]}, "MeshGateway": {"Mode": "local"}}]}}}}))
        .unwrap()
        .sidecar
        .unwrap();
        assert_eq!(failover[0].failover, ["west", "south"]);
        assert_eq!(failover[0].flag(), "db@,west,south/local:9194");
        let err = parse(&json!({"Name": "x", "Connect": {"SidecarService": {"Proxy":
            {"Upstreams": [{"DestinationName": "db", "Datacenter": "a:b", "LocalBindPort": 1}]}}}}))
        .unwrap_err();
        assert!(err.contains("not a datacenter name"), "{err}");
        let bare = parse(&json!({"name": "db", "connect": {"sidecar_service": {}}})).unwrap();
        assert_eq!(bare.sidecar, Some(vec![]));
        assert_eq!(parse(&json!({"Name": "x"})).unwrap().sidecar, None);
        let err = parse(&json!({"Name": "x", "Connect": {"SidecarService": {"Proxy":
            {"Upstreams": [{"DestinationName": "db"}]}}}}))
        .unwrap_err();
        assert!(err.contains("LocalBindPort"), "{err}");
    }

    #[test]
    fn files_hold_one_or_many() {
        assert_eq!(
            parse_file(&json!({"service": {"name": "a"}}))
                .unwrap()
                .len(),
            1
        );
        let many = json!({"Services": [{"name": "a"}, {"name": "b"}]});
        assert_eq!(parse_file(&many).unwrap().len(), 2);
        assert!(parse_file(&json!({"nothing": 1})).is_err());
    }
}
