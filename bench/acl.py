#!/usr/bin/env python3
"""What checking a token costs (issue 18): /v1/health/service/svc7?passing under wrk on three
agents holding 1,000 instances, ACLs off and on side by side in one run.

The two clusters run one after the other, on the same machine, with the same data. The ACL
cluster uses --acl-default-policy allow, so the benchmark's setup (registrations) needs no
token. The measured requests carry a token whose policy reads every service and node, so each
one is resolved: the header is read, the secret hashed, the cached authorizer found, and the
rules decide. Rounds alternate off, on, off, on, so that drift hits both sides alike.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from api import call, http_load, register  # noqa: E402
from membership import Murmur, start_cluster, stop  # noqa: E402

READ_ALL = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'


def token_for(agent):
    """Bootstraps, then makes a read-everything policy and a token with it."""
    _, body = call(agent, "PUT", "/v1/acl/bootstrap")
    management = json.loads(body)["SecretID"]

    def as_management(method, path, data):
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{agent['api']}{path}", data=data,
                                     method=method, headers={"X-Consul-Token": management})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    as_management("PUT", "/v1/acl/policy",
                  json.dumps({"Name": "read-all", "Rules": READ_ALL}).encode())
    token = as_management("PUT", "/v1/acl/token",
                          json.dumps({"Policies": [{"Name": "read-all"}]}).encode())
    return token["SecretID"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--murmur", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as workdir:
        clusters = {}
        try:
            for mode in ("off", "on"):
                os.makedirs(f"{workdir}/{mode}")
                system = Murmur(args.murmur, args.key, f"{workdir}/{mode}")
                if mode == "on":
                    system.extra = lambda i: ["--acl-enabled", "--acl-default-policy", "allow"]
                agents = []
                clusters[mode] = agents
                start_cluster(system, 3, agents)
                register(agents)
            token = token_for(clusters["on"][0])
            for _ in range(args.rounds):
                results["off"].append(http_load(clusters["off"][0], args.seconds))
                results["on"].append(http_load(clusters["on"][0], args.seconds, token))
        finally:
            for agents in clusters.values():
                stop(agents)
    off = sum(r for r, _ in results["off"]) / len(results["off"])
    on = sum(r for r, _ in results["on"]) / len(results["on"])
    p99_off = max(p for _, p in results["off"])
    p99_on = max(p for _, p in results["on"])
    print(f"Command: `bench/acl.sh {args.seconds}` ({args.rounds} alternating rounds of "
          f"{args.seconds} s each; wrk -t2 -c64)\n")
    print("| /v1/health/service/svc7?passing | ACLs off | ACLs on (token checked) | on / off |")
    print("|---|---|---|---|")
    print(f"| requests/s (mean of rounds) | {off:,.0f} | {on:,.0f} | {on / off:.2f} |")
    print(f"| p99 latency, worst round (ms) | {p99_off:.2f} | {p99_on:.2f} | |")


if __name__ == "__main__":
    main()
