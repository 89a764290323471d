//! The tokio driver of the gossip cores: for each [`Pool`], a datagram reader, a stream
//! acceptor and a timer heap, and the outputs its member asks for carried out.
//!
//! Each pool's [`PoolMember`] sits behind a lock that is held only for one core call and the
//! draining of its outputs; sending datagrams is non-blocking (`try_send_to`), so no task ever
//! waits on the lock for I/O and the event loop cannot stall behind a slow peer.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use murmur_catalog::{Change, Replica};
use murmur_federation::scope;
use murmur_gossip::{
    KeyringOp, MemberEventKind, Output, PoolMember, SecretKey, StreamReply, TimerEvent,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::persist::DataDir;
use super::pool::{DueTimer, Inbound, Pool};
use super::store::Persister;
use super::stream::{self, EXCHANGE_TIMEOUT};
use super::view::View;
use super::watchers::{Touched, Watchers};
use super::{tethers, unreachable};

/// Most stream requests (push-pull, keyring) served at once; more are dropped and counted, and
/// the peer retries at its next push-pull.
const MAX_CONCURRENT_STREAMS: usize = 256;
/// Most agent requests (leaf signing, forwarded requests) answered at once; more are refused
/// with a reason, and the asker tries another agent.
const MAX_CONCURRENT_ANSWERS: usize = 1024;

/// Why a WAN operation is refused on an agent that does not serve as a gateway.
pub const NOT_A_GATEWAY: &str = "this agent is not one of its datacenter's WAN gateways: ask one that is (see the murmur-wan-gateway node meta), or start agents with --wan-eligible";

/// How often the agent checks whether the journal wants compacting.
const COMPACT_CHECK: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch: the only place the replica's wall clock comes from.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Monotonic time since this process first asked: what the cores measure round trips on.
pub fn elapsed() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Which pool a peer's request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From an agent of this datacenter.
    Lan,
    /// From another datacenter's gateway (this agent serves as one).
    Wan,
}

/// An answer being worked out for a peer.
pub type PendingAnswer = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Answers one kind of peers' agent requests (signing a mesh leaf, a request forwarded to
/// this datacenter), which the gossip core carries sealed but does not interpret. The
/// answer is a future: a forwarded blocking query may take minutes, and it must not hold a
/// runtime thread or a gossip stream slot while it waits.
pub trait PeerRequests: Send + Sync {
    /// The answer to a request with input `body` that arrived `via` a pool, or why there is
    /// none. The handler bounds its own time.
    fn answer(&self, agent: Arc<Agent>, via: Via, body: Vec<u8>) -> PendingAnswer;
}

/// A running agent: its pools plus the handles their tasks share.
pub struct Agent {
    /// The datacenter's pool: every agent of the datacenter, the replica of its catalog.
    lan: Arc<Pool>,
    /// The pool linking datacenters, while this agent serves as a gateway.
    wan: RwLock<Option<Arc<Pool>>>,
    data: Option<DataDir>,
    /// Bumped with every delivered user event; blocking event queries watch it.
    pub event_index: watch::Sender<u64>,
    /// Blocking catalog and KV queries, by what they read; a change wakes only its own.
    pub watchers: Arc<Watchers>,
    /// Who answers peers' agent requests, by kind (set after start).
    peer_requests: RwLock<HashMap<&'static str, Arc<dyn PeerRequests>>>,
    /// Bounds the agent requests being answered at once, apart from the gossip streams'
    /// own bound, since some (forwarded blocking queries) wait for minutes.
    answering: Arc<Semaphore>,
}

impl Agent {
    /// Starts the LAN pool around `member` (its UDP reader, TCP acceptor and timer tasks);
    /// with a persister, every change of its replica is journaled through it.
    pub fn start(
        member: PoolMember,
        udp: UdpSocket,
        tcp: TcpListener,
        data: Option<DataDir>,
        persister: Option<Persister>,
    ) -> anyhow::Result<Arc<Self>> {
        let (lan, inbound) = Pool::new("lan", member, udp, persister)?;
        let agent = Arc::new(Self {
            lan: lan.clone(),
            wan: RwLock::default(),
            data,
            event_index: watch::Sender::new(1),
            watchers: Arc::default(),
            peer_requests: RwLock::default(),
            answering: Arc::new(Semaphore::new(MAX_CONCURRENT_ANSWERS)),
        });
        agent.run_pool(&lan, tcp, inbound);
        Ok(agent)
    }

