// attention: causal GQA attention of a chunk of queries over the KV cache, one key split per
// workgroup (flash-decoding); attention_merge.wgsl combines the splits.
//
// Keys are cached UN-rotated; each key is rotated here to its position (its cache row), so the
// same cache serves dense attention and ESA's re-positioned long-distance keys.
// Dispatch: (n_q * n_heads, n_split) workgroups of 64 threads. Workgroup (qh, s) handles query
// qh / n_heads, head qh % n_heads, keys [s * split_len, min((s+1) * split_len, pos0 + t + 1)).
// In each tile of 64 keys, thread j scores key j, loading four word pairs of its key before it
// rotates any; then the threads split into NG = 64 / min(d/2, 64) key groups of min(d/2, 64)
// threads: thread i of group k accumulates value pairs i (and i + 64) over keys k, k + NG, ...
// of the tile, four keys' words loaded before any is used, and the groups' sums are added once at
// the end. (One thread per pair walking all 64 keys a load at a time, and half the threads idle
// at d = 64, made a tile cost 64 dependent loads.) head_dim even, <= 256.
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

const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 64>;
var<workgroup> og: array<vec2<f32>, 256>; // the key groups' sums: [group][pair] (NG * min(d/2, 64) <= 64, two pairs each)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let qh = wg.x;
    let split = wg.y;
    let t = qh / p.n_heads;
    let h = qh % p.n_heads;
    let kvh = h / (p.n_heads / p.n_kv);
    let d = p.head_dim;
    let half = d / 2u;
    let words = p.n_kv * half; // u32 words per cache row
    for (var i = li; i < d; i += 64u) {
        qs[i] = q[qh * d + i] * p.scale;
    }
    workgroupBarrier();
    let start = split * p.split_len;
    let end = min(start + p.split_len, p.pos0 + t + 1u);
    // value accumulation: key group kg of ng, pair slot pi (pairs pi and pi + 64)
    let gw = min(half, 64u);
    let ng = 64u / gw;
    let kg = li / gw;
    let pi = li % gw;
    let in_group = kg < ng;
    var m = NEG;
    var l = 0.0;
    var o0 = vec2<f32>(0.0);
    var o1 = vec2<f32>(0.0);
    for (var base = start; base < end; base += 64u) {
        let key = base + li;
        var s = NEG;
        if (key < end) {
            let kpos = f32(key);
            let row = key * words + kvh * half;
            var acc = 0.0;
            if ((half & 1u) == 0u) {
                // Fast path: element pairs (e, e+1) and (e+half, e+half+1) are whole u32 words;
                // four pairs' words are loaded before any is rotated.
                var e = 0u;
                for (; e + 8u <= half; e += 8u) {
                    let w0 = row + e / 2u;
                    let w1 = row + (e + half) / 2u;
                    let lo0 = k_cache[w0];
                    let lo1 = k_cache[w0 + 1u];
                    let lo2 = k_cache[w0 + 2u];
                    let lo3 = k_cache[w0 + 3u];
                    let hi0 = k_cache[w1];
                    let hi1 = k_cache[w1 + 1u];
                    let hi2 = k_cache[w1 + 2u];
                    let hi3 = k_cache[w1 + 3u];
                    acc += score_pair(e, half, kpos, lo0, hi0) + score_pair(e + 2u, half, kpos, lo1, hi1)
                         + score_pair(e + 4u, half, kpos, lo2, hi2) + score_pair(e + 6u, half, kpos, lo3, hi3);
                }
                for (; e < half; e += 2u) {
                    acc += score_pair(e, half, kpos, k_cache[row + e / 2u], k_cache[row + (e + half) / 2u]);
                }
            } else {
                // head_dim / 2 odd: rotation partners straddle words; read element by element.
                for (var e = 0u; e < half; e++) {
                    let lo = unpack2x16float(k_cache[row + e / 2u])[e & 1u];
                    let hi = unpack2x16float(k_cache[row + (e + half) / 2u])[(e + half) & 1u];
                    let a = kpos * inv_freq[e];
                    let c = cos(a); let sn = sin(a);
                    acc += qs[e] * (lo * c - hi * sn) + qs[e + half] * (hi * c + lo * sn);
                }
            }
            s = acc;
        }
        sc[li] = s;
        workgroupBarrier();
        var tmax = NEG;
        for (var j = 0u; j < 64u; j++) { tmax = max(tmax, sc[j]); }
        let m_new = max(m, tmax);
        let corr = exp(m - m_new);
        workgroupBarrier();
        sc[li] = select(0.0, exp(s - m_new), key < end);
        workgroupBarrier();
        var psum = 0.0;
        for (var j = 0u; j < 64u; j++) { psum += sc[j]; } // (zero past the keys)
        o0 *= corr;
        o1 *= corr;
        let n = min(64u, end - base);
        if (in_group) {
            var j = kg;
            for (; j + 3u * ng < n; j += 4u * ng) {
                let r0 = (base + j) * words + kvh * half;
                let r1 = r0 + ng * words;
                let r2 = r1 + ng * words;
                let r3 = r2 + ng * words;
                let a0 = v_cache[r0 + pi];
                let a1 = v_cache[r1 + pi];
                let a2 = v_cache[r2 + pi];
                let a3 = v_cache[r3 + pi];
                var b0 = 0u; var b1 = 0u; var b2 = 0u; var b3 = 0u;
                if (pi + 64u < half) {
                    b0 = v_cache[r0 + pi + 64u];
                    b1 = v_cache[r1 + pi + 64u];
                    b2 = v_cache[r2 + pi + 64u];
                    b3 = v_cache[r3 + pi + 64u];
                }
                let p0 = sc[j];
                let p1 = sc[j + ng];
                let p2 = sc[j + 2u * ng];
                let p3 = sc[j + 3u * ng];
                if (pi < half) {
                    o0 += p0 * unpack2x16float(a0) + p1 * unpack2x16float(a1) + p2 * unpack2x16float(a2) + p3 * unpack2x16float(a3);
                }
                o1 += p0 * unpack2x16float(b0) + p1 * unpack2x16float(b1) + p2 * unpack2x16float(b2) + p3 * unpack2x16float(b3);
            }
            for (; j < n; j += ng) {
                let pj = sc[j];
                let vrow = (base + j) * words + kvh * half;
                if (pi < half) {
                    o0 += pj * unpack2x16float(v_cache[vrow + pi]);
                }
                if (pi + 64u < half) {
                    o1 += pj * unpack2x16float(v_cache[vrow + pi + 64u]);
                }
            }
        }
        l = l * corr + psum;
        m = m_new;
        workgroupBarrier();
    }
    // add the key groups' sums: group kg's pair slot pi at og[kg * gw + pi] (and + 128 for o1)
    if (in_group) {
        og[kg * gw + pi] = o0;
        og[128u + kg * gw + pi] = o1;
    }
    workgroupBarrier();
    let out = (qh * p.n_split + split) * (d + 2u);
    if (li == 0u) {
        part[out] = m;
        part[out + 1u] = l;
    }
    if (li < gw) {
        var s0 = vec2<f32>(0.0);
        var s1 = vec2<f32>(0.0);
        for (var k = 0u; k < ng; k++) {
            s0 += og[k * gw + li];
            s1 += og[128u + k * gw + li];
        }
        if (li < half) {
            part[out + 2u + 2u * li] = s0.x;
            part[out + 3u + 2u * li] = s0.y;
        }
        if (li + 64u < half) {
            part[out + 2u + 2u * (li + 64u)] = s1.x;
            part[out + 3u + 2u * (li + 64u)] = s1.y;
        }
    }
}

// Query . key contribution of rotation pairs (e, e + 1) and (e + half, e + half + 1) of a key at
// position kpos, from the words holding elements e, e + 1 (lo) and e + half, e + half + 1 (hi).
fn score_pair(e: u32, half: u32, kpos: f32, lo_w: u32, hi_w: u32) -> f32 {
    let lo = unpack2x16float(lo_w);
    let hi = unpack2x16float(hi_w);
    let a0 = kpos * inv_freq[e];
    let a1 = kpos * inv_freq[e + 1u];
    let c0 = cos(a0); let s0 = sin(a0);
    let c1 = cos(a1); let s1 = sin(a1);
    return qs[e] * (lo.x * c0 - hi.x * s0) + qs[e + half] * (hi.x * c0 + lo.x * s0)
         + qs[e + 1u] * (lo.y * c1 - hi.y * s1) + qs[e + 1u + half] * (hi.y * c1 + lo.y * s1);
}
