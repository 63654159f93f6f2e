// esa_blocks: block-level selection in the style of InfLLM (EsaConfig::select_block = B): the
// baseline the evaluation compares ESA's token-level selection with.
//   block_max : out[b] = max of scores[b * B .. min((b + 1) * B, n)] (f32 bits in u32 arrays).
//               Dispatch flat (grid_x, gy) over ceil(n_blocks / 256) workgroups, one block each.
//   expand    : after esa_topk picked blocks (ascending, their count at state[count_index]):
//               tokens[j * B + t] = offset + blocks[j] * B + t for every token t < B of the picked
//               blocks inside the n scores (only the last block can be short, and it sorts last,
//               so the list stays contiguous), count[0] = how many. Dispatch flat over
//               ceil(max_blocks * B / 256) workgroups, one token each.
// Bindings (u32 arrays): 1 input (scores, or the picked blocks), 2 output (block scores, or the
// tokens); expand also 3 the esa_topk state and 4 the token count.

struct Params {
    n: u32, // scores (middle tokens)
    block: u32, // B
    offset: u32, // cache row of score 0
    max_blocks: u32, // expand: blocks esa_topk may have picked
    count_index: u32, // expand: where esa_topk's state holds the picked count
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
@group(0) @binding(3) var<storage, read> state: array<u32>;
@group(0) @binding(4) var<storage, read_write> count: array<u32>;

@compute @workgroup_size(256)
fn block_max(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = (wg.x + wg.y * p.grid_x) * 256u + li;
    let n_blocks = (p.n + p.block - 1u) / p.block;
    if (b >= n_blocks) { return; }
    let lo = b * p.block;
    let hi = min(lo + p.block, p.n);
    var v = bitcast<f32>(0xff800000u); // -inf
    for (var i = lo; i < hi; i++) { v = max(v, bitcast<f32>(src[i])); }
    dst[b] = bitcast<u32>(v);
}

@compute @workgroup_size(256)
fn expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * p.grid_x) * 256u + li;
    let picked = min(state[p.count_index], p.max_blocks);
    let j = i / p.block;
    if (i == 0u) {
        // every picked block is whole but possibly the last, which the middle's end may cut
        var n_tok = picked * p.block;
        if (picked > 0u) {
            let end = (src[picked - 1u] + 1u) * p.block;
            n_tok -= end - min(end, p.n);
        }
        count[0] = n_tok;
    }
    if (j >= picked) { return; }
    let t = src[j] * p.block + i % p.block;
    if (t < p.n) { dst[i] = p.offset + t; }
}
