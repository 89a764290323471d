#!/usr/bin/env python3
"""Proxy benchmark (issue 6): one run, side by side on loopback, five paths from a client to a
server app:

  direct    the client talks to the app (the limit)
  haproxy   a haproxy pair with mutual TLS (ECDSA P-256 certificates from one CA)
  stunnel   a stunnel4 pair with mutual TLS (same certificates)
  murmur    murmur's sidecar pair: a loopback upstream, QUIC with mutual TLS, the app
  native    murmur's native SDK as the client, to the app behind its sidecar (one proxy)

For each: round trip of 64-byte ping-pongs on one connection (p50, p99) and the proxies' CPU
per round trip, back to back and paced (one round trip per millisecond, 2,000), a new
connection with a 1-byte round trip (p50, p99), iperf3 throughput with one flow and with 64,
the proxies' CPU per GB moved (both sides, during the one-flow run) and their resident memory
at the end. The native row has the latencies only (its client is examples/mesh_probe.rs).

With --gateways, one more row: murmur's sidecars in two datacenters whose traffic crosses a
mesh gateway in each (client sidecar → gateway → gateway → app sidecar), its CPU columns
counting both gateways, and below the table each gateway's own CPU per GB beside the floor of
any user-space hop on this machine: examples/udp_relay_floor.rs relaying datagrams of the
size the sidecars send on this loopback (nothing but one GRO receive and one GSO send per
batch), fed without pause and fed with a pause after each batch.

With --busy-poll WINDOW, two more rows: murmur's pair with `--busy-poll WINDOW` and haproxy's
pair with its `busy-polling` (for virtual machines whose idle vCPUs halt; BENCHMARKS.md).

The latency probe is examples/tcp_probe.rs (Rust, so the probe's cost stays far below what it
measures). Only loopback addresses are used; every process started is killed at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from membership import free_port, proc_stats, wait_for  # noqa: E402

PROBE = "target/release/examples/tcp_probe"
MESH_PROBE = "target/release/examples/mesh_probe"
RELAY_FLOOR = "target/release/examples/udp_relay_floor"
# The relay floor's sender pauses this long after each batch (a sleep of its thread, so in
# practice some tens of µs more): about the gap between a sidecar's batches in one flow.
RELAY_PAUSE_US = 50
MURMUR = "murmur sidecar pair (QUIC, mTLS)"
GATEWAYS = "murmur sidecar → mesh gateway → mesh gateway → sidecar (two datacenters)"
PINGPONGS = 20000
PACED = 2000


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def certificates(d):
    """A CA and two ECDSA P-256 leaves (server, client), as haproxy and stunnel read them."""
    def sh(*args):
        run(["openssl", *args], cwd=d)
    sh("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    sh("req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=bench CA", "-out", "ca.crt")
    for name in ["server", "client"]:
        sh("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
        sh("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
           "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
        with open(os.path.join(d, f"{name}.pem"), "w") as out:
            for part in [f"{name}.crt", f"{name}.key"]:
                out.write(open(os.path.join(d, part)).read())


class Procs:
    def __init__(self):
        self.all = []
        self.env = None  # a murmur pair's: how its agent is reached

    def start(self, cmd, log, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), **kw)
        self.all.append(p)
        return p

    def stop(self):
        for p in self.all:
            p.kill()
            p.wait()


def haproxy_pair(d, procs, targets, busy=False):
    """targets: [(client_port, app_port)]; returns the pids of both haproxies. busy: with
    haproxy's `busy-polling` (its threads never sleep), on one thread each (two spinning
    threads per haproxy would take both cores from everything else)."""
    spin = "  busy-polling\n  nbthread 1\n" if busy else ""
    head = ("global\n  maxconn 4096\n  log stderr local0 err\n" + spin +
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n")
    client, server = head, head
    for i, (port, app) in enumerate(targets):
        mid = free_port()
        client += (f"frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\n"
                   f"backend b{i}\n  server s 127.0.0.1:{mid} ssl crt {d}/client.pem "
                   f"ca-file {d}/ca.crt verify required verifyhost server sni str(server)\n")
        server += (f"frontend f{i}\n  bind 127.0.0.1:{mid} ssl crt {d}/server.pem "
                   f"ca-file {d}/ca.crt verify required\n  default_backend b{i}\n"
                   f"backend b{i}\n  server app 127.0.0.1:{app}\n")
    pids = []
    for name, text in [("hc", client), ("hs", server)]:
        path = os.path.join(d, f"{name}.cfg")
        open(path, "w").write(text)
        pids.append(procs.start(["haproxy", "-db", "-f", path], os.path.join(d, f"{name}.log")).pid)
    return pids


def stunnel_pair(d, procs, targets):
    client = "foreground = yes\npid =\ndebug = 3\n"
    server = client
    for i, (port, app) in enumerate(targets):
        mid = free_port()
        client += (f"[t{i}]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{mid}\n"
                   f"cert = {d}/client.crt\nkey = {d}/client.key\nCAfile = {d}/ca.crt\n"
                   "verifyChain = yes\ncheckHost = server\n")
        server += (f"[t{i}]\naccept = 127.0.0.1:{mid}\nconnect = 127.0.0.1:{app}\n"
                   f"cert = {d}/server.crt\nkey = {d}/server.key\nCAfile = {d}/ca.crt\n"
                   "verifyChain = yes\nrequireCert = yes\n")
    pids = []
    for name, text in [("sc", client), ("ss", server)]:
        path = os.path.join(d, f"{name}.conf")
        open(path, "w").write(text)
        pids.append(procs.start(["stunnel4", path], os.path.join(d, f"{name}.log")).pid)
    return pids


def dev_agent(murmur, d, procs):
    """A dev agent on loopback; returns its process and the environment that reaches it."""
    http = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, MURMUR_HTTP_ADDR=http, MURMUR_LOG="warn")
    agent = procs.start([murmur, "agent", "--dev", "--node", "bench",
                         "--bind", f"127.0.0.1:{free_port()}", "--http-addr", http,
                         "--dns-addr", f"127.0.0.1:{free_port()}"],
                        os.path.join(d, "agent.log"), env=env)
    wait_for(lambda: subprocess.run([murmur, "info"], env=env, capture_output=True).returncode == 0,
             10, "the agent to answer")
    procs.env = env
    return agent, env


def murmur_pair(murmur, d, procs, targets, extra=()):
    """One dev agent; the apps as services with sidecars; a client sidecar with upstreams."""
    _, env = dev_agent(murmur, d, procs)
    pids = []
    upstreams = []
    for i, (port, app) in enumerate(targets):
        run([murmur, "services", "register", "--name", f"app{i}", "--port", str(app)], env=env)
        pids.append(procs.start([murmur, "connect", "proxy", "--sidecar-for", f"app{i}",
                                 "--listen", "127.0.0.1:0", *extra], os.path.join(d, f"mp{i}.log"),
                                env=env).pid)
        upstreams += ["--upstream", f"app{i}:{port}"]
    run([murmur, "services", "register", "--name", "client", "--port", "1"], env=env)
    pids.append(procs.start([murmur, "connect", "proxy", "--sidecar-for", "client",
                             "--listen", "127.0.0.1:0", *upstreams, *extra],
                            os.path.join(d, "mc.log"), env=env).pid)
    return pids


def agent_run_pair(murmur, d, procs, targets):
    """The same services registered with Consul's sidecar block: the agent runs all three
    proxies as tasks of its own (so the pair shares one process); returns the agent's pid."""
    agent, env = dev_agent(murmur, d, procs)
    services = [{"Name": f"app{i}", "Port": app, "Connect": {"SidecarService": {}}}
                for i, (_, app) in enumerate(targets)]
    upstreams = [{"DestinationName": f"app{i}", "LocalBindPort": port}
                 for i, (port, _) in enumerate(targets)]
    services.append({"Name": "client", "Port": 1,
                     "Connect": {"SidecarService": {"Proxy": {"Upstreams": upstreams}}}})
    path = os.path.join(d, "services.json")
    with open(path, "w") as f:
        json.dump({"services": services}, f)
    run([murmur, "services", "register", path], env=env)
    return [agent.pid]


