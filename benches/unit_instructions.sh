#!/usr/bin/env bash
# Instructions per unit of work, counted by callgrind (benches/servers/unit_churn.rs): a trivial
# future (no allocation, no spawn) awaited bare, as a unit (`LeakDetector::scope`), and — for
# comparison — an empty request through the layer (`oneshot`, no HTTP). Each count is the
# difference between N2 and N1 iterations, over N2 − N1, so that start-up is left out.
#
#   bash benches/unit_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is needed" >&2; exit 1; }
cargo build --release --quiet --example unit_churn
N1=${N1:-20000}
N2=${N2:-120000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() { # mode n
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
    target/release/examples/unit_churn "$1" "$2" >/dev/null 2>&1
  callgrind_annotate "$out/cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

printf '%-8s %14s %14s\n' mode "instr/future" "vs bare"
base=""
for mode in bare unit request; do
  per=$(( ($(count "$mode" "$N2") - $(count "$mode" "$N1")) / (N2 - N1) ))
  [ -z "$base" ] && base=$per
  printf '%-8s %14d %14d\n' "$mode" "$per" "$((per - base))"
done
