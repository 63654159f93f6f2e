//! GPU layouts and kernel sources for the ggml block formats (Q8_0, Q4_0, Q4_1, K-quants).

use crate::model::host::{HostTensor, TensorFormat};
use crate::{Error, Result};

/// Pack rows of a block-quantized tensor into the GPU layout its kernel reads.
/// Returns (format, bytes per row, packed bytes).
pub fn pack_quant_rows(t: &HostTensor<'_>, fmt: TensorFormat, _rows: usize, _cols: usize) -> Result<(TensorFormat, usize, Vec<u8>)> {
    Err(Error::Unsupported(format!("tensor `{}`: GPU kernels for {fmt:?} weights", t.name)))
}

/// (name, WGSL source of the format file, bytes per unit of `w_stride`) for a quantized format.
pub fn quant_format_shader(fmt: TensorFormat) -> Result<(&'static str, &'static str, usize)> {
    Err(Error::Unsupported(format!("GPU kernels for {fmt:?} weights")))
}
