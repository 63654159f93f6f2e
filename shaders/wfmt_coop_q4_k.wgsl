// matmul_coop's staging of Q4_K weights (composed after wfmt_q4_k.wgsl, into the
// cooperative-matrix matmul only): raw words at load time, decoded when written to workgroup
// memory (as wfmt_coop_q4_0.wgsl), the sub-block's 6-bit (scale, min) among them. `ok` false
// zeroes d and dmin, so the octet stages as zeros.
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

// Byte i of the 12 scale bytes held in s.y .. s.w.
fn raw_scale_byte(s: vec4<u32>, i: u32) -> u32 {
    return (s[1u + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let dm = unpack2x16float(r.s.x);
    let j = r.q.z;
    // (scale, min) of sub-block j, as k_scale_min decodes them from memory
    var sc = raw_scale_byte(r.s, j) & 63u;
    var mn = raw_scale_byte(r.s, j + 4u) & 63u;
    if (j >= 4u) {
        let b = raw_scale_byte(r.s, j + 4u);
        sc = (b & 15u) | ((raw_scale_byte(r.s, j - 4u) >> 6u) << 4u);
        mn = (b >> 4u) | ((raw_scale_byte(r.s, j) >> 6u) << 4u);
    }
    let a = dm.x * u2f(sc);
    let b = dm.y * u2f(mn);
    let sh = 4u * (j & 1u);
    return array<vec4<f16>, 2>(vec4<f16>(a * nib4(r.q.x >> sh) - b), vec4<f16>(a * nib4(r.q.y >> sh) - b));
}
