// attention_cpu: causal GQA attention of a chunk of queries over the KV cache, for CPU adapters
// (chosen with matvec_cpu: device type CPU, one fixed subgroup size of at least 8); decode steps
// and prefill chunks alike.
//
// Why it looks like this: on a CPU adapter a workgroup is one CPU thread and a subgroup one SIMD
// vector; barriers and workgroup memory are slow, and so is every load whose address differs per
// lane. attention.wgsl (GPU) scores one key per thread and re-reads a 64-entry score tile in every
// thread; here one subgroup walks the keys one at a time with the head's dimensions spread over
// its lanes, so each key's rotation (sin, cos) is computed once for all G query heads that share
// its KV head, the scores are subgroupAdd reductions, and the online softmax and the output live in
// registers. No workgroup memory, no barriers.
//
// The op prepends D (head_dim, a multiple of 4), G (query heads per KV head) and SG (the subgroup
// size, also the workgroup size).
// Dispatch: (n_q * n_kv, n_split) workgroups of SG. Workgroup (t * n_kv + g, s) handles query t's
// heads g * G .. g * G + G - 1 over keys [s * split_len, min((s + 1) * split_len, pos0 + t + 1)).
// Lane i owns the K/V words w = i + SG * j (w < D / 4): elements (2w, 2w + 1) of the first half of
// the head and their rotation partners (2w + D/2, 2w + 1 + D/2) in the second.
// Layout (as attention.wgsl): q [n_q][n_heads][D] f32 rotated; k_cache, v_cache [max_ctx][n_kv][D/2]
// u32 (f16 pairs, keys un-rotated); inv_freq [D/2]. n_split == 1: out [n_q][n_heads][D] f32,
// normalised; else part [n_q * n_heads][n_split][D + 2] = (m, l, o[D]) for attention_merge.wgsl.

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
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const NEG: f32 = -3.0e38;
const HW: u32 = D / 4u;               // words in each half of a head's K/V row
const NW: u32 = (HW + SG - 1u) / SG;  // words per lane in each half

@compute @workgroup_size(SG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let t = wg.x / p.n_kv;
    let g = wg.x % p.n_kv;
    let split = wg.y;
    let words = p.n_kv * (D / 2u);
    let start = split * p.split_len;
    let end = min(start + p.split_len, p.pos0 + t + 1u);
    // This lane's query elements (scaled) and frequencies; lanes past the head's words hold zeros.
    var qa: array<vec4<f32>, NW * G>;
    var fr: array<vec2<f32>, NW>;
    var wd: array<u32, NW>;
    for (var j = 0u; j < NW; j++) {
        let w = lane + SG * j;
        let ok = w < HW;
        let wc = min(w, HW - 1u);
        wd[j] = wc;
        fr[j] = vec2<f32>(inv_freq[2u * wc], inv_freq[2u * wc + 1u]);
        for (var h = 0u; h < G; h++) {
            let qb = (t * p.n_heads + g * G + h) * D;
            let v = vec4<f32>(q[qb + 2u * wc], q[qb + 2u * wc + 1u], q[qb + 2u * wc + D / 2u], q[qb + 2u * wc + 1u + D / 2u]);
            qa[j * G + h] = select(vec4<f32>(0.0), v * p.scale, ok);
        }
    }
    var m: array<f32, G>;
    var l: array<f32, G>;
    var o: array<vec4<f32>, NW * G>;
    for (var h = 0u; h < G; h++) { m[h] = NEG; }
    for (var key = start; key < end; key++) {
        let kpos = f32(key);
        let row = key * words + g * (D / 2u);
        var s: array<f32, G>;
        var vv: array<vec4<f32>, NW>;
        for (var j = 0u; j < NW; j++) {
            let lo = unpack2x16float(k_cache[row + wd[j]]);
            let hi = unpack2x16float(k_cache[row + wd[j] + HW]);
            let a = kpos * fr[j];
            let c = cos(a);
            let sn = sin(a);
            let kr = vec4<f32>(lo * c - hi * sn, hi * c + lo * sn);
            for (var h = 0u; h < G; h++) { s[h] += dot(qa[j * G + h], kr); }
            vv[j] = vec4<f32>(unpack2x16float(v_cache[row + wd[j]]), unpack2x16float(v_cache[row + wd[j] + HW]));
        }
        for (var h = 0u; h < G; h++) {
            let sh = subgroupAdd(s[h]);
            let m_new = max(m[h], sh);
            let corr = exp(m[h] - m_new);
            let pj = exp(sh - m_new);
            l[h] = l[h] * corr + pj;
            m[h] = m_new;
            for (var j = 0u; j < NW; j++) { o[j * G + h] = o[j * G + h] * corr + pj * vv[j]; }
        }
    }
    for (var h = 0u; h < G; h++) {
        let qh = t * p.n_heads + g * G + h;
        if (p.n_split == 1u) {
            let inv = select(0.0, 1.0 / l[h], l[h] > 0.0);
            for (var j = 0u; j < NW; j++) {
                let w = lane + SG * j;
                if (w < HW) {
                    let v = o[j * G + h] * inv;
                    out[qh * D + 2u * w] = v.x;
                    out[qh * D + 2u * w + 1u] = v.y;
                    out[qh * D + 2u * w + D / 2u] = v.z;
                    out[qh * D + 2u * w + 1u + D / 2u] = v.w;
                }
            }
        } else {
            let b = (qh * p.n_split + split) * (D + 2u);
            if (lane == 0u) {
                part[b] = m[h];
                part[b + 1u] = l[h];
            }
            for (var j = 0u; j < NW; j++) {
                let w = lane + SG * j;
                if (w < HW) {
                    let v = o[j * G + h];
                    part[b + 2u + 2u * w] = v.x;
                    part[b + 3u + 2u * w] = v.y;
                    part[b + 2u + 2u * w + D / 2u] = v.z;
                    part[b + 3u + 2u * w + D / 2u] = v.w;
                }
            }
        }
    }
}
