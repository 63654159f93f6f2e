// attention_prefill: causal GQA attention of a chunk of queries over the KV cache, flash-attention
// style (query tile x key tile, online softmax), for prefill chunks; decode steps use the
// split-key attention.wgsl. Portable: f32 FMAs, workgroup memory, no subgroups.
//
// Rows of a tile are (token, head) pairs of one KV group: row R of group kvh is token R / G and
// query head kvh * G + R % G (G = n_heads / n_kv), so every query head of the group shares each
// staged K/V tile. Keys are cached UN-rotated: each key is rotated once per tile as it is staged
// (one sin/cos per key and frequency, shared by the tile's 32 rows), not once per query.
// Dispatch: (ceil(n_q * G / 32), n_kv) workgroups of 256 threads; D = head_dim (override;
// D % 4 == 0, D <= 128). Thread li owns row li / 8; for scores it takes keys li % 8 and li % 8 + 8
// of the 16-key tile, for the output the vec4 columns li % 8, li % 8 + 8, ... .
// Layout: q [n_q][n_heads][D] f32, rotated at position pos0 + t; k_cache, v_cache
// [max_ctx][n_kv][D/2] u32 (f16 pairs); inv_freq [D/2] f32; out [n_q][n_heads][D] f32.
// Query t sees cache rows 0 ..= pos0 + t.

// struct Params and the bindings: shaders/attention_prefill_params.wgsl (prepended by the op).

override D: u32 = 64u;
const BR: u32 = 32u; // query rows per workgroup
const BC: u32 = 16u; // keys per tile
const D4MAX: u32 = 32u; // vec4s per row at the largest head_dim (128)
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<vec4<f32>, 1024>; // [BR][D/4], pre-scaled
var<workgroup> ks: array<vec4<f32>, 512>; // [BC][D/4], rotated to each key's position
var<workgroup> vs: array<vec4<f32>, 512>; // [BC][D/4]
var<workgroup> ps: array<f32, 512>; // [BR][BC] scores

// Element e of a cached f16 row starting at word `row`.
fn cached(buf_is_k: bool, row: u32, e: u32) -> f32 {
    if (buf_is_k) { return unpack2x16float(k_cache[row + e / 2u])[e & 1u]; }
    return unpack2x16float(v_cache[row + e / 2u])[e & 1u];
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = p.n_heads / p.n_kv;
    let kvh = wg.y;
    let n_rows = p.n_q * g;
    let r0 = wg.x * BR;
    let d4 = D / 4u;
    let half = D / 2u;
    let words = p.n_kv * half; // u32 words per cache row

    // Stage the tile's queries (scaled by 1/sqrt(D)); rows past the chunk are zero.
    for (var i = li; i < BR * d4; i += 256u) {
        let r = i / d4;
        let c = i % d4;
        let row = r0 + r;
        var v = vec4<f32>(0.0);
        if (row < n_rows) {
            let head = kvh * g + row % g;
            let b = ((row / g) * p.n_heads + head) * D + 4u * c;
            v = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * p.scale;
        }
        qs[r * D4MAX + c] = v;
    }

    let r = li / 8u;
    let j = li % 8u;
    let row = r0 + r;
    let t = row / g; // this thread's query token (past the chunk when row >= n_rows)
    let last_row = min(r0 + BR, n_rows) - 1u;
    let n_keys = p.pos0 + last_row / g + 1u; // keys the tile's last query sees
    var m = NEG;
    var l = 0.0;
    var o: array<vec4<f32>, 4>; // vec4 columns j, j + 8, j + 16, j + 24

    for (var kb = 0u; kb < n_keys; kb += BC) {
        workgroupBarrier(); // the previous tile's readers are done
        // Stage keys (rotated to their positions) and values; keys past n_keys are zero.
        for (var i = li; i < BC * half; i += 256u) {
            let kj = i / half;
            let e = i % half;
            let key = kb + kj;
            var lo = 0.0;
            var hi = 0.0;
            var v0 = 0.0;
            var v1 = 0.0;
            if (key < n_keys) {
                let base = key * words + kvh * half;
                let a = f32(key) * inv_freq[e];
                let c = cos(a);
                let s = sin(a);
                let k0 = cached(true, base, e);
                let k1 = cached(true, base, e + half);
                lo = k0 * c - k1 * s;
                hi = k1 * c + k0 * s;
                v0 = cached(false, base, e);
                v1 = cached(false, base, e + half);
            }
            ks[kj * D4MAX + e / 4u][e % 4u] = lo;
            ks[kj * D4MAX + (e + half) / 4u][(e + half) % 4u] = hi;
            vs[kj * D4MAX + e / 4u][e % 4u] = v0;
            vs[kj * D4MAX + (e + half) / 4u][(e + half) % 4u] = v1;
        }
        workgroupBarrier();
        // Scores of keys j and j + 8 for this row, masked past the causal limit.
        for (var h = 0u; h < 2u; h++) {
            let kj = j + 8u * h;
            let key = kb + kj;
            var s = NEG;
            if (row < n_rows && key <= p.pos0 + t) {
                var acc = vec4<f32>(0.0);
                for (var c = 0u; c < d4; c++) {
                    acc += qs[r * D4MAX + c] * ks[kj * D4MAX + c];
                }
                s = acc.x + acc.y + acc.z + acc.w;
            }
            ps[r * BC + kj] = s;
        }
        workgroupBarrier();
        // Online softmax over the row's 16 scores (every thread of the row keeps the same m, l),
        // then this thread's output columns.
        var tmax = NEG;
        for (var k = 0u; k < BC; k++) { tmax = max(tmax, ps[r * BC + k]); }
        let m_new = max(m, tmax);
        let corr = select(0.0, exp(m - m_new), m > NEG);
        l *= corr;
        for (var i = 0u; i < 4u; i++) { o[i] *= corr; }
        for (var k = 0u; k < BC; k++) {
            let sk = ps[r * BC + k];
            let pk = select(0.0, exp(sk - m_new), sk > NEG);
            l += pk;
            for (var i = 0u; i < 4u; i++) {
                let c = j + 8u * i;
                if (c < d4) { o[i] += pk * vs[k * D4MAX + c]; }
            }
        }
        m = m_new;
    }

    if (row < n_rows) {
        let head = kvh * g + row % g;
        let b = (t * p.n_heads + head) * D;
        let inv_l = 1.0 / l;
        for (var i = 0u; i < 4u; i++) {
            let c = j + 8u * i;
            if (c < d4) {
                let v = o[i] * inv_l;
                out[b + 4u * c] = v.x;
                out[b + 4u * c + 1u] = v.y;
                out[b + 4u * c + 2u] = v.z;
                out[b + 4u * c + 3u] = v.w;
            }
        }
    }
}
