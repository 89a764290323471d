//! Who a member is on the wire.
//!
//! foca identifies a member by the whole identity value and detects "the same member in a new
//! life" through [`foca::Identity::addr`]. murmur's stable key is the node *name*; a restart
//! produces the same name with a higher `generation`, which supersedes the ghost of the old
//! process instead of fighting it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::GossipError;

/// Longest node name accepted (bytes). Identities travel in every packet header, so they stay small.
pub const MAX_NAME_LEN: usize = 64;
/// Longest datacenter name accepted (bytes).
pub const MAX_DATACENTER_LEN: usize = 32;
/// Most bytes all tags of one member may take together (keys plus values).
pub const MAX_TAGS_BYTES: usize = 256;

/// A member's identity: stable name and node id, where to reach it, and which life it is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
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
        Some(Self {
            generation: self.generation + 1,
            ..self.clone()
        })
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
mod tests {
    use foca::Identity;

    use super::*;

    pub(crate) fn identity(name: &str, generation: u64) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            node_id: 7,
            generation,
            addr: "127.0.0.1:8301".parse().unwrap(),
            datacenter: "dc1".into(),
            tags: vec![],
        }
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
