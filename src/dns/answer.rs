//! Answers one DNS query from a catalog view, Consul's way; no sockets, so every form is
//! tested directly (the SOA's serial reads the wall clock, as zone serials do). Names (case-insensitive, under the domain, `consul.` by default):
//!
//! - `<node>.node[.<dc>].<domain>` → A/AAAA of the node's address;
//! - `[<tag>.]<service>.service[.<dc>].<domain>` → A/AAAA of healthy instances, SRV on request
//!   (target `<node>.node.<dc>.<domain>.`, its address in the additional section);
//! - `_<service>._<tag|tcp>[.service][.<dc>].<domain>` (RFC 2782; `tcp` means any tag).
//!
//! Healthy means no critical check (node, service or `serfHealth`). Answers are shuffled. A
//! name that does not exist is NXDOMAIN with the zone's SOA in the authority section; a name
//! that exists without records of the asked type is an empty NOERROR with the SOA.

use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use murmur_acl::{Access, Resource};
use murmur_catalog::{CatalogView, Health, Instance};
use rand::Rng;
use rand::seq::SliceRandom;

/// Settings of the DNS interface.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The domain answered for, lower case, without dots at the ends (`consul`).
    pub domain: String,
    /// This agent's datacenter: names that carry another are answered there.
    pub datacenter: String,
    /// TTL of every answer, in seconds.
    pub ttl: u32,
    /// With ACLs on, the agent's ACLs (shared with the HTTP API); `None` with ACLs off.
    pub acl: Option<std::sync::Arc<crate::http::Acl>>,
    /// What the answers may show: names the anonymous token may read (everything with ACLs
    /// off); set for each query from the replica it is answered from.
    pub reader: std::sync::Arc<murmur_acl::Authorizer>,
}

/// What a lookup resolved to.
enum Found<'a> {
    Node(IpAddr),
    Instances(Vec<Instance<'a>>),
    Nothing,
}

/// Parses `query`, answers it from `view`; `None` when the bytes are not a DNS message at all
/// (too short to carry an id: nothing to answer to).
pub fn respond(
    packet: &[u8],
    view: &CatalogView<'_>,
    settings: &DnsSettings,
    rng: &mut impl Rng,
    max_len: Option<usize>,
) -> Option<Vec<u8>> {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
            let mut reply = Message::new();
            reply
                .set_id(id)
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::FormErr);
            return reply.to_vec().ok();
        }
    };
    let reply = answer(&request, view, settings, rng);
    encode_within(&request, reply, max_len)
}

/// Encodes `reply`; over UDP (`max_len`), one too big for the client's buffer is cut to fit
/// and flagged, so the client asks again over TCP.
fn encode_within(request: &Message, mut reply: Message, max_len: Option<usize>) -> Option<Vec<u8>> {
    let mut bytes = reply.to_vec().ok()?;
    let limit = max_len.map(|l| l.max(usize::from(request.max_payload())));
    if let Some(limit) = limit
        && bytes.len() > limit
    {
        // The additional section goes first, then as many answers as fit, found by bisection
        // (each try is an encoding: trimming one record at a time was most of a DNS answer).
        reply.set_truncated(true);
        reply.additionals_mut().clear();
        let answers = std::mem::take(reply.answers_mut());
        let (mut fits, mut over) = (0, answers.len() + 1);
        while over - fits > 1 {
            let mid = (fits + over) / 2;
            *reply.answers_mut() = answers[..mid].to_vec();
            if reply.to_vec().ok()?.len() <= limit {
                fits = mid;
            } else {
                over = mid;
            }
        }
        *reply.answers_mut() = answers[..fits].to_vec();
        bytes = reply.to_vec().ok()?;
    }
    Some(bytes)
}

