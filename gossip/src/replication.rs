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
use crate::wire::{self, DropReason, OfferMessage, StreamMessage};

/// Largest encoded change piggybacked on gossip datagrams; larger ones go by stream, so a
/// change never crowds out membership updates.
const MAX_BROADCAST_CHANGE: usize = 900;
/// Most changes waiting in foca's broadcast queue; beyond it changes are dropped (and counted)
/// and anti-entropy repairs them.
const MAX_CHANGE_BACKLOG: usize = 4096;
/// How many members a large change is flooded to, by each member that learns it, in a pool
/// of `members` others: ⌈ln(members + 1)⌉ + 5. Each node is missed with probability about
/// e^-fanout, so this keeps the expected number of nodes a change misses (and that wait up
/// to a sync round for it) near e^-5 ≈ 0.007. A fixed 3 missed ~5 % of the nodes (48 nodes:
/// every node reached within 2 s in 2 of 12 simulated runs); with + 2 (e^-2 ≈ 0.14 missed per
/// change) a 32-node flood left one node waiting ~10 s for anti-entropy in 3 of 40 seeds, none
/// with + 5. Offers carry keys only, so the larger fanout costs small datagrams: 161 → 257
/// offers declined in a 32-node flood, the same stream bytes
/// (`a_large_change_is_offered_first_and_each_node_receives_about_one_copy`).
fn flood_fanout(members: usize) -> usize {
    (members as f64 + 1.0).ln().ceil() as usize + 5
}
/// How long a member that asked for an offered change declines other offers of it, noting
/// who made them: the first one asked sends it in a round trip. Without this, a member asked
/// for a 50 KB value ~2.5 times in a 32-node flood (simulated,
/// `a_large_change_is_offered_first_and_each_node_receives_about_one_copy`).
const ASKED_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// When an offered change asked for has not come after this long (the asking datagram, or
/// the stream that answers it, was lost), the member asks the next member that offered it.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_millis(500);
/// How many of the other members that offered a change asked for are kept, to ask in turn.
const OFFERERS_KEPT: usize = 3;
/// Bytes of keys one offer datagram carries: a datagram's body less the message's own fields
/// (its variant, the list's length and the sender's address take at most 32).
const OFFER_BUDGET: usize = wire::MAX_DATAGRAM - wire::ENVELOPE_OVERHEAD - 32;
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

/// The keys of `changes` in batches that each fit one offer datagram ([`OFFER_BUDGET`]), in
/// order, and the changes to send whole: patches (no key), and any whose key alone would not
/// fit (none today: KV keys and node names are bounded well below a datagram, but a key
/// type without such a bound must not make an offer no datagram can carry).
fn offer_batches(changes: Vec<Change>) -> (Vec<Vec<ChangeKey>>, Vec<Change>) {
    let (mut offers, mut whole): (Vec<Vec<ChangeKey>>, _) = (Vec::new(), Vec::new());
    let mut room = 0;
    for change in changes {
        let Some(key) = change.key() else {
            whole.push(change);
            continue;
        };
        let size = wire::encode(&key).len();
        if size > OFFER_BUDGET {
            whole.push(change);
            continue;
        }
        if offers.is_empty() || size > room {
            offers.push(Vec::new());
            room = OFFER_BUDGET;
        }
        room -= size;
        offers
            .last_mut()
            .expect("a batch was just started")
            .push(key);
    }
    (offers, whole)
}

