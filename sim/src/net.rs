//! A deterministic network of the real [`PoolMember`] cores on a virtual clock: datagrams with
//! latency, jitter and loss, partitions, crashes and restarts with or without durable data.
//! Stream exchanges (push-pull, anti-entropy, flooded changes) complete at once, in order.
//!
//! Every random choice comes from one seeded RNG and every queue is ordered, so one seed gives
//! one run; [`Net::trace`] records what happened for determinism checks.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use murmur_catalog::{Change, Hlc, Journaled, Replica, ReplicaConfig, Snapshot};
use murmur_gossip::{
    GossipConfig, Identities, IdentityFields, Keyring, MemberEvent, MemberEventKind, MemberStatus,
    Node, NodeIdentity, Output, PoolMember, SecretKey, TimerEvent, UserEvent,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Something due at a moment of virtual time.
enum Delivery {
    Datagram {
        to: usize,
        bytes: Vec<u8>,
        /// The sender and its life, for the unreachable answer of a host whose process died.
        from: (usize, u64),
    },
    /// The host at `addr` answered `node`'s datagram: nobody listens there.
    Unreachable {
        node: usize,
        life: u64,
        addr: SocketAddr,
    },
    Timer {
        node: usize,
        life: u64,
        timer: TimerEvent,
    },
    /// The tether `subject` held to `node` ended: its kernel closed it when its process died.
    TetherLost {
        node: usize,
        life: u64,
        subject: NodeIdentity,
    },
}

/// How datagrams travel: latency within and between datacenters, jitter, reordering and each
/// node's egress bandwidth. Node `i` sits in datacenter `i % datacenters` (a WAN member, in
/// the datacenter of the node it serves: see [`Net::wan_from`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkModel {
    /// Number of datacenters the nodes are spread over (round-robin).
    pub datacenters: usize,
    /// One-way latency inside a datacenter.
    pub lan_latency: Duration,
    /// Up to this much more, uniformly, inside a datacenter.
    pub lan_jitter: Duration,
    /// One-way latency between datacenters.
    pub wan_latency: Duration,
    /// Up to this much more, uniformly, between datacenters.
    pub wan_jitter: Duration,
    /// Probability that a datagram is held back by up to `reorder_delay`, so that datagrams
    /// sent after it arrive first.
    pub reorder: f64,
    /// The longest hold-back of a reordered datagram.
    pub reorder_delay: Duration,
    /// Egress bytes per second of every node (0: unlimited). Datagrams leave one after the
    /// other, so a burst queues behind itself.
    pub bandwidth: u64,
}

impl Default for LinkModel {
    /// One datacenter, 2 ms plus up to 1 ms of jitter, no reordering beyond what jitter
    /// does, unlimited bandwidth.
    fn default() -> Self {
        Self {
            datacenters: 1,
            lan_latency: Duration::from_millis(2),
            lan_jitter: Duration::from_millis(1),
            wan_latency: Duration::from_millis(40),
            wan_jitter: Duration::from_millis(10),
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            bandwidth: 0,
        }
    }
}

/// One node's place in the network, across crashes and restarts.
pub struct Slot {
    /// The running core; `None` while crashed.
    pub node: Option<PoolMember>,
    /// Bumped on every crash so timers of a dead life are discarded.
    pub life: u64,
    /// Member events the node emitted, in order.
    pub member_events: Vec<MemberEvent>,
    /// User events delivered to the node, in order.
    pub user_events: Vec<UserEvent>,
    /// While the node is down, whether its host still runs and answers datagrams for it
    /// (ICMP port unreachable): a killed process, not a crashed host.
    pub host_answers: bool,
    /// Everything the node asked to persist since `snapshot`, across lives (its data dir).
    pub journal: Vec<Journaled>,
    /// The node's last compacted state, as the agent's `--data-dir` keeps it.
    pub snapshot: Option<Snapshot>,
}

