//! Federated datacenters on the virtual network: a LAN pool per datacenter and the WAN pool of
//! their gateways, chosen, relayed to and joined by the rules the agent follows
//! (`murmur_federation`: gateway selection from the replica, the scope of each key, the route
//! of a `?dc=` request), with WAN cuts as faults and the federation invariants checked.
//!
//! Node `i < wan_from` is a LAN node of datacenter `i % datacenters`; while it serves as a
//! gateway, slot `wan_from + i` runs its WAN pool member (same process: a crash takes both),
//! and [`Net`] hands global changes between the two as the agent does. Every LAN node is
//! `--wan-eligible`; every datacenter runs `gateways` of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use murmur_catalog::{
    Action, CaRoot, Change, DcSummary, Hlc, Intention, KV_PREFIX, KvValue, NodeRecord, Replica,
};
use murmur_federation::forward::{self, Arrived, Route};
use murmur_federation::gateways::{self, ELIGIBLE_META, GATEWAY_META};
use murmur_federation::scope;
use murmur_gossip::{GossipConfig, Keyring, PoolMember};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::measure::Percentiles;
use crate::net::{JOIN_SPACING, LinkModel, Net, WALL_CLOCK_BASE_MS, addr, key};

/// How often every eligible node re-runs the gateway selection, as the agent does.
pub const SELECT_EVERY: Duration = Duration::from_secs(1);
/// Every how many selection rounds a gateway writes its datacenter's summary (the agent's
/// directory pace: 15 s).
const SUMMARY_EVERY: u64 = 15;

/// What a federated run is made of.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Datacenters.
    pub datacenters: usize,
    /// LAN nodes in each.
    pub nodes_per_dc: usize,
    /// Gateways each datacenter runs (`--wan-gateways`).
    pub gateways: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// Latencies within and between datacenters (its `datacenters` is set from the above).
    pub link: LinkModel,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// How the WAN is cut (`None`: chosen by the seed).
    pub cut: Option<WanCut>,
    /// How long the WAN stays cut.
    pub cut_for: Duration,
    /// How long nothing is written after forming, to measure the idle WAN traffic.
    pub quiet_for: Duration,
    /// How many global writes are followed to every node.
    pub global_writes: usize,
}

impl FederationConfig {
    /// `datacenters` × `nodes_per_dc` nodes, 2 gateways each, a WAN of 40–120 ms.
    pub fn new(datacenters: usize, nodes_per_dc: usize, seed: u64) -> Self {
        Self {
            datacenters,
            nodes_per_dc,
            gateways: 2,
            seed,
            link: LinkModel {
                wan_latency: Duration::from_millis(40),
                wan_jitter: Duration::from_millis(80),
                ..LinkModel::default()
            },
            loss: 0.0,
            cut: None,
            cut_for: Duration::from_secs(30),
            quiet_for: Duration::from_secs(30),
            global_writes: 20,
        }
    }
}

/// How the WAN is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanCut {
    /// No gateway reaches another datacenter's.
    Whole,
    /// The gateways of two datacenters do not reach each other; the rest is linked.
    Between(usize, usize),
    /// What the first datacenter's gateways send to the second's is lost; the other way works.
    OneWay(usize, usize),
}

/// The answer to a `?dc=` KV read, as the asker gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answered by node `by`, with the key's value if it has one.
    Answered {
        /// The node that read its replica.
        by: usize,
        /// The value there.
        value: Option<Vec<u8>>,
    },
    /// Consul's error (`No path to datacenter`, `Remote DC has no server currently reachable`).
    Refused(&'static str),
}

/// Datacenters linked through their gateways on one virtual network.
pub struct Federation {
    /// The network: LAN nodes, then WAN members.
    pub net: Net,
    /// How it was made.
    pub config: FederationConfig,
    keyring: Keyring,
    /// WAN members that left the pool and stop at the next selection round (the agent gives
    /// a leave a moment to spread before it closes the sockets).
    stopping: Vec<usize>,
    /// The most WAN members that ran at once.
    pub most_wan_members: usize,
    spread: Spread,
    /// Wall-clock ms at which each LAN node's current life started.
    life_started_ms: Vec<u64>,
    /// Selection rounds so far.
    rounds: u64,
}

/// The LAN nodes' datacenter name, as the identities say it.
pub fn dc_name(dc: usize) -> String {
    format!("dc{}", dc + 1)
}

