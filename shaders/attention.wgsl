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
// fused = 1 (a decode step, n_q = 1, in one dispatch instead of rope_kv + this): q is the token's
// fused projection row [q (H*d) | k (n_kv*d) | v (n_kv*d)] un-rotated; each workgroup rotates its
// head's query and reads the token's own key and value from that row (rounded to f16 as the cache
// holds them), and the first head of each KV group, in the split holding the token, appends them to
// the cache at row pos0 (no workgroup reads that row from the cache, so the write races nothing);
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
    fused: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;

const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 64>;
var<workgroup> kv_now: array<u32, 256>; // fused: this token's key (words 0 .. d/2) and value (d/2 .. d) as f16 pairs
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
    let start = split * p.split_len;
    let end = min(start + p.split_len, p.pos0 + t + 1u);
    if (p.fused == 1u) {
        let pos = f32(p.pos0);
        for (var i = li; i < half; i += 64u) {
            let a = q[h * d + i];
            let b = q[h * d + i + half];
            let ang = pos * inv_freq[i];
            let c = cos(ang);
            let sn = sin(ang);
            qs[i] = (a * c - b * sn) * p.scale;
            qs[i + half] = (b * c + a * sn) * p.scale;
        }
        let kb = p.n_heads * d + kvh * d;
        let vb = (p.n_heads + p.n_kv) * d + kvh * d;
        let append = h % (p.n_heads / p.n_kv) == 0u && p.pos0 >= start && p.pos0 < end;
        for (var i = li; i < half; i += 64u) {
            let kw = pack2x16float(vec2<f32>(q[kb + 2u * i], q[kb + 2u * i + 1u]));
            let vw = pack2x16float(vec2<f32>(q[vb + 2u * i], q[vb + 2u * i + 1u]));
            kv_now[i] = kw;
            kv_now[half + i] = vw;
            if (append) {
                k_cache[p.pos0 * words + kvh * half + i] = kw;
                v_cache[p.pos0 * words + kvh * half + i] = vw;
            }
        }
    } else {
        for (var i = li; i < d; i += 64u) {
            qs[i] = q[qh * d + i] * p.scale;
        }
    }
    workgroupBarrier();
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
                    let w0 = e / 2u;
                    let w1 = (e + half) / 2u;
                    let lo0 = key_word(key, row, w0);
                    let lo1 = key_word(key, row, w0 + 1u);
                    let lo2 = key_word(key, row, w0 + 2u);
                    let lo3 = key_word(key, row, w0 + 3u);
                    let hi0 = key_word(key, row, w1);
                    let hi1 = key_word(key, row, w1 + 1u);
                    let hi2 = key_word(key, row, w1 + 2u);
                    let hi3 = key_word(key, row, w1 + 3u);
                    acc += score_pair(e, half, kpos, lo0, hi0) + score_pair(e + 2u, half, kpos, lo1, hi1)
                         + score_pair(e + 4u, half, kpos, lo2, hi2) + score_pair(e + 6u, half, kpos, lo3, hi3);
                }
                for (; e < half; e += 2u) {
                    acc += score_pair(e, half, kpos, key_word(key, row, e / 2u), key_word(key, row, (e + half) / 2u));
                }
            } else {
                // head_dim / 2 odd: rotation partners straddle words; read element by element.
                for (var e = 0u; e < half; e++) {
                    let lo = unpack2x16float(key_word(key, row, e / 2u))[e & 1u];
                    let hi = unpack2x16float(key_word(key, row, (e + half) / 2u))[(e + half) & 1u];
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
                let k0 = base + j;
                let k1 = k0 + ng;
                let k2 = k1 + ng;
                let k3 = k2 + ng;
                let a0 = value_word(k0, kvh, pi);
                let a1 = value_word(k1, kvh, pi);
                let a2 = value_word(k2, kvh, pi);
                let a3 = value_word(k3, kvh, pi);
                var b0 = 0u; var b1 = 0u; var b2 = 0u; var b3 = 0u;
                if (pi + 64u < half) {
                    b0 = value_word(k0, kvh, pi + 64u);
                    b1 = value_word(k1, kvh, pi + 64u);
                    b2 = value_word(k2, kvh, pi + 64u);
                    b3 = value_word(k3, kvh, pi + 64u);
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
                if (pi < half) {
                    o0 += pj * unpack2x16float(value_word(base + j, kvh, pi));
                }
                if (pi + 64u < half) {
                    o1 += pj * unpack2x16float(value_word(base + j, kvh, pi + 64u));
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

// Word w (of d/2) of key `key`'s row starting at cache word `row`: the fused step's own key from
// `kv_now`, every other from the cache.
fn key_word(key: u32, row: u32, w: u32) -> u32 {
    if (p.fused == 1u && key == p.pos0) { return kv_now[w]; }
    return k_cache[row + w];
}

// Word w (of d/2) of key `key`'s value for KV head kvh, the same way.
fn value_word(key: u32, kvh: u32, w: u32) -> u32 {
    let half = p.head_dim / 2u;
    if (p.fused == 1u && key == p.pos0) { return kv_now[half + w]; }
    return v_cache[key * p.n_kv * half + kvh * half + w];
}
