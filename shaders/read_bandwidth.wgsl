// read_bandwidth: reads a buffer once, as fast as the adapter can stream it, for the bench's
// memory-bandwidth floor (the figure every decode kernel is compared with in docs/perf.md).
//
// Dispatch: `groups` workgroups of 256 threads (flat wg.x + wg.y * grid_x). Thread i of workgroup
// g reads vec4<u32> number (g * 256 + i) + k * stride for k = 0, 1, ... (stride = groups * 256:
// every load instruction of a subgroup touches one contiguous span), four loads in flight per
// iteration. Each workgroup writes the XOR of all it read to out[g], so the loads cannot be
// dropped and a test can check that every word was read exactly once.
// Layout: src [n_vec4] vec4<u32>; out [groups] u32.

struct Params {
    n_vec4: u32,
    stride: u32,
    grid_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> acc: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = wg.x + wg.y * p.grid_x;
    if (li == 0u) { atomicStore(&acc, 0u); }
    workgroupBarrier();
    var a = vec4<u32>(0u);
    var i = g * 256u + li;
    // four independent loads per iteration keep more bytes in flight per thread
    for (; i + 3u * p.stride < p.n_vec4; i += 4u * p.stride) {
        let v0 = src[i];
        let v1 = src[i + p.stride];
        let v2 = src[i + 2u * p.stride];
        let v3 = src[i + 3u * p.stride];
        a ^= v0 ^ v1 ^ v2 ^ v3;
    }
    for (; i < p.n_vec4; i += p.stride) {
        a ^= src[i];
    }
    atomicXor(&acc, a.x ^ a.y ^ a.z ^ a.w);
    workgroupBarrier();
    if (li == 0u) { out[g] = atomicLoad(&acc); }
}
