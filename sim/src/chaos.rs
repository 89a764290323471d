//! Seeded chaos runs: a cluster on the virtual network under a random workload (KV writes and
//! deletes, service registrations) and random faults (partitions in halves, asymmetric and of
//! one node; crashes and restarts with and without data; stalled event loops; datagram loss up
//! to 10% and duplication up to 5%; clock skew), then a heal and quiet period, with the
//! invariants checked during and after.
//!
//! Invariants:
//! - after the heal, every live node sees every other alive and all agree on every query
//!   answer (KV listing, catalog, the digests of records and shared data);
//! - no acknowledged write is lost: each one is present at the end or superseded by a later
//!   write of its key (writes of a node that later lost its data are exempt);
//! - a node's modify index never goes backwards, also across restarts with data.
//!
//! False failure declarations are counted, not forbidden: after a partition heals, the news
//! that one side declared the other down still spreads (SWIM's `Down` is final, and push-pull
//! carries it up to a period later), so a node untouched by any fault for 30 s can still be
//! declared failed and must rejoin. `sim/tests/membership.rs` holds the strict check: no false
//! failure under 10% loss with no other fault.

use std::collections::BTreeMap;
use std::time::Duration;

use murmur_catalog::{Hlc, KvValue, Service};
use murmur_gossip::{GossipConfig, Keyring, MemberStatus};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::net::{Net, cluster_keyed};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosConfig {
    /// Cluster size.
    pub nodes: usize,
    /// The seed: one seed, one run.
    pub seed: u64,
    /// Virtual time with workload and faults, before the heal.
    pub duration: Duration,
}

/// What a run found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Hash of everything that happened, in order: equal for equal seeds.
    pub trace_hash: u64,
    /// Client writes acknowledged.
    pub writes: usize,
    /// Faults injected.
    pub faults: usize,
    /// Virtual time from the heal until all nodes agreed (None: they never did).
    pub converged_after: Option<Duration>,
    /// Datagrams sent per node per virtual second.
    pub datagrams_per_node_second: f64,
    /// Datagram bytes sent per node per virtual second.
    pub bytes_per_node_second: f64,
    /// Datagrams the network delivered twice.
    pub duplicates: u64,
    /// Failure declarations about a node's current life that no fault had touched for 30 s
    /// (mostly news from a healed partition; see the module docs).
    pub false_failures: u64,
    /// Broken invariants, each said in a sentence.
    pub violations: Vec<String>,
}

/// Longest quiet period allowed for convergence after the heal.
const QUIESCE_LIMIT: Duration = Duration::from_secs(180);

struct Run {
    net: Net,
    rng: StdRng,
    config: ChaosConfig,
    generation: Vec<u64>,
    /// key → stamps of acknowledged writes of it (by nodes that kept their data).
    acked: BTreeMap<String, Vec<(usize, Hlc)>>,
    last_index: Vec<u64>,
    violations: Vec<String>,
    writes: usize,
    faults: usize,
    partitioned_until: Option<Duration>,
    crashed: BTreeMap<usize, (Duration, bool)>,
}

/// Runs one seeded chaos scenario.
pub fn run(config: ChaosConfig) -> Report {
    let gossip = GossipConfig {
        reap_after: Duration::from_secs(3600),
        ..GossipConfig::lan("sim")
    };
    let mut run = Run {
        // Plaintext: sealing every datagram was a quarter of the run time, and encryption
        // has its own tests; everything else is the agent's code path.
        net: cluster_keyed(config.nodes, config.seed, gossip, &Keyring::new(None)),
        rng: StdRng::seed_from_u64(config.seed ^ 0x5eed),
        config,
        generation: vec![1; config.nodes],
        acked: BTreeMap::new(),
        last_index: vec![0; config.nodes],
        violations: Vec::new(),
        writes: 0,
        faults: 0,
        partitioned_until: None,
        crashed: BTreeMap::new(),
    };
    for i in 0..config.nodes {
        let skew = run.rng.random_range(-2_000..=2_000);
        run.net.skew_ms.insert(i, skew);
    }
    let step = Duration::from_millis(250);
    let end = run.net.now + config.duration;
    while run.net.now < end {
        run.tick();
        run.net.run_for(step);
    }
    let converged_after = run.heal_and_check();
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&run.net.trace, &mut hasher);
    std::hash::Hash::hash(&run.writes, &mut hasher);
    for i in run.net.running() {
        let node = run.net.slots[i].node.as_ref().expect("running");
        std::hash::Hash::hash(node.replica().shared().digests(), &mut hasher);
    }
    let node_seconds = config.nodes as f64 * run.net.now.as_secs_f64();
    Report {
        trace_hash: std::hash::Hasher::finish(&hasher),
        writes: run.writes,
        faults: run.faults,
        converged_after,
        datagrams_per_node_second: run.net.datagrams_sent as f64 / node_seconds,
        bytes_per_node_second: run.net.bytes_sent as f64 / node_seconds,
        duplicates: run.net.duplicates,
        false_failures: run.net.false_failures,
        violations: run.violations,
    }
}

