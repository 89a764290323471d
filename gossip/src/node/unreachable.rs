//! Confirmed unreachability: a faster path to `Down` than SWIM's suspicion timeout, taken only
//! on the word of several members.
//!
//! SWIM learns of a crash when a probe times out and a suspicion expires (4·log10 N probe
//! periods), seconds in all. Two things are known sooner:
//! - **the host's answer**: a process that died on a live host leaves a port nobody listens
//!   on, and every datagram to it comes back as ICMP port unreachable (a stream is refused).
//!   The driver hands that in ([`Node::handle_unreachable`]);
//! - **a suspicion**: a member whose direct and indirect probes all went unanswered.
//!
//! Neither is taken on one member's word. The members ranked highest for the subject by
//! rendezvous hashing (every member picks the same [`CONFIRMERS`] for the same subject) check
//! it themselves when they hear of either: each pings the subject once per probe timeout,
//! [`CHECK_ROUNDS`] times, and reports it unreachable to the others when a ping bounces, or
//! when none was answered. A member holding reports from [`CONFIRMATIONS`] distinct members
//! about the same life of the subject declares it down, and SWIM spreads the `Down` as any
//! other.
//!
//! A running member answers the pings, so a confused member (a firewall that rejects, a wrong
//! route) reports alone, and one report is not enough. A member cut off for less than the
//! check (2 s on a LAN) answers a later ping and is cleared, as a refutation would clear it.
//! Loss is what could fake silence: at 10% loss one ping fails for a live member with
//! probability 0.19 (it or its answer lost), a check with 0.19⁴ ≈ 0.1%, and three independent
//! checks must fail together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use compact_str::CompactString;
use foca::Member;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::{Node, Output, TimerEvent};
use crate::NodeIdentity;
use crate::rendezvous::pair_score;
use crate::wire::{self, DatagramKind};

/// Reports from this many distinct members (fewer when fewer could report) declare the subject
/// down.
const CONFIRMATIONS: usize = 3;

/// How many members check a subject: twice the confirmations needed, so a decision does not
/// stall when some of them crashed too (a rack, a fifth of the cluster at once) or a datagram
/// was lost.
pub(super) const CONFIRMERS: usize = 2 * CONFIRMATIONS;

/// Pings per check, one per probe timeout; any answer clears the subject.
const CHECK_ROUNDS: u32 = 4;

/// How long reports about a subject count. A restart takes longer than a confirmation round
/// trip; reports older than this are about an episode that ended.
const WINDOW: Duration = Duration::from_secs(10);

/// At most this many subjects are followed at once (a burst of crashes, or a flood of forged
/// reports, cannot grow the node without bound); the oldest episode makes room.
const MAX_EPISODES: usize = 64;

/// A member whose score for a subject is below [`likely_confirmer_floor`] does not rank all
/// members to find out whether it is a confirmer: this many members score above the floor in
/// expectation, and fewer than [`CONFIRMERS`] of them do with probability about 4·10⁻¹²
/// (Poisson(40) ≤ 5). Ranking all members for every suspicion heard was 42% of a 1,000-node
/// simulation with half partitions.
const LIKELY_RANK: u64 = 40;

/// The score below which a member is taken not to be a confirmer, among `candidates` (see
/// [`LIKELY_RANK`]); zero, so every member ranks all, while there are few.
fn likely_confirmer_floor(candidates: usize) -> u64 {
    let candidates = candidates as u64;
    if candidates <= LIKELY_RANK {
        return 0;
    }
    u64::MAX - (u64::MAX / candidates) * LIKELY_RANK
}

