// matmul_split_reduce: the second pass of a matmul split along K (src/gpu/ops/split_k.rs). The
// first pass left one f32 partial product per split, part [splits][n_tok][rows]; this sums the
// splits in order (the same sum on every run: no atomics) and applies the matmul's epilogue.
// Splitting K lets a product with fewer output tiles than the GPU has compute units fill it (the
// 512-token products of an 8B model make 64-96 tiles of 128 x 256 for 132 units on an H200).
//
// Dispatch: ceil(n_tok * outputs / 256) workgroups of 256 threads, flat over (wg.x + wg.y *
// grid_x); thread i takes output i % outputs of token i / outputs (outputs = rows, or rows / 2 for
// SwiGLU, whose rows are interleaved (gate, up) pairs). Consecutive threads read consecutive
// partials and write consecutive outputs.
// Layout: part as above (rows of this shard); y [n_tok][y_stride] f32, outputs at row0 + i
// (SwiGLU: row0 counts weight rows, so outputs start at row0 / 2). Modes as in matvec: 0 store,
// 1 accumulate, 2 SwiGLU.

struct Params {
    rows: u32,
    n_tok: u32,
    splits: u32,
    mode: u32,
    y_stride: u32,
    row0: u32,
    grid_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let outputs = select(p.rows, p.rows / 2u, p.mode == 2u);
    let i = (wg.x + wg.y * p.grid_x) * 256u + li;
    if (i >= outputs * p.n_tok) { return; }
    let tok = i / outputs;
    let o = i % outputs;
    let plane = p.n_tok * p.rows;
    if (p.mode == 2u) {
        let at = tok * p.rows + 2u * o;
        var g = 0.0;
        var u = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            g += part[s * plane + at];
            u += part[s * plane + at + 1u];
        }
        y[tok * p.y_stride + (p.row0 + 2u * o) / 2u] = g / (1.0 + exp(-g)) * u;
        return;
    }
    let at = tok * p.rows + o;
    var v = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        v += part[s * plane + at];
    }
    let out = tok * p.y_stride + p.row0 + o;
    if (p.mode == 1u) {
        y[out] = y[out] + v;
    } else {
        y[out] = v;
    }
}
