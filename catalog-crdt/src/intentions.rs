//! Intentions: "source may (not) reach destination" between logical services, with Consul's
//! precedence. Each intention is a shared register keyed by `source → destination`, so any agent
//! may write one and it outlives the writer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::value::INTENTION_PREFIX;

/// The wildcard service name.
pub const WILDCARD: &str = "*";

/// What an intention decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Connections are allowed.
    Allow,
    /// Connections are refused.
    Deny,
}

/// One intention.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Intention {
    /// Source service name or `*`.
    pub source: String,
    /// Destination service name or `*`.
    pub destination: String,
    /// Allow or deny.
    pub action: Action,
    /// Free text.
    pub description: String,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
}

impl Intention {
    /// `source → destination` deciding `action`, with no description or metadata.
    pub fn new(source: &str, destination: &str, action: Action) -> Self {
        Self {
            source: source.to_owned(),
            destination: destination.to_owned(),
            action,
            description: String::new(),
            meta: BTreeMap::new(),
        }
    }

    /// The shared-map key of the pair (service names cannot contain a newline).
    pub fn key(source: &str, destination: &str) -> String {
        format!("{INTENTION_PREFIX}{source}\n{destination}")
    }

    /// A stable id of the pair, in UUID form, the same on every agent: Consul clients address
    /// intentions by id, and murmur keys them by their pair (no leader hands out ids).
    pub fn id(source: &str, destination: &str) -> String {
        let key = Self::key(source, destination);
        let high = crate::shared::fnv(&key);
        let low = crate::shared::fnv(&(&key, 1u8));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&high.to_be_bytes());
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        uuid_text(&bytes)
    }

    pub(crate) fn weight(&self) -> usize {
        16 + self.source.len()
            + self.destination.len()
            + self.description.len()
            + self
                .meta
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
    }

    /// Consul's precedence without namespaces: exact→exact 9, `*`→exact 8, exact→`*` 6, `*`→`*` 5.
    pub fn precedence(&self) -> u8 {
        match (self.source == WILDCARD, self.destination == WILDCARD) {
            (false, false) => 9,
            (true, false) => 8,
            (false, true) => 6,
            (true, true) => 5,
        }
    }

    fn matches(&self, source: &str, destination: &str) -> bool {
        (self.source == WILDCARD || self.source == source)
            && (self.destination == WILDCARD || self.destination == destination)
    }
}

/// 16 bytes in the text form of a UUID (8-4-4-4-12 hex digits), as Consul shows ids.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Which side `match` looks up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchBy {
    /// Intentions whose source is the name (or `*`).
    Source,
    /// Intentions whose destination is the name (or `*`).
    Destination,
}

/// Live intentions in Consul's order: highest precedence first, then source, then destination.
pub fn ordered<'a>(intentions: impl IntoIterator<Item = &'a Intention>) -> Vec<&'a Intention> {
    let mut all: Vec<&Intention> = intentions.into_iter().collect();
    all.sort_by(|a, b| {
        b.precedence()
            .cmp(&a.precedence())
            .then_with(|| a.source.cmp(&b.source))
            .then_with(|| a.destination.cmp(&b.destination))
    });
    all
}

/// Intentions that apply to `name` on the given side, in precedence order.
pub fn matching<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    by: MatchBy,
    name: &str,
) -> Vec<&'a Intention> {
    ordered(intentions)
        .into_iter()
        .filter(|i| {
            let side = match by {
                MatchBy::Source => &i.source,
                MatchBy::Destination => &i.destination,
            };
            side == name || side == WILDCARD
        })
        .collect()
}

/// Whether `source` may reach `destination`: the first matching intention decides, else the
/// default policy. Returns the decision and the intention that made it, if any.
pub fn check<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    source: &str,
    destination: &str,
    default: Action,
) -> (Action, Option<&'a Intention>) {
    ordered(intentions)
        .into_iter()
        .find(|i| i.matches(source, destination))
        .map_or((default, None), |i| (i.action, Some(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[(&str, &str, Action)]) -> Vec<Intention> {
        rules
            .iter()
            .map(|(source, destination, action)| Intention::new(source, destination, *action))
            .collect()
    }

    #[test]
    fn most_specific_intention_decides() {
        let rules = map(&[
            ("*", "*", Action::Deny),
            ("web", "db", Action::Allow),
            ("*", "db", Action::Deny),
            ("web", "*", Action::Allow),
        ]);
        let cases = [
            (
                "web",
                "db",
                Action::Deny,
                Action::Allow,
                "exact beats wildcards",
            ),
            ("api", "db", Action::Allow, Action::Deny, "*→db beats *→*"),
            (
                "web",
                "cache",
                Action::Deny,
                Action::Allow,
                "web→* beats *→*",
            ),
            ("api", "cache", Action::Allow, Action::Deny, "*→*"),
        ];
        for (source, destination, default, expected, why) in cases {
            assert_eq!(
                check(&rules, source, destination, default).0,
                expected,
                "{why}"
            );
        }
        let none = map(&[]);
        assert_eq!(
            check(&none, "a", "b", Action::Deny),
            (Action::Deny, None),
            "default policy"
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let id = Intention::id("web", "db");
        assert_eq!(id.len(), 36);
        assert_eq!(id, Intention::id("web", "db"));
        assert_ne!(id, Intention::id("db", "web"));
        // Fixed across builds and machines: every agent must show the same id.
        assert_eq!(id, "15d5e210-7aa2-a11b-bd10-3c006257bf2e");
    }

    #[test]
    fn match_lists_in_precedence_then_name_order() {
        let rules = map(&[
            ("b", "db", Action::Allow),
            ("a", "db", Action::Allow),
            ("*", "db", Action::Deny),
            ("*", "*", Action::Deny),
        ]);
        let by_dest: Vec<(&str, u8)> = matching(&rules, MatchBy::Destination, "db")
            .iter()
            .map(|i| (i.source.as_str(), i.precedence()))
            .collect();
        assert_eq!(by_dest, [("a", 9), ("b", 9), ("*", 8), ("*", 5)]);
        let by_source: Vec<String> = matching(&rules, MatchBy::Source, "a")
            .iter()
            .map(|i| format!("{}→{}", i.source, i.destination))
            .collect();
        assert_eq!(by_source, ["a→db", "*→db", "*→*"]);
    }
}
