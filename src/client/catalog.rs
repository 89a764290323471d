//! `murmur catalog`, `murmur services`, `murmur maint` and `murmur info`: the catalog and the
//! local agent from the command line, as tables or (`--format json`) the agent's JSON.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use super::{Client, print_json, print_table, urlencode};
use crate::cli::{CatalogCommand, Format, HttpTarget, Output, ServicesCommand};
use crate::services::Definition;

/// Runs one `murmur catalog` command.
pub async fn catalog(command: CatalogCommand) -> anyhow::Result<()> {
    match command {
        CatalogCommand::Services {
            tags,
            output,
            target,
        } => {
            let services = Client::new(&target)?.get("/v1/catalog/services").await?;
            if output.format == Format::Json {
                return print_json(&services);
            }
            for (name, list) in services.as_object().into_iter().flatten() {
                if tags {
                    let tags: Vec<&str> = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!("{name}  {}", tags.join(","));
                } else {
                    println!("{name}");
                }
            }
        }
        CatalogCommand::Nodes {
            service,
            output,
            target,
        } => {
            let client = Client::new(&target)?;
            let mut nodes = client.get("/v1/catalog/nodes").await?;
            if let Some(service) = service {
                let instances = client
                    .get(&format!("/v1/catalog/service/{}", urlencode(&service)))
                    .await?;
                let with: BTreeSet<&str> = instances
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["Node"].as_str())
                    .collect();
                let kept: Vec<Value> = nodes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["Node"].as_str().is_some_and(|name| with.contains(name)))
                    .cloned()
                    .collect();
                nodes = Value::Array(kept);
            }
            if output.format == Format::Json {
                return print_json(&nodes);
            }
            let mut rows = vec![vec![
                "Node".into(),
                "ID".into(),
                "Address".into(),
                "DC".into(),
            ]];
            for n in nodes.as_array().into_iter().flatten() {
                let id = n["ID"].as_str().unwrap_or_default();
                rows.push(vec![
                    text(&n["Node"]),
                    id.get(..8).unwrap_or(id).to_owned(),
                    text(&n["Address"]),
                    text(&n["Datacenter"]),
                ]);
            }
            print_table(&rows);
        }
        CatalogCommand::Service {
            name,
            tag,
            output,
            target,
        } => {
            let mut path = format!("/v1/health/service/{}", urlencode(&name));
            if let Some(tag) = tag {
                path.push_str(&format!("?tag={}", urlencode(&tag)));
            }
            let entries = Client::new(&target)?.get(&path).await?;
            if output.format == Format::Json {
                return print_json(&entries);
            }
            let mut rows = vec![vec![
                "Node".into(),
                "ID".into(),
                "Address".into(),
                "Port".into(),
                "Tags".into(),
                "Health".into(),
            ]];
            for e in entries.as_array().into_iter().flatten() {
                let service = &e["Service"];
                let address = Some(text(&service["Address"]))
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| text(&e["Node"]["Address"]));
                let tags: Vec<&str> = service["Tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                rows.push(vec![
                    text(&e["Node"]["Node"]),
                    text(&service["ID"]),
                    address,
                    service["Port"].to_string(),
                    tags.join(","),
                    worst(&e["Checks"]).to_owned(),
                ]);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

/// Runs one `murmur services` command.
pub async fn services(command: ServicesCommand) -> anyhow::Result<()> {
    match command {
        ServicesCommand::Register {
            file,
            name,
            id,
            port,
            address,
            tag,
            target,
        } => {
            let definitions: Vec<Value> = match file {
                Some(path) => definitions_in(&path)?
                    .into_iter()
                    .map(|(json, _)| json)
                    .collect(),
                None => vec![json!({
                    "Name": name,
                    "ID": id,
                    "Port": port.unwrap_or(0),
                    "Address": address.unwrap_or_default(),
                    "Tags": tag,
                })],
            };
            let client = Client::new(&target)?;
            for definition in definitions {
                let answer = client
                    .put(
                        "/v1/agent/service/register",
                        definition.to_string().into_bytes(),
                    )
                    .await?;
                let shown = definition["ID"]
                    .as_str()
                    .or(definition["Name"].as_str())
                    .unwrap_or("?");
                println!("Registered service: {shown}");
                if let Some(why) = answer.headers().get(crate::http::WARNING_HEADER) {
                    eprintln!("warning: {}", why.to_str().unwrap_or("(unreadable)"));
                }
            }
        }
        ServicesCommand::Deregister { id_or_file, target } => {
            let path = Path::new(&id_or_file);
            let ids: Vec<String> = if path.is_file() {
                definitions_in(path)?
                    .into_iter()
                    .map(|(_, parsed)| parsed.service.id.into())
                    .collect()
            } else {
                vec![id_or_file]
            };
            let client = Client::new(&target)?;
            for id in ids {
                client
                    .put(
                        &format!("/v1/agent/service/deregister/{}", urlencode(&id)),
                        Vec::new(),
                    )
                    .await?;
                println!("Deregistered service: {id}");
            }
        }
    }
    Ok(())
}

