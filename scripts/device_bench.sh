#!/usr/bin/env bash
# Throughput only (correctness: scripts/device_run.sh). Prints a table last.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=.devbin; chmod +x $B/*
run() { timeout 200 "$B/bench" "$@" 2>&1 | tee -a "$OUT/bench.log" | grep -E '^\| (prefill|decode)' | sed "s/^/$* /"; }
{
run --synthetic smollm2-135m --format q4_1 --prompt-tokens 512 --decode-tokens 256
run --synthetic smollm2-135m --format q8_0 --prompt-tokens 512 --decode-tokens 256
run --synthetic smollm2-135m --format f16 --prompt-tokens 512 --decode-tokens 256
run --synthetic llama3-8b --format f16 --prompt-tokens 512 --decode-tokens 64 --repeats 2
run --synthetic llama3-8b --format q4_1 --prompt-tokens 512 --decode-tokens 64 --repeats 2
} > "$OUT/table.txt"
echo "== table"; cat "$OUT/table.txt"
