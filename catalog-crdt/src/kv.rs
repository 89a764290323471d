//! Key/value semantics over the shared key space, as Consul's KV endpoint exposes them.
//!
//! KV entries live under the `kv/` prefix of the shared map; [`KvView`] strips it. Writes go
//! through [`Replica::kv_write`](crate::Replica::kv_write), which checks the limits here.
//!
//! Check-and-set is *local*: `cas=N` succeeds when this replica's modify index of the key is N
//! (`cas=0`: the key is absent or deleted here). With no leader, two agents can both accept a CAS
//! on the same index; the writes then resolve by last-writer-wins everywhere. The API says so.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::shared::{Entry, SharedMap};
use crate::value::{KV_PREFIX, Value};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted, in bytes (Consul's limit).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// A stored value with Consul's opaque flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KvValue {
    /// Opaque client flags (`?flags=`).
    pub flags: u64,
    /// The bytes.
    pub value: Vec<u8>,
}

/// Why a KV write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Empty key.
    #[error("Missing key name")]
    MissingKey,
    /// Key over [`MAX_KEY_BYTES`].
    #[error("key is {0} bytes; the limit is {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    /// Value over [`MAX_VALUE_BYTES`].
    #[error("Value exceeds {MAX_VALUE_BYTES} byte limit")]
    ValueTooLarge,
}

/// Checks a write against Consul's limits.
pub(crate) fn validate(key: &str, value: Option<&KvValue>) -> Result<(), KvError> {
    match key.len() {
        0 => return Err(KvError::MissingKey),
        n if n > MAX_KEY_BYTES => return Err(KvError::KeyTooLong(n)),
        _ => {}
    }
    if value.is_some_and(|v| v.value.len() > MAX_VALUE_BYTES) {
        return Err(KvError::ValueTooLarge);
    }
    Ok(())
}

/// A live KV entry with its local indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvEntry<'a> {
    /// The key, without the internal prefix.
    pub key: &'a str,
    /// Flags and bytes.
    pub value: &'a KvValue,
    /// Local index of the write that created it.
    pub create_index: u64,
    /// Local index of its last change.
    pub modify_index: u64,
}

fn live<'a>(key: &'a str, entry: &'a Entry<Value>) -> Option<KvEntry<'a>> {
    match entry.register.value() {
        Some(Value::Kv(value)) => Some(KvEntry {
            key: key.strip_prefix(KV_PREFIX).unwrap_or(key),
            value,
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }),
        _ => None,
    }
}

/// Read-only KV queries over a replica's shared map.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    map: &'a SharedMap<Value>,
}

impl<'a> KvView<'a> {
    /// Queries the KV part of `map`.
    pub fn new(map: &'a SharedMap<Value>) -> Self {
        Self { map }
    }

    /// The live entry of `key` (a deleted key is absent).
    pub fn get(&self, key: &str) -> Option<KvEntry<'a>> {
        let full = format!("{KV_PREFIX}{key}");
        let (k, e) = self.map.prefix(&full).next().filter(|(k, _)| **k == full)?;
        live(k, e)
    }

    /// Live entries under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> impl Iterator<Item = KvEntry<'a>> + use<'a> {
        self.map
            .prefix(&format!("{KV_PREFIX}{prefix}"))
            .filter_map(|(k, e)| live(k, e))
    }

    /// Keys under `prefix`; with a separator, each key is cut after the first separator that
    /// follows the prefix and duplicates fold (`web/sub/a`, `web/sub/b` → `web/sub/`).
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> Vec<String> {
        let mut out = BTreeSet::new();
        for entry in self.list(prefix) {
            let key = entry.key;
            let folded = separator.filter(|s| !s.is_empty()).and_then(|sep| {
                key[prefix.len()..]
                    .find(sep)
                    .map(|at| key[..prefix.len() + at + sep.len()].to_owned())
            });
            out.insert(folded.unwrap_or_else(|| key.to_owned()));
        }
        out.into_iter().collect()
    }

    /// The index of everything under `prefix` (a single key is a prefix of itself): the
    /// highest modify index there, deletes included, so deleting never makes it go backwards.
    /// 0 when nothing was ever there.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        self.map.prefix_index(&format!("{KV_PREFIX}{prefix}"))
    }
}
