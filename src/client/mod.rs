//! The client commands: each is one or a few HTTP calls to the local agent, printed for humans.

mod acl;
mod catalog;
mod connect;
pub(crate) mod gateway;
mod kv;
mod rtt;
pub mod sidecar;
mod watch;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::TryRng;
use serde_json::{Value, json};

use crate::cli::{Command, HttpTarget};

/// An HTTP client for one agent.
#[derive(Clone)]
struct Client {
    base: String,
    /// `--datacenter`: asked of every request, as Consul's CLI does with `-datacenter`.
    datacenter: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(target: &HttpTarget) -> anyhow::Result<Self> {
        let api = target
            .settings()?
            .connect()
            .context("cannot set up the connection to the murmur agent")?;
        Ok(Self {
            base: api.base,
            datacenter: target.datacenter().map(str::to_owned),
            http: api.http,
        })
    }

    /// The URL of `path` (with its query, if any) on the agent, for `--datacenter` if given.
    fn url(&self, path: &str) -> String {
        match &self.datacenter {
            None => format!("{}{path}", self.base),
            Some(dc) => {
                let join = if path.contains('?') { '&' } else { '?' };
                format!("{}{path}{join}dc={}", self.base, urlencode(dc))
            }
        }
    }

    /// Sends a request; only an unreachable agent is an error here.
    async fn fetch(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request.send().await.with_context(|| {
            format!("cannot reach the murmur agent at {}: is it running? (set --http-addr or MURMUR_HTTP_ADDR)", self.base)
        })
    }

    /// Sends a request; an answer other than success is an error carrying the agent's words.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        success(self.fetch(request).await?).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        json_of(self.send(self.http.get(self.url(path))).await?).await
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        self.send(self.http.put(self.url(path)).body(body)).await
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        self.send(self.http.post(self.url(path)).body(body)).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        json_of(self.send(self.http.delete(self.url(path))).await?).await
    }

    /// A GET whose 404 means "nothing there" (KV) rather than an error.
    async fn get_or_404(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let response = self.fetch(self.http.get(self.url(path))).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(json_of(success(response).await?).await?))
    }
}

/// The JSON body of an answer.
pub(super) async fn json_of(response: reqwest::Response) -> anyhow::Result<Value> {
    response
        .json()
        .await
        .context("the agent's answer is not JSON")
}

/// The response if it is a success, else an error with the agent's words.
async fn success(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        bail!("the agent answered {status}: {}", text.trim());
    }
    Ok(response)
}

/// Prints the agent's JSON for scripts (`--format json`).
fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Reads `-` (stdin) or `@FILE` / `FILE`.
fn read_input(source: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    if source == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        return Ok(buf);
    }
    let path = source.strip_prefix('@').unwrap_or(source);
    std::fs::read(path).with_context(|| format!("cannot read {path}"))
}

/// Percent-encodes a KV key for a URL path, keeping its `/`s.
fn urlencode_path(key: &str) -> String {
    key.split('/').map(urlencode).collect::<Vec<_>>().join("/")
}

