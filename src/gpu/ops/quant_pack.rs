//! GPU layouts and kernel sources for the ggml block formats.
//!
//! Blocks whose size is not a multiple of 4 bytes (Q4_0: 18, Q8_0: 34) are padded after their
//! f16 scale to 20 and 36 bytes, so every block starts on a u32 (WGSL reads storage as u32).
//! Q4_1 (20 bytes), Q4_K (144) and Q5_K (176) are uploaded as stored; Q6_K (210 bytes, its f16
//! scale last) is padded at its end to 212.

use crate::model::host::{HostTensor, TensorFormat};
use crate::{Error, Result};

const SRC_Q4_0: &str = include_str!("../../../shaders/wfmt_q4_0.wgsl");
const SRC_Q4_1: &str = include_str!("../../../shaders/wfmt_q4_1.wgsl");
const SRC_Q8_0: &str = include_str!("../../../shaders/wfmt_q8_0.wgsl");
const SRC_Q4_K: &str = include_str!("../../../shaders/wfmt_q4_k.wgsl");
const SRC_Q5_K: &str = include_str!("../../../shaders/wfmt_q5_k.wgsl");
const SRC_Q6_K: &str = include_str!("../../../shaders/wfmt_q6_k.wgsl");

/// (bytes per block in the file, bytes per block on the GPU) for the formats with kernels.
fn gpu_block(fmt: TensorFormat) -> Option<(usize, usize)> {
    match fmt {
        TensorFormat::Q4_0 => Some((18, 20)),
        TensorFormat::Q4_1 => Some((20, 20)),
        TensorFormat::Q8_0 => Some((34, 36)),
        TensorFormat::Q4_K => Some((144, 144)),
        TensorFormat::Q5_K => Some((176, 176)),
        TensorFormat::Q6_K => Some((210, 212)),
        _ => None,
    }
}

/// Pack rows of a block-quantized tensor into the GPU layout its kernel reads.
/// Returns (format, bytes per row, packed bytes).
pub fn pack_quant_rows(t: &HostTensor<'_>, fmt: TensorFormat, rows: usize, cols: usize) -> Result<(TensorFormat, usize, Vec<u8>)> {
    let (file_b, gpu_b) = gpu_block(fmt).ok_or_else(|| Error::Unsupported(format!("tensor `{}`: no GPU kernel for {fmt:?} weights yet", t.name)))?;
    let per_block = fmt.block().0;
    let blocks = rows * cols / per_block;
    if t.data.len() < blocks * file_b {
        return Err(Error::tensor(&t.name, format!("{fmt:?} data too short: {} bytes for {blocks} blocks", t.data.len())));
    }
    let row_bytes = cols / per_block * gpu_b;
    if file_b == gpu_b {
        return Ok((fmt, row_bytes, t.data[..blocks * file_b].to_vec()));
    }
    let mut out = vec![0u8; blocks * gpu_b];
    for (src, dst) in t.data.chunks_exact(file_b).take(blocks).zip(out.chunks_exact_mut(gpu_b)) {
        if fmt == TensorFormat::Q6_K {
            dst[..file_b].copy_from_slice(src); // scale stays at byte 208, padding after it
        } else {
            dst[..2].copy_from_slice(&src[..2]); // f16 scale, then 2 bytes of padding
            dst[4..4 + file_b - 2].copy_from_slice(&src[2..]);
        }
    }
    Ok((fmt, row_bytes, out))
}

/// (name, WGSL source of the format file, bytes per unit of `w_stride`) for a quantized format.
pub fn quant_format_shader(fmt: TensorFormat) -> Result<(&'static str, &'static str, usize)> {
    Ok(match fmt {
        TensorFormat::Q4_0 => ("wfmt_q4_0", SRC_Q4_0, 4),
        TensorFormat::Q4_1 => ("wfmt_q4_1", SRC_Q4_1, 4),
        TensorFormat::Q8_0 => ("wfmt_q8_0", SRC_Q8_0, 4),
        TensorFormat::Q4_K => ("wfmt_q4_k", SRC_Q4_K, 4),
        TensorFormat::Q5_K => ("wfmt_q5_k", SRC_Q5_K, 4),
        TensorFormat::Q6_K => ("wfmt_q6_k", SRC_Q6_K, 4),
        other => return Err(Error::Unsupported(format!("GPU kernels for {other:?} weights"))),
    })
}
