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

/// Largest token count the matvec kernel takes; larger chunks go through the tiled matmul, which
/// reads each weight block once per 64 tokens, on every adapter (on lavapipe a 64-token chunk of a
/// 1536 x 576 layer takes 27 ms in the matmul against ~350 ms in 64 matvecs).
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

/// Rows per matvec workgroup: CPU adapters (lavapipe, SwiftShader) pay per workgroup, so they
/// get 32 rows x 8 lanes; GPUs get 4 rows x 64 lanes for long coalesced row reads.
pub fn matvec_rows(ctx: &GpuContext) -> u32 {
    if ctx.info.device_type == wgpu::DeviceType::Cpu { 32 } else { 4 }
}

/// The subgroup size the subgroup matvec can rely on (adapters whose size is fixed), if any.
pub fn fixed_subgroup(ctx: &GpuContext) -> Option<u32> {
    let c = &ctx.caps;
    (c.subgroups && c.subgroup_min == c.subgroup_max && c.subgroup_min >= 4 && c.subgroup_min <= 64
        )
        .then_some(c.subgroup_min)
}

/// The WGSL of a linear-layer driver (`matvec`, `matvec_sg`, `matmul`, `matmul_coop`) composed with
/// a weight format: directives, the shared params, the format file, the driver. Public so tests can
/// validate the variants an adapter at hand cannot run.
pub fn kernel_source(driver: &str, fmt: TensorFormat) -> Result<String> {
    let driver_src = match driver {
        "matvec" => src::MATVEC,
        "matvec_sg" => src::MATVEC_SG,
        "matmul" => src::MATMUL,
        "matmul_coop" => src::MATMUL_COOP,
        "matmul_coop128" => return Ok(kernel_source("matmul_coop", fmt)?.replacen("const BT: u32 = 64u;", "const BT: u32 = 128u;", 1)),
        other => return Err(crate::Error::arg("driver", format!("unknown linear driver `{other}`"))),
    };
    let (_, fsrc, _, _) = format_shader(fmt)?;
    Ok(super::with_prelude(driver_src, &format!("{}\n{fsrc}", src::LINEAR_PARAMS)))
}

fn kernel(ctx: &GpuContext, driver: &str, fmt: TensorFormat) -> Result<(Arc<Kernel>, usize)> {
    let (fname, _, unit, mut consts) = format_shader(fmt)?;
    if driver == "matvec_sg" {
        consts.push(("SG", fixed_subgroup(ctx).unwrap_or(32) as f64));
    }
    if driver == "matvec" {
        let rows = matvec_rows(ctx);
        consts.push(("ROWS", rows as f64));
        consts.push(("LANES", (256 / rows) as f64));
    }
    let name = format!("{driver}+{fname}");
    let source = kernel_source(driver, fmt)?;
    Ok((ctx.kernel(&name, &source, "main", &consts)?, unit))
}

/// Layout of the activations: `n_tok` rows of `x_stride` floats in `x`; outputs at
/// `y[t * y_stride + y_row0 + r]` (SwiGLU: `(y_row0 + r) / 2`, y_row0 counting weight rows).
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
    let sg = fixed_subgroup(ctx);
    let (k, unit) = match sg {
        Some(_) => kernel(ctx, "matvec_sg", w.format)?,
        None => kernel(ctx, "matvec", w.format)?,
    };
    let gamma = match norm {
        Some((g, _)) => BufRef::from(g),
        None => io.x.clone(), // bound but unread
    };
    for s in &w.shards {
        let groups = match sg {
            // one output row per subgroup; SwiGLU outputs are row pairs
            Some(sg) => ((if epi == Epilogue::SwiGlu { s.rows / 2 } else { s.rows }) as u32).div_ceil(64 / sg),
            None => (s.rows as u32).div_ceil(matvec_rows(ctx)),
        };
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

/// How a chunk of tokens is multiplied: on cooperative matrices (tensor cores) or with the portable
/// FMA tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulVariant {
    /// `matmul_coop.wgsl`: 64-token x 128-row tiles of 16x16x16 f16 products, f32 accumulation.
    Coop,
    /// `matmul.wgsl`: 64 x 64 tiles of f32 FMAs, every adapter.
    Tiled,
}

/// Tiles of 128 x 128 (rather than 128 rows x 64 tokens) once a product has this many of them.
const COOP_TILES_FOR_128: usize = 256;

/// The matmul variant the adapter runs best: cooperative matrices where the adapter offers 16x16x16
/// f16 -> f32 products and subgroups of exactly 32 (the tile layout has 8 subgroups of 32).
pub fn matmul_variant(ctx: &GpuContext) -> MatmulVariant {
    if (ctx.caps.coop_f16_16 && ctx.caps.shader_f16 && fixed_subgroup(ctx) == Some(32)) || ctx.caps.coop_emulated {
        MatmulVariant::Coop
    } else {
        MatmulVariant::Tiled
    }
}

/// Y = X W^T for a chunk of tokens (tiled). Input must already be normalised.
/// F32 weights (ESA's compression maps, small) keep full precision on the FMA tiles.
pub fn matmul(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue) -> Result<()> {
    let v = if w.format == TensorFormat::F32 { MatmulVariant::Tiled } else { matmul_variant(rec.ctx()) };
    matmul_with(rec, w, io, epi, v)
}

/// `matmul` with the variant forced (tests and benches compare them; `Coop` needs an adapter for
/// which `matmul_variant` chose it).
pub fn matmul_with(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, variant: MatmulVariant) -> Result<()> {
    let ctx = rec.ctx();
    let ((k, unit), (tile_rows, tile_tok)) = match variant {
        MatmulVariant::Coop => {
            // 128-token tiles feed each staged weight to twice the products, but need 48 KiB of
            // workgroup memory and halve the number of workgroups: take them when there are
            // still enough tiles to fill a large GPU.
            let tiles_128 = w.rows.div_ceil(128) * io.n_tok.div_ceil(128);
            if tiles_128 >= COOP_TILES_FOR_128 && ctx.caps.max_workgroup_storage >= 49152 {
                (kernel(ctx, "matmul_coop128", w.format)?, (128u32, 128u32))
            } else {
                (kernel(ctx, "matmul_coop", w.format)?, (128, 64))
            }
        }
        MatmulVariant::Tiled => (kernel(ctx, "matmul", w.format)?, (64, 64)),
    };
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
        let g = [(s.rows as u32).div_ceil(tile_rows), (io.n_tok as u32).div_ceil(tile_tok), 1];
        if g[0] > ctx.caps.max_workgroups_per_dim || g[1] > ctx.caps.max_workgroups_per_dim {
            return Err(crate::Error::arg("n_tok", format!("matmul grid {g:?} exceeds the adapter's {} workgroups per dimension", ctx.caps.max_workgroups_per_dim)));
        }
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
