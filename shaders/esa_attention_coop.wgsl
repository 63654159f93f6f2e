enable f16;
enable wgpu_cooperative_matrix;
// esa_attention_coop: attention of a prefill chunk on cooperative matrices (16x16x16 f16 products,
// f32 accumulators), over ESA's two key segments, one segment per dispatch z, each written as a
// partial (m, l, o) that attention_merge.wgsl combines (one softmax over both). Chosen for chunks
// of at least 8 queries where the cooperative-matrix matmul runs, by `esa_attention::attend` and,
// for dense attention, by `attention::attend_prefill_coop`.
//   z = 0, long-distance part: virtual keys e < n_long = n_init + min(state[count_index], max_sel):
//          cache row e (e < n_init) or sel[e - n_init]; keys at position 0 (as cached), the query
//          rotated to w; no causal mask (every such key precedes the chunk).
//   z = 1, local part: virtual key e is cache row local_start + e, rotated to that row; the query
//          rotated to pos0 + t; causal: row <= pos0 + t.
// Two passes over the keys (as the dense kernel): pass 1 keeps each row's max m and sum l of
// exp(S - m); pass 2 accumulates o = sum exp(S - m) V, unnormalised, which is what the merge wants.
// Dense causal attention of a chunk is the local part alone (n_init = 0, no selection,
// local_start = 0, queries already rotated: `attention::attend_prefill_coop`).
// Dispatch: (ceil(n_q * G / 64), n_kv, 2) workgroups of 256 threads (8 subgroups of 32). Rows of a
// workgroup: 64 (token, head) pairs of one KV group (row R: token R / G, head kvh * G + R % G).
// D (head_dim, a multiple of 32, at most 128) is substituted into the source by the op.
// Layout: q [n_q][q_stride] f32, UN-rotated, head h at h * D; k_cache, v_cache [rows][n_kv][D/2]
// u32 (f16 pairs, keys un-rotated); inv_freq [D/2]; sel [>= max_sel] u32 cache rows; state [..]
// u32; part [n_q * n_heads][2][D + 2] f32 = (m, l, o[D]) per segment.

struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    pos0: u32,
    n_init: u32,
    local_start: u32,
    max_sel: u32,
    count_index: u32,
    w: u32,
    q_stride: u32,
    scale: f32,
    rotate_q: u32, // 0: the queries come rotated to their positions already (dense attention)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read> sel: array<u32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

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
// 16 bytes, not 4: a 4-byte workgroup variable can leave the f16 arrays that the matrix loads read
// off 16-byte alignment (seen on the H200: shifted columns).
var<workgroup> wg_keys: vec4<u32>;

// Each thread stages the same element pairs e = i % (D/2) of every tile (i = li + 256 j, j < SPT)
// when 256 is a multiple of D/2 (D = 32, 64, 128): the local keys' rotation angle
// (local_start + kb + kj) f_e then splits into the tile's base angle, one sin/cos per thread and
// tile, and the offset kj f_e, whose sin/cos are per thread constants (`rot_off`). Other head
// sizes take one sin/cos per element.
const SHARED_E: bool = (256u % (D / 2u)) == 0u;
const SPT: u32 = (BC * D / 2u + 255u) / 256u; // element pairs each thread stages per tile

// sin/cos of kj f_e for this thread's pairs (SHARED_E only).
fn rot_offsets(li: u32) -> array<vec2<f32>, SPT> {
    var r: array<vec2<f32>, SPT>;
    let half = D / 2u;
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        let a = f32(i / half) * inv_freq[i % half];
        r[j] = vec2<f32>(cos(a), sin(a));
    }
    return r;
}

