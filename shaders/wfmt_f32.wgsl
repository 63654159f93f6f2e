// Weight format: f32, rows padded to a multiple of 4 values (one vec4<f32> per block). Used for
// small matrices that need full precision (ESA's compression maps); model weights are 16-bit or
// quantized. `w_stride` counts vec4<f32> per row.

@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;

const FMT_BLOCK: u32 = 4u;

fn fmt_block_dot(row: u32, blk: u32) -> f32 {
    let q = w[row * p.w_stride + blk];
    let c = blk * 4u;
    if (c + 4u <= p.cols) {
        return q.x * xin(c) + q.y * xin(c + 1u) + q.z * xin(c + 2u) + q.w * xin(c + 3u);
    }
    var s = 0.0;
    for (var j = 0u; j < 4u; j++) {
        if (c + j < p.cols) { s += q[j] * xin(c + j); }
    }
    return s;
}

// Values col .. col + 7 (col a multiple of 8); rows are padded to 4 values only, so the second
// half is read only while it lies inside the row.
fn fmt_load8(row: u32, col: u32) -> Oct {
    let b = row * p.w_stride + col / 4u;
    var hi = vec4<f32>(0.0);
    if (col + 4u < p.cols) { hi = w[b + 1u]; }
    return Oct(w[b], hi);
}

// Values col .. col + 31 (col a multiple of 32) for matvec_cpu, as four fmt_load8; octets past the
// row are left zero.
fn fmt_dec32(row: u32, col: u32) -> array<vec4<f32>, 8> {
    return dec32_by_octets(row, col);
}

// The dot product of values col .. col + 31 with xs, for matvec_cpu's one-token pass.
fn fmt_dot32(row: u32, col: u32, xs: array<vec4<f32>, 8>, xsum: f32) -> f32 {
    return dot32(fmt_dec32(row, col), xs);
}
