enable f16;
enable wgpu_cooperative_matrix;
// matmul_coop: Y = X W^T over a chunk of tokens on cooperative matrices (tensor cores): 16x16x16
// products of f16 inputs with f32 accumulators. Chosen by the op when the adapter offers that
// configuration and subgroups of exactly 32.
//
// Composed after a weight-format file (wfmt_*.wgsl) that provides `fmt_load8h(row, col)` (or
// `fmt_load8`, which the op wraps): weights of every format are decoded to f16 on their way into
// workgroup memory, eight at a time.
// Activations are f32 (the `//@X32` variant) or f16 rows written by pack_f16.wgsl (`//@X16`: one
// 16-byte load per eight inputs, half the bytes; the global loads bound this kernel).
//
// Tile shape (the op writes the constants below and expands the `@` lines for the fragments, see
// `CoopTile` in src/gpu/ops/linear.rs): WM x WN subgroups of 32 per workgroup; each subgroup owns
// FM x FN accumulator fragments of 16 x 16, i.e. 16 FM tokens x 16 FN rows. The workgroup owns
// BT = 16 WM FM tokens x BR = 16 WN FN rows of Y.
// Dispatch: (ceil(n_tok / BT), ceil(rows / BR), splits) workgroups of 32 WM WN threads: token
// tiles vary fastest, so the workgroups in flight together share weight tiles and read them from
// memory once. Split along K (splits > 1, for products with fewer tiles than the GPU has compute
// units), workgroup z takes steps z * per .. of K and stores its partial products (mode 0) in the
// plane z * n_tok * y_stride of y, for matmul_split_reduce.wgsl to sum.
// K advances in steps of BK. While the subgroups multiply step k out of workgroup memory, each
// thread's global loads for steps k + 1 .. k + DEPTH (WOCT weight octets, XOCT activation octets
// per step, packed halves) are in flight in DEPTH register sets. With STAGES = 2 step k + 1 lands
// in the other buffer after the multiply (one barrier per step); with STAGES = 1 it lands in the
// one buffer between two barriers at the start of the next step. Staged rows are BK + 8 halves:
// 16-byte aligned for the matrix loads, and rows start on different banks.
// Epilogue: each fragment goes through a per-subgroup 16x16 f32 scratch so the residual add and
// SwiGLU stay fused (modes as in matvec: 0 store, 1 accumulate, 2 SwiGLU over (gate, up) pairs).
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][y_stride] f32.

// struct Params, struct Oct, pack_oct: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

//@TILE
const WM: u32 = 2u; // subgroups along tokens
const WN: u32 = 4u; // subgroups along rows
const FM: u32 = 2u; // token fragments per subgroup
const FN: u32 = 2u; // row fragments per subgroup
const BK: u32 = 32u; // k per staged step (multiple of 16)
const STAGES: u32 = 2u; // staging buffers: 2, or 1 (two barriers per step, half the memory)
const DEPTH: u32 = 1u; // steps whose loads are in flight in registers (1 or 2)
//@END

const SUBGROUPS: u32 = WM * WN;
const THREADS: u32 = 32u * SUBGROUPS;
const BT: u32 = 16u * WM * FM; // tokens per tile
const BR: u32 = 16u * WN * FN; // weight rows per tile
const LD: u32 = (BK + 8u) / 4u; // vec4<f16> per staged row (eight halves of padding)
const OPR: u32 = BK / 8u; // octets per staged row
const WOCT: u32 = BR * OPR / THREADS; // weight octets each thread stages per step
const XOCT: u32 = BT * OPR / THREADS; // activation octets each thread stages per step
const WBUF: u32 = BR * LD;
const XBUF: u32 = BT * LD;

