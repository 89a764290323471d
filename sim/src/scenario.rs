//! Scenarios: what a simulator run does — the network it runs on, the client workload, random
//! faults and faults scripted at given times. Written in TOML (see `sim/scenarios/`, which
//! are also the built-in scenarios `murmur sim --scenario NAME` knows).
//!
//! Units are in the field names (`_s` seconds, `_ms` milliseconds) so a file reads without a
//! manual. Unknown fields are refused, so a typo is an error rather than a silent default.

use std::time::Duration;

use serde::Deserialize;

use crate::federation::{FederationConfig, WanCut};
use crate::net::LinkModel;

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario is for, in a sentence.
    #[serde(default)]
    pub description: String,
    /// Cluster size, when the command line does not give one.
    #[serde(default)]
    pub nodes: Option<usize>,
    /// Seconds of workload and faults before the final heal, when the command line does not
    /// give a duration.
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// The network.
    #[serde(default)]
    pub network: Network,
    /// Client operations.
    #[serde(default)]
    pub workload: Workload,
    /// Random faults.
    #[serde(default)]
    pub faults: RandomFaults,
    /// Faults at given times.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Present: the datacenters are federated (a LAN pool each, linked by the WAN pool of
    /// their gateways) and the run is `federation::run`'s, not the chaos run; `workload`,
    /// `faults`, `events` and `duration_s` do not apply.
    #[serde(default)]
    pub federation: Option<FederationScenario>,
}

/// How a federated run goes (see `federation::run`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationScenario {
    /// Gateways each datacenter runs (`--wan-gateways`).
    pub gateways: usize,
    /// How the WAN is cut.
    pub cut: CutKind,
    /// How long the WAN stays cut.
    pub cut_for_s: f64,
    /// Seconds of nothing written after forming, to measure the idle WAN traffic.
    pub quiet_s: f64,
    /// Global writes followed to every node.
    pub global_writes: usize,
}

impl Default for FederationScenario {
    fn default() -> Self {
        Self {
            gateways: murmur_federation::gateways::DEFAULT_GATEWAYS,
            cut: CutKind::Random,
            cut_for_s: 30.0,
            quiet_s: 30.0,
            global_writes: 20,
        }
    }
}

/// Which WAN cut a federated run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutKind {
    /// One of the others, chosen by the seed (and the datacenters too).
    Random,
    /// No datacenter reaches another.
    Whole,
    /// The first two datacenters do not reach each other.
    Between,
    /// What the first datacenter's gateways send to the second's is lost.
    OneWay,
}

/// The network model (see [`LinkModel`]); loss and duplication apply to every datagram.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Datacenters the nodes are spread over, round-robin.
    pub datacenters: usize,
    /// One-way latency inside a datacenter.
    pub lan_latency_ms: f64,
    /// Uniform jitter on top, inside a datacenter.
    pub lan_jitter_ms: f64,
    /// One-way latency between datacenters.
    pub wan_latency_ms: f64,
    /// Uniform jitter on top, between datacenters.
    pub wan_jitter_ms: f64,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram arrives twice.
    pub duplicate: f64,
    /// Probability a datagram is held back so later ones overtake it.
    pub reorder: f64,
    /// Longest hold-back of a reordered datagram.
    pub reorder_delay_ms: f64,
    /// Egress bandwidth of each node in bytes per second (0: unlimited).
    pub bandwidth_bytes_per_s: u64,
    /// Each node's clock is off by up to this much, either way (chosen per node).
    pub max_skew_ms: i64,
    /// Each node's clock drifts by up to this many parts per million, either way.
    pub max_drift_ppm: i64,
}

impl Default for Network {
    fn default() -> Self {
        let link = LinkModel::default();
        Self {
            datacenters: link.datacenters,
            lan_latency_ms: millis(link.lan_latency),
            lan_jitter_ms: millis(link.lan_jitter),
            wan_latency_ms: millis(link.wan_latency),
            wan_jitter_ms: millis(link.wan_jitter),
            loss: 0.0,
            duplicate: 0.0,
            reorder: link.reorder,
            reorder_delay_ms: millis(link.reorder_delay),
            bandwidth_bytes_per_s: link.bandwidth,
            max_skew_ms: 2_000,
            max_drift_ppm: 100,
        }
    }
}

