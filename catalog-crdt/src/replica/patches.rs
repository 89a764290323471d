//! How a replica publishes its own record's changes as patches and applies its peers'
//! (see [`RecordPatch`]): a patch becomes the whole record it makes, or waits a while for its
//! base.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Applied, ApplyError, Replica};
use crate::catalog::NodeRecord;
use crate::patch::RecordPatch;
use crate::register::Owned;
use crate::value::Change;

/// Most patches held for a base that has not arrived yet, and most bytes (by
/// [`RecordPatch::weight`]) they may take: a patch from a stream may be large. Gossip reorders
/// a node's changes only within a few rounds, so a patch whose base has not come by the time
/// this many others arrived waits for anti-entropy instead.
pub(super) const MAX_WAITING_PATCHES: usize = 256;
const MAX_WAITING_BYTES: usize = 1 << 20;

/// What a patch makes of this replica's copy of its owner's record.
enum Patched {
    /// The replica holds that version or a newer one.
    Known,
    /// The whole record it makes.
    Made(Owned<Option<Arc<NodeRecord>>>),
    /// The replica holds its base, but the patch does not make the record its owner hashed.
    Mismatch,
    /// The replica holds another version: the patch waits for its base.
    NoBase,
}

impl Replica {
    /// Publishes this node's record: stored and journaled whole, spread as a patch against
    /// the version before when `may_patch` and a patch is worth it.
    pub(super) fn publish_own(&mut self, record: Option<NodeRecord>, may_patch: bool) {
        let record = record.map(Arc::new);
        if record.is_some() {
            self.kept.clone_from(&record);
        }
        let before = self.records.entry(&self.me).and_then(|e| {
            Some((
                *e.register.stamp(),
                Arc::clone(e.register.value().as_ref()?),
            ))
        });
        self.own.counter += 1;
        let patch = match (&before, &record) {
            (Some((base, old)), Some(new)) if may_patch => {
                RecordPatch::between(&self.me, (*base, old), (self.own, new))
            }
            _ => None,
        };
        let change = Change::Record {
            owner: self.me.clone(),
            register: Owned::new(self.own, record),
        };
        if self.merge(&change) {
            self.outbox
                .push(patch.map_or(change, |p| Change::Patch(Box::new(p))));
        }
    }

    /// Applies a peer's patch (the owner's name already checked).
    pub(super) fn apply_patch(
        &mut self,
        patch: &RecordPatch,
        wall_ms: u64,
    ) -> Result<Applied, ApplyError> {
        if patch.owner == self.me {
            // A patch of this node's record from an earlier life that outran this one.
            if patch.version > self.own {
                self.own = patch.version;
                let current = self.own_record().cloned();
                self.publish_own(current, false);
            }
            return Ok(Applied::Known);
        }
        match self.patched(patch) {
            Patched::Known => Ok(Applied::Known),
            Patched::Made(register) => {
                self.stats.patches_applied += 1;
                Ok(self.merge_record(&patch.owner, register))
            }
            Patched::Mismatch => Err(ApplyError::Malformed(
                "a record patch that does not make its owner's record",
            )),
            Patched::NoBase => {
                self.stats.patches_waited += 1;
                self.waiting.push_back((patch.clone(), wall_ms));
                let mut bytes: usize = self.waiting.iter().map(|(p, _)| p.weight()).sum();
                while self.waiting.len() > MAX_WAITING_PATCHES || bytes > MAX_WAITING_BYTES {
                    let Some((oldest, _)) = self.waiting.pop_front() else {
                        break;
                    };
                    bytes -= oldest.weight();
                    self.stats.patches_dropped += 1;
                }
                Ok(Applied::Held)
            }
        }
    }

    fn patched(&self, patch: &RecordPatch) -> Patched {
        let Some(entry) = self.records.entry(&patch.owner) else {
            return Patched::NoBase;
        };
        let held = *entry.register.stamp();
        if held >= patch.version {
            return Patched::Known;
        }
        match entry.register.value() {
            Some(base) if held == patch.base => patch
                .apply_to(base)
                .map_or(Patched::Mismatch, Patched::Made),
            _ => Patched::NoBase,
        }
    }

    /// Merges `owner`'s whole record, then the patches that waited for it.
    pub(super) fn merge_record(
        &mut self,
        owner: &str,
        register: Owned<Option<Arc<NodeRecord>>>,
    ) -> Applied {
        let change = Change::Record {
            owner: owner.to_owned(),
            register,
        };
        if !self.merge(&change) {
            return Applied::Known;
        }
        while let Some(next) = self.next_waiting(owner) {
            match self.patched(&next) {
                Patched::Made(register) => {
                    self.stats.patches_applied += 1;
                    self.merge(&Change::Record {
                        owner: owner.to_owned(),
                        register,
                    });
                }
                Patched::Mismatch => self.stats.refused_malformed += 1,
                // `next_waiting` takes only a patch of the version held.
                Patched::Known | Patched::NoBase => {}
            }
        }
        Applied::Changed
    }

