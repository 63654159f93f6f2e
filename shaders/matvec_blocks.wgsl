// matvec_blocks: y = W x for one token (decode) over 32-value block formats (Q4_0, Q4_1; Q8_0
// runs here when forced), each thread taking whole blocks: it loads all of a block's words
// before decoding any, NR rows' blocks in flight at once, the next iteration's blocks before this
// iteration's products and the first ones before the input is staged. The input is staged once
// per workgroup in workgroup memory as f16 (scaled by the fused RMSNorm), where a block's 32 values
// per lane read without bank conflicts (the XOR swizzle of `slot`); read from storage, lanes 128
// bytes apart would each touch their own cache line. Workgroups are persistent: each takes every
// n-th row tile and stages the input once. On the H200 a 4096 x 14336 Q4_0 product takes 26.5 us
// here against 32.9 us in `matvec_wide` (docs/perf.md, session 8).
//
// Composed after a weight-format file providing `w`, `FMT_BW` (words per block),
// `fmt_bload(row, blk) -> array<u32, FMT_BW>` (the block's words) and
// `fmt_bdot(b, xs, xsum) -> f32` (its dot product with 32 inputs held as 8 vec4, xsum their sum).
// Written out per (NR, U, max columns) by the op (`linear::blocks_kernel_source`): the //@ markers.
//
// Dispatch: n_wg = min(tiles, N_WG) workgroups of 256 threads (flat wg.x + wg.y * grid_x);
// workgroup n takes row tiles n, n + n_wg, ... (a tile is RG * NR rows), the loads of a tile's
// first blocks issued before the previous tile's last products. A workgroup is
// RG = 256 / TPR row groups of TPR threads (TPR a multiple of the subgroup size); group g of tile t
// owns weight rows (t * RG + g) * NR .. + NR of this shard, and its thread i takes blocks i,
// i + TPR, ... of each.
// Layout: x [cols] f32 from float x_off (a multiple of 4); y [rows] f32 (its rows row0 + ...);
// gamma [cols] f32 (RMSNorm weight, read when norm = 1); cols a multiple of 32 and at most
// MAX_COLS. Modes as in matvec.wgsl: 0 store, 1 accumulate, 2 SwiGLU over (gate, up) row pairs.

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<vec4<f32>>;

override SG: u32 = 32u;
override TPR: u32 = 64u;
//@CONSTS (the op writes this pipeline's values)
const NR: u32 = 4u; // rows per thread: 1, 2 or 4
const U: u32 = 2u; // blocks of each row per iteration
const MAX_COLS: u32 = 16384u; // input width the workgroup memory holds
//@END
override N_WG: u32 = 128u; // workgroups dispatched (the op's `blocks_workgroups`)

// The input as f16, 8 values per vec4<u32> chunk, chunk c at slot(c).
var<workgroup> xs: array<vec4<u32>, MAX_COLS / 8u>;
// One f32 per (subgroup, row): the subgroup partial sums (first the norm's sums).
var<workgroup> red: array<f32, 256>; // 256 / 4 subgroups at most x NR <= 4

// fmt_block_dot (matvec_sg's entry point, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return 0.0; }

// Lane i reads chunks 4i .. 4i + 3 (its block): chunk c goes to c ^ ((c / 8) % 8), so the eight
// lanes of one 128-bit access phase (blocks b .. b + 7, b a multiple of 8) hit eight distinct
// 16-byte bank groups for every chunk m of their blocks.
fn slot(c: u32) -> u32 {
    return c ^ ((c >> 3u) & 7u);
}

