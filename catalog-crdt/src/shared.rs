//! The shared key space: key → [`Lww`] register, with what replication and blocking queries need.
//!
//! - **Modify indexes.** Every change applied here gets the next index of this replica's
//!   [`ModifyIndex`] (local, strictly increasing, resumable after a restart), so a blocking query
//!   wakes exactly when what it watches changes. Tombstones keep their index, so deleting under
//!   a prefix never makes the prefix's index go backwards.
//! - **Bucket digests for anti-entropy.** Keys fall into [`BUCKETS`] buckets by a fixed hash;
//!   each bucket's digest is the XOR of a hash of every `(key, register)` in it, kept up to date
//!   on each change in O(1). Two replicas compare the digest arrays and exchange only the
//!   entries of buckets that differ.
//! - **Tombstone GC.** A delete stays as a tombstone until it is older than the GC horizon, then
//!   it is dropped; a replica that was away longer than the horizon must reset from a peer
//!   instead of merging, or deletes it missed would come back.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::coordinate::COORDINATE_PREFIX;
use crate::register::Lww;

/// Number of digest buckets.
pub const BUCKETS: usize = 256;

/// A replica's change counter: strictly increasing, never 0, resumable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModifyIndex {
    last: u64,
}

impl Default for ModifyIndex {
    fn default() -> Self {
        Self::resume(0)
    }
}

impl ModifyIndex {
    /// Continues after `last` (the highest index persisted before a restart).
    pub fn resume(last: u64) -> Self {
        Self { last }
    }

    /// The latest index handed out (0 before the first change).
    pub fn last(&self) -> u64 {
        self.last
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

/// One key's replicated register and its local indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<V> {
    /// The register (value or tombstone, with its stamp).
    pub register: Lww<V>,
    /// Local index of the change that created the current value (after absence or a delete).
    pub create_index: u64,
    /// Local index of the last change.
    pub modify_index: u64,
}

/// The shared key space of one replica.
#[derive(Debug, Clone)]
pub struct SharedMap<V> {
    entries: BTreeMap<String, Entry<V>>,
    digests: Box<[u64; BUCKETS]>,
}

impl<V> Default for SharedMap<V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            digests: Box::new([0; BUCKETS]),
        }
    }
}

