//! ESA gathered sparse attention (shaders/esa_attention.wgsl, merged by attention_merge.wgsl): a
//! chunk of queries attends to the initial tokens and the selected middle tokens (keys at position
//! 0, queries at `w`) and to the local window plus the causal chunk (ordinary RoPE), with one
//! softmax over all of them; GQA (each key loaded and rotated once for up to 4 query heads of its
//! group); split over keys for long lists.
//!
//! Queries are read UN-rotated (e.g. straight from the fused QKV projection, `q_stride` apart) and
//! rotated in the kernel both ways. KV cache layout as in `ops::attention`: `[rows][n_kv][d/2]` u32
//! (f16 pairs), keys un-rotated. The selection (`sel`, cache rows sorted or not) and its count stay
//! on the GPU: the count is read from `state[count_index]` (e.g. `esa_topk::STATE_COUNT` of the
//! top-k state buffer), at most `max_sel` entries.

use crate::gpu::{BufRef, Recorder};
use crate::{Error, Result};


#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    pos0: u32,
    n_init: u32,
    local_start: u32,
    max_sel: u32,
    count_index: u32,
    w: u32,
    q_stride: u32,
    n_split: u32,
    split_len: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// Mirrors `Params` of esa_attention_coop.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CoopParams {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    pos0: u32,
    n_init: u32,
    local_start: u32,
    max_sel: u32,
    count_index: u32,
    w: u32,
    q_stride: u32,
    scale: f32,
    rotate_q: u32,
    n_part: u32,
    splits0: u32,
    split_len: u32,
    rescale_at: f32,
}

/// How far (in scaled score units) a row's maximum may pass the reference that its probabilities
/// are taken against before `esa_attention_coop.wgsl` moves the reference and rescales the row's
/// output: P = exp(S - m_ref) <= e^8 ~ 3 000 stays well inside f16.
const COOP_RESCALE_AT: f32 = 8.0;

/// Most partials (key splits) per (query, head) of the cooperative-matrix attention, as many as
/// its scratch holds. `scratch_floats` and `attention::scratch_floats` hold `SCRATCH_PARTS`;
/// ESA's state, whose chunks are small (512 tokens: few rows, so few workgroups per split), sizes
/// for all 16 where the binding limit allows (`coop_scratch_floats`).
pub const COOP_MAX_PARTS: usize = 16;
/// Partials per (query, head) that the scratch sizes of `scratch_floats` hold at least.
pub const SCRATCH_PARTS: usize = 4;

/// Floats of scratch for `parts` partials of a chunk of `n_q` queries (cooperative-matrix kernel).
pub fn coop_scratch_floats(n_q: usize, n_heads: usize, head_dim: usize, parts: usize) -> usize {
    parts * n_q * n_heads * (head_dim + 2)
}
/// Keys per tile of the cooperative-matrix attention (`BC`): splits are multiples of it.
const COOP_TILE_KEYS: usize = 32;
/// Workgroups the key splits aim for: a few per compute unit of a large GPU, so each one's tile
/// loads overlap the others' products.
const COOP_TARGET_GROUPS: usize = 512;
/// The split aim of dense causal attention over a prefill chunk (`attention::attend_prefill_coop`),
/// whose keys are the chunk's own (and the cache's before it): as many splits as reach
/// `COOP_TARGET_GROUPS` workgroups while each split keeps 1 024 keys, but at least enough for 128
/// workgroups. Every split is a partial the merge reads, and short walks spend their time on fixed
/// costs. H200 (docs/perf.md, session 16), tok/s by splits: Llama-3-8B shape f16 at 512 tokens
/// (128 workgroups a split) 9 476 with one, 9 344 with two, 9 053 with four; at 4 096 (1 024
/// workgroups) 9 755 with one, 9 294 with two; SmolLM2 Q4_1 at 4 096 (288) 85 400 with one,
/// 97 900 with two; at 512 (36) 77 400-77 900 with four.
pub(crate) const DENSE_SPLITS: SplitAim = SplitAim { min_groups: 128, target_groups: COOP_TARGET_GROUPS, min_keys: 1024 };
/// ESA's chunk attention: `COOP_TARGET_GROUPS` workgroups, however short the splits.
pub(crate) const ESA_SPLITS: SplitAim = SplitAim { min_groups: COOP_TARGET_GROUPS, target_groups: COOP_TARGET_GROUPS, min_keys: 1 };

