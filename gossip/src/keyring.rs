//! The gossip keyring: the keys a member can open packets with, and the one it seals with.
//!
//! Rotation works as in serf: `install` a new key everywhere, `use` it (it becomes primary and
//! new packets are sealed with it while the old key still opens packets in flight), then
//! `remove` the old one. Keys are 32 bytes, given in base64 like `murmur keygen` prints them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::GossipError;

/// Length of a gossip key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the random nonce in front of every sealed body (XChaCha20 takes 24 bytes, large
/// enough that random nonces never repeat in practice).
pub const NONCE_LEN: usize = 24;
/// Bytes the AEAD adds to a sealed body.
pub const TAG_LEN: usize = 16;

/// A 32-byte gossip key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Parses the base64 form that `murmur keygen` (and `consul keygen`) print.
    pub fn from_base64(text: &str) -> Result<Self, GossipError> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| {
            GossipError::InvalidKey(
                "the gossip key is not valid base64: generate one with `murmur keygen`".into(),
            )
        })?;
        let len = bytes.len();
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            GossipError::InvalidKey(format!(
                "the gossip key decodes to {len} bytes, but it must be {KEY_LEN}: generate one with `murmur keygen`"
            ))
        })?;
        Ok(Self(array))
    }

    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The base64 form, as users see and type it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The raw bytes, for carrying keys in keyring operations.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    /// Never prints the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The keys of one member. The first key is the primary; every key opens.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<SecretKey>,
}

/// A change to every member's keyring.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyringOp {
    /// Add a key that opens packets (does not seal yet).
    Install([u8; KEY_LEN]),
    /// Make an installed key the primary one.
    Use([u8; KEY_LEN]),
    /// Drop a key that is not the primary.
    Remove([u8; KEY_LEN]),
    /// Change nothing; the reply lists the member's keys.
    List,
}

impl Keyring {
    /// A keyring with one primary key, or an empty one (plaintext gossip) for `None`.
    pub fn new(primary: Option<SecretKey>) -> Self {
        Self {
            keys: primary.into_iter().collect(),
        }
    }

    /// A keyring from a persisted list, primary first.
    pub fn from_keys(keys: Vec<SecretKey>) -> Self {
        let mut ring = Self { keys: Vec::new() };
        for key in keys {
            if !ring.keys.contains(&key) {
                ring.keys.push(key);
            }
        }
        ring
    }

    /// True when packets are sealed (at least one key installed).
    pub fn is_encrypted(&self) -> bool {
        !self.keys.is_empty()
    }

    /// All keys, primary first.
    pub fn keys(&self) -> &[SecretKey] {
        &self.keys
    }

    /// Applies one rotation step; errors say why the step cannot be taken here.
    pub fn apply(&mut self, op: &KeyringOp) -> Result<(), GossipError> {
        match op {
            KeyringOp::Install(bytes) => {
                let key = SecretKey::from_bytes(*bytes);
                if !self.keys.contains(&key) {
                    self.keys.push(key);
                }
                Ok(())
            }
            KeyringOp::Use(bytes) => {
                let key = SecretKey::from_bytes(*bytes);
                let at = self.keys.iter().position(|k| k == &key).ok_or_else(|| {
                    GossipError::Keyring(
                        "that key is not installed: run `murmur keyring --install KEY` first"
                            .into(),
                    )
                })?;
                self.keys[..=at].rotate_right(1);
                Ok(())
            }
            KeyringOp::Remove(bytes) => {
                let key = SecretKey::from_bytes(*bytes);
                match self.keys.iter().position(|k| k == &key) {
                    Some(0) => Err(GossipError::Keyring(
                        "that key is the primary key: `--use` another key before removing it"
                            .into(),
                    )),
                    Some(at) => {
                        self.keys.remove(at);
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            KeyringOp::List => Ok(()),
        }
    }

    /// Seals `body` under the primary key, binding `aad` (the cleartext header).
    /// Returns `None` for an empty keyring.
    pub(crate) fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], body: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        cipher
            .encrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
    }

    /// Opens a sealed body with any installed key.
    pub(crate) fn open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        self.keys.iter().find_map(|key| {
            XChaCha20Poly1305::new((&key.0).into())
                .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
                .ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn base64_round_trip_and_clear_errors() {
        let k = key(3);
        assert_eq!(SecretKey::from_base64(&k.to_base64()).unwrap(), k);
        let short = SecretKey::from_base64("AAAA").unwrap_err().to_string();
        assert!(short.contains("3 bytes") && short.contains("32"), "{short}");
        assert!(SecretKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn rotation_keeps_old_key_opening_until_removed() {
        let mut ring = Keyring::new(Some(key(1)));
        let nonce = [9; NONCE_LEN];
        let old_sealed = ring.seal(&nonce, b"h", b"hello").unwrap();

        ring.apply(&KeyringOp::Install(*key(2).as_bytes())).unwrap();
        ring.apply(&KeyringOp::Use(*key(2).as_bytes())).unwrap();
        assert_eq!(ring.keys()[0], key(2));
        assert_eq!(ring.open(&nonce, b"h", &old_sealed).unwrap(), b"hello");

        let err = ring
            .apply(&KeyringOp::Remove(*key(2).as_bytes()))
            .unwrap_err();
        assert!(err.to_string().contains("primary"));
        ring.apply(&KeyringOp::Remove(*key(1).as_bytes())).unwrap();
        assert!(ring.open(&nonce, b"h", &old_sealed).is_none());
    }

    #[test]
    fn use_of_unknown_key_is_refused() {
        let mut ring = Keyring::new(Some(key(1)));
        assert!(ring.apply(&KeyringOp::Use(*key(5).as_bytes())).is_err());
    }

    #[test]
    fn header_is_authenticated() {
        let ring = Keyring::new(Some(key(1)));
        let nonce = [1; NONCE_LEN];
        let sealed = ring.seal(&nonce, b"cluster-a", b"x").unwrap();
        assert!(ring.open(&nonce, b"cluster-b", &sealed).is_none());
    }
}
