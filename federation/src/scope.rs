//! Which replicated data crosses between datacenters.
//!
//! As in Consul, a datacenter's catalog (node records, health, external nodes) and its KV
//! store stay in the datacenter: other datacenters read them by asking (`?dc=`), never by
//! holding a copy. What every datacenter shares is *global*: written in any datacenter,
//! converging everywhere, with no primary to depend on. Gateways relay global changes
//! between their LAN and WAN pools and nothing else, so no per-datacenter key of one
//! datacenter ever lands in another's replica.
//!
//! Global: intentions, prepared queries, the datacenter directory (which gateways serve each
//! datacenter, with their WAN coordinates), each datacenter's catalog summary, and the CA
//! roots of every datacenter (the trust bundle: each datacenter signs with its own roots and
//! trusts all). A root published before roots named their datacenter (`ca/root/<id>`) stays
//! home: another datacenter could not tell whose it is. LAN coordinates stay home: they
//! measure only their own datacenter.

use murmur_catalog::{
    ACL_PREFIX, CaRoot, Change, DIRECTORY_PREFIX, INTENTION_PREFIX, Journaled, QUERY_PREFIX,
    Replica, SUMMARY_PREFIX,
};

/// Where a piece of replicated data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Shared by every datacenter, relayed by gateways.
    Global,
    /// Kept in the datacenter that wrote it.
    Datacenter,
}

/// The scope of the shared-map key `key`.
pub fn of_key(key: &str) -> Scope {
    if [
        INTENTION_PREFIX,
        DIRECTORY_PREFIX,
        QUERY_PREFIX,
        SUMMARY_PREFIX,
        // All ACL data, local tokens included: a local token carries its datacenter and is
        // refused elsewhere, as Consul refuses it.
        ACL_PREFIX,
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || CaRoot::parse_key(key).is_some_and(|(dc, _)| dc.is_some())
    {
        Scope::Global
    } else {
        Scope::Datacenter
    }
}

/// The scope of `change`: node records are always the datacenter's own.
pub fn of_change(change: &Change) -> Scope {
    match change {
        Change::Record { .. } | Change::Patch(_) => Scope::Datacenter,
        Change::Shared { key, .. } => of_key(key),
    }
}

/// The changes among journal `entries` that every datacenter shares: what a gateway relays
/// from the pool that took them to its other pool.
pub fn global_changes(entries: &[Journaled]) -> impl Iterator<Item = Change> + '_ {
    entries.iter().filter_map(|entry| match entry {
        Journaled::Change { change, .. } if of_change(change) == Scope::Global => {
            Some(change.clone())
        }
        _ => None,
    })
}

/// Every global entry `replica` holds (tombstones too), as changes: what a new gateway's WAN
/// replica starts with.
pub fn global_entries(replica: &Replica) -> Vec<Change> {
    replica
        .shared()
        .iter()
        .filter(|(key, _)| of_key(key) == Scope::Global)
        .map(|(key, entry)| Change::Shared {
            key: key.clone(),
            register: entry.register.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use murmur_catalog::{
        CA_ROOT_PREFIX, Coordinate, EXTERNAL_PREFIX, Gateway, Intention, KV_PREFIX,
    };

    use super::*;

    #[test]
    fn intentions_are_global_and_the_catalog_and_kv_stay_home() {
        assert_eq!(of_key(&Intention::key("web", "db")), Scope::Global);
        assert_eq!(of_key(&CaRoot::key("dc2", "ab:cd")), Scope::Global);
        assert_eq!(
            of_key(&murmur_catalog::DcSummary::key("dc2")),
            Scope::Global
        );
        assert_eq!(of_key(&Gateway::key("dc2", "gw")), Scope::Global);
        assert_eq!(
            of_key(&murmur_catalog::PreparedQuery::key("q-1")),
            Scope::Global
        );
        assert_eq!(of_key(&murmur_catalog::AclToken::key("a-1")), Scope::Global);
        assert_eq!(
            of_key(&murmur_catalog::AclPolicy::key("p-1")),
            Scope::Global
        );
        for key in [
            Coordinate::key("web-1"),
            format!("{KV_PREFIX}app/color"),
            format!("{EXTERNAL_PREFIX}db-host"),
            CaRoot::legacy_key("root-1"),
            format!("{CA_ROOT_PREFIX}/root-1"),
            "intention".to_owned(),
        ] {
            assert_eq!(of_key(&key), Scope::Datacenter, "{key}");
        }
    }
}
