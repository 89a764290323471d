#!/usr/bin/env python3
"""False positives under loss: murmur and serf side by side, in a network namespace where a
share of every packet is dropped.

A faster failure detector must not declare live members failed more often than serf does.
This runs each system in turn in a fresh network namespace of its own making (`ip netns`; its
loopback is the only interface, so nothing leaves it), N agents joined through one seed with
the LAN timing profile of bench/membership.py, and once they converged drops --loss of all
packets, UDP and TCP (iptables `statistic` match on the namespace's INPUT chain), for
--seconds. TCP is dropped too: memberlist's TCP fallback ping would otherwise never fail (with
60% of UDP dropped and TCP whole, serf raised no suspicion at all), and a lossy network loses
both. Counted over the lossy window (nothing is killed, so every failure is false):

  false failures   observer-summed: how many times an agent declared a live member failed
                   (murmur: its `member failed` log lines; serf: `EventMemberFailed` lines)
  members failed   distinct members some agent declared failed
  suspicions       murmur: observer-summed suspicions (`murmur_member_events_total{kind=
                   "suspect"}`, every agent counts every suspicion it hears); serf: the
                   suspicions its probers raised (memberlist's "Suspect ... has failed, no acks
                   received"; memberlist does not log suspicions it only hears), so the two are
                   not the same count
  converged after  whether every agent lists every member alive 20 s after the loss stops

Needs root (network namespaces, iptables). Every process started is killed and the namespace
deleted at the end.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from membership import Murmur, Serf, poll_until, start_cluster, stop  # noqa: E402

INSIDE = "MURMUR_LOSSY_NETNS"
SETTLE = 10.0
AFTER = 20.0


def drop_packets(action, loss):
    subprocess.run(["iptables", action, "INPUT", "-m", "statistic", "--mode", "random",
                    "--probability", str(loss), "-j", "DROP"], check=True)


def lines_from(path, offset, needle):
    with open(path, errors="replace") as f:
        f.seek(offset)
        return [line for line in f if needle in line]


def murmur_suspicions(agent):
    url = f"http://127.0.0.1:{agent['api']}/v1/agent/metrics?format=prometheus"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('murmur_member_events_total{kind="suspect"'))


def member_of(line, system):
    """The member a failure line names."""
    if system == "murmur":
        return line.split(" member=")[1].split()[0]
    return line.split("EventMemberFailed: ")[1].split()[0]


def run(system, n, loss, seconds):
    agents = []
    try:
        start_cluster(system, n, agents)
        time.sleep(SETTLE)
        logs = [f"{system.workdir}/agent{i}.log" for i in range(n)]
        offsets = [os.path.getsize(p) for p in logs]
        before = sum(murmur_suspicions(a) for a in agents) if system.name == "murmur" else 0
        drop_packets("-A", loss)
        try:
            time.sleep(seconds)
        finally:
            drop_packets("-D", loss)
        failed_needle = "member failed" if system.name == "murmur" else "EventMemberFailed"
        failures = [line for p, o in zip(logs, offsets) for line in lines_from(p, o, failed_needle)]
        if system.name == "murmur":
            suspicions = sum(murmur_suspicions(a) for a in agents) - before
        else:
            suspicions = sum(len(lines_from(p, o, "no acks received")) for p, o in zip(logs, offsets))
        names = {f"n{i}" for i in range(n)}
        try:
            poll_until(system, agents, lambda m: all(m.get(x) == "alive" for x in names), AFTER)
            converged = "yes"
        except RuntimeError as e:
            converged = f"no ({str(e).splitlines()[0]})"
        return {
            "false failures": len(failures),
            "members failed": len({member_of(line, system.name) for line in failures}),
            "suspicions": int(suspicions),
            "converged after": converged,
        }
    finally:
        stop(agents)


def inside(args):
    systems = []
    for name in args.systems.split(","):
        work = tempfile.mkdtemp(prefix=f"lossy-{name}-")
        if name == "murmur":
            systems.append(Murmur(args.murmur, args.key, work))
        else:
            # Its suspicions and failures are info lines.
            systems.append(Serf(args.serf, args.key, work, log_level="info"))
    print("| agents | loss | window (s) | metric | " + " | ".join(s.name for s in systems) + " |")
    print("|---|---|---|---|" + "---|" * len(systems))
    results = {}
    for system in systems:
        print(f"-- {system.name}, {args.agents} agents, {args.loss:.0%} of packets dropped for {args.seconds:.0f} s ...",
              file=sys.stderr, flush=True)
        results[system.name] = run(system, args.agents, args.loss, args.seconds)
        print(f"   {results[system.name]}", file=sys.stderr, flush=True)
        shutil.rmtree(system.workdir, ignore_errors=True)
    for metric in ["false failures", "members failed", "suspicions", "converged after"]:
        row = " | ".join(str(results[s.name][metric]) for s in systems)
        print(f"| {args.agents} | {args.loss:.0%} | {args.seconds:.0f} | {metric} | {row} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--murmur", required=True)
    parser.add_argument("--serf", default=shutil.which("serf"))
    parser.add_argument("--key", required=True, help="gossip key for both (murmur keygen)")
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--loss", type=float, default=0.1, help="share of packets dropped")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the loss lasts")
    parser.add_argument("--systems", default="murmur,serf")
    args = parser.parse_args()
    if os.environ.get(INSIDE):
        inside(args)
        return
    netns = f"murmur-lossy-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        env = dict(os.environ, **{INSIDE: "1"})
        code = subprocess.run(["ip", "netns", "exec", netns, sys.executable, *sys.argv], env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