    /// Takes out the waiting patch of `owner` that applies to the version held now, after
    /// dropping the ones that version makes obsolete.
    fn next_waiting(&mut self, owner: &str) -> Option<RecordPatch> {
        let held = *self.records.entry(owner)?.register.stamp();
        self.waiting
            .retain(|(p, _)| p.owner != owner || p.version > held);
        let at = self
            .waiting
            .iter()
            .position(|(p, _)| p.owner == owner && p.base == held)?;
        self.waiting.remove(at).map(|(p, _)| p)
    }

    /// Owners with a patch held since `since_ms` or earlier: their base is likely lost, not
    /// late, and a round of anti-entropy with the owner brings the record it applies to.
    pub fn owners_waiting_since(&self, since_ms: u64) -> BTreeSet<&str> {
        self.waiting
            .iter()
            .filter(|(_, held_at)| *held_at <= since_ms)
            .map(|(p, _)| p.owner.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Check, Health};
    use crate::patch::tests::large;
    use crate::replica::{Journaled, ReplicaConfig};

    const NOW: u64 = 1_000_000;

    fn replica(name: &str, id: u64) -> Replica {
        Replica::new(name, id, 1, ReplicaConfig::default())
    }

    /// `owner` flips the check of service `web-{service}` to `status`; returns what it spreads.
    fn flip(owner: &mut Replica, service: u16, status: Health) -> Change {
        let mut record = owner.own_record().cloned().unwrap();
        let id = format!("service:web-{service}");
        let check = Check {
            status,
            ..record.checks[id.as_str()].clone()
        };
        record.checks.insert(id.into(), check);
        owner.set_own_record(Some(record));
        let mut out = owner.take_outbox();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    /// A node `a` with a large record that `b` holds.
    fn pair() -> (Replica, Replica) {
        let (mut a, mut b) = (replica("a", 1), replica("b", 2));
        a.set_own_record(Some(large(100)));
        for change in a.take_outbox() {
            assert!(
                matches!(change, Change::Record { .. }),
                "the first record is whole"
            );
            b.apply(&change, NOW).unwrap();
        }
        (a, b)
    }

    fn same_record(a: &Replica, b: &Replica) -> bool {
        let register = |r: &Replica| r.records().entry("a").map(|e| e.register.clone());
        register(a) == register(b) && a.records().digest() == b.records().digest()
    }

    #[test]
    fn a_flip_travels_as_a_patch_and_makes_the_owners_record() {
        let (mut a, mut b) = pair();
        let change = flip(&mut a, 5, Health::Critical);
        let Change::Patch(patch) = &change else {
            panic!("a flip on a large record spreads as a patch: {change:?}");
        };
        assert!(change.weight() < 200, "{} bytes", change.weight());
        let (bytes, record) = (
            crate::journal::encode(&change).len(),
            a.own_record().unwrap().encoded_len(),
        );
        eprintln!("a flip on a record of 100 services: {bytes} bytes, the record {record}");
        assert!(
            bytes < 200 && record > 20 * bytes,
            "{bytes} bytes, the record {record}"
        );
        assert_eq!(patch.checks.len(), 1);
        assert_eq!(b.apply(&change, NOW), Ok(true));
        assert_eq!(b.apply(&change, NOW), Ok(false), "a copy is known");
        assert_eq!(a.records().digest(), b.records().digest());
        assert_eq!(b.own_record(), None);
        assert_eq!(
            b.records().get("a").unwrap().checks["service:web-5"].status,
            Health::Critical
        );
        assert_eq!(b.stats().patches_applied, 1);
    }

    #[test]
    fn patches_that_arrive_out_of_order_wait_for_their_base() {
        let (mut a, mut b) = pair();
        let first = flip(&mut a, 1, Health::Critical);
        let second = flip(&mut a, 2, Health::Warning);
        let third = flip(&mut a, 1, Health::Passing);
        assert_eq!(b.apply(&third, NOW), Ok(false));
        assert_eq!(b.apply(&second, NOW), Ok(false));
        assert_eq!(b.stats().patches_waited, 2);
        assert_eq!(b.apply(&first, NOW), Ok(true));
        assert!(same_record(&a, &b), "all three applied once the first came");
        assert_eq!(b.stats().patches_applied, 3);
        assert!(b.waiting.is_empty());
    }

    #[test]
    fn a_patch_without_its_base_waits_for_anti_entropy_and_a_newer_record_retires_it() {
        let (mut a, mut b) = pair();
        let lost = flip(&mut a, 1, Health::Critical);
        let next = flip(&mut a, 2, Health::Critical);
        assert_eq!(b.apply(&next, NOW), Ok(false), "held");
        assert!(b.owners_waiting_since(NOW - 1).is_empty());
        assert_eq!(b.owners_waiting_since(NOW), BTreeSet::from(["a"]));
        // Anti-entropy brings the record at the lost patch's version: the held one applies.
        let Change::Patch(lost) = lost else { panic!() };
        let at_lost = Change::Record {
            owner: "a".into(),
            register: lost.apply_to(&large(100)).unwrap(),
        };
        assert_eq!(b.apply(&at_lost, NOW), Ok(true));
        assert!(same_record(&a, &b));

        // A newer whole record makes a held patch obsolete: it is dropped, not applied.
        let (mut a, mut b) = pair();
        flip(&mut a, 1, Health::Critical);
        let held = flip(&mut a, 2, Health::Critical);
        flip(&mut a, 3, Health::Critical);
        b.apply(&held, NOW).unwrap();
        let whole = Change::Record {
            owner: "a".into(),
            register: a.records().entry("a").unwrap().register.clone(),
        };
        assert_eq!(b.apply(&whole, NOW), Ok(true));
        assert!(same_record(&a, &b));
        assert!(b.waiting.is_empty());
        assert_eq!(b.stats().patches_applied, 0);
    }

    #[test]
    fn a_patch_that_does_not_make_the_owners_record_is_refused() {
        let (mut a, mut b) = pair();
        let Change::Patch(mut patch) = flip(&mut a, 1, Health::Critical) else {
            panic!()
        };
        let before = b.records().digest();
        patch.checks[0].1.as_mut().unwrap().status = Health::Warning;
        assert_eq!(
            b.apply(&Change::Patch(patch), NOW),
            Err(ApplyError::Malformed(
                "a record patch that does not make its owner's record"
            ))
        );
        assert_eq!(b.records().digest(), before);
    }

    #[test]
    fn held_patches_are_bounded() {
        let (mut a, mut b) = pair();
        flip(&mut a, 0, Health::Critical);
        let patches: Vec<Change> = (0..MAX_WAITING_PATCHES + 10)
            .map(|i| flip(&mut a, (i % 100) as u16, Health::Warning))
            .collect();
        for patch in &patches {
            b.apply(patch, NOW).unwrap();
        }
        assert_eq!(b.waiting.len(), MAX_WAITING_PATCHES);
        assert_eq!(b.stats().patches_dropped, 10);

        // And by bytes: a patch that alone takes more than the limit is not kept.
        let Change::Patch(mut huge) = patches[0].clone() else {
            panic!()
        };
        let check = huge.checks[0].1.clone().unwrap();
        huge.checks = (0..40_000)
            .map(|i| (format!("c{i}").into(), Some(check.clone())))
            .collect();
        assert!(huge.weight() > MAX_WAITING_BYTES);
        b.apply(&Change::Patch(huge), NOW).unwrap();
        let held: usize = b.waiting.iter().map(|(p, _)| p.weight()).sum();
        assert!(held <= MAX_WAITING_BYTES, "{held} bytes held");
    }

    #[test]
    fn a_patch_is_journaled_as_the_record_it_makes() {
        let (mut a, mut b) = pair();
        let mut log = b.take_journal();
        b.apply(&flip(&mut a, 1, Health::Critical), NOW).unwrap();
        let after = b.take_journal();
        assert!(
            matches!(
                after.as_slice(),
                [Journaled::Change {
                    change: Change::Record { .. },
                    ..
                }]
            ),
            "{after:?}"
        );
        log.extend(after);
        let restored = Replica::restore("b", 2, 2, ReplicaConfig::default(), None, log);
        assert_eq!(restored.records().digest(), a.records().digest());
    }

    #[test]
    fn an_earlier_lifes_patch_that_outran_this_one_is_answered_with_a_whole_record() {
        let (mut old_life, _) = pair();
        for status in [Health::Critical, Health::Passing, Health::Critical] {
            flip(&mut old_life, 1, status);
        }
        let outrunning = flip(&mut old_life, 2, Health::Critical);
        let mut new_life = replica("a", 1);
        new_life.set_own_record(Some(large(100)));
        new_life.take_outbox();
        new_life.apply(&outrunning, NOW).unwrap();
        let out = new_life.take_outbox();
        let [Change::Record { register, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        let Change::Patch(outrunning) = outrunning else {
            panic!()
        };
        assert!(*register.stamp() > outrunning.version);
        assert_eq!(register.value().as_deref(), Some(&large(100)));
    }
}