/// `murmur maint`.
pub async fn maint(
    enable: bool,
    disable: bool,
    reason: Option<String>,
    service: Option<String>,
    target: &HttpTarget,
) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    if !enable && !disable {
        let checks = client.get("/v1/agent/checks").await?;
        let mut any = false;
        for (id, c) in checks.as_object().into_iter().flatten() {
            if id == "_node_maintenance" || id.starts_with("_service_maintenance:") {
                any = true;
                let what = id
                    .strip_prefix("_service_maintenance:")
                    .map_or("the node".to_owned(), |s| format!("service {s}"));
                println!("{what}: {}", text(&c["Output"]));
            }
        }
        if !any {
            println!("Nothing is in maintenance.");
        }
        return Ok(());
    }
    let mut query = format!("?enable={enable}");
    if let Some(reason) = reason {
        query.push_str(&format!("&reason={}", urlencode(&reason)));
    }
    let (path, what) = match &service {
        Some(id) => (
            format!("/v1/agent/service/maintenance/{}{query}", urlencode(id)),
            format!("service {id}"),
        ),
        None => (format!("/v1/agent/maintenance{query}"), "node".to_owned()),
    };
    client.put(&path, Vec::new()).await?;
    let state = if enable { "enabled" } else { "disabled" };
    println!("Maintenance mode {state} for the {what}.");
    Ok(())
}

/// `murmur info`.
pub async fn info(output: &Output, target: &HttpTarget) -> anyhow::Result<()> {
    let me = Client::new(target)?.get("/v1/agent/self").await?;
    if output.format == Format::Json {
        return print_json(&me);
    }
    let config = &me["Config"];
    println!("node:");
    for (k, v) in [
        ("node", &config["NodeName"]),
        ("node_id", &config["NodeID"]),
        ("datacenter", &config["Datacenter"]),
        ("version", &config["Version"]),
    ] {
        println!("\t{k} = {}", text(v));
    }
    for (section, values) in me["Stats"].as_object().into_iter().flatten() {
        println!("{section}:");
        for (k, v) in values.as_object().into_iter().flatten() {
            println!("\t{k} = {}", text(v));
        }
    }
    Ok(())
}

/// A JSON value as plain text (strings without quotes).
fn text(v: &Value) -> String {
    v.as_str().map_or_else(
        || {
            if v.is_null() {
                String::new()
            } else {
                v.to_string()
            }
        },
        str::to_owned,
    )
}

/// The worst status among `checks` (Consul's order).
fn worst(checks: &Value) -> &'static str {
    let rank = |s: &str| match s {
        "passing" => 0,
        "warning" => 1,
        "critical" => 2,
        _ => 3,
    };
    let statuses = checks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["Status"].as_str());
    match statuses.map(rank).max().unwrap_or(0) {
        0 => "passing",
        1 => "warning",
        2 => "critical",
        _ => "maintenance",
    }
}

/// The service definitions of a file in `--config-dir`'s format: each as the JSON to send to
/// the agent (checks included) and as parsed (which checks it).
fn definitions_in(path: &Path) -> anyhow::Result<Vec<(Value, Definition)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let named = |why: String| anyhow::anyhow!("{}: {why}", path.display());
    crate::services::definition_values(&value)
        .map_err(named)?
        .into_iter()
        .map(|v| Ok((v.clone(), crate::services::parse(v).map_err(named)?)))
        .collect()
}
