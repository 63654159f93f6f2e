// Weight format: ggml Q6_K, each 210-byte super-block of 256 values padded at its end to 212 bytes
// (53 words) on upload: words 0..31 = ql[128], words 32..47 = qh[64], words 48..51 = 16 signed
// 8-bit scales, word 52 = d (f16, low half).
// Value v = 128 n + 32 k + l (half n, quarter k, l < 32): low 4 bits from ql[64 n + 32 (k & 1) + l]
// (low nibble for k < 2, high for k >= 2), top 2 bits from qh[32 n + l] >> 2k; q - 32, times
// d * scales[8 n + 2 k + l / 16].
// Drivers see blocks of 32 (one quarter of a half). `w_stride` counts u32 per row (cols / 256 * 53).

@group(0) @binding(1) var<storage, read> w: array<u32>;

const FMT_BLOCK: u32 = 32u;

fn q6_scale(base: u32, i: u32) -> f32 {
    // the signed byte offset by 128 to unsigned, made a float without a conversion
    let b = ((w[base + 48u + i / 4u] >> (8u * (i % 4u))) & 0xffu) ^ 0x80u;
    return u2f(b) - 128.0;
}

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let base = row * p.w_stride + (blk / 8u) * 53u;
    let s = blk % 8u;
    let n = s / 4u;
    let k = s % 4u;
    let d = unpack2x16float(w[base + 52u]).x;
    let lw = base + (64u * n + 32u * (k & 1u)) / 4u;
    let lshift = 4u * (k / 2u);
    let hw = base + 32u + (32u * n) / 4u;
    let c = blk * 32u;
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let lo = w[lw + i] >> lshift;
        let hi = w[hw + i] >> (2u * k);
        var part = 0.0;
        for (var b = 0u; b < 4u; b++) {
            let q = ((lo >> (8u * b)) & 0xfu) | (((hi >> (8u * b)) & 3u) << 4u);
            part += (f32(q) - 32.0) * xin(c + 4u * i + b);
        }
        // values l < 16 and l >= 16 have different scales
        if (i < 4u) { acc0 += part; } else { acc1 += part; }
    }
    let sc = 8u * n + 2u * k;
    return d * (q6_scale(base, sc) * acc0 + q6_scale(base, sc + 1u) * acc1);
}

// Where values col .. col + 7 (col a multiple of 8) of a row live: all in one 16-value half of a
// quarter, so one scale. Their super-block's first word, the first of their two words of low bits
// and of top bits, the shifts to their bits, and their scale's index.
struct Q6Octet {
    base: u32,
    lw: u32,
    hw: u32,
    lsh: u32,
    hsh: u32,
    si: u32,
}

fn q6_octet(row: u32, col: u32) -> Q6Octet {
    let base = row * p.w_stride + (col / 256u) * 53u;
    let v = col % 256u;
    let n = v / 128u;
    let k = (v % 128u) / 32u;
    let l = v % 32u;
    return Q6Octet(base, base + (64u * n + 32u * (k & 1u) + l) / 4u, base + 32u + (32u * n + l) / 4u, 4u * (k / 2u), 2u * k, 8u * n + 2u * k + l / 16u);
}

// Values col .. col + 7 (col a multiple of 8).
fn fmt_load8(row: u32, col: u32) -> Oct {
    let o = q6_octet(row, col);
    let s = unpack2x16float(w[o.base + 52u]).x * q6_scale(o.base, o.si);
    let q0 = ((w[o.lw] >> o.lsh) & 0x0f0f0f0fu) | (((w[o.hw] >> o.hsh) & 0x03030303u) << 4u);
    let q1 = ((w[o.lw + 1u] >> o.lsh) & 0x0f0f0f0fu) | (((w[o.hw + 1u] >> o.hsh) & 0x03030303u) << 4u);
    return Oct(s * bytes4f(q0, 0x3fu, 8388640.0), s * bytes4f(q1, 0x3fu, 8388640.0));
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
