//! ESA top-k on the GPU (shaders/esa_topk.wgsl): the indices of the k largest of n scores, sorted by
//! index, written to a GPU buffer together with their count; nothing is read back to the host.
//!
//! Semantics equal `reference::esa::top_k_indices`: ranking by the float order of the bits
//! (-0.0 below +0.0), ties to the lower index, NaN never selected, k >= (non-NaN count) selects
//! every non-NaN score. Each written index is `i + offset` (e.g. the cache row of middle token i).
//!
//! Cost: 3 histogram passes (digits of 11, 11 and 10 bits) + 2 compaction passes over the scores,
//! 5 dispatches in all (each histogram pass first redoes the previous pass's digit selection, a
//! 2048-bin scan per workgroup, instead of a dispatch of its own; the compaction sums the block
//! counts before its block itself; the histograms are cleared along the way instead of by an
//! `init` dispatch). Each dispatch is a dependent launch (~4 us on an H200 whatever its work), and
//! a decode step selects once per layer: 8-bit digits took one more.

use crate::gpu::{BufRef, GpuContext, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    k: u32,
    offset: u32,
    n_blocks: u32,
    n_threads: u32,
    pass_: u32,
    eps: u32,
    _pad: u32,
}

/// Scores per compaction block (256 threads x 4; esa_topk.wgsl's BLOCK).
const BLOCK: usize = 1024;
/// Scores per histogram workgroup (two per thread) until `MAX_HIST_GROUPS` (they stride over the
/// scores beyond): a decode step's ~30 000 middle tokens spread over ~60 workgroups.
const HIST_SCORES_PER_GROUP: usize = 512;
const MAX_HIST_GROUPS: usize = 512;

/// Radix passes (esa_topk.wgsl's PASSES) and bins per histogram (BINS).
const PASSES: usize = 3;
const BINS: usize = 2048;
/// u32 words of the `state` buffer: the final state, then the state after each pass.
/// After the op: `state[STATE_COUNT]` is the number of indices written (min(k, non-NaN count)).
pub const STATE_WORDS: usize = 8 + 8 * PASSES;
pub const STATE_COUNT: usize = 4;
/// u32 words of the histogram scratch: one histogram of 2048 bins per pass.
/// Zero when a selection starts: a new buffer is, and every `top_k` leaves it so.
pub const HIST_WORDS: usize = BINS * PASSES;

/// u32 words of the `blocks` scratch for `n` scores.
pub fn block_words(n: usize) -> usize {
    2 * n.div_ceil(BLOCK).max(1)
}

/// Scratch for one top-k of up to `max_n` scores, allocated once (e.g. per session).
pub struct TopkScratch {
    pub state: wgpu::Buffer,
    pub hist: wgpu::Buffer,
    pub blocks: wgpu::Buffer,
    pub max_n: usize,
}

impl TopkScratch {
    pub fn new(ctx: &GpuContext, max_n: usize) -> Result<TopkScratch> {
        Ok(TopkScratch {
            state: ctx.storage("esa topk state", (STATE_WORDS * 4) as u64)?,
            hist: ctx.storage("esa topk hist", (HIST_WORDS * 4) as u64)?,
            blocks: ctx.storage("esa topk blocks", (block_words(max_n) * 4) as u64)?,
            max_n,
        })
    }
}

pub struct TopK<'a> {
    /// `[n]` f32 scores.
    pub scores: &'a BufRef,
    /// `[>= min(k, n)]` u32 output indices.
    pub out: &'a BufRef,
    pub scratch: &'a TopkScratch,
    pub n: usize,
    pub k: usize,
    /// Added to every written index.
    pub offset: u32,
    /// > 0: rank the scores max-pooled over a radius of `pool` (`esa_pool::pool`'s values, without
    /// its dispatch).
    pub pool: usize,
}

/// Records the selection. `n = 0` (or k = 0) writes no index and a count of 0.
pub fn top_k(rec: &mut Recorder, a: &TopK) -> Result<()> {
    if a.n > a.scratch.max_n {
        return Err(Error::arg("esa_topk n", format!("{} scores exceed the scratch's {}", a.n, a.scratch.max_n)));
    }
    let n_blocks = a.n.div_ceil(BLOCK);
    if n_blocks > rec.ctx().caps.max_workgroups_per_dim as usize || a.n > u32::MAX as usize / 2 {
        return Err(Error::arg("esa_topk n", format!("{} scores is more than one dispatch can cover", a.n)));
    }
    super::esa_common::check_words("esa_topk", "scores", a.scores, a.n)?;
    super::esa_common::check_words("esa_topk", "out", a.out, a.k.min(a.n))?;
    let ctx = rec.ctx();
    let kernel = |entry: &str| ctx.kernel("esa_topk", super::src::ESA_TOPK, entry, &[]);
    let hist_groups = a.n.div_ceil(HIST_SCORES_PER_GROUP).clamp(1, MAX_HIST_GROUPS);
    let p = Params {
        n: a.n as u32,
        k: a.k.min(a.n) as u32,
        offset: a.offset,
        n_blocks: n_blocks as u32,
        n_threads: (hist_groups * 256) as u32,
        pass_: 0,
        eps: a.pool.min(u32::MAX as usize) as u32,
        _pad: 0,
    };
    let s = a.scratch;
    let bufs = [a.scores.clone(), BufRef::from(&s.state), BufRef::from(&s.hist), BufRef::from(&s.blocks), a.out.clone()];
    if n_blocks == 0 {
        // nothing to select: the final state (count 0) is all there is to write
        rec.dispatch(&kernel("init")?, &p, &bufs, [1, 1, 1]);
        return Ok(());
    }
    // (the histograms are zero here: each dispatch chain leaves them so, see esa_topk.wgsl)
    let hist = kernel("hist_pass")?;
    for pass in 0..PASSES as u32 {
        rec.dispatch(&hist, &Params { pass_: pass, ..p }, &bufs, [hist_groups as u32, 1, 1]);
    }
    rec.dispatch(&kernel("block_count")?, &p, &bufs, [n_blocks as u32, 1, 1]);
    rec.dispatch(&kernel("compact")?, &p, &bufs, [n_blocks as u32, 1, 1]);
    Ok(())
}
