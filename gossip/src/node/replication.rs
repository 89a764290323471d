//! The replicated state inside a member: local writes, spreading changes (small ones on
//! gossip datagrams, large ones by stream), the anti-entropy exchange, and reaping the records
//! of members gone for good.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use murmur_catalog::{Change, Replica, SyncDigest, SyncPush, SyncPushReply, SyncSummary};
use rand::RngExt;

use super::{Node, Output, TimerEvent};
use crate::GossipError;
use crate::broadcast::BroadcastItem;
use crate::members::MemberStatus;
use crate::wire::{self, DropReason, StreamMessage};

/// Largest encoded change piggybacked on gossip datagrams; larger ones go by stream, so a
/// change never crowds out membership updates.
const MAX_BROADCAST_CHANGE: usize = 900;
/// Most changes waiting in foca's broadcast queue; beyond it changes are dropped (and counted)
/// and anti-entropy repairs them.
const MAX_CHANGE_BACKLOG: usize = 4096;
/// How many members a large change is flooded to, by each member that learns it.
const FLOOD_FANOUT: usize = 3;
/// Size budget of one anti-entropy message; the frame limit is 4 MiB.
const SYNC_BUDGET: usize = 1 << 20;
/// Most follow-up rounds right after a truncated exchange, before waiting for the next timer.
const MAX_FOLLOW_UPS: u32 = 64;
/// When this share (one in `MASS_EXPIRY_SHARE`) or more of the record owners are away at
/// once, reaping waits `MASS_EXPIRY_FACTOR` times longer: a partition, not a mass death.
const MASS_EXPIRY_SHARE: usize = 3;
const MASS_EXPIRY_FACTOR: u32 = 10;

impl Node {
    /// Replaces the (empty) replica with one restored from disk; call before anything else.
    pub fn set_replica(&mut self, replica: Replica) {
        self.replica = replica;
    }

    /// Tells the node the wall-clock time (ms since the Unix epoch); call before each input.
    /// Time enters the replica only this way, so the simulator can skew it.
    pub fn set_now(&mut self, wall_ms: u64) {
        self.now_ms = wall_ms;
    }

    /// The replicated state, for queries.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Makes a local change (a KV write, this node's record, …); it spreads from here.
    pub fn write<R>(&mut self, change: impl FnOnce(&mut Replica, u64) -> R) -> R {
        let result = change(&mut self.replica, self.now_ms);
        self.flush_changes();
        result
    }

    /// Record owners that membership does not consider active: their instances get the
    /// synthetic critical member check.
    pub fn failed_owners(&self) -> BTreeSet<String> {
        let owners = self.replica.records().entries().map(|(owner, _)| owner);
        self.view.inactive_among(owners, &self.identity().name)
    }

    /// The periodic sync tick: collect old tombstones, reap departed records, start a round.
    pub(super) fn on_sync_timer(&mut self) {
        self.replica.collect_garbage(self.now_ms);
        self.reap_departed();
        self.follow_ups = 0;
        if let Some(to) = self.random_peer() {
            self.start_sync(to);
        }
        self.schedule_sync();
    }

    /// Step 2 arrived (we initiated): send step 3.
    pub(super) fn on_sync_summary(
        &mut self,
        from: SocketAddr,
        summary: &SyncSummary,
    ) -> Result<(), GossipError> {
        let push = self
            .replica
            .reconcile(summary, self.now_ms, SYNC_BUDGET)
            .map_err(|e| self.refused_reply(&e))?;
        tracing::debug!(
            peer = %from, records = summary.records.len(), buckets = summary.buckets.len(),
            pushing = push.changes.len(), wanted = push.wanted.len(), "anti-entropy summary"
        );
        let request = self.seal_message(&StreamMessage::SyncPush(push));
        self.outputs
            .push_back(Output::Exchange { to: from, request });
        Ok(())
    }

    /// Step 4 arrived: the round is done; a truncated one goes on at once.
    pub(super) fn on_sync_push_reply(&mut self, from: SocketAddr, reply: &SyncPushReply) {
        tracing::debug!(
            peer = %from, received = reply.changes.len(), truncated = reply.truncated,
            "anti-entropy round done"
        );
        self.replica.finish_sync(reply, self.now_ms);
        if reply.truncated && self.follow_ups < MAX_FOLLOW_UPS {
            self.follow_ups += 1;
            self.start_sync(from);
        }
    }