def gateway_pair(murmur, d, procs, targets):
    """Two datacenters of one agent each (data dirs, --encrypt), linked over the WAN, a mesh
    gateway in each; the apps' sidecars in dc2 and the client's in dc1, whose upstreams go
    through both gateways (MeshGateway mode local: client sidecar → dc1's gateway → dc2's
    gateway → app sidecar). Returns the pids of the four proxies and both gateways."""
    key = run([murmur, "keygen"]).strip()
    wans = {dc: free_port() for dc in ("dc1", "dc2")}
    seeds = [x for w in wans.values() for x in ("--retry-join-wan", f"127.0.0.1:{w}")]
    envs = {}
    for dc in ("dc1", "dc2"):
        http = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, MURMUR_HTTP_ADDR=http, MURMUR_LOG="warn")
        procs.start([murmur, "agent", "--node", f"bench-{dc}", "--datacenter", dc,
                     "--bind", f"127.0.0.1:{free_port()}", "--http-addr", http,
                     "--dns-addr", f"127.0.0.1:{free_port()}", "--data-dir", os.path.join(d, dc),
                     "--encrypt", key, "--wan-eligible", "--bind-wan", f"127.0.0.1:{wans[dc]}",
                     *seeds], os.path.join(d, f"agent-{dc}.log"), env=env)
        envs[dc] = env

    def trusted(dc):
        url = f"http://{envs[dc]['MURMUR_HTTP_ADDR']}/v1/agent/connect/ca/roots"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                roots = json.load(answer)["Roots"]
            return {r["Datacenter"] for r in roots} == {"dc1", "dc2"}
        except (OSError, ValueError, KeyError, TypeError):
            return False
    wait_for(lambda: trusted("dc1") and trusted("dc2"), 60, "both datacenters' roots")
    pids = []
    for dc in ("dc1", "dc2"):
        pids.append(procs.start([murmur, "connect", "gateway", "--kind", "mesh",
                                 "--address", f"127.0.0.1:{free_port()}",
                                 "--wan-address", f"127.0.0.1:{free_port()}"],
                                os.path.join(d, f"gateway-{dc}.log"), env=envs[dc]).pid)
    upstreams = []
    for i, (port, app) in enumerate(targets):
        run([murmur, "services", "register", "--name", f"app{i}", "--port", str(app)],
            env=envs["dc2"])
        pids.append(procs.start([murmur, "connect", "proxy", "--sidecar-for", f"app{i}",
                                 "--listen", "127.0.0.1:0"], os.path.join(d, f"gp{i}.log"),
                                env=envs["dc2"]).pid)
        upstreams += ["--upstream", f"app{i}@dc2/local:{port}"]
        run([murmur, "intention", "create", "-allow", "client", f"app{i}"], env=envs["dc1"])
    run([murmur, "services", "register", "--name", "client", "--port", "1"], env=envs["dc1"])
    pids.append(procs.start([murmur, "connect", "proxy", "--sidecar-for", "client",
                             "--listen", "127.0.0.1:0", *upstreams],
                            os.path.join(d, "gc.log"), env=envs["dc1"]).pid)
    procs.env = envs["dc1"]
    return pids