// Staging buffers of vec4<f16>: a staged octet is two 8-byte workgroup stores (eight 2-byte ones
// as f16 scalars: 113 against 150 TFLOP/s on the H200, docs/perf.md session 10); coopLoad's offsets
// and strides count vec4 elements.
var<workgroup> ws: array<vec4<f16>, STAGES * WBUF>; // STAGES x [BR][LD]
var<workgroup> xs: array<vec4<f16>, STAGES * XBUF>; // STAGES x [BT][LD]
var<workgroup> cs: array<f32, 256u * SUBGROUPS>; // per subgroup [16][16]
// This workgroup's output plane (split z's partials; 0 unsplit).
var<private> yz: u32;

// Staged data travels as octets of packed halves (vec4<u32>, four registers for eight values): a
// thread's loads for the steps ahead are only consumed when they are written to workgroup memory,
// after the products of the current step, so nothing waits for them earlier (a decode or an f32
// conversion at load time made every step wait for its loads before its products). Out-of-range
// octets are loaded from a clamped, valid address and zeroed by a select: no branch around a load,
// so a thread's loads all go out back to back.

// fmt_load8h(row, col): eight decoded weights as packed halves. Weight formats that hold halves
// (wfmt_f16.wgsl) return them as stored; the op appends a generic one (fmt_load8 + pack) otherwise.
// fmt_raw8(row, col, ok) -> WRaw and fmt_stage8(WRaw) -> two vec4<f16>: see load_w.

// Weight octets travel from their loads to workgroup memory as `WRaw`: a format with its own
// staging file (wfmt_coop_*.wgsl) keeps the words as loaded and decodes them in `fmt_stage8` when
// they are written, after the step's products; the others use the op's generic pair (`WRaw` =
// the packed halves of `fmt_load8h`, decoded at load time).

// Weight octet o of the tile (row o / OPR, columns 8 (o % OPR) ..) for step k0; zero outside.
fn load_w(o: u32, row_base: u32, k0: u32) -> WRaw {
    let row = row_base + o / OPR;
    let col = k0 + (o % OPR) * 8u;
    return fmt_raw8(min(row, p.rows - 1u), min(col, (p.cols - 1u) & ~7u), row < p.rows && col < p.cols);
}

//@X32
@group(0) @binding(2) var<storage, read> x: array<f32>;

// fmt_block_dot (the matvec path, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return x[i]; }

// Activation octet o (token o / OPR, columns 8 (o % OPR) ..); past n_tok or cols, zero (the input
// there may hold anything, even NaN). f32 inputs serve small products only (the op packs the
// inputs of large ones to f16 first), so this keeps its branches.
fn load_x(o: u32, tok_base: u32, k0: u32) -> vec4<u32> {
    let tok = tok_base + o / OPR;
    let col = k0 + (o % OPR) * 8u;
    if (tok >= p.n_tok) { return vec4<u32>(0u); }
    let b = p.x_off + tok * p.x_stride + col;
    if (col + 8u <= p.cols) {
        return pack_oct(Oct(vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]), vec4<f32>(x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u])));
    }
    var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < 8u; j++) {
        if (col + j < p.cols) { v[j] = x[b + j]; }
    }
    return pack_oct(Oct(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7])));
}
//@END

//@X16
// [n_tok][x_stride / 8] octets of halves; x_off and x_stride count halves (multiples of 8), and
// the columns past `cols` in the last octet are zeros.
@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;

fn xin(i: u32) -> f32 { return 0.0; } // fmt_block_dot is not used here

fn load_x(o: u32, tok_base: u32, k0: u32) -> vec4<u32> {
    let tok = tok_base + o / OPR;
    let col = k0 + (o % OPR) * 8u;
    let q = x[(p.x_off + min(tok, p.n_tok - 1u) * p.x_stride + min(col, (p.cols - 1u) & ~7u)) / 8u];
    return select(vec4<u32>(0u), q, tok < p.n_tok && col < p.cols);
}
//@END

// Workgroup-memory offset (elements) of octet o inside one buffer.
fn slot(o: u32) -> u32 {
    return (o / OPR) * LD + (o % OPR) * 2u;
}

// fn halves4: shaders/unpack_f16x8.wgsl (prepended by the op).

