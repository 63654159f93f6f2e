// matvec_sg: y = W x for a few tokens, one weight row per subgroup, reduced with subgroupAdd: no
// workgroup barriers at all (what CPU adapters such as lavapipe and most GPUs run best).
// Chosen by the op when the adapter has subgroups of one fixed size; matvec.wgsl is the fallback.
//
// Composed after a weight-format file (wfmt_*.wgsl) providing `w`, FMT_BLOCK, fmt_block_dot.
// Dispatch: ceil(out_rows / (64 / SG)) workgroups of 64 threads (flat wg.x + wg.y * grid_x), SG =
// subgroup size (override). Subgroup s of a workgroup owns output row group * (64 / SG) + s; its
// lanes stride over the row's blocks. In SwiGLU mode an output row is the weight-row pair
// (2r, 2r + 1).
// Layout and modes as in matvec.wgsl.

// (naga enables subgroup builtins from the SUBGROUP device feature; no `enable` directive.)

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;

override SG: u32 = 32u;

var<private> x_base: u32;
var<private> x_scale: f32;

fn xin(i: u32) -> f32 {
    let v = x[x_base + i];
    if (p.norm == 1u) {
        return v * x_scale * gamma[i];
    }
    return v;
}

fn row_dot(row: u32, lane: u32, nblk: u32) -> f32 {
    var acc = 0.0;
    for (var b = lane; b < nblk; b += SG) {
        acc += fmt_block_dot(row, b);
    }
    return subgroupAdd(acc);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    let group = wg.x + wg.y * p.grid_x;
    let out_row = group * (64u / SG) + li / SG;
    let swiglu = p.mode == 2u;
    let out_rows = select(p.rows, p.rows / 2u, swiglu);
    if (out_row >= out_rows) { return; } // whole subgroups leave together
    let nblk = (p.cols + FMT_BLOCK - 1u) / FMT_BLOCK;
    for (var t = 0u; t < p.n_tok; t++) {
        x_base = p.x_off + t * p.x_stride;
        x_scale = 1.0;
        if (p.norm == 1u) {
            var ss = 0.0;
            for (var i = lane; i < p.cols; i += SG) {
                let v = x[x_base + i];
                ss += v * v;
            }
            x_scale = inverseSqrt(subgroupAdd(ss) / f32(p.cols) + p.eps);
        }
        if (swiglu) {
            let g = row_dot(2u * out_row, lane, nblk);
            let u = row_dot(2u * out_row + 1u, lane, nblk);
            if (lane == 0u) {
                y[t * p.y_stride + p.row0 / 2u + out_row] = g / (1.0 + exp(-g)) * u;
            }
        } else {
            let v = row_dot(out_row, lane, nblk);
            if (lane == 0u) {
                let o = t * p.y_stride + p.row0 + out_row;
                if (p.mode == 0u) { y[o] = v; } else { y[o] = y[o] + v; }
            }
        }
    }
}
