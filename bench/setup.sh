# Sourced by the bench scripts: installs the peers and tools they compare against, builds
# murmur in release mode, and sets KEY to a fresh gossip key.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v serf >/dev/null || { apt-get update -qq && apt-get install -y -qq serf; }
command -v iptables >/dev/null || { apt-get update -qq && apt-get install -y -qq iptables; }
python3 -c 'import msgpack' 2>/dev/null || python3 -m pip install -q msgpack
cargo build --release --quiet

# Hundreds of agents' file descriptors and ports on one machine.
ulimit -n 65536 2>/dev/null || true
KEY=$(target/release/murmur keygen)
