//! Key/value semantics over the shared key space, as Consul's KV endpoint exposes them.
//!
//! Check-and-set is *local*: `cas=N` succeeds when this replica's modify index of the key is N
//! (`cas=0`: the key is absent or deleted here). With no leader, two agents can both accept a CAS
//! on the same index; the writes then resolve by last-writer-wins everywhere. The API says so.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::Clock;
use crate::register::Lww;
use crate::shared::{Entry, ModifyIndex, SharedMap};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted, in bytes (Consul's limit).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// A stored value with Consul's opaque flags.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// A write this replica accepted, to apply here and spread to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWrite {
    /// The key.
    pub key: String,
    /// The register to merge everywhere.
    pub register: Lww<KvValue>,
}

/// The KV store of one replica.
#[derive(Debug, Clone, Default)]
pub struct Kv {
    map: SharedMap<KvValue>,
}

fn check_key(key: &str) -> Result<(), KvError> {
    match key.len() {
        0 => Err(KvError::MissingKey),
        n if n > MAX_KEY_BYTES => Err(KvError::KeyTooLong(n)),
        _ => Ok(()),
    }
}

impl Kv {
    /// The underlying replicated map (for digests and merges).
    pub fn map(&self) -> &SharedMap<KvValue> {
        &self.map
    }

    /// Merges a register received from a peer.
    pub fn merge(&mut self, key: &str, register: &Lww<KvValue>, index: &mut ModifyIndex) -> bool {
        self.map.merge(key, register, index).is_some()
    }

    /// Writes `value` (or deletes, for `None`: a tombstone) at wall time `wall_ms`, unless `cas`
    /// does not match; returns the write to spread, or `None` when the CAS failed (Consul
    /// answers `false`).
    pub fn write(
        &mut self,
        key: &str,
        value: Option<KvValue>,
        cas: Option<u64>,
        clock: &mut Clock,
        wall_ms: u64,
        index: &mut ModifyIndex,
    ) -> Result<Option<KvWrite>, KvError> {
        check_key(key)?;
        if value
            .as_ref()
            .is_some_and(|v| v.value.len() > MAX_VALUE_BYTES)
        {
            return Err(KvError::ValueTooLarge);
        }
        if let Some(expected) = cas {
            let current = self.get(key).map_or(0, |e| e.modify_index);
            if current != expected {
                return Ok(None);
            }
        }
        let register = Lww::new(clock.now(wall_ms), value);
        self.map.merge(key, &register, index);
        Ok(Some(KvWrite {
            key: key.to_owned(),
            register,
        }))
    }

    /// The live entry of `key` (a deleted key is absent).
    pub fn get(&self, key: &str) -> Option<&Entry<KvValue>> {
        self.map.entry(key).filter(|e| !e.register.is_tombstone())
    }

