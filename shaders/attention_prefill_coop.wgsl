enable f16;
enable wgpu_cooperative_matrix;
// attention_prefill_coop: causal GQA attention of a prefill chunk on cooperative matrices (16x16x16
// f16 products, f32 accumulators). Same rows, keys and layout as attention_prefill.wgsl; chosen by
// the op where the adapter offers those matrices and subgroups of exactly 32.
//
// Two passes over the keys, so the output accumulators never need rescaling (they are opaque
// fragments that cannot be scaled in place): pass 1 computes S = Q K^T tile by tile and keeps each
// row's running max m and sum l of exp(S - m); pass 2 recomputes S, forms P = exp(S - m) / l in
// f16 and accumulates O += P V. QK^T is computed twice: 1.5x the FLOPs of one pass, all on tensor
// cores.
// Dispatch: (ceil(n_q * G / 64), n_kv) workgroups of 256 threads (8 subgroups of 32). Rows of a
// workgroup: 64 (token, head) pairs of one KV group (row R: token R / G, head kvh * G + R % G).
// Key tiles of 32, rotated to their positions once as they are staged. D (head_dim, a multiple
// of 32, at most 128) is substituted into the source by the op.
// Subgroup s: for S, rows 16 (s % 4) .. and keys 16 (s / 4) .. of the tile; for O, rows
// 16 (s % 4) .. and columns 16 (s / 4 + 2 j) .., j < D / 32.
// Layout: q [n_q][n_heads][D] f32 (rotated at pos0 + t); k_cache, v_cache [max_ctx][n_kv][D/2]
// u32 (f16 pairs, keys un-rotated); inv_freq [D/2]; out [n_q][n_heads][D] f32.

// struct Params and the bindings: shaders/attention_prefill_params.wgsl (prepended by the op).

const D: u32 = 64u;
const BR: u32 = 64u; // rows per workgroup
const BC: u32 = 32u; // keys per tile
const LD: u32 = D + 8u; // halves per staged row: 16-byte aligned, spread over banks
const LDP: u32 = BC + 8u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f16, BR * LD>;
var<workgroup> ks: array<f16, BC * LD>; // rotated keys
var<workgroup> vs: array<f16, BC * LD>;
var<workgroup> ps: array<f16, BR * LDP>; // P = exp(S - m) / l
var<workgroup> cs: array<f32, 2048>; // 8 subgroups x [16][16] fragment scratch
var<workgroup> row_m: array<f32, BR>;
var<workgroup> row_l: array<f32, BR>;

