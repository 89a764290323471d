#!/usr/bin/env bash
# What checking an ACL token costs on a catalog read: ACLs off and on side by side in one run.
# Usage: bench/acl.sh [SECONDS per round, default 10]. Prints Markdown for BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
python3 bench/acl.py --murmur target/release/murmur --key "$KEY" --seconds "${1:-10}"
