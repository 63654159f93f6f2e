// esa_query_exact: the compressed queries of ESA's exact maps, without a matmul. With exact
// (lossless) maps the score of a query row and an un-rotated key is sum over query heads h of
// R_w q_h . k_{kv(h)}, so f_q(q) is, per KV group g, the sum over its G query heads of the head
// rotated to the long-distance position w: kv_dim outputs from q_dim inputs, O(q_dim) work per
// token where the general map (a d' x q_dim product) costs O(d' q_dim).
// Dispatch: flat (grid_x, gy) over ceil(n_tok * n_kv * D/2 / 256) workgroups of 256 threads; thread
// (t, g, i) writes outputs i and i + D/2 of group g for token t (one rotation pair).
// Layout: x [n_tok][x_stride] f32, un-rotated queries at columns 0..q_dim (head h at h D);
// rot [D/2] vec2 = (cos, sin) of w inv_freq[i] (computed in f64 on the host); out
// [n_tok][out_stride] f32, group g at g D. Rotation pairs are (i, i + D/2), as rope_kv's.

struct Params {
    n_tok: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    x_stride: u32,
    out_stride: u32,
    grid_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rot: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let half = p.head_dim / 2u;
    let idx = (wg.x + wg.y * p.grid_x) * 256u + li;
    if (idx >= p.n_tok * p.n_kv * half) { return; }
    let i = idx % half;
    let g = (idx / half) % p.n_kv;
    let t = idx / (half * p.n_kv);
    let heads = p.n_heads / p.n_kv;
    let cs = rot[i];
    var lo = 0.0;
    var hi = 0.0;
    for (var j = 0u; j < heads; j++) {
        let b = t * p.x_stride + (g * heads + j) * p.head_dim;
        let a = x[b + i];
        let c = x[b + i + half];
        lo += a * cs.x - c * cs.y;
        hi += c * cs.x + a * cs.y;
    }
    let o = t * p.out_stride + g * p.head_dim;
    out[o + i] = lo;
    out[o + i + half] = hi;
}
