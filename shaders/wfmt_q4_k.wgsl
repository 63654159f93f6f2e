// Weight format: ggml Q4_K, stored as in the file (144-byte super-blocks of 256 values are
// u32-aligned: 36 words). Word 0 = (d: f16 low half, dmin: f16 high half); words 1..3 = 12 bytes of
// packed 6-bit (scale, min) for the 8 sub-blocks of 32; words 4..35 = 128 bytes of nibbles: chunk
// c (0..3) owns bytes 32c..32c+31, whose low nibbles are sub-block 2c and high nibbles 2c+1.
// value = d * scale_j * q - dmin * min_j.
// The drivers see blocks of 32 (one sub-block) so a row has enough blocks to spread over lanes.
// `w_stride` counts u32 per row (cols / 256 * 36).

@group(0) @binding(1) var<storage, read> w: array<u32>;

const FMT_BLOCK: u32 = 32u;

// Byte i of the 12 scale bytes of the super-block starting at word `base`.
fn k_scale_byte(base: u32, i: u32) -> u32 {
    return (w[base + 1u + i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// (scale, min) of sub-block j: j < 4 keeps them in the low 6 bits of bytes j and j + 4; j >= 4 has
// its low 4 bits in byte j + 4 and its top 2 bits in the top bits of bytes j - 4 and j.
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
    let base = row * p.w_stride + (blk / 8u) * 36u;
    let j = blk % 8u;
    let dm = unpack2x16float(w[base]);
    let sm = k_scale_min(base, j);
    let qw = base + 4u + (j / 2u) * 8u;
    let shift = 4u * (j & 1u);
    let c = blk * 32u;
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let q = w[qw + i] >> shift;
        for (var k = 0u; k < 4u; k++) {
            let xv = xin(c + 4u * i + k);
            qx += f32((q >> (8u * k)) & 0xfu) * xv;
            sx += xv;
        }
    }
    return dm.x * sm.x * qx - dm.y * sm.y * sx;
}

// Four nibbles of a word (already shifted to the low nibbles of its bytes) as floats.
fn nib4(q: u32) -> vec4<f32> {
    return bytes4f(q, 0xfu, 8388608.0);
}

// Values col .. col + 7 (col a multiple of 8): one sub-block, so one (scale, min); two words of
// nibbles.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let base = row * p.w_stride + (col / 256u) * 36u;
    let j = (col % 256u) / 32u;
    let l = col % 32u;
    let dm = unpack2x16float(w[base]);
    let sm = k_scale_min(base, j);
    let a = dm.x * sm.x;
    let b = dm.y * sm.y;
    let wi = base + 4u + ((j / 2u) * 32u + l) / 4u;
    let sh = 4u * (j & 1u);
    return Oct(a * nib4(w[wi] >> sh) - b, a * nib4(w[wi + 1u] >> sh) - b);
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