/// The virtual network and clock.
pub struct Net {
    /// Virtual time since the start.
    pub now: Duration,
    /// Node `i` lives in slot `i`.
    pub slots: Vec<Slot>,
    queue: BTreeMap<(Duration, u64), Delivery>,
    seq: u64,
    rng: StdRng,
    blocked: BTreeSet<(usize, usize)>,
    /// How many blocked pairs each node is part of, so "is it cut off" is O(log N).
    cut_links: BTreeMap<usize, usize>,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Datagrams delivered twice so far.
    pub duplicates: u64,
    /// Times a node declared another failed although that one had been running (the same
    /// life), unstalled and cut off from nobody for the last [`UNDISTURBED`]: false
    /// positives of failure detection.
    pub false_failures: u64,
    /// Times a node suspected another that had been running, undisturbed, as for
    /// [`Net::false_failures`]: each one a check the confirmers had to clear.
    pub false_suspicions: u64,
    /// When each node was last crashed, restarted, stalled or partitioned.
    disturbed_at: BTreeMap<usize, Duration>,
    /// Datagrams sent by all nodes, all lives.
    pub datagrams_sent: u64,
    /// Bytes of those datagrams.
    pub bytes_sent: u64,
    /// Streams opened (each one request and its reply), refused ones aside.
    pub streams: u64,
    /// Bytes of stream requests and replies (push-pulls, anti-entropy, floods of changes).
    pub stream_bytes: u64,
    /// Nodes whose event loop is stalled until the given virtual time: what arrives for them
    /// waits, and streams to them fail (as they would time out).
    pub paused_until: BTreeMap<usize, Duration>,
    /// How datagrams travel.
    pub link: LinkModel,
    /// When each node's egress link is free again (bandwidth model).
    egress_free_at: BTreeMap<usize, Duration>,
    /// Failure declarations since a reader last took this: (when, by whom, of which node
    /// name, of which life). Readers `take` it, so it holds one step's worth.
    pub failure_log: Vec<(Duration, usize, String, u64)>,
    /// Shared keys applied since a reader last took this: (when, by whom, key, stamp).
    /// Readers `take` it, so it holds one step's worth.
    pub applied: Vec<(Duration, usize, String, Hlc)>,
    /// A running hash of every member event in order, for determinism checks.
    trace: std::hash::DefaultHasher,
    /// Whether slots keep their member and user events (tests read them; long runs of
    /// thousands of nodes would hold millions).
    keep_events: bool,
    /// The configuration nodes start with.
    pub config: GossipConfig,
    /// How far each node's wall clock is off (ms, either way); absent means exact.
    pub skew_ms: BTreeMap<usize, i64>,
    /// How fast each node's wall clock drifts (parts per million of virtual time, either
    /// way); absent means none. Timers still run on true time: drift moves what the node
    /// reads as the wall clock (its HLC stamps), which is where it matters.
    pub drift_ppm: BTreeMap<usize, i64>,
    /// One shared copy of each identity for all nodes: each node holds every member, so
    /// per-node copies grew with N² (~300 bytes per pair).
    identities: Identities,
    /// Where WAN pool members start: slot `wan_from + i` is node `i`'s member of the WAN pool
    /// while node `i` serves as a gateway (`usize::MAX`: no federation, one pool spanning
    /// every datacenter).
    pub wan_from: usize,
    /// The configuration WAN members start with.
    pub wan_config: GossipConfig,
    /// The other pool of each gateway: LAN node ↔ its WAN member, both ways. Global changes
    /// one of the two persists are handed to the other at once, as the agent relays them.
    relay: BTreeMap<usize, usize>,
    /// Global changes handed from one pool to the other so far (offered, news).
    pub relayed: (u64, u64),
    /// Bytes WAN members sent: datagrams, and both ways of the streams they opened.
    pub wan_bytes: u64,
    /// Pairs (from, to) whose datagrams come back "port unreachable" although `to` runs: a
    /// confused member (a firewall that rejects, a wrong route) whose word alone must not
    /// declare anyone down.
    pub bounced: BTreeSet<(usize, usize)>,
}

/// How long a node must have been left alone before declaring it failed counts as a false
/// positive: longer than a suspicion period of a large cluster.
pub const UNDISTURBED: Duration = Duration::from_secs(30);

/// Virtual time 0 as wall-clock ms (late 2023), so HLC stamps look like real ones.
pub const WALL_CLOCK_BASE_MS: u64 = 1_700_000_000_000;

/// The port of node 0; node `i` listens at the `i`-th after it.
const FIRST_PORT: u16 = 20000;

/// The gossip address of node `i`.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], FIRST_PORT + i as u16))
}