/// Runs a client command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent(_) | Command::Sim(_) => {
            unreachable!("the agent and the simulator are not client commands")
        }
        Command::Keygen => {
            let mut key = [0u8; 32];
            rand::rngs::SysRng
                .try_fill_bytes(&mut key)
                .context("the OS random source failed")?;
            println!("{}", BASE64.encode(key));
        }
        Command::Members {
            status,
            detailed,
            wan,
            target,
        } => members(&Client::new(&target)?, status.as_deref(), detailed, wan).await?,
        Command::Join { addrs, wan, target } => {
            let client = Client::new(&target)?;
            let mut joined = 0;
            let pool = if wan { "?wan" } else { "" };
            for addr in &addrs {
                match client
                    .put(&format!("/v1/agent/join/{addr}{pool}"), Vec::new())
                    .await
                {
                    Ok(_) => joined += 1,
                    Err(err) => eprintln!("Error joining {addr}: {err:#}"),
                }
            }
            if joined == 0 {
                bail!("could not join through any of {}", addrs.join(", "));
            }
            println!("Successfully joined cluster by contacting {joined} nodes.");
        }
        Command::Leave { target } => {
            Client::new(&target)?
                .put("/v1/agent/leave", Vec::new())
                .await?;
            println!("Graceful leave complete");
        }
        Command::Event {
            name,
            payload,
            node,
            service,
            tag,
            target,
        } => {
            let filters: Vec<String> = [("node", node), ("service", service), ("tag", tag)]
                .into_iter()
                .filter_map(|(key, re)| Some(format!("{key}={}", urlencode(&re?))))
                .collect();
            let mut path = format!("/v1/event/fire/{name}");
            if !filters.is_empty() {
                path.push_str(&format!("?{}", filters.join("&")));
            }
            let response = Client::new(&target)?
                .put(&path, payload.unwrap_or_default().into_bytes())
                .await?;
            let event = json_of(response).await?;
            println!("Event ID: {}", event["ID"].as_str().unwrap_or("?"));
        }
        Command::Kv(command) => kv::run(command).await?,
        Command::Catalog(command) => catalog::catalog(command).await?,
        Command::Services(command) => catalog::services(command).await?,
        Command::Intention(command) => connect::intention(command).await?,
        Command::Ca(command) => connect::ca(command).await?,
        Command::Acl(command) => acl::run(command).await?,
        Command::Connect(crate::cli::ConnectCommand::Proxy(args)) => sidecar::run(args).await?,
        Command::Connect(crate::cli::ConnectCommand::Gateway(args)) => gateway::run(args).await?,
        Command::Maint {
            enable,
            disable,
            reason,
            service,
            target,
        } => catalog::maint(enable, disable, reason, service, &target).await?,
        Command::Info { output, target } => catalog::info(&output, &target).await?,
        Command::Rtt {
            node,
            other,
            wan,
            target,
        } => rtt::run(&Client::new(&target)?, &node, other.as_deref(), wan).await?,
        Command::Watch {
            spec,
            handler,
            target,
        } => watch::run(&Client::new(&target)?, &spec, handler.as_deref()).await?,
        Command::Keyring {
            list,
            install,
            use_key,
            remove,
            target,
        } => {
            let client = Client::new(&target)?;
            let url = client.url("/v1/operator/keyring");
            let body = |key: String| json!({ "Key": key }).to_string();
            if list {
                return keyring_list(&client.get("/v1/operator/keyring").await?);
            }
            let (verb, request) = match (install, use_key, remove) {
                (Some(k), _, _) => ("Installed", client.http.post(&url).body(body(k))),
                (_, Some(k), _) => (
                    "Changed the primary key to",
                    client.http.put(&url).body(body(k)),
                ),
                (_, _, Some(k)) => ("Removed", client.http.delete(&url).body(body(k))),
                _ => bail!("give one of --list, --install, --use, --remove"),
            };
            client.send(request).await?;
            println!("{verb} the key on every member.");
        }
    }
    Ok(())
}

async fn members(
    client: &Client,
    status: Option<&str>,
    detailed: bool,
    wan: bool,
) -> anyhow::Result<()> {
    let filter = status
        .map(regex::Regex::new)
        .transpose()
        .context("--status is not a valid regular expression")?;
    let path = if wan {
        "/v1/agent/members?wan"
    } else {
        "/v1/agent/members"
    };
    let members = client.get(path).await?;
    let mut rows = vec![vec![
        "Node".to_owned(),
        "Address".into(),
        "Status".into(),
        "DC".into(),
        if detailed {
            "Tags".into()
        } else {
            "Build".into()
        },
    ]];
    for m in members.as_array().into_iter().flatten() {
        let status = status_name(m["Status"].as_u64().unwrap_or(0));
        if filter.as_ref().is_some_and(|re| !re.is_match(status)) {
            continue;
        }
        let tags = m["Tags"].as_object().cloned().unwrap_or_default();
        let tag = |k: &str| tags.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let last = if detailed {
            tags.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            tag("build")
        };
        rows.push(vec![
            m["Name"].as_str().unwrap_or("").to_owned(),
            format!("{}:{}", m["Addr"].as_str().unwrap_or(""), m["Port"]),
            status.to_owned(),
            tag("dc"),
            last,
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn status_name(code: u64) -> &'static str {
    match code {
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "unknown",
    }
}

fn keyring_list(answer: &Value) -> anyhow::Result<()> {
    for pool in answer.as_array().into_iter().flatten() {
        let nodes = pool["NumNodes"].as_u64().unwrap_or(0);
        println!(
            "==> {} ({} members):",
            pool["Datacenter"].as_str().unwrap_or("?"),
            nodes
        );
        let primary = pool["PrimaryKeys"].as_object().cloned().unwrap_or_default();
        for (key, count) in pool["Keys"].as_object().into_iter().flatten() {
            let mark = if primary.contains_key(key) {
                " [primary]"
            } else {
                ""
            };
            println!("  {key}  [{count}/{nodes}]{mark}");
        }
        for message in pool["Messages"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, m)| m)
        {
            println!("  error: {}", message.as_str().unwrap_or(""));
        }
    }
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
