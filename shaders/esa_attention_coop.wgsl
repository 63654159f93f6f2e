enable f16;
enable wgpu_cooperative_matrix;
// esa_attention_coop: attention of a prefill chunk on cooperative matrices (16x16x16 f16 products,
// f32 accumulators), over ESA's two key segments, each split into ranges of split_len keys, one
// range per dispatch z (z < splits0: the long-distance segment), each written as a partial
// (m, l, o) that attention_merge.wgsl combines (one softmax over all of them). Splitting the keys
// gives the GPU enough workgroups to hide the latency of each tile's loads. Chosen for chunks
// of at least 8 queries where the cooperative-matrix matmul runs, by `esa_attention::attend` and,
// for dense attention, by `attention::attend_prefill_coop`.
//   z = 0, long-distance part: virtual keys e < n_long = n_init + min(state[count_index], max_sel):
//          cache row e (e < n_init) or sel[e - n_init]; keys at position 0 (as cached), the query
//          rotated to w; no causal mask (every such key precedes the chunk).
//   z = 1, local part: virtual key e is cache row local_start + e, rotated to that row; the query
//          rotated to pos0 + t; causal: row <= pos0 + t.
// Work split (as FlashAttention-2): each of the NSG subgroups owns 16 rows for the whole run, its
// queries held in registers as D/16 matrix fragments; per tile of BC keys the workgroup stages the
// keys (and values) once in workgroup memory and every subgroup computes its own 16 x BC scores,
// softmax terms and P V products, so a staged tile serves 16 NSG rows.
// One pass over the keys with a lazily moved reference maximum per row (see the loop): o = sum
// exp(S - m) V, unnormalised, and l = sum exp(S - m), which is what the merge wants.
// Dispatch: (ceil(n_q * G / (16 NSG)), n_kv, n_part) workgroups of 32 NSG threads. Rows of a workgroup:
// 16 NSG (token, head) pairs of one KV group (row R: token R / G, head kvh * G + R % G).
// D (head_dim: 32, 64, 96 or 128) and NSG are substituted into the source by the op; BC * D / 16
// <= 32 NSG (one key octet pair per thread, see `fetch`).
// Every matrix load and store takes its pointer index from a `let` (naga 30's SPIR-V writer fails
// on an index expression written inside the call). The op expands each `//@SCORES` line into the
// D / 16 products of the query fragments q0.. with the key tile's (`coop_source`).
// Layout: q [n_q][q_stride] f32, UN-rotated, head h at h * D; k_cache, v_cache [rows][n_kv][D/2]
// u32 (f16 pairs, keys un-rotated; read as vec4<u32>); inv_freq [D/2]; sel [>= max_sel] u32 cache
// rows; state [..] u32; part [n_q * n_heads][n_part][D + 2] f32 = (m, l, o[D]) per split (an
// empty split leaves (-3e38, 0, 0)).

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
    n_part: u32, // partials per (query, head): splits0 + the local segment's splits
    splits0: u32, // partials (dispatch z) of the long-distance segment; the rest are local
    split_len: u32, // virtual keys per split, a multiple of BC
    rescale_at: f32, // how far a row's maximum may pass its reference before o is rescaled
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read> sel: array<u32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

const D: u32 = 64u;
const NSG: u32 = 8u;
const BC: u32 = 32u; // keys per tile
const THREADS: u32 = 32u * NSG;
const HALF: u32 = D / 2u;
const KOCT: u32 = D / 16u; // octet pairs (o, o + D/16) of a key row: 8 rotation pairs each
const VOCT: u32 = D / 8u; // octets of a value row
const LD: u32 = D + 8u; // halves per staged key / value row: 16-byte aligned, rows on different banks
const LDV: u32 = LD / 4u; // the same in vec4<f16> elements (ks and vs, and their matrix loads)
const LDP: u32 = BC + 8u; // halves per row of P (and of the query staging, 32 columns at a time)
const NEG: f32 = -3.0e38;

// Keys and values staged as vec4<f16>: two 8-byte workgroup stores per octet, not eight 2-byte
// ones (as in matmul_coop.wgsl); their matrix loads count vec4 elements.
var<workgroup> ks: array<vec4<f16>, BC * LDV>; // rotated keys of the tile
var<workgroup> vs: array<vec4<f16>, BC * LDV>;
var<workgroup> ps: array<f16, NSG * 16u * LDP>; // per subgroup P [16][LDP]
var<workgroup> cs: array<f32, NSG * 16u * BC>; // per subgroup S [16][BC]
// 16 bytes, not 4: a 4-byte workgroup variable can leave the f16 arrays that the matrix loads read
// off 16-byte alignment (seen on the H200: shifted columns).
var<workgroup> wg_keys: vec4<u32>;
var<workgroup> wg_flag: u32; // 1 when some row of the current tile moved its reference maximum

