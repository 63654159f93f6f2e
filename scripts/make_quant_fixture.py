#!/usr/bin/env python3
"""Independent check of src/quant.rs: random ggml blocks dequantized by the `gguf` Python package
(llama.cpp's gguf-py, `pip install gguf`). Writes tests/fixtures/quant_blocks.json:
{format: {"hex": block bytes, "values": dequantized f32 values}} with two blocks per format.
Scale fields are set to finite f16 values so the blocks are valid."""
import json, os, sys
import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES
from gguf.quants import dequantize

rng = np.random.default_rng(7)

def f16(lo, hi):
    return np.frombuffer(np.float16(rng.uniform(lo, hi)).tobytes(), dtype=np.uint8)

# (type, [(byte offset, lo, hi) of each f16 scale field])
FORMATS = {
    "Q8_0": (T.Q8_0, [(0, -0.05, 0.05)]),
    "Q4_0": (T.Q4_0, [(0, -0.05, 0.05)]),
    "Q4_1": (T.Q4_1, [(0, 0.0, 0.05), (2, -0.4, 0.0)]),
    "Q4_K": (T.Q4_K, [(0, 0.0, 0.002), (2, 0.0, 0.002)]),
    "Q5_K": (T.Q5_K, [(0, 0.0, 0.002), (2, 0.0, 0.002)]),
    "Q6_K": (T.Q6_K, [(208, -0.001, 0.001)]),
}

out = {}
for name, (t, scales) in FORMATS.items():
    be, bb = GGML_QUANT_SIZES[t]
    blocks = rng.integers(0, 256, size=(2, bb), dtype=np.uint8)
    for b in blocks:
        for off, lo, hi in scales:
            b[off:off + 2] = f16(lo, hi)
    vals = dequantize(blocks.reshape(-1), t).reshape(-1).astype(np.float32)
    out[name] = {"hex": blocks.tobytes().hex(), "values": [float(v) for v in vals]}

path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "quant_blocks.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, file=sys.stderr)
