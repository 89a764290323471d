//! One member of a gossip pool with the replicated state it carries: a [`Node`] (membership)
//! and a [`Replication`] (the replica and its protocol), and the routing between them.
//!
//! Drivers (the agent, the simulator) feed a `PoolMember` what arrives and carry out what it
//! outputs. Each call goes to the node first; what the node learned for the replica (changes
//! on gossip, members up, health moved) is then handed to the replication in the order it was
//! learned, and replication messages the node received are answered by the replication.

use std::net::SocketAddr;

use murmur_catalog::{Change, Replica, ReplicaConfig};
use rand::rngs::StdRng;

use crate::node::{Replied, Served};
use crate::{
    EventFilter, GossipConfig, GossipError, Identities, Keyring, Node, NodeIdentity, Output,
    Replication, TimerEvent, UserEvent,
};

/// What a stream request asks of the driver.
#[derive(Debug)]
pub enum StreamReply {
    /// The core answered: send this frame back.
    Reply(Vec<u8>),
    /// A sealed agent request: the driver answers it with [`Node::agent_reply`].
    ForAgent {
        /// Which handler.
        kind: String,
        /// Its input.
        body: Vec<u8>,
    },
    /// A tether from `0` (see [`Node::tether_targets`]): the driver sends nothing back, holds
    /// the stream open, and calls [`PoolMember::tether_lost`] when it ends.
    Tether(NodeIdentity),
}

/// One member of a pool: membership plus the replica it carries.
pub struct PoolMember {
    node: Node,
    replication: Replication,
}

impl PoolMember {
    /// A member that knows nobody yet, with an empty replica. `rng` drives every random choice
    /// (probe targets, nonces, event ids, peers for anti-entropy): seed it from the OS in
    /// production and from the scenario seed in tests.
    pub fn new(
        identity: NodeIdentity,
        config: GossipConfig,
        keyring: Keyring,
        rng: StdRng,
    ) -> Result<Self, GossipError> {
        Self::with_identities(identity, config, keyring, rng, Identities::default())
    }

    /// Like [`PoolMember::new`], sharing decoded identities through `identities`: the
    /// simulator hands one set to all its nodes so each member's identity is held once.
    pub fn with_identities(
        identity: NodeIdentity,
        config: GossipConfig,
        keyring: Keyring,
        rng: StdRng,
        identities: Identities,
    ) -> Result<Self, GossipError> {
        let replica = Replica::new(
            &identity.name,
            identity.node_id,
            identity.generation,
            ReplicaConfig::default(),
        );
        let mut node = Node::with_identities(identity, config, keyring, rng, identities)?;
        let replication = Replication::new(replica, &mut node);
        Ok(Self { node, replication })
    }

    /// Membership: who is in the pool, this member's identity, keyring, events, counters.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Membership calls that carry no replicated state (seeds, keyring steps, agent requests,
    /// user events).
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// The replicated state, for queries.
    pub fn replica(&self) -> &Replica {
        self.replication.replica()
    }

    /// How many anti-entropy rounds this member started and saw through.
    pub fn sync_rounds_done(&self) -> u64 {
        self.replication.rounds_done()
    }

    /// Replaces the (empty) replica with one restored from disk; call before anything else.
    pub fn set_replica(&mut self, replica: Replica) {
        self.replication.set_replica(replica, &mut self.node);
    }

    /// Tells the member the time; call before each input. `wall_ms` is the wall clock (ms
    /// since the Unix epoch: stamps, horizons); `elapsed` is monotonic time since any fixed
    /// moment of the driver's (round trips are measured on it, so a wall-clock step never
    /// makes one up).
    pub fn set_now(&mut self, wall_ms: u64, elapsed: std::time::Duration) {
        self.replication.set_now(wall_ms);
        self.node.set_elapsed(elapsed);
    }

    /// Makes a local change (a KV write, this node's record, …); it spreads from here.
    pub fn write<R>(&mut self, change: impl FnOnce(&mut Replica, u64) -> R) -> R {
        self.replication.write(&mut self.node, change)
    }

