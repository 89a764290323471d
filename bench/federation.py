#!/usr/bin/env python3
"""Federation benchmark with real agents on loopback: two datacenters of N agents each, every
agent eligible, three WAN gateways per datacenter (the default).

  global    an intention written on a random agent: time until every agent of both
            datacenters has it, pushed to the bench by a blocking query per agent. Several
            writes; p50 and p99 over all arrivals.
  dc        a KV read on a non-gateway agent of dc1, local against ?dc=dc2 (through a dc1
            gateway and a dc2 one): p50 and p99 of each, and the ratio.
  replace   kill -9 of one dc1 gateway: time until a dc2 gateway lists three live dc1
            members in its WAN pool again (the LAN pool declares the dead one failed, the next
            agent takes its place and joins the WAN).
  wan       WAN datagram bytes per second of a gateway, idle, for datacenter sizes SIZES:
            only the directory, global data and WAN membership cross, so it stays flat.

Only loopback addresses are used; every process started is killed at the end.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from membership import free_port, spread, stop, wait_for  # noqa: E402
from replication import request  # noqa: E402


def get(agent, path):
    status, _, body = request(agent, "GET", path, timeout=10)
    return json.loads(body) if status == 200 else None


def start(binary, key, workdir, n):
    """Two datacenters of `n` agents; every agent knows every WAN address as a seed."""
    plan = []
    for dc in ("dc1", "dc2"):
        for i in range(n):
            plan.append((dc, i, free_port(), free_port(), free_port(), free_port()))
    seeds = []
    for (_, _, _, _, _, wan) in plan:
        seeds += ["--retry-join-wan", f"127.0.0.1:{wan}"]
    agents = []
    first = {}
    for (dc, i, gossip, http, dns, wan) in plan:
        cmd = [binary, "agent", "--node", f"{dc}-{i}", "--datacenter", dc,
               "--bind", f"127.0.0.1:{gossip}", "--http-addr", f"127.0.0.1:{http}",
               "--dns-addr", f"127.0.0.1:{dns}", "--data-dir", f"{workdir}/{dc}-{i}",
               "--encrypt", key, "--wan-eligible", "--bind-wan", f"127.0.0.1:{wan}"] + seeds
        if dc in first:
            cmd += ["--join", first[dc]]
        else:
            first[dc] = f"127.0.0.1:{gossip}"
        log = open(f"{workdir}/{dc}-{i}.log", "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                env=dict(os.environ, MURMUR_LOG="warn"))
        agents.append({"proc": proc, "dc": dc, "name": f"{dc}-{i}", "api": http})
        time.sleep(0.1 if i else 0.5)
    return agents


def gateways(agents, dc):
    return [a for a in agents if a["dc"] == dc and a["proc"].poll() is None
            and get(a, "/v1/agent/self")["Stats"]["serf_wan"] is not None]


def wan_alive_names(agent, dc):
    members = get(agent, "/v1/agent/members?wan") or []
    return {m["Name"] for m in members if m["Status"] == 1 and m["Name"].endswith(f".{dc}")}


def wan_alive(agent, dc):
    return len(wan_alive_names(agent, dc))


def settle(agents, limit=120):
    def linked():
        try:
            if not all(get(a, "/v1/catalog/datacenters") == ["dc1", "dc2"]
                       or get(a, "/v1/catalog/datacenters") == ["dc2", "dc1"] for a in agents):
                return False
            return all(len(gateways(agents, dc)) == 3 for dc in ("dc1", "dc2")) and \
                wan_alive(gateways(agents, "dc1")[0], "dc2") == 3
        except (OSError, TypeError, KeyError):
            return False
    wait_for(linked, limit, "two datacenters linked, three gateways each, directory everywhere")


def intention_waiter(agent, source):
    _, headers, _ = request(agent, "GET", "/v1/connect/intentions")
    index = headers["X-Consul-Index"]

    def wait():
        nonlocal index
        while True:
            status, headers, body = request(agent, "GET", f"/v1/connect/intentions?index={index}&wait=60s")
            index = headers["X-Consul-Index"]
            if status == 200 and any(i["SourceName"] == source for i in json.loads(body)):
                return
    return wait


def global_writes(agents, writes):
    arrivals = []
    for w in range(writes):
        source = f"bench-{w}"
        waiters = [intention_waiter(a, source) for a in agents]
        writer = random.choice(agents)
        path = f"/v1/connect/intentions/exact?source={source}&destination=db"
        fire = lambda: request(writer, "PUT", path, b'{"Action": "allow"}')
        arrivals += spread(len(agents), waiters, fire, limit=60)
        time.sleep(0.5)
    arrivals.sort()
    return statistics.median(arrivals), arrivals[int(len(arrivals) * 0.99) - 1], arrivals[-1]


def timed_reads(agent, path, n):
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        status, _, _ = request(agent, "GET", path, timeout=30)
        times.append(time.monotonic() - t0)
        assert status == 200, (path, status)
    times.sort()
    return statistics.median(times), times[int(n * 0.99) - 1]


def replace_gateway(agents):
    """Seconds from the kill until a new dc1 gateway is alive in the WAN pool, and until the
    WAN pool declares the dead one failed (its WAN suspicion is longer than the LAN's)."""
    victim = gateways(agents, "dc1")[0]
    watcher = gateways(agents, "dc2")[0]
    before = wan_alive_names(watcher, "dc1")
    t0 = time.monotonic()
    victim["proc"].kill()
    victim["proc"].wait()
    wait_for(lambda: wan_alive_names(watcher, "dc1") - before, 180, "a new dc1 gateway in the WAN")
    replaced = time.monotonic() - t0
    dead = f"{victim['name']}.dc1"
    wait_for(lambda: dead not in wan_alive_names(watcher, "dc1"), 180, "the WAN declaring the dead gateway failed")
    return replaced, time.monotonic() - t0


def wan_rate(agent, secs):
    def sent():
        return int(get(agent, "/v1/agent/self")["Stats"]["serf_wan"]["bytes_sent"])
    before, t0 = sent(), time.monotonic()
    time.sleep(secs)
    return (sent() - before) / (time.monotonic() - t0)


class Rows(list):
    """Table rows, each also printed to stderr as it is measured (a later failure keeps it)."""

    def append(self, row):
        print(row, file=sys.stderr, flush=True)
        super().append(row)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--murmur", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--agents", type=int, default=16, help="agents per datacenter")
    p.add_argument("--writes", type=int, default=10)
    p.add_argument("--sizes", default="4,16,32", help="datacenter sizes for the WAN traffic run")
    args = p.parse_args()
    rows = Rows()
    with tempfile.TemporaryDirectory() as workdir:
        agents = start(args.murmur, args.key, workdir, args.agents)
        try:
            t0 = time.monotonic()
            settle(agents)
            linked = time.monotonic() - t0
            p50, p99, worst = global_writes(agents, args.writes)
            rows.append(f"| intention to all {len(agents)} agents of 2 DCs | p50 {p50 * 1000:.0f} ms | p99 {p99 * 1000:.0f} ms (max {worst * 1000:.0f} ms) |")
            asker = next(a for a in agents if a["dc"] == "dc1" and a not in gateways(agents, "dc1"))
            request(gateways(agents, "dc2")[0], "PUT", "/v1/kv/bench", b"v")
            wait_for(lambda: request(asker, "GET", "/v1/kv/bench?dc=dc2")[0] == 200, 30, "dc2's key")
            request(asker, "PUT", "/v1/kv/bench", b"v")
            local = timed_reads(asker, "/v1/kv/bench", 300)
            remote = timed_reads(asker, "/v1/kv/bench?dc=dc2", 300)
            rows.append(f"| KV read, local | p50 {local[0] * 1e3:.2f} ms | p99 {local[1] * 1e3:.2f} ms |")
            rows.append(f"| KV read, `?dc=dc2` (2 hops) | p50 {remote[0] * 1e3:.2f} ms ({remote[0] / local[0]:.1f}×) | p99 {remote[1] * 1e3:.2f} ms ({remote[1] / local[1]:.1f}×) |")
            replaced, declared = replace_gateway(agents)
            rows.append(f"| gateway kill -9 → successor alive in the WAN pool | {replaced:.1f} s | dead one declared failed in the WAN {declared:.1f} s |")
        finally:
            stop(agents)
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as workdir:
            agents = start(args.murmur, args.key, workdir, n)
            try:
                settle(agents)
                time.sleep(10)
                rate = statistics.median(wan_rate(g, 20) for g in gateways(agents, "dc1"))
                rows.append(f"| WAN datagram bytes sent per gateway, {n} agents per DC, idle | {rate:.0f} B/s | |")
            finally:
                stop(agents)
    print(f"(two datacenters of {args.agents} agents linked {linked:.0f} s after the start)")
    print("| measure | result | |")
    print("|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
