#!/usr/bin/env bash
# False failures under packet loss, murmur vs Debian's serf, each in a network namespace of its own.
# Usage: bench/lossy.sh [AGENTS] [LOSS] [SECONDS] (default 32 0.1 120); needs root.
# Prints a Markdown table for BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
command -v ip >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2; }
python3 bench/lossy.py --murmur target/release/murmur --key "$KEY" \
  --agents "${1:-32}" --loss "${2:-0.1}" --seconds "${3:-120}"
