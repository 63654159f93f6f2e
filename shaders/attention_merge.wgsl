// attention_merge: combine the per-split partial softmax results of attention.wgsl (exact
// log-sum-exp merge) and normalise.
// Dispatch: one workgroup of 64 threads per (query, head) = n_q * n_heads workgroups
// (flat index wg.x + wg.y * grid_x).
// Layout: part [n_q * n_heads][n_split][d + 2] f32 (m, l, o[d]); out [n_q][n_heads][d] f32.

struct Params {
    n_qh: u32,
    n_split: u32,
    head_dim: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let qh = wg.x + wg.y * p.grid_x;
    if (qh >= p.n_qh) { return; }
    let d = p.head_dim;
    let base = qh * p.n_split * (d + 2u);
    var mx = -3.0e38;
    for (var s = 0u; s < p.n_split; s++) {
        mx = max(mx, part[base + s * (d + 2u)]);
    }
    var l = 0.0;
    for (var s = 0u; s < p.n_split; s++) {
        let r = base + s * (d + 2u);
        l += part[r + 1u] * exp(part[r] - mx);
    }
    for (var i = li; i < d; i += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < p.n_split; s++) {
            let r = base + s * (d + 2u);
            acc += part[r + 2u + i] * exp(part[r] - mx);
        }
        out[qh * d + i] = acc / l;
    }
}
