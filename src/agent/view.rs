//! What a query reads of this agent's datacenter: the LAN pool's replica and what its
//! membership says, read-only.
//!
//! HTTP handlers, DNS answers and the connect code read through a [`View`] instead of the pool
//! member itself, so they depend on what a datacenter's state is (records, shared data, who is
//! alive), not on how the agent's pools are put together.

use std::collections::BTreeSet;

use murmur_catalog::Replica;
use murmur_gossip::{Backlogs, EventLog, MemberState, NodeIdentity, PoolMember, Stats};

/// A read-only view of the local datacenter, valid for one read (it holds the pool's read lock).
pub struct View<'a> {
    member: &'a PoolMember,
}

impl<'a> View<'a> {
    pub(super) fn new(member: &'a PoolMember) -> Self {
        Self { member }
    }

    /// The replicated state: records, KV, intentions, CA roots, external nodes.
    pub fn replica(&self) -> &'a Replica {
        self.member.replica()
    }

    /// Record owners this agent's membership does not consider active: their instances get
    /// the synthetic critical `serfHealth` check.
    pub fn failed_owners(&self) -> BTreeSet<String> {
        self.member.failed_owners()
    }

    /// This agent's LAN coordinate as it stands now (published every so often).
    pub fn coordinate(&self) -> &'a murmur_catalog::Coordinate {
        self.member.node().coordinate()
    }

    /// How many members this agent sees alive (itself not counted).
    pub fn alive_peers(&self) -> usize {
        self.member.node().alive_peers()
    }

    /// This agent's identity.
    pub fn me(&self) -> &'a NodeIdentity {
        self.member.node().identity()
    }

    /// What membership knows of the member named `name` (never this agent).
    pub fn peer(&self, name: &str) -> Option<&'a MemberState> {
        self.member.node().peer(name)
    }

    /// A node's id for the `ID` fields (Consul shows node ids as UUIDs), 0 when unknown: a
    /// lookup in the member view, not a map of every member per request.
    pub fn node_id(&self, name: &str) -> u64 {
        let me = self.me();
        if me.name == name {
            return me.node_id;
        }
        self.peer(name).map_or(0, |m| m.identity.node_id)
    }

    /// Every known member including this agent, sorted by name.
    pub fn members(&self) -> Vec<MemberState> {
        self.member.node().members()
    }

    /// Recent user events.
    pub fn events(&self) -> &'a EventLog {
        self.member.node().events()
    }

    /// Gossip traffic and drop counters.
    pub fn stats(&self) -> &'a Stats {
        self.member.node().stats()
    }

    /// Sizes of the gossip queues.
    pub fn backlogs(&self) -> Backlogs {
        self.member.node().backlogs()
    }

    /// How many anti-entropy rounds this agent started and saw through.
    pub fn sync_rounds_done(&self) -> u64 {
        self.member.sync_rounds_done()
    }

    /// Whether gossip is encrypted.
    pub fn encrypted(&self) -> bool {
        self.member.node().keyring().is_encrypted()
    }
}
