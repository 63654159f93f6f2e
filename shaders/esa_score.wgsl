// esa_score: ESA chunk scores of the middle tokens from compressed queries and keys,
//   F[m] = max_c ( s(m,c) - max_m' s(m',c) ),  s(m,c) = cq[c] . ck[m0 + m],
// without materialising the n_q x n_m matrix.
//
// Entry points (all bind the same four buffers, in this order):
//   clear        : rowmax[c] = 0 (the sortable key below every float).   Dispatch (ceil(n_q/256), 1).
//   rowmax_tiled : pass 1, per-query max over M, atomicMax of sortable keys into rowmax.
//                  Dispatch (ceil(n_q/64), n_split); workgroup (x, y) handles query tile x and key
//                  tiles [y * split_tiles, (y+1) * split_tiles).
//   chunk_tiled  : pass 2, out[m] = max over queries of s - rowmax. Dispatch flat (grid_x, gy) over
//                  ceil(n_m/64) key tiles; each workgroup loops over every query tile.
//   decode_dot   : n_q = 1, pass 1: out[m] = s(m, 0), atomicMax into rowmax[0] (not with
//                  rank_only: a decode step that only ranks its scores skips clear and decode_sub).
//                  Dispatch flat over ceil(n_m/32) groups of 32 keys (8 threads per key).
//   decode_sub   : n_q = 1, pass 2: out[m] -= rowmax[0] (esa_score_common.wgsl).
// Tiles: 64 keys x 64 queries x 16 dims in workgroup memory; 256 threads, each a 4 x 4 micro-tile
// (keys tx + 16a, queries ty + 16b, li = ty * 16 + tx).
// Layout: rowmax [n_q] u32 (sortable float keys, scratch); cq [n_q][d] f32;
//         ck [rows][d/2] u32, two f16 per word (even element in the low half), middle token m at
//         row m0 + m; out [n_m] f32. d is even.

// struct Params, bindings 0, 1 and 4, key_of, float_of, touch, clear, decode_sub: esa_score_common.wgsl.

@group(0) @binding(2) var<storage, read> cq: array<f32>;
@group(0) @binding(3) var<storage, read> ck: array<u32>;

const TM: u32 = 64u;
const TQ: u32 = 64u;
const DK: u32 = 16u;

var<workgroup> ks: array<f32, 1024>; // [DK][TM]
var<workgroup> qs: array<f32, 1024>; // [DK][TQ]
var<workgroup> red: array<f32, 256>;
var<workgroup> rm: array<f32, 64>;

fn neg_inf() -> f32 { return bitcast<f32>(0xff800000u); }

// Loads dims [d0, d0 + DK) of key tile m_base and query tile q_base into workgroup memory.
fn load_tiles(li: u32, m_base: u32, q_base: u32, d0: u32) {
    let half = p.d / 2u;
    for (var r = 0u; r < 2u; r++) {
        let w = li + 256u * r;
        let key = w / 8u;
        let pair = w % 8u;
        let m = m_base + key;
        let dim = d0 + 2u * pair;
        var v = vec2<f32>(0.0);
        if (m < p.n_m && dim < p.d) {
            v = unpack2x16float(ck[(p.m0 + m) * half + dim / 2u]);
        }
        ks[(2u * pair) * TM + key] = v.x;
        ks[(2u * pair + 1u) * TM + key] = v.y;
    }
    for (var r = 0u; r < 4u; r++) {
        let e = li + 256u * r;
        let q = e / DK;
        let dd = e % DK;
        let c = q_base + q;
        let dim = d0 + dd;
        var v = 0.0;
        if (c < p.n_q && dim < p.d) { v = cq[c * p.d + dim]; }
        qs[dd * TQ + q] = v;
    }
}

// acc[a * 4 + b] = s(key tx + 16a, query ty + 16b) over the whole width d.
fn tile_dots(li: u32, m_base: u32, q_base: u32) -> array<f32, 16> {
    let tx = li % 16u;
    let ty = li / 16u;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    for (var d0 = 0u; d0 < p.d; d0 += DK) {
        workgroupBarrier();
        load_tiles(li, m_base, q_base, d0);
        workgroupBarrier();
        for (var dd = 0u; dd < DK; dd++) {
            var kv: array<f32, 4>;
            var qv: array<f32, 4>;
            for (var a = 0u; a < 4u; a++) { kv[a] = ks[dd * TM + tx + 16u * a]; }
            for (var b = 0u; b < 4u; b++) { qv[b] = qs[dd * TQ + ty + 16u * b]; }
            for (var a = 0u; a < 4u; a++) {
                for (var b = 0u; b < 4u; b++) {
                    acc[a * 4u + b] = fma(kv[a], qv[b], acc[a * 4u + b]);
                }
            }
        }
    }
    return acc;
}

