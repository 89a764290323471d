#!/usr/bin/env python3
"""Catalog at scale: N real agents on loopback holding one catalog of many service instances
(Consul's Global Scale Benchmark pushed one change to 172,000 instances; murmur has no servers,
so every agent holds the whole catalog).

Each agent loads its share of the instances from --config-dir at start (they are spread over
--services service names), one of them also `watched`, an instance with a TTL check, and all
agents join through the first. Then it measures:

  load      time from launching the joiners until every agent's catalog lists every node (a
            record arrives whole); at the end, checked on 8 of the agents: each lists every
            instance (`/v1/internal/ui/services`, summed InstanceCount)
  rss       resident memory per agent once the catalog is complete and idle (mean, max) and
            of it the agent's own (RssAnon; the rest is the binary's pages, which agents on one
            host share)
  change    time from flipping `watched`'s check (passing <-> critical, on its agent) until
            every agent's blocking query on `/v1/health/service/watched` returns the new
            status; several flips, the medians over flips of each flip's p50 and max

Only loopback addresses are used; every process started is killed at the end.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from membership import Murmur, proc_stats, start_cluster, stop, wait_for  # noqa: E402
from replication import request  # noqa: E402

WATCHED = "watched"


def write_config_dirs(workdir, agents, instances, services, owner):
    """One directory per agent with its share of the instances (the first agents take one
    more when they do not divide evenly); agent `owner` also has `watched`, with a TTL check."""
    dirs = []
    for i in range(agents):
        share = instances // agents + (1 if i < instances % agents else 0)
        d = f"{workdir}/services{i}"
        os.makedirs(d)
        defs = [{"Name": f"svc-{(i * 7919 + s) % services}", "ID": f"svc-{i}-{s}",
                 "Port": 20000 + s % 10000, "Tags": ["v1"]} for s in range(share)]
        if i == owner:
            defs.append({"Name": WATCHED, "ID": WATCHED, "Port": 9999,
                         "Check": {"TTL": "3600s", "Status": "passing"}})
        with open(f"{d}/services.json", "w") as f:
            json.dump({"services": defs}, f)
        dirs.append(d)
    return dirs


def instance_count(agent):
    status, _, body = request(agent, "GET", "/v1/internal/ui/services", timeout=30)
    if status != 200:
        return -1
    return sum(s["InstanceCount"] for s in json.loads(body))


def node_count(agent):
    status, _, body = request(agent, "GET", "/v1/catalog/nodes", timeout=30)
    return len(json.loads(body)) if status == 200 else -1


def wait_all_complete(agents, limit):
    """Polls every agent (a few threads, each a slice of the agents) until its catalog lists
    every agent's node: a node record arrives whole, with all its services, so that is when it
    holds the whole catalog (checked at the end on a few agents by counting the instances,
    which is too costly to poll: `check_instances`). Returns the time each agent did."""
    done = [None] * len(agents)
    end = time.monotonic() + limit

    def poll(indexes):
        pending = list(indexes)
        while pending and time.monotonic() < end:
            for i in list(pending):
                try:
                    if node_count(agents[i]) == len(agents):
                        done[i] = time.monotonic()
                        pending.remove(i)
                except OSError:
                    pass
            time.sleep(0.2)

    threads = [threading.Thread(target=poll, args=(range(k, len(agents), 16),)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if None in done:
        raise RuntimeError(f"{done.count(None)} agents never listed all {len(agents)} nodes")
    return done


def check_instances(agents, expected, sample=8):
    """`sample` agents, spread over the list, each list `expected` instances. The answer builds
    every instance at once, which leaves each asked agent's allocator holding tens of MiB more
    (256 agents all asked ran this 24 GiB machine out of memory): run it last."""
    asked = agents[::max(1, len(agents) // sample)]
    short = [(i, c) for i, c in ((i, instance_count(a)) for i, a in enumerate(asked)) if c != expected]
    if short:
        raise RuntimeError(f"{len(short)} agents list every node but not {expected} instances: {short[:5]}")


def health_waiter(agent, want):
    """A function that blocks until `agent` answers `watched` with check status `want`."""
    _, headers, _ = request(agent, "GET", f"/v1/health/service/{WATCHED}")
    index = headers["X-Consul-Index"]

    def status_of(body):
        entries = json.loads(body)
        return entries[0]["Checks"][-1]["Status"] if entries else None

    def wait():
        nonlocal index
        while True:
            _, headers, body = request(agent, "GET", f"/v1/health/service/{WATCHED}?index={index}&wait=60s")
            if status_of(body) == want:
                return time.monotonic()
            index = headers["X-Consul-Index"]
    return wait


def flip_times(agents, owner, want):
    """Sets `watched`'s check to `want` on its agent; returns the sorted delays until each agent's
    blocking query returned it."""
    waiters = [health_waiter(a, want) for a in agents]
    arrivals = [None] * len(agents)

    def run(i):
        arrivals[i] = waiters[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(agents))]
    for t in threads:
        t.start()
    time.sleep(1)  # every blocking query is parked
    verb = "pass" if want == "passing" else "fail"
    t0 = time.monotonic()
    status, _, body = request(owner, "PUT", f"/v1/agent/check/{verb}/service:{WATCHED}", b"")
    if status != 200:
        raise RuntimeError(f"check {verb} failed: {status} {body!r}")
    for t in threads:
        t.join(60)
    if None in arrivals:
        raise RuntimeError(f"{arrivals.count(None)} agents never saw {WATCHED} {want}")
    return sorted(t - t0 for t in arrivals)


def run(binary, key, n, instances, services, flips, workdir):
    system = Murmur(binary, key, workdir)
    dirs = write_config_dirs(workdir, n, instances, services, n // 2)
    system.extra = lambda i: ["--config-dir", dirs[i]]
    agents = []
    try:
        t0 = time.monotonic()
        start_cluster(system, n, agents)
        print(f"   {n} agents joined after {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        owner = agents[n // 2]
        done = wait_all_complete(agents, 1800)
        load = max(done) - t0
        print(f"   every agent lists every node after {load:.1f} s", file=sys.stderr, flush=True)
        time.sleep(10)
        stats = [proc_stats(a["proc"].pid) for a in agents]
        rss = [s[0] / 1024 for s in stats]
        anon = [s[2] / 1024 for s in stats]
        print(f"   RSS per agent {statistics.mean(rss):.1f} MiB (own {statistics.mean(anon):.1f})",
              file=sys.stderr, flush=True)
        p50s, maxes = [], []
        for f in range(flips):
            times = flip_times(agents, owner, "critical" if f % 2 == 0 else "passing")
            p50s.append(statistics.median(times))
            maxes.append(times[-1])
            print(f"   flip {f + 1}: p50 {p50s[-1]:.3f} s, max {maxes[-1]:.3f} s", file=sys.stderr, flush=True)
            time.sleep(2)
        check_instances(agents, instances + 1)
        return {"load": load, "rss_mean": statistics.mean(rss), "rss_max": max(rss),
                "anon_mean": statistics.mean(anon), "change_p50": statistics.median(p50s),
                "change_max": statistics.median(maxes)}
    finally:
        stop(agents)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--murmur", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--agents", type=int, default=256)
    parser.add_argument("--instances", type=int, default=172_000)
    parser.add_argument("--services", type=int, default=1000, help="distinct service names")
    parser.add_argument("--flips", type=int, default=5, help="health changes measured")
    parser.add_argument("--join-limit", type=float, default=300.0)
    args = parser.parse_args()
    import membership
    membership.JOIN_LIMIT = args.join_limit
    with tempfile.TemporaryDirectory() as work:
        print(f"-- murmur, {args.agents} agents, {args.instances} instances ...", file=sys.stderr, flush=True)
        r = run(args.murmur, args.key, args.agents, args.instances, args.services, args.flips, work)
    print("| agents | instances | metric | murmur |")
    print("|---|---|---|---|")
    rows = [("every agent holds the whole catalog (s from launch)", "load"),
            ("RSS per agent, mean (MiB)", "rss_mean"), ("RSS per agent, max (MiB)", "rss_max"),
            ("of which its own, mean (MiB, RssAnon)", "anon_mean"),
            (f"one instance's health change in every agent's blocking query, p50 (s, median of {args.flips})", "change_p50"),
            (f"one instance's health change in every agent's blocking query, max (s, median of {args.flips})", "change_max")]
    for label, key in rows:
        print(f"| {args.agents} | {args.instances} | {label} | {r[key]:.3f} |")


if __name__ == "__main__":
    main()
