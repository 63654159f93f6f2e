//! Dense causal GQA attention of a chunk over the KV cache (split over keys, then merged).
//!
//! KV cache layout (shared with ESA): `[max_ctx][n_kv][head_dim/2]` u32, two f16 per word, keys
//! UN-rotated (the kernel rotates each key to its position, so ESA can place keys elsewhere).

use crate::gpu::{grid, BufRef, Recorder};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    pos0: u32,
    n_split: u32,
    split_len: u32,
    scale: f32,
}

/// `attention.wgsl`'s parameters: `Params` and whether the step is fused (see `attend_split_fused`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SplitParams {
    p: Params,
    fused: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MergeParams {
    n_qh: u32,
    n_split: u32,
    head_dim: u32,
    grid_x: u32,
}

/// `attention_merge.wgsl`: combines the `n_split` partials `[n_qh][n_split][head_dim + 2]` of each
/// query head in `part` into `out` (a workgroup per query head), as the next dispatch. Every split
/// kernel's partials end here (`attention.wgsl`, `attention_cpu.wgsl`, `attention_gqa.wgsl` past
/// its merge threshold, ESA's chunk attention).
pub(crate) fn merge_splits(rec: &mut Recorder, part: &BufRef, out: &BufRef, n_qh: usize, n_split: usize, head_dim: usize) -> Result<()> {
    let ctx = rec.ctx();
    let km = ctx.kernel("attention_merge", super::src::ATTENTION_MERGE, "main", &[])?;
    let g = grid(ctx, n_qh as u32);
    let mp = MergeParams { n_qh: n_qh as u32, n_split: n_split as u32, head_dim: head_dim as u32, grid_x: g[0] };
    rec.dispatch(&km, &mp, &[part.clone(), out.clone()], g);
    Ok(())
}

/// Target number of workgroups when choosing the key split.
const TARGET_GROUPS: usize = 1024;

/// Floats of scratch the partial results need for a chunk of `n_q` queries.
pub fn scratch_floats(n_q: usize, n_heads: usize, head_dim: usize) -> usize {
    // the cooperative-matrix prefill kernel writes up to SCRATCH_PARTS partials (key splits) per
    // (query, head) into a scratch of this size
    (super::esa_attention::SCRATCH_PARTS * n_q * n_heads).max(TARGET_GROUPS) * (head_dim + 2)
}

