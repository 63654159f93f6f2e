// esa_topk: indices of the k largest of n scores, ascending by index, all on the GPU.
// Ranking key: the float bits mapped to a u32 in float order (see key_of); NaN never selected;
// ties at the threshold go to the lower index; k >= (non-NaN count) selects every non-NaN score.
//
// Radix select, 8 bits per pass from the top (4 passes), then a stable compaction:
//   init         : state <- (prefix 0, k_rem k, pass 0), hist <- 0.            Dispatch (1).
//   hist         : histogram of digit `pass` of the keys whose higher digits equal the prefix.
//                  Dispatch (n_hist_groups) x 256 threads, grid-stride over n.
//   select       : pick the digit holding the k_rem-th largest, update prefix / k_rem, clear hist.
//                  Dispatch (1). After 4 passes: threshold key T = prefix, take_eq = k_rem elements
//                  equal to T (lowest indices), count = min(k, valid) written to state.
//   block_count  : per block of 4096 scores, count (key > T) and (key == T).  Dispatch (n_blocks).
//   block_scan   : exclusive prefix over blocks of both counts, in place.      Dispatch (1).
//   compact      : out[#selected before i] = i + offset for each selected i.   Dispatch (n_blocks).
// Selected i: key > T, or key == T and fewer than take_eq keys equal to T precede it. Position =
// gt_before(i) + min(eq_before(i), take_eq), so the output is already sorted by index.
// Layout: scores [n] f32; state [8] u32 = (prefix/T, k_rem/take_eq, pass, done, count, valid, k, _);
//         hist [256] u32; blocks [2 * n_blocks] u32 (gt, eq); out [>= min(k, n)] u32.
// Every entry point uses all five bindings (so they share one binding order).

struct Params {
    n: u32,
    k: u32,
    offset: u32,
    n_blocks: u32,
    n_threads: u32, // hist: total threads of the grid-stride loop
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> blocks: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

const ITEMS: u32 = 16u;          // scores per thread in a block
const BLOCK: u32 = 4096u;        // 256 * ITEMS

var<workgroup> lh: array<atomic<u32>, 256>;
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

// Float -> u32 in float order (same as reference::esa::sortable_key).
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn is_valid(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) <= 0x7f800000u; // not NaN
}

@compute @workgroup_size(256)
fn init(@builtin(local_invocation_index) li: u32) {
    touch();
    atomicStore(&hist[li], 0u);
    if (li == 0u) {
        state[0] = 0u;
        state[1] = p.k;
        state[2] = 0u;
        state[3] = 0u;
        state[4] = 0u;
        state[5] = 0u;
        state[6] = p.k;
        state[7] = 0u;
        if (p.k == 0u) {
            // Nothing selected: no key exceeds the largest, and take_eq = 0.
            state[0] = 0xffffffffu;
            state[3] = 1u;
        }
    }
}

@compute @workgroup_size(256)
fn hist_pass(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    atomicStore(&lh[li], 0u);
    workgroupBarrier();
    let pass_ = state[2];
    let running = state[3] == 0u;
    let prefix = state[0];
    let shift = 24u - 8u * min(pass_, 3u);
    // Bits above the current digit must match the prefix (none in pass 0).
    let high = select(0xffffffffu << (shift + 8u), 0u, pass_ == 0u);
    if (running) {
        for (var i = wg.x * 256u + li; i < p.n; i += p.n_threads) {
            let x = scores[i];
            let key = key_of(x);
            if (is_valid(x) && (key & high) == (prefix & high)) {
                atomicAdd(&lh[(key >> shift) & 0xffu], 1u);
            }
        }
    }
    workgroupBarrier();
    let c = atomicLoad(&lh[li]);
    if (c != 0u) { atomicAdd(&hist[li], c); }
}

@compute @workgroup_size(256)
fn select_digit(@builtin(local_invocation_index) li: u32) {
    touch();
    cnt[li] = atomicLoad(&hist[li]);
    workgroupBarrier();
    atomicStore(&hist[li], 0u); // ready for the next pass
    if (li != 0u || state[3] != 0u) { return; }
    let pass_ = state[2];
    var k_rem = state[1];
    if (pass_ == 0u) {
        var total = 0u;
        for (var b = 0u; b < 256u; b++) { total += cnt[b]; }
        state[5] = total;
        if (total <= k_rem) {
            // Every valid score is selected: threshold 0 is below every valid key.
            state[0] = 0u;
            state[1] = 0u;
            state[3] = 1u;
            state[4] = total;
            return;
        }
        state[4] = k_rem;
    }
    let shift = 24u - 8u * pass_;
    var above = 0u;
    var digit = 0u;
    for (var b = 255i; b >= 0i; b--) {
        let c = cnt[u32(b)];
        if (above + c >= k_rem) { digit = u32(b); break; }
        above += c;
    }
    state[0] = state[0] | (digit << shift);
    state[1] = k_rem - above;
    state[2] = pass_ + 1u;
    if (pass_ == 3u) { state[3] = 1u; }
}

// Counts (key > T, key == T) among the ITEMS scores of thread li in block b.
fn thread_counts(b: u32, li: u32, t: u32) -> vec2<u32> {
    var c = vec2<u32>(0u);
    let base = b * BLOCK + li * ITEMS;
    for (var j = 0u; j < ITEMS; j++) {
        let i = base + j;
        if (i < p.n) {
            let x = scores[i];
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
    let c = thread_counts(wg.x, li, state[0]);
    let total = scan_inclusive(li, c);
    if (li == 255u) {
        blocks[2u * wg.x] = total.x;
        blocks[2u * wg.x + 1u] = total.y;
    }
}

@compute @workgroup_size(256)
fn block_scan(@builtin(local_invocation_index) li: u32) {
    touch();
    var carry = vec2<u32>(0u);
    for (var b0 = 0u; b0 < p.n_blocks; b0 += 256u) {
        let b = b0 + li;
        var v = vec2<u32>(0u);
        if (b < p.n_blocks) { v = vec2<u32>(blocks[2u * b], blocks[2u * b + 1u]); }
        let inc = scan_inclusive(li, v);
        if (b < p.n_blocks) {
            let ex = carry + inc - v;
            blocks[2u * b] = ex.x;
            blocks[2u * b + 1u] = ex.y;
        }
        carry += scan[255];
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn compact(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    touch();
    let t = state[0];
    let take = state[1];
    let c = thread_counts(wg.x, li, t);
    let inc = scan_inclusive(li, c);
    var before = vec2<u32>(blocks[2u * wg.x], blocks[2u * wg.x + 1u]) + inc - c;
    let base = wg.x * BLOCK + li * ITEMS;
    for (var j = 0u; j < ITEMS; j++) {
        let i = base + j;
        if (i < p.n) {
            let x = scores[i];
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