/// The reply to a parsed request.
pub fn answer(
    request: &Message,
    view: &CatalogView<'_>,
    settings: &DnsSettings,
    rng: &mut impl Rng,
) -> Message {
    let mut reply = reply_to(request);
    if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
        reply.set_response_code(ResponseCode::NotImp);
        return reply;
    }
    // Only EDNS version 0 exists; a higher one gets BADVERS with our version (RFC 6891 §6.1.3).
    if request
        .extensions()
        .as_ref()
        .is_some_and(|e| e.version() > 0)
    {
        reply.set_response_code(ResponseCode::BADVERS);
        return reply;
    }
    let [query] = request.queries() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    reply.add_query(query.clone());
    let name = query.name().to_lowercase();
    let Some(labels) = labels_under(&name, &settings.domain) else {
        reply.set_response_code(ResponseCode::Refused);
        return reply;
    };
    let found = lookup(&labels, view, settings);
    let qtype = query.query_type();
    let ttl = settings.ttl;
    match found {
        Found::Nothing => {
            reply.set_response_code(ResponseCode::NXDomain);
            reply.add_name_server(soa(settings));
        }
        Found::Node(ip) => {
            if let Some(record) = address(query.name(), ip, qtype, ttl) {
                reply.add_answer(record);
            } else {
                reply.add_name_server(soa(settings));
            }
        }
        Found::Instances(mut instances) => {
            instances.shuffle(rng);
            let targets: Vec<Target> = instances.iter().map(Target::of).collect();
            add_targets(&mut reply, query, &targets, settings, ttl);
        }
    }
    reply
}

/// One answer of a service lookup: where an instance is.
pub struct Target {
    /// Its node's name.
    pub node: String,
    /// Its node's datacenter (a prepared query's failover answers from another).
    pub datacenter: String,
    /// Its address, if it has one.
    pub ip: Option<IpAddr>,
    /// Its port.
    pub port: u16,
    /// Its SRV weight.
    pub weight: u16,
}

impl Target {
    fn of(i: &Instance<'_>) -> Self {
        let weight = if i.health == Health::Warning {
            i.service.weight_warning
        } else {
            i.service.weight_passing.max(1)
        };
        Self {
            node: i.node.to_owned(),
            datacenter: i.record.datacenter.clone(),
            ip: instance_ip(i),
            port: i.service.port,
            weight: u16::try_from(weight).unwrap_or(u16::MAX),
        }
    }
}

/// Answers `query` with `targets`: SRV records (the target's address in the additional
/// section) or A/AAAA, as asked; the SOA when none fits.
fn add_targets(
    reply: &mut Message,
    query: &hickory_proto::op::Query,
    targets: &[Target],
    settings: &DnsSettings,
    ttl: u32,
) {
    let qtype = query.query_type();
    for t in targets {
        if qtype == RecordType::SRV {
            let dc = if t.datacenter.is_empty() {
                &settings.datacenter
            } else {
                &t.datacenter
            };
            let target = node_name(&t.node, dc, settings);
            let srv = SRV::new(1, t.weight, t.port, target.clone());
            reply.add_answer(Record::from_rdata(
                query.name().clone(),
                ttl,
                RData::SRV(srv),
            ));
            if let Some(ip) = t.ip
                && let Some(a) = address(&target, ip, address_type(ip), ttl)
            {
                reply.add_additional(a);
            }
        } else if let Some(record) = t.ip.and_then(|ip| address(query.name(), ip, qtype, ttl)) {
            reply.add_answer(record);
        }
    }
    if reply.answers().is_empty() {
        reply.add_name_server(soa(settings));
    }
}

/// The reply to the prepared-query lookup in `packet`: `targets` (NXDOMAIN when `None`: no
/// such query), with `ttl` (the query's own, else the agent's).
pub fn respond_with_targets(
    packet: &[u8],
    targets: Option<&[Target]>,
    ttl: Option<u32>,
    settings: &DnsSettings,
    max_len: Option<usize>,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let Some(targets) = targets else {
        return failure(packet, ResponseCode::NXDomain, settings);
    };
    let mut reply = reply_to(&request);
    let query = request.queries().first()?;
    reply.add_query(query.clone());
    add_targets(
        &mut reply,
        query,
        targets,
        settings,
        ttl.unwrap_or(settings.ttl),
    );
    encode_within(&request, reply, max_len)
}

