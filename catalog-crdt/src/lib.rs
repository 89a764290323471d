//! murmur's replicated state and the rules by which replicas merge, with no I/O at all.
//!
//! This crate holds:
//! - [`Clock`] / [`Hlc`]: a hybrid logical clock, monotonic under clock skew, with a bound on how
//!   far a remote stamp may pull it forward;
//! - [`Register`]: a value with a stamp whose merge keeps the greater `(stamp, value)`, as
//!   [`Lww`] for shared data (any writer, HLC-stamped, tombstones for deletes) and [`Owned`] for
//!   a node's own record (single writer, [`Version`]-stamped);
//! - [`SharedMap`]: the shared key space, with local modify indexes ([`ModifyIndex`]) for
//!   blocking queries, bucket digests for anti-entropy, and tombstone collection;
//! - [`OwnedMap`]: one single-writer record per owner, reconciled by Scuttlebutt digests;
//! - [`NodeRecord`] and [`CatalogView`]: what a node's record holds and the catalog queries
//!   (services with tags, instances with aggregated health, synthetic member check);
//! - [`KvView`]: Consul's KV semantics (keys with separator, prefix indexes; local CAS in
//!   [`Replica::kv_write`]);
//! - [`Intention`]: service-to-service rules with Consul's precedence, [`check`] and [`matching`];
//! - [`ExternalNodes`]: nodes no agent runs, registered through the catalog API, kept as
//!   shared data part by part ([`ExternalPart`]) and read like any other node;
//! - [`CaRoot`]: the mesh CA's root certificates, replicated so every agent trusts the same;
//! - [`Coordinate`]: a node's place in Vivaldi space, to estimate round-trip times;
//! - [`PreparedQuery`]: stored service lookups with failover (global data);
//! - [`Gateway`]: the datacenter directory's entries, one per WAN gateway of each datacenter;
//! - [`Value`] and [`Change`]: what the shared key space holds and the unit of replication;
//!   [`RecordPatch`]: a change to a large record sent as its difference from the version before;
//! - [`Replica`]: one node's whole replicated state — applying peers' changes, the four-step
//!   anti-entropy exchange, tombstone GC, reset-from-peer, and the journal the agent persists.
//!
//! - the byte formats of the journal and snapshot ([`encode_record`], [`decode_journal`], …).
//!
//! What it is **not** responsible for: clocks (wall time is passed in), networks, files. The
//! gossip layer carries its deltas and digests; the agent persists it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod acl;
mod ca_root;
mod catalog;
mod coordinate;
mod directory;
mod external;
mod hlc;
mod intentions;
mod journal;
mod kv;
mod owned;
mod patch;
mod query;
mod register;
mod replica;
mod shared;
mod summary;
mod value;

pub use acl::{
    ACL_POLICY_PREFIX, ACL_PREFIX, ACL_REVOKED_PREFIX, ACL_ROLE_PREFIX, ACL_TOKEN_PREFIX,
    AclPolicy, AclRevocation, AclRole, AclToken,
};
pub use ca_root::{CA_ROOT_PREFIX, CaRoot, DcRoot};
pub use catalog::{
    CatalogView, Check, Health, Instance, MAX_RECORD_BYTES, MEMBER_CHECK_ID, NodeRecord, Service,
    ServiceSummary,
};
pub use coordinate::{COORDINATE_PREFIX, Coordinate, DIMENSIONS, ERROR_MAX, HEIGHT_MIN};
pub use directory::{DIRECTORY_PREFIX, Gateway};
pub use external::{
    EXTERNAL_PREFIX, ExternalEntry, ExternalNode, ExternalNodes, ExternalPart, PartKey,
};
pub use hlc::{Clock, ClockError, Hlc};
pub use intentions::{Action, Intention, MatchBy, WILDCARD, check, matching, ordered, uuid_text};
pub use journal::{
    JOURNAL_AFTER_SNAPSHOT_MAGIC, JOURNAL_MAGIC, JournalContents, JournalError, MAX_RECORD,
    SNAPSHOT_MAGIC, decode_journal, decode_snapshot, encode_record, encode_snapshot,
    journal_header, journal_header_after_snapshot,
};
pub use kv::{KvEntry, KvError, KvValue, KvView, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use owned::{Digest, DigestDiff, OwnedEntry, OwnedMap};
pub use patch::RecordPatch;
pub use query::{PreparedQuery, QUERY_PREFIX, QueryTemplate};
pub use register::{Lww, Owned, Register, Version};
pub use replica::{
    ApplyError, Journaled, KeySummary, Replica, ReplicaConfig, ReplicaStats, Snapshot, SyncDigest,
    SyncError, SyncPush, SyncPushReply, SyncSummary,
};
pub use shared::{BUCKETS, Entry, ModifyIndex, SharedMap, bucket_of, is_background_key};
pub use summary::{DcSummary, SUMMARY_PREFIX, ServiceCounts};
pub use value::{
    CONFIG_PREFIX, Change, ChangeKey, ConfigEntry, INTENTION_PREFIX, KV_PREFIX, Value,
};