def ready(port):
    try:
        out = subprocess.run([PROBE, "pingpong", f"127.0.0.1:{port}", "10"],
                             capture_output=True, timeout=5)
        return out.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def iperf(port, flows, seconds):
    out = json.loads(run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                          "-P", str(flows), "-J"]))
    end = out["end"]
    return end["sum_received"]["bits_per_second"], end["sum_received"]["bytes"]


def measure(name, echo_port, iperf_port, pids, seconds, gateways=0):
    """One path's figures; the first `gateways` of `pids` are mesh gateways, whose own CPU per
    GB is reported apart too (what one hop costs, free of the sidecars' run-to-run spread)."""
    def cpu(of=None):
        return sum(proc_stats(p)[1] for p in (pids if of is None else of))

    def probe(*args):
        return map(float, run([PROBE, args[0], f"127.0.0.1:{echo_port}", *args[1:]]).split())

    wait_for(lambda: ready(echo_port), 30, f"the {name} path to carry bytes")
    cpu0 = cpu()
    p50, p99 = probe("pingpong", str(PINGPONGS))
    cpu_per_rtt = (cpu() - cpu0) / PINGPONGS * 1e6
    cpu0 = cpu()
    paced50, _ = probe("paced", str(PACED), "1000")
    paced_cpu = (cpu() - cpu0) / PACED * 1e6
    c50, c99 = probe("connect", "2000")
    cpu0, gw0 = cpu(), cpu(pids[:gateways])
    one, moved = iperf(iperf_port, 1, seconds)
    cpu1, gw1 = cpu(), cpu(pids[:gateways])
    many, _ = iperf(iperf_port, 64, seconds)
    rss = sum(proc_stats(p)[0] for p in pids) / 1024
    cpu_per_gb = (cpu1 - cpu0) / (moved / 1e9) if pids else 0.0
    hop_per_gb = (gw1 - gw0) / (moved / 1e9) / gateways if gateways else None
    print(f"  {name}: rtt {p50:.0f}/{p99:.0f} us ({cpu_per_rtt:.0f} us proxy CPU), "
          f"paced {paced50:.0f} us ({paced_cpu:.0f} us proxy CPU), "
          f"new conn {c50:.0f}/{c99:.0f} us, "
          f"1 flow {one / 1e9:.2f} Gbit/s, 64 flows {many / 1e9:.2f} Gbit/s"
          + (f", {hop_per_gb:.3f} s CPU per GB in each gateway" if gateways else ""),
          file=sys.stderr)
    return dict(name=name, rtt=(p50, p99), cpu_per_rtt=cpu_per_rtt,
                paced=(paced50, paced_cpu), conn=(c50, c99),
                one=one, many=many, cpu_per_gb=cpu_per_gb, rss=rss, hop_per_gb=hop_per_gb)


