"""Debian's python3-consul asking another datacenter through a murmur agent (`dc=`).

Usage: python_consul_dc.py HTTP_PORT DC SERVICE KEY VALUE: the agent at HTTP_PORT must not be
of DC; SERVICE must be registered in DC and KEY hold VALUE there.
"""
import sys

import consul

port, dc, service, key, value = sys.argv[1:6]
c = consul.Consul(host="127.0.0.1", port=int(port))

_, services = c.catalog.services(dc=dc)
assert service in services, services
_, local = c.catalog.services()
assert service not in local, local

_, entry = c.kv.get(key, dc=dc)
assert entry is not None and entry["Value"] == value.encode(), entry
_, entry = c.kv.get(key)
assert entry is None, entry

try:
    c.kv.get(key, dc="no-such-dc")
except consul.ConsulException as err:
    assert "No path to datacenter" in str(err), err
else:
    raise AssertionError("an unknown datacenter was answered")
print("ok")
