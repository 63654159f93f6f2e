// matvec_blocks: y = W x for one token (decode) over 32-value block formats (Q4_0, Q4_1, Q8_0),
// each thread taking whole blocks: it loads all of a block's words before using any, NR rows'
// blocks in flight at once, the next iteration's blocks before this iteration's products and the
// first ones right after the input's loads, while the input is staged.
//
// The products are integer: the input (times the fused RMSNorm's gamma; the norm's scale
// multiplies the row sums) is quantised once per workgroup, block by block, to two levels of signed bytes (`XBlock`: x ~ dx (q1 + q2 / 256) with
// dx = max|x| / 127, so each value within dx / 512 of its f32, finer than an f16), and each word of
// four weight values meets a word of four inputs in one dot4I8Packed: a Q4_0 block costs 16 of
// them and 12 bit operations, where decoding its nibbles to floats cost ~160 instructions and
// bounded the kernel by arithmetic, not by its bytes (docs/perf.md, session 12). Staged in
// workgroup memory, a block's 32 bytes per level are read by lanes without bank conflicts (the XOR
// swizzle of `slot`); read from storage, lanes 128 bytes apart would each touch their own cache
// line. Workgroups are persistent: each takes every n-th row tile and stages the input once.
//
// Composed after a weight-format file providing `w`, `FMT_BW` (words per block),
// `fmt_bload(row, blk) -> array<u32, FMT_BW>` (the block's words) and
// `fmt_bidot(b, x, xq) -> f32` (its dot product with one `XBlock`'s words, in the block's steps).
// Written out per (NR, U, max columns, KSPLIT) by the op (`linear::blocks_kernel_source`): the //@
// markers and the //@CONSTS block.
//
// Dispatch: min(tiles * KSPLIT, N_WG) workgroups of 256 threads (flat wg.x + wg.y * grid_x);
// workgroup w takes the columns of split w % KSPLIT of row tiles w / KSPLIT, + n_wg, ... (n_wg =
// the dispatch / KSPLIT; a tile is RG * NR rows), the loads of a tile's first blocks issued before
// the previous tile's last products. A workgroup is
// RG = 256 / TPR row groups of TPR threads (TPR a multiple of the subgroup size); group g of tile t
// owns weight rows (t * RG + g) * NR .. + NR of this shard, and its thread i takes blocks i,
// i + TPR, ... of each (counted from its split's first block).
// Layout: x [cols] f32 from float x_off (a multiple of 4); y [rows] f32 (its rows row0 + ...);
// gamma [cols] f32 (RMSNorm weight, read when norm = 1); cols a multiple of 32 and at most
// MAX_COLS. Modes as in matvec.wgsl: 0 store, 1 accumulate, 2 SwiGLU over (gate, up) row pairs.

// struct Params: shaders/linear_params.wgsl (prepended by the op).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> gamma: array<vec4<f32>>;

override SG: u32 = 32u;
override TPR: u32 = 64u;
//@CONSTS (the op writes this pipeline's values)
const NR: u32 = 4u; // rows per thread: 1, 2 or 4
const U: u32 = 2u; // blocks of each row per iteration
const MAX_COLS: u32 = 16384u; // input width the workgroup memory holds (of one split)
// Splits of the columns (K): with KSPLIT > 1 (accumulate mode without the norm only) each row
// tile is KSPLIT workgroups' work, each over its own columns, and each adds its sums to y with a
// compare-and-swap (y bound as atomic words), so a product with fewer row tiles than the GPU has
// compute units still fills it.
const KSPLIT: u32 = 1u;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
fn y_add(o: u32, v: f32) { y[o] = y[o] + v; }
fn y_store(o: u32, v: f32) { y[o] = v; }
//@END
override N_WG: u32 = 128u; // workgroups dispatched (the op's `blocks_workgroups`)

// Chunks of 8 input values each thread stages (MAX_COLS is written per product, a multiple of 256).
const CPT: u32 = (MAX_COLS + 2047u) / 2048u;

