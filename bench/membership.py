#!/usr/bin/env python3
"""Membership benchmark: murmur and serf side by side, same N, same machine, same workload.

For each system and each N it starts N agents on loopback (all joined through one seed, gossip
encrypted with one key, LAN timing profile), then measures:
  join      time from launching the N-1 joiners until every agent lists N alive members
  event     time from firing a user event on agent 0 until each agent has it (p50, max)
  detect    time from kill -9 of an agent until each survivor lists it failed; 5 kills in a
            row, reported as the median over kills of each kill's p50 and max (the host is
            alive: it answers datagrams to the dead port with ICMP port unreachable)
  silent    the same for an agent stopped with SIGSTOP (a silent host: nothing answers);
            3 in a row
  mass kill a tenth of the remaining agents killed -9 at once: time until each survivor lists
            every one of them failed (p50, max over survivors)
  rss       resident memory per agent after convergence and an idle spell (mean, MiB), and
            of it the anonymous part (heap and stacks; the rest is the binary's pages, which
            agents on one host share)
  pss       proportional memory per agent (mean, MiB): its own pages plus its share of the
            pages it shares with the other agents (the binary's), what each agent costs the host
  idle cpu  CPU per agent over an idle window (mean, % of one core)
  traffic   bytes and packets per agent per second over the same idle window, read from the
            loopback interface's counters (IP headers included, UDP and TCP): what membership
            upkeep costs the network; nothing else runs on loopback meanwhile

If a system's agents do not converge within --join-limit, its join is reported as not converged,
the idle figures (memory, CPU, traffic) are still measured in the state it reached, and the
rest of its run is skipped.

Membership is polled the same way for both (one poller thread per agent, every 20 ms, over each
system's own API: murmur's HTTP, serf's msgpack RPC). Polling has a floor: with hundreds of
agents the pollers share Python's one interpreter lock and the machine's cores with the agents,
and one round over 255 agents takes about half a second. So the detection figures are also
read from murmur's own logs (each agent's "member failed" line, stamped to the microsecond,
against the wall clock of the kill): the rows "by the agents' logs". serf's logs stamp whole
seconds, so serf has only the polled rows. Event arrival is pushed for both (murmur's
blocking query, serf's RPC event stream). Only loopback addresses are used; every process started
is killed at the end.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import msgpack

POLL = 0.02
# How long a cluster may take to converge after the joins (--join-limit).
JOIN_LIMIT = 120


_used_ports = set()


def free_port():
    """A port free for TCP and UDP on loopback, never handed out twice in one run."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def wait_for(cond, limit, what):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        status = {l.split(":")[0]: l.split()[1:] for l in f if ":" in l}
    rss_kib, anon_kib = int(status["VmRSS"][0]), int(status["RssAnon"][0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        pss_kib = next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
    return rss_kib, ticks / os.sysconf("SC_CLK_TCK"), anon_kib, pss_kib


def loopback_sent():
    """Bytes and packets the loopback interface has sent so far (each is received once too)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                fields = counters.split()
                return int(fields[8]), int(fields[9])
    raise RuntimeError("no loopback interface in /proc/net/dev")


class SerfRpc:
    """Minimal client for serf's msgpack RPC (handshake, members, event, stream)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.seq = 0
        self.call("handshake", {"Version": 1}, body=False)

    def _next(self):
        for obj in self.unpacker:
            return obj
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("serf rpc closed")
            self.unpacker.feed(data)
            for obj in self.unpacker:
                return obj

    def send(self, command, args=None):
        self.seq += 1
        payload = msgpack.packb({"Command": command, "Seq": self.seq})
        if args is not None:
            payload += msgpack.packb(args)
        self.sock.sendall(payload)
        return self.seq

    def call(self, command, args=None, body=True):
        self.send(command, args)
        header = self._next()
        if header.get("Error"):
            raise RuntimeError(header["Error"])
        return self._next() if body else None

    def members(self):
        return {m["Name"]: m["Status"] for m in self.call("members")["Members"]}

    def next_event(self):
        self._next()  # header
        return self._next()


class Murmur:
    name = "murmur"

    def __init__(self, binary, key, workdir):
        self.binary, self.key, self.workdir = binary, key, workdir
        self.extra = lambda i: []  # more flags for agent i

    def start(self, i, seed):
        gossip, http, dns = free_port(), free_port(), free_port()
        cmd = [self.binary, "agent", "--node", f"n{i}", "--bind", f"127.0.0.1:{gossip}",
               "--http-addr", f"127.0.0.1:{http}", "--dns-addr", f"127.0.0.1:{dns}",
               "--data-dir", f"{self.workdir}/m{i}", "--encrypt", self.key]
        if seed:
            cmd += ["--join", seed]
        cmd += self.extra(i)
        env = dict(os.environ, MURMUR_LOG="warn")
        log = open(f"{self.workdir}/agent{i}.log", "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        return {"proc": proc, "gossip": f"127.0.0.1:{gossip}", "api": http, "dns": dns,
                "log": log.name}

    def _get(self, agent, path, timeout=5):
        with urllib.request.urlopen(f"http://127.0.0.1:{agent['api']}{path}", timeout=timeout) as r:
            return r.headers, json.load(r)

    def ready(self, agent):
        try:
            self._get(agent, "/v1/agent/self")
            return True
        except OSError:
            return False

    def members(self, agent):
        _, members = self._get(agent, "/v1/agent/members")
        return {m["Name"]: {1: "alive", 2: "leaving", 3: "left", 4: "failed"}.get(m["Status"]) for m in members}

    def event_waiter(self, agent):
        headers, _ = self._get(agent, "/v1/event/list")
        index = headers["X-Consul-Index"]

        def wait():
            while True:
                _, events = self._get(agent, f"/v1/event/list?index={index}&wait=60s", timeout=70)
                if any(e["Name"] == "bench" for e in events):
                    return
        return wait

    def fire(self, agent):
        req = urllib.request.Request(f"http://127.0.0.1:{agent['api']}/v1/event/fire/bench", data=b"x", method="PUT")
        urllib.request.urlopen(req, timeout=5).read()

    def logged_failure(self, agent, name):
        """When `agent` declared `name` failed, by its own log (Unix time; microseconds), or
        None. Exact where polling is not: 255 pollers on 2 cores take ~0.5 s per round."""
        with open(agent["log"]) as log:
            for line in log:
                if "member failed" in line and f" member={name} " in line:
                    stamp = line.split()[0].replace("Z", "+00:00")
                    return datetime.datetime.fromisoformat(stamp).timestamp()
        return None


class Serf:
    name = "serf"

    def __init__(self, binary, key, workdir, log_level="warn"):
        self.binary, self.key, self.workdir, self.log_level = binary, key, workdir, log_level

    def start(self, i, seed):
        gossip, rpc = free_port(), free_port()
        cmd = [self.binary, "agent", "-node", f"n{i}", "-bind", f"127.0.0.1:{gossip}",
               "-rpc-addr", f"127.0.0.1:{rpc}", "-encrypt", self.key, "-log-level", self.log_level]
        if seed:
            cmd += ["-join", seed]
        log = open(f"{self.workdir}/agent{i}.log", "w")
        # serf logs to stdout.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return {"proc": proc, "gossip": f"127.0.0.1:{gossip}", "api": rpc}

    def ready(self, agent):
        try:
            SerfRpc(agent["api"]).sock.close()
            return True
        except OSError:
            return False

    def members(self, agent):
        if "rpc" not in agent:
            agent["rpc"] = SerfRpc(agent["api"])
        return agent["rpc"].members()

    def event_waiter(self, agent):
        rpc = SerfRpc(agent["api"])
        rpc.call("stream", {"Type": "user"}, body=False)

        def wait():
            while rpc.next_event().get("Name") != "bench":
                pass
        return wait

    def fire(self, agent):
        SerfRpc(agent["api"]).call("event", {"Name": "bench", "Payload": b"x", "Coalesce": False}, body=False)


def poll_until(system, agents, cond, limit):
    """Starts one poller per agent; returns each agent's first time `cond(members)` held."""
    times = [None] * len(agents)

    def poll(i):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                if cond(system.members(agents[i])):
                    times[i] = time.monotonic()
                    return
            except (OSError, ConnectionError, RuntimeError):
                pass
            time.sleep(POLL)

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if None in times:
        dead = [i for i, a in enumerate(agents) if a["proc"].poll() is not None]
        logs = "".join(open(f"{system.workdir}/agent{i}.log").read()[-600:] for i in dead[:3])
        raise RuntimeError(f"{system.name}: {times.count(None)} agents never met the condition; "
                           f"exited agents: {dead}\n{logs}")
    return times


def start_cluster(system, n, agents):
    """Starts n agents joined through the first, appending them to `agents` (so the caller can
    stop them whatever happens); returns the time from launching the joiners until every agent
    lists all n alive."""
    seed = system.start(0, None)
    agents.append(seed)
    wait_for(lambda: system.ready(seed), 20, "seed")
    t0 = time.monotonic()
    for i in range(1, n):
        agents.append(system.start(i, seed["gossip"]))
    names = {f"n{i}" for i in range(n)}
    times = poll_until(system, agents, lambda m: all(m.get(x) == "alive" for x in names), JOIN_LIMIT)
    return max(times) - t0


def spread(n, waiters, fire, limit=30):
    """Starts one thread per waiter (each returns when its agent has the news), fires, and
    returns the sorted delays from firing to each arrival."""
    arrivals = [None] * n

    def wait(i):
        waiters[i]()
        arrivals[i] = time.monotonic()

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    fire()
    for t in threads:
        t.join(limit)
    if None in arrivals:
        raise RuntimeError(f"missed by {arrivals.count(None)} agents")
    return sorted(t - t0 for t in arrivals)


def stop(agents):
    """Kills every agent, then reaps them: killing one and waiting for it before the next took
    minutes for 256 serf agents on a loaded machine."""
    for a in agents:
        if a["proc"].poll() is None:
            a["proc"].send_signal(signal.SIGCONT)
            a["proc"].send_signal(signal.SIGKILL)
    for a in agents:
        a["proc"].wait()


def logged_delays(system, survivors, names, since):
    """Each survivor's delay from `since` (Unix time) until its log says it declared every one
    of `names` failed, sorted; None for a system whose logs do not say so precisely."""
    if not hasattr(system, "logged_failure"):
        return None
    delays = []
    for agent in survivors:
        stamps = [system.logged_failure(agent, name) for name in names]
        if None in stamps:
            return None
        delays.append(max(stamps) - since)
    return sorted(delays)


def detection(system, agents, alive, rounds, silence):
    """Silences `rounds` agents one after another with `silence(proc)`; returns the medians
    over rounds of each round's p50 and max time until every survivor lists it failed, as
    polled and (where the system logs it precisely) as logged."""
    polled, logged = [], []
    for _ in range(rounds):
        victim = alive[len(alive) // 2]
        vname = f"n{agents.index(victim)}"
        alive.remove(victim)
        t0, wall = time.monotonic(), time.time()
        silence(victim["proc"])
        times = sorted(t - t0 for t in poll_until(system, alive, lambda m: m.get(vname) == "failed", 120))
        polled.append(times)
        logged.append(logged_delays(system, alive, [vname], wall))
    return medians(polled), medians(logged)


def medians(rounds):
    """The medians over rounds of each round's p50, max and first (None if a round has no
    figures). The first survivor to know is when the news was found; the rest is its spread."""
    if not rounds or None in rounds:
        return None, None, None
    return (statistics.median(statistics.median(r) for r in rounds),
            statistics.median(r[-1] for r in rounds),
            statistics.median(r[0] for r in rounds))


def mass_kill(system, agents, alive, fraction):
    """Kills `fraction` of `alive` at once (spread over the list); returns the p50 and max over
    the survivors of the time until each lists every victim failed."""
    count = max(1, round(len(alive) * fraction))
    step = len(alive) / count
    victims = [alive[int(i * step)] for i in range(count)]
    names = [f"n{agents.index(v)}" for v in victims]
    for v in victims:
        alive.remove(v)
    t0, wall = time.monotonic(), time.time()
    for v in victims:
        v["proc"].kill()
    times = sorted(t - t0 for t in poll_until(
        system, alive, lambda m: all(m.get(name) == "failed" for name in names), 120))
    return medians([times]), medians([logged_delays(system, alive, names, wall)])


def idle_figures(agents, idle_secs):
    """Memory, CPU and loopback traffic per agent over an idle window."""
    n = len(agents)
    before = [proc_stats(a["proc"].pid) for a in agents]
    sent_before = loopback_sent()
    time.sleep(idle_secs)
    sent_after = loopback_sent()
    after = [proc_stats(a["proc"].pid) for a in agents]
    return {"rss": statistics.mean(a[0] for a in after) / 1024,
            "anon": statistics.mean(a[2] for a in after) / 1024,
            "pss": statistics.mean(a[3] for a in after) / 1024,
            "cpu": statistics.mean((a[1] - b[1]) / idle_secs * 100 for a, b in zip(after, before)),
            "bytes": (sent_after[0] - sent_before[0]) / idle_secs / n,
            "packets": (sent_after[1] - sent_before[1]) / idle_secs / n}


def run(system, n, idle_secs, kills, stops, mass):
    agents = []
    try:
        try:
            join = start_cluster(system, n, agents)
        except RuntimeError as e:
            print(f"   {system.name} did not converge: {str(e).splitlines()[0]}", file=sys.stderr)
            return {"join": None, **idle_figures(agents, idle_secs)}

        time.sleep(idle_secs / 2)
        idle = idle_figures(agents, idle_secs)

        waiters = [system.event_waiter(a) for a in agents]
        event = spread(n, waiters, lambda: system.fire(agents[0]))

        # Several rounds, one after another: when a victim is first probed is random, so one
        # round is one noisy sample. Report medians over rounds of the per-round p50 and max.
        alive = list(agents)
        detect = detection(system, agents, alive, kills, lambda p: p.kill())
        silent = detection(system, agents, alive, stops, lambda p: p.send_signal(signal.SIGSTOP))
        killed = mass_kill(system, agents, alive, mass)
        figures = {"join": join, "event_p50": statistics.median(event), "event_max": event[-1]}
        for name, (polled, logged) in [("detect", detect), ("silent", silent), ("mass", killed)]:
            figures.update({f"{name}_p50": polled[0], f"{name}_max": polled[1]})
            if logged[0] is not None:
                figures.update({f"{name}_log_p50": logged[0], f"{name}_log_max": logged[1],
                                f"{name}_log_first": logged[2]})
        return {**figures, **idle}
    finally:
        stop(agents)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--murmur", required=True)
    parser.add_argument("--serf", default=shutil.which("serf"))
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--idle", type=float, default=20.0, help="idle window for CPU, seconds")
    parser.add_argument("--kills", type=int, default=5, help="agents killed one after another per run")
    parser.add_argument("--stops", type=int, default=3, help="agents stopped (SIGSTOP) one after another per run")
    parser.add_argument("--mass-kill", type=float, default=0.1, help="fraction of the agents killed at once at the end")
    parser.add_argument("--key", required=True)
    parser.add_argument("--systems", default="murmur,serf", help="which systems to run (the table needs both)")
    parser.add_argument("--join-limit", type=float, default=120.0,
                        help="seconds the joined cluster may take to converge before the run fails")
    args = parser.parse_args()
    global JOIN_LIMIT
    JOIN_LIMIT = args.join_limit

    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        results = {}
        chosen = args.systems.split(",")
        for cls, binary in [(Murmur, args.murmur), (Serf, args.serf)]:
            if cls.name not in chosen:
                continue
            with tempfile.TemporaryDirectory() as work:
                system = cls(binary, args.key, work)
                print(f"-- {system.name}, N={n} ...", file=sys.stderr, flush=True)
                results[system.name] = run(system, n, args.idle, args.kills, args.stops, args.mass_kill)
                print(f"   {results[system.name]}", file=sys.stderr, flush=True)
        rows.append((n, results))

    metrics = [("join convergence (s)", "join"), ("event to all p50 (s)", "event_p50"),
               ("event to all max (s)", "event_max"), (f"failure detection p50 (s, median of {args.kills} kills)", "detect_p50"),
               (f"failure detection max (s, median of {args.kills} kills)", "detect_max"),
               (f"silent host detection p50 (s, median of {args.stops} SIGSTOPs)", "silent_p50"),
               (f"silent host detection max (s, median of {args.stops} SIGSTOPs)", "silent_max"),
               (f"{args.mass_kill:.0%} killed at once, all known failed p50 (s)", "mass_p50"),
               (f"{args.mass_kill:.0%} killed at once, all known failed max (s)", "mass_max"),
               ("failure detection p50 by the agents' logs (s)", "detect_log_p50"),
               ("failure detection max by the agents' logs (s)", "detect_log_max"),
               ("failure detection, first survivor to know, by the agents' logs (s)", "detect_log_first"),
               ("silent host detection p50 by the agents' logs (s)", "silent_log_p50"),
               ("silent host detection max by the agents' logs (s)", "silent_log_max"),
               (f"{args.mass_kill:.0%} killed at once, p50 by the agents' logs (s)", "mass_log_p50"),
               (f"{args.mass_kill:.0%} killed at once, max by the agents' logs (s)", "mass_log_max"),
               (f"{args.mass_kill:.0%} killed at once, first survivor to know all, by the agents' logs (s)", "mass_log_first"),
               ("RSS per agent (MiB)", "rss"),
               ("of which its own, not the binary's pages (MiB, RssAnon)", "anon"),
               ("PSS per agent: own pages plus its share of the shared ones (MiB)", "pss"),
               ("idle CPU per agent (% core)", "cpu"),
               ("idle traffic per agent (bytes/s on loopback)", "bytes"),
               ("idle traffic per agent (packets/s on loopback)", "packets")]
    if len(chosen) < 2:
        return
    print("| N | metric | murmur | serf | murmur/serf |")
    print("|---|---|---|---|---|")
    for n, results in rows:
        for label, key in metrics:
            m, s = results["murmur"].get(key), results["serf"].get(key)
            ratio = f"{m / s:.2f}" if m is not None and s else "n/a"
            print(f"| {n} | {label} | {shown(results['murmur'], key)} | "
                  f"{shown(results['serf'], key)} | {ratio} |")


def shown(results, key):
    """A figure for the table: a run that did not converge has a join time of None and only
    the idle figures."""
    if key not in results:
        return "not measured"
    return "did not converge" if results[key] is None else f"{results[key]:.3f}"


if __name__ == "__main__":
    main()