impl Network {
    /// The link model this describes.
    pub fn link(&self) -> LinkModel {
        LinkModel {
            datacenters: self.datacenters.max(1),
            lan_latency: from_millis(self.lan_latency_ms),
            lan_jitter: from_millis(self.lan_jitter_ms),
            wan_latency: from_millis(self.wan_latency_ms),
            wan_jitter: from_millis(self.wan_jitter_ms),
            reorder: self.reorder,
            reorder_delay: from_millis(self.reorder_delay_ms),
            bandwidth: self.bandwidth_bytes_per_s,
        }
    }
}

/// Client operations, issued at random live nodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Operations per second across the cluster.
    pub ops_per_s: f64,
    /// Relative weight of KV writes and deletes.
    pub kv: u32,
    /// Relative weight of service registrations and deregistrations.
    pub services: u32,
    /// Relative weight of health check status flaps.
    pub checks: u32,
    /// Relative weight of intention writes and deletes.
    pub intentions: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            ops_per_s: 4.0,
            kv: 6,
            services: 2,
            checks: 1,
            intentions: 1,
        }
    }
}

/// Random faults: each step of 250 ms injects one with probability `per_s / 4`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomFaults {
    /// Random faults per second (0: none).
    pub per_s: f64,
    /// Longest a crashed node stays down.
    pub max_down_s: f64,
    /// Largest random datagram loss switched on.
    pub max_loss: f64,
}

impl Default for RandomFaults {
    fn default() -> Self {
        Self {
            per_s: 0.08,
            max_down_s: 60.0,
            max_loss: 0.10,
        }
    }
}

/// One fault at a given time. (Unknown fields are refused by [`Fault`], which receives
/// every field but `at_s`.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Seconds after the cluster formed.
    pub at_s: f64,
    /// What happens.
    #[serde(flatten)]
    pub fault: Fault,
}

/// A scripted fault. Nodes are named by index; fractions pick the first nodes by index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case", deny_unknown_fields)]
#[allow(missing_docs)] // the fields are named for what they hold; each variant says how
pub enum Fault {
    /// The first `fraction` of the nodes and the rest stop hearing each other for `for_s`.
    Partition { fraction: f64, for_s: f64 },
    /// The partition above, switched on and off every `every_s` until `for_s` passed.
    Flap {
        fraction: f64,
        every_s: f64,
        for_s: f64,
    },
    /// Node `node` cut off from all others for `for_s`.
    Isolate { node: usize, for_s: f64 },
    /// The first `fraction` of the nodes (at least one, if positive) crash, and restart after
    /// `for_s` (from their data unless `lose_data`). The process dies and its host answers
    /// for it (port unreachable) unless `silent_host`: then the host is gone too (power,
    /// kernel panic, cable).
    Crash {
        fraction: f64,
        for_s: f64,
        #[serde(default)]
        lose_data: bool,
        #[serde(default)]
        silent_host: bool,
    },
    /// Node `node`'s event loop stalls for `for_s`.
    Pause { node: usize, for_s: f64 },
    /// Datagram loss switches to `probability` for `for_s`.
    Loss { probability: f64, for_s: f64 },
    /// Node `node`'s clock jumps by `ms`.
    Skew { node: usize, ms: i64 },
}

impl Fault {
    /// How long the fault lasts once it starts.
    pub fn lasts(&self) -> Duration {
        match self {
            Fault::Partition { for_s, .. }
            | Fault::Flap { for_s, .. }
            | Fault::Isolate { for_s, .. }
            | Fault::Crash { for_s, .. }
            | Fault::Pause { for_s, .. }
            | Fault::Loss { for_s, .. } => secs(*for_s),
            Fault::Skew { .. } => Duration::ZERO,
        }
    }
}

/// Errors reading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML or not a scenario.
    #[error("scenario {name}: {message}")]
    Invalid {
        /// Where it came from.
        name: String,
        /// What was wrong.
        message: String,
    },
    /// Neither a built-in name nor a readable file.
    #[error(
        "no scenario {0:?}: give a built-in name ({names}) or a path to a .toml file",
        names = BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    Unknown(String),
}

