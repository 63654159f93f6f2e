// matvec_cpu: y = W x for CPU adapters (lavapipe/llvmpipe and the like), any number of tokens
// (decode steps and prefill chunks alike). Chosen by the op when the adapter reports device type
// CPU and one fixed subgroup size of at least 8 (`linear::cpu_variant`).
//
// Why it looks like this: a CPU adapter runs each workgroup on one CPU thread, one subgroup per
// SIMD vector, and turns a storage load whose address differs per lane into a loop of scalar
// loads (a gather), inside loops even when every lane asks for the same address. So:
//   - each lane (invocation) owns R whole weight rows and walks them in slices of 32 columns:
//     every weight word is loaded once, by the lane that needs it, and decoded once per slice
//     (`fmt_dec32`) for up to TT tokens;
//   - the slice of the input is loaded once per subgroup, 4 values per lane (lanes 0..7, mod 8),
//     and handed to every lane by subgroupBroadcast with constant lane indices (a register
//     shuffle), not re-loaded per lane and per row;
//   - no workgroup memory and no barriers; few workgroups of 16 invocations (R x 16 weight rows
//     each), so a 3072-row layer is 24 workgroups: enough to keep every CPU thread busy.
//
// Composed after a weight-format file (wfmt_*.wgsl: `w`, `fmt_dec32`); the op prepends
// `const R` (weight rows per lane) and `const TT` (tokens per pass over the weights).
// Dispatch: ceil(rows / (16 R)) workgroups of 16 (flat wg.x + wg.y * grid_x). Lane i of
// workgroup g owns weight rows (16 g + i) R .. + R - 1 (a lane past the last row runs on a clamped
// row so its subgroup's loads stay whole, and writes nothing). Tokens in passes of TT.
// Layout as in matvec.wgsl: x[x_off + t * x_stride + c]; y[t * y_stride + row0 + r] (store or
// accumulate); SwiGLU: weight rows (2k, 2k + 1) are (gate, up) of output (row0 + 2k) / 2, and R is
// even so a lane holds whole pairs. norm == 1: x is RMS-normalised with gamma first.

// (naga enables subgroup builtins from the SUBGROUP device feature; no `enable` directive.)

// struct Params: shaders/linear_params.wgsl; R, TT: prepended by the op.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;

// fmt_block_dot (the other matvec drivers' path, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return 0.0; }

// Input value c of the row at `base`, normalised; 0 past the row (which may hold anything).
fn xval(base: u32, c: u32, sc: f32) -> f32 {
    if (c >= p.cols) { return 0.0; }
    if (p.norm == 1u) { return x[base + c] * gamma[c] * sc; }
    return x[base + c];
}

@compute @workgroup_size(16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    let group = wg.x + wg.y * p.grid_x;
    let wr0 = (group * 16u + li) * R;
    let nsl = (p.cols + 31u) / 32u;
    let l4 = (lane % 8u) * 4u;
    for (var t0 = 0u; t0 < p.n_tok; t0 += TT) {
        var base: array<u32, TT>;
        var sc: array<f32, TT>;
        for (var k = 0u; k < TT; k++) {
            base[k] = p.x_off + min(t0 + k, p.n_tok - 1u) * p.x_stride;
            sc[k] = 1.0;
            if (p.norm == 1u) {
                var ss = 0.0;
                for (var c = lane; c < p.cols; c += 8u) {
                    let v = x[base[k] + c];
                    ss += v * v;
                }
                // lanes 8 and up (subgroups wider than 8) repeat lanes 0..7: counted once
                sc[k] = inverseSqrt(subgroupAdd(select(0.0, ss, lane < 8u)) / f32(p.cols) + p.eps);
            }
        }
        var acc: array<f32, R * TT>;
        for (var s = 0u; s < nsl; s++) {
            let c = s * 32u + l4;
            var xs: array<array<vec4<f32>, 8>, TT>;
            for (var k = 0u; k < TT; k++) {
                let v = vec4<f32>(xval(base[k], c, sc[k]), xval(base[k], c + 1u, sc[k]),
                                  xval(base[k], c + 2u, sc[k]), xval(base[k], c + 3u, sc[k]));
                xs[k][0] = subgroupBroadcast(v, 0u);
                xs[k][1] = subgroupBroadcast(v, 1u);
                xs[k][2] = subgroupBroadcast(v, 2u);
                xs[k][3] = subgroupBroadcast(v, 3u);
                xs[k][4] = subgroupBroadcast(v, 4u);
                xs[k][5] = subgroupBroadcast(v, 5u);
                xs[k][6] = subgroupBroadcast(v, 6u);
                xs[k][7] = subgroupBroadcast(v, 7u);
            }
            if (TT == 1u) {
                // one token: the format's own dot product (integer weights scaled once per block)
                let xt = ((xs[0][0] + xs[0][1]) + (xs[0][2] + xs[0][3])) + ((xs[0][4] + xs[0][5]) + (xs[0][6] + xs[0][7]));
                let xsum = (xt.x + xt.y) + (xt.z + xt.w);
                for (var r = 0u; r < R; r++) {
                    acc[r] += fmt_dot32(min(wr0 + r, p.rows - 1u), s * 32u, xs[0], xsum);
                }
            } else {
                for (var r = 0u; r < R; r++) {
                    let wv = fmt_dec32(min(wr0 + r, p.rows - 1u), s * 32u);
                    for (var k = 0u; k < TT; k++) {
                        acc[r * TT + k] += dot32(wv, xs[k]);
                    }
                }
            }
        }
        for (var k = 0u; k < TT; k++) {
            let t = t0 + k;
            if (t >= p.n_tok) { break; }
            if (p.mode == 2u) {
                for (var r = 0u; r < R; r += 2u) {
                    if (wr0 + r < p.rows) {
                        let g = acc[r * TT + k];
                        y[t * p.y_stride + (p.row0 + wr0 + r) / 2u] = g / (1.0 + exp(-g)) * acc[(r + 1u) * TT + k];
                    }
                }
            } else {
                for (var r = 0u; r < R; r++) {
                    if (wr0 + r < p.rows) {
                        let o = t * p.y_stride + p.row0 + wr0 + r;
                        if (p.mode == 0u) { y[o] = acc[r * TT + k]; } else { y[o] = y[o] + acc[r * TT + k]; }
                    }
                }
            }
        }
    }
}
