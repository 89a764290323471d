//! The replicated state a pool carries: local writes, spreading changes (small ones on gossip
//! datagrams, large ones by stream), the anti-entropy exchange, and reaping the records of
//! members gone for good.
//!
//! [`Replication`] owns a [`Replica`] and runs its protocol over a [`Node`] given to each call:
//! the node picks peers, carries broadcasts and seals streams; the replication decides what to
//! send. It is its own type, not part of the node, so that the agent can carry one replica over
//! its LAN pool and another (the data every datacenter shares) over a WAN pool.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use murmur_catalog::{
    Change, ChangeKey, Replica, SyncDigest, SyncPush, SyncPushReply, SyncSummary,
};
use rand::RngExt;

use crate::GossipError;
use crate::broadcast::BroadcastItem;
use crate::node::{Delivery, Node, TimerEvent};
use crate::wire::{self, DropReason, StreamMessage};

/// Largest encoded change piggybacked on gossip datagrams; larger ones go by stream, so a
/// change never crowds out membership updates.
const MAX_BROADCAST_CHANGE: usize = 900;
/// Most changes waiting in foca's broadcast queue; beyond it changes are dropped (and counted)
/// and anti-entropy repairs them.
const MAX_CHANGE_BACKLOG: usize = 4096;
/// How many members a large change is flooded to, by each member that learns it, in a pool
/// of `members` others: ⌈ln(members + 1)⌉ + 2. Each node is missed with probability about
/// e^-fanout, so this keeps the expected number of nodes a change misses (and that wait up
/// to a sync round for it) near e^-2 ≈ 0.14, where a fixed 3 missed ~5 % of the nodes
/// (48 nodes: every node reached within 2 s in 2 of 12 simulated runs, against 12 of 12;
/// `a_large_value_reaches_every_node_by_flood_before_anti_entropy_most_times`).
fn flood_fanout(members: usize) -> usize {
    (members as f64 + 1.0).ln().ceil() as usize + 2
}
/// How long a member that asked for an offered change declines other offers of it: the
/// first one asked sends it in a round trip; if that fails, a later offer or anti-entropy
/// brings it. Without this, a member asked for a 50 KB value ~2.5 times in a 32-node flood
/// (simulated, `a_large_change_is_offered_first_and_each_node_receives_about_one_copy`).
const ASKED_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a record patch waits for its base before this member asks the patch's owner
/// for the record by a round of anti-entropy: gossip reorders within a few rounds, so a base
/// missing this long was lost (a member that missed one flip otherwise waited for its next
/// sync round: 7.8 s, against under 2 s, in
/// `a_node_that_missed_a_flip_asks_the_owner_once_the_next_one_waits_for_its_base`).
const PATCH_BASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Size budget of one anti-entropy message; the frame limit is 4 MiB.
const SYNC_BUDGET: usize = 1 << 20;
/// Most follow-up rounds right after a truncated exchange, before waiting for the next timer.
const MAX_FOLLOW_UPS: u32 = 64;
/// When this share (one in `MASS_EXPIRY_SHARE`) or more of the record owners are away at
/// once, reaping waits `MASS_EXPIRY_FACTOR` times longer: a partition, not a mass death.
const MASS_EXPIRY_SHARE: usize = 3;
const MASS_EXPIRY_FACTOR: u32 = 10;

/// A replica and the protocol that keeps it converged with the other members of one pool.
pub struct Replication {
    replica: Replica,
    /// Wall-clock time (ms since the Unix epoch) as last told.
    now_ms: u64,
    /// Since when (wall ms) each record owner has not been an active member.
    away_since: BTreeMap<String, u64>,
    /// Follow-up rounds run since the last sync tick.
    follow_ups: u32,
    /// Anti-entropy rounds this member started and saw through (step 4 arrived).
    rounds_done: u64,
    /// Offered changes this member asked for, with when (wall ms).
    asked: HashMap<ChangeKey, u64>,
    /// Owners asked for their record because a patch of theirs waited, with when (wall ms).
    pulled: HashMap<String, u64>,
}

impl Replication {
    /// Carries `replica`; the first anti-entropy round is scheduled on `node`.
    pub(crate) fn new(replica: Replica, node: &mut Node) -> Self {
        let mut replication = Self {
            replica,
            now_ms: 0,
            away_since: BTreeMap::new(),
            follow_ups: 0,
            rounds_done: 0,
            asked: HashMap::new(),
            pulled: HashMap::new(),
        };
        replication.schedule_sync(node);
        replication
    }

