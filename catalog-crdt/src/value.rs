//! What the shared key space holds, and the unit of replication.
//!
//! KV entries, intentions, config entries, external nodes, CA roots, coordinates, the
//! datacenter directory, prepared queries and ACL tokens and policies live in **one** [`SharedMap`] under disjoint key prefixes (`kv/`,
//! `intention/`, `config/`, `external/`, `ca/root/`, `coordinate/`, `datacenter/`, `query/`, `acl/token/`, `acl/policy/`, `acl/role/`, `acl/revoked/`), so one digest, one anti-entropy exchange and one
//! journal cover them all. A value whose variant does not match its key's prefix is malformed
//! and refused, so a hostile peer cannot plant an intention under a KV key.
//!
//! [`SharedMap`]: crate::SharedMap

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::acl::{
    ACL_POLICY_PREFIX, ACL_REVOKED_PREFIX, ACL_ROLE_PREFIX, ACL_TOKEN_PREFIX, AclPolicy,
    AclRevocation, AclRole, AclToken,
};
use crate::ca_root::{CA_ROOT_PREFIX, CaRoot};
use crate::catalog::NodeRecord;
use crate::coordinate::{COORDINATE_PREFIX, Coordinate};
use crate::directory::{DIRECTORY_PREFIX, Gateway};
use crate::external::{EXTERNAL_PREFIX, ExternalPart};
use crate::hlc::Hlc;
use crate::intentions::Intention;
use crate::kv::KvValue;
use crate::patch::RecordPatch;
use crate::query::{PreparedQuery, QUERY_PREFIX};
use crate::register::{Lww, Owned, Version};
use crate::shared::is_background_key;
use crate::summary::{DcSummary, SUMMARY_PREFIX};

/// Key prefix of KV entries.
pub const KV_PREFIX: &str = "kv/";
/// Key prefix of intentions.
pub const INTENTION_PREFIX: &str = "intention/";
/// Key prefix of config entries.
pub const CONFIG_PREFIX: &str = "config/";

/// A config entry (Consul's `service-defaults`, `proxy-defaults`, …): kind, name and the body
/// as JSON text, which murmur stores and returns without interpreting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// Kind, e.g. `service-defaults`.
    pub kind: String,
    /// Name within the kind.
    pub name: String,
    /// The entry as JSON.
    pub body: String,
}

impl ConfigEntry {
    /// The shared-map key of a config entry.
    pub fn key(kind: &str, name: &str) -> String {
        format!("{CONFIG_PREFIX}{kind}/{name}")
    }
}

/// One value of the shared key space.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A KV entry, under `kv/`.
    Kv(KvValue),
    /// An intention, under `intention/`.
    Intention(Box<Intention>),
    /// A config entry, under `config/`.
    Config(Box<ConfigEntry>),
    /// A part of an external node, under `external/`.
    External(Box<ExternalPart>),
    /// A CA root certificate, under `ca/root/`.
    CaRoot(Box<CaRoot>),
    /// A node's LAN coordinate, under `coordinate/`.
    Coordinate(Box<Coordinate>),
    /// A datacenter directory entry (one WAN gateway), under `datacenter/`.
    Gateway(Box<Gateway>),
    /// A prepared query, under `query/`.
    Query(Box<PreparedQuery>),
    /// A datacenter's catalog in brief, under `summary/`.
    Summary(Box<DcSummary>),
    /// An ACL token, under `acl/token/`.
    AclToken(Box<AclToken>),
    /// An ACL policy, under `acl/policy/`.
    AclPolicy(Box<AclPolicy>),
    /// A revoked ACL token, under `acl/revoked/`.
    AclRevoked(Box<AclRevocation>),
    /// An ACL role, under `acl/role/`.
    AclRole(Box<AclRole>),
}

/// Every key prefix of the shared map, one per [`Value`] variant (as [`Value::prefix`] names
/// them): where a tombstone, which carries no value to tell its kind, belongs. A variant whose
/// prefix is missing here has its deletions refused by every other replica.
pub const SHARED_PREFIXES: [&str; 13] = [
    KV_PREFIX,
    INTENTION_PREFIX,
    CONFIG_PREFIX,
    EXTERNAL_PREFIX,
    CA_ROOT_PREFIX,
    COORDINATE_PREFIX,
    DIRECTORY_PREFIX,
    QUERY_PREFIX,
    SUMMARY_PREFIX,
    ACL_TOKEN_PREFIX,
    ACL_POLICY_PREFIX,
    ACL_REVOKED_PREFIX,
    ACL_ROLE_PREFIX,
];

