//! The decisions of a mesh gateway: where a new QUIC flow goes, read from the server name its
//! client asked for, and which datagrams belong to a flow already open. Pure: datagrams,
//! addresses and the time come in; decisions come out. The agent's gateway task does the I/O.
//!
//! A gateway never terminates TLS: the mutual TLS and the intention check stay between the
//! two proxies, and the gateway only sees which service in which datacenter a client wants.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::initial::{InitialError, client_hello};

/// How a proxy reaches an upstream in another datacenter (Consul's `MeshGateway.Mode`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Straight to the instances' proxies (they must be reachable from here).
    #[default]
    None,
    /// Through a mesh gateway of this datacenter, which forwards to one of the other's.
    Local,
    /// Straight to a mesh gateway of the upstream's datacenter.
    Remote,
}

impl GatewayMode {
    /// The mode named `text` (`none`, `local`, `remote`; empty is `none`, as Consul's default).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "" | "none" | "default" => Some(Self::None),
            "local" => Some(Self::Local),
            "remote" => Some(Self::Remote),
            _ => None,
        }
    }

    /// The mode's name, as [`GatewayMode::parse`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// Where a new flow goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// To a healthy mesh endpoint of `service` in this gateway's datacenter.
    Local {
        /// The destination service.
        service: String,
    },
    /// To a gateway of `datacenter`, which routes it on.
    Remote {
        /// The destination's datacenter.
        datacenter: String,
        /// The destination service.
        service: String,
    },
}

/// Why a datagram was dropped (the label of the gateway's drop counter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// A datagram of no open flow that does not start one: no readable ClientHello.
    #[error("no flow and no readable ClientHello: {0}")]
    NoClientHello(#[from] InitialError),
    /// A server name that is not a mesh name of this trust domain.
    #[error("server name {0:?} is not a service of this mesh")]
    ForeignName(String),
    /// A server name for a datacenter no gateway knows.
    #[error("no route to datacenter {0:?}")]
    UnknownDatacenter(String),
}

impl Drop {
    /// A short name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoClientHello(_) => "no_client_hello",
            Self::ForeignName(_) => "foreign_name",
            Self::UnknownDatacenter(_) => "unknown_datacenter",
        }
    }
}

/// The service and datacenter a mesh server name names, if it is one of `trust_domain`:
/// murmur's `<service>.svc.<dc>.<trust-domain>` (the name in every leaf, which clients
/// verify) or Consul's `<service>.<namespace>.<dc>.internal.<trust-domain>`.
pub fn mesh_name(server_name: &str, trust_domain: &str) -> Option<(String, String)> {
    let name = server_name.to_ascii_lowercase();
    let rest = name.strip_suffix(&trust_domain.to_ascii_lowercase())?;
    let rest = rest.strip_suffix('.')?;
    let labels: Vec<&str> = rest.split('.').collect();
    let (service, dc) = match labels.as_slice() {
        [service, "svc", dc] => (*service, *dc),
        [service, _namespace, dc, "internal"] => (*service, *dc),
        _ => return None,
    };
    (!service.is_empty() && !dc.is_empty()).then(|| (service.to_owned(), dc.to_owned()))
}

/// The route for a flow whose client asked for `server_name`: local when it names this
/// gateway's `datacenter`, else on to the named one if `known` says it exists.
pub fn route(
    server_name: &str,
    trust_domain: &str,
    datacenter: &str,
    known: impl Fn(&str) -> bool,
) -> Result<Route, Drop> {
    let (service, dc) = mesh_name(server_name, trust_domain)
        .ok_or_else(|| Drop::ForeignName(server_name.to_owned()))?;
    if dc == datacenter {
        Ok(Route::Local { service })
    } else if known(&dc) {
        Ok(Route::Remote {
            datacenter: dc,
            service,
        })
    } else {
        Err(Drop::UnknownDatacenter(dc))
    }
}

/// Which of a gateway's addresses a flow arrived at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The LAN address, apart from the WAN one: a proxy of this datacenter.
    Lan,
    /// The WAN address, apart from the LAN one: another datacenter's gateway.
    Wan,
    /// The one address the gateway has for both.
    Shared,
}

/// The datacenter a flow came from, for the gateway's metrics: at the LAN address, this
/// gateway's `local` one; else the datacenter one of whose gateways has the client's IP
/// (`remote_gateways`: datacenter → its gateways' WAN addresses), since another datacenter's
/// gateway forwards from its WAN address; else, at a shared address, this one, and at the
/// WAN address, `unknown`.
pub fn source_datacenter<'a>(
    client: std::net::IpAddr,
    arrival: Arrival,
    local: &'a str,
    remote_gateways: &'a HashMap<String, Vec<SocketAddr>>,
) -> &'a str {
    if arrival == Arrival::Lan {
        return local;
    }
    let remote = remote_gateways
        .iter()
        .find(|(_, gateways)| gateways.iter().any(|g| g.ip() == client))
        .map(|(dc, _)| dc.as_str());
    match (remote, arrival) {
        (Some(dc), _) => dc,
        (None, Arrival::Wan) => "unknown",
        (None, _) => local,
    }
}

