//! The topology of a service for the web UI: who calls it and whom it calls, with the
//! figures of each caller→callee pair.
//!
//! The figures live in the proxies' metrics, on the agents that run them: each agent answers
//! a `proxy-stats` agent request with what its own metrics say ([`AgentReport`]), and the
//! agent the UI asks sums the reports ([`Topology::of`]). Pairs come from three places, each
//! marked, so the graph shows what is declared and allowed as well as what was seen: the
//! sidecars' declared upstreams, the intentions that name the service, and the traffic the
//! proxies counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The agent request that asks an agent for its proxies' figures.
pub const PROXY_STATS: &str = "proxy-stats";

/// What one agent knows of the pairs its proxies carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// Pairs counted by this agent's proxies (caller side, plus refusals at the callee).
    pub pairs: Vec<PairFigures>,
    /// Upstreams declared by this agent's sidecars: (service, destination).
    pub declared: Vec<(String, String)>,
}

/// The figures of one caller→callee pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairFigures {
    pub source: String,
    pub destination: String,
    /// Connections opened through the caller's proxy.
    pub connections: f64,
    /// Attempts to reach an instance that failed.
    pub errors: f64,
    /// Connections the callee's proxy refused by intention.
    pub refused: f64,
    /// Bytes from caller to callee and back, counted when each connection ends.
    pub bytes_out: f64,
    pub bytes_in: f64,
    /// Time to open a stream to the callee (milliseconds): the median and the 99th
    /// percentile of the proxies' recent window.
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
}

/// The pairs counted in one agent's metrics, in the Prometheus text format the agent exports.
/// Bytes are taken from the caller's side (`side="upstream"`), the one side every carried
/// connection has.
pub fn pairs_from_prometheus(text: &str) -> Vec<PairFigures> {
    let mut pairs: BTreeMap<(String, String), PairFigures> = BTreeMap::new();
    for line in text.lines() {
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        let (Some(source), Some(destination)) =
            (sample.label("source"), sample.label("destination"))
        else {
            continue;
        };
        let pair = pairs
            .entry((source.to_owned(), destination.to_owned()))
            .or_insert_with(|| PairFigures {
                source: source.to_owned(),
                destination: destination.to_owned(),
                ..PairFigures::default()
            });
        let upstream_side = sample.label("side") == Some("upstream");
        let quantile = sample.label("quantile");
        match sample.name {
            "murmur_proxy_upstream_connections_total" => pair.connections += sample.value,
            "murmur_proxy_upstream_errors_total" => pair.errors += sample.value,
            "murmur_proxy_refused_by_intention_total" => pair.refused += sample.value,
            "murmur_proxy_bytes_out_total" if upstream_side => pair.bytes_out += sample.value,
            "murmur_proxy_bytes_in_total" if upstream_side => pair.bytes_in += sample.value,
            "murmur_proxy_connect_seconds" if sample.value.is_finite() => match quantile {
                Some("0.5") => pair.connect_p50_ms = Some(sample.value * 1000.0),
                Some("0.99") => pair.connect_p99_ms = Some(sample.value * 1000.0),
                _ => {}
            },
            _ => {}
        }
    }
    pairs.into_values().collect()
}

/// One line of the Prometheus text format: `name{label="value",…} value`.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        if !line.starts_with("murmur_proxy_") {
            return None;
        }
        let (name, rest) = match line.find('{') {
            Some(open) => (&line[..open], &line[open + 1..]),
            None => return None,
        };
        let mut labels = Vec::new();
        let mut rest = rest;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &after[end + 1..];
        }
        let value = rest.trim().split(' ').next()?.parse().ok()?;
        Some(Self {
            name,
            labels,
            value,
        })
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How a pair came to be known.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Link {
    /// The service at the other end.
    #[serde(rename = "Name")]
    pub name: String,
    /// A sidecar declares it as an upstream.
    #[serde(rename = "Declared")]
    pub declared: bool,
    /// The intention that decides it, if one names both services (`allow` or `deny`).
    #[serde(rename = "Intention")]
    pub intention: Option<String>,
    /// What the proxies counted, summed over the agents that answered.
    #[serde(rename = "Figures")]
    pub figures: Option<PairFigures>,
}

/// A service's callers and callees.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Topology {
    #[serde(rename = "Service")]
    pub service: String,
    /// Who calls it.
    #[serde(rename = "Downstreams")]
    pub downstreams: Vec<Link>,
    /// Whom it calls.
    #[serde(rename = "Upstreams")]
    pub upstreams: Vec<Link>,
    /// Agents whose figures are missing, and why.
    #[serde(rename = "Unreachable")]
    pub unreachable: Vec<String>,
}

