// pack_f16: activations f32 -> f16 for the cooperative-matrix matmul, which then stages one 16-byte
// load per eight inputs instead of eight 4-byte loads (the matmul's global loads, not its tensor
// cores, bound it: docs/perf.md).
// Dispatch: (ceil(ld8 / 64), n_tok) workgroups of 64 threads; thread i writes octet i of a token.
// Layout: x [n_tok][x_stride] f32 from float x_off; y [n_tok][ld8] vec4<u32>, eight halves each (low
// half first); columns past `cols` up to the next multiple of 8 are written as zeros.

struct Params {
    cols: u32,
    x_off: u32,
    x_stride: u32,
    ld8: u32,
    n_tok: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<u32>>;

fn at(b: u32, c: u32) -> f32 {
    if (c < p.cols) { return x[b + c]; }
    return 0.0;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = gid.x;
    let t = gid.y;
    if (o >= p.ld8 || t >= p.n_tok) { return; }
    let b = p.x_off + t * p.x_stride;
    let c = o * 8u;
    y[t * p.ld8 + o] = vec4<u32>(
        pack2x16float(vec2<f32>(at(b, c), at(b, c + 1u))),
        pack2x16float(vec2<f32>(at(b, c + 2u), at(b, c + 3u))),
        pack2x16float(vec2<f32>(at(b, c + 4u), at(b, c + 5u))),
        pack2x16float(vec2<f32>(at(b, c + 6u), at(b, c + 7u))));
}
