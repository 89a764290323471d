//! murmur's membership core: who is in the cluster, who failed, who left, and small user
//! events spread to all — as a sans-IO state machine.
//!
//! Built on [`foca`]'s SWIM (with suspicion and infection-style dissemination), plus what foca
//! leaves to its user and murmur needs:
//! - identities that survive restarts ([`NodeIdentity`]: a new generation supersedes the ghost);
//! - a sealed wire format: protocol version and cluster id on every packet, XChaCha20-Poly1305
//!   under a rotating [`Keyring`];
//! - periodic full-state push-pull over a stream, which also is how a member joins via a seed;
//! - re-contacting the seeds when a member finds itself alone;
//! - member events with serf's statuses (alive, suspect, leaving, left, failed);
//! - user events, deduplicated, in a bounded buffer.
//!
//! Membership ([`Node`]) and the replicated state it carries ([`Replication`]: spreading
//! changes, anti-entropy, reaping) are separate objects, joined in a [`PoolMember`]; an agent
//! may run two pools (LAN and WAN), each a `PoolMember` over its own replica.
//!
//! What this crate is **not** responsible for: sockets, timers, clocks, threads, files.
//! [`PoolMember`] takes datagrams, stream frames and expired timers as method calls and queues
//! [`Output`]s (datagrams to send, timers to set, streams to open, events). The agent drives it
//! with tokio; tests and the simulator drive it with a virtual network and clock. Randomness
//! comes from the RNG the caller hands to [`PoolMember::new`], so a seed fixes a run.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod broadcast;
mod config;
mod digest;
mod events;
mod identity;
mod keyring;
mod members;
mod node;
mod pool_member;
pub mod rendezvous;
mod repeats;
mod replication;
mod stats;
pub mod vivaldi;
mod wire;

pub use config::{GossipConfig, Profile};
pub use events::{EventFilter, EventLog, MAX_EVENT_BYTES, RECENT_EVENTS, UserEvent};
pub use identity::{
    Identities, IdentityFields, MAX_DATACENTER_LEN, MAX_NAME_LEN, MAX_TAGS_BYTES, NodeIdentity,
};
pub use keyring::{KEY_LEN, Keyring, KeyringOp, SecretKey};
pub use members::{MemberEvent, MemberEventKind, MemberState, MemberStatus, MemberView};
pub use node::{Backlogs, Node, Output, TimerEvent};
pub use pool_member::{PoolMember, StreamReply};
pub use replication::Replication;
pub use stats::{DropCounts, Stats, UnreachableCounts};
pub use wire::{
    DropReason, MAX_DATAGRAM, MAX_FRAME, PROTOCOL_VERSION, decode as decode_bounded,
    encode as encode_bounded,
};

/// What can go wrong in the membership core. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The node name, datacenter or tags break a limit.
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    /// A configuration value no peer could agree with.
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
    /// A gossip key that is not 32 bytes of base64.
    #[error("{0}")]
    InvalidKey(String),
    /// A keyring step that cannot be applied.
    #[error("keyring: {0}")]
    Keyring(String),
    /// A user event over the size limit.
    #[error(
        "event is {size} bytes (name + payload + filter); the limit is {limit}: send a reference to the data instead of the data"
    )]
    EventTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A user event with a bad name or filter.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The peer refused the request and said why.
    #[error("refused by the peer: {0}")]
    Rejected(String),
    /// The peer's reply could not be read.
    #[error("could not read the peer's reply: {0}")]
    UnreadableReply(String),
}