/// What to do with one datagram from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It belongs to the open flow to `to`.
    Forward {
        /// Where the flow goes.
        to: SocketAddr,
    },
    /// It starts a flow along `route`: the flow is marked as opening (later datagrams of
    /// the client are [`Decision::Opening`]) until the caller calls [`Flows::opened`] with
    /// the address it picked, or [`Flows::failed`].
    Open {
        /// Where the flow goes.
        route: Route,
    },
    /// Its flow is being opened: dropped (QUIC sends its Initial again).
    Opening,
    /// Dropped, for this reason.
    Drop(Drop),
}

/// The open flows of a gateway, by client address, forgotten after `idle` without a
/// datagram either way.
#[derive(Debug)]
pub struct Flows {
    by_client: HashMap<SocketAddr, Flow>,
    idle: Duration,
}

#[derive(Debug, Clone)]
struct Flow {
    /// `None` while the route is being resolved.
    to: Option<SocketAddr>,
    last: Duration,
    /// The connection id of the client's first flight.
    connection_id: Vec<u8>,
}

impl Flows {
    /// No flows; each lives until `idle` passes without traffic.
    pub fn new(idle: Duration) -> Self {
        Self {
            by_client: HashMap::new(),
            idle,
        }
    }

    /// Decides about `datagram` from `client` at `now` (a monotonic time), in a gateway of
    /// `datacenter` and `trust_domain`; `known` says which other datacenters exist.
    pub fn on_datagram(
        &mut self,
        now: Duration,
        client: SocketAddr,
        datagram: &[u8],
        trust_domain: &str,
        datacenter: &str,
        known: impl Fn(&str) -> bool,
    ) -> Decision {
        // A client address carries one connection at a time (a proxy dials each upstream
        // through gateways from a socket of its own): a new connection from it, known by a
        // ClientHello under another connection id, replaces its flow, so a reconnect after
        // its destination died is routed afresh.
        let hello = client_hello(datagram);
        if let Some(flow) = self.by_client.get_mut(&client) {
            let same = match &hello {
                Ok(hello) => hello.connection_id == flow.connection_id,
                Err(_) => true,
            };
            if same {
                flow.last = now;
                return match flow.to {
                    Some(to) => Decision::Forward { to },
                    None => Decision::Opening,
                };
            }
        }
        let hello = match hello {
            Ok(hello) => hello,
            Err(err) => return Decision::Drop(Drop::NoClientHello(err)),
        };
        match route(&hello.server_name, trust_domain, datacenter, known) {
            Ok(route) => {
                let flow = Flow {
                    to: None,
                    last: now,
                    connection_id: hello.connection_id,
                };
                self.by_client.insert(client, flow);
                Decision::Open { route }
            }
            Err(drop) => {
                self.by_client.remove(&client);
                Decision::Drop(drop)
            }
        }
    }

    /// Records the flow of `client` opened to `to` at `now`.
    pub fn opened(&mut self, now: Duration, client: SocketAddr, to: SocketAddr) {
        if let Some(flow) = self.by_client.get_mut(&client) {
            flow.to = Some(to);
            flow.last = now;
        }
    }

    /// Forgets the flow of `client` that could not be opened (no healthy destination): its
    /// next Initial tries again.
    pub fn failed(&mut self, client: SocketAddr) {
        if self.by_client.get(&client).is_some_and(|f| f.to.is_none()) {
            self.by_client.remove(&client);
        }
    }

    /// Notes traffic back to `client` at `now`, which keeps its flow open.
    pub fn answered(&mut self, now: Duration, client: SocketAddr) {
        if let Some(flow) = self.by_client.get_mut(&client) {
            flow.last = now;
        }
    }

