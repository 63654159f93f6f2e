// Weight format: ggml Q5_K, stored as in the file (176-byte super-blocks of 256 values: 44 words).
// Word 0 = (d, dmin) as f16 halves; words 1..3 = 12 bytes of 6-bit (scale, min) packed as in Q4_K;
// words 4..11 = qh[32]: bit j of qh[l] is the fifth bit of value l of sub-block j; words 12..43 =
// 128 bytes of nibbles laid out as in Q4_K.
// value = d * scale_j * q - dmin * min_j, q = nibble | (high bit << 4).
// Drivers see blocks of 32 (one sub-block). `w_stride` counts u32 per row (cols / 256 * 44).

@group(0) @binding(1) var<storage, read> w: array<u32>;

const FMT_BLOCK: u32 = 32u;

fn k_scale_byte(base: u32, i: u32) -> u32 {
    return (w[base + 1u + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

fn k_scale_min(base: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(k_scale_byte(base, j) & 63u), f32(k_scale_byte(base, j + 4u) & 63u));
    }
    let b = k_scale_byte(base, j + 4u);
    let sc = (b & 15u) | ((k_scale_byte(base, j - 4u) >> 6u) << 4u);
    let mn = (b >> 4u) | ((k_scale_byte(base, j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let base = row * p.w_stride + (blk / 8u) * 44u;
    let j = blk % 8u;
    let dm = unpack2x16float(w[base]);
    let sm = k_scale_min(base, j);
    let qw = base + 12u + (j / 2u) * 8u;
    let shift = 4u * (j & 1u);
    let c = blk * 32u;
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let q = w[qw + i] >> shift;
        // qh bytes 4i..4i+3, bit j of each
        let h = w[base + 4u + i] >> j;
        for (var k = 0u; k < 4u; k++) {
            let xv = xin(c + 4u * i + k);
            let qv = ((q >> (8u * k)) & 0xfu) | (((h >> (8u * k)) & 1u) << 4u);
            qx += f32(qv) * xv;
            sx += xv;
        }
    }
    return dm.x * sm.x * qx - dm.y * sm.y * sx;
}

fn fmt_load(row: u32, col: u32) -> f32 {
    let base = row * p.w_stride + (col / 256u) * 44u;
    let j = (col % 256u) / 32u;
    let l = col % 32u;
    let dm = unpack2x16float(w[base]);
    let sm = k_scale_min(base, j);
    let byte_i = (j / 2u) * 32u + l;
    let lo = (w[base + 12u + byte_i / 4u] >> (8u * (byte_i % 4u) + 4u * (j & 1u))) & 0xfu;
    let hi = (w[base + 4u + l / 4u] >> (8u * (l % 4u) + j)) & 1u;
    return dm.x * sm.x * f32(lo | (hi << 4u)) - dm.y * sm.y;
}