// fn unpack8, halves4: shaders/unpack_f16x8.wgsl (prepended by the op).

// Cache row of virtual key `key` of segment `seg`.
fn key_row(key: u32, seg: u32) -> u32 {
    if (seg == 0u) { return select(sel[key - min(key, p.n_init)], key, key < p.n_init); }
    return p.local_start + key;
}

// A tile's keys and values are fetched into registers one tile ahead (`fetch`), so their loads
// are in flight while the previous tile multiplies, then rotated, converted and written to
// workgroup memory (`put`).
// Keys: thread li < BC * KOCT holds key kj = li / KOCT, dims 8o .. 8o + 7 and their rotation
// partners HALF + 8o .., o = li % KOCT (one octet pair: `k`); values: octets li + THREADS j of
// the BC x D tile (`v`). Zero past the split's last key.
const VPT: u32 = (BC * VOCT + THREADS - 1u) / THREADS;

struct Raw {
    k: array<vec4<u32>, 2>,
    v: array<vec4<u32>, VPT>,
}

// Branch-free loads: keys past the split read its last key's row and are zeroed by a select, so
// a thread's loads go out back to back.
fn fetch(li: u32, kb: u32, n_keys: u32, kvh: u32, seg: u32, values: bool) -> Raw {
    var r: Raw;
    let last = max(n_keys, 1u) - 1u;
    if (li < BC * KOCT) {
        let key = kb + li / KOCT;
        let base = (key_row(min(key, last), seg) * p.n_kv + kvh) * VOCT;
        r.k[0] = select(vec4<u32>(0u), k_cache[base + li % KOCT], key < n_keys);
        r.k[1] = select(vec4<u32>(0u), k_cache[base + li % KOCT + KOCT], key < n_keys);
    }
    if (values) {
        for (var j = 0u; j < VPT; j++) {
            let i = min(li + THREADS * j, BC * VOCT - 1u);
            let key = kb + i / VOCT;
            let v = v_cache[(key_row(min(key, last), seg) * p.n_kv + kvh) * VOCT + i % VOCT];
            r.v[j] = select(vec4<u32>(0u), v, key < n_keys);
        }
    }
    return r;
}

// Write fetched keys (local ones rotated by `rot`: this thread's cos/sin of row * f for its 8
// frequencies, advanced by the caller from tile to tile) and, with `values`, values.
fn put(li: u32, raw: Raw, seg: u32, rot: array<vec2<f32>, 8>, values: bool) {
    // (vars: naga's SPIR-V writer needs dynamically indexed arrays in memory)
    var w = raw;
    var rv = rot;
    if (li < BC * KOCT) {
        let kj = li / KOCT;
        let o = li % KOCT;
        var a = unpack8(w.k[0]);
        var b = unpack8(w.k[1]);
        var lo = a;
        var hi = b;
        if (seg == 1u) {
            for (var i = 0u; i < 8u; i++) {
                let r = rv[i];
                lo[i] = a[i] * r.x - b[i] * r.y;
                hi[i] = b[i] * r.x + a[i] * r.y;
            }
        }
        let at = kj * LDV + 2u * o;
        ks[at] = vec4<f16>(vec4<f32>(lo[0], lo[1], lo[2], lo[3]));
        ks[at + 1u] = vec4<f16>(vec4<f32>(lo[4], lo[5], lo[6], lo[7]));
        ks[at + HALF / 4u] = vec4<f16>(vec4<f32>(hi[0], hi[1], hi[2], hi[3]));
        ks[at + HALF / 4u + 1u] = vec4<f16>(vec4<f32>(hi[4], hi[5], hi[6], hi[7]));
    }
    if (values) {
        for (var j = 0u; j < VPT; j++) {
            let i = li + THREADS * j;
            if (i < BC * VOCT) {
                let q = w.v[j];
                let at = (i / VOCT) * LDV + 2u * (i % VOCT);
                vs[at] = halves4(q, 0u);
                vs[at + 1u] = halves4(q, 1u);
            }
        }
    }
}