impl Federation {
    /// Starts every datacenter's nodes, joins each to the first node of its datacenter, and
    /// runs until every LAN pool has converged and the WAN pool has formed.
    pub fn form(config: FederationConfig) -> Result<Self, String> {
        let nodes = config.datacenters * config.nodes_per_dc;
        let mut net = Net::new(config.seed);
        net.link = LinkModel {
            datacenters: config.datacenters,
            ..config.link.clone()
        };
        net.loss = config.loss;
        net.wan_from = nodes;
        net.config = GossipConfig::lan("test");
        net.wan_config = GossipConfig::wan("test");
        net.stop_keeping_events();
        let keyring = key(7);
        let mut federation = Self {
            net,
            config,
            keyring,
            stopping: Vec::new(),
            most_wan_members: 0,
            spread: Spread::default(),
            life_started_ms: vec![0; nodes],
            rounds: 0,
        };
        for i in 0..nodes {
            federation.net.start(i, 1, federation.keyring.clone());
            federation.mark_record(i);
        }
        for i in federation.config.datacenters..nodes {
            let seed = i % federation.config.datacenters;
            federation.net.join(i, seed)?;
            federation.net.run_for(JOIN_SPACING);
        }
        let limit = Duration::from_secs(180);
        federation
            .run_until(limit, |f| f.lans_converged() && f.wan_formed())
            .ok_or_else(|| {
                format!(
                    "seed {}: the federation did not form within {limit:?}: {} WAN members",
                    federation.config.seed,
                    federation.wan_members().len()
                )
            })?;
        Ok(federation)
    }

    /// Node `i`'s record as the agent marks it at start: eligible, with its WAN address, and
    /// not serving (a gateway meta of an earlier life is stale).
    fn mark_record(&mut self, i: usize) {
        let wan = addr(self.net.wan_from + i).to_string();
        let dc = dc_name(self.net.datacenter_of(i));
        self.net.call(i, |m| {
            m.write(|r, _| {
                let mut record = r.own_record().cloned().unwrap_or_else(|| NodeRecord {
                    address: addr(i).ip().to_string(),
                    datacenter: dc,
                    ..NodeRecord::default()
                });
                gateways::claim_seat(&mut record, None, 0);
                record.meta.insert(ELIGIBLE_META.into(), wan);
                r.set_own_record(Some(record));
            })
        });
    }

    /// The LAN nodes of datacenter `dc`.
    pub fn lan(&self, dc: usize) -> Vec<usize> {
        (0..self.net.wan_from)
            .filter(|&i| i % self.config.datacenters == dc)
            .collect()
    }

    /// The WAN members that run now.
    pub fn wan_members(&self) -> Vec<usize> {
        (self.net.wan_from..self.net.slots.len())
            .filter(|&w| self.net.slots[w].node.is_some())
            .collect()
    }

    /// How many gateways datacenter `dc` should run: `gateways`, or all its running nodes
    /// when it has fewer.
    pub fn gateways_wanted(&self, dc: usize) -> usize {
        let running = self
            .lan(dc)
            .into_iter()
            .filter(|&i| self.member(i).is_some());
        self.config.gateways.min(running.count())
    }

    /// The WAN members of datacenter `dc` that run now.
    pub fn gateways_of(&self, dc: usize) -> Vec<usize> {
        self.wan_members()
            .into_iter()
            .filter(|&w| self.net.datacenter_of(w) == dc)
            .collect()
    }

    fn member(&self, i: usize) -> Option<&PoolMember> {
        self.net.slots.get(i)?.node.as_ref()
    }

    /// Whether every running LAN node lists every running node of its datacenter alive.
    pub fn lans_converged(&self) -> bool {
        (0..self.config.datacenters).all(|dc| {
            let running: Vec<usize> = self
                .lan(dc)
                .into_iter()
                .filter(|&i| self.member(i).is_some())
                .collect();
            running.iter().all(|&i| {
                self.member(i).expect("running").node().alive_peers() == running.len() - 1
            })
        })
    }

    /// Whether every datacenter runs its gateways and each WAN member sees all the others
    /// alive.
    pub fn wan_formed(&self) -> bool {
        let members = self.wan_members();
        (0..self.config.datacenters)
            .all(|dc| self.gateways_of(dc).len() == self.gateways_wanted(dc))
            && members.iter().all(|&w| {
                self.member(w).expect("running").node().alive_peers() == members.len() - 1
            })
    }

