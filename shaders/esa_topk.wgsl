// esa_topk: indices of the k largest of n scores, ascending by index, all on the GPU.
// Ranking key: the float bits mapped to a u32 in float order (see key_of) of each score, or with
// eps > 0 of its max-pool over |i' - i| <= eps (ESA's proximity pooling, done here); NaN never selected;
// ties at the threshold go to the lower index; k >= (non-NaN count) selects every non-NaN score.
//
// Radix select, 11, 11 and 10 bits per pass from the top (3 passes), then a stable compaction:
//   hist_pass    : pass j = p.pass_: first every workgroup applies histogram j - 1 to slot j - 1
//                  (the digit that holds the k_rem-th largest: a suffix scan over the 2048 bins),
//                  giving slot j, which workgroup 0 also stores (slot 0, (prefix 0, k_rem k, ...),
//                  comes from the parameters); then the histogram of digit j of the keys whose
//                  higher digits equal slot j's prefix.
//                  Dispatch (n_hist_groups) x 256 threads, grid-stride over n.
//   block_count  : apply histogram 2 to slot 2 (workgroup 0 stores the result as the final
//                  state): threshold key T = prefix, take_eq = k_rem elements equal to T (lowest
//                  indices), count = min(k, valid); then per block of BLOCK scores, count
//                  (key > T) and (key == T).                                       Dispatch (n_blocks).
//   compact      : each workgroup sums the counts of the blocks before its own, then
//                  out[#selected before i] = i + offset for each selected i.   Dispatch (n_blocks).
//   init         : only for n = 0 (nothing to select): the final state (count 0), histograms 0.
// The three histograms are zero when a selection starts: each is cleared by workgroup 0 of the
// second dispatch after the last one that reads it (hist_pass 2 clears histogram 0, block_count
// histogram 1, compact 2), and a new scratch buffer is zero.
// (Before session 7 a one-workgroup `select_digit` dispatch followed each histogram: the selection
// is now redone by the workgroups that need it; since session 9 neither an `init` nor a
// one-workgroup `block_scan` dispatch runs; since session 14 three passes of 11 bits instead of
// four of 8 (2048-bin histograms: a dependent dispatch fewer per selection): 5 dispatches, 11 at
// first.)
// Selected i: key > T, or key == T and fewer than take_eq keys equal to T precede it. Position =
// gt_before(i) + min(eq_before(i), take_eq), so the output is already sorted by index.
// Layout: scores [n] f32; state [8 + 8 * 3] u32: the final state, then slots 0-2 (the state after
//         j passes), each (prefix/T, k_rem/take_eq, pass, done, count, valid, k, _);
//         hist [3][2048] u32; blocks [2 * n_blocks] u32 (gt, eq); out [>= min(k, n)] u32.
// Every entry point uses all five bindings (so they share one binding order).

struct Params {
    n: u32,
    k: u32,
    offset: u32,
    n_blocks: u32,
    n_threads: u32, // hist: total threads of the grid-stride loop
    pass_: u32, // hist_pass: the digit (0 = top byte)
    eps: u32, // > 0: rank the scores max-pooled over |i' - i| <= eps (esa_pool.wgsl's values)
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> blocks: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

// Small blocks, so that a decode step's ~30 000 scores make ~30 workgroups, not 7 (H200, 8B at
// 32k, session 13: 16 items per thread left block_count and compact at 12 and 17 us a layer).
const ITEMS: u32 = 4u;           // scores per thread in a block
const BLOCK: u32 = 1024u;        // 256 * ITEMS

const PASSES: u32 = 3u;
const BINS: u32 = 2048u;          // bins of a histogram (the 10-bit last pass uses 1024)
const BPT: u32 = BINS / 256u;     // bins per thread

// Pass j's digit: bits shift(j) .. shift(j) + width(j) - 1 of the key.
fn digit_shift(j: u32) -> u32 { return select(select(0u, 10u, j == 1u), 21u, j == 0u); }
fn digit_width(j: u32) -> u32 { return select(11u, 10u, j == 2u); }

var<workgroup> lh: array<atomic<u32>, BINS>;
var<workgroup> ws: array<u32, 8>; // the state this workgroup works with
var<workgroup> cnt: array<u32, 256>;
var<workgroup> scan: array<vec2<u32>, 256>;

fn touch() {
    _ = p.n;
    _ = arrayLength(&scores);
    _ = arrayLength(&state);
    _ = arrayLength(&hist);
    _ = arrayLength(&blocks);
    _ = arrayLength(&out);
}

// Score i as ranked: itself, or (eps > 0) the maximum of scores[i - eps ..= i + eps] clipped to
// [0, n), exactly as esa_pool.wgsl writes it, so ESA's pooling needs no dispatch of its own.
fn score(i: u32) -> f32 {
    if (p.eps == 0u) { return scores[i]; }
    let lo = i - min(i, p.eps);
    let hi = i + min(p.eps, p.n - 1u - i);
    var v = scores[lo];
    for (var j = lo + 1u; j <= hi; j++) { v = max(v, scores[j]); }
    return v;
}

// Float -> u32 in float order (same as reference::esa::sortable_key).
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn is_valid(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) <= 0x7f800000u; // not NaN
}

