//! Recognising member updates this node has already applied, before decoding them.
//!
//! Every member update is sent by every member about 4·log10(N) times, so nearly every update
//! a member receives repeats one it holds: forming a 1,000-node cluster, each node receives
//! each join ~16 times. Decoding a repeat, interning its identity and looking it up in foca's
//! member list (three to four cache misses in a large cluster) only to find nothing changed was
//! a third of a simulation's time. A repeat is now found by a fingerprint of its bytes.
//!
//! Skipping a repeat is exact, not a heuristic: a member's state in foca only moves forward
//! (a higher incarnation, a stronger state, a newer identity), so an update applied once is a
//! no-op ever after, until the member is reaped (where applying it again would resurrect a
//! forgotten member: skipping is the better answer there). A fingerprint counts only once
//! the packet that carried it was applied ([`RepeatFilter::commit`]): foca drops the updates
//! of a sender it lists down, and those must count when they come again from another.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::quality::FixedState;

/// Fingerprints kept per generation; two generations are kept, so a node remembers the last
/// 4,096 to 8,192 distinct updates (~100 KB). A repeat that comes after its fingerprint aged
/// out is decoded and applied as before: slower, never wrong.
const GENERATION: usize = 4096;

/// Remembers the fingerprints of the member updates this node applied.
pub(crate) struct RepeatFilter {
    hasher: FixedState,
    current: FingerprintSet,
    previous: FingerprintSet,
    /// Fingerprints of the packet being decoded, counted once it is applied.
    pending: Vec<u64>,
}

/// Fingerprints are hashes already: the set uses them as they are.
type FingerprintSet = HashSet<u64, BuildHasherDefault<AsIs>>;

/// A hasher that passes a `u64` through.
#[derive(Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl RepeatFilter {
    /// A filter whose fingerprints are seeded with `seed` (the member's node id: members hash
    /// differently, and a run is replayable).
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            hasher: FixedState::with_seed(seed),
            current: FingerprintSet::default(),
            previous: FingerprintSet::default(),
            pending: Vec::new(),
        }
    }

    /// A new packet: what the last one left pending was not applied.
    pub(crate) fn start_packet(&mut self) {
        self.pending.clear();
    }

    /// Whether `update` (one update's bytes) was applied before; if not, it is remembered as
    /// pending until [`RepeatFilter::commit`].
    pub(crate) fn is_repeat(&mut self, update: &[u8]) -> bool {
        let fingerprint = self.hasher.hash_one(update);
        if self.current.contains(&fingerprint) || self.previous.contains(&fingerprint) {
            return true;
        }
        self.pending.push(fingerprint);
        false
    }

    /// The packet's updates were applied: their fingerprints count from now on.
    pub(crate) fn commit(&mut self) {
        for fingerprint in self.pending.drain(..) {
            if self.current.len() >= GENERATION {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_is_a_repeat_only_once_its_packet_was_applied() {
        let mut filter = RepeatFilter::new(1);
        filter.start_packet();
        assert!(!filter.is_repeat(b"alive a 1"));
        // The packet was dropped (its sender is listed down): nothing counts.
        filter.start_packet();
        assert!(!filter.is_repeat(b"alive a 1"));
        filter.commit();
        filter.start_packet();
        assert!(filter.is_repeat(b"alive a 1"));
        assert!(!filter.is_repeat(b"alive a 2"));
    }

    #[test]
    fn the_filter_stays_bounded_and_forgets_the_oldest() {
        let mut filter = RepeatFilter::new(7);
        let total = 3 * GENERATION;
        for i in 0..total {
            filter.start_packet();
            assert!(!filter.is_repeat(&i.to_le_bytes()));
            filter.commit();
        }
        assert!(filter.current.len() + filter.previous.len() <= 2 * GENERATION);
        filter.start_packet();
        assert!(filter.is_repeat(&(total - 1).to_le_bytes()));
        assert!(!filter.is_repeat(&0usize.to_le_bytes()));
    }
}
