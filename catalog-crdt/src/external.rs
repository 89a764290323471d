//! External nodes: hosts no murmur agent runs (a managed database, a SaaS endpoint, a legacy
//! box), registered through Consul's `PUT /v1/catalog/register` by whoever knows about them.
//!
//! They have no owner to write a record, and they must outlive whichever agent registered them,
//! so they are *shared* data: one last-writer-wins register per part, under
//! `external/<node>/node`, `external/<node>/service/<id>` and `external/<node>/check/<id>`.
//! One register per part (not one per node) lets two agents register different services on the
//! same external node at once and keep both. Each replica keeps a [`NodeRecord`] per external
//! node derived from those parts ([`ExternalNodes`]), refreshed on every change under the node's
//! prefix, so catalog queries read external and agent-run nodes alike.
//!
//! A service or check whose node part is absent (its node was deregistered concurrently, or
//! has not arrived yet) is not shown: a node without an address cannot be dialled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Check, NodeRecord, Service};
use crate::shared::SharedMap;
use crate::value::Value;

/// Key prefix of external nodes' parts.
pub const EXTERNAL_PREFIX: &str = "external/";

/// An external node's own fields: what `Node`, `Address`, `NodeMeta` and `TaggedAddresses` of a
/// catalog registration set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExternalNode {
    /// Address clients dial.
    pub address: String,
    /// Datacenter it was registered in.
    pub datacenter: String,
    /// Node metadata.
    pub meta: BTreeMap<String, String>,
    /// Tagged addresses.
    pub tagged_addresses: BTreeMap<String, String>,
}

/// One replicated part of an external node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ExternalPart {
    /// The node itself, under `external/<node>/node`.
    Node(ExternalNode),
    /// One service instance, under `external/<node>/service/<id>`.
    Service(Service),
    /// One check, under `external/<node>/check/<id>`.
    Check(Check),
}

/// What part of an external node a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKey<'a> {
    /// The node's own fields.
    Node,
    /// The service with this id.
    Service(&'a str),
    /// The check with this id.
    Check(&'a str),
}

/// The key prefix of every part of `node`.
pub fn node_prefix(node: &str) -> String {
    format!("{EXTERNAL_PREFIX}{node}/")
}

/// The key of `part` of `node`.
pub fn part_key(node: &str, part: PartKey<'_>) -> String {
    match part {
        PartKey::Node => format!("{EXTERNAL_PREFIX}{node}/node"),
        PartKey::Service(id) => format!("{EXTERNAL_PREFIX}{node}/service/{id}"),
        PartKey::Check(id) => format!("{EXTERNAL_PREFIX}{node}/check/{id}"),
    }
}

/// Splits a key under [`EXTERNAL_PREFIX`] into its node and part; `None` when it names neither.
/// Node names cannot contain `/`, so the first one after the prefix ends the node.
pub fn parse_key(key: &str) -> Option<(&str, PartKey<'_>)> {
    let (node, rest) = key.strip_prefix(EXTERNAL_PREFIX)?.split_once('/')?;
    if node.is_empty() {
        return None;
    }
    let part = match rest.split_once('/') {
        None if rest == "node" => PartKey::Node,
        Some(("service", id)) if !id.is_empty() => PartKey::Service(id),
        Some(("check", id)) if !id.is_empty() => PartKey::Check(id),
        _ => return None,
    };
    Some((node, part))
}

impl ExternalPart {
    /// Whether this part may be stored under `key`: the right kind, and the id it carries is
    /// the id in the key (else two keys could hold one instance).
    pub fn fits(&self, key: &str) -> bool {
        match (self, parse_key(key)) {
            (Self::Node(_), Some((_, PartKey::Node))) => true,
            (Self::Service(s), Some((_, PartKey::Service(id)))) => s.id == id,
            (Self::Check(c), Some((_, PartKey::Check(id)))) => c.id == id,
            _ => false,
        }
    }

    pub(crate) fn weight(&self) -> usize {
        match self {
            Self::Node(n) => NodeRecord {
                address: n.address.clone(),
                datacenter: n.datacenter.clone(),
                ..NodeRecord::default()
            }
            .weight(),
            Self::Service(s) => s.weight(),
            Self::Check(c) => c.weight(),
        }
    }
}

/// An external node as catalog queries see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEntry {
    /// Its fields, services and checks, as one record.
    pub record: NodeRecord,
    /// The highest local modify index of any of its parts (deleted ones included, so it does
    /// not go back when a service is deregistered).
    pub modify_index: u64,
}

