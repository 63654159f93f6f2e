// matmul_coop's staging of Q8_0 weights (composed after wfmt_q8_0.wgsl, into the
// cooperative-matrix matmul only): raw words at load time, decoded when written to workgroup
// memory (as wfmt_coop_q4_raw.wgsl explains). `ok` false zeroes d, so the octet stages as zeros.
alias WRaw = vec4<u32>; // (d word, four signed bytes, four signed bytes, unused)

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let base = row * p.w_stride + (col / 32u) * 9u;
    let wi = base + 1u + (col % 32u) / 4u;
    return vec4<u32>(select(0u, w[base], ok), w[wi], w[wi + 1u], 0u);
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let d = unpack2x16float(r.x).x;
    return array<vec4<f16>, 2>(vec4<f16>(d * i8x4(r.y)), vec4<f16>(d * i8x4(r.z)));
}
