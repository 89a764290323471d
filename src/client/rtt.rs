//! `murmur rtt`: the estimated round trip between two nodes, from the coordinates the agent
//! lists, printed as Consul's `consul rtt` prints it.

use anyhow::{Context, bail};
use murmur_catalog::{Coordinate, DIMENSIONS};
use serde_json::Value;

use super::Client;

/// Prints the estimate between `node` and `other` (default: the local agent).
pub async fn run(
    client: &Client,
    node: &str,
    other: Option<&str>,
    wan: bool,
) -> anyhow::Result<()> {
    let listed = if wan {
        let datacenters = client.get("/v1/coordinate/datacenters").await?;
        datacenters
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|dc| dc["Coordinates"].as_array().cloned().unwrap_or_default())
            .collect()
    } else {
        client
            .get("/v1/coordinate/nodes")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let other = match other {
        Some(other) => other.to_owned(),
        None => {
            let me = client.get("/v1/agent/self").await?;
            let name = me["Config"]["NodeName"].as_str().unwrap_or_default();
            if wan {
                let dc = me["Config"]["Datacenter"].as_str().unwrap_or_default();
                format!("{name}.{dc}")
            } else {
                name.to_owned()
            }
        }
    };
    let find = |name: &str| -> anyhow::Result<Coordinate> {
        let entry = listed
            .iter()
            .find(|c| c["Node"].as_str() == Some(name))
            .with_context(|| {
                if wan {
                    format!("Could not find a coordinate for node {name:?}: with -wan, name a WAN gateway as node.datacenter (see `murmur members -wan`)")
                } else {
                    format!("Could not find a coordinate for node {name:?}: a node publishes one a few seconds after it starts")
                }
            })?;
        parse(&entry["Coord"])
            .with_context(|| format!("the agent's coordinate of {name:?} does not parse"))
    };
    let (a, b) = (find(node)?, find(&other)?);
    let rtt = a.distance(&b);
    println!(
        "Estimated {node} <-> {other} rtt: {:.3} ms (using {} coordinates)",
        rtt.as_secs_f64() * 1000.0,
        if wan { "WAN" } else { "LAN" }
    );
    Ok(())
}

/// A coordinate from Consul's JSON shape.
fn parse(json: &Value) -> anyhow::Result<Coordinate> {
    let number = |field: &str| json[field].as_f64().with_context(|| format!("no {field}"));
    let components: Vec<f64> = json["Vec"]
        .as_array()
        .context("no Vec")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let Ok(vec) = <[f64; DIMENSIONS]>::try_from(components) else {
        bail!("Vec does not have {DIMENSIONS} numbers");
    };
    let coordinate = Coordinate {
        vec,
        error: number("Error")?,
        adjustment: number("Adjustment")?,
        height: number("Height")?,
    };
    if !coordinate.is_valid() {
        bail!("its components are out of range");
    }
    Ok(coordinate)
}
