#!/usr/bin/env bash
# Proxy benchmark: direct TCP, a haproxy mTLS pair, a stunnel4 mTLS pair and murmur's sidecar
# pair, side by side on loopback: round-trip latency, new-connection latency, iperf3 throughput
# (1 and 64 flows), proxy CPU per round trip and per GB, and memory; then murmur's pair with
# --busy-poll 50us and haproxy's with busy-polling. Usage: bench/proxy.sh [SECONDS per iperf3
# run, default 5]. Prints Markdown for BENCHMARKS.md.
source "$(dirname "$0")/setup.sh"
for tool in haproxy stunnel4 iperf3 openssl; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy stunnel4 iperf3 openssl; break; }
done
cargo build --release --quiet --example tcp_probe --example mesh_probe --example udp_relay_floor
python3 bench/proxy.py --murmur target/release/murmur --seconds "${1:-5}" --busy-poll 50us --gateways
