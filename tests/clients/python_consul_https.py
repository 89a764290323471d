"""python3-consul against a murmur agent's HTTPS API (--https-addr with --tls-verify-incoming):
with the CA and a client certificate it reads and writes; without the certificate the agent
refuses the connection.

Usage: python_consul_https.py HTTPS_PORT CA_FILE CLIENT_CERT CLIENT_KEY
"""
import sys

import consul
import requests

port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
client = consul.Consul(host="127.0.0.1", port=port, scheme="https", verify=ca, cert=(cert, key))
assert client.kv.put("tls/greeting", "hello") is True
index, entry = client.kv.get("tls/greeting")
assert entry["Value"] == b"hello", entry
assert client.agent.self()["Config"]["NodeName"], "agent/self over HTTPS"

stranger = consul.Consul(host="127.0.0.1", port=port, scheme="https", verify=ca)
try:
    stranger.kv.get("tls/greeting")
except requests.exceptions.RequestException:
    pass
else:
    sys.exit("a client without a certificate was served")
print("python-consul over HTTPS with client certificates: ok")
