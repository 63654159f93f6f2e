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

/// How the rows a source stores map to the rows `WeightSource::tensor` hands out (HF order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// Row r is stored as row r.
    AsStored,
    /// llama.cpp's Q/K permutation: within each head of `head_rows` rows, HF row
    /// `s * head_rows/2 + i` is stored as row `2i + s` (s in {0, 1}).
    PairedHeads { head_rows: usize },
}

impl RowOrder {
    /// The Q/K permutation of `rows` rows in `heads` heads; an error naming `name` when the rows
    /// cannot be split into heads of paired rows.
    pub fn paired_heads(name: &str, rows: usize, heads: usize) -> crate::Result<RowOrder> {
        if heads == 0 || rows == 0 || rows % (2 * heads) != 0 {
            return Err(crate::Error::tensor(name, format!("{rows} rows cannot be split into {heads} heads of paired rows")));
        }
        Ok(RowOrder::PairedHeads { head_rows: rows / heads })
    }

    /// The stored row that holds row `row` of the tensor in HF order.
    pub fn stored_row(&self, row: usize) -> usize {
        match *self {
            RowOrder::AsStored => row,
            RowOrder::PairedHeads { head_rows } => {
                let (head, within) = (row / head_rows, row % head_rows);
                let half = head_rows / 2;
                head * head_rows + 2 * (within % half) + within / half
            }
        }
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
    /// `tensor`'s bytes as the source stores them and the order that turns their rows into
    /// `tensor`'s, so the GPU upload can reorder rows while it copies them instead of making a
    /// reordered copy first (GGUF's Q/K rows). Default: `tensor` itself, as stored.
    fn stored_tensor(&self, name: &str) -> crate::Result<(HostTensor<'_>, RowOrder)> {
        Ok((self.tensor(name)?, RowOrder::AsStored))
    }
}
