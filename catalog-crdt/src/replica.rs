//! One node's replica of everything murmur replicates: every node's record (owned data) and the
//! shared key space (KV, intentions, config entries), with the rules for applying peers'
//! changes, the anti-entropy exchange (in [`sync`]), tombstone collection and the journal the
//! agent persists.
//!
//! The replica never reads a clock: every call that needs time takes the wall clock in ms.
//!
//! **Invariants**
//! - The modify index only grows, also across a restart ([`Replica::restore`] resumes it).
//! - Only this node writes its own record; a copy of it from a peer with an equal or higher
//!   version (a previous life that outran this one) makes it re-assert its record above that.
//! - A register older than the GC horizon for a key this (fresh) replica lacks is refused: its
//!   delete may already be collected here, and accepting it would resurrect the key.
//! - A replica that had no complete anti-entropy exchange for longer than the horizon is
//!   *stale*; it drops the keys older than the horizon that a fresh peer lacks (reset from
//!   peer) instead of pushing them back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl::{
    ACL_POLICY_PREFIX, ACL_PREFIX, ACL_REVOKED_PREFIX, ACL_ROLE_PREFIX, ACL_TOKEN_PREFIX,
    AclPolicy, AclRevocation, AclRole, AclToken,
};
use crate::ca_root::{CA_ROOT_PREFIX, CaRoot, DcRoot};
use crate::catalog::{CatalogView, NodeRecord};
use crate::coordinate::{self, COORDINATE_PREFIX, Coordinate};
use crate::directory::{self, DIRECTORY_PREFIX, Gateway};
use crate::external::{self, EXTERNAL_PREFIX, ExternalNodes, ExternalPart, PartKey};
use crate::hlc::{Clock, ClockError, Hlc};
use crate::intentions::Intention;
use crate::kv::{self, KvError, KvValue, KvView, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::owned::{OwnedEntry, OwnedMap};
use crate::patch::RecordPatch;
use crate::query::{PreparedQuery, QUERY_PREFIX};
use crate::register::{Lww, Owned, Version};
use crate::shared::{Entry, ModifyIndex, SharedMap};
use crate::summary::{DcSummary, SUMMARY_PREFIX};
use crate::value::{
    CONFIG_PREFIX, Change, ChangeKey, ConfigEntry, INTENTION_PREFIX, KV_PREFIX, SHARED_PREFIXES,
    Value,
};

/// Most reaped owners remembered, so a late copy of a reaped record is not taken back in.
const REAPED_MEMORY: usize = 4096;
/// Longest owner name accepted in a change (gossip's node-name limit).
const MAX_OWNER_BYTES: usize = 64;

mod patches;
mod sync;

pub use sync::{KeySummary, SyncDigest, SyncError, SyncPush, SyncPushReply, SyncSummary};

/// Tunables of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// How far ahead of the local wall clock a remote stamp may be.
    pub max_clock_ahead: Duration,
    /// How long deletes are kept as tombstones; a replica away longer resets from a peer.
    pub gc_horizon: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            max_clock_ahead: Duration::from_secs(60),
            gc_horizon: Duration::from_secs(72 * 3600),
        }
    }
}

/// Why a peer's change was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The stamp is too far in the future.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The change breaks a rule no honest peer breaks.
    #[error("malformed change: {0}")]
    Malformed(&'static str),
    /// Older than the GC horizon for a key this replica does not hold.
    #[error("change is older than the tombstone horizon for a key this replica no longer holds")]
    BeyondHorizon,
    /// A copy of a record this replica reaped.
    #[error("record of a reaped owner")]
    Reaped,
}

/// Counters a replica keeps; the agent exports them as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Peers' changes that changed this replica.
    pub applied: u64,
    /// Peers' changes that were already known or older.
    pub redundant: u64,
    /// Refused: stamp too far in the future.
    pub refused_clock: u64,
    /// Refused: malformed.
    pub refused_malformed: u64,
    /// Refused: beyond the GC horizon, or a reaped owner's record.
    pub refused_stale: u64,
    /// Tombstones collected.
    pub tombstones_collected: u64,
    /// Keys dropped when resetting from a peer after being away too long.
    pub reset_dropped: u64,
    /// Peers' record patches that made a record here (at once or after waiting for their base).
    pub patches_applied: u64,
    /// Record patches that arrived before their base and were held for it.
    pub patches_waited: u64,
    /// Held record patches given up for newer ones before their base came (anti-entropy
    /// brings the record instead).
    pub patches_dropped: u64,
}

/// What applying a peer's change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// It changed this replica.
    Changed,
    /// This replica held it already, or newer.
    Known,
    /// A patch held until its base arrives.
    Held,
}

/// A journal entry: what the agent appends to its log so a restart rebuilds the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Journaled {
    /// `change` was applied and got modify index `index`.
    Change {
        /// The modify index it got.
        index: u64,
        /// The change.
        change: Change,
    },
    /// The record of `owner` was reaped.
    ForgetRecord {
        /// The owner.
        owner: String,
    },
    /// `key` was dropped while resetting from a peer.
    ForgetShared {
        /// The key.
        key: String,
    },
    /// A complete anti-entropy exchange happened at this wall-clock time.
    Contact {
        /// Wall-clock ms.
        at_ms: u64,
    },
    /// Membership moved, so health answers changed; the catalog index moved to `index`.
    MembershipMoved {
        /// The index it got.
        index: u64,
    },
}

/// The whole replica at one modify index, for compacting the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The modify index when it was taken.
    pub index: u64,
    /// Last complete anti-entropy exchange.
    pub last_contact_ms: u64,
    /// Every record with its index.
    pub records: Vec<(String, OwnedEntry<Arc<NodeRecord>>)>,
    /// Every shared entry, tombstones included, with its indexes.
    pub shared: Vec<(String, Entry<Value>)>,
    /// This node's last non-empty record (kept through a leave, restored at the next start).
    pub own: Option<Arc<NodeRecord>>,
}

/// One node's replica.
#[derive(Debug, Clone)]
pub struct Replica {
    me: String,
    clock: Clock,
    index: ModifyIndex,
    records: OwnedMap<Arc<NodeRecord>>,
    shared: SharedMap<Value>,
    /// External nodes, derived from their parts in `shared`.
    external: ExternalNodes,
    own: Version,
    reaped: BTreeMap<String, Version>,
    reaped_order: VecDeque<String>,
    last_contact_ms: u64,
    /// Modify index of the last change to any record, reaps included.
    records_index: u64,
    /// This node's last non-empty record: what it registers again after a leave and restart.
    kept: Option<Arc<NodeRecord>>,
    config: ReplicaConfig,
    journal: Vec<Journaled>,
    outbox: Vec<Change>,
    /// Peers' record patches that arrived before their base, oldest first, with when (wall ms).
    waiting: VecDeque<(RecordPatch, u64)>,
    stats: ReplicaStats,
}

impl Replica {
    /// An empty replica for node `me` (gossip id `node_id`) in boot `generation`; `generation`
    /// must grow across restarts, so this life's record versions beat every earlier one.
    pub fn new(me: &str, node_id: u64, generation: u64, config: ReplicaConfig) -> Self {
        Self {
            me: me.to_owned(),
            clock: Clock::new(node_id, config.max_clock_ahead),
            index: ModifyIndex::default(),
            records: OwnedMap::default(),
            shared: SharedMap::default(),
            external: ExternalNodes::new(),
            own: Version {
                generation,
                counter: 0,
            },
            reaped: BTreeMap::new(),
            reaped_order: VecDeque::new(),
            last_contact_ms: 0,
            records_index: 0,
            kept: None,
            config,
            journal: Vec::new(),
            outbox: Vec::new(),
            waiting: VecDeque::new(),
            stats: ReplicaStats::default(),
        }
    }

    /// Rebuilds a replica from a snapshot and the journal written after it. The modify index
    /// resumes at the highest persisted one and the clock above every persisted stamp.
    pub fn restore(
        me: &str,
        node_id: u64,
        generation: u64,
        config: ReplicaConfig,
        snapshot: Option<Snapshot>,
        log: impl IntoIterator<Item = Journaled>,
    ) -> Self {
        let mut replica = Self::new(me, node_id, generation, config);
        if let Some(snapshot) = snapshot {
            replica.index = ModifyIndex::resume(snapshot.index);
            replica.last_contact_ms = snapshot.last_contact_ms;
            for (owner, entry) in snapshot.records {
                replica.records.restore(owner, entry);
            }
            for (key, entry) in snapshot.shared {
                replica.shared.restore(key, entry);
            }
            replica.kept = snapshot.own;
        }
        for entry in log {
            replica.replay(entry);
        }
        replica.external = ExternalNodes::rebuild(&replica.shared);
        let newest = replica
            .shared
            .iter()
            .map(|(_, e)| *e.register.stamp())
            .max()
            .unwrap_or_default();
        replica.clock = Clock::resume(node_id, config.max_clock_ahead, newest);
        // What changed the catalog before the restart is not all kept (membership moves, reaps
        // and external nodes' tombstones may be compacted away), so the catalog index resumes
        // at the highest index of all: it may wake a watcher once, but never goes back.
        replica.records_index = replica.index.last();
        if let Some(mine) = replica.records.entry(me) {
            replica.own = replica.own.max(*mine.register.stamp());
        }
        replica
    }

