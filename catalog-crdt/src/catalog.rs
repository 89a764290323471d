//! The catalog: what each node's owned record holds (address, meta, services, checks) and the
//! queries the API answers from it.
//!
//! Health is computed, not stored: an instance's status aggregates its own checks and its node's
//! checks (a node-level critical check makes every instance on the node critical), plus the
//! synthetic `serfHealth` check every node has, as in Consul: passing, or critical once
//! membership declares the node failed — derived on every replica from its own membership view,
//! so it needs no writer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::external::ExternalNodes;
use crate::owned::OwnedMap;

/// The most bytes a node record may encode to. A record travels whole, alone if need be, in
/// one anti-entropy message, whose frame is 4 MiB; half of it leaves room for the rest of the
/// message. A larger record could never reach a peer.
pub const MAX_RECORD_BYTES: usize = 2 << 20;

/// Check id of the synthetic member-health check (Consul's name for it).
pub const MEMBER_CHECK_ID: &str = "serfHealth";

/// A check's status, ordered from best to worst; the worst one wins when aggregating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    /// All good.
    Passing,
    /// Degraded but serving.
    Warning,
    /// Not serving.
    Critical,
    /// Taken out of service on purpose.
    Maintenance,
}

impl Health {
    /// Consul's lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Maintenance => "maintenance",
        }
    }
}

/// A service instance registered on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Service {
    /// Instance id, unique on its node.
    pub id: CompactString,
    /// Logical service name.
    pub name: CompactString,
    /// Tags.
    pub tags: Vec<CompactString>,
    /// Address, empty for the node's.
    pub address: CompactString,
    /// Port.
    pub port: u16,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// DNS SRV weight while passing.
    pub weight_passing: u32,
    /// DNS SRV weight while warning.
    pub weight_warning: u32,
}

/// A health check as last reported by its owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Check {
    /// Check id, unique on its node.
    pub id: CompactString,
    /// Human name.
    pub name: CompactString,
    /// Status.
    pub status: Health,
    /// Output of the last run.
    pub output: String,
    /// The service it watches; empty for a node-level check.
    pub service_id: CompactString,
}

/// One node's owned record.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Node metadata.
    pub meta: BTreeMap<String, String>,
    /// Tagged addresses (`lan`, `wan`, …).
    pub tagged_addresses: BTreeMap<String, String>,
    /// Services by instance id.
    #[serde(deserialize_with = "packed_map")]
    pub services: BTreeMap<CompactString, Service>,
    /// Checks by check id.
    #[serde(deserialize_with = "packed_map")]
    pub checks: BTreeMap<CompactString, Check>,
}

/// Decodes a map by collecting its entries first, then building the `BTreeMap` in bulk, which
/// fills its nodes; serde's own decoding inserts entry by entry, in key order as encoded, and
/// each split leaves a node about half full. A peer's record is decoded on every replica, and
/// its services are most of a large catalog's memory: 352 → 221 bytes per instance
/// (`cargo run --release -p murmur-catalog --example footprint`). A repeated key keeps the
/// last entry, as inserting would.
fn packed_map<'de, D, V>(decoder: D) -> Result<BTreeMap<CompactString, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = Vec<(CompactString, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    let entries = decoder.deserialize_map(Entries(std::marker::PhantomData))?;
    Ok(entries.into_iter().collect())
}

fn text_weight<T: AsRef<str>>(texts: impl IntoIterator<Item = T>) -> usize {
    texts.into_iter().map(|t| t.as_ref().len() + 2).sum()
}

impl Service {
    pub(crate) fn weight(&self) -> usize {
        16 + text_weight([&self.id, &self.name, &self.address])
            + text_weight(&self.tags)
            + text_weight(self.meta.iter().flat_map(|(k, v)| [k, v]))
    }
}

impl Check {
    pub(crate) fn weight(&self) -> usize {
        8 + text_weight([&self.id, &self.name, &self.service_id]) + text_weight([&self.output])
    }
}

impl NodeRecord {
    /// Its size as it travels and is journaled, in bytes (see [`MAX_RECORD_BYTES`]).
    pub fn encoded_len(&self) -> usize {
        crate::journal::encode(self).len()
    }

