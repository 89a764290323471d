//! Prepared queries (Consul's `/v1/query`): a named, stored service lookup with filters and
//! a failover policy, global data like intentions (written in any datacenter, converging in
//! all). This module holds the stored shape; parsing Consul's JSON, templates and execution
//! are the agent's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key prefix of prepared queries.
pub const QUERY_PREFIX: &str = "query/";

/// One prepared query as stored and replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PreparedQuery {
    /// Its id (a random UUID).
    pub id: String,
    /// Its name (may be empty; a template's is the prefix it matches).
    pub name: String,
    /// The service looked up.
    pub service: String,
    /// Fail over to this many nearest other datacenters.
    pub nearest_n: u32,
    /// Then to these, in order.
    pub datacenters: Vec<String>,
    /// Only instances whose every check passes (else: all but critical).
    pub only_passing: bool,
    /// Checks that do not count for health.
    pub ignore_check_ids: Vec<String>,
    /// Sort by round trip from this node (`_agent`: the asking agent).
    pub near: String,
    /// Tags every instance must carry (`!tag`: must not).
    pub tags: Vec<String>,
    /// Node meta every instance's node must have.
    pub node_meta: BTreeMap<String, String>,
    /// Service meta every instance must have.
    pub service_meta: BTreeMap<String, String>,
    /// The TTL of DNS answers (Go duration text; empty: the agent's).
    pub dns_ttl: String,
    /// Present when the query is a template (`name_prefix_match`).
    pub template: Option<QueryTemplate>,
}

/// A template: the query answers every name its name is a prefix of.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueryTemplate {
    /// A regular expression matched against the full name asked for: `${match(N)}`.
    pub regexp: String,
    /// Tags that render empty are dropped.
    pub remove_empty_tags: bool,
}

impl PreparedQuery {
    /// The shared-map key of the query `id`.
    pub fn key(id: &str) -> String {
        format!("{QUERY_PREFIX}{id}")
    }

    /// Whether this query belongs under `key`.
    pub(crate) fn fits(&self, key: &str) -> bool {
        !self.id.is_empty() && !self.id.contains('/') && key == Self::key(&self.id)
    }

    /// Rough size in bytes, for budgets.
    pub(crate) fn weight(&self) -> usize {
        let texts = [
            &self.id,
            &self.name,
            &self.service,
            &self.near,
            &self.dns_ttl,
        ];
        64 + texts.iter().map(|t| t.len()).sum::<usize>()
            + self
                .datacenters
                .iter()
                .chain(&self.tags)
                .chain(&self.ignore_check_ids)
                .map(String::len)
                .sum::<usize>()
            + self
                .node_meta
                .iter()
                .chain(&self.service_meta)
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.template.as_ref().map_or(0, |t| t.regexp.len())
    }
}
