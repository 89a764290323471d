//! murmur's deterministic simulator: the same sans-IO cores the agent runs ([`murmur_gossip::PoolMember`]
//! with its [`murmur_catalog::Replica`]), driven by a virtual network and a virtual clock, with
//! faults chosen by a seed. No threads, no wall clock, no tokio: one seed gives one run.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chaos;
pub mod federation;
pub mod measure;
pub mod net;
pub mod scenario;

pub use chaos::{ChaosConfig, Progress, Report, run, run_with_progress};
pub use measure::{Curve, DetectionCurve, Percentiles};
pub use net::{
    LinkModel, Net, WALL_CLOCK_BASE_MS, addr, cluster, cluster_keyed, cluster_with, form_cluster,
    key, slot_of,
};
pub use scenario::{Scenario, ScenarioError};
