//! Member lists compared by digest, so a periodic push-pull sends only where two lists differ.
//!
//! A push-pull used to carry both members' whole lists: at 10,000 members, ~700 KB each way
//! per exchange, decoded and applied entry by entry, and every member exchanges once a period.
//! In a settled pool the two lists are equal and all of it is wasted. Members are spread over
//! buckets by name; a bucket's digest sums a fingerprint of each member in it (name, node id,
//! generation, incarnation, state), so equal lists give equal digests whatever their order.
//! The initiator sends its digests; the responder answers with its members of every bucket
//! whose digest differs, and its digests; the initiator merges them and pushes back its own
//! members of the buckets that still differ. One member missed costs one bucket (~8 entries),
//! not the list.
//!
//! A digest that matches by accident (64-bit sums colliding) only skips one exchange: gossip
//! and the next exchange still carry the difference.

use std::hash::BuildHasher;

use foca::{Member, State};
use foldhash::quality::FixedState;

use crate::NodeIdentity;

/// Members per bucket aimed at: a bucket that differs sends about this many entries.
const MEMBERS_PER_BUCKET: usize = 8;
/// Most buckets a digest has (8 KB of digests at 10,000 members and more).
pub(crate) const MAX_BUCKETS: usize = 1024;

/// How many buckets a pool of `members` is digested into: a power of two, so either side
/// places a member in the same bucket from the count alone.
pub(crate) fn bucket_count(members: usize) -> usize {
    (members / MEMBERS_PER_BUCKET)
        .clamp(1, MAX_BUCKETS)
        .next_power_of_two()
        .min(MAX_BUCKETS)
}

/// Whether a bucket count received is one this module makes.
pub(crate) fn is_valid_bucket_count(count: usize) -> bool {
    count.is_power_of_two() && count <= MAX_BUCKETS
}

/// The bucket of the member named `name`, among `buckets` (a power of two).
pub(crate) fn bucket_of(name: &str, buckets: usize) -> usize {
    debug_assert!(buckets.is_power_of_two());
    (hasher().hash_one(name) as usize) & (buckets - 1)
}

/// The digests of `members` over `buckets` buckets (a power of two).
pub(crate) fn digests<'a>(
    members: impl Iterator<Item = &'a Member<NodeIdentity>>,
    buckets: usize,
) -> Vec<u64> {
    let mut sums = vec![0u64; buckets];
    for member in members {
        let id = member.id();
        let fingerprint = hasher().hash_one((
            id.name.as_str(),
            id.node_id,
            id.generation,
            member.incarnation(),
            state_code(member.state()),
        ));
        let sum = &mut sums[bucket_of(&id.name, buckets)];
        *sum = sum.wrapping_add(fingerprint);
    }
    sums
}

/// The buckets whose digests differ between `ours` and `theirs` (of one length).
pub(crate) fn differing(ours: &[u64], theirs: &[u64]) -> Vec<bool> {
    debug_assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, b)| a != b).collect()
}

fn hasher() -> FixedState {
    // Fixed, so every member places and fingerprints a member alike.
    FixedState::with_seed(0x6d75_726d_7572)
}

fn state_code(state: State) -> u8 {
    match state {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::identity::tests::identity;

    fn member(name: &str, incarnation: u16, state: State) -> Member<NodeIdentity> {
        Member::new(identity(name, 1), incarnation, state)
    }

    #[test]
    fn bucket_counts_grow_with_the_pool_and_stay_bounded() {
        assert_eq!(bucket_count(0), 1);
        assert_eq!(bucket_count(9), 1);
        assert_eq!(bucket_count(100), 16);
        assert_eq!(bucket_count(1_000), 128);
        assert_eq!(bucket_count(10_000), MAX_BUCKETS);
        assert_eq!(bucket_count(1_000_000), MAX_BUCKETS);
        assert!((0..5_000).all(|n| is_valid_bucket_count(bucket_count(n))));
        assert!(!is_valid_bucket_count(0) && !is_valid_bucket_count(3));
        assert!(!is_valid_bucket_count(2 * MAX_BUCKETS));
    }

    #[test]
    fn any_change_of_a_member_moves_its_bucket_only() {
        let list: Vec<_> = (0..64)
            .map(|i| member(&format!("n{i}"), 0, State::Alive))
            .collect();
        let before = digests(list.iter(), 8);
        for changed in [
            member("n5", 1, State::Alive),
            member("n5", 0, State::Suspect),
            member("n5", 0, State::Down),
        ] {
            let mut other = list.clone();
            other[5] = changed;
            let after = digests(other.iter(), 8);
            let moved: Vec<usize> = (0..8).filter(|&b| before[b] != after[b]).collect();
            assert_eq!(moved, vec![bucket_of("n5", 8)]);
        }
    }

    proptest! {
        /// Digests depend on the members, not on the order they are listed in; and removing
        /// any one member shows as its bucket differing.
        #[test]
        fn digests_follow_the_set_not_the_order(
            names in proptest::collection::btree_set("[a-z]{1,8}", 1..60),
            seed in any::<u64>(),
        ) {
            let list: Vec<_> = names.iter().map(|n| member(n, 0, State::Alive)).collect();
            let mut shuffled = list.clone();
            let len = shuffled.len();
            for i in 0..len {
                shuffled.swap(i, (seed as usize).wrapping_add(i * 31) % len);
            }
            let buckets = bucket_count(len);
            prop_assert_eq!(digests(list.iter(), buckets), digests(shuffled.iter(), buckets));
            let missing = &list[seed as usize % len];
            let without: Vec<_> = list.iter().filter(|m| m.id().name != missing.id().name).collect();
            let differ = differing(&digests(list.iter(), buckets), &digests(without.into_iter(), buckets));
            let expected: Vec<bool> =
                (0..buckets).map(|b| b == bucket_of(&missing.id().name, buckets)).collect();
            prop_assert_eq!(differ, expected);
        }
    }
}
