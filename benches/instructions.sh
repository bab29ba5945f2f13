#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the same variants and routes as
# benches/load.sh (and, as the yardstick of what a production service already pays, tower-http's
# TraceLayer with a fmt subscriber at INFO: `trace`, whose spans are DEBUG and never recorded;
# `trace-logged`, with INFO spans and a line per response; `trace+sampled`, TraceLayer over
# leakwatch's layer with the sampled allocator), but all but deterministic — the count hardly
# depends on the machine's load, so a change of a few dozen instructions per request shows
# (requests per second on a shared VM move by several per cent from one run to the next).
#
# Each variant runs twice under callgrind: once serving WARMUP requests, once WARMUP + COUNT;
# the difference over COUNT is the cost of one request, start-up and shutdown excluded. Each
# run goes on for SETTLE seconds after its last request, so that what the sweeper thread does
# for the requests is counted too (its idle sweeps, a few per run, are the one part that
# depends on how long a run takes). The requests come one at a time over one keep-alive
# connection (Python's http.client).
#
#   bash benches/instructions.sh                 # COUNT=1000 WARMUP=200 ROUTES="/hello /alloc"
#   ROUTES="/hello /spawn /alloc" ONLY="baseline leakwatch sampled" bash benches/instructions.sh
#   ROUTES=/alloc COUNT=2000 bash benches/instructions.sh
#   ONLY="baseline identity layer" bash benches/instructions.sh
#
# Counts are of user-space instructions only (no kernel, no cache misses); they track, not
# replace, the requests per second of benches/load.sh. Everything listens on and is sent to
# 127.0.0.1 only; every server is stopped before the next starts.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-1000}
WARMUP=${WARMUP:-200}
PORT=${PORT:-8098}
ROUTES=${ROUTES:-/hello /alloc}
# A space-separated subset of the variants below (the first one run is the ratios' base).
ONLY=${ONLY:-}
# Seconds each server runs on after its last request, for the sweeper's share to be counted.
SETTLE=${SETTLE:-2.5}

for tool in valgrind callgrind_annotate python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (apt-get install valgrind python3)" >&2; exit 1; }
done

cargo build --release --quiet --example load_baseline --example load_leakwatch \
  --example load_sampled --example load_tracking_allocator

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Sends `n` GET requests for `route`, one after the other, on one connection.
client() { # n route
  python3 - "$PORT" "$2" "$1" <<'PY'
import http.client, sys
port, route, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", route)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}

# Total instructions of one server run that served `n` requests.
run() { # binary env route n
  local file="$out/callgrind.out"
  env "$2" valgrind --tool=callgrind --callgrind-out-file="$file" \
    "target/release/examples/$1" "$PORT" 2>/dev/null &
  local pid=$!
  for _ in $(seq 300); do
    (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  client "$4" "$3"
  # Let the sweeper (its interval is 1 s) get through what the requests left it: its share of
  # each request is part of the request's cost.
  sleep "$SETTLE"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

printf '%-20s %-8s %16s %12s\n' variant route "instr/request" "vs baseline"
for route in $ROUTES; do
  base=""
  while read -r variant bin env; do
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $variant "* ]]; then continue; fi
    short=$(run "$bin" "$env" "$route" "$WARMUP")
    long=$(run "$bin" "$env" "$route" $((WARMUP + COUNT)))
    per=$(( (long - short) / COUNT ))
    [ -z "$base" ] && base=$per
    printf '%-20s %-8s %16d %11.3fx\n' "$variant" "$route" "$per" \
      "$(python3 -c "print($per / $base)")"
  done <<'VARIANTS'
baseline load_baseline LEAKWATCH_LAYER=off
baseline+thread load_baseline LOAD_IDLE_THREAD=1
identity load_baseline LEAKWATCH_LAYER=identity
ignored load_baseline LEAKWATCH_LAYER=ignored
layer load_baseline LEAKWATCH_LAYER=on
allocator load_leakwatch LEAKWATCH_LAYER=off
leakwatch load_leakwatch LEAKWATCH_SITES=off
leakwatch+sites load_leakwatch LEAKWATCH_SITES=sampled
sampled-alloc load_sampled LEAKWATCH_LAYER=off
sampled load_sampled X=1
tracking-allocator load_tracking_allocator X=1
trace load_baseline LOAD_TRACE=default
trace-logged load_baseline LOAD_TRACE=logged
trace+sampled load_sampled LOAD_TRACE=default
VARIANTS
done
