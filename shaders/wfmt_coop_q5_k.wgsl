// matmul_coop's staging of Q5_K weights (composed after wfmt_q5_k.wgsl, into the
// cooperative-matrix matmul only): raw words at load time, decoded when written to workgroup
// memory (as wfmt_coop_q4_raw.wgsl explains; the scales through wfmt_coop_kscale.wgsl, composed before this).
// `ok` false zeroes d and dmin, so the octet stages as zeros.
struct WRaw {
    s: vec4<u32>, // the super-block's (d, dmin) word and its three words of packed scales
    q: vec4<u32>, // two nibble words, two words of fifth bits
    j: u32, // the sub-block (0..7) of this octet
}

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let base = row * p.w_stride + (col / 256u) * 44u;
    let j = (col % 256u) / 32u;
    let l = col % 32u;
    let wi = base + 12u + ((j / 2u) * 32u + l) / 4u;
    let hi = base + 4u + l / 4u;
    return WRaw(vec4<u32>(select(0u, w[base], ok), w[base + 1u], w[base + 2u], w[base + 3u]), vec4<u32>(w[wi], w[wi + 1u], w[hi], w[hi + 1u]), j);
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let j = r.j;
    let ab = raw_scale_min(r.s, j);
    let a = ab.x;
    let b = ab.y;
    let sh = 4u * (j & 1u);
    let q0 = bytes4f(((r.q.x >> sh) & 0x0f0f0f0fu) | (((r.q.z >> j) & 0x01010101u) << 4u), 0x1fu, 8388608.0);
    let q1 = bytes4f(((r.q.y >> sh) & 0x0f0f0f0fu) | (((r.q.w >> j) & 0x01010101u) << 4u), 0x1fu, 8388608.0);
    return array<vec4<f16>, 2>(vec4<f16>(a * q0 - b), vec4<f16>(a * q1 - b));
}