    /// Rough encoded size in bytes, for message budgets.
    pub fn weight(&self) -> usize {
        text_weight([&self.address, &self.datacenter])
            + text_weight(
                self.meta
                    .iter()
                    .chain(&self.tagged_addresses)
                    .flat_map(|(k, v)| [k, v]),
            )
            + self.services.values().map(Service::weight).sum::<usize>()
            + self.checks.values().map(Check::weight).sum::<usize>()
    }
}

/// A service instance with its node and everything that decides its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance<'a> {
    /// Node name.
    pub node: &'a str,
    /// The node's record.
    pub record: &'a NodeRecord,
    /// The instance.
    pub service: &'a Service,
    /// Its checks and its node's, the synthetic member check first.
    pub checks: Vec<Check>,
    /// The worst of those checks (passing when there are none).
    pub health: Health,
}

/// Read-only queries over a replica's records, its external nodes and its membership view.
///
/// External nodes (see [`ExternalNodes`]) are read like agents' records, with two differences
/// from Consul's own: they have no synthetic member check (no agent runs there to be alive),
/// and where an agent and an external registration share a name the agent's record wins.
pub struct CatalogView<'a> {
    records: &'a OwnedMap<Arc<NodeRecord>>,
    external: &'a ExternalNodes,
    failed: &'a BTreeSet<String>,
}

/// The view of a replica with no external nodes.
static NO_EXTERNAL: ExternalNodes = ExternalNodes::new();

impl<'a> CatalogView<'a> {
    /// Queries `records`, treating the nodes in `failed` (from membership) as failed.
    pub fn new(records: &'a OwnedMap<Arc<NodeRecord>>, failed: &'a BTreeSet<String>) -> Self {
        Self {
            records,
            external: &NO_EXTERNAL,
            failed,
        }
    }

    /// Reads `external` nodes too.
    pub fn with_external(self, external: &'a ExternalNodes) -> Self {
        Self { external, ..self }
    }

    /// Every live node record, agents' and external ones, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = (&'a String, &'a NodeRecord)> + use<'a> {
        let agents = self.records.iter().map(|(n, r)| (n, &**r)).peekable();
        let external = self.external.iter().map(|(n, e)| (n, &e.record)).peekable();
        merge_by_name(agents, external)
    }

    /// The record of one node, if it is live.
    pub fn node(&self, name: &str) -> Option<&'a NodeRecord> {
        self.records
            .get(name)
            .map(|r| &**r)
            .or_else(|| self.external.get(name).map(|e| &e.record))
    }

    /// The local modify index of a node's record (0 for an unknown node).
    pub fn node_index(&self, name: &str) -> u64 {
        match self.records.entry(name) {
            Some(entry) => entry.modify_index,
            None => self.external.get(name).map_or(0, |e| e.modify_index),
        }
    }

    /// Every service name with the union of its instances' tags.
    pub fn services(&self) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (_, record) in self.nodes() {
            for service in record.services.values() {
                out.entry(&service.name)
                    .or_default()
                    .extend(service.tags.iter().map(CompactString::as_str));
            }
        }
        out
    }

    /// Instances of `name` carrying every tag in `tags`, in node then id order.
    pub fn instances(&self, name: &str, tags: &[&str]) -> Vec<Instance<'a>> {
        self.instances_where(|service| {
            service.name == name && tags.iter().all(|t| service.tags.iter().any(|s| s == t))
        })
    }

    /// Per service name, its instances counted by health, their checks by status and the
    /// nodes it runs on: what a summary of every service shows, in one pass and without
    /// building an [`Instance`] (and copying its checks) for each of a large catalog's.
    pub fn service_summaries(&self) -> BTreeMap<&'a str, ServiceSummary<'a>> {
        let mut out: BTreeMap<&str, ServiceSummary<'a>> = BTreeMap::new();
        for (node, record) in self.nodes() {
            if record.services.is_empty() {
                continue;
            }
            let checks = RecordChecks::of(self, node, record);
            for service in record.services.values() {
                let summary = out.entry(service.name.as_str()).or_default();
                let mut worst = Health::Passing;
                for status in checks.statuses(service) {
                    summary.checks[status as usize] += 1;
                    worst = worst.max(status);
                }
                summary.instances[worst as usize] += 1;
                summary.nodes.insert(node);
            }
        }
        out
    }

    /// The instances `wanted` picks, in node then id order. A record's checks are sorted out
    /// once, and only when one of its services is wanted: O(services + checks) per node.
    fn instances_where(&self, mut wanted: impl FnMut(&Service) -> bool) -> Vec<Instance<'a>> {
        let mut out = Vec::new();
        for (node, record) in self.nodes() {
            let mut checks = None;
            for service in record.services.values().filter(|s| wanted(s)) {
                let checks = checks.get_or_insert_with(|| RecordChecks::of(self, node, record));
                let checks = checks.of_instance(service);
                out.push(Instance {
                    node,
                    record,
                    service,
                    health: worst(&checks),
                    checks,
                });
            }
        }
        out
    }
}

