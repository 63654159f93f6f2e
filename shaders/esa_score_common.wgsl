// Shared by esa_score.wgsl, esa_score_coop.wgsl and esa_score_q8.wgsl (the ops compose it into
// each, after any `enable` directives): the parameters, the bindings whose types agree, the
// sortable float keys of the per-query maxima, and the `clear` and `decode_sub` entry points. Bindings 2 (cq) and 3 (ck) are declared
// by each kernel (scalar or vec4 reads).

struct Params {
    n_q: u32,
    n_m: u32,
    d: u32,
    m0: u32,
    split_tiles: u32,
    grid_x: u32,
    // 1: a decode step's scores for ranking only, the max not taken or subtracted (decode_dot*)
    rank_only: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> rowmax: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Float -> u32 whose unsigned order is the float order (same as reference::esa::sortable_key).
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn float_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Every entry point statically uses all bindings so they share one binding order.
fn touch() {
    _ = p.n_q;
    _ = arrayLength(&rowmax);
    _ = arrayLength(&cq);
    _ = arrayLength(&ck);
    _ = arrayLength(&out);
}

// rowmax[c] = 0 (the sortable key below every float). Dispatch (ceil(n_q/256), 1).
@compute @workgroup_size(256)
fn clear(@builtin(global_invocation_id) gid: vec3<u32>) {
    touch();
    if (gid.x < p.n_q) { atomicStore(&rowmax[gid.x], 0u); }
}

// Decode (n_q = 1), pass 2: out[m] -= rowmax[0]. Dispatch flat (grid_x, gy) over ceil(n_m/256).
@compute @workgroup_size(256)
fn decode_sub(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    let m = (wg.x + wg.y * p.grid_x) * 256u + li;
    if (m < p.n_m) { out[m] = out[m] - float_of(atomicLoad(&rowmax[0])); }
}
