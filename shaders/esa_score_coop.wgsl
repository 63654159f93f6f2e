enable f16;
enable wgpu_cooperative_matrix;
// esa_score_coop: the two passes of esa_score.wgsl (same scores, same bindings in the same order)
// on cooperative matrices: 16x16x16 products of f16 compressed queries and keys, f32 accumulators.
// Chosen by `esa_score::score` for chunks when the cooperative-matrix matmul runs and d' is a
// multiple of 16 of at most COOP_MAX_D (the staged tile and the scratch must fit 48 KiB of
// workgroup memory, the resident fragments the registers).
//
// Each workgroup has RES = 16 RF SR "resident" rows (queries in pass 1, keys in pass 2) and
// streams STR = 16 SS rows of the other kind per step past them. Its 8 subgroups are SR along the
// resident rows x SS along the streamed ones: subgroup (sr, sn) owns resident rows
// 16 RF sr .. (RF = 2 fragments of 16) against streamed rows 16 sn .. + 15. The op picks the
// shape by d' (`//@SHAPE`): 64 x 64 (SR = 2, SS = 4), or 128 x 32 (SR = 4, SS = 2) where the
// resident tile fits (d' <= 96), which stages half the rows per step for the same products.
// - The resident rows are loaded once, as RF x D/16 A fragments that stay in registers (the
//   `//@ALOAD` lines the op expands), so a step loads only the streamed B fragments from workgroup
//   memory, each feeding RF products (`//@MMA`). Staging goes through the one buffer `buf`: first
//   the resident tile, then each step's streamed rows (fetched into registers a step ahead).
//   (Loading the fragments straight from the storage buffers instead, without staging, ran
//   1.4-2.2x slower on the H200: docs/perf.md, session 7.)
// - A score fragment has all of d' summed after one step (D/16 products). It is stored to the
//   subgroup's f32 scratch (cs[sg * 256 RF + 256 i + r * 16 + s], resident row r, streamed row s),
//   and lane l reads entries l + 32 n, n < 8 (conflict-free: row 2n + l / 16, column l % 16) into
//   a running maximum per entry. The maxima are reduced across lanes and subgroups once, at the
//   end (subgroup shuffles, then workgroup memory), not every step.
//   clear        : rowmax[c] = 0 (the sortable key below every float). Dispatch (ceil(n_q/256), 1).
//   rowmax_coop  : pass 1. Resident: queries [RES wg.x, +RES); streamed: key tiles of STR,
//                  [wg.y * split_tiles, +split_tiles). Per query, atomicMax of the best score.
//                  Dispatch (ceil(n_q/RES), n_split).
//   chunk_coop   : pass 2. Resident: keys [RES tile, +RES), tile = wg.x + wg.y * grid_x; streamed:
//                  every query, STR at a time, with its rowmax. out[m] = max_c s(m,c) - rowmax[c].
//                  Dispatch flat over ceil(n_m/RES).
// D (= d') is substituted by the op. Layout as esa_score.wgsl: cq [n_q][D] f32 (read as vec4);
// ck [rows][D/2] u32 f16 pairs (read as vec4<u32>: D is a multiple of 16), middle token m at row
// m0 + m; rowmax [n_q] sortable u32 keys; out [n_m] f32.

// struct Params, bindings 0, 1 and 4, key_of, float_of, touch, clear: esa_score_common.wgsl.

@group(0) @binding(2) var<storage, read> cq: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ck: array<vec4<u32>>;

const D: u32 = 64u;
const LD: u32 = D + 8u; // halves per staged row: 16-byte aligned, rows on different banks
const LDV: u32 = LD / 4u; // the same in vec4<f16> elements (the staging buffer's and the matrix loads' unit)
const OCT: u32 = D / 8u; // octets (8 halves, one vec4<u32> of keys) per row
//@SHAPE
const RF: u32 = 2u; // resident fragments per subgroup
const SR: u32 = 2u; // subgroups along the resident rows
const SS: u32 = 4u; // subgroups along the streamed rows
const ROWS: u32 = 64u; // max(RES, STR)
//@END
const RES: u32 = 16u * RF * SR;
const STR: u32 = 16u * SS;
const NEG: f32 = -3.0e38;

// The resident tile, then each step's streamed rows, as vec4<f16>: two 8-byte workgroup stores per
// staged octet rather than eight 2-byte ones (the matmul's staging gained 33% from this on the
// H200, docs/perf.md session 10); the matrix loads count vec4 elements.
var<workgroup> buf: array<vec4<f16>, ROWS * LDV>;
var<workgroup> cs: array<f32, 256u * RF * SR * SS>; // per subgroup RF x [16][16] fragment scratch
var<workgroup> srm: array<f32, STR>; // pass 2: rowmax of the streamed queries

