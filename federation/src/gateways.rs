//! Which agents of a datacenter serve as its WAN gateways, decided by every agent alike.
//!
//! There is no election: every agent ranks the live agents of its datacenter that may serve
//! (`--wan-eligible`) by rendezvous hashing of their names, and the top K serve. Two agents
//! with the same view of their datacenter pick the same gateways; views differ only while a
//! change spreads, and the rule converges once they agree.
//!
//! Selection is sticky: a gateway that serves keeps serving while it is alive, even when an
//! agent that ranks higher joins later, so a WAN pool does not churn as a datacenter grows or
//! restarts agents. Which agents serve is itself visible to all (the agent publishes it in its
//! node record), so the stickiness needs no local memory and a restarted agent agrees at once.
//! When more than K serve (two agents filled the same vacancy from different views), the
//! lowest-ranked step down.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use murmur_catalog::{NodeRecord, Replica};

/// Node meta of an agent that may serve as a gateway: its WAN address.
pub const ELIGIBLE_META: &str = "murmur-wan-eligible";
/// Node meta of an agent that serves as a gateway now: its WAN address.
pub const GATEWAY_META: &str = "murmur-wan-gateway";
/// Node meta beside [`GATEWAY_META`]: the membership generation of the agent's life that
/// claimed the seat. A claim counts only while it is the claimant's current generation.
pub const GATEWAY_LIFE_META: &str = "murmur-wan-gateway-life";

/// How many gateways a datacenter runs unless told otherwise (`--wan-gateways`): enough that
/// one crash leaves two, few enough that the WAN pool stays small.
pub const DEFAULT_GATEWAYS: usize = 3;

/// An agent that may serve as a gateway, as one agent sees it: alive in its membership view and
/// `--wan-eligible`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The agent's node name: its rank follows from it, so a restart keeps the rank.
    pub name: &'a str,
    /// Whether the agent says it serves now (in the WAN pool).
    pub serving: bool,
}

/// The agent's rendezvous score: a fixed hash of its name (see [`murmur_gossip::rendezvous`]).
pub use murmur_gossip::rendezvous::score;

/// The gateways among `candidates` when `k` should serve, highest rank first: those serving
/// now (the `k` best ranked if more do), then the best ranked of the others up to `k`.
/// Candidates are distinct by name; their order does not matter.
pub fn select<'a>(k: usize, candidates: &[Candidate<'a>]) -> Vec<&'a str> {
    let ranked = |serving: bool| {
        let mut names: Vec<&'a str> = candidates
            .iter()
            .filter(|c| c.serving == serving)
            .map(|c| c.name)
            .collect();
        // Ties of the 64-bit score are broken by name, so the order is total.
        names.sort_by_key(|name| (Reverse(score(name)), *name));
        names
    };
    let mut selected = ranked(true);
    selected.truncate(k);
    let vacancies = k - selected.len();
    selected.extend(ranked(false).into_iter().take(vacancies));
    selected
}