/// Every external node of a replica, derived from the shared key space.
#[derive(Debug, Clone)]
pub struct ExternalNodes {
    nodes: BTreeMap<String, ExternalEntry>,
}

impl Default for ExternalNodes {
    fn default() -> Self {
        Self::new()
    }
}

impl ExternalNodes {
    /// None at all.
    pub const fn new() -> Self {
        Self {
            nodes: BTreeMap::new(),
        }
    }

    /// Derives every external node from `shared` (after a restore).
    pub(crate) fn rebuild(shared: &SharedMap<Value>) -> Self {
        let mut nodes = Self::new();
        let names: Vec<String> = shared
            .prefix(EXTERNAL_PREFIX)
            .filter_map(|(key, _)| parse_key(key).map(|(node, _)| node.to_owned()))
            .collect();
        for name in names {
            nodes.refresh(&name, shared);
        }
        nodes
    }

    /// Derives `node` again from its parts in `shared`.
    pub(crate) fn refresh(&mut self, node: &str, shared: &SharedMap<Value>) {
        let mut fields = None;
        let mut record = NodeRecord::default();
        let mut modify_index = 0;
        for (_, entry) in shared.prefix(&node_prefix(node)) {
            modify_index = modify_index.max(entry.modify_index);
            let Some(Value::External(part)) = entry.register.value() else {
                continue;
            };
            match &**part {
                ExternalPart::Node(n) => fields = Some(n),
                ExternalPart::Service(s) => {
                    record.services.insert(s.id.clone(), s.clone());
                }
                ExternalPart::Check(c) => {
                    record.checks.insert(c.id.clone(), c.clone());
                }
            }
        }
        match fields {
            Some(fields) => {
                record.address.clone_from(&fields.address);
                record.datacenter.clone_from(&fields.datacenter);
                record.meta.clone_from(&fields.meta);
                record.tagged_addresses.clone_from(&fields.tagged_addresses);
                self.nodes.insert(
                    node.to_owned(),
                    ExternalEntry {
                        record,
                        modify_index,
                    },
                );
            }
            None => {
                self.nodes.remove(node);
            }
        }
    }

    /// The external node `name`.
    pub fn get(&self, name: &str) -> Option<&ExternalEntry> {
        self.nodes.get(name)
    }

    /// Every external node, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &ExternalEntry)> {
        self.nodes.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_odd_ones_are_refused() {
        for part in [
            PartKey::Node,
            PartKey::Service("web-1"),
            PartKey::Check("c"),
        ] {
            let key = part_key("db-host", part);
            assert_eq!(parse_key(&key), Some(("db-host", part)));
        }
        for bad in [
            "external/",
            "external//node",
            "external/db/nodes",
            "external/db/service/",
            "external/db/other/x",
            "kv/external/db/node",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        // A service id may hold a `/`; the node name never does.
        assert_eq!(
            parse_key("external/db/service/a/b"),
            Some(("db", PartKey::Service("a/b")))
        );
    }

    #[test]
    fn a_part_fits_only_its_own_key() {
        let service = ExternalPart::Service(Service {
            id: "s1".into(),
            name: "db".into(),
            ..Service::default()
        });
        assert!(service.fits("external/n/service/s1"));
        assert!(!service.fits("external/n/service/s2"));
        assert!(!service.fits("external/n/check/s1"));
        assert!(!service.fits("external/n/node"));
        assert!(ExternalPart::Node(ExternalNode::default()).fits("external/n/node"));
    }
}
