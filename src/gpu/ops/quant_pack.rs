//! GPU layouts and kernel sources for the ggml block formats.
//!
//! Blocks whose size is not a multiple of 4 bytes (Q4_0: 18, Q8_0: 34) are padded after their
//! f16 scale to 20 and 36 bytes, so every block starts on a u32 (WGSL reads storage as u32).
//! Q4_1 (20 bytes), Q4_K (144) and Q5_K (176) are uploaded as stored; Q6_K (210 bytes, its f16
//! scale last) is padded at its end to 212.

use crate::model::host::TensorFormat;
use crate::{Error, Result};

const SRC_Q4_0: &str = include_str!("../../../shaders/wfmt_q4_0.wgsl");
const SRC_Q4_1: &str = include_str!("../../../shaders/wfmt_q4_1.wgsl");
const SRC_Q8_0: &str = include_str!("../../../shaders/wfmt_q8_0.wgsl");
const SRC_Q4_K: &str = include_str!("../../../shaders/wfmt_q4_k.wgsl");
const SRC_Q5_K: &str = include_str!("../../../shaders/wfmt_q5_k.wgsl");
const SRC_Q6_K: &str = include_str!("../../../shaders/wfmt_q6_k.wgsl");

/// (bytes per block in the file, bytes per block on the GPU) for the formats with kernels.
pub fn gpu_block(fmt: TensorFormat) -> Option<(usize, usize)> {
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

/// Write one block as stored in the file (`src`) into its GPU layout (`dst`, `gpu_block` bytes,
/// zeroed by the caller): the f16 scale of Q4_0/Q8_0 then two bytes of padding; Q6_K's 210 bytes
/// (scale last) then two.
pub fn pad_block(fmt: TensorFormat, src: &[u8], dst: &mut [u8]) {
    if fmt == TensorFormat::Q6_K {
        dst[..src.len()].copy_from_slice(src);
    } else {
        dst[..2].copy_from_slice(&src[..2]);
        dst[4..4 + src.len() - 2].copy_from_slice(&src[2..]);
    }
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
