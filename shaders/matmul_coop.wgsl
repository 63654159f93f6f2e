enable f16;
enable wgpu_cooperative_matrix;
// matmul_coop: Y = X W^T over a chunk of tokens on cooperative matrices (tensor cores): 16x16x16
// products of f16 inputs with f32 accumulators. Chosen by the op when the adapter offers that
// configuration and subgroups of exactly 32.
//
// Composed after a weight-format file (wfmt_*.wgsl) that provides `fmt_load8(row, col)`: weights
// of every format are decoded to f16 on their way into workgroup memory, eight at a time.
// Activations are f32 (the `//@X32` variant) or f16 rows written by pack_f16.wgsl (`//@X16`: one
// 16-byte load per eight inputs, half the bytes; the global loads bound this kernel).
//
// Tile shape (the op writes the constants below and expands the `@` lines for the fragments, see
// `CoopTile` in src/gpu/ops/linear.rs): WM x WN subgroups of 32 per workgroup; each subgroup owns
// FM x FN accumulator fragments of 16 x 16, i.e. 16 FM tokens x 16 FN rows. The workgroup owns
// BT = 16 WM FM tokens x BR = 16 WN FN rows of Y.
// Dispatch: (ceil(n_tok / BT), ceil(rows / BR)) workgroups of 32 WM WN threads: token tiles vary
// fastest, so the workgroups in flight together share weight tiles and read them from memory once.
// K advances in steps of BK. While the subgroups multiply step k out of workgroup memory, each
// thread's global loads for step k + 1 (WOCT weight octets, XOCT activation octets) are in flight
// in registers. With STAGES = 2 they land in the other buffer after the multiply (one barrier per
// step); with STAGES = 1 they land in the one buffer between two barriers at the start of the next
// step. Staged rows are BK + 8 halves: 16-byte aligned for the matrix loads, and rows start on
// different banks.
// Epilogue: each fragment goes through a per-subgroup 16x16 f32 scratch so the residual add and
// SwiGLU stay fused (modes as in matvec: 0 store, 1 accumulate, 2 SwiGLU over (gate, up) pairs).
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][y_stride] f32.

// struct Params, struct Oct: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

//@TILE
const WM: u32 = 2u; // subgroups along tokens
const WN: u32 = 4u; // subgroups along rows
const FM: u32 = 2u; // token fragments per subgroup
const FN: u32 = 2u; // row fragments per subgroup
const BK: u32 = 32u; // k per staged step (multiple of 16)
const STAGES: u32 = 2u; // staging buffers: 2, or 1 (two barriers per step, half the memory)
//@END

const SUBGROUPS: u32 = WM * WN;
const THREADS: u32 = 32u * SUBGROUPS;
const BT: u32 = 16u * WM * FM; // tokens per tile
const BR: u32 = 16u * WN * FN; // weight rows per tile
const LD: u32 = BK + 8u; // halves per staged row
const OPR: u32 = BK / 8u; // octets per staged row
const WOCT: u32 = BR * OPR / THREADS; // weight octets each thread stages per step
const XOCT: u32 = BT * OPR / THREADS; // activation octets each thread stages per step
const WBUF: u32 = BR * LD;
const XBUF: u32 = BT * LD;

var<workgroup> ws: array<f16, STAGES * WBUF>; // STAGES x [BR][LD]
var<workgroup> xs: array<f16, STAGES * XBUF>; // STAGES x [BT][LD]
var<workgroup> cs: array<f32, 256u * SUBGROUPS>; // per subgroup [16][16]

// Weight octet o of the tile (row o / OPR, columns 8 (o % OPR) ..) for step k0; zero outside.
fn load_w(o: u32, row_base: u32, k0: u32) -> Oct {
    let row = row_base + o / OPR;
    let col = k0 + (o % OPR) * 8u;
    if (row < p.rows && col < p.cols) { return fmt_load8(row, col); }
    return Oct(vec4<f32>(0.0), vec4<f32>(0.0));
}

//@X32
@group(0) @binding(2) var<storage, read> x: array<f32>;

// fmt_block_dot (the matvec path, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return x[i]; }

// Activation octet o (token o / OPR, columns 8 (o % OPR) ..); past n_tok or cols, zero (the input
// there may hold anything, even NaN).
fn load_x(o: u32, tok_base: u32, k0: u32) -> Oct {
    let tok = tok_base + o / OPR;
    let col = k0 + (o % OPR) * 8u;
    if (tok >= p.n_tok) { return Oct(vec4<f32>(0.0), vec4<f32>(0.0)); }
    let b = p.x_off + tok * p.x_stride + col;
    if (col + 8u <= p.cols) {
        return Oct(vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]), vec4<f32>(x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u]));
    }
    var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < 8u; j++) {
        if (col + j < p.cols) { v[j] = x[b + j]; }
    }
    return Oct(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}
