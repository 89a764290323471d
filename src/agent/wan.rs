//! Serving as a WAN gateway: every `--wan-eligible` agent watches which agents of its
//! datacenter are selected (`murmur_federation::gateways`) and, when it is, runs the WAN pool
//! that links datacenters; when it no longer is, it leaves that pool.
//!
//! What the selection reads is in the replicated node records, so every agent of the
//! datacenter sees the same: [`ELIGIBLE_META`] on the agents that may serve (with their WAN
//! address) and [`GATEWAY_META`] on those that serve now. The selection runs each second on
//! the local view; no agent asks another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use murmur_catalog::NodeRecord;
use murmur_federation::gateways::{self, ELIGIBLE_META, GATEWAY_META};
use murmur_gossip::{GossipConfig, IdentityFields, Keyring, NodeIdentity, PoolMember};
use tokio::net::{TcpListener, UdpSocket};

use super::config::{AgentConfig, WanConfig, resolve_seeds};
use super::runtime::Agent;
use super::view::View;

/// How often an eligible agent re-runs the selection. A gateway's failure is noticed after
/// the LAN pool declares it failed; one more second is nothing next to that.
const SELECT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between attempts to join the WAN pool through its seeds.
const JOIN_MAX_WAIT: Duration = Duration::from_secs(30);

/// What an eligible agent needs to serve: its WAN settings and its identity in the WAN pool.
pub struct Gateway {
    wan: WanConfig,
    /// In the WAN pool the agent is `node.datacenter`, as Consul names WAN members.
    identity: NodeIdentity,
    gossip: GossipConfig,
    node: String,
    datacenter: String,
}

impl Gateway {
    /// The gateway settings of this agent, or why it cannot serve with them.
    pub fn new(config: &AgentConfig, wan: &WanConfig, lan: &NodeIdentity) -> anyhow::Result<Self> {
        let identity: NodeIdentity = IdentityFields {
            name: format!("{}.{}", config.node, config.datacenter).into(),
            addr: wan.advertise,
            tags: Vec::new(),
            ..IdentityFields::clone(lan)
        }
        .into();
        identity.validate().with_context(|| {
            format!(
                "--wan-eligible: in the WAN pool this agent is {:?} (node.datacenter): shorten --node or --datacenter",
                identity.name
            )
        })?;
        Ok(Self {
            wan: wan.clone(),
            identity,
            gossip: GossipConfig {
                reap_after: config.reap_after,
                ..GossipConfig::wan(&config.cluster_id)
            },
            node: config.node.clone(),
            datacenter: config.datacenter.clone(),
        })
    }

    /// Marks this agent's record at start: eligible with its WAN address, and not serving
    /// (a gateway meta kept from an earlier life is stale).
    pub fn mark_record(wan: Option<&WanConfig>, record: &mut NodeRecord) {
        gateways::claim_seat(record, None, 0);
        match wan {
            Some(wan) => record
                .meta
                .insert(ELIGIBLE_META.into(), wan.advertise.to_string()),
            None => record.meta.remove(ELIGIBLE_META),
        };
    }

