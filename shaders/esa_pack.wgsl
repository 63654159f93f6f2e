// esa_pack: append compressed keys to the 16-bit compressed-key cache: rows t of x (f32, the
// output of the f_k projection) become cache rows pos0 + t as f16 pairs.
// Dispatch: flat (grid_x, gy) over ceil(n_tok * d/2 / 256) workgroups of 256 threads, one word each.
// Layout: x [n_tok][x_stride] f32 (values at columns 0..d); cache [rows][d/2] u32, two f16 per word
// (even element in the low half). d is even.

struct Params {
    n_tok: u32,
    d: u32,
    x_stride: u32,
    pos0: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let half = p.d / 2u;
    let i = (wg.x + wg.y * p.grid_x) * 256u + li;
    if (i >= p.n_tok * half) { return; }
    let t = i / half;
    let w = i % half;
    let src = t * p.x_stride + 2u * w;
    cache[(p.pos0 + t) * half + w] = pack2x16float(vec2<f32>(x[src], x[src + 1u]));
}
