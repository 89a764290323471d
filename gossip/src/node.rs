//! The membership state machine of one member: foca plus what murmur adds around it, and the
//! carrier for the replicated state that rides its messages.
//!
//! A [`Node`] knows who is in the pool and carries opaque-to-it traffic for a
//! [`Replication`](crate::Replication): small changes piggybacked on its gossip, stream
//! exchanges sealed under its key, timers. It never holds the replicated state itself; what it
//! learns for that state (changes, members coming up, health moving) it queues as
//! [`Delivery`]s in the order it learned them, and [`PoolMember`](crate::PoolMember) hands
//! them over. That split lets one agent run two pools (LAN and WAN) over different state.
//!
//! Inputs are method calls (a datagram arrived, a timer fired, a stream request or reply
//! arrived, the user asked for something); outputs queue up and are taken with
//! [`Node::poll_output`]. There is no clock: time enters only as the expiry of timers the node
//! asked for. There is no global randomness: the caller hands over the RNG.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{Foca, Member, OwnedNotification, Runtime, State};
use murmur_catalog::{Change, Journaled, NodeRecord};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::broadcast::{BroadcastInbox, BroadcastItem};
use crate::digest;
use crate::events::{EventFilter, EventLog, UserEvent};
use crate::keyring::{KEY_LEN, Keyring, KeyringOp, SecretKey};
use crate::members::{MemberEvent, MemberEventKind, MemberState, MemberStatus, MemberView};
use crate::repeats::RepeatFilter;
use crate::stats::Stats;
use crate::wire::{
    self, DatagramKind, DigestedState, DropReason, OfferMessage, ProbeTap, PushPullState,
    StreamMessage, WireCodec,
};
use crate::{GossipConfig, GossipError, Identities, NodeIdentity};

/// Members listed down that a renewed node announces itself to at once (see
/// `Node::announce_to_down_members`): each that answers renews and announces in turn.
const ANNOUNCE_TO_DOWN_ON_RENEWAL: usize = 3;

/// How long after joining (or renewing) a node compares lists with a member again (see
/// `TimerEvent::CatchUp`): long enough for joins or renewals that raced its own to reach that
/// member, short against a push-pull period.
const CATCH_UP_AFTER: Duration = Duration::from_secs(1);

/// The capacity an empty output queue may keep; a bigger one is freed once drained.
const OUTPUTS_KEPT_EMPTY: usize = 64;

/// Eager pushes a member sends are at least this far apart; what it learns in between goes
/// in one push at the end of the gap (or in a gossip round sent earlier).
///
/// A push for every message that told something new sent three messages for each: while a
/// third of 1,000 simulated nodes lost the rest every 3 s, members learned of suspicions,
/// refutations and renewals from nearly every message and sent ~480 gossip messages a second
/// each, a few updates apiece ("Where a flapping split spends its time" in BENCHMARKS.md).
/// With the gap they send a third of the datagrams and writes reach every node as fast; news
/// of a burst (200 crashes at once) reaches everyone in 0.15–0.57 s (p50) instead of 0.02 s,
/// fewer packets carrying it.
const EAGER_PUSH_GAP: Duration = Duration::from_millis(10);

/// A timer the node asked for; hand it back to [`Node::handle_timer`] when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerEvent {
    /// One of foca's SWIM timers.
    Foca(foca::Timer<NodeIdentity>),
    /// Time for a full-state exchange with a random member.
    PushPull,
    /// Time to re-contact the seeds if still alone.
    Rejoin,
    /// Time for anti-entropy with a random member, tombstone collection and reaping.
    Sync,
    /// Time for the next ping of a check of a suspected or unreachable member, or to judge
    /// it unanswered.
    Confirm,
    /// Time to compare lists by digest with the seed this node joined through (members that
    /// joined at about the same time reached the seed after this node's join was answered,
    /// and the joiner does not gossip the list it got, so nothing else brings them soon), or
    /// with a random member after this node renewed its identity (see
    /// [`Node::catch_up_after_renewal`]).
    CatchUp,
    /// Time for an eager push that waited out [`EAGER_PUSH_GAP`].
    EagerPush,
}

/// Something the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram (already sealed) over UDP.
    Datagram {
        /// Destination gossip address.
        to: SocketAddr,
        /// The sealed packet.
        bytes: Vec<u8>,
    },
    /// Call [`Node::handle_timer`] with `timer` after `after`.
    Timer {
        /// Delay from now.
        after: Duration,
        /// What to hand back.
        timer: TimerEvent,
    },
    /// Open a stream to `to`, send `request` as one frame, read one reply frame and give it to
    /// [`Node::handle_reply`].
    Exchange {
        /// Destination gossip address (TCP).
        to: SocketAddr,
        /// The framed request body.
        request: Vec<u8>,
    },
    /// The member list changed.
    Member(MemberEvent),
    /// A user event was delivered to this member.
    UserEvent(UserEvent),
    /// A peer changed this member's keyring; persist it if keys are kept on disk.
    KeyringChanged,
    /// Append these entries, in order, to the replica's journal on disk.
    Persist(Vec<Journaled>),
}

/// Builds the [`Io`] for one foca call from the node's disjoint fields.
macro_rules! io {
    ($node:ident) => {
        Io {
            outputs: &mut $node.outputs,
            notifications: &mut $node.notifications,
            keyring: &$node.keyring,
            rng: &mut $node.rng,
            cluster_id: &$node.config.cluster_id,
            stats: &mut $node.stats,
            suspicions: &mut $node.evidence.suspicions,
        }
    };
}

type SwimCore = Foca<NodeIdentity, WireCodec, StdRng, BroadcastInbox>;

/// One member of a gossip pool.
pub struct Node {
    foca: SwimCore,
    changes: Arc<Mutex<Vec<Member<NodeIdentity>>>>,
    /// What the codec saw of probes: the coordinate samples (`coordinates.rs`).
    probes: Arc<Mutex<ProbeTap>>,
    /// Shared copies of the identities this node decodes (see [`Identities`]).
    identities: Identities,
    received: Arc<Mutex<Vec<BroadcastItem>>>,
    notifications: Vec<OwnedNotification<NodeIdentity>>,
    rng: StdRng,
    config: GossipConfig,
    keyring: Keyring,
    view: MemberView,
    events: EventLog,
    seeds: Vec<SocketAddr>,
    outputs: VecDeque<Output>,
    stats: Stats,
    leaving: bool,
    sized_for: usize,
    rejoin_wait: Option<Duration>,
    /// Whether a push-pull ever merged; events carried by the first one predate our joining.
    synced: bool,
    /// This member's record as the carried state last had it: whose services user-event
    /// filters match against.
    own_record: Option<Arc<NodeRecord>>,
    /// What was learned for the carried state, oldest first (see [`Delivery`]).
    deliveries: Vec<Delivery>,
    /// This node's network coordinate and the ping measuring it.
    coordinates: coordinates::Coordinates,
    /// Reports that members are unreachable, awaiting confirmation.
    evidence: unreachable::Evidence,
    /// The driver's monotonic time as of its last call (see [`Node::set_elapsed`]).
    elapsed: Duration,
    /// The member to catch up with (the seed joined through, or a random member after a
    /// renewal), until the catch-up timer fires.
    catch_up_with: Option<NodeIdentity>,
    /// The member whose catch-up delta is awaited: merged without gossiping it on, as the join was.
    catching_up_from: Option<compact_str::CompactString>,
    /// Paces the eager pushes of what this member learns.
    eager_push: EagerPush,
}

