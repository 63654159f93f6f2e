// argmax: greedy sampling without a repetition penalty (sample.wgsl's temperature <= 0 case) in one
// dispatch spread over workgroups: the index of the largest logit, lowest index on ties, NaN
// skipped (0 if every logit is NaN).
//
// Why not sample.wgsl: one workgroup walking a 128k-logit row issues ~60 rounds of loads one
// after another (~50 us per token on the H200). Here each workgroup takes 2 048 logits, eight
// loads per thread all in flight at once, reduces them in workgroup memory and writes its
// (value, index); the last workgroup to count itself in (an atomic counter, after a device-scope
// barrier) reduces those and writes the id, then sets the counter back to zero.
// Dispatch: ceil(vocab / 2048) workgroups of 256 threads.
// Layout: logits [vocab] f32 at `offset`; out [1] u32; scratch u32 as atomics: [2 w], [2 w + 1] =
// workgroup w's best value (f32 bits) and index; [counter] the counter (zero between dispatches;
// placed past everything sample.wgsl writes, so the two kernels share the scratch).

struct Params {
    vocab: u32,
    offset: u32,
    n_wg: u32,
    counter: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read_write> scratch: array<atomic<u32>>;

const NONE: u32 = 0xffffffffu;
var<workgroup> rv: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> last: u32;

// Whether (v, i) beats (b, bi): a number where there was none, a larger one, or an equal one at a
// lower index; NaN never.
fn beats(v: f32, i: u32, b: f32, bi: u32) -> bool {
    return i != NONE && v == v && (bi == NONE || v > b || (v == b && i < bi));
}

// The workgroup's best of every thread's (best, besti), in rv[0], ri[0].
fn reduce(li: u32, best: f32, besti: u32) {
    rv[li] = best;
    ri[li] = besti;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s && beats(rv[li + s], ri[li + s], rv[li], ri[li])) {
            rv[li] = rv[li + s];
            ri[li] = ri[li + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wg.x * 2048u + li;
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        v[j] = logits[p.offset + min(base + 256u * j, p.vocab - 1u)];
    }
    var best = 0.0;
    var besti = NONE;
    for (var j = 0u; j < 8u; j++) {
        let i = base + 256u * j;
        if (i < p.vocab && beats(v[j], i, best, besti)) {
            best = v[j];
            besti = i;
        }
    }
    reduce(li, best, besti);
    if (li == 0u) {
        atomicStore(&scratch[2u * wg.x], bitcast<u32>(rv[0]));
        atomicStore(&scratch[2u * wg.x + 1u], ri[0]);
    }
    storageBarrier();
    if (li == 0u) {
        last = select(0u, 1u, atomicAdd(&scratch[p.counter], 1u) == p.n_wg - 1u);
    }
    if (workgroupUniformLoad(&last) == 0u) { return; }
    storageBarrier();
    best = 0.0;
    besti = NONE;
    for (var w = li; w < p.n_wg; w += 256u) {
        let b = bitcast<f32>(atomicLoad(&scratch[2u * w]));
        let bi = atomicLoad(&scratch[2u * w + 1u]);
        if (beats(b, bi, best, besti)) {
            best = b;
            besti = bi;
        }
    }
    reduce(li, best, besti);
    if (li == 0u) {
        out[0] = select(ri[0], 0u, ri[0] == NONE);
        atomicStore(&scratch[p.counter], 0u);
    }
}
