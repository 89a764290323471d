//! Two datacenters that truly cannot reach each other except through their mesh gateways, in
//! network namespaces (made here, removed at the end): each datacenter's hosts share a bridge
//! of their own, and only the two gateway hosts also have a leg on a third, the WAN. No host
//! has a default route, so a packet from web's host to db's has nowhere to go.
//!
//! web in east reaches db in west through the gateways, while the direct path (an upstream
//! with no gateway mode) gets nowhere; the gateways' counters show the flow.
//!
//! Needs root (network namespaces); where they cannot be made the test says so and passes.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, keygen, wait_until};
use serde_json::Value;

/// Runs `ip` with `args`; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Bridges and host namespaces, removed on drop.
struct Lab {
    tag: String,
    /// 10.<net>.<bridge>.x
    net: u8,
    namespaces: Vec<String>,
    bridges: Vec<String>,
}

impl Lab {
    fn make() -> Option<Self> {
        let id = std::process::id() % 10_000;
        let lab = Self {
            tag: id.to_string(),
            net: u8::try_from(150 + id % 100).unwrap(),
            namespaces: Vec::new(),
            bridges: Vec::new(),
        };
        let probe = format!("mgp{}", lab.tag);
        if !ip(&["netns", "add", &probe]) {
            eprintln!("SKIPPED: cannot make network namespaces here (needs root)");
            return None;
        }
        ip(&["netns", "del", &probe]);
        Some(lab)
    }

    /// Bridge `n` (subnet 10.<net>.<n>.0/24), with no address of this namespace on it: the
    /// test reaches the hosts from inside their namespaces only.
    fn bridge(&mut self, n: u8) -> String {
        let name = format!("mg{n}-{}", self.tag);
        assert!(ip(&["link", "add", &name, "type", "bridge"]));
        assert!(ip(&["link", "set", &name, "up"]));
        self.bridges.push(name.clone());
        name
    }

    /// A host namespace `h<i>` with one leg per `(bridge number, bridge)`: its address on
    /// each is 10.<net>.<bridge>.<10+i>. No default route.
    fn host(&mut self, i: u8, legs: &[(u8, &str)]) -> (String, Vec<IpAddr>) {
        let ns = format!("mgh{i}-{}", self.tag);
        assert!(ip(&["netns", "add", &ns]));
        self.namespaces.push(ns.clone());
        assert!(ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]));
        let mut addrs = Vec::new();
        for (n, bridge) in legs {
            let leg = format!("mg{i}{n}-{}", self.tag);
            let peer = format!("{leg}p");
            assert!(ip(&[
                "link", "add", &leg, "type", "veth", "peer", "name", &peer
            ]));
            assert!(ip(&["link", "set", &leg, "netns", &ns]));
            assert!(ip(&["link", "set", &peer, "master", bridge, "up"]));
            let addr = format!("10.{}.{n}.{}", self.net, 10 + i);
            assert!(ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &leg
            ]));
            assert!(ip(&["netns", "exec", &ns, "ip", "link", "set", &leg, "up"]));
            addrs.push(addr.parse().unwrap());
        }
        (ns, addrs)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            ip(&["netns", "del", ns]);
        }
        for bridge in &self.bridges {
            ip(&["link", "del", bridge]);
        }
    }
}

/// A process in a namespace, killed on drop.
struct InNs(Child);