impl Value {
    /// The key prefix this variant must live under (one of [`SHARED_PREFIXES`]).
    pub fn prefix(&self) -> &'static str {
        match self {
            Self::Kv(_) => KV_PREFIX,
            Self::Intention(_) => INTENTION_PREFIX,
            Self::Config(_) => CONFIG_PREFIX,
            Self::External(_) => EXTERNAL_PREFIX,
            Self::CaRoot(_) => CA_ROOT_PREFIX,
            Self::Coordinate(_) => COORDINATE_PREFIX,
            Self::Gateway(_) => DIRECTORY_PREFIX,
            Self::Query(_) => QUERY_PREFIX,
            Self::Summary(_) => SUMMARY_PREFIX,
            Self::AclToken(_) => ACL_TOKEN_PREFIX,
            Self::AclPolicy(_) => ACL_POLICY_PREFIX,
            Self::AclRevoked(_) => ACL_REVOKED_PREFIX,
            Self::AclRole(_) => ACL_ROLE_PREFIX,
        }
    }

    /// Rough size in bytes, for budgets.
    fn weight(&self) -> usize {
        match self {
            Self::Kv(v) => v.value.len() + 8,
            Self::Intention(i) => i.weight(),
            Self::Config(c) => c.kind.len() + c.name.len() + c.body.len(),
            Self::External(p) => p.weight(),
            Self::CaRoot(r) => r.weight(),
            Self::Coordinate(c) => c.weight(),
            Self::Gateway(g) => g.weight(),
            Self::Query(q) => q.weight(),
            Self::Summary(s) => s.weight(),
            Self::AclToken(t) => t.weight(),
            Self::AclPolicy(p) => p.weight(),
            Self::AclRevoked(r) => r.weight(),
            Self::AclRole(r) => r.weight(),
        }
    }
}

/// One replicated change: what eager push carries, anti-entropy repairs and the journal keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// An owner's record (`None`: the owner left).
    Record {
        /// The owner's node name.
        owner: String,
        /// Its versioned record, shared rather than copied between the change that brought
        /// it, the replica, the journal and snapshots: a record is never edited in place (a
        /// new version is a new record), and at 1,000 simulated nodes the copies were a
        /// third of the memory (`Arc` is serialized as the record itself).
        register: Owned<Option<Arc<NodeRecord>>>,
    },
    /// A shared key (`None`: deleted).
    Shared {
        /// The full key, prefix included.
        key: String,
        /// Its stamped value.
        register: Lww<Value>,
    },
    /// The next version of an owner's record as its difference from the one before: what a
    /// change to a large record spreads as. Never journaled nor carried by anti-entropy: a
    /// replica that applies it keeps, journals and syncs the whole record it makes.
    Patch(Box<RecordPatch>),
}

/// A change named without its value: what a member offers before sending a large change, so
/// that a peer holding it already does not receive (and decode) another copy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKey {
    /// A record of `owner` at `version`.
    Record {
        /// The owner's node name.
        owner: String,
        /// The record's version.
        version: Version,
    },
    /// A shared key at `stamp`.
    Shared {
        /// The full key.
        key: String,
        /// The register's stamp.
        stamp: Hlc,
    },
}

impl Change {
    /// The name of this change, `None` for a patch (a patch is offered by nobody: it is
    /// small, and only worth having with its base).
    pub fn key(&self) -> Option<ChangeKey> {
        match self {
            Self::Record { owner, register } => Some(ChangeKey::Record {
                owner: owner.clone(),
                version: *register.stamp(),
            }),
            Self::Shared { key, register } => Some(ChangeKey::Shared {
                key: key.clone(),
                stamp: *register.stamp(),
            }),
            Self::Patch(_) => None,
        }
    }

    /// Rough encoded size in bytes, to keep messages under their limits without encoding twice.
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 48;
        OVERHEAD
            + match self {
                Self::Record { owner, register } => {
                    owner.len() + register.value().as_deref().map_or(0, NodeRecord::weight)
                }
                Self::Shared { key, register } => {
                    key.len() + register.value().as_ref().map_or(0, Value::weight)
                }
                Self::Patch(patch) => patch.weight(),
            }
    }

    /// The key this change is about: `Record` owners and `Shared` keys never collide because
    /// shared keys always carry a prefix with a `/` and node names cannot contain one.
    pub fn subject(&self) -> &str {
        match self {
            Self::Record { owner, .. } => owner,
            Self::Shared { key, .. } => key,
            Self::Patch(patch) => &patch.owner,
        }
    }

    /// Whether this change may spread at gossip's leisure ([`is_background_key`]).
    pub fn is_background(&self) -> bool {
        matches!(self, Self::Shared { key, .. } if is_background_key(key))
    }
}
