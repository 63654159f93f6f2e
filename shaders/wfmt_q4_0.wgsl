// Weight format: ggml Q4_0, each 18-byte block padded to 20 bytes on upload so blocks are
// u32-aligned: word 0 = d (f16, low half; high half zero); words 1..4 = 16 bytes of nibbles, byte j
// holding value j (low nibble) and value j + 16 (high nibble). value = d * (q - 8).
// `w_stride` counts u32 per row (cols / 32 * 5).

@group(0) @binding(1) var<storage, read> w: array<u32>;

const FMT_BLOCK: u32 = 32u;

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let base = row * p.w_stride + blk * 5u;
    let d = unpack2x16float(w[base]).x;
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
    return d * (qx - 8.0 * sx);
}

// Four nibbles of a word (already shifted to the low nibbles of its bytes) as floats.
fn nib4(q: u32) -> vec4<f32> {
    return bytes4f(q, 0xfu, 8388608.0);
}

// The same less 8 (Q4_0's zero point), in the one subtraction.
fn nib4m8(q: u32) -> vec4<f32> {
    return bytes4f(q, 0xfu, 8388616.0);
}

// Values col .. col + 7 (col a multiple of 8): bytes j .. j + 7 of the nibbles (j = col % 16), low
// nibbles for the first half of the block, high for the second.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let d = unpack2x16float(w[base]).x;
    let j = col % 32u;
    let wi = base + 1u + (j % 16u) / 4u;
    let sh = 4u * (j / 16u);
    return Oct(d * nib4m8(w[wi] >> sh), d * nib4m8(w[wi + 1u] >> sh));
}

// Values col .. col + 31 (col a multiple of 32: one block) for matvec_cpu: the scale and the four
// nibble words loaded once. Element i of the result holds values 4i .. 4i + 3.
fn fmt_dec32(row: u32, col: u32) -> array<vec4<f32>, 8> {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let d = unpack2x16float(w[base]).x;
    var o: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = w[base + 1u + i];
        o[i] = d * nib4m8(q);
        o[i + 4u] = d * nib4m8(q >> 4u);
    }
    return o;
}

// The dot product of values col .. col + 31 (one block) with xs (xsum = the sum of xs), for
// matvec_cpu's one-token pass: d * (sum(q x) - 8 sum(x)), the nibbles used as they are.
fn fmt_dot32(row: u32, col: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> f32 {
    let base = row * p.w_stride + (col / 32u) * 5u;
    let d = unpack2x16float(w[base]).x;
    var qx = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let q = w[base + 1u + i];
        qx = fma(nib4(q), xs[i], qx);
        qx = fma(nib4(q >> 4u), xs[i + 4u], qx);
    }
    return d * (((qx.x + qx.y) + (qx.z + qx.w)) - 8.0 * xsum);
}

// matvec_blocks' interface: a block's words (loaded together, decoded after), and its dot product
// with a block of the quantised input (`XBlock` in matvec_blocks.wgsl; xq = 256 * the sum of its
// values in quantisation steps), in the input's steps: d * (sum(q x) - 8 sum(x)).
const FMT_BW: u32 = 5u;

fn fmt_bload(row: u32, blk: u32) -> array<u32, 5> {
    let base = row * p.w_stride + blk * 5u;
    return array<u32, 5>(w[base], w[base + 1u], w[base + 2u], w[base + 3u], w[base + 4u]);
}

fn fmt_bidot(b: array<u32, 5>, x: array<vec4<u32>, 4>, xq: i32) -> f32 {
    return unpack2x16float(b[0]).x * f32(q4_idot(b, x) - 8 * xq);
}
