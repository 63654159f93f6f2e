// esa_attention: ESA gathered sparse attention of a chunk of queries, one key split per workgroup;
// attention_merge.wgsl combines the splits (exact log-sum-exp merge, one softmax over all parts).
//
// Key list of query t (chunk offset; position pos0 + t), as virtual indices e:
//   e <  n_init            : token e                       (long-distance part)
//   e <  n_long            : token sel[e - n_init]         (long-distance part; selected middle)
//   e <  n_long + n_local_t: token local_start + e - n_long (local part: window + causal chunk)
// with n_long = n_init + min(state[count_index], max_sel), n_local_t = pos0 + t + 1 - local_start.
// Long-distance part: keys at position 0 (as cached, un-rotated), query rotated to w.
// Local part: keys rotated to their cache row, query rotated to pos0 + t.
// GQA: a workgroup serves up to 4 query heads sharing one KV head (a head chunk), so each key is
// loaded and rotated once for all of them.
// Dispatch: (n_q * n_kv * n_chunks, n_split) workgroups of 64 threads, n_chunks = ceil(group / 4),
// group = n_heads / n_kv. Workgroup (x, s): query x / (n_kv * n_chunks), KV head
// (x / n_chunks) % n_kv, heads kvh * group + 4 * (x % n_chunks) + [0, n_hg), virtual keys
// [s * split_len, (s+1) * split_len) of the query's list (an empty range writes an empty partial).
// In each tile of 64 keys thread j scores key j for every head of the chunk, then thread i
// accumulates value pairs i and i + 64 (head_dim <= 256, head_dim % 4 == 0).
// Layout: q [n_q][q_stride] f32, UN-rotated, head h at h * d; k_cache, v_cache [rows][n_kv][d/2] u32
// (f16 pairs, keys un-rotated); inv_freq [d/2] f32; sel [>= max_sel] u32 cache rows;
// state [..] u32 (state[count_index] = number of valid entries of sel);
// part [n_q * n_heads][n_split][d + 2] f32 = (running max m, sum l, unnormalised output o[d]).

struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    pos0: u32,
    n_init: u32,
    local_start: u32,
    max_sel: u32,
    count_index: u32,
    w: u32,
    q_stride: u32,
    n_split: u32,
    split_len: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read> sel: array<u32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

const NEG: f32 = -3.0e38;
const HG: u32 = 4u; // most query heads per workgroup

var<workgroup> q_loc: array<f32, 1024>; // [HG][256]
var<workgroup> q_far: array<f32, 1024>;
var<workgroup> sc: array<f32, 256>;     // [HG][64]
var<workgroup> tok: array<u32, 64>;
var<workgroup> n_tiles_wg: u32;