// This thread's key rotation at tile base kb (cos/sin of (local_start + kb + kj) f, 8 frequencies).
fn rot_at(li: u32, kb: u32) -> array<vec2<f32>, 8> {
    var r: array<vec2<f32>, 8>;
    let kj = li / KOCT;
    let o = li % KOCT;
    for (var i = 0u; i < 8u; i++) {
        let a = f32(p.local_start + kb + kj) * inv_freq[8u * o + i];
        r[i] = vec2<f32>(cos(a), sin(a));
    }
    return r;
}

// cos/sin of BC f for this thread's 8 frequencies: the rotation from one tile to the next.
fn rot_step(li: u32) -> array<vec2<f32>, 8> {
    var r: array<vec2<f32>, 8>;
    let o = li % KOCT;
    for (var i = 0u; i < 8u; i++) {
        let a = f32(BC) * inv_freq[8u * o + i];
        r[i] = vec2<f32>(cos(a), sin(a));
    }
    return r;
}

// Complex product of two rotations per frequency.
fn rot_mul(a_in: array<vec2<f32>, 8>, b_in: array<vec2<f32>, 8>) -> array<vec2<f32>, 8> {
    var r: array<vec2<f32>, 8>;
    var a = a_in;
    var b = b_in;
    for (var i = 0u; i < 8u; i++) {
        r[i] = vec2<f32>(a[i].x * b[i].x - a[i].y * b[i].y, a[i].y * b[i].x + a[i].x * b[i].y);
    }
    return r;
}

// Output fragment `o` with row m multiplied by lane m's `factor`, through the subgroup's S
// scratch at cb (a fragment's elements are opaque in registers).
fn rescaled(o: coop_mat16x16<f32, C>, cb: u32, lane: u32, factor: f32) -> coop_mat16x16<f32, C> {
    let at = cb;
    let s16 = 16u;
    coopStoreT(o, &cs[at], s16);
    workgroupBarrier();
    for (var i = 0u; i < 8u; i++) {
        let e = lane + 32u * i; // (a loop every lane runs alike: the shuffle's lanes all take part)
        cs[at + e] *= subgroupShuffle(factor, e / 16u);
    }
    workgroupBarrier();
    let r = coopLoadT<coop_mat16x16<f32, C>>(&cs[at], s16);
    workgroupBarrier();
    return r;
}

