//! Anti-entropy between two replicas, in four steps over one stream connection each way:
//!
//! 1. initiator → responder, [`SyncDigest`]: the version and content hash of every record, the
//!    256 bucket digests of the shared map, and whether the initiator is stale;
//! 2. responder → initiator, [`SyncSummary`]: records newer at the responder, owners it wants,
//!    and `(key, stamp, hash)` of every key in the buckets that differ;
//! 3. initiator → responder, [`SyncPush`]: what the responder lacks or holds older, and the keys
//!    the initiator wants;
//! 4. responder → initiator, [`SyncPushReply`]: the wanted registers.
//!
//! Every message has a size budget; what does not fit is left for a follow-up round, which the
//! `truncated` flags ask for. Only a complete round counts as contact (freshness).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Journaled, Replica};
use crate::hlc::Hlc;
use crate::owned::Digest;
use crate::shared::{BUCKETS, fnv};
use crate::value::Change;

/// Step 1 of anti-entropy, initiator → responder: what the initiator holds, in summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDigest {
    /// Version and hash of each record held.
    pub records: Digest,
    /// The shared map's bucket digests ([`BUCKETS`] of them).
    pub buckets: Vec<u64>,
    /// Whether the initiator is stale.
    pub stale: bool,
}

/// One shared key as a peer holds it, for comparing without sending values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySummary {
    /// The key.
    pub key: String,
    /// Its register's stamp.
    pub stamp: Hlc,
    /// Hash of the register (tells apart equal stamps with different values).
    pub hash: u64,
}

/// Step 2, responder → initiator: records the initiator lacks, records the responder wants,
/// and key summaries of every bucket that differs (whole buckets, as many as fit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// Records newer here than at the initiator.
    pub records: Vec<Change>,
    /// Owners whose record is newer at the initiator.
    pub records_wanted: Vec<String>,
    /// The buckets the summaries cover.
    pub buckets: Vec<u16>,
    /// Every key in those buckets.
    pub keys: Vec<KeySummary>,
    /// Whether the responder is stale.
    pub stale: bool,
    /// Whether something did not fit and another round is needed.
    pub truncated: bool,
}

/// Step 3, initiator → responder: what the responder lacks, and the keys the initiator wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPush {
    /// Changes the responder lacks or holds older.
    pub changes: Vec<Change>,
    /// Keys whose register the initiator wants.
    pub wanted: Vec<String>,
    /// Whether the initiator left something out (another round follows).
    pub truncated: bool,
}

/// Step 4, responder → initiator: the wanted registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPushReply {
    /// The wanted registers.
    pub changes: Vec<Change>,
    /// Whether anything of the exchange did not fit (another round is needed).
    pub truncated: bool,
}

/// A malformed anti-entropy message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed anti-entropy message: {0}")]
pub struct SyncError(pub &'static str);

/// Collects changes up to a size budget.
struct Budget {
    left: usize,
    taken: bool,
    truncated: bool,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Self {
            left: bytes,
            taken: false,
            truncated: false,
        }
    }

    /// Takes `weight` from the budget; false (and marked truncated) when it does not fit.
    /// The first item always fits, so one item larger than the budget still travels alone.
    fn take(&mut self, weight: usize) -> bool {
        if weight > self.left && self.taken {
            self.truncated = true;
            return false;
        }
        self.left = self.left.saturating_sub(weight);
        self.taken = true;
        true
    }

    /// Adds `change` to `out` if it fits.
    fn offer(&mut self, out: &mut Vec<Change>, change: Change) {
        if self.take(change.weight()) {
            out.push(change);
        }
    }
}

impl Replica {
    /// Step 1 (initiator): this replica's digest.
    pub fn sync_digest(&self, wall_ms: u64) -> SyncDigest {
        SyncDigest {
            records: self.records.digest(),
            buckets: self.shared.digests().to_vec(),
            stale: self.is_stale(wall_ms),
        }
    }

    /// Step 2 (responder): answers a peer's digest with at most `budget` bytes of records
    /// and summaries.
    pub fn answer_digest(
        &self,
        digest: &SyncDigest,
        wall_ms: u64,
        budget: usize,
    ) -> Result<SyncSummary, SyncError> {
        let peer_buckets: &[u64; BUCKETS] = digest
            .buckets
            .as_slice()
            .try_into()
            .map_err(|_| SyncError("wrong number of digest buckets"))?;
        let mut budget = Budget::new(budget);
        let mut records = Vec::new();
        let diff = self.records.diff(&digest.records);
        for (owner, register) in diff.newer_here {
            let change = Change::Record { owner, register };
            budget.offer(&mut records, change);
        }
        let records_wanted = diff.newer_there;
        let differing = self.shared.differing_buckets(peer_buckets);
        let mut by_bucket: BTreeMap<usize, Vec<KeySummary>> = BTreeMap::new();
        for (bucket, key, entry) in self.shared.in_buckets(&differing) {
            by_bucket.entry(bucket).or_default().push(KeySummary {
                key: key.clone(),
                stamp: *entry.register.stamp(),
                hash: fnv(&entry.register),
            });
        }
        let mut buckets = Vec::new();
        let mut keys = Vec::new();
        for bucket in differing {
            let summaries = by_bucket.remove(&bucket).unwrap_or_default();
            let weight: usize = summaries.iter().map(|s| s.key.len() + 32).sum::<usize>() + 4;
            if !budget.take(weight) {
                break;
            }
            buckets.push(bucket as u16);
            keys.extend(summaries);
        }
        Ok(SyncSummary {
            records,
            records_wanted,
            buckets,
            keys,
            stale: self.is_stale(wall_ms),
            truncated: budget.truncated,
        })
    }

