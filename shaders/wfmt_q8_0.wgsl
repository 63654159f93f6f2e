// Weight format: ggml Q8_0, each 34-byte block padded to 36 bytes on upload so blocks are
// u32-aligned: word 0 = d (f16, low half); words 1..8 = 32 signed bytes, value j in byte j.
// value = d * q. `w_stride` counts u32 per row (cols / 32 * 9).

@group(0) @binding(1) var<storage, read> w: array<u32>;

const FMT_BLOCK: u32 = 32u;

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let base = row * p.w_stride + blk * 9u;
    let d = unpack2x16float(w[base]).x;
    let c = blk * 32u;
    var acc = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let q = unpack4xI8(w[base + 1u + i]);
        acc += f32(q.x) * xin(c + 4u * i) + f32(q.y) * xin(c + 4u * i + 1u)
             + f32(q.z) * xin(c + 4u * i + 2u) + f32(q.w) * xin(c + 4u * i + 3u);
    }
    return d * acc;
}

// The four signed bytes of q as floats: flipping each sign bit offsets them by 128 to unsigned
// bytes, which bytes4f turns into floats without a conversion.
fn i8x4(q: u32) -> vec4<f32> {
    return bytes4f(q ^ 0x80808080u, 0xffu, 8388736.0);
}

// Values col .. col + 7 (col a multiple of 8): two words of the block, one scale.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let base = row * p.w_stride + (col / 32u) * 9u;
    let d = unpack2x16float(w[base]).x;
    let wi = base + 1u + (col % 32u) / 4u;
    return Oct(d * i8x4(w[wi]), d * i8x4(w[wi + 1u]));
}

// Values col .. col + 31 (col a multiple of 32: one block) for matvec_cpu: one scale load and eight
// words. Element i of the result holds values 4i .. 4i + 3.
fn fmt_dec32(row: u32, col: u32) -> array<vec4<f32>, 8> {
    let base = row * p.w_stride + (col / 32u) * 9u;
    let d = unpack2x16float(w[base]).x;
    var o: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        o[i] = d * i8x4(w[base + 1u + i]);
    }
    return o;
}

// The dot product of values col .. col + 31 (one block) with xs, for matvec_cpu's one-token pass:
// d * sum(q x).
fn fmt_dot32(row: u32, col: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> f32 {
    let base = row * p.w_stride + (col / 32u) * 9u;
    let d = unpack2x16float(w[base]).x;
    var qx = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        qx = fma(i8x4(w[base + 1u + i]), xs[i], qx);
    }
    return d * ((qx.x + qx.y) + (qx.z + qx.w));
}

// matvec_blocks' interface: a block's words (loaded together, decoded after), and its dot product
// with a block of the quantised input (`XBlock` in matvec_blocks.wgsl), in the input's steps:
// d * sum(q x) (`xblock_idot`: exact in i32, at most 32 * 127 * 127 * 257).
const FMT_BW: u32 = 9u;

fn fmt_bload(row: u32, blk: u32) -> array<u32, 9> {
    let base = row * p.w_stride + blk * 9u;
    return array<u32, 9>(w[base], w[base + 1u], w[base + 2u], w[base + 3u], w[base + 4u], w[base + 5u], w[base + 6u], w[base + 7u], w[base + 8u]);
}

fn fmt_bidot(b: array<u32, 9>, x: array<vec4<u32>, 4>, xq: i32) -> f32 {
    return unpack2x16float(b[0]).x * f32(xblock_idot(array<u32, 8>(b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]), x));
}