    /// Live entries under `prefix`, in key order.
    pub fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry<KvValue>)> {
        self.map
            .prefix(prefix)
            .filter(|(_, e)| !e.register.is_tombstone())
    }

    /// Keys under `prefix`; with a separator, each key is cut after the first separator that
    /// follows the prefix and duplicates fold (`web/sub/a`, `web/sub/b` → `web/sub/`).
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> Vec<String> {
        let mut out = BTreeSet::new();
        for (key, _) in self.list(prefix) {
            let folded = separator.filter(|s| !s.is_empty()).and_then(|sep| {
                key[prefix.len()..]
                    .find(sep)
                    .map(|at| key[..prefix.len() + at + sep.len()].to_owned())
            });
            out.insert(folded.unwrap_or_else(|| key.clone()));
        }
        out.into_iter().collect()
    }

    /// The index of everything under `prefix`: the highest modify index there, deletes
    /// included, so deleting never makes it go backwards. 0 when nothing was ever there.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        self.map
            .prefix(prefix)
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn setup() -> (Kv, Clock, ModifyIndex) {
        (
            Kv::default(),
            Clock::new(1, Duration::from_secs(60)),
            ModifyIndex::default(),
        )
    }

    fn val(bytes: &[u8]) -> KvValue {
        KvValue {
            flags: 0,
            value: bytes.to_vec(),
        }
    }

    #[test]
    fn cas_zero_creates_only_and_cas_n_needs_the_current_index() {
        let (mut kv, mut clock, mut index) = setup();
        assert!(
            kv.write("k", Some(val(b"1")), Some(0), &mut clock, 10, &mut index)
                .unwrap()
                .is_some()
        );
        assert!(
            kv.write("k", Some(val(b"2")), Some(0), &mut clock, 11, &mut index)
                .unwrap()
                .is_none(),
            "exists"
        );
        let at = kv.get("k").unwrap().modify_index;
        assert!(
            kv.write(
                "k",
                Some(val(b"3")),
                Some(at + 5),
                &mut clock,
                12,
                &mut index
            )
            .unwrap()
            .is_none()
        );
        assert!(
            kv.write("k", Some(val(b"3")), Some(at), &mut clock, 13, &mut index)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            kv.get("k")
                .unwrap()
                .register
                .value()
                .as_ref()
                .unwrap()
                .value,
            b"3"
        );
        kv.write("k", None, None, &mut clock, 14, &mut index)
            .unwrap();
        assert!(
            kv.write("k", Some(val(b"4")), Some(0), &mut clock, 15, &mut index)
                .unwrap()
                .is_some(),
            "deleted = absent"
        );
    }

    #[test]
    fn keys_fold_at_the_separator_and_prefix_index_survives_deletes() {
        let (mut kv, mut clock, mut index) = setup();
        for key in ["web/a", "web/sub/x", "web/sub/y", "db/z"] {
            kv.write(key, Some(val(b"")), None, &mut clock, 1, &mut index)
                .unwrap();
        }
        assert_eq!(kv.keys("web/", Some("/")), ["web/a", "web/sub/"]);
        assert_eq!(kv.keys("", Some("/")), ["db/", "web/"]);
        assert_eq!(kv.keys("web/", None), ["web/a", "web/sub/x", "web/sub/y"]);
        assert!(kv.keys("nothing/", Some("/")).is_empty());
        let before = kv.prefix_index("web/");
        kv.write("web/a", None, None, &mut clock, 2, &mut index)
            .unwrap();
        assert!(
            kv.prefix_index("web/") > before,
            "a delete raises the prefix index"
        );
        assert_eq!(kv.list("web/").count(), 2);
    }

    #[test]
    fn limits_use_consuls_messages() {
        let (mut kv, mut clock, mut index) = setup();
        let err = kv
            .write("", Some(val(b"")), None, &mut clock, 1, &mut index)
            .unwrap_err();
        assert_eq!(err.to_string(), "Missing key name");
        let big = KvValue {
            flags: 0,
            value: vec![0; MAX_VALUE_BYTES + 1],
        };
        assert_eq!(
            kv.write("k", Some(big), None, &mut clock, 1, &mut index)
                .unwrap_err(),
            KvError::ValueTooLarge
        );
        assert!(matches!(
            kv.write(
                &"k".repeat(2000),
                Some(val(b"")),
                None,
                &mut clock,
                1,
                &mut index
            ),
            Err(KvError::KeyTooLong(2000))
        ));
    }

    #[test]
    fn concurrent_writes_of_one_key_resolve_the_same_on_both_replicas() {
        let (mut a, mut clock_a, mut index_a) = setup();
        let (mut b, _, mut index_b) = setup();
        let mut clock_b = Clock::new(2, Duration::from_secs(60));
        let wa = a
            .write(
                "k",
                Some(val(b"from a")),
                None,
                &mut clock_a,
                100,
                &mut index_a,
            )
            .unwrap()
            .unwrap();
        let wb = b
            .write(
                "k",
                Some(val(b"from b")),
                None,
                &mut clock_b,
                100,
                &mut index_b,
            )
            .unwrap()
            .unwrap();
        a.merge(&wb.key, &wb.register, &mut index_a);
        b.merge(&wa.key, &wa.register, &mut index_b);
        assert_eq!(a.get("k").unwrap().register, b.get("k").unwrap().register);
        assert_eq!(a.map().digests(), b.map().digests());
    }
}
