//! Seeded runs of a [`Scenario`]: a cluster on the virtual network under the scenario's
//! workload (KV writes and deletes, service registrations and deregistrations, check flaps,
//! intention changes) and faults (random ones and scripted ones: partitions in halves,
//! flapping, one-way and of one node; crashes and restarts with and without data; stalled
//! event loops; loss; clock skew and drift), then a heal and a quiet period, with the
//! invariants checked during and after.
//!
//! Invariants:
//! - after the heal, every live node sees every other alive, and all give the same answer to
//!   every query (catalog with health, KV, intentions; and equal digests of all data);
//! - no acknowledged write is lost: each one is present at the end or superseded by a later
//!   write of its key (writes of a node that later lost its data are exempt);
//! - a crashed node is declared failed, within [`GossipConfig::failure_detection_bound`], by
//!   every node that no fault touched meanwhile;
//! - a node's modify index never goes backwards, also across restarts with data;
//! - queues and state stay bounded: member updates and known members by the cluster size,
//!   broadcasts by their cap, records by the cluster size, shared keys by the key space.
//!
//! False failure declarations are counted, not forbidden: after a partition heals, the news
//! that one side declared the other down still spreads (SWIM's `Down` is final, and push-pull
//! carries it up to a period later), so a node untouched by any fault for 30 s can still be
//! declared failed and must rejoin. `sim/tests/membership.rs` holds the strict check: no false
//! failure under 10% loss with no other fault.

use compact_str::CompactString;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use murmur_catalog::{Action, Check, Health, Hlc, Intention, KvValue, Service};
use murmur_gossip::{Backlogs, GossipConfig, Keyring, MemberStatus, PoolMember};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::measure::{Curve, DetectionCurve, Measurements, Percentiles};
use crate::net::{Net, form_cluster};
use crate::scenario::{Event, Fault, Scenario, secs};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosConfig {
    /// Cluster size.
    pub nodes: usize,
    /// The seed: one seed, one run.
    pub seed: u64,
    /// Virtual time with workload and faults, before the heal.
    pub duration: Duration,
    /// What happens during that time.
    pub scenario: Scenario,
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
    /// Time for a watched write to reach every running node.
    pub write_spread: Percentiles,
    /// Time for a restarted node to be seen alive by every running node.
    pub join_spread: Percentiles,
    /// Time for a crash to be declared by every node that had to declare it.
    pub failure_detection: Percentiles,
    /// The bound failure detection is held to.
    pub detection_bound: Duration,
    /// Datagrams sent per node per virtual second.
    pub datagrams_per_node_second: f64,
    /// Datagram bytes sent per node per virtual second.
    pub bytes_per_node_second: f64,
    /// Bytes of stream requests and replies per node per second (push-pulls, anti-entropy).
    pub stream_bytes_per_node_second: f64,
    /// Datagrams the network delivered twice.
    pub duplicates: u64,
    /// Failure declarations about a node's current life that no fault had touched for 30 s
    /// (mostly news from a healed partition; see the module docs).
    pub false_failures: u64,
    /// Suspicions of nodes no fault had touched for 30 s (as for `false_failures`).
    pub false_suspicions: u64,
    /// The largest queues any node held at the end of a step.
    pub max_backlogs: Backlogs,
    /// The spread of the first watched writes over time, for plots.
    pub curves: Vec<Curve>,
    /// How the first crashes came to be known over time, for plots.
    pub detection_curves: Vec<DetectionCurve>,
    /// Broken invariants, each said in a sentence.
    pub violations: Vec<String>,
}

/// Where a run is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Virtual time done.
    pub done: Duration,
    /// Virtual time of the workload phase (the quiet phase after it is not counted).
    pub total: Duration,
    /// Member updates the running nodes hold queued for gossip, all together: while a large
    /// cluster forms, every node queues nearly every join, and this is where the
    /// simulator's memory goes.
    pub queued_member_updates: usize,
    /// The most member updates one running node holds queued.
    pub largest_member_updates: usize,
}

/// Longest quiet period allowed for convergence after the heal.
const QUIESCE_LIMIT: Duration = Duration::from_secs(180);
/// One step of workload, faults and observation.
const STEP: Duration = Duration::from_millis(250);
/// KV keys the workload writes (so shared keys are bounded by this plus intentions).
const KEY_SPACE: usize = 20;
/// Services the workload names (intentions are between these).
const SERVICE_NAMES: [&str; 4] = ["web", "api", "db", "cache"];

