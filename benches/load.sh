#!/usr/bin/env bash
# Load benchmark: requests per second of an axum service under wrk, for
#   baseline           the system allocator, no leakwatch
#   layer              LeakLayer alone (system allocator: memory not tracked)
#   allocator          TrackingAllocator alone (no layer: every block outside a request)
#   leakwatch          TrackingAllocator + LeakLayer (exact per-request attribution)
#   leakwatch+sites    the same, with allocation sites sampled every 512 KiB on average
#   tracking-allocator the tracking-allocator crate 0.4, an allocation group per request
# on a hello-world route and an allocation-heavy one. Server pinned to core 0 (one runtime
# thread), wrk to core 1; variants alternated within each round; the median of ROUNDS rounds.
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

cargo build --release --quiet --example load_baseline --example load_leakwatch --example load_tracking_allocator

run() { # variant binary env route
  local variant=$1 bin=$2 env=$3 route=$4
  start_server "$bin" "$env"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT$route" >/dev/null # warm-up
  local rps
  rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT$route" \
    | awk '/Requests\/sec/ {print $2}')
  stop_server
  echo "$variant $route $rps" >> "$results"
  echo "  $variant $route: $rps req/s"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS"
  for route in $ROUTES; do
    run baseline load_baseline "LEAKWATCH_LAYER=off" "$route"
    run layer load_baseline "LEAKWATCH_LAYER=on" "$route"
    run allocator load_leakwatch "LEAKWATCH_LAYER=off" "$route"
    run leakwatch load_leakwatch "LEAKWATCH_SITES=off" "$route"
    run leakwatch+sites load_leakwatch "LEAKWATCH_SITES=sampled" "$route"
    run tracking-allocator load_tracking_allocator "X=1" "$route"
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {}
for variant, route, rps in rows:
    med.setdefault((variant, route), []).append(float(rps))
print(f"\n{'variant':<20} {'route':<8} {'median req/s':>12} {'vs baseline':>12}")
for route in dict.fromkeys(r for _, r in med):
    base = statistics.median(med[("baseline", route)])
    for variant in ("baseline", "layer", "allocator", "leakwatch", "leakwatch+sites", "tracking-allocator"):
        m = statistics.median(med[(variant, route)])
        print(f"{variant:<20} {route:<8} {m:>12.0f} {m / base:>11.3f}x")
PY
