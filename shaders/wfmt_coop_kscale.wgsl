// The (scale, min) of a K-quant sub-block from the raw words matmul_coop stages (Q4_K and Q5_K
// share the 12-byte packing; composed before wfmt_coop_q4_k.wgsl or wfmt_coop_q5_k.wgsl): `s` is
// the super-block's (d, dmin) word then its three words of scales, as loaded.

// Byte i of the 12 scale bytes held in s.y .. s.w.
fn raw_scale_byte(s: vec4<u32>, i: u32) -> u32 {
    return (s[1u + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// (d * scale_j, dmin * min_j) of sub-block j, decoded as k_scale_min decodes them from memory.
fn raw_scale_min(s: vec4<u32>, j: u32) -> vec2<f32> {
    var sc = raw_scale_byte(s, j) & 63u;
    var mn = raw_scale_byte(s, j + 4u) & 63u;
    if (j >= 4u) {
        let b = raw_scale_byte(s, j + 4u);
        sc = (b & 15u) | ((raw_scale_byte(s, j - 4u) >> 6u) << 4u);
        mn = (b >> 4u) | ((raw_scale_byte(s, j) >> 6u) << 4u);
    }
    let dm = unpack2x16float(s.x);
    return vec2<f32>(dm.x * u2f(sc), dm.y * u2f(mn));
}
