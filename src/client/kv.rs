//! `murmur kv`: the key/value store from the command line, with `consul kv`'s output and its
//! export format (`[{"key", "flags", "value" (base64)}]`).

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::{Client, json_of, print_json, read_input, urlencode_path};
use crate::cli::{Cas, Format, KvCommand};

/// Runs one `murmur kv` command.
pub async fn run(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Get {
            key,
            recurse,
            keys,
            separator,
            detailed,
            output,
            target,
        } => {
            let client = Client::new(&target)?;
            let path = format!("/v1/kv/{}", urlencode_path(&key));
            if keys {
                let mut query = "?keys".to_owned();
                if let Some(sep) = separator {
                    query.push_str(&format!("&separator={}", super::urlencode(&sep)));
                }
                let list = client.get(&format!("{path}{query}")).await?;
                if output.format == Format::Json {
                    return print_json(&list);
                }
                for k in list.as_array().into_iter().flatten() {
                    println!("{}", k.as_str().unwrap_or_default());
                }
                return Ok(());
            }
            let query = if recurse { "?recurse" } else { "" };
            let Some(entries) = client.get_or_404(&format!("{path}{query}")).await? else {
                bail!("no key {key:?} (nothing under it either)");
            };
            if output.format == Format::Json {
                return print_json(&entries);
            }
            for entry in entries.as_array().into_iter().flatten() {
                let value = decode(entry)?;
                let text = String::from_utf8_lossy(&value);
                if detailed {
                    for field in [
                        "CreateIndex",
                        "Flags",
                        "Key",
                        "LockIndex",
                        "ModifyIndex",
                        "Session",
                    ] {
                        let v = &entry[field];
                        let shown = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        println!("{field:<14}{shown}");
                    }
                    println!("{:<14}{text}", "Value");
                } else if recurse {
                    println!("{}:{text}", entry["Key"].as_str().unwrap_or_default());
                } else {
                    println!("{text}");
                }
            }
        }
        KvCommand::Put {
            key,
            value,
            flags,
            cas,
            target,
        } => {
            let body = match value.as_deref() {
                None => Vec::new(),
                Some(v) if v == "-" || v.starts_with('@') => read_input(v)?,
                Some(v) => v.as_bytes().to_vec(),
            };
            let mut query = Vec::new();
            if let Some(f) = flags {
                query.push(format!("flags={f}"));
            }
            query.extend(cas_query(&cas));
            let ok = put(&Client::new(&target)?, &key, body, &query).await?;
            if !ok {
                bail!("did not write {key:?}: {}", cas_refused(&cas));
            }
            println!("Success! Data written to: {key}");
        }
        KvCommand::Delete {
            key,
            recurse,
            cas,
            target,
        } => {
            let mut query = Vec::new();
            if recurse {
                query.push("recurse".to_owned());
            }
            query.extend(cas_query(&cas));
            let path = format!("/v1/kv/{}{}", urlencode_path(&key), join_query(&query));
            let answer = Client::new(&target)?.delete(&path).await?;
            if answer != Value::Bool(true) {
                bail!("did not delete {key:?}: {}", cas_refused(&cas));
            }
            if recurse {
                println!("Success! Deleted keys with prefix: {key}");
            } else {
                println!("Success! Deleted key: {key}");
            }
        }
        KvCommand::Export { prefix, target } => {
            let prefix = prefix.unwrap_or_default();
            let path = format!("/v1/kv/{}?recurse", urlencode_path(&prefix));
            let entries = Client::new(&target)?
                .get_or_404(&path)
                .await?
                .unwrap_or(json!([]));
            let exported: Vec<Value> = entries
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    json!({
                        "key": e["Key"],
                        "flags": e["Flags"],
                        "value": e["Value"].as_str().unwrap_or_default(),
                    })
                })
                .collect();
            print_json(&Value::Array(exported))?;
        }
        KvCommand::Import { data, target } => {
            let text = read_input(data.as_deref().unwrap_or("-"))?;
            let entries: Vec<Value> = serde_json::from_slice(&text)
                .context("the import is not JSON: give the output of `murmur kv export`")?;
            // Everything is checked before anything is written.
            let mut writes = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let key = e["key"]
                    .as_str()
                    .with_context(|| format!("entry {i} has no \"key\" string"))?;
                let value = BASE64
                    .decode(e["value"].as_str().unwrap_or_default())
                    .with_context(|| format!("entry {i} ({key}): \"value\" is not base64"))?;
                let flags = e["flags"].as_u64().unwrap_or(0);
                writes.push((key.to_owned(), value, flags));
            }
            let client = Client::new(&target)?;
            for (key, value, flags) in &writes {
                put(&client, key, value.clone(), &[format!("flags={flags}")]).await?;
                println!("Imported: {key}");
            }
        }
    }
    Ok(())
}

/// The `cas=N` query parameter, when --cas is given.
fn cas_query(cas: &Cas) -> Option<String> {
    cas.cas
        .then(|| format!("cas={}", cas.modify_index.unwrap_or(0)))
}

/// Why the agent said false to a write: only a cas can refuse it.
fn cas_refused(cas: &Cas) -> String {
    format!(
        "its modify index is no longer {}",
        cas.modify_index.unwrap_or(0)
    )
}

fn join_query(parts: &[String]) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

async fn put(client: &Client, key: &str, body: Vec<u8>, query: &[String]) -> anyhow::Result<bool> {
    if key.is_empty() {
        bail!("give a key: the root of the store cannot hold a value");
    }
    let path = format!("/v1/kv/{}{}", urlencode_path(key), join_query(query));
    let answer = json_of(client.put(&path, body).await?).await?;
    Ok(answer == Value::Bool(true))
}

fn decode(entry: &Value) -> anyhow::Result<Vec<u8>> {
    match entry["Value"].as_str() {
        None => Ok(Vec::new()),
        Some(v) => BASE64
            .decode(v)
            .context("the agent sent a value that is not base64"),
    }
}
