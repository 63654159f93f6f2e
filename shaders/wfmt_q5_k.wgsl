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
        return vec2<f32>(u2f(k_scale_byte(base, j) & 63u), u2f(k_scale_byte(base, j + 4u) & 63u));
    }
    let b = k_scale_byte(base, j + 4u);
    let sc = (b & 15u) | ((k_scale_byte(base, j - 4u) >> 6u) << 4u);
    let mn = (b >> 4u) | ((k_scale_byte(base, j) >> 6u) << 4u);
    return vec2<f32>(u2f(sc), u2f(mn));
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

// Four nibbles of a word (already shifted to the low nibbles of its bytes) as floats.
fn nib4(q: u32) -> vec4<f32> {
    return bytes4f(q, 0xfu, 8388608.0);
}

// Values col .. col + 7 (col a multiple of 8): nibbles as in Q4_K plus bit j of qh bytes l .. l + 7.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let base = row * p.w_stride + (col / 256u) * 44u;
    let j = (col % 256u) / 32u;
    let l = col % 32u;
    let dm = unpack2x16float(w[base]);
    let sm = k_scale_min(base, j);
    let a = dm.x * sm.x;
    let b = dm.y * sm.y;
    let wi = base + 12u + ((j / 2u) * 32u + l) / 4u;
    let sh = 4u * (j & 1u);
    let hi = base + 4u + l / 4u;
    // the five bits of each value put together in its byte, then made floats without a conversion
    let q0 = bytes4f(((w[wi] >> sh) & 0x0f0f0f0fu) | (((w[hi] >> j) & 0x01010101u) << 4u), 0x1fu, 8388608.0);
    let q1 = bytes4f(((w[wi + 1u] >> sh) & 0x0f0f0f0fu) | (((w[hi + 1u] >> j) & 0x01010101u) << 4u), 0x1fu, 8388608.0);
    return Oct(a * q0 - b, a * q1 - b);
}

// Values col .. col + 31 (col a multiple of 32) for matvec_cpu, as four fmt_load8 (the sub-block
// scales are decoded per octet; a dedicated decode would load them once per 32 values).
fn fmt_dec32(row: u32, col: u32) -> array<vec4<f32>, 8> {
    return dec32_by_octets(row, col);
}

// The dot product of values col .. col + 31 with xs, for matvec_cpu's one-token pass.
fn fmt_dot32(row: u32, col: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> f32 {
    return dot32(fmt_dec32(row, col), xs);
}
