//! Network coordinates, Consul's way: `/v1/coordinate/datacenters` (the WAN coordinates of
//! every datacenter's gateways, from the datacenter directory), `/v1/coordinate/nodes` and
//! `/v1/coordinate/node/:node` (LAN coordinates of this datacenter), and `?near=` sorting of
//! catalog and health answers by estimated round-trip time.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use std::time::Duration;

use murmur_acl::{Access, Resource};
use murmur_catalog::{Coordinate, Gateway};
use serde::Serialize;
use serde_json::{Value, json};

use super::acl::Auth;
use super::blocking::{self, Topic};
use super::{Api, ApiError, ApiResult, with_index};
use crate::agent::runtime::Agent;
use crate::agent::view::View;

/// A coordinate in Consul's JSON shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CoordShape {
    vec: Vec<f64>,
    error: f64,
    adjustment: f64,
    height: f64,
}

impl From<&Coordinate> for CoordShape {
    fn from(c: &Coordinate) -> Self {
        Self {
            vec: c.vec.to_vec(),
            error: c.error,
            adjustment: c.adjustment,
            height: c.height,
        }
    }
}

/// One node's coordinate as the `/v1/coordinate/node*` endpoints list it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeCoordinate {
    node: String,
    segment: &'static str,
    coord: CoordShape,
}

/// `GET /v1/coordinate/datacenters`: each datacenter with the WAN coordinates of its
/// gateways (`node.datacenter`, as WAN members are named), nearest datacenter first.
pub async fn datacenters(State(api): State<Api>) -> Json {
    let (gateways, ranked) = ranked_datacenters(&api.agent, &api.config.datacenter);
    let body = ranked
        .into_iter()
        .map(|(dc, _)| {
            let coordinates: Vec<Value> = gateways
                .iter()
                .filter(|g| g.datacenter == dc)
                .filter_map(|g| {
                    let coord = g.coordinate.as_ref()?;
                    Some(json!({
                        "Node": format!("{}.{}", g.node, g.datacenter),
                        "Coord": CoordShape::from(coord),
                    }))
                })
                .collect();
            json!({"Datacenter": dc, "AreaID": "wan", "Coordinates": coordinates})
        })
        .collect::<Vec<_>>();
    axum::Json(json!(body))
}

/// The directory's gateways, and every datacenter this agent knows of, ranked by
/// [`murmur_federation::directory::rank`]: from the directory, and on a gateway also those
/// its WAN pool has a live member of (before their entries arrive).
pub fn ranked_datacenters(
    agent: &Agent,
    local: &str,
) -> (Vec<Gateway>, Vec<(String, Option<Duration>)>) {
    let in_wan: Vec<String> = agent
        .read_wan(|n| {
            n.node()
                .members()
                .into_iter()
                .filter(|m| m.status.is_active())
                .map(|m| m.identity.datacenter.to_string())
                .collect()
        })
        .unwrap_or_default();
    let gateways: Vec<Gateway> = agent.view(|v| v.replica().gateways().cloned().collect());
    let ranked =
        murmur_federation::directory::rank(local, &gateways, in_wan.iter().map(String::as_str));
    (gateways, ranked)
}

type Json = axum::Json<Value>;

/// `GET /v1/coordinate/nodes`: the LAN coordinate of every node of this datacenter that
/// published one, by name; a blocking query.
pub async fn nodes(
    State(api): State<Api>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (index, mut listed) = blocking::query(&api.agent, &query, Topic::Other, |v| {
        (v.replica().coordinates_index(), listed(v, None))
    })
    .await?;
    listed.retain(|c| auth.can(Resource::Node, &c.node, Access::Read));
    Ok(with_index(index, json!(listed)))
}

/// `GET /v1/coordinate/node/:node`: that node's LAN coordinate, in a list of one; 404 when
/// it published none.
pub async fn node(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    auth.require(Resource::Node, &name, Access::Read)?;
    let (index, listed) = blocking::query(&api.agent, &query, Topic::Other, |v| {
        (v.replica().coordinates_index(), listed(v, Some(&name)))
    })
    .await?;
    if listed.is_empty() {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, ""));
    }
    Ok(with_index(index, json!(listed)))
}

/// The coordinates of the nodes with a record (all, or just `only`), by name.
fn listed(v: &View<'_>, only: Option<&str>) -> Vec<NodeCoordinate> {
    let records = v.replica().records();
    v.replica()
        .coordinates()
        .filter(|(node, _, _)| only.is_none_or(|o| o == *node))
        .filter(|(node, _, _)| records.get(node).is_some())
        .map(|(node, c, _)| NodeCoordinate {
            node: node.to_owned(),
            segment: "",
            coord: c.into(),
        })
        .collect()
}

/// Sorts `items` by the estimated round trip from the node `?near=` names (`_agent`: this
/// agent) to each item's node, nearest first; nodes with no coordinate go last, in the order
/// they came. As in Consul, a `near` node with no coordinate (or none at all) leaves the
/// order alone.
pub fn sort_near<T>(
    v: &View<'_>,
    query: &HashMap<String, String>,
    items: &mut [T],
    node: impl Fn(&T) -> &str,
) {
    let Some(near) = query.get("near").filter(|n| !n.is_empty()) else {
        return;
    };
    let near = if near == "_agent" {
        v.me().name.as_str()
    } else {
        near.as_str()
    };
    let coordinates: HashMap<&str, &Coordinate> =
        v.replica().coordinates().map(|(n, c, _)| (n, c)).collect();
    if let Some(origin) = coordinates.get(near) {
        sort_by_distance(origin, &coordinates, items, node);
    }
}

/// Sorts `items` nearest to `origin` first; those whose node has no coordinate last, in
/// the order they came (the sort is stable).
fn sort_by_distance<T>(
    origin: &Coordinate,
    coordinates: &HashMap<&str, &Coordinate>,
    items: &mut [T],
    node: impl Fn(&T) -> &str,
) {
    items.sort_by_cached_key(|item| {
        coordinates
            .get(node(item))
            .map_or(Duration::MAX, |c| origin.distance(c))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_first_and_the_unmeasured_last() {
        let at = |x: f64| {
            let mut c = Coordinate::default();
            c.vec[0] = x;
            c
        };
        let (a, b, c) = (at(0.0), at(0.010), at(0.020));
        let coordinates: HashMap<&str, &Coordinate> =
            [("a", &a), ("b", &b), ("c", &c)].into_iter().collect();
        let mut items = ["none", "c", "a", "also-none", "b"];
        sort_by_distance(&a, &coordinates, &mut items, |n| n);
        assert_eq!(items, ["a", "b", "c", "none", "also-none"]);
        sort_by_distance(&c, &coordinates, &mut items, |n| n);
        assert_eq!(items, ["c", "b", "a", "none", "also-none"]);
    }
}
