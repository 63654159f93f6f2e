// matvec: y = W x for a few tokens, 16-bit or quantized W (decode path; memory-bound).
//
// Composed at load time after a weight-format file (wfmt_*.wgsl) that declares the weight binding
// `w` (binding 1) and defines `FMT_BLOCK` (elements per block) and `fmt_block_dot(row, blk)`
// (dot of block `blk` of local row `row` with the input, read through `xin`).
//
// Dispatch: one workgroup per ROWS output rows of this weight shard (flat index wg.x + wg.y * grid_x),
// 256 threads = ROWS rows x LANES lanes (override constants); lanes stride over the blocks of their row, then reduce in
// workgroup memory.
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][y_stride] f32, this shard writes rows row0 .. row0 + rows;
// gamma [cols] f32 (RMSNorm weight, read when norm = 1).
// Modes: 0 store y = Wx; 1 accumulate y += Wx (residual add); 2 SwiGLU over interleaved rows
// (gate, up) pairs: y[r/2] = silu(W[r] x) * W[r+1] x.

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;

// ROWS x LANES = 256. GPUs: 4 x 64 (wide coalesced rows); CPU adapters: 32 x 8 (fewer workgroups).
override ROWS: u32 = 4u;
override LANES: u32 = 64u;

var<private> x_base: u32;
var<private> x_scale: f32;
var<workgroup> red: array<f32, 256>;

// Input element i of the current token, RMS-normalised when requested.
fn xin(i: u32) -> f32 {
    let v = x[x_base + i];
    if (p.norm == 1u) {
        return v * x_scale * gamma[i];
    }
    return v;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r_local = li / LANES;
    let lane = li % LANES;
    let group = wg.x + wg.y * p.grid_x;
    // In SwiGLU mode a workgroup handles ROWS/2 output pairs = ROWS weight rows.
    let row = group * ROWS + r_local;
    let nblk = (p.cols + FMT_BLOCK - 1u) / FMT_BLOCK;
    for (var t = 0u; t < p.n_tok; t++) {
        x_base = p.x_off + t * p.x_stride;
        x_scale = 1.0;
        if (p.norm == 1u) {
            var ss = 0.0;
            for (var i = li; i < p.cols; i += 256u) {
                let v = x[x_base + i];
                ss += v * v;
            }
            red[li] = ss;
            workgroupBarrier();
            for (var s = 128u; s > 0u; s >>= 1u) {
                if (li < s) { red[li] += red[li + s]; }
                workgroupBarrier();
            }
            x_scale = inverseSqrt(red[0] / f32(p.cols) + p.eps);
            workgroupBarrier();
        }
        var acc = 0.0;
        if (row < p.rows) {
            for (var b = lane; b < nblk; b += LANES) {
                acc += fmt_block_dot(row, b);
            }
        }
        red[li] = acc;
        workgroupBarrier();
        for (var s = LANES / 2u; s > 0u; s >>= 1u) {
            if (lane < s) { red[li] += red[li + s]; }
            workgroupBarrier();
        }
        if (lane == 0u && row < p.rows) {
            let v = red[li];
            let out = t * p.y_stride + p.row0 + row;
            if (p.mode == 0u) {
                y[out] = v;
            } else if (p.mode == 1u) {
                y[out] = y[out] + v;
            } else if ((row & 1u) == 0u) {
                // gate is this row, up is the next one (same workgroup: ROWS is even, shards split on even rows)
                let up = red[li + LANES];
                y[t * p.y_stride + (p.row0 + row) / 2u] = v / (1.0 + exp(-v)) * up;
            }
        }
        workgroupBarrier();
    }
}
