//! The member list as users see it: one entry per node name, with serf's statuses.
//!
//! foca knows alive, suspect and down. murmur adds *why* a member is down: a member that
//! announced its leave (a `Leaving` broadcast for that generation) is `Left`, any other is
//! `Failed`. Entries are keyed by name, so a restarted node (higher generation) replaces its
//! ghost in place.

use std::collections::{BTreeSet, HashSet, VecDeque};

use foca::{Member, State};
use serde::{Deserialize, Serialize};

use crate::NodeIdentity;

/// Leave intents remembered (name, generation); old ones are forgotten first.
const LEAVING_CAPACITY: usize = 4096;

/// A member's status, numbered as serf and Consul's `/v1/agent/members` number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Reachable (status 1). Suspected members also report 1, as in serf.
    Alive,
    /// Reachable but suspected of failure; reported as alive until confirmed.
    Suspect,
    /// Announced its leave, not yet gone (status 2).
    Leaving,
    /// Left on purpose (status 3).
    Left,
    /// Declared down without a leave (status 4).
    Failed,
}

impl MemberStatus {
    /// serf's numeric status code.
    pub fn code(self) -> u8 {
        match self {
            Self::Alive | Self::Suspect => 1,
            Self::Leaving => 2,
            Self::Left => 3,
            Self::Failed => 4,
        }
    }

    /// Lower-case name, as `murmur members` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Leaving => "leaving",
            Self::Left => "left",
            Self::Failed => "failed",
        }
    }

    /// Whether the member still takes part in the cluster.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect | Self::Leaving)
    }
}

/// One entry of the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// The member's current identity (its latest known generation).
    pub identity: NodeIdentity,
    /// Its status.
    pub status: MemberStatus,
}

/// What changed about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEventKind {
    /// Became alive: new member, a new generation of a known one, or a return.
    Up,
    /// Suspected of failure.
    Suspect,
    /// Refuted a suspicion.
    Refuted,
    /// Announced its leave.
    Leaving,
    /// Left on purpose.
    Left,
    /// Declared failed.
    Failed,
    /// Forgotten after the reap time.
    Reaped,
}

/// A change in the member list, for logs and for the agent's subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// What happened.
    pub kind: MemberEventKind,
    /// To whom.
    pub member: NodeIdentity,
}

/// An entry of the member list, ordered and found by the member's name alone.
///
/// A set of these instead of a map from name to state saves the key's copy of the name
/// (24 bytes per entry; each node holds one entry per member, so ~0.5 GB at 10,000 simulated
/// nodes) while lookups by `&str` still work through `Borrow`.
#[derive(Debug)]
struct Entry(MemberState);

impl Entry {
    fn name(&self) -> &str {
        &self.0.identity.name
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl std::borrow::Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.name()
    }
}

/// The member list of one node (itself excluded).
#[derive(Debug, Default)]
pub struct MemberView {
    members: BTreeSet<Entry>,
    /// Inline names (`CompactString`): every applied update asks this set, and a `String`
    /// key would allocate a copy of the name for each question.
    leaving: HashSet<(compact_str::CompactString, u64)>,
    leaving_order: VecDeque<(compact_str::CompactString, u64)>,
    /// How many members are `Alive`, kept as statuses change so convergence checks over
    /// thousands of views cost O(1) per view.
    alive: usize,
}

impl MemberView {
    /// Number of members known, in any status.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of members seen `Alive`.
    pub fn alive_count(&self) -> usize {
        self.alive
    }

    fn count(&mut self, before: Option<MemberStatus>, after: MemberStatus) {
        let was = usize::from(before == Some(MemberStatus::Alive));
        let is = usize::from(after == MemberStatus::Alive);
        self.alive = self.alive + is - was;
    }

    /// All known members, by name.
    pub fn iter(&self) -> impl Iterator<Item = &MemberState> {
        self.members.iter().map(|entry| &entry.0)
    }

    /// One member by name.
    pub fn get(&self, name: &str) -> Option<&MemberState> {
        self.members.get(name).map(|entry| &entry.0)
    }