struct Run {
    net: Net,
    rng: StdRng,
    config: ChaosConfig,
    scenario: Scenario,
    generation: Vec<u64>,
    /// key → stamps of acknowledged writes of it (by nodes that kept their data).
    acked: BTreeMap<String, Vec<(usize, Hlc)>>,
    last_index: Vec<u64>,
    violations: BTreeSet<String>,
    writes: usize,
    faults: usize,
    /// When the current partition (of any kind) ends.
    partitioned_until: Option<Duration>,
    /// A flapping partition: the two sides, how often it toggles, when it toggles next.
    flap: Option<(Vec<usize>, Vec<usize>, Duration, Duration)>,
    /// When the current extra loss ends.
    loss_until: Option<Duration>,
    crashed: BTreeMap<usize, (Duration, bool)>,
    scripted: Vec<Event>,
    measured: Measurements,
    detection_bound: Duration,
    max_backlogs: Backlogs,
    /// Member updates queued at the last observation: all nodes', and the most at one.
    queued_member_updates: (usize, usize),
}

/// Runs one seeded scenario.
pub fn run(config: ChaosConfig) -> Report {
    run_with_progress(config, |_| {})
}

/// Runs one seeded scenario, telling `progress` after every virtual second.
pub fn run_with_progress(config: ChaosConfig, mut progress: impl FnMut(Progress)) -> Report {
    assert!(
        config.scenario.federation.is_none(),
        "a scenario with [federation] runs with federation::run (Scenario::federation_config)"
    );
    let gossip = GossipConfig {
        reap_after: Duration::from_secs(3600),
        ..GossipConfig::lan("sim")
    };
    let detection_bound = gossip.failure_detection_bound(config.nodes);
    let scenario = config.scenario.clone();
    // Plaintext: sealing every datagram was a quarter of the run time, and encryption has
    // its own tests; everything else is the agent's code path.
    let mut net = Net::new(config.seed);
    net.config = gossip;
    // Forming 1,000 nodes alone makes a million member events, and no check reads them.
    net.stop_keeping_events();
    let mut net = form_cluster(net, config.nodes, &Keyring::new(None));
    net.link = scenario.network.link();
    net.loss = scenario.network.loss;
    net.duplicate = scenario.network.duplicate;
    let mut run = Run {
        net,
        rng: StdRng::seed_from_u64(config.seed ^ 0x5eed),
        generation: vec![1; config.nodes],
        acked: BTreeMap::new(),
        last_index: vec![0; config.nodes],
        violations: BTreeSet::new(),
        writes: 0,
        faults: 0,
        partitioned_until: None,
        flap: None,
        loss_until: None,
        crashed: BTreeMap::new(),
        scripted: scenario.events.clone(),
        measured: Measurements::default(),
        detection_bound,
        max_backlogs: Backlogs {
            member_updates: 0,
            broadcasts: 0,
            outputs: 0,
            known_members: 0,
        },
        queued_member_updates: (0, 0),
        scenario,
        config,
    };
    run.set_clocks();
    let start = run.net.now;
    let end = start + run.config.duration;
    let mut told = Duration::ZERO;
    while run.net.now < end {
        run.tick(run.net.now - start);
        run.net.run_for(STEP);
        run.observe();
        let done = run.net.now - start;
        if done >= told + Duration::from_secs(1) {
            told = done;
            let (queued_member_updates, largest_member_updates) = run.queued_member_updates;
            progress(Progress {
                done,
                total: run.config.duration,
                queued_member_updates,
                largest_member_updates,
            });
        }
    }
    let converged_after = run.heal_and_check();
    run.report(converged_after)
}

impl Run {
    fn set_clocks(&mut self) {
        let network = &self.scenario.network;
        let (skew, drift) = (network.max_skew_ms, network.max_drift_ppm);
        for i in 0..self.config.nodes {
            let s = self.rng.random_range(-skew..=skew);
            let d = self.rng.random_range(-drift..=drift);
            self.net.skew_ms.insert(i, s);
            self.net.drift_ppm.insert(i, d);
        }
    }

