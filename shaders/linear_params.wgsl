// Parameters shared by the linear-layer drivers (matvec.wgsl, matvec_sg.wgsl, matmul.wgsl); the op
// prepends this file. Mirrors `Params` in src/gpu/ops/linear.rs.
//   rows, cols: this shard's rows and the input width; w_stride: row stride in the format's units;
//   row0: first output row of the shard; x_stride / y_stride / x_off: activation layout (floats);
//   n_tok: tokens; mode: 0 store, 1 accumulate, 2 SwiGLU; norm/eps: fused input RMSNorm;
//   grid_x: width of a 2-D workgroup grid.

struct Params {
    rows: u32,
    cols: u32,
    w_stride: u32,
    row0: u32,
    x_stride: u32,
    y_stride: u32,
    n_tok: u32,
    mode: u32,
    norm: u32,
    eps: f32,
    grid_x: u32,
    x_off: u32,
}

// Eight consecutive weights of one row, decoded: what the format files' `fmt_load8(row, col)`
// returns to the tiled matmuls (one block decode per 8 values, not per value).
struct Oct {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// An octet as eight packed halves (two per u32, the even value low): matmul_coop's staging unit.
fn pack_oct(v: Oct) -> vec4<u32> {
    return vec4<u32>(pack2x16float(v.lo.xy), pack2x16float(v.lo.zw), pack2x16float(v.hi.xy), pack2x16float(v.hi.zw));
}

// The four bytes of q, each masked with `mask`, as floats minus `off - 8388608`, without an
// int-to-float conversion: 0x4b000000 | b is the float 2^23 + b exactly (b < 2^23), so an AND/OR
// and a subtraction replace a conversion, which NVIDIA GPUs issue at an eighth of the FMA rate
// (on the H200 the quantised matvecs were bound by latency, not by it: docs/perf.md, session 8).
// E.g. Q4_0's nibbles less 8: bytes4f(q, 0xfu, 8388616.0).
fn bytes4f(q: u32, mask: u32, off: f32) -> vec4<f32> {
    let b = (vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) & vec4<u32>(mask)) | vec4<u32>(0x4b000000u);
    return bitcast<vec4<f32>>(b) - vec4<f32>(off);
}

// A small unsigned integer (< 2^23) as a float, the same way.
fn u2f(v: u32) -> f32 {
    return bitcast<f32>(v | 0x4b000000u) - 8388608.0;
}

// matvec_blocks' integer dot product of one 32-value block with both input levels (`XBlock`,
// vec4 k = high level of values 8k .. 8k + 3, 8k + 4 .. 8k + 7, then their low level): w[i] holds
// the block's values 4i .. 4i + 3 as signed bytes, so each word of four products is one
// dot4I8Packed (one instruction where the adapter has integer dot products). Returns
// 256 * (high level's sum) + (low level's sum), exact in i32 for bytes of at most 127 in size.
fn xblock_idot(w: array<u32, 8>, x: array<vec4<u32>, 4>) -> i32 {
    let s_hi = (dot4I8Packed(w[0], x[0].x) + dot4I8Packed(w[1], x[0].y)) + (dot4I8Packed(w[2], x[1].x) + dot4I8Packed(w[3], x[1].y))
        + (dot4I8Packed(w[4], x[2].x) + dot4I8Packed(w[5], x[2].y)) + (dot4I8Packed(w[6], x[3].x) + dot4I8Packed(w[7], x[3].y));
    let s_lo = (dot4I8Packed(w[0], x[0].z) + dot4I8Packed(w[1], x[0].w)) + (dot4I8Packed(w[2], x[1].z) + dot4I8Packed(w[3], x[1].w))
        + (dot4I8Packed(w[4], x[2].z) + dot4I8Packed(w[5], x[2].w)) + (dot4I8Packed(w[6], x[3].z) + dot4I8Packed(w[7], x[3].w));
    return s_hi * 256 + s_lo;
}

// The same for a Q4_0 or Q4_1 block as `fmt_bload` returns it (words 1..4 its 16 bytes, byte j
// holding value j in its low nibble and value j + 16 in its high one): nibbles 0..15 are valid
// signed bytes, so the low nibbles are values 0..15's words and the high nibbles 16..31's (at most
// 32 * 15 * 127 * 257).
fn q4_idot(b: array<u32, 5>, x: array<vec4<u32>, 4>) -> i32 {
    let m = 0x0f0f0f0fu;
    return xblock_idot(array<u32, 8>(b[1] & m, b[2] & m, b[3] & m, b[4] & m, (b[1] >> 4u) & m, (b[2] >> 4u) & m, (b[3] >> 4u) & m, (b[4] >> 4u) & m), x);
}

// The dot product of 32 values held as eight vec4 (the float formats' fmt_dot32, for matvec_cpu).
fn dot32(a: array<vec4<f32>, 8>, b: array<vec4<f32>, 8>) -> f32 {
    var s = a[0] * b[0];
    s = fma(a[1], b[1], s);
    s = fma(a[2], b[2], s);
    s = fma(a[3], b[3], s);
    s = fma(a[4], b[4], s);
    s = fma(a[5], b[5], s);
    s = fma(a[6], b[6], s);
    s = fma(a[7], b[7], s);
    return (s.x + s.y) + (s.z + s.w);
}

// Values col .. col + 31 (col a multiple of 32) as four fmt_load8 (from the weight-format file
// composed after this one); octets past the row are left zero. The fmt_dec32 of formats without a
// dedicated 32-value decode (f32, and the K-quants, whose sub-block scales this decodes per octet).
fn dec32_by_octets(row: u32, col: u32) -> array<vec4<f32>, 8> {
    var o: array<vec4<f32>, 8>;
    for (var k = 0u; k < 4u; k++) {
        if (col + 8u * k < p.cols) {
            let e = fmt_load8(row, col + 8u * k);
            o[2u * k] = e.lo;
            o[2u * k + 1u] = e.hi;
        }
    }
    return o;
}
