enable f16;
enable wgpu_cooperative_matrix;
// esa_score_coop: the two passes of esa_score.wgsl (same scores, same bindings in the same order)
// on cooperative matrices: 16x16x16 products of f16 compressed queries and keys, f32 accumulators.
// Chosen by `esa_score::score` for chunks when the cooperative-matrix matmul runs and d' is a
// multiple of 16 of at most MAX_D (the resident tile must fit 48 KiB of workgroup memory).
//
// Each workgroup keeps RES = 64 "resident" rows of width D in workgroup memory for its whole run
// and streams STR = 32 rows per step past them; its 8 subgroups each own one 16 x 16 fragment of
// the RES x STR score tile (resident fragment sg % 4, streamed fragment sg / 4), accumulated over
// D / 16 products, then written through a per-subgroup f32 scratch (cs[sg * 256 + r * 16 + s])
// where its lanes reduce it: lane l takes resident row l % 16, streamed rows 8 (l / 16) .. + 7.
//   clear        : rowmax[c] = 0 (the sortable key below every float). Dispatch (ceil(n_q/256), 1).
//   rowmax_coop  : pass 1. Resident: queries [64 wg.x, +64); streamed: key tiles of 32,
//                  [wg.y * split_tiles, +split_tiles). Per query, atomicMax of the best score.
//                  Dispatch (ceil(n_q/64), n_split).
//   chunk_coop   : pass 2. Resident: keys [64 tile, +64), tile = wg.x + wg.y * grid_x; streamed:
//                  every query, 32 at a time, with its rowmax. out[m] = max_c s(m,c) - rowmax[c].
//                  Dispatch flat over ceil(n_m/64).
// D (= d') is substituted by the op. Layout as esa_score.wgsl: cq [n_q][D] f32 (read as vec4);
// ck [rows][D/2] u32 f16 pairs (read as vec4<u32>: D is a multiple of 16), middle token m at row
// m0 + m; rowmax [n_q] sortable u32 keys; out [n_m] f32.

// struct Params, bindings 0, 1 and 4, key_of, float_of, touch, clear: esa_score_common.wgsl.

@group(0) @binding(2) var<storage, read> cq: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ck: array<vec4<u32>>;

const D: u32 = 64u;
const LD: u32 = D + 8u; // halves per staged row: 16-byte aligned, rows on different banks
const OCT: u32 = D / 8u; // octets (8 halves, one vec4<u32> of keys) per row
const RES: u32 = 64u;
const STR: u32 = 32u;
const NEG: f32 = -3.0e38;

var<workgroup> rs: array<f16, RES * LD>; // resident rows
var<workgroup> ss: array<f16, STR * LD>; // streamed rows of this step
var<workgroup> cs: array<f32, 2048>; // 8 subgroups x [16][16] fragment scratch
var<workgroup> srm: array<f32, STR>; // pass 2: rowmax of the streamed queries

// Octet o of query c as eight floats (zero past n_q).
fn q_oct(c: u32, o: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (c < p.n_q) {
        let a = cq[c * (D / 4u) + 2u * o];
        let b = cq[c * (D / 4u) + 2u * o + 1u];
        v = array<f32, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
    }
    return v;
}

// Octet o of middle token m as eight floats (zero past n_m).
fn k_oct(m: u32, o: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (m < p.n_m) { v = unpack8(ck[(p.m0 + m) * OCT + o]); }
    return v;
}

// fn unpack8: shaders/unpack_f16x8.wgsl (prepended by the op).

fn stage_rs(li: u32, base: u32, queries: bool) {
    for (var i = li; i < RES * OCT; i += 256u) {
        let r = i / OCT;
        let o = i % OCT;
        var v: array<f32, 8>;
        if (queries) { v = q_oct(base + r, o); } else { v = k_oct(base + r, o); }
        for (var j = 0u; j < 8u; j++) { rs[r * LD + 8u * o + j] = f16(v[j]); }
    }
}

// The streamed rows are fetched into registers a step ahead (`fetch_*`), so their loads are in
// flight while the previous step multiplies, then written to workgroup memory (`put_*`). Thread
// li holds octets li + 256 j, j < SPT, of the STR x D tile.
const SPT: u32 = (STR * OCT + 255u) / 256u;

fn fetch_k(li: u32, base: u32) -> array<vec4<u32>, SPT> {
    var r: array<vec4<u32>, SPT>;
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        let m = base + i / OCT;
        if (i < STR * OCT && m < p.n_m) { r[j] = ck[(p.m0 + m) * OCT + i % OCT]; }
    }
    return r;
}

fn put_k(li: u32, raw: array<vec4<u32>, SPT>) {
    var w = raw; // (a var: naga's SPIR-V writer wants dynamically indexed arrays in memory)
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        if (i < STR * OCT) {
            var v = unpack8(w[j]);
            for (var e = 0u; e < 8u; e++) { ss[(i / OCT) * LD + 8u * (i % OCT) + e] = f16(v[e]); }
        }
    }
}