// The quantised input: chunk c (values 8c .. 8c + 7) at slot(c) as (high level of values 8c ..
// 8c + 3, of 8c + 4 .. 8c + 7, low level of the same two), so block b is slots 4b .. 4b + 3; the
// block's step dx / 256 and 256 * the sum of its values in steps of dx (exact in f32: at most
// 32 * 127 * 257; what Q4_0's zero point and Q4_1's offset multiply) at xmeta[b].
var<workgroup> xs: array<vec4<u32>, MAX_COLS / 8u>;
var<workgroup> xmeta: array<vec2<f32>, MAX_COLS / 32u>;
// One f32 per (subgroup, row): the subgroup partial sums.
var<workgroup> red: array<f32, 256>; // 256 / 4 subgroups at most x NR <= 4
// The RMSNorm's sums of squares, one per subgroup.
var<workgroup> nred: array<f32, 64>;

// fmt_block_dot (matvec_sg's entry point, unused here) reads the input through xin.
fn xin(i: u32) -> f32 { return 0.0; }

// Lane i reads chunks 4i .. 4i + 3 (its block): chunk c goes to c ^ ((c / 8) % 8), so the eight
// lanes of one 128-bit access phase (blocks b .. b + 7, b a multiple of 8) hit eight distinct
// 16-byte bank groups for every chunk m of their blocks.
fn slot(c: u32) -> u32 {
    return c ^ ((c >> 3u) & 7u);
}

// Block b of the quantised input: its four chunks, vec4 k = (high level of values 8k .. 8k + 3,
// 8k + 4 .. 8k + 7, low level of the same), four signed bytes per word (value 4i + j in byte j).
fn xqblock(b: u32) -> array<vec4<u32>, 4> {
    return array<vec4<u32>, 4>(xs[slot(4u * b)], xs[slot(4u * b + 1u)], xs[slot(4u * b + 2u)], xs[slot(4u * b + 3u)]);
}

