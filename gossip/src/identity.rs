//! Who a member is on the wire.
//!
//! foca identifies a member by the whole identity value and detects "the same member in a new
//! life" through [`foca::Identity::addr`]. murmur's stable key is the node *name*; a restart
//! produces the same name with a higher `generation`, which supersedes the ghost of the old
//! process instead of fighting it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use foca::Member;
use serde::{Deserialize, Serialize};

use crate::GossipError;

/// Longest node name accepted (bytes). Identities travel in every packet header, so they stay small.
pub const MAX_NAME_LEN: usize = 64;
/// Longest datacenter name accepted (bytes).
pub const MAX_DATACENTER_LEN: usize = 32;
/// Most bytes all tags of one member may take together (keys plus values).
pub const MAX_TAGS_BYTES: usize = 256;

/// The fields of a member's identity: stable name and node id, where to reach it, and which
/// life it is in. Held behind a shared [`NodeIdentity`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdentityFields {
    /// Unique, stable node name (`--node`).
    pub name: compact_str::CompactString,
    /// Random id fixed for the life of the data directory; tells a restart (same id) from a
    /// second agent that took the same name (different id).
    pub node_id: u64,
    /// Boot stamp (wall-clock milliseconds, kept strictly increasing across restarts); a higher
    /// generation of the same name replaces the lower one.
    pub generation: u64,
    /// The gossip address peers reach it at (UDP for packets, TCP for streams).
    pub addr: SocketAddr,
    /// Datacenter the member belongs to.
    pub datacenter: compact_str::CompactString,
    /// Small free-form tags (`--tag key=value`), sorted by key.
    pub tags: Vec<(String, String)>,
}

/// A member's identity, shared: a node keeps one per member in its member list, in foca's
/// list, in every queued update and timer, and the simulator keeps one per (node, member)
/// pair. As a value the fields took ~130 bytes in each place (~300 bytes per pair at 1,000
/// simulated nodes); shared, a copy is a pointer and two copies of one interned identity
/// compare equal without reading the fields. Reads go through `Deref`; a write copies the
/// fields first if they are shared (`Arc::make_mut`), so it behaves as a value. Serialized as
/// its fields: the wire is unchanged.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeIdentity(Arc<IdentityFields>);

impl From<IdentityFields> for NodeIdentity {
    fn from(fields: IdentityFields) -> Self {
        Self(Arc::new(fields))
    }
}

impl std::ops::Deref for NodeIdentity {
    type Target = IdentityFields;

    fn deref(&self) -> &IdentityFields {
        &self.0
    }
}

impl std::ops::DerefMut for NodeIdentity {
    fn deref_mut(&mut self) -> &mut IdentityFields {
        Arc::make_mut(&mut self.0)
    }
}

impl PartialEq for NodeIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for NodeIdentity {}

/// By name first (the fields in declaration order), so maps of identities iterate in an order
/// that is the same on every run: the simulator's traces depend on it.
impl PartialOrd for NodeIdentity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeIdentity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(&other.0)
    }
}

impl std::hash::Hash for NodeIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One shared copy of each identity in use, for whoever holds this handle: a node interns
/// every identity it decodes, so the same member read from a thousand packets is one
/// allocation, and the simulator hands one `Identities` to all its nodes, so 10,000 nodes
/// hold 10,000 identities instead of 10,000². Identities nobody else holds any more (an old
/// generation, a reaped member) are swept when the set has doubled since the last sweep.
#[derive(Clone, Default)]
pub struct Identities(Arc<Mutex<InternedSet>>);

#[derive(Default)]
struct InternedSet {
    set: HashSet<Arc<IdentityFields>, foldhash::fast::FixedState>,
    swept_at_len: usize,
}

/// Size below which the set is never swept (a sweep walks the whole set).
const SWEEP_FLOOR: usize = 64;

impl Identities {
    /// The shared copy of `identity`: an earlier equal one if there is one, else `identity`,
    /// kept for later calls.
    pub fn intern(&self, identity: NodeIdentity) -> NodeIdentity {
        // A poisoned lock only means a panic elsewhere mid-insert; the set is still valid.
        let mut interned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = interned.set.get(&*identity.0) {
            return NodeIdentity(found.clone());
        }
        if interned.set.len() >= 2 * interned.swept_at_len.max(SWEEP_FLOOR) {
            interned.set.retain(|kept| Arc::strong_count(kept) > 1);
            interned.swept_at_len = interned.set.len();
        }
        interned.set.insert(identity.0.clone());
        identity
    }

