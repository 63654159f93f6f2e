// matmul_coop's staging of Q4_1 weights (composed after wfmt_q4_1.wgsl and wfmt_coop_q4_raw.wgsl,
// whose raw words it decodes, into the cooperative-matrix matmul only, which enables f16).

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let dm = unpack2x16float(r.x);
    return array<vec4<f16>, 2>(vec4<f16>(dm.x * nib4(r.y >> r.w) + dm.y), vec4<f16>(dm.x * nib4(r.z >> r.w) + dm.y));
}
