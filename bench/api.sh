#!/usr/bin/env bash
# API benchmark: HTTP health reads (wrk), DNS SRV lookups (dnsperf), blocking-query wake-up and
# the memory of 10,000 idle blocking queries, on three agents holding 1,000 instances of 50
# services. Usage: bench/api.sh [SECONDS per load run, default 10]. Prints Markdown for
# BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
command -v wrk >/dev/null && command -v dnsperf >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq wrk dnsperf; }
python3 bench/api.py --murmur target/release/murmur --key "$KEY" --seconds "${1:-10}"