    fn replay(&mut self, entry: Journaled) {
        match entry {
            Journaled::Change { index, change } => {
                let mut at = ModifyIndex::resume(index.saturating_sub(1));
                match change {
                    Change::Record { owner, register } => {
                        if owner == self.me && register.value().is_some() {
                            self.kept.clone_from(register.value());
                        }
                        self.records.merge(&owner, &register, &mut at);
                    }
                    Change::Shared { key, register } => {
                        self.shared.merge(&key, &register, &mut at);
                        if key.starts_with(EXTERNAL_PREFIX) {
                            self.records_index = index;
                        }
                    }
                    // A patch is journaled as the whole record it makes.
                    Change::Patch(_) => {}
                }
                self.index = ModifyIndex::resume(self.index.last().max(index));
            }
            Journaled::ForgetRecord { owner } => self.forget_record(&owner),
            Journaled::ForgetShared { key } => {
                self.forget_shared(&key);
            }
            Journaled::Contact { at_ms } => self.last_contact_ms = self.last_contact_ms.max(at_ms),
            Journaled::MembershipMoved { index } => {
                self.index = ModifyIndex::resume(self.index.last().max(index));
            }
        }
    }

    /// The whole state, for compacting the journal.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            index: self.index.last(),
            last_contact_ms: self.last_contact_ms,
            records: self
                .records
                .entries()
                .map(|(o, e)| (o.clone(), e.clone()))
                .collect(),
            shared: self
                .shared
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
            own: self.kept.clone(),
        }
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The latest modify index handed out.
    pub fn index(&self) -> u64 {
        self.index.last()
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        let mut stats = self.stats;
        stats.refused_clock = self.clock.rejected();
        stats
    }

    /// Every record.
    pub fn records(&self) -> &OwnedMap<Arc<NodeRecord>> {
        &self.records
    }

    /// The shared key space.
    pub fn shared(&self) -> &SharedMap<Value> {
        &self.shared
    }

    /// Catalog queries, with `failed` the nodes membership does not consider alive.
    pub fn catalog<'a>(&'a self, failed: &'a BTreeSet<String>) -> CatalogView<'a> {
        CatalogView::new(&self.records, failed).with_external(&self.external)
    }

    /// External nodes (registered through the catalog, run by no agent).
    pub fn external(&self) -> &ExternalNodes {
        &self.external
    }

    /// KV queries.
    pub fn kv(&self) -> KvView<'_> {
        KvView::new(&self.shared)
    }

    /// Live intentions, in key order.
    pub fn intentions(&self) -> impl Iterator<Item = &Intention> {
        self.shared
            .prefix(INTENTION_PREFIX)
            .filter_map(|(_, e)| match e.register.value() {
                Some(Value::Intention(i)) => Some(&**i),
                _ => None,
            })
    }

    /// Live config entries of `kind` (all kinds for `""`), in key order.
    pub fn config_entries(&self, kind: &str) -> impl Iterator<Item = &ConfigEntry> {
        let prefix = if kind.is_empty() {
            CONFIG_PREFIX.to_owned()
        } else {
            format!("{CONFIG_PREFIX}{kind}/")
        };
        self.shared
            .prefix(&prefix)
            .filter_map(|(_, e)| match e.register.value() {
                Some(Value::Config(c)) => Some(&**c),
                _ => None,
            })
    }

    /// The modify index of the last change to any record, reaps included, so it never goes
    /// back when a record disappears (0: none yet).
    pub fn records_index(&self) -> u64 {
        self.records_index
    }

    /// Membership moved (a node failed, came back, left): the health answers derived from it
    /// changed, so the catalog index moves too, or a blocking health query would sleep
    /// through a failure. Journaled, so the index never goes back across a restart.
    pub fn membership_moved(&mut self) {
        self.records_index = self.index.next();
        self.journal.push(Journaled::MembershipMoved {
            index: self.records_index,
        });
    }

    /// This node's own record as last written (`None` after a leave).
    pub fn own_record(&self) -> Option<&NodeRecord> {
        self.records.get(&self.me).map(|r| &**r)
    }

    /// This node's last non-empty record, kept through a leave: what it registers again when
    /// it starts.
    pub fn kept_own_record(&self) -> Option<&NodeRecord> {
        self.kept.as_deref()
    }

    /// Journal entries since the last call, for the agent to persist in order.
    pub fn take_journal(&mut self) -> Vec<Journaled> {
        std::mem::take(&mut self.journal)
    }

    /// Whether this replica lacks the change `key` names (holds nothing there, or older):
    /// whether a copy offered by a peer is worth receiving.
    pub fn lacks(&self, key: &ChangeKey) -> bool {
        match key {
            ChangeKey::Record { owner, version } => self
                .records
                .entry(owner)
                .is_none_or(|e| e.register.stamp() < version),
            ChangeKey::Shared { key, stamp } => self
                .shared
                .entry(key)
                .is_none_or(|e| e.register.stamp() < stamp),
        }
    }

    /// What this replica holds for the subject of `key`, if it is that change or newer: what
    /// to send a peer that asked for `key`.
    pub fn change_for(&self, key: &ChangeKey) -> Option<Change> {
        if self.lacks(key) {
            return None;
        }
        Some(match key {
            ChangeKey::Record { owner, .. } => Change::Record {
                owner: owner.clone(),
                register: self.records.entry(owner)?.register.clone(),
            },
            ChangeKey::Shared { key, .. } => Change::Shared {
                key: key.clone(),
                register: self.shared.entry(key)?.register.clone(),
            },
        })
    }

    /// Changes made here since the last call, for the gossip layer to spread.
    pub fn take_outbox(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.outbox)
    }

    /// Replaces this node's record (`None` on leave) and queues it for spreading: whole, or
    /// as a patch against the version before when the record is large and the change small.
    pub fn set_own_record(&mut self, record: Option<NodeRecord>) {
        self.publish_own(record, true);
    }

    /// Writes (or, with `None`, deletes) a KV entry at wall time `wall_ms` unless `cas` does
    /// not match this replica's modify index of the key; `Ok(false)` when the CAS failed.
    pub fn kv_write(
        &mut self,
        key: &str,
        value: Option<KvValue>,
        cas: Option<u64>,
        wall_ms: u64,
    ) -> Result<bool, KvError> {
        kv::validate(key, value.as_ref())?;
        if let Some(expected) = cas {
            let current = self.kv().get(key).map_or(0, |e| e.modify_index);
            if current != expected {
                return Ok(false);
            }
        }
        self.write_shared(format!("{KV_PREFIX}{key}"), value.map(Value::Kv), wall_ms);
        Ok(true)
    }

    /// Creates or replaces the intention `source → destination`.
    pub fn put_intention(&mut self, intention: Intention, wall_ms: u64) {
        let key = Intention::key(&intention.source, &intention.destination);
        self.write_shared(key, Some(Value::Intention(Box::new(intention))), wall_ms);
    }

    /// Deletes the intention `source → destination`; false when there was none.
    pub fn delete_intention(&mut self, source: &str, destination: &str, wall_ms: u64) -> bool {
        self.delete_shared(Intention::key(source, destination), wall_ms)
    }

    /// Publishes a root of `datacenter` (unchanged roots write nothing), and withdraws its
    /// copy under the key it had before roots named their datacenter.
    pub fn put_ca_root(&mut self, datacenter: &str, root: CaRoot, wall_ms: u64) {
        let legacy = CaRoot::legacy_key(&root.id);
        let key = CaRoot::key(datacenter, &root.id);
        self.write_if_different(key, Value::CaRoot(Box::new(root)), wall_ms);
        self.delete_shared(legacy, wall_ms);
    }

    /// Every CA root published, of every datacenter, in key order.
    pub fn ca_roots(&self) -> impl Iterator<Item = DcRoot<'_>> {
        self.values(CA_ROOT_PREFIX, |v| match v {
            Value::CaRoot(root) => Some(&**root),
            _ => None,
        })
        .filter_map(|(key, root, modify_index)| {
            let (datacenter, _) = CaRoot::parse_key(key)?;
            Some(DcRoot {
                datacenter,
                root,
                modify_index,
            })
        })
    }

    /// The live values under `prefix` that `pick` takes, with their keys and modify indexes
    /// (tombstones skipped).
    fn values<'a, T: 'a>(
        &'a self,
        prefix: &str,
        pick: impl Fn(&'a Value) -> Option<&'a T>,
    ) -> impl Iterator<Item = (&'a String, &'a T, u64)> {
        self.shared.prefix(prefix).filter_map(move |(key, e)| {
            Some((key, pick(e.register.value().as_ref()?)?, e.modify_index))
        })
    }

    /// Publishes this node's LAN coordinate.
    pub fn put_coordinate(&mut self, coordinate: Coordinate, wall_ms: u64) {
        let key = Coordinate::key(&self.me);
        self.write_if_different(key, Value::Coordinate(Box::new(coordinate)), wall_ms);
    }

    /// Withdraws this node's LAN coordinate (it leaves).
    pub fn delete_coordinate(&mut self, wall_ms: u64) -> bool {
        self.delete_shared(Coordinate::key(&self.me), wall_ms)
    }

    /// The LAN coordinate of every node that published one, by node name; with the modify
    /// index of the last change to any.
    pub fn coordinates(&self) -> impl Iterator<Item = (&str, &Coordinate, u64)> {
        self.values(COORDINATE_PREFIX, |v| match v {
            Value::Coordinate(c) => Some(&**c),
            _ => None,
        })
        .filter_map(|(key, c, index)| Some((coordinate::node_of_key(key)?, c, index)))
    }

    /// The modify index of the last change to any coordinate (0: none ever).
    pub fn coordinates_index(&self) -> u64 {
        self.shared.prefix_index(COORDINATE_PREFIX)
    }

    /// Publishes (or refreshes) a datacenter directory entry.
    pub fn put_gateway(&mut self, gateway: Gateway, wall_ms: u64) {
        let key = Gateway::key(&gateway.datacenter, &gateway.node);
        self.write_if_different(key, Value::Gateway(Box::new(gateway)), wall_ms);
    }

    /// Withdraws the directory entry of `node` as a gateway of `datacenter`; false when
    /// there was none.
    pub fn delete_gateway(&mut self, datacenter: &str, node: &str, wall_ms: u64) -> bool {
        self.delete_shared(Gateway::key(datacenter, node), wall_ms)
    }

    /// Every datacenter directory entry, by datacenter then node.
    pub fn gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.values(DIRECTORY_PREFIX, |v| match v {
            Value::Gateway(g) => Some(&**g),
            _ => None,
        })
        .map(|(_, gateway, _)| gateway)
    }

    /// Publishes a datacenter's catalog summary (an unchanged one writes nothing).
    pub fn put_summary(&mut self, summary: DcSummary, wall_ms: u64) {
        let key = DcSummary::key(&summary.datacenter);
        self.write_if_different(key, Value::Summary(Box::new(summary)), wall_ms);
    }

    /// Every datacenter's catalog summary, with when it was written (wall-clock ms of its
    /// stamp), in datacenter order.
    pub fn summaries(&self) -> impl Iterator<Item = (&DcSummary, u64)> {
        self.values(SUMMARY_PREFIX, |v| match v {
            Value::Summary(s) => Some(&**s),
            _ => None,
        })
        .map(|(key, summary, _)| {
            let written = self
                .shared
                .entry(key)
                .map_or(0, |e| e.register.stamp().physical_ms);
            (summary, written)
        })
    }

    /// Creates or replaces an ACL token.
    pub fn put_acl_token(&mut self, token: AclToken, wall_ms: u64) {
        let key = AclToken::key(&token.accessor_id);
        self.write_shared(key, Some(Value::AclToken(Box::new(token))), wall_ms);
    }

    /// Revokes the ACL token `accessor_id` for good: its record is deleted and a revocation
    /// written, which an update of the token made concurrently elsewhere cannot undo. False
    /// when there was no such token.
    pub fn revoke_acl_token(&mut self, accessor_id: &str, wall_ms: u64) -> bool {
        let revocation = AclRevocation {
            accessor_id: accessor_id.to_owned(),
            revoked_ms: wall_ms,
        };
        self.write_shared(
            AclRevocation::key(accessor_id),
            Some(Value::AclRevoked(Box::new(revocation))),
            wall_ms,
        );
        self.delete_shared(AclToken::key(accessor_id), wall_ms)
    }

    /// Whether any token was ever made here or anywhere this replica heard from (revoked and
    /// deleted ones count): once so, bootstrapping is over for good, as in Consul.
    pub fn acl_bootstrapped(&self) -> bool {
        self.shared.prefix(ACL_TOKEN_PREFIX).next().is_some()
            || self.shared.prefix(ACL_REVOKED_PREFIX).next().is_some()
    }

    /// Whether the token `accessor_id` was ever revoked (its accessor cannot be used again).
    pub fn acl_revoked(&self, accessor_id: &str) -> bool {
        self.shared
            .entry(&AclRevocation::key(accessor_id))
            .is_some_and(|e| e.register.value().is_some())
    }

    /// Every ACL token that is not revoked, with the modify index of its last change.
    pub fn acl_tokens(&self) -> impl Iterator<Item = (&AclToken, u64)> {
        self.values(ACL_TOKEN_PREFIX, |v| match v {
            Value::AclToken(t) => Some(&**t),
            _ => None,
        })
        .map(|(_, token, index)| (token, index))
        .filter(|(token, _)| !self.acl_revoked(&token.accessor_id))
    }

    /// Creates or replaces an ACL policy.
    pub fn put_acl_policy(&mut self, policy: AclPolicy, wall_ms: u64) {
        let key = AclPolicy::key(&policy.id);
        self.write_shared(key, Some(Value::AclPolicy(Box::new(policy))), wall_ms);
    }

    /// Deletes the ACL policy `id`; false when there was none.
    pub fn delete_acl_policy(&mut self, id: &str, wall_ms: u64) -> bool {
        self.delete_shared(AclPolicy::key(id), wall_ms)
    }

    /// Every ACL policy, with the modify index of its last change.
    pub fn acl_policies(&self) -> impl Iterator<Item = (&AclPolicy, u64)> {
        self.values(ACL_POLICY_PREFIX, |v| match v {
            Value::AclPolicy(p) => Some(&**p),
            _ => None,
        })
        .map(|(_, policy, index)| (policy, index))
    }

    /// Creates or replaces an ACL role.
    pub fn put_acl_role(&mut self, role: AclRole, wall_ms: u64) {
        let key = AclRole::key(&role.id);
        self.write_shared(key, Some(Value::AclRole(Box::new(role))), wall_ms);
    }

    /// Deletes the ACL role `id`; false when there was none.
    pub fn delete_acl_role(&mut self, id: &str, wall_ms: u64) -> bool {
        self.delete_shared(AclRole::key(id), wall_ms)
    }

    /// Every ACL role, with the modify index of its last change.
    pub fn acl_roles(&self) -> impl Iterator<Item = (&AclRole, u64)> {
        self.values(ACL_ROLE_PREFIX, |v| match v {
            Value::AclRole(r) => Some(&**r),
            _ => None,
        })
        .map(|(_, role, index)| (role, index))
    }

    /// The modify index of the last change to any ACL token or policy (0: none ever): what
    /// an agent's cache of authorizers is keyed on.
    pub fn acl_index(&self) -> u64 {
        self.shared.prefix_index(ACL_PREFIX)
    }

    /// Creates or replaces a prepared query.
    pub fn put_query(&mut self, query: PreparedQuery, wall_ms: u64) {
        let key = PreparedQuery::key(&query.id);
        self.write_shared(key, Some(Value::Query(Box::new(query))), wall_ms);
    }

    /// Deletes the prepared query `id`; false when there was none.
    pub fn delete_query(&mut self, id: &str, wall_ms: u64) -> bool {
        self.delete_shared(PreparedQuery::key(id), wall_ms)
    }

    /// Every prepared query, by id, with the modify index of its last change.
    pub fn queries(&self) -> impl Iterator<Item = (&PreparedQuery, u64)> {
        self.values(QUERY_PREFIX, |v| match v {
            Value::Query(q) => Some(&**q),
            _ => None,
        })
        .map(|(_, query, index)| (query, index))
    }

    /// The modify index of the last change to any prepared query (0: none ever).
    pub fn queries_index(&self) -> u64 {
        self.shared.prefix_index(QUERY_PREFIX)
    }

    /// Creates or replaces a config entry.
    pub fn put_config(&mut self, entry: ConfigEntry, wall_ms: u64) {
        let key = ConfigEntry::key(&entry.kind, &entry.name);
        self.write_shared(key, Some(Value::Config(Box::new(entry))), wall_ms);
    }

    /// Deletes a config entry; false when there was none.
    pub fn delete_config(&mut self, kind: &str, name: &str, wall_ms: u64) -> bool {
        self.delete_shared(ConfigEntry::key(kind, name), wall_ms)
    }

    /// Registers (part of) an external node: its fields unless `keep_node` and it exists
    /// already, then each service and check, each as a shared register of its own.
    pub fn register_external(
        &mut self,
        node: &str,
        fields: external::ExternalNode,
        keep_node: bool,
        services: Vec<crate::catalog::Service>,
        checks: Vec<crate::catalog::Check>,
        wall_ms: u64,
    ) {
        if !(keep_node && self.external.get(node).is_some()) {
            let key = external::part_key(node, PartKey::Node);
            let value = Value::External(Box::new(ExternalPart::Node(fields)));
            self.write_if_different(key, value, wall_ms);
        }
        for service in services {
            let key = external::part_key(node, PartKey::Service(&service.id));
            let value = Value::External(Box::new(ExternalPart::Service(service)));
            self.write_if_different(key, value, wall_ms);
        }
        for check in checks {
            let key = external::part_key(node, PartKey::Check(&check.id));
            let value = Value::External(Box::new(ExternalPart::Check(check)));
            self.write_if_different(key, value, wall_ms);
        }
    }

    /// Deregisters an external node whole, or one service of it (with the checks watching
    /// it), or one check; false when there was nothing to remove.
    pub fn deregister_external(&mut self, node: &str, part: PartKey<'_>, wall_ms: u64) -> bool {
        let keys: Vec<String> = match part {
            PartKey::Node => self
                .shared
                .prefix(&external::node_prefix(node))
                .filter(|(_, e)| e.register.value().is_some())
                .map(|(k, _)| k.clone())
                .collect(),
            PartKey::Service(id) => {
                let watching = self.external.get(node).into_iter().flat_map(|e| {
                    e.record
                        .checks
                        .values()
                        .filter(|c| c.service_id == id)
                        .map(|c| external::part_key(node, PartKey::Check(&c.id)))
                });
                std::iter::once(external::part_key(node, part))
                    .chain(watching)
                    .collect()
            }
            PartKey::Check(_) => vec![external::part_key(node, part)],
        };
        let mut removed = false;
        for key in keys {
            removed |= self.delete_shared(key, wall_ms);
        }
        removed
    }

    /// Writes `value` under `key` unless it holds exactly that already: re-registering an
    /// unchanged external service writes nothing.
    fn write_if_different(&mut self, key: String, value: Value, wall_ms: u64) {
        if self.shared.get(&key) != Some(&value) {
            self.write_shared(key, Some(value), wall_ms);
        }
    }

    /// Writes a tombstone for a live key; false (and no tombstone) when it is not live.
    fn delete_shared(&mut self, key: String, wall_ms: u64) -> bool {
        let live = self.shared.get(&key).is_some();
        if live {
            self.write_shared(key, None, wall_ms);
        }
        live
    }

    fn write_shared(&mut self, key: String, value: Option<Value>, wall_ms: u64) {
        let register = Lww::new(self.clock.now(wall_ms), value);
        self.merge_local(Change::Shared { key, register });
    }

    /// Applies a change made here and queues it for spreading.
    fn merge_local(&mut self, change: Change) {
        if self.merge(&change) {
            self.outbox.push(change);
        }
    }

    /// Merges a change and journals it; returns whether the replica changed.
    fn merge(&mut self, change: &Change) -> bool {
        let changed = match change {
            Change::Record { owner, register } => {
                let changed = self
                    .records
                    .merge(owner, register, &mut self.index)
                    .is_some();
                if changed {
                    self.records_index = self.index.last();
                }
                changed
            }
            Change::Shared { key, register } => {
                let changed = self.shared.merge(key, register, &mut self.index).is_some();
                if changed {
                    self.refresh_external(key, self.index.last());
                }
                changed
            }
            Change::Patch(_) => {
                unreachable!("a patch is merged as the record it makes (`apply_patch`)")
            }
        };
        if changed {
            self.journal.push(Journaled::Change {
                index: self.index.last(),
                change: change.clone(),
            });
        }
        changed
    }

    /// Derives the external node a changed key belongs to again; `index` is the change's.
    fn refresh_external(&mut self, key: &str, index: u64) {
        if let Some((node, _)) = external::parse_key(key) {
            self.external.refresh(node, &self.shared);
            self.records_index = index;
        }
    }

    /// Drops a shared key without a tombstone (resetting from a peer).
    fn forget_shared(&mut self, key: &str) {
        if self.shared.remove(key).is_some() && key.starts_with(EXTERNAL_PREFIX) {
            // Not journaled with an index of its own, so take the next, as a reap does.
            let index = self.index.next();
            self.refresh_external(key, index);
        }
    }

    /// Wall-clock ms of the last complete anti-entropy exchange (either side), 0 for never:
    /// until one, a replica restored from disk shows its peers as they were.
    pub fn last_contact_ms(&self) -> u64 {
        self.last_contact_ms
    }

    /// Whether no complete anti-entropy exchange happened within the GC horizon.
    pub fn is_stale(&self, wall_ms: u64) -> bool {
        self.last_contact_ms.saturating_add(self.horizon_ms()) < wall_ms
    }

    fn horizon_ms(&self) -> u64 {
        u64::try_from(self.config.gc_horizon.as_millis()).unwrap_or(u64::MAX)
    }

    fn beyond_horizon(&self, stamp: &Hlc, wall_ms: u64) -> bool {
        stamp.physical_ms.saturating_add(self.horizon_ms()) < wall_ms
    }

    /// Applies a peer's change; `Ok(true)` when it changed this replica.
    pub fn apply(&mut self, change: &Change, wall_ms: u64) -> Result<bool, ApplyError> {
        let result = self.check_and_merge(change, wall_ms);
        match &result {
            Ok(Applied::Changed) => self.stats.applied += 1,
            Ok(Applied::Known) => self.stats.redundant += 1,
            Ok(Applied::Held) => {}
            Err(ApplyError::Malformed(_)) => self.stats.refused_malformed += 1,
            Err(ApplyError::BeyondHorizon | ApplyError::Reaped) => self.stats.refused_stale += 1,
            Err(ApplyError::Clock(_)) => {}
        }
        result.map(|applied| applied == Applied::Changed)
    }

    /// Refuses a record (or patch) of `owner` at `version` that is malformed or reaped.
    fn check_record(&self, owner: &str, version: &Version) -> Result<(), ApplyError> {
        if owner.is_empty() || owner.len() > MAX_OWNER_BYTES || owner.contains('/') {
            return Err(ApplyError::Malformed("bad owner name"));
        }
        if self.reaped.get(owner).is_some_and(|v| v >= version) {
            return Err(ApplyError::Reaped);
        }
        Ok(())
    }

    fn check_and_merge(&mut self, change: &Change, wall_ms: u64) -> Result<Applied, ApplyError> {
        match change {
            Change::Record { owner, register } => {
                if *owner == self.me {
                    self.reassert_if_outrun(register);
                    return Ok(Applied::Known);
                }
                self.check_record(owner, register.stamp())?;
                return Ok(self.merge_record(owner, register.clone()));
            }
            Change::Patch(patch) => {
                if patch.owner != self.me {
                    self.check_record(&patch.owner, &patch.version)?;
                }
                return self.apply_patch(patch, wall_ms);
            }
            Change::Shared { key, register } => {
                check_shared(key, register)?;
                // A reaped owner's coordinate went with its record; a late copy stays out.
                if coordinate::node_of_key(key).is_some_and(|n| self.reaped.contains_key(n)) {
                    return Err(ApplyError::Reaped);
                }
                self.clock.observe(*register.stamp(), wall_ms)?;
                if self.shared.entry(key).is_none()
                    && !self.is_stale(wall_ms)
                    && self.beyond_horizon(register.stamp(), wall_ms)
                {
                    return Err(ApplyError::BeyondHorizon);
                }
            }
        }
        Ok(if self.merge(change) {
            Applied::Changed
        } else {
            Applied::Known
        })
    }

    /// A peer holds a copy of this node's record that is not this node's latest: an earlier
    /// life's (this node restarted without its data and holds no record of its own yet), or
    /// one that outran this one. Re-publish the current record (possibly none) above it, so
    /// every replica converges on what this node says now.
    fn reassert_if_outrun(&mut self, theirs: &Owned<Option<Arc<NodeRecord>>>) {
        let ours = self.records.entry(&self.me).map(|e| &e.register);
        let outrun = *theirs.stamp() >= self.own;
        if ours == Some(theirs) || (ours.is_some() && !outrun) {
            // Ours is the same, or newer and on its way to them.
            return;
        }
        self.own = self.own.max(*theirs.stamp());
        let current = self.own_record().cloned();
        // Whole: the peer holds another life's record, no base of this one.
        self.publish_own(current, false);
    }

    /// Forgets an owner's record (reaped after failing or leaving long enough ago) and refuses
    /// copies of it until [`Replica::forget_reaped`] says the owner is back.
    pub fn reap(&mut self, owner: &str) -> bool {
        let Some(version) = self.records.entry(owner).map(|e| *e.register.stamp()) else {
            return false;
        };
        self.forget_record(owner);
        self.journal.push(Journaled::ForgetRecord {
            owner: owner.to_owned(),
        });
        if self.reaped.insert(owner.to_owned(), version).is_none() {
            self.reaped_order.push_back(owner.to_owned());
        }
        while self.reaped_order.len() > REAPED_MEMORY {
            if let Some(oldest) = self.reaped_order.pop_front() {
                self.reaped.remove(&oldest);
            }
        }
        true
    }

    /// Drops `owner`'s record and what exists only with it (its LAN coordinate), with no
    /// tombstone: every replica reaps the owner on its own.
    fn forget_record(&mut self, owner: &str) {
        self.records.remove(owner);
        // The reap took an index of its own; it is not journaled, so take the next.
        self.records_index = self.index.next();
        self.shared.remove(&Coordinate::key(owner));
    }

    /// The owner is alive again: its record is welcome whatever its version.
    pub fn forget_reaped(&mut self, owner: &str) {
        if self.reaped.remove(owner).is_some() {
            self.reaped_order.retain(|o| o != owner);
        }
    }

    /// Drops tombstones older than the GC horizon; returns how many.
    pub fn collect_garbage(&mut self, wall_ms: u64) -> usize {
        let collected = self
            .shared
            .collect_tombstones(wall_ms.saturating_sub(self.horizon_ms()));
        self.stats.tombstones_collected += collected as u64;
        collected
    }

    fn mark_contact(&mut self, wall_ms: u64) {
        self.last_contact_ms = wall_ms;
        self.journal.push(Journaled::Contact { at_ms: wall_ms });
    }
}