impl Drop for InNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_in(ns: &str, args: &[String], log: &std::path::Path) -> InNs {
    let log = std::fs::File::create(log).unwrap();
    InNs(
        Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// `http` from inside namespace `ns` (the test's own namespace has no leg on the bridges).
fn request(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    let script = "import sys, urllib.request as u\n\
        r = u.Request(sys.argv[1], data=sys.argv[3].encode() if sys.argv[2] != 'GET' else None, method=sys.argv[2])\n\
        try:\n    a = u.urlopen(r, timeout=10); print(a.status); print(a.read().decode())\n\
        except u.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script])
        .arg(format!("http://{addr}{path}"))
        .args([method, body])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n')?;
    Some((status.trim().parse().ok()?, body.to_owned()))
}

/// Whether `payload` sent to `addr` from inside `ns` comes back (through a sidecar upstream).
fn carries_in(ns: &str, addr: SocketAddr) -> bool {
    let script = "import socket, sys\n\
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n\
        s.sendall(b'through the gateways'); s.shutdown(socket.SHUT_WR)\n\
        d = b''\n\
        while True:\n    c = s.recv(4096)\n    if not c: break\n    d += c\n\
        sys.exit(0 if d == b'through the gateways' else 1)\n";
    Command::new("ip")
        .args([
            "netns", "exec", ns, "timeout", "10", "python3", "-c", script,
        ])
        .args([addr.ip().to_string(), addr.port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn datacenters_that_cannot_reach_each_other_connect_through_their_mesh_gateways_only() {
    let Some(mut lab) = Lab::make() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (east_lan, west_lan, wan) = (lab.bridge(1), lab.bridge(2), lab.bridge(3));
    // Hosts: east's gateway (east LAN + WAN), web's host (east LAN), west's gateway, db's host.
    let (e0, e0_ips) = lab.host(0, &[(1, &east_lan), (3, &wan)]);
    let (e1, e1_ips) = lab.host(1, &[(1, &east_lan)]);
    let (w0, w0_ips) = lab.host(2, &[(2, &west_lan), (3, &wan)]);
    let (w1, w1_ips) = lab.host(3, &[(2, &west_lan)]);
    let key = keygen();
    let http_of = |ip: IpAddr| SocketAddr::new(ip, 8500);
    let agent = |ns: &str,
                 name: &str,
                 dc: &str,
                 lan: IpAddr,
                 wan: Option<(IpAddr, IpAddr)>,
                 join: Option<IpAddr>| {
        let mut args: Vec<String> = ["agent", "--node", name, "--datacenter", dc]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([
            "--bind".into(),
            format!("{lan}:8301"),
            "--http-addr".into(),
            format!("{lan}:8500"),
            "--dns-addr".into(),
            format!("{lan}:8600"),
            "--data-dir".into(),
            dir.path().join(name).display().to_string(),
            "--encrypt".into(),
            key.clone(),
        ]);
        if let Some((mine, other)) = wan {
            args.extend([
                "--wan-eligible".into(),
                "--bind-wan".into(),
                format!("{mine}:8302"),
                "--retry-join-wan".into(),
                format!("{other}:8302"),
            ]);
        }
        if let Some(seed) = join {
            args.extend(["--retry-join".into(), format!("{seed}:8301")]);
        }
        run_in(ns, &args, &dir.path().join(format!("{name}.log")))
    };
    let _agents = [
        agent(
            &e0,
            "e0",
            "east",
            e0_ips[0],
            Some((e0_ips[1], w0_ips[1])),
            None,
        ),
        agent(&e1, "e1", "east", e1_ips[0], None, Some(e0_ips[0])),
        agent(
            &w0,
            "w0",
            "west",
            w0_ips[0],
            Some((w0_ips[1], e0_ips[1])),
            None,
        ),
        agent(&w1, "w1", "west", w1_ips[0], None, Some(w0_ips[0])),
    ];
    let get = |ns: &str, ip: IpAddr, path: &str| -> Option<Value> {
        let (status, body) = request(ns, http_of(ip), "GET", path, "")?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let put = |ns: &str, ip: IpAddr, path: &str, body: &str| {
        let answer = request(ns, http_of(ip), "PUT", path, body);
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(200),
            "{path}: {answer:?}"
        );
    };
    // Both datacenters up, linked, and every agent trusting both roots.
    let trusted = |ns: &str, ip: IpAddr| {
        get(ns, ip, "/v1/agent/connect/ca/roots")
            .is_some_and(|r| common::root_datacenters(&r) == ["east", "west"])
    };
    assert!(
        wait_until(Duration::from_secs(90), || trusted(&e1, e1_ips[0])
            && trusted(&w1, w1_ips[0])),
        "the two datacenters never linked"
    );
    // Mesh gateways, run by the gateway hosts' agents.
    for (ns, ips) in [(&e0, &e0_ips), (&w0, &w0_ips)] {
        put(
            ns,
            ips[0],
            "/v1/agent/service/register",
            &format!(
                r#"{{"Name": "mesh-gateway", "Kind": "mesh-gateway", "Address": "{}", "Port": 8443,
                    "TaggedAddresses": {{"wan": {{"Address": "{}", "Port": 8443}}}}}}"#,
                ips[0], ips[1]
            ),
        );
    }
    // db and its app on w1 (the app is an echo server of the test's, in w1's namespace).
    let echo = "import socket\n\
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('127.0.0.1', 9000)); s.listen(64)\n\
        while True:\n    c, _ = s.accept()\n    d = b''\n    while True:\n        x = c.recv(4096)\n        if not x: break\n        d += x\n    c.sendall(d); c.close()\n";
    let _app = InNs(
        Command::new("ip")
            .args(["netns", "exec", &w1, "python3", "-c", echo])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    put(
        &w1,
        w1_ips[0],
        "/v1/agent/service/register",
        r#"{"Name": "db", "ID": "db-1", "Port": 9000, "Connect": {"SidecarService": {}}}"#,
    );
    // web on e1: one upstream through the gateways, one straight to db's proxy.
    put(
        &e1,
        e1_ips[0],
        "/v1/agent/service/register",
        r#"{"Name": "web", "ID": "web-1", "Port": 8080, "Connect": {"SidecarService": {"Proxy":
            {"Upstreams": [
              {"DestinationName": "db", "Datacenter": "west", "LocalBindPort": 9191, "MeshGateway": {"Mode": "local"}},
              {"DestinationName": "db", "Datacenter": "west", "LocalBindPort": 9192}
            ]}}}}"#,
    );
    put(
        &e1,
        e1_ips[0],
        "/v1/connect/intentions/exact?source=web&destination=db",
        r#"{"Action": "allow"}"#,
    );
    let through_gateways = SocketAddr::from(([127, 0, 0, 1], 9191));
    let direct = SocketAddr::from(([127, 0, 0, 1], 9192));
    assert!(
        wait_until(Duration::from_secs(90), || carries_in(
            &e1,
            through_gateways
        )),
        "web in east never reached db in west through the gateways"
    );
    // The direct path has no route: db's proxy is known (through ?dc=) but unreachable.
    assert!(
        get(
            &e1,
            e1_ips[0],
            "/v1/health/service/db-sidecar-proxy?dc=west&passing"
        )
        .and_then(|v| v.as_array().map(Vec::len))
            == Some(1),
        "db's proxy is known in east"
    );
    assert!(
        !carries_in(&e1, direct),
        "the direct path carried: the lab leaks"
    );
    assert!(
        carries_in(&e1, through_gateways),
        "and the gateways still do"
    );
    // Each gateway counted the flow, from east (west's knows east's gateway by its WAN IP).
    for (ns, ip, route) in [(&e0, e0_ips[0], "remote"), (&w0, w0_ips[0], "local")] {
        let (_, metrics) = request(
            ns,
            http_of(ip),
            "GET",
            "/v1/agent/metrics?format=prometheus",
            "",
        )
        .unwrap();
        assert!(
            metrics.contains(&format!("murmur_gateway_flows_total{{route=\"{route}\",source_datacenter=\"east\",destination_datacenter=\"west\",destination_service=\"db\"}}")),
            "the {route} route is not counted on {ns}"
        );
    }
}
