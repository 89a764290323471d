#!/usr/bin/env bash
# Membership benchmark, murmur vs Debian's serf, side by side on loopback.
# Usage: bench/membership.sh [SIZES] (default 32,64). Prints a Markdown table for BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
python3 bench/membership.py --murmur target/release/murmur --key "$KEY" --sizes "${1:-32,64}"
