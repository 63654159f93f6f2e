// esa_pack: append a chunk's compressed keys (the f32 output of the f_k projection) to the
// compressed-key caches at rows pos0 + t.
//
// Entry points:
//   main    : the f16 cache only. Dispatch flat (grid_x, gy) over ceil(n_tok * d/2 / 256)
//             workgroups of 256 threads, one f16 word each.
//   main_q8 : the f16 cache and its 8-bit copy in one pass. Dispatch flat (grid_x, gy) over the
//             aligned row pairs the chunk touches (floor(pos0/2) .. floor((pos0 + n_tok - 1)/2)),
//             workgroups of 128 threads: threads 0..63 the pair's even row, 64..127 its odd row;
//             a thread loads 4 values per step (one int8 word, two f16 words), the row's max |x|
//             is a workgroup-memory reduction over its 64 threads.
// Layout: x [n_tok][x_stride] f32 (values at columns 0..d); cache [rows][d/2] u32, two f16 per
// word (even element in the low half). 8-bit copy: ck8 [rows][row_words] u32, four int8 per word
// (value i in byte i % 4 of word i / 4, two's complement), row_words = ceil(d/16) * 4 (rows padded
// to 16 values, zeros, so the decode kernel reads whole vec4<u32>); scales [ceil(rows/2)] u32, one
// f16 per row (row r in the low half of word r/2 when r is even). d is even.
//
// Why two copies: a decode step re-scores every middle token, so the bytes per token it reads are
// dominated by this cache at long contexts; int8 rows (d + 2 bytes with the scale) halve them.
// Prefill chunks keep scoring the f16 rows, on tensor cores (esa_score_coop.wgsl) where the
// adapter has them, where the bytes are amortised over the chunk's queries.
//
// Quantisation (reference::esa::quantize_row_i8): the f16-rounded row v, scale = f16(max|v| / 127),
// q = clamp(round(v / scale), -127, 127), zero when the scale is 0. (A row whose max exceeds
// 127 x 65504 has no f16 scale; its f16 cache row would already be infinite.)

struct Params {
    n_tok: u32,
    d: u32,
    x_stride: u32,
    pos0: u32,
    grid_x: u32,
    row_words: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> ck8: array<u32>;
@group(0) @binding(4) var<storage, read_write> scales: array<u32>;

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

var<workgroup> red: array<f32, 128>;

// Values 4i .. 4i + 3 of chunk row t, zero past d.
fn load4(t: u32, i: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    let base = t * p.x_stride + 4u * i;
    for (var c = 0u; c < 4u; c++) {
        if (4u * i + c < p.d) { v[c] = x[base + c]; }
    }
    return v;
}

@compute @workgroup_size(128)
fn main_q8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let pair = p.pos0 / 2u + wg.x + wg.y * p.grid_x;
    // Past the chunk (a 2-D grid rounds up): the whole workgroup leaves, before any barrier.
    if (2u * pair >= p.pos0 + p.n_tok) { return; }
    let side = li / 64u;
    let lane = li % 64u;
    let row = 2u * pair + side;
    let in_chunk = row >= p.pos0 && row < p.pos0 + p.n_tok;
    let t = row - p.pos0;
    let half = p.d / 2u;
    // Pass 1: the f16 words, and the max |v| of the f16-rounded values.
    var mx = 0.0;
    if (in_chunk) {
        for (var i = lane; i < p.row_words; i += 64u) {
            let v = load4(t, i);
            let lo = pack2x16float(v.xy);
            let hi = pack2x16float(v.zw);
            if (2u * i < half) { cache[row * half + 2u * i] = lo; }
            if (2u * i + 1u < half) { cache[row * half + 2u * i + 1u] = hi; }
            let r = abs(vec4<f32>(unpack2x16float(lo), unpack2x16float(hi)));
            mx = max(mx, max(max(r.x, r.y), max(r.z, r.w)));
        }
    }
    red[li] = mx;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lane < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    let bits = vec2<u32>(pack2x16float(vec2<f32>(red[0] / 127.0, 0.0)), pack2x16float(vec2<f32>(red[64] / 127.0, 0.0))) & vec2<u32>(0xffffu);
    let scale = unpack2x16float(bits[side]).x;
    // Pass 2: the int8 words (the values are re-read: x is small and cached).
    if (in_chunk) {
        for (var i = lane; i < p.row_words; i += 64u) {
            let l = load4(t, i);
            let v = vec4<f32>(unpack2x16float(pack2x16float(l.xy)), unpack2x16float(pack2x16float(l.zw)));
            let q = select(vec4<f32>(0.0), clamp(round(v / scale), vec4<f32>(-127.0), vec4<f32>(127.0)), scale > 0.0);
            let b = bitcast<vec4<u32>>(vec4<i32>(q)) & vec4<u32>(0xffu);
            ck8[row * p.row_words + i] = b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
        }
    }
    // The pair's scale word: rows of the pair outside the chunk keep their half (no other
    // workgroup of this dispatch writes this word).
    if (li == 0u) {
        var w = scales[pair];
        if (2u * pair >= p.pos0) { w = (w & 0xffff0000u) | bits.x; }
        if (2u * pair + 1u < p.pos0 + p.n_tok) { w = (w & 0x0000ffffu) | (bits.y << 16u); }
        scales[pair] = w;
    }
}
