//! One gossip pool the agent takes part in: its member (membership and the replica it carries),
//! the UDP and TCP sockets it gossips on, the timers it asked for, and the journal its replica
//! is persisted to, if any.
//!
//! Every agent runs a LAN pool; federation adds a WAN pool on the agents selected as gateways.
//! Each pool keeps its own sockets and timer heap, so a timer or a datagram always reaches the
//! member that asked for it, and the pools' locks are independent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use murmur_gossip::{PoolMember, TimerEvent};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::store::Persister;
use super::tethers::{HANDOVER_QUEUE, Handover};

/// A timer a pool's member asked for, due at an instant.
pub(super) type DueTimer = (Instant, TimerEvent);

/// What the tasks driving a pool receive: the timers its member asks for, and the tethers
/// peers ask it to hold.
pub(super) struct Inbound {
    pub(super) due: mpsc::UnboundedReceiver<DueTimer>,
    pub(super) tethers: mpsc::Receiver<Handover>,
}

/// One gossip pool of this agent.
pub struct Pool {
    /// Which pool ("lan", "wan"): in log lines.
    pub name: &'static str,
    /// Written by gossip, timers and writes; read in parallel by queries (HTTP and DNS).
    member: RwLock<PoolMember>,
    pub(super) udp: Arc<UdpSocket>,
    pub(super) timers: mpsc::UnboundedSender<DueTimer>,
    /// Hands the tethers peers opened to the pool's tether task.
    pub(super) tethers: mpsc::Sender<Handover>,
    /// The journal writer of this pool's replica (none in `--dev`).
    pub(super) persister: Option<Persister>,
    /// Where the pool's gossip sockets listen.
    pub gossip_addr: SocketAddr,
    /// The tasks that drive the pool, stopped together when the agent leaves the pool (a
    /// gateway that steps down) so its sockets close.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Pool {
    /// A pool around `member` gossiping on `udp`, and what its driving tasks receive.
    pub(super) fn new(
        name: &'static str,
        member: PoolMember,
        udp: UdpSocket,
        persister: Option<Persister>,
    ) -> anyhow::Result<(Arc<Self>, Inbound)> {
        let gossip_addr = udp.local_addr()?;
        let (timers, due) = mpsc::unbounded_channel();
        let (tethers, handed) = mpsc::channel(HANDOVER_QUEUE);
        let pool = Self {
            name,
            member: RwLock::new(member),
            udp: Arc::new(udp),
            timers,
            tethers,
            persister,
            gossip_addr,
            tasks: Mutex::default(),
        };
        let inbound = Inbound {
            due,
            tethers: handed,
        };
        Ok((Arc::new(pool), inbound))
    }

    /// The member, for one read-only call; reads run in parallel with each other.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, PoolMember> {
        self.member.read().expect("pool lock poisoned")
    }

    /// Notes a task that drives the pool, for [`Pool::stop`].
    pub(super) fn drives(&self, task: AbortHandle) {
        self.tasks
            .lock()
            .expect("pool tasks lock poisoned")
            .push(task);
    }

    /// Stops the tasks that drive the pool; its sockets close with them.
    pub(super) fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .expect("pool tasks lock poisoned")
            .drain(..)
        {
            task.abort();
        }
    }

    /// The member, for one call that changes it.
    pub(super) fn lock(&self) -> RwLockWriteGuard<'_, PoolMember> {
        self.member.write().expect("pool lock poisoned")
    }
}
