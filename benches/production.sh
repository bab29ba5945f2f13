#!/usr/bin/env bash
# Production benchmark: the axum service of benches/servers/load on a multi-thread runtime (LOAD_WORKERS
# workers, 2 by default), a mix of routes in turn — /hello, /json, /alloc (a few hundred
# allocations) and /upstream (a call through a pooled hyper client to an upstream service on
# 127.0.0.1) — driven by oha (https://github.com/hatoo/oha; installed once under target/tools
# by `cargo install` when it is not on PATH) over CONNECTIONS connections for exactly REQUESTS
# requests per run, each to one of the four routes at random, for
#
#   baseline            the system allocator, no leakwatch
#   layer               leakwatch's layer alone (memory not tracked)
#   layer+sampled       the layer and TrackingAllocator::sampled(512 KiB): production's mode
#   layer+exact         the layer and the exact TrackingAllocator: tests' and load tests' mode
#   tracking-allocator  the tracking-allocator crate 0.4, an allocation group per request
#   trace               tower-http's TraceLayer with a fmt subscriber at INFO (its spans are
#                       DEBUG: never recorded) — what most services already run
#   trace-logged        the same with INFO spans and one line per response, written to stderr
#
# alternated within each of ROUNDS rounds. Prints, per variant, the median over rounds of the
# ratio to that round's baseline (rounds drift together on a shared VM) for requests per
# second, p50 and p99 latency, with their ranges; CPU time (user + system) per request; peak RSS;
# and for leakwatch's variants the requests whose memory went uncounted (`untracked`, which must
# be 0) and the entries the registry skipped.
#
#   bash benches/production.sh   # ROUNDS=3 REQUESTS=200000 CONNECTIONS=64 LOAD_WORKERS=2
#
# Server and oha share the machine's cores (not pinned): as on a real host, the load tool's
# share is the same for every variant. Everything listens on and is sent to 127.0.0.1 only;
# each server is stopped before the next starts, and at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-200000}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-8097}
export LOAD_WORKERS=${LOAD_WORKERS:-2}

results=$(mktemp)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -f "$results"; }
trap cleanup EXIT
stop_server() {
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

OHA=$(command -v oha || echo target/tools/bin/oha)
if [ ! -x "$OHA" ]; then
  echo "installing oha under target/tools (once; a few minutes)" >&2
  cargo install oha --locked --quiet --root target/tools ||
    { echo "error: could not install oha (cargo install oha)" >&2; exit 1; }
fi

cargo build --release --quiet --example load_baseline --example load_leakwatch \
  --example load_sampled --example load_tracking_allocator

# Starts target/release/examples/BINARY with the given environment on $PORT (not pinned).
start() { # binary env...
  local bin=$1
  shift
  env "$@" "target/release/examples/$bin" "$PORT" 2>/dev/null &
  server=$!
  for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
  done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Sends `n` requests, each to one of the four routes at random; prints the requests answered
# 200, the microseconds they took, p50 and p99 latency in microseconds, and the failures.
load() { # n
  "$OHA" -n "$1" -c "$CONNECTIONS" --no-tui --output-format json \
    --rand-regex-url "http://127.0.0.1:$PORT/(hello|json|alloc|upstream)" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
codes = r["statusCodeDistribution"]
ok = codes.get("200", 0)
failed = sum(codes.values()) - ok + sum(r["errorDistribution"].values())
p = r["latencyPercentiles"]
print(ok, int(r["summary"]["total"] * 1e6), int(p["p50"] * 1e6), int(p["p99"] * 1e6), failed)'
}

run() { # variant binary env...
  local variant=$1
  shift
  start "$@"
  load $((REQUESTS / 5)) >/dev/null # warm-up
  local before after
  before=$(cpu_ticks "$server")
  read -r requests micros p50 p99 errors < <(load "$REQUESTS")
  after=$(cpu_ticks "$server")
  local stats="-"
  if [[ $variant == layer* ]]; then
    stats=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/_stats').read().decode().strip().replace(' ', ','))")
  fi
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")
  stop_server
  echo "$round $variant $requests $micros $p50 $p99 $errors $((after - before)) $hwm $stats" >> "$results"
  printf '  %-19s %7.0f req/s  p50 %5d us  p99 %6d us  %s\n' "$variant" \
    "$(python3 -c "print($requests / ($micros / 1e6))")" "$p50" "$p99" "$stats"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS"
  run baseline load_baseline LEAKWATCH_LAYER=off
  run layer load_baseline LEAKWATCH_LAYER=on
  run layer+sampled load_sampled X=1
  run layer+exact load_leakwatch LEAKWATCH_SITES=off
  run tracking-allocator load_tracking_allocator X=1
  run trace load_baseline LOAD_TRACE=default
  run trace-logged load_baseline LOAD_TRACE=logged
done

python3 - "$results" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r, variant, requests, micros, p50, p99, errors, ticks, hwm, stats = line.split()
    rows.setdefault(variant, {})[r] = dict(
        rps=int(requests) / (int(micros) / 1e6), p50=int(p50), p99=int(p99),
        errors=int(errors), cpu=int(ticks) / float(sys.argv[2]) / int(requests),
        hwm=int(hwm), stats=stats)
base = rows["baseline"]
def ratio(variant, key):
    values = [v[key] / base[r][key] for r, v in rows[variant].items()]
    return f"{statistics.median(values):.3f}x ({min(values):.3f}-{max(values):.3f})"
print(f"\n{'variant':<19} {'req/s':>7} {'req/s vs baseline':>24} {'p50 vs baseline':>24} "
      f"{'p99 vs baseline':>24} {'CPU us/req':>10} {'peak RSS':>9}  uncounted")
bad = False
for variant, by_round in rows.items():
    runs = list(by_round.values())
    rps = statistics.median(v["rps"] for v in runs)
    cpu = statistics.median(v["cpu"] for v in runs) * 1e6
    hwm = max(v["hwm"] for v in runs) / 1024
    stats = runs[-1]["stats"]
    print(f"{variant:<19} {rps:>7.0f} {ratio(variant, 'rps'):>24} {ratio(variant, 'p50'):>24} "
          f"{ratio(variant, 'p99'):>24} {cpu:>10.1f} {hwm:>7.1f} MB  {stats}")
    if any(v["errors"] for v in runs):
        print(f"error: {variant}: requests failed", file=sys.stderr)
        bad = True
    for v in runs:
        if v["stats"] != "-":
            fields = dict(kv.split("=") for kv in v["stats"].split(","))
            if int(fields["untracked_requests"]) or int(fields["skipped"]):
                print(f"error: {variant}: requests went uncounted: {v['stats']}", file=sys.stderr)
                bad = True
sys.exit(1 if bad else 0)
PY
