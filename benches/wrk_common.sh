# Shared by the wrk load scripts in this directory (sourced, not run): tool checks, a server
# pinned to core 0 started and stopped, and a results file removed on exit.
# Everything listens on and is sent to 127.0.0.1 only.

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset is needed (util-linux)" >&2; exit 1; }

results=$(mktemp)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -f "$results"; }
trap cleanup EXIT

# start_server BINARY [ENV=VALUE ...]: runs target/release/examples/BINARY on $PORT, pinned to
# core 0, and waits until it accepts connections.
start_server() {
  local bin=$1
  shift
  env "$@" taskset -c 0 "target/release/examples/$bin" "$PORT" &
  server=$!
  for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
  done
}

stop_server() {
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}
