//! Certificate-authority roots of the service mesh, replicated as shared data under `ca/root/`
//! so every agent trusts the same roots and any agent can serve them, with no leader.
//!
//! A root is written once, when an agent holding its key publishes it; rotation adds a newer
//! one. Which root signs and which are still trusted is decided from the set by every agent
//! alike (in `murmur-proxy`), so there is no "active" flag that two agents could set at once.

use serde::{Deserialize, Serialize};

/// Key prefix of CA roots.
pub const CA_ROOT_PREFIX: &str = "ca/root/";

/// One root certificate (never its key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CaRoot {
    /// Key id of the root, colon-separated hex, as Consul shows `SigningKeyID`.
    pub id: String,
    /// Human name.
    pub name: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// When it was created (wall ms): the newest root signs.
    pub created_ms: u64,
    /// Its validity, unix seconds.
    pub not_before_s: u64,
    /// Its validity, unix seconds.
    pub not_after_s: u64,
}

impl CaRoot {
    /// The shared-map key of this root.
    pub fn key(id: &str) -> String {
        format!("{CA_ROOT_PREFIX}{id}")
    }

    pub(crate) fn weight(&self) -> usize {
        32 + self.id.len() + self.name.len() + self.cert_pem.len()
    }
}
