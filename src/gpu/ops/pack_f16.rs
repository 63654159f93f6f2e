//! Activations to f16 ahead of the cooperative-matrix matmul (`pack_f16.wgsl`).

use crate::gpu::ops::linear::LinearIo;
use crate::gpu::{BufRef, Recorder};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cols: u32,
    x_off: u32,
    x_stride: u32,
    ld8: u32,
    n_tok: u32,
    _pad: [u32; 3],
}

/// Halves a packed row of `cols` inputs takes: `cols` rounded up to whole octets.
pub fn packed_halves(cols: usize) -> usize {
    cols.div_ceil(8) * 8
}

/// Bytes of the f16 copy of `n_tok` inputs of `cols` values.
pub fn packed_bytes(n_tok: usize, cols: usize) -> u64 {
    (n_tok * packed_halves(cols) * 2) as u64
}

/// Writes io's `n_tok` f32 inputs of width `cols` to `dst` as f16 rows of `packed_halves(cols)`
/// (zero-padded) and returns io reading from there (`x_f16`, offset and stride in halves).
pub fn pack_f16(rec: &mut Recorder, io: &LinearIo, cols: usize, dst: &BufRef) -> Result<LinearIo> {
    if io.x_f16 {
        return Ok(io.clone());
    }
    let ld = packed_halves(cols);
    let need = packed_bytes(io.n_tok, cols);
    if dst.size() < need {
        return Err(crate::Error::arg("pack_f16", format!("f16 input buffer of {} bytes, needs {need} ({} tokens x {ld} halves)", dst.size(), io.n_tok)));
    }
    let ctx = rec.ctx();
    let k = ctx.kernel("pack_f16", super::src::PACK_F16, "main", &[])?;
    let ld8 = (ld / 8) as u32;
    let p = Params { cols: cols as u32, x_off: io.x_off as u32, x_stride: io.x_stride as u32, ld8, n_tok: io.n_tok as u32, _pad: [0; 3] };
    rec.dispatch(&k, &p, &[io.x.clone(), dst.clone()], [ld8.div_ceil(64), io.n_tok as u32, 1]);
    Ok(LinearIo { x: dst.clone(), x_off: 0, x_stride: ld, x_f16: true, ..io.clone() })
}

/// `pack_f16` into `dst` when given (the caller's matmul reads f16), else io unchanged.
pub fn pack_if(rec: &mut Recorder, io: &LinearIo, cols: usize, dst: Option<&BufRef>) -> Result<LinearIo> {
    match dst {
        Some(d) => pack_f16(rec, io, cols, d),
        None => Ok(io.clone()),
    }
}
