//! What a run measures while it runs: how long writes take to reach every node, how long a
//! restarted node takes to be seen alive by all, how long a crash takes to be declared by all.
//! Watches are checked after every step of the run, so their resolution is one step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use murmur_catalog::Hlc;
use murmur_gossip::MemberStatus;

use crate::net::Net;

/// Most writes watched at once: each watch costs a lookup per node per step.
const MAX_OPEN_WRITE_WATCHES: usize = 16;
/// Writes whose spread is kept point by point, for plots.
const MAX_CURVES: usize = 24;

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// How many were measured.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (all zero when there are none).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).max(1) - 1;
            samples.get(i).copied().unwrap_or_default()
        };
        Self {
            count: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return write!(f, "none measured");
        }
        let s = |d: Duration| d.as_secs_f64();
        write!(
            f,
            "p50 {:.2}s p90 {:.2}s p99 {:.2}s max {:.2}s (n={})",
            s(self.p50),
            s(self.p90),
            s(self.p99),
            s(self.max),
            self.count
        )
    }
}

/// The spread of one write: the fraction of running nodes holding it, over time since it was
/// acknowledged (one point per node, at the virtual time it applied the write).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// When the write was acknowledged (virtual time since the start).
    pub issued_at: Duration,
    /// (seconds since the write, fraction of nodes holding it or a newer write of its key).
    pub points: Vec<(f64, f64)>,
}

/// The detection of one crash: the fraction of the nodes that had to declare it that did, over
/// time since the crash (one point per node, at the virtual time it declared it).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionCurve {
    /// Whether the crashed node's host answered for it (a killed process), rather than falling
    /// silent (a host that stopped or was cut off).
    pub host_answered: bool,
    /// `issued_at` is the crash's time.
    pub curve: Curve,
}

impl Curve {
    /// The curve of an event at `issued_at` that reached each of some nodes after `times`
    /// (sorted): one point per node, the last at 1.
    fn of(issued_at: Duration, times: &[Duration]) -> Self {
        let n = times.len() as f64;
        Self {
            issued_at,
            points: times
                .iter()
                .enumerate()
                .map(|(k, t)| (t.as_secs_f64(), (k + 1) as f64 / n))
                .collect(),
        }
    }
}

struct WriteWatch {
    key: String,
    stamp: Hlc,
    at: Duration,
    /// Nodes holding it (or a newer write of its key), with when they got it.
    holders: BTreeMap<usize, Duration>,
    curve: Option<Curve>,
}

struct JoinWatch {
    node: usize,
    generation: u64,
    at: Duration,
}

struct CrashWatch {
    node: usize,
    generation: u64,
    at: Duration,
    /// Nodes that must declare it: running when it crashed and left alone since.
    observers: BTreeSet<usize>,
    /// Whether the bound applies: no fault but crashes touched the cluster since (a deaf
    /// node declaring others down, say, floods everyone with updates and slows detection).
    strict: bool,
    /// Whether its host answers for it (see [`DetectionCurve::host_answered`]).
    host_answered: bool,
}

/// Everything measured in one run.
#[derive(Default)]
pub struct Measurements {
    writes: Vec<WriteWatch>,
    joins: Vec<JoinWatch>,
    crashes: Vec<CrashWatch>,
    /// Failure declarations seen so far: (name, generation) → observers.
    declared: BTreeMap<(String, u64), BTreeMap<usize, Duration>>,
    /// Time for a write to reach every running node.
    pub write_spread: Vec<Duration>,
    /// Time for a restarted node to be seen alive by every running node.
    pub join_spread: Vec<Duration>,
    /// Time for a crash to be declared by every node that had to declare it.
    pub detection: Vec<Duration>,
    /// Curves of the first writes, for plots.
    pub curves: Vec<Curve>,
    /// Curves of the first crashes' detection, for plots: half of [`MAX_CURVES`] for each
    /// kind of crash.
    pub detection_curves: Vec<DetectionCurve>,
}

impl Measurements {
    /// Watches the write of `key` with `stamp` that node `writer` just acknowledged, if few
    /// enough are open.
    pub fn write(&mut self, now: Duration, writer: usize, key: String, stamp: Hlc) {
        if self.writes.len() >= MAX_OPEN_WRITE_WATCHES {
            return;
        }
        let curve = (self.curves.len() + self.writes.len() < MAX_CURVES).then(|| Curve {
            issued_at: now,
            points: Vec::new(),
        });
        self.writes.push(WriteWatch {
            key: format!("kv/{key}"),
            stamp,
            at: now,
            holders: BTreeMap::from([(writer, now)]),
            curve,
        });
    }

    /// Watches node `node`, just started in `generation`, until all see it alive.
    pub fn join(&mut self, now: Duration, node: usize, generation: u64) {
        self.joins.retain(|j| j.node != node);
        self.joins.push(JoinWatch {
            node,
            generation,
            at: now,
        });
    }

    /// Watches the crash of `node` in `generation` (call it just before the crash) until every
    /// other running node declared it; `strict` when no other fault is in progress,
    /// `host_answered` when only the process dies.
    pub fn crash(
        &mut self,
        net: &Net,
        node: usize,
        generation: u64,
        strict: bool,
        host_answered: bool,
    ) {
        let observers = net
            .running()
            .into_iter()
            .filter(|&o| o != node && !net.is_impaired(o))
            .collect();
        self.crashes.push(CrashWatch {
            node,
            generation,
            at: net.now,
            observers,
            strict,
            host_answered,
        });
    }