// Stage virtual keys kb .. kb + BC of segment `seg` (zero past n_keys): long-distance keys as
// cached, local keys rotated to their rows; with `values`, their values.
fn stage(li: u32, kb: u32, n_keys: u32, kvh: u32, values: bool, seg: u32, rot_off: array<vec2<f32>, SPT>) {
    let half = D / 2u;
    let words = p.n_kv * half;
    // the tile's base rotation for this thread's pairs (local keys, SHARED_E)
    var base = vec2<f32>(1.0, 0.0);
    if (SHARED_E && seg == 1u) {
        let a = f32(p.local_start + kb) * inv_freq[li % half];
        base = vec2<f32>(cos(a), sin(a));
    }
    for (var j = 0u; j < SPT; j++) {
        let i = li + 256u * j;
        if (i >= BC * half) { break; }
        let kj = i / half;
        let e = i % half;
        let key = kb + kj;
        var lo = 0.0;
        var hi = 0.0;
        var v0 = 0.0;
        var v1 = 0.0;
        if (key < n_keys) {
            var row = p.local_start + key;
            if (seg == 0u) {
                row = select(sel[key - min(key, p.n_init)], key, key < p.n_init);
            }
            let base_w = row * words + kvh * half;
            let k0 = unpack2x16float(k_cache[base_w + e / 2u])[e & 1u];
            let k1 = unpack2x16float(k_cache[base_w + (e + half) / 2u])[(e + half) & 1u];
            lo = k0;
            hi = k1;
            if (seg == 1u) {
                var cs_ = vec2<f32>(0.0);
                if (SHARED_E) {
                    let o = rot_off[j];
                    cs_ = vec2<f32>(base.x * o.x - base.y * o.y, base.y * o.x + base.x * o.y);
                } else {
                    let a = f32(row) * inv_freq[e];
                    cs_ = vec2<f32>(cos(a), sin(a));
                }
                lo = k0 * cs_.x - k1 * cs_.y;
                hi = k1 * cs_.x + k0 * cs_.y;
            }
            if (values) {
                v0 = unpack2x16float(v_cache[base_w + e / 2u])[e & 1u];
                v1 = unpack2x16float(v_cache[base_w + (e + half) / 2u])[(e + half) & 1u];
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
    let seg = wg.z;
    let n_rows = p.n_q * g;
    let r0 = wg.x * BR;
    let last_row = min(r0 + BR, n_rows) - 1u;
    // Virtual keys of this workgroup's segment (the selection count lives on the GPU).
    if (li == 0u) {
        if (seg == 0u) {
            wg_keys = vec4<u32>(p.n_init + select(0u, min(state[p.count_index], p.max_sel), p.max_sel > 0u));
        } else {
            wg_keys = vec4<u32>(p.pos0 + last_row / g + 1u - p.local_start);
        }
    }
    let n_keys = workgroupUniformLoad(&wg_keys).x;
    let rf = sg % 4u; // row fragment
    let kf = sg / 4u; // key fragment (S) / first column fragment (O)
    let ld = LD;
    let ldp = LDP;
    let s16 = 16u;
    let cbase = sg * 256u;

    // Queries (f16, unscaled: the scale is applied to S in f32), rotated to w (long-distance
    // part) or to their own positions (local part).
    let half = D / 2u;
    for (var i = li; i < BR * half; i += 256u) {
        let r = i / half;
        let e = i % half;
        let row = r0 + r;
        var lo = 0.0;
        var hi = 0.0;
        if (row < n_rows) {
            let t = row / g;
            let b = t * p.q_stride + (kvh * g + row % g) * D;
            let q0 = q[b + e];
            let q1 = q[b + e + half];
            lo = q0;
            hi = q1;
            if (p.rotate_q != 0u) {
                let a = f32(select(p.pos0 + t, p.w, seg == 0u)) * inv_freq[e];
                let c = cos(a);
                let s = sin(a);
                lo = q0 * c - q1 * s;
                hi = q1 * c + q0 * s;
            }
        }
        qs[r * LD + e] = f16(lo);
        qs[r * LD + e + half] = f16(hi);
    }

    // This lane's share of the subgroup's S fragment: row lm, keys 8 lh .. 8 lh + 7.
    let lm = lane % 16u;
    let lh = lane / 16u;
    let my_row = r0 + rf * 16u + lm;
    let my_t = my_row / g;
    var run_m = NEG;
    var run_l = 0.0;

    var rot_off: array<vec2<f32>, SPT>;
    if (SHARED_E) { rot_off = rot_offsets(li); }

    // Pass 1: running max and sum per row.
    for (var kb = 0u; kb < n_keys; kb += BC) {
        workgroupBarrier();
        stage(li, kb, n_keys, kvh, false, seg, rot_off);
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
            if (my_row < n_rows && key < n_keys && (seg == 0u || p.local_start + key <= p.pos0 + my_t)) { s = cs[cbase + lm * 16u + lh * 8u + n] * p.scale; }
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
        row_l[li] = l;
        // this row's (m, l) of the partial; an empty segment leaves (-3e38, 0) and o = 0
        let row = r0 + li;
        if (row < n_rows) {
            let qh = (row / g) * p.n_heads + kvh * g + row % g;
            let at = (qh * 2u + seg) * (D + 2u);
            part[at] = m;
            part[at + 1u] = l;
        }
    }

    // Pass 2: O = sum over tiles of P V.
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    for (var kb = 0u; kb < n_keys; kb += BC) {
        workgroupBarrier();
        stage(li, kb, n_keys, kvh, true, seg, rot_off);
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
        for (var n = 0u; n < 8u; n++) {
            let kl = kf * 16u + lh * 8u + n;
            let key = kb + kl;
            var pv = 0.0;
            if (my_row < n_rows && key < n_keys && (seg == 0u || p.local_start + key <= p.pos0 + my_t)) {
                pv = exp(cs[cbase + lm * 16u + lh * 8u + n] * p.scale - rm); // unnormalised
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
                let qh = (row / g) * p.n_heads + kvh * g + row % g;
                part[(qh * 2u + seg) * (D + 2u) + 2u + col0 + n] = cs[cbase + m * 16u + n];
            }
        }
    }
}
