//! Items murmur piggybacks on foca's messages: user events, leave intents and small changes
//! of the replicated state.
//!
//! foca re-disseminates every item its handler accepts as new, so the handler is where
//! deduplication lives; accepted items are handed to the core through `received`.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use foldhash::quality::FixedState;

use murmur_catalog::{Change, Hlc, Version};
use serde::{Deserialize, Serialize};

use crate::NodeIdentity;
use crate::events::UserEvent;
use crate::wire::{self, DropReason};

/// How many items the handler remembers for deduplication. Items stop circulating after a
/// few gossip rounds, long before they are forgotten here.
const SEEN_CAPACITY: usize = 8192;

/// One piggybacked item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum BroadcastItem {
    /// A user event (`murmur event`).
    Event(UserEvent),
    /// The named member, in the given generation, is leaving on purpose: its coming `Down` means
    /// "left", not "failed".
    Leaving { name: String, generation: u64 },
    /// A change of the replicated state small enough for a datagram.
    Change(Change),
}

impl BroadcastItem {
    fn key(&self) -> BroadcastKey {
        match self {
            Self::Event(event) => BroadcastKey::Event(event.id),
            Self::Leaving { name, generation } => BroadcastKey::Leaving(name.clone(), *generation),
            Self::Change(change) => {
                let stamp = match change {
                    Change::Record { register, .. } => ChangeStamp::Record(*register.stamp()),
                    Change::Shared { register, .. } => ChangeStamp::Shared(*register.stamp()),
                    Change::Patch(patch) => ChangeStamp::Patch(patch.version),
                };
                BroadcastKey::Change(change.subject().to_owned(), stamp)
            }
        }
    }

    /// Whether the item waits for messages sent anyway instead of starting a gossip round
    /// (see [`Change::is_background`]).
    pub(crate) fn is_background(&self) -> bool {
        matches!(self, Self::Change(change) if change.is_background())
    }
}

/// The stamp of a change, for telling a newer change of one key from an older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ChangeStamp {
    Record(Version),
    Shared(Hlc),
    /// A record patch making this version: it applies only on top of the version before.
    Patch(Version),
}

impl ChangeStamp {
    /// Whether a queued change of the same key with stamp `older` is no longer worth sending
    /// once this one is queued. A whole record replaces every older record and patch; a
    /// patch replaces nothing older, since a member that missed the one before needs it.
    fn supersedes(&self, older: &Self) -> bool {
        match (self, older) {
            (Self::Record(newer), Self::Record(older) | Self::Patch(older))
            | (Self::Patch(newer), Self::Patch(older))
                if newer == older =>
            {
                true
            }
            (Self::Record(newer), Self::Record(older) | Self::Patch(older)) => newer > older,
            (Self::Shared(newer), Self::Shared(older)) => newer >= older,
            _ => false,
        }
    }
}

/// Identity of an item: two items with one key are the same item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum BroadcastKey {
    Event([u8; 16]),
    Leaving(String, u64),
    Change(String, ChangeStamp),
}

impl foca::Invalidates for BroadcastKey {
    /// A newer change of a key replaces an older one still queued, so a key written often
    /// costs one queue slot, not one per write (record patches excepted, see
    /// [`ChangeStamp::supersedes`]).
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Change(key, newer), Self::Change(other_key, older)) => {
                key == other_key && newer.supersedes(older)
            }
            _ => self == other,
        }
    }
}

/// foca's handler for custom broadcasts: deduplicates, decodes, and passes new items on.
///
/// Items are recognised by a 64-bit hash of their bytes, before any decoding: nearly every item
/// a member receives is a copy it already has (each is sent a dozen times by every member), and
/// decoding each copy to find its key was a sixth of a quiet 500-node simulation. Equal items
/// encode to equal bytes; two items that differ in bytes but not in key (only a faulty writer
/// makes those) both pass, and the replica's merge settles them as it settles any two writes.
pub(crate) struct BroadcastInbox {
    fingerprints: FixedState,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    pub(crate) received: Arc<Mutex<Vec<BroadcastItem>>>,
}

/// A piggybacked item that did not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable broadcast item")]
pub(crate) struct BadItem;

impl BroadcastInbox {
    /// An inbox whose hashes are seeded with `seed` (the member's node id: each member hashes
    /// differently, and a run is replayable).
    pub(crate) fn new(received: Arc<Mutex<Vec<BroadcastItem>>>, seed: u64) -> Self {
        Self {
            fingerprints: FixedState::with_seed(seed),
            seen: HashSet::new(),
            order: VecDeque::new(),
            received,
        }
    }

    /// Records an item's fingerprint; false when it was already known.
    fn remember(&mut self, fingerprint: u64) -> bool {
        if !self.seen.insert(fingerprint) {
            return false;
        }
        self.order.push_back(fingerprint);
        if self.order.len() > SEEN_CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

impl foca::BroadcastHandler<NodeIdentity> for BroadcastInbox {
    type Key = BroadcastKey;
    type Error = BadItem;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<BroadcastKey>, BadItem> {
        let fingerprint = self.fingerprints.hash_one(data);
        if self.seen.contains(&fingerprint) {
            return Ok(None);
        }
        let item: BroadcastItem = wire::decode(data).map_err(|_: DropReason| BadItem)?;
        let key = item.key();
        self.remember(fingerprint);
        self.received.lock().expect("inbox poisoned").push(item);
        Ok(Some(key))
    }

    /// The key says it: a shared key's change ([`ChangeStamp::Shared`]) under a background
    /// key ([`murmur_catalog::is_background_key`]), as [`Change::is_background`] decides.
    fn is_background(&self, key: &BroadcastKey) -> bool {
        match key {
            BroadcastKey::Change(subject, ChangeStamp::Shared(_)) => {
                murmur_catalog::is_background_key(subject)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use foca::BroadcastHandler;

    use super::*;

    #[test]
    fn duplicates_are_accepted_once() {
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut inbox = BroadcastInbox::new(received.clone(), 1);
        let item = BroadcastItem::Leaving {
            name: "a".into(),
            generation: 3,
        };
        let bytes = wire::encode(&item);
        assert!(inbox.receive_item(&bytes, None).unwrap().is_some());
        assert!(inbox.receive_item(&bytes, None).unwrap().is_none());
        assert_eq!(received.lock().unwrap().len(), 1);
        assert!(inbox.receive_item(&[0xff, 0xff], None).is_err());
    }

    #[test]
    fn a_newer_change_of_a_key_replaces_the_queued_one() {
        use foca::Invalidates;
        let stamp = |ms| Hlc {
            physical_ms: ms,
            logical: 0,
            node: 1,
        };
        let key = |k: &str, ms| BroadcastKey::Change(k.into(), ChangeStamp::Shared(stamp(ms)));
        assert!(key("kv/a", 2).invalidates(&key("kv/a", 1)));
        assert!(!key("kv/a", 1).invalidates(&key("kv/a", 2)));
        assert!(!key("kv/b", 2).invalidates(&key("kv/a", 1)));
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let mut inbox = BroadcastInbox::new(Arc::default(), 1);
        for i in 0..(SEEN_CAPACITY as u64 + 10) {
            inbox.remember(i);
        }
        assert_eq!(inbox.seen.len(), SEEN_CAPACITY);
    }
}
