#!/usr/bin/env bash
# Rewrites link/hot-text.ld, the list of functions an agent runs that the linker places together
# (bench/hot_functions.py says why and how). Run it after changes that move much code, then
# compare an idle agent's memory with bench/idle_rss.sh (BENCHMARKS.md, "Memory of one idle agent").
# Usage: bench/hot_functions.sh
source "$(dirname "$0")/setup.sh"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
cargo build --release --quiet --example tcp_probe
python3 bench/hot_functions.py --murmur target/release/murmur --out link/hot-text.ld