/// How `coop_splits` chooses the number of key splits: enough for `target_groups` workgroups as
/// long as each split keeps `min_keys` keys, and in any case enough for `min_groups`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitAim {
    pub min_groups: usize,
    pub target_groups: usize,
    pub min_keys: usize,
}

/// Key splits of the cooperative-matrix attention: (splits of the long-distance segment, of the
/// local one, keys per split). `keys0`, `keys1`: the most virtual keys of each segment;
/// `groups`: workgroups per split; `cap`: most partials the scratch holds.
/// `aim`: `ESA_SPLITS` or `DENSE_SPLITS`.
pub(crate) fn coop_splits(keys0: usize, keys1: usize, groups: usize, cap: usize, aim: SplitAim) -> (usize, usize, usize) {
    let total = (keys0 + keys1).max(1);
    let g = groups.max(1);
    let long = aim.target_groups.div_ceil(g).min(total.div_ceil(aim.min_keys.max(1)));
    let want = aim.min_groups.div_ceil(g).max(long).clamp(1, cap.max(1));
    let mut len = total.div_ceil(want).next_multiple_of(COOP_TILE_KEYS);
    loop {
        let (s0, s1) = (keys0.div_ceil(len), keys1.div_ceil(len).max(1));
        if s0 + s1 <= cap.max(2) {
            return (s0, s1, len);
        }
        len += COOP_TILE_KEYS;
    }
}

/// WGSL of `esa_attention_coop.wgsl` for one head size and `nsg` subgroups of 16 rows per
/// workgroup (constants: they size workgroup arrays). Public so tests can validate it where no
/// adapter runs it.
pub fn coop_source(head_dim: usize, nsg: usize) -> String {
    // S fragment of 16 keys (key row offset `kf`) += q_j x k_j^T over the head's D / 16 slices.
    let scores: String = (0..head_dim / 16)
        .map(|j| {
            format!(
                "            let ik{j} = kf + {}u;\n            let bk{j} = coopLoad<coop_mat16x16<f16, B>>(&ks[ik{j}], ld);\n            acc = coopMultiplyAdd(q{j}, bk{j}, acc);\n",
                4 * j
            )
        })
        .collect();
    let src = super::src::ESA_ATTENTION_COOP
        .replacen("const D: u32 = 64u;", &format!("const D: u32 = {head_dim}u;"), 1)
        .replacen("const NSG: u32 = 8u;", &format!("const NSG: u32 = {nsg}u;"), 1)
        .replace("            //@SCORES\n", &scores);
    super::with_prelude(&src, super::src::UNPACK_F16X8)
}

/// Subgroups (of 16 rows each) per workgroup of the cooperative-matrix attention: 8 (128 rows
/// share each staged key tile); 4 under the plain-WGSL emulation, whose kernel must fit lavapipe's
/// 32 KiB of workgroup memory (head sizes up to 64 there).
pub(crate) fn coop_subgroups(ctx: &crate::gpu::GpuContext) -> usize {
    if ctx.caps.coop_emulated { 4 } else { 8 }
}

/// Target number of workgroups when choosing the key split (as `ops::attention`).
const TARGET_GROUPS: usize = 1024;
/// Query heads sharing one KV head that one workgroup serves (`HG` in the kernel).
const HEADS_PER_GROUP: usize = 4;

/// Workgroups per key split: one per (query, KV head, chunk of up to HEADS_PER_GROUP heads).
fn rows_per_split(n_q: usize, n_heads: usize, n_kv: usize) -> usize {
    n_q * n_kv * (n_heads / n_kv).div_ceil(HEADS_PER_GROUP)
}

fn max_split(n_q: usize, n_heads: usize, n_kv: usize) -> usize {
    (TARGET_GROUPS / rows_per_split(n_q, n_heads, n_kv).max(1)).max(1)
}

