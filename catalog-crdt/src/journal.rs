//! The byte formats of a replica on disk: an append-only journal of [`Journaled`] entries and
//! a [`Snapshot`] that compacts it. Encoding only — the agent does the file I/O — so the
//! decoders can be fuzzed on their own.
//!
//! ```text
//! journal:  "MMJ1" | record*        record: len u32 LE | crc32(payload) u32 LE | payload
//!           "MMJS" | record*        (the same, continuing a snapshot)
//! snapshot: "MMS1" | crc32(payload) u32 LE | payload
//! ```
//!
//! Payloads are bincode 2 with a size limit, so a hostile length never allocates more than the
//! input holds. A record that fails its check and reaches the end of the journal is a *torn
//! write* (the agent crashed while appending; nothing in it was acknowledged): decoding stops
//! there and reports where the good part ends, so the agent can cut it off. A bad record with
//! more data after it is corruption, and an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::replica::{Journaled, Snapshot};

/// Journal file magic and format version.
pub const JOURNAL_MAGIC: &[u8; 4] = b"MMJ1";
/// Magic of a journal begun by a compaction: its entries follow a snapshot, so a journal
/// with this header and no snapshot beside it has lost its beginning.
pub const JOURNAL_AFTER_SNAPSHOT_MAGIC: &[u8; 4] = b"MMJS";
/// Snapshot file magic and format version.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"MMS1";
/// Largest journal record (a change carries at most a 512 KiB value or one node's record).
pub const MAX_RECORD: usize = 8 << 20;
const RECORD_HEADER: usize = 8;

/// A journal or snapshot that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Not a murmur file of this format version.
    #[error("not a murmur {what} of format version 1 (it starts with {found:?})")]
    WrongFormat {
        /// `journal` or `snapshot`.
        what: &'static str,
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A record in the middle fails its check.
    #[error("record at byte {offset} is damaged ({why}) and is followed by more data")]
    Corrupt {
        /// Where the record starts.
        offset: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The snapshot fails its check.
    #[error("snapshot is damaged ({0})")]
    BadSnapshot(&'static str),
}

/// What a journal holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalContents {
    /// The entries, in order.
    pub entries: Vec<Journaled>,
    /// Length of the good part; anything after it is a torn write to cut off.
    pub valid_len: usize,
    /// Whether a torn write was found.
    pub torn: bool,
    /// Whether the journal continues a snapshot (it was begun by a compaction).
    pub follows_snapshot: bool,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own in-memory types always serialize.
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodable")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], config: impl bincode::config::Config) -> Option<T> {
    match bincode::serde::decode_from_slice(bytes, config) {
        Ok((value, used)) if used == bytes.len() => Some(value),
        _ => None,
    }
}

/// The header a new journal file starts with.
pub fn journal_header() -> &'static [u8] {
    JOURNAL_MAGIC
}

/// The header of a journal begun by a compaction, whose entries follow a snapshot.
pub fn journal_header_after_snapshot() -> &'static [u8] {
    JOURNAL_AFTER_SNAPSHOT_MAGIC
}

/// One framed journal record.
pub fn encode_record(entry: &Journaled) -> Vec<u8> {
    let payload = encode(entry);
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a whole journal file.
pub fn decode_journal(bytes: &[u8]) -> Result<JournalContents, JournalError> {
    let mut contents = JournalContents {
        entries: Vec::new(),
        valid_len: 0,
        torn: false,
        follows_snapshot: false,
    };
    if bytes.is_empty() {
        return Ok(contents);
    }
    if bytes.len() < JOURNAL_MAGIC.len() {
        // Crashed while writing the header of a new journal.
        contents.torn = true;
        return Ok(contents);
    }
    if &bytes[..4] == JOURNAL_AFTER_SNAPSHOT_MAGIC {
        contents.follows_snapshot = true;
    } else if &bytes[..4] != JOURNAL_MAGIC {
        return Err(JournalError::WrongFormat {
            what: "journal",
            found: bytes[..4].to_vec(),
        });
    }
    let mut at = JOURNAL_MAGIC.len();
    contents.valid_len = at;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Ok((entry, next)) => {
                contents.entries.push(entry);
                at = next;
                contents.valid_len = at;
            }
            Err(Damage::ReachesEnd) => {
                contents.torn = true;
                break;
            }
            Err(Damage::Inside(why)) => return Err(JournalError::Corrupt { offset: at, why }),
        }
    }
    Ok(contents)
}

enum Damage {
    /// The bad record extends to the end of the input: a torn append.
    ReachesEnd,
    /// The bad record is followed by more data.
    Inside(&'static str),
}

fn record_at(bytes: &[u8], at: usize) -> Result<(Journaled, usize), Damage> {
    let header = bytes
        .get(at..at + RECORD_HEADER)
        .ok_or(Damage::ReachesEnd)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let start = at + RECORD_HEADER;
    let end = start.saturating_add(len);
    let damaged = |why| {
        if end >= bytes.len() {
            Damage::ReachesEnd
        } else {
            Damage::Inside(why)
        }
    };
    if len > MAX_RECORD {
        return Err(damaged("impossible length"));
    }
    let payload = bytes.get(start..end).ok_or(Damage::ReachesEnd)?;
    if crc32fast::hash(payload) != crc {
        return Err(damaged("checksum mismatch"));
    }
    let entry = decode(payload, config()).ok_or_else(|| damaged("undecodable"))?;
    Ok((entry, end))
}

/// A snapshot file's bytes.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let payload = encode(snapshot);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a snapshot file. Snapshots are written whole and renamed into place, so any damage
/// is an error.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, JournalError> {
    if bytes.len() < 8 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(JournalError::WrongFormat {
            what: "snapshot",
            found: bytes[..bytes.len().min(4)].to_vec(),
        });
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload = &bytes[8..];
    if crc32fast::hash(payload) != crc {
        return Err(JournalError::BadSnapshot("checksum mismatch"));
    }
    decode_sized(payload).ok_or(JournalError::BadSnapshot("undecodable"))
}

