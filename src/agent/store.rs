//! The replica on disk under `--data-dir`: `state/journal` (appended) and `state/snapshot`
//! (compacts the journal), in the formats of `murmur_catalog::journal`.
//!
//! A writer thread appends journal batches with **group commit**: it takes every batch waiting,
//! writes them, calls `fdatasync` once, then publishes the highest sequence number now durable.
//! An API write waits for its batch to be durable before it answers, so an acknowledged write
//! survives a crash; concurrent writers share one sync. When the journal grows past
//! [`COMPACT_AFTER`], the agent hands the writer a snapshot, which it writes atomically (temp
//! file, fsync, rename, fsync of the directory) before emptying the journal.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, bail};
use murmur_catalog::{
    Journaled, Snapshot, decode_journal, decode_snapshot, encode_record, encode_snapshot,
    journal_header, journal_header_after_snapshot,
};
use tokio::sync::watch;

/// Journal size that triggers a snapshot.
pub const COMPACT_AFTER: u64 = 32 << 20;

/// What the replica looked like when the agent stopped.
pub struct Loaded {
    /// The last snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Journal entries written after it.
    pub journal: Vec<Journaled>,
}

/// The `state/` directory.
pub struct Store {
    dir: PathBuf,
    /// Whether `state/` was there before this start: once it is, it always holds a journal
    /// (the first start writes one, compactions only empty it).
    existed: bool,
}