impl Run {
    /// One step of workload and faults.
    fn tick(&mut self) {
        let live = self.net.running();
        for _ in 0..self.rng.random_range(0..3) {
            let at = live[self.rng.random_range(0..live.len())];
            self.client_op(at);
        }
        self.restart_due();
        if self
            .partitioned_until
            .is_some_and(|until| self.net.now >= until)
        {
            self.net.heal();
            self.partitioned_until = None;
        }
        if self.rng.random_bool(0.02) {
            self.fault();
        }
    }

    fn client_op(&mut self, at: usize) {
        let roll = self.rng.random_range(0..10);
        let key = format!("k{}", self.rng.random_range(0..20));
        if roll < 7 {
            let value = (roll < 6).then(|| KvValue {
                flags: 0,
                value: vec![b'v'; 16],
            });
            let ok = self
                .net
                .call(at, |n| n.write(|r, now| r.kv_write(&key, value, None, now)));
            assert_eq!(ok, Ok(true), "a plain write is always accepted");
            let stamp = *self
                .net
                .node(at)
                .replica()
                .shared()
                .entry(&format!("kv/{key}"))
                .expect("just written")
                .register
                .stamp();
            self.acked.entry(key).or_default().push((at, stamp));
            self.writes += 1;
        } else {
            let id = format!("svc-{}", roll);
            self.net.call(at, |n| {
                n.write(|r, _| {
                    let mut record = r.own_record().cloned().unwrap_or_default();
                    if record.services.remove(&id).is_none() {
                        record.services.insert(id.clone(), service(&id));
                    }
                    r.set_own_record(Some(record));
                })
            });
        }
        let index = self.net.node(at).replica().index();
        if index < self.last_index[at] {
            self.violations.push(format!(
                "node {at}'s modify index went back from {} to {index} at {:?}",
                self.last_index[at], self.net.now
            ));
        }
        self.last_index[at] = index;
    }

