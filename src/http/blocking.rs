//! Consul's blocking queries: `?index=N&wait=D` holds a read until the watched index passes N
//! or the wait (a Go duration, default 5 m, at most 10 m, plus up to wait/16 of jitter) ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::sync::watch;

use super::ApiError;
use crate::agent::runtime::Agent;
use crate::agent::view::View;
pub use crate::agent::watchers::Topic;

const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Parses `?index=` (absent = 0); a bad value is Consul's 400 "Invalid index".
pub fn index(query: &HashMap<String, String>) -> Result<u64, ApiError> {
    match query.get("index").map(String::as_str) {
        None | Some("") => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|_| ApiError::bad_request("Invalid index")),
    }
}

/// Parses `?wait=` as a Go duration; a bad value is Consul's 400 "Invalid wait time".
pub fn wait(query: &HashMap<String, String>) -> Result<Duration, ApiError> {
    match query.get("wait").map(String::as_str) {
        None | Some("") => Ok(DEFAULT_WAIT),
        Some(text) => crate::duration::parse(text)
            .map(|d| d.min(MAX_WAIT))
            .ok_or_else(|| ApiError::bad_request("Invalid wait time")),
    }
}

/// Waits until the watched index exceeds `index` or `wait` (with jitter) ends; returns the
/// index to answer with. A client that is ahead of this agent (it talked to another agent) gets
/// an answer at once instead of hanging.
pub async fn block(mut watched: watch::Receiver<u64>, index: u64, wait: Duration) -> u64 {
    let current = *watched.borrow();
    if index == 0 || current != index {
        return current;
    }
    let jitter = wait.mul_f64(rand::rng().random_range(0.0..1.0 / 16.0));
    let _ = tokio::time::timeout(wait + jitter, watched.wait_for(|now| *now > index)).await;
    *watched.borrow()
}

/// Answers `query` (which returns its own index and its answer) as a blocking query: with
/// `?index=N`, waits while the query's index is still N, re-evaluating it after each change of
/// its `topic`, until it moves or the wait ends. Changes of other topics do not wake it; a
/// change of its topic that leaves its own index alone wakes it only to re-check.
pub async fn query<T>(
    agent: &Arc<Agent>,
    params: &HashMap<String, String>,
    topic: Topic,
    query: impl Fn(&View<'_>) -> (u64, T),
) -> Result<(u64, T), ApiError> {
    let index = index(params)?;
    let wait = wait(params)?;
    let jitter = wait.mul_f64(rand::rng().random_range(0.0..1.0 / 16.0));
    let deadline = tokio::time::Instant::now() + wait + jitter;
    // Subscribed before the first look, so a change between the look and the wait still wakes.
    let subscription = agent.watchers.subscribe(topic);
    let mut changes = subscription.changes.clone();
    loop {
        changes.borrow_and_update();
        let (at, answer) = agent.view(|v| query(v));
        let at = at.max(1);
        if index == 0 || at != index {
            return Ok((at, answer));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok((at, answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_wait_errors_use_consuls_messages() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(
            index(&q("index", "x")).unwrap_err().message,
            "Invalid index"
        );
        assert_eq!(
            wait(&q("wait", "soon")).unwrap_err().message,
            "Invalid wait time"
        );
        assert_eq!(wait(&q("wait", "1h")).unwrap(), MAX_WAIT);
    }

    #[tokio::test]
    async fn block_wakes_on_change() {
        let (tx, rx) = watch::channel(5u64);
        let waiter = tokio::spawn(block(rx.clone(), 5, Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(6).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 6);
        assert_eq!(
            block(rx, 9, Duration::from_secs(30)).await,
            6,
            "a client ahead of us is answered at once"
        );
    }
}
