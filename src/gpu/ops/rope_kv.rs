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
    _pad: u32,
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
    let p = Params {
        n_tok: a.n_tok as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        head_dim: a.head_dim as u32,
        pos0: a.pos0 as u32,
        qkv_stride: a.qkv_stride as u32,
        grid_x: g[0],
        _pad: 0,
    };
    rec.dispatch(&k, &p, &[a.qkv.clone(), a.q_out.clone(), a.k_cache.clone(), a.v_cache.clone(), BufRef::from(a.inv_freq)], g);
    Ok(())
}
