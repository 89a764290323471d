//! Record patches: a change to an owner's record sent as its difference from the version
//! before, so one check flip on a node with a thousand services travels in a datagram instead
//! of re-sending the whole record.
//!
//! A record stays a single-writer register: a patch is only a smaller way to carry the next
//! version. It names the version it applies to (`base`) and the version it makes, and a
//! replica applies it only to exactly that base, then stores and journals the whole record it
//! makes, as if that record had arrived. A replica holding another version keeps the patch
//! for a while in case the base comes (gossip does not keep order), and otherwise gets the
//! whole record by anti-entropy, which only ever carries whole records. The patch also
//! carries the hash of the register it makes, so a replica that would build a different
//! record refuses it instead of diverging.

use std::collections::BTreeMap;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::catalog::{Check, NodeRecord, Service};
use crate::register::{Owned, Version};
use crate::shared::fnv;

/// A record smaller than this (by [`NodeRecord::weight`]) always travels whole: it fits a
/// datagram anyway, and a whole record needs no base.
const PATCH_RECORDS_OVER: usize = 1_000;
/// A patch travels only when it is at most this fraction (1 / `PATCH_SHARE`) of its record:
/// a change to most of a record (a bulk registration) gains nothing from a base.
const PATCH_SHARE: usize = 4;

/// The next version of an owner's record as its difference from the version before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordPatch {
    /// The owner's node name.
    pub owner: String,
    /// The version it applies to.
    pub base: Version,
    /// The version it makes.
    pub version: Version,
    /// Hash of the register it makes (`Owned<Option<Arc<NodeRecord>>>`), as the digest
    /// hashes it: a replica that builds anything else refuses the patch.
    pub hash: u64,
    /// Services added or replaced (`Some`) and removed (`None`), by instance id.
    pub services: Vec<(CompactString, Option<Service>)>,
    /// Checks added or replaced (`Some`) and removed (`None`), by check id.
    pub checks: Vec<(CompactString, Option<Check>)>,
}

impl RecordPatch {
    /// The patch from `old` (at `base`) to `new` (at `version`), when it is worth sending
    /// instead of `new`: both records exist, `new` is too large for a datagram, only services
    /// and checks changed, and the patch is a small part of the record.
    pub(crate) fn between(
        owner: &str,
        (base, old): (Version, &NodeRecord),
        (version, new): (Version, &Arc<NodeRecord>),
    ) -> Option<Self> {
        let weight = new.weight();
        let same_node = old.address == new.address
            && old.datacenter == new.datacenter
            && old.meta == new.meta
            && old.tagged_addresses == new.tagged_addresses;
        if weight < PATCH_RECORDS_OVER || !same_node {
            return None;
        }
        let patch = Self {
            owner: owner.to_owned(),
            base,
            version,
            hash: fnv(&Owned::new(version, Some(Arc::clone(new)))),
            services: edits(&old.services, &new.services),
            checks: edits(&old.checks, &new.checks),
        };
        (patch.weight() * PATCH_SHARE <= weight).then_some(patch)
    }

    /// The record this patch makes of `base` (the record at [`RecordPatch::base`]), or `None`
    /// when that is not the record its owner made (the hash differs).
    pub(crate) fn apply_to(&self, base: &NodeRecord) -> Option<Owned<Option<Arc<NodeRecord>>>> {
        let mut record = base.clone();
        apply_edits(&mut record.services, &self.services);
        apply_edits(&mut record.checks, &self.checks);
        let register = Owned::new(self.version, Some(Arc::new(record)));
        (fnv(&register) == self.hash).then_some(register)
    }

    /// Rough encoded size in bytes, as [`NodeRecord::weight`] counts.
    pub fn weight(&self) -> usize {
        const PER_EDIT: usize = 4;
        let services: usize = self
            .services
            .iter()
            .map(|(id, service)| PER_EDIT + id.len() + service.as_ref().map_or(0, Service::weight))
            .sum();
        let checks: usize = self
            .checks
            .iter()
            .map(|(id, check)| PER_EDIT + id.len() + check.as_ref().map_or(0, Check::weight))
            .sum();
        self.owner.len() + 40 + services + checks
    }
}