pub struct Attend<'a> {
    /// Rotated queries [n_q][n_heads][d].
    pub q: &'a BufRef,
    pub k_cache: &'a BufRef,
    pub v_cache: &'a BufRef,
    pub inv_freq: &'a wgpu::Buffer,
    /// Scratch of `scratch_floats` floats.
    pub part: &'a BufRef,
    /// Output [n_q][n_heads][d].
    pub out: &'a BufRef,
    /// `counter_words` u32 that are zero between dispatches (a new buffer is): `attention_gqa`'s
    /// workgroups count themselves in here so the last of each column merges the key splits.
    pub counters: &'a BufRef,
    pub n_q: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Position of the first query; query t sees cache rows 0 ..= pos0 + t.
    pub pos0: usize,
    /// Softmax scale of the scores: `Config::attention_scale` (1/sqrt(head_dim), times YaRN's
    /// attention factor squared).
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PrefillParams {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    pos0: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Chunks of at least this many queries use the tiled prefill kernel; fewer (decode) split the keys.
pub const PREFILL_MIN_QUERIES: usize = 8;

/// Whether `attention_prefill.wgsl` handles this head size (vec4 rows, at most 128 wide).
pub fn prefill_supports(head_dim: usize) -> bool {
    head_dim % 4 == 0 && head_dim <= 128
}

/// Whether the cooperative-matrix prefill kernel runs here: the adapter runs the cooperative-matrix
/// matmul (16x16x16 f16 -> f32, subgroups of 32) and head_dim is a multiple of 32, at most 128.
pub fn prefill_coop_supports(ctx: &crate::gpu::GpuContext, head_dim: usize) -> bool {
    super::linear::matmul_variant(ctx) == super::linear::MatmulVariant::Coop && head_dim % 32 == 0 && head_dim <= 128
}

/// Causal attention of a chunk: for prefill chunks the tiled flash-attention kernel (on
/// cooperative matrices where offered), for decode steps (and head sizes the tiled kernels do not
/// take) the split-key kernel + merge.
pub fn attend(rec: &mut Recorder, a: &Attend) -> Result<()> {
    if super::linear::cpu_variant(rec.ctx()) && cpu_supports(a) {
        attend_cpu(rec, a)
    } else if a.n_q >= PREFILL_MIN_QUERIES && prefill_coop_supports(rec.ctx(), a.head_dim) {
        attend_prefill_coop(rec, a)
    } else if a.n_q >= PREFILL_MIN_QUERIES && prefill_supports(a.head_dim) {
        attend_prefill(rec, a)
    } else if gqa_supports(rec.ctx(), a) {
        attend_gqa(rec, a, false)
    } else {
        attend_split(rec, a)
    }
}

/// One decode step (`n_q` = 1) from the token's un-rotated fused projection row in `a.q`
/// [q (H*d) | k (n_kv*d) | v (n_kv*d)]: the kernel rotates the queries and appends the token's key
/// and value to the caches at row `pos0` itself (no `rope_kv` before it). `attention_gqa` where
/// the adapter takes it, else `attention.wgsl` + merge.
pub fn attend_fused(rec: &mut Recorder, a: &Attend) -> Result<()> {
    if gqa_supports(rec.ctx(), a) {
        attend_gqa(rec, a, true)
    } else {
        attend_split_fused(rec, a)
    }
}

/// u32 counters `Attend::counters` needs for chunks of up to `n_q` queries.
pub fn counter_words(n_q: usize, n_heads: usize) -> usize {
    (n_q * n_heads).max(1)
}

/// Whether `attention_gqa.wgsl` runs here: subgroups whose smallest size holds the D / 16 lanes of
/// a key, head_dim a multiple of 16 (at most 256), whole GQA groups; not on CPU adapters (their
/// own kernel suits them better).
pub fn gqa_supports(ctx: &crate::gpu::GpuContext, a: &Attend) -> bool {
    gqa_capable(ctx, a) && !super::linear::cpu_variant(ctx)
}

/// Whether `attention_gqa.wgsl` can run this shape on the adapter at all (tests force it on CPU
/// adapters too).
pub fn gqa_capable(ctx: &crate::gpu::GpuContext, a: &Attend) -> bool {
    gqa_shape_capable(ctx, a.n_heads, a.n_kv, a.head_dim)
}

/// `gqa_capable` for a head shape.
pub fn gqa_shape_capable(ctx: &crate::gpu::GpuContext, n_heads: usize, n_kv: usize, d: usize) -> bool {
    let c = &ctx.caps;
    // D / 16 lanes per key: a power of two, so a key's lanes are one aligned group of a subgroup
    // (its xor-shuffles stay inside) and 64 threads hold whole slots
    let lanes = d / 16;
    c.subgroups
        && d % 16 == 0
        && d > 0
        && d <= 256
        && lanes.is_power_of_two()
        && c.subgroup_min as usize >= lanes
        && c.subgroup_min <= 64
        && c.max_workgroup_storage as usize >= GQA_WORKGROUP_BYTES
        && n_kv > 0
        && n_heads % n_kv == 0
}

/// Workgroup memory `attention_gqa.wgsl` declares (og 16 KiB, kv_now 1 KiB, slot_m and slot_l
/// 2 KiB, long_rows 4 KiB, and a word), rounded up.
const GQA_WORKGROUP_BYTES: usize = 24 * 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GqaParams {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    pos0: u32,
    n_split: u32,
    split_len: u32,
    scale: f32,
    fused: u32,
    n_long: u32,
    long_len: u32,
    n_init: u32,
    local_start: u32,
    w: u32,
    count_index: u32,
    max_sel: u32,
    /// 1: the splits' partials are merged by an `attention_merge` dispatch after this one
    merge_apart: u32,
}

/// How `attention_gqa` splits the work: workgroups aimed at, fewest keys per split, keys per slot
/// loaded at once, most query heads per workgroup, whether each iteration loads the next one's
/// keys before its own products, and above how many splits the merge is a dispatch of its own.
/// `ESA_WGPU_GQA_SPLIT=WGSxKEYSxU[xHG[xPF[xMA]]]` overrides the default (for tuning on a device).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GqaSplit {
    pub target_groups: usize,
    pub min_keys: usize,
    pub u: usize,
    pub max_heads: usize,
    pub prefetch: bool,
    /// More key splits than this: `attention_merge` merges them in a dispatch of its own (one
    /// workgroup per query head) instead of the last workgroup of each column, whose 64 threads
    /// load every split's partial of its heads alone. H200, session 14: SmolLM2 after 16 384
    /// tokens (3 columns of 64+ splits) 588.5 -> 689.2 tok/s; the 8B at 32k and 128k unchanged.
    pub merge_apart_above: usize,
}

