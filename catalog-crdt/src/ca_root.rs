//! Certificate-authority roots of the service mesh, replicated as shared data under
//! `ca/root/<datacenter>/<id>` so every agent of every datacenter trusts the same roots and any
//! agent can serve them, with no leader and no primary datacenter.
//!
//! Each datacenter signs its own leaves with its own roots; the roots of all datacenters
//! together are the trust bundle. A root is written once, when an agent holding its key
//! publishes it; rotation adds a newer one. Which root signs and which are still trusted is
//! decided from the set by every agent alike (in `murmur-proxy`), so there is no "active"
//! flag that two agents could set at once.
//!
//! Roots published before they named a datacenter sit under `ca/root/<id>`; they never left
//! the datacenter that wrote them, so they are that datacenter's (the reader's own).

use serde::{Deserialize, Serialize};

/// Key prefix of CA roots.
pub const CA_ROOT_PREFIX: &str = "ca/root/";

/// One root certificate (never its key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CaRoot {
    /// Key id of the root, colon-separated hex, as Consul shows `SigningKeyID`.
    pub id: String,
    /// Human name.
    pub name: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// When it was created (wall ms): the newest root signs.
    pub created_ms: u64,
    /// Its validity, unix seconds.
    pub not_before_s: u64,
    /// Its validity, unix seconds.
    pub not_after_s: u64,
}

impl CaRoot {
    /// The shared-map key of root `id` of `datacenter`.
    pub fn key(datacenter: &str, id: &str) -> String {
        format!("{CA_ROOT_PREFIX}{datacenter}/{id}")
    }

    /// The key root `id` had before roots named their datacenter (see the module doc).
    pub fn legacy_key(id: &str) -> String {
        format!("{CA_ROOT_PREFIX}{id}")
    }

    /// The datacenter (`None` for a root of the reader's own datacenter written before
    /// roots named theirs) and the root id that a root key names; `None` for a key of
    /// another form.
    pub fn parse_key(key: &str) -> Option<(Option<&str>, &str)> {
        let rest = key.strip_prefix(CA_ROOT_PREFIX)?;
        let (datacenter, id) = match rest.split_once('/') {
            Some((dc, id)) if !dc.is_empty() => (Some(dc), id),
            Some(_) => return None,
            None => (None, rest),
        };
        (!id.is_empty() && !id.contains('/')).then_some((datacenter, id))
    }

    pub(crate) fn weight(&self) -> usize {
        32 + self.id.len() + self.name.len() + self.cert_pem.len()
    }
}

/// A published root with the datacenter whose leaves it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DcRoot<'a> {
    /// The datacenter it belongs to; `None` for the reader's own (a root published before
    /// roots named their datacenter).
    pub datacenter: Option<&'a str>,
    /// The root.
    pub root: &'a CaRoot,
    /// Modify index of its entry on this replica.
    pub modify_index: u64,
}

impl<'a> DcRoot<'a> {
    /// Its datacenter, reading an unnamed one as `local`.
    pub fn datacenter_or(&self, local: &'a str) -> &'a str {
        self.datacenter.unwrap_or(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_datacenter_and_old_keys_name_none() {
        assert_eq!(CaRoot::key("dc2", "ab:cd"), "ca/root/dc2/ab:cd");
        assert_eq!(
            CaRoot::parse_key("ca/root/dc2/ab:cd"),
            Some((Some("dc2"), "ab:cd"))
        );
        assert_eq!(
            CaRoot::parse_key(&CaRoot::legacy_key("ab:cd")),
            Some((None, "ab:cd"))
        );
        for bad in [
            "ca/root/",
            "ca/root//x",
            "ca/root/dc2/",
            "ca/root/a/b/c",
            "kv/x",
        ] {
            assert_eq!(CaRoot::parse_key(bad), None, "{bad}");
        }
    }
}
