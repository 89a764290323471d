//! Tethers: a stream each member holds open to the members that would confirm its crash, so
//! that when its process dies they hear it from its host at once.
//!
//! A process that ends for any reason (`kill -9`, an OOM kill, a panic) has its sockets closed
//! by its kernel, and each open TCP connection ends with a FIN or a reset one round trip
//! later. Without a tether, the first to learn of such a crash is whoever sends the dead
//! process a datagram next (its host answers "port unreachable"): a probe or a coordinate
//! ping, about once a second across the whole cluster, later than that on a loaded host. With
//! one, the members ranked highest to confirm it (`unreachable`'s rendezvous ranking, which
//! every member computes alike) know within milliseconds, whatever the cluster's size, and it
//! costs next to no traffic while nothing happens: an idle TCP connection sends nothing but
//! the keep-alive its driver asks for.
//!
//! A tether's end is not evidence on its own: the member holding it checks the subject as a
//! confirmer checks a suspect (a ping, which a dead process's host bounces), so a tether that
//! ends for another reason (the subject re-ranked its confirmers, or left) costs one answered
//! ping. A silent host closes nothing; SWIM's probes and the confirmers' checks find it.
//!
//! The core decides (whom to tie to, what a lost tether means); the driver holds the streams.

use foca::Member;

use super::Node;
use super::unreachable::{CONFIRMERS, top_ranked};
use crate::NodeIdentity;
use crate::wire::StreamMessage;

impl Node {
    /// The members this node should hold a tether to: those that rank highest to confirm its
    /// crash, [`CONFIRMERS`] of them (fewer while there are fewer), best first. The driver
    /// keeps a stream open to each (see the module's documentation).
    pub fn tether_targets(&self) -> Vec<NodeIdentity> {
        let me = self.identity();
        let others = self
            .foca
            .iter_members()
            .map(Member::id)
            .filter(|id| id.name != me.name);
        top_ranked(&me.name, others, CONFIRMERS)
            .into_iter()
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The first and only frame of a tether stream: it names this node.
    pub fn tether_request(&mut self) -> Vec<u8> {
        let me = self.identity().clone();
        self.seal_message(&StreamMessage::Tether(me))
    }

    /// A tether `subject` held to this node ended: if it is still an active member in that
    /// life, this node checks it (pings, close together at first; the bounce from a dead
    /// process's host reports it).
    pub fn tether_lost(&mut self, subject: &NodeIdentity) {
        self.stats.unreachable.tethers_lost += 1;
        if self.is_active_life(subject) {
            self.check_after_tether(subject);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::digest_exchange_tests::{identity, node_knowing};
    use std::time::Duration;

    use super::super::{Output, Served, TimerEvent};
    use super::*;

    /// Whether `node` sent anything to `subject`'s address since its outputs were cleared.
    fn pinged(node: &Node, subject: &NodeIdentity) -> bool {
        node.outputs
            .iter()
            .any(|o| matches!(o, Output::Datagram { to, .. } if *to == subject.addr))
    }

    #[test]
    fn a_member_ties_itself_to_the_members_that_would_confirm_its_crash() {
        let members = 1..=30;
        let subject = node_knowing(1, members.clone());
        let targets = subject.tether_targets();
        assert_eq!(targets.len(), CONFIRMERS);
        for i in members.filter(|&i| i != 1) {
            let other = node_knowing(i, 1..=30);
            assert_eq!(
                other.is_confirmer_of(&identity(1)),
                targets.contains(&identity(i)),
                "n{i} confirms n1 exactly when n1 ties itself to it"
            );
        }
    }

    #[test]
    fn a_small_pool_ties_to_every_other_member() {
        let targets = node_knowing(1, 1..=4).tether_targets();
        let names: Vec<_> = targets.iter().map(|id| id.name.to_string()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(!names.contains(&"n1".to_owned()), "never to itself");
    }

    #[test]
    fn a_tether_is_served_as_one_naming_its_sender() {
        let mut subject = node_knowing(1, 1..=5);
        let mut holder = node_knowing(2, 1..=5);
        let request = subject.tether_request();
        match holder.serve_stream(&request) {
            Served::Tether(from) => assert_eq!(from, identity(1)),
            _ => panic!("a tether is handed to the driver to hold"),
        }
    }

    #[test]
    fn a_lost_tether_makes_its_holder_check_that_life_of_the_subject_only() {
        let mut holder = node_knowing(2, 1..=10);
        holder.outputs.clear();
        holder.tether_lost(&identity(1));
        assert!(pinged(&holder, &identity(1)), "the holder checks n1");
        assert_eq!(holder.stats.unreachable.tethers_lost, 1);

        // The stream's end may overtake the death of the process behind it: unanswered, the
        // holder pings again within milliseconds, not a probe timeout later.
        holder.outputs.clear();
        holder.set_elapsed(Duration::from_millis(10));
        holder.handle_timer(TimerEvent::Confirm);
        assert!(pinged(&holder, &identity(1)), "pinged again 10 ms later");
        holder.outputs.clear();
        holder.set_elapsed(Duration::from_millis(20));
        holder.handle_timer(TimerEvent::Confirm);
        assert!(
            !pinged(&holder, &identity(1)),
            "then backing off: next at 30 ms"
        );
        holder.set_elapsed(Duration::from_millis(30));
        holder.handle_timer(TimerEvent::Confirm);
        assert!(pinged(&holder, &identity(1)), "pinged at 30 ms");

        // Not evidence on its own: nobody reported n1 yet, the holder only asked.
        assert_eq!(holder.stats.unreachable.declared, 0);

        let mut holder = node_knowing(2, 1..=10);
        holder.outputs.clear();
        let mut earlier_life = identity(1);
        earlier_life.generation = 0;
        holder.tether_lost(&earlier_life);
        holder.tether_lost(&identity(77));
        assert!(
            !pinged(&holder, &identity(1)) && !pinged(&holder, &identity(77)),
            "a tether of an earlier life, or of a stranger, starts nothing"
        );
    }
}
