/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cmp::Ordering;

use bytes::BufMut;

/// A type capable of decoding a (associated) broadcast from a buffer
/// and deciding whether to keep disseminating it for other members
/// of the cluster (when it's new information) or to discard it (when
/// its outdated/stale).
pub trait BroadcastHandler<T> {
    /// A unique identifier for the broadcasts this handler manages
    ///
    /// It should be able to compare itself against an arbitrary number
    /// of other [`Self::Key`] instances and decide wether it
    /// replaces it or not so conflicting/stale information isn't
    /// disseminated.
    type Key: Invalidates;

    /// The error type that `receive_item` may emit. Will be wrapped
    /// by [`crate::Error::CustomBroadcast`].
    type Error: core::error::Error + Send + Sync + 'static;

    /// Decodes a [`Self::Key`] from a buffer and either discards
    /// it or tells Foca to persist and disseminate it.
    ///
    /// `Sender` is `None` when you're adding broadcast data directly,
    /// via [`crate::Foca::add_broadcast`], otherwise it will be the
    /// address of the member that sent the data. Notice that Foca
    /// doesn't track the origin of packets- if you need it you
    /// have to add it to the data you're broadcasting.
    ///
    /// When you receive a broadcast you have to decide whether it's
    /// new information that needs to be disseminated (`Ok(Some(...))`)
    /// or not (`Ok(None)`).
    ///
    /// Always yielding `Some(...)` is wrong because Foca will never
    /// know when to stop sending this information to other members.
    ///
    /// Example: Assume your custom broadcast is a simple Set-Key-Value
    /// operation. When you receive it you should check if your map
    /// contains the Key-Value pair; If it didn't, you yield
    /// `Some`, otherwise the operation is stale, so you yield `None`.
    ///
    /// The `data` parameter is the exact data provided to
    /// [`crate::Foca::add_broadcast`]. When Foca receives N custom
    /// broadcasts at once, this gets called N times.
    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&T>,
    ) -> Result<Option<Self::Key>, Self::Error>;

    /// Decides whether Foca should add broadcast data to the message
    /// it's about to send to active member `T`.
    ///
    /// Normally when Foca sends a message it always tries to include
    /// custom broadcasts alongside the information it actually
    /// cares about; This allows implementations to override this
    /// logic with something else.
    ///
    /// Example: You are running a heterogeneous cluster and some nodes
    /// are always very busy and you'd rather they never have to deal
    /// with the extra cpu/bandwidth cost of receiving/sending
    /// your custom broadcasts.
    ///
    /// Returning `true` tells Foca to proceed as it would normally,
    /// including broadcasts in the messages it sends when it can.
    ///
    /// Returning `false` tells Foca to not include such broadcasts
    /// in the message. It does *not* prevent the message from being
    /// sent, just keeps Foca from attaching extra data to them.
    fn should_add_broadcast_data(&self, _member: &T) -> bool {
        true
    }

    /// murmur's patch 13: whether a queued broadcast may wait for messages that are sent
    /// anyway (probes, their acks, gossip rounds started by other news) instead of starting
    /// a gossip round of its own. Periodic gossip only runs while a member update or a
    /// broadcast that is not background waits. The default, `false`, is foca's behaviour.
    fn is_background(&self, _key: &Self::Key) -> bool {
        false
    }
}

/// A type that's able to look at another and decide wether it's
/// newer/fresher (i.e. invalidates) than it.
///
/// As you send/receive broadcasts, Foca will hold them for a while
/// as it disseminates the data to other cluster members. This trait
/// helps with replacing data that hasn't been fully disseminated
/// yet but you already know it's stale.
///
/// Example: Assume a versioned broadcast like `{key,version,...}`;
/// After you receive `{K, 0, ...}` and keep it, Foca will be
/// disseminating it. Soon after you receive `{K, 1, ...}` which
/// is a newer version for this broadcast. This trait enables
/// Foca to immediately stop disseminating the previous version,
/// even if it hasn't sent it to everyone it can yet.
pub trait Invalidates {
    /// When `item.invalidates(&other)` it means that Foca will
    /// keep `item` and discard `other` from its dissemination
    /// backlog.
    fn invalidates(&self, other: &Self) -> bool;
}

impl Invalidates for &[u8] {
    fn invalidates(&self, other: &Self) -> bool {
        self.eq(other)
    }
}