    /// Step 3 (initiator): applies what the responder sent and works out what to push and
    /// what to ask for. A stale initiator facing a fresh responder resets from it.
    pub fn reconcile(
        &mut self,
        summary: &SyncSummary,
        wall_ms: u64,
        budget: usize,
    ) -> Result<SyncPush, SyncError> {
        if summary.buckets.iter().any(|&b| usize::from(b) >= BUCKETS) {
            return Err(SyncError("digest bucket out of range"));
        }
        if summary
            .records
            .iter()
            .any(|c| !matches!(c, Change::Record { .. }))
        {
            return Err(SyncError("a shared key among the records"));
        }
        self.apply_received(&summary.records, wall_ms);
        let mut budget = Budget::new(budget);
        let mut changes = Vec::new();
        for owner in &summary.records_wanted {
            if let Some(entry) = self.records.entry(owner) {
                let change = Change::Record {
                    owner: owner.clone(),
                    register: entry.register.clone(),
                };
                budget.offer(&mut changes, change);
            }
        }
        let covered: Vec<usize> = summary.buckets.iter().map(|&b| usize::from(b)).collect();
        let theirs: BTreeMap<&str, &KeySummary> =
            summary.keys.iter().map(|s| (s.key.as_str(), s)).collect();
        let mut wanted = Vec::new();
        let mut dropped = Vec::new();
        for (_, key, entry) in self.shared.in_buckets(&covered) {
            let stamp = entry.register.stamp();
            let send = match theirs.get(key.as_str()) {
                None if !summary.stale && self.beyond_horizon(stamp, wall_ms) => {
                    // A fresh peer lacks an old key: its delete was collected there (or this
                    // replica was away). Absence wins, as the peer would refuse the key.
                    dropped.push(key.clone());
                    false
                }
                None => true,
                Some(peer) if peer.stamp > *stamp => {
                    wanted.push(key.clone());
                    false
                }
                Some(peer) => peer.stamp < *stamp || peer.hash != fnv(&entry.register),
            };
            if send {
                let change = Change::Shared {
                    key: key.clone(),
                    register: entry.register.clone(),
                };
                budget.offer(&mut changes, change);
            }
        }
        // Keys only the peer holds; a fresh replica would refuse the old ones anyway.
        let fresh = !self.is_stale(wall_ms);
        for peer in &summary.keys {
            if self.shared.entry(&peer.key).is_none()
                && !(fresh && self.beyond_horizon(&peer.stamp, wall_ms))
            {
                wanted.push(peer.key.clone());
            }
        }
        for key in dropped {
            self.forget_shared(&key);
            self.stats.reset_dropped += 1;
            self.journal.push(Journaled::ForgetShared { key });
        }
        Ok(SyncPush {
            changes,
            wanted,
            truncated: budget.truncated || summary.truncated,
        })
    }

    /// Step 3 (responder): applies the initiator's changes and answers the keys it wants.
    pub fn answer_push(&mut self, push: &SyncPush, wall_ms: u64, budget: usize) -> SyncPushReply {
        self.apply_received(&push.changes, wall_ms);
        let mut budget = Budget::new(budget);
        let mut changes = Vec::new();
        for key in &push.wanted {
            if let Some(entry) = self.shared.entry(key) {
                let change = Change::Shared {
                    key: key.clone(),
                    register: entry.register.clone(),
                };
                budget.offer(&mut changes, change);
            }
        }
        let truncated = push.truncated || budget.truncated;
        if !truncated {
            self.mark_contact(wall_ms);
        }
        SyncPushReply { changes, truncated }
    }

    /// Step 4 (initiator): applies the wanted registers. A complete exchange counts as
    /// contact (the replica is fresh again).
    pub fn finish_sync(&mut self, reply: &SyncPushReply, wall_ms: u64) {
        self.apply_received(&reply.changes, wall_ms);
        if !reply.truncated {
            self.mark_contact(wall_ms);
        }
    }

    /// Applies a peer's changes; refusals are counted and the rest of the exchange goes on.
    fn apply_received(&mut self, changes: &[Change], wall_ms: u64) {
        for change in changes {
            let _ = self.apply(change, wall_ms);
        }
    }
}