    fn fault(&mut self) {
        self.faults += 1;
        let n = self.config.nodes;
        match self.rng.random_range(0..8) {
            0 if self.partitioned_until.is_none() => {
                let split = self.rng.random_range(1..n);
                let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| i < split);
                self.net.partition(&a, &b);
                let lasts = Duration::from_secs(self.rng.random_range(5..40));
                self.partitioned_until = Some(self.net.now + lasts);
            }
            1 => {
                let live = self.net.running();
                // Keep a majority up so the cluster keeps working around the crash.
                if live.len() * 2 > n + 1 {
                    let victim = live[self.rng.random_range(0..live.len())];
                    let with_data = self.rng.random_bool(0.8);
                    self.net.crash(victim);
                    let back = self.net.now + Duration::from_secs(self.rng.random_range(2..30));
                    self.crashed.insert(victim, (back, with_data));
                }
            }
            2 => self.net.loss = self.rng.random_range(0.0..0.1),
            3 => self.net.duplicate = self.rng.random_range(0.0..0.05),
            4 if self.partitioned_until.is_none() => {
                // Asymmetric: one node stops hearing some others, who still hear it.
                let deaf = self.rng.random_range(0..n);
                for from in 0..n {
                    if from != deaf && self.rng.random_bool(0.5) {
                        self.net.block_one_way(from, deaf);
                    }
                }
                let lasts = Duration::from_secs(self.rng.random_range(5..30));
                self.partitioned_until = Some(self.net.now + lasts);
            }
            5 if self.partitioned_until.is_none() => {
                self.net.isolate(self.rng.random_range(0..n));
                let lasts = Duration::from_secs(self.rng.random_range(5..30));
                self.partitioned_until = Some(self.net.now + lasts);
            }
            6 => {
                let stalled = self.rng.random_range(0..n);
                let span = Duration::from_millis(self.rng.random_range(500..8_000));
                self.net.pause(stalled, span);
            }
            _ => {
                self.net.loss = 0.0;
                self.net.duplicate = 0.0;
            }
        }
    }

    fn restart_due(&mut self) {
        let due: Vec<(usize, bool)> = self
            .crashed
            .iter()
            .filter(|(_, (at, _))| *at <= self.net.now)
            .map(|(&i, &(_, with_data))| (i, with_data))
            .collect();
        for (i, with_data) in due {
            self.crashed.remove(&i);
            self.restart(i, with_data);
        }
    }

    fn restart(&mut self, i: usize, with_data: bool) {
        self.generation[i] += 1;
        if with_data {
            self.net
                .restart_with_data(i, self.generation[i], Keyring::new(None));
            let index = self.net.node(i).replica().index();
            if index < self.last_index[i] {
                self.violations.push(format!(
                    "node {i}'s modify index went back across a restart: {} → {index}",
                    self.last_index[i]
                ));
            }
        } else {
            self.net.start(i, self.generation[i], Keyring::new(None));
            self.last_index[i] = 0;
            // Its unreplicated writes died with its disk: no longer owed.
            for stamps in self.acked.values_mut() {
                stamps.retain(|(writer, _)| *writer != i);
            }
        }
        let seeds: Vec<usize> = self.net.running().into_iter().filter(|&s| s != i).collect();
        for seed in seeds {
            if self.net.join(i, seed).is_ok() {
                break;
            }
        }
    }

    /// Heals everything, lets the cluster settle, and checks the end state.
    fn heal_and_check(&mut self) -> Option<Duration> {
        self.net.heal();
        self.net.loss = 0.0;
        self.net.duplicate = 0.0;
        self.net.paused_until.clear();
        let crashed: Vec<usize> = self.crashed.keys().copied().collect();
        for i in crashed {
            self.crashed.remove(&i);
            self.restart(i, true);
        }
        let n = self.config.nodes;
        let converged = self
            .net
            .run_until(QUIESCE_LIMIT, |net| net.all_alive() && agree(net));
        if converged.is_none() {
            let alive = (0..n)
                .filter(|&i| self.net.all_see(i, MemberStatus::Alive))
                .count();
            self.violations.push(format!(
                "no agreement {QUIESCE_LIMIT:?} after the heal ({alive} of {n} seen alive by all, \
                 replicas agree: {})",
                agree(&self.net)
            ));
        }
        self.check_acked();
        converged
    }

    fn check_acked(&mut self) {
        let Some(&probe) = self.net.running().first() else {
            return;
        };
        let replica = self.net.slots[probe]
            .node
            .as_ref()
            .expect("running")
            .replica();
        for (key, stamps) in &self.acked {
            let Some(newest) = stamps.iter().map(|(_, s)| s).max() else {
                continue;
            };
            let held = replica
                .shared()
                .entry(&format!("kv/{key}"))
                .map(|e| *e.register.stamp());
            if held.is_none_or(|h| h < *newest) {
                self.violations.push(format!(
                    "acknowledged write of {key} at {newest:?} lost (node {probe} holds {held:?})"
                ));
            }
        }
    }
}

/// Whether every running node gives the same answers.
fn agree(net: &Net) -> bool {
    let mut answers = net.running().into_iter().map(|i| {
        let replica = net.slots[i].node.as_ref().expect("running").replica();
        (*replica.shared().digests(), replica.records().digest())
    });
    let Some(first) = answers.next() else {
        return true;
    };
    answers.all(|a| a == first)
}

fn service(id: &str) -> Service {
    Service {
        id: id.into(),
        name: id.into(),
        tags: vec![],
        address: String::new(),
        port: 80,
        meta: BTreeMap::new(),
        weight_passing: 1,
        weight_warning: 1,
    }
}