impl GqaSplit {
    /// 256 workgroups aimed at (H200, session 11: 8B f16 at 32k 120.6 tok/s against 107.6 at 512,
    /// 98.3 at 128; fewer, longer splits leave less for the merge), at least 64 keys a split.
    /// The merge apart above 8 splits: a short context (SmolLM2 after 512 tokens: 8 splits) keeps
    /// its one dispatch.
    pub const DEFAULT: GqaSplit = GqaSplit { target_groups: 256, min_keys: 64, u: 4, max_heads: 4, prefetch: false, merge_apart_above: 8 };

    pub fn parse(s: &str) -> Option<GqaSplit> {
        let v: Vec<usize> = s.split('x').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
        let ma = GqaSplit::DEFAULT.merge_apart_above;
        let (g, k, u, h, pf, ma) = match v[..] {
            [g, k, u] => (g, k, u, 4, 0, ma),
            [g, k, u, h] => (g, k, u, h, 0, ma),
            [g, k, u, h, pf] => (g, k, u, h, pf, ma),
            [g, k, u, h, pf, ma] => (g, k, u, h, pf, ma),
            _ => return None,
        };
        let ok = g > 0 && k > 0 && (1..=4).contains(&u) && (1..=4).contains(&h) && pf <= 1;
        ok.then_some(GqaSplit { target_groups: g, min_keys: k, u, max_heads: h, prefetch: pf == 1, merge_apart_above: ma })
    }

    fn current() -> GqaSplit {
        static S: std::sync::OnceLock<GqaSplit> = std::sync::OnceLock::new();
        *S.get_or_init(|| std::env::var("ESA_WGPU_GQA_SPLIT").ok().and_then(|s| GqaSplit::parse(&s)).unwrap_or(GqaSplit::DEFAULT))
    }
}

/// `attention_gqa.wgsl`: one workgroup per (query, KV head, head group, key split), the splits
/// merged by the last of each column to finish (one dispatch). `fused` as in `attend_fused`.
pub fn attend_gqa(rec: &mut Recorder, a: &Attend, fused: bool) -> Result<()> {
    gqa_dispatch(rec, a, fused, GqaSplit::current(), None, None)
}

/// `attend_gqa` with the shape `sp` and, if given, the split forced to `split_len` keys (tests:
/// every variant, many splits, empty ones).
pub fn attend_gqa_with(rec: &mut Recorder, a: &Attend, fused: bool, sp: GqaSplit, split_len: Option<usize>) -> Result<()> {
    gqa_dispatch(rec, a, fused, sp, split_len, None)
}

/// ESA's long-distance part of a decode step for `attend_gqa_esa`: the initial rows `[0, n_init)`
/// and the selected rows (`selection`, its count on the GPU; None: nothing selected), all
/// un-rotated with the query at position `w`; the local rows `[local_start, pos0]` follow.
pub struct LongPart<'a> {
    pub selection: Option<super::esa_attention::Selection<'a>>,
    pub n_init: usize,
    pub local_start: usize,
    pub w: usize,
}

/// An ESA decode step's attention through `attention_gqa.wgsl` (`a.q` the token's fused
/// projection row, un-rotated; the kernel appends the token's key and value, as `attend_fused`):
/// the long-distance part's splits gather their rows, the local part's are contiguous, and all
/// are merged by the last workgroup of each column. `sp` and `split_len` as in `attend_gqa_with`.
pub fn attend_gqa_esa(rec: &mut Recorder, a: &Attend, long: &LongPart, sp: Option<GqaSplit>, split_len: Option<usize>) -> Result<()> {
    if a.n_q != 1 {
        return Err(crate::Error::arg("n_q", format!("the ESA decode attention takes one token, got {}", a.n_q)));
    }
    if long.n_init > long.local_start || long.local_start > a.pos0 {
        return Err(crate::Error::arg("local_start", format!("need n_init {} <= local_start {} <= pos0 {}", long.n_init, long.local_start, a.pos0)));
    }
    if let Some(s) = &long.selection {
        use super::esa_common::check_words;
        check_words("attention (ESA)", "selection.indices", s.indices, s.max_sel)?;
        check_words("attention (ESA)", "selection.state", s.state, s.count_index + 1)?;
    }
    gqa_dispatch(rec, a, true, sp.unwrap_or_else(GqaSplit::current), split_len, Some(long))
}

/// Most rows one long-distance split gathers (`attention_gqa.wgsl`'s LONG_MAX).
const GQA_LONG_MAX: usize = 1024;

