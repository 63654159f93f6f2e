//! ESA's compressed queries under exact maps (shaders/esa_query_exact.wgsl): each KV group's query
//! heads rotated to the long-distance position w and summed, which is what the lossless f_q
//! (`reference::esa::lossless_maps` with the rotation folded in) computes, at O(q_dim) per token
//! instead of a kv_dim x q_dim product.

use crate::gpu::{grid, BufRef, GpuContext, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tok: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    x_stride: u32,
    out_stride: u32,
    grid_x: u32,
    _pad: u32,
}

/// The rotation table the kernel reads: (cos, sin) of `w * inv_freq[i]`, angles as the reference's
/// (the f32 product, then f64 trigonometry), uploaded once per session.
pub fn rotation_table(ctx: &GpuContext, w: usize, inv_freq: &[f32]) -> Result<wgpu::Buffer> {
    let t: Vec<f32> = inv_freq
        .iter()
        .flat_map(|&f| {
            let (s, c) = ((w as f32 * f) as f64).sin_cos();
            [c as f32, s as f32]
        })
        .collect();
    ctx.upload("esa query rotation", bytemuck::cast_slice(&t))
}

/// Shapes of one call: `n_tok` rows of `x_stride` floats in `x` (queries at columns 0..q_dim);
/// outputs `[n_tok][out_stride]`, kv_dim of them per row.
pub struct ExactQuery<'a> {
    pub x: &'a BufRef,
    pub x_stride: usize,
    pub rot: &'a wgpu::Buffer,
    pub out: &'a BufRef,
    pub out_stride: usize,
    pub n_tok: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

/// Records `out[t][g D + i] = sum over the group's heads of (R_w q_h)_i`.
pub fn exact(rec: &mut Recorder, a: &ExactQuery) -> Result<()> {
    if a.head_dim == 0 || a.head_dim % 2 != 0 || a.n_kv == 0 || a.n_heads % a.n_kv != 0 {
        return Err(Error::arg("esa_query", format!("head_dim {} must be even, n_heads {} a multiple of n_kv {}", a.head_dim, a.n_heads, a.n_kv)));
    }
    let (q_dim, kv_dim) = (a.n_heads * a.head_dim, a.n_kv * a.head_dim);
    if a.x_stride < q_dim || a.out_stride < kv_dim {
        return Err(Error::arg("esa_query", format!("x_stride {} >= q_dim {q_dim} and out_stride {} >= kv_dim {kv_dim}", a.x_stride, a.out_stride)));
    }
    if a.n_tok == 0 {
        return Ok(());
    }
    super::esa_common::check_words("esa_query", "x", a.x, (a.n_tok - 1) * a.x_stride + q_dim)?;
    super::esa_common::check_words("esa_query", "out", a.out, (a.n_tok - 1) * a.out_stride + kv_dim)?;
    let ctx = rec.ctx();
    let k = ctx.kernel("esa_query_exact", super::src::ESA_QUERY_EXACT, "main", &[])?;
    let g = grid(ctx, (a.n_tok * a.n_kv * a.head_dim / 2).div_ceil(256) as u32);
    let p = Params {
        n_tok: a.n_tok as u32,
        n_heads: a.n_heads as u32,
        n_kv: a.n_kv as u32,
        head_dim: a.head_dim as u32,
        x_stride: a.x_stride as u32,
        out_stride: a.out_stride as u32,
        grid_x: g[0],
        _pad: 0,
    };
    rec.dispatch(&k, &p, &[a.x.clone(), BufRef::from(a.rot), a.out.clone()], g);
    Ok(())
}