/// The labels under the domain of the one question in `packet`.
fn question_labels(packet: &[u8], settings: &DnsSettings) -> Option<Vec<String>> {
    let request = Message::from_vec(packet).ok()?;
    let [query] = request.queries() else {
        return None;
    };
    labels_under(&query.name().to_lowercase(), &settings.domain)
}

/// The labels of `name` before `.<domain>.`, in order; `None` outside the domain.
fn labels_under(name: &Name, domain: &str) -> Option<Vec<String>> {
    let text = name.to_ascii();
    let text = text.trim_end_matches('.');
    let rest = if text == domain {
        ""
    } else {
        text.strip_suffix(domain)?.strip_suffix('.')?
    };
    Some(
        rest.split('.')
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Whether `labels` are of the RFC 2782 form, `_<service>._<tag|tcp>...`.
fn is_rfc2782(labels: &[&str]) -> bool {
    labels.len() >= 2 && labels[0].starts_with('_') && labels[1].starts_with('_')
}

/// Splits the optional datacenter label that closes each form off `labels`; the
/// datacenter, when one is named.
fn split_datacenter<'l>(labels: &mut Vec<&'l str>) -> Option<&'l str> {
    let l = labels.as_slice();
    let rfc2782 = is_rfc2782(l);
    let has_dc = match l.len() {
        n if n >= 3 && matches!(l[n - 2], "node" | "service" | "query") => true,
        3 => rfc2782 && l[2] != "service",
        4 => rfc2782 && l[2] == "service",
        _ => false,
    };
    if has_dc { labels.pop() } else { None }
}

/// Who answers a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// This agent, from its replica.
    Here,
    /// The datacenter it names, not this one (`crate::forward` takes it there).
    Datacenter(String),
    /// The prepared query it names (`<name>.query[.<dc>].<domain>`, this datacenter or
    /// none): run here, and it may fail over.
    Query(String),
}

/// Who answers the query in `packet`: one look at its name, whatever its form.
pub fn destination(packet: &[u8], settings: &DnsSettings) -> Destination {
    let Some(labels) = question_labels(packet, settings) else {
        return Destination::Here;
    };
    let mut l: Vec<&str> = labels.iter().map(String::as_str).collect();
    if let Some(dc) = split_datacenter(&mut l).filter(|dc| *dc != settings.datacenter) {
        return Destination::Datacenter(dc.to_owned());
    }
    match l.as_slice() {
        [name, "query"] => Destination::Query((*name).to_owned()),
        _ => Destination::Here,
    }
}

/// The reply to the query in `packet` that says only `code` (SERVFAIL: the datacenter it
/// names did not answer; NXDOMAIN: no such datacenter), with the zone's SOA for NXDOMAIN.
pub fn failure(packet: &[u8], code: ResponseCode, settings: &DnsSettings) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let mut reply = reply_to(&request);
    // Only a name known not to exist is an authoritative answer.
    reply
        .set_response_code(code)
        .set_authoritative(code == ResponseCode::NXDomain);
    for query in request.queries() {
        reply.add_query(query.clone());
    }
    if code == ResponseCode::NXDomain {
        reply.add_name_server(soa(settings));
    }
    reply.to_vec().ok()
}

/// An empty authoritative response to `request`: its id, op code and recursion flag.
/// The reply's header, with an OPT record when the request has one (RFC 6891 §6.1.1: a
/// responder that sees OPT answers with OPT), offering the buffer size the client offered, as
/// Consul does (never below 512).
fn reply_to(request: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_authoritative(true);
    if let Some(asked) = request.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(asked.max_payload().max(512))
            .set_version(0)
            .set_dnssec_ok(false);
        reply.set_edns(edns);
    }
    reply
}

