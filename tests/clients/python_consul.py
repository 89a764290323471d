"""Drives two murmur agents with Debian's python3-consul, a real Consul client library.

Usage: python_consul.py HTTP_PORT_A HTTP_PORT_B. Exits non-zero with a message on the first
thing that does not work as it does against Consul.
"""
import sys
import threading
import time

import consul

a = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
b = consul.Consul(host="127.0.0.1", port=int(sys.argv[2]))


def eventually(what, probe, limit=30):
    deadline = time.time() + limit
    while True:
        got = probe()
        if got:
            return got
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


# A service with a TTL check, registered on A, healthy on B once the check passes.
assert a.agent.service.register(
    "web", service_id="web-1", port=8080, tags=["v1"], check=consul.Check.ttl("30s")
)
assert "web-1" in a.agent.services()
assert a.agent.checks()["service:web-1"]["Status"] == "critical", a.agent.checks()
_, nodes = b.health.service("web", passing=True)
a.agent.check.ttl_pass("service:web-1", notes="ok")
nodes = eventually("web passing on B", lambda: b.health.service("web", passing=True)[1])
assert nodes[0]["Service"]["Port"] == 8080, nodes
assert nodes[0]["Service"]["Tags"] == ["v1"], nodes
_, services = b.catalog.services()
assert services.get("web") == ["v1"], services

# KV: put, get, flags, recurse, keys, cas, delete.
assert a.kv.put("app/color", "blue")
assert a.kv.put("app/size", "10", flags=7)
eventually("app/size on B", lambda: b.kv.get("app/size")[1])
_, item = b.kv.get("app/color")
assert item["Value"] == b"blue", item
_, item = b.kv.get("app/size")
assert item["Flags"] == 7, item
_, items = b.kv.get("app/", recurse=True)
assert [i["Key"] for i in items] == ["app/color", "app/size"], items
_, keys = b.kv.get("app/", keys=True)
assert keys == ["app/color", "app/size"], keys
_, item = a.kv.get("app/color")
assert a.kv.put("app/color", "red", cas=item["ModifyIndex"])
assert not a.kv.put("app/color", "green", cas=item["ModifyIndex"]), "a stale cas must fail"
assert a.kv.put("app/new", "x", cas=0)
assert not a.kv.put("app/new", "y", cas=0), "cas=0 creates only"
assert a.kv.delete("app/size")
assert a.kv.get("app/size")[1] is None

# A blocking query on B returns when a write made on A arrives.
index, _ = b.kv.get("app/watched")
threading.Timer(0.5, lambda: a.kv.put("app/watched", "now")).start()
started = time.time()
_, item = b.kv.get("app/watched", index=index, wait="20s")
took = time.time() - started
assert item is not None and item["Value"] == b"now", item
assert took < 10, f"the blocking query took {took:.1f}s"

# An external service through the catalog, as consul-esm registers them.
assert a.catalog.register(
    "rds",
    "10.1.2.3",
    service={"ID": "pg1", "Service": "pg", "Port": 5432},
    check={"CheckID": "pg1-alive", "Name": "pg", "Status": "passing", "ServiceID": "pg1"},
)
nodes = eventually("pg passing on B", lambda: b.health.service("pg", passing=True)[1])
assert nodes[0]["Node"]["Address"] == "10.1.2.3", nodes
assert b.catalog.node("rds")[1]["Services"]["pg1"]["Port"] == 5432
assert b.catalog.deregister("rds", service_id="pg1")
eventually("pg gone on A", lambda: not a.catalog.service("pg")[1])
assert a.catalog.deregister("rds")
eventually("rds gone on B", lambda: b.catalog.node("rds")[1] is None)

assert a.agent.service.deregister("web-1")
eventually("web gone on B", lambda: not b.catalog.service("web")[1])
print("python-consul: all good")
