//! User events: small named messages fired on one member and delivered to all (like
//! `serf event` / `consul event`), kept in a bounded buffer of recent events.

use compact_str::CompactString;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::GossipError;

/// Most bytes name + payload + filters of one event may take (serf's default limit), so an
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
    /// Which members record the event.
    pub filter: EventFilter,
    /// Lamport time of the event, ordering events cluster-wide.
    pub ltime: u64,
}

/// Which members record an event, as Consul's `?node=`, `?service=` and `?tag=` say: regular
/// expressions on the node name, on the name of a service the member runs, and on a tag of that
/// same service (a tag filter needs a service filter). Empty matches everything. Every member
/// receives every event and applies the filter itself, as in Consul.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// On the node name.
    pub node: String,
    /// On the names of the member's services.
    pub service: String,
    /// On the tags of a service that matched `service`.
    pub tag: String,
}

impl EventFilter {
    fn len(&self) -> usize {
        self.node.len() + self.service.len() + self.tag.len()
    }

    fn validate(&self) -> Result<(), GossipError> {
        if !self.tag.is_empty() && self.service.is_empty() {
            return Err(GossipError::InvalidEvent(
                "Cannot provide tag filter without service filter".into(),
            ));
        }
        for (what, re) in [
            ("node", &self.node),
            ("service", &self.service),
            ("tag", &self.tag),
        ] {
            if !re.is_empty() {
                regex::Regex::new(re).map_err(|e| {
                    GossipError::InvalidEvent(format!(
                        "{what} filter is not a valid regular expression: {e}"
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Whether a member named `node` running `services` (name and tags of each) matches.
    pub fn matches<'a>(
        &self,
        node: &str,
        mut services: impl Iterator<Item = (&'a str, &'a [CompactString])>,
    ) -> bool {
        let compiled = |re: &str| (!re.is_empty()).then(|| regex::Regex::new(re).ok());
        if let Some(re) = compiled(&self.node)
            && !re.is_some_and(|re| re.is_match(node))
        {
            return false;
        }
        let Some(service_re) = compiled(&self.service) else {
            return true;
        };
        let (Some(service_re), tag_re) = (service_re, compiled(&self.tag)) else {
            return false; // refused when fired; a peer's bad regex matches nothing
        };
        services.any(|(name, tags)| {
            service_re.is_match(name)
                && match &tag_re {
                    None => true,
                    Some(Some(tag_re)) => tags.iter().any(|t| tag_re.is_match(t)),
                    Some(None) => false,
                }
        })
    }
}

impl UserEvent {
    /// The id in UUID text form, as Consul shows event ids.
    pub fn id_string(&self) -> String {
        murmur_catalog::uuid_text(&self.id)
    }

    /// Checks the name, the filters and the size before an event is fired.
    pub fn validate(name: &str, payload: &[u8], filter: &EventFilter) -> Result<(), GossipError> {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(GossipError::InvalidEvent(
                "event name must be non-empty and printable".into(),
            ));
        }
        let size = name.len() + payload.len() + filter.len();
        if size > MAX_EVENT_BYTES {
            return Err(GossipError::EventTooLarge {
                size,
                limit: MAX_EVENT_BYTES,
            });
        }
        filter.validate()
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
            filter: EventFilter::default(),
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
        let none = EventFilter::default();
        let err = UserEvent::validate("e", &[0; 600], &none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("601") && err.contains("512"), "{err}");
        let filter = |node: &str, service: &str, tag: &str| EventFilter {
            node: node.into(),
            service: service.into(),
            tag: tag.into(),
        };
        assert!(UserEvent::validate("e", b"x", &filter("(", "", "")).is_err());
        assert!(UserEvent::validate("e", b"x", &filter("", "web", "[")).is_err());
        let err = UserEvent::validate("e", b"x", &filter("", "", "v1")).unwrap_err();
        assert!(err.to_string().contains("without service filter"), "{err}");
        assert!(UserEvent::validate("", b"x", &none).is_err());

        let tags = [CompactString::from("v1"), CompactString::from("canary")];
        let runs = || [("web", &tags[..]), ("db", &[][..])].into_iter();
        assert!(filter("^web-", "", "").matches("web-1", runs()));
        assert!(!filter("^web-", "", "").matches("db-1", runs()));
        assert!(filter("", "^db$", "").matches("n", runs()));
        assert!(!filter("", "^cache$", "").matches("n", runs()));
        assert!(filter("", "web", "^canary$").matches("n", runs()));
        assert!(
            !filter("", "db", "canary").matches("n", runs()),
            "the tag must be on the service that matched"
        );
        assert!(!filter("n", "web", "").matches("n", std::iter::empty()));
    }

    #[test]
    fn uuid_form() {
        let e = event(0xab);
        assert_eq!(e.id_string(), "abababab-abab-abab-abab-abababababab");
    }
}