/// What turns `old` into `new`: entries added or changed, and removed ones as `None`, found
/// in one walk over both (each is in key order).
fn edits<V: Clone + PartialEq>(
    old: &BTreeMap<CompactString, V>,
    new: &BTreeMap<CompactString, V>,
) -> Vec<(CompactString, Option<V>)> {
    let mut out = Vec::new();
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return out,
            (Some((gone, _)), None) => {
                out.push(((*gone).clone(), None));
                old.next();
            }
            (None, Some((id, value))) => {
                out.push(((*id).clone(), Some((*value).clone())));
                new.next();
            }
            (Some((was_id, was)), Some((id, value))) => match was_id.cmp(id) {
                std::cmp::Ordering::Less => {
                    out.push(((*was_id).clone(), None));
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(((*id).clone(), Some((*value).clone())));
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if was != value {
                        out.push(((*id).clone(), Some((*value).clone())));
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
}

fn apply_edits<V: Clone>(
    map: &mut BTreeMap<CompactString, V>,
    edits: &[(CompactString, Option<V>)],
) {
    for (id, value) in edits {
        match value {
            Some(value) => {
                map.insert(id.clone(), value.clone());
            }
            None => {
                map.remove(id);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::catalog::Health;

    fn service(i: u16) -> Service {
        Service {
            id: format!("web-{i}").into(),
            name: "web".into(),
            port: 8000 + i,
            ..Service::default()
        }
    }

    fn check(service: u16, status: Health) -> Check {
        Check {
            id: format!("service:web-{service}").into(),
            name: "alive".into(),
            status,
            output: String::new(),
            service_id: format!("web-{service}").into(),
        }
    }

    /// A node with `n` services, each with a passing check.
    pub(crate) fn large(n: u16) -> NodeRecord {
        NodeRecord {
            address: "10.0.0.1".into(),
            services: (0..n).map(|i| (service(i).id, service(i))).collect(),
            checks: (0..n)
                .map(|i| (check(i, Health::Passing).id, check(i, Health::Passing)))
                .collect(),
            ..NodeRecord::default()
        }
    }

    fn v(counter: u64) -> Version {
        Version {
            generation: 1,
            counter,
        }
    }

    #[test]
    fn a_check_flip_on_a_large_record_is_one_edit_that_makes_the_record() {
        let old = large(100);
        let mut new = old.clone();
        new.checks
            .insert(check(7, Health::Critical).id, check(7, Health::Critical));
        let new = Arc::new(new);
        let patch = RecordPatch::between("n1", (v(1), &old), (v(2), &new)).unwrap();
        assert_eq!((patch.services.len(), patch.checks.len()), (0, 1));
        assert!(
            patch.weight() * 20 < new.weight(),
            "{} of {}",
            patch.weight(),
            new.weight()
        );
        let made = patch.apply_to(&old).unwrap();
        assert_eq!(made, Owned::new(v(2), Some(new)));
    }

    #[test]
    fn small_records_node_changes_and_large_changes_travel_whole() {
        let small = large(3);
        let mut flipped = small.clone();
        flipped.checks.clear();
        assert!(RecordPatch::between("n1", (v(1), &small), (v(2), &Arc::new(flipped))).is_none());
        let old = large(100);
        let mut moved = old.clone();
        moved.address = "10.0.0.2".into();
        assert!(RecordPatch::between("n1", (v(1), &old), (v(2), &Arc::new(moved))).is_none());
        let mut moved_all = old.clone();
        moved_all.services.values_mut().for_each(|s| s.port += 1);
        assert!(RecordPatch::between("n1", (v(1), &old), (v(2), &Arc::new(moved_all))).is_none());
    }

    #[test]
    fn a_patch_applied_to_another_record_is_refused_by_its_hash() {
        let old = large(100);
        let mut new = old.clone();
        new.services.remove("web-3");
        let patch = RecordPatch::between("n1", (v(1), &old), (v(2), &Arc::new(new))).unwrap();
        let mut other = old.clone();
        other.checks.remove("service:web-9");
        assert_eq!(patch.apply_to(&other), None);
    }

    proptest! {
        /// Whatever two maps are, the edits between them turn the first into the second.
        #[test]
        fn edits_turn_the_old_map_into_the_new(
            old in proptest::collection::btree_map(0..40u8, 0..4u8, 0..30),
            new in proptest::collection::btree_map(0..40u8, 0..4u8, 0..30),
        ) {
            let text = |m: BTreeMap<u8, u8>| -> BTreeMap<CompactString, u8> {
                m.into_iter().map(|(k, v)| (format!("{k:02}").into(), v)).collect()
            };
            let (old, new) = (text(old), text(new));
            let edits = edits(&old, &new);
            let mut made = old.clone();
            apply_edits(&mut made, &edits);
            prop_assert_eq!(&made, &new);
            let changed = new.iter().filter(|(k, v)| old.get(*k) != Some(v)).count()
                + old.keys().filter(|k| !new.contains_key(*k)).count();
            prop_assert_eq!(edits.len(), changed, "only what changed");
        }
    }
}