/// murmur's patch: `fill` stops after this many entries in a row did not fit in what is left
/// of the packet. It used to pop and push back every queued entry once the packet was nearly
/// full, O(n log n) per message for a backlog of n (most of a 1,000-member cluster forming).
const MAX_MISFITS: usize = 8;

pub(crate) struct Broadcasts<V> {
    flip: alloc::collections::BinaryHeap<Entry<V>>,
    flop: alloc::collections::BinaryHeap<Entry<V>>,
}

impl<T> Broadcasts<T>
where
    T: Invalidates,
{
    pub(crate) fn new() -> Self {
        Self {
            flip: Default::default(),
            flop: Default::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.flip.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.flip.is_empty()
    }

    /// murmur's patch 13: whether an entry that is not background is queued. Background
    /// entries order below all others, so the heap's top says.
    pub(crate) fn has_urgent(&self) -> bool {
        self.flip.peek().is_some_and(|entry| !entry.background)
    }

    #[cfg(test)]
    pub(crate) fn add_or_replace(&mut self, item: T, data: Vec<u8>, max_tx: usize) {
        self.add_or_replace_as(item, data, max_tx, false);
    }

    /// murmur's patch 13: [`Self::add_or_replace`] for an entry that may be `background`
    /// (see `BroadcastHandler::is_background`): such entries leave after every other.
    pub(crate) fn add_or_replace_as(
        &mut self,
        item: T,
        data: Vec<u8>,
        max_tx: usize,
        background: bool,
    ) {
        debug_assert!(max_tx > 0);
        self.flip.retain(|node| !item.invalidates(&node.item));
        self.flip.push(Entry {
            remaining_tx: max_tx,
            background,
            item,
            data,
        });
    }

    /// foca's member updates fill through [`KeyedBroadcasts::fill`]; this is kept for
    /// foca's own tests of the queue.
    #[cfg(test)]
    pub(crate) fn fill(&mut self, mut buffer: impl BufMut, max_items: usize) -> usize {
        if self.flip.is_empty() {
            return 0;
        }
        debug_assert!(self.flop.is_empty());

        let mut num_taken = 0;
        let mut remaining = max_items;
        let mut misfits = 0;

        while buffer.has_remaining_mut() && remaining > 0 && misfits < MAX_MISFITS {
            let Some(mut node) = self.flip.pop() else {
                break;
            };
            debug_assert!(node.remaining_tx > 0);

            if buffer.remaining_mut() >= node.data.len() {
                num_taken += 1;
                remaining -= 1;

                buffer.put_slice(&node.data);
                node.remaining_tx -= 1;
            } else {
                misfits += 1;
            }

            if node.remaining_tx > 0 {
                self.flop.push(node);
            }
        }

        self.flip.append(&mut self.flop);

        num_taken
    }

    pub(crate) fn fill_with_len_prefix(
        &mut self,
        mut buffer: impl BufMut,
        max_items: usize,
    ) -> usize {
        if self.flip.is_empty() {
            return 0;
        }
        debug_assert!(self.flop.is_empty());

        let mut num_taken = 0;
        let mut remaining = max_items;
        let mut misfits = 0;

        while buffer.has_remaining_mut() && remaining > 0 && misfits < MAX_MISFITS {
            let Some(mut node) = self.flip.pop() else {
                break;
            };
            debug_assert!(node.remaining_tx > 0);

            if buffer.remaining_mut() >= node.data.len() + 2 {
                num_taken += 1;
                remaining -= 1;

                debug_assert!(u16::try_from(node.data.len()).is_ok());
                buffer.put_u16(node.data.len() as u16);
                buffer.put_slice(&node.data);
                node.remaining_tx -= 1;
            } else {
                misfits += 1;
            }

            if node.remaining_tx > 0 {
                self.flop.push(node);
            }
        }

        self.flip.append(&mut self.flop);

        num_taken
    }
}

/// murmur's patches 11, 15 and 18: broadcasts keyed by a hashable value that invalidates
/// exactly the entries with an equal key (foca's member updates, keyed by address), queued in
/// buckets by the transmissions they have left instead of in a heap, and encoded when sent.
///
/// [`Broadcasts`] scans its whole backlog and rebuilds its heap for every update it replaces,
/// and pops each entry it sends through the heap and pushes it back. While a third of a
/// 1,000-member cluster flaps in and out of a split, nearly every member is suspected and
/// refuted each time, the backlog holds hundreds of updates, and that scan, the pops and the
/// rebuilds were a fifth of the simulator's time. Here a replaced entry is only marked stale
/// (its key's live stamp moves on; it is dropped when it comes up, or swept once the stale
/// outnumber the live), and sending takes entries from the fullest bucket: O(1) per entry
/// queued or sent.
///
/// What leaves is what [`Broadcasts`] would send, in a slightly different order: entries with
/// the most transmissions left first, as there, and among equals the one that entered its
/// bucket last (queued, or moved down by its last transmission) instead of the largest.
/// memberlist also sends the newest first among equals. Oldest first was tried: a 1,000-node
/// chaos run (seed 1) then agreed 107 s after its last heal instead of 0.2 s, with 56
/// datagrams per node-second instead of 77; newest first, 0.2 s and 76, as with the heap.
///
/// An entry holds the value, not its bytes (patch 18): a member is an identity shared with
/// the member list, so an entry is 24 bytes and nothing else, where the bytes were one more
/// allocation per entry. While a cluster forms every member holds nearly every join queued
/// for seconds to minutes (its periodic gossip drains a few dozen a second), so this queue
/// is the largest thing a forming cluster holds. Sending encodes the value again; the
/// encoding is deterministic, so the same bytes leave.
pub(crate) struct KeyedBroadcasts<D: Keyed> {
    /// `by_remaining[n]`: the entries with `n` transmissions left, sent from the back; stale
    /// ones (replaced since they were queued) among them until they come up or are swept.
    by_remaining: Vec<VecDeque<KeyedEntry<D>>>,
    /// The stamp of each key's live entry.
    live: hashbrown::HashMap<D::Key, u64>,
    next_stamp: u64,
    /// How many stale entries the buckets hold.
    stale: usize,
    /// Entries taken by the `fill` under way, put back when it ends (so none is sent twice
    /// in one message): sent ones to the bucket below, misfits where they were.
    sent: Vec<(usize, KeyedEntry<D>)>,
    misfits: Vec<(usize, KeyedEntry<D>)>,
    /// The encoding of the entry being sent, reused.
    encoded: Vec<u8>,
}

/// A value queued in a [`KeyedBroadcasts`]: a newer value with an equal key replaces it.
pub(crate) trait Keyed {
    type Key: core::hash::Hash + Eq;

    fn key(&self) -> Self::Key;
}

struct KeyedEntry<D> {
    stamp: u64,
    data: D,
}

impl<D: Keyed> KeyedBroadcasts<D> {
    pub(crate) fn new() -> Self {
        Self {
            by_remaining: Vec::new(),
            live: hashbrown::HashMap::new(),
            next_stamp: 0,
            stale: 0,
            sent: Vec::new(),
            misfits: Vec::new(),
            encoded: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub(crate) fn add_or_replace(&mut self, data: D, max_tx: usize) {
        debug_assert!(max_tx > 0);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if self.live.insert(data.key(), stamp).is_some() {
            self.stale += 1;
        }
        if self.by_remaining.len() <= max_tx {
            self.by_remaining.resize_with(max_tx + 1, VecDeque::new);
        }
        self.by_remaining[max_tx].push_back(KeyedEntry { stamp, data });
        // Stale entries wait for their turn; past as many as are live, they are swept so the
        // queue stays within twice its live size.
        if self.stale > self.live.len().max(MIN_STALE_SWEPT) {
            let live = &self.live;
            for bucket in &mut self.by_remaining {
                bucket.retain(|entry| live.get(&entry.data.key()) == Some(&entry.stamp));
            }
            self.stale = 0;
        }
    }

    fn is_live(&self, entry: &KeyedEntry<D>) -> bool {
        // Without stale entries queued (the usual case) every entry is live.
        self.stale == 0 || self.live.get(&entry.data.key()) == Some(&entry.stamp)
    }

    /// Puts into `buffer` the encodings (by `encode`, which appends) of up to `max_items`
    /// live entries, fullest first, and returns how many. An entry that fails to encode is
    /// dropped (it could never be sent; it encoded when queued, so this is not expected) and
    /// the fill ends with the error; entries put in `buffer` before it count as sent.
    pub(crate) fn fill<E>(
        &mut self,
        mut buffer: impl BufMut,
        max_items: usize,
        mut encode: impl FnMut(&D, &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut taken = 0;
        let mut failed = None;
        'buckets: for remaining in (1..self.by_remaining.len()).rev() {
            while taken < max_items
                && self.misfits.len() < MAX_MISFITS
                && buffer.has_remaining_mut()
            {
                let bucket = &mut self.by_remaining[remaining];
                let Some(entry) = bucket.pop_back() else {
                    // A backlog passes through every bucket in turn: a bucket keeping its
                    // largest size would hold the backlog's room a dozen times over.
                    if bucket.capacity() > MAX_IDLE_BUCKET {
                        bucket.shrink_to_fit();
                    }
                    continue 'buckets;
                };
                if !self.is_live(&entry) {
                    self.stale -= 1;
                    continue;
                }
                self.encoded.clear();
                if let Err(err) = encode(&entry.data, &mut self.encoded) {
                    self.live.remove(&entry.data.key());
                    failed = Some(err);
                    break 'buckets;
                }
                if buffer.remaining_mut() < self.encoded.len() {
                    self.misfits.push((remaining, entry));
                    continue;
                }
                buffer.put_slice(&self.encoded);
                taken += 1;
                if remaining > 1 {
                    self.sent.push((remaining - 1, entry));
                } else {
                    self.live.remove(&entry.data.key());
                }
            }
            break;
        }
        for (remaining, entry) in self.misfits.drain(..).rev() {
            self.by_remaining[remaining].push_back(entry);
        }
        for (remaining, entry) in self.sent.drain(..) {
            self.by_remaining[remaining].push_back(entry);
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(taken),
        }
    }
}

/// Stale entries a [`KeyedBroadcasts`] may hold before sweeping, however few are live.
const MIN_STALE_SWEPT: usize = 64;

/// Entries an empty bucket of a [`KeyedBroadcasts`] keeps room for.
const MAX_IDLE_BUCKET: usize = 16;

#[derive(Debug, Clone)]
struct Entry<T> {
    remaining_tx: usize,
    /// murmur's patch 13: sent after every entry that is not background.
    background: bool,
    // XXX could be Bytes, or keep a pool in parent
    data: Vec<u8>,
    // ignored for eq/ord. sorting is unstable
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // The heap pops the greatest: entries that are not background first.
        other
            .background
            .cmp(&self.background)
            .then_with(|| self.remaining_tx.cmp(&other.remaining_tx))
            .then_with(|| self.data.len().cmp(&other.data.len()))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    struct Key(&'static str);

    impl Invalidates for Key {
        fn invalidates(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    #[test]
    fn piggyback_behaviour() {
        let max_tx = 5;
        let mut piggyback = Broadcasts::new();

        assert!(piggyback.is_empty(), "Piggyback starts empty");

        piggyback.add_or_replace(Key("AA"), b"AAabc".to_vec(), max_tx);

        assert_eq!(1, piggyback.len());

        piggyback.add_or_replace(Key("AA"), b"AAcba".to_vec(), max_tx);

        assert_eq!(
            1,
            piggyback.len(),
            "add_or_replace with same key should replace"
        );

        let mut buf = Vec::new();

        for _i in 0..max_tx {
            buf.clear();
            let num_items = piggyback.fill(&mut buf, usize::MAX);
            assert_eq!(1, num_items);
            assert_eq!(
                b"AAcba",
                &buf[..],
                "Should transmit an item at most max_tx times"
            );
        }

        assert!(
            piggyback.is_empty(),
            "Should remove item after being used max_tx times"
        );
    }

    #[test]
    fn fill_does_nothing_if_buffer_full() {
        let mut piggyback = Broadcasts::new();
        piggyback.add_or_replace(Key("a "), b"a super long value".to_vec(), 1);

        let buf = bytes::BytesMut::new();
        let mut limited = buf.limit(5);

        let num_items = piggyback.fill(&mut limited, usize::MAX);

        assert_eq!(0, num_items);
        assert_eq!(5, limited.remaining_mut());
        assert_eq!(1, piggyback.len());
    }

    #[test]
    fn piggyback_consumes_largest_first() {
        let max_tx = 10;
        let mut piggyback = Broadcasts::new();

        piggyback.add_or_replace(Key("00"), b"00hi".to_vec(), max_tx);
        piggyback.add_or_replace(Key("01"), b"01hello".to_vec(), max_tx);
        piggyback.add_or_replace(Key("02"), b"02hey".to_vec(), max_tx);

        let mut buf = Vec::new();
        let num_items = piggyback.fill(&mut buf, usize::MAX);

        assert_eq!(3, num_items);
        assert_eq!(b"01hello02hey00hi", &buf[..]);
    }

    #[test]
    fn highest_max_tx_is_consumed_first() {
        let mut piggyback = Broadcasts::new();

        // 3 items, same byte size, distinct max_tx
        piggyback.add_or_replace(Key("10"), b"100".to_vec(), 1);
        piggyback.add_or_replace(Key("20"), b"200".to_vec(), 2);
        piggyback.add_or_replace(Key("30"), b"300".to_vec(), 3);

        let mut buf = Vec::new();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300200100", &buf[..]);

        buf.clear();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300200", &buf[..]);

        buf.clear();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300", &buf[..]);

        assert_eq!(0, piggyback.len());
    }

    #[test]
    fn background_entries_leave_after_every_other() {
        // murmur's patch 13: a backlog of background entries never delays the others.
        let mut piggyback = Broadcasts::new();
        piggyback.add_or_replace_as(Key("bg"), b"background".to_vec(), 10, true);
        assert!(!piggyback.has_urgent());
        piggyback.add_or_replace(Key("ur"), b"urgent".to_vec(), 1);
        assert!(piggyback.has_urgent());

        let mut buf = Vec::new();
        assert_eq!(1, piggyback.fill(&mut buf, 1));
        assert_eq!(b"urgent".as_slice(), &buf[..]);
        assert!(!piggyback.has_urgent(), "the urgent entry was spent");
        assert_eq!(1, piggyback.len());
    }

    #[test]
    fn piggyback_respects_limit() {
        let max_tx = 10;
        let mut piggyback = Broadcasts::new();

        piggyback.add_or_replace(Key("fo"), b"foo".to_vec(), max_tx);
        piggyback.add_or_replace(Key("ba"), b"bar".to_vec(), max_tx);
        piggyback.add_or_replace(Key("ba"), b"baz".to_vec(), max_tx);

        let mut buf = Vec::new();
        let num_items = piggyback.fill(&mut buf, 0);

        assert_eq!(0, num_items);
        assert!(buf.is_empty());

        let num_items = piggyback.fill(&mut buf, 2);
        assert_eq!(2, num_items);
    }

    #[test]
    fn fill_with_len_prefix() {
        let mut bcs = Broadcasts::new();

        bcs.add_or_replace(Key("fo"), b"foo".to_vec(), 10);
        bcs.add_or_replace(Key("ba"), b"barr".to_vec(), 10);
        bcs.add_or_replace(Key("ba"), b"bazz".to_vec(), 10);

        let mut buf = Vec::new();
        let num_items = bcs.fill_with_len_prefix(&mut buf, 0);

        assert_eq!(0, num_items);
        assert!(buf.is_empty());

        let num_items = bcs.fill_with_len_prefix(&mut buf, 2);
        assert_eq!(2, num_items);

        use bytes::Buf;
        let mut buf = &buf[..];
        assert_eq!(4, buf.get_u16());
        assert_eq!(&b"bazz"[..], &buf[..4]);
        buf.advance(4);
        assert_eq!(3, buf.get_u16());
        assert_eq!(&b"foo"[..], &buf[..3]);
        buf.advance(3);
        assert!(buf.is_empty());
    }

    /// A value for the keyed queue's tests: its bytes, keyed by a name.
    struct Named {
        name: u8,
        data: Vec<u8>,
    }

    impl Keyed for Named {
        type Key = u8;

        fn key(&self) -> u8 {
            self.name
        }
    }

    fn encode_named(named: &Named, out: &mut Vec<u8>) -> Result<(), core::convert::Infallible> {
        out.extend_from_slice(&named.data);
        Ok(())
    }

    #[test]
    fn keyed_broadcasts_send_the_newest_first_among_equals() {
        let mut keyed = KeyedBroadcasts::new();
        for (name, max_tx) in [(b'a', 2), (b'b', 2), (b'c', 2), (b'd', 1)] {
            let data = alloc::vec![name];
            keyed.add_or_replace(Named { name, data }, max_tx);
        }
        let mut order = Vec::new();
        while !keyed.is_empty() {
            keyed.fill(&mut order, 1, encode_named).unwrap();
        }
        // With two left: c, b, a (the last queued first). With one left: a, b, c (the last
        // moved down first), then d, queued with one before them.
        assert_eq!(order, b"cbaabcd");
    }

    #[test]
    fn keyed_broadcasts_drop_what_fails_to_encode_and_keep_the_rest() {
        let mut keyed = KeyedBroadcasts::new();
        for name in [b'a', b'b', b'c'] {
            keyed.add_or_replace(
                Named {
                    name,
                    data: alloc::vec![name],
                },
                2,
            );
        }
        // c leaves first (the newest among equals); b cannot be encoded.
        let mut sent = Vec::new();
        let failed = keyed.fill(&mut sent, 3, |named, out| {
            if named.name == b'b' {
                return Err("b does not encode");
            }
            encode_named(named, out).map_err(|never| match never {})
        });
        assert_eq!(failed, Err("b does not encode"));
        assert_eq!(sent, b"c", "c was put in before the failure");
        assert_eq!(keyed.len(), 2, "b is dropped, a and c stay");
        let mut rest = Vec::new();
        while !keyed.is_empty() {
            keyed.fill(&mut rest, 1, encode_named).unwrap();
        }
        // a (two left, the fullest), then a again (moved down last), then c's last.
        assert_eq!(rest, b"aac");
    }

    #[test]
    fn keyed_broadcasts_send_each_live_entry_its_transmissions_fullest_first() {
        use bytes::BufMut;
        use rand::{RngExt, SeedableRng, rngs::SmallRng};

        // The model: each name's live data and transmissions left. An entry's data is its
        // name repeated, so a message reads back as runs of one name each.
        let mut model: hashbrown::HashMap<u8, (usize, usize)> = hashbrown::HashMap::new();
        let mut keyed = KeyedBroadcasts::new();
        let mut rng = SmallRng::seed_from_u64(11);
        let fill = |keyed: &mut KeyedBroadcasts<Named>,
                    model: &mut hashbrown::HashMap<u8, (usize, usize)>,
                    room: usize,
                    max_items: usize,
                    step: u32| {
            let mut sent = Vec::new();
            let taken = keyed
                .fill((&mut sent).limit(room), max_items, encode_named)
                .unwrap();
            let runs: Vec<&[u8]> = sent.chunk_by(|a, b| a == b).collect();
            assert_eq!(runs.len(), taken, "step {step}");
            assert!(taken <= max_items, "step {step}");
            let mut previous_left = usize::MAX;
            for run in runs {
                let name = run[0];
                let (len, left) = model.get_mut(&name).expect("only live entries are sent");
                assert_eq!(run.len(), *len, "the live data of {name}, step {step}");
                assert!(*left <= previous_left, "fullest first, step {step}");
                previous_left = *left;
                *left -= 1;
                if *left == 0 {
                    model.remove(&name);
                }
            }
            taken
        };
        for step in 0..20_000u32 {
            if rng.random_bool(0.6) {
                let name = rng.random_range(0..32u8);
                let len = rng.random_range(1..6);
                let max_tx = rng.random_range(1..5);
                let data = alloc::vec![name; len];
                keyed.add_or_replace(Named { name, data }, max_tx);
                model.insert(name, (len, max_tx));
            } else {
                let room = rng.random_range(0..24);
                let taken = fill(&mut keyed, &mut model, room, rng.random_range(1..5), step);
                if room >= 5 && !model.is_empty() {
                    assert!(taken > 0, "something fits, step {step}");
                }
            }
            assert_eq!(keyed.len(), model.len(), "step {step}");
            let queued: usize = keyed.by_remaining.iter().map(VecDeque::len).sum();
            assert_eq!(queued, keyed.len() + keyed.stale, "step {step}");
            assert!(
                queued <= 2 * keyed.len() + MIN_STALE_SWEPT + 1,
                "step {step}"
            );
        }
        // Room for everything: each entry leaves after its transmissions, and nothing else.
        for _ in 0..4 {
            fill(&mut keyed, &mut model, usize::MAX, usize::MAX, 0);
        }
        assert!(model.is_empty() && keyed.is_empty());
        assert!(keyed.by_remaining.iter().all(VecDeque::is_empty));
    }
}
