//! `murmur watch`: a blocking-query loop, as `consul watch` runs it. Each answer whose
//! `X-Consul-Index` differs from the last is a change: its JSON goes to stdout, or to the
//! handler's stdin (the handler runs with `sh -c`, one at a time, in order). An index that
//! goes backwards (an agent that restarted, or another agent behind this one) starts over from
//! 0, as Consul's clients do; errors are reported and retried with backoff.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::{Client, urlencode, urlencode_path};
use crate::cli::{WatchKind, WatchSpec};

/// How long each blocking query may wait (Consul's default).
const WAIT: &str = "5m";
/// Longest pause between retries after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl WatchSpec {
    /// The endpoint and query that answer this watch.
    fn path(&self) -> String {
        let service = self.service.as_deref().map(urlencode).unwrap_or_default();
        match self.kind {
            WatchKind::Key => format!(
                "/v1/kv/{}?",
                urlencode_path(self.key.as_deref().unwrap_or_default())
            ),
            WatchKind::Keyprefix => format!(
                "/v1/kv/{}?recurse&",
                urlencode_path(self.prefix.as_deref().unwrap_or_default())
            ),
            WatchKind::Service => {
                let mut path = format!("/v1/health/service/{service}?");
                if let Some(tag) = &self.tag {
                    path.push_str(&format!("tag={}&", urlencode(tag)));
                }
                if self.passingonly {
                    path.push_str("passing&");
                }
                path
            }
            WatchKind::Services => "/v1/catalog/services?".into(),
            WatchKind::Nodes => "/v1/catalog/nodes?".into(),
            WatchKind::Checks if self.service.is_some() => format!("/v1/health/checks/{service}?"),
            WatchKind::Checks => "/v1/health/state/any?".into(),
            WatchKind::Event => match &self.name {
                Some(name) => format!("/v1/event/list?name={}&", urlencode(name)),
                None => "/v1/event/list?".into(),
            },
        }
    }
}

/// Runs the watch until the process is stopped.
pub async fn run(client: &Client, spec: &WatchSpec, handler: Option<&str>) -> anyhow::Result<()> {
    follow(client, &spec.path(), |value| deliver(value, handler)).await
}

/// Follows `path` (ending in `?` or `&`) with blocking queries until `on_change` fails or the
/// agent answers something that is no blocking query: `on_change` gets the first answer and
/// then every changed one. An unreachable agent or an error answer is retried with backoff.
pub async fn follow(
    client: &Client,
    path: &str,
    mut on_change: impl FnMut(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut index = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        let url = client.url(&format!("{path}index={index}&wait={WAIT}"));
        let answer = async {
            let response = client.http.get(&url).send().await?;
            let status = response.status();
            let next = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = response.text().await?;
            anyhow::Ok((status, next, body))
        }
        .await;
        let (status, next, body) = match answer {
            Ok(got) => got,
            Err(err) => {
                tracing::warn!(
                    "watch: cannot reach the agent at {}: {err:#}; retrying in {backoff:?}",
                    client.base
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // A missing key is a 404 that still carries the index: the watched value is null.
        let value: Value = if status == reqwest::StatusCode::NOT_FOUND {
            Value::Null
        } else if status.is_success() {
            serde_json::from_str(&body).context("the agent's answer is not JSON")?
        } else {
            tracing::warn!(
                "watch: the agent answered {status}: {}; retrying in {backoff:?}",
                body.trim()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = Duration::from_millis(250);
        let Some(next) = next else {
            anyhow::bail!(
                "the agent's answer has no X-Consul-Index: is {} a murmur or Consul agent?",
                client.base
            );
        };
        if next == index {
            continue; // the wait ended with nothing new
        }
        index = if next < index { 0 } else { next };
        on_change(&value)?;
    }
}

/// Prints the JSON, or feeds it to the handler and waits for it.
fn deliver(value: &Value, handler: Option<&str>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    let Some(handler) = handler else {
        println!("{json}");
        return Ok(());
    };
    let mut child = Command::new("sh")
        .args(["-c", handler])
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the handler {handler:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its input is fine.
        let _ = stdin.write_all(json.as_bytes());
    }
    let status = child
        .wait()
        .context("the handler could not be waited for")?;
    if !status.success() {
        eprintln!("watch: the handler {handler:?} exited with {status}");
    }
    Ok(())
}