//@END

//@X16
// [n_tok][x_stride / 8] octets of halves; x_off and x_stride count halves (multiples of 8), and
// the columns past `cols` in the last octet are zeros.
@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;

fn xin(i: u32) -> f32 { return 0.0; } // fmt_block_dot is not used here

fn load_x(o: u32, tok_base: u32, k0: u32) -> Oct {
    let tok = tok_base + o / OPR;
    let col = k0 + (o % OPR) * 8u;
    if (tok >= p.n_tok || col >= p.cols) { return Oct(vec4<f32>(0.0), vec4<f32>(0.0)); }
    let q = x[(p.x_off + tok * p.x_stride + col) / 8u];
    return Oct(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)));
}
//@END

// Shared-memory offset of octet o inside one buffer.
fn slot(o: u32) -> u32 {
    return (o / OPR) * LD + (o % OPR) * 8u;
}

fn put_w(at: u32, v: Oct) {
    let a = vec4<f16>(v.lo);
    let b = vec4<f16>(v.hi);
    ws[at] = a.x; ws[at + 1u] = a.y; ws[at + 2u] = a.z; ws[at + 3u] = a.w;
    ws[at + 4u] = b.x; ws[at + 5u] = b.y; ws[at + 6u] = b.z; ws[at + 7u] = b.w;
}

fn put_x(at: u32, v: Oct) {
    let a = vec4<f16>(v.lo);
    let b = vec4<f16>(v.hi);
    xs[at] = a.x; xs[at + 1u] = a.y; xs[at + 2u] = a.z; xs[at + 3u] = a.w;
    xs[at + 4u] = b.x; xs[at + 5u] = b.y; xs[at + 6u] = b.z; xs[at + 7u] = b.w;
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
                y[tok * p.y_stride + (p.row0 + row) / 2u] = g / (1.0 + exp(-g)) * u;
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
            let out = tok * p.y_stride + p.row0 + row;
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
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let row_base = wg.y * BR;
    let tok_base = wg.x * BT;
    let nk = (p.cols + BK - 1u) / BK;
    let sm = sg / WN;
    let sn = sg % WN;

    var wr: array<Oct, WOCT>;
    var xr: array<Oct, XOCT>;
    for (var i = 0u; i < WOCT; i++) { put_w(slot(li + i * THREADS), load_w(li + i * THREADS, row_base, 0u)); }
    for (var i = 0u; i < XOCT; i++) { put_x(slot(li + i * THREADS), load_x(li + i * THREADS, tok_base, 0u)); }
    workgroupBarrier();

    // Accumulators c{token fragment}{row fragment}.
    //@ACC
    for (var kt = 0u; kt < nk; kt++) {
        let cur = select(0u, kt % 2u, STAGES == 2u);
        let more = kt + 1u < nk;
        if (STAGES == 1u && kt > 0u) {
            // step kt's octets, loaded during the last step, replace what every subgroup has read
            workgroupBarrier();
            for (var i = 0u; i < WOCT; i++) { put_w(slot(li + i * THREADS), wr[i]); }
            for (var i = 0u; i < XOCT; i++) { put_x(slot(li + i * THREADS), xr[i]); }
            workgroupBarrier();
        }
        if (more) {
            let k1 = (kt + 1u) * BK;
            for (var i = 0u; i < WOCT; i++) { wr[i] = load_w(li + i * THREADS, row_base, k1); }
            for (var i = 0u; i < XOCT; i++) { xr[i] = load_x(li + i * THREADS, tok_base, k1); }
        }
        for (var kk = 0u; kk < BK; kk += 16u) {
            // A = activations [token][k] (row-major), fragment i at tokens 16 (FM sm + i);
            // B(k, row) = W[row][k] (column-major), fragment j at rows 16 (FN sn + j).
            let ia = cur * XBUF + (sm * FM * 16u) * LD + kk;
            let ib = cur * WBUF + (sn * FN * 16u) * LD + kk;
            //@MMA
        }
        if (STAGES == 2u) {
            if (more) {
                let nb = 1u - cur;
                for (var i = 0u; i < WOCT; i++) { put_w(nb * WBUF + slot(li + i * THREADS), wr[i]); }
                for (var i = 0u; i < XOCT; i++) { put_x(nb * XBUF + slot(li + i * THREADS), xr[i]); }
            }
            workgroupBarrier();
        }
    }

    let t0 = tok_base + sm * FM * 16u;
    let r0 = row_base + sn * FN * 16u;
    let cbase = sg * 256u;
    //@STORE
}