/// Checks a shared change against the key-space rules.
fn check_shared(key: &str, register: &Lww<Value>) -> Result<(), ApplyError> {
    let prefix = match register.value() {
        Some(value) => value.prefix(),
        None => SHARED_PREFIXES
            .into_iter()
            .find(|p| key.starts_with(p))
            .ok_or(ApplyError::Malformed("key outside every prefix"))?,
    };
    if !key.starts_with(prefix) {
        return Err(ApplyError::Malformed("value kind does not match its key"));
    }
    let external_fits = match register.value() {
        Some(Value::External(part)) => part.fits(key),
        _ => prefix != EXTERNAL_PREFIX || external::parse_key(key).is_some(),
    };
    if !external_fits {
        return Err(ApplyError::Malformed(
            "external part does not match its key",
        ));
    }
    if key.len() > prefix.len() + MAX_KEY_BYTES * 2 {
        return Err(ApplyError::Malformed("key too long"));
    }
    if let Some(Value::Kv(value)) = register.value()
        && value.value.len() > MAX_VALUE_BYTES
    {
        return Err(ApplyError::Malformed("value too large"));
    }
    let root_fits = match register.value() {
        Some(Value::CaRoot(root)) => CaRoot::parse_key(key).is_some_and(|(_, id)| id == root.id),
        _ => prefix != CA_ROOT_PREFIX || CaRoot::parse_key(key).is_some(),
    };
    if !root_fits {
        return Err(ApplyError::Malformed("CA root under another root's key"));
    }
    let coordinate_fits = match register.value() {
        Some(Value::Coordinate(c)) => c.is_valid() && coordinate::node_of_key(key).is_some(),
        _ => prefix != COORDINATE_PREFIX || coordinate::node_of_key(key).is_some(),
    };
    if !coordinate_fits {
        return Err(ApplyError::Malformed("bad coordinate or coordinate key"));
    }
    let gateway_fits = match register.value() {
        Some(Value::Gateway(g)) => g.fits(key),
        _ => prefix != DIRECTORY_PREFIX || directory::parse_key(key).is_some(),
    };
    if let Some(Value::Summary(summary)) = register.value()
        && !summary.fits(key)
    {
        return Err(ApplyError::Malformed(
            "datacenter summary under another datacenter's key",
        ));
    }
    let acl_fits = match register.value() {
        Some(Value::AclToken(t)) => t.fits(key),
        Some(Value::AclPolicy(p)) => p.fits(key),
        Some(Value::AclRevoked(r)) => r.fits(key),
        Some(Value::AclRole(r)) => r.fits(key),
        _ => true,
    };
    if !acl_fits {
        return Err(ApplyError::Malformed(
            "ACL token or policy under another's key",
        ));
    }
    if let Some(Value::Query(query)) = register.value()
        && !query.fits(key)
    {
        return Err(ApplyError::Malformed(
            "prepared query under another query's key",
        ));
    }
    if !gateway_fits {
        return Err(ApplyError::Malformed(
            "datacenter directory entry does not match its key",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::catalog::{Check, Health, Service};
    use crate::intentions::Action;
    use crate::shared::BUCKETS;

    const BUDGET: usize = 1 << 20;
    const HOUR_MS: u64 = 3_600_000;
    /// A wall clock well past the GC horizon, so "old" stamps exist.
    const NOW: u64 = 1_000 * HOUR_MS;

    fn replica(name: &str, id: u64) -> Replica {
        Replica::new(name, id, 1, ReplicaConfig::default())
    }

    fn val(bytes: &[u8]) -> Option<KvValue> {
        Some(KvValue {
            flags: 0,
            value: bytes.to_vec(),
        })
    }

    /// The four-step exchange, `a` initiating; returns whether it was complete.
    fn sync(a: &mut Replica, b: &mut Replica, wall_ms: u64) -> bool {
        let digest = a.sync_digest(wall_ms);
        let summary = b.answer_digest(&digest, wall_ms, BUDGET).unwrap();
        let push = a.reconcile(&summary, wall_ms, BUDGET).unwrap();
        let reply = b.answer_push(&push, wall_ms, BUDGET);
        a.finish_sync(&reply, wall_ms);
        !reply.truncated
    }

    fn deliver(from: &mut Replica, to: &mut [&mut Replica], wall_ms: u64) {
        for change in from.take_outbox() {
            for r in to.iter_mut() {
                r.apply(&change, wall_ms).unwrap();
            }
        }
    }

    /// Everything a query can see, as comparable values.
    fn answers(r: &Replica) -> impl PartialEq + std::fmt::Debug + use<> {
        let failed = BTreeSet::new();
        let catalog = r.catalog(&failed);
        let services: Vec<(String, Vec<String>)> = catalog
            .services()
            .into_iter()
            .map(|(n, t)| (n.to_owned(), t.into_iter().map(str::to_owned).collect()))
            .collect();
        let kv: Vec<(String, KvValue)> = r
            .kv()
            .list("")
            .map(|e| (e.key.to_owned(), e.value.clone()))
            .collect();
        let intentions: Vec<Intention> =
            crate::matching(r.intentions(), crate::MatchBy::Source, "*")
                .into_iter()
                .cloned()
                .collect();
        let nodes: Vec<(String, NodeRecord, bool)> = catalog
            .nodes()
            .map(|(n, record)| (n.clone(), record.clone(), r.external().get(n).is_some()))
            .collect();
        (
            services,
            nodes,
            kv,
            r.kv().keys("", Some("/")),
            intentions,
            *r.shared().digests(),
            r.records().digest(),
        )
    }

    #[test]
    fn cas_zero_creates_only_and_cas_n_needs_the_current_index() {
        let mut r = replica("a", 1);
        assert!(r.kv_write("k", val(b"1"), Some(0), 10).unwrap());
        assert!(!r.kv_write("k", val(b"2"), Some(0), 11).unwrap(), "exists");
        let at = r.kv().get("k").unwrap().modify_index;
        assert!(!r.kv_write("k", val(b"3"), Some(at + 5), 12).unwrap());
        assert!(r.kv_write("k", val(b"3"), Some(at), 13).unwrap());
        assert_eq!(r.kv().get("k").unwrap().value.value, b"3");
        r.kv_write("k", None, None, 14).unwrap();
        assert!(r.kv().get("k").is_none());
        assert!(
            r.kv_write("k", val(b"4"), Some(0), 15).unwrap(),
            "deleted = absent"
        );
    }

    #[test]
    fn keys_fold_at_the_separator_and_prefix_index_survives_deletes() {
        let mut r = replica("a", 1);
        for key in ["web/a", "web/sub/x", "web/sub/y", "db/z"] {
            r.kv_write(key, val(b""), None, 1).unwrap();
        }
        let kv = r.kv();
        assert_eq!(kv.keys("web/", Some("/")), ["web/a", "web/sub/"]);
        assert_eq!(kv.keys("", Some("/")), ["db/", "web/"]);
        assert_eq!(kv.keys("web/", None), ["web/a", "web/sub/x", "web/sub/y"]);
        assert!(kv.keys("nothing/", Some("/")).is_empty());
        let before = kv.prefix_index("web/");
        r.kv_write("web/a", None, None, 2).unwrap();
        assert!(
            r.kv().prefix_index("web/") > before,
            "a delete raises the prefix index"
        );
        assert_eq!(r.kv().list("web/").count(), 2);
    }

    #[test]
    fn limits_use_consuls_messages() {
        let mut r = replica("a", 1);
        let err = r.kv_write("", val(b""), None, 1).unwrap_err();
        assert_eq!(err.to_string(), "Missing key name");
        let big = Some(KvValue {
            flags: 0,
            value: vec![0; MAX_VALUE_BYTES + 1],
        });
        assert_eq!(
            r.kv_write("k", big, None, 1).unwrap_err(),
            KvError::ValueTooLarge
        );
        assert_eq!(
            r.kv_write(&"k".repeat(2000), val(b""), None, 1),
            Err(KvError::KeyTooLong(2000))
        );
        assert_eq!(r.index(), 0, "nothing half-written");
    }

    #[test]
    fn concurrent_writes_of_one_key_resolve_the_same_on_both_replicas() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        a.kv_write("k", val(b"from a"), None, 100).unwrap();
        b.kv_write("k", val(b"from b"), None, 100).unwrap();
        deliver(&mut a, &mut [&mut b], 100);
        deliver(&mut b, &mut [&mut a], 100);
        assert_eq!(
            a.kv().get("k").unwrap().value,
            b.kv().get("k").unwrap().value
        );
        assert_eq!(answers(&a), answers(&b));
    }

    #[test]
    fn a_deleted_intention_no_longer_decides() {
        let mut r = replica("a", 1);
        r.put_intention(
            Intention {
                source: "web".into(),
                destination: "db".into(),
                action: Action::Deny,
                description: String::new(),
                meta: BTreeMap::new(),
            },
            1,
        );
        assert_eq!(
            crate::check(r.intentions(), "web", "db", Action::Allow).0,
            Action::Deny
        );
        assert!(r.delete_intention("web", "db", 2));
        assert!(!r.delete_intention("web", "db", 3), "already gone");
        assert_eq!(
            crate::check(r.intentions(), "web", "db", Action::Allow),
            (Action::Allow, None)
        );
    }

    fn root(id: &str) -> CaRoot {
        CaRoot {
            id: id.into(),
            name: id.into(),
            cert_pem: "pem".into(),
            created_ms: 1,
            not_before_s: 0,
            not_after_s: 10,
        }
    }

    #[test]
    fn ca_roots_name_their_datacenter_and_a_republished_root_leaves_its_old_key() {
        let mut old = replica("old", 2);
        // A root as agents published it before roots named their datacenter.
        old.write_shared(
            CaRoot::legacy_key("r1"),
            Some(Value::CaRoot(Box::new(root("r1")))),
            1,
        );
        let mut r = replica("a", 1);
        deliver(&mut old, &mut [&mut r], 1);
        let listed = |r: &Replica| -> Vec<(Option<String>, String)> {
            r.ca_roots()
                .map(|e| (e.datacenter.map(str::to_owned), e.root.id.clone()))
                .collect()
        };
        assert_eq!(listed(&r), [(None, "r1".to_owned())]);
        r.put_ca_root("dc1", root("r1"), 2);
        r.put_ca_root("dc2", root("r2"), 3);
        assert_eq!(
            listed(&r),
            [
                (Some("dc1".to_owned()), "r1".to_owned()),
                (Some("dc2".to_owned()), "r2".to_owned())
            ]
        );
        let under = |key: &str, id: &str| Change::Shared {
            key: key.into(),
            register: Lww::new(
                Hlc {
                    physical_ms: 9,
                    logical: 0,
                    node: 2,
                },
                Some(Value::CaRoot(Box::new(root(id)))),
            ),
        };
        for (key, id) in [
            ("ca/root/dc1/r1", "r9"),
            ("ca/root/r1", "r9"),
            ("ca/root/a/b/r1", "r1"),
        ] {
            assert!(r.apply(&under(key, id), 9).is_err(), "{key}");
        }
    }

    #[test]
    fn config_entries_and_node_queries() {
        let mut r = replica("a", 1);
        let entry = |kind: &str, name: &str| ConfigEntry {
            kind: kind.into(),
            name: name.into(),
            body: "{}".into(),
        };
        r.put_config(entry("service-defaults", "web"), 1);
        r.put_config(entry("proxy-defaults", "global"), 1);
        let kinds = |r: &Replica, kind: &str| -> Vec<String> {
            r.config_entries(kind).map(|c| c.name.clone()).collect()
        };
        assert_eq!(kinds(&r, "service-defaults"), ["web"]);
        assert_eq!(kinds(&r, "").len(), 2);
        assert!(r.delete_config("service-defaults", "web", 2));
        assert!(
            !r.delete_config("service-defaults", "web", 3),
            "already gone"
        );
        assert!(kinds(&r, "service-defaults").is_empty());

        r.set_own_record(Some(NodeRecord {
            address: "10.0.0.1".into(),
            ..NodeRecord::default()
        }));
        let failed = BTreeSet::new();
        let catalog = r.catalog(&failed);
        let nodes: Vec<&String> = catalog.nodes().map(|(name, _)| name).collect();
        assert_eq!(nodes, ["a"]);
        assert_eq!(
            catalog.node("a").map(|n| n.address.as_str()),
            Some("10.0.0.1")
        );
        assert!(catalog.node("b").is_none());
    }

    #[test]
    fn a_value_under_the_wrong_prefix_is_refused() {
        let mut r = replica("a", 1);
        let stamp = Hlc {
            physical_ms: 5,
            logical: 0,
            node: 9,
        };
        let planted = Change::Shared {
            key: format!("{INTENTION_PREFIX}web\ndb"),
            register: Lww::new(stamp, Some(Value::Kv(KvValue::default()))),
        };
        assert_eq!(
            r.apply(&planted, 10),
            Err(ApplyError::Malformed("value kind does not match its key"))
        );
        let nowhere = Change::Shared {
            key: "elsewhere".into(),
            register: Lww::tombstone(stamp),
        };
        assert!(matches!(
            r.apply(&nowhere, 10),
            Err(ApplyError::Malformed(_))
        ));
        assert_eq!(r.stats().refused_malformed, 2);
        assert!(r.shared().is_empty());
    }

    #[test]
    fn membership_moves_the_catalog_index_and_a_restart_keeps_it() {
        let mut a = replica("a", 1);
        a.kv_write("k", val(b"1"), None, NOW).unwrap();
        let before = a.records_index();
        a.membership_moved();
        let moved = a.records_index();
        assert!(moved > before);
        let log = a.take_journal();
        let restored = Replica::restore("a", 1, 2, ReplicaConfig::default(), None, log);
        assert!(
            restored.records_index() >= moved,
            "never back after a restart"
        );
        assert!(restored.index() >= moved);
    }

    #[test]
    fn external_nodes_replicate_part_by_part() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        let fields = external::ExternalNode {
            address: "10.1.1.1".into(),
            ..Default::default()
        };
        let check = Check {
            id: "pg-up".into(),
            name: "pg up".into(),
            status: crate::Health::Passing,
            output: String::new(),
            service_id: "pg1".into(),
        };
        // Two agents register different services on one external host at once.
        a.register_external(
            "rds",
            fields.clone(),
            false,
            vec![external_service("pg1")],
            vec![check],
            NOW,
        );
        b.register_external(
            "rds",
            fields.clone(),
            false,
            vec![external_service("pg2")],
            vec![],
            NOW,
        );
        let before = b.records_index();
        deliver(&mut a, &mut [&mut b], NOW);
        deliver(&mut b, &mut [&mut a], NOW);
        assert!(b.records_index() > before, "catalog waiters must wake");
        for r in [&a, &b] {
            let failed = BTreeSet::new();
            let view = r.catalog(&failed);
            let record = view.node("rds").expect("external node listed");
            assert_eq!(record.address, "10.1.1.1");
            assert_eq!(record.services.keys().collect::<Vec<_>>(), ["pg1", "pg2"]);
            let checks = view.node_checks("rds").unwrap();
            assert_eq!(
                checks.len(),
                1,
                "no member check on an external node: {checks:?}"
            );
            assert_eq!(view.instances("ext", &[]).len(), 2);
        }
        // Re-registering what is there writes nothing.
        a.register_external(
            "rds",
            fields,
            true,
            vec![external_service("pg1")],
            vec![],
            NOW + 1,
        );
        assert!(a.take_outbox().is_empty());
        // Deregistering a service takes its checks with it; the node stays.
        assert!(a.deregister_external("rds", PartKey::Service("pg1"), NOW + 2));
        deliver(&mut a, &mut [&mut b], NOW + 2);
        let record = &b.external().get("rds").unwrap().record;
        assert_eq!(record.services.keys().collect::<Vec<_>>(), ["pg2"]);
        assert!(record.checks.is_empty());
        // The whole node.
        assert!(b.deregister_external("rds", PartKey::Node, NOW + 3));
        assert!(
            !b.deregister_external("rds", PartKey::Node, NOW + 4),
            "gone already"
        );
        deliver(&mut b, &mut [&mut a], NOW + 3);
        assert!(a.external().is_empty() && b.external().is_empty());
        let failed = BTreeSet::new();
        assert!(a.catalog(&failed).node("rds").is_none());
    }

    #[test]
    fn an_agent_record_wins_over_an_external_node_of_its_name() {
        let mut a = replica("a", 1);
        a.set_own_record(Some(NodeRecord {
            address: "127.0.0.1".into(),
            ..NodeRecord::default()
        }));
        let fields = external::ExternalNode {
            address: "10.9.9.9".into(),
            ..Default::default()
        };
        a.register_external("a", fields, false, vec![], vec![], NOW);
        let failed = BTreeSet::new();
        let view = a.catalog(&failed);
        let nodes: Vec<_> = view
            .nodes()
            .map(|(n, r)| (n.as_str(), r.address.as_str()))
            .collect();
        assert_eq!(nodes, [("a", "127.0.0.1")]);
    }

    #[test]
    fn external_parts_under_the_wrong_key_are_refused() {
        let mut a = replica("a", 1);
        let stamp = Hlc {
            physical_ms: NOW,
            logical: 0,
            node: 9,
        };
        let part = ExternalPart::Service(external_service("s1"));
        for key in [
            "external/h/service/s2",
            "external/h/node",
            "external/h/bogus",
            "kv/x",
        ] {
            let change = Change::Shared {
                key: key.into(),
                register: Lww::new(stamp, Some(Value::External(Box::new(part.clone())))),
            };
            assert!(
                matches!(a.apply(&change, NOW), Err(ApplyError::Malformed(_))),
                "{key}"
            );
        }
        let tombstone = Change::Shared {
            key: "external/h/what".into(),
            register: Lww::new(stamp, None),
        };
        assert!(matches!(
            a.apply(&tombstone, NOW),
            Err(ApplyError::Malformed(_))
        ));
    }

    #[test]
    fn own_record_outrun_by_a_previous_life_is_reasserted() {
        let mut a = replica("a", 1);
        let web = NodeRecord {
            address: "10.0.0.1".into(),
            ..NodeRecord::default()
        };
        a.set_own_record(Some(web.clone()));
        a.take_outbox();
        let ghost = Change::Record {
            owner: "a".into(),
            register: Owned::new(
                Version {
                    generation: 1,
                    counter: 50,
                },
                None,
            ),
        };
        assert_eq!(a.apply(&ghost, 1), Ok(false));
        let out = a.take_outbox();
        let [Change::Record { register, .. }] = out.as_slice() else {
            panic!("expected one re-asserted record, got {out:?}");
        };
        assert_eq!(register.value().as_deref(), Some(&web));
        assert!(register.stamp().counter > 50);
    }

    /// Found by the simulator (`murmur sim --nodes 15 --seed 100`): a node restarted without
    /// its data never held or re-published its own record, so peers kept its previous life's
    /// copy and the digests never agreed.
    #[test]
    fn a_node_that_lost_its_data_supersedes_its_old_record() {
        let mut old_life = replica("a", 1);
        old_life.set_own_record(Some(NodeRecord::default()));
        let old = old_life.take_outbox().pop().unwrap();
        let mut new_life = Replica::new("a", 1, 2, ReplicaConfig::default());
        assert_eq!(new_life.apply(&old, 1), Ok(false));
        let out = new_life.take_outbox();
        let [Change::Record { register, .. }] = out.as_slice() else {
            panic!("expected a re-published record, got {out:?}");
        };
        assert_eq!(register.value(), &None, "this life has registered nothing");
        let mut peer = replica("b", 2);
        peer.apply(&old, 1).unwrap();
        assert_eq!(peer.apply(&out[0], 2), Ok(true), "the new life wins");
        assert_eq!(peer.records().digest(), new_life.records().digest());
    }

    #[test]
    fn a_reaped_record_stays_out_until_its_owner_is_back() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        b.set_own_record(Some(NodeRecord::default()));
        deliver(&mut b, &mut [&mut a], 1);
        let copy = Change::Record {
            owner: "b".into(),
            register: a.records().entry("b").unwrap().register.clone(),
        };
        assert!(a.reap("b"));
        assert_eq!(a.apply(&copy, 2), Err(ApplyError::Reaped));
        a.forget_reaped("b");
        assert_eq!(a.apply(&copy, 3), Ok(true));
    }

    #[test]
    fn a_coordinate_goes_with_its_owners_record_and_nonsense_is_refused() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        b.set_own_record(Some(NodeRecord::default()));
        b.put_coordinate(Coordinate::default(), 1);
        deliver(&mut b, &mut [&mut a], 1);
        assert_eq!(
            a.coordinates().map(|(n, _, _)| n).collect::<Vec<_>>(),
            ["b"]
        );
        let copy = Change::Shared {
            key: Coordinate::key("b"),
            register: a
                .shared()
                .entry(&Coordinate::key("b"))
                .unwrap()
                .register
                .clone(),
        };
        assert!(a.reap("b"));
        assert_eq!(a.coordinates().count(), 0, "reaped with the record");
        assert_eq!(a.apply(&copy, 2), Err(ApplyError::Reaped));
        // And the reap is replayed from the journal the same way.
        let restored =
            Replica::restore("a", 1, 2, ReplicaConfig::default(), None, a.take_journal());
        assert_eq!(restored.coordinates().count(), 0);
        let stamp = Hlc {
            physical_ms: 3,
            logical: 0,
            node: 2,
        };
        let bad = |key: &str, value: Value| Change::Shared {
            key: key.into(),
            register: Lww::new(stamp, Some(value)),
        };
        let nan = Coordinate {
            height: f64::NAN,
            ..Coordinate::default()
        };
        for change in [
            bad(&Coordinate::key("c"), Value::Coordinate(Box::new(nan))),
            bad("coordinate/c/d", Value::Coordinate(Box::default())),
            bad(
                &Gateway::key("dc1", "c"),
                Value::Gateway(Box::new(Gateway {
                    datacenter: "dc2".into(),
                    node: "c".into(),
                    wan: String::new(),
                    coordinate: None,
                })),
            ),
        ] {
            assert!(
                matches!(a.apply(&change, 3), Err(ApplyError::Malformed(_))),
                "{change:?}"
            );
        }
    }

    #[test]
    fn restore_rebuilds_state_and_indexes_never_go_back() {
        let mut a = replica("a", 1);
        a.set_own_record(Some(NodeRecord::default()));
        a.kv_write("x", val(b"1"), None, 10).unwrap();
        let snapshot = a.snapshot();
        let mut log = a.take_journal();
        a.kv_write("y", val(b"2"), None, 11).unwrap();
        a.kv_write("x", None, None, 12).unwrap();
        let after = a.take_journal();
        log.extend(after.clone());
        // From the journal alone, and from the snapshot plus what came after it.
        let replayed = Replica::restore("a", 1, 2, ReplicaConfig::default(), None, log);
        let resumed = Replica::restore("a", 1, 2, ReplicaConfig::default(), Some(snapshot), after);
        for restored in [&replayed, &resumed] {
            assert_eq!(answers(restored), answers(&a));
            assert_eq!(restored.index(), a.index());
            assert_eq!(
                restored.kv().get("y").unwrap().modify_index,
                a.kv().get("y").unwrap().modify_index
            );
        }
        let mut next = resumed;
        next.kv_write("z", val(b"3"), None, 1).unwrap();
        assert!(next.index() > a.index());
        assert!(
            next.shared().entry("kv/z").unwrap().register.stamp()
                > a.shared().entry("kv/x").unwrap().register.stamp(),
            "the clock resumes above every persisted stamp even with the wall clock set back"
        );
        next.set_own_record(None);
        let mine = next.records().entry("a").unwrap().register.stamp();
        assert_eq!(mine.generation, 2, "a new life versions above the old one");
        let after_leave = Replica::restore(
            "a",
            1,
            3,
            ReplicaConfig::default(),
            Some(next.snapshot()),
            next.take_journal(),
        );
        assert_eq!(after_leave.own_record(), None, "left");
        assert_eq!(
            after_leave.kept_own_record(),
            Some(&NodeRecord::default()),
            "what it registers again at the next start"
        );
    }

    #[test]
    fn anti_entropy_repairs_a_missed_write_in_one_round() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        a.kv_write("k", val(b"v"), None, NOW).unwrap();
        a.set_own_record(Some(NodeRecord::default()));
        a.take_outbox(); // lost
        b.kv_write("other", val(b"w"), None, NOW).unwrap();
        assert!(sync(&mut b, &mut a, NOW));
        assert_eq!(b.kv().get("k").unwrap().value.value, b"v");
        assert_eq!(a.kv().get("other").unwrap().value.value, b"w");
        assert_eq!(answers(&a), answers(&b));
    }

    #[test]
    fn old_registers_for_collected_keys_are_refused_and_stale_replicas_reset() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        let old = NOW - 100 * HOUR_MS;
        // Both hold k; b is away; a deletes k and, past the horizon, collects the tombstone.
        a.kv_write("k", val(b"v"), None, old).unwrap();
        a.kv_write("keep", val(b"v"), None, old).unwrap();
        deliver(&mut a, &mut [&mut b], old);
        assert!(sync(&mut a, &mut b, old));
        a.kv_write("k", None, None, old + 1).unwrap();
        a.take_outbox();
        let mut peer = a.clone();
        assert!(sync(&mut a, &mut peer, NOW), "a stays fresh");
        assert_eq!(a.collect_garbage(NOW), 1);
        assert!(b.is_stale(NOW) && !a.is_stale(NOW));
        // A late copy of the old write does not come back on a fresh replica.
        let late = Change::Shared {
            key: "kv/k".into(),
            register: b.shared().entry("kv/k").unwrap().register.clone(),
        };
        assert_eq!(a.apply(&late, NOW), Err(ApplyError::BeyondHorizon));
        // b comes back: it resets from a instead of resurrecting k.
        assert!(sync(&mut b, &mut a, NOW));
        assert!(b.kv().get("k").is_none());
        assert!(b.kv().get("keep").is_some());
        assert_eq!(b.stats().reset_dropped, 1);
        assert!(!b.is_stale(NOW));
        assert_eq!(answers(&a), answers(&b));
    }

    #[test]
    fn truncated_exchanges_finish_in_more_rounds() {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        for i in 0..300 {
            a.kv_write(&format!("k{i}"), val(&[7; 100]), None, NOW)
                .unwrap();
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            let digest = b.sync_digest(NOW);
            let summary = a.answer_digest(&digest, NOW, 8 * 1024).unwrap();
            let push = b.reconcile(&summary, NOW, 8 * 1024).unwrap();
            let reply = a.answer_push(&push, NOW, 8 * 1024);
            b.finish_sync(&reply, NOW);
            if !reply.truncated {
                break;
            }
            assert!(rounds < 100, "no progress");
        }
        assert!(rounds > 1);
        assert_eq!(answers(&a), answers(&b));
    }

    #[test]
    fn malformed_sync_messages_are_errors() {
        let mut a = replica("a", 1);
        let mut digest = a.sync_digest(NOW);
        digest.buckets.pop();
        assert!(a.answer_digest(&digest, NOW, BUDGET).is_err());
        let summary = SyncSummary {
            records: vec![],
            records_wanted: vec![],
            buckets: vec![BUCKETS as u16],
            keys: vec![],
            stale: false,
            truncated: false,
        };
        assert!(a.reconcile(&summary, NOW, BUDGET).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put {
            node: usize,
            key: u8,
            value: u8,
        },
        Delete {
            node: usize,
            key: u8,
        },
        Register {
            node: usize,
            service: u8,
            tag: u8,
        },
        Intention {
            node: usize,
            source: u8,
            allow: bool,
        },
        /// Registers 40 services at once: the record grows large enough for patches.
        Bulk {
            node: usize,
        },
        /// Sets the status of a node check (a patch once the record is large).
        Flip {
            node: usize,
            check: u8,
            status: u8,
        },
        External {
            node: usize,
            host: u8,
            service: u8,
            /// 0 registers, 1 deregisters the service, 2 the whole host.
            what: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..6u8, any::<u8>()).prop_map(|(node, key, value)| Op::Put {
                node,
                key,
                value
            }),
            (0..4usize, 0..6u8).prop_map(|(node, key)| Op::Delete { node, key }),
            (0..4usize, 0..3u8, 0..3u8).prop_map(|(node, service, tag)| Op::Register {
                node,
                service,
                tag
            }),
            (0..4usize, 0..3u8, any::<bool>()).prop_map(|(node, source, allow)| Op::Intention {
                node,
                source,
                allow
            }),
            (0..4usize).prop_map(|node| Op::Bulk { node }),
            (0..4usize, 0..3u8, 0..4u8).prop_map(|(node, check, status)| Op::Flip {
                node,
                check,
                status
            }),
            (0..4usize, 0..2u8, 0..3u8, 0..3u8).prop_map(|(node, host, service, what)| {
                Op::External {
                    node,
                    host,
                    service,
                    what,
                }
            }),
        ]
    }

    fn run(replicas: &mut [Replica], op: &Op, wall_ms: u64) {
        match *op {
            Op::Put { node, key, value } => {
                replicas[node]
                    .kv_write(&format!("d/{key}"), val(&[value]), None, wall_ms)
                    .unwrap();
            }
            Op::Delete { node, key } => {
                replicas[node]
                    .kv_write(&format!("d/{key}"), None, None, wall_ms)
                    .unwrap();
            }
            Op::Register { node, service, tag } => {
                let r = &mut replicas[node];
                let mut record = r.own_record().cloned().unwrap_or_default();
                let id = format!("s{service}");
                record.services.insert(
                    id.clone().into(),
                    Service {
                        id: id.into(),
                        name: format!("svc{service}").into(),
                        tags: vec![format!("t{tag}").into()],
                        address: Default::default(),
                        port: 80,
                        meta: BTreeMap::new(),
                        weight_passing: 1,
                        weight_warning: 1,
                    },
                );
                r.set_own_record(Some(record));
            }
            Op::Intention {
                node,
                source,
                allow,
            } => replicas[node].put_intention(
                Intention {
                    source: format!("s{source}"),
                    destination: "db".into(),
                    action: if allow { Action::Allow } else { Action::Deny },
                    description: String::new(),
                    meta: BTreeMap::new(),
                },
                wall_ms,
            ),
            Op::Bulk { node } => edit_own(&mut replicas[node], |record| {
                for i in 0..40 {
                    let id: compact_str::CompactString = format!("bulk-{i:02}").into();
                    let service = Service {
                        id: id.clone(),
                        name: "bulk".into(),
                        ..Service::default()
                    };
                    record.services.insert(id, service);
                }
            }),
            Op::Flip {
                node,
                check,
                status,
            } => edit_own(&mut replicas[node], |record| {
                let id: compact_str::CompactString = format!("c{check}").into();
                let status = [
                    Health::Passing,
                    Health::Warning,
                    Health::Critical,
                    Health::Maintenance,
                ][usize::from(status)];
                let check = Check {
                    id: id.clone(),
                    name: "check".into(),
                    status,
                    output: String::new(),
                    service_id: Default::default(),
                };
                record.checks.insert(id, check);
            }),
            Op::External {
                node,
                host,
                service,
                what,
            } => {
                let (host, id) = (format!("x{host}"), format!("e{service}"));
                match what {
                    0 => replicas[node].register_external(
                        &host,
                        external::ExternalNode {
                            address: format!("10.0.0.{service}"),
                            ..Default::default()
                        },
                        false,
                        vec![external_service(&id)],
                        vec![],
                        wall_ms,
                    ),
                    1 => {
                        replicas[node].deregister_external(&host, PartKey::Service(&id), wall_ms);
                    }
                    _ => {
                        replicas[node].deregister_external(&host, PartKey::Node, wall_ms);
                    }
                }
            }
        }
    }

    /// Changes this node's record with `edit` and publishes it.
    fn edit_own(r: &mut Replica, edit: impl FnOnce(&mut NodeRecord)) {
        let mut record = r.own_record().cloned().unwrap_or_default();
        edit(&mut record);
        r.set_own_record(Some(record));
    }

    fn external_service(id: &str) -> Service {
        Service {
            id: id.into(),
            name: "ext".into(),
            port: 5432,
            ..Service::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Writes at random replicas with the same wall clock (so ties and concurrency are
        /// common); each change is delivered to a random subset of the others, duplicated or
        /// lost, in any order. After anti-entropy rounds, every replica gives the same answer
        /// to every query, and restoring any of them from its journal gives it too.
        #[test]
        fn any_delivery_then_anti_entropy_gives_identical_answers(
            ops in proptest::collection::vec((op(), any::<u8>(), 0..3u64), 1..40),
            ring_step in prop::sample::select(vec![1usize, 3]),
        ) {
            let mut replicas: Vec<Replica> =
                (0..4).map(|i| replica(&format!("n{i}"), i as u64 + 1)).collect();
            let mut journals: Vec<Vec<Journaled>> = vec![Vec::new(); 4];
            let mut in_flight: Vec<(usize, Change)> = Vec::new();
            for (step, (op, mask, skew)) in ops.iter().enumerate() {
                let wall = NOW + step as u64 / 4 + skew;
                run(&mut replicas, op, wall);
                for (from, r) in replicas.iter_mut().enumerate() {
                    for change in r.take_outbox() {
                        for to in 0..4 {
                            // Bits of the mask pick receivers; bit 7 duplicates.
                            if to != from && mask & (1 << to) != 0 {
                                in_flight.push((to, change.clone()));
                                if mask & 0x80 != 0 {
                                    in_flight.insert(0, (to, change.clone()));
                                }
                            }
                        }
                    }
                }
                if mask & 0x40 != 0 {
                    in_flight.reverse();
                }
                if step % 3 == 0 {
                    for (to, change) in in_flight.drain(..) {
                        replicas[to].apply(&change, wall).unwrap();
                    }
                }
            }
            let end = NOW + ops.len() as u64;
            // Two rounds around a ring (step 1 or 3: both reach everyone), which is more than
            // the minimum; the assertion is on the outcome, not the round count.
            for _round in 0..2 {
                for i in 0..4 {
                    let j = (i + ring_step) % 4;
                    let (a, b) = if i < j {
                        let (left, right) = replicas.split_at_mut(j);
                        (&mut left[i], &mut right[0])
                    } else {
                        let (left, right) = replicas.split_at_mut(i);
                        (&mut right[0], &mut left[j])
                    };
                    prop_assert!(sync(a, b, end));
                }
            }
            for (r, journal) in replicas.iter_mut().zip(&mut journals) {
                journal.extend(r.take_journal());
            }
            let expected = answers(&replicas[0]);
            for (i, r) in replicas.iter().enumerate() {
                prop_assert_eq!(&answers(r), &expected);
                let restored = Replica::restore(
                    r.me(), i as u64 + 1, 2, ReplicaConfig::default(), None, journals[i].clone(),
                );
                prop_assert_eq!(&answers(&restored), &expected);
                prop_assert_eq!(restored.index(), r.index());
            }
        }
    }
}
