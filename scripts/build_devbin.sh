#!/usr/bin/env bash
# Build the test binaries and the bench example here, xz them into .devbin/ (git-ignored) for a
# device run (scripts/device_run.sh). Usage: scripts/build_devbin.sh [test names...]
set -euo pipefail
cd "$(dirname "$0")/.."
tests=${*:-matmul kernels quant_kernels esa_kernels model_e2e esa_e2e}
rm -rf .devbin; mkdir -p .devbin
cargo build --release --example bench
cp target/release/examples/bench .devbin/bench
for t in $tests; do
    exe=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    cp "$exe" ".devbin/$t"
done
xz -T0 -6 .devbin/*
du -sh .devbin