fn gqa_dispatch(rec: &mut Recorder, a: &Attend, fused: bool, sp: GqaSplit, force_len: Option<usize>, long: Option<&LongPart>) -> Result<()> {
    let ctx = rec.ctx();
    if !gqa_capable(ctx, a) {
        return Err(crate::Error::arg("head_dim", format!("attention_gqa needs subgroups of at least head_dim / 16 lanes and head_dim % 16 == 0, <= 256 (got {}, subgroups {}..{}), n_heads a multiple of n_kv", a.head_dim, ctx.caps.subgroup_min, ctx.caps.subgroup_max)));
    }
    if a.n_q == 0 {
        return Ok(());
    }
    let d = a.head_dim;
    use super::esa_common::{binding_bytes, check_words};
    if fused {
        if a.n_q != 1 {
            return Err(crate::Error::arg("n_q", format!("the fused decode attention takes one token, got {}", a.n_q)));
        }
        check_words("attention (fused)", "qkv", a.q, (a.n_heads + 2 * a.n_kv) * d)?;
    } else {
        check_words("attention", "q", a.q, a.n_q * a.n_heads * d)?;
    }
    check_words("attention", "k_cache", a.k_cache, (a.pos0 + a.n_q) * a.n_kv * d / 2)?;
    check_words("attention", "v_cache", a.v_cache, (a.pos0 + a.n_q) * a.n_kv * d / 2)?;
    check_words("attention", "out", a.out, a.n_q * a.n_heads * d)?;
    check_words("attention", "counters", a.counters, counter_words(a.n_q, a.n_heads))?;
    let g = a.n_heads / a.n_kv;
    // keys of the long-distance part (ESA: at most n_init + max_sel) and of the local part
    let selection = long.and_then(|l| l.selection.as_ref());
    let max_sel = selection.map_or(0, |s| s.max_sel);
    let (long_keys, local_start) = long.map_or((0, 0), |l| (l.n_init + max_sel, l.local_start));
    let local_keys = a.pos0 + a.n_q - local_start;
    let n_keys = long_keys + local_keys;
    // Query heads per workgroup: as many as `max_heads` allows (each key rotated and read once for
    // them), unless the step would make fewer than a quarter of `target_groups` workgroups (few KV
    // heads, few keys: a small model early in its context), where one head per workgroup spreads
    // it wider (H200, SmolLM2 after 512 tokens: 1 038 against 977 tok/s; docs/perf.md, session 11).
    // Key splits wanted for `cols` columns: enough for `target_groups` workgroups, at least
    // `min_keys` keys each (before the scratch's cap).
    let want_splits = |cols: usize| (sp.target_groups / cols).clamp(1, n_keys.div_ceil(sp.min_keys).max(1));
    let mut hg = (1..=sp.max_heads).rev().find(|h| g % h == 0).unwrap_or(1);
    if force_len.is_none() {
        let cols = a.n_q * a.n_kv * (g / hg);
        if cols * want_splits(cols) < sp.target_groups / 4 {
            hg = 1;
        }
    }
    let cols = a.n_q * a.n_kv * (g / hg);
    let per_it = (64 / (d / 16)) * sp.u;
    // the partials scratch, and the merge's (m, l) of every split in workgroup memory (1024 vec4)
    let per_split = a.n_q * a.n_heads * (d + 2);
    let cap = ((binding_bytes(a.part) / 4) as usize / per_split).min(1024 / hg).max(1);
    let splits = |len: usize| long_keys.div_ceil(len.min(GQA_LONG_MAX)) + local_keys.div_ceil(len);
    // the fewest splits any length gives (long splits hold at most GQA_LONG_MAX keys)
    let fewest = long_keys.div_ceil(GQA_LONG_MAX) + local_keys.min(1);
    if fewest > cap {
        return Err(crate::Error::arg("max_sel", format!("{long_keys} long-distance keys need {fewest} splits of at most {GQA_LONG_MAX}; the partials scratch holds {cap}")));
    }
    let split_len = match force_len {
        Some(l) => l.max(1),
        None => {
            let want = want_splits(cols).min(cap);
            let mut len = n_keys.div_ceil(want).next_multiple_of(per_it);
            while splits(len) > cap {
                len *= 2; // ends: at len >= max(n_keys, GQA_LONG_MAX) it gives `fewest` <= cap
            }
            len
        }
    };
    let long_len = split_len.min(GQA_LONG_MAX);
    let n_long = long_keys.div_ceil(long_len);
    let n_split = splits(split_len);
    if n_split > cap {
        return Err(crate::Error::arg("split_len", format!("{n_split} key splits of {split_len} exceed the {cap} the partials scratch holds")));
    }
    if n_split > 1 {
        check_words("attention", "part", a.part, n_split * per_split)?;
    }
    if cols as u32 > ctx.caps.max_workgroups_per_dim {
        return Err(crate::Error::arg("n_q", format!("attention grid of {cols} columns exceeds the adapter's {} workgroups per dimension", ctx.caps.max_workgroups_per_dim)));
    }
    let (u, pf) = (sp.u, sp.prefetch as u32);
    let merge_apart = n_split > 1 && n_split > sp.merge_apart_above;
    // the long-row table only in kernels that gather a long-distance part (see LONG_MAX)
    let lm = if long.is_some() { GQA_LONG_MAX } else { 1 };
    let k = ctx.kernel_with(&format!("attention_gqa[D{d},HG{hg},U{u},PF{pf},L{lm}]"), "main", &[], || {
        Ok(format!("const D: u32 = {d}u;\nconst HG: u32 = {hg}u;\nconst U: u32 = {u}u;\nconst PF: u32 = {pf}u;\nconst LONG_MAX: u32 = {lm}u;\n{}", super::src::ATTENTION_GQA))
    })?;
    let p = GqaParams {
        n_q: a.n_q as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        pos0: a.pos0 as u32,
        n_split: n_split as u32,
        split_len: split_len as u32,
        scale: a.scale,
        fused: fused as u32,
        n_long: n_long as u32,
        long_len: long_len as u32,
        n_init: long.map_or(0, |l| l.n_init) as u32,
        local_start: local_start as u32,
        w: long.map_or(0, |l| l.w) as u32,
        count_index: selection.map_or(0, |s| s.count_index) as u32,
        max_sel: max_sel as u32,
        merge_apart: merge_apart as u32,
    };
    // without a selection any read-only buffer stands in for `sel` and `state` (max_sel 0: the
    // count is 0 and no index is used)
    let (sel, state) = match selection {
        Some(s) => (s.indices.clone(), s.state.clone()),
        None => (BufRef::from(a.inv_freq), BufRef::from(a.inv_freq)),
    };
    let bufs = [a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), a.part.clone(), a.out.clone(), a.counters.clone(), sel, state];
    rec.dispatch(&k, &p, &bufs, [cols as u32, n_split as u32, 1]);
    if merge_apart {
        merge_splits(rec, a.part, a.out, a.n_q * a.n_heads, n_split, a.head_dim)?;
    }
    Ok(())
}

