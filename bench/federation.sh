#!/usr/bin/env bash
# Federation benchmark: two datacenters of real agents on loopback (global write spread,
# ?dc= read latency against a local read, gateway replacement, WAN traffic as datacenters grow).
# Usage: bench/federation.sh [AGENTS_PER_DC] [SIZES] (default 16, 4,16,32). Prints a Markdown table.
source "$(dirname "$0")/setup.sh"
python3 bench/federation.py --murmur target/release/murmur --key "$KEY" --agents "${1:-16}" --sizes "${2:-4,16,32}"
