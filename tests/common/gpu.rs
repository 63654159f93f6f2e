//! Small helpers the GPU kernel tests share: random inputs, uploads, NaN-poisoned outputs.

use esa_wgpu::gpu::GpuContext;
use rand::rngs::StdRng;
use rand::Rng;

/// `n` values uniform in [-scale, scale).
pub fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

pub fn upload(ctx: &GpuContext, v: &[f32]) -> wgpu::Buffer {
    ctx.upload("in", bytemuck::cast_slice(v)).unwrap()
}

/// An output buffer full of NaN, so an element a kernel forgot to write fails the comparison.
pub fn poisoned(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    upload(ctx, &vec![f32::NAN; n])
}