// Word `w` of state slot `j` (0-2: after j passes; PASSES: the final state at the front).
fn slot_at(j: u32, w: u32) -> u32 {
    return select(8u + 8u * j + w, w, j == PASSES);
}

// Word w of slot 0, the state before any pass: (prefix, k_rem, pass, done, count, valid, k, _);
// k = 0: nothing selected, no key exceeds the largest and take_eq = 0.
fn slot0(w: u32) -> u32 {
    var v = array<u32, 8>(0u, p.k, 0u, 0u, 0u, 0u, p.k, 0u);
    if (p.k == 0u) {
        v[0] = 0xffffffffu;
        v[3] = 1u;
    }
    return v[w];
}

// Workgroup 0 of a dispatch clears histogram j (every thread BPT bins).
fn clear_hist(j: u32, li: u32, wg0: bool) {
    if (wg0) {
        for (var r = 0u; r < BPT; r++) { atomicStore(&hist[BINS * j + BPT * li + r], 0u); }
    }
}

@compute @workgroup_size(256)
fn init(@builtin(local_invocation_index) li: u32) {
    touch();
    for (var j = 0u; j < PASSES; j++) { clear_hist(j, li, true); }
    if (li < 8u) {
        state[slot_at(0u, li)] = slot0(li);
        state[slot_at(PASSES, li)] = slot0(li);
    }
}

// ws <- slot j - 1 with histogram j - 1 applied (slot j); j = 0: slot 0 (`slot0`). Every
// thread of the workgroup calls it (it scans the 256 bins). For j > 0 workgroup 0 stores the
// result in slot `dst` (the other workgroups read only earlier slots, from earlier dispatches).
fn advance(j: u32, dst: u32, li: u32, wg0: bool) {
    // the source slot j - 1, slot 0 coming from the parameters (no dispatch stores it)
    if (li < 8u) { ws[li] = select(state[slot_at(max(j, 1u) - 1u, li)], slot0(li), j <= 1u); }
    workgroupBarrier();
    if (j > 0u) {
        let running = ws[3] == 0u;
        let k_rem = ws[1];
        let pass_ = j - 1u;
        // Thread li takes the BPT bins top - BPT li - r, r = 0 .. BPT - 1 (descending): its
        // inclusive sum is the count of bins >= its last one.
        let top = BINS - 1u;
        var cs: array<u32, BPT>;
        var own = 0u;
        for (var r = 0u; r < BPT; r++) {
            cs[r] = atomicLoad(&hist[BINS * pass_ + top - BPT * li - r]);
            own += cs[r];
        }
        let incl = scan_inclusive(li, vec2<u32>(own, 0u)).x;
        let total = scan[255].x;
        workgroupBarrier(); // every thread has read ws
        if (running) {
            let all = pass_ == 0u && total <= k_rem;
            if (li == 0u) {
                if (pass_ == 0u) { ws[5] = total; }
                if (all) {
                    // Every valid score is selected: threshold 0 is below every valid key.
                    ws[0] = 0u;
                    ws[1] = 0u;
                    ws[3] = 1u;
                    ws[4] = total;
                } else {
                    if (pass_ == 0u) { ws[4] = k_rem; }
                    ws[2] = pass_ + 1u;
                    if (pass_ == PASSES - 1u) { ws[3] = 1u; }
                }
            }
            // The digit: the one bin with (count of higher bins) < k_rem <= (that + its own).
            var above = incl - own;
            for (var r = 0u; r < BPT; r++) {
                if (!all && above < k_rem && above + cs[r] >= k_rem) {
                    ws[0] = ws[0] | ((top - BPT * li - r) << digit_shift(pass_));
                    ws[1] = k_rem - above;
                }
                above += cs[r];
            }
        }
        workgroupBarrier();
    }
    if (wg0 && j > 0u && li < 8u) { state[slot_at(dst, li)] = ws[li]; }
}

