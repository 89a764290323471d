#!/usr/bin/env bash
# Membership benchmark, murmur vs Debian's serf, side by side on loopback.
# Usage: bench/membership.sh [SIZES] (default 32,64). Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v serf >/dev/null || { apt-get update -qq && apt-get install -y -qq serf; }
python3 -c 'import msgpack' 2>/dev/null || python3 -m pip install -q msgpack
cargo build --release --quiet

# Hundreds of agents' file descriptors and ports on one machine.
ulimit -n 65536 2>/dev/null || true
KEY=$(target/release/murmur keygen)
python3 bench/membership.py --murmur target/release/murmur --key "$KEY" --sizes "${1:-32,64}"