/// Floats of scratch the partial results need for any chunk of at most `n_q` queries.
pub fn scratch_floats(n_q: usize, n_heads: usize, n_kv: usize, head_dim: usize) -> usize {
    // Partials of a chunk of m queries: m * n_heads * max_split(m) rows, and max_split grows as m
    // shrinks (m * max_split(m) <= TARGET_GROUPS / workgroups-per-query). Size for the worst chunk
    // of at most n_q queries, so a buffer sized for the prefill chunk also serves the shorter last
    // chunk and the decode steps after it.
    // The cooperative-matrix variant writes up to SCRATCH_PARTS partials (key splits) per query
    // into a scratch of this size.
    let per_query = rows_per_split(1, n_heads, n_kv).max(1);
    (SCRATCH_PARTS * n_q).max(TARGET_GROUPS / per_query).max(1) * n_heads * (head_dim + 2)
}

/// The selected middle tokens on the GPU.
pub struct Selection<'a> {
    /// Cache rows of the selected tokens (`[>= max_sel]` u32).
    pub indices: &'a BufRef,
    /// Buffer holding the count at word `count_index`.
    pub state: &'a BufRef,
    pub count_index: usize,
    /// Upper bound of the count (sizes the key split), e.g. top_k.
    pub max_sel: usize,
}

pub struct EsaAttend<'a> {
    /// Un-rotated queries: row t at `t * q_stride` floats, head h at `h * head_dim` in it.
    pub q: &'a BufRef,
    pub q_stride: usize,
    pub k_cache: &'a BufRef,
    pub v_cache: &'a BufRef,
    pub inv_freq: &'a wgpu::Buffer,
    /// `None`: no selected tokens (dense case, or only sinks + local).
    pub selection: Option<Selection<'a>>,
    /// Scratch of `scratch_floats(n_q, n_heads, n_kv, head_dim)` floats.
    pub part: &'a BufRef,
    /// Output `[n_q][n_heads][head_dim]` f32.
    pub out: &'a BufRef,
    pub n_q: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Position (cache row) of the first query; query t sees the local rows up to pos0 + t.
    pub pos0: usize,
    /// Initial tokens `[0, n_init)` attended at the long-distance positions (0 in the dense case).
    pub n_init: usize,
    /// First row of the local window (`pos0 - n_local`, or 0 in the dense case).
    pub local_start: usize,
    /// Position of the queries in the long-distance part.
    pub w: usize,
    /// Softmax scale of the scores: `Config::attention_scale` (1/sqrt(head_dim), times YaRN's
    /// attention factor squared).
    pub scale: f32,
}

/// `esa_attention_coop.wgsl` + merge: one partial per key segment (long-distance, local) on
/// cooperative matrices. `selection`: (indices, state, count_index, max_sel), any read-only buffers
/// with max_sel 0 when nothing is selected. `rotate_q`: false when `a.q` holds queries already
/// rotated to their positions (dense attention, which has no long-distance part).
/// `aim`: how many key splits (`coop_splits`); `ESA_WGPU_ATTN_GROUPS=N` aims at N workgroups
/// instead (however short the splits), for sweeps on a device.
pub(crate) fn attend_coop(rec: &mut Recorder, a: &EsaAttend, (sel, state, count_index, max_sel): (BufRef, BufRef, usize, usize), rotate_q: bool, aim: SplitAim) -> Result<()> {
    let ctx = rec.ctx();
    let per_part = a.n_q * a.n_heads * (a.head_dim + 2);
    super::esa_common::check_words("esa_attention_coop", "part", a.part, 2 * per_part)?;
    let cap = ((super::esa_common::binding_bytes(a.part) / 4) as usize / per_part).min(COOP_MAX_PARTS);
    let nsg = coop_subgroups(ctx);
    let name = format!("esa_attention_coop_d{}_sg{nsg}", a.head_dim);
    let k = ctx.kernel_with(&name, "main", &[], || Ok(coop_source(a.head_dim, nsg)))?;
    let p = CoopParams {
        n_q: a.n_q as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        pos0: a.pos0 as u32,
        n_init: a.n_init as u32,
        local_start: a.local_start as u32,
        max_sel: max_sel as u32,
        count_index: count_index as u32,
        w: a.w as u32,
        q_stride: a.q_stride as u32,
        scale: a.scale,
        rotate_q: rotate_q as u32,
        n_part: 0,
        splits0: 0,
        split_len: 0,
        rescale_at: COOP_RESCALE_AT,
    };
    let rows = a.n_q * (a.n_heads / a.n_kv);
    let groups = rows.div_ceil(16 * nsg) * a.n_kv;
    let keys0 = a.n_init + max_sel; // the count on the GPU is at most max_sel
    let keys1 = a.pos0 + a.n_q - a.local_start;
    static KNOB: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let aim = match *KNOB.get_or_init(|| std::env::var("ESA_WGPU_ATTN_GROUPS").ok().and_then(|v| v.parse::<usize>().ok())) {
        Some(n) => SplitAim { min_groups: n, target_groups: n, min_keys: 1 },
        None => aim,
    };
    let (splits0, splits1, split_len) = coop_splits(keys0, keys1, groups, cap, aim);
    let p = CoopParams { n_part: (splits0 + splits1) as u32, splits0: splits0 as u32, split_len: split_len as u32, ..p };
    let bufs = [a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), sel, state, a.part.clone()];
    rec.dispatch(&k, &p, &bufs, [rows.div_ceil(16 * nsg) as u32, a.n_kv as u32, p.n_part]);
    super::attention::merge_splits(rec, a.part, a.out, a.n_q * a.n_heads, p.n_part as usize, a.head_dim)
}

