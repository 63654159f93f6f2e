// matmul_coop's staging of Q6_K weights (composed after wfmt_q6_k.wgsl, into the
// cooperative-matrix matmul only): raw words at load time, decoded when written to workgroup
// memory (as wfmt_coop_q4_raw.wgsl explains; the octet located by wfmt_q6_k.wgsl's q6_octet).
// `ok` false zeroes d, so the octet stages as zeros.
struct WRaw {
    a: vec4<u32>, // d word, the word holding this octet's scale byte, two words of low bits
    b: vec3<u32>, // two words of top bits; shifts and the scale's byte: lsh | hsh << 4 | byte << 8
}

fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {
    let o = q6_octet(row, col);
    let info = o.lsh | (o.hsh << 4u) | ((o.si % 4u) << 8u);
    return WRaw(vec4<u32>(select(0u, w[o.base + 52u], ok), w[o.base + 48u + o.si / 4u], w[o.lw], w[o.lw + 1u]), vec3<u32>(w[o.hw], w[o.hw + 1u], info));
}

fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {
    let lsh = r.b.z & 15u;
    let hsh = (r.b.z >> 4u) & 15u;
    let sb = ((r.a.y >> (8u * (r.b.z >> 8u))) & 0xffu) ^ 0x80u; // the signed scale offset by 128
    let s = unpack2x16float(r.a.x).x * (u2f(sb) - 128.0);
    let q0 = ((r.a.z >> lsh) & 0x0f0f0f0fu) | (((r.b.x >> hsh) & 0x03030303u) << 4u);
    let q1 = ((r.a.w >> lsh) & 0x0f0f0f0fu) | (((r.b.y >> hsh) & 0x03030303u) << 4u);
    return array<vec4<f16>, 2>(vec4<f16>(s * bytes4f(q0, 0x3fu, 8388640.0)), vec4<f16>(s * bytes4f(q1, 0x3fu, 8388640.0)));
}
