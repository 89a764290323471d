//! murmur's deterministic simulator: the same sans-IO cores the agent runs ([`murmur_gossip::Node`]
//! with its [`murmur_catalog::Replica`]), driven by a virtual network and a virtual clock, with
//! faults chosen by a seed. No threads, no wall clock, no tokio: one seed gives one run.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chaos;
pub mod net;

pub use chaos::{ChaosConfig, Report, run};
pub use net::{Net, WALL_CLOCK_BASE_MS, addr, cluster, cluster_keyed, cluster_with, key};
