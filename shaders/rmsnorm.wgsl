// rmsnorm: y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * gamma, per token (prefill path; decode fuses
// the norm into matvec).
// Dispatch: one workgroup of 256 threads per token (flat index wg.x + wg.y * grid_x).
// Layout: x [n_tok][stride] f32, gamma [n] f32; y [n_tok][stride] f32, or with PACK the f16 rows
// the cooperative-matrix matmul reads (pack_f16.wgsl's layout: [n_tok][out_stride] halves, two a
// word, zeros from n up to out_stride), written here instead of by a pack_f16 pass after.

struct Params {
    n: u32,
    stride: u32,
    n_tok: u32,
    eps: f32,
    grid_x: u32,
    out_stride: u32, // PACK: halves per output row (a multiple of 8)
}

override PACK: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>; // f32 bits, or (PACK) f16 pairs
@group(0) @binding(3) var<storage, read> gamma: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x + wg.y * p.grid_x;
    if (t >= p.n_tok) { return; }
    let base = t * p.stride;
    var ss = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        let v = x[base + i];
        ss += v * v;
    }
    red[li] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    let scale = inverseSqrt(red[0] / f32(p.n) + p.eps);
    if (PACK) {
        let ob = t * (p.out_stride / 2u);
        for (var i = li; i < p.out_stride / 2u; i += 256u) {
            let c = 2u * i;
            var v = vec2<f32>(0.0);
            if (c < p.n) { v.x = x[base + c] * scale * gamma[c]; }
            if (c + 1u < p.n) { v.y = x[base + c + 1u] * scale * gamma[c + 1u]; }
            y[ob + i] = pack2x16float(v);
        }
        return;
    }
    for (var i = li; i < p.n; i += 256u) {
        y[base + i] = bitcast<u32>(x[base + i] * scale * gamma[i]);
    }
}
