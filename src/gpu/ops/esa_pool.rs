//! ESA proximity pooling (shaders/esa_pool.wgsl): out[m] = max of x over |m' - m| <= eps, clipped
//! to the range. Inputs must not contain NaN (the result for a window holding one is unspecified).

use crate::gpu::{grid, BufRef, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    eps: u32,
    grid_x: u32,
    _pad: u32,
}

/// Records `out[0..n] = maxpool(x[0..n], eps)`. `x` and `out` must be different buffers.
/// `n = 0` records nothing.
pub fn pool(rec: &mut Recorder, x: &BufRef, out: &BufRef, n: usize, eps: usize) -> Result<()> {
    if x.buf == out.buf {
        return Err(Error::arg("esa_pool", "input and output must be different buffers"));
    }
    if n == 0 {
        return Ok(());
    }
    super::esa_common::check_words("esa_pool", "x", x, n)?;
    super::esa_common::check_words("esa_pool", "out", out, n)?;
    let ctx = rec.ctx();
    let k = ctx.kernel("esa_pool", super::src::ESA_POOL, "main", &[])?;
    let g = grid(ctx, n.div_ceil(256) as u32);
    let p = Params { n: n as u32, eps: eps.min(u32::MAX as usize) as u32, grid_x: g[0], _pad: 0 };
    rec.dispatch(&k, &p, &[x.clone(), out.clone()], g);
    Ok(())
}
