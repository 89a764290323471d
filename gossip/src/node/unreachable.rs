//! A crashed process on a live host is answered for by its host: a datagram to its port comes
//! back as "port unreachable" (ICMP), and a stream to it is refused. That is evidence SWIM
//! does not use: it waits for a probe to time out, then for the suspicion to expire, seconds in
//! all. Here the evidence is the driver's input ([`Node::handle_unreachable`]), and it is not
//! taken on one member's word: a member that hears it reports it to a few confirmers, chosen
//! by rendezvous hashing so every member picks the same ones for the same subject; each sends
//! the subject a datagram of its own and, when that bounces too, reports likewise. A member
//! holding reports from [`CONFIRMATIONS`] distinct members (itself included) about the same
//! life of the subject declares it down, and SWIM spreads the `Down` as any other.
//!
//! Nothing here can declare a live member down: a process that answers never bounces a
//! datagram, so at most one confused member (a firewall that rejects, a wrong route) reports,
//! and one report is not enough. A host that is silent (crashed, cut off, stopped) answers
//! nothing, so it is left to SWIM's probes and suspicion.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use compact_str::CompactString;
use foca::Member;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::NodeIdentity;
use crate::rendezvous::pair_score;
use crate::wire::{self, DatagramKind};

/// Reports from this many distinct members (fewer when fewer could report) declare the subject
/// down.
pub const CONFIRMATIONS: usize = 3;

/// How many members a report goes to: one more than the confirmations needed besides the
/// reporter, so one lost datagram or one member slow to answer does not stall the decision.
const CONFIRMERS: usize = CONFIRMATIONS + 1;

/// How long reports about a subject count. A restart takes longer than a confirmation round
/// trip; reports older than this are about an episode that ended.
const WINDOW: Duration = Duration::from_secs(5);

/// At most this many subjects are followed at once (a burst of crashes, or a flood of forged
/// reports, cannot grow the node without bound); the oldest episode makes room.
const MAX_EPISODES: usize = 64;

/// The datagrams of this exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum EvidenceMessage {
    /// "My datagram to `subject` came back unreachable."
    Report {
        /// The life of the member that did not answer (its generation included, so a report
        /// about an earlier life never touches the current one).
        subject: NodeIdentity,
        /// Who saw it.
        reporter: CompactString,
    },
    /// A confirmer's datagram to the subject: it only has to bounce or not. A running member
    /// ignores it.
    Probe,
}

/// What a node knows about one subject's unreachability.
#[derive(Debug)]
struct Episode {
    /// When the first report (or signal) came, on the driver's monotonic time.
    started: Duration,
    /// Distinct members that reported it, this node included once it saw it itself.
    reporters: BTreeSet<CompactString>,
    /// Whether this node has sent the subject a probe of its own.
    probed: bool,
    /// Whether this node has reported it to the confirmers.
    reported: bool,
}

/// The episodes a node follows.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    episodes: HashMap<NodeIdentity, Episode>,
}

impl Node {
    /// The host at `addr` answered for it: nobody listens there (an ICMP port unreachable to
    /// one of this node's datagrams, or a refused stream). Evidence against the member at that
    /// address, if any is active; see the module's documentation.
    pub(crate) fn handle_unreachable(&mut self, addr: SocketAddr) {
        self.stats.unreachable.signals += 1;
        let Some(subject) = self.active_member_at(addr) else {
            return;
        };
        let me = self.identity().name.clone();
        let episode = self.episode(&subject);
        episode.reporters.insert(me.clone());
        if !std::mem::replace(&mut episode.reported, true) {
            let report = EvidenceMessage::Report {
                subject: subject.clone(),
                reporter: me,
            };
            for to in self.confirmers(&subject) {
                self.send_evidence(to, &report);
            }
        }
        self.conclude(&subject);
    }

    /// An evidence datagram arrived.
    pub(super) fn handle_evidence(&mut self, body: &[u8]) {
        let message = match wire::decode::<EvidenceMessage>(body) {
            Ok(message) => message,
            Err(reason) => return self.stats.dropped.count(reason),
        };
        let EvidenceMessage::Report { subject, reporter } = message else {
            // A probe: this member runs, which is all the prober needs to learn.
            return;
        };
        self.stats.unreachable.reports += 1;
        if self.active_member_at(subject.addr).as_ref() != Some(&subject) {
            // About ourselves, an earlier life, or a member we do not list as active.
            return;
        }
        let episode = self.episode(&subject);
        episode.reporters.insert(reporter);
        if !episode.reported && !std::mem::replace(&mut episode.probed, true) {
            self.send_evidence(subject.addr, &EvidenceMessage::Probe);
        }
        self.conclude(&subject);
    }

    /// The active member (alive or suspect) at `addr`, other than this node.
    fn active_member_at(&self, addr: SocketAddr) -> Option<NodeIdentity> {
        self.foca
            .iter_members()
            .find(|m| m.id().addr == addr)
            .map(|m| m.id().clone())
    }

    /// The episode of `subject`, started now if there is none (or only a stale one).
    fn episode(&mut self, subject: &NodeIdentity) -> &mut Episode {
        let now = self.elapsed;
        let evidence = &mut self.evidence.episodes;
        evidence.retain(|_, e| now.saturating_sub(e.started) < WINDOW);
        if !evidence.contains_key(subject) && evidence.len() >= MAX_EPISODES {
            let oldest = evidence
                .iter()
                .min_by_key(|(id, e)| (e.started, id.name.clone()))
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                evidence.remove(&oldest);
            }
        }
        evidence.entry(subject.clone()).or_insert_with(|| Episode {
            started: now,
            reporters: BTreeSet::new(),
            probed: false,
            reported: false,
        })
    }

    /// Where reports about `subject` go: the [`CONFIRMERS`] active members ranked highest for
    /// it, other than the subject and this node.
    fn confirmers(&self, subject: &NodeIdentity) -> Vec<SocketAddr> {
        let me = &self.identity().name;
        let mut ranked: Vec<(u64, SocketAddr)> = self
            .foca
            .iter_members()
            .map(Member::id)
            .filter(|id| id.name != subject.name && id.name != *me)
            .map(|id| (pair_score(&subject.name, &id.name), id.addr))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked
            .into_iter()
            .take(CONFIRMERS)
            .map(|(_, a)| a)
            .collect()
    }

    /// Declares `subject` down if enough distinct members reported it: [`CONFIRMATIONS`], or
    /// every member that could (this node and the other active members but the subject).
    fn conclude(&mut self, subject: &NodeIdentity) {
        let could_report = self.foca.num_members(); // the others, the subject among them
        let needed = CONFIRMATIONS.min(could_report.max(1));
        let heard = self
            .evidence
            .episodes
            .get(subject)
            .map_or(0, |e| e.reporters.len());
        if heard < needed {
            return;
        }
        self.evidence.episodes.remove(subject);
        self.stats.unreachable.declared += 1;
        tracing::info!(member = %subject.name, reporters = heard, "declared down: its host says nobody listens");
        let down = std::iter::once(Member::down(subject.clone()));
        if let Err(err) = self.with_foca(|foca, io| foca.apply_many(down, true, io)) {
            self.stats.count_foca_error(&err);
        }
    }

    fn send_evidence(&mut self, to: SocketAddr, message: &EvidenceMessage) {
        self.send_datagram(to, DatagramKind::Evidence, &wire::encode(message));
    }
}
