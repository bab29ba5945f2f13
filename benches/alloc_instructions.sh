#!/usr/bin/env bash
# Instructions per allocation and free of one block, counted by callgrind: `System`, and
# `TrackingAllocator` in exact and in sampled mode (512 KiB), outside any request, for 16 B,
# 256 B, 4 KiB and 64 KiB (benches/servers/alloc_churn.rs). Deterministic, unlike `cargo bench
# --bench alloc` on a shared VM. Each count is the difference between N2 and N1 iterations,
# over N2 − N1, so that start-up is left out.
#
#   bash benches/alloc_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is needed" >&2; exit 1; }
cargo build --release --quiet --example alloc_churn
N1=${N1:-100000}
N2=${N2:-1100000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() { # mode size n
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
    target/release/examples/alloc_churn "$1" "$2" "$3" >/dev/null 2>&1
  callgrind_annotate "$out/cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

printf '%-8s %8s %14s %12s\n' mode size "instr/op" "vs System"
for size in 16 256 4096 65536; do
  base=""
  for mode in system exact sampled; do
    per=$(( ($(count "$mode" "$size" "$N2") - $(count "$mode" "$size" "$N1")) / (N2 - N1) ))
    [ -z "$base" ] && base=$per
    printf '%-8s %8d %14d %11.3fx\n' "$mode" "$size" "$per" "$(python3 -c "print($per / $base)")"
  done
done