/// An offered change this member asked for.
struct Asked {
    /// When it last asked (wall ms).
    at: u64,
    /// Other members that offered it since, to ask in turn if it does not come.
    offered_by: Vec<SocketAddr>,
}

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
    /// Offered changes this member asked for and lacks still. Ordered, so the members asked
    /// again go out in the same order on every run.
    asked: BTreeMap<ChangeKey, Asked>,
    /// Whether this member joined and spreads its record again once it caught up with the
    /// member it joined through (see [`Replication::joined`]).
    spread_own_when_caught_up: bool,
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
            asked: BTreeMap::new(),
            spread_own_when_caught_up: false,
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
        self.ask_again(node);
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
            StreamMessage::ChangesAck => Ok(()),
            other => unreachable!("the node routes only replication replies here: {other:?}"),
        }
    }

    /// An offer datagram arrived: a member offers changes (this member asks for those it
    /// lacks), or asks for changes this member offered (they go by stream).
    pub(crate) fn on_offer(&mut self, node: &mut Node, message: OfferMessage) {
        match message {
            OfferMessage::Offer {
                keys,
                from: offerer,
            } => {
                let wanted = self.wanted(&keys, offerer);
                node.count_offered(wanted.len(), keys.len() - wanted.len());
                if !wanted.is_empty() {
                    let from = node.gossip_addr();
                    node.send_offer(offerer, &OfferMessage::Wanted { keys: wanted, from });
                }
            }
            // Answered by a stream of up to 1 MiB: only to a member, so that a datagram naming
            // another address cannot aim one anywhere.
            OfferMessage::Wanted { keys, from } if node.is_member_addr(from) => {
                // Sent as this replica holds them now (the offered version or a newer one), up
                // to the anti-entropy budget: a peer asking for more gets the rest from
                // anti-entropy.
                let mut budget = SYNC_BUDGET;
                let changes: Vec<Change> = keys
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
            }
            OfferMessage::Wanted { .. } => node.count_refused(),
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
        } else if std::mem::take(&mut self.spread_own_when_caught_up) {
            let own = ChangeKey::Record {
                owner: self.replica.me().to_owned(),
                version: Default::default(),
            };
            if let Some(record) = self.replica.change_for(&own) {
                self.spread(node, vec![record]);
            }
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

    /// Just joined through `seed`: fetches the replicated state now, not at the next timer.
    /// Once that exchange is complete, this member spreads its record again: a record too
    /// large for a datagram was flooded when the agent wrote it at start, to the nobody it
    /// knew then, and would spread by anti-entropy only, one 10 s round after another (32
    /// simulated nodes: 22 s until every node listed a newcomer of 80 services). Not at
    /// once: while agents join together, every one is still pulling the catalog, and a flood
    /// then reaches them beside their own anti-entropy rounds, both bringing the same records
    /// (128 agents of 1,344 services starting together on 2 cores: 30% more CPU, joins 7 → 20
    /// s, and agents starved past the join time-out).
    pub(crate) fn joined(&mut self, node: &mut Node, seed: SocketAddr) {
        self.spread_own_when_caught_up = true;
        self.start_sync(node, seed);
    }

    /// Starts an anti-entropy round with `to`.
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
    /// is offered by its key first, in datagrams, and sent only to members that ask for it: a
    /// member learns a change from ~ln N others, and receiving, opening and decoding every copy
    /// of a record of a thousand services is what loading a large catalog cost. Patches are
    /// sent at once (they have no key a peer could hold them by), and so is a change whose key
    /// alone would not fit a datagram.
    fn flood(node: &mut Node, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let (offers, whole) = offer_batches(changes);
        let fanout = flood_fanout(node.active_peers());
        let from = node.gossip_addr();
        for to in node.random_peers(fanout) {
            for keys in &offers {
                let offer = OfferMessage::Offer {
                    keys: keys.clone(),
                    from,
                };
                node.send_offer(to, &offer);
            }
            if !whole.is_empty() {
                node.exchange(to, &StreamMessage::Changes(whole.clone()));
            }
        }
    }

    /// The offered changes to ask `offerer` for: those this replica lacks and has not asked
    /// another member for within [`ASKED_FOR`] (a flood reaches a member from several others
    /// at once; the first to be asked sends it, and the others are noted, to be asked in turn
    /// if it does not come).
    fn wanted(&mut self, offered: &[ChangeKey], offerer: SocketAddr) -> Vec<ChangeKey> {
        let now = self.now_ms;
        let mut wanted = Vec::new();
        for key in offered {
            if !self.replica.lacks(key) {
                continue;
            }
            match self.asked.get_mut(key) {
                Some(asked) => {
                    if asked.offered_by.len() < OFFERERS_KEPT
                        && !asked.offered_by.contains(&offerer)
                    {
                        asked.offered_by.push(offerer);
                    }
                }
                None => {
                    let asked = Asked {
                        at: now,
                        offered_by: Vec::new(),
                    };
                    self.asked.insert(key.clone(), asked);
                    wanted.push(key.clone());
                }
            }
        }
        wanted
    }

    /// Asks the next member that offered it for each change asked for [`ASK_AGAIN`] ago that
    /// has not come; forgets those that came, and those nobody is left to ask for after
    /// [`ASKED_FOR`] (anti-entropy brings them).
    fn ask_again(&mut self, node: &mut Node) {
        if self.asked.is_empty() {
            return;
        }
        let now = self.now_ms;
        let replica = &self.replica;
        self.asked.retain(|key, asked| {
            let waited = now.saturating_sub(asked.at);
            replica.lacks(key)
                && (waited < ASKED_FOR.as_millis() as u64 || !asked.offered_by.is_empty())
        });
        let from = node.gossip_addr();
        for (key, asked) in &mut self.asked {
            if now.saturating_sub(asked.at) < ASK_AGAIN.as_millis() as u64
                || asked.offered_by.is_empty()
            {
                continue;
            }
            let to = asked.offered_by.remove(0);
            asked.at = now;
            node.count_asked_again();
            let keys = vec![key.clone()];
            node.send_offer(to, &OfferMessage::Wanted { keys, from });
        }
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
    use murmur_catalog::{ChangeKey, KvValue, MAX_KEY_BYTES, Replica, ReplicaConfig};

    use super::offer_batches;
    use crate::wire::{self, ENVELOPE_OVERHEAD, MAX_DATAGRAM, OfferMessage};

    #[test]
    fn offers_are_batched_into_datagrams_and_the_longest_key_fits_one() {
        let mut replica = Replica::new("n1", 1, 1, ReplicaConfig::default());
        let value = Some(KvValue {
            flags: 0,
            value: vec![1; 2_000],
        });
        for i in 0..100 {
            let key = format!("service/config/{i:04}");
            replica.kv_write(&key, value.clone(), None, i).unwrap();
        }
        let longest = "k".repeat(MAX_KEY_BYTES);
        replica
            .kv_write(&longest, value.clone(), None, 100)
            .unwrap();
        let changes = replica.take_outbox();
        let (offers, whole) = offer_batches(changes);
        assert!(whole.is_empty(), "every key fits an offer");
        assert!(offers.len() > 1, "101 keys take several datagrams");
        let offered: Vec<&ChangeKey> = offers.iter().flatten().collect();
        assert_eq!(offered.len(), 101);
        let written = &offered[..100];
        assert!(
            written
                .windows(2)
                .all(|w| matches!((w[0], w[1]), (ChangeKey::Shared { key: a, .. }, ChangeKey::Shared { key: b, .. }) if a < b)),
            "in the order written"
        );
        let from = "[2001:db8::1:2:3:4]:65535".parse().unwrap();
        for keys in offers {
            let body = wire::encode(&OfferMessage::Offer { keys, from });
            assert!(
                body.len() + ENVELOPE_OVERHEAD <= MAX_DATAGRAM,
                "an offer of {} bytes does not fit a datagram",
                body.len()
            );
        }
    }

    #[test]
    fn the_flood_fanout_grows_with_the_log_of_the_pool() {
        let fanouts: Vec<usize> = [0, 2, 15, 47, 127, 255, 9_999]
            .map(super::flood_fanout)
            .into();
        assert_eq!(fanouts, [5, 7, 8, 9, 10, 11, 15]);
    }
}
