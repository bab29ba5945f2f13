#!/usr/bin/env bash
# Load benchmark: requests per second of an axum service under wrk, for
#   baseline           the system allocator, no leakwatch
#   baseline+thread    the same, plus a thread that only sleeps: glibc's malloc takes its
#                      arena locks once a process has a second thread (as with leakwatch's
#                      sweeper, or any multi-threaded runtime)
#   identity           tower's identity layer under Router::layer: what any middleware costs
#                      in axum before it does anything (axum boxes and clones per request)
#   ignored            LeakLayer with every route ignored: bodies wrapped, no scope
#   layer              LeakLayer alone (system allocator: memory not tracked)
#   allocator          TrackingAllocator alone (no layer: every block outside a request)
#   leakwatch          TrackingAllocator + LeakLayer (exact per-request attribution)
#   leakwatch+sites    the same, with allocation sites sampled every 512 KiB on average
#   sampled-alloc      TrackingAllocator in sampled mode (512 KiB) alone, no layer
#   sampled            TrackingAllocator in sampled mode + LeakLayer
#   tracking-allocator the tracking-allocator crate 0.4, an allocation group per request
# on a hello-world route and an allocation-heavy one. Server pinned to core 0 (one runtime
# thread), wrk to core 1; variants alternated within each round; medians over ROUNDS rounds.
#
#   bash benches/load.sh            # ROUNDS=5 DURATION=5 CONNECTIONS=32 by default
#   ROUTES=/alloc bash benches/load.sh   # one route only
#
# Everything listens on and is sent to 127.0.0.1 only; every server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-8099}
ROUTES=${ROUTES:-/hello /alloc}
# shellcheck source=benches/wrk_common.sh
. benches/wrk_common.sh

cargo build --release --quiet --example load_baseline --example load_leakwatch \
  --example load_sampled --example load_tracking_allocator

run() { # variant binary env route
  local variant=$1 bin=$2 env=$3 route=$4
  start_server "$bin" "$env"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT$route" >/dev/null # warm-up
  local rps
  rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT$route" \
    | awk '/Requests\/sec/ {print $2}')
  stop_server
  echo "$round $variant $route $rps" >> "$results"
  echo "  $variant $route: $rps req/s"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS"
  for route in $ROUTES; do
    run baseline load_baseline "LEAKWATCH_LAYER=off" "$route"
    run baseline+thread load_baseline "LOAD_IDLE_THREAD=1" "$route"
    run identity load_baseline "LEAKWATCH_LAYER=identity" "$route"
    run ignored load_baseline "LEAKWATCH_LAYER=ignored" "$route"
    run layer load_baseline "LEAKWATCH_LAYER=on" "$route"
    run allocator load_leakwatch "LEAKWATCH_LAYER=off" "$route"
    run leakwatch load_leakwatch "LEAKWATCH_SITES=off" "$route"
    run leakwatch+sites load_leakwatch "LEAKWATCH_SITES=sampled" "$route"
    run sampled-alloc load_sampled "LEAKWATCH_LAYER=off" "$route"
    run sampled load_sampled "X=1" "$route"
    run tracking-allocator load_tracking_allocator "X=1" "$route"
  done
done

# Per variant and route: the median requests per second, and the median over rounds of the
# ratio to that round's baseline (rounds drift together on a shared VM, so the ratio within a
# round is steadier than the ratio of medians), with its range.
python3 - "$results" <<'PY'
import statistics, sys
rps = {}
for line in open(sys.argv[1]):
    round_, variant, route, value = line.split()
    rps.setdefault(route, {}).setdefault(variant, {})[round_] = float(value)
print(f"\n{'variant':<20} {'route':<8} {'median req/s':>12} {'vs baseline':>12}  {'range':>13}")
for route, variants in rps.items():
    base = variants["baseline"]
    for variant, by_round in variants.items():
        ratios = [v / base[r] for r, v in by_round.items()]
        print(f"{variant:<20} {route:<8} {statistics.median(by_round.values()):>12.0f} "
              f"{statistics.median(ratios):>11.3f}x  {min(ratios):.3f}-{max(ratios):.3f}")
PY
