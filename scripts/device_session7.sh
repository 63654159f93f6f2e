#!/usr/bin/env bash
# Session 7's device run (issues 11, 13, 14), after the model's parts aa and ab were carried in two
# earlier calls (docs/eval.md): the test binaries in .devbin, the ESA prefill benches with exact
# maps and with the widths `--esa-maps auto` picks, and passkey retrieval at 16k-128k with exact
# maps against the calibrated maps carried as .cache/maps_d32.safetensors (the chat's default for
# SmolLM2, calibrated on lavapipe). Expects .devbin/{bench,eval,tests...}.xz, .gl/ and
# .cache/model.gguf.part-ac (+ -aa, -ab from the earlier calls).
set -uo pipefail
source scripts/device_setup.sh
for t in $(ls $B | sort); do
    case "$t" in bench|eval|model.gguf) continue;; esac
    timeout 300 $B/$t --test-threads=1 > "$OUT/test_$t.log" 2>&1
    echo "test $t: rc=$? $(grep -E '^test result' "$OUT/test_$t.log")" | tee -a "$OUT/tests.txt"
    grep -E "panicked|FAILED" -A3 "$OUT/test_$t.log" | head -8
done
S="--synthetic smollm2-135m --format q4_1 --decode-tokens 0 --attention esa --repeats 2"
while read -r extra; do
    for n in 16384 65536 131072; do
        echo "## bench $S --prompt-tokens $n $extra" | tee -a "$OUT/table.txt"
        timeout 120 $B/bench $S --prompt-tokens $n $extra 2>&1 | grep -E '^\| prefill' | tee -a "$OUT/table.txt"
    done
done <<'LIST'
--esa-d 32
--esa-d 64
--esa-d 96

LIST
echo "## passkey, exact maps against the calibrated d' = 32 (chat default)" | tee -a "$OUT/table.txt"
timeout 300 $B/eval --model $B/model.gguf --tasks passkey --lengths 16k,32k,64k,128k --depths 0.1,0.3,0.5,0.7,0.9 \
    --methods esa,esa-maps --esa-maps .cache/maps_d32.safetensors --out "$OUT/eval" 2>"$OUT/eval.log" | tee -a "$OUT/table.txt"
tail -n 3 "$OUT/eval.log"
cat "$OUT/tests.txt"
