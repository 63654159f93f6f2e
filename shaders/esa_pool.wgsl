// esa_pool: ESA proximity influence, a 1-D max-pool: out[m] = max of x[m'] over |m' - m| <= eps,
// clipped to [0, n).
// Dispatch: flat (grid_x, gy) over ceil(n / 256) workgroups of 256 threads, one output each.
// Layout: x [n] f32, out [n] f32 (distinct buffers).

struct Params {
    n: u32,
    eps: u32,
    grid_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m = (wg.x + wg.y * p.grid_x) * 256u + li;
    if (m >= p.n) { return; }
    let lo = m - min(m, p.eps);
    let hi = m + min(p.eps, p.n - 1u - m); // min(m + eps, n - 1) without overflow
    var v = x[lo];
    for (var i = lo + 1u; i <= hi; i++) { v = max(v, x[i]); }
    out[m] = v;
}