/// The `wanted` of `candidates` scoring highest for `subject` (best first, ties by name): every
/// member ranks alike from the names alone.
pub(super) fn top_ranked<'a>(
    subject: &str,
    candidates: impl Iterator<Item = &'a NodeIdentity>,
    wanted: usize,
) -> Vec<(u64, &'a NodeIdentity)> {
    let mut ranked: Vec<(u64, &NodeIdentity)> = candidates
        .map(|id| (pair_score(subject, &id.name), id))
        .collect();
    let best_first = |a: &(u64, &NodeIdentity), b: &(u64, &NodeIdentity)| {
        b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name))
    };
    if ranked.len() > wanted {
        ranked.select_nth_unstable_by(wanted - 1, best_first);
        ranked.truncate(wanted);
    }
    ranked.sort_unstable_by(best_first);
    ranked
}

/// Whether `me` is among the `wanted` best of `others` and itself by [`top_ranked`]'s order,
/// found by counting the others that rank above it, stopping at `wanted`: every member asks
/// this for each suspicion it hears, and building and ranking the whole list (the allocation,
/// a score per member, the selection) was 4% of a 1,000-node simulation whose members flap
/// in and out of a split; most askers stop after a few hundred members.
pub(super) fn ranks_among_top<'a>(
    subject: &str,
    me: &str,
    others: impl Iterator<Item = &'a NodeIdentity>,
    wanted: usize,
) -> bool {
    let mine = pair_score(subject, me);
    let above = others
        .filter(|id| {
            let score = pair_score(subject, &id.name);
            score > mine || (score == mine && id.name.as_str() < me)
        })
        .take(wanted)
        .count();
    above < wanted
}

/// The datagrams of this exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum EvidenceMessage {
    /// "I could not reach `subject`": its host said nobody listens, or my check went
    /// unanswered.
    Report {
        /// The life of the member that did not answer (its generation included, so a report
        /// about an earlier life never touches the current one).
        subject: NodeIdentity,
        /// Who saw it.
        reporter: CompactString,
    },
    /// A confirmer's check: "answer `from` if you run".
    Ping {
        /// Random, so a late or forged answer does not match.
        seq: u32,
        /// Where the answer goes.
        from: SocketAddr,
    },
    /// The subject runs.
    Ack {
        /// The ping's number.
        seq: u32,
    },
}

/// What a node knows about one subject's unreachability.
#[derive(Debug)]
struct Episode {
    /// When the first report (or signal) came, on the driver's monotonic time.
    started: Duration,
    /// Distinct members that reported it, this node included once it saw it itself.
    reporters: BTreeSet<CompactString>,
    /// This node's own check of the subject, once started.
    check: Option<Check>,
    /// Whether this node has reported it to the confirmers.
    reported: bool,
}

/// A check in flight: a ping due at `next_ping`, an answer awaited until `deadline`.
#[derive(Debug)]
struct Check {
    seq: u32,
    next_ping: Duration,
    /// Time from the last ping to the next: doubles after each ping from the first interval
    /// up to the pool's probe timeout.
    interval: Duration,
    deadline: Duration,
    answered: bool,
}

/// The first interval between the pings of a check started by a lost tether. The stream's
/// end can overtake the process's death: a dying process's kernel may close the stream before
/// the gossip port, and the first ping then finds the port still bound and nobody reading
/// (no bounce, no answer). Seen on 256 agents on 2 cores: every check's first bounce came
/// with its second ping, one probe timeout (500 ms) later. So these pings start close
/// together and back off; a live subject answers the first.
const TETHER_FIRST_INTERVAL: Duration = Duration::from_millis(10);

/// The episodes a node follows.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    /// Ordered, so the pings of a timer go out in the same order on every run.
    episodes: BTreeMap<NodeIdentity, Episode>,
    pub(super) suspicions: SuspicionTimers,
}

/// foca's pending suspicion timers, by suspect: a confirmed subject's suspicion is made to
/// expire at once by handing foca its own timer early, so what foca does when a suspicion
/// expires (the `Down`, its spreading, telling the member) happens as it always does.
#[derive(Debug, Default)]
pub(crate) struct SuspicionTimers(BTreeMap<NodeIdentity, foca::Timer<NodeIdentity>>);