    /// Re-runs the selection every second for as long as the agent runs; while serving,
    /// keeps this datacenter's directory entries true.
    pub async fn run(self, agent: Arc<Agent>) {
        let started_ms = super::runtime::wall_ms();
        let mut every = tokio::time::interval(SELECT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_entry = tokio::time::Instant::now();
        // Whether the entry last written carried a coordinate: the first one measured is
        // published at once rather than an interval later.
        let mut measured = false;
        loop {
            every.tick().await;
            let current =
                agent.view(|v| gateways::view_is_current(v.replica(), started_ms, v.alive_peers()));
            if !current {
                continue;
            }
            let selected = agent.view(|v| selected(v, &self.node, self.wan.gateways));
            match (selected, agent.wan().is_some()) {
                (true, false) => match self.serve(&agent).await {
                    Ok(()) => {
                        next_entry = tokio::time::Instant::now();
                        measured = false;
                    }
                    Err(err) => tracing::error!("cannot serve as a WAN gateway: {err:#}"),
                },
                (false, true) => {
                    tracing::info!("another agent serves as a WAN gateway: leaving the WAN pool");
                    if let Err(err) = publish(&agent, None).await {
                        tracing::error!("cannot withdraw the WAN gateway meta: {err:#}");
                    }
                    self.withdraw_entry(&agent);
                    agent.stop_wan().await;
                }
                (true, true) => {
                    if agent.view(claim_is_stale)
                        && let Err(err) = publish(&agent, Some(self.wan.advertise)).await
                    {
                        tracing::error!("cannot renew the WAN gateway meta: {err:#}");
                    }
                    let now = tokio::time::Instant::now();
                    let first_measure = !measured && wan_coordinate(&agent).is_some();
                    if now >= next_entry || first_measure {
                        measured = self.publish_entry(&agent);
                        self.publish_summary(&agent);
                        let gateways = agent.view(|v| v.replica().gateways().count());
                        next_entry = now + super::coordinates::interval(gateways);
                    }
                    self.withdraw_failed(&agent);
                }
                (false, false) => {}
            }
        }
    }

    /// Writes this gateway's directory entry: its WAN address and, once measured, its WAN
    /// coordinate (the entry is global: it reaches every datacenter). Says whether the
    /// coordinate was in it.
    fn publish_entry(&self, agent: &Arc<Agent>) -> bool {
        let coordinate = wan_coordinate(agent);
        let measured = coordinate.is_some();
        let entry = murmur_catalog::Gateway {
            datacenter: self.datacenter.clone(),
            node: self.node.clone(),
            wan: self.wan.advertise.to_string(),
            coordinate,
        };
        agent.with_node(|n| n.write(|replica, now| replica.put_gateway(entry, now)));
        measured
    }

    /// Writes this datacenter's catalog summary (global: every datacenter holds it), when it
    /// changed. Every gateway of the datacenter writes it, at the directory entry's pace; the
    /// last write wins.
    fn publish_summary(&self, agent: &Arc<Agent>) {
        let summary = agent.view(|v| {
            let failed = v.failed_owners();
            murmur_catalog::DcSummary::of(&self.datacenter, &v.replica().catalog(&failed))
        });
        agent.with_node(|n| n.write(|replica, now| replica.put_summary(summary, now)));
    }

    /// Withdraws this agent's directory entry: it no longer serves.
    fn withdraw_entry(&self, agent: &Arc<Agent>) {
        agent.with_node(|n| {
            n.write(|replica, now| replica.delete_gateway(&self.datacenter, &self.node, now))
        });
    }

    /// Withdraws the directory entries of this datacenter's agents that no longer serve:
    /// failed (a gateway that crashed withdraws nothing itself), or stepped down without
    /// saying so. Every gateway of the datacenter may do it; the deletes agree.
    fn withdraw_failed(&self, agent: &Arc<Agent>) {
        let stale: Vec<String> = agent.view(|v| {
            let failed = v.failed_owners();
            let records = v.replica().records();
            v.replica()
                .gateways()
                .filter(|g| g.datacenter == self.datacenter && g.node != self.node)
                .filter(|g| {
                    failed.contains(&g.node)
                        || records
                            .get(&g.node)
                            .is_none_or(|r| !r.meta.contains_key(GATEWAY_META))
                })
                .map(|g| g.node.clone())
                .collect()
        });
        for node in stale {
            tracing::info!(%node, "withdrawing the directory entry of a gateway that no longer serves");
            agent.with_node(|n| {
                n.write(|replica, now| replica.delete_gateway(&self.datacenter, &node, now))
            });
        }
    }

    /// Starts the WAN pool, says so in this agent's record, and joins through the seeds.
    async fn serve(&self, agent: &Arc<Agent>) -> anyhow::Result<()> {
        let bind = self.wan.bind;
        let udp = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("cannot listen on the WAN address {bind} (--bind-wan)"))?;
        let tcp = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on the WAN address {bind} (--bind-wan)"))?;
        let keys = agent.with_node(|n| n.node().keyring().keys().to_vec());
        let member = PoolMember::new(
            self.identity.clone(),
            self.gossip.clone(),
            Keyring::from_keys(keys),
            rand::make_rng(),
        )?;
        let (seeds, errors) =
            resolve_seeds(&[self.wan.join.clone(), self.wan.retry_join.clone()].concat()).await;
        for err in errors {
            tracing::warn!("--join-wan/--retry-join-wan address skipped: {err}");
        }
        agent.start_wan(member, udp, tcp)?;
        agent.with_wan(|n| n.node_mut().set_seeds(seeds.clone()));
        publish(agent, Some(self.wan.advertise)).await?;
        tracing::info!(wan = %self.wan.advertise, "serving as a WAN gateway");
        if !seeds.is_empty() {
            tokio::spawn(join_wan(agent.clone(), seeds));
        }
        Ok(())
    }
}

/// This gateway's WAN coordinate, once it has measured one.
fn wan_coordinate(agent: &Agent) -> Option<murmur_catalog::Coordinate> {
    agent
        .read_wan(|n| {
            (n.node().stats().coordinate_samples > 0).then(|| n.node().coordinate().clone())
        })
        .flatten()
}

/// Whether this agent (`me`) is among the `k` gateways, from what its view says.
fn selected(view: &View<'_>, me: &str, k: usize) -> bool {
    let life = |name: &str| {
        if name == me {
            Some(view.me().generation)
        } else {
            view.peer(name).map(|m| m.identity.generation)
        }
    };
    gateways::selected(view.replica(), &view.failed_owners(), me, k, life)
}

/// Claims (or, with `None`, gives up) a gateway seat in this agent's record, for its current
/// membership generation.
async fn publish(agent: &Arc<Agent>, wan: Option<SocketAddr>) -> anyhow::Result<()> {
    let generation = agent.view(|v| v.me().generation);
    agent
        .write(move |replica, _| {
            let Some(mut record) = replica.own_record().cloned() else {
                return;
            };
            let wan = wan.map(|addr| addr.to_string());
            gateways::claim_seat(&mut record, wan.as_deref(), generation);
            replica.set_own_record(Some(record));
        })
        .await
}

/// Whether this serving agent must claim its seat again (see `gateways::claim_is_stale`).
fn claim_is_stale(view: &View<'_>) -> bool {
    gateways::claim_is_stale(view.replica().own_record(), view.me().generation)
}

/// Joins the WAN pool through `seeds`, with backoff, until one answers or this agent stops
/// serving. Unlike `--join`, reaching none does not stop the agent: it already serves its
/// datacenter, and the other datacenters' gateways may come later.
async fn join_wan(agent: Arc<Agent>, seeds: Vec<SocketAddr>) {
    let mut wait = Duration::from_secs(1);
    while agent.wan().is_some() {
        match agent.join_wan(&seeds).await {
            Ok(n) => {
                tracing::info!(contacted = n, "joined the WAN pool");
                return;
            }
            Err(errors) => {
                tracing::warn!(retry_in = ?wait, "no WAN seed answered: {}", errors.join("; "));
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(JOIN_MAX_WAIT);
    }
}