// The 32 staged inputs of block b as 8 vec4 (values 4i .. 4i + 3 in element i).
fn xblock(b: u32) -> array<vec4<f32>, 8> {
    var o: array<vec4<f32>, 8>;
    let c0 = xs[slot(4u * b)];
    let c1 = xs[slot(4u * b + 1u)];
    let c2 = xs[slot(4u * b + 2u)];
    let c3 = xs[slot(4u * b + 3u)];
    o[0] = vec4<f32>(unpack2x16float(c0.x), unpack2x16float(c0.y));
    o[1] = vec4<f32>(unpack2x16float(c0.z), unpack2x16float(c0.w));
    o[2] = vec4<f32>(unpack2x16float(c1.x), unpack2x16float(c1.y));
    o[3] = vec4<f32>(unpack2x16float(c1.z), unpack2x16float(c1.w));
    o[4] = vec4<f32>(unpack2x16float(c2.x), unpack2x16float(c2.y));
    o[5] = vec4<f32>(unpack2x16float(c2.z), unpack2x16float(c2.w));
    o[6] = vec4<f32>(unpack2x16float(c3.x), unpack2x16float(c3.y));
    o[7] = vec4<f32>(unpack2x16float(c3.z), unpack2x16float(c3.w));
    return o;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sub = li / SG;
    let group = li / TPR;
    let ti = li % TPR;
    let wgi = wg.x + wg.y * p.grid_x;
    let rg = 256u / TPR;
    let n_tiles = (p.rows + rg * NR - 1u) / (rg * NR);
    if (wgi >= n_tiles) { return; }
    let n_wg = min(n_tiles, N_WG);
    let last_row = p.rows - 1u;
    let nb = p.cols / 32u;
    let last_blk = nb - 1u;
    let n_it = (nb + TPR * U - 1u) / (TPR * U);

    // This thread's first blocks, in flight while the input is staged. Registers c{u}_{r} (block
    // ti + TPR * (U * it + u) of row first + r) and their successors n{u}_{r}, written out by the
    // op; rows and blocks past the shard are clamped (loaded, never used) so every thread reaches
    // the barriers and subgroup operations.
    var tile = wgi;
    var it = 0u;
    var first = (tile * rg + group) * NR;
    //@LOAD0

    // Stage x (times gamma and the RMSNorm scale) as f16.
    let xb = p.x_off / 4u;
    let nch = p.cols / 8u;
    var scale = 1.0;
    if (p.norm == 1u) {
        var ss = 0.0;
        for (var c = li; c < nch; c += 256u) {
            let a = x[xb + 2u * c];
            let b = x[xb + 2u * c + 1u];
            ss += dot(a, a) + dot(b, b);
        }
        ss = subgroupAdd(ss);
        if (li % SG == 0u) { red[sub] = ss; }
        workgroupBarrier();
        var t = 0.0;
        for (var s = 0u; s < 256u / SG; s++) { t += red[s]; }
        scale = inverseSqrt(t / f32(p.cols) + p.eps);
    }
    for (var c = li; c < nch; c += 256u) {
        var a = x[xb + 2u * c] * scale;
        var b = x[xb + 2u * c + 1u] * scale;
        if (p.norm == 1u) {
            a *= gamma[2u * c];
            b *= gamma[2u * c + 1u];
        }
        xs[slot(c)] = vec4<u32>(pack2x16float(a.xy), pack2x16float(a.zw), pack2x16float(b.xy), pack2x16float(b.zw));
    }
    workgroupBarrier();

    //@ACC
    let per_group = TPR / SG;
    let gk = li / NR;
    let r = li % NR;
    loop {
        // the next step: this tile's next iteration, else the next tile's first
        var ntile = tile;
        var nit = it + 1u;
        if (nit == n_it) {
            ntile = tile + n_wg;
            nit = 0u;
        }
        let nfirst = (min(ntile, n_tiles - 1u) * rg + group) * NR;
        //@LOADNEXT
        //@DOTS
        //@ROTATE
        if (it + 1u == n_it) {
            //@REDUCE
            workgroupBarrier();
            // Thread k < RG * NR finishes row k of the tile: group k / NR, row k % NR.
            let row = (tile * rg + gk) * NR + r;
            if (gk < rg && row < p.rows) {
                var s = 0.0;
                for (var j = 0u; j < per_group; j++) { s += red[(gk * per_group + j) * NR + r]; }
                if (p.mode == 2u) {
                    // the gate row's thread writes silu(gate) * up; the up row's sum comes from
                    // its neighbour
                    if (r % 2u == 0u && row + 1u < p.rows) {
                        var u = 0.0;
                        for (var j = 0u; j < per_group; j++) { u += red[(gk * per_group + j) * NR + r + 1u]; }
                        y[(p.row0 + row) / 2u] = s / (1.0 + exp(-s)) * u;
                    }
                } else {
                    let o = p.row0 + row;
                    if (p.mode == 0u) { y[o] = s; } else { y[o] = y[o] + s; }
                }
            }
            workgroupBarrier(); // `red` is rewritten by the next tile
            //@RESET
            if (ntile >= n_tiles) { break; }
        }
        tile = ntile;
        it = nit;
        first = nfirst;
    }
}
