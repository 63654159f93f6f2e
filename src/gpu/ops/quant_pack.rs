//! GPU layouts and kernel sources for the ggml block formats.
//!
//! Blocks whose size is not a multiple of 4 bytes (Q4_0: 18, Q8_0: 34) are padded after their
//! f16 scale to 20 and 36 bytes, so every block starts on a u32 (WGSL reads storage as u32).
//! Q4_1 (20 bytes) is uploaded as stored.

use crate::model::host::{HostTensor, TensorFormat};
use crate::{Error, Result};

const SRC_Q4_0: &str = include_str!("../../../shaders/wfmt_q4_0.wgsl");
const SRC_Q4_1: &str = include_str!("../../../shaders/wfmt_q4_1.wgsl");
const SRC_Q8_0: &str = include_str!("../../../shaders/wfmt_q8_0.wgsl");

/// (bytes per block in the file, bytes per block on the GPU) for the formats with kernels.
fn gpu_block(fmt: TensorFormat) -> Option<(usize, usize)> {
    match fmt {
        TensorFormat::Q4_0 => Some((18, 20)),
        TensorFormat::Q4_1 => Some((20, 20)),
        TensorFormat::Q8_0 => Some((34, 36)),
        _ => None,
    }
}

/// Pack rows of a block-quantized tensor into the GPU layout its kernel reads.
/// Returns (format, bytes per row, packed bytes).
pub fn pack_quant_rows(t: &HostTensor<'_>, fmt: TensorFormat, rows: usize, cols: usize) -> Result<(TensorFormat, usize, Vec<u8>)> {
    let (file_b, gpu_b) = gpu_block(fmt).ok_or_else(|| Error::Unsupported(format!("tensor `{}`: no GPU kernel for {fmt:?} weights yet", t.name)))?;
    let blocks = rows * cols / 32;
    if t.data.len() < blocks * file_b {
        return Err(Error::tensor(&t.name, format!("{fmt:?} data too short: {} bytes for {blocks} blocks", t.data.len())));
    }
    if file_b == gpu_b {
        return Ok((fmt, cols / 32 * gpu_b, t.data[..blocks * file_b].to_vec()));
    }
    let mut out = vec![0u8; blocks * gpu_b];
    for (src, dst) in t.data.chunks_exact(file_b).take(blocks).zip(out.chunks_exact_mut(gpu_b)) {
        dst[..2].copy_from_slice(&src[..2]); // f16 scale, then 2 bytes of padding
        dst[4..4 + file_b - 2].copy_from_slice(&src[2..]);
    }
    Ok((fmt, cols / 32 * gpu_b, out))
}

/// (name, WGSL source of the format file, bytes per unit of `w_stride`) for a quantized format.
pub fn quant_format_shader(fmt: TensorFormat) -> Result<(&'static str, &'static str, usize)> {
    Ok(match fmt {
        TensorFormat::Q4_0 => ("wfmt_q4_0", SRC_Q4_0, 4),
        TensorFormat::Q4_1 => ("wfmt_q4_1", SRC_Q4_1, 4),
        TensorFormat::Q8_0 => ("wfmt_q8_0", SRC_Q8_0, 4),
        other => return Err(Error::Unsupported(format!("GPU kernels for {other:?} weights"))),
    })
}
