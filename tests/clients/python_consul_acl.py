"""python3-consul against murmur agents with ACLs on (default deny): a token given as
`token=` to the client reaches what its policy allows and nothing else.

Usage: python_consul_acl.py HTTP_PORT TOKEN. TOKEN may write keys under app/ only.
"""
import sys

import consul

port, token = int(sys.argv[1]), sys.argv[2]
allowed = consul.Consul(host="127.0.0.1", port=port, token=token)
anonymous = consul.Consul(host="127.0.0.1", port=port)

assert allowed.kv.put("app/color", "blue") is True
index, entry = allowed.kv.get("app/color")
assert entry["Value"] == b"blue", entry

for who, client in (("the token", allowed), ("no token", anonymous)):
    try:
        client.kv.put("other", "x")
    except consul.ACLPermissionDenied:
        pass
    else:
        sys.exit(f"{who} wrote outside app/")

# The token given per call wins over the client's.
index, entry = anonymous.kv.get("app/color", token=token)
assert entry["Value"] == b"blue", entry
print("python-consul with ACL tokens: ok")
