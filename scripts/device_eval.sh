#!/usr/bin/env bash
# Long-context evaluation on the device (docs/eval.md): SmolLM2-135M Q4_1, 16k-128k, about 6
# minutes on an H200 (ESA prefill ~9k tok/s at 16k, ~5k at 128k). Expects .devbin/eval.xz and
# the model's two halves .cache/model.gguf.part-aa/-ab (scripts/build_evalbin.sh; carried in two
# calls, docs/eval.md) and the Vulkan loader debs in .gl/.
# Results (report.md, results.json, heat maps) go to $OUT/eval_{a,b,c}. The three timeouts add
# up to 540 s, inside the 600 s a device command may run; a grid cut short writes nothing.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=/tmp/devbin; mkdir -p $B
xz -dc .devbin/eval.xz > $B/eval; chmod +x $B/eval
cat .cache/model.gguf.part-aa .cache/model.gguf.part-ab > $B/model.gguf || exit 1
M="--model $B/model.gguf"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# A: passkey at every length and three depths, ESA against dense + YaRN (the target:
#    ESA >= 95% at 16k-128k). ~160 s.
timeout 250 $B/eval $M --tasks passkey --lengths 16k,32k,64k,128k --depths 0.1,0.5,0.9 \
    --methods esa,yarn --out "$OUT/eval_a" 2>"$OUT/eval_a.log" | tee "$OUT/eval_a.txt"
# B: all retrieval tasks at 32k, every method (paper-plain chunking side by side), with the
#    needle-selection diagnosis. ~80 s.
timeout 170 $B/eval $M --tasks passkey,multi_needle,kv_retrieval --lengths 32k --depths 0.25,0.75 \
    --methods esa,esa-plain,streaming,yarn --diagnose --out "$OUT/eval_b" 2>"$OUT/eval_b.log" | tee "$OUT/eval_b.txt"
# C: multi-needle and key-value retrieval at 64k, every method. ~60 s.
timeout 120 $B/eval $M --tasks multi_needle,kv_retrieval --lengths 64k --depths 0.5 \
    --methods esa,esa-plain,streaming,yarn --out "$OUT/eval_c" 2>"$OUT/eval_c.log" | tee "$OUT/eval_c.txt"
tail -n 3 "$OUT"/eval_*.log
