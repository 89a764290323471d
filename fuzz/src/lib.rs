//! What the fuzz targets share: a pool member (membership and replication) to feed, and the plaintext envelope that gets input past
//! the header check to the decoders behind it.

use std::net::SocketAddr;

use murmur_gossip::{GossipConfig, IdentityFields, Keyring, PROTOCOL_VERSION, PoolMember};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The cluster id the targets' node belongs to.
pub const CLUSTER: &str = "fuzz";

/// A member with no gossip key, so plaintext envelopes reach the decoders.
pub fn node() -> PoolMember {
    let identity = IdentityFields {
        name: "fuzz".into(),
        node_id: 1,
        generation: 1,
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        datacenter: "dc1".into(),
        tags: vec![],
    }
    .into();
    let mut node = PoolMember::new(
        identity,
        GossipConfig::lan(CLUSTER),
        Keyring::new(None),
        StdRng::seed_from_u64(1),
    )
    .expect("valid node");
    node.set_now(1_700_000_000_000, std::time::Duration::from_secs(1));
    node
}

/// `body` inside a plaintext envelope of [`CLUSTER`].
pub fn envelope(body: &[u8]) -> Vec<u8> {
    let mut out = vec![b'm', b'm', PROTOCOL_VERSION, 0, CLUSTER.len() as u8];
    out.extend_from_slice(CLUSTER.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Takes every output, so queues cannot grow across inputs.
pub fn drain(node: &mut PoolMember) {
    while node.poll_output().is_some() {}
}