    /// One step of workload and faults; `elapsed` is the time since the workload started.
    fn tick(&mut self, elapsed: Duration) {
        let expected = self.scenario.workload.ops_per_s * STEP.as_secs_f64();
        let mut ops = expected.floor() as usize;
        if self.rng.random_bool(expected.fract()) {
            ops += 1;
        }
        for _ in 0..ops {
            let live = self.net.running();
            let at = live[self.rng.random_range(0..live.len())];
            self.client_op(at);
        }
        self.restart_due();
        self.end_due_faults();
        let due: Vec<Event> = self
            .scripted
            .extract_if(.., |e| secs(e.at_s) <= elapsed)
            .collect();
        for event in due {
            self.scripted_fault(&event.fault);
        }
        let per_step = self.scenario.faults.per_s * STEP.as_secs_f64();
        if per_step > 0.0 && self.rng.random_bool(per_step.min(1.0)) {
            self.random_fault();
        }
    }

    fn end_due_faults(&mut self) {
        let now = self.net.now;
        if let Some((a, b, every, next)) = &mut self.flap
            && now >= *next
        {
            *next = now + *every;
            let (a, b) = (a.clone(), b.clone());
            if self.net.is_partitioned(a[0], b[0]) {
                self.net.heal();
            } else {
                self.net.partition(&a, &b);
            }
        }
        if self.partitioned_until.is_some_and(|until| now >= until) {
            self.net.heal();
            self.partitioned_until = None;
            self.flap = None;
        }
        if self.loss_until.is_some_and(|until| now >= until) {
            self.net.loss = self.scenario.network.loss;
            self.loss_until = None;
        }
    }

    fn client_op(&mut self, at: usize) {
        let workload = &self.scenario.workload;
        let weights = [
            workload.kv,
            workload.services,
            workload.checks,
            workload.intentions,
        ];
        let total: u32 = weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut roll = self.rng.random_range(0..total);
        let kind = weights
            .iter()
            .position(|&w| {
                let hit = roll < w;
                roll = roll.saturating_sub(w);
                hit
            })
            .unwrap_or(0);
        match kind {
            0 => self.kv_op(at),
            1 => self.service_op(at),
            2 => self.check_op(at),
            _ => self.intention_op(at),
        }
        let index = self.net.node(at).replica().index();
        if index < self.last_index[at] {
            self.violations.insert(format!(
                "node {at}'s modify index went back from {} to {index} at {:?}",
                self.last_index[at], self.net.now
            ));
        }
        self.last_index[at] = index;
    }