impl SuspicionTimers {
    /// foca asked for `timer`.
    pub(super) fn submitted(&mut self, timer: &foca::Timer<NodeIdentity>) {
        if let foca::Timer::ChangeSuspectToDown { member_id, .. } = timer {
            self.0.insert(member_id.clone(), timer.clone());
        }
    }

    /// `timer` came back to foca (on time, or early from here).
    pub(super) fn fired(&mut self, timer: &foca::Timer<NodeIdentity>) {
        if let foca::Timer::ChangeSuspectToDown { member_id, .. } = timer
            && self.0.get(member_id) == Some(timer)
        {
            self.0.remove(member_id);
        }
    }
}

impl Node {
    /// The host at `addr` answered for it: nobody listens there (an ICMP port unreachable to
    /// one of this node's datagrams, or a refused stream). Evidence against the member at that
    /// address, if any is active; see the module's documentation.
    pub(crate) fn handle_unreachable(&mut self, addr: SocketAddr) {
        self.stats.unreachable.signals += 1;
        if let Some(subject) = self.active_member_at(addr).cloned() {
            self.report(&subject);
        }
    }

    /// `subject` is suspected: a confirmer checks it (see the module's documentation).
    pub(super) fn suspected(&mut self, subject: &NodeIdentity) {
        if self.is_confirmer_of(subject) {
            self.check(subject);
        }
    }

    /// An evidence datagram arrived.
    pub(super) fn handle_evidence(&mut self, body: &[u8]) {
        let message = match wire::decode::<EvidenceMessage>(body) {
            Ok(message) => message,
            Err(reason) => return self.stats.dropped.count(reason),
        };
        match message {
            EvidenceMessage::Ping { seq, from } => {
                self.send_evidence(from, &EvidenceMessage::Ack { seq });
            }
            EvidenceMessage::Ack { seq } => {
                let check = self
                    .evidence
                    .episodes
                    .values_mut()
                    .filter_map(|e| e.check.as_mut())
                    .find(|c| c.seq == seq);
                if let Some(check) = check {
                    check.answered = true;
                }
            }
            EvidenceMessage::Report { subject, reporter } => {
                self.stats.unreachable.reports += 1;
                if !self.is_active_life(&subject) {
                    // About ourselves, an earlier life, or a member we do not list as active.
                    return;
                }
                self.episode(&subject).reporters.insert(reporter);
                self.check(&subject);
                self.conclude(&subject);
            }
        }
    }

    /// A check's timer: pings the subjects whose checks go on, reports those whose checks
    /// ended unanswered.
    pub(super) fn on_check_timer(&mut self) {
        let now = self.elapsed;
        let longest = self.check_interval();
        let mut pings = Vec::new();
        let mut silent = Vec::new();
        for (subject, episode) in &mut self.evidence.episodes {
            let Some(check) = episode.check.as_mut().filter(|c| !c.answered) else {
                continue;
            };
            if check.deadline <= now {
                silent.push(subject.clone());
            } else if check.next_ping <= now {
                check.interval = (check.interval * 2).min(longest);
                check.next_ping = now + check.interval;
                pings.push((subject.addr, check.seq, check.interval));
            }
        }
        let from = self.identity().addr;
        for (to, seq, next) in pings {
            self.send_evidence(to, &EvidenceMessage::Ping { seq, from });
            self.schedule_check_timer(next);
        }
        for subject in silent {
            if self.is_active_life(&subject) {
                self.stats.unreachable.silent_checks += 1;
                self.report(&subject);
            }
        }
    }

