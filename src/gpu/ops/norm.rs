//! RMSNorm over a chunk of tokens (prefill; decode fuses the norm into matvec).

use crate::gpu::ops::linear::LinearIo;
use crate::gpu::ops::pack_f16;
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
    out_stride: u32,
    _pad: [u32; 2],
}

/// y[t] = rmsnorm(x[t]) * gamma for t < n_tok; rows are `stride` floats apart, `n` normalised.
pub fn rmsnorm(rec: &mut Recorder, x: &BufRef, y: &BufRef, gamma: &wgpu::Buffer, n: usize, stride: usize, n_tok: usize, eps: f32) -> Result<()> {
    let ctx = rec.ctx();
    let k = ctx.kernel("rmsnorm", super::src::RMSNORM, "main", &[])?;
    let g = grid(ctx, n_tok as u32);
    let p = Params { n: n as u32, stride: stride as u32, n_tok: n_tok as u32, eps, grid_x: g[0], out_stride: 0, _pad: [0; 2] };
    rec.dispatch(&k, &p, &[x.clone(), y.clone(), BufRef::from(gamma)], g);
    Ok(())
}

/// `rmsnorm` written as the f16 rows the cooperative-matrix matmul reads (`pack_f16`'s layout, into
/// `dst`), in the one pass: returns `io` reading them (`x_f16`, offset 0, stride
/// `pack_f16::packed_halves(n)`). `io.x` is the f32 input with rows of `io.x_stride` floats.
pub fn rmsnorm_packed(rec: &mut Recorder, io: &LinearIo, dst: &BufRef, gamma: &wgpu::Buffer, n: usize, eps: f32) -> Result<LinearIo> {
    let ld = pack_f16::packed_halves(n);
    let need = pack_f16::packed_bytes(io.n_tok, n);
    if io.x_f16 || io.x_off != 0 {
        return Err(crate::Error::arg("rmsnorm_packed", "the input must be f32 rows from offset 0"));
    }
    if dst.size() < need {
        return Err(crate::Error::arg("rmsnorm_packed", format!("f16 output buffer of {} bytes, needs {need} ({} tokens x {ld} halves)", dst.size(), io.n_tok)));
    }
    let ctx = rec.ctx();
    let k = ctx.kernel("rmsnorm[packed]", super::src::RMSNORM, "main", &[("PACK", 1.0)])?;
    let g = grid(ctx, io.n_tok as u32);
    let p = Params { n: n as u32, stride: io.x_stride as u32, n_tok: io.n_tok as u32, eps, grid_x: g[0], out_stride: ld as u32, _pad: [0; 2] };
    rec.dispatch(&k, &p, &[io.x.clone(), dst.clone(), BufRef::from(gamma)], g);
    Ok(LinearIo { x: dst.clone(), x_off: 0, x_stride: ld, x_f16: true, ..io.clone() })
}
