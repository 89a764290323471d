//! Federation across datacenters with no primary: the decisions, sans-IO.
//!
//! Consul federates through servers, every server of every datacenter in one WAN pool, and a
//! primary datacenter that the others depend on for intentions, ACLs and the CA. murmur has
//! neither: a few agents of each datacenter, chosen by every agent alike without an election
//! ([`gateways`]), take part in one WAN pool and relay between it and their LAN pool
//! the data every datacenter shares ([`scope`]); a request for another datacenter travels
//! through them ([`forward`]). Every agent lists the datacenters, nearest first, from the
//! directory the gateways publish ([`directory`]).
//!
//! Like `gossip/`, this crate takes what it decides on as inputs and returns decisions: no
//! clock, no sockets, no randomness. The agent and the simulator drive the same functions.

pub mod directory;
pub mod forward;
pub mod gateways;
pub mod scope;
