//! Matmuls split along K: the second pass (`matmul_split_reduce.wgsl`) and the scratch that holds
//! the first pass's partial products.
//!
//! A 512-token product of an 8B model makes 64-96 output tiles of 128 x 256 (O, QKV, down) for the
//! 132 compute units of an H200, each tile a long walk over K: most units idle or one wave with a
//! long tail. Split `s` ways along K, the matmul kernel runs `s` times the workgroups, each over
//! its own columns, and stores raw partials (`[s][n_tok][rows]` f32); this pass sums them in a
//! fixed order (bit-for-bit the same on every run, unlike atomics) and applies the epilogue.

use crate::gpu::ops::linear::{Epilogue, LinearIo};
use crate::gpu::{grid, BufRef, GpuContext, Recorder};
use crate::Result;

/// Bytes of the partials scratch: at most this much (and one binding). The 8B products that split
/// at 512 tokens need 34-38 MB (4 x 512 x 4096 and 3 x 512 x 6144 floats); larger chunks make
/// enough tiles not to split.
pub const SCRATCH_BYTES: u64 = 64 << 20;

/// Bytes the partials of `splits` x `n_tok` x `rows` take.
pub fn partial_bytes(splits: usize, n_tok: usize, rows: usize) -> u64 {
    (splits * n_tok * rows * 4) as u64
}

/// The scratch's size on this adapter.
pub fn scratch_bytes(ctx: &GpuContext) -> u64 {
    SCRATCH_BYTES.min(ctx.caps.max_binding).min(ctx.caps.max_buffer) / 4 * 4
}

/// The shared partials buffer, made on first use.
pub fn scratch(ctx: &GpuContext) -> Result<wgpu::Buffer> {
    let mut slot = ctx.split_part.lock().unwrap();
    if let Some(b) = slot.as_ref() {
        return Ok(b.clone());
    }
    let b = ctx.storage("matmul split-K partials", scratch_bytes(ctx))?;
    *slot = Some(b.clone());
    Ok(b)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n_tok: u32,
    splits: u32,
    mode: u32,
    y_stride: u32,
    row0: u32,
    grid_x: u32,
    _pad: u32,
}

/// An error unless `part` holds the partials of `splits` x `n_tok` x `rows`: checked before the
/// split matmul writes them.
pub fn check_partials(part: &BufRef, splits: usize, n_tok: usize, rows: usize) -> Result<()> {
    let need = partial_bytes(splits, n_tok, rows);
    if need > part.size() {
        return Err(crate::Error::arg("splits", format!("{splits} splits of {n_tok} tokens x {rows} rows need {need} bytes of partials, the scratch holds {}", part.size())));
    }
    Ok(())
}

/// Sums `splits` planes of `n_tok` x `rows` partials in `part` and applies `epi` into `io.y` at
/// weight row `row0` (the shard's first row plus `io.y_row0`). The split matmul before it checked
/// that `part` holds them (`check_partials`).
pub(crate) fn reduce(rec: &mut Recorder, part: &BufRef, io: &LinearIo, epi: Epilogue, rows: usize, row0: usize, splits: usize) -> Result<()> {
    let ctx = rec.ctx();
    let k = ctx.kernel("matmul_split_reduce", super::src::MATMUL_SPLIT_REDUCE, "main", &[])?;
    let outputs = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
    let g = grid(ctx, ((outputs * io.n_tok) as u32).div_ceil(256));
    let p = Params {
        rows: rows as u32,
        n_tok: io.n_tok as u32,
        splits: splits as u32,
        mode: epi as u32,
        y_stride: io.y_stride as u32,
        row0: row0 as u32,
        grid_x: g[0],
        _pad: 0,
    };
    rec.dispatch(&k, &p, &[part.clone(), io.y.clone()], g);
    Ok(())
}