    /// Runs in selection rounds until `cond` holds or `limit` passes; the time it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.net.now;
        while self.net.now - start < limit {
            if cond(self) {
                return Some(self.net.now - start);
            }
            self.run_for(SELECT_EVERY);
        }
        cond(self).then(|| self.net.now - start)
    }

    /// Runs the network for `span`, with a selection round every [`SELECT_EVERY`].
    pub fn run_for(&mut self, span: Duration) {
        let until = self.net.now + span;
        while self.net.now < until {
            let step = SELECT_EVERY.min(until - self.net.now);
            self.net.run_for(step);
            self.observe_applied();
            self.select();
        }
    }

    /// One selection round on every running LAN node, as each agent runs it every second.
    pub fn select(&mut self) {
        for w in std::mem::take(&mut self.stopping) {
            self.net.crash(w);
        }
        let k = self.config.gateways;
        for i in 0..self.net.wan_from {
            let Some(member) = self.member(i) else {
                continue;
            };
            let started = self.life_started_ms.get(i).copied().unwrap_or(0);
            if !gateways::view_is_current(member.replica(), started, member.node().alive_peers()) {
                continue;
            }
            let name = member.node().identity().name.clone();
            let life = |n: &str| {
                if n == name.as_str() {
                    Some(member.node().identity().generation)
                } else {
                    member.node().peer(n).map(|m| m.identity.generation)
                }
            };
            let chosen =
                gateways::selected(member.replica(), &member.failed_owners(), &name, k, life);
            let w = self.net.wan_from + i;
            match (chosen, self.member(w).is_some()) {
                (true, false) => self.serve(i),
                (false, true) => self.step_down(i),
                (true, true) => {
                    let member = self.member(i).expect("running");
                    let generation = member.node().identity().generation;
                    if gateways::claim_is_stale(member.replica().own_record(), generation) {
                        self.set_gateway_meta(i, true);
                    }
                    if self.member(w).is_some_and(|m| m.node().active_peers() == 0) {
                        self.join_wan(w);
                    }
                }
                _ => {}
            }
        }
        self.most_wan_members = self.most_wan_members.max(self.wan_members().len());
        self.rounds += 1;
        self.publish_summaries();
    }

    /// Every gateway writes its datacenter's catalog summary every [`SUMMARY_EVERY`] rounds
    /// (staggered by node), when it changed, as the agent does at its directory entry's pace.
    fn publish_summaries(&mut self) {
        for i in 0..self.net.wan_from {
            let serving = self.member(self.net.wan_from + i).is_some();
            if !serving || !(self.rounds + i as u64).is_multiple_of(SUMMARY_EVERY) {
                continue;
            }
            let dc = dc_name(self.net.datacenter_of(i));
            self.net.call(i, |m| {
                let failed = m.failed_owners();
                let summary = DcSummary::of(&dc, &m.replica().catalog(&failed));
                m.write(|r, now| r.put_summary(summary, now));
            });
        }
    }

    /// Node `i` starts serving: its WAN member starts with its datacenter's global data,
    /// pairs with it for the relay, says so in its record and joins the WAN pool.
    fn serve(&mut self, i: usize) {
        let w = self.net.wan_from + i;
        let generation = self
            .member(i)
            .expect("running")
            .node()
            .identity()
            .generation;
        self.stopping.retain(|&s| s != w);
        self.net.start(w, generation, self.keyring.clone());
        let global = scope::global_entries(self.member(i).expect("running").replica());
        self.net.call(w, |m| m.relay(global));
        self.net.pair(i, Some(w));
        self.set_gateway_meta(i, true);
        self.join_wan(w);
    }

    /// Node `i` stops serving: its WAN member leaves (and stops at the next round).
    fn step_down(&mut self, i: usize) {
        let w = self.net.wan_from + i;
        self.net.call(w, PoolMember::leave);
        self.net.pair(i, None);
        self.stopping.push(w);
        self.set_gateway_meta(i, false);
    }

    fn set_gateway_meta(&mut self, i: usize, serving: bool) {
        let wan = addr(self.net.wan_from + i).to_string();
        self.net.call(i, |m| {
            let generation = m.node().identity().generation;
            m.write(|r, _| {
                let Some(mut record) = r.own_record().cloned() else {
                    return;
                };
                gateways::claim_seat(&mut record, serving.then_some(wan.as_str()), generation);
                r.set_own_record(Some(record));
            })
        });
    }

    /// WAN member `w` joins through the first other WAN member that answers (every gateway
    /// is given every eligible node's WAN address as a seed, as `--retry-join-wan`).
    fn join_wan(&mut self, w: usize) {
        let seeds: Vec<usize> = self
            .wan_members()
            .into_iter()
            .filter(|&s| s != w && !self.stopping.contains(&s))
            .collect();
        for seed in seeds {
            if self.net.join(w, seed).is_ok() {
                return;
            }
        }
    }

    /// Crashes LAN node `i`, and its WAN member with it.
    pub fn crash(&mut self, i: usize) {
        let w = self.net.wan_from + i;
        self.net.crash(i);
        if self.member(w).is_some() {
            self.net.crash(w);
        }
        self.net.pair(i, None);
    }

    /// Restarts LAN node `i` from its data, marks its record as the agent does at start and
    /// rejoins its datacenter through a running node of it.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let generation = self.net.slots[i].life + 1;
        self.net
            .restart_with_data(i, generation, self.keyring.clone());
        // Federated runs skew no clock: a node's wall clock is the base plus virtual time.
        self.life_started_ms[i] = WALL_CLOCK_BASE_MS + self.net.now.as_millis() as u64;
        self.mark_record(i);
        let dc = self.net.datacenter_of(i);
        let seed = self
            .lan(dc)
            .into_iter()
            .find(|&j| j != i && self.member(j).is_some())
            .ok_or("no running node to rejoin through")?;
        self.net.join(i, seed)
    }

    /// Cuts the WAN as `cut` says (LAN links stay).
    pub fn cut(&mut self, cut: WanCut) {
        let wan_of = |f: &Self, dc: usize| -> Vec<usize> {
            f.lan(dc).into_iter().map(|i| f.net.wan_from + i).collect()
        };
        match cut {
            WanCut::Whole => {
                for a in 0..self.config.datacenters {
                    for b in a + 1..self.config.datacenters {
                        let (x, y) = (wan_of(self, a), wan_of(self, b));
                        self.net.partition(&x, &y);
                    }
                }
            }
            WanCut::Between(a, b) => {
                let (x, y) = (wan_of(self, a), wan_of(self, b));
                self.net.partition(&x, &y);
            }
            WanCut::OneWay(a, b) => {
                for x in wan_of(self, a) {
                    for y in wan_of(self, b) {
                        self.net.block_one_way(x, y);
                    }
                }
            }
        }
    }

    /// Whether datagrams and streams pass between WAN members `a` and `b` both ways (a
    /// forwarded request needs an answer).
    fn reachable(&self, a: usize, b: usize) -> bool {
        self.member(b).is_some() && !self.net.is_partitioned(a, b) && !self.net.is_partitioned(b, a)
    }

    /// A KV read of `key` in datacenter `target` asked of LAN node `from`, carried as the
    /// agent's forwarder carries `?dc=`: through a gateway of `from`'s datacenter (the live
    /// ones its record view lists, in its order), then one of `target`'s gateways (the WAN
    /// members of `target` that gateway sees alive, in its order), which reads its LAN replica.
    pub fn ask(&self, from: usize, target: usize, key: &str) -> Answer {
        let target_name = dc_name(target);
        let asker = self.member(from).expect("asker runs");
        let read = |at: usize| Answer::Answered {
            by: at,
            value: self
                .member(at)
                .and_then(|m| m.replica().kv().get(key).map(|e| e.value.value.clone())),
        };
        let is_gateway = |i: usize| self.member(self.net.wan_from + i).is_some();
        let asker_name = asker.node().identity().name.to_string();
        let mut at = from;
        let mut arrived = Arrived::Api;
        loop {
            let hop = self.member(at).expect("every hop runs");
            let here = dc_name(self.net.datacenter_of(at));
            match forward::route(&here, &target_name, arrived, is_gateway(at)) {
                Route::Here => return read(at),
                Route::Refuse(_) => return Answer::Refused("No path to datacenter"),
                Route::LocalGateway => {
                    let failed = hop.failed_owners();
                    let mut candidates: Vec<&String> = hop
                        .replica()
                        .records()
                        .iter()
                        .filter(|(name, r)| {
                            r.meta.contains_key(GATEWAY_META) && !failed.contains(*name)
                        })
                        .map(|(name, _)| name)
                        .collect();
                    forward::order(&mut candidates, &asker_name, |name| name.as_str());
                    let Some(gateway) = candidates
                        .iter()
                        .filter_map(|name| name.strip_prefix("node-")?.parse::<usize>().ok())
                        .find(|&g| self.member(g).is_some() && is_gateway(g))
                    else {
                        return Answer::Refused("No path to datacenter");
                    };
                    at = gateway;
                    arrived = Arrived::Lan;
                }
                Route::Wan => {
                    let w = self.net.wan_from + at;
                    let wan = self.member(w).expect("a gateway runs its WAN member");
                    let mut theirs: Vec<(String, usize)> = wan
                        .node()
                        .members()
                        .into_iter()
                        .filter(|m| m.status.is_active() && m.identity.datacenter == target_name)
                        .filter_map(|m| {
                            let slot = m.identity.name.strip_prefix("node-")?.parse().ok()?;
                            Some((m.identity.name.to_string(), slot))
                        })
                        .collect();
                    forward::order(&mut theirs, &asker_name, |(name, _)| name.as_str());
                    let theirs: Vec<usize> = theirs.into_iter().map(|(_, slot)| slot).collect();
                    if theirs.is_empty() {
                        return Answer::Refused("No path to datacenter");
                    }
                    let Some(&answering) = theirs.iter().find(|&&t| self.reachable(w, t)) else {
                        return Answer::Refused("Remote DC has no server currently reachable");
                    };
                    at = answering - self.net.wan_from;
                    arrived = Arrived::Wan;
                }
            }
        }
    }

    /// Every global entry node `i` holds, as changes in key order.
    pub fn global_state(&self, i: usize) -> Vec<Change> {
        self.member(i)
            .map(|m| scope::global_entries(m.replica()))
            .unwrap_or_default()
    }
}