fn lookup<'a>(labels: &[String], view: &CatalogView<'a>, settings: &DnsSettings) -> Found<'a> {
    let mut l: Vec<&str> = labels.iter().map(String::as_str).collect();
    // Another datacenter's names are answered there; one that reaches here is not known.
    if split_datacenter(&mut l).is_some_and(|dc| dc != settings.datacenter) {
        return Found::Nothing;
    }
    let rfc2782 = is_rfc2782(&l);
    let readable = |kind, name: &str| settings.reader.allows(kind, name, Access::Read);
    let healthy = |name: &str, tag: Option<&str>| {
        if !readable(Resource::Service, name) {
            return Found::Nothing;
        }
        let tags: Vec<&str> = tag.into_iter().collect();
        let list: Vec<Instance<'a>> = view
            .instances(name, &tags)
            .into_iter()
            .filter(|i| i.health < Health::Critical && readable(Resource::Node, i.node))
            .collect();
        if list.is_empty() {
            Found::Nothing
        } else {
            Found::Instances(list)
        }
    };
    match l.as_slice() {
        [node, "node"] => view
            .nodes()
            .find(|(n, _)| n.eq_ignore_ascii_case(node) && readable(Resource::Node, n))
            .and_then(|(_, record)| IpAddr::from_str(&record.address).ok())
            .map_or(Found::Nothing, Found::Node),
        [service, proto] | [service, proto, "service"] if rfc2782 => {
            let tag = &proto[1..];
            healthy(&service[1..], (tag != "tcp").then_some(tag))
        }
        [service, "service"] => healthy(service, None),
        [tag, service, "service"] => healthy(service, Some(tag)),
        _ => Found::Nothing,
    }
}

/// The instance's own address, else its node's.
fn instance_ip(i: &Instance<'_>) -> Option<IpAddr> {
    IpAddr::from_str(&i.service.address)
        .or_else(|_| IpAddr::from_str(&i.record.address))
        .ok()
}

fn address_type(ip: IpAddr) -> RecordType {
    match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    }
}

/// An A or AAAA record for `ip` when the query asks for that type (or ANY).
fn address(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, rdata))
}

fn node_name(node: &str, datacenter: &str, settings: &DnsSettings) -> Name {
    Name::from_ascii(format!("{node}.node.{datacenter}.{}.", settings.domain))
        .unwrap_or_else(|_| Name::root())
}

