// rope_kv: split the fused QKV projection of a chunk, rotate the queries with RoPE at their
// positions, and append the keys (UN-rotated: ESA re-positions them at attention time) and values
// to the KV cache as packed f16.
// Dispatch: (grid_x, gy, n_slice) workgroups of 64 threads: token wg.x + wg.y * grid_x, slice wg.z
// of its (head, pair) and KV words (the op slices short chunks so that a decode step's token is
// spread over several workgroups instead of looping 32 times through one, which on the H200 cost
// 16 us per layer of an 8B model in dependent loads).
// Layout: qkv [n_tok][qkv_stride] f32 = [q (H*d) | k (n_kv*d) | v (n_kv*d)];
//         q_out [n_tok][H][d] f32 (rotated at position pos0 + t);
//         k_cache, v_cache [max_ctx][n_kv][d/2] u32, two f16 per word (even element in the low half),
//         token t written at cache row pos0 + t;
//         inv_freq [d/2] f32. RoPE pairs element i with i + d/2 (HF rotate_half).

struct Params {
    n_tok: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    pos0: u32,
    qkv_stride: u32,
    grid_x: u32,
    n_slice: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(5) var<storage, read> inv_freq: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x + wg.y * p.grid_x;
    if (t >= p.n_tok) { return; }
    let d = p.head_dim;
    let half = d / 2u;
    let pos = f32(p.pos0 + t);
    let src = t * p.qkv_stride;
    // Queries: one (head, pair) per iteration.
    let first = wg.z * 64u + li;
    let stride = 64u * p.n_slice;
    for (var i = first; i < p.n_heads * half; i += stride) {
        let h = i / half;
        let e = i % half;
        let a = qkv[src + h * d + e];
        let b = qkv[src + h * d + e + half];
        let ang = pos * inv_freq[e];
        let c = cos(ang);
        let s = sin(ang);
        let dst = (t * p.n_heads + h) * d;
        q_out[dst + e] = a * c - b * s;
        q_out[dst + e + half] = b * c + a * s;
    }
    // Keys and values: copy as f16 pairs.
    let kv_words = p.n_kv * half;
    let row = (p.pos0 + t) * kv_words;
    let k_src = src + p.n_heads * d;
    let v_src = k_src + p.n_kv * d;
    for (var i = first; i < kv_words; i += stride) {
        k_cache[row + i] = pack2x16float(vec2<f32>(qkv[k_src + 2u * i], qkv[k_src + 2u * i + 1u]));
        v_cache[row + i] = pack2x16float(vec2<f32>(qkv[v_src + 2u * i], qkv[v_src + 2u * i + 1u]));
    }
}
