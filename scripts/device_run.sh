#!/usr/bin/env bash
# One device session: correctness on the real GPU, then throughput. Expects the binaries in
# .devbin/ (scripts/build_devbin.sh; .xz is unpacked here) and the Vulkan loader debs in .gl/.
# Usage: scripts/device_run.sh [BENCH_FILE]; BENCH_FILE holds one `bench` argument list per line,
# optionally led by VAR=VALUE environment words
# (default: scripts/device_bench.txt). Prints a table last; logs go to $OUT.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=/tmp/devbin; mkdir -p $B
for f in .devbin/*; do
    case "$f" in *.xz) xz -dc "$f" > "$B/$(basename "$f" .xz)";; *) cp "$f" "$B/";; esac
done
chmod +x $B/*
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
echo "== correctness on this GPU"
for t in $(ls $B | sort); do
    case "$t" in bench|*.txt) continue;; esac
    [ -x "$B/$t" ] || continue
    timeout 300 "$B/$t" --test-threads=1 > "$OUT/test_$t.log" 2>&1
    echo "test $t: rc=$? $(grep -E '^test result' "$OUT/test_$t.log")" | tee -a "$OUT/tests.txt"
    grep -E "panicked|FAILED" -A2 "$OUT/test_$t.log" | head -8
done
echo "== throughput"
: > "$OUT/table.txt"
while read -r line; do
    [ -z "$line" ] && continue
    case "$line" in \#*) continue;; esac
    # leading VAR=VALUE words become the bench's environment (e.g. ESA_WGPU_NO_COOP=1)
    envs=(); args=()
    for w in $line; do
        if [ ${#args[@]} -eq 0 ] && [[ "$w" == *=* ]]; then envs+=("$w"); else args+=("$w"); fi
    done
    echo "## bench $line" | tee -a "$OUT/bench.log" >> "$OUT/table.txt"
    timeout 300 env "${envs[@]}" $B/bench "${args[@]}" 2>&1 | tee -a "$OUT/bench.log" | grep -E '^\|' >> "$OUT/table.txt"
done < "${1:-scripts/device_bench.txt}"
echo "== tests"; cat "$OUT/tests.txt"
echo "== table"; cat "$OUT/table.txt"