/// The KV keys of `replica`.
fn kv_keys(replica: &Replica) -> Vec<String> {
    replica.kv().list("").map(|e| e.key.to_owned()).collect()
}

/// Everything a node of a datacenter holds that its datacenter must agree on: records, KV
/// (keys and stamps) and global entries.
fn holdings(replica: &Replica) -> (murmur_catalog::Digest, Vec<(String, Hlc)>, Vec<Change>) {
    let kv = replica
        .shared()
        .prefix(KV_PREFIX)
        .map(|(k, e)| (k.clone(), *e.register.stamp()))
        .collect();
    (
        replica.records().digest(),
        kv,
        scope::global_entries(replica),
    )
}

impl Federation {
    /// Whether the running LAN nodes of datacenter `dc` hold the same records, KV and global
    /// entries.
    pub fn datacenter_agrees(&self, dc: usize) -> bool {
        let mut held = self
            .lan(dc)
            .into_iter()
            .filter_map(|i| self.member(i))
            .map(|m| holdings(m.replica()));
        let Some(first) = held.next() else {
            return true;
        };
        held.all(|h| h == first)
    }

    /// Whether every running node, LAN or WAN, of every datacenter holds the same global
    /// entries.
    pub fn globals_agree(&self) -> bool {
        let mut held = (0..self.net.slots.len()).filter_map(|i| self.member(i));
        let Some(first) = held.next().map(|m| scope::global_entries(m.replica())) else {
            return true;
        };
        held.all(|m| scope::global_entries(m.replica()) == first)
    }

