//! Block-level selection in the style of InfLLM (shaders/esa_blocks.wgsl), the baseline
//! `EsaConfig::select_block` turns on: block scores (`block_max`), then `esa_topk` over them, then
//! the picked blocks' tokens as cache rows (`expand`). `reference::esa::top_k_blocks` defines it.

use crate::gpu::{grid, BufRef, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    block: u32,
    offset: u32,
    max_blocks: u32,
    count_index: u32,
    grid_x: u32,
    _pad: [u32; 2],
}

/// Blocks of `block` scores among `n`.
pub fn n_blocks(n: usize, block: usize) -> usize {
    n.div_ceil(block.max(1))
}

/// Records `out[b] = max(scores[b * block .. min((b + 1) * block, n)])` for every block.
pub fn block_max(rec: &mut Recorder, scores: &BufRef, out: &BufRef, n: usize, block: usize) -> Result<()> {
    if block == 0 {
        return Err(Error::arg("esa.select_block", "blocks of 0 tokens"));
    }
    if n == 0 {
        return Ok(());
    }
    let nb = n_blocks(n, block);
    super::esa_common::check_words("esa_blocks", "scores", scores, n)?;
    super::esa_common::check_words("esa_blocks", "block scores", out, nb)?;
    let ctx = rec.ctx();
    let k = ctx.kernel("esa_blocks", super::src::ESA_BLOCKS, "block_max", &[])?;
    let g = grid(ctx, nb.div_ceil(256) as u32);
    let p = Params { n: n as u32, block: block as u32, offset: 0, max_blocks: 0, count_index: 0, grid_x: g[0], _pad: [0; 2] };
    rec.dispatch(&k, &p, &[scores.clone(), out.clone()], g);
    Ok(())
}

/// The tokens of the picked blocks, for esa_attention's selection.
pub struct Expand<'a> {
    /// The picked block indices (esa_topk's output, ascending).
    pub blocks: &'a BufRef,
    /// esa_topk's state, the picked count at `count_index`.
    pub state: &'a BufRef,
    pub count_index: usize,
    /// Out: cache rows `offset + token`, ascending; at least `max_blocks * block` words.
    pub tokens: &'a BufRef,
    /// Out: one word, how many tokens.
    pub count: &'a BufRef,
    pub n: usize,
    pub block: usize,
    pub offset: usize,
    /// The most blocks esa_topk may have picked (its k).
    pub max_blocks: usize,
}

/// Records the expansion (see `Expand`).
pub fn expand(rec: &mut Recorder, a: &Expand) -> Result<()> {
    if a.block == 0 || a.max_blocks == 0 {
        return Err(Error::arg("esa.select_block", format!("blocks of {} tokens, at most {} blocks: both must be at least 1", a.block, a.max_blocks)));
    }
    use super::esa_common::check_words;
    check_words("esa_blocks", "blocks", a.blocks, a.max_blocks)?;
    check_words("esa_blocks", "state", a.state, a.count_index + 1)?;
    check_words("esa_blocks", "tokens", a.tokens, a.max_blocks * a.block)?;
    check_words("esa_blocks", "count", a.count, 1)?;
    let ctx = rec.ctx();
    let k = ctx.kernel("esa_blocks", super::src::ESA_BLOCKS, "expand", &[])?;
    let g = grid(ctx, (a.max_blocks * a.block).div_ceil(256) as u32);
    let p = Params { n: a.n as u32, block: a.block as u32, offset: a.offset as u32, max_blocks: a.max_blocks as u32, count_index: a.count_index as u32, grid_x: g[0], _pad: [0; 2] };
    rec.dispatch(&k, &p, &[a.blocks.clone(), a.tokens.clone(), a.state.clone(), a.count.clone()], g);
    Ok(())
}
