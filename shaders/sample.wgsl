// sample: pick the next token from one row of logits, every filter on the GPU so that a decode step
// never needs the row on the host. In order (as transformers applies its logits processors, and
// as `crate::sampler`, the host reference, defines them):
//   1. repetition penalty (penalty != 1): the logit of each distinct id among the window's
//      `n_recent` ids (`hist[recent0 ..]`, the context's last tokens) is divided by the penalty
//      when positive and multiplied by it otherwise, once however often the id occurs;
//   2. greedy (temperature <= 0): the argmax, lowest index on ties, NaN skipped; otherwise weights
//      w = exp((logit - max) / temperature), so the most likely token has weight 1;
//   3. top-k (top_k > 0): the tokens whose logit is at least the k-th largest (ties kept), found by
//      bisection on the logits' order-preserving 32-bit keys (exact in 32 steps);
//   4. top-p (top_p < 1): the tokens with w >= tau for the largest tau whose kept tokens (top-k's,
//      at or above min-p's threshold) hold top_p of the mass top-k left (bisection on tau);
//   5. min-p (min_p > 0): the tokens with w >= min_p;
//   then inverse CDF over the kept tokens in vocabulary order with the host's uniform number.
// Dispatch: one workgroup of 256 threads. The passes that only count, sum or take a maximum read
// the row strided (thread i: i, i + 256, ...: coalesced); the draw needs thread i to own the
// contiguous range [i * chunk, (i+1) * chunk) so the running sums follow vocabulary order.
// Layout: logits [vocab] f32 (at offset `offset`); out [1] u32; hist [..] u32 token ids;
// scratch [2 vocab] u32: the penalised logits (f32 bits) then one flag per id (used only with a
// penalty).

struct Params {
    vocab: u32,
    offset: u32,
    temperature: f32,
    top_p: f32,
    uniform: f32,
    top_k: u32,
    min_p: f32,
    penalty: f32,
    recent0: u32,
    n_recent: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read> hist: array<u32>;
@group(0) @binding(4) var<storage, read_write> scratch: array<u32>;

var<workgroup> rv: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> bcast: f32;
// The candidate list: logits of the tokens in the bins that can hold a kept token.
const CAP: u32 = 2048u;
var<workgroup> hcnt: array<atomic<u32>, 256>;
var<workgroup> ncand: atomic<u32>;
var<workgroup> ncand_u: u32;
var<workgroup> cand: array<f32, CAP>;
var<workgroup> plan: vec2<u32>; // (list the candidates?, last bin listed)

// Weight bin: 8 per octave below the maximum (w = 1 in bin 0); w <= 2^-32, or 0, in bin 255.
fn bin_of(w: f32) -> u32 {
    if (w <= 0.0) { return 255u; }
    return u32(clamp(-log2(w) * 8.0, 0.0, 255.0));
}

fn reduce_sum(li: u32, v: f32) -> f32 {
    rv[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) { rv[li] += rv[li + s]; }
        workgroupBarrier();
    }
    let r = rv[0];
    workgroupBarrier();
    return r;
}

// Logit i after the repetition penalty.
fn lg(i: u32) -> f32 {
    if (p.penalty != 1.0) { return bitcast<f32>(scratch[i]); }
    return logits[p.offset + i];
}