    /// The replicated state, for queries.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// How many anti-entropy rounds this member started and saw through: after the first,
    /// it holds everything the peer it joined through held then (what a decision "nobody has
    /// X yet" waits for).
    pub fn rounds_done(&self) -> u64 {
        self.rounds_done
    }

    /// Replaces the replica (e.g. with one restored from disk).
    pub(crate) fn set_replica(&mut self, replica: Replica, node: &mut Node) {
        self.replica = replica;
        node.set_own_record(self.own_record());
    }

    /// Tells the wall-clock time (ms since the Unix epoch); time enters the replica only this
    /// way, so the simulator can skew it.
    pub(crate) fn set_now(&mut self, wall_ms: u64) {
        self.now_ms = wall_ms;
    }

    /// Makes a local change (a KV write, this node's record, …); it spreads from here.
    pub(crate) fn write<R>(
        &mut self,
        node: &mut Node,
        change: impl FnOnce(&mut Replica, u64) -> R,
    ) -> R {
        let result = change(&mut self.replica, self.now_ms);
        node.set_own_record(self.own_record());
        self.flush(node);
        result
    }

    /// Journal entries since the last call, for the driver to persist in order.
    pub(crate) fn take_journal(&mut self) -> Vec<murmur_catalog::Journaled> {
        self.replica.take_journal()
    }

    /// Applies what `node` learned for this state since the last call, in order.
    pub(crate) fn absorb(&mut self, node: &mut Node) {
        for delivery in node.take_deliveries() {
            match delivery {
                Delivery::Up(name) => self.replica.forget_reaped(&name),
                Delivery::HealthMoved => self.replica.membership_moved(),
                Delivery::Change(change) => {
                    if let Err(err) = self.replica.apply(&change, self.now_ms) {
                        tracing::debug!(%err, key = change.subject(), "change refused");
                    }
                }
            }
        }
        self.pull_missing_bases(node);
    }

    /// Asks the owner of each patch that waited [`PATCH_BASE_WAIT`] for its base for the
    /// record, once per wait, by a round of anti-entropy with it.
    fn pull_missing_bases(&mut self, node: &mut Node) {
        let wait = PATCH_BASE_WAIT.as_millis() as u64;
        let since = self.now_ms.saturating_sub(wait);
        self.pulled.retain(|_, at| *at > since);
        let due: Vec<String> = self
            .replica
            .owners_waiting_since(since)
            .into_iter()
            .filter(|owner| !self.pulled.contains_key(*owner))
            .map(str::to_owned)
            .collect();
        for owner in due {
            if let Some(addr) = node.active_addr_of(&owner) {
                tracing::debug!(%owner, "a record patch waited for its base: syncing with its owner");
                self.start_sync(node, addr);
            }
            self.pulled.insert(owner, self.now_ms);
        }
    }

    /// Record owners that membership does not consider active: their instances get the
    /// synthetic critical member check.
    pub(crate) fn failed_owners(&self, node: &Node) -> std::collections::BTreeSet<String> {
        let owners = self.replica.records().entries().map(|(owner, _)| owner);
        node.inactive_among(owners)
    }

    /// The periodic sync tick: collect old tombstones, reap departed records, start a round.
    pub(crate) fn on_sync_timer(&mut self, node: &mut Node) {
        self.replica.collect_garbage(self.now_ms);
        self.reap_departed(node);
        self.follow_ups = 0;
        if let Some(to) = node.random_peer() {
            self.start_sync(node, to);
        }
        self.schedule_sync(node);
    }

    /// A replication request arrived: the reply frame.
    pub(crate) fn answer(&mut self, node: &mut Node, message: StreamMessage) -> Vec<u8> {
        match message {
            StreamMessage::Sync(digest) => self.answer_sync(node, &digest),
            StreamMessage::SyncPush(push) => self.answer_sync_push(node, &push),
            StreamMessage::ChangesOffer(offered) => {
                let wanted = self.wanted(&offered);
                node.count_offered(wanted.len(), offered.len() - wanted.len());
                node.seal_message(&StreamMessage::ChangesWanted(wanted))
            }
            StreamMessage::Changes(changes) => {
                self.apply_flooded(node, changes);
                node.seal_message(&StreamMessage::ChangesAck)
            }
            other => unreachable!("the node routes only replication requests here: {other:?}"),
        }
    }