    /// Forgets the flows idle at `now`; their clients.
    pub fn expire(&mut self, now: Duration) -> Vec<SocketAddr> {
        let idle = self.idle;
        let gone: Vec<SocketAddr> = self
            .by_client
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.last) >= idle)
            .map(|(c, _)| *c)
            .collect();
        for client in &gone {
            self.by_client.remove(client);
        }
        gone
    }

    /// How many flows are open.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222.consul";

    #[test]
    fn mesh_names_of_both_forms_are_read_and_others_refused() {
        let named = |n: &str| mesh_name(n, TD);
        assert_eq!(
            named(&format!("db.svc.dc2.{TD}")),
            Some(("db".into(), "dc2".into()))
        );
        assert_eq!(
            named(&format!("db.default.dc2.internal.{TD}")),
            Some(("db".into(), "dc2".into()))
        );
        assert_eq!(
            named(&format!("DB.SVC.DC2.{}", TD.to_uppercase())),
            Some(("db".into(), "dc2".into()))
        );
        for other in [
            "db.svc.dc2.other.consul".to_owned(),
            format!("svc.dc2.{TD}"),
            format!("a.b.db.svc.dc2.{TD}"),
            format!(".svc.dc2.{TD}"),
            format!("db.svc..{TD}"),
            TD.to_owned(),
            String::new(),
        ] {
            assert_eq!(named(&other), None, "{other}");
        }
    }

    #[test]
    fn the_source_datacenter_is_the_local_one_at_the_lan_address_else_the_gateways_ip_says() {
        let remote: HashMap<String, Vec<SocketAddr>> =
            [("west".to_owned(), vec!["10.0.3.2:8443".parse().unwrap()])].into();
        let from =
            |ip: &str, arrival| source_datacenter(ip.parse().unwrap(), arrival, "east", &remote);
        assert_eq!(from("10.0.3.2", Arrival::Lan), "east");
        assert_eq!(from("10.0.3.2", Arrival::Wan), "west");
        assert_eq!(from("10.0.3.9", Arrival::Wan), "unknown");
        assert_eq!(from("10.0.3.2", Arrival::Shared), "west");
        assert_eq!(from("10.0.1.7", Arrival::Shared), "east");
    }

    #[test]
    fn routes_go_local_to_known_datacenters_or_nowhere() {
        let known = |dc: &str| dc == "dc2";
        assert_eq!(
            route(&format!("db.svc.dc1.{TD}"), TD, "dc1", known),
            Ok(Route::Local {
                service: "db".into()
            })
        );
        assert_eq!(
            route(&format!("db.svc.dc2.{TD}"), TD, "dc1", known),
            Ok(Route::Remote {
                datacenter: "dc2".into(),
                service: "db".into()
            })
        );
        assert_eq!(
            route(&format!("db.svc.dc9.{TD}"), TD, "dc1", known),
            Err(Drop::UnknownDatacenter("dc9".into()))
        );
        assert!(matches!(
            route("example.com", TD, "dc1", known),
            Err(Drop::ForeignName(_))
        ));
    }

    #[test]
    fn a_client_hello_opens_a_flow_its_retransmits_wait_and_a_failure_lets_it_try_again() {
        let initial =
            crate::initial::tests::first_datagram(&format!("db.svc.dc2.{TD}"), &[b"murmur/1"]);
        let mut flows = Flows::new(Duration::from_secs(60));
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let decide = |flows: &mut Flows| {
            flows.on_datagram(Duration::ZERO, client, &initial, TD, "dc1", |dc| {
                dc == "dc2"
            })
        };
        let remote = Route::Remote {
            datacenter: "dc2".into(),
            service: "db".into(),
        };
        assert_eq!(
            decide(&mut flows),
            Decision::Open {
                route: remote.clone()
            }
        );
        assert_eq!(decide(&mut flows), Decision::Opening);
        flows.failed(client);
        assert_eq!(decide(&mut flows), Decision::Open { route: remote });
        let to: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        flows.opened(Duration::ZERO, client, to);
        assert_eq!(decide(&mut flows), Decision::Forward { to });
        flows.failed(client);
        assert_eq!(
            flows.len(),
            1,
            "an open flow is not dropped by a late failure"
        );
    }

    #[test]
    fn garbage_from_a_new_client_is_dropped_and_an_open_flow_forwards_until_idle() {
        let initial = crate::initial::tests::first_datagram(&format!("db.svc.dc1.{TD}"), &[]);
        let mut flows = Flows::new(Duration::from_secs(60));
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let to: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let decide = |flows: &mut Flows, now: u64, bytes: &[u8]| {
            flows.on_datagram(Duration::from_secs(now), client, bytes, TD, "dc1", |_| true)
        };
        assert!(matches!(
            decide(&mut flows, 0, b"garbage"),
            Decision::Drop(Drop::NoClientHello(_))
        ));
        assert!(flows.is_empty(), "garbage opens nothing");
        assert!(matches!(
            decide(&mut flows, 1, &initial),
            Decision::Open { .. }
        ));
        flows.opened(Duration::from_secs(1), client, to);
        assert_eq!(
            decide(&mut flows, 30, b"anything"),
            Decision::Forward { to }
        );
        // The first flight again (a lost answer): the same connection, the same flow.
        assert_eq!(decide(&mut flows, 31, &initial), Decision::Forward { to });
        flows.answered(Duration::from_secs(80), client);
        assert!(flows.expire(Duration::from_secs(100)).is_empty());
        assert_eq!(flows.expire(Duration::from_secs(140)), vec![client]);
        assert!(flows.is_empty());
    }

    #[test]
    fn a_new_connection_from_a_known_client_is_routed_afresh() {
        let first = crate::initial::tests::first_datagram(&format!("db.svc.dc1.{TD}"), &[]);
        let second = crate::initial::tests::first_datagram(&format!("db.svc.dc1.{TD}"), &[]);
        let mut flows = Flows::new(Duration::from_secs(60));
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let decide = |flows: &mut Flows, bytes: &[u8]| {
            flows.on_datagram(Duration::ZERO, client, bytes, TD, "dc1", |_| true)
        };
        assert!(matches!(decide(&mut flows, &first), Decision::Open { .. }));
        flows.opened(Duration::ZERO, client, "127.0.0.1:6000".parse().unwrap());
        assert!(matches!(decide(&mut flows, &second), Decision::Open { .. }));
    }
}
