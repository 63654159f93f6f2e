#!/usr/bin/env bash
# Build the eval example here and pack it with the default model for a device run
# (scripts/device_eval_short.sh): .devbin/eval.xz and the GGUF in three parts of 32 MiB
# .cache/model.gguf.part-a[abc] (git-ignored paths). The 98 MB model does not fit the device's
# 64 MiB carry limit, which counts the working tree too (xz saves only ~13% on Q4_1 weights), so
# it travels one part per call, in three calls back to back: see docs/eval.md.
# Usage: scripts/build_evalbin.sh [MODEL.gguf] (default: the cached default model).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${ESA_WGPU_CACHE:-$HOME/.cache/esa-wgpu}/SmolLM2-135M-Instruct.Q4_1.gguf}
cargo build --release --example eval
mkdir -p .devbin .cache
rm -f .devbin/eval.xz .cache/model.gguf.part-*
xz -T0 -6 -c target/release/examples/eval > .devbin/eval.xz
split -b 32M "$model" .cache/model.gguf.part-
du -sh .devbin/eval.xz .cache/model.gguf.part-*