fn fetch_q(li: u32, base: u32) -> array<vec4<f32>, 2u * SPT> {
    var r: array<vec4<f32>, 2u * SPT>;
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        let c = base + i / OCT;
        if (i < STR * OCT && c < p.n_q) {
            r[2u * j] = cq[c * (D / 4u) + 2u * (i % OCT)];
            r[2u * j + 1u] = cq[c * (D / 4u) + 2u * (i % OCT) + 1u];
        }
    }
    return r;
}

fn put_q(li: u32, raw: array<vec4<f32>, 2u * SPT>) {
    var w = raw;
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        if (i < STR * OCT) {
            let at = (i / OCT) * LD + 8u * (i % OCT);
            let a = w[2u * j];
            let b = w[2u * j + 1u];
            ss[at] = f16(a.x);
            ss[at + 1u] = f16(a.y);
            ss[at + 2u] = f16(a.z);
            ss[at + 3u] = f16(a.w);
            ss[at + 4u] = f16(b.x);
            ss[at + 5u] = f16(b.y);
            ss[at + 6u] = f16(b.z);
            ss[at + 7u] = f16(b.w);
        }
    }
}

// The subgroup's fragment of resident rows rf * 16 .. x streamed rows sf * 16 .., into its
// scratch (cs[cbase + r * 16 + s]); ends with a barrier, so every lane may read any of it.
fn tile_scores(rf: u32, sf: u32, cbase: u32) {
    let ld = LD;
    let s16 = 16u;
    var acc = coop_mat16x16<f32, C>();
    for (var dd = 0u; dd < D; dd += 16u) {
        let ia = rf * 16u * LD + dd;
        let ib = sf * 16u * LD + dd;
        let a = coopLoadT<coop_mat16x16<f16, A>>(&rs[ia], ld);
        let b = coopLoad<coop_mat16x16<f16, B>>(&ss[ib], ld);
        acc = coopMultiplyAdd(a, b, acc);
    }
    coopStoreT(acc, &cs[cbase], s16);
    workgroupBarrier();
}

// Each lane's best over its 8 streamed entries, combined over the lane halves and the two
// streamed fragments: the resident row's best lands in cs[li] for li < RES (after a barrier).
fn combine(best_in: f32, lh: u32, lm: u32, rf: u32, sf: u32) {
    let best = max(best_in, subgroupShuffleXor(best_in, 16u));
    workgroupBarrier();
    if (lh == 0u) { cs[sf * 64u + rf * 16u + lm] = best; }
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
    let rf = sg % 4u;
    let sf = sg / 4u;
    let lm = lane % 16u;
    let lh = lane / 16u;
    let cbase = sg * 256u;
    stage_rs(li, q_base, true);
    var best = NEG;
    var raw = fetch_k(li, t0 * STR);
    for (var t = t0; t < t1; t++) {
        workgroupBarrier();
        put_k(li, raw);
        workgroupBarrier();
        if (t + 1u < t1) { raw = fetch_k(li, (t + 1u) * STR); }
        tile_scores(rf, sf, cbase);
        for (var n = 0u; n < 8u; n++) {
            let key = t * STR + sf * 16u + lh * 8u + n;
            if (key < p.n_m) { best = max(best, cs[cbase + lm * 16u + lh * 8u + n]); }
        }
    }
    combine(best, lh, lm, rf, sf);
    if (li < RES) {
        let m = max(cs[li], cs[64u + li]);
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
    let rf = sg % 4u;
    let sf = sg / 4u;
    let lm = lane % 16u;
    let lh = lane / 16u;
    let cbase = sg * 256u;
    stage_rs(li, m_base, false);
    var best = NEG;
    var raw = fetch_q(li, 0u);
    var rm_next = 0.0;
    if (li < STR && li < p.n_q) { rm_next = float_of(atomicLoad(&rowmax[li])); }
    for (var q_base = 0u; q_base < p.n_q; q_base += STR) {
        workgroupBarrier();
        put_q(li, raw);
        if (li < STR) { srm[li] = rm_next; }
        workgroupBarrier();
        let nb = q_base + STR;
        if (nb < p.n_q) {
            raw = fetch_q(li, nb);
            if (li < STR && nb + li < p.n_q) { rm_next = float_of(atomicLoad(&rowmax[nb + li])); }
        }
        tile_scores(rf, sf, cbase);
        for (var n = 0u; n < 8u; n++) {
            let s = sf * 16u + lh * 8u + n;
            if (q_base + s < p.n_q) { best = max(best, cs[cbase + lm * 16u + lh * 8u + n] - srm[s]); }
        }
    }
    combine(best, lh, lm, rf, sf);
    if (li < RES) {
        let m = m_base + li;
        if (m < p.n_m) { out[m] = max(cs[li], cs[64u + li]); }
    }
}