/// The slot whose node listens at `addr` (the inverse of [`addr`]).
pub fn slot_of(addr: SocketAddr) -> usize {
    usize::from(addr.port() - FIRST_PORT)
}

/// A keyring holding one key made of the byte `b`.
pub fn key(b: u8) -> Keyring {
    Keyring::new(Some(SecretKey::from_bytes([b; 32])))
}

impl Net {
    /// An empty network whose randomness all comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Duration::ZERO,
            slots: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            blocked: BTreeSet::new(),
            cut_links: BTreeMap::new(),
            loss: 0.0,
            duplicate: 0.0,
            duplicates: 0,
            false_failures: 0,
            false_suspicions: 0,
            disturbed_at: BTreeMap::new(),
            datagrams_sent: 0,
            bytes_sent: 0,
            streams: 0,
            stream_bytes: 0,
            paused_until: BTreeMap::new(),
            link: LinkModel::default(),
            egress_free_at: BTreeMap::new(),
            failure_log: Vec::new(),
            applied: Vec::new(),
            trace: std::hash::DefaultHasher::new(),
            keep_events: true,
            config: GossipConfig::lan("test"),
            skew_ms: BTreeMap::new(),
            drift_ppm: BTreeMap::new(),
            identities: Identities::default(),
            wan_from: usize::MAX,
            wan_config: GossipConfig::wan("test"),
            relay: BTreeMap::new(),
            relayed: (0, 0),
            wan_bytes: 0,
            bounced: BTreeSet::new(),
        }
    }

    /// The datacenter (0-based) node `i` is in.
    pub fn datacenter_of(&self, i: usize) -> usize {
        let lan = if i >= self.wan_from {
            i - self.wan_from
        } else {
            i
        };
        lan % self.link.datacenters.max(1)
    }

    /// Whether slot `i` holds a WAN pool member.
    pub fn is_wan(&self, i: usize) -> bool {
        i >= self.wan_from
    }

    /// Pairs LAN node `lan` and WAN member `wan` (one gateway), or unpairs them (`None`).
    pub fn pair(&mut self, lan: usize, wan: Option<usize>) {
        if let Some(old) = self.relay.remove(&lan) {
            self.relay.remove(&old);
        }
        if let Some(wan) = wan {
            self.relay.insert(lan, wan);
            self.relay.insert(wan, lan);
        }
    }

    /// The identity node `i` runs with in `generation`.
    pub fn identity(i: usize, generation: u64) -> NodeIdentity {
        IdentityFields {
            name: format!("node-{i}").into(),
            node_id: 1000 + i as u64,
            generation,
            addr: addr(i),
            datacenter: "dc1".into(),
            tags: vec![],
        }
        .into()
    }

    /// Adds (or restarts, for an existing index) node `i` with the given keyring and generation,
    /// with empty replicated state.
    pub fn start(&mut self, i: usize, generation: u64, keyring: Keyring) {
        self.boot(i, generation, keyring, false);
    }

    /// Restarts node `i` from what it persisted in earlier lives.
    pub fn restart_with_data(&mut self, i: usize, generation: u64, keyring: Keyring) {
        self.boot(i, generation, keyring, true);
    }

    fn boot(&mut self, i: usize, generation: u64, keyring: Keyring, with_data: bool) {
        self.disturb([i], self.now);
        let rng = StdRng::seed_from_u64(self.rng.random());
        let mut identity = Self::identity(i, generation);
        if self.wan_from != usize::MAX {
            identity = IdentityFields {
                datacenter: format!("dc{}", self.datacenter_of(i) + 1).into(),
                ..IdentityFields::clone(&identity)
            }
            .into();
        }
        let config = if self.is_wan(i) {
            &self.wan_config
        } else {
            &self.config
        };
        let mut node = PoolMember::with_identities(
            identity.clone(),
            config.clone(),
            keyring,
            rng,
            self.identities.clone(),
        )
        .expect("valid node");
        while self.slots.len() <= i {
            self.slots.push(Slot {
                node: None,
                life: 0,
                host_answers: false,
                member_events: Vec::new(),
                user_events: Vec::new(),
                journal: Vec::new(),
                snapshot: None,
            });
        }
        if with_data {
            node.set_replica(Replica::restore(
                &identity.name,
                identity.node_id,
                generation,
                ReplicaConfig::default(),
                self.slots[i].snapshot.clone(),
                self.slots[i].journal.clone(),
            ));
        } else {
            self.slots[i].journal.clear();
            self.slots[i].snapshot = None;
        }
        self.slots[i].node = Some(node);
        self.slots[i].life += 1;
        self.drain(i);
    }

    /// Stops node `i` at once, host and all: nothing answers for it until it restarts (its
    /// pending timers die with it; its journal stays).
    pub fn crash(&mut self, i: usize) {
        self.disturb([i], self.now);
        self.slots[i].node = None;
        self.slots[i].life += 1;
        self.slots[i].host_answers = false;
    }

    /// Kills node `i`'s process while its host runs on, as `kill -9`, an OOM kill or a panic
    /// do: datagrams to it are answered "port unreachable" until it restarts.
    ///
    /// Its kernel also closes the tethers it held (see `murmur_gossip`'s `node::tether`): each
    /// member it was tied to hears so one transit later, unless a partition stands between
    /// them. The tethers modelled are those the victim's core wanted at the moment it died,
    /// as if the driver held each at once (the agent re-ties within a second).
    pub fn kill(&mut self, i: usize) {
        let tethered = self.live(i).map(|n| {
            let node = n.node();
            (node.identity().clone(), node.tether_targets())
        });
        self.crash(i);
        self.slots[i].host_answers = true;
        let Some((subject, holders)) = tethered else {
            return;
        };
        for holder in holders {
            let h = slot_of(holder.addr);
            if self.slots.get(h).is_none_or(|s| s.node.is_none()) || self.blocked.contains(&(i, h))
            {
                continue;
            }
            let at = self.now + self.transit(i, h);
            let (node, life) = (h, self.slots[h].life);
            let subject = subject.clone();
            self.push(
                at,
                Delivery::TetherLost {
                    node,
                    life,
                    subject,
                },
            );
        }
    }

    /// Node `i`, told the current (virtual) wall-clock time.
    pub fn node(&mut self, i: usize) -> &mut PoolMember {
        self.live(i).expect("node is running")
    }

    /// Runs `call` on node `i` (a client request, say) and carries out what it asked for at
    /// once, as the agent does: its journal entries are persisted before the call returns, so
    /// a crash right after cannot lose what it acknowledged.
    pub fn call<R>(&mut self, i: usize, call: impl FnOnce(&mut PoolMember) -> R) -> R {
        let result = call(self.node(i));
        self.drain(i);
        result
    }

    /// Node `i` if it runs, told the current wall-clock time.
    fn live(&mut self, i: usize) -> Option<&mut PoolMember> {
        let now_ms = self.now.as_millis() as i64;
        let drift = self
            .drift_ppm
            .get(&i)
            .map_or(0, |ppm| now_ms * ppm / 1_000_000);
        let skew = self.skew_ms.get(&i).copied().unwrap_or(0) + drift;
        let wall_ms = (WALL_CLOCK_BASE_MS + now_ms as u64).saturating_add_signed(skew);
        let node = self.slots.get_mut(i)?.node.as_mut()?;
        // Monotonic time is the virtual clock itself: skew and drift are the wall clock's.
        node.set_now(wall_ms, self.now);
        Some(node)
    }

    /// Joins node `i` through seed `seed` (a push-pull over the stream); returns the outcome.
    pub fn join(&mut self, i: usize, seed: usize) -> Result<(), String> {
        self.node(i).node_mut().set_seeds(vec![addr(seed)]);
        let request = self.node(i).node_mut().push_pull_request();
        let result = self.stream(i, seed, request, |node, reply| {
            node.handle_reply(addr(seed), reply)
        });
        self.drain(i);
        result
    }

    /// Joins all `nodes` through `seed` concurrently: every request reaches the seed before
    /// any reply is read back.
    pub fn join_all_at_once(&mut self, seed: usize, nodes: &[usize]) {
        let requests: Vec<(usize, Vec<u8>)> = nodes
            .iter()
            .map(|&i| {
                self.node(i).node_mut().set_seeds(vec![addr(seed)]);
                (i, self.node(i).node_mut().push_pull_request())
            })
            .collect();
        let replies: Vec<(usize, Vec<u8>)> = requests
            .into_iter()
            .map(|(i, request)| (i, self.node(seed).handle_stream(&request)))
            .collect();
        self.drain(seed);
        for (i, reply) in replies {
            self.node(i)
                .handle_reply(addr(seed), &reply)
                .expect("join accepted");
            self.drain(i);
        }
    }

    fn stream(
        &mut self,
        from: usize,
        to: usize,
        request: Vec<u8>,
        on_reply: impl FnOnce(&mut PoolMember, &[u8]) -> Result<(), murmur_gossip::GossipError>,
    ) -> Result<(), String> {
        if self.blocked.contains(&(from, to)) || self.blocked.contains(&(to, from)) {
            // A stream needs both directions.
            return Err("connection refused (partitioned)".into());
        }
        if self.is_paused(to) {
            return Err("timed out (paused)".into());
        }
        let Some(peer) = self.live(to) else {
            if self.slots[to].host_answers
                && let Some(node) = self.live(from)
            {
                // The host refused the connection: as good as a bounced datagram.
                node.handle_unreachable(addr(to));
                self.drain(from);
            }
            return Err("connection refused (down)".into());
        };
        let reply = peer.handle_stream(&request);
        self.streams += 1;
        self.stream_bytes += (request.len() + reply.len()) as u64;
        if self.is_wan(from) {
            self.wan_bytes += (request.len() + reply.len()) as u64;
        }
        self.drain(to);
        let result = on_reply(self.node(from), &reply).map_err(|e| e.to_string());
        self.drain(from);
        result
    }

    /// Blocks all traffic between the two groups, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        self.disturb(a.iter().chain(b).copied(), self.now);
        for &x in a {
            for &y in b {
                self.block(x, y);
                self.block(y, x);
            }
        }
    }

    /// Drops everything `from` sends to `to`, one way only (an asymmetric partition).
    pub fn block_one_way(&mut self, from: usize, to: usize) {
        self.disturb([from, to], self.now);
        self.block(from, to);
    }

    /// Cuts node `i` off from every other node, both ways.
    pub fn isolate(&mut self, i: usize) {
        let others: Vec<usize> = (0..self.slots.len()).filter(|&j| j != i).collect();
        self.partition(&[i], &others);
    }

    /// Whether node `i` is cut off from anyone (either way) or stalled right now.
    pub fn is_impaired(&self, i: usize) -> bool {
        self.is_paused(i) || self.cut_links.contains_key(&i)
    }

    fn block(&mut self, from: usize, to: usize) {
        if self.blocked.insert((from, to)) {
            *self.cut_links.entry(from).or_default() += 1;
            *self.cut_links.entry(to).or_default() += 1;
        }
    }

    /// Whether datagrams from `from` to `to` are blocked.
    pub fn is_partitioned(&self, from: usize, to: usize) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        let cut: Vec<usize> = self.cut_links.keys().copied().collect();
        self.disturb(cut, self.now);
        self.blocked.clear();
        self.cut_links.clear();
    }

    /// Stalls node `i`'s event loop for `span`.
    pub fn pause(&mut self, i: usize, span: Duration) {
        self.disturb([i], self.now + span);
        self.paused_until.insert(i, self.now + span);
    }

    /// Whether `member` is a running node's current life that nothing disturbed lately.
    fn undisturbed(&self, member: &NodeIdentity) -> bool {
        let Some(j) = member
            .name
            .strip_prefix("node-")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return false;
        };
        let current = self
            .slots
            .get(j)
            .and_then(|s| s.node.as_ref())
            .is_some_and(|n| n.node().identity().generation == member.generation);
        let quiet_since = self.disturbed_at.get(&j).copied().unwrap_or_default();
        current && !self.is_impaired(j) && self.now >= quiet_since + UNDISTURBED
    }

    fn disturb(&mut self, nodes: impl IntoIterator<Item = usize>, until: Duration) {
        for i in nodes {
            let at = self.disturbed_at.entry(i).or_default();
            *at = (*at).max(until);
        }
    }

    fn is_paused(&self, i: usize) -> bool {
        self.paused_until
            .get(&i)
            .is_some_and(|&until| until > self.now)
    }

    /// Replaces node `i`'s journal by a snapshot once it holds several times what the state
    /// does, as the agent compacts its data dir: long runs of many nodes would otherwise keep
    /// every change every node ever applied.
    fn compact_if_large(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(node) = slot.node.as_ref() else {
            return;
        };
        let replica = node.replica();
        let state = replica.records().len() + replica.shared().len();
        if slot.journal.len() > 4 * state + 1024 {
            slot.snapshot = Some(replica.snapshot());
            slot.journal.clear();
        }
    }

    /// Stops recording member and user events and frees those recorded so far: long and large
    /// runs check invariants as they go and read none of them (1,000 nodes forming a cluster
    /// record a million member events).
    pub fn stop_keeping_events(&mut self) {
        self.keep_events = false;
        for slot in &mut self.slots {
            slot.member_events = Vec::new();
            slot.user_events = Vec::new();
        }
    }

    /// A hash of every member event so far, in order: equal for equal seeds.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// When a datagram of `len` bytes sent by `from` now leaves its egress link.
    fn departure(&mut self, from: usize, len: usize) -> Duration {
        if self.link.bandwidth == 0 {
            return self.now;
        }
        let free = self.egress_free_at.entry(from).or_default();
        let leaves = (*free).max(self.now);
        let on_the_wire = Duration::from_nanos(len as u64 * 1_000_000_000 / self.link.bandwidth);
        *free = leaves + on_the_wire;
        leaves
    }

    /// Latency from `from` to `to` for one datagram: the link's base, its jitter, and maybe a
    /// reordering hold-back.
    fn transit(&mut self, from: usize, to: usize) -> Duration {
        let link = &self.link;
        let (base, jitter) = if self.datacenter_of(from) == self.datacenter_of(to) {
            (link.lan_latency, link.lan_jitter)
        } else {
            (link.wan_latency, link.wan_jitter)
        };
        let (reorder, hold) = (link.reorder, link.reorder_delay);
        let mut took = base + random_up_to(&mut self.rng, jitter);
        if reorder > 0.0 && self.rng.random_bool(reorder) {
            took += random_up_to(&mut self.rng, hold);
        }
        took
    }

    fn push(&mut self, at: Duration, delivery: Delivery) {
        self.seq += 1;
        self.queue.insert((at, self.seq), delivery);
    }

    /// Takes every output of node `i` and puts it on the network or the timer queue; hands
    /// the global changes it persisted to its other pool, if it is a gateway.
    fn drain(&mut self, i: usize) {
        let mut global = Vec::new();
        loop {
            let Some(output) = self.slots[i]
                .node
                .as_mut()
                .and_then(PoolMember::poll_output)
            else {
                break;
            };
            match output {
                Output::Datagram { to, bytes } => {
                    let to = slot_of(to);
                    self.datagrams_sent += 1;
                    self.bytes_sent += bytes.len() as u64;
                    if self.is_wan(i) {
                        self.wan_bytes += bytes.len() as u64;
                    }
                    if self.blocked.contains(&(i, to)) || self.rng.random_bool(self.loss) {
                        continue;
                    }
                    let from = (i, self.slots[i].life);
                    let arrives = self.departure(i, bytes.len()) + self.transit(i, to);
                    if self.bounced.contains(&(i, to)) {
                        let back = arrives + self.transit(to, i);
                        self.answer_unreachable(back, from, to);
                        continue;
                    }
                    if self.rng.random_bool(self.duplicate) {
                        self.duplicates += 1;
                        let later = Duration::from_micros(self.rng.random_range(0..5000));
                        let copy = Delivery::Datagram {
                            to,
                            bytes: bytes.clone(),
                            from,
                        };
                        self.push(arrives + later, copy);
                    }
                    self.push(arrives, Delivery::Datagram { to, bytes, from });
                }
                Output::Timer { after, timer } => {
                    let life = self.slots[i].life;
                    self.push(
                        self.now + after,
                        Delivery::Timer {
                            node: i,
                            life,
                            timer,
                        },
                    );
                }
                Output::Exchange { to: peer, request } => {
                    let to = slot_of(peer);
                    let _ = self.stream(i, to, request, |n, reply| n.handle_reply(peer, reply));
                }
                Output::Member(event) => {
                    if event.kind == MemberEventKind::Suspect && self.undisturbed(&event.member) {
                        self.false_suspicions += 1;
                    }
                    if event.kind == MemberEventKind::Failed {
                        if self.undisturbed(&event.member) {
                            self.false_failures += 1;
                        }
                        let (name, generation) = (&event.member.name, event.member.generation);
                        self.failure_log
                            .push((self.now, i, name.to_string(), generation));
                    }
                    (self.now, i, event.kind as u8, &event.member.name).hash(&mut self.trace);
                    if self.keep_events {
                        self.slots[i].member_events.push(event);
                    }
                }
                Output::UserEvent(event) => {
                    if self.keep_events {
                        self.slots[i].user_events.push(event);
                    }
                }
                Output::Persist(entries) => {
                    if self.relay.contains_key(&i) {
                        global.extend(murmur_federation::scope::global_changes(&entries));
                    }
                    for entry in &entries {
                        if let Journaled::Change {
                            change: Change::Shared { key, register },
                            ..
                        } = entry
                        {
                            let stamp = *register.stamp();
                            self.applied.push((self.now, i, key.clone(), stamp));
                        }
                    }
                    self.slots[i].journal.extend(entries);
                    self.compact_if_large(i);
                }
                Output::KeyringChanged => {}
            }
        }
        if let Some(&other) = self.relay.get(&i)
            && !global.is_empty()
        {
            self.relayed.0 += global.len() as u64;
            if let Some(member) = self.live(other) {
                // What is news there spreads from there; what comes back from its journal is
                // redundant here, so the relay ends after one hop.
                self.relayed.1 += member.relay(global) as u64;
                self.drain(other);
            }
        }
    }

    /// Tells `sender` (a node and its life), at `at`, that nobody listens at node `to`'s
    /// address.
    fn answer_unreachable(&mut self, at: Duration, sender: (usize, u64), to: usize) {
        let (node, life) = sender;
        let addr = addr(to);
        self.push(at, Delivery::Unreachable { node, life, addr });
    }

    /// Runs the network for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        while let Some(entry) = self.queue.first_entry() {
            let at = entry.key().0;
            if at > until {
                break;
            }
            let delivery = entry.remove();
            self.now = at;
            let target = match &delivery {
                Delivery::Datagram { to, .. } => *to,
                Delivery::Timer { node, .. }
                | Delivery::Unreachable { node, .. }
                | Delivery::TetherLost { node, .. } => *node,
            };
            if let Some(&resume) = self.paused_until.get(&target).filter(|&&r| r > at) {
                // A stalled node handles what arrived once it runs again, in arrival order.
                self.push(resume, delivery);
                continue;
            }
            match delivery {
                Delivery::Datagram { to, bytes, from } => {
                    if let Some(node) = self.live(to) {
                        node.handle_datagram(&bytes);
                        self.drain(to);
                    } else if self.slots[to].host_answers
                        && !self.blocked.contains(&(to, from.0))
                        && !self.rng.random_bool(self.loss)
                    {
                        let back = self.now + self.transit(to, from.0);
                        self.answer_unreachable(back, from, to);
                    }
                }
                Delivery::Unreachable { node, life, addr } => {
                    if self.slots[node].life == life
                        && let Some(n) = self.live(node)
                    {
                        n.handle_unreachable(addr);
                        self.drain(node);
                    }
                }
                Delivery::TetherLost {
                    node,
                    life,
                    subject,
                } => {
                    if self.slots[node].life == life
                        && let Some(n) = self.live(node)
                    {
                        n.tether_lost(&subject);
                        self.drain(node);
                    }
                }
                Delivery::Timer { node, life, timer } => {
                    if self.slots[node].life == life
                        && let Some(n) = self.live(node)
                    {
                        n.handle_timer(timer);
                        self.drain(node);
                    }
                }
            }
        }
        self.now = until;
    }

    /// Status of member `of` as node `at` sees it (`at` sees itself alive).
    pub fn status(&self, at: usize, of: usize) -> Option<MemberStatus> {
        let node = self.slots[at].node.as_ref()?;
        if at == of {
            return Some(MemberStatus::Alive);
        }
        node.node().peer(&format!("node-{of}")).map(|m| m.status)
    }

    /// The nodes that run now.
    pub fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].node.is_some())
            .collect()
    }

    /// Running node `i`, read-only (no clock set, unlike [`Net::node`]).
    pub(crate) fn running_member(&self, i: usize) -> &PoolMember {
        self.slots[i].node.as_ref().expect("running")
    }

    /// The membership core of running node `i`, read-only.
    fn gossip_node(&self, i: usize) -> &Node {
        self.running_member(i).node()
    }

    /// Whether every running node lists every other running node as alive. Counts are
    /// compared first (O(N)); only when every count fits does each node walk its member list
    /// against the sorted names (O(N²)), so waiting for convergence costs little per step.
    pub fn all_alive(&self) -> bool {
        let running = self.running();
        let counts_fit = running
            .iter()
            .all(|&at| self.gossip_node(at).alive_peers() == running.len() - 1);
        if !counts_fit {
            return false;
        }
        let mut names: Vec<String> = running
            .iter()
            .map(|&i| Self::identity(i, 0).name.to_string())
            .collect();
        names.sort_unstable();
        running.iter().all(|&at| {
            self.gossip_node(at)
                .sees_alive(names.iter().map(String::as_str))
        })
    }

    /// Whether every running node lists every other running node alive in its current life:
    /// stricter than [`Net::all_alive`], which a stale identity still listed alive passes.
    pub fn all_hold_current_identities(&self) -> bool {
        let running = self.running();
        let current: Vec<&NodeIdentity> = running
            .iter()
            .map(|&i| self.gossip_node(i).identity())
            .collect();
        running.iter().all(|&at| {
            let node = self.gossip_node(at);
            current.iter().all(|&id| {
                id == node.identity()
                    || node
                        .peer(&id.name)
                        .is_some_and(|m| m.status == MemberStatus::Alive && m.identity == *id)
            })
        })
    }

    /// Whether every running node other than `of` sees `of` with `status`.
    pub fn all_see(&self, of: usize, status: MemberStatus) -> bool {
        self.running()
            .into_iter()
            .filter(|&at| at != of)
            .all(|at| self.status(at, of) == Some(status))
    }

    /// Runs in steps until `cond` holds or `limit` passes; returns the time it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let step = Duration::from_millis(100);
        while self.now - start < limit {
            if cond(self) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        cond(self).then(|| self.now - start)
    }
}

