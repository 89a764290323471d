#!/usr/bin/env python3
"""Lists the functions an agent runs, so that the linker places them together (link/hot-text.ld).

Why: every agent maps the whole binary, and the kernel maps file pages 64 KB at a time around
each page an agent touches (fault-around). Spread over 11 MB of text, the ~1,700 functions an
idle agent runs touched some 120 such windows: 8 of its 13 MiB of RSS. Placed together they
fill 2.4 MB.

How: agents run under valgrind's callgrind, which records every function executed, whatever
the inputs, where a sampling profiler would miss those that run once. Two runs: a `--dev`
agent (the README's first command) and an agent of a four-member cluster (encrypted gossip, a
data dir; one peer is killed, an event fired; then a sidecar carries TCP to a service on a
native peer). Each run is cut into phases (callgrind_control dumps): starting, idle (probes,
anti-entropy, coordinates, a peer's crash and an event), in use (the API calls, DNS lookups
and checks a user's tools make), leaving. The linker script puts first what idling ran (what
an agent keeps mapped once it has shed the code it ran to start: src/agent/shed.rs), then
what only starting ran, then what use ran, then what leaving ran, then the rest. Functions
are named by their symbols with the crate hashes of v0 mangling (.cargo/config.toml) as
globs, since those change whenever a dependency does; a function renamed since falls back to
the default placement, costing pages, never correctness.

Usage: bench/hot_functions.sh (builds, runs this, rewrites link/hot-text.ld). Loopback only;
every process it starts is stopped at the end.
"""

import argparse
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from membership import free_port  # noqa: E402
from proxy import PROBE  # noqa: E402
from replication import request  # noqa: E402

# How long an agent under callgrind (~50 times slower) may take to answer its API.
START_LIMIT = 180
# Idle spell: longer than anti-entropy's 10 s round and the coordinates' 15 s.
IDLE = 35


