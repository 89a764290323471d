//! Rendezvous (highest random weight) hashing: every member ranks candidates alike from their
//! names alone, with no coordination. Federation picks its WAN gateways this way, and a
//! member that finds another unreachable picks who confirms it this way.

/// A candidate's rendezvous score: a fixed hash of `name`, identical on every platform and
/// version (the ranks of members running different builds must agree), so no `std` hasher.
pub fn score(name: &str) -> u64 {
    fixed_hash(name.bytes())
}

/// The score of `candidate` for `subject`: each subject ranks the candidates in an order of its
/// own, so the work for different subjects falls on different members. The hash of
/// `subject`, a zero byte and `candidate`, computed without joining them (a member ranks
/// every other for each suspicion it hears).
pub fn pair_score(subject: &str, candidate: &str) -> u64 {
    fixed_hash(subject.bytes().chain([0]).chain(candidate.bytes()))
}

/// FNV-1a over the bytes, then splitmix64's finalizer to spread FNV's weak high bits.
fn fixed_hash(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn score_is_fixed_across_builds() {
        // Members of different versions must rank alike: these values (computed apart from
        // this code, by the same definition in Python) may never change.
        assert_eq!(score(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(score("node-1"), 0x1395_0d4e_f307_e655);
        assert_eq!(score("dc1-agent-7"), 0xc115_a6e7_a8ea_31bc);
        let spread: BTreeSet<u64> = (0..1000).map(|i| score(&format!("n{i}")) >> 60).collect();
        assert_eq!(
            spread.len(),
            16,
            "the top bits of the score spread over names"
        );
    }

    #[test]
    fn a_pair_scores_as_its_joined_name() {
        // Federation ranked gateways by `score("asker\0name")` before `pair_score` existed.
        assert_eq!(pair_score("asker", "gw-1"), score("asker\u{0}gw-1"));
        assert_eq!(pair_score("", ""), score("\u{0}"));
    }

    #[test]
    fn each_subject_ranks_candidates_its_own_way() {
        let candidates: Vec<String> = (0..50).map(|i| format!("node-{i}")).collect();
        let top = |subject: &str| {
            candidates
                .iter()
                .max_by_key(|c| pair_score(subject, c))
                .cloned()
        };
        let tops: BTreeSet<_> = (0..20).map(|s| top(&format!("subject-{s}"))).collect();
        assert!(
            tops.len() > 5,
            "the best candidate moves with the subject: {tops:?}"
        );
    }
}