    /// Applies changes taken from another pool's replica and spreads those that were news
    /// here; returns how many were (see `Replication::relay`).
    pub fn relay(&mut self, changes: Vec<Change>) -> usize {
        self.replication.relay(&mut self.node, changes)
    }

    /// Record owners that membership does not consider active: their instances get the
    /// synthetic critical member check.
    pub fn failed_owners(&self) -> std::collections::BTreeSet<String> {
        self.replication.failed_owners(&self.node)
    }

    /// The next thing for the driver to do. Journal entries follow the changes that made
    /// them: a driver that persists each `Persist` before acknowledging a write never
    /// acknowledges an unpersisted one.
    pub fn poll_output(&mut self) -> Option<Output> {
        if !self.node.has_outputs() {
            let journal = self.replication.take_journal();
            if !journal.is_empty() {
                return Some(Output::Persist(journal));
            }
        }
        self.node.poll_output()
    }

    /// A datagram arrived.
    pub fn handle_datagram(&mut self, bytes: &[u8]) {
        let offer = self.node.handle_datagram(bytes);
        self.replication.absorb(&mut self.node);
        if let Some(offer) = offer {
            self.replication.on_offer(&mut self.node, offer);
        }
    }

    /// The host at `addr` says nobody listens there: a datagram this member sent there came
    /// back as ICMP port unreachable, or a stream to it was refused. Evidence that the member
    /// at that address crashed, which a few others confirm before it is declared down.
    pub fn handle_unreachable(&mut self, addr: SocketAddr) {
        self.node.handle_unreachable(addr);
        self.replication.absorb(&mut self.node);
    }

    /// A tether `subject` held to this member ended (its stream closed or broke): this member
    /// checks it, and a dead process's host answers the check.
    pub fn tether_lost(&mut self, subject: &NodeIdentity) {
        self.node.tether_lost(subject);
        self.replication.absorb(&mut self.node);
    }

    /// A timer the member asked for expired.
    pub fn handle_timer(&mut self, timer: TimerEvent) {
        match timer {
            TimerEvent::Sync => self.replication.on_sync_timer(&mut self.node),
            timer => self.node.handle_timer(timer),
        }
        self.replication.absorb(&mut self.node);
    }

    /// The reply to an [`Output::Exchange`] (or a join's push-pull) from `from` arrived.
    pub fn handle_reply(&mut self, from: SocketAddr, reply: &[u8]) -> Result<(), GossipError> {
        let replied = self.node.handle_reply(reply);
        self.replication.absorb(&mut self.node);
        match replied? {
            Replied::PushPull { first: true } => self.replication.joined(&mut self.node, from),
            Replied::PushPull { first: false } => {}
            Replied::Replication(message) => {
                self.replication.on_reply(&mut self.node, from, message)?;
            }
        }
        self.replication.flush(&mut self.node);
        Ok(())
    }

    /// A stream request arrived; the return value is the reply frame body. Agent requests and
    /// tethers are refused here: a driver that serves them calls [`PoolMember::serve_stream`].
    pub fn handle_stream(&mut self, request: &[u8]) -> Vec<u8> {
        match self.serve_stream(request) {
            StreamReply::Reply(reply) => reply,
            StreamReply::ForAgent { kind, .. } => self
                .node
                .reject(&format!("this member does not serve {kind:?} requests")),
            StreamReply::Tether(_) => self.node.reject("this member holds no tethers"),
        }
    }

    /// A stream request arrived: either the reply frame body, or an agent request (sealed
    /// under the gossip key, never plaintext) for the driver to answer with
    /// [`Node::agent_reply`].
    pub fn serve_stream(&mut self, request: &[u8]) -> StreamReply {
        let served = self.node.serve_stream(request);
        self.replication.absorb(&mut self.node);
        match served {
            Served::Reply(reply) => StreamReply::Reply(reply),
            Served::Agent { kind, body } => StreamReply::ForAgent { kind, body },
            Served::Tether(subject) => StreamReply::Tether(subject),
            Served::Replication(message) => {
                StreamReply::Reply(self.replication.answer(&mut self.node, message))
            }
        }
    }

