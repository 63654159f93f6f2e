//! Append compressed keys to the 16-bit compressed-key cache (shaders/esa_pack.wgsl): the f32 output
//! of the f_k projection for a chunk becomes f16 cache rows `pos0..pos0 + n_tok`.
//! Cache layout (what `esa_score` reads): `[rows][d/2]` u32, two f16 per word, even element low.

use crate::gpu::{grid, BufRef, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tok: u32,
    d: u32,
    x_stride: u32,
    pos0: u32,
    grid_x: u32,
    _pad: [u32; 3],
}

/// Bytes per token of the compressed-key cache for width `d`.
pub fn row_bytes(d: usize) -> usize {
    d * 2
}

/// Records `cache[pos0 + t] = f16(x[t * x_stride .. + d])` for t < n_tok.
pub fn append(rec: &mut Recorder, x: &BufRef, x_stride: usize, cache: &BufRef, d: usize, n_tok: usize, pos0: usize) -> Result<()> {
    if d == 0 || d % 2 != 0 || x_stride < d {
        return Err(Error::arg("esa_pack", format!("d' {d} must be even and >= 2, x_stride {x_stride} >= d'")));
    }
    if n_tok == 0 {
        return Ok(());
    }
    super::esa_common::check_words("esa_pack", "x", x, (n_tok - 1) * x_stride + d)?;
    super::esa_common::check_words("esa_pack", "cache", cache, (pos0 + n_tok) * d / 2)?;
    let ctx = rec.ctx();
    let k = ctx.kernel("esa_pack", super::src::ESA_PACK, "main", &[])?;
    let g = grid(ctx, (n_tok * d / 2).div_ceil(256) as u32);
    let p = Params { n_tok: n_tok as u32, d: d as u32, x_stride: x_stride as u32, pos0: pos0 as u32, grid_x: g[0], _pad: [0; 3] };
    rec.dispatch(&k, &p, &[x.clone(), cache.clone()], g);
    Ok(())
}
