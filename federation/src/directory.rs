//! Reading the datacenter directory: which datacenters there are and how far each is from
//! this one, estimated from the WAN coordinates of the gateways (`/v1/catalog/datacenters`,
//! `/v1/coordinate/datacenters`, prepared-query failover to the nearest datacenters).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use murmur_catalog::{Coordinate, Gateway};

/// The datacenters known from `gateways` and `also` (named some other way, e.g. by live WAN
/// members), `local` first, then by estimated round trip, nearest first, then those with
/// no estimate, by name. The estimate of a datacenter is the median of the estimates
/// between every gateway of `local` and every gateway of it that has a coordinate, as Consul
/// ranks datacenters by the median RTT between their servers.
pub fn rank<'a>(
    local: &str,
    gateways: &[Gateway],
    also: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, Option<Duration>)> {
    let mut coordinates: BTreeMap<&str, Vec<&Coordinate>> = BTreeMap::new();
    let mut names: BTreeSet<&str> = also.into_iter().collect();
    for gateway in gateways {
        names.insert(&gateway.datacenter);
        if let Some(c) = &gateway.coordinate {
            coordinates.entry(&gateway.datacenter).or_default().push(c);
        }
    }
    names.remove(local);
    let ours = coordinates.get(local).cloned().unwrap_or_default();
    let mut ranked: Vec<(String, Option<Duration>)> = names
        .into_iter()
        .map(|dc| {
            let mut estimates: Vec<Duration> = coordinates
                .get(dc)
                .into_iter()
                .flatten()
                .flat_map(|theirs| ours.iter().map(|mine| mine.distance(theirs)))
                .collect();
            estimates.sort();
            (dc.to_owned(), estimates.get(estimates.len() / 2).copied())
        })
        .collect();
    ranked.sort_by(|(a, da), (b, db)| {
        // Some before None, then nearer first, then by name.
        (da.is_none(), da, a).cmp(&(db.is_none(), db, b))
    });
    ranked.insert(0, (local.to_owned(), Some(Duration::ZERO)));
    ranked
}

/// The datacenters a prepared query fails over to, in order, from `ranked` (as [`rank`]
/// returns it, the local datacenter first): the `nearest_n` nearest others, then those of
/// `listed` not already in. As Consul, a listed datacenter no one knows is skipped (returned
/// second, to be logged), and the local one is never a failover.
pub fn failover_order(
    ranked: &[(String, Option<Duration>)],
    nearest_n: usize,
    listed: &[String],
) -> (Vec<String>, Vec<String>) {
    let local = ranked.first().map(|(dc, _)| dc.as_str());
    let mut order: Vec<String> = ranked
        .iter()
        .skip(1)
        .take(nearest_n)
        .map(|(dc, _)| dc.clone())
        .collect();
    let mut unknown = Vec::new();
    for dc in listed {
        if Some(dc.as_str()) == local || order.contains(dc) {
            continue;
        }
        if ranked.iter().any(|(known, _)| known == dc) {
            order.push(dc.clone());
        } else if !unknown.contains(dc) {
            unknown.push(dc.clone());
        }
    }
    (order, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(dc: &str, node: &str, x: Option<f64>) -> Gateway {
        Gateway {
            datacenter: dc.into(),
            node: node.into(),
            wan: String::new(),
            coordinate: x.map(|x| {
                let mut c = Coordinate {
                    error: 0.1,
                    ..Coordinate::default()
                };
                c.vec[0] = x;
                c
            }),
        }
    }

    #[test]
    fn the_local_datacenter_first_then_the_nearest() {
        let gateways = [
            gateway("home", "h1", Some(0.0)),
            gateway("home", "h2", Some(0.002)),
            gateway("far", "f1", Some(0.100)),
            gateway("near", "n1", Some(0.020)),
            gateway("near", "n2", Some(0.030)),
            gateway("unmeasured", "u1", None),
        ];
        let ranked = rank("home", &gateways, ["wan-only"]);
        let names: Vec<&str> = ranked.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["home", "near", "far", "unmeasured", "wan-only"]);
        let near = ranked[1].1.unwrap().as_secs_f64();
        assert!((0.02..0.03).contains(&near), "the median pair: {near}");
        assert_eq!(ranked[3].1, None);
    }

    #[test]
    fn failover_takes_the_nearest_then_the_listed_and_skips_the_unknown() {
        let ms = |n| Some(Duration::from_millis(n));
        let ranked: Vec<(String, Option<Duration>)> =
            [("home", ms(0)), ("a", ms(10)), ("b", ms(20)), ("c", None)]
                .into_iter()
                .map(|(n, d)| (n.to_owned(), d))
                .collect();
        let listed = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            failover_order(&ranked, 1, &listed(&["c", "a", "home", "mars", "c"])),
            (listed(&["a", "c"]), listed(&["mars"]))
        );
        assert_eq!(failover_order(&ranked, 9, &[]).0, listed(&["a", "b", "c"]));
        assert_eq!(failover_order(&ranked, 0, &[]).0, Vec::<String>::new());
    }

    #[test]
    fn a_datacenter_alone_lists_itself() {
        assert_eq!(
            rank("home", &[], []),
            [("home".to_owned(), Some(Duration::ZERO))]
        );
    }
}