    /// A replication reply from `from` arrived.
    pub(crate) fn on_reply(
        &mut self,
        node: &mut Node,
        from: SocketAddr,
        message: StreamMessage,
    ) -> Result<(), GossipError> {
        match message {
            StreamMessage::SyncSummary(summary) => self.on_sync_summary(node, from, &summary),
            StreamMessage::SyncPushReply(reply) => {
                self.on_sync_push_reply(node, from, &reply);
                Ok(())
            }
            StreamMessage::ChangesWanted(wanted) => {
                // Sent as this replica holds them now (the offered version or a newer one), up
                // to the anti-entropy budget: a peer asking for more gets the rest from
                // anti-entropy.
                let mut budget = SYNC_BUDGET;
                let changes: Vec<Change> = wanted
                    .iter()
                    .filter_map(|key| self.replica.change_for(key))
                    .take_while(|change| {
                        let fits = budget > 0;
                        budget = budget.saturating_sub(change.weight());
                        fits
                    })
                    .collect();
                if !changes.is_empty() {
                    node.exchange(from, &StreamMessage::Changes(changes));
                }
                Ok(())
            }
            StreamMessage::ChangesAck => Ok(()),
            other => unreachable!("the node routes only replication replies here: {other:?}"),
        }
    }

    /// Step 2 arrived (we initiated): send step 3.
    fn on_sync_summary(
        &mut self,
        node: &mut Node,
        from: SocketAddr,
        summary: &SyncSummary,
    ) -> Result<(), GossipError> {
        let push = self
            .replica
            .reconcile(summary, self.now_ms, SYNC_BUDGET)
            .map_err(|e| node.refused_reply(&e))?;
        tracing::debug!(
            peer = %from, records = summary.records.len(), buckets = summary.buckets.len(),
            pushing = push.changes.len(), wanted = push.wanted.len(), "anti-entropy summary"
        );
        node.exchange(from, &StreamMessage::SyncPush(push));
        Ok(())
    }

    /// Step 4 arrived: the round is done; a truncated one goes on at once.
    fn on_sync_push_reply(&mut self, node: &mut Node, from: SocketAddr, reply: &SyncPushReply) {
        tracing::debug!(
            peer = %from, received = reply.changes.len(), truncated = reply.truncated,
            "anti-entropy round done"
        );
        self.replica.finish_sync(reply, self.now_ms);
        self.rounds_done += 1;
        if reply.truncated && self.follow_ups < MAX_FOLLOW_UPS {
            self.follow_ups += 1;
            self.start_sync(node, from);
        }
    }

    /// Step 1 arrived (a peer initiated): the reply frame with step 2.
    fn answer_sync(&mut self, node: &mut Node, digest: &SyncDigest) -> Vec<u8> {
        match self.replica.answer_digest(digest, self.now_ms, SYNC_BUDGET) {
            Ok(summary) => node.seal_message(&StreamMessage::SyncSummary(summary)),
            Err(err) => {
                node.count_drop(DropReason::Undecodable);
                node.reject(&err.to_string())
            }
        }
    }

    /// Step 3 arrived: the reply frame with step 4.
    fn answer_sync_push(&mut self, node: &mut Node, push: &SyncPush) -> Vec<u8> {
        let reply = self.replica.answer_push(push, self.now_ms, SYNC_BUDGET);
        self.flush(node);
        node.seal_message(&StreamMessage::SyncPushReply(reply))
    }

    fn schedule_sync(&mut self, node: &mut Node) {
        let base = node.config().sync_interval;
        let jitter = base.mul_f64(node.rng().random_range(0.0..0.1));
        node.schedule(base + jitter, TimerEvent::Sync);
    }

    /// Starts an anti-entropy round with `to` (also right after joining, through it).
    pub(crate) fn start_sync(&mut self, node: &mut Node, to: SocketAddr) {
        let digest = self.replica.sync_digest(self.now_ms);
        node.exchange(to, &StreamMessage::Sync(digest));
    }

    /// Spreads the changes made here (local writes, re-asserted records): small ones on gossip
    /// datagrams, large ones by stream.
    pub(crate) fn flush(&mut self, node: &mut Node) {
        let changes = self.replica.take_outbox();
        self.spread(node, changes);
    }

    /// Applies changes another pool's replica took (a gateway relaying the data every
    /// datacenter shares between its LAN and WAN pools) and spreads those that were news
    /// here, as if made here; returns how many were. Their stamps are kept, so the copies in
    /// both pools stay the same CRDT values.
    pub(crate) fn relay(&mut self, node: &mut Node, changes: Vec<Change>) -> usize {
        let fresh: Vec<Change> = changes
            .into_iter()
            .filter(|change| match self.replica.apply(change, self.now_ms) {
                Ok(changed) => changed,
                Err(err) => {
                    tracing::debug!(%err, key = change.subject(), "relayed change refused");
                    false
                }
            })
            .collect();
        let relayed = fresh.len();
        self.spread(node, fresh);
        relayed
    }

