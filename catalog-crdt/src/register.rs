//! Registers: one value with a stamp; merging keeps the greater `(stamp, value)`.
//!
//! That "greater" is a total order, so merge is a join: commutative, associative, idempotent,
//! and replicas that saw the same writes in any order, any number of times, hold the same
//! value. Stamps are unique by construction (an HLC carries its node id; an owned record's
//! version has a single writer), so the value only breaks ties a buggy or hostile peer could
//! create by reusing a stamp — and even then every replica picks the same winner.
//!
//! Two instances cover murmur's two kinds of data:
//! - [`Lww`]: shared data (key/value entries, intentions, config entries, CA roots), any node
//!   writes, stamped by an [`Hlc`]; `None` is a delete (a tombstone with its own stamp, so a
//!   delete and a concurrent write resolve the same everywhere).
//! - [`Owned`]: a node's own record, written only by that node, stamped by its [`Version`].

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;

/// A stamped value; merge keeps the greater `(stamp, value)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Register<S, T> {
    stamp: S,
    value: T,
}

/// Shared data: last writer wins by HLC; `None` is a tombstone.
pub type Lww<T> = Register<Hlc, Option<T>>;

/// Owned data: the single writer's latest version wins.
pub type Owned<T> = Register<Version, T>;

/// Version of an owned record: the writer's generation (boot), then its counter within it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Version {
    /// The writer's generation; a restart starts a higher one.
    pub generation: u64,
    /// Increments with every change within a generation.
    pub counter: u64,
}

impl<S: Ord + Clone, T: Ord + Clone> Register<S, T> {
    /// A register holding `value` written at `stamp`.
    pub fn new(stamp: S, value: T) -> Self {
        Self { stamp, value }
    }

    /// The stamp of the winning write.
    pub fn stamp(&self) -> &S {
        &self.stamp
    }

    /// The winning value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Merges another replica's register; returns whether this one changed.
    pub fn merge(&mut self, other: &Self) -> bool {
        if other > self {
            self.clone_from(other);
            true
        } else {
            false
        }
    }
}

impl<T: Ord + Clone> Lww<T> {
    /// A delete at `stamp`.
    pub fn tombstone(stamp: Hlc) -> Self {
        Self::new(stamp, None)
    }

    /// Whether the winning write is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hlc() -> impl Strategy<Value = Hlc> {
        // Few distinct values so that equal stamps (the tie case) come up often.
        (0..4u64, 0..3u32, 0..3u64).prop_map(|(physical_ms, logical, node)| Hlc {
            physical_ms,
            logical,
            node,
        })
    }

    fn lww() -> impl Strategy<Value = Lww<u8>> {
        (hlc(), proptest::option::of(0..4u8)).prop_map(|(s, v)| Lww::new(s, v))
    }

    fn merged(a: &Lww<u8>, b: &Lww<u8>) -> Lww<u8> {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    #[test]
    fn later_write_wins_and_delete_is_a_write() {
        let t = |ms| Hlc {
            physical_ms: ms,
            logical: 0,
            node: 1,
        };
        let mut reg = Lww::new(t(1), Some("a"));
        assert!(reg.merge(&Lww::new(t(3), Some("b"))));
        assert!(
            !reg.merge(&Lww::new(t(2), Some("c"))),
            "an older write loses"
        );
        assert!(reg.merge(&Lww::tombstone(t(4))));
        assert!(reg.is_tombstone());
        assert!(
            !reg.merge(&Lww::new(t(3), Some("late"))),
            "a write older than the delete stays deleted"
        );
    }

    #[test]
    fn owned_record_follows_generation_then_counter() {
        let v = |generation, counter| Version {
            generation,
            counter,
        };
        let mut rec = Owned::new(v(1, 9), "old life, many changes");
        assert!(rec.merge(&Owned::new(v(2, 0), "new life")));
        assert!(!rec.merge(&Owned::new(v(1, 10), "ghost")));
        assert_eq!(*rec.value(), "new life");
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in lww(), b in lww()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in lww(), b in lww(), c in lww()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in lww(), b in lww()) {
            let once = merged(&a, &b);
            prop_assert_eq!(merged(&once, &b), once.clone());
            prop_assert_eq!(merged(&a, &a), a);
        }

        /// Any order, with duplicates and with some replicas missing some writes until they merge
        /// with each other: all replicas end with the same register, the greatest write.
        #[test]
        fn replicas_converge_under_reordering_duplication_and_loss(
            writes in proptest::collection::vec(lww(), 1..20),
            orders in proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..40), 3),
        ) {
            let mut replicas: Vec<Lww<u8>> = orders
                .iter()
                .map(|order| {
                    let mut r = writes[0].clone();
                    for i in order {
                        r.merge(&writes[i.index(writes.len())]);
                    }
                    r
                })
                .collect();
            // Anti-entropy: every replica merges every other one, and one of them saw every write.
            for w in &writes {
                replicas[0].merge(w);
            }
            let snapshot = replicas.clone();
            for r in &mut replicas {
                for other in &snapshot {
                    r.merge(other);
                }
            }
            let best = writes.iter().max().unwrap();
            for r in &replicas {
                prop_assert_eq!(r, best);
            }
        }
    }
}
