//! ACL tokens and policies as replicated data: global (every datacenter holds all of them,
//! written in any), keyed `acl/token/<accessor>` and `acl/policy/<id>`. A token carries the
//! SHA-256 of its secret, never the secret: what is gossiped and journaled cannot be used to
//! authenticate. A deleted token is a tombstone like any deleted key, so it stops working on
//! an agent as soon as the deletion reaches it, and a revoked token never comes back after a
//! partition heals. Deleting alone would not do that: with last-writer-wins, an update made to
//! the token on the other side of a partition after the deletion would bring it back. So a
//! deletion also writes a revocation (`acl/revoked/<accessor>`) that nothing ever removes, and a
//! revoked token is not a token, whatever its record says.

use serde::{Deserialize, Serialize};

/// Key prefix of all ACL data (tokens, policies, roles, revocations), all of it global.
pub const ACL_PREFIX: &str = "acl/";
/// Key prefix of tokens.
pub const ACL_TOKEN_PREFIX: &str = "acl/token/";
/// Key prefix of policies.
pub const ACL_POLICY_PREFIX: &str = "acl/policy/";
/// Key prefix of roles.
pub const ACL_ROLE_PREFIX: &str = "acl/role/";
/// Key prefix of revocations.
pub const ACL_REVOKED_PREFIX: &str = "acl/revoked/";

/// A token that was deleted, for good: the mark outlives any concurrent update of the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRevocation {
    /// The token's `AccessorID`.
    pub accessor_id: String,
    /// When it was revoked (ms since the Unix epoch).
    pub revoked_ms: u64,
}

impl AclRevocation {
    /// The shared-map key of the revocation of `accessor_id`.
    pub fn key(accessor_id: &str) -> String {
        format!("{ACL_REVOKED_PREFIX}{accessor_id}")
    }

    /// Whether it sits under its own key.
    pub fn fits(&self, key: &str) -> bool {
        key.strip_prefix(ACL_REVOKED_PREFIX) == Some(self.accessor_id.as_str())
    }

    pub(crate) fn weight(&self) -> usize {
        self.accessor_id.len() + 8
    }
}

/// A token: who a request is.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclToken {
    /// Public id (Consul's `AccessorID`).
    pub accessor_id: String,
    /// SHA-256 of the secret (`SecretID`), hex.
    pub secret_hash: String,
    /// What it is for.
    pub description: String,
    /// IDs of its policies.
    pub policies: Vec<String>,
    /// IDs of its roles (each a named set of policies).
    pub roles: Vec<String>,
    /// Valid only in the datacenter that made it (Consul's `Local`).
    pub local: bool,
    /// Where it was made.
    pub datacenter: String,
    /// When it was made (ms since the Unix epoch).
    pub create_ms: u64,
}

impl AclToken {
    /// The shared-map key of the token `accessor_id`.
    pub fn key(accessor_id: &str) -> String {
        format!("{ACL_TOKEN_PREFIX}{accessor_id}")
    }

    /// Whether it sits under its own key.
    pub fn fits(&self, key: &str) -> bool {
        key.strip_prefix(ACL_TOKEN_PREFIX) == Some(self.accessor_id.as_str())
    }

    pub(crate) fn weight(&self) -> usize {
        self.accessor_id.len()
            + self.secret_hash.len()
            + self.description.len()
            + self.policies.iter().map(String::len).sum::<usize>()
            + self.roles.iter().map(String::len).sum::<usize>()
            + self.datacenter.len()
            + 16
    }
}

/// A role: a named set of policies, so that many tokens can share them and change together.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRole {
    /// Its id.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// IDs of its policies.
    pub policies: Vec<String>,
}

impl AclRole {
    /// The shared-map key of the role `id`.
    pub fn key(id: &str) -> String {
        format!("{ACL_ROLE_PREFIX}{id}")
    }

    /// Whether it sits under its own key.
    pub fn fits(&self, key: &str) -> bool {
        key.strip_prefix(ACL_ROLE_PREFIX) == Some(self.id.as_str())
    }

    pub(crate) fn weight(&self) -> usize {
        self.id.len()
            + self.name.len()
            + self.description.len()
            + self.policies.iter().map(String::len).sum::<usize>()
    }
}

/// A policy: named rules in Consul's rule language (read by `murmur-acl`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclPolicy {
    /// Its id.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The rules, HCL or JSON, as written.
    pub rules: String,
    /// Datacenters it applies in (empty: all).
    pub datacenters: Vec<String>,
}

impl AclPolicy {
    /// The shared-map key of the policy `id`.
    pub fn key(id: &str) -> String {
        format!("{ACL_POLICY_PREFIX}{id}")
    }

    /// Whether it sits under its own key.
    pub fn fits(&self, key: &str) -> bool {
        key.strip_prefix(ACL_POLICY_PREFIX) == Some(self.id.as_str())
    }

    pub(crate) fn weight(&self) -> usize {
        self.id.len()
            + self.name.len()
            + self.description.len()
            + self.rules.len()
            + self.datacenters.iter().map(String::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Replica, ReplicaConfig};

    #[test]
    fn tokens_and_policies_are_written_listed_and_deleted_by_their_key() {
        let mut replica = Replica::new("a", 1, 1, ReplicaConfig::default());
        let token = AclToken {
            accessor_id: "acc-1".into(),
            secret_hash: "ab".into(),
            policies: vec!["p-1".into()],
            ..AclToken::default()
        };
        assert!(token.fits("acl/token/acc-1") && !token.fits("acl/token/acc-2"));
        replica.put_acl_token(token.clone(), 10);
        replica.put_acl_policy(
            AclPolicy {
                id: "p-1".into(),
                name: "web".into(),
                rules: r#"service "web" { policy = "write" }"#.into(),
                ..AclPolicy::default()
            },
            11,
        );
        let before = replica.acl_index();
        assert_eq!(
            replica.acl_tokens().map(|(t, _)| t).collect::<Vec<_>>(),
            [&token]
        );
        assert_eq!(replica.acl_policies().count(), 1);
        assert!(replica.revoke_acl_token("acc-1", 12));
        assert_eq!(replica.acl_tokens().count(), 0);
        assert!(replica.acl_index() > before, "a deletion moves the index");
        // Every change, deletions included, is accepted by another replica.
        let mut other = Replica::new("b", 2, 1, ReplicaConfig::default());
        for change in replica.take_outbox() {
            other.apply(&change, 20).unwrap();
        }
        assert_eq!(other.acl_tokens().count(), 0);
        assert_eq!(other.acl_policies().count(), 1);
    }
}
