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
//! forgotten member: skipping is the better answer there). Updates about the member itself
//! are the exception and never pass through here (the codec checks the name first): foca
//! answers each suspicion of us, even a repeated stale one, with a gossip round that spreads
//! the refutation. A fingerprint counts only once
//! the packet that carried it was applied ([`RepeatFilter::commit`]): foca drops the updates
//! of a sender it lists down, and those must count when they come again from another.

use std::hash::BuildHasher;

use foldhash::quality::FixedState;

/// Slots of the fingerprint table (16 KB a node). Small on purpose: with 2,048 slots
/// `murmur sim --scenario quiet --nodes 2000 --seed 1 --duration 10s` took 34.3 s, with 8,192
/// 40.9 s (a table per node that leaves the cache costs more than the repeats it misses).
const SLOTS: usize = 2048;

/// Remembers the fingerprints of the member updates this node applied, in a direct-mapped
/// table: one memory access per lookup (a hash set probed two), and a newer fingerprint takes
/// the slot of an older one. A repeat whose fingerprint was pushed out is decoded and applied
/// as before: slower, never wrong.
pub(crate) struct RepeatFilter {
    hasher: FixedState,
    /// `0` marks an empty slot; a fingerprint of 0 is stored as 1.
    slots: Vec<u64>,
    /// Fingerprints of the packet being decoded, counted once it is applied.
    pending: Vec<u64>,
}

impl RepeatFilter {
    /// A filter whose fingerprints are seeded with `seed` (the member's node id: members hash
    /// differently, and a run is replayable).
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            hasher: FixedState::with_seed(seed),
            slots: vec![0; SLOTS],
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
        let fingerprint = self.hasher.hash_one(update).max(1);
        if self.slots[slot(fingerprint)] == fingerprint {
            return true;
        }
        self.pending.push(fingerprint);
        false
    }

    /// The packet's updates were applied: their fingerprints count from now on.
    pub(crate) fn commit(&mut self) {
        for fingerprint in self.pending.drain(..) {
            self.slots[slot(fingerprint)] = fingerprint;
        }
    }
}

/// The slot of a fingerprint: its high bits (the low ones are what the slot holds anyway).
fn slot(fingerprint: u64) -> usize {
    (fingerprint >> (64 - SLOTS.trailing_zeros())) as usize
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
    fn the_filter_stays_bounded_and_keeps_most_of_the_recent() {
        let mut filter = RepeatFilter::new(7);
        let total = 3 * SLOTS;
        for i in 0..total {
            filter.start_packet();
            filter.is_repeat(&i.to_le_bytes());
            filter.commit();
        }
        assert_eq!(filter.slots.len(), SLOTS);
        filter.start_packet();
        assert!(filter.is_repeat(&(total - 1).to_le_bytes()));
        let recent = (total - SLOTS / 8..total)
            .filter(|i| filter.is_repeat(&i.to_le_bytes()))
            .count();
        assert!(
            recent > SLOTS / 8 * 9 / 10,
            "{recent} of the last {} kept",
            SLOTS / 8
        );
        let oldest = (0..SLOTS / 8)
            .filter(|i| filter.is_repeat(&i.to_le_bytes()))
            .count();
        assert!(oldest < SLOTS / 8 / 10, "{oldest} of the oldest kept");
    }
}
