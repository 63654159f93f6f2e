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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MergeParams {
    n_qh: u32,
    n_split: u32,
    head_dim: u32,
    grid_x: u32,
}

/// Target number of workgroups when choosing the key split.
const TARGET_GROUPS: usize = 1024;

/// Floats of scratch the partial results need for a chunk of `n_q` queries.
pub fn scratch_floats(n_q: usize, n_heads: usize, head_dim: usize) -> usize {
    (n_q * n_heads).max(TARGET_GROUPS) * (head_dim + 2)
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
    pub n_q: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Position of the first query; query t sees cache rows 0 ..= pos0 + t.
    pub pos0: usize,
}

pub fn attend(rec: &mut Recorder, a: &Attend) -> Result<()> {
    let ctx = rec.ctx();
    let k = ctx.kernel("attention", super::src::ATTENTION, "main", &[])?;
    let km = ctx.kernel("attention_merge", super::src::ATTENTION_MERGE, "main", &[])?;
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
        scale: 1.0 / (a.head_dim as f32).sqrt(),
    };
    rec.dispatch(&k, &p, &[a.q.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq), a.part.clone()], [qh as u32, n_split as u32, 1]);
    let g = grid(ctx, qh as u32);
    let mp = MergeParams { n_qh: qh as u32, n_split: n_split as u32, head_dim: a.head_dim as u32, grid_x: g[0] };
    rec.dispatch(&km, &mp, &[a.part.clone(), a.out.clone()], g);
    Ok(())
}