/// Something the node learned that the replicated state it carries must hear of. The order is
/// the order of learning: a member's coming up precedes a change of its record that arrived
/// with it, so the record is accepted again.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The named member came up (again).
    Up(compact_str::CompactString),
    /// A member failed, came back or left: the derived `serfHealth` checks changed.
    HealthMoved,
    /// A change piggybacked on gossip.
    Change(Change),
}

/// Where a stream request goes (see [`Node::serve_stream`]).
pub(crate) enum Served {
    /// The node answered it: send this frame back.
    Reply(Vec<u8>),
    /// A sealed agent request for the driver.
    Agent {
        /// Which handler.
        kind: String,
        /// Its input.
        body: Vec<u8>,
    },
    /// A request of the replicated state's protocol.
    Replication(StreamMessage),
    /// A tether from this member: the driver holds the stream open and calls
    /// [`Node::tether_lost`] when it ends.
    Tether(NodeIdentity),
}

/// What a stream reply was (see [`Node::handle_reply`]).
pub(crate) enum Replied {
    /// A push-pull reply, merged; `first` when it was this node's first (it just joined).
    PushPull {
        /// Whether it was the first merge.
        first: bool,
    },
    /// A reply of the replicated state's protocol.
    Replication(StreamMessage),
}

/// foca's [`Runtime`] for one call: seals what foca sends and queues everything as outputs.
struct Io<'a> {
    outputs: &'a mut VecDeque<Output>,
    notifications: &'a mut Vec<OwnedNotification<NodeIdentity>>,
    keyring: &'a Keyring,
    rng: &'a mut StdRng,
    cluster_id: &'a str,
    stats: &'a mut Stats,
    suspicions: &'a mut unreachable::SuspicionTimers,
}

impl Runtime<NodeIdentity> for Io<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, NodeIdentity>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        let bytes = wire::seal_datagram(
            self.cluster_id,
            self.keyring,
            self.rng,
            DatagramKind::Swim,
            data,
        );
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.outputs
            .push_back(Output::Datagram { to: to.addr, bytes });
    }

    fn submit_after(&mut self, event: foca::Timer<NodeIdentity>, after: Duration) {
        // Gossip rounds of members started together would stay in step forever (each waits
        // the same period), so a change that missed the eager push would wait for the next
        // common round; ±25% per round spreads the phases (memberlist staggers its tickers for
        // the same reason) and keeps the mean period.
        let after = if matches!(event, foca::Timer::PeriodicGossip(_)) {
            after.mul_f64(self.rng.random_range(0.75..1.25))
        } else {
            after
        };
        self.suspicions.submitted(&event);
        self.outputs.push_back(Output::Timer {
            after,
            timer: TimerEvent::Foca(event),
        });
    }
}

mod carrier;
mod coordinates;
mod tether;
mod unreachable;

/// Sizes of a node's queues (see [`Node::backlogs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlogs {
    /// Member updates waiting for their retransmissions.
    pub member_updates: usize,
    /// Replicated changes and user events waiting to ride gossip (capped at 4,096 changes).
    pub broadcasts: usize,
    /// Outputs the driver has not taken yet.
    pub outputs: usize,
    /// Members in the view, failed and left ones included until reaped.
    pub known_members: usize,
}

impl Node {
    /// A member that knows nobody yet. `rng` drives every random choice (probe targets, nonces,
    /// event ids): seed it from the OS in production and from the scenario seed in tests.
    pub fn new(
        identity: NodeIdentity,
        config: GossipConfig,
        keyring: Keyring,
        rng: StdRng,
    ) -> Result<Self, GossipError> {
        Self::with_identities(identity, config, keyring, rng, Identities::default())
    }

    /// Like [`Node::new`], sharing decoded identities through `identities`: the simulator
    /// hands one set to all its nodes so each member's identity is held once, not once per node.
    pub fn with_identities(
        identity: NodeIdentity,
        config: GossipConfig,
        keyring: Keyring,
        mut rng: StdRng,
        identities: Identities,
    ) -> Result<Self, GossipError> {
        identity.validate()?;
        let identity = identities.intern(identity);
        config.validate()?;
        let identity_id = identity.node_id;
        let own_name = identity.name.clone();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let probes = Arc::new(Mutex::new(ProbeTap::default()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let foca = Foca::with_custom_broadcast(
            identity,
            config.foca_config(1),
            StdRng::from_rng(&mut rng),
            WireCodec {
                changes: changes.clone(),
                probes: probes.clone(),
                identities: identities.clone(),
                repeats: RepeatFilter::new(identity_id),
                own_name,
                scratch: Vec::new(),
            },
            BroadcastInbox::new(received.clone(), identity_id),
        );
        let mut node = Self {
            foca,
            changes,
            probes,
            identities,
            received,
            notifications: Vec::new(),
            rng,
            keyring,
            view: MemberView::default(),
            events: EventLog::default(),
            seeds: Vec::new(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
            leaving: false,
            sized_for: 1,
            rejoin_wait: None,
            synced: false,
            own_record: None,
            deliveries: Vec::new(),
            coordinates: coordinates::Coordinates::default(),
            evidence: unreachable::Evidence::default(),
            elapsed: Duration::ZERO,
            eager_push: EagerPush::default(),
            catch_up_with: None,
            catching_up_from: None,
            config,
        };
        node.schedule_push_pull();
        Ok(node)
    }

    /// This member's current identity (its generation grows when it had to rejoin).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// The configuration this member runs with.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Every known member including this one, sorted by name.
    pub fn members(&self) -> Vec<MemberState> {
        let me = MemberState {
            identity: self.identity().clone(),
            status: if self.leaving {
                MemberStatus::Leaving
            } else {
                MemberStatus::Alive
            },
        };
        let mut all: Vec<MemberState> = self.view.iter().cloned().chain([me]).collect();
        all.sort_by(|a, b| a.identity.name.cmp(&b.identity.name));
        all
    }

    /// What this node knows of the member named `name` (never itself), without copying the
    /// member list as [`Node::members`] does: the simulator asks this N² times per check.
    pub fn peer(&self, name: &str) -> Option<&MemberState> {
        self.view.get(name)
    }

    /// Whether this node lists every one of `names` (in name order, its own name aside)
    /// as `Alive`; one walk over its member list.
    pub fn sees_alive<'a>(&self, names: impl Iterator<Item = &'a str>) -> bool {
        self.view.all_alive_among(names, &self.identity().name)
    }

    /// Number of other members this node sees `Alive` (kept up to date, O(1)).
    pub fn alive_peers(&self) -> usize {
        self.view.alive_count()
    }

    /// How much this node holds in its queues; each is bounded, and the simulator checks it.
    pub fn backlogs(&self) -> Backlogs {
        Backlogs {
            member_updates: self.foca.updates_backlog(),
            broadcasts: self.foca.custom_broadcast_backlog(),
            outputs: self.outputs.len(),
            known_members: self.view.len(),
        }
    }

    /// Number of active members other than this one.
    pub fn active_peers(&self) -> usize {
        self.foca.num_members()
    }

    /// Recent user events.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Counters of traffic and of dropped input.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether [`Node::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Whether outputs wait for the driver.
    pub(crate) fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// The next thing for the driver to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        let next = self.outputs.pop_front();
        if self.outputs.is_empty() && self.outputs.capacity() > OUTPUTS_KEPT_EMPTY {
            // A burst (learning a whole cluster at a join: one event per member) would
            // otherwise keep its queue's peak size for the life of the node.
            self.outputs = VecDeque::new();
        }
        next
    }

    /// Remembers seed addresses; a member that later finds itself alone re-contacts them.
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.seeds = seeds;
    }