/// Whether the agent named `me` should serve, by [`select`].
pub fn should_serve(me: &str, k: usize, candidates: &[Candidate<'_>]) -> bool {
    select(k, candidates).contains(&me)
}

/// Whether a node's view is current enough to run the selection on: its replica completed an
/// anti-entropy exchange since `life_started_ms` (this life's start, wall-clock ms), or the
/// node knows no live peer to exchange with. A replica restored from disk shows the
/// datacenter as it was before the restart: deciding on it, a gateway that crashed and came
/// back sees its successor as not serving, takes a seat, and then (the higher ranked of too
/// many) displaces the successor.
pub fn view_is_current(replica: &Replica, life_started_ms: u64, live_peers: usize) -> bool {
    live_peers == 0 || replica.last_contact_ms() >= life_started_ms
}

/// Whether the agent named `me` should serve, from what its replica says: the agents whose
/// records carry [`ELIGIBLE_META`] and are not among `failed` (owners its membership does not
/// consider active; `me` counts as live), and which of them hold a seat ([`holds_seat`]).
/// `life` gives an agent's current generation as membership knows it.
pub fn selected(
    replica: &Replica,
    failed: &BTreeSet<String>,
    me: &str,
    k: usize,
    life: impl Fn(&str) -> Option<u64>,
) -> bool {
    let records = replica.records();
    let candidates: Vec<Candidate<'_>> = records
        .iter()
        .filter(|(name, record)| {
            record.meta.contains_key(ELIGIBLE_META) && (*name == me || !failed.contains(*name))
        })
        .map(|(name, record)| Candidate {
            name,
            serving: holds_seat(record, life(name)),
        })
        .collect();
    should_serve(me, k, &candidates)
}

/// Whether `record` claims a gateway seat for its owner's life `current` (membership's
/// generation of it; `None`: unknown). A record of an earlier life still says what the agent
/// did before it restarted (a gateway that crashed) until the new life's record arrives, and
/// counting that claim made a successor step down for the restarted agent. A claim that names
/// no life (an agent of an older version) counts.
pub fn holds_seat(record: &NodeRecord, current: Option<u64>) -> bool {
    let claimed = record.meta.get(GATEWAY_LIFE_META).map(|l| l.parse::<u64>());
    record.meta.contains_key(GATEWAY_META)
        && match (claimed, current) {
            (Some(Ok(claimed)), Some(current)) => claimed == current,
            (Some(Err(_)), _) => false,
            _ => true,
        }
}

/// Whether a serving agent, whose own record is `own` and whose membership generation is
/// `generation`, must claim its seat again: the record claims none for that generation
/// (membership renewed its identity after declaring it down), so peers no longer count it.
pub fn claim_is_stale(own: Option<&NodeRecord>, generation: u64) -> bool {
    own.is_some_and(|r| !holds_seat(r, Some(generation)))
}

/// Sets `record`'s claim of a gateway seat: serving at WAN address `wan` in the life
/// `generation`, or (`None`) not serving.
pub fn claim_seat(record: &mut NodeRecord, wan: Option<&str>, generation: u64) {
    match wan {
        Some(wan) => {
            record.meta.insert(GATEWAY_META.into(), wan.to_owned());
            record
                .meta
                .insert(GATEWAY_LIFE_META.into(), generation.to_string());
        }
        None => {
            record.meta.remove(GATEWAY_META);
            record.meta.remove(GATEWAY_LIFE_META);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn candidates<'a>(
        names: &'a BTreeSet<String>,
        serving: &BTreeSet<String>,
    ) -> Vec<Candidate<'a>> {
        names
            .iter()
            .map(|name| Candidate {
                name,
                serving: serving.contains(name),
            })
            .collect()
    }

    /// A replica of `me` holding the records of `owners` (name, generation, serving).
    fn replica_with(me: &str, owners: &[(&str, u64, bool)]) -> Replica {
        let mut replica = Replica::new(me, 1, 1, murmur_catalog::ReplicaConfig::default());
        for &(name, generation, serving) in owners {
            let mut owner = Replica::new(
                name,
                9,
                generation,
                murmur_catalog::ReplicaConfig::default(),
            );
            let mut record = murmur_catalog::NodeRecord::default();
            record.meta.insert(ELIGIBLE_META.into(), "wan".into());
            claim_seat(&mut record, serving.then_some("wan"), generation);
            owner.set_own_record(Some(record));
            for change in owner.take_outbox() {
                replica.apply(&change, 1).unwrap();
            }
        }
        replica
    }

    #[test]
    fn a_claim_from_an_earlier_life_does_not_hold_a_seat() {
        // "a" ranks above "b"; "a" served, crashed and came back as generation 2, but only
        // the record of its first life (still serving) has arrived. "b" serves.
        let (a, b) = if score("a") > score("b") {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let replica = replica_with("me", &[(a, 1, true), (b, 1, true)]);
        let none = BTreeSet::new();
        let restarted = |name: &str| Some(if name == a { 2 } else { 1 });
        assert!(
            selected(&replica, &none, b, 1, restarted),
            "b keeps its seat: a's claim is its old life's"
        );
        let unchanged = |_: &str| Some(1);
        assert!(
            !selected(&replica, &none, b, 1, unchanged),
            "two live claims for one seat: the higher ranked keeps it"
        );
    }

    #[test]
    fn a_claim_names_its_life_and_one_without_a_life_counts() {
        let mut record = NodeRecord::default();
        assert!(!holds_seat(&record, Some(1)), "no claim");
        claim_seat(&mut record, Some("10.0.0.1:8302"), 3);
        assert!(holds_seat(&record, Some(3)));
        assert!(holds_seat(&record, None), "life unknown");
        assert!(!holds_seat(&record, Some(4)), "renewed or restarted since");
        record.meta.remove(GATEWAY_LIFE_META);
        assert!(holds_seat(&record, Some(4)), "an older agent's claim");
        record.meta.insert(GATEWAY_LIFE_META.into(), "x".into());
        assert!(!holds_seat(&record, Some(4)), "garbage claims nothing");
        assert!(claim_is_stale(Some(&record), 4));
        claim_seat(&mut record, None, 4);
        assert!(!holds_seat(&record, None));
        assert!(
            claim_is_stale(Some(&record), 4),
            "serving with no claim: claim again"
        );
        assert!(!claim_is_stale(None, 4), "no record yet");
        assert!(!record.meta.contains_key(GATEWAY_LIFE_META));
    }

    #[test]
    fn a_restored_view_is_current_only_after_an_exchange_or_when_alone() {
        let replica = replica_with("me", &[]);
        assert_eq!(replica.last_contact_ms(), 0);
        assert!(!view_is_current(&replica, 5, 3), "restored, not yet synced");
        assert!(
            view_is_current(&replica, 5, 0),
            "alone: nobody to sync with"
        );
        assert!(view_is_current(&replica, 0, 3), "nothing to be newer than");
    }

    /// Runs the selection to its fixed point from nobody serving: each round, the selected
    /// serve and the others stop, as agents do when they see the result.
    fn settle(
        k: usize,
        names: &BTreeSet<String>,
        mut serving: BTreeSet<String>,
    ) -> BTreeSet<String> {
        for _ in 0..4 {
            let next: BTreeSet<String> = select(k, &candidates(names, &serving))
                .into_iter()
                .map(str::to_owned)
                .collect();
            if next == serving {
                return serving;
            }
            serving = next;
        }
        panic!("selection did not settle: {serving:?}");
    }

    fn names() -> impl Strategy<Value = BTreeSet<String>> {
        prop::collection::btree_set("[a-z]{1,6}[0-9]{0,2}", 0..24)
    }

    proptest! {
        #[test]
        fn as_many_as_asked_or_all(k in 0usize..6, names in names(), serving in names()) {
            let serving: BTreeSet<String> = serving.intersection(&names).cloned().collect();
            let selected = select(k, &candidates(&names, &serving));
            prop_assert_eq!(selected.len(), k.min(names.len()));
            let distinct: BTreeSet<&str> = selected.iter().copied().collect();
            prop_assert_eq!(distinct.len(), selected.len());
        }

        #[test]
        fn every_agent_with_the_same_view_picks_the_same(
            k in 1usize..6, names in names(), serving in names(), seed in any::<u64>()
        ) {
            let serving: BTreeSet<String> = serving.intersection(&names).cloned().collect();
            let mut shuffled = candidates(&names, &serving);
            let len = shuffled.len().max(1) as u64;
            shuffled.rotate_left((seed % len) as usize);
            shuffled.reverse();
            prop_assert_eq!(select(k, &shuffled), select(k, &candidates(&names, &serving)));
        }

        #[test]
        fn from_nobody_serving_the_best_ranked_serve(k in 1usize..6, names in names()) {
            let settled = settle(k, &names, BTreeSet::new());
            let mut by_rank: Vec<&String> = names.iter().collect();
            by_rank.sort_by_key(|n| (Reverse(score(n)), n.as_str()));
            let top: BTreeSet<String> = by_rank.into_iter().take(k).cloned().collect();
            prop_assert_eq!(settled, top);
        }

        #[test]
        fn a_serving_gateway_stays_when_a_better_ranked_agent_joins(
            k in 1usize..6, names in names(), newcomer in "[a-z]{1,6}[0-9]{0,2}"
        ) {
            let serving = settle(k, &names, BTreeSet::new());
            let mut grown = names.clone();
            grown.insert(newcomer);
            let after = settle(k, &grown, serving.clone());
            if serving.len() == k {
                prop_assert_eq!(after, serving);
            } else {
                prop_assert!(after.is_superset(&serving));
            }
        }

        #[test]
        fn a_dead_gateway_is_replaced_and_the_others_stay(
            k in 1usize..6, names in names(), which in any::<prop::sample::Index>()
        ) {
            let serving = settle(k, &names, BTreeSet::new());
            prop_assume!(!serving.is_empty());
            let dead = serving.iter().nth(which.index(serving.len())).unwrap().clone();
            let mut alive = names.clone();
            alive.remove(&dead);
            let survivors: BTreeSet<String> = serving.iter().filter(|n| **n != dead).cloned().collect();
            let after = settle(k, &alive, survivors.clone());
            prop_assert!(after.is_superset(&survivors));
            prop_assert_eq!(after.len(), k.min(alive.len()));
            prop_assert!(!after.contains(&dead));
        }

        #[test]
        fn too_many_serving_the_lowest_ranked_step_down(k in 1usize..4, names in names()) {
            // Every agent thinks it serves (each filled a vacancy from its own view).
            let settled = settle(k, &names, names.clone());
            prop_assert_eq!(settled.len(), k.min(names.len()));
            let mut by_rank: Vec<&String> = names.iter().collect();
            by_rank.sort_by_key(|n| (Reverse(score(n)), n.as_str()));
            let top: BTreeSet<String> = by_rank.into_iter().take(k).cloned().collect();
            prop_assert_eq!(settled, top);
        }
    }
}
