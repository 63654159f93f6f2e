enable f16;
enable wgpu_cooperative_matrix;
// matmul_coop: Y = X W^T over a chunk of tokens on cooperative matrices (tensor cores): 16x16x16
// products of f16 inputs with f32 accumulators. Chosen by the op when the adapter offers that
// configuration and subgroups of exactly 32 (the tile layout below assumes 8 subgroups).
//
// Composed after a weight-format file (wfmt_*.wgsl) that provides `fmt_load8(row, col)`: weights
// of every format are decoded to f16 on their way into workgroup memory, eight at a time;
// activations are f32 in memory and become f16 there too.
// Dispatch: (ceil(rows / 128), ceil(n_tok / BT)) workgroups of 256 threads (8 subgroups of 32);
// BT = 64 or 128 tokens per tile (the op substitutes the constant: 128 when there are enough
// tiles to fill the GPU, since each staged value then feeds twice the products).
// A workgroup owns a BT-token x 128-row tile of Y; subgroup s owns tokens BT/2 (s / 4) .. + BT/2
// and rows 32 (s % 4) .. + 32, i.e. BT/32 x 2 accumulator fragments. K advances in steps of 32
// through two workgroup buffers: while the subgroups multiply step k out of one buffer, each
// thread's global loads for step k + 1 (two weight octets, BT/64 activation octets) are already
// in flight, and land in the other buffer after the multiply; one barrier per step.
// Workgroup memory rows are 40 halves (80 bytes): 16-byte aligned for the matrix loads and
// spread over all banks.
// Epilogue: each fragment goes through a per-subgroup 16x16 f32 scratch so the residual add and
// SwiGLU stay fused (modes as in matvec: 0 store, 1 accumulate, 2 SwiGLU over (gate, up) pairs).
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][y_stride] f32.

// struct Params, struct Oct: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const BR: u32 = 128u; // weight rows per tile
const BT: u32 = 64u; // tokens per tile (64 or 128)
const BK: u32 = 32u;
const LD: u32 = 40u; // halves per staged row (BK + 8)
const WBUF: u32 = BR * LD;
const XBUF: u32 = BT * LD;
const TH: u32 = BT / 2u; // tokens per subgroup

var<workgroup> ws: array<f16, 2u * WBUF>; // 2 x [BR][LD]
var<workgroup> xs: array<f16, 2u * XBUF>; // 2 x [BT][LD]
var<workgroup> cs: array<f32, 2048>; // 8 subgroups x [16][16]

// fmt_block_dot (the matvec path, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return x[i]; }

// Weight octet o of the tile (row o / 4, columns 8 (o % 4) ..) for step k0; zero outside.
fn load_w(o: u32, row_base: u32, k0: u32) -> Oct {
    let row = row_base + o / 4u;
    let col = k0 + (o % 4u) * 8u;
    if (row < p.rows && col < p.cols) { return fmt_load8(row, col); }
    return Oct(vec4<f32>(0.0), vec4<f32>(0.0));
}

