// attention_gqa: attention of a few queries (decode steps) over the KV cache on GPUs, one
// workgroup per (query, KV head, group of up to 4 of its query heads, key split); the key splits
// are merged by the last workgroup of each (query, KV head, head group) to finish, so a decode
// step's attention is one dispatch.
//
// Why it looks like this (attention.wgsl, the portable kernel, is what it replaces where
// subgroups are offered): there one thread scored one whole key, walking its 256-byte row a word
// at a time and computing a sine and cosine per pair, and every query head re-read its KV head's
// keys. Here T = D / 16 lanes share a key, each loading one vec4 of the key's first half and one
// of its second (the rotation partners), so each key row is read in whole 16-byte pieces by
// neighbouring lanes; the key is rotated once for all (up to 4) query heads of its GQA group,
// whose scores travel as one vec4 through log2(T) subgroup xor-shuffles; and the rotation advances
// from key to key by a complex multiply (each slot's keys are NS apart: angle addition), with one
// sine and cosine per pair per workgroup instead of per key. U keys per slot are loaded before any
// is used. The online softmax state (m, l as vec4 over heads, o in registers) is per slot; slots
// are combined through workgroup memory at the end. On the H200 a Llama-3-8B layer's decode
// attention at 32k keys takes ~100 us here against ~400 in attention.wgsl + attention_merge
// (docs/perf.md, session 9).
//
// The op prepends D (head_dim, a multiple of 16), HG (query heads per workgroup, 1..4, dividing
// the GQA group), U (keys per slot per iteration) and PF (1: the next iteration's keys and values
// are loaded before this one's products). T = D / 16 lanes per key must fit in one
// subgroup (the op checks the adapter's smallest subgroup size).
// Dispatch: (n_q * n_kv * n_hg, n_split) workgroups of 64 threads (NS = 64 / T key slots).
// Workgroup (c, s), c = (t * n_kv + kvh) * n_hg + j: query t, query heads kvh * G + j * HG .. + HG
// (G = n_heads / n_kv), keys [s * split_len, min((s + 1) * split_len, pos0 + t + 1)); with ESA
// (a fused decode step, n_long > 0) splits s < n_long take virtual keys [s * long_len, ..) of the
// long-distance part instead (rows gathered into long_rows first) and the others start at
// local_start (see Params). Slot k
// takes keys start + k, start + k + NS, ...; lane i of a slot owns pairs 8i .. 8i + 7 (elements
// 8i .. 8i + 7 and their partners D/2 + 8i .. D/2 + 8i + 7, two vec4<u32> of f16 pairs per row).
// Layout: q [n_q][n_heads][D] f32 rotated, or (fused = 1, one decode token) the token's fused
// projection row [q (H*D) | k (n_kv*D) | v (n_kv*D)] un-rotated: each workgroup rotates its
// queries, reads the token's own key and value from that row (rounded to f16 as the cache holds
// them), and the workgroups of head group 0 in the split holding the token append them to the
// cache at row pos0 (no workgroup reads that row from the cache). k_cache, v_cache
// [max_ctx][n_kv][D/2] u32 (f16 pairs, keys un-rotated; read as vec4<u32>); inv_freq [D/2].
// n_split == 1: out [n_q][n_heads][D] f32, normalised. Else part [n_q * n_heads][n_split][D + 2]
// f32 = (m, l, o[D]) per split; counters [n_q * n_kv * n_hg] u32, zero between dispatches: each
// workgroup counts itself in after writing its partial, and the one that counts last merges the
// column's partials into out and sets the counter back to zero; or (merge_apart, many splits) the
// partials are left for attention_merge.wgsl, dispatched next by the op.

struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    pos0: u32,
    n_split: u32,
    split_len: u32,
    scale: f32,
    fused: u32,
    // ESA's long-distance part (a decode step; all 0 for dense attention): the first n_long splits
    // of long_len virtual keys each cover [0, n_init + min(state[count_index], max_sel)): key e is
    // cache row e for e < n_init, else sel[e - n_init], un-rotated, with the query at position w;
    // the other splits cover rows [local_start, pos0 + 1) as dense attention does.
    n_long: u32,
    long_len: u32,
    n_init: u32,
    local_start: u32,
    w: u32,
    count_index: u32,
    max_sel: u32,
    // 1: the partials are left for an attention_merge dispatch (many splits: one workgroup per
    // column merging them all took longer than that launch for small models); no counter is touched
    merge_apart: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<atomic<u32>>; // f32 bits (see the merge)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> counters: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read> sel: array<u32>;