def measure_native(name, env):
    """The native SDK as the client (examples/mesh_probe.rs, service "client") to app0 behind
    its sidecar: latency only (iperf3 speaks TCP), and no proxy CPU column (one of the two
    ends is the client itself)."""
    probe = [MESH_PROBE, "client", "app0"]
    wait_for(lambda: subprocess.run(probe + ["pingpong", "10"], env=env,
                                    capture_output=True).returncode == 0,
             30, f"the {name} path to carry bytes")
    p50, p99 = map(float, run(probe + ["pingpong", str(PINGPONGS)], env=env).split())
    c50, c99 = map(float, run(probe + ["connect", "2000"], env=env).split())
    print(f"  {name}: rtt {p50:.0f}/{p99:.0f} us, new conn {c50:.0f}/{c99:.0f} us", file=sys.stderr)
    return dict(name=name, rtt=(p50, p99), conn=(c50, c99))


def cells(r):
    """A row's table cells; '–' for what a row does not measure."""
    def pair(key):
        return f"{r[key][0]:.0f} / {r[key][1]:.0f}" if key in r else "–"

    def one(key, scale, digits):
        return f"{r[key] / scale:.{digits}f}" if key in r else "–"
    return [r["name"], pair("rtt"), one("cpu_per_rtt", 1, 0), pair("paced"), pair("conn"),
            one("one", 1e9, 2), one("many", 1e9, 2), one("cpu_per_gb", 1, 2), one("rss", 1, 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--murmur", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only-murmur", action="store_true",
                    help="measure murmur's pair alone (to compare builds quickly)")
    ap.add_argument("--agent-run", action="store_true",
                    help="also measure murmur's pair run by the agent (services registered "
                    "with a sidecar block)")
    ap.add_argument("--gateways", action="store_true",
                    help="also measure murmur's pair across two datacenters through a mesh "
                    "gateway in each")
    ap.add_argument("--busy-poll", metavar="WINDOW",
                    help="also measure murmur's pair with --busy-poll WINDOW")
    args = ap.parse_args()
    procs = Procs()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        try:
            certificates(d)
            echo, perf = free_port(), free_port()
            procs.start([PROBE, "echo", f"127.0.0.1:{echo}"], os.path.join(d, "echo.log"))
            procs.start(["iperf3", "-s", "-p", str(perf)], os.path.join(d, "iperf.log"))
            # Each pair stops before the next starts: a spinning proxy would slow the others.
            pairs = [("haproxy pair (mTLS)", lambda g, t: haproxy_pair(d, g, t)),
                     ("stunnel4 pair (mTLS)", lambda g, t: stunnel_pair(d, g, t)),
                     (MURMUR, lambda g, t: murmur_pair(args.murmur, d, g, t))]
            if args.busy_poll:
                pairs.insert(1, ("haproxy pair, busy-polling",
                                 lambda g, t: haproxy_pair(d, g, t, busy=True)))
                pairs.append((f"murmur sidecar pair, --busy-poll {args.busy_poll}",
                              lambda g, t: murmur_pair(args.murmur, d, g, t,
                                                       ["--busy-poll", args.busy_poll])))
            if args.gateways:
                pairs.append((GATEWAYS, lambda g, t: gateway_pair(args.murmur, d, g, t)))
            if args.agent_run:
                pairs.append(("murmur sidecar pair, run by the agent",
                              lambda g, t: agent_run_pair(args.murmur, d, g, t)))
            if args.only_murmur:
                pairs = [p for p in pairs if p[0].startswith("murmur")]
            else:
                rows.append(measure("direct TCP", echo, perf, [], args.seconds))
            for name, make in pairs:
                group = Procs()
                try:
                    ports = (free_port(), free_port())
                    pids = make(group, [(ports[0], echo), (ports[1], perf)])
                    rows.append(measure(name, ports[0], ports[1], pids, args.seconds,
                                        gateways=2 if name == GATEWAYS else 0))
                    if name == MURMUR:
                        rows.append(measure_native("native SDK client → murmur sidecar "
                                                   "(QUIC, mTLS)", group.env))
                finally:
                    group.stop()
        finally:
            procs.stop()
    print(f"Command: `bench/proxy.sh {args.seconds}` (loopback; RTT of 64-byte ping-pongs, "
          "20,000 on one connection, back to back, then 2,000 paced at one per ms; "
          "new connection = connect + 1-byte round trip, 2,000; "
          f"iperf3 -t {args.seconds})\n")
    print("| path | RTT p50 / p99 (µs) | proxy CPU per round trip (µs) | paced: RTT p50 / "
          "proxy CPU per round trip (µs) | new connection p50 / p99 (µs) | 1 flow (Gbit/s) | "
          "64 flows (Gbit/s) | proxy CPU per GB (s) | proxies' RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(cells(r)) + " |")
    pair = next((r for r in rows if r["name"] == MURMUR), None)
    gateways = next((r for r in rows if r.get("hop_per_gb") is not None), None)
    if pair and gateways:
        def share(seconds):
            return f"{seconds:.3f} s per GB ({100 * seconds / pair['cpu_per_gb']:.0f}% of the pair's)"
        size = relay_datagram()
        fed, paced = (relay_floor(size, pause) for pause in (0, RELAY_PAUSE_US))
        print(f"\nEach mesh gateway's own CPU (1 flow): {share(gateways['hop_per_gb'])}; the "
              f"sidecar pair's {pair['cpu_per_gb']:.2f} s per GB in this run. A bare relay of "
              f"{size}-byte datagrams (`{RELAY_FLOOR} {size} 4 [PAUSE_US]`): {share(fed)} fed "
              f"without pause, {share(paced)} when its sender pauses {RELAY_PAUSE_US} µs after "
              "each batch, so that it sleeps between batches as a gateway does.")


def relay_datagram():
    """The datagram size murmur's sidecars use on this loopback: path-MTU discovery stops at
    16,000 bytes or at the MTU less 48 bytes of headers, as quinn counts them."""
    with open("/sys/class/net/lo/mtu") as f:
        return min(16000, int(f.read()) - 48)


def relay_floor(size, pause_us):
    """A bare relay's CPU per GB for 4 GB of `size`-byte datagrams, its sender pausing
    `pause_us` after each batch."""
    return float(run([RELAY_FLOOR, str(size), "4", str(pause_us)]).split()[0])


if __name__ == "__main__":
    main()