    /// A fault other than a crash began: crashes being detected now are measured but not
    /// held to the bound.
    pub fn disturbed(&mut self) {
        for watch in &mut self.crashes {
            watch.strict = false;
        }
    }

    /// Stops waiting for the declaration of a crash: the node came back (before the bound,
    /// or [`Measurements::observe`] would have reported it).
    pub fn crash_ended(&mut self, node: usize) {
        self.crashes.retain(|c| c.node != node);
    }

    /// Drops observers that a fault touched: they are excused from declaring a crash.
    pub fn excuse(&mut self, nodes: &[usize]) {
        for watch in &mut self.crashes {
            for n in nodes {
                watch.observers.remove(n);
            }
        }
    }

    /// Checks every watch against the network as it is now; returns the crashes that were
    /// not declared by all within `bound` although the node stayed down that long, as
    /// sentences.
    pub fn observe(&mut self, net: &mut Net, bound: Duration) -> Vec<String> {
        self.read_failure_log(net);
        let running = net.running();
        self.observe_writes(net, &running);
        self.observe_joins(net, &running);
        self.observe_crashes(net, bound)
    }

    fn read_failure_log(&mut self, net: &mut Net) {
        for (at, observer, name, generation) in std::mem::take(&mut net.failure_log) {
            self.declared
                .entry((name, generation))
                .or_default()
                .entry(observer)
                .or_insert(at);
        }
    }

    /// Follows watched writes through the nodes' applied changes, to the exact virtual time
    /// each node got them.
    fn observe_writes(&mut self, net: &mut Net, running: &[usize]) {
        let applied = std::mem::take(&mut net.applied);
        for (at, node, key, stamp) in applied {
            for watch in &mut self.writes {
                if watch.key == key && stamp >= watch.stamp {
                    watch.holders.entry(node).or_insert(at);
                }
            }
        }
        let mut done = Vec::new();
        for (i, watch) in self.writes.iter_mut().enumerate() {
            let holding = running
                .iter()
                .filter_map(|n| watch.holders.get(n))
                .collect::<Vec<_>>();
            if holding.len() < running.len() {
                continue;
            }
            let mut times: Vec<Duration> = holding.into_iter().map(|t| *t - watch.at).collect();
            times.sort();
            if let Some(curve) = &mut watch.curve {
                *curve = Curve::of(watch.at, &times);
            }
            done.push((i, times.last().copied().unwrap_or_default()));
        }
        for (i, took) in done.into_iter().rev() {
            let watch = self.writes.remove(i);
            self.write_spread.push(took);
            self.curves.extend(watch.curve);
        }
    }

    fn observe_joins(&mut self, net: &Net, running: &[usize]) {
        let now = net.now;
        self.joins.retain(|watch| {
            if net.slots[watch.node].node.is_none() {
                return false; // crashed again before all saw it
            }
            let name = Net::identity(watch.node, 0).name.clone();
            let seen_by_all = running.iter().filter(|&&n| n != watch.node).all(|&n| {
                let node = net.running_member(n);
                node.node().peer(&name).is_some_and(|m| {
                    m.status == MemberStatus::Alive && m.identity.generation >= watch.generation
                })
            });
            if seen_by_all {
                self.join_spread.push(now - watch.at);
            }
            !seen_by_all
        });
    }

    fn observe_crashes(&mut self, net: &Net, bound: Duration) -> Vec<String> {
        let now = net.now;
        let mut violations = Vec::new();
        self.crashes.retain(|watch| {
            let name = Net::identity(watch.node, 0).name.to_string();
            let declared = self.declared.get(&(name, watch.generation));
            let by = |o: &usize| declared.and_then(|d| d.get(o)).copied();
            if watch.observers.is_empty() {
                // Every observer was excused (a partition of all, say): nothing to measure.
                return false;
            }
            let all_declared = watch.observers.iter().all(|o| by(o).is_some());
            if all_declared {
                // An observer may have declared this life down before it crashed (it was cut
                // off): that one knew at once.
                let mut times: Vec<Duration> = watch
                    .observers
                    .iter()
                    .filter_map(by)
                    .map(|t| t.saturating_sub(watch.at))
                    .collect();
                times.sort();
                self.detection
                    .push(times.last().copied().unwrap_or(Duration::ZERO));
                let kept = self
                    .detection_curves
                    .iter()
                    .filter(|d| d.host_answered == watch.host_answered)
                    .count();
                if kept < MAX_CURVES / 2 && !times.is_empty() {
                    self.detection_curves.push(DetectionCurve {
                        host_answered: watch.host_answered,
                        curve: Curve::of(watch.at, &times),
                    });
                }
                return false;
            }
            if now - watch.at > bound * 4 {
                return false; // not strict (or it would have been reported): stop waiting
            }
            if watch.strict && now - watch.at > bound {
                let missing: Vec<usize> = watch
                    .observers
                    .iter()
                    .copied()
                    .filter(|o| by(o).is_none())
                    .take(5)
                    .collect();
                violations.push(format!(
                    "node {} crashed at {:?} and was still not declared failed {bound:?} later \
                     by nodes {missing:?} (of {} that had to)",
                    watch.node,
                    watch.at,
                    watch.observers.len()
                ));
                return false;
            }
            true
        });
        violations
    }
}