    /// Follows the global write of `key` that node `at` just made until every running LAN
    /// node of every datacenter applied it.
    pub fn watch_global(&mut self, at: usize, key: &str) {
        let Some(entry) = self
            .member(at)
            .and_then(|m| m.replica().shared().entry(key))
        else {
            return;
        };
        let stamp = *entry.register.stamp();
        let everyone = (0..self.net.wan_from)
            .filter(|&i| self.member(i).is_some())
            .collect();
        self.spread
            .open
            .insert((key.to_owned(), stamp), (self.net.now, everyone));
    }

    /// Feeds the shared changes applied since the last look to the open watches.
    fn observe_applied(&mut self) {
        for (when, by, key, stamp) in std::mem::take(&mut self.net.applied) {
            if self.net.is_wan(by) {
                continue;
            }
            let watch = (key, stamp);
            if let Some((written, remaining)) = self.spread.open.get_mut(&watch) {
                remaining.remove(&by);
                if remaining.is_empty() {
                    let took = when - *written;
                    self.spread.open.remove(&watch);
                    self.spread.samples.push(took);
                }
            }
        }
    }

    /// One client operation at a random running LAN node: a KV write (its datacenter's
    /// keys), a service registration or deregistration (its own record), or an intention
    /// (global).
    fn operate(&mut self, rng: &mut StdRng, n: usize) {
        let running: Vec<usize> = (0..self.net.wan_from)
            .filter(|&i| self.member(i).is_some())
            .collect();
        let at = running[rng.random_range(0..running.len())];
        let dc = dc_name(self.net.datacenter_of(at));
        match rng.random_range(0..10) {
            0..6 => {
                // KV stays in its datacenter: keys name the datacenter that wrote them.
                let key = format!("{dc}/k{}", rng.random_range(0..20));
                let value = KvValue {
                    flags: 0,
                    value: n.to_string().into_bytes(),
                };
                self.net
                    .call(at, |m| {
                        m.write(|r, now| r.kv_write(&key, Some(value), None, now))
                    })
                    .expect("a plain write is always accepted");
            }
            6..8 => {
                let id = format!("svc{}", rng.random_range(0..4));
                let register = rng.random_bool(0.7);
                self.net.call(at, |m| {
                    m.write(|r, _| {
                        let Some(mut record) = r.own_record().cloned() else {
                            return;
                        };
                        if register {
                            let service = murmur_catalog::Service {
                                id: id.as_str().into(),
                                name: id.as_str().into(),
                                port: 80,
                                ..Default::default()
                            };
                            record.services.insert(id.as_str().into(), service);
                        } else {
                            record.services.remove(id.as_str());
                        }
                        r.set_own_record(Some(record));
                    })
                });
            }
            _ => {
                let source = format!("s{}", rng.random_range(0..6));
                let destination = format!("d{}", rng.random_range(0..6));
                let action = if rng.random_bool(0.5) {
                    Action::Allow
                } else {
                    Action::Deny
                };
                self.net.call(at, |m| {
                    m.write(|r, now| {
                        r.put_intention(Intention::new(&source, &destination, action), now)
                    })
                });
            }
        }
    }

