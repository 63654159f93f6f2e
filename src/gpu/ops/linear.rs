//! Linear layers: `matvec` (decode, a few tokens, memory-bound) and `matmul` (prefill chunks),
//! for every weight format, with fused epilogues (residual add, SwiGLU) and, in matvec, a fused
//! input RMSNorm.

use std::sync::Arc;

use crate::gpu::tensor::GpuMatrix;
use crate::gpu::{grid, BufRef, GpuContext, Kernel, Recorder};
use crate::model::host::TensorFormat;
use crate::Result;

use super::src;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// y = W x
    Store = 0,
    /// y += W x (residual add)
    Accumulate = 1,
    /// rows are interleaved (gate, up) pairs: y[i] = silu(gate_i . x) * (up_i . x)
    SwiGlu = 2,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    w_stride: u32,
    row0: u32,
    x_stride: u32,
    y_stride: u32,
    n_tok: u32,
    mode: u32,
    norm: u32,
    eps: f32,
    grid_x: u32,
    x_off: u32,
}

/// Largest token count the matvec kernel takes; above it use `matmul`.
pub const MATVEC_MAX_TOKENS: usize = 4;

/// (format file name, source, bytes per `w_stride` unit, override constants)
fn format_shader(fmt: TensorFormat) -> Result<(&'static str, &'static str, usize, Vec<(&'static str, f64)>)> {
    Ok(match fmt {
        TensorFormat::F16 => ("wfmt_f16", src::WFMT_F16, 16, vec![("BF16", 0.0)]),
        TensorFormat::BF16 => ("wfmt_f16", src::WFMT_F16, 16, vec![("BF16", 1.0)]),
        TensorFormat::F32 => ("wfmt_f32", src::WFMT_F32, 16, vec![]),
        q => {
            let (name, s, unit) = super::quant_pack::quant_format_shader(q)?;
            (name, s, unit, vec![])
        }
    })
}

fn kernel(ctx: &GpuContext, driver: &str, driver_src: &str, fmt: TensorFormat) -> Result<(Arc<Kernel>, usize)> {
    let (fname, fsrc, unit, consts) = format_shader(fmt)?;
    let name = format!("{driver}+{fname}");
    let source = format!("{fsrc}\n{driver_src}");
    Ok((ctx.kernel(&name, &source, "main", &consts)?, unit))
}

/// Layout of the activations: `n_tok` rows of `x_stride` floats in `x`; outputs at
/// `y[t * y_stride + y_row0 + r]` (SwiGLU: `y_row0 + r/2`).
#[derive(Clone)]
pub struct LinearIo {
    pub x: BufRef,
    /// Float offset of token 0 in `x`.
    pub x_off: usize,
    pub x_stride: usize,
    pub y: BufRef,
    pub y_stride: usize,
    pub y_row0: usize,
    pub n_tok: usize,
}

/// y = W x for up to MATVEC_MAX_TOKENS tokens. `norm`: (gamma, eps) to RMS-normalise x first.
pub fn matvec(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>) -> Result<()> {
    let ctx = rec.ctx();
    let (k, unit) = kernel(ctx, "matvec", src::MATVEC, w.format)?;
    let gamma = match norm {
        Some((g, _)) => BufRef::from(g),
        None => io.x.clone(), // bound but unread
    };
    for s in &w.shards {
        let groups = (s.rows as u32).div_ceil(4);
        let g = grid(ctx, groups);
        let p = Params {
            rows: s.rows as u32,
            cols: w.cols as u32,
            w_stride: (w.row_bytes / unit) as u32,
            row0: (io.y_row0 + s.row0) as u32,
            x_stride: io.x_stride as u32,
            y_stride: io.y_stride as u32,
            n_tok: io.n_tok as u32,
            mode: epi as u32,
            norm: norm.is_some() as u32,
            eps: norm.map_or(0.0, |n| n.1),
            grid_x: g[0],
            x_off: io.x_off as u32,
        };
        rec.dispatch(&k, &p, &[BufRef::from(&s.buf), io.x.clone(), io.y.clone(), gamma.clone()], g);
    }
    Ok(())
}

/// Y = X W^T for a chunk of tokens (tiled). Input must already be normalised.
pub fn matmul(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue) -> Result<()> {
    let ctx = rec.ctx();
    let (k, unit) = kernel(ctx, "matmul", src::MATMUL, w.format)?;
    for s in &w.shards {
        let p = Params {
            rows: s.rows as u32,
            cols: w.cols as u32,
            w_stride: (w.row_bytes / unit) as u32,
            row0: (io.y_row0 + s.row0) as u32,
            x_stride: io.x_stride as u32,
            y_stride: io.y_stride as u32,
            n_tok: io.n_tok as u32,
            mode: epi as u32,
            norm: 0,
            eps: 0.0,
            grid_x: 0,
            x_off: io.x_off as u32,
        };
        let g = [(s.rows as u32).div_ceil(64), (io.n_tok as u32).div_ceil(64), 1];
        rec.dispatch(&k, &p, &[BufRef::from(&s.buf), io.x.clone(), io.y.clone()], g);
    }
    Ok(())
}

/// Picks matvec or matmul by token count. With `norm`, the matmul path expects the caller to have
/// normalised x already (see `norm::rmsnorm`), so pass `norm` only when n_tok <= MATVEC_MAX_TOKENS.
pub fn linear(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue) -> Result<()> {
    if io.n_tok <= MATVEC_MAX_TOKENS {
        matvec(rec, w, io, epi, None)
    } else {
        matmul(rec, w, io, epi)
    }
}