fn put_w(at: u32, r: WRaw) {
    let h = fmt_stage8(r);
    ws[at] = h[0];
    ws[at + 1u] = h[1];
}

fn put_x(at: u32, q: vec4<u32>) {
    xs[at] = halves4(q, 0u);
    xs[at + 1u] = halves4(q, 1u);
}

// Apply the epilogue to one 16x16 fragment that subgroup `sg` stored at cs[sg * 256 ..]
// (row-major [token][row]); tokens t0 .., rows r0 .. (tile-relative bases already added).
fn epilogue(sg: u32, lane: u32, t0: u32, r0: u32) {
    let c = sg * 256u;
    if (p.mode == 2u) {
        for (var e = lane; e < 128u; e += 32u) {
            let m = e / 8u;
            let n = 2u * (e % 8u);
            let tok = t0 + m;
            let row = r0 + n;
            if (tok < p.n_tok && row < p.rows) {
                let g = cs[c + m * 16u + n];
                let u = cs[c + m * 16u + n + 1u];
                y[yz + tok * p.y_stride + (p.row0 + row) / 2u] = g / (1.0 + exp(-g)) * u;
            }
        }
        return;
    }
    for (var e = lane; e < 256u; e += 32u) {
        let m = e / 16u;
        let n = e % 16u;
        let tok = t0 + m;
        let row = r0 + n;
        if (tok < p.n_tok && row < p.rows) {
            let out = yz + tok * p.y_stride + p.row0 + row;
            let v = cs[c + m * 16u + n];
            if (p.mode == 1u) {
                y[out] = y[out] + v;
            } else {
                y[out] = v;
            }
        }
    }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let row_base = wg.y * BR;
    let tok_base = wg.x * BT;
    // Steps, rounded up to whole loop iterations: the steps past the columns stage zeros (every
    // load past `cols` is zero), so they add nothing, and no branch skips them (naga requires
    // cooperative-matrix operations in uniform control flow, which it cannot prove for a
    // condition on the loop counter).
    // Split z takes `per` steps from step z * per (a multiple of DEPTH, so no split's rounded-up
    // iterations reach into the next split's columns; the last split's run past `cols` as above).
    let total = (p.cols + BK - 1u) / BK;
    let per = ((total + nwg.z - 1u) / nwg.z + DEPTH - 1u) / DEPTH * DEPTH;
    let ks0 = min(wg.z * per, total);
    let nk = min(per, (total - ks0 + DEPTH - 1u) / DEPTH * DEPTH);
    let kc0 = ks0 * BK; // this split's first column
    yz = wg.z * p.n_tok * p.y_stride;
    let sm = sg / WN;
    let sn = sg % WN;

    // Step 0 goes straight to buffer 0; steps 1 .. DEPTH - 1 start loading into register sets
    // 1 .. (set j always holds a step = j mod DEPTH).
    for (var i = 0u; i < WOCT; i++) { put_w(slot(li + i * THREADS), load_w(li + i * THREADS, row_base, kc0)); }
    for (var i = 0u; i < XOCT; i++) { put_x(slot(li + i * THREADS), load_x(li + i * THREADS, tok_base, kc0)); }
    workgroupBarrier();
    //@SETS

    // Accumulators c{token fragment}{row fragment}.
    //@ACC
    // The k loop, DEPTH steps per iteration (one per register set; the op writes them out, since
    // WGSL indexes arrays of registers only with constants once unrolled). Step k:
    //  - STAGES = 1: (k > 0) barrier, its set into the buffer, barrier;
    //  - its set starts loading step k + DEPTH (DEPTH steps of products to arrive);
    //  - the products of buffer k % STAGES;
    //  - STAGES = 2: step k + 1's set into the other buffer, barrier.
    //@LOOP
    let t0 = tok_base + sm * FM * 16u;
    let r0 = row_base + sn * FN * 16u;
    let cbase = sg * 256u;
    //@STORE
}
