// attention: causal GQA attention of a chunk of queries over the KV cache, one key split per
// workgroup (flash-decoding); attention_merge.wgsl combines the splits.
//
// Keys are cached UN-rotated; each key is rotated here to its position (its cache row), so the
// same cache serves dense attention and ESA's re-positioned long-distance keys. A workgroup serves
// GH query heads of one KV group at once, so each key is read and rotated once for all of them
// (the rotation's sin/cos and the key/value reads, not the products, bound this kernel at long
// context).
// Dispatch: (n_q * n_heads / GH, n_split) workgroups of 64 threads; GH (override, <= 8) divides
// n_heads / n_kv. Workgroup (b, s) handles query t = b / (n_heads / GH), heads h0 .. h0 + GH with
// h0 = (b % (n_heads / GH)) * GH, keys [s * split_len, min((s+1) * split_len, pos0 + t + 1)).
// In each tile of 64 keys, thread j scores key j against the GH queries; thread i < GH keeps the
// running max and sum of head h0 + i; then thread i accumulates value pairs i and i + 64 of every
// head (head_dim even, <= 256).
// Layout: q [n_q][n_heads][d] f32, rotated at position pos0 + t; k_cache, v_cache
// [max_ctx][n_kv][d/2] u32 (f16 pairs); inv_freq [d/2];
// part [n_q * n_heads][n_split][d + 2] f32 = (running max m, sum l, unnormalised output o[d]).

struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    pos0: u32,
    n_split: u32,
    split_len: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;

override GH: u32 = 1u;
const GMAX: u32 = 8u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 2048>; // GH x d, scaled
var<workgroup> sc: array<f32, 512>; // GH x 64 scores, then probabilities
var<workgroup> corr_h: array<f32, 8>;
var<workgroup> m_h: array<f32, 8>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let blocks = p.n_heads / GH;
    let t = wg.x / blocks;
    let h0 = (wg.x % blocks) * GH;
    let split = wg.y;
    let kvh = h0 / (p.n_heads / p.n_kv);
    let d = p.head_dim;
    let half = d / 2u;
    let words = p.n_kv * half; // u32 words per cache row
    for (var i = li; i < GH * d; i += 64u) {
        qs[i] = q[(t * p.n_heads + h0) * d + i] * p.scale;
    }
    workgroupBarrier();
    let start = split * p.split_len;
    let end = min(start + p.split_len, p.pos0 + t + 1u);
    var m = NEG; // head h0 + li's running max and sum (threads li < GH)
    var l = 0.0;
    var o0: array<vec2<f32>, GMAX>;
    var o1: array<vec2<f32>, GMAX>;
    for (var h = 0u; h < GH; h++) {
        o0[h] = vec2<f32>(0.0);
        o1[h] = vec2<f32>(0.0);
    }
    for (var base = start; base < end; base += 64u) {
        let key = base + li;
        var acc: array<f32, GMAX>;
        for (var h = 0u; h < GH; h++) { acc[h] = 0.0; }
        if (key < end) {
            let kpos = f32(key);
            let row = key * words + kvh * half;
            if ((half & 1u) == 0u) {
                // Fast path: element pairs (e, e+1) and (e+half, e+half+1) are whole u32 words.
                for (var e = 0u; e < half; e += 2u) {
                    let lo = unpack2x16float(k_cache[row + e / 2u]);
                    let hi = unpack2x16float(k_cache[row + (e + half) / 2u]);
                    let a0 = kpos * inv_freq[e];
                    let a1 = kpos * inv_freq[e + 1u];
                    let c0 = cos(a0); let s0 = sin(a0);
                    let c1 = cos(a1); let s1 = sin(a1);
                    let r0 = lo.x * c0 - hi.x * s0;
                    let r1 = hi.x * c0 + lo.x * s0;
                    let r2 = lo.y * c1 - hi.y * s1;
                    let r3 = hi.y * c1 + lo.y * s1;
                    for (var h = 0u; h < GH; h++) {
                        let qb = h * d + e;
                        acc[h] += qs[qb] * r0 + qs[qb + half] * r1 + qs[qb + 1u] * r2 + qs[qb + 1u + half] * r3;
                    }
                }
            } else {
                // head_dim / 2 odd: rotation partners straddle words; read element by element.
                for (var e = 0u; e < half; e++) {
                    let lo = unpack2x16float(k_cache[row + e / 2u])[e & 1u];
                    let hi = unpack2x16float(k_cache[row + (e + half) / 2u])[(e + half) & 1u];
                    let a = kpos * inv_freq[e];
                    let c = cos(a); let sn = sin(a);
                    let r0 = lo * c - hi * sn;
                    let r1 = hi * c + lo * sn;
                    for (var h = 0u; h < GH; h++) {
                        acc[h] += qs[h * d + e] * r0 + qs[h * d + e + half] * r1;
                    }
                }
            }
        }
        for (var h = 0u; h < GH; h++) {
            sc[h * 64u + li] = select(NEG, acc[h], key < end);
        }
        workgroupBarrier();
        if (li < GH) {
            var tmax = NEG;
            for (var j = 0u; j < 64u; j++) { tmax = max(tmax, sc[li * 64u + j]); }
            let m_new = max(m, tmax);
            corr_h[li] = exp(m - m_new);
            m_h[li] = m_new;
            m = m_new;
        }
        workgroupBarrier();
        for (var h = 0u; h < GH; h++) {
            sc[h * 64u + li] = select(0.0, exp(acc[h] - m_h[h]), key < end);
        }
        workgroupBarrier();
        if (li < GH) {
            var psum = 0.0;
            for (var j = 0u; j < 64u; j++) { psum += sc[li * 64u + j]; }
            l = l * corr_h[li] + psum;
        }
        for (var h = 0u; h < GH; h++) {
            o0[h] *= corr_h[h];
            o1[h] *= corr_h[h];
        }
        let n = min(64u, end - base);
        for (var j = 0u; j < n; j++) {
            let vrow = (base + j) * words + kvh * half;
            if (li < half) {
                let v = unpack2x16float(v_cache[vrow + li]);
                for (var h = 0u; h < GH; h++) { o0[h] += sc[h * 64u + j] * v; }
            }
            if (li + 64u < half) {
                let v = unpack2x16float(v_cache[vrow + li + 64u]);
                for (var h = 0u; h < GH; h++) { o1[h] += sc[h * 64u + j] * v; }
            }
        }
        workgroupBarrier();
    }
    for (var h = 0u; h < GH; h++) {
        let out = ((t * p.n_heads + h0 + h) * p.n_split + split) * (d + 2u);
        if (li == h) {
            part[out] = m;
            part[out + 1u] = l;
        }
        if (li < half) {
            part[out + 2u + 2u * li] = o0[h].x;
            part[out + 3u + 2u * li] = o0[h].y;
        }
        if (li + 64u < half) {
            part[out + 2u + 2u * (li + 64u)] = o1[h].x;
            part[out + 3u + 2u * (li + 64u)] = o1[h].y;
        }
    }
}