    /// Step 1 arrived (a peer initiated): the reply frame with step 2.
    pub(super) fn answer_sync(&mut self, digest: &SyncDigest) -> Vec<u8> {
        match self.replica.answer_digest(digest, self.now_ms, SYNC_BUDGET) {
            Ok(summary) => self.seal_message(&StreamMessage::SyncSummary(summary)),
            Err(err) => {
                self.stats.dropped.count(DropReason::Undecodable);
                self.reject(&err.to_string())
            }
        }
    }

    /// Step 3 arrived: the reply frame with step 4.
    pub(super) fn answer_sync_push(&mut self, push: &SyncPush) -> Vec<u8> {
        let reply = self.replica.answer_push(push, self.now_ms, SYNC_BUDGET);
        self.flush_changes();
        self.seal_message(&StreamMessage::SyncPushReply(reply))
    }

    pub(super) fn schedule_sync(&mut self) {
        let base = self.config.sync_interval;
        let jitter = base.mul_f64(self.rng.random_range(0.0..0.1));
        self.outputs.push_back(Output::Timer {
            after: base + jitter,
            timer: TimerEvent::Sync,
        });
    }

    pub(super) fn start_sync(&mut self, to: SocketAddr) {
        let digest = self.replica.sync_digest(self.now_ms);
        let request = self.seal_message(&StreamMessage::Sync(digest));
        self.outputs.push_back(Output::Exchange { to, request });
    }

    /// Spreads the changes made here (local writes, re-asserted records): small ones on gossip
    /// datagrams, large ones by stream.
    pub(super) fn flush_changes(&mut self) {
        let changes = self.replica.take_outbox();
        if changes.is_empty() {
            return;
        }
        let mut large = Vec::new();
        for change in changes {
            let item = BroadcastItem::Change(change);
            let bytes = wire::encode(&item);
            match item {
                BroadcastItem::Change(change) if bytes.len() > MAX_BROADCAST_CHANGE => {
                    large.push(change);
                }
                _ if self.foca.custom_broadcast_backlog() >= MAX_CHANGE_BACKLOG => {
                    self.stats.changes_dropped += 1;
                }
                _ => {
                    if let Err(err) = self.enqueue_encoded(&bytes) {
                        tracing::debug!(%err, "change not queued; anti-entropy will carry it");
                        self.stats.changes_dropped += 1;
                    }
                }
            }
        }
        self.flood(large);
        // Settling records our own items as seen and pushes them on at once.
        self.with_foca(|_, _| ());
    }

    /// Sends large changes to a few random members, who forward what was new to them.
    fn flood(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        for to in self.random_peers(FLOOD_FANOUT) {
            let request = self.seal_message(&StreamMessage::Changes(changes.clone()));
            self.outputs.push_back(Output::Exchange { to, request });
        }
    }

    pub(super) fn apply_flooded(&mut self, changes: Vec<Change>) {
        let fresh: Vec<Change> = changes
            .into_iter()
            .filter(|change| match self.replica.apply(change, self.now_ms) {
                Ok(changed) => changed,
                Err(err) => {
                    tracing::debug!(%err, key = change.subject(), "flooded change refused");
                    false
                }
            })
            .collect();
        self.flood(fresh);
        self.flush_changes();
    }

    /// Reaps the records of owners away longer than the reap time (at once for a graceful
    /// leave), but slowly when many are away together: that looks like a partition.
    fn reap_departed(&mut self) {
        let now = self.now_ms;
        let away = self.failed_owners();
        self.away_since.retain(|owner, _| away.contains(owner));
        for owner in &away {
            self.away_since.entry(owner.clone()).or_insert(now);
        }
        let owners = self.replica.records().len();
        let mass = away.len() > 1 && away.len() * MASS_EXPIRY_SHARE >= owners;
        let reap_after = if mass {
            self.config.reap_after * MASS_EXPIRY_FACTOR
        } else {
            self.config.reap_after
        };
        let reap_after_ms = u64::try_from(reap_after.as_millis()).unwrap_or(u64::MAX);
        let due: Vec<String> = self
            .away_since
            .iter()
            .filter(|(owner, since)| {
                let left = self
                    .view
                    .get(owner)
                    .is_some_and(|m| m.status == MemberStatus::Left);
                left || now.saturating_sub(**since) >= reap_after_ms
            })
            .map(|(owner, _)| owner.clone())
            .collect();
        for owner in due {
            tracing::info!(%owner, "record reaped");
            self.replica.reap(&owner);
            self.away_since.remove(&owner);
        }
    }
}
