#!/usr/bin/env bash
# A short long-context evaluation on the device: SmolLM2-135M Q4_1, passkey with ESA at 16k-128k
# (three depths), the retrieval tasks at 32k with ESA and StreamingLLM. Expects .devbin/eval.xz, the model in three parts .cache/model.gguf.part-a[abc]
# (split -b 32M; carried over two back-to-back calls: the 64 MiB carry limit) and .gl/.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; fi
B=/tmp/devbin; mkdir -p $B
if [ -e .devbin/eval.xz ]; then xz -dc .devbin/eval.xz > $B/eval.new && mv $B/eval.new $B/eval; fi
chmod +x $B/eval
# the parts may be gone by the second call; the model assembled in the first one stays in /tmp
if [ -e .cache/model.gguf.part-ac ] && [ -e .cache/model.gguf.part-aa ]; then
    cat .cache/model.gguf.part-aa .cache/model.gguf.part-ab .cache/model.gguf.part-ac > $B/model.gguf || exit 1
fi
test -s $B/model.gguf || { echo "no model: carry the three parts (two calls, back to back)"; exit 1; }
ls -la $B/model.gguf
E="$B/eval --model $B/model.gguf"
# A: passkey, ESA, 16k-128k x three depths (session 6: after the one-pass chunk attention)
timeout 200 $E --tasks passkey --lengths 16k,32k,64k,128k --depths 0.1,0.5,0.9 --methods esa --out $OUT/eval_a 2>$OUT/eval_a.log | tee $OUT/eval_a.txt
# B: the retrieval tasks at 32k, ESA against StreamingLLM (same budget)
timeout 120 $E --tasks passkey,multi_needle,kv_retrieval --lengths 32k --depths 0.25,0.75 --methods esa,streaming --out $OUT/eval_b 2>$OUT/eval_b.log | tee $OUT/eval_b.txt
tail -n 3 $OUT/eval_*.log