    /// A datagram arrived. An offer is decoded and handed back: the replication answers it.
    pub(crate) fn handle_datagram(&mut self, bytes: &[u8]) -> Option<OfferMessage> {
        self.stats.packets_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let body = match self.open(bytes) {
            Ok(opened) => opened,
            Err(reason) => {
                self.stats.dropped.count(reason);
                return None;
            }
        };
        match DatagramKind::split(&body) {
            Ok((DatagramKind::Swim, swim)) => {
                let result = self.with_foca(|foca, io| foca.handle_data(swim, io));
                if let Err(err) = result {
                    self.stats.count_foca_error(&err);
                }
            }
            Ok((DatagramKind::Evidence, message)) => self.handle_evidence(message),
            Ok((DatagramKind::Offer, message)) => match wire::decode(message) {
                Ok(offer) => return Some(offer),
                Err(reason) => self.stats.dropped.count(reason),
            },
            Err(reason) => self.stats.dropped.count(reason),
        }
        None
    }

    /// The driver's monotonic time (since any fixed moment), which the round trips of
    /// probes (for coordinates) and the age of unreachability reports are measured on; set before
    /// each call, as the wall clock is.
    pub(crate) fn set_elapsed(&mut self, now: Duration) {
        self.elapsed = now;
    }

    /// Seals a datagram of one of murmur's own kinds and queues it for `to`.
    fn send_datagram(&mut self, to: SocketAddr, kind: DatagramKind, body: &[u8]) {
        let bytes = wire::seal_datagram(
            &self.config.cluster_id,
            &self.keyring,
            &mut self.rng,
            kind,
            body,
        );
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.outputs.push_back(Output::Datagram { to, bytes });
    }

    /// A membership timer the node asked for expired ([`TimerEvent::Sync`] belongs to the
    /// replication and is not handled here).
    pub(crate) fn handle_timer(&mut self, timer: TimerEvent) {
        match timer {
            TimerEvent::Foca(timer) => {
                self.evidence.suspicions.fired(&timer);
                let reaped = match &timer {
                    foca::Timer::RemoveDown(id) => Some(id.clone()),
                    _ => None,
                };
                if let Err(err) = self.with_foca(|foca, io| foca.handle_timer(timer, io)) {
                    self.stats.count_foca_error(&err);
                }
                if let Some(event) = reaped.and_then(|id| self.view.reap(&id)) {
                    self.forget_coordinate_of(&event.member.name);
                    self.outputs.push_back(Output::Member(event));
                }
            }
            TimerEvent::PushPull => {
                self.start_push_pull();
                self.schedule_push_pull();
            }
            TimerEvent::Rejoin => self.rejoin_if_alone(),
            TimerEvent::Confirm => self.on_check_timer(),
            TimerEvent::CatchUp => self.catch_up(),
            TimerEvent::EagerPush => {
                self.eager_push.timer_fired();
                self.with_foca(|_, _| ());
            }
            // The replication's timer: `PoolMember` routes it there.
            TimerEvent::Sync => {}
        }
    }

    /// The request body for a push-pull with a seed: how a member joins.
    pub fn push_pull_request(&mut self) -> Vec<u8> {
        let state = self.local_state();
        self.seal_message(&StreamMessage::PushPull(state))
    }