    /// Spawns the tasks that drive `pool`: datagrams in, streams in, timers, tethers,
    /// compaction.
    fn run_pool(self: &Arc<Self>, pool: &Arc<Pool>, tcp: TcpListener, inbound: Inbound) {
        let tasks = [
            tokio::spawn(self.clone().read_datagrams(pool.clone())),
            tokio::spawn(self.clone().accept_streams(pool.clone(), tcp)),
            tokio::spawn(self.clone().run_timers(pool.clone(), inbound.due)),
            tokio::spawn(tethers::run(self.clone(), pool.clone(), inbound.tethers)),
        ];
        for task in tasks {
            pool.drives(task.abort_handle());
        }
        match unreachable::enable(&pool.udp) {
            Ok(()) => {
                pool.drives(tokio::spawn(self.clone().read_bounces(pool.clone())).abort_handle())
            }
            Err(err) => tracing::warn!(
                pool = pool.name,
                %err,
                "cannot read bounced datagrams: a crashed member is detected by probes alone"
            ),
        }
        if pool.persister.is_some() {
            pool.drives(tokio::spawn(compact_when_due(pool.clone())).abort_handle());
        }
        // The core queued its first timers when it was built.
        self.with_pool(pool, |_| ());
    }

    /// Runs one call on the LAN pool's core, then carries out what it asked for.
    pub fn with_node<R>(self: &Arc<Self>, call: impl FnOnce(&mut PoolMember) -> R) -> R {
        self.with_pool(&self.lan, call)
    }

    /// Runs one call on `pool`'s core, then carries out what it asked for. Journal entries
    /// are queued for disk before the lock is released, so they reach the journal in the
    /// order the replica made them.
    pub(super) fn with_pool<R>(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        call: impl FnOnce(&mut PoolMember) -> R,
    ) -> R {
        let mut touched = Touched::default();
        let relay_to = self.relay_target(pool);
        let mut relayed = Vec::new();
        let (result, outputs) = {
            let mut member = pool.lock();
            member.set_now(wall_ms(), elapsed());
            let result = call(&mut member);
            let mut outputs = Vec::new();
            while let Some(output) = member.poll_output() {
                match output {
                    Output::Persist(entries) => {
                        if relay_to.is_some() {
                            relayed.extend(scope::global_changes(&entries));
                        }
                        // Queries read the LAN replica only; the WAN one holds copies.
                        if Arc::ptr_eq(pool, &self.lan) {
                            touched.note_entries(&entries);
                        }
                        if let Some(persister) = &pool.persister {
                            persister.append(entries);
                        }
                    }
                    output => {
                        if matches!(output, Output::Member(_)) {
                            touched.note_membership();
                        }
                        outputs.push(output);
                    }
                }
            }
            (result, outputs)
        };
        self.watchers.wake(&touched);
        for output in outputs {
            self.dispatch(pool, output);
        }
        if let Some(to) = relay_to
            && !relayed.is_empty()
        {
            self.relay(&to, relayed);
        }
        result
    }

