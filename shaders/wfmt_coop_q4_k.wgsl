// matmul_coop's staging of Q4_K weights (composed after wfmt_q4_k.wgsl, into the
// cooperative-matrix matmul only): raw words at load time, decoded when written to workgroup
// memory (as wfmt_coop_q4_raw.wgsl explains), the sub-block's 6-bit (scale, min) among them (decoded by
// wfmt_coop_kscale.wgsl, composed before this). `ok` false zeroes d and dmin, so the octet stages
// as zeros.
struct WRaw {
    s: vec4<u32>, // the super-block's (d, dmin) word and its three words of packed scales
    q: vec3<u32>, // two nibble words, and the sub-block j (0..7) of this octet
}

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let base = row * p.w_stride + (col / 256u) * 36u;
    let j = (col % 256u) / 32u;
    let wi = base + 4u + ((j / 2u) * 32u + col % 32u) / 4u;
    return WRaw(vec4<u32>(select(0u, w[base], ok), w[base + 1u], w[base + 2u], w[base + 3u]), vec3<u32>(w[wi], w[wi + 1u], j));
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let j = r.q.z;
    let ab = raw_scale_min(r.s, j);
    let a = ab.x;
    let b = ab.y;
    let sh = 4u * (j & 1u);
    return array<vec4<f16>, 2>(vec4<f16>(a * nib4(r.q.x >> sh) - b), vec4<f16>(a * nib4(r.q.y >> sh) - b));
}
