#!/usr/bin/env bash
# Federation on the simulator (not a timed test): the built-in 'federation' scenario at 5
# datacenters x 200 nodes (40-120 ms WAN, 1% loss) for a few seeds -- a global write's spread
# to every node of every datacenter, the WAN cut and heal, a gateway's replacement -- then the
# idle WAN bytes per datacenter-second as datacenters grow from 10 to 1,000 nodes
# (bench/wan-growth.toml: two datacenters). Each line is one seeded run; max RSS and wall time
# from /usr/bin/time. Usage: bench/federation_sim.sh [SEEDS] (default 1..4).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
seeds="${1:-1..4}"
run() { /usr/bin/time -f '  max RSS %M KB, %e s wall' target/release/murmur sim "$@"; }
echo "== 5 datacenters x 200 nodes, seeds $seeds"
run --scenario federation --nodes 1000 --seeds "$seeds"
for per_dc in 10 100 1000; do
  echo "== 2 datacenters x $per_dc nodes"
  run --scenario bench/wan-growth.toml --nodes $((2 * per_dc)) --seed 1
done
