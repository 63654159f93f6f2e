// attention_cpu_block: causal GQA attention of a prompt chunk over the KV cache for CPU adapters,
// one query per lane (attention_cpu.wgsl, one query per subgroup, serves decode steps).
//
// Why it looks like this: on a CPU adapter a subgroup is one SIMD vector, so with the subgroup's
// lanes on SG consecutive queries of one KV group every product is a plain vector FMA: a key is
// loaded and rotated once per subgroup (lane j loads its NW words of the row, as attention_cpu
// does) and each of its values reaches all the queries by subgroupBroadcast with a constant lane
// (a register shuffle). A key is rotated and broadcast once for the G query heads that share it;
// attention_cpu spends a sin/cos per key and query instead, and reduces every score across its
// lanes. The online softmax goes in blocks of BK keys: one rescale of the
// output per block, not per key. No workgroup memory, no barriers.
//
// The op prepends D (head_dim, a multiple of 4 SG), G (query heads per KV head), SG (subgroup and
// workgroup size) and BK, and writes out the `//@` lines for the HW = D / 4 words of a half head
// (`attention::cpu_block_source`): per lane and head h the query as q{h}_{w} and the output as
// o{h}_{w}, vec4 each holding elements (2w, 2w + 1, 2w + D/2, 2w + 1 + D/2), w < HW; word w of a
// key row lives in lane w % SG, slot w / SG.
// Dispatch: (ceil(n_q / SG), n_kv) workgroups of SG; workgroup (b, g) runs queries b SG + lane of
// heads g G .. g G + G - 1 over keys 0 ..= pos0 + query (all its keys: no splits, a chunk has
// enough workgroups).
// Layout (as attention_cpu.wgsl): q [n_q][n_heads][D] f32 rotated; k_cache, v_cache
// [max_ctx][n_kv][D/2] u32 (f16 pairs, keys un-rotated); inv_freq [D/2]; out [n_q][n_heads][D] f32.

// struct Params and the bindings (q, k_cache, v_cache, inv_freq, out):
// shaders/attention_prefill_params.wgsl, prepended by the op.

const NEG: f32 = -3.0e38;
const HW: u32 = D / 4u; // words in each half of a head's K/V row

// Elements (2w, 2w + 1, 2w + D/2, 2w + 1 + D/2) of the query at qb, scaled.
fn qword(qb: u32, w: u32) -> vec4<f32> {
    return vec4<f32>(q[qb + 2u * w], q[qb + 2u * w + 1u], q[qb + 2u * w + D / 2u], q[qb + 2u * w + 1u + D / 2u]) * p.scale;
}

// Word w of the key row at `row`, rotated to position kp by the frequencies fr of its two pairs.
fn kword(row: u32, w: u32, kp: f32, fr: vec2<f32>) -> vec4<f32> {
    let lo = unpack2x16float(k_cache[row + w]);
    let hi = unpack2x16float(k_cache[row + w + HW]);
    let a = kp * fr;
    let c = cos(a);
    let s = sin(a);
    return vec4<f32>(lo * c - hi * s, hi * c + lo * s);
}

fn vword(row: u32, w: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(v_cache[row + w]), unpack2x16float(v_cache[row + w + HW]));
}

@compute @workgroup_size(SG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let g = wg.y;
    let t0 = wg.x * SG;
    let t = min(t0 + lane, p.n_q - 1u); // lanes past the chunk repeat its last query, store nothing
    let lim = p.pos0 + t; // this lane's last key
    let end = p.pos0 + min(t0 + SG, p.n_q); // one past the subgroup's last key
    let words = p.n_kv * (D / 2u);
    let qb = (t * p.n_heads + g * G) * D; // head g G + h at qb + h D
    // Per head h: query and output words q{h}_{w}, o{h}_{w}, softmax state m{h}, l{h}; this lane's
    // key words wd{j} and their frequencies fr{j}.
//@SETUP
    var s: array<f32, BK * G>; // scores of a block, [key][head]
    for (var kb = 0u; kb < end; kb += BK) {
        // every head's block maximum, mb{h}
//@MAX0
        for (var kk = 0u; kk < BK; kk++) {
            let key = min(kb + kk, end - 1u);
            let row = key * words + g * (D / 2u);
            let kp = f32(key);
            let ok = kb + kk <= lim;
            // the key's words rotated (kr{j}), broadcast to every lane (b{w}), dotted with each head
//@QK
        }
        // per head: the new maximum, the output and sum rescaled once for the block
//@RESCALE
        for (var kk = 0u; kk < BK; kk++) {
            let key = min(kb + kk, end - 1u);
            let row = key * words + g * (D / 2u);
//@PV
        }
    }
    if (t0 + lane >= p.n_q) { return; }
//@STORE
}

fn put(qb: u32, w: u32, v: vec4<f32>) {
    out[qb + 2u * w] = v.x;
    out[qb + 2u * w + 1u] = v.y;
    out[qb + 2u * w + D / 2u] = v.z;
    out[qb + 2u * w + 1u + D / 2u] = v.w;
}
