//! A real network partition between real agents, healed: two agents on each side of a router
//! in network namespaces (made here, removed at the end), writes on both sides while cut, and
//! after the heal every agent agrees: the conflicting key holds the later write (HLC
//! last-writer-wins), nothing else is lost, and no member stays marked failed. The simulator
//! checks the same claims on its virtual network; this checks them on sockets.
//!
//! Needs root (network namespaces); where they cannot be made the test says so and passes.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, http, keygen, wait_until};
use serde_json::Value;

/// Runs `ip` with `args`; whether it succeeded (stderr goes to the test's output).
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip` inside namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) -> bool {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// Two bridges (one per side) in this namespace, a router namespace between them, and one
/// namespace per agent; everything is removed on drop.
struct Net {
    tag: String,
    /// 10.<net>.<side>.x
    net: u8,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Net {
    fn router(&self) -> String {
        format!("mr{}", self.tag)
    }

    /// The network, or `None` (and why, on stderr) where namespaces cannot be made.
    fn make() -> Option<Self> {
        let id = std::process::id() % 10_000;
        let mut net = Self {
            tag: id.to_string(),
            net: u8::try_from(100 + id % 100).unwrap(),
            namespaces: Vec::new(),
            links: Vec::new(),
        };
        let router = net.router();
        if !ip(&["netns", "add", &router]) {
            eprintln!("SKIPPED: cannot make network namespaces here (needs root)");
            return None;
        }
        net.namespaces.push(router.clone());
        ip_in(&router, &["link", "set", "lo", "up"]);
        let forwarding = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            forwarding,
            "cannot turn on forwarding in the router namespace"
        );
        for side in 1..=2u8 {
            let bridge = format!("mb{side}-{}", net.tag);
            assert!(ip(&["link", "add", &bridge, "type", "bridge"]));
            net.links.push(bridge.clone());
            let host_ip = format!("10.{}.{side}.254/24", net.net);
            assert!(ip(&["addr", "add", &host_ip, "dev", &bridge]));
            assert!(ip(&["link", "set", &bridge, "up"]));
            let leg = format!("r{side}-{}", net.tag);
            net.plug(
                &router,
                &leg,
                &bridge,
                &format!("10.{}.{side}.1/24", net.net),
            );
        }
        Some(net)
    }

    /// A veth from namespace `ns` (named `name` there, with `addr`) to `bridge`.
    fn plug(&self, ns: &str, name: &str, bridge: &str, addr: &str) {
        let peer = format!("{name}p");
        assert!(ip(&[
            "link", "add", name, "type", "veth", "peer", "name", &peer
        ]));
        assert!(ip(&["link", "set", name, "netns", ns]));
        assert!(ip(&["link", "set", &peer, "master", bridge, "up"]));
        assert!(ip_in(ns, &["addr", "add", addr, "dev", name]));
        assert!(ip_in(ns, &["link", "set", name, "up"]));
    }

    /// A namespace for agent `i` on `side`; its address.
    fn host(&mut self, side: u8, i: u8) -> std::net::IpAddr {
        let ns = format!("ma{i}-{}", self.tag);
        assert!(ip(&["netns", "add", &ns]));
        self.namespaces.push(ns.clone());
        ip_in(&ns, &["link", "set", "lo", "up"]);
        let addr = format!("10.{}.{side}.{}", self.net, 10 + i);
        let bridge = format!("mb{side}-{}", self.tag);
        self.plug(
            &ns,
            &format!("v{i}-{}", self.tag),
            &bridge,
            &format!("{addr}/24"),
        );
        let gateway = format!("10.{}.{side}.1", self.net);
        assert!(ip_in(&ns, &["route", "add", "default", "via", &gateway]));
        addr.parse().unwrap()
    }

    /// Cuts (or heals) the router's leg to side 1: the sides can no longer reach each other.
    fn cut(&self, cut: bool) {
        let leg = format!("r1-{}", self.tag);
        let state = if cut { "down" } else { "up" };
        assert!(ip_in(&self.router(), &["link", "set", &leg, state]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            ip(&["netns", "del", ns]);
        }
        for link in &self.links {
            ip(&["link", "del", link]);
        }
    }
}

/// An agent running in a namespace.
struct NsAgent {
    name: String,
    http: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NsAgent {
    fn start(
        net: &Net,
        ns_index: u8,
        addr: std::net::IpAddr,
        key: &str,
        join: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("p{ns_index}");
        let ns = format!("ma{ns_index}-{}", net.tag);
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, BIN, "agent", "--node", &name])
            .args(["--bind", &format!("{addr}:8301")])
            .args(["--http-addr", &format!("{addr}:8500")])
            .args(["--dns-addr", &format!("{addr}:8600")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--encrypt", key]);
        if let Some(seed) = join {
            cmd.args(["--join", seed]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start an agent in its namespace");
        let agent = Self {
            name,
            http: SocketAddr::new(addr, 8500),
            child,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(15), || agent
                .get("/v1/agent/self")
                .is_some()),
            "{} did not come up",
            agent.name
        );
        agent
    }

    fn get(&self, path: &str) -> Option<Value> {
        let (status, _, body) = http(self.http, "GET", path, b"").ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn put(&self, path: &str, body: &str) {
        let (status, _, text) = http(self.http, "PUT", path, body.as_bytes()).unwrap();
        assert_eq!(status, 200, "{text}");
    }

    /// Key → value of everything under `part/`.
    fn kv(&self) -> BTreeMap<String, String> {
        self.get("/v1/kv/part/?recurse")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let value = e["Value"].as_str().unwrap_or_default();
                let value = base64_decode(value);
                (e["Key"].as_str().unwrap().to_owned(), value)
            })
            .collect()
    }

    /// Status code of each member as this agent sees it.
    fn statuses(&self) -> BTreeMap<String, u64> {
        self.get("/v1/agent/members")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap().to_owned(),
                    m["Status"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes the standard base64 the KV API answers in.
fn base64_decode(text: &str) -> String {
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

#[test]
fn writes_on_both_sides_of_a_partition_converge_after_the_heal_last_writer_winning() {
    let Some(mut net) = Net::make() else { return };
    let key = keygen();
    let addrs = [
        net.host(1, 0),
        net.host(1, 1),
        net.host(2, 2),
        net.host(2, 3),
    ];
    let seed = format!("{}:8301", addrs[0]);
    let agents: Vec<NsAgent> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let join = (i > 0).then_some(seed.as_str());
            NsAgent::start(&net, u8::try_from(i).unwrap(), *addr, &key, join)
        })
        .collect();
    let all_alive = |a: &NsAgent| {
        let s = a.statuses();
        s.len() == 4 && s.values().all(|&st| st == 1)
    };
    assert!(
        wait_until(Duration::from_secs(30), || agents.iter().all(all_alive)),
        "the four agents joined across the router"
    );

    net.cut(true);
    let cut_at = std::time::Instant::now();
    // Each side sees the other fail, and goes on taking writes.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = agents[0].statuses();
            s.get("p2") == Some(&4) && s.get("p3") == Some(&4)
        }),
        "side 1 saw side 2 fail: {:?}",
        agents[0].statuses()
    );
    let detected = cut_at.elapsed();
    agents[0].put("/v1/kv/part/only-left", "left");
    agents[3].put("/v1/kv/part/only-right", "right");
    agents[1].put("/v1/kv/part/both", "left's");
    std::thread::sleep(Duration::from_millis(50));
    agents[2].put("/v1/kv/part/both", "right's, written later");
    assert!(
        !agents[0].kv().contains_key("part/only-right"),
        "the cut is real"
    );

    net.cut(false);
    let healed_at = std::time::Instant::now();
    let expected: BTreeMap<String, String> = [
        ("part/both", "right's, written later"),
        ("part/only-left", "left"),
        ("part/only-right", "right"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let healed = wait_until(Duration::from_secs(120), || {
        agents.iter().all(|a| a.kv() == expected && all_alive(a))
    });
    assert!(
        healed,
        "after the heal: {:?}",
        agents
            .iter()
            .map(|a| (a.name.clone(), a.kv(), a.statuses()))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "partition: the other side seen failed {detected:?} after the cut; all four agree and all alive {:?} after the heal",
        healed_at.elapsed()
    );
}