// Order-preserving key of a float: a > b exactly when key(a) > key(b) (NaN excluded by callers).
fn key(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

// The running argmax (best, besti) after value v at index i (indices rising): NaN skipped.
fn take_max(best: ptr<function, f32>, besti: ptr<function, u32>, v: f32, i: u32) {
    if (v > *best || (*besti == 0xffffffffu && v == v)) {
        *best = v;
        *besti = i;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    let chunk = (p.vocab + 255u) / 256u;
    let lo = min(li * chunk, p.vocab);
    let hi = min(lo + chunk, p.vocab);
    if (p.penalty != 1.0) {
        for (var i = li; i < p.vocab; i += 256u) {
            scratch[i] = bitcast<u32>(logits[p.offset + i]);
            scratch[p.vocab + i] = 0u;
        }
        storageBarrier();
        for (var j = li; j < p.n_recent; j += 256u) {
            let id = hist[p.recent0 + j];
            if (id < p.vocab) { scratch[p.vocab + id] = 1u; }
        }
        storageBarrier();
        for (var i = li; i < p.vocab; i += 256u) {
            if (scratch[p.vocab + i] != 0u) {
                let v = bitcast<f32>(scratch[i]);
                scratch[i] = bitcast<u32>(select(v * p.penalty, v / p.penalty, v > 0.0));
            }
        }
        storageBarrier();
    }
    // Argmax, lowest index on ties; NaN logits are skipped. Eight loads are issued before any is
    // compared (indices still rising per thread, so the first of equal values stays): one thread
    // walking 128k logits a load at a time cost ~200 us per token on the H200.
    var best = -3.4e38;
    var besti = 0xffffffffu;
    var i0 = li;
    for (; i0 + 7u * 256u < p.vocab; i0 += 8u * 256u) {
        let v0 = lg(i0);
        let v1 = lg(i0 + 256u);
        let v2 = lg(i0 + 512u);
        let v3 = lg(i0 + 768u);
        let v4 = lg(i0 + 1024u);
        let v5 = lg(i0 + 1280u);
        let v6 = lg(i0 + 1536u);
        let v7 = lg(i0 + 1792u);
        take_max(&best, &besti, v0, i0);
        take_max(&best, &besti, v1, i0 + 256u);
        take_max(&best, &besti, v2, i0 + 512u);
        take_max(&best, &besti, v3, i0 + 768u);
        take_max(&best, &besti, v4, i0 + 1024u);
        take_max(&best, &besti, v5, i0 + 1280u);
        take_max(&best, &besti, v6, i0 + 1536u);
        take_max(&best, &besti, v7, i0 + 1792u);
    }
    for (var i = i0; i < p.vocab; i += 256u) {
        take_max(&best, &besti, lg(i), i);
    }
    rv[li] = best;
    ri[li] = besti;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            let ov = rv[li + s];
            let oi = ri[li + s];
            if (oi != 0xffffffffu && (ri[li] == 0xffffffffu || ov > rv[li] || (ov == rv[li] && oi < ri[li]))) {
                rv[li] = ov;
                ri[li] = oi;
            }
        }
        workgroupBarrier();
    }
    let mx = rv[0];
    let argmax = ri[0];
    workgroupBarrier();
    if (p.temperature <= 0.0) {
        if (li == 0u) { out[0] = select(argmax, 0u, argmax == 0xffffffffu); }
        return;
    }
    let inv_t = 1.0 / p.temperature;
    let min_w = max(p.min_p, 0.0);
    // One pass: every weight's bin (8 per octave below the maximum, bin_of) counted, and the sum
    // of the weights.
    atomicStore(&hcnt[li], 0u);
    if (li == 0u) { atomicStore(&ncand, 0u); }
    workgroupBarrier();
    var zs = 0.0;
    for (var i = li; i < p.vocab; i += 256u) {
        let v = lg(i);
        if (v == v) {
            let w = exp((v - mx) * inv_t);
            zs += w;
            atomicAdd(&hcnt[bin_of(w)], 1u);
        }
    }
    let z_all = reduce_sum(li, zs);
    // Which bins can hold a kept token (thread 0 decides; bins ascend as weights fall): top-k's
    // all lie at or above the bin where the count reaches k; min-p's at or above min_p's bin;
    // top-p's at or above the first bin where a lower bound of the mass reaches top_p of the
    // total (a smaller nucleus, as after top-k, lies inside it). When the tokens of those bins fit
    // in workgroup memory they are listed and the filters' bisections run over the list;
    // otherwise (or with no filter) over the whole row.
    if (li == 0u) {
        var last = 255u;
        var cum = 0u;
        var low = 0.0;
        var n = 0u;
        let bmin = select(255u, bin_of(min_w), min_w > 0.0);
        var found = false;
        for (var bi = 0u; bi < 256u; bi++) {
            let c = atomicLoad(&hcnt[bi]);
            cum += c;
            low += f32(c) * 0.99 * exp2(-f32(bi + 1u) / 8.0);
            if (!found) {
                n = cum;
                last = bi;
                if (p.top_k > 0u) {
                    found = cum >= p.top_k;
                } else {
                    found = bi >= bmin || (p.top_p < 1.0 && low >= p.top_p * z_all);
                }
            }
        }
        let any = p.top_k > 0u || p.top_p < 1.0 || min_w > 0.0;
        plan = vec2<u32>(select(0u, 1u, any && n <= CAP), last);
    }
    let pl = workgroupUniformLoad(&plan);
    let listed = pl.x == 1u;
    if (listed) {
        for (var i = li; i < p.vocab; i += 256u) {
            let v = lg(i);
            if (v == v && bin_of(exp((v - mx) * inv_t)) <= pl.y) {
                cand[atomicAdd(&ncand, 1u)] = v;
            }
        }
    }
    workgroupBarrier();
    if (li == 0u) { ncand_u = atomicLoad(&ncand); }
    let nc = workgroupUniformLoad(&ncand_u);
    // Top-k: the largest key kth with at least top_k logits at or above it (0: keep all);
    // 32 halvings of the 2^32 keys meet (a fixed count keeps the barriers in uniform control).
    var kth = 0u;
    if (p.top_k > 0u) {
        var a = 0u;
        var b = 0xffffffffu;
        for (var it = 0u; it < 32u; it++) {
            let mid = a + (b - a) / 2u + ((b - a) & 1u);
            var c = 0u;
            if (listed) {
                for (var j = li; j < nc; j += 256u) { c += select(0u, 1u, key(cand[j]) >= mid); }
            } else {
                for (var i = li; i < p.vocab; i += 256u) {
                    let v = lg(i);
                    if (v == v && key(v) >= mid) { c += 1u; }
                }
            }
            let n = u32(reduce_sum(li, f32(c))); // (counts up to the vocabulary: exact in f32)
            if (a < b) {
                if (n >= p.top_k) { a = mid; } else { b = mid - 1u; }
            }
        }
        kth = a;
    }
    // The mass top-k keeps.
    var z = z_all;
    if (p.top_k > 0u) {
        var zk = 0.0;
        if (listed) {
            for (var j = li; j < nc; j += 256u) {
                if (key(cand[j]) >= kth) { zk += exp((cand[j] - mx) * inv_t); }
            }
        } else {
            for (var i = li; i < p.vocab; i += 256u) {
                let v = lg(i);
                if (v == v && key(v) >= kth) { zk += exp((v - mx) * inv_t); }
            }
        }
        z = reduce_sum(li, zk);
    }
    // Top-p: bisection on the weight threshold tau, over the tokens min-p also keeps (if the
    // nucleus would reach below them, min-p removes what it adds anyway).
    var tlo = 0.0;
    var thi = 1.0;
    if (p.top_p < 1.0) {
        let goal = p.top_p * z;
        for (var it = 0u; it < 32u; it++) {
            let mid = 0.5 * (tlo + thi);
            var mass = 0.0;
            if (listed) {
                for (var j = li; j < nc; j += 256u) {
                    let w = exp((cand[j] - mx) * inv_t);
                    if (key(cand[j]) >= kth && w >= mid && w >= min_w) { mass += w; }
                }
            } else {
                for (var i = li; i < p.vocab; i += 256u) {
                    let v = lg(i);
                    let w = exp((v - mx) * inv_t);
                    if (v == v && key(v) >= kth && w >= mid && w >= min_w) { mass += w; }
                }
            }
            if (reduce_sum(li, mass) >= goal) { tlo = mid; } else { thi = mid; }
        }
    }
    let tau = max(tlo, min_w);
    // Inverse CDF over the kept tokens in vocabulary order.
    var mine = 0.0;
    for (var i = lo; i < hi; i++) {
        let v = lg(i);
        let w = exp((v - mx) * inv_t);
        if (v == v && key(v) >= kth && w >= tau) { mine += w; }
    }
    rv[li] = mine;
    workgroupBarrier();
    if (li == 0u) {
        var total = 0.0;
        for (var j = 0u; j < 256u; j++) { total += rv[j]; }
        bcast = total;
    }
    workgroupBarrier();
    let goal = p.uniform * bcast;
    var before = 0.0;
    for (var j = 0u; j < li; j++) { before += rv[j]; }
    if (goal >= before && goal < before + mine) {
        var acc = before;
        var pick = 0xffffffffu;
        var last = 0xffffffffu;
        for (var i = lo; i < hi; i++) {
            let v = lg(i);
            let w = exp((v - mx) * inv_t);
            if (v == v && key(v) >= kth && w >= tau) {
                last = i;
                acc += w;
                if (acc > goal) { pick = i; break; }
            }
        }
        if (pick == 0xffffffffu) { pick = last; }
        out[0] = pick;
    }
    // Rounding can leave the goal past the total: fall back to the argmax (always kept).
    if (li == 255u && goal >= before + mine) {
        out[0] = argmax;
    }
}
