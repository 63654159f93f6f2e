// matvec_wide: y = W x for 1..4 tokens (decode), built to stream the weights at memory bandwidth
// on GPUs: each thread keeps NR weight rows' loads in flight at once, reads the input as vec4 and
// shares each input octet among the NR rows and each weight octet among the tokens, and a
// workgroup normalises its input once rather than once per row.
//
// Composed after a weight-format file (wfmt_*.wgsl) providing `w` and `fmt_load8(row, col)`, the
// decode of 8 consecutive values (the tiled matmuls' entry point: one block decode per octet).
//
// Written out per (NR, NTOK, U) by the op (`linear::wide_kernel_source`): the //@ markers.
// Dispatch: ceil(rows / (G * NR)) workgroups of 256 threads (flat wg.x + wg.y * grid_x). A
// workgroup is G = 256 / T groups of T threads (T a multiple of the subgroup size SG, picked by the
// op from the row width so that every thread has a few octets); group g of workgroup n owns weight
// rows (n * G + g) * NR .. + NR of this shard, and its thread i takes octets i, i + T, ... of them.
// Reduction: subgroupAdd, then the T / SG subgroup sums of a group through workgroup memory (one
// barrier; a second one first when the input is normalised).
// Layout: x [n_tok][x_stride] f32 from float x_off, read as vec4 (the op requires cols % 8 == 0
// and x_off, x_stride multiples of 4); y [n_tok][y_stride] f32, rows row0 + ...; gamma [cols] f32
// (RMSNorm weight, read when norm = 1). Modes as in matvec.wgsl: 0 store, 1 accumulate, 2 SwiGLU
// over (gate, up) weight-row pairs (NR even, so a pair never straddles two groups).

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<vec4<f32>>;

override SG: u32 = 32u;
override T: u32 = 128u;
//@CONSTS (the op writes this pipeline's values)
const NR: u32 = 4u; // rows per group: 1, 2 or 4
const NTOK: u32 = 4u; // tokens (the dispatch's n_tok, 1..=4)
const U: u32 = 2u; // runs of each row per main-loop iteration
const V: u32 = 1u; // consecutive octets per run (4: one 32-value block of a quantised format)
//@END
const MAX_SUBGROUPS: u32 = 64u; // 256 threads in subgroups of at least 4

// One f32 per (subgroup, token, row): the subgroup partial sums (and first the norms' sums).
var<workgroup> red: array<f32, 1024>; // MAX_SUBGROUPS * NTOK * 4 (NR <= 4)

// fmt_block_dot (matvec_sg's entry point, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return 0.0; }

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n_sub = 256u / SG;
    let sub = li / SG;
    let group = li / T;
    let ti = li % T;
    let first = ((wg.x + wg.y * p.grid_x) * (256u / T) + group) * NR;
    let n_tok = NTOK;
    let q4 = p.cols / 4u;

    // RMSNorm scale per token, from the whole workgroup's share of the input.
    var scale = vec4<f32>(1.0);
    if (p.norm == 1u) {
        for (var t = 0u; t < NTOK; t++) {
            var ss = 0.0;
            if (t < n_tok) {
                let xb = (p.x_off + t * p.x_stride) / 4u;
                for (var i = li; i < q4; i += 256u) {
                    let v = x[xb + i];
                    ss += dot(v, v);
                }
            }
            ss = subgroupAdd(ss);
            if (li % SG == 0u) { red[t * MAX_SUBGROUPS + sub] = ss; }
        }
        workgroupBarrier();
        for (var t = 0u; t < NTOK; t++) {
            var ss = 0.0;
            for (var s = 0u; s < n_sub; s++) { ss += red[t * MAX_SUBGROUPS + s]; }
            scale[t] = inverseSqrt(ss / f32(p.cols) + p.eps);
        }
        workgroupBarrier(); // `red` is reused below
    }

    // Accumulator a{t}_{r}: token t, row first + r, one register each (the op writes out the
    // per-(token, row) lines at the //@ markers for its NTOK and NR: WGSL has no register arrays,
    // and a function-scope array indexed in loops may live in slow local memory). Rows past the
    // shard are clamped (their loads are wasted, never stored) so every thread reaches the
    // subgroup operations. Each iteration of the main loop handles U runs of V consecutive
    // octets of every row (thread i takes runs i, i + T, ...), so U * V * NR octet loads are in
    // flight per thread; with V = 4 a thread reads a quantised block's words once for its four
    // octets.
    let last_row = p.rows - 1u;
    let nsteps = p.cols / (8u * V); // runs of V consecutive octets (the op checks divisibility)
    let use_gamma = p.norm == 1u;
    //@ACC
    var oc = ti;
    for (; oc + (U - 1u) * T < nsteps; oc += U * T) {
        //@MAIN
    }
    for (; oc < nsteps; oc += T) {
        //@TAIL
    }
    //@REDUCE
    workgroupBarrier();

    // Thread k < G * NR * n_tok finishes (group, row, token) = k's (k / (NR * NTOK), k % NR, ...).
    let per_group = T / SG;
    let k = li;
    let gk = k / (NR * NTOK);
    let r = k % NR;
    let t = (k / NR) % NTOK;
    if (gk >= 256u / T || t >= n_tok) { return; }
    let row = ((wg.x + wg.y * p.grid_x) * (256u / T) + gk) * NR + r;
    var s = 0.0;
    for (var j = 0u; j < per_group; j++) { s += red[((gk * per_group + j) * NTOK + t) * 4u + r]; }
    if (p.mode == 2u) {
        // the gate row's thread writes silu(gate) * up; the up row's sum comes from its neighbour
        if (r % 2u == 1u || row + 1u >= p.rows) { return; }
        var u = 0.0;
        for (var j = 0u; j < per_group; j++) { u += red[((gk * per_group + j) * NTOK + t) * 4u + r + 1u]; }
        y[t * p.y_stride + (p.row0 + row) / 2u] = s / (1.0 + exp(-s)) * u;
        return;
    }
    if (row >= p.rows) { return; }
    let o = t * p.y_stride + p.row0 + row;
    if (p.mode == 0u) { y[o] = s; } else { y[o] = y[o] + s; }
}
