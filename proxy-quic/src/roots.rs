//! Which of the cluster's CA roots signs and which are trusted, decided from the replicated set
//! alone, so every agent decides alike with no leader and no "active" flag to race on.
//!
//! The newest root (by creation time, then id) signs. An older root stays trusted for
//! `overlap` after a newer one appeared, so leaves it signed keep working until they are
//! renewed under the new root; then it is dropped. Expired roots are never trusted.

use murmur_catalog::CaRoot;

/// The root that signs new leaves: the newest.
pub fn signing_root<'a>(roots: impl IntoIterator<Item = &'a CaRoot>) -> Option<&'a CaRoot> {
    roots.into_iter().max_by(|a, b| {
        a.created_ms
            .cmp(&b.created_ms)
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// The roots to trust at `now_ms`, newest first: the signing root, and older ones superseded
/// less than `overlap_ms` ago.
pub fn trusted_roots<'a>(
    roots: impl IntoIterator<Item = &'a CaRoot>,
    now_ms: u64,
    overlap_ms: u64,
) -> Vec<&'a CaRoot> {
    let mut all: Vec<&CaRoot> = roots
        .into_iter()
        .filter(|r| r.not_after_s.saturating_mul(1000) > now_ms)
        .collect();
    all.sort_by(|a, b| {
        b.created_ms
            .cmp(&a.created_ms)
            .then_with(|| b.id.cmp(&a.id))
    });
    let mut trusted = Vec::new();
    let mut superseded_at: Option<u64> = None;
    for root in all {
        if superseded_at.is_none_or(|at| now_ms < at.saturating_add(overlap_ms)) {
            trusted.push(root);
        }
        superseded_at = Some(root.created_ms);
    }
    trusted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(id: &str, created_ms: u64) -> CaRoot {
        CaRoot {
            id: id.into(),
            name: id.into(),
            cert_pem: String::new(),
            created_ms,
            not_before_s: 0,
            not_after_s: 1_000_000,
        }
    }

    #[test]
    fn the_newest_signs_and_the_old_one_is_trusted_through_the_overlap() {
        let roots = [root("a", 1_000), root("b", 5_000)];
        assert_eq!(signing_root(&roots).unwrap().id, "b");
        let ids = |now| -> Vec<&str> {
            trusted_roots(&roots, now, 10_000)
                .iter()
                .map(|r| r.id.as_str())
                .collect()
        };
        assert_eq!(ids(6_000), ["b", "a"]);
        assert_eq!(ids(14_999), ["b", "a"]);
        assert_eq!(ids(15_000), ["b"], "overlap over");
        assert!(signing_root(&[]).is_none());
    }

    #[test]
    fn ties_break_by_id_and_expired_roots_are_never_trusted() {
        let roots = [root("b", 7), root("a", 7)];
        assert_eq!(signing_root(&roots).unwrap().id, "b");
        let mut old = root("x", 1);
        old.not_after_s = 5;
        assert!(trusted_roots(&[old], 6_000, u64::MAX).is_empty());
    }
}
