//! RMSNorm over a chunk of tokens (prefill; decode fuses the norm into matvec).

use crate::gpu::{grid, BufRef, Recorder};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    stride: u32,
    n_tok: u32,
    eps: f32,
    grid_x: u32,
    _pad: [u32; 3],
}

/// y[t] = rmsnorm(x[t]) * gamma for t < n_tok; rows are `stride` floats apart, `n` normalised.
pub fn rmsnorm(rec: &mut Recorder, x: &BufRef, y: &BufRef, gamma: &wgpu::Buffer, n: usize, stride: usize, n_tok: usize, eps: f32) -> Result<()> {
    let ctx = rec.ctx();
    let k = ctx.kernel("rmsnorm", super::src::RMSNORM, "main", &[])?;
    let g = grid(ctx, n_tok as u32);
    let p = Params { n: n as u32, stride: stride as u32, n_tok: n_tok as u32, eps, grid_x: g[0], _pad: [0; 3] };
    rec.dispatch(&k, &p, &[x.clone(), y.clone(), BufRef::from(gamma)], g);
    Ok(())
}