// Four values in steps of dx (|v| <= 127) as two levels of signed bytes (round(v), then the
// remainder in 256ths of a step), and as third element their sum in 256ths of a step.
fn quant2(v: vec4<f32>) -> vec3<u32> {
    let q1 = round(v);
    let q2 = clamp(round((v - q1) * 256.0), vec4<f32>(-127.0), vec4<f32>(127.0));
    let s = q1 * 256.0 + q2;
    return vec3<u32>(pack4xI8(vec4<i32>(q1)), pack4xI8(vec4<i32>(q2)), bitcast<u32>((s.x + s.y) + (s.z + s.w)));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sub = li / SG;
    let group = li / TPR;
    let ti = li % TPR;
    let wgi = wg.x + wg.y * p.grid_x;
    let rg = 256u / TPR;
    let n_tiles = (p.rows + rg * NR - 1u) / (rg * NR);
    if (wgi >= n_tiles * KSPLIT) { return; }
    // workgroup w takes split w % KSPLIT of row tiles w / KSPLIT, + n_wg / KSPLIT, ...
    // (N_WG is a multiple of KSPLIT)
    let n_wg = min(n_tiles * KSPLIT, N_WG) / KSPLIT;
    let split = wgi % KSPLIT;
    let last_row = p.rows - 1u;
    let last_blk = p.cols / 32u - 1u;
    // this split's blocks kb0 .. kb0 + nb (the op keeps every split non-empty)
    let per_split = (p.cols / 32u + KSPLIT - 1u) / KSPLIT;
    let kb0 = split * per_split;
    let nb = min(per_split, p.cols / 32u - kb0);
    let n_it = (nb + TPR * U - 1u) / (TPR * U);

    // This thread's first blocks, in flight while the input is staged (issued after the input's
    // loads, which hit in L2 and so return first). Registers c{u}_{r} (block
    // ti + TPR * (U * it + u) of row first + r) and their successors n{u}_{r}, written out by the
    // op; rows and blocks past the shard are clamped (loaded, never used) so every thread reaches
    // the barriers and subgroup operations.
    var tile = wgi / KSPLIT;
    var it = 0u;
    var first = (tile * rg + group) * NR;

    // Stage the input quantised: chunk c (values 8c .. 8c + 7) is thread c % 256's, all of its
    // chunks' loads issued at once (clamped addresses, zeroed past the input: no branch around a
    // load), so the staging costs one round trip to memory rather than one per loop iteration.
    // The four threads of a block (adjacent lanes) share its largest magnitude by shuffles. The
    // RMSNorm's scale multiplies whole rows' sums (`scale` at the reduction), so the blocks are
    // quantised from gamma * x and the norm's sum of squares is reduced alongside.
    let xb = p.x_off / 4u + 8u * kb0; // this split's first chunk, in vec4
    let gb = 8u * kb0;
    let nch = nb * 4u;
    var xv: array<vec4<f32>, 2u * CPT>;
    var gv: array<vec4<f32>, 2u * CPT>;
    for (var j = 0u; j < CPT; j++) {
        let c = min(li + 256u * j, nch - 1u);
        xv[2u * j] = x[xb + 2u * c];
        xv[2u * j + 1u] = x[xb + 2u * c + 1u];
    }
    if (p.norm == 1u) {
        for (var j = 0u; j < CPT; j++) {
            let c = min(li + 256u * j, nch - 1u);
            gv[2u * j] = gamma[gb + 2u * c];
            gv[2u * j + 1u] = gamma[gb + 2u * c + 1u];
        }
    }
    //@LOAD0
    var ss = 0.0;
    for (var j = 0u; j < CPT; j++) {
        let c = li + 256u * j;
        let ok = c < nch;
        let a = select(vec4<f32>(0.0), xv[2u * j], ok);
        let b = select(vec4<f32>(0.0), xv[2u * j + 1u], ok);
        ss += dot(a, a) + dot(b, b);
        var va = a;
        var vb = b;
        if (p.norm == 1u) {
            va *= gv[2u * j];
            vb *= gv[2u * j + 1u];
        }
        let am = max(abs(va), abs(vb));
        var m = max(max(am.x, am.y), max(am.z, am.w));
        m = max(m, subgroupShuffleXor(m, 1u));
        m = max(m, subgroupShuffleXor(m, 2u));
        let inv = select(0.0, 127.0 / m, m > 0.0);
        let qa = quant2(va * inv);
        let qb = quant2(vb * inv);
        var qs = bitcast<f32>(qa.z) + bitcast<f32>(qb.z);
        qs += subgroupShuffleXor(qs, 1u);
        qs += subgroupShuffleXor(qs, 2u);
        if (ok) {
            // chunk k of block c / 4 holds both levels of its 8 values (`xqblock`)
            xs[slot(c)] = vec4<u32>(qa.x, qb.x, qa.y, qb.y);
            if (c % 4u == 0u) { xmeta[c / 4u] = vec2<f32>(m / (127.0 * 256.0), qs); }
        }
    }
    var scale = 1.0;
    if (p.norm == 1u) {
        ss = subgroupAdd(ss);
        if (li % SG == 0u) { nred[sub] = ss; }
    }
    workgroupBarrier();
    if (p.norm == 1u) {
        var t = 0.0;
        for (var s = 0u; s < 256u / SG; s++) { t += nred[s]; }
        scale = inverseSqrt(t / f32(p.cols) + p.eps);
    }

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
                s *= scale;
                if (p.mode == 2u) {
                    // the gate row's thread writes silu(gate) * up; the up row's sum comes from
                    // its neighbour
                    if (r % 2u == 0u && row + 1u < p.rows) {
                        var u = 0.0;
                        for (var j = 0u; j < per_group; j++) { u += red[(gk * per_group + j) * NR + r + 1u]; }
                        u *= scale;
                        y_store((p.row0 + row) / 2u, s / (1.0 + exp(-s)) * u);
                    }
                } else {
                    let o = p.row0 + row;
                    if (p.mode == 0u) { y_store(o, s); } else { y_add(o, s); }
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