@group(0) @binding(9) var<storage, read> state: array<u32>;

const NEG: f32 = -3.0e38;
const T: u32 = D / 16u;   // lanes per key
const NS: u32 = 64u / T; // key slots per workgroup
const RV: u32 = D / 8u;  // vec4<u32> per K or V row of one KV head

var<workgroup> kv_now: array<vec4<u32>, 64>;  // fused: the token's key (RV vec4) then value (RV)
var<workgroup> slot_m: array<vec4<f32>, 64>;   // per slot: running max over keys, per head
var<workgroup> slot_l: array<vec4<f32>, 64>;   // per slot: sum of exp(score - m), per head
var<workgroup> og: array<vec4<f32>, 1024>;     // [slot][lane][head * 4 + piece], rescaled to the common max
var<workgroup> last: u32;
// LONG_MAX (prepended by the op): 1024 where the kernel serves ESA's long-distance part, else 1, so
// that dense attention's workgroups keep 4 KiB less workgroup memory (more of them fit on a
// compute unit: the H200's 32k decode lost 27% to it) and no long-row lookup per key.
var<workgroup> long_rows: array<u32, LONG_MAX>; // an ESA long-distance split's cache rows

// vec4 `i` of row `key`'s K (v = false) or V (v = true) for KV head kvh: the fused step's own row
// from kv_now, every other from the cache. A cache row is read either way and the choice made after
// (a select, not a branch around the load), so that every load of an iteration is in flight at once.
fn row_vec(key: u32, kvh: u32, i: u32, v: bool) -> vec4<u32> {
    let own = p.fused == 1u && key == p.pos0;
    // (the own row is being appended by another workgroup: row 0 is read in its place, unused)
    let at = (select(key, 0u, own) * p.n_kv + kvh) * RV + i;
    var w: vec4<u32>;
    if (v) { w = v_cache[at]; } else { w = k_cache[at]; }
    return select(w, kv_now[select(0u, RV, v) + i], own);
}

// The words slot `slot`'s lane `lane` needs of iteration `it`'s U keys and values (keys past the
// split re-read its last row; their scores are masked).
// In a long-distance split (`is_long`) the keys are virtual indices whose cache rows are in long_rows.
fn load_iteration(it: u32, start: u32, end: u32, is_long: bool, slot: u32, kvh: u32, lane: u32,
                  kw: ptr<function, array<vec4<u32>, 2 * U>>, vw: ptr<function, array<vec4<u32>, 2 * U>>) {
    for (var u = 0u; u < U; u++) {
        let key = min(start + (it * U + u) * NS + slot, end - 1u);
        let row = select(key, long_rows[min(key - start, LONG_MAX - 1u)], is_long);
        (*kw)[2u * u] = row_vec(row, kvh, lane, false);
        (*kw)[2u * u + 1u] = row_vec(row, kvh, T + lane, false);
        (*vw)[2u * u] = row_vec(row, kvh, lane, true);
        (*vw)[2u * u + 1u] = row_vec(row, kvh, T + lane, true);
    }
}

// The partials go through atomic stores and loads: the merging workgroup reads what others wrote
// in the same dispatch, which plain loads may serve from a stale cache on some backends (Metal's
// barrier orders device memory within a threadgroup only); there are D + 2 per split and head.
fn part_put(i: u32, v: f32) { atomicStore(&part[i], bitcast<u32>(v)); }
fn part_get(i: u32) -> f32 { return bitcast<f32>(atomicLoad(&part[i])); }

