//! ggml block quantisation formats: CPU dequantisation (the reference the GPU kernels are tested
//! against) and helpers to build random blocks for tests.

use crate::model::host::TensorFormat;
use crate::{Error, Result};

/// Dequantize `numel` elements stored in `format` to f32.
/// Errors (naming `what`) if `data` is too short or the format is unknown.
pub fn dequantize(what: &str, format: TensorFormat, data: &[u8], numel: usize) -> Result<Vec<f32>> {
    let (be, bb) = format.block();
    if numel % be != 0 {
        return Err(Error::tensor(what, format!("{numel} elements is not a multiple of the {format:?} block of {be}")));
    }
    let need = numel / be * bb;
    if data.len() < need {
        return Err(Error::tensor(what, format!("needs {need} bytes of {format:?} data, has {}", data.len())));
    }
    let d = &data[..need];
    Ok(match format {
        TensorFormat::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        TensorFormat::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        TensorFormat::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(Error::Unsupported(format!("{what}: dequantizing {other:?} (not yet implemented)"))),
    })
}