class Agent:
    """One agent process; `profile` is the callgrind output file if it runs under callgrind.
    `named`: whether it gets `--node NAME`; without, it takes the host's name, as most do."""

    def __init__(self, binary, workdir, name, flags, profile=None, named=True):
        self.http, self.dns, self.gossip = free_port(), free_port(), free_port()
        cmd = [binary, "agent", "--bind", f"127.0.0.1:{self.gossip}",
               "--http-addr", f"127.0.0.1:{self.http}", "--dns-addr", f"127.0.0.1:{self.dns}"]
        cmd += (["--node", name] if named else []) + flags
        if profile:
            cmd = ["valgrind", "--tool=callgrind", "--demangle=no",
                   f"--callgrind-out-file={profile}"] + cmd
        self.log = os.path.join(workdir, f"{name}.log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.profile, self.dumps = profile, {}

    def _profile_files(self):
        folder, base = os.path.split(self.profile)
        return {os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(base)}

    def dump(self, phase):
        """Writes what ran since the last dump to a file of its own, named after `phase`."""
        before = self._profile_files()
        subprocess.run(["callgrind_control", "--dump=" + phase, str(self.proc.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        deadline = time.time() + 60
        while not (new := self._profile_files() - before) and time.time() < deadline:
            time.sleep(0.2)
        if not new:
            sys.exit(f"callgrind wrote no dump for {phase}")
        self.dumps[phase] = new.pop()

    def phases(self):
        """Phase -> callgrind file, once stopped; the last one ("stop") is the graceful leave."""
        rest = self._profile_files() - set(self.dumps.values())
        return dict(self.dumps, stop=rest.pop()) if rest else dict(self.dumps)

    def call(self, method, path, body=None, timeout=60):
        """Status and body of one API request."""
        data = body.encode() if body is not None else None
        status, _, answer = request({"api": self.http}, method, path, data, timeout)
        return status, answer

    def wait_ready(self):
        deadline = time.time() + START_LIMIT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"agent exited early; its log: {self.log}")
            try:
                if self.call("GET", "/v1/agent/self", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        sys.exit(f"agent did not answer its API within {START_LIMIT} s; its log: {self.log}")

    def stop(self):
        """A graceful leave (SIGINT), so that the shutdown path is listed too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dns_query(port, name, qtype):
    """One DNS question over UDP (1 = A, 33 = SRV); the answer is not inspected."""
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", 0x4d4d, 0x0100, 1, 0, 0, 0) + question
    packet += struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(30)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            s.recvfrom(4096)
        except socket.timeout:
            print(f"  no DNS answer for {name}", file=sys.stderr)


def api_workload(agent, upstream_name=None):
    """What users' tools do against an agent: catalog, health, KV, events, DNS, metrics."""
    reads = ["/v1/agent/self", "/v1/agent/members", "/v1/agent/services", "/v1/agent/checks",
             "/v1/catalog/nodes", "/v1/catalog/services", "/v1/catalog/datacenters",
             "/v1/health/service/web", "/v1/health/state/any", "/v1/status/leader",
             "/v1/status/peers", "/v1/coordinate/nodes", "/v1/connect/ca/roots",
             "/v1/connect/intentions", "/v1/agent/metrics", "/v1/agent/metrics?format=prometheus",
             "/v1/event/list", "/v1/kv/?recurse", "/v1/catalog/service/web?passing"]
    writes = [("PUT", "/v1/kv/config/app/a", "1"), ("PUT", "/v1/kv/config/app/b", "2"),
              ("PUT", "/v1/kv/config/app/a?cas=0", "3"), ("GET", "/v1/kv/config/app/a", None),
              ("GET", "/v1/kv/config?keys", None), ("DELETE", "/v1/kv/config/app/b", None),
              ("PUT", "/v1/event/fire/deploy", "v2"),
              ("PUT", "/v1/agent/check/pass/service:web", None),
              ("GET", "/v1/kv/config/app/a?index=1&wait=1s", None)]
    for _ in range(2):
        for path in reads:
            agent.call("GET", path)
        for method, path, body in writes:
            agent.call(method, path, body)
        for name, qtype in [("web.service.consul", 1), ("web.service.consul", 33),
                            ("_web._tcp.service.consul", 33), ("nobody.service.consul", 1)]:
            dns_query(agent.dns, name, qtype)
    if upstream_name:
        agent.call("GET", f"/v1/health/connect/{upstream_name}")


def register_web(agent, upstream_port=None):
    connect = ""
    if upstream_port:
        connect = (', "Connect": {"SidecarService": {"Proxy": {"Upstreams": '
                   f'[{{"DestinationName": "db", "LocalBindPort": {upstream_port}}}]}}}}}}')
    status, text = agent.call("PUT", "/v1/agent/service/register",
                              '{"Name": "web", "ID": "web-1", "Port": 8080, '
                              '"Check": {"TTL": "60s"}' + connect + "}")
    if status != 200:
        sys.exit(f"registering web: {status} {text!r}")


def through_sidecar(port):
    """Round trips through web's upstream, to db's sidecar on the peer and the echo server
    behind it, retried until the sidecars are up; True once they carried them."""
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([PROBE, "pingpong", f"127.0.0.1:{port}", "10"],
                               capture_output=True, timeout=120)
        if probe.returncode == 0:
            return True
        time.sleep(1)
    return False


def run_dev(binary, workdir):
    agent = Agent(binary, workdir, "dev", ["--dev"], os.path.join(workdir, "dev.callgrind"),
                  named=False)
    try:
        agent.wait_ready()
        agent.dump("start")
        register_web(agent)
        api_workload(agent)
        agent.dump("use")
        time.sleep(IDLE)
        agent.dump("idle")
    finally:
        agent.stop()
    return agent.phases()


def run_cluster(binary, workdir):
    key = subprocess.run([binary, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    app_port = free_port()
    app = subprocess.Popen([PROBE, "echo", f"127.0.0.1:{app_port}"])
    flags = ["--encrypt", key, "--default-intention-policy", "allow"]
    peers = [Agent(binary, workdir, "peer0", flags + ["--data-dir", os.path.join(workdir, "peer0")])]
    agent = None
    try:
        peers[0].wait_ready()
        seed = ["--join", f"127.0.0.1:{peers[0].gossip}"]
        for i in (1, 2):
            peers.append(Agent(binary, workdir, f"peer{i}",
                               flags + seed + ["--data-dir", os.path.join(workdir, f"peer{i}")]))
        agent = Agent(binary, workdir, "agent",
                      flags + seed + ["--data-dir", os.path.join(workdir, "agent")],
                      os.path.join(workdir, "cluster.callgrind"))
        agent.wait_ready()
        agent.dump("start")
        # What every member of a cluster runs, bench/membership.sh's agents among them: idling,
        # answering polls of the members, a member's crash, a user event.
        time.sleep(IDLE)
        agent.call("GET", "/v1/agent/members")
        peers[2].proc.kill()
        peers[2].proc.wait()
        peers[0].call("PUT", "/v1/event/fire/deploy", "v1")
        time.sleep(IDLE)
        agent.dump("idle")
        status, text = peers[0].call("PUT", "/v1/agent/service/register",
                                     f'{{"Name": "db", "ID": "db-1", "Port": {app_port}, '
                                     '"Connect": {"SidecarService": {}}}')
        if status != 200:
            sys.exit(f"registering db: {status} {text!r}")
        upstream = free_port()
        register_web(agent, upstream)
        if not through_sidecar(upstream):
            print("  no bytes came back through the sidecars; listing what ran anyway",
                  file=sys.stderr)
        api_workload(agent, "db")
        agent.dump("use")
    finally:
        if agent:
            agent.stop()
        for peer in peers:
            peer.stop()
        app.kill()
        app.wait()
    return agent.phases()


def executed_functions(profile, binary):
    """Symbols of `binary` that ran, from a callgrind output file (names as in the symbol table)."""
    names, objects, ran, current = {}, {}, set(), None
    binary = os.path.realpath(binary)
    with open(profile) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^(c?)ob=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(3):
                    objects[m.group(2)] = m.group(3)
                if not m.group(1):
                    current = objects[m.group(2)]
                continue
            m = re.match(r"^(c?)fn=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                if not m.group(1) and current and os.path.realpath(current) == binary:
                    ran.add(m.group(2))
    # callgrind marks recursion depth with a suffix (f'2), and names code without a symbol
    # by its address or a description: only symbols name a function's section.
    ran = {re.sub(r"'\d+$", "", names[i]) for i in ran}
    return {name for name in ran if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.$]*", name)}


def section_pattern(symbol):
    """A function's symbol with rustc's hashes as globs: its input section is `.text.` and
    that, or `.text.unlikely.` and that if LLVM found it cold. The number LTO appends to a
    local function whose name another one has (`write_str.13002`) is a glob too: it shifts
    whenever code is added anywhere, and a stale number would leave that function in the rest."""
    symbol = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", symbol)  # v0 mangling's crate disambiguator
    return re.sub(r"\.\d+$", ".*", symbol)


def write_script(tiers, out):
    """The text, filled tier by tier (each function once, in its first tier), then the rest.
    It stays one section named `.text`: valgrind, for one, reads symbols only there."""
    placed = set()
    with open(out, "w") as f:
        f.write("/* Generated by bench/hot_functions.sh: the functions an agent ran under callgrind,\n"
                "   placed first in the text so that an agent touches few pages of the binary\n"
                "   (build.rs passes this script to the linker in release builds). */\n"
                "SECTIONS {\n  .text : {\n")
        for name, functions in tiers:
            patterns = sorted({section_pattern(fn) for fn in functions} - placed)
            f.write(f"    /* {name}: {len(patterns)} */\n")
            for p in patterns:
                f.write(f"    *(.text.{p} .text.unlikely.{p})\n")
            placed.update(patterns)
        f.write("    /* the rest */\n    *(.text .text.*)\n  }\n} INSERT BEFORE .init;\n")
    return len(placed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--murmur", required=True, help="release build of murmur")
    ap.add_argument("--out", required=True, help="linker script to write")
    ap.add_argument("--keep", metavar="DIR",
                    help="work in DIR and keep the callgrind files and logs there")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        d = args.keep or scratch
        os.makedirs(d, exist_ok=True)
        ran = {}  # phase -> functions, over both runs
        for name, run in [("dev agent", run_dev), ("agent of a cluster", run_cluster)]:
            print(f"profiling a {name} under callgrind ...", file=sys.stderr)
            for phase, profile in run(args.murmur, d).items():
                functions = executed_functions(profile, args.murmur)
                print(f"  {phase}: {len(functions)} functions ran", file=sys.stderr)
                ran.setdefault(phase, set()).update(functions)
    # What an agent keeps running comes first: idling (the pages an idle agent maps again
    # after shedding its start-up code); then what only starting ran, serving users and
    # sidecars, leaving.
    tiers = [("idle", ran["idle"]), ("starting", ran["start"]), ("in use", ran["use"]),
             ("leaving", ran.get("stop", set()))]
    count = write_script(tiers, args.out)
    print(f"{count} functions written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
