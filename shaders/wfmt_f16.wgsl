// Weight format: 16-bit floats, f16 or bf16 (override BF16), two per u32 (even column in the low
// half). Rows are padded with zeros to a multiple of 8 values, so a block of 8 is one vec4<u32>.
// `w_stride` counts vec4<u32> per row. unpack2x16float and the bf16 shift are core WGSL: no
// SHADER_F16 needed.

override BF16: bool = false;

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;

const FMT_BLOCK: u32 = 8u;

fn unpack2(u: u32) -> vec2<f32> {
    if (BF16) {
        return vec2<f32>(bitcast<f32>(u << 16u), bitcast<f32>(u & 0xffff0000u));
    }
    return unpack2x16float(u);
}

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let q = w[row * p.w_stride + blk];
    let c = blk * 8u;
    let a = unpack2(q.x);
    let b = unpack2(q.y);
    let d = unpack2(q.z);
    let e = unpack2(q.w);
    if (c + 8u <= p.cols) {
        return a.x * xin(c) + a.y * xin(c + 1u) + b.x * xin(c + 2u) + b.y * xin(c + 3u)
             + d.x * xin(c + 4u) + d.y * xin(c + 5u) + e.x * xin(c + 6u) + e.y * xin(c + 7u);
    }
    // Last, partial block: the input past `cols` may be anything (even NaN), so never touch it.
    let vals = array<f32, 8>(a.x, a.y, b.x, b.y, d.x, d.y, e.x, e.y);
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        if (c + j < p.cols) { s += vals[j] * xin(c + j); }
    }
    return s;
}

// Values col .. col + 7 (col a multiple of 8), for the tiled matmuls: one 16-byte load.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let q = w[row * p.w_stride + col / 8u];
    let a = unpack2(q.x);
    let b = unpack2(q.y);
    let c = unpack2(q.z);
    let d = unpack2(q.w);
    return Oct(vec4<f32>(a, b), vec4<f32>(c, d));
}

// Values col .. col + 7 as packed halves, for matmul_coop's staging: f16 as stored (no decode, so
// nothing waits for the load until the halves are written to workgroup memory); bf16 converted.
fn fmt_load8h(row: u32, col: u32) -> vec4<u32> {
    if (BF16) { return pack_oct(fmt_load8(row, col)); }
    return w[row * p.w_stride + col / 8u];
}

// Values col .. col + 31 (col a multiple of 32) for matvec_cpu: four 16-byte loads. Rows are padded
// to 8 values only, so an octet past the row is left zero rather than read from the next row.
// Element i of the result holds values 4i .. 4i + 3.
fn fmt_dec32(row: u32, col: u32) -> array<vec4<f32>, 8> {
    var o: array<vec4<f32>, 8>;
    for (var k = 0u; k < 4u; k++) {
        let i = col / 8u + k;
        if (i < p.w_stride) {
            let q = w[row * p.w_stride + i];
            o[2u * k] = vec4<f32>(unpack2(q.x), unpack2(q.y));
            o[2u * k + 1u] = vec4<f32>(unpack2(q.z), unpack2(q.w));
        }
    }
    return o;
}

// The dot product of values col .. col + 31 with xs, for matvec_cpu's one-token pass.
fn fmt_dot32(row: u32, col: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> f32 {
    return dot32(fmt_dec32(row, col), xs);
}
