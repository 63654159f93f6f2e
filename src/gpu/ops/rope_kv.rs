//! Split fused QKV, rotate queries (RoPE), append un-rotated keys and values to the f16 KV cache.

use crate::gpu::{grid, BufRef, Recorder};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tok: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    pos0: u32,
    qkv_stride: u32,
    grid_x: u32,
    n_slice: u32,
}

pub struct RopeKv<'a> {
    pub qkv: &'a BufRef,
    pub qkv_stride: usize,
    pub q_out: &'a BufRef,
    pub k_cache: &'a BufRef,
    pub v_cache: &'a BufRef,
    pub inv_freq: &'a wgpu::Buffer,
    pub n_tok: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Position (and cache row) of the first token of the chunk.
    pub pos0: usize,
}

pub fn rope_kv(rec: &mut Recorder, a: &RopeKv) -> Result<()> {
    let ctx = rec.ctx();
    let k = ctx.kernel("rope_kv", super::src::ROPE_KV, "main", &[])?;
    let g = grid(ctx, a.n_tok as u32);
    // Short chunks (decode) spread each token over up to one workgroup per 64 query pairs, so
    // that about 256 workgroups run; long chunks keep one per token.
    let items = (a.n_heads * a.head_dim / 2) as u32;
    let n_slice = (256 / a.n_tok.max(1) as u32).clamp(1, items.div_ceil(64).max(1));
    let p = Params {
        n_tok: a.n_tok as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        head_dim: a.head_dim as u32,
        pos0: a.pos0 as u32,
        qkv_stride: a.qkv_stride as u32,
        grid_x: g[0],
        n_slice,
    };
    rec.dispatch(&k, &p, &[a.qkv.clone(), a.q_out.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq)], [g[0], g[1], n_slice]);
    Ok(())
}