// Query columns 32 c + lane of the subgroup's 16 rows, rotated, into its P region (f16).
fn stage_q(sg: u32, lane: u32, r0: u32, n_rows: u32, g: u32, kvh: u32, seg: u32, c: u32) {
    let ea = 32u * c + lane;
    let e = ea % HALF;
    for (var m = 0u; m < 16u; m++) {
        let row = r0 + sg * 16u + m;
        var val = 0.0;
        if (row < n_rows && ea < D) {
            let t = row / g;
            let b = t * p.q_stride + (kvh * g + row % g) * D;
            let q0 = q[b + e];
            let q1 = q[b + e + HALF];
            var lo = q0;
            var hi = q1;
            if (p.rotate_q != 0u) {
                let a = f32(select(p.pos0 + t, p.w, seg == 0u)) * inv_freq[e];
                let cs_ = cos(a);
                let sn = sin(a);
                lo = q0 * cs_ - q1 * sn;
                hi = q1 * cs_ + q0 * sn;
            }
            val = select(hi, lo, ea < HALF);
        }
        ps[(sg * 16u + m) * LDP + lane] = f16(val);
    }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let g = p.n_heads / p.n_kv;
    let kvh = wg.y;
    let seg = select(1u, 0u, wg.z < p.splits0);
    let split = wg.z - select(0u, p.splits0, seg == 1u);
    let n_rows = p.n_q * g;
    let r0 = wg.x * 16u * NSG;
    let last_row = min(r0 + 16u * NSG, n_rows) - 1u;
    // Virtual keys of this workgroup's segment (the selection count lives on the GPU).
    if (li == 0u) {
        if (seg == 0u) {
            wg_keys = vec4<u32>(p.n_init + select(0u, min(state[p.count_index], p.max_sel), p.max_sel > 0u));
        } else {
            wg_keys = vec4<u32>(p.pos0 + last_row / g + 1u - p.local_start);
        }
    }
    // This split's virtual keys: [k_begin, k_end).
    let n_keys = workgroupUniformLoad(&wg_keys).x;
    let k_begin = split * p.split_len;
    let k_end = min(n_keys, k_begin + p.split_len);
    let ld = LDV;
    let ldp = LDP;
    let bcs = BC;
    let s16 = 16u;
    let pb = sg * 16u * LDP; // this subgroup's P rows
    let cb = sg * 16u * BC; // this subgroup's S rows

    // Queries in registers, 32 columns (two fragments) at a time through the P region.
    var q0: coop_mat16x16<f16, A>;
    var q1: coop_mat16x16<f16, A>;
    var q2: coop_mat16x16<f16, A>;
    var q3: coop_mat16x16<f16, A>;
    var q4: coop_mat16x16<f16, A>;
    var q5: coop_mat16x16<f16, A>;
    var q6: coop_mat16x16<f16, A>;
    var q7: coop_mat16x16<f16, A>;
    for (var c = 0u; c < D / 32u; c++) {
        stage_q(sg, lane, r0, n_rows, g, kvh, seg, c);
        workgroupBarrier();
        let qa = coopLoadT<coop_mat16x16<f16, A>>(&ps[pb], ldp);
        let pq1 = pb + 16u;
        let qb = coopLoadT<coop_mat16x16<f16, A>>(&ps[pq1], ldp);
        if (c == 0u) { q0 = qa; q1 = qb; }
        if (c == 1u) { q2 = qa; q3 = qb; }
        if (c == 2u) { q4 = qa; q5 = qb; }
        if (c == 3u) { q6 = qa; q7 = qb; }
        workgroupBarrier();
    }

    // This lane's half row: row lm of the subgroup, tile keys BC/2 lh .. BC/2 lh + BC/2 - 1.
    let lm = lane % 16u;
    let lh = lane / 16u;
    let my_row = r0 + sg * 16u + lm;
    let my_t = my_row / g;
    // this split's keys below `lim` are visible to this row
    var lim = 0u;
    if (my_row < n_rows) {
        lim = select(k_end, min(k_end, p.pos0 + my_t + 1u - p.local_start), seg == 1u);
    }
    let step = rot_step(li);
    var rot = rot_at(li, k_begin);
    // One pass (FlashAttention-2's online softmax, lazily rescaled): each row keeps a reference
    // m_ref; P = exp(S - m_ref) in f16 and o accumulates P V against it. Only when a tile's
    // maximum passes m_ref by more than p.rescale_at (P would outgrow f16's range) does the row
    // move m_ref up, which rescales its sum and, through the subgroup's S scratch, its output
    // fragments (opaque in registers); that happens in a few early tiles at most.
    var m_ref = NEG;
    var run_l = 0.0; // this lane's half row, against m_ref
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    var o4 = coop_mat16x16<f32, C>();
    var o5 = coop_mat16x16<f32, C>();
    var o6 = coop_mat16x16<f32, C>();
    var o7 = coop_mat16x16<f32, C>();
    var raw = fetch(li, k_begin, k_end, kvh, seg, true);
    for (var kb = k_begin; kb < k_end; kb += BC) {
        workgroupBarrier(); // the previous tile's P V products are done with vs and ps
        if (li == 0u) { wg_flag = 0u; } // (read by every thread before that barrier)
        put(li, raw, seg, rot, true);
        rot = rot_mul(rot, step);
        workgroupBarrier();
        if (kb + BC < k_end) { raw = fetch(li, kb + BC, k_end, kvh, seg, true); }
        for (var f = 0u; f < BC / 16u; f++) {
            var acc = coop_mat16x16<f32, C>();
            let kf = f * 16u * LDV;
            //@SCORES
            let sf = cb + f * 16u;
            coopStoreT(acc, &cs[sf], bcs);
        }
        workgroupBarrier();
        var vals: array<f32, BC / 2u>;
        var mx = NEG;
        for (var n = 0u; n < BC / 2u; n++) {
            let key = kb + lh * (BC / 2u) + n;
            var sv = NEG;
            if (key < lim) { sv = cs[cb + lm * BC + lh * (BC / 2u) + n] * p.scale; }
            vals[n] = sv;
            mx = max(mx, sv);
        }
        let row_mx = max(mx, subgroupShuffleXor(mx, 16u));
        var factor = 1.0; // the row's rescale of its sum and output
        if (row_mx > NEG && (m_ref == NEG || row_mx > m_ref + p.rescale_at)) {
            if (m_ref > NEG) {
                factor = exp(m_ref - row_mx);
                wg_flag = 1u; // (every writer writes the same value)
            }
            m_ref = row_mx;
        }
        run_l *= factor;
        for (var n = 0u; n < BC / 2u; n++) {
            let kl = lh * (BC / 2u) + n;
            var pv = 0.0;
            if (vals[n] > NEG) { pv = exp(vals[n] - m_ref); } // unnormalised
            run_l += pv;
            ps[pb + lm * LDP + kl] = f16(pv);
        }
        // (a barrier: ps is complete, and every subgroup sees whether some row moved its m_ref)
        if (workgroupUniformLoad(&wg_flag) == 1u) {
            o0 = rescaled(o0, cb, lane, factor);
            o1 = rescaled(o1, cb, lane, factor);
            if (D >= 64u) {
                o2 = rescaled(o2, cb, lane, factor);
                o3 = rescaled(o3, cb, lane, factor);
            }
            if (D >= 96u) {
                o4 = rescaled(o4, cb, lane, factor);
                o5 = rescaled(o5, cb, lane, factor);
            }
            if (D >= 128u) {
                o6 = rescaled(o6, cb, lane, factor);
                o7 = rescaled(o7, cb, lane, factor);
            }
        }
        for (var kk = 0u; kk < BC; kk += 16u) {
            let pk = pb + kk;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&ps[pk], ldp);
            let vb = kk * LDV;
            let bv0 = coopLoadT<coop_mat16x16<f16, B>>(&vs[vb], ld);
            o0 = coopMultiplyAdd(a, bv0, o0);
            let iv1 = vb + 4u;
            let bv1 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv1], ld);
            o1 = coopMultiplyAdd(a, bv1, o1);
            if (D >= 64u) {
                let iv2 = vb + 8u;
                let bv2 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv2], ld);
                o2 = coopMultiplyAdd(a, bv2, o2);
                let iv3 = vb + 12u;
                let bv3 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv3], ld);
                o3 = coopMultiplyAdd(a, bv3, o3);
            }
            if (D >= 96u) {
                let iv4 = vb + 16u;
                let bv4 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv4], ld);
                o4 = coopMultiplyAdd(a, bv4, o4);
                let iv5 = vb + 20u;
                let bv5 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv5], ld);
                o5 = coopMultiplyAdd(a, bv5, o5);
            }
            if (D >= 128u) {
                let iv6 = vb + 24u;
                let bv6 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv6], ld);
                o6 = coopMultiplyAdd(a, bv6, o6);
                let iv7 = vb + 28u;
                let bv7 = coopLoadT<coop_mat16x16<f16, B>>(&vs[iv7], ld);
                o7 = coopMultiplyAdd(a, bv7, o7);
            }
        }
    }
    // The row's (m, l): both halves share m_ref.
    let row_l = run_l + subgroupShuffleXor(run_l, 16u);
    if (lh == 0u && my_row < n_rows) {
        // an empty segment leaves (-3e38, 0) and o = 0
        let qh = my_t * p.n_heads + kvh * g + my_row % g;
        let at = (qh * p.n_part + wg.z) * (D + 2u);
        part[at] = m_ref;
        part[at + 1u] = row_l;
    }

    // Write O: each 16-column fragment through the subgroup's S scratch; lanes write 8 entries.
    for (var j = 0u; j < D / 16u; j++) {
        workgroupBarrier();
        if (j == 0u) { coopStoreT(o0, &cs[cb], s16); }
        if (j == 1u) { coopStoreT(o1, &cs[cb], s16); }
        if (j == 2u) { coopStoreT(o2, &cs[cb], s16); }
        if (j == 3u) { coopStoreT(o3, &cs[cb], s16); }
        if (j == 4u) { coopStoreT(o4, &cs[cb], s16); }
        if (j == 5u) { coopStoreT(o5, &cs[cb], s16); }
        if (j == 6u) { coopStoreT(o6, &cs[cb], s16); }
        if (j == 7u) { coopStoreT(o7, &cs[cb], s16); }
        workgroupBarrier();
        for (var e = lane; e < 256u; e += 32u) {
            let m = e / 16u;
            let row = r0 + sg * 16u + m;
            if (row < n_rows) {
                let qh = (row / g) * p.n_heads + kvh * g + row % g;
                part[(qh * p.n_part + wg.z) * (D + 2u) + 2u + 16u * j + e % 16u] = cs[cb + e];
            }
        }
    }
}