/// Whether `attention_cpu.wgsl` takes this shape: head_dim a positive multiple of 4 (at most
/// 256) and whole GQA groups of at most 8 heads (the adapter must also be
/// `linear::cpu_capable`).
pub fn cpu_supports(a: &Attend) -> bool {
    a.head_dim > 0 && a.head_dim % 4 == 0 && a.head_dim <= 256 && a.n_kv > 0 && a.n_heads % a.n_kv == 0 && a.n_heads / a.n_kv <= 8
}

/// Keys per split below which a CPU adapter's decode step runs in one split (and skips the merge).
const CPU_SPLIT_KEYS: usize = 128;

/// `attention_cpu.wgsl` (+ `attention_merge.wgsl` when the keys are split): one subgroup per
/// (query, KV head, key split). Chunks with 16 or more (query, KV head) pairs keep one split per
/// pair, which also keeps within the scratch `scratch_floats` sizes; decode steps split long
/// contexts into up to 16 parts so every CPU thread gets work.
pub fn attend_cpu(rec: &mut Recorder, a: &Attend) -> Result<()> {
    let ctx = rec.ctx();
    if !cpu_supports(a) || !super::linear::cpu_capable(ctx) {
        return Err(crate::Error::arg("head_dim", format!("CPU attention needs head_dim % 4 == 0 and <= 256 (got {}), n_heads a multiple of n_kv with at most 8 per group, and subgroups of one fixed size >= 8", a.head_dim)));
    }
    if a.n_q == 0 {
        return Ok(());
    }
    let sg = super::linear::fixed_subgroup(ctx).unwrap_or(8);
    let g = a.n_heads / a.n_kv;
    let d = a.head_dim;
    if a.n_q >= CPU_BLOCK_MIN_QUERIES && d % (4 * sg as usize) == 0 {
        return attend_cpu_block(rec, a, sg);
    }
    let k = ctx.kernel_with(&format!("attention_cpu[D{d},G{g},SG{sg}]"), "main", &[], || {
        Ok(format!("const D: u32 = {d}u;\nconst G: u32 = {g}u;\nconst SG: u32 = {sg}u;\n{}", super::src::ATTENTION_CPU))
    })?;
    let n_keys = a.pos0 + a.n_q;
    let pairs = a.n_q * a.n_kv;
    let cap = scratch_floats(a.n_q, a.n_heads, d) / ((a.n_q * a.n_heads) * (d + 2));
    let n_split = if pairs >= 16 { 1 } else { n_keys.div_ceil(CPU_SPLIT_KEYS).clamp(1, 16.min(cap)) };
    let split_len = n_keys.div_ceil(n_split);
    let n_split = n_keys.div_ceil(split_len);
    if pairs as u32 > ctx.caps.max_workgroups_per_dim {
        return Err(crate::Error::arg("n_q", format!("CPU attention grid of {pairs} (query, KV head) pairs exceeds the adapter's {} workgroups per dimension", ctx.caps.max_workgroups_per_dim)));
    }
    let p = Params {
        n_q: a.n_q as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        head_dim: d as u32,
        pos0: a.pos0 as u32,
        n_split: n_split as u32,
        split_len: split_len as u32,
        scale: a.scale,
    };
    rec.dispatch(&k, &p, &[a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), a.part.clone(), a.out.clone()], [pairs as u32, n_split as u32, 1]);
    if n_split > 1 {
        merge_splits(rec, a.part, a.out, a.n_q * a.n_heads, n_split, a.head_dim)?;
    }
    Ok(())
}

