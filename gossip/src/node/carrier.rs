//! What a [`Node`] offers the replicated state it carries: its member list to pick peers from,
//! its broadcast queue, sealed stream exchanges, timers, and the deliveries it queued.
//!
//! The node does not know what it carries; [`Replication`](crate::Replication) calls these to
//! spread changes and run anti-entropy over this pool, whichever pool it is.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use murmur_catalog::NodeRecord;
use rand::rngs::StdRng;

use super::{Delivery, Node, Output, TimerEvent};
use crate::members::MemberStatus;
use crate::wire::{self, DatagramKind, DropReason, OfferMessage, StreamMessage};

impl Node {
    /// What was learned for the carried state since the last call, oldest first.
    pub(crate) fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// Tells the node its own record as the carried state now has it, for user-event filters
    /// (`?service=`, `?tag=`) that match this member's services.
    pub(crate) fn set_own_record(&mut self, record: Option<Arc<NodeRecord>>) {
        self.own_record = record;
    }

    /// Those of `names` that membership does not consider active (this member aside).
    pub(crate) fn inactive_among<'a>(
        &self,
        names: impl Iterator<Item = &'a String>,
    ) -> BTreeSet<String> {
        self.view.inactive_among(names, &self.identity().name)
    }

    /// The address of the named member while it is active.
    pub(crate) fn active_addr_of(&self, name: &str) -> Option<SocketAddr> {
        let member = self.view.get(name)?;
        member.status.is_active().then_some(member.identity.addr)
    }

    /// Whether the named member left on purpose (as opposed to failing).
    pub(crate) fn has_left(&self, name: &str) -> bool {
        self.view
            .get(name)
            .is_some_and(|m| m.status == MemberStatus::Left)
    }

    /// Items waiting in foca's broadcast queue.
    pub(crate) fn broadcast_backlog(&self) -> usize {
        self.foca.custom_broadcast_backlog()
    }

    /// Records what was queued for broadcast as seen here and pushes it on at once.
    pub(crate) fn push_queued(&mut self) {
        self.with_foca(|_, _| ());
    }

    /// Seals `message` and asks the driver to exchange it with `to` over a stream.
    pub(crate) fn exchange(&mut self, to: SocketAddr, message: &StreamMessage) {
        let request = self.seal_message(message);
        self.outputs.push_back(Output::Exchange { to, request });
    }

    /// Sends an offer datagram to `to`.
    pub(crate) fn send_offer(&mut self, to: SocketAddr, message: &OfferMessage) {
        self.send_datagram(to, DatagramKind::Offer, &wire::encode(message));
    }

    /// Whether an active member gossips at `addr`: what a datagram naming an address to
    /// answer at must be before it is answered with more than a datagram.
    pub(crate) fn is_member_addr(&self, addr: SocketAddr) -> bool {
        self.active_member_at(addr).is_some()
    }

    /// Where this member gossips: where peers send what it asks for.
    pub(crate) fn gossip_addr(&self) -> SocketAddr {
        self.identity().addr
    }

    /// Asks the driver for `timer` after `after`.
    pub(crate) fn schedule(&mut self, after: Duration, timer: TimerEvent) {
        self.outputs.push_back(Output::Timer { after, timer });
    }

    /// The node's RNG (the one its caller seeded), for the carried state's random choices.
    pub(crate) fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Counts peer input the carried state could not read.
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.stats.dropped.count(reason);
    }

    /// Counts a peer message refused for what it asked.
    pub(crate) fn count_refused(&mut self) {
        self.stats.dropped.refused += 1;
    }

    /// Counts the changes of an offer this member asked for and those it held already.
    pub(crate) fn count_offered(&mut self, wanted: usize, known: usize) {
        self.stats.offered_changes_wanted += wanted as u64;
        self.stats.offered_changes_known += known as u64;
    }

    /// Counts an offered change asked for again, of another member that offered it: the first
    /// answer or its stream was lost.
    pub(crate) fn count_asked_again(&mut self) {
        self.stats.offered_changes_asked_again += 1;
    }

    /// Counts a change the broadcast queue had no room for (anti-entropy repairs it).
    pub(crate) fn count_dropped_change(&mut self) {
        self.stats.changes_dropped += 1;
    }
}
