// matmul_coop's raw staging load for Q4_0 and Q4_1 weights (20-byte blocks on the GPU, the same
// layout but for the scale word; composed before wfmt_coop_q4_0.wgsl or wfmt_coop_q4_1.wgsl, which
// decode). An octet travels as the words it was loaded as (`WRaw`) and is decoded when it is
// written to workgroup memory, after the step's products: decoding at load time made each step
// wait for its loads before multiplying (docs/perf.md, session 16). `ok` false (an octet past the
// matrix, loaded from a clamped address) zeroes the scale word, so the octet stages as zeros.
alias WRaw = vec4<u32>; // (scale word, nibble word, nibble word, shift to this octet's nibbles)

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let j = col % 32u;
    let wi = base + 1u + (j % 16u) / 4u;
    return vec4<u32>(select(0u, w[base], ok), w[wi], w[wi + 1u], 4u * (j / 16u));
}