// Every staging load below is branch-free: a clamped (valid) address, then a select of zero past
// the rows, so a thread's loads go out back to back.

// Octet o of query c (zero past n_q), as two vec4 of floats.
fn q_oct(c: u32, o: u32) -> array<vec4<f32>, 2> {
    let at = min(c, p.n_q - 1u) * (D / 4u) + 2u * o;
    let ok = c < p.n_q;
    return array<vec4<f32>, 2>(select(vec4<f32>(0.0), cq[at], ok), select(vec4<f32>(0.0), cq[at + 1u], ok));
}

// Octet o of middle token m (zero past n_m), as eight packed halves.
fn k_oct(m: u32, o: u32) -> vec4<u32> {
    return select(vec4<u32>(0u), ck[(p.m0 + min(m, p.n_m - 1u)) * OCT + o], m < p.n_m);
}

// Staged octet at element `at` of buf: two vec4<f16>.
// (halves4: shaders/unpack_f16x8.wgsl, prepended by the op)
fn put_halves(at: u32, q: vec4<u32>) {
    buf[at] = halves4(q, 0u);
    buf[at + 1u] = halves4(q, 1u);
}

fn put_floats(at: u32, a: vec4<f32>, b: vec4<f32>) {
    buf[at] = vec4<f16>(a);
    buf[at + 1u] = vec4<f16>(b);
}

fn stage_resident(li: u32, base: u32, queries: bool) {
    for (var i = li; i < RES * OCT; i += 256u) {
        let r = i / OCT;
        let o = i % OCT;
        let at = r * LDV + 2u * o;
        if (queries) {
            let v = q_oct(base + r, o);
            put_floats(at, v[0], v[1]);
        } else {
            put_halves(at, k_oct(base + r, o));
        }
    }
}

// The streamed rows are fetched into registers a step ahead (`fetch_*`), so their loads are in
// flight while the previous step multiplies, then written to workgroup memory (`put_*`). Thread
// li holds octets li + 256 j, j < SPT, of the STR x D tile.
const SPT: u32 = (STR * OCT + 255u) / 256u;

// (Octet indices past the tile, i >= STR * OCT, occur only when 256 does not divide the tile's
// octets: they load row 0 of the step's rows and are never put.)
fn fetch_k(li: u32, base: u32) -> array<vec4<u32>, SPT> {
    var r: array<vec4<u32>, SPT>;
    for (var j = 0u; j < SPT; j++) {
        let i = min(li + 256u * j, STR * OCT - 1u);
        r[j] = k_oct(base + i / OCT, i % OCT);
    }
    return r;
}

fn put_k(li: u32, raw: array<vec4<u32>, SPT>) {
    var w = raw; // (a var: naga's SPIR-V writer wants dynamically indexed arrays in memory)
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        if (i < STR * OCT) { put_halves((i / OCT) * LDV + 2u * (i % OCT), w[j]); }
    }
}

fn fetch_q(li: u32, base: u32) -> array<vec4<f32>, 2u * SPT> {
    var r: array<vec4<f32>, 2u * SPT>;
    for (var j = 0u; j < SPT; j++) {
        let i = min(li + 256u * j, STR * OCT - 1u);
        let v = q_oct(base + i / OCT, i % OCT);
        r[2u * j] = v[0];
        r[2u * j + 1u] = v[1];
    }
    return r;
}

fn put_q(li: u32, raw: array<vec4<f32>, 2u * SPT>) {
    var w = raw;
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        if (i < STR * OCT) { put_floats((i / OCT) * LDV + 2u * (i % OCT), w[2u * j], w[2u * j + 1u]); }
    }
}