    /// This node could not reach `subject`: it counts itself, tells the confirmers once, and
    /// decides if that was enough.
    fn report(&mut self, subject: &NodeIdentity) {
        let me = self.identity().name.clone();
        let episode = self.episode(subject);
        episode.reporters.insert(me.clone());
        if let Some(check) = &mut episode.check {
            // Settled: a bounce or the deadline decided it.
            check.answered = true;
        }
        if !std::mem::replace(&mut episode.reported, true) {
            let report = EvidenceMessage::Report {
                subject: subject.clone(),
                reporter: me,
            };
            for to in self.confirmers(subject) {
                self.send_evidence(to, &report);
            }
        }
        self.conclude(subject);
    }

    /// Starts checking `subject` unless this node has checked it (or reported it) in this
    /// episode: a ping every probe timeout until the deadline.
    fn check(&mut self, subject: &NodeIdentity) {
        let interval = self.check_interval();
        self.check_pinging_after(subject, interval);
    }

    /// Starts checking `subject` whose tether ended: as [`Node::check`], with the pings close
    /// together at first (see [`TETHER_FIRST_INTERVAL`]).
    pub(super) fn check_after_tether(&mut self, subject: &NodeIdentity) {
        self.check_pinging_after(subject, TETHER_FIRST_INTERVAL);
    }

    fn check_pinging_after(&mut self, subject: &NodeIdentity, first_interval: Duration) {
        let seq = self.rng.random::<u32>();
        let longest = self.check_interval();
        let now = self.elapsed;
        let episode = self.episode(subject);
        if episode.reported || episode.check.is_some() {
            return;
        }
        episode.check = Some(Check {
            seq,
            next_ping: now + first_interval,
            interval: first_interval,
            deadline: now + longest * CHECK_ROUNDS,
            answered: false,
        });
        let from = self.identity().addr;
        self.send_evidence(subject.addr, &EvidenceMessage::Ping { seq, from });
        self.schedule_check_timer(first_interval);
    }

    /// The time between a check's pings: the pool's probe timeout.
    fn check_interval(&self) -> Duration {
        self.config.foca_config(1).probe_rtt
    }

    fn schedule_check_timer(&mut self, after: Duration) {
        self.outputs.push_back(Output::Timer {
            after,
            timer: TimerEvent::Confirm,
        });
    }

    /// Whether `subject` is an active member (alive or suspect) in that very life.
    pub(super) fn is_active_life(&self, subject: &NodeIdentity) -> bool {
        self.foca.iter_members().any(|m| m.id() == subject)
    }