    /// Fires a user event to every member; returns it as recorded.
    pub fn fire_event(
        &mut self,
        name: &str,
        payload: &[u8],
        filter: EventFilter,
    ) -> Result<UserEvent, GossipError> {
        let fired = self.node.fire_event(name, payload, filter);
        self.replication.absorb(&mut self.node);
        fired
    }

    /// Leaves the pool on purpose. The record goes empty first, so this member's services
    /// vanish everywhere at once; then the members hear it is a leave (so they list it as
    /// left, not failed). The driver should keep running the member for a moment afterwards so
    /// the news goes out.
    pub fn leave(&mut self) {
        if self.node.is_leaving() {
            return;
        }
        self.write(|replica, _| replica.set_own_record(None));
        self.node.leave();
        self.replication.absorb(&mut self.node);
    }
}

#[cfg(test)]
mod tests {
    use murmur_catalog::{Action, Intention, Journaled};
    use rand::SeedableRng;

    use super::*;
    use crate::IdentityFields;

    fn member(name: &str, port: u16) -> PoolMember {
        let identity: NodeIdentity = IdentityFields {
            name: name.into(),
            node_id: u64::from(port),
            generation: 1,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            datacenter: "dc1".into(),
            tags: Vec::new(),
        }
        .into();
        let mut member = PoolMember::new(
            identity,
            GossipConfig::wan("c"),
            Keyring::new(None),
            StdRng::seed_from_u64(7),
        )
        .unwrap();
        member.set_now(1_700_000_000_000, std::time::Duration::ZERO);
        member
    }

    #[test]
    fn an_ask_for_offered_changes_from_no_member_is_refused_not_streamed() {
        // The ask names where to stream the changes (up to 1 MiB); a datagram naming an
        // address no member gossips at must not aim that stream anywhere.
        let mut a = member("a", 1);
        let value = Some(murmur_catalog::KvValue {
            flags: 0,
            value: vec![1; 4_000],
        });
        a.write(|r, now| r.kv_write("big", value, None, now))
            .unwrap();
        while a.poll_output().is_some() {}
        let stamp = *a
            .replica()
            .shared()
            .entry("kv/big")
            .unwrap()
            .register
            .stamp();
        let key = murmur_catalog::ChangeKey::Shared {
            key: "kv/big".into(),
            stamp,
        };
        let ask = crate::wire::OfferMessage::Wanted {
            keys: vec![key],
            from: SocketAddr::from(([192, 0, 2, 1], 80)),
        };
        let datagram = crate::wire::seal_datagram(
            "c",
            &Keyring::new(None),
            &mut StdRng::seed_from_u64(1),
            crate::wire::DatagramKind::Offer,
            &crate::wire::encode(&ask),
        );
        a.handle_datagram(&datagram);
        let streams = std::iter::from_fn(|| a.poll_output())
            .filter(|o| matches!(o, Output::Exchange { .. }))
            .count();
        assert_eq!(streams, 0);
        assert_eq!(a.node().stats().dropped.refused, 1);
    }

    #[test]
    fn a_relayed_change_lands_once_with_its_stamp() {
        let mut lan = member("a", 1);
        lan.write(|r, now| r.put_intention(Intention::new("web", "db", Action::Allow), now));
        let changes: Vec<Change> = std::iter::from_fn(|| lan.poll_output())
            .filter_map(|output| match output {
                Output::Persist(entries) => Some(entries),
                _ => None,
            })
            .flatten()
            .filter_map(|entry| match entry {
                Journaled::Change { change, .. } => Some(change),
                _ => None,
            })
            .filter(|change| change.subject().starts_with("intention/"))
            .collect();
        assert_eq!(changes.len(), 1);

        let mut wan = member("a.dc1", 2);
        assert_eq!(wan.relay(changes.clone()), 1, "news the first time");
        assert_eq!(
            wan.relay(changes),
            0,
            "redundant the second: a relay loop ends here"
        );
        let key = Intention::key("web", "db");
        let theirs = wan.replica().shared().entry(&key).unwrap();
        let ours = lan.replica().shared().entry(&key).unwrap();
        assert_eq!(theirs.register, ours.register, "the same stamped value");
        assert_eq!(wan.replica().intentions().count(), 1);
    }
}
