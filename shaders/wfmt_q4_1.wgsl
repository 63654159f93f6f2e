// Weight format: ggml Q4_1, stored as in the file (20-byte blocks are u32-aligned).
// Block of 32 values = 5 u32: word 0 = (d: f16 low half, m: f16 high half); words 1..4 = 16 bytes of
// nibbles: byte j holds value j in its low nibble and value j + 16 in its high nibble.
// value = d * q + m. `w_stride` counts u32 per row (cols / 32 * 5).

@group(0) @binding(1) var<storage, read> w: array<u32>;

const FMT_BLOCK: u32 = 32u;

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let base = row * p.w_stride + blk * 5u;
    let dm = unpack2x16float(w[base]);
    let c = blk * 32u;
    var qx = 0.0;
    var sx = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let q = w[base + 1u + i];
        for (var k = 0u; k < 4u; k++) {
            let lo = f32((q >> (8u * k)) & 0xfu);
            let hi = f32((q >> (8u * k + 4u)) & 0xfu);
            let x0 = xin(c + 4u * i + k);
            let x1 = xin(c + 16u + 4u * i + k);
            qx += lo * x0 + hi * x1;
            sx += x0 + x1;
        }
    }
    return dm.x * qx + dm.y * sx;
}

// Four nibbles of a word (already shifted to the low nibbles of its bytes) as floats.
fn nib4(q: u32) -> vec4<f32> {
    return bytes4f(q, 0xfu, 8388608.0);
}

// Values col .. col + 7 (col a multiple of 8), laid out as in Q4_0.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let dm = unpack2x16float(w[base]);
    let j = col % 32u;
    let wi = base + 1u + (j % 16u) / 4u;
    let sh = 4u * (j / 16u);
    return Oct(dm.x * nib4(w[wi] >> sh) + dm.y, dm.x * nib4(w[wi + 1u] >> sh) + dm.y);
}

// Values col .. col + 31 (col a multiple of 32: one block) for matvec_cpu: the scales and the four
// nibble words loaded once. Element i of the result holds values 4i .. 4i + 3.
fn fmt_dec32(row: u32, col: u32) -> array<vec4<f32>, 8> {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let dm = unpack2x16float(w[base]);
    var o: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = w[base + 1u + i];
        o[i] = fma(vec4<f32>(dm.x), nib4(q), vec4<f32>(dm.y));
        o[i + 4u] = fma(vec4<f32>(dm.x), nib4(q >> 4u), vec4<f32>(dm.y));
    }
    return o;
}

// The dot product of values col .. col + 31 (one block) with xs (xsum = the sum of xs), for
// matvec_cpu's one-token pass: d * sum(q x) + m * sum(x), the nibbles used as they are.
fn fmt_dot32(row: u32, col: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> f32 {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let dm = unpack2x16float(w[base]);
    var qx = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let q = w[base + 1u + i];
        qx = fma(nib4(q), xs[i], qx);
        qx = fma(nib4(q >> 4u), xs[i + 4u], qx);
    }
    return dm.x * ((qx.x + qx.y) + (qx.z + qx.w)) + dm.y * xsum;
}

// matvec_blocks' interface: a block's words (loaded together, decoded after), and its dot product
// with a block of the quantised input (`XBlock` in matvec_blocks.wgsl; xq = 256 * the sum of its
// values in quantisation steps), in the input's steps: d * sum(q x) + m * sum(x).
const FMT_BW: u32 = 5u;

fn fmt_bload(row: u32, blk: u32) -> array<u32, 5> {
    let base = row * p.w_stride + blk * 5u;
    return array<u32, 5>(w[base], w[base + 1u], w[base + 2u], w[base + 3u], w[base + 4u]);
}

fn fmt_bidot(b: array<u32, 5>, x: array<vec4<u32>, 4>, xq: i32) -> f32 {
    let dm = unpack2x16float(b[0]);
    return dm.x * f32(q4_idot(b, x)) + dm.y * f32(xq);
}