@compute @workgroup_size(256)
fn hist_pass(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    let pass_ = p.pass_;
    for (var r = 0u; r < BPT; r++) { atomicStore(&lh[BPT * li + r], 0u); }
    advance(pass_, pass_, li, wg.x == 0u);
    if (pass_ >= 2u) { clear_hist(pass_ - 2u, li, wg.x == 0u); }
    let running = ws[3] == 0u;
    let prefix = ws[0];
    let shift = digit_shift(pass_);
    let mask = (1u << digit_width(pass_)) - 1u;
    // Bits above the current digit must match the prefix (none in pass 0).
    let high = select(0xffffffffu << (shift + digit_width(pass_)), 0u, pass_ == 0u);
    // A thread counts a run of equal digits before adding it: in the first passes most keys share
    // one digit, and every add to the same workgroup bin waits for the one before it.
    var run_bin = 0u;
    var run_n = 0u;
    if (running) {
        for (var i = wg.x * 256u + li; i < p.n; i += p.n_threads) {
            let x = score(i);
            let key = key_of(x);
            if (is_valid(x) && (key & high) == (prefix & high)) {
                let b = (key >> shift) & mask;
                if (b != run_bin && run_n > 0u) {
                    atomicAdd(&lh[run_bin], run_n);
                    run_n = 0u;
                }
                run_bin = b;
                run_n += 1u;
            }
        }
    }
    if (run_n > 0u) { atomicAdd(&lh[run_bin], run_n); }
    workgroupBarrier();
    for (var r = 0u; r < BPT; r++) {
        let c = atomicLoad(&lh[BPT * li + r]);
        if (c != 0u) { atomicAdd(&hist[BINS * pass_ + BPT * li + r], c); }
    }
}

// Counts (key > T, key == T) among the ITEMS scores of thread li in block b.
fn thread_counts(b: u32, li: u32, t: u32) -> vec2<u32> {
    var c = vec2<u32>(0u);
    let base = b * BLOCK + li * ITEMS;
    for (var j = 0u; j < ITEMS; j++) {
        let i = base + j;
        if (i < p.n) {
            let x = score(i);
            let key = key_of(x);
            if (is_valid(x)) {
                c += vec2<u32>(select(0u, 1u, key > t), select(0u, 1u, key == t));
            }
        }
    }
    return c;
}

// Inclusive workgroup scan of scan[] (Hillis-Steele); returns this thread's inclusive value.
fn scan_inclusive(li: u32, v: vec2<u32>) -> vec2<u32> {
    scan[li] = v;
    workgroupBarrier();
    for (var s = 1u; s < 256u; s <<= 1u) {
        var add = vec2<u32>(0u);
        if (li >= s) { add = scan[li - s]; }
        workgroupBarrier();
        scan[li] += add;
        workgroupBarrier();
    }
    return scan[li];
}

@compute @workgroup_size(256)
fn block_count(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    advance(PASSES, PASSES, li, wg.x == 0u);
    clear_hist(PASSES - 2u, li, wg.x == 0u);
    let c = thread_counts(wg.x, li, ws[0]);
    let total = scan_inclusive(li, c);
    if (li == 255u) {
        blocks[2u * wg.x] = total.x;
        blocks[2u * wg.x + 1u] = total.y;
    }
}

@compute @workgroup_size(256)
fn compact(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    clear_hist(PASSES - 1u, li, wg.x == 0u);
    let t = state[0];
    let take = state[1];
    // the counts of the blocks before this one (block_count's totals)
    var prior = vec2<u32>(0u);
    for (var b = li; b < wg.x; b += 256u) { prior += vec2<u32>(blocks[2u * b], blocks[2u * b + 1u]); }
    let c = thread_counts(wg.x, li, t);
    scan_inclusive(li, prior);
    let before_block = scan[255];
    workgroupBarrier(); // every thread has read the total before the next scan reuses `scan`
    let inc = scan_inclusive(li, c);
    var before = before_block + inc - c;
    let base = wg.x * BLOCK + li * ITEMS;
    for (var j = 0u; j < ITEMS; j++) {
        let i = base + j;
        if (i < p.n) {
            let x = score(i);
            let key = key_of(x);
            if (is_valid(x)) {
                if (key > t) {
                    out[before.x + min(before.y, take)] = i + p.offset;
                    before.x += 1u;
                } else if (key == t) {
                    if (before.y < take) { out[before.x + before.y] = i + p.offset; }
                    before.y += 1u;
                }
            }
        }
    }
}
