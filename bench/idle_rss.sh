#!/usr/bin/env bash
# Resident memory of an idle agent, for each binary given, one after the other on loopback:
# a `--dev` agent 20 s after start, and a member of a two-agent cluster (encrypted gossip, data
# dirs) 20 s after it joined. Prints VmRSS, RssAnon and the binary's resident text (KiB).
# Usage: bench/idle_rss.sh [BINARY...] (default: target/release/murmur, built first)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then cargo build --release --quiet; set -- target/release/murmur; fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
report() { # LABEL PID
    local text
    text=$(awk '/^[0-9a-f]+-/ { x = ($2 == "r-xp" && $6 ~ /murmur/) } /^Rss:/ { if (x) print $2 }' /proc/$2/smaps)
    printf "%-8s VmRSS %6s  RssAnon %6s  text %6s\n" "$1" \
        "$(awk '/VmRSS/ {print $2}' /proc/$2/status)" "$(awk '/RssAnon/ {print $2}' /proc/$2/status)" "$text"
}
for binary in "$@"; do
    dir=$(mktemp -d)
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
    echo "$binary"
    "$binary" agent --dev --bind "127.0.0.1:$(port)" --http-addr "127.0.0.1:$(port)" \
        --dns-addr "127.0.0.1:$(port)" >/dev/null 2>&1 & pids=($!)
    sleep 20; report dev "${pids[0]}"; kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
    key=$("$binary" keygen); seed=$(port)
    "$binary" agent --node seed --bind "127.0.0.1:$seed" --http-addr "127.0.0.1:$(port)" \
        --dns-addr "127.0.0.1:$(port)" --data-dir "$dir/seed" --encrypt "$key" >/dev/null 2>&1 & pids=($!)
    sleep 1
    "$binary" agent --node member --bind "127.0.0.1:$(port)" --http-addr "127.0.0.1:$(port)" \
        --dns-addr "127.0.0.1:$(port)" --data-dir "$dir/member" --encrypt "$key" \
        --join "127.0.0.1:$seed" >/dev/null 2>&1 & pids+=($!)
    sleep 20; report member "${pids[1]}"
    kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
    rm -rf "$dir"; trap - EXIT
done