    /// Client operations every 200 ms for `span`.
    fn workload(&mut self, rng: &mut StdRng, span: Duration, ops: &mut usize) {
        let until = self.net.now + span;
        while self.net.now < until {
            self.operate(rng, *ops);
            *ops += 1;
            self.run_for(Duration::from_millis(200));
        }
    }

    /// A `?dc=` read from every running LAN node to every datacenter; a violation if one was
    /// answered by a node of another datacenter than the one asked.
    fn ask_all(&self, asks: &mut (usize, usize)) -> Result<(), String> {
        let dcs = self.config.datacenters;
        let running = (0..self.net.wan_from).filter(|&i| self.member(i).is_some());
        for (from, target) in running.flat_map(|i| (0..dcs).map(move |dc| (i, dc))) {
            let key = format!("{}/k{}", dc_name(target), from % 20);
            match self.ask(from, target, &key) {
                Answer::Answered { by, .. } if self.net.datacenter_of(by) != target => {
                    return Err(format!(
                        "node-{from} asked {} and node-{by} of another datacenter answered",
                        dc_name(target)
                    ));
                }
                Answer::Answered { .. } => asks.0 += 1,
                Answer::Refused(_) => asks.1 += 1,
            }
        }
        Ok(())
    }

    /// The first violation of data staying home: a KV key or a node record of another
    /// datacenter in a LAN node's replica, or any KV key or record in a WAN member's.
    fn foreign_data(&self) -> Option<String> {
        for i in (0..self.net.slots.len()).filter(|&i| self.member(i).is_some()) {
            let replica = self.member(i).expect("running").replica();
            let dc = self.net.datacenter_of(i);
            let wan = self.net.is_wan(i);
            let home = format!("{}/", dc_name(dc));
            if let Some(key) = kv_keys(replica)
                .into_iter()
                .find(|k| wan || !k.starts_with(&home))
            {
                return Some(format!("node-{i} of {} holds KV key {key}", dc_name(dc)));
            }
            let foreign = replica.records().iter().map(|(name, _)| name).find(|name| {
                wan || name
                    .strip_prefix("node-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_none_or(|n| self.net.datacenter_of(n) != dc)
            });
            if let Some(name) = foreign {
                return Some(format!(
                    "node-{i} of {} holds the record of {name}",
                    dc_name(dc)
                ));
            }
        }
        None
    }
}

/// Global writes followed until every LAN node applied them: (key, stamp) → (written at,
/// nodes yet to apply it).
#[derive(Default)]
struct Spread {
    open: BTreeMap<(String, Hlc), (Duration, BTreeSet<usize>)>,
    samples: Vec<Duration>,
}

/// What one seeded federated run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationReport {
    /// The seed.
    pub seed: u64,
    /// How the WAN was cut.
    pub cut: WanCut,
    /// Virtual time the federation took to form.
    pub formed_in: Duration,
    /// Bytes the WAN members sent per datacenter and second while nothing was written
    /// (membership, coordinates and anti-entropy digests).
    pub wan_bytes_per_dc_s: u64,
    /// Time for a global write (an intention) to reach every LAN node of every datacenter.
    pub global_write: Percentiles,
    /// Failure declarations made by LAN nodes while the WAN was cut (must be 0).
    pub lan_failures_during_cut: usize,
    /// `?dc=` reads answered and refused.
    pub asks: (usize, usize),
    /// Virtual time after the heal until every global key was identical everywhere.
    pub converged_in: Duration,
    /// Virtual time until a crashed gateway's datacenter ran all its gateways again.
    pub replaced_in: Duration,
    /// The most WAN members that ran at once.
    pub most_wan_members: usize,
    /// Global changes offered to the other pool, and those that were news there.
    pub relayed: (u64, u64),
    /// The network's trace: equal for equal seeds.
    pub trace: u64,
}

