// esa_score_q8: decode-step (n_q = 1) scores of the middle tokens from the 8-bit copy of the
// compressed-key cache (written by esa_pack.wgsl's main_q8):
//   out[m] = scale[m0 + m] * sum_i q[m0 + m][i] * cq[i],  atomicMax of out into rowmax[0];
// then `decode_sub` (esa_score_common.wgsl) subtracts the max, as for the f16 cache. With rank_only
// (a decode step's scores only ranked by the top-k, which one subtracted constant does not reorder)
// neither the max nor `clear` and `decode_sub` run: the raw sums are the scores.
// Why 8 bits: a decode step reads every middle token's compressed key; int8 rows with one f16 scale
// are d' + 2 bytes instead of 2 d' (esa_pack.wgsl). Prefill chunks score the f16 cache.
//
// Entry point decode_dot_q8. Dispatch flat (grid_x, gy) over ceil(n_m / KEYS) workgroups of 256
// threads, LANES consecutive threads per key (KEYS = 256 / LANES keys per workgroup): lane j of a
// key reads vec4<u32> j, j + LANES, ... of its row (16 int8 each), so a workgroup reads KEYS
// consecutive rows as one contiguous run; the lanes' sums meet in workgroup memory.
// Layout: cq [d] f32 (staged once per workgroup in `qs`, zero past d); ck [rows][V] vec4<u32>,
// value i of a row in byte i % 4 of component (i / 4) % 4 of vec4 i / 16, zero past d;
// scales [ceil(rows/2)] u32, one f16 per row (row r in the low half of word r / 2 when r is
// even); rowmax [1] u32 (sortable key); out [n_m] f32. Middle token m is cache row m0 + m.
// The op writes V (vec4 words per row, ceil(d/16)) and LANES (a power of two <= min(V, 32))
// between //@SHAPE and //@END.

// struct Params, bindings 0, 1 and 4, key_of, float_of, touch, clear, decode_sub: esa_score_common.wgsl.

//@SHAPE
const V: u32 = 8u;
const LANES: u32 = 8u;
//@END
const KEYS: u32 = 256u / LANES;

@group(0) @binding(2) var<storage, read> cq: array<f32>;
@group(0) @binding(3) var<storage, read> ck: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;

var<workgroup> qs: array<vec4<f32>, V * 4u>;
var<workgroup> red: array<f32, 256>;

fn neg_inf() -> f32 { return bitcast<f32>(0xff800000u); }

// The four signed bytes of w (byte 0 first) as floats.
fn i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u));
}

@compute @workgroup_size(256)
fn decode_dot_q8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    _ = arrayLength(&scales);
    for (var e = li; e < V * 4u; e += 256u) {
        var v = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            if (4u * e + c < p.d) { v[c] = cq[4u * e + c]; }
        }
        qs[e] = v;
    }
    workgroupBarrier();
    let group = wg.x + wg.y * p.grid_x;
    let key = li / LANES;
    let part = li % LANES;
    let m = group * KEYS + key;
    var acc = 0.0;
    if (m < p.n_m) {
        let row = (p.m0 + m) * V;
        for (var v = part; v < V; v += LANES) {
            let w = ck[row + v];
            acc += dot(i8x4(w.x), qs[4u * v]) + dot(i8x4(w.y), qs[4u * v + 1u]) + dot(i8x4(w.z), qs[4u * v + 2u]) + dot(i8x4(w.w), qs[4u * v + 3u]);
        }
    }
    red[li] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (part < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    var best = neg_inf();
    if (part == 0u && m < p.n_m) {
        let r = p.m0 + m;
        best = red[li] * unpack2x16float(scales[r / 2u])[r % 2u];
        out[m] = best;
    }
    if (p.rank_only == 1u) { return; }
    workgroupBarrier();
    red[li] = best;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    if (li == 0u && group * KEYS < p.n_m) { atomicMax(&rowmax[0], key_of(red[0])); }
}