    /// Runs a read-only `call` on a view of the local datacenter (the LAN pool's replica and
    /// membership); reads run in parallel with each other, so a query load does not queue
    /// behind one lock. Reads that must see the clock advance or drain outputs use
    /// [`Agent::with_node`].
    pub fn view<R>(&self, call: impl FnOnce(&View<'_>) -> R) -> R {
        call(&View::new(&self.lan.read()))
    }

    /// Makes a local change to the replica and returns once it is durable (at once without
    /// a data dir): what the API calls before it acknowledges a write.
    pub async fn write<R>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Replica, u64) -> R,
    ) -> anyhow::Result<R> {
        let result = self.with_node(|n| n.write(change));
        if let Some(persister) = &self.lan.persister {
            persister.wait_durable(persister.last_queued()).await?;
        }
        Ok(result)
    }

    /// Sets who answers peers' agent requests of `kind`.
    pub fn serve_peer_requests(&self, kind: &'static str, handler: Arc<dyn PeerRequests>) {
        self.peer_requests
            .write()
            .expect("peer request handlers poisoned")
            .insert(kind, handler);
    }

    /// Asks the agent at `to` (of this datacenter) to run its handler `kind` on `body`.
    pub async fn ask_peer(
        self: &Arc<Self>,
        to: SocketAddr,
        kind: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Vec<u8>> {
        self.ask(Via::Lan, to, kind, body, EXCHANGE_TIMEOUT).await
    }

    /// Asks the agent at `to`, a member of the pool `via`, to run its handler `kind` on
    /// `body`, waiting at most `within` for the answer. Asking `via` the WAN pool needs this
    /// agent to serve as a gateway.
    pub async fn ask(
        self: &Arc<Self>,
        via: Via,
        to: SocketAddr,
        kind: &str,
        body: Vec<u8>,
        within: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let pool = match via {
            Via::Lan => self.lan.clone(),
            Via::Wan => self.wan().context(NOT_A_GATEWAY)?,
        };
        let request = self.with_pool(&pool, |n| n.node_mut().agent_request(kind, body));
        let reply = stream::exchange_within(to, &request, within).await?;
        Ok(self.with_pool(&pool, |n| n.node_mut().open_agent_reply(&reply))?)
    }

    /// The answer of this agent's handler `kind` to a peer's request.
    async fn answer_peer(
        self: &Arc<Self>,
        via: Via,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let handler = self
            .peer_requests
            .read()
            .expect("peer request handlers poisoned")
            .get(kind)
            .cloned();
        let Some(handler) = handler else {
            return Err(format!(
                "this agent answers no agent requests of kind {kind:?}"
            ));
        };
        let Ok(_slot) = self.answering.clone().try_acquire_owned() else {
            metrics::counter!("murmur_agent_requests_refused_total").increment(1);
            return Err("this agent answers too many agent requests at once: ask another".into());
        };
        handler.answer(self.clone(), via, body).await
    }

    fn dispatch(self: &Arc<Self>, pool: &Arc<Pool>, output: Output) {
        match output {
            Output::Datagram { to, bytes } => {
                if let Err(err) = pool.udp.try_send_to(&bytes, to) {
                    metrics::counter!("murmur_gossip_send_errors_total").increment(1);
                    tracing::debug!(pool = pool.name, %to, %err, "datagram not sent");
                }
            }
            Output::Timer { after, timer } => {
                // The receiver lives as long as the runtime; a closed channel means shutdown.
                let _ = pool.timers.send((Instant::now() + after, timer));
            }
            Output::Exchange { to, request } => {
                let (agent, pool) = (self.clone(), pool.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = match stream::exchange(to, &request).await {
                        Ok(reply) => agent
                            .with_pool(&pool, |n| n.handle_reply(to, &reply))
                            .map_err(anyhow::Error::from),
                        Err(err) => {
                            if stream::refused(&err) {
                                // The host answered for the member: nobody listens there.
                                agent.with_pool(&pool, |n| n.handle_unreachable(to));
                            }
                            Err(err)
                        }
                    };
                    metrics::histogram!("murmur_exchange_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if let Err(err) = outcome {
                        metrics::counter!("murmur_exchange_errors_total").increment(1);
                        tracing::debug!(pool = pool.name, %to, "stream exchange failed: {err:#}");
                    }
                });
            }
            Output::Persist(_) => unreachable!("journal entries are queued under the lock"),
            Output::Member(event) => {
                let name = &event.member.name;
                let addr = event.member.addr;
                match event.kind {
                    MemberEventKind::Failed => {
                        tracing::warn!(pool = pool.name, member = %name, %addr, "member failed")
                    }
                    kind => {
                        tracing::info!(pool = pool.name, member = %name, %addr, event = ?kind, "member")
                    }
                }
                metrics::counter!("murmur_member_events_total", "kind" => format!("{:?}", event.kind).to_lowercase())
                    .increment(1);
            }
            Output::UserEvent(event) => {
                tracing::info!(name = %event.name, id = %event.id_string(), ltime = event.ltime, "user event");
                self.event_index.send_modify(|i| *i += 1);
            }
            Output::KeyringChanged => {
                let keys = self.with_pool(pool, |n| n.node().keyring().keys().to_vec());
                self.save_keyring(&keys);
            }
        }
    }

    fn save_keyring(&self, keys: &[SecretKey]) {
        if let Some(data) = &self.data
            && let Err(err) = data.save_keyring(keys)
        {
            tracing::error!("could not persist the keyring: {err:#}");
        }
    }

    async fn read_datagrams(self: Arc<Self>, pool: Arc<Pool>) {
        let mut buf = vec![0u8; 65536];
        loop {
            match pool.udp.recv_from(&mut buf).await {
                Ok((len, _from)) => self.with_pool(&pool, |n| n.handle_datagram(&buf[..len])),
                Err(err) => tracing::debug!(pool = pool.name, %err, "udp receive error"),
            }
        }
    }

    /// Hands each bounced datagram's destination to the core as evidence of a crash.
    async fn read_bounces(self: Arc<Self>, pool: Arc<Pool>) {
        loop {
            match unreachable::next_refused(&pool.udp).await {
                Ok(to) => {
                    metrics::counter!("murmur_gossip_bounces_total", "pool" => pool.name)
                        .increment(1);
                    self.with_pool(&pool, |n| n.handle_unreachable(to));
                }
                Err(err) => {
                    tracing::debug!(pool = pool.name, %err, "error queue read failed");
                    // An unexpected error repeats at once; do not spin on it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn accept_streams(self: Arc<Self>, pool: Arc<Pool>, tcp: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_STREAMS));
        loop {
            let Ok((conn, peer)) = tcp.accept().await else {
                continue;
            };
            // Each stream is time-bounded; the cap also bounds how many can pile up at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("murmur_gossip_streams_refused_total").increment(1);
                tracing::debug!(pool = pool.name, %peer, "too many concurrent streams; connection dropped");
                continue;
            };
            let (agent, pool) = (self.clone(), pool.clone());
            let via = if Arc::ptr_eq(&pool, &self.lan) {
                Via::Lan
            } else {
                Via::Wan
            };
            tokio::spawn(async move {
                if let Err(err) = agent.serve_stream(&pool, via, conn, slot).await {
                    tracing::debug!(pool = pool.name, %peer, "stream failed: {err:#}");
                }
            });
        }
    }

    /// Serves one stream: reads the request, answers it, writes the reply. Reading and
    /// writing are time-bounded; an agent request bounds its own answer, and gives back the
    /// stream `slot` while it is worked out.
    async fn serve_stream(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        via: Via,
        mut conn: TcpStream,
        slot: OwnedSemaphorePermit,
    ) -> anyhow::Result<()> {
        let request = tokio::time::timeout(EXCHANGE_TIMEOUT, stream::read_frame(&mut conn))
            .await
            .context("no request within the exchange time-out")??;
        let reply = match self.with_pool(pool, |n| n.serve_stream(&request)) {
            StreamReply::Reply(reply) => reply,
            StreamReply::Tether(subject) => {
                // Held for as long as it lasts: it gives back its stream slot.
                drop(slot);
                if pool.tethers.try_send((conn, subject)).is_err() {
                    metrics::counter!("murmur_gossip_tethers_refused_total", "pool" => pool.name)
                        .increment(1);
                }
                return Ok(());
            }
            StreamReply::ForAgent { kind, body } => {
                drop(slot);
                let answer = self.answer_peer(via, &kind, body).await;
                self.with_pool(pool, |n| n.node_mut().agent_reply(answer))
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, stream::write_frame(&mut conn, &reply))
            .await
            .context("the reply was not taken within the exchange time-out")?
    }

    async fn run_timers(
        self: Arc<Self>,
        pool: Arc<Pool>,
        mut incoming: mpsc::UnboundedReceiver<DueTimer>,
    ) {
        let mut due: BTreeMap<(Instant, u64), TimerEvent> = BTreeMap::new();
        let mut seq = 0u64;
        loop {
            let next = due.keys().next().map(|(at, _)| *at);
            tokio::select! {
                received = incoming.recv() => {
                    let Some((at, timer)) = received else { return };
                    seq += 1;
                    due.insert((at, seq), timer);
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    while let Some(entry) = due.first_entry() {
                        if entry.key().0 > now { break; }
                        let timer = entry.remove();
                        self.with_pool(&pool, |n| n.handle_timer(timer));
                    }
                }
            }
        }
    }

    /// Joins the LAN pool through each address (a push-pull); returns how many answered, or
    /// every reason when none did.
    pub async fn join(self: &Arc<Self>, addrs: &[SocketAddr]) -> Result<usize, Vec<String>> {
        self.join_pool(&self.lan.clone(), addrs).await
    }

    /// Like [`Agent::join`], for the WAN pool; refused when this agent is not a gateway.
    pub async fn join_wan(self: &Arc<Self>, addrs: &[SocketAddr]) -> Result<usize, Vec<String>> {
        match self.wan() {
            Some(wan) => self.join_pool(&wan, addrs).await,
            None => Err(vec![NOT_A_GATEWAY.to_owned()]),
        }
    }

    async fn join_pool(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        addrs: &[SocketAddr],
    ) -> Result<usize, Vec<String>> {
        let mut joined = 0;
        let mut errors = Vec::new();
        for &addr in addrs {
            if addr == pool.gossip_addr {
                errors.push(format!("{addr} is this agent's own address"));
                continue;
            }
            let request = self.with_pool(pool, |n| n.node_mut().push_pull_request());
            let outcome = match stream::exchange(addr, &request).await {
                Ok(reply) => self
                    .with_pool(pool, |n| n.handle_reply(addr, &reply))
                    .map_err(anyhow::Error::from),
                Err(err) => Err(err),
            };
            match outcome {
                Ok(()) => joined += 1,
                Err(err) => errors.push(format!("{addr}: {err:#}")),
            }
        }
        if joined > 0 { Ok(joined) } else { Err(errors) }
    }

    /// Where a gateway relays the global changes `pool` took: WAN to LAN, and LAN to WAN
    /// while serving. None on other agents, which relay nothing.
    fn relay_target(&self, pool: &Arc<Pool>) -> Option<Arc<Pool>> {
        let wan = self.wan()?;
        if Arc::ptr_eq(pool, &self.lan) {
            Some(wan)
        } else {
            Some(self.lan.clone())
        }
    }

    /// Hands `changes` to `to`'s replica, which spreads those that are news to it. The relay
    /// back (from `to`'s own journal) finds them redundant, so relaying ends after one hop.
    fn relay(self: &Arc<Self>, to: &Arc<Pool>, changes: Vec<Change>) {
        let offered = changes.len();
        let fresh = self.with_pool(to, |n| n.relay(changes));
        metrics::counter!("murmur_federation_relayed_total", "to" => to.name)
            .increment(fresh as u64);
        tracing::debug!(to = to.name, offered, fresh, "global changes relayed");
    }

    /// Starts serving as a gateway: the WAN pool around `member`, on `udp` and `tcp`.
    pub fn start_wan(
        self: &Arc<Self>,
        member: PoolMember,
        udp: UdpSocket,
        tcp: TcpListener,
    ) -> anyhow::Result<()> {
        let (wan, inbound) = Pool::new("wan", member, udp, None)?;
        *self.wan.write().expect("wan slot poisoned") = Some(wan.clone());
        self.run_pool(&wan, tcp, inbound);
        // The WAN replica starts with this datacenter's global data; the other datacenters'
        // arrives by the WAN pool's gossip and anti-entropy, and is relayed to the LAN.
        let global = scope::global_entries(self.lan.read().replica());
        self.relay(&wan, global);
        Ok(())
    }

    /// Stops serving as a gateway: leaves the WAN pool, gives the leave time to spread, and
    /// closes the pool's sockets.
    pub async fn stop_wan(self: &Arc<Self>) {
        let Some(wan) = self.wan() else { return };
        self.with_pool(&wan, PoolMember::leave);
        tokio::time::sleep(super::LEAVE_PROPAGATION).await;
        self.wan.write().expect("wan slot poisoned").take();
        wan.stop();
    }

    /// The WAN pool, while this agent serves as a gateway.
    pub fn wan(&self) -> Option<Arc<Pool>> {
        self.wan.read().expect("wan slot poisoned").clone()
    }

    /// Runs a read-only `call` on the WAN pool's member, if this agent serves as a gateway.
    pub fn read_wan<R>(&self, call: impl FnOnce(&PoolMember) -> R) -> Option<R> {
        self.wan().map(|wan| call(&wan.read()))
    }

    /// Runs one call on the WAN pool's member and carries out what it asks for, if this
    /// agent serves as a gateway.
    pub fn with_wan<R>(self: &Arc<Self>, call: impl FnOnce(&mut PoolMember) -> R) -> Option<R> {
        self.wan().map(|wan| self.with_pool(&wan, call))
    }

    /// Applies a keyring step here and on every active member; returns each member's keys.
    pub async fn keyring(self: &Arc<Self>, op: KeyringOp) -> anyhow::Result<KeyringReport> {
        let (local, peers) = self.with_node(|n| {
            let n = n.node_mut();
            n.apply_keyring(&op)?;
            let peers: Vec<SocketAddr> = n
                .members()
                .iter()
                .filter(|m| m.status.is_active() && m.identity.addr != n.identity().addr)
                .map(|m| m.identity.addr)
                .collect();
            Ok::<_, murmur_gossip::GossipError>((n.keyring().keys().to_vec(), peers))
        })?;
        if op != KeyringOp::List {
            self.save_keyring(&local);
        }
        let mut report = KeyringReport {
            nodes: 1 + peers.len(),
            keys: vec![local],
            errors: Vec::new(),
        };
        let requests = peers.into_iter().map(|peer| {
            let agent = self.clone();
            let request = self.with_node(|n| n.node_mut().keyring_request(op.clone()));
            async move {
                let reply = stream::exchange(peer, &request).await?;
                agent
                    .with_node(|n| n.node_mut().handle_keyring_reply(&reply))
                    .map_err(anyhow::Error::from)
            }
        });
        let handles: Vec<_> = requests.map(tokio::spawn).collect();
        for handle in handles {
            match handle.await.context("keyring request task")? {
                Ok(keys) => report.keys.push(keys),
                Err(err) => report.errors.push(format!("{err:#}")),
            }
        }
        Ok(report)
    }

    /// Leaves the cluster on purpose (the WAN pool too, when a gateway); the caller keeps the
    /// runtime up briefly so it spreads.
    pub fn leave(self: &Arc<Self>) {
        self.with_wan(PoolMember::leave);
        self.with_node(PoolMember::leave);
    }
}

/// Compacts `pool`'s journal into a snapshot whenever its writer asks for one.
async fn compact_when_due(pool: Arc<Pool>) {
    let Some(persister) = &pool.persister else {
        return;
    };
    let mut every = tokio::time::interval(COMPACT_CHECK);
    loop {
        every.tick().await;
        if persister.wants_snapshot() {
            let member = pool.read();
            persister.snapshot(member.replica().snapshot());
            tracing::info!(
                pool = pool.name,
                index = member.replica().index(),
                "journal compacted into a snapshot"
            );
        }
    }
}

/// The keys every member holds after a keyring step.
pub struct KeyringReport {
    /// Members asked, this one included.
    pub nodes: usize,
    /// Each answering member's keys, primary first.
    pub keys: Vec<Vec<SecretKey>>,
    /// Why some members did not answer.
    pub errors: Vec<String>,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
