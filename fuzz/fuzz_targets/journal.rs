//! A data dir's files: the journal and the snapshot, then restoring a replica from what
//! decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_catalog::{
    JOURNAL_AFTER_SNAPSHOT_MAGIC, JOURNAL_MAGIC, Replica, ReplicaConfig, SNAPSHOT_MAGIC,
    decode_journal, decode_snapshot,
};

fuzz_target!(|data: &[u8]| {
    let mut journal = JOURNAL_MAGIC.to_vec();
    journal.extend_from_slice(data);
    let mut snapshot = SNAPSHOT_MAGIC.to_vec();
    snapshot.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    snapshot.extend_from_slice(data);
    let _ = decode_journal(data);
    let mut continued = JOURNAL_AFTER_SNAPSHOT_MAGIC.to_vec();
    continued.extend_from_slice(data);
    let _ = decode_journal(&continued);
    let entries = decode_journal(&journal)
        .map(|c| c.entries)
        .unwrap_or_default();
    let snapshot = decode_snapshot(&snapshot).ok();
    let _ = Replica::restore("fuzz", 1, 1, ReplicaConfig::default(), snapshot, entries);
});
