//! Who waits for what: blocking queries register the topic they read, and a change wakes only
//! the waiters whose topic it touches. A KV key wakes the waiters on each of its prefixes (a
//! lookup per prefix length, not a scan of the waiters), a record or membership change wakes
//! catalog waiters; nothing else wakes them. Ten thousand idle waiters are ten thousand parked
//! futures and their channels: memory, no CPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use murmur_catalog::{Change, EXTERNAL_PREFIX, Journaled, KV_PREFIX};
use tokio::sync::watch;

/// What a blocking query reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// KV entries whose key starts with this (a single key is its own prefix).
    Kv(String),
    /// Node records, external nodes and membership (catalog and health reads).
    Catalog,
    /// Any other replicated data (intentions, configuration entries).
    Other,
}

/// What one batch of changes touched.
#[derive(Debug, Default)]
pub struct Touched {
    kv_keys: Vec<String>,
    catalog: bool,
    other: bool,
}

impl Touched {
    /// Notes what the journal entries of one call changed.
    pub fn note_entries(&mut self, entries: &[Journaled]) {
        for entry in entries {
            match entry {
                Journaled::Change {
                    change: Change::Record { .. },
                    ..
                }
                | Journaled::ForgetRecord { .. } => self.catalog = true,
                Journaled::Change {
                    change: Change::Shared { key, .. },
                    ..
                }
                | Journaled::ForgetShared { key } => match key.strip_prefix(KV_PREFIX) {
                    Some(kv) => self.kv_keys.push(kv.to_owned()),
                    None if key.starts_with(EXTERNAL_PREFIX) => self.catalog = true,
                    None => self.other = true,
                },
                _ => {}
            }
        }
    }

    /// Notes a membership change (it moves `serfHealth` and so every health answer).
    pub fn note_membership(&mut self) {
        self.catalog = true;
    }
}

/// The registry of waiters by topic.
#[derive(Default)]
pub struct Watchers {
    topics: Mutex<HashMap<Topic, watch::Sender<u64>>>,
}

/// A waiter's subscription; dropping the last one for a topic forgets the topic.
pub struct Subscription {
    watchers: Arc<Watchers>,
    topic: Topic,
    /// Wakes when the topic may have changed.
    pub changes: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!("murmur_blocking_queries").decrement(1.0);
        let mut topics = self.watchers.lock();
        // Our receiver still counts: 1 means we are the last.
        if topics
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            topics.remove(&self.topic);
        }
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, watch::Sender<u64>>> {
        self.topics.lock().expect("watchers poisoned")
    }

    /// Subscribes to `topic`.
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> Subscription {
        let changes = self
            .lock()
            .entry(topic.clone())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        metrics::gauge!("murmur_blocking_queries").increment(1.0);
        Subscription {
            watchers: self.clone(),
            topic,
            changes,
        }
    }

    /// Wakes the waiters of every topic `touched` concerns.
    pub fn wake(&self, touched: &Touched) {
        if touched.kv_keys.is_empty() && !touched.catalog && !touched.other {
            return;
        }
        let topics = self.lock();
        if topics.is_empty() {
            return; // nobody waits: no prefix lookups on the write path
        }
        let bump = |topic: &Topic| {
            if let Some(tx) = topics.get(topic) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        if touched.catalog {
            bump(&Topic::Catalog);
        }
        if touched.other {
            bump(&Topic::Other);
        }
        for key in &touched.kv_keys {
            // Every prefix of the key, the empty one (the whole store) and the key included.
            for end in (0..=key.len()).filter(|&i| key.is_char_boundary(i)) {
                bump(&Topic::Kv(key[..end].to_owned()));
            }
        }
    }

    /// How many topics have waiters.
    #[cfg(test)]
    fn topics(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_change(key: &str) -> Touched {
        let mut t = Touched::default();
        t.kv_keys.push(key.to_owned());
        t
    }

    #[test]
    fn a_key_wakes_its_prefixes_and_nothing_else() {
        let w = Arc::new(Watchers::default());
        let mut app = w.subscribe(Topic::Kv("app/".into()));
        let mut exact = w.subscribe(Topic::Kv("app/color".into()));
        let mut other = w.subscribe(Topic::Kv("db/".into()));
        let catalog = w.subscribe(Topic::Catalog);
        w.wake(&kv_change("app/color"));
        assert!(app.changes.has_changed().unwrap());
        assert!(exact.changes.has_changed().unwrap());
        assert!(!other.changes.has_changed().unwrap());
        assert!(!catalog.changes.has_changed().unwrap());
        app.changes.borrow_and_update();
        w.wake(&Touched {
            catalog: true,
            ..Touched::default()
        });
        assert!(catalog.changes.has_changed().unwrap());
        assert!(!app.changes.has_changed().unwrap());
        other.changes.borrow_and_update();
        exact.changes.borrow_and_update();
    }

    #[test]
    fn topics_are_forgotten_with_their_last_waiter() {
        let w = Arc::new(Watchers::default());
        let a = w.subscribe(Topic::Kv("x".into()));
        let b = w.subscribe(Topic::Kv("x".into()));
        assert_eq!(w.topics(), 1);
        drop(a);
        assert_eq!(w.topics(), 1);
        drop(b);
        assert_eq!(w.topics(), 0);
    }
}