impl Topology {
    /// The topology of `service` from the agents' `reports` and the `intentions` that name
    /// it as source or destination (source, destination, action).
    pub fn of(
        service: &str,
        reports: &[AgentReport],
        intentions: &[(String, String, String)],
    ) -> Self {
        let mut figures: BTreeMap<(String, String), PairFigures> = BTreeMap::new();
        for pair in reports.iter().flat_map(|r| &r.pairs) {
            let key = (pair.source.clone(), pair.destination.clone());
            match figures.get_mut(&key) {
                Some(sum) => add(sum, pair),
                None => {
                    figures.insert(key, pair.clone());
                }
            }
        }
        let declared: Vec<&(String, String)> = reports.iter().flat_map(|r| &r.declared).collect();
        let mut links: BTreeMap<(String, String), Link> = BTreeMap::new();
        fn link<'a>(
            links: &'a mut BTreeMap<(String, String), Link>,
            source: &str,
            destination: &str,
        ) -> &'a mut Link {
            links
                .entry((source.to_owned(), destination.to_owned()))
                .or_default()
        }
        for (source, destination) in figures.keys() {
            link(&mut links, source, destination);
        }
        for (source, destination) in &declared {
            link(&mut links, source, destination).declared = true;
        }
        for (source, destination, action) in intentions {
            link(&mut links, source, destination).intention = Some(action.clone());
        }
        let mut topology = Self {
            service: service.to_owned(),
            ..Self::default()
        };
        for ((source, destination), mut found) in links {
            found.figures = figures.get(&(source.clone(), destination.clone())).cloned();
            if destination == service && source != service {
                found.name = source;
                topology.downstreams.push(found);
            } else if source == service && destination != service {
                found.name = destination;
                topology.upstreams.push(found);
            }
        }
        topology
    }
}

/// Adds `more` to `sum`: counters add; of the latencies, the median is weighted by
/// connections (an estimate: medians do not add) and the 99th percentile is the worst.
fn add(sum: &mut PairFigures, more: &PairFigures) {
    let total = sum.connections + more.connections;
    sum.connect_p50_ms = match (sum.connect_p50_ms, more.connect_p50_ms) {
        (Some(a), Some(b)) if total > 0.0 => {
            Some((a * sum.connections + b * more.connections) / total)
        }
        (a, b) => a.or(b),
    };
    sum.connect_p99_ms = match (sum.connect_p99_ms, more.connect_p99_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    sum.connections += more.connections;
    sum.errors += more.errors;
    sum.refused += more.refused;
    sum.bytes_out += more.bytes_out;
    sum.bytes_in += more.bytes_in;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# TYPE murmur_proxy_upstream_connections_total counter
murmur_proxy_upstream_connections_total{source="web",destination="db"} 3
murmur_proxy_bytes_out_total{source="web",destination="db",side="upstream"} 1200
murmur_proxy_bytes_in_total{source="web",destination="db",side="upstream"} 3400
murmur_proxy_bytes_out_total{source="web",destination="db",side="inbound"} 999999
murmur_proxy_refused_by_intention_total{source="api",destination="db"} 2
murmur_proxy_connect_seconds{source="web",destination="db",quantile="0.5"} 0.002
murmur_proxy_connect_seconds{source="web",destination="db",quantile="0.99"} 0.010
murmur_proxy_connect_seconds_count{source="web",destination="db"} 3
murmur_proxy_upstream_connections_total{source="we\"ird\\",destination="db"} 1
murmur_gossip_members{} 3
"#;

    #[test]
    fn a_scrape_gives_each_pair_its_caller_side_figures() {
        let pairs = pairs_from_prometheus(SCRAPE);
        let web_db = pairs.iter().find(|p| p.source == "web").unwrap();
        assert_eq!(web_db.connections, 3.0);
        assert_eq!((web_db.bytes_out, web_db.bytes_in), (1200.0, 3400.0));
        assert_eq!(web_db.connect_p50_ms, Some(2.0));
        assert_eq!(web_db.connect_p99_ms, Some(10.0));
        let api_db = pairs.iter().find(|p| p.source == "api").unwrap();
        assert_eq!(api_db.refused, 2.0);
        assert!(pairs.iter().any(|p| p.source == "we\"ird\\"), "{pairs:?}");
        assert_eq!(pairs.len(), 3);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        for line in [
            "murmur_proxy_x{source=\"a\"",
            "murmur_proxy_x{source=\"a\",destination=\"b\"} not-a-number",
            "murmur_proxy_x{source=\"a\\",
            "murmur_proxy_x 3",
            "",
        ] {
            assert!(pairs_from_prometheus(line).is_empty(), "{line}");
        }
    }

    #[test]
    fn reports_from_several_agents_add_up_and_each_source_is_marked() {
        let web_db = |connections: f64, p50: f64, p99: f64| PairFigures {
            source: "web".into(),
            destination: "db".into(),
            connections,
            bytes_out: 10.0,
            connect_p50_ms: Some(p50),
            connect_p99_ms: Some(p99),
            ..PairFigures::default()
        };
        let reports = [
            AgentReport {
                pairs: vec![web_db(1.0, 1.0, 5.0)],
                declared: vec![("web".into(), "db".into()), ("db".into(), "cache".into())],
            },
            AgentReport {
                pairs: vec![web_db(3.0, 3.0, 4.0)],
                declared: vec![],
            },
        ];
        let intentions = [("api".into(), "db".into(), "deny".into())];
        let topology = Topology::of("db", &reports, &intentions);
        let names = |links: &[Link]| links.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&topology.downstreams), ["api", "web"]);
        assert_eq!(names(&topology.upstreams), ["cache"]);
        let web = &topology.downstreams[1];
        assert!(web.declared && web.intention.is_none());
        let figures = web.figures.as_ref().unwrap();
        assert_eq!((figures.connections, figures.bytes_out), (4.0, 20.0));
        assert_eq!(figures.connect_p50_ms, Some(2.5));
        assert_eq!(figures.connect_p99_ms, Some(5.0));
        let api = &topology.downstreams[0];
        assert_eq!(api.intention.as_deref(), Some("deny"));
        assert!(!api.declared && api.figures.is_none());
    }
}
