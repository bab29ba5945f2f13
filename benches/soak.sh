#!/usr/bin/env bash
# Soak and footprint: a million clean requests through a real axum server on 127.0.0.1 with the
# leak layer, for each allocator mode (exact, sampled at 512 KiB, none), then 10 000 requests
# held in flight at once. Each run prints and checks: the registry back to 0 entries, no leak
# report, RSS growth under 5 MB after a warm-up of 50 000 requests, and the detector's own heap
# bytes per request in flight (at most 1 KiB; measured with a tracking allocator only).
#
#   bash benches/soak.sh              # about a minute per mode on 2 cores
#
# Client and server share the process, on 127.0.0.1 only; each run stops by itself. CI does
# not run it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --example soak_exact --example soak_sampled --example soak_layer
status=0
for mode in exact sampled layer; do
  "target/release/examples/soak_$mode" || status=1
done
exit "$status"