/// 64-bit FNV-1a as a [`Hasher`]: fixed across processes and builds (std's hasher is randomly
/// seeded per process), with integers written little-endian, so replicas on different machines
/// compute the same digests.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write(&n.to_le_bytes());
    }

    fn write_u32(&mut self, n: u32) {
        self.write(&n.to_le_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) fn fnv<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = Fnv::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Whether a shared key's changes may spread at gossip's leisure: it holds an estimate its
/// writer republishes periodically and nobody waits on (a LAN coordinate, every 15 s or
/// slower). Spread eagerly, each one cost a gossip round at every member: in an idle
/// datacenter of 64 agents, 19 datagrams per agent per second where probes need 2.
pub fn is_background_key(key: &str) -> bool {
    key.starts_with(COORDINATE_PREFIX)
}

/// Buckets of their own for background keys (the first ones), out of [`BUCKETS`].
///
/// Background keys spread in seconds, not milliseconds, so at any sync some are still on
/// their way and their buckets differ; a differing bucket
/// costs the summaries of every key in it. Sharing buckets with the rest, those in flight made
/// anti-entropy summarize a KV store bucket by bucket: 64 idle agents holding 100,000 keys
/// sent 12.8 KB per agent per second (`bench/replication.py --parts idle`).
const COORDINATE_BUCKETS: usize = 32;

/// The digest bucket of a key: background keys in the first [`COORDINATE_BUCKETS`], every
/// other key in the rest.
pub fn bucket_of(key: &str) -> usize {
    let hash = fnv(key);
    if is_background_key(key) {
        (hash % COORDINATE_BUCKETS as u64) as usize
    } else {
        COORDINATE_BUCKETS + (hash % (BUCKETS - COORDINATE_BUCKETS) as u64) as usize
    }
}

/// Hash of one entry for the bucket digest. The value is included, not only the stamp: two
/// replicas holding one stamp with different values (a stamp reused by a buggy or hostile
/// peer) must see different digests, or anti-entropy would never reconcile them.
fn entry_hash<V: Hash>(key: &str, register: &Lww<V>) -> u64 {
    fnv(&(key, register))
}

impl<V: Ord + Clone + Hash> SharedMap<V> {
    /// Merges one replicated register for `key`; returns the new entry if this replica changed.
    pub fn merge(
        &mut self,
        key: &str,
        register: &Lww<V>,
        index: &mut ModifyIndex,
    ) -> Option<&Entry<V>> {
        let bucket = bucket_of(key);
        if !self.entries.contains_key(key) {
            self.digests[bucket] ^= entry_hash(key, register);
            let at = index.next();
            let entry = Entry {
                register: register.clone(),
                create_index: at,
                modify_index: at,
            };
            return Some(self.entries.entry(key.to_owned()).or_insert(entry));
        }
        let entry = self.entries.get_mut(key)?;
        let old_hash = entry_hash(key, &entry.register);
        let was_live = !entry.register.is_tombstone();
        if !entry.register.merge(register) {
            return None;
        }
        self.digests[bucket] ^= old_hash ^ entry_hash(key, &entry.register);
        entry.modify_index = index.next();
        if !was_live && !entry.register.is_tombstone() {
            entry.create_index = entry.modify_index;
        }
        Some(entry)
    }

    /// The entry of `key`, tombstones included.
    pub fn entry(&self, key: &str) -> Option<&Entry<V>> {
        self.entries.get(key)
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries
            .get(key)
            .and_then(|e| e.register.value().as_ref())
    }

    /// Entries whose key starts with `prefix`, in key order, tombstones included (their
    /// indexes count for a prefix's index; callers skip them when listing values).
    pub fn prefix<'a>(
        &'a self,
        prefix: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry<V>)> + use<'a, V> {
        let owned = prefix.to_owned();
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&owned))
    }

    /// The index of everything under `prefix`: the highest modify index there, deletes
    /// included (tombstones keep theirs), so deleting never makes it go backwards; 0 when
    /// nothing was ever there.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        self.prefix(prefix)
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0)
    }

    /// Every entry in key order, tombstones included.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry<V>)> {
        self.entries.iter()
    }

    /// Forgets `key` entirely (no tombstone): only for a replica resetting from a peer, which
    /// holds no record of a delete the rest of the cluster already collected.
    pub fn remove(&mut self, key: &str) -> Option<Entry<V>> {
        let entry = self.entries.remove(key)?;
        self.digests[bucket_of(key)] ^= entry_hash(key, &entry.register);
        Some(entry)
    }

    /// Puts back an entry as persisted, indexes included (restoring after a restart).
    pub fn restore(&mut self, key: String, entry: Entry<V>) {
        self.remove(&key);
        self.digests[bucket_of(&key)] ^= entry_hash(&key, &entry.register);
        self.entries.insert(key, entry);
    }

    /// The per-bucket digests to send to a peer.
    pub fn digests(&self) -> &[u64; BUCKETS] {
        &self.digests
    }

    /// Buckets whose digest differs from a peer's.
    pub fn differing_buckets(&self, peer: &[u64; BUCKETS]) -> Vec<usize> {
        (0..BUCKETS)
            .filter(|&b| self.digests[b] != peer[b])
            .collect()
    }

    /// Every entry whose key falls in one of `buckets`, in key order, with its bucket: what
    /// anti-entropy compares with a peer whose digests differ there.
    pub fn in_buckets<'a>(
        &'a self,
        buckets: &[usize],
    ) -> impl Iterator<Item = (usize, &'a String, &'a Entry<V>)> + use<'a, V> {
        let mut wanted = [false; BUCKETS];
        for &b in buckets {
            if let Some(slot) = wanted.get_mut(b) {
                *slot = true;
            }
        }
        self.entries.iter().filter_map(move |(k, e)| {
            let bucket = bucket_of(k);
            wanted[bucket].then_some((bucket, k, e))
        })
    }

    /// Drops tombstones stamped before `horizon`; returns how many.
    pub fn collect_tombstones(&mut self, horizon_ms: u64) -> usize {
        let digests = &mut self.digests;
        let before = self.entries.len();
        self.entries.retain(|key, entry| {
            let expired =
                entry.register.is_tombstone() && entry.register.stamp().physical_ms < horizon_ms;
            if expired {
                digests[bucket_of(key)] ^= entry_hash(key, &entry.register);
            }
            !expired
        });
        before - self.entries.len()
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map holds nothing, not even tombstones.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hlc::Hlc;

    fn stamp(ms: u64, node: u64) -> Hlc {
        Hlc {
            physical_ms: ms,
            logical: 0,
            node,
        }
    }

    #[test]
    fn coordinates_and_other_keys_never_share_a_bucket() {
        let coordinate_buckets: std::collections::HashSet<usize> = (0..1000)
            .map(|i| bucket_of(&format!("{COORDINATE_PREFIX}node-{i}")))
            .collect();
        assert_eq!(
            coordinate_buckets.len(),
            COORDINATE_BUCKETS,
            "all of theirs used"
        );
        let others: std::collections::HashSet<usize> = (0..10_000)
            .map(|i| bucket_of(&format!("kv/app/key-{i}")))
            .collect();
        assert_eq!(
            others.len(),
            BUCKETS - COORDINATE_BUCKETS,
            "all of the rest used"
        );
        assert!(coordinate_buckets.is_disjoint(&others));
    }

    #[test]
    fn indexes_only_grow_and_deletes_keep_theirs() {
        let mut map = SharedMap::default();
        let mut index = ModifyIndex::default();
        let put = map
            .merge("web/a", &Lww::new(stamp(1, 1), Some(10u8)), &mut index)
            .unwrap()
            .clone();
        assert_eq!((put.create_index, put.modify_index), (1, 1));
        assert!(
            map.merge("web/a", &Lww::new(stamp(0, 1), Some(9)), &mut index)
                .is_none(),
            "stale write"
        );
        let del = map
            .merge("web/a", &Lww::tombstone(stamp(2, 2)), &mut index)
            .unwrap()
            .clone();
        assert_eq!(del.modify_index, 2);
        assert_eq!(map.get("web/a"), None);
        assert_eq!(
            map.prefix("web/").map(|(_, e)| e.modify_index).max(),
            Some(2),
            "a deleted key still counts for its prefix"
        );
        let again = map
            .merge("web/a", &Lww::new(stamp(3, 1), Some(11)), &mut index)
            .unwrap();
        assert_eq!(
            (again.create_index, again.modify_index),
            (3, 3),
            "re-created after a delete"
        );
        let resumed = ModifyIndex::resume(index.last());
        assert_eq!(resumed.last(), 3);
    }

    #[test]
    fn prefix_lists_in_order_and_stops_at_the_prefix() {
        let mut map = SharedMap::default();
        let mut index = ModifyIndex::default();
        for key in ["a", "web/2", "web/1", "web0", "z"] {
            map.merge(key, &Lww::new(stamp(1, 1), Some(0u8)), &mut index);
        }
        let keys: Vec<&String> = map.prefix("web/").map(|(k, _)| k).collect();
        assert_eq!(keys, ["web/1", "web/2"]);
    }

    #[test]
    fn old_tombstones_are_collected_and_digests_follow() {
        let mut map = SharedMap::default();
        let mut index = ModifyIndex::default();
        map.merge("k", &Lww::tombstone(stamp(100, 1)), &mut index);
        map.merge("live", &Lww::new(stamp(50, 1), Some(1u8)), &mut index);
        assert_eq!(
            map.collect_tombstones(100),
            0,
            "not older than the horizon yet"
        );
        assert_eq!(map.collect_tombstones(101), 1);
        let mut fresh = SharedMap::default();
        fresh.merge(
            "live",
            &Lww::new(stamp(50, 1), Some(1u8)),
            &mut ModifyIndex::default(),
        );
        assert_eq!(map.digests(), fresh.digests());
    }

    fn write() -> impl Strategy<Value = (String, Lww<u8>)> {
        let key =
            prop::sample::select(vec!["a", "b", "web/1", "web/2", "db"]).prop_map(str::to_owned);
        let stamp = (0..5u64, 0..2u32, 0..3u64).prop_map(|(physical_ms, logical, node)| Hlc {
            physical_ms,
            logical,
            node,
        });
        (key, stamp, proptest::option::of(0..3u8)).prop_map(|(k, s, v)| (k, Lww::new(s, v)))
    }

    fn state(map: &SharedMap<u8>) -> Vec<(String, Lww<u8>)> {
        map.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.register.clone()))
            .collect()
    }

    proptest! {
        /// Replicas that each saw an arbitrary subset of the writes, in any order and with
        /// duplicates, reach the same state after one digest-driven exchange per pair, and then
        /// their digests agree. The exchange sends only differing buckets.
        #[test]
        fn anti_entropy_by_digests_converges(
            writes in proptest::collection::vec(write(), 1..30),
            views in proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..60), 3),
        ) {
            let mut replicas: Vec<(SharedMap<u8>, ModifyIndex)> = views
                .iter()
                .map(|view| {
                    let mut map = SharedMap::default();
                    let mut index = ModifyIndex::default();
                    for i in view {
                        let (k, r) = &writes[i.index(writes.len())];
                        let before = index.last();
                        map.merge(k, r, &mut index);
                        prop_assert!(index.last() >= before);
                    }
                    Ok((map, index))
                })
                .collect::<Result<_, TestCaseError>>()?;
            // One replica also saw every write, so the union is the whole history.
            for (k, r) in &writes {
                let (map, index) = &mut replicas[0];
                map.merge(k, r, index);
            }
            // Two rounds: the second lets what a learned from b reach replicas visited before.
            for _round in 0..2 {
                for a in 0..replicas.len() {
                    for b in (0..replicas.len()).filter(|&b| b != a) {
                        let buckets = replicas[a].0.differing_buckets(replicas[b].0.digests());
                        let entries: Vec<(String, Lww<u8>)> = replicas[b].0.in_buckets(&buckets)
                            .map(|(_, k, e)| (k.clone(), e.register.clone()))
                            .collect();
                        let (map, index) = &mut replicas[a];
                        for (k, r) in &entries {
                            map.merge(k, r, index);
                        }
                    }
                }
            }
            let expected = state(&replicas[0].0);
            for (map, _) in &replicas {
                prop_assert_eq!(state(map), expected.clone());
                prop_assert_eq!(map.digests(), replicas[0].0.digests());
            }
            // And the state is the greatest write of each key.
            for (key, reg) in &expected {
                let best = writes.iter().filter(|(k, _)| k == key).map(|(_, r)| r).max().unwrap();
                prop_assert_eq!(reg, best);
            }
        }
    }
}
