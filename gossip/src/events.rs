//! User events: small named messages fired on one member and delivered to all (like
//! `serf event` / `consul event`), kept in a bounded buffer of recent events.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::GossipError;

/// Most bytes name + payload + node filter of one event may take (serf's default limit), so an
/// event always fits in one datagram next to membership updates.
pub const MAX_EVENT_BYTES: usize = 512;
/// How many recent events a member keeps (Consul keeps 256).
pub const RECENT_EVENTS: usize = 256;
/// How many of the most recent events travel in each push-pull for members that missed them.
pub(crate) const EVENTS_IN_PUSH_PULL: usize = 32;

/// One user event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Random id (shown as a UUID); also the deduplication key.
    pub id: [u8; 16],
    /// Event name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Regular expression on node names; only matching members record the event (empty = all).
    pub node_filter: String,
    /// Lamport time of the event, ordering events cluster-wide.
    pub ltime: u64,
}

impl UserEvent {
    /// The id in UUID text form, as Consul shows event ids.
    pub fn id_string(&self) -> String {
        let h: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Checks the name, the filter and the size before an event is fired.
    pub fn validate(name: &str, payload: &[u8], node_filter: &str) -> Result<(), GossipError> {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(GossipError::InvalidEvent(
                "event name must be non-empty and printable".into(),
            ));
        }
        let size = name.len() + payload.len() + node_filter.len();
        if size > MAX_EVENT_BYTES {
            return Err(GossipError::EventTooLarge {
                size,
                limit: MAX_EVENT_BYTES,
            });
        }
        if !node_filter.is_empty() {
            regex::Regex::new(node_filter).map_err(|e| {
                GossipError::InvalidEvent(format!(
                    "node filter is not a valid regular expression: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Whether the member named `node` should record this event.
    pub fn applies_to(&self, node: &str) -> bool {
        self.node_filter.is_empty()
            || regex::Regex::new(&self.node_filter).is_ok_and(|re| re.is_match(node))
    }
}

/// The recent events of one member and its Lamport clock for events.
#[derive(Debug, Default)]
pub struct EventLog {
    recent: VecDeque<UserEvent>,
    clock: u64,
    received: u64,
}

impl EventLog {
    /// The Lamport time for an event fired here now.
    pub(crate) fn next_ltime(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records a delivered event, keeping at most [`RECENT_EVENTS`].
    pub(crate) fn record(&mut self, event: UserEvent) {
        self.clock = self.clock.max(event.ltime);
        self.received += 1;
        self.recent.push_back(event);
        if self.recent.len() > RECENT_EVENTS {
            self.recent.pop_front();
        }
    }

    /// Recent events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &UserEvent> {
        self.recent.iter()
    }

    /// The newest few events, to offer in a push-pull.
    pub(crate) fn newest(&self) -> impl Iterator<Item = &UserEvent> {
        self.recent
            .iter()
            .skip(self.recent.len().saturating_sub(EVENTS_IN_PUSH_PULL))
    }

    /// Moves the Lamport clock past events that happened before this member joined.
    pub(crate) fn witness(&mut self, ltime: u64) {
        self.clock = self.clock.max(ltime);
    }

    /// How many events this member has recorded since it started; grows with every event, so it
    /// serves as the index of blocking queries on the event list.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ltime: u64) -> UserEvent {
        UserEvent {
            id: [ltime as u8; 16],
            name: "deploy".into(),
            payload: vec![],
            node_filter: String::new(),
            ltime,
        }
    }

    #[test]
    fn buffer_is_bounded_and_clock_follows_remote_events() {
        let mut log = EventLog::default();
        for t in 1..=(RECENT_EVENTS as u64 + 5) {
            log.record(event(t * 10));
        }
        assert_eq!(log.recent().count(), RECENT_EVENTS);
        assert_eq!(log.received(), RECENT_EVENTS as u64 + 5);
        assert!(log.next_ltime() > (RECENT_EVENTS as u64 + 5) * 10);
    }

    #[test]
    fn size_limit_and_filter_are_checked() {
        let err = UserEvent::validate("e", &[0; 600], "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("601") && err.contains("512"), "{err}");
        assert!(UserEvent::validate("e", b"x", "(").is_err());
        assert!(UserEvent::validate("", b"x", "").is_err());
        let mut e = event(1);
        e.node_filter = "^web-".into();
        assert!(e.applies_to("web-1") && !e.applies_to("db-1"));
    }

    #[test]
    fn uuid_form() {
        let e = event(0xab);
        assert_eq!(e.id_string(), "abababab-abab-abab-abab-abababababab");
    }
}