impl Store {
    /// Opens (creating) `root/state`.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("state");
        let existed = dir.is_dir();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}: check permissions", dir.display()))?;
        Ok(Self { dir, existed })
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal")
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    fn damaged(&self, path: &Path, err: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{} is damaged: {err}. Nothing was changed: restore the data dir from a backup, or \
             move {} away to start this node with empty replicated state (its peers will \
             refill it, but writes only this node held are lost)",
            path.display(),
            self.dir.display()
        )
    }

    /// Reads the snapshot and journal; a torn journal tail (a crash while appending, nothing
    /// acknowledged) is cut off with a warning, any other damage is an error.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let snapshot = match fs::read(self.snapshot_path()) {
            Ok(bytes) => {
                Some(decode_snapshot(&bytes).map_err(|e| self.damaged(&self.snapshot_path(), e))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read {}", self.snapshot_path().display()));
            }
        };
        let path = self.journal_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.existed => Vec::new(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.damaged(&path, "it is missing (removed?), so this node would start without the writes it acknowledged"));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        // Empty is what a crash in a compaction leaves, after the snapshot took everything.
        if bytes.is_empty() && self.existed && snapshot.is_none() {
            return Err(self.damaged(
                &path,
                "it is empty and there is no snapshot, so this node would start without the writes it acknowledged",
            ));
        }
        let contents = decode_journal(&bytes).map_err(|e| self.damaged(&path, e))?;
        if contents.follows_snapshot && snapshot.is_none() {
            return Err(self.damaged(
                &self.snapshot_path(),
                "it is missing, and the journal continues it (removed?)",
            ));
        }
        if contents.torn {
            tracing::warn!(
                path = %path.display(),
                kept = contents.valid_len,
                dropped = bytes.len() - contents.valid_len,
                "the journal ends in a torn write (a crash while appending; it was never \
                 acknowledged): cutting it off"
            );
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(contents.valid_len as u64)?;
            file.sync_all()?;
        }
        Ok(Loaded {
            snapshot,
            journal: contents.entries,
        })
    }

    /// Starts the writer thread.
    pub fn start_writer(self) -> anyhow::Result<Persister> {
        let journal = self.open_journal()?;
        let (tx, rx) = mpsc::channel();
        let (durable, durable_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            failed: Mutex::default(),
            wants_snapshot: AtomicBool::new(false),
        });
        let written = journal.metadata()?.len();
        let writer = Writer {
            store: self,
            journal,
            written,
            rx,
            durable,
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("murmur-persist".into())
            .spawn(move || writer.run())
            .context("cannot start the persistence thread")?;
        Ok(Persister {
            tx,
            seq: AtomicU64::new(0),
            durable: durable_rx,
            shared,
        })
    }

    fn open_journal(&self) -> anyhow::Result<File> {
        let path = self.journal_path();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.metadata()?.len() == 0 {
            file.write_all(journal_header())?;
            file.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(file)
    }

    /// Atomically replaces the snapshot, then empties the journal.
    fn compact(&self, journal: &mut File, snapshot: &Snapshot) -> anyhow::Result<()> {
        let path = self.snapshot_path();
        let tmp = self.dir.join(".snapshot.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&encode_snapshot(snapshot))?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        // Everything journaled so far is in the snapshot: the journal starts over, saying so.
        journal.set_len(0)?;
        journal.write_all(journal_header_after_snapshot())?;
        journal.sync_all()?;
        Ok(())
    }
}

enum Job {
    Append(u64, Vec<Journaled>),
    Snapshot(u64, Box<Snapshot>),
}

struct Shared {
    /// Batches that could not be written (a full or read-only disk), with why; the oldest are
    /// forgotten past [`FAILURES_KEPT`] (their waiters were answered long ago).
    failed: Mutex<std::collections::VecDeque<(std::ops::RangeInclusive<u64>, String)>>,
    wants_snapshot: AtomicBool,
}

/// How many failed write rounds [`Shared::failed`] remembers.
const FAILURES_KEPT: usize = 1024;

impl Shared {
    /// Why batch `seq` was not written, if it was not.
    fn failure_of(&self, seq: u64) -> Option<String> {
        let failed = self.failed.lock().expect("poisoned");
        failed
            .iter()
            .rev()
            .find(|(seqs, _)| seqs.contains(&seq))
            .map(|(_, why)| why.clone())
    }
}

/// The agent's handle on the writer thread.
pub struct Persister {
    tx: mpsc::Sender<Job>,
    seq: AtomicU64,
    durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
}

impl Persister {
    /// Queues journal entries; returns their sequence number. Call in the order the replica
    /// made them (under the node lock).
    pub fn append(&self, entries: Vec<Journaled>) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        // A closed channel means the writer died; `wait_durable` reports why.
        let _ = self.tx.send(Job::Append(seq, entries));
        seq
    }

    /// Queues a snapshot of the replica (taken under the node lock, after every entry
    /// appended so far).
    pub fn snapshot(&self, snapshot: Snapshot) {
        self.shared.wants_snapshot.store(false, Ordering::SeqCst);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.tx.send(Job::Snapshot(seq, Box::new(snapshot)));
    }

    /// Whether the journal has grown enough to be compacted.
    pub fn wants_snapshot(&self) -> bool {
        self.shared.wants_snapshot.load(Ordering::SeqCst)
    }

    /// The sequence number of the latest queued batch.
    pub fn last_queued(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Waits until batch `seq` is on disk; an error if it could not be written.
    pub async fn wait_durable(&self, seq: u64) -> anyhow::Result<()> {
        let mut durable = self.durable.clone();
        let reached = durable.wait_for(|&done| done >= seq).await.is_ok();
        if let Some(why) = self.shared.failure_of(seq) {
            bail!(
                "the change is applied in memory and spreads to the other agents, but this agent could not write it to its data dir, so it would lose it if it restarted now: {why}"
            );
        }
        if !reached {
            bail!("the persistence thread stopped");
        }
        Ok(())
    }
}

struct Writer {
    store: Store,
    journal: File,
    /// Length of the journal up to its last whole, synced batch: a failed append is cut back
    /// to it, so a later batch never lands after a half-written one.
    written: u64,
    rx: mpsc::Receiver<Job>,
    durable: watch::Sender<u64>,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(self.rx.try_iter());
            let seqs = jobs.iter().map(|j| match j {
                Job::Append(seq, _) | Job::Snapshot(seq, _) => *seq,
            });
            let (first, last) = (seqs.clone().min().unwrap_or(0), seqs.max().unwrap_or(0));
            let started = std::time::Instant::now();
            if let Err(err) = self.write(jobs) {
                tracing::error!(
                    "cannot persist the replicated state (the writes are refused with 500 until it can): {err:#}"
                );
                metrics::counter!("murmur_persist_failures_total").increment(1);
                self.cut_back();
                let mut failed = self.shared.failed.lock().expect("poisoned");
                if failed.len() == FAILURES_KEPT {
                    failed.pop_front();
                }
                failed.push_back((first..=last, format!("{err:#}")));
            }
            metrics::histogram!("murmur_persist_seconds").record(started.elapsed().as_secs_f64());
            self.durable.send_replace(last);
        }
    }

    fn write(&mut self, jobs: Vec<Job>) -> anyhow::Result<()> {
        let mut pending = Vec::new();
        for job in jobs {
            match job {
                Job::Append(_, entries) => {
                    for entry in &entries {
                        pending.extend(encode_record(entry));
                    }
                }
                Job::Snapshot(_, snapshot) => {
                    // No sync: the snapshot holds these entries too, and empties the journal.
                    self.journal.write_all(&pending)?;
                    self.written += pending.len() as u64;
                    pending.clear();
                    self.store.compact(&mut self.journal, &snapshot)?;
                    self.written = journal_header_after_snapshot().len() as u64;
                }
            }
        }
        if !pending.is_empty() {
            if self.written == 0 {
                // A compaction failed between emptying the journal and writing its header.
                self.journal.write_all(journal_header_after_snapshot())?;
                self.written = journal_header_after_snapshot().len() as u64;
            }
            self.journal.write_all(&pending)?;
            self.journal.sync_data()?;
            self.written += pending.len() as u64;
        }
        if self.written > COMPACT_AFTER {
            self.shared.wants_snapshot.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Writer {
    /// After a failed write: drops whatever part of it reached the journal, so the journal
    /// ends with the last whole batch, and a half-written snapshot's temp file.
    fn cut_back(&mut self) {
        let _ = fs::remove_file(self.store.dir.join(".snapshot.tmp"));
        // Only ever shorter: a compaction that failed after emptying the journal left a
        // journal whose contents are all in the snapshot.
        let now = self.journal.metadata().map_or(self.written, |m| m.len());
        self.written = self.written.min(now);
        if let Err(err) = self
            .journal
            .set_len(self.written)
            .and_then(|()| self.journal.sync_data())
        {
            tracing::error!(
                "cannot cut the journal back to its last whole batch ({} bytes): {err}",
                self.written
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use murmur_catalog::{KvValue, Replica, ReplicaConfig};

    use super::*;

    fn write(replica: &mut Replica, key: &str) -> Vec<Journaled> {
        let value = Some(KvValue {
            flags: 0,
            value: b"v".to_vec(),
        });
        replica.kv_write(key, value, None, 1).unwrap();
        replica.take_journal()
    }

    #[tokio::test]
    async fn journal_and_snapshot_survive_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = Replica::new("a", 1, 1, ReplicaConfig::default());
        {
            let persister = Store::open(dir.path()).unwrap().start_writer().unwrap();
            let seq = persister.append(write(&mut replica, "one"));
            persister.snapshot(replica.snapshot());
            persister.append(write(&mut replica, "two"));
            let last = persister.append(write(&mut replica, "three"));
            assert!(last > seq);
            persister.wait_durable(last).await.unwrap();
        }
        let journal = dir.path().join("state/journal");
        let mut torn = OpenOptions::new().append(true).open(&journal).unwrap();
        torn.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        let restored = Replica::restore(
            "a",
            1,
            2,
            ReplicaConfig::default(),
            loaded.snapshot,
            loaded.journal,
        );
        let keys: Vec<&str> = restored.kv().list("").map(|e| e.key).collect();
        assert_eq!(keys, ["one", "three", "two"]);
        assert_eq!(restored.index(), replica.index());
        let len = fs::metadata(&journal).unwrap().len();
        assert!(
            Store::open(dir.path()).unwrap().load().is_ok(),
            "cut, not damaged"
        );
        assert_eq!(fs::metadata(&journal).unwrap().len(), len);
    }

    #[test]
    fn damage_is_an_error_that_says_what_to_do_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        fs::write(state.join("snapshot"), b"garbage!").unwrap();
        let err = format!(
            "{:#}",
            Store::open(dir.path()).unwrap().load().err().unwrap()
        );
        assert!(
            err.contains("snapshot is damaged") && err.contains("backup"),
            "{err}"
        );
        assert_eq!(fs::read(state.join("snapshot")).unwrap(), b"garbage!");
    }

    #[tokio::test]
    async fn a_removed_or_emptied_file_stops_the_start_instead_of_starting_with_less() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = Replica::new("a", 1, 1, ReplicaConfig::default());
        {
            let persister = Store::open(dir.path()).unwrap().start_writer().unwrap();
            let seq = persister.append(write(&mut replica, "one"));
            persister.wait_durable(seq).await.unwrap();
        }
        let state = dir.path().join("state");
        let journal = state.join("journal");
        let refused = |what: &str| {
            let err = format!(
                "{:#}",
                Store::open(dir.path()).unwrap().load().err().unwrap()
            );
            assert!(err.contains(what), "{err}");
            assert!(
                err.contains(&format!("move {} away", state.display())),
                "{err}"
            );
        };
        let kept = fs::read(&journal).unwrap();
        fs::write(&journal, b"").unwrap();
        refused("journal is damaged: it is empty");
        fs::remove_file(&journal).unwrap();
        refused("journal is damaged: it is missing");
        fs::write(&journal, &kept).unwrap();
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .load()
                .unwrap()
                .journal
                .len(),
            1
        );

        // After a compaction the journal continues the snapshot: without it, it is refused.
        {
            let persister = Store::open(dir.path()).unwrap().start_writer().unwrap();
            persister.snapshot(replica.snapshot());
            let seq = persister.append(write(&mut replica, "two"));
            persister.wait_durable(seq).await.unwrap();
        }
        assert!(fs::read(&journal).unwrap().starts_with(b"MMJS"));
        fs::remove_file(state.join("snapshot")).unwrap();
        refused("snapshot is damaged: it is missing, and the journal continues it");
    }
}
