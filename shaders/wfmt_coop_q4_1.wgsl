// matmul_coop's staging of Q4_1 weights (composed after wfmt_q4_1.wgsl, into the
// cooperative-matrix matmul only): raw words at load time, decoded when written to workgroup
// memory (as wfmt_coop_q4_0.wgsl). `ok` false zeroes d and m, so the octet stages as zeros.
alias WRaw = vec4<u32>; // (d and m word, nibble word, nibble word, shift to this octet's nibbles)

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let j = col % 32u;
    let wi = base + 1u + (j % 16u) / 4u;
    return vec4<u32>(select(0u, w[base], ok), w[wi], w[wi + 1u], 4u * (j / 16u));
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let dm = unpack2x16float(r.x);
    return array<vec4<f16>, 2>(vec4<f16>(dm.x * nib4(r.y >> r.w) + dm.y), vec4<f16>(dm.x * nib4(r.z >> r.w) + dm.y));
}
