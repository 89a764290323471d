//! The one decision every inbound mesh connection gets: may this caller reach this service?
//! Its identity must be of our trust domain, then the intentions decide (Consul's precedence),
//! then the default policy.

use murmur_catalog::{Action, Intention, check};

use crate::identity::{ServiceId, TrustDomain};

/// An authorization decision with Consul's wording of why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why, for `/v1/agent/connect/authorize` and the logs.
    pub reason: String,
}

/// Whether `caller` may reach `target`.
pub fn authorize<'a>(
    trust_domain: &TrustDomain,
    caller: &ServiceId,
    target: &str,
    intentions: impl IntoIterator<Item = &'a Intention>,
    default: Action,
) -> Decision {
    if caller.trust_domain != trust_domain.as_str() {
        return Decision {
            allowed: false,
            reason: format!(
                "Identity from an external trust domain: {} is not {}",
                caller.trust_domain, trust_domain
            ),
        };
    }
    match check(intentions, &caller.service, target, default) {
        (action, Some(i)) => Decision {
            allowed: action == Action::Allow,
            reason: format!(
                "Matched intention: {} => {} ({})",
                i.source,
                i.destination,
                action_name(action)
            ),
        },
        (action, None) => Decision {
            allowed: action == Action::Allow,
            reason: format!(
                "No matching intention, default policy is {}",
                action_name(action)
            ),
        },
    }
}

/// Consul's lower-case name of an action.
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intention(source: &str, destination: &str, action: Action) -> Intention {
        Intention::new(source, destination, action)
    }

    #[test]
    fn trust_domain_then_intentions_then_default() {
        let ours = TrustDomain::of_cluster("murmur").unwrap();
        let theirs = TrustDomain::of_cluster("other").unwrap();
        let web = ServiceId::new(&ours, "dc1", "web").unwrap();
        let rules = [
            intention("web", "db", Action::Allow),
            intention("*", "db", Action::Deny),
        ];
        let d = authorize(&ours, &web, "db", &rules, Action::Deny);
        assert!(d.allowed);
        assert_eq!(d.reason, "Matched intention: web => db (allow)");
        let api = ServiceId::new(&ours, "dc1", "api").unwrap();
        assert!(!authorize(&ours, &api, "db", &rules, Action::Allow).allowed);
        let d = authorize(&ours, &api, "cache", &rules, Action::Allow);
        assert!(d.allowed && d.reason.contains("default policy is allow"));
        let foreign = ServiceId::new(&theirs, "dc1", "web").unwrap();
        let d = authorize(&ours, &foreign, "db", &rules, Action::Allow);
        assert!(!d.allowed && d.reason.contains("external trust domain"));
    }
}