    /// The active member (alive or suspect) at `addr`, other than this node.
    pub(super) fn active_member_at(&self, addr: SocketAddr) -> Option<&NodeIdentity> {
        self.foca
            .iter_members()
            .find(|m| m.id().addr == addr)
            .map(|m| m.id())
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
            check: None,
            reported: false,
        })
    }

    /// The active members that could confirm a suspicion of `subject`, but this node: all
    /// but the subject.
    fn other_candidates<'a>(
        &'a self,
        subject: &'a NodeIdentity,
    ) -> impl Iterator<Item = &'a NodeIdentity> + 'a {
        let me = &self.identity().name;
        self.foca
            .iter_members()
            .map(Member::id)
            .filter(move |id| id.name != subject.name && id.name != *me)
    }

    /// The [`CONFIRMERS`] + 1 active members other than `subject`, this node among the
    /// candidates, ranked highest for `subject` (best first): the confirmers, with one more in
    /// case this node is among them.
    fn ranked_for<'a>(&'a self, subject: &'a NodeIdentity) -> Vec<(u64, &'a NodeIdentity)> {
        let candidates = self
            .other_candidates(subject)
            .chain(std::iter::once(self.identity()));
        top_ranked(&subject.name, candidates, CONFIRMERS + 1)
    }

    /// Whether this node is one of the [`CONFIRMERS`] of `subject`.
    ///
    /// Every member asks this for every suspicion it hears, so the answer is first looked for
    /// in this node's own score alone: only the members scoring above
    /// [`likely_confirmer_floor`] rank the others.
    pub(super) fn is_confirmer_of(&self, subject: &NodeIdentity) -> bool {
        let me = &self.identity().name;
        let candidates = self.foca.num_members(); // the others and this node, less the subject
        if pair_score(&subject.name, me) < likely_confirmer_floor(candidates) {
            return false;
        }
        ranks_among_top(
            &subject.name,
            me,
            self.other_candidates(subject),
            CONFIRMERS,
        )
    }

    /// Where reports about `subject` go: the [`CONFIRMERS`] other than this node.
    fn confirmers(&self, subject: &NodeIdentity) -> Vec<SocketAddr> {
        let me = &self.identity().name;
        self.ranked_for(subject)
            .into_iter()
            .filter(|(_, id)| id.name != *me)
            .take(CONFIRMERS)
            .map(|(_, id)| id.addr)
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
        tracing::info!(member = %subject.name, reporters = heard, "declared down: confirmed unreachable");
        if !self.evidence.suspicions.0.contains_key(subject) {
            // Not suspected here yet (a bounce comes before any probe fails): suspect it, which
            // makes foca start the suspicion's timer.
            let incarnation = self
                .foca
                .iter_members()
                .find(|m| m.id() == subject)
                .map_or_else(Default::default, Member::incarnation);
            let suspect = Member::new(subject.clone(), incarnation, foca::State::Suspect);
            let result =
                self.with_foca(|foca, io| foca.apply_many(std::iter::once(suspect), true, io));
            if let Err(err) = result {
                self.stats.count_foca_error(&err);
            }
        }
        if let Some(timer) = self.evidence.suspicions.0.get(subject).cloned() {
            self.handle_timer(TimerEvent::Foca(timer));
        }
    }

    fn send_evidence(&mut self, to: SocketAddr, message: &EvidenceMessage) {
        self.send_datagram(to, DatagramKind::Evidence, &wire::encode(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::identity;

    proptest::proptest! {
        /// Counting those above equals finding this node in the full ranking.
        #[test]
        fn ranking_among_the_top_by_counting_matches_the_full_ranking(
            names in proptest::collection::btree_set("[a-z]{1,4}", 1..60),
            subject in "[a-z]{1,4}",
            me_at in 0usize..60,
            wanted in 1usize..8,
        ) {
            let ids: Vec<NodeIdentity> = names.iter().map(|name| identity(name, 1)).collect();
            let me = &ids[me_at % ids.len()];
            let others = ids.iter().filter(|id| id.name != me.name);
            let ranked = top_ranked(&subject, others.clone().chain(std::iter::once(me)), wanted);
            let in_full = ranked.iter().any(|(_, id)| id.name == me.name);
            proptest::prop_assert_eq!(ranks_among_top(&subject, &me.name, others, wanted), in_full);
        }
    }

    /// The shortcut of `is_confirmer_of` against the full ranking, over names like real ones.
    #[test]
    fn confirmers_score_above_the_floor() {
        for size in [10, 41, 200, 1000] {
            let names: Vec<String> = (0..size).map(|i| format!("node-{i}")).collect();
            let floor = likely_confirmer_floor(size - 1);
            let mut above = 0;
            for subject in &names {
                let mut scores: Vec<u64> = names
                    .iter()
                    .filter(|n| *n != subject)
                    .map(|n| pair_score(subject, n))
                    .collect();
                scores.sort_unstable_by(|a, b| b.cmp(a));
                assert!(
                    scores[..CONFIRMERS.min(scores.len())]
                        .iter()
                        .all(|&s| s >= floor),
                    "a confirmer of {subject} among {size} scores below the floor"
                );
                above += scores.iter().filter(|&&s| s >= floor).count();
            }
            let mean = above as f64 / size as f64;
            if size > 100 {
                assert!(
                    (30.0..50.0).contains(&mean),
                    "about {LIKELY_RANK} members rank the others, not {mean}"
                );
            }
        }
    }
}