/// Queries from which a CPU adapter's chunk takes `attention_cpu_block.wgsl` (one query per lane)
/// rather than `attention_cpu.wgsl` (one per subgroup, the decode kernel).
pub const CPU_BLOCK_MIN_QUERIES: usize = 8;

/// Keys per online-softmax block of `attention_cpu_block.wgsl` (one output rescale per block).
const CPU_BLOCK_KEYS: u32 = 8;

/// `attention_cpu_block.wgsl` for head_dim `d` (a multiple of 4 `sg`), `g` query heads per KV
/// head and subgroups of `sg`: the `//@` lines written out for each head and each of the D / 4
/// words of a half head (WGSL's subgroupBroadcast takes a constant lane, and private arrays indexed in loops are
/// memory on a CPU adapter, so each word is its own variable).
pub fn cpu_block_source(d: usize, g: usize, sg: u32) -> String {
    let hw = d / 4;
    let sg = sg as usize;
    let nw = hw / sg;
    let (mut setup, mut max0, mut qk, mut rescale, mut pv, mut store) = (String::new(), String::new(), String::new(), String::new(), String::new(), String::new());
    for j in 0..nw {
        setup += &format!("    let wd{j} = lane + {}u;\n    let fr{j} = vec2<f32>(inv_freq[2u * wd{j}], inv_freq[2u * wd{j} + 1u]);\n", sg * j);
        qk += &format!("            let kr{j} = kword(row, wd{j}, kp, fr{j});\n");
        pv += &format!("            let vv{j} = vword(row, wd{j});\n");
    }
    for w in 0..hw {
        let (lane, j) = (w % sg, w / sg);
        qk += &format!("            let b{w} = subgroupBroadcast(kr{j}, {lane}u);\n");
        pv += &format!("            let b{w} = subgroupBroadcast(vv{j}, {lane}u);\n");
    }
    for h in 0..g {
        setup += &format!("    var m{h} = NEG;\n    var l{h} = 0.0;\n");
        max0 += &format!("        var mb{h} = NEG;\n");
        qk += &format!("            var acc{h} = vec4<f32>(0.0);\n");
        for w in 0..hw {
            setup += &format!("    let q{h}_{w} = qword(qb + {}u, {w}u);\n    var o{h}_{w} = vec4<f32>(0.0);\n", h * d);
            qk += &format!("            acc{h} = fma(q{h}_{w}, b{w}, acc{h});\n");
        }
        qk += &format!("            let s{h} = select(NEG, (acc{h}.x + acc{h}.y) + (acc{h}.z + acc{h}.w), ok);\n            s[kk * G + {h}u] = s{h};\n            mb{h} = max(mb{h}, s{h});\n");
        rescale += &format!("        let mn{h} = max(m{h}, mb{h});\n        let c{h} = exp(m{h} - mn{h});\n        l{h} *= c{h};\n        m{h} = mn{h};\n");
        pv += &format!("            let p{h} = exp(s[kk * G + {h}u] - m{h});\n            l{h} += p{h};\n");
        store += &format!("    let inv{h} = select(0.0, 1.0 / l{h}, l{h} > 0.0);\n");
        for w in 0..hw {
            rescale += &format!("        o{h}_{w} *= c{h};\n");
            pv += &format!("            o{h}_{w} = fma(vec4<f32>(p{h}), b{w}, o{h}_{w});\n");
            store += &format!("    put(qb + {}u, {w}u, o{h}_{w} * inv{h});\n", h * d);
        }
    }
    let head = format!("{}\nconst D: u32 = {d}u;\nconst G: u32 = {g}u;\nconst SG: u32 = {sg}u;\nconst BK: u32 = {CPU_BLOCK_KEYS}u;\n", super::src::ATTENTION_PREFILL_PARAMS);
    let markers = [("//@SETUP", &setup), ("//@MAX0", &max0), ("//@QK", &qk), ("//@RESCALE", &rescale), ("//@PV", &pv), ("//@STORE", &store)];
    head + &super::expand_markers(super::src::ATTENTION_CPU_BLOCK, None, &markers.map(|(k, v)| (k, v.as_str())))
}

