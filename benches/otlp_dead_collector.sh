#!/usr/bin/env bash
# Export never gets in the way: requests per second and latency of an axum service whose
# leakwatch layer exports leak spans over OTLP (benches/servers/load_otlp.rs; one request in 50 leaks a
# task for 2 s, sweeps every 100 ms), with
#   off        no export (the baseline)
#   refusing   the collector's port refuses connections
#   silent     the collector accepts connections and never answers
# over gRPC and HTTP/protobuf. Server pinned to core 0, wrk to core 1; variants alternated in
# each round; the median of ROUNDS rounds, and the server's resident memory after each run.
#
#   bash benches/otlp_dead_collector.sh      # ROUNDS=3 DURATION=10 CONNECTIONS=32 by default
#
# Everything listens on and is sent to 127.0.0.1 only; every server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-8098}
# shellcheck source=benches/wrk_common.sh
. benches/wrk_common.sh

cargo build --release --quiet --example load_otlp

run() { # variant mode protocol
  local variant=$1 mode=$2 protocol=$3
  start_server load_otlp LEAKWATCH_OTLP="$mode" OTEL_EXPORTER_OTLP_PROTOCOL="$protocol" \
    OTEL_EXPORTER_OTLP_TIMEOUT=2000
  local out rps p50 p99 rss
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/leaky")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  stop_server
  echo "$variant $rps $p50 $p99 $rss" >> "$results"
  echo "  $variant: $rps req/s, p50 $p50, p99 $p99, RSS ${rss} kB"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS"
  for protocol in grpc http/protobuf; do
    run "off" off "$protocol"
    run "refusing/$protocol" refusing "$protocol"
    run "silent/$protocol" silent "$protocol"
  done
done

python3 - "$results" <<'PY'
import statistics, sys
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
rows = {}
for line in open(sys.argv[1]):
    variant, rps, p50, p99, rss = line.split()
    rows.setdefault(variant, []).append((float(rps), ms(p50), ms(p99), int(rss)))
base = statistics.median(r[0] for r in rows["off"])
print(f"\n{'collector':<24} {'req/s':>9} {'vs off':>7} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8}")
for variant, runs in rows.items():
    rps = statistics.median(r[0] for r in runs)
    print(f"{variant:<24} {rps:>9.0f} {rps / base:>6.3f}x {statistics.median(r[1] for r in runs):>7.2f}"
          f" {statistics.median(r[2] for r in runs):>7.2f} {max(r[3] for r in runs) / 1024:>8.1f}")
PY
