#!/usr/bin/env bash
# Run with: examples/loadgen/bench.sh [OUT_DIR]
# Every measurement of docs/benchmarks.md, one after another (about 12 minutes on
# 2 cores). Each run prints human lines and one JSON line; OUT_DIR keeps them.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/bench}"
mkdir -p "$out"
cargo build --release -p natter --bin natterd
cargo build --release -p natter-loadgen
L="$PWD/target/release/natter-loadgen"
N="$PWD/target/release/natterd"

run() { # name, args...
  local name=$1; shift
  echo "== $name: natter-loadgen $*" >&2
  "$L" "$@" --natterd "$N" 2>"$out/$name.log" | tee "$out/$name.txt"
}

# Single node (embedded, no NATS)
run fanout-embedded-p1 fanout --members 100 --senders 10 --pipeline 1 --duration 20s
run fanout-embedded-p8 fanout --members 100 --senders 10 --pipeline 8 --duration 20s
for i in 1 2 3; do run idle-embedded-$i idle --connections 10000; done
run replay-embedded replay --messages 10000

# NATS: all-in-one on JetStream, and a core with two gateways
for t in nats split; do
  run fanout-$t-p1 fanout --topology $t --members 100 --senders 10 --pipeline 1 --duration 20s
done

# Federation: the chat split 50/50 between two peered nodes (alpha, its home,
# and beta), then a peer catching up on 10,000 events queued while it was down.
# Twice each: on 2 shared cores one run is noisy.
for i in 1 2; do
  run fanout-federated-p1-$i fanout --topology federated --members 100 --senders 10 --pipeline 1 --duration 20s
done
for i in 1 2; do run catchup-$i catchup --events 10000; done

# Cost of one delivery with 1,000 and 10,000 connected devices (light load, so
# the node is not saturated and the cost is the work per delivery). Twice each:
# on 2 shared cores one run is noisy.
for t in embedded split; do
  for n in 1000 10000; do
    for i in 1 2; do
      run cost-$t-$n-$i fanout --topology $t --members 100 --senders 2 --pipeline 1 --duration 20s --idle-devices $n
    done
  done
done