    /// Spreads `changes`: small ones on gossip datagrams, large ones by stream.
    fn spread(&mut self, node: &mut Node, changes: Vec<Change>) {
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
                _ if node.broadcast_backlog() >= MAX_CHANGE_BACKLOG => {
                    node.count_dropped_change();
                }
                _ => {
                    if let Err(err) = node.enqueue_encoded(&bytes) {
                        tracing::debug!(%err, "change not queued; anti-entropy will carry it");
                        node.count_dropped_change();
                    }
                }
            }
        }
        Self::flood(node, large);
        // Settling records our own items as seen and pushes them on at once.
        node.push_queued();
        self.absorb(node);
    }

    /// Floods large changes to a few random members, who forward what was new to them. Each
    /// is offered by its key first and sent only to members that lack it: a member learns a
    /// change from ~ln N others, and receiving, opening and decoding every copy of a record of
    /// a thousand services is what loading a large catalog cost. Patches are sent at once
    /// (they are small, and have no key a peer could hold them by).
    fn flood(node: &mut Node, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let (mut offered, mut patches) = (Vec::new(), Vec::new());
        for change in changes {
            match change.key() {
                Some(key) => offered.push(key),
                None => patches.push(change),
            }
        }
        let fanout = flood_fanout(node.active_peers());
        for to in node.random_peers(fanout) {
            if !offered.is_empty() {
                node.exchange(to, &StreamMessage::ChangesOffer(offered.clone()));
            }
            if !patches.is_empty() {
                node.exchange(to, &StreamMessage::Changes(patches.clone()));
            }
        }
    }

    /// The offered changes to ask for: those this replica lacks and has not asked another
    /// member for within [`ASKED_FOR`] (a flood reaches a member from several others at
    /// once; the first to be asked sends it).
    fn wanted(&mut self, offered: &[ChangeKey]) -> Vec<ChangeKey> {
        let now = self.now_ms;
        let horizon = now.saturating_sub(ASKED_FOR.as_millis() as u64);
        self.asked.retain(|_, at| *at >= horizon);
        let wanted: Vec<ChangeKey> = offered
            .iter()
            .filter(|key| self.replica.lacks(key) && !self.asked.contains_key(*key))
            .cloned()
            .collect();
        self.asked
            .extend(wanted.iter().map(|key| (key.clone(), now)));
        wanted
    }

    fn apply_flooded(&mut self, node: &mut Node, changes: Vec<Change>) {
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
        Self::flood(node, fresh);
        self.flush(node);
    }

    /// Reaps the records of owners away longer than the reap time (at once for a graceful
    /// leave), but slowly when many are away together: that looks like a partition.
    fn reap_departed(&mut self, node: &Node) {
        let now = self.now_ms;
        let away = self.failed_owners(node);
        self.away_since.retain(|owner, _| away.contains(owner));
        for owner in &away {
            self.away_since.entry(owner.clone()).or_insert(now);
        }
        let owners = self.replica.records().len();
        let mass = away.len() > 1 && away.len() * MASS_EXPIRY_SHARE >= owners;
        let reap_after = if mass {
            node.config().reap_after * MASS_EXPIRY_FACTOR
        } else {
            node.config().reap_after
        };
        let reap_after_ms = u64::try_from(reap_after.as_millis()).unwrap_or(u64::MAX);
        let due: Vec<String> = self
            .away_since
            .iter()
            .filter(|(owner, since)| {
                node.has_left(owner) || now.saturating_sub(**since) >= reap_after_ms
            })
            .map(|(owner, _)| owner.clone())
            .collect();
        for owner in due {
            tracing::info!(%owner, "record reaped");
            self.replica.reap(&owner);
            self.away_since.remove(&owner);
        }
    }

    /// This node's own record as the replica holds it.
    fn own_record(&self) -> Option<std::sync::Arc<murmur_catalog::NodeRecord>> {
        self.replica.records().get(self.replica.me()).cloned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flood_fanout_grows_with_the_log_of_the_pool() {
        let fanouts: Vec<usize> = [0, 2, 15, 47, 127, 255, 9_999]
            .map(super::flood_fanout)
            .into();
        assert_eq!(fanouts, [2, 4, 5, 6, 7, 8, 12]);
    }
}