fn random_up_to(rng: &mut StdRng, most: Duration) -> Duration {
    Duration::from_micros(rng.random_range(0..=most.as_micros() as u64))
}

/// `n` nodes, all joined through node 0, converged.
pub fn cluster(n: usize, seed: u64) -> Net {
    cluster_with(n, seed, GossipConfig::lan("test"))
}

/// `n` nodes with `config` and gossip encrypted with [`key`]`(1)`, all joined through node 0,
/// converged.
pub fn cluster_with(n: usize, seed: u64, config: GossipConfig) -> Net {
    cluster_keyed(n, seed, config, &key(1))
}

/// `n` nodes with `config` and `keyring` (empty: plaintext), all joined through node 0,
/// converged.
pub fn cluster_keyed(n: usize, seed: u64, config: GossipConfig, keyring: &Keyring) -> Net {
    let mut net = Net::new(seed);
    net.config = config;
    form_cluster(net, n, keyring)
}

/// Virtual time between two nodes joining while a cluster forms. Agents never start in the
/// same microsecond, and joins made all at once make every node gossip every join at the same
/// time: datagrams in flight were the largest allocation (101 of 303 MB at 1,000 nodes, by
/// heaptrack), and at 2,000 nodes spacing cut max RSS from 1.40 to 0.77 GB and wall time from
/// 62 s to 45 s.
pub const JOIN_SPACING: Duration = Duration::from_micros(200);

/// Starts `n` nodes in `net` with `keyring`, joins them through node 0 one every
/// [`JOIN_SPACING`] and runs until they converge. Whatever `net` was set to (configuration,
/// whether it keeps events) holds from the first node on.
pub fn form_cluster(mut net: Net, n: usize, keyring: &Keyring) -> Net {
    for i in 0..n {
        net.start(i, 1, keyring.clone());
    }
    for i in 1..n {
        net.join(i, 0).expect("join through the seed");
        net.run_for(JOIN_SPACING);
    }
    // Joins spread by gossip, which may miss a member now and then; push-pull repairs it
    // within one period (30 s up to 32 members, 60 s up to 64, …).
    let limit = Duration::from_secs(150);
    let took = net.run_until(limit, Net::all_alive);
    assert!(
        took.is_some(),
        "{n} nodes did not converge within {limit:?}"
    );
    net
}
