//! What the agent keeps under `--data-dir`: its node id, its last generation, its keyring and
//! the mesh CA keys it holds. Every write is atomic (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new file, never half of one, and is
//! readable by the agent's user only (keys live here). A file that exists but cannot be read is
//! an error, never silently replaced.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use murmur_gossip::SecretKey;

/// Where the mesh CA keys live in the data dir.
const CA_FILE: &str = "ca.json";

/// One CA root and its key, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaKeyFile {
    /// The root certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// When it was created (wall ms), which orders it among the cluster's roots.
    pub created_ms: u64,
}

/// The agent's data directory.
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) the directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(root).with_context(|| {
            format!(
                "cannot create data dir {}: check the path and permissions",
                root.display()
            )
        })?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn read(&self, name: &str) -> anyhow::Result<Option<String>> {
        let path = self.root.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The JSON file `name` of an optional data dir, decoded; `T::default()` when there is no
    /// data dir or no such file. A file that does not decode is an error naming it, with
    /// `remedy` (what the user does about it).
    pub fn read_json<T: serde::de::DeserializeOwned + Default>(
        dir: Option<&Self>,
        name: &str,
        remedy: &str,
    ) -> anyhow::Result<T> {
        let Some(text) = dir.map(|d| d.read(name)).transpose()?.flatten() else {
            return Ok(T::default());
        };
        serde_json::from_str(&text)
            .with_context(|| format!("{name} in the data dir is corrupt: {remedy}"))
    }

    fn corrupt(&self, name: &str, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{} is corrupt ({what}): restore it from a backup, or delete it to start this node afresh",
            self.root.join(name).display()
        )
    }

    /// Atomically replaces `name` with `text`.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        fs::File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    /// The node id, created on first use.
    pub fn node_id(&self, fresh: u64) -> anyhow::Result<u64> {
        match self.read("node-id")? {
            Some(text) => u64::from_str_radix(text.trim(), 16)
                .map_err(|_| self.corrupt("node-id", "not a hex number")),
            None => {
                self.write("node-id", &format!("{fresh:016x}\n"))?;
                Ok(fresh)
            }
        }
    }

    /// A generation above every earlier one of this node, recorded before it is used.
    pub fn next_generation(&self, now_ms: u64) -> anyhow::Result<u64> {
        let last = match self.read("generation")? {
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| self.corrupt("generation", "not a number"))?,
            None => 0,
        };
        let next = now_ms.max(last + 1);
        self.write("generation", &format!("{next}\n"))?;
        Ok(next)
    }

    /// The persisted keyring, primary first, if there is one.
    pub fn keyring(&self) -> anyhow::Result<Option<Vec<SecretKey>>> {
        let Some(text) = self.read("keyring.json")? else {
            return Ok(None);
        };
        let keys: Vec<String> = serde_json::from_str(&text)
            .map_err(|_| self.corrupt("keyring.json", "not a JSON list of keys"))?;
        if keys.is_empty() {
            bail!(self.corrupt("keyring.json", "no keys"));
        }
        keys.iter()
            .map(|k| {
                SecretKey::from_base64(k).map_err(|e| self.corrupt("keyring.json", &e.to_string()))
            })
            .collect::<anyhow::Result<_>>()
            .map(Some)
    }

    /// The mesh CA keys this agent holds (`ca.json`, written by `murmur ca init` and by
    /// rotations), oldest first.
    pub fn ca_keys(&self) -> anyhow::Result<Vec<CaKeyFile>> {
        let Some(text) = self.read(CA_FILE)? else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&text).map_err(|e| self.corrupt(CA_FILE, &e.to_string()))
    }

    /// Persists the mesh CA keys this agent holds.
    pub fn save_ca_keys(&self, keys: &[CaKeyFile]) -> anyhow::Result<()> {
        self.write(CA_FILE, &serde_json::to_string_pretty(keys)?)
    }

    /// Persists the keyring.
    pub fn save_keyring(&self, keys: &[SecretKey]) -> anyhow::Result<()> {
        let list: Vec<String> = keys.iter().map(SecretKey::to_base64).collect();
        self.write("keyring.json", &serde_json::to_string_pretty(&list)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_only_grows_and_node_id_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.node_id(5).unwrap(), 5);
        assert_eq!(data.node_id(9).unwrap(), 5);
        assert_eq!(data.next_generation(100).unwrap(), 100);
        assert_eq!(
            data.next_generation(50).unwrap(),
            101,
            "a clock that went back never reuses a generation"
        );
    }

    #[test]
    fn corrupt_files_are_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("node-id"), "zz").unwrap();
        let err = data.node_id(1).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("node-id"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join("node-id")).unwrap(),
            "zz"
        );
        fs::write(dir.path().join("keyring.json"), "[\"short\"]").unwrap();
        assert!(
            data.keyring()
                .unwrap_err()
                .to_string()
                .contains("keyring.json")
        );
    }

    #[test]
    fn files_are_private_and_ca_keys_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert!(data.ca_keys().unwrap().is_empty());
        let keys = vec![CaKeyFile {
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            created_ms: 7,
        }];
        data.save_ca_keys(&keys).unwrap();
        assert_eq!(data.ca_keys().unwrap(), keys);
        let mode = fs::metadata(dir.path().join(CA_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "keys are readable by the agent's user only"
        );
        fs::write(dir.path().join(CA_FILE), "{").unwrap();
        assert!(data.ca_keys().unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn keyring_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert!(data.keyring().unwrap().is_none());
        let keys = vec![
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
        ];
        data.save_keyring(&keys).unwrap();
        assert_eq!(data.keyring().unwrap().unwrap(), keys);
    }
}