// The running maxima of lane `lane` (entry n of fragment i: resident row 16 (RF sr + i) + 2n +
// lane / 16) reduced over the 16 lanes that share a row pair and over the SS subgroups along the
// streamed rows: after the final barrier, cs[r] holds resident row r's best, r < RES.
fn reduce_rows(best_in: array<f32, 8u * RF>, lane: u32, sg: u32, sr: u32, sn: u32) {
    var best = best_in;
    for (var e = 0u; e < 8u * RF; e++) {
        var v = best[e];
        v = max(v, subgroupShuffleXor(v, 1u));
        v = max(v, subgroupShuffleXor(v, 2u));
        v = max(v, subgroupShuffleXor(v, 4u));
        v = max(v, subgroupShuffleXor(v, 8u));
        best[e] = v;
    }
    workgroupBarrier(); // every lane is done with the fragment scratch
    if (lane % 16u == 0u) {
        for (var e = 0u; e < 8u * RF; e++) {
            let r = 16u * (RF * sr + e / 8u) + 2u * (e % 8u) + lane / 16u;
            cs[sn * RES + r] = best[e];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn rowmax_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    touch();
    let q_base = wg.x * RES;
    let n_tiles = (p.n_m + STR - 1u) / STR;
    let t0 = wg.y * p.split_tiles;
    let t1 = min(t0 + p.split_tiles, n_tiles);
    let sr = sg / SS;
    let sn = sg % SS;
    let cbase = sg * 256u * RF;
    stage_resident(li, q_base, true);
    workgroupBarrier();
    //@ALOAD
    workgroupBarrier(); // the fragments are in registers: buf may take streamed rows
    var best: array<f32, 8u * RF>;
    for (var e = 0u; e < 8u * RF; e++) { best[e] = NEG; }
    let ib = sn * 16u * LDV;
    var raw = fetch_k(li, t0 * STR);
    for (var t = t0; t < t1; t++) {
        put_k(li, raw);
        workgroupBarrier();
        if (t + 1u < t1) { raw = fetch_k(li, (t + 1u) * STR); }
        //@MMA
        workgroupBarrier();
        // this lane's streamed row (key) is the same in every entry it reads
        let valid = t * STR + sn * 16u + lane % 16u < p.n_m;
        for (var e = 0u; e < 8u * RF; e++) {
            let v = cs[cbase + 256u * (e / 8u) + lane + 32u * (e % 8u)];
            best[e] = select(best[e], max(best[e], v), valid);
        }
        // (no barrier here: the next step writes buf after every subgroup's loads, which the
        // barrier above orders, and its scratch only after its put barrier)
    }
    reduce_rows(best, lane, sg, sr, sn);
    if (li < RES) {
        var m = cs[li];
        for (var s = 1u; s < SS; s++) { m = max(m, cs[s * RES + li]); }
        let c = q_base + li;
        if (c < p.n_q && t0 < t1) { atomicMax(&rowmax[c], key_of(m)); }
    }
}

@compute @workgroup_size(256)
fn chunk_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    touch();
    let tile = wg.x + wg.y * p.grid_x;
    let n_tiles = (p.n_m + RES - 1u) / RES;
    // Uniform per workgroup: the whole workgroup leaves together, before any barrier.
    if (tile >= n_tiles) { return; }
    let m_base = tile * RES;
    let sr = sg / SS;
    let sn = sg % SS;
    let cbase = sg * 256u * RF;
    stage_resident(li, m_base, false);
    workgroupBarrier();
    //@ALOAD
    workgroupBarrier();
    var best: array<f32, 8u * RF>;
    for (var e = 0u; e < 8u * RF; e++) { best[e] = NEG; }
    let ib = sn * 16u * LDV;
    var raw = fetch_q(li, 0u);
    var rm_next = 0.0;
    if (li < STR && li < p.n_q) { rm_next = float_of(atomicLoad(&rowmax[li])); }
    for (var q_base = 0u; q_base < p.n_q; q_base += STR) {
        put_q(li, raw);
        if (li < STR) { srm[li] = rm_next; }
        workgroupBarrier();
        let nb = q_base + STR;
        if (nb < p.n_q) {
            raw = fetch_q(li, nb);
            if (li < STR && nb + li < p.n_q) { rm_next = float_of(atomicLoad(&rowmax[nb + li])); }
        }
        // this lane's streamed row (query) is the same in every entry it reads; its rowmax is
        // read before the barrier below, after which the next step may overwrite srm
        let s = sn * 16u + lane % 16u;
        let valid = q_base + s < p.n_q;
        let sub = srm[s];
        //@MMA
        workgroupBarrier();
        for (var e = 0u; e < 8u * RF; e++) {
            let v = cs[cbase + 256u * (e / 8u) + lane + 32u * (e % 8u)] - sub;
            best[e] = select(best[e], max(best[e], v), valid);
        }
    }
    reduce_rows(best, lane, sg, sr, sn);
    if (li < RES) {
        var m = cs[li];
        for (var s = 1u; s < SS; s++) { m = max(m, cs[s * RES + li]); }
        if (m_base + li < p.n_m) { out[m_base + li] = m; }
    }
}
