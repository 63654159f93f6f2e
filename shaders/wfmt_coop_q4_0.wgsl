// matmul_coop's staging of Q4_0 weights (composed after wfmt_q4_0.wgsl and wfmt_coop_q4_raw.wgsl,
// whose raw words it decodes, into the cooperative-matrix matmul only, which enables f16).

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let d = unpack2x16float(r.x).x;
    return array<vec4<f16>, 2>(vec4<f16>(d * nib4m8(r.y >> r.w)), vec4<f16>(d * nib4m8(r.z >> r.w)));
}
