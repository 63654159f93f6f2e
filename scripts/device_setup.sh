# Sourced by the device scripts that run on the real model (scripts/device_session7.sh,
# scripts/device_calibrate_eval.sh): the Vulkan loader from .gl/, $OUT, the binaries of .devbin/
# unpacked into $B, and the default model assembled from its three carried parts (docs/eval.md).
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=/tmp/devbin; mkdir -p $B
for f in .devbin/*.xz; do xz -dc "$f" > "$B/$(basename "$f" .xz)"; done
chmod +x $B/*
cat .cache/model.gguf.part-aa .cache/model.gguf.part-ab .cache/model.gguf.part-ac > $B/model.gguf || exit 1