/// A prompt chunk on a CPU adapter: `attention_cpu_block.wgsl`, SG queries of one KV group's heads
/// per subgroup over all their keys (no splits, no merge).
fn attend_cpu_block(rec: &mut Recorder, a: &Attend, sg: u32) -> Result<()> {
    let ctx = rec.ctx();
    let (d, g) = (a.head_dim, a.n_heads / a.n_kv);
    let k = ctx.kernel_with(&format!("attention_cpu_block[D{d},G{g},SG{sg}]"), "main", &[], || Ok(cpu_block_source(d, g, sg)))?;
    let blocks = a.n_q.div_ceil(sg as usize) as u32;
    if blocks > ctx.caps.max_workgroups_per_dim {
        return Err(crate::Error::arg("n_q", format!("CPU attention grid of {blocks} query blocks exceeds the adapter's {} workgroups per dimension", ctx.caps.max_workgroups_per_dim)));
    }
    // the prefill kernels' parameters and grid: SG queries x G heads = SG G rows per workgroup
    dispatch_prefill(rec, &k, a, sg as usize * g);
    Ok(())
}

/// Causal attention of a chunk on cooperative matrices: `esa_attention_coop.wgsl`'s local part alone
/// (no initial or selected keys, local window from row 0, queries already rotated) plus the merge.
pub fn attend_prefill_coop(rec: &mut Recorder, a: &Attend) -> Result<()> {
    let ctx = rec.ctx();
    if !prefill_coop_supports(ctx, a.head_dim) || a.n_heads % a.n_kv != 0 {
        return Err(crate::Error::arg("head_dim", format!("cooperative-matrix prefill attention needs such an adapter, head_dim % 32 == 0 and <= 128 (got {}) and n_heads a multiple of n_kv", a.head_dim)));
    }
    let dense = super::esa_attention::EsaAttend {
        q: a.q,
        q_stride: a.n_heads * a.head_dim,
        k_cache: a.k_cache,
        v_cache: a.v_cache,
        inv_freq: a.inv_freq,
        selection: None,
        part: a.part,
        out: a.out,
        n_q: a.n_q,
        n_heads: a.n_heads,
        n_kv: a.n_kv,
        head_dim: a.head_dim,
        pos0: a.pos0,
        n_init: 0,
        local_start: 0,
        w: 0,
        scale: a.scale,
    };
    // No selection: any read-only buffer fills its bindings (a count bound of 0: never read).
    super::esa_attention::attend_coop(rec, &dense, (a.q.clone(), a.q.clone(), 0, 0), false, super::esa_attention::DENSE_SPLITS)
}

/// `attention_prefill.wgsl`: one workgroup per 32 (token, head) rows of a KV group; no partials.
pub fn attend_prefill(rec: &mut Recorder, a: &Attend) -> Result<()> {
    let ctx = rec.ctx();
    if !prefill_supports(a.head_dim) || a.n_heads % a.n_kv != 0 {
        return Err(crate::Error::arg("head_dim", format!("prefill attention needs head_dim % 4 == 0 and <= 128 (got {}) and n_heads a multiple of n_kv", a.head_dim)));
    }
    let k = ctx.kernel_with("attention_prefill", "main", &[("D", a.head_dim as f64)], || Ok(super::with_prelude(super::src::ATTENTION_PREFILL, super::src::ATTENTION_PREFILL_PARAMS)))?;
    dispatch_prefill(rec, &k, a, 32);
    Ok(())
}

