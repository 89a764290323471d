//! Service identity and the decisions of murmur's data plane.
//!
//! - [`identity`]: trust domains and SPIFFE service ids;
//! - [`ca`]: the built-in certificate authority (roots, leaf certificates);
//! - [`roots`]: which replicated root signs and which are trusted (rotation overlap);
//! - [`authorize`]: may this caller reach this service (trust domain, intentions, default);
//! - [`backoff`]: when to ask the agent again for a leaf it could not give yet;
//! - [`trust`]: the trust bundle: every datacenter's roots, each vouching only for leaves of
//!   its own datacenter;
//! - [`tls`]: mutual-TLS QUIC configurations from a leaf, its key and the trust bundle;
//! - [`udp`]: the endpoint's socket and the datagram size its connections may reach;
//! - [`busy_poll`]: keeping a proxy's thread awake for a short while after traffic;
//! - [`native`]: the SDK: `MeshClient::connect("db")` and `MeshListener::bind(…).accept()`
//!   give an application mesh identity, authorization and encryption without a proxy;
//!
//! What it is **not** responsible for: the agent's state. The decision modules (`identity`,
//! `ca`, `roots`, `authorize`, `trust`, `backoff`) take times and serial numbers as arguments and do no I/O; `tls`
//! builds configurations, `udp` sockets, and `busy_poll` a task that keeps a runtime's thread
//! polling (it reads the clock); only `native` talks to the network (QUIC, and the local
//! agent's HTTP API).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The QUIC implementation, re-exported so drivers use the very version these configs are for.
pub use quinn;

pub mod agent_api;
pub mod authorize;
pub mod backoff;
pub mod busy_poll;
pub mod ca;
pub mod gateway;
pub mod identity;
pub mod initial;
pub mod native;
pub mod roots;
pub mod tls;
pub mod trust;
pub mod udp;