/// The zone's SOA, sent with NXDOMAIN and empty answers (its minimum is the negative TTL).
fn soa(settings: &DnsSettings) -> Record {
    let zone = Name::from_ascii(format!("{}.", settings.domain)).unwrap_or_else(|_| Name::root());
    let ns = Name::from_ascii(format!("ns.{}.", settings.domain)).unwrap_or_else(|_| Name::root());
    let mail = Name::from_ascii(format!("hostmaster.{}.", settings.domain))
        .unwrap_or_else(|_| Name::root());
    let serial = u32::try_from(crate::agent::runtime::wall_ms() / 1000).unwrap_or(u32::MAX);
    let rdata = SOA::new(ns, mail, serial, 3600, 600, 86400, settings.ttl);
    Record::from_rdata(zone, settings.ttl, RData::SOA(rdata))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use hickory_proto::op::Query;
    use murmur_catalog::{Check, ModifyIndex, NodeRecord, Owned, OwnedMap, Service, Version};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn settings() -> DnsSettings {
        DnsSettings {
            domain: "consul".into(),
            datacenter: "dc1".into(),
            ttl: 0,
            acl: None,
            reader: std::sync::Arc::new(murmur_acl::Authorizer::Management),
        }
    }

    proptest::proptest! {
        /// Whatever arrives on the DNS port gets an answer that fits the client's buffer, or
        /// none (too short to carry an id), never a panic: random bytes, and real queries with
        /// bytes flipped.
        #[test]
        fn any_datagram_is_answered_within_its_buffer_or_dropped(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            name in "[a-z0-9._-]{0,40}",
            flips in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 0..4),
        ) {
            let map = OwnedMap::default();
            let failed = BTreeSet::new();
            let view = CatalogView::new(&map, &failed);
            let mut rng = StdRng::seed_from_u64(1);
            let mut query = Message::new();
            if let Ok(name) = Name::from_ascii(format!("{name}.service.consul.")) {
                query.add_query(Query::query(name, RecordType::SRV));
            }
            let mut mutated = query.to_vec().unwrap();
            for (at, byte) in flips {
                if let Some(b) = mutated.get_mut(at) {
                    *b ^= byte;
                }
            }
            for packet in [random, mutated] {
                if let Some(reply) = respond(&packet, &view, &settings(), &mut rng, Some(512)) {
                    proptest::prop_assert!(reply.len() <= 512 || packet.len() > 512);
                }
            }
        }
    }

    fn node(
        address: &str,
        services: &[(&str, &str, &[&str], u16)],
        critical: &[&str],
    ) -> NodeRecord {
        let mut record = NodeRecord {
            address: address.into(),
            datacenter: "dc1".into(),
            ..NodeRecord::default()
        };
        for (id, name, tags, port) in services {
            record.services.insert(
                (*id).into(),
                Service {
                    id: (*id).into(),
                    name: (*name).into(),
                    tags: tags.iter().map(|t| (*t).into()).collect(),
                    address: Default::default(),
                    port: *port,
                    meta: BTreeMap::new(),
                    weight_passing: 1,
                    weight_warning: 1,
                },
            );
        }
        for id in critical {
            record.checks.insert(
                format!("c-{id}").into(),
                Check {
                    id: format!("c-{id}").into(),
                    name: "c".into(),
                    status: Health::Critical,
                    output: String::new(),
                    service_id: (*id).into(),
                },
            );
        }
        record
    }

    fn records() -> OwnedMap<std::sync::Arc<NodeRecord>> {
        let mut map = OwnedMap::default();
        let mut index = ModifyIndex::default();
        let nodes = [
            ("a", node("10.0.0.1", &[("web-a", "web", &["v1"], 80)], &[])),
            ("b", node("10.0.0.2", &[("web-b", "web", &["v2"], 81)], &[])),
            (
                "c",
                node("10.0.0.3", &[("web-c", "web", &["v1"], 82)], &["web-c"]),
            ),
            ("d", node("fd00::4", &[("db-d", "db", &[], 5432)], &[])),
        ];
        for (name, record) in nodes {
            let version = Version {
                generation: 1,
                counter: 1,
            };
            map.merge(
                name,
                &Owned::new(version, Some(std::sync::Arc::new(record))),
                &mut index,
            );
        }
        map
    }

    fn ask(name: &str, qtype: RecordType) -> Message {
        let map = records();
        let failed = BTreeSet::new();
        let view = CatalogView::new(&map, &failed);
        let mut request = Message::new();
        request
            .set_id(7)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let bytes = respond(
            &request.to_vec().unwrap(),
            &view,
            &settings(),
            &mut StdRng::seed_from_u64(1),
            Some(512),
        )
        .expect("an answer");
        Message::from_vec(&bytes).unwrap()
    }

    fn ips(reply: &Message) -> Vec<String> {
        let mut out: Vec<String> = reply
            .answers()
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::SRV(s) => format!("{}:{}", s.target(), s.port()),
                other => format!("{other:?}"),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn services_answer_healthy_instances_in_every_form() {
        let reply = ask("web.service.consul.", RecordType::A);
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(
            ips(&reply),
            ["10.0.0.1", "10.0.0.2"],
            "the critical one is left out"
        );
        assert_eq!(
            ips(&ask("v1.web.service.consul.", RecordType::A)),
            ["10.0.0.1"]
        );
        assert_eq!(
            ips(&ask("WEB.Service.dc1.Consul.", RecordType::A)).len(),
            2,
            "any case, with dc"
        );
        let srv = ask("_web._v2.service.consul.", RecordType::SRV);
        assert_eq!(ips(&srv), ["b.node.dc1.consul.:81"]);
        assert_eq!(
            srv.additionals().len(),
            1,
            "the target's address rides along"
        );
        assert_eq!(ips(&ask("_web._tcp.consul.", RecordType::SRV)).len(), 2);
        assert_eq!(ips(&ask("_web._tcp.dc1.consul.", RecordType::SRV)).len(), 2);
        assert_eq!(
            ips(&ask("db.service.consul.", RecordType::AAAA)),
            ["fd00::4"]
        );
    }

    #[test]
    fn nodes_and_the_missing() {
        assert_eq!(ips(&ask("a.node.consul.", RecordType::A)), ["10.0.0.1"]);
        assert_eq!(ips(&ask("b.node.dc1.consul.", RecordType::A)), ["10.0.0.2"]);
        let empty = ask("a.node.consul.", RecordType::AAAA);
        assert_eq!(empty.response_code(), ResponseCode::NoError);
        assert!(empty.answers().is_empty());
        assert_eq!(empty.name_servers()[0].record_type(), RecordType::SOA);
        for missing in [
            "nobody.node.consul.",
            "nothing.service.consul.",
            "v9.web.service.consul.",
            "web.service.dc2.consul.",
            "what.consul.",
        ] {
            let reply = ask(missing, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{missing}");
            assert_eq!(
                reply.name_servers()[0].record_type(),
                RecordType::SOA,
                "{missing}"
            );
        }
        assert_eq!(
            ask("example.com.", RecordType::A).response_code(),
            ResponseCode::Refused
        );
    }

    fn other_datacenter(packet: &[u8], settings: &DnsSettings) -> Option<String> {
        match destination(packet, settings) {
            Destination::Datacenter(dc) => Some(dc),
            _ => None,
        }
    }

    fn prepared_query(packet: &[u8], settings: &DnsSettings) -> Option<String> {
        match destination(packet, settings) {
            Destination::Query(name) => Some(name),
            _ => None,
        }
    }

    #[test]
    fn names_of_other_datacenters_are_told_apart_and_failed_plainly() {
        let packet = |name: &str| {
            let mut request = Message::new();
            request
                .set_id(9)
                .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            request.to_vec().unwrap()
        };
        for (name, dc) in [
            ("web.service.dc2.consul.", Some("dc2")),
            ("v1.web.service.DC2.consul.", Some("dc2")),
            ("a.node.dc2.consul.", Some("dc2")),
            ("_web._tcp.dc2.consul.", Some("dc2")),
            ("_web._tcp.service.dc2.consul.", Some("dc2")),
            ("web.service.dc1.consul.", None),
            ("web.service.consul.", None),
            ("_web._tcp.consul.", None),
            ("dc2.example.com.", None),
        ] {
            let found = other_datacenter(&packet(name), &settings());
            assert_eq!(found.as_deref(), dc, "{name}");
        }
        for code in [ResponseCode::ServFail, ResponseCode::NXDomain] {
            let reply = failure(&packet("web.service.dc2.consul."), code, &settings()).unwrap();
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!((reply.id(), reply.response_code()), (9, code));
            assert_eq!(reply.queries().len(), 1, "the question is echoed");
            assert!(reply.answers().is_empty());
            assert_eq!(
                reply.name_servers().len(),
                usize::from(code == ResponseCode::NXDomain),
                "an SOA only with NXDOMAIN"
            );
        }
        assert!(failure(&[1], ResponseCode::ServFail, &settings()).is_none());
    }

    #[test]
    fn prepared_query_names_and_their_answers() {
        let packet = |name: &str, qtype| {
            let mut request = Message::new();
            request
                .set_id(5)
                .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
            request.to_vec().unwrap()
        };
        let name = |n: &str| prepared_query(&packet(n, RecordType::A), &settings());
        assert_eq!(name("db-q.query.consul.").as_deref(), Some("db-q"));
        assert_eq!(name("db-q.query.dc1.consul.").as_deref(), Some("db-q"));
        assert_eq!(name("db-q.query.dc2.consul."), None, "answered in dc2");
        assert_eq!(name("db.service.consul."), None);
        assert_eq!(
            other_datacenter(
                &packet("db-q.query.dc2.consul.", RecordType::A),
                &settings()
            )
            .as_deref(),
            Some("dc2")
        );
        let targets = [Target {
            node: "w0".into(),
            datacenter: "dc2".into(),
            ip: Some("10.0.0.9".parse().unwrap()),
            port: 80,
            weight: 1,
        }];
        let srv = packet("db-q.query.consul.", RecordType::SRV);
        let reply = respond_with_targets(&srv, Some(&targets), Some(7), &settings(), Some(512));
        let reply = Message::from_vec(&reply.unwrap()).unwrap();
        assert_eq!(
            ips(&reply),
            ["w0.node.dc2.consul.:80"],
            "the target's own datacenter"
        );
        assert_eq!(reply.answers()[0].ttl(), 7, "the query's TTL");
        let none = respond_with_targets(&srv, None, None, &settings(), None).unwrap();
        assert_eq!(
            Message::from_vec(&none).unwrap().response_code(),
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn bad_packets_are_formerr_or_dropped() {
        let map = records();
        let failed = BTreeSet::new();
        let view = CatalogView::new(&map, &failed);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(respond(&[1], &view, &settings(), &mut rng, Some(512)).is_none());
        let reply = respond(
            &[0, 9, 0xff, 0xff, 0, 1],
            &view,
            &settings(),
            &mut rng,
            Some(512),
        )
        .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (reply.id(), reply.response_code()),
            (9, ResponseCode::FormErr)
        );
    }

    #[test]
    fn udp_replies_are_cut_to_fit_and_flagged() {
        let mut map = OwnedMap::default();
        let mut index = ModifyIndex::default();
        for i in 0..100 {
            let name = format!("node-with-a-long-name-{i}");
            let record = node(&format!("10.1.0.{i}"), &[("api", "api", &[], 80)], &[]);
            let version = Version {
                generation: 1,
                counter: 1,
            };
            map.merge(
                &name,
                &Owned::new(version, Some(std::sync::Arc::new(record))),
                &mut index,
            );
        }
        let failed = BTreeSet::new();
        let view = CatalogView::new(&map, &failed);
        let mut request = Message::new();
        request.add_query(Query::query(
            Name::from_ascii("api.service.consul.").unwrap(),
            RecordType::SRV,
        ));
        let packet = request.to_vec().unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let udp = respond(&packet, &view, &settings(), &mut rng, Some(512)).unwrap();
        assert!(udp.len() <= 512);
        let udp = Message::from_vec(&udp).unwrap();
        assert!(udp.truncated());
        let tcp = Message::from_vec(&respond(&packet, &view, &settings(), &mut rng, None).unwrap())
            .unwrap();
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 100);
    }

    #[test]
    fn a_request_with_opt_gets_opt_back_and_an_unknown_edns_version_gets_badvers() {
        let map = OwnedMap::default();
        let failed = BTreeSet::new();
        let view = CatalogView::new(&map, &failed);
        let mut rng = StdRng::seed_from_u64(1);
        let ask = |edns: Option<Edns>, rng: &mut StdRng| {
            let mut request = Message::new();
            request.set_id(3).add_query(Query::query(
                Name::from_ascii("nowhere.node.consul.").unwrap(),
                RecordType::A,
            ));
            if let Some(edns) = edns {
                request.set_edns(edns);
            }
            let packet = request.to_vec().unwrap();
            Message::from_vec(&respond(&packet, &view, &settings(), rng, Some(512)).unwrap())
                .unwrap()
        };
        let plain = ask(None, &mut rng);
        assert!(plain.extensions().is_none(), "no OPT unless asked with one");
        let mut offered = Edns::new();
        offered.set_max_payload(1232);
        let reply = ask(Some(offered.clone()), &mut rng);
        let opt = reply.extensions().as_ref().expect("OPT in the answer");
        assert_eq!((opt.max_payload(), opt.version()), (1232, 0));
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        offered.set_version(1);
        let reply = ask(Some(offered), &mut rng);
        // BADVERS and BADSIG share the code 16 (RFC 6891, RFC 8945).
        assert_eq!(
            u16::from(reply.response_code()),
            u16::from(ResponseCode::BADVERS)
        );
        assert_eq!(reply.extensions().as_ref().map(Edns::version), Some(0));
    }
}