/// The built-in scenarios, by name: the files in `sim/scenarios/`.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("chaos", include_str!("../scenarios/chaos.toml")),
    ("quiet", include_str!("../scenarios/quiet.toml")),
    ("partition", include_str!("../scenarios/partition.toml")),
    ("flapping", include_str!("../scenarios/flapping.toml")),
    ("crashes", include_str!("../scenarios/crashes.toml")),
    ("churn", include_str!("../scenarios/churn.toml")),
    ("silent", include_str!("../scenarios/silent.toml")),
    ("wan", include_str!("../scenarios/wan.toml")),
    ("lossy", include_str!("../scenarios/lossy.toml")),
    ("federation", include_str!("../scenarios/federation.toml")),
];

impl Scenario {
    /// Parses a scenario written in TOML; `name` says where it came from in errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Invalid {
            name: name.into(),
            message: e.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|message| ScenarioError::Invalid {
                name: name.into(),
                message,
            })?;
        Ok(scenario)
    }

    /// A built-in scenario by name, or else a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((name, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(name, text);
        }
        match std::fs::read_to_string(name_or_path) {
            Ok(text) => Self::parse(name_or_path, &text),
            Err(_) => Err(ScenarioError::Unknown(name_or_path.into())),
        }
    }

    /// The default scenario: random chaos.
    pub fn chaos() -> Self {
        Self::load("chaos").expect("the built-in chaos scenario parses")
    }

    fn validate(&self) -> Result<(), String> {
        let net = &self.network;
        let probabilities = [
            ("network.loss", net.loss),
            ("network.duplicate", net.duplicate),
            ("network.reorder", net.reorder),
            ("faults.max_loss", self.faults.max_loss),
        ];
        for (what, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{what} = {p} must be a probability from 0 to 1"));
            }
        }
        let times = [
            ("network.lan_latency_ms", net.lan_latency_ms),
            ("network.lan_jitter_ms", net.lan_jitter_ms),
            ("network.wan_latency_ms", net.wan_latency_ms),
            ("network.wan_jitter_ms", net.wan_jitter_ms),
            ("network.reorder_delay_ms", net.reorder_delay_ms),
            ("workload.ops_per_s", self.workload.ops_per_s),
            ("faults.per_s", self.faults.per_s),
            ("faults.max_down_s", self.faults.max_down_s),
        ];
        for (what, t) in times {
            if !(0.0..=1e6).contains(&t) {
                return Err(format!("{what} = {t} must be from 0 to 1000000"));
            }
        }
        if self.duration_s.is_some_and(|d| !(d > 0.0 && d <= 1e6)) {
            return Err("duration_s must be positive (seconds)".into());
        }
        if self.nodes.is_some_and(|n| n < 2) {
            return Err("nodes must be at least 2".into());
        }
        for (i, event) in self.events.iter().enumerate() {
            event
                .validate()
                .map_err(|e| format!("events[{i}] (at_s = {}): {e}", event.at_s))?;
        }
        if let Some(federation) = &self.federation {
            self.validate_federation(federation)?;
        }
        Ok(())
    }

    fn validate_federation(&self, federation: &FederationScenario) -> Result<(), String> {
        let unused = [
            ("[workload]", self.workload != Workload::default()),
            ("[faults]", self.faults != RandomFaults::default()),
            ("[[events]]", !self.events.is_empty()),
            ("duration_s", self.duration_s.is_some()),
        ];
        if let Some((what, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{what} does not apply to a federated run: it writes, cuts and crashes in its own \
                 phases; set [federation] (gateways, cut, cut_for_s, quiet_s, global_writes)"
            ));
        }
        if self.network.datacenters < 2 {
            return Err("[federation] needs network.datacenters of at least 2".into());
        }
        if federation.gateways == 0 {
            return Err("federation.gateways must be at least 1".into());
        }
        for (what, t) in [
            ("federation.cut_for_s", federation.cut_for_s),
            ("federation.quiet_s", federation.quiet_s),
        ] {
            if !(t > 0.0 && t <= 1e6) {
                return Err(format!("{what} = {t} must be positive and at most 1000000"));
            }
        }
        Ok(())
    }

    /// The federated run this scenario describes for `nodes` nodes in all (spread evenly over
    /// the datacenters) and `seed`; an error when it is no federation scenario or `nodes`
    /// does not spread evenly.
    pub fn federation_config(&self, nodes: usize, seed: u64) -> Result<FederationConfig, String> {
        let federation = self
            .federation
            .as_ref()
            .ok_or("the scenario has no [federation] section")?;
        let dcs = self.network.datacenters;
        if nodes < dcs || !nodes.is_multiple_of(dcs) {
            return Err(format!(
                "--nodes {nodes} must be a multiple of the scenario's {dcs} datacenters"
            ));
        }
        let cut = match federation.cut {
            CutKind::Random => None,
            CutKind::Whole => Some(WanCut::Whole),
            CutKind::Between => Some(WanCut::Between(0, 1)),
            CutKind::OneWay => Some(WanCut::OneWay(0, 1)),
        };
        Ok(FederationConfig {
            datacenters: dcs,
            nodes_per_dc: nodes / dcs,
            gateways: federation.gateways,
            seed,
            link: self.network.link(),
            loss: self.network.loss,
            cut,
            cut_for: secs(federation.cut_for_s),
            quiet_for: secs(federation.quiet_s),
            global_writes: federation.global_writes,
        })
    }
}

