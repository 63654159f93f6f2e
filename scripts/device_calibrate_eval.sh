#!/usr/bin/env bash
# Session 6's device run for issues 11 and 14, after the model's three parts were carried in two
# earlier calls (see docs/eval.md): the ESA tests and prefill benches; then calibration of the
# default model on 50 000 tokens of the default text (timed), and passkey retrieval at 16k-64k with
# exact maps against the maps just fitted. Expects .devbin/{bench,eval,calibrate,esa_kernels,
# esa_e2e}.xz, .gl/ and .cache/model.gguf.part-ac (+ -aa, -ab from the earlier calls), and
# .cache/common-licenses.tar when the device lacks /usr/share/common-licenses.
set -uo pipefail
source scripts/device_setup.sh
TEXT=()
if [ ! -d /usr/share/common-licenses ] && [ -e .cache/common-licenses.tar ]; then
    mkdir -p /tmp/licenses && tar -xf .cache/common-licenses.tar -C /tmp/licenses
    TEXT=(--text $(ls -d /tmp/licenses/common-licenses/* | sort))
fi
for t in esa_kernels esa_e2e; do
    timeout 200 $B/$t --test-threads=1 > "$OUT/test_$t.log" 2>&1
    echo "test $t: rc=$? $(grep -E '^test result' "$OUT/test_$t.log")" | tee -a "$OUT/tests.txt"
done
S="--synthetic smollm2-135m --format q4_1 --decode-tokens 0 --attention esa"
for n in 16384 65536 131072; do
    echo "## bench $S --prompt-tokens $n --repeats 2" | tee -a "$OUT/table.txt"
    timeout 120 $B/bench $S --prompt-tokens $n --repeats 2 2>&1 | grep -E '^\|' | tee -a "$OUT/table.txt"
done
timeout 120 $B/bench $S --prompt-tokens 65536 --repeats 1 --profile 2>&1 | grep -E '^\|' > "$OUT/profile_64k.txt"
echo "## calibrate, 50 000 tokens" | tee -a "$OUT/table.txt"
( time timeout 300 $B/calibrate --model $B/model.gguf "${TEXT[@]}" --d 64 --tokens 50000 --held-out 2048 --k 1024,64 \
    --out "$OUT/maps_d64.safetensors" --json "$OUT/calibration.json" ) > "$OUT/calibrate.txt" 2>&1
tail -n 4 "$OUT/calibrate.txt" | tee -a "$OUT/table.txt"
echo "## passkey, exact maps against the fitted ones" | tee -a "$OUT/table.txt"
timeout 200 $B/eval --model $B/model.gguf --tasks passkey --lengths 16k,32k,64k --depths 0.1,0.5,0.9 \
    --methods esa,esa-maps --esa-maps "$OUT/maps_d64.safetensors" --out "$OUT/eval" 2>"$OUT/eval.log" | tee -a "$OUT/table.txt"
cat "$OUT/tests.txt"