@compute @workgroup_size(256)
fn rowmax_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    let tx = li % 16u;
    let ty = li / 16u;
    let q_base = wg.x * TQ;
    let n_tiles = (p.n_m + TM - 1u) / TM;
    let t0 = wg.y * p.split_tiles;
    let t1 = min(t0 + p.split_tiles, n_tiles);
    var best: array<f32, 4>;
    for (var b = 0u; b < 4u; b++) { best[b] = neg_inf(); }
    for (var t = t0; t < t1; t++) {
        let m_base = t * TM;
        let acc = tile_dots(li, m_base, q_base);
        for (var a = 0u; a < 4u; a++) {
            if (m_base + tx + 16u * a < p.n_m) {
                for (var b = 0u; b < 4u; b++) { best[b] = max(best[b], acc[a * 4u + b]); }
            }
        }
    }
    // Reduce over the 16 threads (tx) that share each query.
    for (var b = 0u; b < 4u; b++) {
        workgroupBarrier();
        red[li] = best[b];
        workgroupBarrier();
        for (var s = 8u; s > 0u; s >>= 1u) {
            if (tx < s) { red[li] = max(red[li], red[li + s]); }
            workgroupBarrier();
        }
        let c = q_base + ty + 16u * b;
        if (tx == 0u && c < p.n_q && t0 < t1) {
            atomicMax(&rowmax[c], key_of(red[li]));
        }
    }
}

@compute @workgroup_size(256)
fn chunk_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    let tile = wg.x + wg.y * p.grid_x;
    let n_tiles = (p.n_m + TM - 1u) / TM;
    if (tile >= n_tiles) { return; }
    let tx = li % 16u;
    let ty = li / 16u;
    let m_base = tile * TM;
    var best: array<f32, 4>;
    for (var a = 0u; a < 4u; a++) { best[a] = neg_inf(); }
    for (var q_base = 0u; q_base < p.n_q; q_base += TQ) {
        workgroupBarrier();
        if (li < TQ && q_base + li < p.n_q) { rm[li] = float_of(atomicLoad(&rowmax[q_base + li])); }
        let acc = tile_dots(li, m_base, q_base); // begins with a barrier, so rm is visible
        for (var b = 0u; b < 4u; b++) {
            if (q_base + ty + 16u * b < p.n_q) {
                let r = rm[ty + 16u * b];
                for (var a = 0u; a < 4u; a++) { best[a] = max(best[a], acc[a * 4u + b] - r); }
            }
        }
    }
    // Reduce over the 16 threads (ty) that share each key.
    for (var a = 0u; a < 4u; a++) {
        workgroupBarrier();
        red[li] = best[a];
        workgroupBarrier();
        for (var s = 8u; s > 0u; s >>= 1u) {
            if (ty < s) { red[li] = max(red[li], red[li + 16u * s]); }
            workgroupBarrier();
        }
        let m = m_base + tx + 16u * a;
        if (ty == 0u && m < p.n_m) { out[m] = red[tx]; }
    }
}

@compute @workgroup_size(256)
fn decode_dot(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    let group = wg.x + wg.y * p.grid_x;
    let key = li / 8u;
    let part = li % 8u;
    let m = group * 32u + key;
    let half = p.d / 2u;
    var acc = 0.0;
    if (m < p.n_m) {
        let row = (p.m0 + m) * half;
        for (var w = part; w < half; w += 8u) {
            let k = unpack2x16float(ck[row + w]);
            acc = fma(k.x, cq[2u * w], acc);
            acc = fma(k.y, cq[2u * w + 1u], acc);
        }
    }
    red[li] = acc;
    workgroupBarrier();
    for (var s = 4u; s > 0u; s >>= 1u) {
        if (part < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    var v = neg_inf();
    if (part == 0u && m < p.n_m) {
        v = red[li];
        out[m] = v;
    }
    if (p.rank_only == 1u) { return; }
    workgroupBarrier();
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    if (li == 0u && group * 32u < p.n_m) { atomicMax(&rowmax[0], key_of(red[0])); }
}