// Stage keys kb .. kb + BC (rotated; zero past n_keys) and, with `values`, their values.
fn stage(li: u32, kb: u32, n_keys: u32, kvh: u32, values: bool) {
    let half = D / 2u;
    let words = p.n_kv * half;
    for (var i = li; i < BC * half; i += 256u) {
        let kj = i / half;
        let e = i % half;
        let key = kb + kj;
        var lo = 0.0;
        var hi = 0.0;
        var v0 = 0.0;
        var v1 = 0.0;
        if (key < n_keys) {
            let base = key * words + kvh * half;
            let a = f32(key) * inv_freq[e];
            let c = cos(a);
            let s = sin(a);
            let k0 = unpack2x16float(k_cache[base + e / 2u])[e & 1u];
            let k1 = unpack2x16float(k_cache[base + (e + half) / 2u])[(e + half) & 1u];
            lo = k0 * c - k1 * s;
            hi = k1 * c + k0 * s;
            if (values) {
                v0 = unpack2x16float(v_cache[base + e / 2u])[e & 1u];
                v1 = unpack2x16float(v_cache[base + (e + half) / 2u])[(e + half) & 1u];
            }
        }
        ks[kj * LD + e] = f16(lo);
        ks[kj * LD + e + half] = f16(hi);
        if (values) {
            vs[kj * LD + e] = f16(v0);
            vs[kj * LD + e + half] = f16(v1);
        }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let g = p.n_heads / p.n_kv;
    let kvh = wg.y;
    let n_rows = p.n_q * g;
    let r0 = wg.x * BR;
    let last_row = min(r0 + BR, n_rows) - 1u;
    let n_keys = p.pos0 + last_row / g + 1u;
    let rf = sg % 4u; // row fragment
    let kf = sg / 4u; // key fragment (S) / first column fragment (O)
    let ld = LD;
    let ldp = LDP;
    let s16 = 16u;
    let cbase = sg * 256u;

    // Queries (f16, unscaled: the scale is applied to S in f32).
    for (var i = li; i < BR * D; i += 256u) {
        let r = i / D;
        let e = i % D;
        let row = r0 + r;
        var v = 0.0;
        if (row < n_rows) {
            v = q[((row / g) * p.n_heads + kvh * g + row % g) * D + e];
        }
        qs[r * LD + e] = f16(v);
    }

    // This lane's share of the subgroup's S fragment: row lm, keys 8 lh .. 8 lh + 7.
    let lm = lane % 16u;
    let lh = lane / 16u;
    let my_row = r0 + rf * 16u + lm;
    let my_t = my_row / g;
    var run_m = NEG;
    var run_l = 0.0;

    // Pass 1: running max and sum per row.
    for (var kb = 0u; kb < n_keys; kb += BC) {
        workgroupBarrier();
        stage(li, kb, n_keys, kvh, false);
        workgroupBarrier();
        var acc = coop_mat16x16<f32, C>();
        for (var dd = 0u; dd < D; dd += 16u) {
            let ia = rf * 16u * LD + dd;
            let ib = kf * 16u * LD + dd;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&qs[ia], ld);
            let b = coopLoad<coop_mat16x16<f16, B>>(&ks[ib], ld);
            acc = coopMultiplyAdd(a, b, acc);
        }
        coopStoreT(acc, &cs[cbase], s16);
        workgroupBarrier();
        var mx = NEG;
        var vals: array<f32, 8>;
        for (var n = 0u; n < 8u; n++) {
            let key = kb + kf * 16u + lh * 8u + n;
            var s = NEG;
            if (my_row < n_rows && key <= p.pos0 + my_t) { s = cs[cbase + lm * 16u + lh * 8u + n] * p.scale; }
            vals[n] = s;
            mx = max(mx, s);
        }
        mx = max(mx, subgroupShuffleXor(mx, 16u));
        let m_new = max(run_m, mx);
        var e = 0.0;
        for (var n = 0u; n < 8u; n++) {
            if (vals[n] > NEG) { e += exp(vals[n] - m_new); }
        }
        e += subgroupShuffleXor(e, 16u);
        if (m_new > NEG) {
            run_l = run_l * select(0.0, exp(run_m - m_new), run_m > NEG) + e;
            run_m = m_new;
        }
    }
    // Combine the two key-fragment halves of each row (subgroups s and s + 4).
    workgroupBarrier();
    if (lh == 0u) {
        cs[kf * 128u + rf * 16u + lm] = run_m;
        cs[kf * 128u + 64u + rf * 16u + lm] = run_l;
    }
    workgroupBarrier();
    if (li < BR) {
        let m0 = cs[li];
        let m1 = cs[128u + li];
        let l0 = cs[64u + li];
        let l1 = cs[192u + li];
        let m = max(m0, m1);
        let l = select(0.0, l0 * exp(m0 - m), m0 > NEG) + select(0.0, l1 * exp(m1 - m), m1 > NEG);
        row_m[li] = m;
        row_l[li] = select(1.0, l, l > 0.0);
    }

    // Pass 2: O = sum over tiles of P V.
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    for (var kb = 0u; kb < n_keys; kb += BC) {
        workgroupBarrier();
        stage(li, kb, n_keys, kvh, true);
        workgroupBarrier();
        var acc = coop_mat16x16<f32, C>();
        for (var dd = 0u; dd < D; dd += 16u) {
            let ia = rf * 16u * LD + dd;
            let ib = kf * 16u * LD + dd;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&qs[ia], ld);
            let b = coopLoad<coop_mat16x16<f16, B>>(&ks[ib], ld);
            acc = coopMultiplyAdd(a, b, acc);
        }
        coopStoreT(acc, &cs[cbase], s16);
        workgroupBarrier();
        let rm = row_m[rf * 16u + lm];
        let rl = 1.0 / row_l[rf * 16u + lm];
        for (var n = 0u; n < 8u; n++) {
            let kl = kf * 16u + lh * 8u + n;
            let key = kb + kl;
            var pv = 0.0;
            if (my_row < n_rows && key <= p.pos0 + my_t) {
                pv = exp(cs[cbase + lm * 16u + lh * 8u + n] * p.scale - rm) * rl;
            }
            ps[(rf * 16u + lm) * LDP + kl] = f16(pv);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BC; kk += 16u) {
            let ia = rf * 16u * LDP + kk;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&ps[ia], ldp);
            let ib0 = kk * LD + kf * 16u;
            let b0 = coopLoadT<coop_mat16x16<f16, B>>(&vs[ib0], ld);
            o0 = coopMultiplyAdd(a, b0, o0);
            if (D >= 64u) {
                let ib1 = ib0 + 32u;
                let b1 = coopLoadT<coop_mat16x16<f16, B>>(&vs[ib1], ld);
                o1 = coopMultiplyAdd(a, b1, o1);
            }
            if (D >= 96u) {
                let ib2 = ib0 + 64u;
                let b2 = coopLoadT<coop_mat16x16<f16, B>>(&vs[ib2], ld);
                o2 = coopMultiplyAdd(a, b2, o2);
            }
            if (D >= 128u) {
                let ib3 = ib0 + 96u;
                let b3 = coopLoadT<coop_mat16x16<f16, B>>(&vs[ib3], ld);
                o3 = coopMultiplyAdd(a, b3, o3);
            }
        }
    }

    // Write O: each fragment through the subgroup's scratch; lanes write rows of 16 columns.
    for (var j = 0u; j < D / 32u; j++) {
        workgroupBarrier();
        if (j == 0u) { coopStoreT(o0, &cs[cbase], s16); }
        if (j == 1u) { coopStoreT(o1, &cs[cbase], s16); }
        if (j == 2u) { coopStoreT(o2, &cs[cbase], s16); }
        if (j == 3u) { coopStoreT(o3, &cs[cbase], s16); }
        workgroupBarrier();
        let col0 = (kf + 2u * j) * 16u;
        for (var e = lane; e < 256u; e += 32u) {
            let m = e / 16u;
            let n = e % 16u;
            let row = r0 + rf * 16u + m;
            if (row < n_rows) {
                let head = kvh * g + row % g;
                out[((row / g) * p.n_heads + head) * D + col0 + n] = cs[cbase + m * 16u + n];
            }
        }
    }
}
