// attention: causal GQA attention of a chunk of queries over the KV cache, one key split per
// workgroup (flash-decoding); attention_merge.wgsl combines the splits.
//
// Keys are cached UN-rotated; each key is rotated here to its position (its cache row), so the
// same cache serves dense attention and ESA's re-positioned long-distance keys.
// Dispatch: (n_q * n_heads, n_split) workgroups of 64 threads. Workgroup (qh, s) handles query
// qh / n_heads, head qh % n_heads, keys [s * split_len, min((s+1) * split_len, pos0 + t + 1)).
// In each tile of 64 keys, thread j scores key j; then thread i accumulates value pairs i and
// i + 64 (head_dim even, <= 256).
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
                // Fast path: element pairs (e, e+1) and (e+half, e+half+1) are whole u32 words.
                for (var e = 0u; e < half; e += 2u) {
                    let lo = unpack2x16float(k_cache[row + e / 2u]);
                    let hi = unpack2x16float(k_cache[row + (e + half) / 2u]);
                    let a0 = kpos * inv_freq[e];
                    let a1 = kpos * inv_freq[e + 1u];
                    let c0 = cos(a0); let s0 = sin(a0);
                    let c1 = cos(a1); let s1 = sin(a1);
                    acc += qs[e] * (lo.x * c0 - hi.x * s0) + qs[e + half] * (hi.x * c0 + lo.x * s0);
                    acc += qs[e + 1u] * (lo.y * c1 - hi.y * s1) + qs[e + 1u + half] * (hi.y * c1 + lo.y * s1);
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
        o0 *= corr;
        o1 *= corr;
        let n = min(64u, end - base);
        for (var j = 0u; j < n; j++) {
            let pj = sc[j];
            psum += pj;
            let vrow = (base + j) * words + kvh * half;
            if (li < half) {
                o0 += pj * unpack2x16float(v_cache[vrow + li]);
            }
            if (li + 64u < half) {
                o1 += pj * unpack2x16float(v_cache[vrow + li + 64u]);
            }
        }
        l = l * corr + psum;
        m = m_new;
        workgroupBarrier();
    }
    let out = (qh * p.n_split + split) * (d + 2u);
    if (li == 0u) {
        part[out] = m;
        part[out + 1u] = l;
    }
    if (li < half) {
        part[out + 2u + 2u * li] = o0.x;
        part[out + 3u + 2u * li] = o0.y;
    }
    if (li + 64u < half) {
        part[out + 2u + 2u * (li + 64u)] = o1.x;
        part[out + 3u + 2u * (li + 64u)] = o1.y;
    }
}