fn f4(a: u32, b: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(a), unpack2x16float(b));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) sl: u32, @builtin(subgroup_size) sgs: u32,
        @builtin(subgroup_id) sgid: u32) {
    let n_hg = p.n_heads / p.n_kv / HG;
    let col = wg.x;
    let t = col / (p.n_kv * n_hg);
    let kvh = (col / n_hg) % p.n_kv;
    let h0 = kvh * (p.n_heads / p.n_kv) + (col % n_hg) * HG;
    let split = wg.y;
    let lane = sl % T;
    let slot = sgid * (sgs / T) + sl / T;
    // this split's keys: virtual indices of the long-distance part, or cache rows (local part, dense)
    let is_long = LONG_MAX > 1u && split < p.n_long;
    var start = p.local_start + (split - p.n_long) * p.split_len;
    var end = min(start + p.split_len, p.pos0 + t + 1u);
    if (is_long) {
        start = split * p.long_len;
        end = min(start + p.long_len, p.n_init + min(state[p.count_index], p.max_sel));
        for (var i = li; i < p.long_len; i += 64u) {
            let e = start + i;
            long_rows[i] = select(sel[min(e - p.n_init, max(p.max_sel, 1u) - 1u)], e, e < p.n_init);
        }
    }
    let qpos = select(p.pos0 + t, p.w, is_long); // the queries' position
    let half = D / 2u;
    let e0 = 8u * lane; // this lane's first pair

    // the fused step's own key and value row, f16 as the cache holds them; appended by head group 0
    if (p.fused == 1u) {
        let kb = p.n_heads * D + kvh * D;
        let vb = (p.n_heads + p.n_kv) * D + kvh * D;
        if (li < 2u * RV) {
            let b = select(kb, vb, li >= RV) + 8u * (li % RV);
            var w: vec4<u32>;
            for (var j = 0u; j < 4u; j++) { w[j] = pack2x16float(vec2<f32>(q[b + 2u * j], q[b + 2u * j + 1u])); }
            kv_now[li] = w;
            if (col % n_hg == 0u && !is_long && p.pos0 >= start && p.pos0 < end) {
                let at = (p.pos0 * p.n_kv + kvh) * RV + li % RV;
                if (li < RV) { k_cache[at] = w; } else { v_cache[at] = w; }
            }
        }
    }
    workgroupBarrier();

    // this lane's query pieces per head: [h * 4 + 0, 1] elements e0 .. e0 + 7, [h * 4 + 2, 3] their
    // partners; scaled; heads past HG stay zero
    var qa: array<vec4<f32>, 16>;
    for (var h = 0u; h < HG; h++) {
        let qb = select((t * p.n_heads + h0 + h) * D, (h0 + h) * D, p.fused == 1u);
        for (var c = 0u; c < 2u; c++) {
            var lo: vec4<f32>;
            var hi: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                let e = e0 + 4u * c + j;
                let a = q[qb + e];
                let b = q[qb + e + half];
                if (p.fused == 1u) {
                    let ang = f32(qpos) * inv_freq[e];
                    let cs = cos(ang);
                    let sn = sin(ang);
                    lo[j] = a * cs - b * sn;
                    hi[j] = b * cs + a * sn;
                } else {
                    lo[j] = a;
                    hi[j] = b;
                }
            }
            qa[h * 4u + c] = lo * p.scale;
            qa[h * 4u + 2u + c] = hi * p.scale;
        }
    }

    // the rotation of this slot's first key and the step between its keys (NS positions)
    var rc: array<vec4<f32>, 2>;
    var rs: array<vec4<f32>, 2>;
    var stc: array<vec4<f32>, 2>;
    var sts: array<vec4<f32>, 2>;
    // (long-distance keys stay at position 0: the identity, and so is its step)
    let kpos = f32(start + slot);
    for (var c = 0u; c < 2u; c++) {
        let f = select(vec4<f32>(inv_freq[e0 + 4u * c], inv_freq[e0 + 4u * c + 1u], inv_freq[e0 + 4u * c + 2u], inv_freq[e0 + 4u * c + 3u]), vec4<f32>(0.0), is_long);
        rc[c] = cos(kpos * f);
        rs[c] = sin(kpos * f);
        stc[c] = cos(f32(NS) * f);
        sts[c] = sin(f32(NS) * f);
    }

    var m = vec4<f32>(NEG);
    var l = vec4<f32>(0.0);
    var o: array<vec4<f32>, 16>;
    let n_it = (max(end, start) - start + NS * U - 1u) / (NS * U); // the same for every slot
    // PF = 1: the next iteration's words are loaded before this one's products (twice the
    // registers for them; the last iteration's extra loads re-read row end - 1)
    var nk: array<vec4<u32>, 2 * U>;
    var nv: array<vec4<u32>, 2 * U>;
    if (PF == 1u && n_it > 0u) { load_iteration(0u, start, end, is_long, slot, kvh, lane, &nk, &nv); }
    for (var it = 0u; it < n_it; it++) {
        // the rotation recomputed exactly every 64 iterations (256 steps at U = 4), so the angle
        // addition's f32 error stays ~1e-5 however long a split is
        if (it % 64u == 0u && it > 0u && !is_long) {
            let kp = f32(start + it * U * NS + slot);
            for (var c = 0u; c < 2u; c++) {
                let f = vec4<f32>(inv_freq[e0 + 4u * c], inv_freq[e0 + 4u * c + 1u], inv_freq[e0 + 4u * c + 2u], inv_freq[e0 + 4u * c + 3u]);
                rc[c] = cos(kp * f);
                rs[c] = sin(kp * f);
            }
        }
        // every word of this iteration's U keys and values before any is used
        var kw = nk;
        var vw = nv;
        if (PF == 1u) {
            load_iteration(it + 1u, start, end, is_long, slot, kvh, lane, &nk, &nv);
        } else {
            load_iteration(it, start, end, is_long, slot, kvh, lane, &kw, &vw);
        }
        var s: array<vec4<f32>, U>;
        var mx = m;
        for (var u = 0u; u < U; u++) {
            let key = start + (it * U + u) * NS + slot;
            let lo0 = f4(kw[2u * u].x, kw[2u * u].y);
            let lo1 = f4(kw[2u * u].z, kw[2u * u].w);
            let hi0 = f4(kw[2u * u + 1u].x, kw[2u * u + 1u].y);
            let hi1 = f4(kw[2u * u + 1u].z, kw[2u * u + 1u].w);
            let rlo0 = lo0 * rc[0] - hi0 * rs[0];
            let rlo1 = lo1 * rc[1] - hi1 * rs[1];
            let rhi0 = hi0 * rc[0] + lo0 * rs[0];
            let rhi1 = hi1 * rc[1] + lo1 * rs[1];
            var sc = vec4<f32>(0.0);
            for (var h = 0u; h < HG; h++) {
                sc[h] = dot(qa[h * 4u], rlo0) + dot(qa[h * 4u + 1u], rlo1) + dot(qa[h * 4u + 2u], rhi0) + dot(qa[h * 4u + 3u], rhi1);
            }
            for (var x = 1u; x < T; x <<= 1u) { sc += subgroupShuffleXor(sc, x); }
            sc = select(vec4<f32>(NEG), sc, key < end);
            s[u] = sc;
            mx = max(mx, sc);
            // advance the rotation NS positions: (c + i s)(stc + i sts)
            for (var c = 0u; c < 2u; c++) {
                let nc = rc[c] * stc[c] - rs[c] * sts[c];
                rs[c] = rs[c] * stc[c] + rc[c] * sts[c];
                rc[c] = nc;
            }
        }
        let corr = exp(m - mx);
        l *= corr;
        for (var i = 0u; i < 16u; i++) { o[i] *= corr[i / 4u]; }
        for (var u = 0u; u < U; u++) {
            let key = start + (it * U + u) * NS + slot;
            let pu = select(vec4<f32>(0.0), exp(s[u] - mx), key < end);
            l += pu;
            let v0 = f4(vw[2u * u].x, vw[2u * u].y);
            let v1 = f4(vw[2u * u].z, vw[2u * u].w);
            let v2 = f4(vw[2u * u + 1u].x, vw[2u * u + 1u].y);
            let v3 = f4(vw[2u * u + 1u].z, vw[2u * u + 1u].w);
            for (var h = 0u; h < HG; h++) {
                o[h * 4u] += pu[h] * v0;
                o[h * 4u + 1u] += pu[h] * v1;
                o[h * 4u + 2u] += pu[h] * v2;
                o[h * 4u + 3u] += pu[h] * v3;
            }
        }
        m = mx;
    }

    // combine the slots: a common max per head, each slot's o rescaled to it, summed per element
    if (lane == 0u) {
        slot_m[slot] = m;
        slot_l[slot] = l;
    }
    workgroupBarrier();
    var gm = vec4<f32>(NEG);
    for (var k = 0u; k < NS; k++) { gm = max(gm, slot_m[k]); }
    var gl = vec4<f32>(0.0);
    for (var k = 0u; k < NS; k++) { gl += slot_l[k] * exp(slot_m[k] - gm); }
    let f = exp(m - gm);
    for (var i = 0u; i < 16u; i++) { og[(slot * T + lane) * 16u + i] = o[i] * f[i / 4u]; }
    workgroupBarrier();
    // entry x of T * 16: lane x / 16's piece x % 16 (head (x % 16) / 4); 64 threads take T / 4 each
    for (var x = li; x < T * 16u; x += 64u) {
        let h = (x % 16u) / 4u;
        if (h < HG) {
            var acc = vec4<f32>(0.0);
            for (var k = 0u; k < NS; k++) { acc += og[(k * T + x / 16u) * 16u + x % 16u]; }
            let pc = x % 4u;
            let e = 8u * (x / 16u) + 4u * (pc % 2u) + select(0u, half, pc >= 2u);
            if (p.n_split == 1u) {
                let ob = (t * p.n_heads + h0 + h) * D + e;
                let r = acc / gl[h];
                out[ob] = r.x; out[ob + 1u] = r.y; out[ob + 2u] = r.z; out[ob + 3u] = r.w;
            } else {
                let pb = ((t * p.n_heads + h0 + h) * p.n_split + split) * (D + 2u) + 2u + e;
                part_put(pb, acc.x); part_put(pb + 1u, acc.y); part_put(pb + 2u, acc.z); part_put(pb + 3u, acc.w);
            }
        }
    }
    if (p.n_split == 1u) { return; }
    if (li < HG) {
        let pb = ((t * p.n_heads + h0 + li) * p.n_split + split) * (D + 2u);
        part_put(pb, gm[li]);
        part_put(pb + 1u, gl[li]);
    }
    if (p.merge_apart == 1u) { return; }
    // count this partial in (device-scope release of its stores first); the last one merges
    storageBarrier();
    if (li == 0u) {
        last = select(0u, 1u, atomicAdd(&counters[col], 1u) == p.n_split - 1u);
    }
    if (workgroupUniformLoad(&last) == 0u) { return; }
    storageBarrier();
    // every split's (m, l) of this column's heads into workgroup memory at once (og is free now),
    // then each output element's sum over the splits with its loads independent of each other
    let hd = p.n_heads;
    for (var x = li; x < HG * p.n_split; x += 64u) {
        let r = ((t * hd + h0 + x / p.n_split) * p.n_split + x % p.n_split) * (D + 2u);
        og[x] = vec4<f32>(part_get(r), part_get(r + 1u), 0.0, 0.0);
    }
    workgroupBarrier();
    // per head: the common max (slot_m), each split's weight exp(m - max) (og's z), the weighted
    // sum of the l (slot_l); slot_m and slot_l are free once the slots are combined
    if (li < HG) {
        var mm = NEG;
        for (var s = 0u; s < p.n_split; s++) { mm = max(mm, og[li * p.n_split + s].x); }
        slot_m[li] = vec4<f32>(mm);
    }
    workgroupBarrier();
    for (var x = li; x < HG * p.n_split; x += 64u) {
        og[x].z = exp(og[x].x - slot_m[x / p.n_split].x);
    }
    workgroupBarrier();
    if (li < HG) {
        var ll = 0.0;
        for (var s = 0u; s < p.n_split; s++) { ll += og[li * p.n_split + s].y * og[li * p.n_split + s].z; }
        slot_l[li] = vec4<f32>(ll);
    }
    workgroupBarrier();
    // Each output element's sum over the splits, a batch of partials loaded before any is used:
    // the atomic loads are not reordered or batched by the compiler, so a loop that used each as
    // it came made one round trip per split (the H200's 32k decode spent ~100 us a layer here).
    // Batches of 32 where there are more than 8 splits (a 32k decode or an ESA step has ~30: one
    // round trip per element instead of four), else of 8 (no loads wasted on a few splits).
    for (var x = li; x < HG * D; x += 64u) {
        let h = x / D;
        let e = x % D;
        let base = (t * hd + h0 + h) * p.n_split * (D + 2u) + 2u + e;
        var acc = 0.0;
        if (p.n_split > 8u) {
            for (var s0 = 0u; s0 < p.n_split; s0 += 32u) {
                var v: array<f32, 32>;
                for (var j = 0u; j < 32u; j++) { v[j] = part_get(base + min(s0 + j, p.n_split - 1u) * (D + 2u)); }
                for (var j = 0u; j < 32u; j++) {
                    if (s0 + j < p.n_split) { acc += v[j] * og[h * p.n_split + s0 + j].z; }
                }
            }
        } else {
            var v: array<f32, 8>;
            for (var j = 0u; j < 8u; j++) { v[j] = part_get(base + min(j, p.n_split - 1u) * (D + 2u)); }
            for (var j = 0u; j < 8u; j++) {
                if (j < p.n_split) { acc += v[j] * og[h * p.n_split + j].z; }
            }
        }
        out[(t * hd + h0 + h) * D + e] = acc / slot_l[h].x;
    }
    if (li == 0u) { atomicStore(&counters[col], 0u); }
}
