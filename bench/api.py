#!/usr/bin/env python3
"""API benchmark (issue 5): three murmur agents on loopback holding 1,000 instances of 50
services, then

  http      wrk against /v1/health/service/svcN?passing (20 instances per answer):
            requests/s and p99 latency;
  dns       dnsperf with SRV lookups of svcN.service.consul: queries/s;
  wake-up   a blocking KV query waiting on agent B; the write is made on B itself (the wake-up
            alone) and on agent A (replication + wake-up): time until the query returns;
  idle      10,000 blocking queries parked on one agent: its RSS before and after.

Only loopback addresses are used; every process started is killed at the end.
"""

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from membership import Murmur, proc_stats, start_cluster, stop, wait_for  # noqa: E402

SERVICES, INSTANCES = 50, 1000


def call(agent, method, path, data=None, timeout=70):
    """Headers and body; a 404 (a missing key) is an answer too, with its index."""
    req = urllib.request.Request(f"http://127.0.0.1:{agent['api']}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.headers, r.read()
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        return e.headers, b""


def register(agents):
    for i in range(INSTANCES):
        agent = agents[i % len(agents)]
        body = json.dumps({"Name": f"svc{i % SERVICES}", "ID": f"i{i}", "Port": 10000 + i})
        call(agent, "PUT", "/v1/agent/service/register", body.encode())

    def complete(agent):
        _, body = call(agent, "GET", "/v1/health/service/svc7?passing")
        return len(json.loads(body)) == INSTANCES // SERVICES

    wait_for(lambda: all(complete(a) for a in agents), 120, "every agent to hold all instances")


def http_load(agent, seconds, token=None):
    url = f"http://127.0.0.1:{agent['api']}/v1/health/service/svc7?passing"
    header = ["-H", f"X-Consul-Token: {token}"] if token else []
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", *header, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    if "Non-2xx" in out:
        sys.exit(f"wrk got error answers:\n{out}")
    # Every answer must be the whole list: compare wrk's bytes per request with one answer.
    req = urllib.request.Request(url, headers={"X-Consul-Token": token} if token else {})
    with urllib.request.urlopen(req) as r:
        one = len(r.read())
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    per_second = float(transfer.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[transfer.group(2)]
    if per_second / rps < one:
        sys.exit(f"wrk's answers are shorter ({per_second / rps:.0f} B) than one answer ({one} B)")
    return rps, float(p99.group(1)) * scale


def dns_load(agent, seconds, workdir):
    """dnsperf with EDNS0 (-e), as resolvers ask: 20 SRV records and their addresses fit."""
    queries = f"{workdir}/queries"
    with open(queries, "w") as f:
        for i in range(SERVICES):
            f.write(f"svc{i}.service.consul SRV\n")
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(agent["dns"]), "-d", queries,
                          "-l", str(seconds), "-c", "4", "-Q", "200000", "-e"],
                         capture_output=True, text=True, check=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = re.search(r"Queries lost:\s+(\d+)", out).group(1)
    return qps, int(lost)


def wakeup(writer, waiter, rounds):
    times = []
    for r in range(rounds):
        key = f"bench/wake{r}"
        headers, _ = call(waiter, "GET", f"/v1/kv/{key}")  # a 404 carries the key's index
        index = headers["X-Consul-Index"]
        done = {}

        def wait():
            call(waiter, "GET", f"/v1/kv/{key}?index={index}&wait=30s")
            done["at"] = time.monotonic()

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.2)  # let the query park
        start = time.monotonic()
        call(writer, "PUT", f"/v1/kv/{key}", b"x")
        t.join()
        times.append((done["at"] - start) * 1000)
    return statistics.median(times), max(times)


def idle_queries(agent, count):
    rss_before, _ = proc_stats(agent["proc"].pid)
    socks = []
    request = (f"GET /v1/kv/idle/never?index=1&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    for _ in range(count):
        socks.append(socket.create_connection(("127.0.0.1", agent["api"])))
    time.sleep(2)
    rss_connected, _ = proc_stats(agent["proc"].pid)
    for s in socks:
        s.sendall(request)
    time.sleep(3)
    rss_after, cpu0 = proc_stats(agent["proc"].pid)
    time.sleep(5)
    _, cpu1 = proc_stats(agent["proc"].pid)
    for s in socks:
        s.close()
    return rss_before, rss_connected, rss_after, (cpu1 - cpu0) / 5 * 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--murmur", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 11000:
        sys.exit(f"10,000 parked queries need 11,000 open files; this shell allows {hard}")
    agents = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            system = Murmur(args.murmur, args.key, workdir)
            # The 10,000 parked queries all come from 127.0.0.1: lift the per-client cap
            # (200 by default, as Consul's http_max_conns_per_client).
            system.extra = lambda i: ["--http-max-conns-per-client", "20000", "--http-max-conns", "20000"]
            start_cluster(system, 3, agents)
            register(agents)
            rps, p99 = http_load(agents[0], args.seconds)
            qps, lost = dns_load(agents[0], args.seconds, workdir)
            local = wakeup(agents[1], agents[1], 20)
            remote = wakeup(agents[0], agents[1], 20)
            before, connected, after, idle_cpu = idle_queries(agents[2], 10000)
        finally:
            stop(agents)
    print(f"Command: `bench/api.sh` ({args.seconds} s per load run; wrk -t2 -c64; dnsperf -c4 -e)\n")
    print("| metric | murmur | goal |")
    print("|---|---|---|")
    print(f"| /v1/health/service/svc7?passing, requests/s (20 of 1,000 instances) | {rps:,.0f} | ≥ 30,000 |")
    print(f"| same, p99 latency (ms) | {p99:.2f} | < 5 |")
    print(f"| DNS SRV svcN.service.consul, queries/s (lost: {lost}) | {qps:,.0f} | ≥ 20,000 |")
    print(f"| blocking KV query woken by a write on the same agent, median / max (ms) | {local[0]:.2f} / {local[1]:.2f} | ≤ 5 |")
    print(f"| same, write made on another agent (replication included), median / max (ms) | {remote[0]:.2f} / {remote[1]:.2f} | |")
    print(f"| 10,000 idle blocking queries, extra RSS (MiB) | {(after - before) / 1024:.1f} | < 50 |")
    print(f"| of which the 10,000 open connections alone (MiB) | {(connected - before) / 1024:.1f} | |")
    print(f"| 10,000 idle blocking queries, agent CPU while they wait (% of a core) | {idle_cpu:.1f} | |")


if __name__ == "__main__":
    main()