impl Event {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1e6).contains(&self.at_s) {
            return Err("at_s must be from 0 to 1000000".into());
        }
        let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
        match &self.fault {
            Fault::Partition { fraction, .. } | Fault::Crash { fraction, .. }
                if !fraction_ok(*fraction) =>
            {
                Err(format!("fraction = {fraction} must be from 0 to 1"))
            }
            Fault::Flap {
                fraction, every_s, ..
            } if !fraction_ok(*fraction) || *every_s <= 0.0 => Err(format!(
                "fraction = {fraction} must be from 0 to 1 and every_s = {every_s} positive"
            )),
            Fault::Loss { probability, .. } if !fraction_ok(*probability) => {
                Err(format!("probability = {probability} must be from 0 to 1"))
            }
            fault if !(0.0..=1e6).contains(&fault.lasts().as_secs_f64()) => {
                Err("for_s must be from 0 to 1000000".into())
            }
            _ => Ok(()),
        }
    }
}

/// Seconds as a duration (negative or not-a-number as zero).
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_default()
}

fn from_millis(ms: f64) -> Duration {
    secs(ms / 1000.0)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, _) in BUILT_IN {
            let scenario = Scenario::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !scenario.description.is_empty(),
                "{name} says what it is for"
            );
        }
    }

    #[test]
    fn mistakes_are_named() {
        let typo = Scenario::parse("t", "[network]\nlos = 0.1\n").unwrap_err();
        assert!(typo.to_string().contains("los"), "{typo}");
        let bad = Scenario::parse("t", "[network]\nloss = 2.0\n").unwrap_err();
        assert!(bad.to_string().contains("network.loss"), "{bad}");
        let event = "[[events]]\nat_s = 5\nfault = \"crash\"\nfraction = 1.5\nfor_s = 3\n";
        let bad = Scenario::parse("t", event).unwrap_err();
        assert!(bad.to_string().contains("events[0]"), "{bad}");
        let unknown = Scenario::load("no-such-scenario").unwrap_err();
        assert!(unknown.to_string().contains("chaos"), "{unknown}");
    }

    #[test]
    fn events_read_as_written() {
        let text =
            "[[events]]\nat_s = 30\nfault = \"flap\"\nfraction = 0.5\nevery_s = 4\nfor_s = 60\n";
        let scenario = Scenario::parse("t", text).unwrap();
        assert_eq!(
            scenario.events,
            vec![Event {
                at_s: 30.0,
                fault: Fault::Flap {
                    fraction: 0.5,
                    every_s: 4.0,
                    for_s: 60.0
                }
            }]
        );
    }
}