    fn kv_op(&mut self, at: usize) {
        let key = format!("k{}", self.rng.random_range(0..KEY_SPACE));
        let value = self.rng.random_bool(0.85).then(|| KvValue {
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
        self.measured.write(self.net.now, at, key.clone(), stamp);
        self.acked.entry(key).or_default().push((at, stamp));
        self.writes += 1;
    }

    /// Registers a service instance on `at`, or deregisters it when it is there.
    fn service_op(&mut self, at: usize) {
        let name = SERVICE_NAMES[self.rng.random_range(0..SERVICE_NAMES.len())];
        self.update_record(at, |record| {
            let id = format!("{name}-1");
            if record.services.remove(id.as_str()).is_none() {
                record
                    .services
                    .insert(id.as_str().into(), service(&id, name));
            } else {
                record.checks.retain(|_, c| c.service_id != id);
            }
        });
    }

    /// Flips the health check of one of `at`'s services between passing and critical.
    fn check_op(&mut self, at: usize) {
        self.update_record(at, |record| {
            let Some(id) = record.services.keys().next().cloned() else {
                return;
            };
            let check_id: CompactString = format!("service:{id}").into();
            let status = match record.checks.get(&check_id).map(|c| c.status) {
                Some(Health::Passing) => Health::Critical,
                _ => Health::Passing,
            };
            record.checks.insert(
                check_id.clone(),
                Check {
                    id: check_id,
                    name: format!("{id} health").into(),
                    status,
                    output: String::new(),
                    service_id: id,
                },
            );
        });
    }

    fn intention_op(&mut self, at: usize) {
        let pick = |rng: &mut StdRng| SERVICE_NAMES[rng.random_range(0..SERVICE_NAMES.len())];
        let (source, destination) = (pick(&mut self.rng), pick(&mut self.rng));
        let action = if self.rng.random_bool(0.5) {
            Action::Allow
        } else {
            Action::Deny
        };
        let delete = self.rng.random_bool(0.3);
        self.net.call(at, |n| {
            n.write(|r, now| {
                if delete {
                    r.delete_intention(source, destination, now);
                } else {
                    r.put_intention(Intention::new(source, destination, action), now);
                }
            })
        });
    }

    fn update_record(&mut self, at: usize, change: impl FnOnce(&mut murmur_catalog::NodeRecord)) {
        self.net.call(at, |n| {
            n.write(|r, _| {
                let mut record = r.own_record().cloned().unwrap_or_default();
                change(&mut record);
                r.set_own_record(Some(record));
            })
        });
    }

    fn random_fault(&mut self) {
        self.faults += 1;
        let n = self.config.nodes;
        let quiet = self.partitioned_until.is_none();
        let kind = self.rng.random_range(0..10);
        match kind {
            0 if quiet => {
                let split = self.rng.random_range(1..n);
                let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| i < split);
                let lasts = self.rng.random_range(5.0..40.0);
                self.partition(&a, &b, lasts);
            }
            1 => {
                let live = self.net.running();
                // Keep a majority up so the cluster keeps working around the crash.
                if live.len() * 2 > n + 1 {
                    let victim = live[self.rng.random_range(0..live.len())];
                    let with_data = self.rng.random_bool(0.8);
                    let host_answers = self.rng.random_bool(0.5);
                    let down = self
                        .rng
                        .random_range(2.0..self.scenario.faults.max_down_s.max(3.0));
                    self.crash(victim, down, with_data, host_answers);
                }
            }
            2 => {
                let max = self.scenario.faults.max_loss;
                self.measured.disturbed();
                self.net.loss = self.rng.random_range(0.0..=max);
                self.loss_until = Some(self.net.now + secs(self.rng.random_range(5.0..60.0)));
            }
            3 => self.net.duplicate = self.rng.random_range(0.0..0.05),
            4 if quiet => {
                // Asymmetric: one node stops hearing some others, who still hear it.
                let deaf = self.rng.random_range(0..n);
                self.measured.disturbed();
                for from in 0..n {
                    if from != deaf && self.rng.random_bool(0.5) {
                        self.net.block_one_way(from, deaf);
                    }
                }
                self.measured.excuse(&[deaf]);
                let lasts = secs(self.rng.random_range(5.0..30.0));
                self.partitioned_until = Some(self.net.now + lasts);
            }
            5 if quiet => {
                let (node, lasts) = (
                    self.rng.random_range(0..n),
                    self.rng.random_range(5.0..30.0),
                );
                self.isolate(node, lasts);
            }
            6 => {
                let (stalled, lasts) =
                    (self.rng.random_range(0..n), self.rng.random_range(0.5..8.0));
                self.pause(stalled, lasts);
            }
            7 if quiet => {
                let split = self.rng.random_range(1..n);
                let every = self.rng.random_range(1.0..6.0);
                let lasts = self.rng.random_range(10.0..60.0);
                self.flapping(split, every, lasts);
            }
            8 => {
                let node = self.rng.random_range(0..n);
                let jump = self.rng.random_range(-5_000..=5_000);
                *self.net.skew_ms.entry(node).or_default() += jump;
            }
            _ => {
                self.net.loss = self.scenario.network.loss;
                self.net.duplicate = self.scenario.network.duplicate;
            }
        }
    }

    fn scripted_fault(&mut self, fault: &Fault) {
        self.faults += 1;
        let n = self.config.nodes;
        let first = |fraction: f64| ((fraction * n as f64).round() as usize).clamp(1, n - 1);
        match *fault {
            Fault::Partition { fraction, for_s } => {
                let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| i < first(fraction));
                self.partition(&a, &b, for_s);
            }
            Fault::Flap {
                fraction,
                every_s,
                for_s,
            } => self.flapping(first(fraction), every_s, for_s),
            Fault::Isolate { node, for_s } => self.isolate(node.min(n - 1), for_s),
            Fault::Crash {
                fraction,
                for_s,
                lose_data,
                silent_host,
            } => {
                // A positive fraction crashes at least one node, as a split cuts at least one.
                let count = (fraction * n as f64).round() as usize;
                let victims: Vec<usize> = self
                    .net
                    .running()
                    .into_iter()
                    .take(if fraction > 0.0 { count.max(1) } else { 0 })
                    .collect();
                for victim in victims {
                    self.crash(victim, for_s, !lose_data, !silent_host);
                }
            }
            Fault::Pause { node, for_s } => self.pause(node.min(n - 1), for_s),
            Fault::Loss { probability, for_s } => {
                self.measured.disturbed();
                self.net.loss = probability;
                self.loss_until = Some(self.net.now + secs(for_s));
            }
            Fault::Skew { node, ms } => {
                *self.net.skew_ms.entry(node.min(n - 1)).or_default() += ms;
            }
        }
    }

