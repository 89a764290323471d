//! Encoded answers of catalog reads, kept with the catalog index they were computed at.
//!
//! A catalog or health answer is a function of the catalog index alone: every change that can
//! alter one (records, external nodes, reaps, membership flipping `serfHealth`) moves that
//! index. So while the index stands still, the same query gets the same bytes, and a busy
//! endpoint (`/v1/health/service/web?passing`, polled by every load balancer and template)
//! costs a map lookup instead of a catalog walk and a JSON encoding.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;

/// Most answers kept; when full the cache starts over (a query mix this varied gains little).
const CAPACITY: usize = 1024;

/// Answers by query key.
#[derive(Default)]
pub struct Answers {
    by_query: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl Answers {
    /// The answer to `key` computed at catalog index `index`, if kept.
    pub fn get(&self, key: &str, index: u64) -> Option<Bytes> {
        let answers = self.by_query.lock().expect("answers poisoned");
        answers
            .get(key)
            .filter(|(at, _)| *at == index)
            .map(|(_, bytes)| bytes.clone())
    }

    /// Keeps the answer to `key` computed at `index`.
    pub fn put(&self, key: String, index: u64, bytes: Bytes) {
        let mut answers = self.by_query.lock().expect("answers poisoned");
        if answers.len() >= CAPACITY && !answers.contains_key(&key) {
            answers.clear();
        }
        answers.insert(key, (index, bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_serves_only_its_own_index_and_the_cache_stays_bounded() {
        let answers = Answers::default();
        answers.put("web".into(), 7, Bytes::from_static(b"[]"));
        assert_eq!(answers.get("web", 7).as_deref(), Some(&b"[]"[..]));
        assert!(answers.get("web", 8).is_none(), "the catalog moved on");
        assert!(answers.get("db", 7).is_none());
        for i in 0..CAPACITY + 5 {
            answers.put(format!("q{i}"), 1, Bytes::new());
        }
        assert!(answers.by_query.lock().unwrap().len() <= CAPACITY);
    }
}