    /// The reply to an [`Output::Exchange`] (or a join's push-pull) arrived: a push-pull reply
    /// is merged here, a replication reply is handed back for the replication.
    pub(crate) fn handle_reply(&mut self, reply: &[u8]) -> Result<Replied, GossipError> {
        match self.open_reply(reply)? {
            StreamMessage::PushPullReply(state) => {
                let first = !self.synced;
                if first {
                    self.schedule_catch_up(state.from.clone());
                }
                // A joiner does not gossip the list its seed gave it (see `merge_state`).
                self.merge_state(state, !first);
                Ok(Replied::PushPull { first })
            }
            StreamMessage::PushPullDelta(DigestedState { state, digests }) => {
                if !digest::is_valid_bucket_count(digests.len()) {
                    return Err(self.unreadable_reply(DropReason::Malformed));
                }
                let catching_up = self.catching_up_from.as_ref() == Some(&state.from.name);
                if catching_up {
                    self.catching_up_from = None;
                }
                self.merge_delta(state, &digests, !catching_up);
                Ok(Replied::PushPull { first: false })
            }
            StreamMessage::MembersPushAck => Ok(Replied::PushPull { first: false }),
            message @ (StreamMessage::SyncSummary(_)
            | StreamMessage::SyncPushReply(_)
            | StreamMessage::ChangesAck) => Ok(Replied::Replication(message)),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// A stream request arrived: the reply frame body, an agent request (sealed under the
    /// gossip key, never plaintext) for the driver, or a replication request.
    pub(crate) fn serve_stream(&mut self, request: &[u8]) -> Served {
        // Plaintext does not open under an encrypted keyring, so with one every request is sealed.
        let sealed = self.keyring.is_encrypted();
        let message = match self.open(request) {
            Ok(body) => wire::decode::<StreamMessage>(&body),
            Err(reason) => Err(reason),
        };
        let message = match message {
            Ok(StreamMessage::AgentRequest { kind, body }) => {
                if !sealed {
                    return Served::Reply(self.reject(
                        "agent requests need gossip encryption: start every agent with --encrypt",
                    ));
                }
                return Served::Agent { kind, body };
            }
            Ok(
                message @ (StreamMessage::Sync(_)
                | StreamMessage::SyncPush(_)
                | StreamMessage::Changes(_)),
            ) => return Served::Replication(message),
            Ok(StreamMessage::Tether(subject)) => return Served::Tether(subject),
            other => other,
        };
        Served::Reply(self.answer_stream(message))
    }

    fn answer_stream(&mut self, message: Result<StreamMessage, DropReason>) -> Vec<u8> {
        let message = match message {
            Ok(message) => message,
            Err(reason) => {
                self.stats.dropped.count(reason);
                return self.reject(reason.advice());
            }
        };
        match message {
            StreamMessage::PushPull(state) => {
                if let Some(why) = self.name_conflict(&state.from) {
                    return self.reject(&why);
                }
                self.merge_state(state, true);
                let reply = self.local_state();
                self.seal_message(&StreamMessage::PushPullReply(reply))
            }
            StreamMessage::PushPullDigest(DigestedState { state, digests }) => {
                if !digest::is_valid_bucket_count(digests.len()) {
                    self.stats.dropped.count(DropReason::Malformed);
                    return self.reject(DropReason::Malformed.advice());
                }
                if let Some(why) = self.name_conflict(&state.from) {
                    return self.reject(&why);
                }
                let peer = state.from.name.clone();
                let ours = self.digests_without(&peer, digests.len());
                let members = self.members_in(&peer, &digest::differing(&ours, &digests));
                self.merge_state(state, true);
                let reply = DigestedState {
                    state: self.state_with(members),
                    digests: ours,
                };
                self.seal_message(&StreamMessage::PushPullDelta(reply))
            }
            StreamMessage::MembersPush(state) => {
                if let Some(why) = self.name_conflict(&state.from) {
                    return self.reject(&why);
                }
                self.merge_state(state, true);
                self.seal_message(&StreamMessage::MembersPushAck)
            }
            StreamMessage::Keyring(op) => {
                let result = self.keyring.apply(&op).map_err(|e| e.to_string());
                if result.is_ok() && op != KeyringOp::List {
                    self.outputs.push_back(Output::KeyringChanged);
                }
                let reply = result.map(|()| self.key_bytes());
                self.seal_message(&StreamMessage::KeyringReply(reply))
            }
            other => {
                self.stats.dropped.count(DropReason::Undecodable);
                self.reject(&format!("unexpected request {}", message_name(&other)))
            }
        }
    }

    /// The request body asking a peer's agent to run handler `kind` on `body`.
    pub fn agent_request(&mut self, kind: &str, body: Vec<u8>) -> Vec<u8> {
        self.seal_message(&StreamMessage::AgentRequest {
            kind: kind.to_owned(),
            body,
        })
    }

    /// The reply body carrying this agent's answer to a peer's agent request.
    pub fn agent_reply(&mut self, answer: Result<Vec<u8>, String>) -> Vec<u8> {
        self.seal_message(&StreamMessage::AgentReply(answer))
    }

    /// A peer's answer to an agent request.
    pub fn open_agent_reply(&mut self, reply: &[u8]) -> Result<Vec<u8>, GossipError> {
        match self.open_reply(reply)? {
            StreamMessage::AgentReply(Ok(body)) => Ok(body),
            StreamMessage::AgentReply(Err(why)) => Err(GossipError::Rejected(why)),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Applies a keyring step here; the caller then sends [`Node::keyring_request`] to every
    /// member so the step spreads cluster-wide.
    pub fn apply_keyring(&mut self, op: &KeyringOp) -> Result<(), GossipError> {
        self.keyring.apply(op)
    }

    /// The request body asking a peer to apply a keyring step.
    pub fn keyring_request(&mut self, op: KeyringOp) -> Vec<u8> {
        self.seal_message(&StreamMessage::Keyring(op))
    }

    /// A peer's answer to a keyring request: its keys after the step.
    pub fn handle_keyring_reply(&mut self, reply: &[u8]) -> Result<Vec<SecretKey>, GossipError> {
        match self.open_reply(reply)? {
            StreamMessage::KeyringReply(Ok(keys)) => {
                Ok(keys.into_iter().map(SecretKey::from_bytes).collect())
            }
            StreamMessage::KeyringReply(Err(why)) => Err(GossipError::Keyring(why)),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Fires a user event to every member; returns it as recorded.
    pub(crate) fn fire_event(
        &mut self,
        name: &str,
        payload: &[u8],
        filter: EventFilter,
    ) -> Result<UserEvent, GossipError> {
        UserEvent::validate(name, payload, &filter)?;
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        // RFC 4122 version 4 bits, so the id reads as the random UUID it is.
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        let event = UserEvent {
            id,
            name: name.to_owned(),
            payload: payload.to_vec(),
            filter,
            ltime: self.events.next_ltime(),
        };
        self.spread(&BroadcastItem::Event(event.clone()))?;
        Ok(event)
    }

    /// Leaves the pool on purpose: tells the members this is a leave (so they list us as left,
    /// not failed) and declares ourselves down. The driver should keep running the node for a
    /// moment afterwards so the news goes out.
    pub(crate) fn leave(&mut self) {
        if self.leaving {
            return;
        }
        let id = self.identity().clone();
        let item = BroadcastItem::Leaving {
            name: id.name.to_string(),
            generation: id.generation,
        };
        if let Err(err) = self.spread(&item) {
            tracing::warn!(%err, "could not announce the leave; members will see a failure");
        }
        self.leaving = true;
        if let Err(err) = self.with_foca(|foca, io| foca.leave_cluster(io)) {
            self.stats.count_foca_error(&err);
        }
    }

    /// Queues an item for dissemination, records it here and pushes it on at once.
    fn spread(&mut self, item: &BroadcastItem) -> Result<(), GossipError> {
        self.enqueue(item)?;
        // Settling records the item here and pushes it on.
        self.with_foca(|_, _| ());
        Ok(())
    }

    /// Hands an item to foca's broadcast queue; duplicates are dropped by the inbox.
    fn enqueue(&mut self, item: &BroadcastItem) -> Result<(), GossipError> {
        self.enqueue_encoded(&wire::encode(item))
    }

    /// Hands an already encoded item to foca's broadcast queue.
    pub(crate) fn enqueue_encoded(&mut self, bytes: &[u8]) -> Result<(), GossipError> {
        self.foca
            .add_broadcast(bytes)
            .map(drop)
            .map_err(|e| GossipError::InvalidEvent(format!("cannot broadcast: {e}")))
    }

    /// Runs one foca call with a runtime that queues outputs, then digests what it changed.
    fn with_foca<R>(&mut self, call: impl FnOnce(&mut SwimCore, &mut Io<'_>) -> R) -> R {
        let result = call(&mut self.foca, &mut io!(self));
        self.take_probe_samples();
        let learned = self.settle();
        match self.eager_push.pace(learned, self.elapsed) {
            Pace::Now => {
                if let Err(err) = self.foca.gossip(&mut io!(self)) {
                    self.stats.count_foca_error(&err);
                }
                self.settle();
            }
            Pace::After(after) => self.outputs.push_back(Output::Timer {
                after,
                timer: TimerEvent::EagerPush,
            }),
            Pace::Idle => {}
        }
        result
    }

    /// Turns what foca did into member events, delivered user events and timers.
    /// Returns whether anything new was learned that is worth an eager push (a member
    /// change or a new item that is not background).
    fn settle(&mut self) -> bool {
        let changes = std::mem::take(&mut *self.changes.lock().expect("codec tap poisoned"));
        let me = self.identity().name.clone();
        let mut learned = false;
        let mut health_moved = false;
        for member in changes.iter().filter(|m| m.id().name != me) {
            if let Some(event) = self.view.apply(member) {
                if event.kind == MemberEventKind::Suspect {
                    self.suspected(member.id());
                }
                if event.kind == MemberEventKind::Up {
                    self.deliveries
                        .push(Delivery::Up(event.member.name.clone()));
                }
                // What flips `serfHealth` (suspicion and leave announcements do not).
                health_moved |= matches!(
                    event.kind,
                    MemberEventKind::Up | MemberEventKind::Failed | MemberEventKind::Left
                );
                self.outputs.push_back(Output::Member(event));
                learned = true;
            }
        }
        if health_moved {
            self.deliveries.push(Delivery::HealthMoved);
        }
        let received = std::mem::take(&mut *self.received.lock().expect("inbox poisoned"));
        // Background items (coordinates) wait for messages sent anyway: no eager push.
        learned |= received.iter().any(|item| !item.is_background());
        for item in received {
            match item {
                BroadcastItem::Event(event) => {
                    let services = self
                        .own_record
                        .iter()
                        .flat_map(|r| r.services.values().map(|s| (s.name.as_str(), &s.tags[..])));
                    if event.filter.matches(&me, services) {
                        self.events.record(event.clone());
                        self.outputs.push_back(Output::UserEvent(event));
                    }
                }
                BroadcastItem::Leaving { name, generation } => {
                    if let Some(event) = self.view.mark_leaving(&name, generation) {
                        self.outputs.push_back(Output::Member(event));
                    }
                }
                BroadcastItem::Change(change) => self.deliveries.push(Delivery::Change(change)),
            }
        }
        for notification in std::mem::take(&mut self.notifications) {
            match notification {
                OwnedNotification::Idle if !self.leaving && !self.seeds.is_empty() => {
                    self.schedule_rejoin(self.config.rejoin_min);
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(
                        generation = id.generation,
                        "declared down by the cluster; rejoined with a new generation"
                    );
                    self.announce_to_down_members();
                    self.catch_up_after_renewal();
                }
                _ => {}
            }
        }
        self.resize_if_needed();
        learned
    }

    /// Announces this node (just renewed) to a few members it lists down.
    ///
    /// After a split heals, each side lists the other down, and each member must hear that
    /// it was declared down before it renews and is taken back; only announcements to down
    /// members cross between the sides. A member listed down that gets this announcement
    /// takes the new identity and answers; its answer, from a member listed down, is answered
    /// "you are down", so it renews too and announces in turn: the sides rejoin in a cascade
    /// of round trips instead of waiting for foca's periodic announcements (2 members every
    /// 10 s). In eight 200-node chaos runs that ended mid-split, the mean time to agree after
    /// the heal went from 73.9 to 54.0 s with this (foca patch 7 in both).
    fn announce_to_down_members(&mut self) {
        let mut down: Vec<NodeIdentity> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Down)
            .map(|m| m.id().clone())
            .collect();
        for _ in 0..ANNOUNCE_TO_DOWN_ON_RENEWAL.min(down.len()) {
            let pick = down.swap_remove(self.rng.random_range(0..down.len()));
            if let Err(err) = self.foca.announce(pick, &mut io!(self)) {
                self.stats.count_foca_error(&err);
            }
        }
    }

    /// Compares lists with a random member shortly after a renewal.
    ///
    /// A renewal means the cluster declared this node down: most often a split healed, and
    /// every member of each side renews at about the same time. The renewals spread by gossip
    /// while many members still list the senders down or stale, so a member that renewed late
    /// misses some. foca patch 8 covered that by answering every message for an earlier
    /// identity with an `Announce`, whose `Feed` in reply brings the renewed member 45 members
    /// each time: 390,000 `Feed`s when 1,000 simulated nodes healed a split in halves, two
    /// thirds of the member updates the heal moved. With those answers limited to four per
    /// renewal (patch 12), 1,385 (member, peer) pairs still held a stale identity 16 s after
    /// the heal and 83 after 39 s, left to push-pulls minutes apart. One digest exchange a
    /// second after the renewal brings the missing members for a list's worth of bytes,
    /// merged without gossiping them on (their owners spread them): no stale pair was left
    /// 16 s after that heal.
    fn catch_up_after_renewal(&mut self) {
        if self.catch_up_with.is_some() {
            return;
        }
        if let Some(peer) = self.random_member().cloned() {
            self.schedule_catch_up(peer);
        }
    }

    fn schedule_catch_up(&mut self, with: NodeIdentity) {
        self.catch_up_with = Some(with);
        self.outputs.push_back(Output::Timer {
            after: CATCH_UP_AFTER,
            timer: TimerEvent::CatchUp,
        });
    }

    /// Keeps suspicion time and retransmissions matched to the cluster size.
    fn resize_if_needed(&mut self) {
        let size = self.foca.num_members() + 1;
        if size != self.sized_for && self.foca.set_config(self.config.foca_config(size)).is_ok() {
            self.sized_for = size;
        }
    }

    fn schedule_push_pull(&mut self) {
        let base = self.config.push_pull_every(self.foca.num_members() + 1);
        // Up to 10% jitter so members do not all exchange state at once.
        let jitter = base.mul_f64(self.rng.random_range(0.0..0.1));
        self.outputs.push_back(Output::Timer {
            after: base + jitter,
            timer: TimerEvent::PushPull,
        });
    }

    /// A periodic push-pull with a random member: by digest once this node has merged a
    /// whole list (see [`digest`]), whole before.
    fn start_push_pull(&mut self) {
        if self.leaving {
            return;
        }
        let Some(peer) = self.random_member().cloned() else {
            return;
        };
        // A catch-up still unanswered by now failed; its seed's deltas spread as any others.
        self.catching_up_from = None;
        let request = if self.synced {
            self.digest_request(&peer.name)
        } else {
            self.push_pull_request()
        };
        self.outputs.push_back(Output::Exchange {
            to: peer.addr,
            request,
        });
    }

    /// The catch-up timer fired: a digest push-pull with the seed this node joined through.
    fn catch_up(&mut self) {
        let Some(seed) = self.catch_up_with.take() else {
            return;
        };
        if self.leaving {
            return;
        }
        let request = self.digest_request(&seed.name);
        self.catching_up_from = Some(seed.name.clone());
        self.outputs.push_back(Output::Exchange {
            to: seed.addr,
            request,
        });
    }

    /// Step 1 of a digest push-pull with the member named `peer`.
    fn digest_request(&mut self, peer: &str) -> Vec<u8> {
        let buckets = digest::bucket_count(self.foca.num_members() + 1);
        let request = DigestedState {
            digests: self.digests_without(peer, buckets),
            state: self.state_with(Vec::new()),
        };
        self.seal_message(&StreamMessage::PushPullDigest(request))
    }

    /// The digests of the members this node lists, but `peer`, over `buckets` buckets.
    fn digests_without(&self, peer: &str, buckets: usize) -> Vec<u64> {
        let listed = self.foca.iter_membership_state();
        digest::digests(listed.filter(|m| m.id().name != peer), buckets)
    }

    /// The members this node lists, but `peer`, in the buckets marked in `wanted`.
    fn members_in(&self, peer: &str, wanted: &[bool]) -> Vec<Member<NodeIdentity>> {
        self.foca
            .iter_membership_state()
            .filter(|m| {
                m.id().name != peer && wanted[digest::bucket_of(&m.id().name, wanted.len())]
            })
            .cloned()
            .collect()
    }

    /// Step 2 of a digest push-pull came back: merge the responder's members, then push ours
    /// of the buckets that still differ (what it lacks, or holds older).
    fn merge_delta(&mut self, state: PushPullState, their_digests: &[u64], spread: bool) {
        let peer = state.from.clone();
        self.merge_state(state, spread);
        let ours = self.digests_without(&peer.name, their_digests.len());
        let differ = digest::differing(&ours, their_digests);
        if differ.contains(&true) {
            let push = PushPullState {
                from: self.identity().clone(),
                members: self.members_in(&peer.name, &differ),
                left: Vec::new(),
                events: Vec::new(),
            };
            let request = self.seal_message(&StreamMessage::MembersPush(push));
            self.outputs.push_back(Output::Exchange {
                to: peer.addr,
                request,
            });
        }
    }

    /// A random active member, unless this node is leaving or alone.
    pub(crate) fn random_peer(&mut self) -> Option<SocketAddr> {
        if self.leaving {
            return None;
        }
        self.random_member().map(|id| id.addr)
    }

    /// One random active member, found without copying the member list: callers draw one
    /// every probe period, and a copy per draw was a tenth of a 1,000-node simulation.
    pub(crate) fn random_member(&mut self) -> Option<&NodeIdentity> {
        let count = self.foca.num_members();
        if count == 0 {
            return None;
        }
        let pick = self.rng.random_range(0..count);
        self.foca.iter_members().nth(pick).map(Member::id)
    }

    /// Up to `n` distinct random active members.
    pub(crate) fn random_peers(&mut self, n: usize) -> Vec<SocketAddr> {
        if self.leaving {
            return Vec::new();
        }
        let mut peers: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let mut chosen = Vec::new();
        while chosen.len() < n && !peers.is_empty() {
            chosen.push(peers.swap_remove(self.rng.random_range(0..peers.len())));
        }
        chosen
    }

    fn schedule_rejoin(&mut self, after: Duration) {
        if self.rejoin_wait.is_none() {
            self.rejoin_wait = Some(after);
            self.outputs.push_back(Output::Timer {
                after,
                timer: TimerEvent::Rejoin,
            });
        }
    }

    fn rejoin_if_alone(&mut self) {
        let waited = self.rejoin_wait.take().unwrap_or(self.config.rejoin_min);
        if self.leaving || self.foca.num_members() > 0 || self.seeds.is_empty() {
            return;
        }
        tracing::info!(
            seeds = self.seeds.len(),
            "alone: contacting the seeds again"
        );
        for to in self.seeds.clone() {
            let request = self.push_pull_request();
            self.outputs.push_back(Output::Exchange { to, request });
        }
        self.schedule_rejoin((waited * 2).min(self.config.rejoin_max));
    }

    fn local_state(&self) -> PushPullState {
        let me = self.identity().clone();
        let members = self
            .foca
            .iter_membership_state()
            .cloned()
            .chain([Member::alive(me)])
            .collect();
        self.state_with(members)
    }

    /// This node's push-pull state carrying `members`.
    fn state_with(&self, members: Vec<Member<NodeIdentity>>) -> PushPullState {
        PushPullState {
            from: self.identity().clone(),
            members,
            left: self
                .view
                .leaving()
                .map(|(name, generation)| (name.to_string(), *generation))
                .collect(),
            events: self.events.newest().cloned().collect(),
        }
    }

    /// Merges a peer's push-pull state. With `spread`, the members that were news here are
    /// gossiped on, as any news is; without, only news about this node's own name is (a
    /// joiner's list and its catch-up: the seed and the rest already know and spread those
    /// members, and gossiping them again cost each of N joins ~N updates times the
    /// retransmission count).
    fn merge_state(&mut self, state: PushPullState, spread: bool) {
        for (name, generation) in &state.left {
            if let Some(event) = self.view.mark_leaving(name, *generation) {
                self.outputs.push_back(Output::Member(event));
            }
        }
        // Down news about members we never knew would only resurrect reaped entries; news that
        // *we* are down must pass, since it is what makes us renew and rejoin. A joining node
        // has reaped nothing and takes it all: a member it lists down is one it announces
        // itself to every few seconds, so two nodes that restarted together and each missed
        // the other's join (spread while neither was alive to the spreaders) still meet, where
        // a member it never heard of waited for a push-pull (p99 30 s for 200 of 1,000
        // simulated nodes restarting at once).
        let (view, me, joining) = (&self.view, &self.foca.identity().name, !self.synced);
        let (about_us, others): (Vec<Member<NodeIdentity>>, Vec<Member<NodeIdentity>>) = state
            .members
            .into_iter()
            .filter(|m| {
                joining
                    || m.state() != State::Down
                    || m.id().name == *me
                    || view.get(&m.id().name).is_some()
            })
            .map(|m| self.identities.intern_member(m))
            .partition(|m| m.id().name == *me);
        // The member view learns what foca queues for gossip (the codec's tap); what is merged
        // without gossiping reaches it as foca holds it after the merge.
        let quiet: Option<BTreeSet<u64>> = (!spread).then(|| {
            others
                .iter()
                .map(|m| foca::Identity::addr(m.id()))
                .collect()
        });
        let tap = self.changes.clone();
        let merged = self.with_foca(|foca, io| {
            foca.apply_many(about_us.into_iter(), true, &mut *io)?;
            foca.apply_many(others.into_iter(), spread, &mut *io)?;
            if let Some(merged) = quiet {
                let mut tap = tap.lock().expect("codec tap poisoned");
                let held = foca.iter_membership_state();
                tap.extend(
                    held.filter(|m| merged.contains(&foca::Identity::addr(m.id())))
                        .cloned(),
                );
            }
            Ok(())
        });
        if let Err(err) = merged {
            self.stats.count_foca_error(&err);
        }
        if !self.synced {
            self.synced = true;
            if let Some(latest) = state.events.iter().map(|e| e.ltime).max() {
                self.events.witness(latest);
            }
            return;
        }
        for event in state.events {
            // The inbox drops what we already have; what we missed is queued.
            if let Err(err) = self.enqueue(&BroadcastItem::Event(event)) {
                tracing::debug!(%err, "event from push-pull not taken");
            }
        }
        // One settle delivers and pushes on everything that was new.
        self.with_foca(|_, _| ());
    }

    /// Refuses a joiner whose name belongs to another live agent.
    fn name_conflict(&self, from: &NodeIdentity) -> Option<String> {
        let me = self.identity();
        let holder = if from.name == me.name {
            Some(me)
        } else {
            self.view
                .get(&from.name)
                .filter(|m| m.status.is_active())
                .map(|m| &m.identity)
        };
        let holder = holder.filter(|h| h.node_id != from.node_id)?;
        Some(format!(
            "node name {:?} is already taken by the live agent at {}: give this agent a unique --node name \
             (if that agent is gone, wait until the cluster marks it failed)",
            from.name, holder.addr
        ))
    }

    fn open(&self, bytes: &[u8]) -> Result<Vec<u8>, DropReason> {
        let opened = wire::open(&self.config.cluster_id, &self.keyring, bytes)?;
        if !opened.sealed && self.keyring.is_encrypted() {
            return Err(DropReason::UnexpectedPlaintext);
        }
        Ok(opened.body)
    }

    /// Opens a stream reply; plaintext is accepted only for a rejection, which a peer that
    /// could not read our request has no other way to send.
    fn open_reply(&mut self, reply: &[u8]) -> Result<StreamMessage, GossipError> {
        let opened = wire::open(&self.config.cluster_id, &self.keyring, reply)
            .map_err(|reason| self.unreadable_reply(reason))?;
        let message = wire::decode::<StreamMessage>(&opened.body)
            .map_err(|reason| self.unreadable_reply(reason))?;
        match message {
            StreamMessage::Reject(why) => Err(GossipError::Rejected(why)),
            _ if !opened.sealed && self.keyring.is_encrypted() => {
                Err(self.unreadable_reply(DropReason::UnexpectedPlaintext))
            }
            message => Ok(message),
        }
    }

    pub(crate) fn refused_reply(&mut self, err: &impl std::fmt::Display) -> GossipError {
        self.stats.dropped.count(DropReason::Undecodable);
        GossipError::UnreadableReply(err.to_string())
    }

    fn unreadable_reply(&mut self, reason: DropReason) -> GossipError {
        self.stats.dropped.count(reason);
        GossipError::UnreadableReply(reason.advice().into())
    }

    pub(crate) fn reject(&self, why: &str) -> Vec<u8> {
        wire::plaintext(
            &self.config.cluster_id,
            &wire::encode(&StreamMessage::Reject(why.to_owned())),
        )
    }

    pub(crate) fn seal_message(&mut self, message: &StreamMessage) -> Vec<u8> {
        wire::seal(
            &self.config.cluster_id,
            &self.keyring,
            &mut self.rng,
            &wire::encode(message),
        )
    }

    fn key_bytes(&self) -> Vec<[u8; KEY_LEN]> {
        self.keyring.keys().iter().map(|k| *k.as_bytes()).collect()
    }
}

fn message_name(message: &StreamMessage) -> &'static str {
    match message {
        StreamMessage::PushPull(_) => "push-pull",
        StreamMessage::PushPullReply(_) => "push-pull reply",
        StreamMessage::Reject(_) => "reject",
        StreamMessage::Keyring(_) => "keyring",
        StreamMessage::KeyringReply(_) => "keyring reply",
        StreamMessage::Sync(_) => "sync digest",
        StreamMessage::SyncSummary(_) => "sync summary",
        StreamMessage::SyncPush(_) => "sync push",
        StreamMessage::SyncPushReply(_) => "sync push reply",
        StreamMessage::Changes(_) => "changes",
        StreamMessage::ChangesAck => "changes ack",
        StreamMessage::AgentRequest { .. } => "agent request",
        StreamMessage::AgentReply(_) => "agent reply",
        StreamMessage::PushPullDigest(_) => "push-pull digest",
        StreamMessage::PushPullDelta(_) => "push-pull delta",
        StreamMessage::MembersPush(_) => "members push",
        StreamMessage::MembersPushAck => "members push ack",
        StreamMessage::Tether(_) => "tether",
    }
}

fn unexpected_reply(message: &StreamMessage) -> GossipError {
    GossipError::UnreadableReply(format!(
        "the peer answered with an unexpected {}",
        message_name(message)
    ))
}

#[cfg(test)]
mod digest_exchange_tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::IdentityFields;

    pub(super) fn identity(i: u16) -> NodeIdentity {
        IdentityFields {
            name: format!("n{i}").into(),
            node_id: u64::from(i),
            generation: 1,
            addr: SocketAddr::from(([127, 0, 0, 1], 20_000 + i)),
            datacenter: "dc1".into(),
            tags: Vec::new(),
        }
        .into()
    }

    /// A node that has merged one list naming `members` (so it is past its join).
    pub(super) fn node_knowing(i: u16, members: impl Iterator<Item = u16>) -> Node {
        let rng = StdRng::seed_from_u64(u64::from(i));
        let mut node = Node::new(identity(i), GossipConfig::lan("c"), Keyring::new(None), rng)
            .expect("valid node");
        let list = PushPullState {
            from: identity(0),
            members: members.map(|m| Member::alive(identity(m))).collect(),
            left: Vec::new(),
            events: Vec::new(),
        };
        node.merge_state(list, false);
        node
    }

    fn reply_of(node: &mut Node, request: &[u8]) -> Vec<u8> {
        match node.serve_stream(request) {
            Served::Reply(reply) => reply,
            _ => panic!("a push-pull is answered by the node"),
        }
    }

    fn knows(node: &Node, i: u16) -> bool {
        node.peer(&format!("n{i}")).is_some()
    }

    #[test]
    fn a_renewed_node_catches_up_with_a_member_by_digest() {
        let mut a = node_knowing(1, 2..20);
        a.outputs.clear();
        // A list that says we are down (a split healed): foca renews our identity.
        let verdict = PushPullState {
            from: identity(2),
            members: vec![Member::down(identity(1))],
            left: Vec::new(),
            events: Vec::new(),
        };
        a.merge_state(verdict, true);
        assert_eq!(a.identity().generation, 2, "renewed");
        assert!(
            a.outputs.iter().any(|o| matches!(
                o,
                Output::Timer { timer: TimerEvent::CatchUp, after } if *after == CATCH_UP_AFTER
            )),
            "a catch-up is timed after the renewal"
        );

        a.outputs.clear();
        a.handle_timer(TimerEvent::CatchUp);
        let (to, request) = a
            .outputs
            .iter()
            .find_map(|o| match o {
                Output::Exchange { to, request } => Some((*to, request.clone())),
                _ => None,
            })
            .expect("the catch-up exchange");
        let peer = (2..20)
            .find(|&i| identity(i).addr == to)
            .expect("with a member it lists");
        // The peer answers it as a digest push-pull, with a delta.
        let mut b = node_knowing(peer, (1..20).filter(|&i| i != peer));
        let reply = reply_of(&mut b, &request);
        assert!(matches!(
            a.handle_reply(&reply),
            Ok(Replied::PushPull { first: false })
        ));
    }

    #[test]
    fn a_digest_push_pull_sends_only_the_buckets_that_differ_both_ways() {
        // 300 members in common; `a` also knows 901, `b` also knows 902.
        let common = || (3..303).chain([1, 2]);
        let mut a = node_knowing(1, common().chain([901]));
        let mut b = node_knowing(2, common().chain([902]));
        assert!(!knows(&a, 902) && !knows(&b, 901));

        let request = a.digest_request("n2");
        let reply = reply_of(&mut b, &request);
        let full = b.push_pull_request();
        assert!(
            reply.len() * 4 < full.len(),
            "the delta ({} B) is a fraction of the whole list ({} B)",
            reply.len(),
            full.len()
        );
        a.outputs.clear();
        assert!(matches!(
            a.handle_reply(&reply),
            Ok(Replied::PushPull { first: false })
        ));
        assert!(
            knows(&a, 902),
            "a merged b's member of the differing bucket"
        );

        let push = a
            .outputs
            .iter()
            .find_map(|o| match o {
                Output::Exchange { to, request } if *to == identity(2).addr => {
                    Some(request.clone())
                }
                _ => None,
            })
            .expect("a pushes what b lacks");
        assert!(push.len() * 4 < full.len(), "the push is a fraction too");
        let ack = reply_of(&mut b, &push);
        assert!(
            knows(&b, 901),
            "b merged a's member of the differing bucket"
        );
        assert!(matches!(
            a.handle_reply(&ack),
            Ok(Replied::PushPull { first: false })
        ));

        // Now equal: another exchange carries no member and pushes nothing.
        let again = reply_of(&mut b, &a.digest_request("n2"));
        a.outputs.clear();
        a.handle_reply(&again).expect("a delta");
        assert!(
            !a.outputs
                .iter()
                .any(|o| matches!(o, Output::Exchange { .. })),
            "nothing left to push"
        );
        assert!(again.len() < reply.len());
    }

    #[test]
    fn a_digest_with_a_bucket_count_never_made_is_refused() {
        let mut a = node_knowing(1, [2].into_iter());
        let mut b = node_knowing(2, [1].into_iter());
        let request = DigestedState {
            digests: vec![0; 3],
            state: a.state_with(Vec::new()),
        };
        let request = a.seal_message(&StreamMessage::PushPullDigest(request));
        let reply = reply_of(&mut b, &request);
        assert!(a.handle_reply(&reply).is_err(), "refused, not merged");
        assert_eq!(b.stats().dropped.malformed, 1);
    }
}

/// Paces eager pushes: a change a member learns goes to a few members at once instead of
/// waiting for the next gossip round (each member forwards a change once, when it first
/// learns it, and foca still caps each update's transmissions), but pushes are at least
/// [`EAGER_PUSH_GAP`] apart.
#[derive(Debug, Default)]
struct EagerPush {
    /// When the last push went out.
    last: Option<Duration>,
    /// Something learned since the last push waits for the next.
    waiting: bool,
    /// A timer for the end of the gap is set.
    timer_set: bool,
}

/// What to do about an eager push.
#[derive(Debug, PartialEq, Eq)]
enum Pace {
    /// Push now.
    Now,
    /// Set a timer ([`TimerEvent::EagerPush`]) for the end of the gap, this far ahead.
    After(Duration),
    /// Nothing waits, or a timer is set already.
    Idle,
}

impl EagerPush {
    /// `learned`: whether the call that just ran learned something worth pushing.
    fn pace(&mut self, learned: bool, now: Duration) -> Pace {
        self.waiting |= learned;
        if !self.waiting {
            return Pace::Idle;
        }
        match self.last.map(|last| last + EAGER_PUSH_GAP) {
            Some(open) if now < open => {
                if self.timer_set {
                    Pace::Idle
                } else {
                    self.timer_set = true;
                    Pace::After(open - now)
                }
            }
            _ => {
                self.waiting = false;
                self.last = Some(now);
                Pace::Now
            }
        }
    }

    fn timer_fired(&mut self) {
        self.timer_set = false;
    }
}

#[cfg(test)]
mod eager_push_tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pushes_are_a_gap_apart_and_what_waits_goes_at_its_end() {
        let mut pacer = EagerPush::default();
        assert_eq!(pacer.pace(false, ms(0)), Pace::Idle, "nothing learned");
        assert_eq!(pacer.pace(true, ms(10)), Pace::Now);
        // Learned again within the gap: one timer for its end, however much more comes.
        assert_eq!(pacer.pace(true, ms(14)), Pace::After(ms(6)));
        assert_eq!(pacer.pace(true, ms(16)), Pace::Idle);
        assert_eq!(pacer.pace(false, ms(18)), Pace::Idle);
        pacer.timer_fired();
        assert_eq!(pacer.pace(false, ms(20)), Pace::Now, "what waited goes");
        assert_eq!(pacer.pace(false, ms(200)), Pace::Idle, "nothing waits");
        // A message after the gap pushes at once, timer or not.
        assert_eq!(pacer.pace(true, ms(200)), Pace::Now);
    }
}