// Rotates query head `h` of row t to position pos into slot hg of q_loc / q_far (HF rotate_half:
// element i pairs with i + d/2), scaled.
fn load_rotated(li: u32, src: u32, hg: u32, pos: f32, far: bool) {
    let half = p.head_dim / 2u;
    for (var i = li; i < half; i += 64u) {
        let a = q[src + i];
        let b = q[src + i + half];
        let ang = pos * inv_freq[i];
        let c = cos(ang);
        let s = sin(ang);
        let x = (a * c - b * s) * p.scale;
        let y = (b * c + a * s) * p.scale;
        let o = hg * 256u + i;
        if (far) { q_far[o] = x; q_far[o + half] = y; } else { q_loc[o] = x; q_loc[o + half] = y; }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let group = p.n_heads / p.n_kv;
    let n_chunks = (group + HG - 1u) / HG;
    let split = wg.y;
    let t = wg.x / (p.n_kv * n_chunks);
    let kvh = (wg.x / n_chunks) % p.n_kv;
    let h0 = kvh * group + HG * (wg.x % n_chunks);
    let n_hg = min(HG, kvh * group + group - h0);
    let d = p.head_dim;
    let half = d / 2u;
    let words = p.n_kv * half; // u32 words per cache row
    for (var hg = 0u; hg < n_hg; hg++) {
        let src = t * p.q_stride + (h0 + hg) * d;
        load_rotated(li, src, hg, f32(p.pos0 + t), false);
        load_rotated(li, src, hg, f32(p.w), true);
    }
    let n_long = p.n_init + min(state[p.count_index], p.max_sel);
    let n_all = n_long + p.pos0 + t + 1u - p.local_start;
    let start = split * p.split_len;
    let end = min(start + p.split_len, n_all);
    var m: array<f32, 4>;
    var l: array<f32, 4>;
    var o0: array<vec2<f32>, 4>;
    var o1: array<vec2<f32>, 4>;
    for (var hg = 0u; hg < HG; hg++) {
        m[hg] = NEG;
        l[hg] = 0.0;
        o0[hg] = vec2<f32>(0.0);
        o1[hg] = vec2<f32>(0.0);
    }
    // The loop bound comes from storage (the selection count): make it uniform for the barriers.
    if (li == 0u) { n_tiles_wg = (end - min(end, start) + 63u) / 64u; }
    let n_tiles = workgroupUniformLoad(&n_tiles_wg); // also publishes q_loc / q_far
    for (var tile = 0u; tile < n_tiles; tile++) {
        let base = start + tile * 64u;
        let e = base + li;
        var acc: array<f32, 4>;
        for (var hg = 0u; hg < HG; hg++) { acc[hg] = NEG; }
        var row = 0u;
        if (e < end) {
            for (var hg = 0u; hg < HG; hg++) { acc[hg] = 0.0; }
            let far = e < n_long;
            if (e < p.n_init) {
                row = e;
            } else if (far) {
                row = sel[e - p.n_init];
            } else {
                row = p.local_start + e - n_long;
            }
            let kpos = select(f32(row), 0.0, far);
            let kr = row * words + kvh * half;
            for (var i = 0u; i < half; i += 2u) {
                let lo = unpack2x16float(k_cache[kr + i / 2u]);
                let hi = unpack2x16float(k_cache[kr + (i + half) / 2u]);
                // Key rotated to kpos (identity for the long-distance part).
                var k0 = lo.x; var k1 = lo.y; var k2 = hi.x; var k3 = hi.y;
                if (!far) {
                    let a0 = kpos * inv_freq[i];
                    let a1 = kpos * inv_freq[i + 1u];
                    let c0 = cos(a0); let s0 = sin(a0);
                    let c1 = cos(a1); let s1 = sin(a1);
                    k0 = lo.x * c0 - hi.x * s0;
                    k2 = hi.x * c0 + lo.x * s0;
                    k1 = lo.y * c1 - hi.y * s1;
                    k3 = hi.y * c1 + lo.y * s1;
                }
                for (var hg = 0u; hg < n_hg; hg++) {
                    let o = hg * 256u + i;
                    if (far) {
                        acc[hg] += q_far[o] * k0 + q_far[o + 1u] * k1 + q_far[o + half] * k2 + q_far[o + half + 1u] * k3;
                    } else {
                        acc[hg] += q_loc[o] * k0 + q_loc[o + 1u] * k1 + q_loc[o + half] * k2 + q_loc[o + half + 1u] * k3;
                    }
                }
            }
        }
        for (var hg = 0u; hg < HG; hg++) { sc[hg * 64u + li] = acc[hg]; }
        tok[li] = row;
        workgroupBarrier();
        var corr: array<f32, 4>;
        for (var hg = 0u; hg < n_hg; hg++) {
            var tmax = NEG;
            for (var j = 0u; j < 64u; j++) { tmax = max(tmax, sc[hg * 64u + j]); }
            let m_new = max(m[hg], tmax);
            corr[hg] = exp(m[hg] - m_new);
            m[hg] = m_new;
        }
        workgroupBarrier();
        for (var hg = 0u; hg < n_hg; hg++) {
            sc[hg * 64u + li] = select(0.0, exp(acc[hg] - m[hg]), e < end);
        }
        workgroupBarrier();
        let n = min(64u, end - min(end, base));
        for (var hg = 0u; hg < n_hg; hg++) {
            var psum = 0.0;
            var a0 = o0[hg] * corr[hg];
            var a1 = o1[hg] * corr[hg];
            for (var j = 0u; j < n; j++) {
                let pj = sc[hg * 64u + j];
                psum += pj;
                let vrow = tok[j] * words + kvh * half;
                if (li < half) { a0 += pj * unpack2x16float(v_cache[vrow + li]); }
                if (li + 64u < half) { a1 += pj * unpack2x16float(v_cache[vrow + li + 64u]); }
            }
            o0[hg] = a0;
            o1[hg] = a1;
            l[hg] = l[hg] * corr[hg] + psum;
        }
        workgroupBarrier();
    }
    for (var hg = 0u; hg < n_hg; hg++) {
        let out = ((t * p.n_heads + h0 + hg) * p.n_split + split) * (d + 2u);
        if (li == 0u) {
            part[out] = m[hg];
            part[out + 1u] = l[hg];
        }
        if (li < half) {
            part[out + 2u + 2u * li] = o0[hg].x;
            part[out + 3u + 2u * li] = o0[hg].y;
        }
        if (li + 64u < half) {
            part[out + 2u + 2u * (li + 64u)] = o1[hg].x;
            part[out + 3u + 2u * (li + 64u)] = o1[hg].y;
        }
    }
}
