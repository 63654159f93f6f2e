//! Host-side tensors as loaders hand them over: raw bytes in the file's own storage format.
//! The GPU upload (`model::weights`) and the CPU reference both start from these.

use std::borrow::Cow;

/// Storage format of a tensor. Block formats are GGUF's (ggml) layouts, row-major, blocks along a row.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl TensorFormat {
    /// (elements per block, bytes per block)
    pub fn block(&self) -> (usize, usize) {
        match self {
            TensorFormat::F32 => (1, 4),
            TensorFormat::F16 | TensorFormat::BF16 => (1, 2),
            TensorFormat::Q8_0 => (32, 34),
            TensorFormat::Q4_0 => (32, 18),
            TensorFormat::Q4_1 => (32, 20),
            TensorFormat::Q4_K => (256, 144),
            TensorFormat::Q5_K => (256, 176),
            TensorFormat::Q6_K => (256, 210),
        }
    }
    pub fn is_quantized(&self) -> bool {
        !matches!(self, TensorFormat::F32 | TensorFormat::F16 | TensorFormat::BF16)
    }
    /// Bytes of one row of `cols` elements, or None if `cols` is not a multiple of the block size.
    pub fn row_bytes(&self, cols: usize) -> Option<usize> {
        let (be, bb) = self.block();
        (cols % be == 0).then(|| cols / be * bb)
    }
}

/// A tensor as stored in a model file. `shape` is row-major, outermost first, like PyTorch:
/// a linear layer's weight is `[out_features, in_features]`.
#[derive(Debug, Clone)]
pub struct HostTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub format: TensorFormat,
    pub data: Cow<'a, [u8]>,
}

impl HostTensor<'_> {
    pub fn numel(&self) -> usize { self.shape.iter().product() }
    /// (rows, cols) viewing every outer dimension as rows.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = *self.shape.last().unwrap_or(&1);
        (self.numel() / cols.max(1), cols)
    }
}

/// Anything that yields a config and named tensors with HF (`model.layers.N.self_attn.q_proj.weight`)
/// names and HF conventions (rotate-half RoPE row order). Safetensors folders and GGUF files implement it.
pub trait WeightSource {
    fn config(&self) -> &crate::model::config::Config;
    /// Where the weights came from, for error messages.
    fn origin(&self) -> &std::path::Path;
    fn tensor(&self, name: &str) -> crate::Result<HostTensor<'_>>;
    fn has_tensor(&self, name: &str) -> bool;
}