    /// `member` with its identity exchanged for the shared copy.
    pub(crate) fn intern_member(&self, member: Member<NodeIdentity>) -> Member<NodeIdentity> {
        let (incarnation, state) = (member.incarnation(), member.state());
        Member::new(self.intern(member.id().clone()), incarnation, state)
    }

    /// Number of identities held (swept ones excluded).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).set.len()
    }
}

impl NodeIdentity {
    /// Checks the limits that keep identities small and names usable in DNS later.
    pub fn validate(&self) -> Result<(), GossipError> {
        check_label("node name", &self.name, MAX_NAME_LEN)?;
        check_label("datacenter", &self.datacenter, MAX_DATACENTER_LEN)?;
        let tag_bytes: usize = self.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        if tag_bytes > MAX_TAGS_BYTES {
            return Err(GossipError::InvalidIdentity(format!(
                "tags take {tag_bytes} bytes; at most {MAX_TAGS_BYTES} are allowed: keep tags short"
            )));
        }
        Ok(())
    }
}

fn check_label(what: &str, value: &str, max: usize) -> Result<(), GossipError> {
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if value.is_empty() || value.len() > max || !valid_chars {
        return Err(GossipError::InvalidIdentity(format!(
            "{what} {value:?} is not valid: use 1 to {max} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

impl foca::Identity for NodeIdentity {
    /// A hash of the node name: foca compares `addr()` of every member while applying each
    /// update, and a `String` would be cloned twice per comparison (measured: that cloning and
    /// its allocations were most of the simulator's time at 100 nodes). The hash never leaves
    /// the process; two names colliding in 64 bits is a 1-in-10^11 event at 10,000 members.
    type Addr = u64;

    /// A renewed identity is the same member in a new life: foca calls this when the cluster
    /// declared us down, so we come back instead of staying out.
    fn renew(&self) -> Option<Self> {
        Some(
            IdentityFields {
                generation: self.generation + 1,
                ..(*self.0).clone()
            }
            .into(),
        )
    }

    fn addr(&self) -> u64 {
        // FNV-1a: a few cycles per byte of a short name, several times cheaper than SipHash
        // here, and no key to set up per call.
        self.name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The newer life wins; the node id breaks the (theoretical) tie deterministically.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.node_id) > (adversary.generation, adversary.node_id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use foca::Identity;

    use super::*;

    pub(crate) fn identity(name: &str, generation: u64) -> NodeIdentity {
        IdentityFields {
            name: name.into(),
            node_id: 7,
            generation,
            addr: "127.0.0.1:8301".parse().unwrap(),
            datacenter: "dc1".into(),
            tags: vec![],
        }
        .into()
    }

    #[test]
    fn renewed_identity_supersedes_the_old_one() {
        let old = identity("a", 10);
        let new = old.renew().unwrap();
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }

    #[test]
    fn interned_identities_are_one_copy_and_compare_as_values() {
        let identities = Identities::default();
        let first = identities.intern(identity("a", 1));
        let again = identities.intern(identity("a", 1));
        assert!(Arc::ptr_eq(&first.0, &again.0));
        // Equality never depends on sharing: a separate equal copy is equal.
        assert_eq!(first, identity("a", 1));
        assert_ne!(first, identities.intern(identity("a", 2)));
        // A write copies shared fields instead of changing every holder.
        let mut changed = again.clone();
        changed.generation = 9;
        assert_eq!(first.generation, 1);
        assert_eq!(changed.generation, 9);
    }

    #[test]
    fn identities_nobody_holds_are_swept() {
        let identities = Identities::default();
        let kept = identities.intern(identity("kept", 1));
        for generation in 0..10 * SWEEP_FLOOR as u64 {
            identities.intern(identity("gone", generation));
        }
        assert!(identities.len() <= 2 * SWEEP_FLOOR, "{}", identities.len());
        let again = identities.intern(identity("kept", 1));
        assert!(
            Arc::ptr_eq(&kept.0, &again.0),
            "a held identity survives sweeps"
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut id = identity("a", 1);
        id.name = "bad name".into();
        let err = id.validate().unwrap_err().to_string();
        assert!(err.contains("node name"), "{err}");
        id.name = "ok".into();
        id.tags = vec![("k".into(), "v".repeat(300))];
        assert!(id.validate().unwrap_err().to_string().contains("tags"));
    }
}
