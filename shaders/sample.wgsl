// sample: pick the next token from one row of logits: greedy (temperature <= 0) or temperature +
// top-p (nucleus) sampling with a uniform random number supplied by the host.
// Nucleus: the tokens whose probability is >= tau, for the largest tau whose such tokens hold at
// least top_p of the mass (found by bisection; ties at the boundary are kept together). The token
// is then chosen by inverse CDF over the nucleus in vocabulary order.
// Dispatch: one workgroup of 256 threads; thread i owns the contiguous vocabulary range
// [i * chunk, (i+1) * chunk).
// Layout: logits [vocab] f32 (at offset `offset`); out [1] u32.

struct Params {
    vocab: u32,
    offset: u32,
    temperature: f32,
    top_p: f32,
    uniform: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> rv: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> bcast: f32;

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

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    let chunk = (p.vocab + 255u) / 256u;
    let lo = min(li * chunk, p.vocab);
    let hi = min(lo + chunk, p.vocab);
    // Argmax, lowest index on ties; NaN logits are skipped.
    var best = -3.4e38;
    var besti = 0xffffffffu;
    for (var i = lo; i < hi; i++) {
        let v = logits[p.offset + i];
        if (v > best || (besti == 0xffffffffu && v == v)) { best = v; besti = i; }
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
    var z = 0.0;
    for (var i = lo; i < hi; i++) {
        let v = logits[p.offset + i];
        if (v == v) { z += exp((v - mx) * inv_t); }
    }
    z = reduce_sum(li, z);
    // Bisection on the probability threshold tau.
    var tlo = 0.0;
    var thi = 1.0;
    if (p.top_p < 1.0) {
        for (var it = 0u; it < 32u; it++) {
            let mid = 0.5 * (tlo + thi);
            var mass = 0.0;
            for (var i = lo; i < hi; i++) {
                let v = logits[p.offset + i];
                let pr = exp((v - mx) * inv_t) / z;
                if (v == v && pr >= mid) { mass += pr; }
            }
            mass = reduce_sum(li, mass);
            if (mass >= p.top_p) { tlo = mid; } else { thi = mid; }
        }
    }
    // Inverse CDF over the nucleus in vocabulary order.
    var mine = 0.0;
    for (var i = lo; i < hi; i++) {
        let v = logits[p.offset + i];
        let pr = exp((v - mx) * inv_t) / z;
        if (v == v && pr >= tlo) { mine += pr; }
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
            let v = logits[p.offset + i];
            let pr = exp((v - mx) * inv_t) / z;
            if (v == v && pr >= tlo) {
                last = i;
                acc += pr;
                if (acc > goal) { pick = i; break; }
            }
        }
        if (pick == 0xffffffffu) { pick = last; }
        out[0] = pick;
    }
    // Rounding can leave the goal past the total: fall back to the argmax (always in the nucleus).
    if (li == 255u && goal >= before + mine) {
        out[0] = argmax;
    }
}