// Activation octet o (token o / 4, columns 8 (o % 4) ..); past n_tok or cols, zero (the input
// there may hold anything, even NaN).
fn load_x(o: u32, tok_base: u32, k0: u32) -> Oct {
    let tok = tok_base + o / 4u;
    let col = k0 + (o % 4u) * 8u;
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

// Shared-memory offset of octet o inside one buffer.
fn slot(o: u32) -> u32 {
    return (o / 4u) * LD + (o % 4u) * 8u;
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

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let row_base = wg.x * BR;
    let tok_base = wg.y * BT;
    let nk = (p.cols + BK - 1u) / BK;
    let sm = sg / 4u;
    let sn = sg % 4u;
    let ld = LD;

    var w0 = load_w(li, row_base, 0u);
    var w1 = load_w(li + 256u, row_base, 0u);
    var x0 = load_x(li, tok_base, 0u);
    var x1 = Oct(vec4<f32>(0.0), vec4<f32>(0.0));
    if (BT == 128u) { x1 = load_x(li + 256u, tok_base, 0u); }
    put_w(slot(li), w0);
    put_w(slot(li + 256u), w1);
    put_x(slot(li), x0);
    if (BT == 128u) { put_x(slot(li + 256u), x1); }
    workgroupBarrier();

    // c{token fragment}{row fragment}; token fragments 2 and 3 exist when BT = 128
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var c20 = coop_mat16x16<f32, C>();
    var c21 = coop_mat16x16<f32, C>();
    var c30 = coop_mat16x16<f32, C>();
    var c31 = coop_mat16x16<f32, C>();
    for (var kt = 0u; kt < nk; kt++) {
        let cur = kt % 2u;
        let more = kt + 1u < nk;
        if (more) {
            let k1 = (kt + 1u) * BK;
            w0 = load_w(li, row_base, k1);
            w1 = load_w(li + 256u, row_base, k1);
            x0 = load_x(li, tok_base, k1);
            if (BT == 128u) { x1 = load_x(li + 256u, tok_base, k1); }
        }
        for (var kk = 0u; kk < BK; kk += 16u) {
            let ia0 = cur * XBUF + (sm * TH) * LD + kk;
            let ia1 = ia0 + 16u * LD;
            let ib0 = cur * WBUF + (sn * 32u) * LD + kk;
            let ib1 = ib0 + 16u * LD;
            // A = activations [token][k] (row-major); B(k, row) = W[row][k] (column-major).
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&ws[ib0], ld);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&ws[ib1], ld);
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&xs[ia0], ld);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&xs[ia1], ld);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            if (BT == 128u) {
                let ia2 = ia1 + 16u * LD;
                let ia3 = ia2 + 16u * LD;
                let a2 = coopLoadT<coop_mat16x16<f16, A>>(&xs[ia2], ld);
                c20 = coopMultiplyAdd(a2, b0, c20);
                c21 = coopMultiplyAdd(a2, b1, c21);
                let a3 = coopLoadT<coop_mat16x16<f16, A>>(&xs[ia3], ld);
                c30 = coopMultiplyAdd(a3, b0, c30);
                c31 = coopMultiplyAdd(a3, b1, c31);
            }
        }
        if (more) {
            let nb = 1u - cur;
            put_w(nb * WBUF + slot(li), w0);
            put_w(nb * WBUF + slot(li + 256u), w1);
            put_x(nb * XBUF + slot(li), x0);
            if (BT == 128u) { put_x(nb * XBUF + slot(li + 256u), x1); }
        }
        workgroupBarrier();
    }

    let t0 = tok_base + sm * TH;
    let r0 = row_base + sn * 32u;
    let cbase = sg * 256u;
    let s16 = 16u;
    coopStoreT(c00, &cs[cbase], s16);
    workgroupBarrier();
    epilogue(sg, lane, t0, r0);
    workgroupBarrier();
    coopStoreT(c01, &cs[cbase], s16);
    workgroupBarrier();
    epilogue(sg, lane, t0, r0 + 16u);
    workgroupBarrier();
    coopStoreT(c10, &cs[cbase], s16);
    workgroupBarrier();
    epilogue(sg, lane, t0 + 16u, r0);
    workgroupBarrier();
    coopStoreT(c11, &cs[cbase], s16);
    workgroupBarrier();
    epilogue(sg, lane, t0 + 16u, r0 + 16u);
    if (BT == 128u) {
        workgroupBarrier();
        coopStoreT(c20, &cs[cbase], s16);
        workgroupBarrier();
        epilogue(sg, lane, t0 + 32u, r0);
        workgroupBarrier();
        coopStoreT(c21, &cs[cbase], s16);
        workgroupBarrier();
        epilogue(sg, lane, t0 + 32u, r0 + 16u);
        workgroupBarrier();
        coopStoreT(c30, &cs[cbase], s16);
        workgroupBarrier();
        epilogue(sg, lane, t0 + 48u, r0);
        workgroupBarrier();
        coopStoreT(c31, &cs[cbase], s16);
        workgroupBarrier();
        epilogue(sg, lane, t0 + 48u, r0 + 16u);
    }
}
