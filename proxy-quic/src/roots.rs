//! Which of the mesh's CA roots signs and which are trusted, decided from the replicated set
//! alone, so every agent decides alike with no leader and no "active" flag to race on.
//!
//! Every datacenter has roots of its own: its newest (by creation time, then id) signs its
//! leaves, and an older one stays trusted for `overlap` after a newer one of the same
//! datacenter appeared, so leaves it signed keep working until they are renewed under the new
//! root; then it is dropped. Expired roots are never trusted. The trust bundle is the trusted
//! roots of all datacenters, each vouching only for leaves of its own datacenter
//! (`tls::MeshIdentity` holds them apart).

use std::cmp::Ordering;

use murmur_catalog::{CaRoot, DcRoot};

/// Newest first: by creation time, then id.
fn newest_first(a: &CaRoot, b: &CaRoot) -> Ordering {
    b.created_ms
        .cmp(&a.created_ms)
        .then_with(|| b.id.cmp(&a.id))
}

/// The root that signs new leaves of datacenter `local`: its newest. Roots of other
/// datacenters never sign here.
pub fn signing_root<'a>(
    roots: impl IntoIterator<Item = DcRoot<'a>>,
    local: &str,
) -> Option<&'a CaRoot> {
    roots
        .into_iter()
        .filter(|r| r.datacenter.is_none_or(|dc| dc == local))
        .map(|r| r.root)
        .min_by(|a, b| newest_first(a, b))
}

/// The roots to trust at `now_ms`, with their datacenters named (`local` for roots that named
/// none): `local`'s first, then the others by name; within each, newest first: its signing
/// root, and older ones superseded less than `overlap_ms` ago.
pub fn trust_bundle<'a>(
    roots: impl IntoIterator<Item = DcRoot<'a>>,
    local: &'a str,
    now_ms: u64,
    overlap_ms: u64,
) -> Vec<DcRoot<'a>> {
    let mut all: Vec<DcRoot<'a>> = roots
        .into_iter()
        .filter(|r| r.root.not_after_s.saturating_mul(1000) > now_ms)
        .map(|r| DcRoot {
            datacenter: Some(r.datacenter_or(local)),
            ..r
        })
        .collect();
    all.sort_by(|a, b| {
        let (da, db) = (a.datacenter_or(local), b.datacenter_or(local));
        (da != local)
            .cmp(&(db != local))
            .then_with(|| da.cmp(db))
            .then_with(|| newest_first(a.root, b.root))
    });
    let mut bundle = Vec::new();
    // The datacenter of the last root seen and when it was created: the root after it (of
    // the same datacenter) was superseded then.
    let mut newer: Option<(&str, u64)> = None;
    for root in all {
        let dc = root.datacenter_or(local);
        let superseded_at = newer.filter(|(d, _)| *d == dc).map(|(_, at)| at);
        if superseded_at.is_none_or(|at| now_ms < at.saturating_add(overlap_ms)) {
            bundle.push(root);
        }
        newer = Some((dc, root.root.created_ms));
    }
    bundle
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

    fn of<'a>(datacenter: Option<&'a str>, root: &'a CaRoot) -> DcRoot<'a> {
        DcRoot {
            datacenter,
            root,
            modify_index: 1,
        }
    }

    fn ids(bundle: &[DcRoot<'_>]) -> Vec<String> {
        bundle
            .iter()
            .map(|r| format!("{}/{}", r.datacenter.unwrap(), r.root.id))
            .collect()
    }

    #[test]
    fn the_newest_signs_and_the_old_one_is_trusted_through_the_overlap() {
        let (a, b) = (root("a", 1_000), root("b", 5_000));
        let roots = [of(Some("dc1"), &a), of(Some("dc1"), &b)];
        assert_eq!(signing_root(roots, "dc1").unwrap().id, "b");
        let at = |now| ids(&trust_bundle(roots, "dc1", now, 10_000));
        assert_eq!(at(6_000), ["dc1/b", "dc1/a"]);
        assert_eq!(at(14_999), ["dc1/b", "dc1/a"]);
        assert_eq!(at(15_000), ["dc1/b"], "overlap over");
        assert!(signing_root([], "dc1").is_none());
    }

    #[test]
    fn ties_break_by_id_and_expired_roots_are_never_trusted() {
        let (b, a) = (root("b", 7), root("a", 7));
        assert_eq!(
            signing_root([of(None, &b), of(None, &a)], "dc1")
                .unwrap()
                .id,
            "b"
        );
        let mut old = root("x", 1);
        old.not_after_s = 5;
        assert!(trust_bundle([of(None, &old)], "dc1", 6_000, u64::MAX).is_empty());
    }

    #[test]
    fn each_datacenter_signs_with_its_own_and_all_are_trusted() {
        let (old1, new1, only2, old3, new3) = (
            root("old1", 1_000),
            root("new1", 2_000),
            root("only2", 9_000),
            root("old3", 1_000),
            root("new3", 3_000),
        );
        let roots = [
            of(Some("dc3"), &old3),
            of(Some("dc2"), &only2),
            of(None, &old1),
            of(Some("dc1"), &new1),
            of(Some("dc3"), &new3),
        ];
        // dc2's root is the newest of all, yet dc1 signs with its own and dc3 with its own.
        assert_eq!(signing_root(roots, "dc1").unwrap().id, "new1");
        assert_eq!(signing_root(roots, "dc3").unwrap().id, "new3");
        assert!(
            signing_root(roots[..2].iter().copied(), "dc9").is_none(),
            "no root of dc9 yet"
        );
        assert_eq!(
            signing_root(roots, "dc9").unwrap().id,
            "old1",
            "an unnamed root is the reader's own: it never left its datacenter"
        );
        // The overlap is per datacenter: dc2's newer root supersedes nothing of dc1 or dc3.
        assert_eq!(
            ids(&trust_bundle(roots, "dc1", 2_500, 1_000)),
            ["dc1/new1", "dc1/old1", "dc2/only2", "dc3/new3", "dc3/old3"]
        );
        assert_eq!(
            ids(&trust_bundle(roots, "dc1", 3_500, 1_000)),
            ["dc1/new1", "dc2/only2", "dc3/new3", "dc3/old3"],
            "dc1's old root (unnamed: the reader's own) is past its overlap, dc3's is not"
        );
    }
}
