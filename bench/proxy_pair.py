#!/usr/bin/env python3
"""What one workload costs murmur's sidecar pair (issue 6's profiling harness).

Starts the pair as bench/proxy.py does (a dev agent, the app's sidecar, a client sidecar with
an upstream), runs one workload against the upstream, and prints per operation: the proxies'
CPU time (from /proc/<pid>/stat, inbound then upstream) and the UDP datagrams the machine sent
(/proc/net/snmp, so run nothing else meanwhile).

  connect N    N new connections, each with a 1-byte round trip (examples/tcp_probe)
  pingpong N   N round trips of 64 bytes on one connection (examples/tcp_probe)
  iperf S      one iperf3 flow for S seconds (CPU then in cores, datagrams per second)

--strace writes `strace -c -f` summaries of both proxies to /tmp/proxy_pair.strace.<pid>;
--wrap runs the client under a command, e.g. --wrap "perf record -a -g -F 1999 -o F".
Build the probe first (`cargo build --release --example tcp_probe`). Loopback only; every
process started is stopped at the end.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import proxy  # noqa: E402
from membership import free_port, proc_stats  # noqa: E402


def udp_sent():
    with open("/proc/net/snmp") as f:
        udp = [line.split() for line in f if line.startswith("Udp:")]
    return int(udp[1][udp[0].index("OutDatagrams")])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--murmur", required=True)
    ap.add_argument("mode", choices=["connect", "pingpong", "iperf"])
    ap.add_argument("count", type=int)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--wrap", default="")
    args = ap.parse_args()
    procs = proxy.Procs()
    tracers = []
    try:
        d = tempfile.mkdtemp()
        app, upstream = free_port(), free_port()
        if args.mode == "iperf":
            procs.start(["iperf3", "-s", "-p", str(app)], os.path.join(d, "iperf.log"))
        else:
            procs.start([proxy.PROBE, "echo", f"127.0.0.1:{app}"], os.path.join(d, "echo.log"))
        pids = proxy.murmur_pair(args.murmur, d, procs, [(upstream, app)])
        if args.mode == "iperf":
            carries = lambda: subprocess.run(  # noqa: E731
                ["iperf3", "-c", "127.0.0.1", "-p", str(upstream), "-n", "1K"],
                capture_output=True).returncode == 0
        else:
            carries = lambda: proxy.ready(upstream)  # noqa: E731
        proxy.wait_for(carries, 30, "the murmur path to carry bytes")
        if args.strace:
            for pid in pids:
                tracers.append(subprocess.Popen(
                    ["strace", "-c", "-f", "-p", str(pid), "-o", f"/tmp/proxy_pair.strace.{pid}"]))
            time.sleep(1)
        if args.mode == "iperf":
            cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(upstream), "-t", str(args.count)]
        else:
            cmd = [proxy.PROBE, args.mode, f"127.0.0.1:{upstream}", str(args.count)]
        cmd = shlex.split(args.wrap) + (["--"] if args.wrap else []) + cmd
        cpu0, sent0, t0 = [proc_stats(p)[1] for p in pids], udp_sent(), time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        cpu1, sent1, wall = [proc_stats(p)[1] for p in pids], udp_sent(), time.time() - t0
        if args.mode == "iperf":
            print(next(line for line in out.splitlines() if "receiver" in line).strip())
            print(f"proxies' CPU (inbound, upstream): " +
                  ", ".join(f"{(b - a) / wall:.2f}" for a, b in zip(cpu0, cpu1)) +
                  f" of a core; UDP datagrams per s: {(sent1 - sent0) / wall:.0f}")
        else:
            print(f"p50 / p99 (us): {out.strip()}; wall {wall:.2f} s")
            print("proxies' CPU per operation (inbound, upstream): " +
                  ", ".join(f"{(b - a) * 1e6 / args.count:.0f} us" for a, b in zip(cpu0, cpu1)) +
                  f"; UDP datagrams per operation: {(sent1 - sent0) / args.count:.2f}")
    finally:
        for t in tracers:
            t.terminate()
            t.wait()
        procs.stop()


if __name__ == "__main__":
    main()
