// matmul_coop's staging of Q4_0 weights (composed after wfmt_q4_0.wgsl, into the
// cooperative-matrix matmul only, which enables f16). An octet travels as the words it was loaded
// as (`WRaw`) and is decoded when it is written to workgroup memory, after the step's products:
// decoding at load time made each step wait for its loads before multiplying (docs/perf.md,
// session 16). `ok` false (an octet past the matrix, loaded from a clamped address) zeroes the
// scale, so the octet stages as zeros.
alias WRaw = vec4<u32>; // (d word, nibble word, nibble word, shift to this octet's nibbles)

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let j = col % 32u;
    let wi = base + 1u + (j % 16u) / 4u;
    return vec4<u32>(select(0u, w[base], ok), w[wi], w[wi + 1u], 4u * (j / 16u));
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let d = unpack2x16float(r.x).x;
    return array<vec4<f16>, 2>(vec4<f16>(d * nib4m8(r.y >> r.w)), vec4<f16>(d * nib4m8(r.z >> r.w)));
}