    fn partition(&mut self, a: &[usize], b: &[usize], for_s: f64) {
        self.measured.disturbed();
        self.net.heal();
        self.net.partition(a, b);
        self.measured.excuse(a);
        self.measured.excuse(b);
        self.partitioned_until = Some(self.net.now + secs(for_s));
    }

    fn flapping(&mut self, split: usize, every_s: f64, for_s: f64) {
        let (a, b): (Vec<usize>, Vec<usize>) = (0..self.config.nodes).partition(|&i| i < split);
        self.partition(&a, &b, for_s);
        let every = secs(every_s);
        self.flap = Some((a, b, every, self.net.now + every));
    }

    fn isolate(&mut self, node: usize, for_s: f64) {
        self.measured.disturbed();
        self.net.heal();
        self.net.isolate(node);
        let everyone: Vec<usize> = (0..self.config.nodes).collect();
        self.measured.excuse(&everyone);
        self.partitioned_until = Some(self.net.now + secs(for_s));
    }

    fn pause(&mut self, node: usize, for_s: f64) {
        self.measured.disturbed();
        self.net.pause(node, secs(for_s));
        self.measured.excuse(&[node]);
    }

    /// Crashes `victim` for `down_s`; `host_answers`: only its process died, and its host
    /// answers datagrams for it.
    fn crash(&mut self, victim: usize, down_s: f64, with_data: bool, host_answers: bool) {
        if self.crashed.contains_key(&victim) {
            return;
        }
        // foca renews a node's identity when it hears itself declared down, so the life that
        // crashes may be newer than the one we started.
        let life = self.net.node(victim).node().identity().generation;
        self.generation[victim] = self.generation[victim].max(life);
        // The bound holds for a healthy cluster: nothing else going on, and every member
        // seeing every other alive (a partition that just healed leaves both sides
        // declaring each other down for a while).
        let strict = self.partitioned_until.is_none()
            && self.loss_until.is_none()
            && (0..self.config.nodes).all(|i| !self.net.is_impaired(i))
            && self.net.all_alive();
        self.measured
            .crash(&self.net, victim, life, strict, host_answers);
        if host_answers {
            self.net.kill(victim);
        } else {
            self.net.crash(victim);
        }
        self.measured.excuse(&[victim]);
        self.crashed
            .insert(victim, (self.net.now + secs(down_s), with_data));
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
        self.measured.crash_ended(i);
        self.generation[i] += 1;
        if with_data {
            self.net
                .restart_with_data(i, self.generation[i], Keyring::new(None));
            let index = self.net.node(i).replica().index();
            if index < self.last_index[i] {
                self.violations.insert(format!(
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
        self.measured.join(self.net.now, i, self.generation[i]);
    }

    /// Checks the watches and the bounds on queues and state after a step.
    fn observe(&mut self) {
        let late = self.measured.observe(&mut self.net, self.detection_bound);
        self.violations.extend(late);
        let n = self.config.nodes;
        let shared_bound = KEY_SPACE + SERVICE_NAMES.len() * SERVICE_NAMES.len();
        let mut queued = (0, 0);
        for i in self.net.running() {
            let node = self.net.running_member(i);
            let b = node.node().backlogs();
            queued = (queued.0 + b.member_updates, queued.1.max(b.member_updates));
            let m = &mut self.max_backlogs;
            m.member_updates = m.member_updates.max(b.member_updates);
            m.broadcasts = m.broadcasts.max(b.broadcasts);
            m.outputs = m.outputs.max(b.outputs);
            m.known_members = m.known_members.max(b.known_members);
            let replica = node.replica();
            let bounds = [
                ("member updates", b.member_updates, n),
                ("known members", b.known_members, n - 1),
                ("queued broadcasts", b.broadcasts, 4096 + 1024),
                ("records", replica.records().len(), n),
                ("shared keys", replica.shared().len(), shared_bound),
            ];
            for (what, held, bound) in bounds {
                if held > bound {
                    self.violations
                        .insert(format!("node {i} holds {held} {what}, more than {bound}"));
                }
            }
        }
        self.queued_member_updates = queued;
    }

    /// Heals everything, lets the cluster settle, and checks the end state.
    fn heal_and_check(&mut self) -> Option<Duration> {
        self.net.heal();
        self.flap = None;
        self.partitioned_until = None;
        self.net.loss = 0.0;
        self.net.duplicate = 0.0;
        self.net.paused_until.clear();
        let crashed: Vec<usize> = self.crashed.keys().copied().collect();
        for i in crashed {
            self.crashed.remove(&i);
            self.restart(i, true);
        }
        let n = self.config.nodes;
        let start = self.net.now;
        let mut converged = None;
        while self.net.now - start <= QUIESCE_LIMIT {
            if self.net.all_alive() && agree(&self.net) {
                converged = Some(self.net.now - start);
                break;
            }
            self.net.run_for(STEP);
            self.observe();
        }
        if converged.is_none() {
            let alive = (0..n)
                .filter(|&i| self.net.all_see(i, MemberStatus::Alive))
                .count();
            self.violations.insert(format!(
                "no agreement {QUIESCE_LIMIT:?} after the heal ({alive} of {n} seen alive by all, \
                 replicas agree: {})",
                agree(&self.net)
            ));
        } else {
            self.check_answers();
        }
        self.check_acked();
        converged
    }

    /// Every running node gives the same answer to every query.
    fn check_answers(&mut self) {
        let answers: Vec<(usize, u64)> = self
            .net
            .running()
            .into_iter()
            .map(|i| (i, answers(self.net.running_member(i))))
            .collect();
        if let Some(&(first, expected)) = answers.first()
            && let Some(&(other, _)) = answers.iter().find(|(_, a)| *a != expected)
        {
            self.violations.insert(format!(
                "nodes {first} and {other} agree on digests but answer queries differently"
            ));
        }
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
                self.violations.insert(format!(
                    "acknowledged write of {key} at {newest:?} lost (node {probe} holds {held:?})"
                ));
            }
        }
    }

    fn report(self, converged_after: Option<Duration>) -> Report {
        let mut hasher = std::hash::DefaultHasher::new();
        self.net.trace_hash().hash(&mut hasher);
        self.writes.hash(&mut hasher);
        for i in self.net.running() {
            let node = self.net.running_member(i);
            node.replica().shared().digests().hash(&mut hasher);
        }
        let node_seconds = self.config.nodes as f64 * self.net.now.as_secs_f64();
        let measured = self.measured;
        Report {
            trace_hash: hasher.finish(),
            writes: self.writes,
            faults: self.faults,
            converged_after,
            write_spread: Percentiles::of(measured.write_spread),
            join_spread: Percentiles::of(measured.join_spread),
            failure_detection: Percentiles::of(measured.detection),
            detection_bound: self.detection_bound,
            datagrams_per_node_second: self.net.datagrams_sent as f64 / node_seconds,
            bytes_per_node_second: self.net.bytes_sent as f64 / node_seconds,
            stream_bytes_per_node_second: self.net.stream_bytes as f64 / node_seconds,
            duplicates: self.net.duplicates,
            false_failures: self.net.false_failures,
            false_suspicions: self.net.false_suspicions,
            max_backlogs: self.max_backlogs,
            curves: measured.curves,
            detection_curves: measured.detection_curves,
            violations: self.violations.into_iter().collect(),
        }
    }
}

/// Whether every running node holds the same data (equal digests).
fn agree(net: &Net) -> bool {
    let mut digests = net.running().into_iter().map(|i| {
        let replica = net.running_member(i).replica();
        (*replica.shared().digests(), replica.records().digest())
    });
    let Some(first) = digests.next() else {
        return true;
    };
    digests.all(|d| d == first)
}

/// A hash of the node's answers to the queries clients make: the catalog with each instance's
/// health, the whole KV store, the intentions.
fn answers(node: &PoolMember) -> u64 {
    let replica = node.replica();
    let failed = node.failed_owners();
    let catalog = replica.catalog(&failed);
    let mut hasher = std::hash::DefaultHasher::new();
    for (name, tags) in catalog.services() {
        (name, tags).hash(&mut hasher);
        for instance in catalog.instances(name, &[]) {
            (instance.node, instance.service, instance.health.as_str()).hash(&mut hasher);
        }
    }
    for entry in replica.kv().list("") {
        (entry.key, entry.value).hash(&mut hasher);
    }
    for intention in replica.intentions() {
        intention.hash(&mut hasher);
    }
    hasher.finish()
}

fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.into(),
        name: name.into(),
        tags: vec![],
        address: CompactString::default(),
        port: 80,
        meta: BTreeMap::new(),
        weight_passing: 1,
        weight_warning: 1,
    }
}