/// A broken federation invariant, with the seed that shows it.
pub type Violation = String;

/// How long a datacenter may take to agree with itself, and all to agree after a heal.
const AGREE_WITHIN: Duration = Duration::from_secs(180);

/// One seeded run: form; measure the idle WAN traffic and the spread of global writes; write
/// (KV in each datacenter, registrations, intentions anywhere, a CA root per datacenter) and
/// ask across datacenters; cut the WAN (whole, between two, or one way) while writing on;
/// heal; converge; crash a gateway and restart it. Every federation invariant is checked on
/// the way; the first broken one is the error.
pub fn run(config: FederationConfig) -> Result<FederationReport, Violation> {
    run_with_progress(config, |_| {})
}

/// [`run`], telling `progress` the name of each phase as it starts (forming, idle WAN,
/// global writes, workload, WAN cut, heal, gateway crash), for runs long enough to watch.
pub fn run_with_progress(
    config: FederationConfig,
    mut progress: impl FnMut(&'static str),
) -> Result<FederationReport, Violation> {
    let seed = config.seed;
    let fail = |what: String| format!("seed {seed}: {what}");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fed0);
    progress("forming the datacenters and the WAN pool");
    let mut f = Federation::form(config)?;
    let formed_in = f.net.now;
    let dcs = f.config.datacenters;
    let mut asks = (0, 0);
    let mut ops = 0;

    // Idle WAN traffic, then the spread of global writes to every node of every datacenter.
    progress("measuring the idle WAN traffic, then following global writes");
    let (bytes_before, quiet) = (f.net.wan_bytes, f.config.quiet_for);
    f.run_for(quiet);
    let wan_bytes_per_dc_s =
        (f.net.wan_bytes - bytes_before) / (dcs as u64 * quiet.as_secs().max(1));
    for n in 0..f.config.global_writes {
        let at = rng.random_range(0..f.net.wan_from);
        let (source, destination) = (format!("spread-{n}"), "db".to_owned());
        f.net.call(at, |m| {
            m.write(|r, now| {
                r.put_intention(Intention::new(&source, &destination, Action::Allow), now)
            })
        });
        f.watch_global(at, &Intention::key(&source, &destination));
        f.run_for(Duration::from_millis(500));
    }
    f.run_until(Duration::from_secs(60), |f| f.spread.open.is_empty());
    if !f.spread.open.is_empty() {
        return Err(fail(format!(
            "{} global writes had not reached every node a minute later",
            f.spread.open.len()
        )));
    }
    let global_write = Percentiles::of(std::mem::take(&mut f.spread.samples));

    // Each datacenter's first node holds a root of its own datacenter.
    progress("writing and asking across datacenters");
    for dc in 0..dcs {
        let root = CaRoot {
            id: format!("root-{dc}"),
            name: dc_name(dc),
            cert_pem: "pem".into(),
            created_ms: 1,
            not_before_s: 0,
            not_after_s: u64::MAX / 1000,
        };
        f.net.call(dc, |m| {
            m.write(|r, now| r.put_ca_root(&dc_name(dc), root, now))
        });
    }
    f.workload(&mut rng, Duration::from_secs(10), &mut ops);
    f.ask_all(&mut asks).map_err(fail)?;

    progress("cutting the WAN");
    // The WAN cut: every datacenter keeps its own reads and writes (they reach all its
    // nodes), signs with its own root, and its LAN pool sees no failure.
    let cut = f
        .config
        .cut
        .unwrap_or_else(|| match rng.random_range(0..3) {
            0 => WanCut::Whole,
            kind => {
                let a = rng.random_range(0..dcs);
                let b = (a + rng.random_range(1..dcs)) % dcs;
                if kind == 1 {
                    WanCut::Between(a, b)
                } else {
                    WanCut::OneWay(a, b)
                }
            }
        });
    f.net.failure_log.clear();
    f.cut(cut);
    let cut_for = f.config.cut_for;
    f.workload(&mut rng, cut_for, &mut ops);
    f.ask_all(&mut asks).map_err(fail)?;
    f.run_until(AGREE_WITHIN, |f| (0..dcs).all(|dc| f.datacenter_agrees(dc)))
        .ok_or_else(|| {
            fail(format!(
                "a datacenter did not agree with itself during {cut:?}"
            ))
        })?;
    let lan_failures_during_cut = f
        .net
        .failure_log
        .iter()
        .filter(|(_, by, _, _)| !f.net.is_wan(*by))
        .count();
    if lan_failures_during_cut > 0 {
        return Err(fail(format!(
            "{lan_failures_during_cut} LAN failure declarations during a WAN cut ({cut:?})"
        )));
    }
    for dc in 0..dcs {
        for i in f.lan(dc) {
            let holds = f
                .member(i)
                .expect("no LAN fault in this phase")
                .replica()
                .ca_roots()
                .any(|r| r.datacenter == Some(dc_name(dc).as_str()));
            if !holds {
                return Err(fail(format!(
                    "node-{i} lacks its datacenter's root during the cut"
                )));
            }
        }
    }

    progress("healing the WAN and waiting for agreement");
    // Heal: every global key becomes identical everywhere; every datacenter agrees with
    // itself; no datacenter holds another's data.
    f.net.heal();
    f.workload(&mut rng, Duration::from_secs(5), &mut ops);
    let converged_in = f
        .run_until(AGREE_WITHIN, |f| {
            f.globals_agree() && (0..dcs).all(|dc| f.datacenter_agrees(dc)) && f.wan_formed()
        })
        .ok_or_else(|| {
            fail(format!(
                "no agreement {AGREE_WITHIN:?} after the heal of {cut:?}"
            ))
        })?;
    if let Some(violation) = f.foreign_data() {
        return Err(fail(violation));
    }
    let summarized = f.member(0).expect("running").replica().summaries().count();
    if summarized != dcs {
        return Err(fail(format!(
            "{summarized} datacenter summaries after the heal, not {dcs}"
        )));
    }
    f.ask_all(&mut asks).map_err(fail)?;

    progress("crashing a gateway, then restarting it");
    // A crashed gateway is replaced; restarted, it does not displace its successor.
    let dc = rng.random_range(0..dcs);
    let gateways = f.gateways_of(dc);
    let victim = gateways[rng.random_range(0..gateways.len())] - f.net.wan_from;
    f.crash(victim);
    let bound =
        f.net.config.failure_detection_bound(f.config.nodes_per_dc) + Duration::from_secs(30);
    let replaced_in = f
        .run_until(bound, |f| {
            f.wan_formed() && f.gateways_of(dc).len() == f.gateways_wanted(dc)
        })
        .ok_or_else(|| {
            fail(format!(
                "node-{victim}, a gateway of {}, not replaced within {bound:?}",
                dc_name(dc)
            ))
        })?;
    f.restart(victim).map_err(fail)?;
    f.run_for(Duration::from_secs(20));
    if f.member(f.net.wan_from + victim).is_some() && f.config.nodes_per_dc > f.config.gateways {
        return Err(fail(format!(
            "the restarted node-{victim} displaced a serving gateway"
        )));
    }
    let most = dcs * (f.config.gateways.min(f.config.nodes_per_dc) + 1);
    if f.most_wan_members > most {
        return Err(fail(format!(
            "{} WAN members at once, more than {most} (K per datacenter plus one handover each)",
            f.most_wan_members
        )));
    }
    Ok(FederationReport {
        seed,
        cut,
        formed_in,
        wan_bytes_per_dc_s,
        global_write,
        lan_failures_during_cut,
        asks,
        converged_in,
        replaced_in,
        most_wan_members: f.most_wan_members,
        relayed: f.net.relayed,
        trace: f.net.trace_hash(),
    })
}
