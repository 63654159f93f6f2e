#!/usr/bin/env bash
# One device session: correctness on the real GPU, then throughput. Expects the binaries in
# .devbin/ (built on the host: see docs/perf.md) and the Vulkan loader debs in .gl/.
# Prints a table last; logs go to $OUT.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
B=.devbin
chmod +x $B/* 2>/dev/null
echo "== correctness on this GPU"
for t in kernels quant_kernels esa_kernels model_e2e esa_e2e; do
    [ -x "$B/$t" ] || continue
    timeout 300 "$B/$t" --test-threads=1 > "$OUT/test_$t.log" 2>&1; echo "test $t: rc=$? $(grep -E '^test result' "$OUT/test_$t.log")"
done
echo "== throughput"
run() { timeout 300 "$B/bench" "$@" 2>&1 | tee -a "$OUT/bench.log" | grep -E '^\| (prefill|decode)' | sed "s/^/$* /"; }
{
run --synthetic smollm2-135m --format q4_1 --prompt-tokens 512 --decode-tokens 256
run --synthetic smollm2-135m --format q8_0 --prompt-tokens 512 --decode-tokens 256
run --synthetic smollm2-135m --format f16 --prompt-tokens 512 --decode-tokens 256
run --synthetic llama3-8b --format f16 --prompt-tokens 512 --decode-tokens 64 --repeats 2
run --synthetic llama3-8b --format q4_1 --prompt-tokens 512 --decode-tokens 64 --repeats 2
} > "$OUT/table.txt"
echo "== table"; cat "$OUT/table.txt"
