//! Service identity and the decisions of murmur's data plane.
//!
//! - [`identity`]: trust domains and SPIFFE service ids;
//! - [`ca`]: the built-in certificate authority (roots, leaf certificates);
//! - [`roots`]: which replicated root signs and which are trusted (rotation overlap);
//! - [`authorize`]: may this caller reach this service (trust domain, intentions, default);
//! - [`tls`]: mutual-TLS QUIC configurations from a leaf, its key and the roots;
//!
//! What it is **not** responsible for: sockets, files and clocks. The agent stores the CA key
//! and serves the HTTP endpoints; times and serial numbers come in as arguments.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The QUIC implementation, re-exported so drivers use the very version these configs are for.
pub use quinn;

pub mod authorize;
pub mod ca;
pub mod identity;
pub mod roots;
pub mod tls;
