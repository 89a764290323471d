#!/usr/bin/env bash
# Replication benchmark: murmur KV writes vs Debian's serf events, side by side on loopback;
# then anti-entropy repair and memory with 10,000 instances and 100,000 keys.
# Usage: bench/replication.sh [SIZES] (default 32,64). Prints Markdown for BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
python3 bench/replication.py --murmur target/release/murmur --key "$KEY" --sizes "${1:-32,64}"
