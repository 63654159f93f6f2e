// matmul: Y = X W^T over a chunk of tokens (prefill), any weight format, f32 accumulation.
// Portable tiled fallback; a cooperative-matrix variant can replace it where the adapter offers one.
//
// Composed after a weight-format file (wfmt_*.wgsl) that provides `fmt_load(row, col)`.
// Dispatch: (ceil(rows / 64), ceil(n_tok / 64)) workgroups of 256 threads; each thread computes a
// 4-row x 4-token block of the 64 x 64 tile; K is walked in steps of 16 through workgroup memory.
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][y_stride] f32 (rows row0 .. row0 + rows of this shard).
// Modes as in matvec: 0 store, 1 accumulate, 2 SwiGLU over interleaved (gate, up) row pairs.

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> ws: array<f32, 1024>; // [BK][BM]
var<workgroup> xs: array<f32, 1024>; // [BK][BN]

// fmt_block_dot (unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return x[i]; }

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row_base = wg.x * BM;
    let tok_base = wg.y * BN;
    let tr = li / 16u;
    let tc = li % 16u;
    var acc: array<array<f32, 4>, 4>; // [row][token]
    for (var k0 = 0u; k0 < p.cols; k0 += BK) {
        for (var i = 0u; i < 4u; i++) {
            let e = li + 256u * i;
            let k = e % BK;
            let m = e / BK;
            let row = row_base + m;
            let col = k0 + k;
            var wv = 0.0;
            if (row < p.rows && col < p.cols) { wv = fmt_load(row, col); }
            ws[k * BM + m] = wv;
            let tok = tok_base + m;
            var xv = 0.0;
            if (tok < p.n_tok && col < p.cols) { xv = x[p.x_off + tok * p.x_stride + col]; }
            xs[k * BN + m] = xv;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = ws[k * BM + tr * 4u + i];
                b[i] = xs[k * BN + tc * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let tok = tok_base + tc * 4u + j;
        if (tok >= p.n_tok) { continue; }
        for (var i = 0u; i < 4u; i++) {
            let row = row_base + tr * 4u + i;
            if (row >= p.rows) { continue; }
            let out = tok * p.y_stride + p.row0 + row;
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
