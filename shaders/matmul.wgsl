// matmul: Y = X W^T over a chunk of tokens (prefill), any weight format, f32 throughout.
// The portable variant: register-blocked FMA tiles, for adapters without cooperative matrices
// (CPU adapters, older GPUs); matmul_coop.wgsl replaces it where tensor cores are offered.
//
// Composed after a weight-format file (wfmt_*.wgsl) that provides `fmt_load8(row, col)`: each
// weight block is decoded once per tile, eight values at a time, never per element.
// Dispatch: (ceil(rows / 64), ceil(n_tok / 64), splits) workgroups of 256 threads. A workgroup owns a
// 64-row x 64-token tile of Y and walks its split of K (wg.z of num_workgroups.z, whole steps;
// one split: all of it) in steps of 32 through workgroup memory: thread li
// stages one octet of weights (row li / 4, columns 8 (li % 4) ..) and one of activations, then
// computes a 4-row x 4-token block (rows 4 (li % 16) .., tokens 4 (li / 16) ..) with vec4 FMAs,
// so consecutive threads write consecutive rows of one token.
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][y_stride] f32 (rows row0 .. row0 +
// rows of this shard). Modes as in matvec: 0 store, 1 accumulate, 2 SwiGLU over interleaved
// (gate, up) row pairs. Split along K, split z stores its partial products (mode 0) in the plane
// z * n_tok * y_stride of y, for matmul_split_reduce.wgsl to sum.

// struct Params, struct Oct: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const BM: u32 = 64u; // weight rows per tile
const BN: u32 = 64u; // tokens per tile
const BK: u32 = 32u;

// [k][row / 4] and [k][token / 4]: the inner loop reads one vec4 of each per k.
var<workgroup> ws: array<vec4<f32>, 512>;
var<workgroup> xs: array<vec4<f32>, 512>;

// fmt_block_dot (the matvec path, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return x[i]; }

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row_base = wg.x * BM;
    let tok_base = wg.y * BN;
    let tr = li % 16u;
    let tc = li / 16u;
    // staging coordinates: one weight octet and one activation octet per thread
    let sr = li / 4u;
    let sk = (li % 4u) * 8u;
    let w_row = row_base + sr;
    let x_tok = tok_base + sr;
    let x_base = p.x_off + x_tok * p.x_stride;
    // this split's columns k_begin .. k_end, whole steps (workgroup_id is uniform, so the
    // barriers in the loop stay in uniform control flow)
    let steps = (p.cols + BK - 1u) / BK;
    let per = (steps + nwg.z - 1u) / nwg.z;
    let k_begin = min(wg.z * per, steps) * BK;
    let k_end = min(k_begin + per * BK, p.cols);
    let yz = wg.z * p.n_tok * p.y_stride;
    var acc: array<vec4<f32>, 4>; // [row i] -> 4 tokens
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        let col = k0 + sk;
        var wv = Oct(vec4<f32>(0.0), vec4<f32>(0.0));
        if (w_row < p.rows && col < p.cols) { wv = fmt_load8(w_row, col); }
        var xv: array<f32, 8>;
        for (var j = 0u; j < 8u; j++) {
            // past `cols` the input may hold anything (even NaN): never read it
            xv[j] = 0.0;
            if (x_tok < p.n_tok && col + j < p.cols) { xv[j] = x[x_base + col + j]; }
        }
        for (var j = 0u; j < 4u; j++) {
            ws[(sk + j) * 16u + sr / 4u][sr % 4u] = wv.lo[j];
            ws[(sk + 4u + j) * 16u + sr / 4u][sr % 4u] = wv.hi[j];
            xs[(sk + j) * 16u + sr / 4u][sr % 4u] = xv[j];
            xs[(sk + 4u + j) * 16u + sr / 4u][sr % 4u] = xv[4u + j];
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let a = ws[k * 16u + tr];
            let b = xs[k * 16u + tc];
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let tok = tok_base + tc * 4u + j;
        if (tok >= p.n_tok) { continue; }
        for (var i = 0u; i < 4u; i++) {
            let row = row_base + tr * 4u + i;
            if (row >= p.rows) { continue; }
            let out = yz + tok * p.y_stride + p.row0 + row;
            let v = acc[i][j];
            if (p.mode == 0u) {
                y[out] = v;
            } else if (p.mode == 1u) {
                y[out] = y[out] + v;
            } else if ((i & 1u) == 0u) {
                let up = acc[i + 1u][j];
                y[tok * p.y_stride + (p.row0 + row) / 2u] = v / (1.0 + exp(-v)) * up;
            }
        }
    }
}
