//! End to end: the DNS interface of real agents, over UDP and TCP, with a Rust client and with
//! `dig` when it is installed (`.ci/run` installs it): services, tags, SRV, RFC 2782 names,
//! nodes, NXDOMAIN with SOA; a failing check takes an instance out of DNS on every agent.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Agent, cluster, dns_request, dns_udp as udp, keygen, wait_until};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

const SPREAD: Duration = Duration::from_secs(30);

fn tcp(dns: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(dns).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let packet = dns_request(name, qtype);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend(packet);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).unwrap();
    Message::from_vec(&reply).unwrap()
}

/// `(target, port)` of each SRV answer, sorted.
fn srv(reply: &Message) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some((s.target().to_string(), s.port())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ports(agent: &Agent, name: &str) -> Vec<u16> {
    srv(&udp(agent.dns, name, RecordType::SRV))
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn dns_answers_healthy_instances_on_every_agent() {
    let agents = cluster("dn", 2, &keygen());
    for (i, agent) in agents.iter().enumerate() {
        let body = format!(
            r#"{{"Name": "web", "ID": "web", "Port": {}, "Tags": ["t{i}"], "Check": {{"TTL": "60s", "Status": "passing"}}}}"#,
            9000 + i
        );
        let (status, _, text) = agent.request("PUT", "/v1/agent/service/register", body.as_bytes());
        assert_eq!(status, 200, "{text}");
    }
    assert!(
        wait_until(SPREAD, || agents
            .iter()
            .all(|a| ports(a, "web.service.consul.") == [9000, 9001])),
        "both instances in SRV on both agents"
    );

    let a = udp(agents[0].dns, "web.service.consul.", RecordType::A);
    assert_eq!(a.id(), 42);
    assert!(a.authoritative());
    assert_eq!(a.answers().len(), 2);
    assert!(matches!(a.answers()[0].data(), RData::A(ip) if ip.0.is_loopback()));

    let tagged = udp(agents[1].dns, "t1.web.service.dc1.consul.", RecordType::SRV);
    assert_eq!(srv(&tagged), [("dn1.node.dc1.consul.".to_owned(), 9001)]);
    assert_eq!(tagged.additionals().len(), 1, "the target's A record");
    assert_eq!(ports(&agents[1], "_web._t0.service.consul."), [9000]);
    assert_eq!(ports(&agents[1], "_web._tcp.consul."), [9000, 9001]);
    let node = tcp(agents[0].dns, "DN1.node.consul.", RecordType::A);
    assert_eq!(node.answers().len(), 1, "{node:?}");

    let missing = udp(agents[0].dns, "nothing.service.consul.", RecordType::A);
    assert_eq!(missing.response_code(), ResponseCode::NXDomain);
    assert_eq!(missing.name_servers()[0].record_type(), RecordType::SOA);
    let over_tcp = tcp(agents[0].dns, "web.service.consul.", RecordType::SRV);
    assert_eq!(srv(&over_tcp).len(), 2);

    // Garbage gets FORMERR (or silence when too short to carry an id); the server lives on.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
        .send_to(&[0, 5, 0xff, 0xff, 0xff], agents[0].dns)
        .unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(
        (reply.id(), reply.response_code()),
        (5, ResponseCode::FormErr)
    );
    socket.send_to(&[1], agents[0].dns).unwrap();
    assert_eq!(ports(&agents[0], "web.service.consul."), [9000, 9001]);

    // A query with an OPT record (`dig +bufsize=1232`) gets one back (RFC 6891 §6.1.1).
    let mut query = Message::new();
    query.set_id(6).add_query(Query::query(
        Name::from_ascii("web.service.consul.").unwrap(),
        RecordType::SRV,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    socket
        .send_to(&query.to_vec().unwrap(), agents[0].dns)
        .unwrap();
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.answers().len(), 2);
    assert_eq!(
        reply.extensions().as_ref().map(Edns::max_payload),
        Some(1232),
        "the answer carries OPT"
    );

    if let Some(text) = common::dig(agents[0].dns, "web.service.consul", "SRV") {
        assert!(
            text.contains("9000 dn0.node.dc1.consul."),
            "dig said: {text}"
        );
        assert!(
            text.contains("9001 dn1.node.dc1.consul."),
            "dig said: {text}"
        );
    }

    // A failing check takes the instance out of DNS everywhere.
    let (status, _, text) = agents[1].request("PUT", "/v1/agent/check/fail/service:web", b"");
    assert_eq!(status, 200, "{text}");
    assert!(
        wait_until(SPREAD, || agents
            .iter()
            .all(|a| ports(a, "web.service.consul.") == [9000])),
        "the failing instance left DNS on both agents"
    );
}