/// Records the attention into `out`. Use `reference::esa::select_tokens` for n_init/local_start:
/// in the dense case pass `n_init = 0`, `local_start = 0`, `selection = None`.
pub fn attend(rec: &mut Recorder, a: &EsaAttend) -> Result<()> {
    if a.n_q == 0 || a.n_heads == 0 || a.n_kv == 0 || a.n_heads % a.n_kv != 0 || a.head_dim % 4 != 0 || a.head_dim > 256 || a.head_dim == 0 {
        return Err(Error::arg("esa_attention", format!("n_q {} heads {}/{} head_dim {}: need n_q >= 1, heads a multiple of kv heads, head_dim a multiple of 4 <= 256", a.n_q, a.n_heads, a.n_kv, a.head_dim)));
    }
    if a.local_start > a.pos0 || a.n_init > a.local_start || a.q_stride < a.n_heads * a.head_dim {
        return Err(Error::arg("esa_attention", format!("n_init {} <= local_start {} <= pos0 {} and q_stride {} >= q_dim", a.n_init, a.local_start, a.pos0, a.q_stride)));
    }
    use super::esa_common::check_words;
    let (q_dim, kv_words) = (a.n_heads * a.head_dim, a.n_kv * a.head_dim / 2);
    check_words("esa_attention", "q", a.q, (a.n_q - 1) * a.q_stride + q_dim)?;
    check_words("esa_attention", "k_cache", a.k_cache, (a.pos0 + a.n_q) * kv_words)?;
    check_words("esa_attention", "v_cache", a.v_cache, (a.pos0 + a.n_q) * kv_words)?;
    check_words("esa_attention", "part", a.part, scratch_floats(a.n_q, a.n_heads, a.n_kv, a.head_dim))?;
    check_words("esa_attention", "out", a.out, a.n_q * q_dim)?;
    if let Some(s) = &a.selection {
        check_words("esa_attention", "selection.indices", s.indices, s.max_sel)?;
        check_words("esa_attention", "selection.state", s.state, s.count_index + 1)?;
    }
    let ctx = rec.ctx();
    let (sel, state, count_index, max_sel) = match &a.selection {
        Some(s) => (s.indices.clone(), s.state.clone(), s.count_index, s.max_sel),
        // Any read-only buffer satisfies the bindings; the count bound of 0 means they are not read.
        None => (a.q.clone(), a.q.clone(), 0, 0),
    };
    if a.n_q >= super::attention::PREFILL_MIN_QUERIES && super::attention::prefill_coop_supports(ctx, a.head_dim) {
        return attend_coop(rec, a, (sel, state, count_index, max_sel), true, ESA_SPLITS);
    }
    let k = ctx.kernel("esa_attention", super::src::ESA_ATTENTION, "main", &[])?;
    let n_keys = a.n_init + max_sel + a.pos0 + a.n_q - a.local_start;
    // Workgroups per split: one per (query, KV head, chunk of up to HEADS_PER_GROUP query heads).
    let rows = rows_per_split(a.n_q, a.n_heads, a.n_kv);
    let n_split = max_split(a.n_q, a.n_heads, a.n_kv).min(n_keys.div_ceil(64).max(1));
    let split_len = n_keys.div_ceil(n_split).next_multiple_of(64);
    let n_split = n_keys.div_ceil(split_len);
    let p = Params {
        n_q: a.n_q as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        head_dim: a.head_dim as u32,
        pos0: a.pos0 as u32,
        n_init: a.n_init as u32,
        local_start: a.local_start as u32,
        max_sel: max_sel as u32,
        count_index: count_index as u32,
        w: a.w as u32,
        q_stride: a.q_stride as u32,
        n_split: n_split as u32,
        split_len: split_len as u32,
        scale: a.scale,
        _pad: [0; 2],
    };
    let bufs = [a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), sel, state, a.part.clone()];
    rec.dispatch(&k, &p, &bufs, [rows as u32, n_split as u32, 1]);
    super::attention::merge_splits(rec, a.part, a.out, a.n_q * a.n_heads, n_split, a.head_dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer of `scratch_floats(chunk, ..)` holds the partials of every path for every chunk
    /// of at most `chunk` queries: the split kernel (n_q * n_heads * n_split rows) and the
    /// cooperative-matrix kernel (two per query and head).
    /// Splits cover each segment's keys in ranges of whole tiles, at most `cap` of them, one at
    /// least for the local segment, none for an empty long-distance one.
    /// The dense aim gives the split counts measured best (`DENSE_SPLITS`): (keys, workgroups a
    /// split) -> splits, with the session scratch's cap of four.
    #[test]
    fn dense_splits_as_measured() {
        for (keys, groups, want) in [(512usize, 128usize, 1usize), (4096, 1024, 1), (4096, 288, 2), (512, 36, 4)] {
            let (s0, s1, _) = coop_splits(0, keys, groups, SCRATCH_PARTS, DENSE_SPLITS);
            assert_eq!((s0, s1), (0, want), "{keys} keys, {groups} workgroups a split");
        }
    }

    #[test]
    fn coop_splits_cover_the_keys() {
        for keys0 in [0usize, 1, 128, 2176, 5000] {
            for keys1 in [1usize, 31, 32, 33, 2048, 6144, 100_000] {
                for groups in [1usize, 40, 144, 512, 4096] {
                    for (cap, target) in (2..=COOP_MAX_PARTS).flat_map(|c| [(c, ESA_SPLITS), (c, DENSE_SPLITS)]) {
                        let (s0, s1, len) = coop_splits(keys0, keys1, groups, cap, target);
                        assert!(len % COOP_TILE_KEYS == 0 && s0 + s1 <= cap && s1 >= 1, "{keys0} {keys1} {groups} {cap} {target:?}");
                        assert!(s0 * len >= keys0 && s1 * len >= keys1 && (keys0 > 0) == (s0 > 0));
                    }
                }
            }
        }
    }

    #[test]
    fn scratch_covers_every_path() {
        for (heads, kv, d) in [(9, 3, 64), (6, 2, 12), (32, 8, 128), (4, 1, 14), (15, 5, 64), (64, 8, 128)] {
            for chunk in 1..=4096 {
                let have = scratch_floats(chunk, heads, kv, d);
                let n_q = chunk; // the largest chunk needs most for the coop path ...
                assert!(coop_scratch_floats(n_q, heads, d, SCRATCH_PARTS) <= have, "coop, chunk {chunk}");
                // ... and any shorter one may need more for the split path.
                for n_q in [1, 2, 3, chunk / 2, chunk.saturating_sub(1), chunk].into_iter().filter(|&n| n >= 1 && n <= chunk) {
                    let split = max_split(n_q, heads, kv);
                    assert!(n_q * heads * split * (d + 2) <= have, "split, chunk {chunk}, n_q {n_q}");
                }
            }
        }
    }
}