/// The prefill kernels (`attention_prefill`, and `attention_cpu_block` on CPU adapters) share
/// parameters and bindings; they differ in (token, head) rows per workgroup.
fn dispatch_prefill(rec: &mut Recorder, k: &std::sync::Arc<crate::gpu::Kernel>, a: &Attend, rows_per_group: usize) {
    let rows = a.n_q * (a.n_heads / a.n_kv);
    let p = PrefillParams {
        n_q: a.n_q as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        pos0: a.pos0 as u32,
        scale: a.scale,
        _pad: [0; 3],
    };
    let bufs = [a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), a.out.clone()];
    rec.dispatch(k, &p, &bufs, [rows.div_ceil(rows_per_group) as u32, a.n_kv as u32, 1]);
}

/// `attention.wgsl` + `attention_merge.wgsl`: keys split over workgroups (flash-decoding).
pub fn attend_split(rec: &mut Recorder, a: &Attend) -> Result<()> {
    split_dispatch(rec, a, false)
}

/// One decode step (`n_q` = 1) of `attend_split` without `rope_kv` before it: `a.q` holds the
/// token's fused projection row [q (H*d) | k (n_kv*d) | v (n_kv*d)] un-rotated; the kernel rotates
/// the queries, takes the token's key and value from that row and appends them to the caches at
/// row `pos0` (one dispatch fewer per layer).
pub fn attend_split_fused(rec: &mut Recorder, a: &Attend) -> Result<()> {
    if a.n_q != 1 {
        return Err(crate::Error::arg("n_q", format!("the fused decode attention takes one token, got {}", a.n_q)));
    }
    let d = a.head_dim;
    use super::esa_common::check_words;
    check_words("attention (fused)", "qkv", a.q, (a.n_heads + 2 * a.n_kv) * d)?;
    check_words("attention (fused)", "k_cache", a.k_cache, (a.pos0 + 1) * a.n_kv * d / 2)?;
    check_words("attention (fused)", "v_cache", a.v_cache, (a.pos0 + 1) * a.n_kv * d / 2)?;
    split_dispatch(rec, a, true)
}

fn split_dispatch(rec: &mut Recorder, a: &Attend, fused: bool) -> Result<()> {
    let ctx = rec.ctx();
    let k = ctx.kernel("attention", super::src::ATTENTION, "main", &[])?;
    let n_keys = a.pos0 + a.n_q;
    let qh = a.n_q * a.n_heads;
    let n_split = (TARGET_GROUPS / qh).clamp(1, n_keys.div_ceil(64).max(1));
    let split_len = n_keys.div_ceil(n_split).next_multiple_of(64);
    let n_split = n_keys.div_ceil(split_len);
    let p = Params {
        n_q: a.n_q as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        head_dim: a.head_dim as u32,
        pos0: a.pos0 as u32,
        n_split: n_split as u32,
        split_len: split_len as u32,
        scale: a.scale,
    };
    let p = SplitParams { p, fused: fused as u32, _pad: [0; 3] };
    rec.dispatch(&k, &p, &[a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), a.part.clone()], [qh as u32, n_split as u32, 1]);
    merge_splits(rec, a.part, a.out, a.n_q * a.n_heads, n_split, a.head_dim)
}

#[cfg(test)]
mod tests {
    use super::GqaSplit;

    #[test]
    fn gqa_split_parses_three_to_six_fields() {
        assert_eq!(GqaSplit::parse("256x64x4"), Some(GqaSplit::DEFAULT));
        assert_eq!(GqaSplit::parse("1024x32x4x2"), Some(GqaSplit { target_groups: 1024, min_keys: 32, u: 4, max_heads: 2, ..GqaSplit::DEFAULT }));
        assert_eq!(GqaSplit::parse("512x64x2x4x1"), Some(GqaSplit { target_groups: 512, u: 2, prefetch: true, ..GqaSplit::DEFAULT }));
        assert_eq!(GqaSplit::parse("256x64x4x4x0x1000"), Some(GqaSplit { merge_apart_above: 1000, ..GqaSplit::DEFAULT }));
        for bad in ["", "512x64", "0x64x2", "512x64x5", "512x64x2x0", "512x64x2x1x2", "512x64x2x1x1x1x1", "ax64x2"] {
            assert_eq!(GqaSplit::parse(bad), None, "{bad}");
        }
    }
}
