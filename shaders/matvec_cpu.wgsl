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
// Composed after a weight-format file (wfmt_*.wgsl: `w`, `fmt_dec32`, `fmt_dot32`); the op
// prepends `const R` (weight rows per lane) and `const TT` (tokens per pass over the weights) and
// writes out the `//@` lines for them (`linear::cpu_kernel_source`).
// Dispatch: ceil(rows / (16 R)) workgroups of 16 (flat wg.x + wg.y * grid_x) times Z along z.
// Lane i of workgroup g owns weight rows (16 g + i) R .. + R - 1 (a lane past the last row runs on
// a clamped row so its subgroup's loads stay whole, and writes nothing). Tokens in passes of TT:
// workgroup z takes passes z, z + Z, ... (the op makes Z the number of passes, capped, so a
// prefill chunk of a narrow layer still spreads over every CPU thread).
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

// Input value c of the row at `base`, normalised; 0 past the row (which may hold anything, even
// NaN: select drops it). Branch-free: a branch here would mask every load after it.
fn xval(base: u32, c: u32, sc: f32) -> f32 {
    let ci = min(c, p.cols - 1u);
    let v = x[base + ci] * select(1.0, gamma[ci] * sc, p.norm == 1u);
    return select(0.0, v, c < p.cols);
}

@compute @workgroup_size(16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let group = wg.x + wg.y * p.grid_x;
    let wr0 = (group * 16u + li) * R;
    let nsl = (p.cols + 31u) / 32u;
    let l4 = (lane % 8u) * 4u;
    for (var t0 = wg.z * TT; t0 < p.n_tok; t0 += TT * nwg.z) {
        // The op writes the lines below out for each token k < TT and row r < R (one variable
        // each: private arrays indexed in loops would become memory on a CPU adapter):
        //   token k's input offset base_k and norm scale sc_k, accumulators a_r_k;
        //   per slice: the slice of token k (xs_k, via `xslice`), each row's weights decoded once
        //   (`fmt_dec32`, or `fmt_dot32` straight on the block for one token) and dotted with
        //   every token's slice; at the end the epilogue of each (row, token).
//@SETUP
        for (var s = 0u; s < nsl; s++) {
            let c = s * 32u;
//@SLICE
        }
//@STORE
    }
}

// Token k's input offset (its row clamped to the last token, so a short last pass reads valid rows).
fn xbase(t0: u32, k: u32) -> u32 {
    return p.x_off + min(t0 + k, p.n_tok - 1u) * p.x_stride;
}

// The RMSNorm scale of the input row at `base` (1 without the norm); every lane gets the same.
fn xscale(base: u32, lane: u32) -> f32 {
    if (p.norm == 0u) { return 1.0; }
    var ss = 0.0;
    for (var c = lane % 8u; c < p.cols; c += 8u) {
        let v = x[base + c];
        ss += v * v;
    }
    // lanes 8 and up (subgroups wider than 8) repeat lanes 0..7: counted once
    return inverseSqrt(subgroupAdd(select(0.0, ss, lane < 8u)) / f32(p.cols) + p.eps);
}

// Columns c .. c + 31 of the input row at `base`, normalised: lane i (mod 8) loads four of them and
// subgroupBroadcast (constant lane indices: a register shuffle) hands all 32 to every lane.
fn xslice(base: u32, c: u32, l4: u32, sc: f32) -> array<vec4<f32>, 8> {
    let v = vec4<f32>(xval(base, c + l4, sc), xval(base, c + l4 + 1u, sc), xval(base, c + l4 + 2u, sc), xval(base, c + l4 + 3u, sc));
    return array<vec4<f32>, 8>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
                               subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}

fn sum32(a: array<vec4<f32>, 8>) -> f32 {
    let t = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    return (t.x + t.y) + (t.z + t.w);
}

// The epilogue of output (weight row wr, token t) with dot product v.
fn store(wr: u32, t: u32, v: f32) {
    if (wr >= p.rows || t >= p.n_tok) { return; }
    let o = t * p.y_stride + p.row0 + wr;
    if (p.mode == 0u) { y[o] = v; } else { y[o] = y[o] + v; }
}

// SwiGLU: weight rows (wr, wr + 1) = (gate, up) of output (row0 + wr) / 2.
fn store_swiglu(wr: u32, t: u32, g: f32, u: f32) {
    if (wr >= p.rows || t >= p.n_tok) { return; }
    y[t * p.y_stride + (p.row0 + wr) / 2u] = g / (1.0 + exp(-g)) * u;
}
