//! The datacenter directory: which datacenters exist and who serves each, as global data
//! every agent of every datacenter holds, so any agent (not only a gateway) lists the
//! datacenters and estimates how far each is.
//!
//! Each WAN gateway writes its own entry, `datacenter/<dc>/<node>`, with its WAN address
//! and WAN coordinate, and withdraws it when it stops serving; the gateways of a datacenter
//! also withdraw the entries of that datacenter's gateways that failed.

use serde::{Deserialize, Serialize};

use crate::coordinate::Coordinate;

/// Key prefix of the datacenter directory.
pub const DIRECTORY_PREFIX: &str = "datacenter/";

/// One gateway of one datacenter, as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Gateway {
    /// Its datacenter.
    pub datacenter: String,
    /// Its node name (in its datacenter).
    pub node: String,
    /// Its WAN gossip address.
    pub wan: String,
    /// Its place among the gateways of all datacenters, once it has measured.
    pub coordinate: Option<Coordinate>,
}

impl Gateway {
    /// The shared-map key of `node`'s entry as a gateway of `datacenter`.
    pub fn key(datacenter: &str, node: &str) -> String {
        format!("{DIRECTORY_PREFIX}{datacenter}/{node}")
    }

    /// Whether this entry belongs under `key` and holds nothing a reader must not trust.
    pub(crate) fn fits(&self, key: &str) -> bool {
        key == Self::key(&self.datacenter, &self.node)
            && !self.datacenter.contains('/')
            && !self.node.contains('/')
            && self.coordinate.as_ref().is_none_or(Coordinate::is_valid)
    }

    /// Rough size in bytes, for budgets.
    pub(crate) fn weight(&self) -> usize {
        self.datacenter.len() + self.node.len() + self.wan.len() + 90
    }
}

/// The datacenter and node a directory key names.
pub(crate) fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (dc, node) = key.strip_prefix(DIRECTORY_PREFIX)?.split_once('/')?;
    (!dc.is_empty() && !node.is_empty() && !node.contains('/')).then_some((dc, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_fits_only_its_own_key() {
        let entry = Gateway {
            datacenter: "dc2".into(),
            node: "gw-1".into(),
            wan: "10.0.0.1:8302".into(),
            coordinate: None,
        };
        let key = Gateway::key("dc2", "gw-1");
        assert!(entry.fits(&key));
        assert_eq!(parse_key(&key), Some(("dc2", "gw-1")));
        assert!(!entry.fits(&Gateway::key("dc1", "gw-1")));
        let mut poisoned = entry.clone();
        poisoned.coordinate = Some(Coordinate {
            height: f64::NAN,
            ..Coordinate::default()
        });
        assert!(!poisoned.fits(&key));
        for bad in [
            "datacenter/",
            "datacenter/dc2",
            "datacenter//n",
            "datacenter/a/b/c",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
