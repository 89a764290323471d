#!/usr/bin/env bash
# A catalog of many instances over many real agents on loopback (issue 24: 172,000 instances
# over 256 agents, as Consul's Global Scale Benchmark pushed one change to 172,000 instances).
# Usage: bench/catalog.sh [AGENTS] [INSTANCES] (default 256 172000; 256 agents hold ~16 GB).
# Prints a Markdown table for BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
python3 bench/catalog.py --murmur target/release/murmur --key "$KEY" --agents "${1:-256}" \
  --instances "${2:-172000}" --join-limit 600
