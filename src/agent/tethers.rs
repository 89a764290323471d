//! Tethers (the gossip core's `node::tether`): a TCP stream this agent holds open to each member
//! that would confirm its crash, and the streams other members hold open to it. When an
//! agent's process dies, its kernel closes its streams; the members holding them hear it one
//! round trip later and check it, and its host bounces their checks. An idle stream sends
//! nothing but a keep-alive probe every few minutes.
//!
//! One task per pool owns both sides, so stopping the pool (a gateway stepping down) closes
//! them all:
//! - **ties**: every [`RETIE_EVERY`] it asks the core whom to tie to, opens a stream to each
//!   new target (sending the core's tether request, then only reading), and closes those no
//!   longer wanted. A tie that ends is retried after [`RETRY_AFTER`].
//! - **held**: streams peers opened to this agent, handed over by the stream acceptor; when
//!   one ends, for whatever reason, the core is told (`PoolMember::tether_lost`).
//!
//! A holder turns TCP keep-alive on, with a long idle time, so that a stream whose subject's
//! host vanished without a word does not linger for ever. The subject side needs none: a
//! holder whose host vanished is declared down by SWIM and leaves the targets, which closes
//! the tie.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use murmur_gossip::NodeIdentity;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::pool::Pool;
use super::runtime::Agent;
use super::stream::{self, EXCHANGE_TIMEOUT};

/// How often the agent asks its core whom to tie to (membership changes move the targets).
const RETIE_EVERY: Duration = Duration::from_secs(1);
/// How long a target whose tie failed or ended waits before it is tied again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Most tethers held for other members at once. Each member ties to a handful of others, the
/// same handful everywhere, so an agent holds about that many; more are closed at once (their
/// members retry later) so that a flood of them cannot take the agent's file descriptors.
const MAX_HELD: usize = 256;
/// Streams waiting for the tether task (the acceptor drops more: their members retry).
pub(super) const HANDOVER_QUEUE: usize = 64;
/// TCP keep-alive on a held tether: idle time before a probe (each answered probe restarts
/// it), the time between unanswered probes, and how many go unanswered before the stream is
/// taken as broken (six and a half minutes in all). A short idle time costs traffic on every
/// tether: at 30 s on both ends, a probe and its answer per end every 30 s come to 0.8
/// packets per agent per second (six tethers each way).
const KEEPALIVE_IDLE_S: u32 = 300;
const KEEPALIVE_INTERVAL_S: u32 = 30;
const KEEPALIVE_PROBES: u32 = 3;

/// A stream a peer asked this agent to hold, and the member it named.
pub(super) type Handover = (TcpStream, NodeIdentity);

/// How a tether task ended.
enum Ended {
    /// This agent's tie to `0` closed.
    Tie(NodeIdentity),
    /// The tether `0` held to this agent ended.
    Held(NodeIdentity),
}

/// Runs `pool`'s tethers until the pool stops (see the module's documentation).
pub(super) async fn run(agent: Arc<Agent>, pool: Arc<Pool>, mut handed: mpsc::Receiver<Handover>) {
    let mut tasks: JoinSet<Ended> = JoinSet::new();
    let mut ties: HashMap<NodeIdentity, AbortHandle> = HashMap::new();
    let mut resting: HashMap<NodeIdentity, Instant> = HashMap::new();
    let mut held = 0usize;
    let mut tied_as: Option<NodeIdentity> = None;
    let mut every = tokio::time::interval(RETIE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let (me, targets) = {
                    let member = pool.read();
                    (member.node().identity().clone(), member.node().tether_targets())
                };
                if tied_as.as_ref() != Some(&me) {
                    // A tether names the life that opened it (a member renewed after being
                    // declared down has a new one): tie again as this one, at once.
                    for task in ties.values() {
                        task.abort();
                    }
                    ties.clear();
                    resting.clear();
                    tied_as = Some(me);
                }
                ties.retain(|target, task| {
                    let wanted = targets.contains(target);
                    if !wanted {
                        task.abort();
                    }
                    wanted
                });
                let now = Instant::now();
                resting.retain(|_, until| *until > now);
                for target in targets {
                    if ties.contains_key(&target) || resting.contains_key(&target) {
                        continue;
                    }
                    let request = agent.with_pool(&pool, |n| n.node_mut().tether_request());
                    let task = tasks.spawn(tie(target.clone(), request));
                    ties.insert(target, task);
                }
            }
            Some((conn, subject)) = handed.recv() => {
                if held >= MAX_HELD {
                    metrics::counter!("murmur_gossip_tethers_refused_total", "pool" => pool.name)
                        .increment(1);
                    continue;
                }
                held += 1;
                tasks.spawn(hold(conn, subject));
            }
            Some(done) = tasks.join_next_with_id() => {
                match done {
                    Ok((id, Ended::Tie(target))) => {
                        if ties.get(&target).map(AbortHandle::id) == Some(id) {
                            ties.remove(&target);
                        }
                        resting.insert(target, Instant::now() + RETRY_AFTER);
                    }
                    Ok((_, Ended::Held(subject))) => {
                        held -= 1;
                        agent.with_pool(&pool, |n| n.tether_lost(&subject));
                    }
                    // A tie closed because its target was no longer wanted.
                    Err(err) if err.is_cancelled() => {}
                    Err(err) => tracing::warn!(pool = pool.name, %err, "a tether task failed"),
                }
            }
        }
        metrics::gauge!("murmur_gossip_tethers", "pool" => pool.name, "side" => "tied")
            .set(ties.len() as f64);
        metrics::gauge!("murmur_gossip_tethers", "pool" => pool.name, "side" => "held")
            .set(held as f64);
    }
}

/// Ties this agent to `target`: opens a stream, names this agent, then waits for the stream to
/// end (the target closed it, or its process died).
async fn tie(target: NodeIdentity, request: Vec<u8>) -> Ended {
    if let Err(err) = tie_until_closed(target.addr, &request).await {
        tracing::debug!(member = %target.name, addr = %target.addr, "tether ended: {err:#}");
    }
    Ended::Tie(target)
}

async fn tie_until_closed(to: SocketAddr, request: &[u8]) -> anyhow::Result<()> {
    let mut conn = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(to))
        .await
        .context("connecting timed out")??;
    tokio::time::timeout(EXCHANGE_TIMEOUT, stream::write_frame(&mut conn, request))
        .await
        .context("sending the request timed out")??;
    wait_for_end(&mut conn).await;
    Ok(())
}

/// Holds the tether `subject` opened until it ends.
async fn hold(mut conn: TcpStream, subject: NodeIdentity) -> Ended {
    if let Err(err) = keep_alive(&conn) {
        tracing::debug!(member = %subject.name, "tether held without keep-alive: {err:#}");
    }
    wait_for_end(&mut conn).await;
    Ended::Held(subject)
}

/// Returns once `conn` is closed or broken. Neither side sends anything after the request, so
/// data is a peer that does not follow the protocol: the stream is given up as well.
async fn wait_for_end(conn: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let _ = conn.read(&mut byte).await;
}

/// Turns on TCP keep-alive, so a stream whose peer's host vanished breaks in the end.
fn keep_alive(conn: &TcpStream) -> anyhow::Result<()> {
    setsockopt(conn, sockopt::KeepAlive, &true)?;
    setsockopt(conn, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_S)?;
    setsockopt(conn, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_S)?;
    setsockopt(conn, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
    Ok(())
}