/// One service name's instances in brief ([`CatalogView::service_summaries`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSummary<'a> {
    /// Instances by health, indexed by [`Health`] as `usize` (passing first).
    pub instances: [usize; 4],
    /// Their checks (the member check included) by status, indexed the same way.
    pub checks: [usize; 4],
    /// The nodes running it.
    pub nodes: BTreeSet<&'a str>,
}

/// One record's checks sorted out for its instances: an instance's health is decided by the
/// member check, the node's own checks and the instance's.
struct RecordChecks<'r> {
    member: Option<Check>,
    /// By the id of the service they watch, node-level checks under `""`; each list in check
    /// id order, as the record holds them.
    by_service: BTreeMap<&'r str, Vec<&'r Check>>,
}

impl<'r> RecordChecks<'r> {
    fn of(view: &CatalogView<'_>, node: &str, record: &'r NodeRecord) -> Self {
        let mut by_service: BTreeMap<&str, Vec<&Check>> = BTreeMap::new();
        for check in record.checks.values() {
            by_service.entry(&check.service_id).or_default().push(check);
        }
        Self {
            member: view.member_check(node),
            by_service,
        }
    }

    /// The node's checks and `service`'s own, each list in check id order.
    fn lists(&self, service: &Service) -> (&[&'r Check], &[&'r Check]) {
        let node = self.by_service.get("").map_or(&[][..], Vec::as_slice);
        let own = match service.id.as_str() {
            "" => &[][..],
            id => self.by_service.get(id).map_or(&[][..], Vec::as_slice),
        };
        (node, own)
    }

    /// The statuses of `service`'s checks, the member check's included, in no set order.
    fn statuses(&self, service: &Service) -> impl Iterator<Item = Health> {
        let (node, own) = self.lists(service);
        let member = self.member.as_ref().map(|c| c.status);
        member
            .into_iter()
            .chain(node.iter().chain(own).map(|c| c.status))
    }

    /// The checks of `service`: the member check first, then the node's and its own in
    /// check id order.
    fn of_instance(&self, service: &Service) -> Vec<Check> {
        let (node, own) = self.lists(service);
        let mut merged = Vec::with_capacity(1 + node.len() + own.len());
        merged.extend(self.member.clone());
        let (mut a, mut b) = (node.iter().peekable(), own.iter().peekable());
        while let Some(next) = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.id < x.id => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        } {
            merged.push((*next).clone());
        }
        merged
    }
}

/// Merges two name-ordered node listings; on a shared name the first listing's record wins.
fn merge_by_name<'a, A, B>(
    mut first: std::iter::Peekable<A>,
    mut second: std::iter::Peekable<B>,
) -> impl Iterator<Item = (&'a String, &'a NodeRecord)>
where
    A: Iterator<Item = (&'a String, &'a NodeRecord)>,
    B: Iterator<Item = (&'a String, &'a NodeRecord)>,
{
    std::iter::from_fn(move || match (first.peek(), second.peek()) {
        (Some(a), Some(b)) => match a.0.cmp(b.0) {
            std::cmp::Ordering::Less => first.next(),
            std::cmp::Ordering::Greater => second.next(),
            std::cmp::Ordering::Equal => {
                second.next();
                first.next()
            }
        },
        (Some(_), None) => first.next(),
        (None, _) => second.next(),
    })
}

