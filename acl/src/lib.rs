//! Who may do what, decided with no leader and no I/O: Consul's ACL rule language
//! ([`rules`]), and the [`Authorizer`] a token's policies make, which every agent evaluates
//! from its own replica. The agent finds the token and its policies (replicated data) and asks
//! the authorizer; this crate holds no state and reads no clock.
//!
//! Decisions follow Consul's: for a named resource the most specific rule wins (an exact
//! rule, else the longest matching prefix); when a token's policies disagree about the same
//! rule, `deny` wins, else the larger grant; with no rule, the agent's default policy decides.
//! The built-in `global-management` policy allows everything.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod rules;

use sha2::{Digest, Sha256};

pub use rules::{Access, Resource, Rules, RulesError, Segments};

/// ID of Consul's built-in policy that allows everything.
pub const GLOBAL_MANAGEMENT_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Name of that policy.
pub const GLOBAL_MANAGEMENT_NAME: &str = "global-management";
/// Accessor ID of Consul's anonymous token (requests with no token).
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// What a request's token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorizer {
    /// Everything (`global-management`).
    Management,
    /// What its policies' rules allow; `default` where no rule speaks.
    Rules {
        /// The merged rules of the token's policies.
        rules: Box<Rules>,
        /// `allow` (Write) or `deny` (Deny): the agent's `--acl-default-policy`.
        default: Access,
    },
}

impl Authorizer {
    /// The rules of a token's policies, merged, under the default policy (`allow`: true).
    pub fn of(policies: &[Rules], default_allow: bool) -> Self {
        let mut rules = Rules::default();
        for policy in policies {
            rules.merge(policy);
        }
        Self::Rules {
            rules: Box::new(rules),
            default: if default_allow {
                Access::Write
            } else {
                Access::Deny
            },
        }
    }

    fn decide(&self, rule: impl FnOnce(&Rules) -> Option<Access>, need: Access) -> bool {
        match self {
            Self::Management => true,
            Self::Rules { rules, default } => rule(rules).unwrap_or(*default).grants(need),
        }
    }

    /// May it act on resource `name` of `kind` with `need` (`Read`, `Write`, `List`)?
    pub fn allows(&self, kind: Resource, name: &str, need: Access) -> bool {
        self.decide(
            |r| r.resources.get(&kind).and_then(|s| s.decide(name)),
            need,
        )
    }

    /// May it read (`Read`) or change (`Write`) the intentions whose destination is
    /// `destination`? `intentions = …` decides; with none, reading follows the service's
    /// `policy` (Consul: `service:read` reads its intentions).
    pub fn intention(&self, destination: &str, need: Access) -> bool {
        self.decide(
            |r| {
                r.intentions.decide(destination).or_else(|| {
                    let service = r.resources.get(&Resource::Service)?.decide(destination)?;
                    (need != Access::Write).then_some(service)
                })
            },
            need,
        )
    }

    /// `operator = …`.
    pub fn operator(&self, need: Access) -> bool {
        self.decide(|r| r.operator, need)
    }

    /// `acl = …`.
    pub fn acl(&self, need: Access) -> bool {
        self.decide(|r| r.acl, need)
    }

    /// `keyring = …`.
    pub fn keyring(&self, need: Access) -> bool {
        self.decide(|r| r.keyring, need)
    }
}

/// How a token's secret is kept: its SHA-256, hex. Secrets are never stored or gossiped in
/// clear; an agent finds the token of a request by hashing the secret it was sent.
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn of(text: &str, default_allow: bool) -> Authorizer {
        Authorizer::of(&[Rules::parse(text).unwrap()], default_allow)
    }

    #[test]
    fn a_web_writer_registers_web_but_not_db_under_default_deny() {
        let web = of(r#"service "web" { policy = "write" }"#, false);
        assert!(web.allows(Resource::Service, "web", Access::Write));
        assert!(web.allows(Resource::Service, "web", Access::Read));
        assert!(!web.allows(Resource::Service, "db", Access::Read));
        assert!(!web.allows(Resource::Key, "app/x", Access::Read));
        assert!(!web.operator(Access::Read));
        assert!(
            !web.intention("web", Access::Write),
            "intentions need their own rule"
        );
        assert!(
            web.intention("web", Access::Read),
            "service:read reads its intentions"
        );
        let anyone = of("", true);
        assert!(anyone.allows(Resource::Key, "x", Access::Write));
        assert!(Authorizer::Management.acl(Access::Write));
    }

    #[test]
    fn list_grants_key_listing_but_not_reading() {
        let lister = of(r#"key_prefix "" { policy = "list" }"#, false);
        assert!(lister.allows(Resource::Key, "a/b", Access::List));
        assert!(!lister.allows(Resource::Key, "a/b", Access::Read));
    }

    #[test]
    fn secrets_are_kept_as_their_hash() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// A rule set over a small alphabet of names, so prefixes overlap often.
    fn rule_text() -> impl Strategy<Value = String> {
        let name = "[ab]{0,3}";
        let access = prop::sample::select(vec!["deny", "list", "read", "write"]);
        let rule = (any::<bool>(), name, access).prop_map(|(prefix, n, a)| {
            let kind = if prefix { "key_prefix" } else { "key" };
            format!("{kind} \"{n}\" {{ policy = \"{a}\" }}\n")
        });
        prop::collection::vec(rule, 0..8).prop_map(|rules| rules.concat())
    }

    proptest! {
        /// The decision for a key is that of its most specific rule: an exact rule if there is
        /// one, else the longest prefix — checked against a brute-force reading of the rules.
        #[test]
        fn the_most_specific_rule_decides(text in rule_text(), key in "[ab]{0,4}") {
            let rules = Rules::parse(&text).unwrap();
            let keys = rules.resources.get(&Resource::Key).cloned().unwrap_or_default();
            let expected = keys.exact.get(&key).copied().or_else(|| {
                keys.prefix
                    .iter()
                    .filter(|(p, _)| key.starts_with(p.as_str()))
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, a)| *a)
            });
            prop_assert_eq!(keys.decide(&key), expected);
        }

        /// Adding a policy never lets a token do what a `deny` in another of its policies
        /// forbids, and merging is order-free.
        #[test]
        fn merging_policies_is_order_free_and_keeps_denials(a in rule_text(), b in rule_text(), key in "[ab]{0,4}") {
            let (ra, rb) = (Rules::parse(&a).unwrap(), Rules::parse(&b).unwrap());
            let ab = Authorizer::of(&[ra.clone(), rb.clone()], false);
            let ba = Authorizer::of(&[rb.clone(), ra.clone()], false);
            for need in [Access::List, Access::Read, Access::Write] {
                prop_assert_eq!(
                    ab.allows(Resource::Key, &key, need),
                    ba.allows(Resource::Key, &key, need)
                );
            }
            let denied_in_a = ra.resources.get(&Resource::Key).and_then(|s| s.exact.get(&key)) == Some(&Access::Deny);
            if denied_in_a {
                prop_assert!(!ab.allows(Resource::Key, &key, Access::List));
            }
        }
    }
}