/// Decodes with a limit proportional to the input, so a hostile length prefix in a small file
/// cannot make bincode allocate gigabytes (it allocates what a length claims, up to the limit,
/// before reading). bincode's limit is a compile-time constant, so sizes go in classes; the
/// factor 16 covers in-memory sizes of valid data, which run a few times the encoded size.
fn decode_sized<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let need = bytes.len().saturating_mul(16);
    macro_rules! smallest_class {
        ($($shift:literal),*) => {
            $(
                if need <= 1usize << $shift {
                    let config = bincode::config::standard().with_limit::<{ 1usize << $shift }>();
                    return decode(bytes, config);
                }
            )*
        };
    }
    smallest_class!(16, 20, 24, 28, 32, 36, 40);
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kv::KvValue;
    use crate::replica::{Replica, ReplicaConfig};

    fn sample() -> (Replica, Vec<Journaled>) {
        let mut r = Replica::new("a", 1, 1, ReplicaConfig::default());
        for i in 0..5u8 {
            let value = Some(KvValue {
                flags: u64::from(i),
                value: vec![i; 10],
            });
            r.kv_write(&format!("k{i}"), value, None, 100).unwrap();
        }
        r.kv_write("k1", None, None, 101).unwrap();
        let journal = r.take_journal();
        (r, journal)
    }

    fn file(entries: &[Journaled]) -> Vec<u8> {
        let mut bytes = journal_header().to_vec();
        for e in entries {
            bytes.extend(encode_record(e));
        }
        bytes
    }

    #[test]
    fn journal_round_trip() {
        let (_, journal) = sample();
        let bytes = file(&journal);
        let contents = decode_journal(&bytes).unwrap();
        assert_eq!(contents.entries, journal);
        assert_eq!(contents.valid_len, bytes.len());
        assert!(!contents.torn);
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_every_length() {
        let (_, journal) = sample();
        let bytes = file(&journal);
        let last_start = file(&journal[..journal.len() - 1]).len();
        for cut in last_start + 1..bytes.len() {
            let contents = decode_journal(&bytes[..cut]).unwrap();
            assert!(contents.torn, "cut at {cut}");
            assert_eq!(contents.valid_len, last_start);
            assert_eq!(contents.entries, journal[..journal.len() - 1]);
        }
    }

    #[test]
    fn damage_in_the_middle_is_an_error() {
        let (_, journal) = sample();
        let mut bytes = file(&journal);
        bytes[JOURNAL_MAGIC.len() + RECORD_HEADER + 2] ^= 0xff;
        let err = decode_journal(&bytes).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { offset: 4, .. }),
            "{err}"
        );
        let err = decode_journal(b"JUNKdata").unwrap_err();
        assert!(err.to_string().contains("not a murmur journal"), "{err}");
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let (replica, _) = sample();
        let snapshot = replica.snapshot();
        let mut bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            decode_snapshot(&bytes).unwrap_err(),
            JournalError::BadSnapshot("checksum mismatch")
        );
        assert!(decode_snapshot(b"MM").is_err());
    }

    #[test]
    fn a_snapshot_of_many_small_entries_fits_its_size_class() {
        let mut r = Replica::new("a", 1, 1, ReplicaConfig::default());
        for i in 0..5_000 {
            r.kv_write(&format!("{i}"), Some(KvValue::default()), None, 1)
                .unwrap();
            r.kv_write(&format!("{i}"), None, None, 2).unwrap();
        }
        for i in 0..1_000 {
            let mut peer = Replica::new(&format!("n{i}"), i + 2, 1, ReplicaConfig::default());
            peer.set_own_record(None);
            for change in peer.take_outbox() {
                r.apply(&change, 3).unwrap();
            }
        }
        let snapshot = r.snapshot();
        assert_eq!(
            decode_snapshot(&encode_snapshot(&snapshot)).unwrap(),
            snapshot
        );
    }

    /// Found by `cargo fuzz run journal`: a 12-byte snapshot whose string length claims 2 GiB
    /// made bincode allocate it before reading (the limit was 1 TiB).
    #[test]
    fn a_small_snapshot_cannot_claim_a_huge_allocation() {
        let data = [4, 4, 33, 252, 0, 0, 0, 136, 0, 0, 6, 0];
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend(crc32fast::hash(&data).to_le_bytes());
        bytes.extend(data);
        assert_eq!(
            decode_snapshot(&bytes).unwrap_err(),
            JournalError::BadSnapshot("undecodable")
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut framed = JOURNAL_MAGIC.to_vec();
            framed.extend(&bytes);
            let _ = decode_journal(&framed);
            let _ = decode_journal(&bytes);
            let mut snap = SNAPSHOT_MAGIC.to_vec();
            snap.extend(crc32fast::hash(&bytes).to_le_bytes());
            snap.extend(&bytes);
            let _ = decode_snapshot(&snap);
        }
    }
}