    /// Of `owners` (given in name order), those that are not active members, `me` excepted.
    ///
    /// Members are kept in name order too, so one walk over both lists finds them: a lookup
    /// per owner was 7% of a quiet 1,000-node simulation (every member asks at each sync
    /// tick for its record owners, and every health or DNS answer asks again).
    pub fn inactive_among<'a>(
        &self,
        owners: impl Iterator<Item = &'a String>,
        me: &str,
    ) -> BTreeSet<String> {
        let mut members = self.members.iter().peekable();
        owners
            .filter(|owner| {
                while members
                    .next_if(|entry| entry.name() < owner.as_str())
                    .is_some()
                {}
                let active = members
                    .peek()
                    .is_some_and(|entry| entry.name() == *owner && entry.0.status.is_active());
                *owner != me && !active
            })
            .cloned()
            .collect()
    }

    /// Whether every one of `names` (given in name order) is listed `Alive`, `me` excepted.
    ///
    /// One walk over both name-ordered lists, like [`MemberView::inactive_among`]: the
    /// simulator asks this of every node while waiting for a cluster to converge, and a
    /// lookup per name made that wait O(N² log N) (18% of forming 2,000 nodes).
    pub fn all_alive_among<'a>(&self, names: impl Iterator<Item = &'a str>, me: &str) -> bool {
        let mut members = self.members.iter().peekable();
        names.filter(|name| *name != me).all(|name| {
            while members.next_if(|entry| entry.name() < name).is_some() {}
            members
                .peek()
                .is_some_and(|entry| entry.name() == name && entry.0.status == MemberStatus::Alive)
        })
    }

    /// Leave intents still remembered, for push-pull.
    pub(crate) fn leaving(&self) -> impl Iterator<Item = &(compact_str::CompactString, u64)> {
        self.leaving_order.iter()
    }

    /// Applies a state foca settled on; returns the event if the status changed.
    pub(crate) fn apply(&mut self, update: &Member<NodeIdentity>) -> Option<MemberEvent> {
        let id = update.id();
        let left = self.leaving.contains(&(id.name.clone(), id.generation));
        let status = match update.state() {
            State::Alive | State::Suspect if left => MemberStatus::Leaving,
            State::Alive => MemberStatus::Alive,
            State::Suspect => MemberStatus::Suspect,
            State::Down if left => MemberStatus::Left,
            State::Down => MemberStatus::Failed,
        };
        let previous = self.get(&id.name);
        let before = previous.map(|p| p.status);
        if let Some(prev) = previous {
            if id.generation < prev.identity.generation {
                return None; // news about an older life
            }
            if id == &prev.identity && prev.status == status {
                return None;
            }
        }
        let kind = match (previous.map(|p| p.status), status) {
            (Some(MemberStatus::Suspect), MemberStatus::Alive)
                if previous.is_some_and(|p| &p.identity == id) =>
            {
                MemberEventKind::Refuted
            }
            (_, MemberStatus::Alive) => MemberEventKind::Up,
            (_, MemberStatus::Suspect) => MemberEventKind::Suspect,
            (_, MemberStatus::Leaving) => MemberEventKind::Leaving,
            (_, MemberStatus::Left) => MemberEventKind::Left,
            (_, MemberStatus::Failed) => MemberEventKind::Failed,
        };
        self.members.replace(Entry(MemberState {
            identity: id.clone(),
            status,
        }));
        self.count(before, status);
        Some(MemberEvent {
            kind,
            member: id.clone(),
        })
    }

    /// Records a leave intent; a member already down becomes `Left`, an active one `Leaving`.
    pub(crate) fn mark_leaving(&mut self, name: &str, generation: u64) -> Option<MemberEvent> {
        let key = (compact_str::CompactString::from(name), generation);
        if self.leaving.insert(key.clone()) {
            self.leaving_order.push_back(key);
            if self.leaving_order.len() > LEAVING_CAPACITY
                && let Some(old) = self.leaving_order.pop_front()
            {
                self.leaving.remove(&old);
            }
        }
        let entry = self.get(name)?;
        if entry.identity.generation != generation {
            return None;
        }
        let (status, kind) = match entry.status {
            MemberStatus::Failed => (MemberStatus::Left, MemberEventKind::Left),
            MemberStatus::Alive | MemberStatus::Suspect => {
                (MemberStatus::Leaving, MemberEventKind::Leaving)
            }
            MemberStatus::Leaving | MemberStatus::Left => return None,
        };
        let (before, identity) = (entry.status, entry.identity.clone());
        self.members.replace(Entry(MemberState {
            identity: identity.clone(),
            status,
        }));
        self.count(Some(before), status);
        Some(MemberEvent {
            kind,
            member: identity,
        })
    }

    /// Forgets a member whose reap time passed, unless a newer life replaced it meanwhile.
    pub(crate) fn reap(&mut self, id: &NodeIdentity) -> Option<MemberEvent> {
        let current = self.get(&id.name)?;
        if &current.identity != id || current.status.is_active() {
            return None;
        }
        let Entry(gone) = self.members.take(id.name.as_str())?;
        debug_assert_ne!(
            gone.status,
            MemberStatus::Alive,
            "only inactive members are reaped"
        );
        Some(MemberEvent {
            kind: MemberEventKind::Reaped,
            member: gone.identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentityFields;

    fn id(name: &str, generation: u64) -> NodeIdentity {
        IdentityFields {
            name: name.into(),
            node_id: 1,
            generation,
            addr: "127.0.0.1:1".parse().unwrap(),
            datacenter: "dc1".into(),
            tags: vec![],
        }
        .into()
    }

    fn kind(view: &mut MemberView, m: Member<NodeIdentity>) -> Option<MemberEventKind> {
        let kind = view.apply(&m).map(|e| e.kind);
        assert_counted(view);
        kind
    }

    fn assert_counted(view: &MemberView) {
        let alive = view
            .iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .count();
        assert_eq!(view.alive_count(), alive);
    }

    #[test]
    fn lifecycle_of_a_failed_member() {
        let mut v = MemberView::default();
        assert_eq!(
            kind(&mut v, Member::alive(id("a", 1))),
            Some(MemberEventKind::Up)
        );
        assert_eq!(kind(&mut v, Member::alive(id("a", 1))), None);
        assert_eq!(
            kind(&mut v, Member::new(id("a", 1), 0, State::Suspect)),
            Some(MemberEventKind::Suspect)
        );
        assert_eq!(
            kind(&mut v, Member::new(id("a", 1), 1, State::Alive)),
            Some(MemberEventKind::Refuted)
        );
        assert_eq!(
            kind(&mut v, Member::down(id("a", 1))),
            Some(MemberEventKind::Failed)
        );
        // News about an older generation never overrides the newer life.
        assert_eq!(
            kind(&mut v, Member::alive(id("a", 2))),
            Some(MemberEventKind::Up)
        );
        assert_eq!(kind(&mut v, Member::down(id("a", 1))), None);
        assert_eq!(v.get("a").unwrap().status, MemberStatus::Alive);
        assert!(
            v.reap(&id("a", 1)).is_none(),
            "reaping the old life keeps the new one"
        );
    }

    #[test]
    fn leave_intent_before_or_after_down_gives_left() {
        let mut v = MemberView::default();
        v.apply(&Member::alive(id("a", 1)));
        assert_eq!(
            v.mark_leaving("a", 1).map(|e| e.kind),
            Some(MemberEventKind::Leaving)
        );
        assert_eq!(
            kind(&mut v, Member::down(id("a", 1))),
            Some(MemberEventKind::Left)
        );

        v.apply(&Member::alive(id("b", 1)));
        v.apply(&Member::down(id("b", 1)));
        assert_eq!(v.get("b").unwrap().status, MemberStatus::Failed);
        assert_eq!(
            v.mark_leaving("b", 1).map(|e| e.kind),
            Some(MemberEventKind::Left)
        );
        assert_eq!(
            v.reap(&id("b", 1)).map(|e| e.kind),
            Some(MemberEventKind::Reaped)
        );
        assert!(v.get("b").is_none());
        assert_counted(&v);
    }

    /// A view holding each of `members` in the state its number picks (alive, suspect, down).
    fn view_of(members: &std::collections::BTreeMap<String, u8>) -> MemberView {
        let mut view = MemberView::default();
        for (name, state) in members {
            let state = [State::Alive, State::Suspect, State::Down][usize::from(*state)];
            view.apply(&Member::new(id(name, 1), 0, state));
        }
        view
    }

    proptest::proptest! {
        /// The one-walk answer equals a lookup per owner, whatever names and states are
        /// known (names from a small alphabet so that owners and members overlap).
        #[test]
        fn inactive_owners_match_a_lookup_per_owner(
            members in proptest::collection::btree_map("[a-e]{1,3}", 0..3u8, 0..40),
            owners in proptest::collection::btree_set("[a-e]{1,3}", 0..40),
            me in "[a-e]{1,3}",
        ) {
            let view = view_of(&members);
            let expected: BTreeSet<String> = owners
                .iter()
                .filter(|o| **o != me && view.get(o).is_none_or(|m| !m.status.is_active()))
                .cloned()
                .collect();
            proptest::prop_assert_eq!(view.inactive_among(owners.iter(), &me), expected);
        }

        /// Likewise for "all of these names are alive".
        #[test]
        fn all_alive_matches_a_lookup_per_name(
            members in proptest::collection::btree_map("[a-c]{1,2}", 0..3u8, 0..12),
            names in proptest::collection::btree_set("[a-c]{1,2}", 0..12),
            me in "[a-c]{1,2}",
        ) {
            let view = view_of(&members);
            let expected = names.iter().filter(|n| **n != me).all(|n| {
                view.get(n).is_some_and(|m| m.status == MemberStatus::Alive)
            });
            let walked = view.all_alive_among(names.iter().map(String::as_str), &me);
            proptest::prop_assert_eq!(walked, expected);
        }
    }
}
