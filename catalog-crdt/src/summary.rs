//! A datacenter's catalog in brief, as global data: how many nodes it has and, per service,
//! how many instances and how many of them pass. Every datacenter holds every other's without
//! asking (each datacenter's gateways publish its own, `summary/<dc>`), and its size follows
//! the number of distinct services, not of agents, so what crosses the WAN does not grow with
//! a datacenter's size. Anything finer (which instances, where) is one `?dc=` away.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogView, Health};

/// Key prefix of datacenter summaries.
pub const SUMMARY_PREFIX: &str = "summary/";

/// Instances of one service in one datacenter.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ServiceCounts {
    /// Registered instances.
    pub instances: u32,
    /// Those whose checks (and node) all pass.
    pub passing: u32,
}

/// One datacenter's catalog in brief.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DcSummary {
    /// The datacenter.
    pub datacenter: String,
    /// Nodes in its catalog (agents and external nodes).
    pub nodes: u32,
    /// Per service name.
    pub services: BTreeMap<String, ServiceCounts>,
}

impl DcSummary {
    /// The shared-map key of `datacenter`'s summary.
    pub fn key(datacenter: &str) -> String {
        format!("{SUMMARY_PREFIX}{datacenter}")
    }

    /// The summary of `view`, the catalog of `datacenter`, in one pass over its nodes.
    pub fn of(datacenter: &str, view: &CatalogView<'_>) -> Self {
        let mut summary = Self {
            datacenter: datacenter.to_owned(),
            ..Self::default()
        };
        summary.nodes = view.nodes().count() as u32;
        for (name, counts) in view.service_summaries() {
            summary.services.insert(
                name.to_owned(),
                ServiceCounts {
                    instances: counts.instances.iter().sum::<usize>() as u32,
                    passing: counts.instances[Health::Passing as usize] as u32,
                },
            );
        }
        summary
    }

    /// Whether this summary belongs under `key`.
    pub(crate) fn fits(&self, key: &str) -> bool {
        !self.datacenter.is_empty()
            && !self.datacenter.contains('/')
            && key == Self::key(&self.datacenter)
    }

    /// Rough size in bytes, for budgets.
    pub(crate) fn weight(&self) -> usize {
        self.datacenter.len()
            + 8
            + self
                .services
                .keys()
                .map(|name| name.len() + 10)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{Check, NodeRecord, Replica, ReplicaConfig, Service};

    fn record(services: &[(&str, &str, Health)]) -> NodeRecord {
        let mut record = NodeRecord::default();
        for &(id, name, status) in services {
            record.services.insert(
                id.into(),
                Service {
                    id: id.into(),
                    name: name.into(),
                    ..Service::default()
                },
            );
            record.checks.insert(
                format!("service:{id}").into(),
                Check {
                    id: format!("service:{id}").into(),
                    name: id.into(),
                    status,
                    output: String::new(),
                    service_id: id.into(),
                },
            );
        }
        record
    }

    #[test]
    fn counts_instances_and_passing_ones_per_service_with_failed_nodes_critical() {
        let mut a = Replica::new("a", 1, 1, ReplicaConfig::default());
        a.set_own_record(Some(record(&[
            ("web-1", "web", Health::Passing),
            ("web-2", "web", Health::Critical),
            ("db-1", "db", Health::Passing),
        ])));
        let mut b = Replica::new("b", 2, 1, ReplicaConfig::default());
        b.set_own_record(Some(record(&[("web-3", "web", Health::Passing)])));
        for change in b.take_outbox() {
            a.apply(&change, 1).unwrap();
        }
        let failed: BTreeSet<String> = ["b".to_owned()].into();
        let summary = DcSummary::of("dc1", &a.catalog(&failed));
        assert_eq!(summary.nodes, 2);
        let counts = |s: &str| summary.services[s];
        assert_eq!(
            counts("web"),
            ServiceCounts {
                instances: 3,
                passing: 1
            },
            "web-2 fails its check, web-3's node failed"
        );
        assert_eq!(
            counts("db"),
            ServiceCounts {
                instances: 1,
                passing: 1
            }
        );
        assert!(summary.fits(&DcSummary::key("dc1")));
        assert!(!summary.fits(&DcSummary::key("dc2")));
        a.put_summary(summary.clone(), 5);
        let listed: Vec<_> = a.summaries().map(|(s, _)| s.clone()).collect();
        assert_eq!(listed, [summary]);
    }
}
