#!/usr/bin/env python3
"""Replication benchmark: a KV write on murmur against a user event on serf, same N, same
machine, side by side; then murmur alone: anti-entropy repair of a missed write, and the memory
of agents holding 10,000 service instances and 100,000 keys.

  write     time from a KV PUT on agent 0 until each agent has it, pushed to the bench by a
            blocking query per agent (murmur), against `serf event` until each agent's RPC
            event stream delivers it (serf). Several writes; medians over writes of each
            write's p50 and max.
  repair    an agent whose gossip datagrams are dropped (iptables, loopback only) for 2 s from
            a write, so every retransmission of it is lost: time from the write until the agent
            has it, which only anti-entropy can bring (a sync with one random member every
            10 s + up to 10% jitter: one round is at most 11 s). Needs root.
  memory    4 agents, 2,500 services each from --config-dir (10,000 instances), 100,000 keys
            of 64 bytes written on agent 0: RSS of each agent once all hold everything.
  idle      N agents (the first of --sizes) holding --keys keys written on agent 0: bytes and
            packets per agent per second on loopback over an idle window once all hold them
            (anti-entropy compares the key space every 10 s; coordinates keep changing).
Only loopback addresses are used; every process started is killed at the end.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from membership import (Murmur, Serf, idle_figures, proc_stats, spread, start_cluster, stop,  # noqa: E402
                        wait_for)


def request(agent, method, path, data=None, timeout=70):
    """Status, headers and body; 404 is an answer, not an error."""
    req = urllib.request.Request(f"http://127.0.0.1:{agent['api']}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def kv_waiter(agent, key):
    """Returns a function that blocks until `key` exists on `agent` (blocking queries)."""
    _, headers, _ = request(agent, "GET", f"/v1/kv/{key}")
    index = headers["X-Consul-Index"]

    def wait():
        nonlocal index
        while True:
            status, headers, _ = request(agent, "GET", f"/v1/kv/{key}?index={index}&wait=60s")
            if status == 200:
                return
            index = headers["X-Consul-Index"]
    return wait


def write_times(system, n, writes):
    agents = []
    try:
        start_cluster(system, n, agents)
        time.sleep(2)
        p50s, maxes = [], []
        for w in range(writes):
            key = f"bench/w{w}"
            if system.name == "murmur":
                waiters = [kv_waiter(a, key) for a in agents]
                fire = lambda: request(agents[0], "PUT", f"/v1/kv/{key}", b"v")
            else:
                waiters = [system.event_waiter(a) for a in agents]
                fire = lambda: system.fire(agents[0])
            times = spread(n, waiters, fire)
            p50s.append(statistics.median(times))
            maxes.append(times[-1])
            time.sleep(1)
        return statistics.median(p50s), statistics.median(maxes)
    finally:
        stop(agents)


def udp_blocked(port, on):
    """Drops (or stops dropping) UDP to a loopback port: the agent misses gossip datagrams but
    its TCP streams (anti-entropy) still work."""
    action = "-I" if on else "-D"
    subprocess.run(["iptables", action, "INPUT", "-p", "udp", "-d", "127.0.0.1", "--dport", str(port),
                    "-j", "DROP"], check=True)


def repair_times(system, n, rounds):
    """Time from a write until an agent that missed its datagrams has it."""
    agents = []
    try:
        start_cluster(system, n, agents)
        out = []
        for r in range(rounds):
            victim = agents[1 + r % (n - 1)]
            port = victim["gossip"].rsplit(":", 1)[1]
            key = f"repair/{r}"
            udp_blocked(port, True)
            try:
                t0 = time.monotonic()
                request(agents[0], "PUT", f"/v1/kv/{key}", b"v")
                # Datagrams stay blocked until every retransmission of the write is spent
                # (8 transmissions at N=32 in 200 ms rounds, about 1 s over all relays); what
                # arrives meanwhile came by a stream, i.e. anti-entropy. Longer would make the
                # victim's probes fail and tear its membership down, which is another test.
                while request(victim, "GET", f"/v1/kv/{key}")[0] != 200 and time.monotonic() - t0 < 2:
                    time.sleep(0.05)
            finally:
                udp_blocked(port, False)
            while request(victim, "GET", f"/v1/kv/{key}")[0] != 200:
                time.sleep(0.05)
                if time.monotonic() - t0 > 60:
                    raise RuntimeError("missed write never repaired")
            out.append(time.monotonic() - t0)
            time.sleep(2)
        return out
    finally:
        stop(agents)


def memory(system, workdir, keys):
    config_dirs = []
    for i in range(4):
        d = f"{workdir}/services{i}"
        os.makedirs(d)
        services = [{"Name": f"svc-{s % 50}", "ID": f"svc-{s}-{i}", "Port": 8000 + s % 1000,
                     "Tags": ["v1"]} for s in range(2500)]
        with open(f"{d}/services.json", "w") as f:
            json.dump({"services": services}, f)
        config_dirs.append(d)
    system.extra = lambda i: ["--config-dir", config_dirs[i]]
    agents = []
    try:
        start_cluster(system, 4, agents)
        t0 = time.monotonic()
        write_keys(agents[0], keys)
        put_secs = time.monotonic() - t0
        last = f"app/{(keys - 1) % 500:03}/key-{keys - 1:06}"

        def complete(a):
            catalog = json.loads(request(a, "GET", "/v1/catalog/services")[2])
            return key_count(a) == keys and len(catalog) == 50
        wait_for(lambda: all(complete(a) for a in agents), 300, "every agent holds everything")
        converge_secs = time.monotonic() - t0
        time.sleep(2)
        rss = [proc_stats(a["proc"].pid)[0] / 1024 for a in agents]
        return {"put_rate": keys / put_secs, "converge": converge_secs, "rss": rss, "last": last}
    finally:
        stop(agents)


def write_keys(agent, keys):
    """Writes `keys` keys of 64 bytes on `agent` with 8 concurrent clients."""
    value = b"x" * 64
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: request(agent, "PUT", f"/v1/kv/app/{k % 500:03}/key-{k:06}", value),
                      range(keys)))


def key_count(agent):
    _, _, body = request(agent, "GET", "/v1/kv/app/?keys")
    return len(json.loads(body)) if body else 0


def idle_traffic(system, n, keys, idle_secs):
    agents = []
    try:
        start_cluster(system, n, agents)
        write_keys(agents[0], keys)
        wait_for(lambda: all(key_count(a) == keys for a in agents), 300, "every agent holds every key")
        time.sleep(idle_secs / 2)
        return idle_figures(agents, idle_secs)
    finally:
        stop(agents)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--murmur", required=True)
    parser.add_argument("--serf", default="serf")
    parser.add_argument("--key", required=True)
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--repairs", type=int, default=10)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=30.0, help="idle window of the idle part, seconds")
    parser.add_argument("--parts", default="writes,repair,memory,idle", help="which measurements to run")
    args = parser.parse_args()
    parts = args.parts.split(",")

    if "writes" in parts:
        print("| N | metric | murmur KV write | serf event | murmur/serf |")
        print("|---|---|---|---|---|")
    for n in [int(x) for x in args.sizes.split(",")] if "writes" in parts else []:
        results = {}
        for cls, binary in [(Murmur, args.murmur), (Serf, args.serf)]:
            with tempfile.TemporaryDirectory() as work:
                system = cls(binary, args.key, work)
                print(f"-- {system.name} writes, N={n} ...", file=sys.stderr, flush=True)
                results[system.name] = write_times(system, n, args.writes)
                print(f"   {results[system.name]}", file=sys.stderr, flush=True)
        for label, i in [(f"to all, p50 (s, median of {args.writes})", 0), (f"to all, max (s, median of {args.writes})", 1)]:
            m, s = results["murmur"][i], results["serf"][i]
            print(f"| {n} | {label} | {m:.3f} | {s:.3f} | {m / s:.2f} |", flush=True)

    n = int(args.sizes.split(",")[0])
    if "repair" in parts:
        with tempfile.TemporaryDirectory() as work:
            print(f"-- murmur repair, N={n} ...", file=sys.stderr, flush=True)
            repairs = repair_times(Murmur(args.murmur, args.key, work), n, args.repairs)
        print(f"\nanti-entropy repair of a missed write, N={n}: " + ", ".join(f"{t:.2f}" for t in sorted(repairs))
              + f" s (median {statistics.median(repairs):.2f} s, max {max(repairs):.2f} s)")

    if "memory" in parts:
        with tempfile.TemporaryDirectory() as work:
            print(f"-- murmur memory, {args.keys} keys ...", file=sys.stderr, flush=True)
            m = memory(Murmur(args.murmur, args.key, work), work, args.keys)
        print(f"memory: 4 agents, 10,000 instances, {args.keys} keys: RSS per agent "
              + ", ".join(f"{r:.1f}" for r in m["rss"]) + " MiB"
              + f" (writes {m['put_rate']:.0f}/s on one agent, all agents complete after {m['converge']:.1f} s)")


    if "idle" in parts:
        with tempfile.TemporaryDirectory() as work:
            print(f"-- murmur idle traffic, N={n}, {args.keys} keys ...", file=sys.stderr, flush=True)
            t = idle_traffic(Murmur(args.murmur, args.key, work), n, args.keys, args.idle)
        print(f"idle traffic: {n} agents holding {args.keys} keys: {t['bytes']:.0f} bytes and "
              f"{t['packets']:.1f} packets per agent per second, {t['cpu']:.2f}% of a core")


if __name__ == "__main__":
    main()