/// The worst status among `checks`; passing when there are none.
fn worst(checks: &[Check]) -> Health {
    checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Health::Passing)
}

impl CatalogView<'_> {
    /// The synthetic check of `node`'s membership: passing, or critical once it failed; none
    /// for an external node, which no agent runs.
    fn member_check(&self, node: &str) -> Option<Check> {
        self.records.get(node)?;
        let (status, output) = if self.failed.contains(node) {
            (
                Health::Critical,
                format!("Agent not live or unreachable: {node} is declared failed by membership"),
            )
        } else {
            (Health::Passing, "Agent alive and reachable".to_owned())
        };
        Some(Check {
            id: MEMBER_CHECK_ID.into(),
            name: "Serf Health Status".into(),
            status,
            output,
            service_id: CompactString::default(),
        })
    }

    /// Every check of a live node, the member check first; `None` for an unknown node.
    pub fn node_checks(&self, node: &str) -> Option<Vec<Check>> {
        let record = self.node(node)?;
        Some(
            self.member_check(node)
                .into_iter()
                .chain(record.checks.values().cloned())
                .collect(),
        )
    }

    /// Every check of every live node, in node order, each node's member check first.
    pub fn all_checks(&self) -> Vec<(&String, Check)> {
        self.nodes()
            .flat_map(|(node, record)| {
                self.member_check(node)
                    .map(|c| (node, c))
                    .into_iter()
                    .chain(record.checks.values().map(move |c| (node, c.clone())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::{Owned, Version};
    use crate::shared::ModifyIndex;

    fn service(id: &str, name: &str, tags: &[&str]) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| (*t).into()).collect(),
            address: Default::default(),
            port: 80,
            meta: BTreeMap::new(),
            weight_passing: 1,
            weight_warning: 1,
        }
    }

    fn check(id: &str, service_id: &str, status: Health) -> Check {
        Check {
            id: id.into(),
            name: id.into(),
            status,
            output: String::new(),
            service_id: service_id.into(),
        }
    }

    fn records(nodes: Vec<(&str, NodeRecord)>) -> OwnedMap<Arc<NodeRecord>> {
        let mut map = OwnedMap::default();
        let mut index = ModifyIndex::default();
        for (name, record) in nodes {
            map.merge(
                name,
                &Owned::new(
                    Version {
                        generation: 1,
                        counter: 1,
                    },
                    Some(Arc::new(record)),
                ),
                &mut index,
            );
        }
        map
    }

    fn node(services: Vec<Service>, checks: Vec<Check>) -> NodeRecord {
        NodeRecord {
            services: services.into_iter().map(|s| (s.id.clone(), s)).collect(),
            checks: checks.into_iter().map(|c| (c.id.clone(), c)).collect(),
            ..NodeRecord::default()
        }
    }

    #[test]
    fn a_decoded_record_equals_the_encoded_one_and_a_repeated_key_keeps_the_last_entry() {
        let config = bincode::config::standard();
        let services: Vec<Service> = (0..100)
            .map(|i| service(&format!("web-{i:03}"), "web", &["v1"]))
            .collect();
        let record = node(services.clone(), vec![check("disk", "", Health::Warning)]);
        let bytes = bincode::serde::encode_to_vec(&record, config).expect("encodes");
        let (decoded, _): (NodeRecord, _) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!(decoded, record);

        // A map is encoded as its length and its entries, as a list of pairs is: the same
        // bytes with a key twice.
        let mut changed = services[0].clone();
        changed.port = 8080;
        let entries = vec![
            (services[0].id.clone(), services[0].clone()),
            (services[0].id.clone(), changed.clone()),
        ];
        let no_map: BTreeMap<String, String> = BTreeMap::new();
        let no_checks: Vec<(String, Check)> = Vec::new();
        let bytes =
            bincode::serde::encode_to_vec(("", "", &no_map, &no_map, entries, no_checks), config)
                .expect("encodes");
        let (decoded, _): (NodeRecord, _) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
        assert_eq!(decoded.services.len(), 1);
        assert_eq!(decoded.services[&changed.id], changed);
    }

    #[test]
    fn a_record_encodes_to_the_bytes_it_had_with_plain_strings() {
        // Journals and peers of earlier versions hold records whose text fields were
        // `String`s: the inline strings must encode to the same bytes.
        type PlainService = (
            String,
            String,
            Vec<String>,
            String,
            u16,
            BTreeMap<String, String>,
            u32,
            u32,
        );
        type PlainCheck = (String, String, Health, String, String);
        let mut web = service("web-1", "web", &["v1", "a-tag-longer-than-24-bytes"]);
        web.address = "10.0.0.7".into();
        let record = NodeRecord {
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            services: [(web.id.clone(), web)].into(),
            checks: [(
                "service:web-1".into(),
                check("service:web-1", "web-1", Health::Critical),
            )]
            .into(),
            ..NodeRecord::default()
        };
        let meta: BTreeMap<String, String> = BTreeMap::new();
        let services: BTreeMap<String, PlainService> = [(
            "web-1".to_owned(),
            (
                "web-1".to_owned(),
                "web".to_owned(),
                vec!["v1".to_owned(), "a-tag-longer-than-24-bytes".to_owned()],
                "10.0.0.7".to_owned(),
                80,
                BTreeMap::new(),
                1,
                1,
            ),
        )]
        .into();
        let checks: BTreeMap<String, PlainCheck> = [(
            "service:web-1".to_owned(),
            (
                "service:web-1".to_owned(),
                "service:web-1".to_owned(),
                Health::Critical,
                String::new(),
                "web-1".to_owned(),
            ),
        )]
        .into();
        let plain = ("10.0.0.1", "dc1", &meta, &meta, services, checks);
        let config = bincode::config::standard();
        assert_eq!(
            bincode::serde::encode_to_vec(&record, config).expect("encodes"),
            bincode::serde::encode_to_vec(&plain, config).expect("encodes")
        );
    }

    #[test]
    fn services_list_names_with_all_tags() {
        let map = records(vec![
            (
                "a",
                node(
                    vec![service("web1", "web", &["v1"]), service("db", "db", &[])],
                    vec![],
                ),
            ),
            (
                "b",
                node(vec![service("web2", "web", &["v2", "canary"])], vec![]),
            ),
        ]);
        let none = BTreeSet::new();
        let services = CatalogView::new(&map, &none).services();
        assert_eq!(services["web"], BTreeSet::from(["v1", "v2", "canary"]));
        assert!(services["db"].is_empty());
    }

    #[test]
    fn health_aggregates_service_and_node_checks_worst_first() {
        let map = records(vec![
            (
                "a",
                node(
                    vec![service("web1", "web", &["v1"])],
                    vec![check("http", "web1", Health::Warning)],
                ),
            ),
            (
                "b",
                node(
                    vec![service("web2", "web", &["v1"])],
                    vec![check("disk", "", Health::Critical)],
                ),
            ),
            (
                "c",
                node(
                    vec![service("web3", "web", &["v2"])],
                    vec![
                        check("m", "web3", Health::Maintenance),
                        check("x", "", Health::Critical),
                    ],
                ),
            ),
            (
                "d",
                node(
                    vec![service("web4", "web", &["v1"])],
                    vec![check("other", "db", Health::Critical)],
                ),
            ),
        ]);
        let none = BTreeSet::new();
        let view = CatalogView::new(&map, &none);
        let health: Vec<(&str, Health)> = view
            .instances("web", &[])
            .iter()
            .map(|i| (i.node, i.health))
            .collect();
        assert_eq!(
            health,
            [
                ("a", Health::Warning),
                ("b", Health::Critical),
                ("c", Health::Maintenance),
                ("d", Health::Passing)
            ],
            "node-level critical counts; another service's check does not"
        );
        let tagged: Vec<&str> = view
            .instances("web", &["v1"])
            .iter()
            .map(|i| i.node)
            .collect();
        assert_eq!(tagged, ["a", "b", "d"]);
        assert!(
            view.instances("web", &["v1", "v2"]).is_empty(),
            "every tag must match"
        );
    }

    #[test]
    fn an_instance_lists_the_member_check_then_its_nodes_and_its_own_in_id_order() {
        let map = records(vec![(
            "a",
            node(
                vec![service("web1", "web", &[]), service("db1", "db", &[])],
                vec![
                    check("a-disk", "", Health::Passing),
                    check("b-web", "web1", Health::Warning),
                    check("c-db", "db1", Health::Critical),
                    check("d-mem", "", Health::Passing),
                ],
            ),
        )]);
        let none = BTreeSet::new();
        let view = CatalogView::new(&map, &none);
        let ids = |i: &Instance<'_>| i.checks.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        let web = view.instances("web", &[]);
        assert_eq!(ids(&web[0]), [MEMBER_CHECK_ID, "a-disk", "b-web", "d-mem"]);
        assert_eq!(web[0].health, Health::Warning);
        let db = view.instances("db", &[]);
        assert_eq!(ids(&db[0]), [MEMBER_CHECK_ID, "a-disk", "c-db", "d-mem"]);
        assert_eq!(db[0].health, Health::Critical);
    }

    #[test]
    fn service_summaries_count_what_each_names_instances_show() {
        let map = records(vec![
            (
                "a",
                node(
                    vec![service("web1", "web", &["v1"]), service("db", "db", &[])],
                    vec![check("http", "web1", Health::Critical)],
                ),
            ),
            (
                "b",
                node(
                    vec![service("web2", "web", &[]), service("cache", "cache", &[])],
                    vec![check("disk", "", Health::Warning)],
                ),
            ),
        ]);
        let failed = BTreeSet::from(["b".to_owned()]);
        let view = CatalogView::new(&map, &failed);
        let summaries = view.service_summaries();
        assert_eq!(
            summaries.keys().copied().collect::<Vec<_>>(),
            ["cache", "db", "web"]
        );
        for (name, summary) in &summaries {
            let instances = view.instances(name, &[]);
            let mut expected = ServiceSummary::default();
            for i in &instances {
                expected.instances[i.health as usize] += 1;
                for c in &i.checks {
                    expected.checks[c.status as usize] += 1;
                }
                expected.nodes.insert(i.node);
            }
            assert_eq!(*summary, expected, "{name}");
        }
        assert_eq!(
            summaries["web"].instances,
            [0, 0, 2, 0],
            "a's http, b failed"
        );
        assert_eq!(summaries["web"].checks, [1, 1, 2, 0]);
    }

    #[test]
    fn failed_member_is_critical_everywhere_without_a_writer() {
        let map = records(vec![("a", node(vec![service("web1", "web", &[])], vec![]))]);
        let failed = BTreeSet::from(["a".to_owned()]);
        let instances = CatalogView::new(&map, &failed).instances("web", &[]);
        assert_eq!(instances[0].health, Health::Critical);
        assert_eq!(instances[0].checks[0].id, MEMBER_CHECK_ID);
    }

    #[test]
    fn every_node_has_a_member_check_passing_while_it_lives() {
        let map = records(vec![
            ("a", node(vec![], vec![check("disk", "", Health::Warning)])),
            ("b", node(vec![service("web1", "web", &[])], vec![])),
        ]);
        let failed = BTreeSet::from(["b".to_owned()]);
        let view = CatalogView::new(&map, &failed);
        let a = view.node_checks("a").unwrap();
        assert_eq!(
            a.iter()
                .map(|c| (c.id.as_str(), c.status))
                .collect::<Vec<_>>(),
            [
                (MEMBER_CHECK_ID, Health::Passing),
                ("disk", Health::Warning)
            ]
        );
        assert!(view.node_checks("nobody").is_none());
        let checks = view.all_checks();
        let all: Vec<(&str, &str, Health)> = checks
            .iter()
            .map(|(n, c)| (n.as_str(), c.id.as_str(), c.status))
            .collect();
        assert_eq!(all.len(), 3);
        assert!(all.contains(&("b", MEMBER_CHECK_ID, Health::Critical)));
    }
}
