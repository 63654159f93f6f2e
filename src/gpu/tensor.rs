//! Weights on the GPU in their storage format, split into row shards so no binding exceeds the
//! adapter's `max_storage_buffer_binding_size`.

use crate::gpu::GpuContext;
use crate::model::host::{HostTensor, TensorFormat};
use crate::{Error, Result};

/// A contiguous run of rows of a matrix in one buffer.
#[derive(Debug, Clone)]
pub struct Shard {
    pub buf: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// A weight matrix `[rows, cols]` on the GPU. Each row is `row_bytes` bytes in the format's GPU
/// layout (see `pack_rows`); a kernel for the format reads it.
#[derive(Debug, Clone)]
pub struct GpuMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub format: TensorFormat,
    pub row_bytes: usize,
    pub shards: Vec<Shard>,
}

/// GPU layout of one row: 16-bit rows are zero-padded to a multiple of 8 values (16 bytes) so the
/// kernel reads whole vec4<u32>; f32 sources are stored as f16 (or bf16 when a value overflows f16).
/// Returns (format on the GPU, bytes per row, packed bytes).
pub fn pack_rows(t: &HostTensor<'_>, rows: usize, cols: usize) -> Result<(TensorFormat, usize, Vec<u8>)> {
    match t.format {
        TensorFormat::F16 | TensorFormat::BF16 | TensorFormat::F32 => {
            let (fmt, vals16): (TensorFormat, Vec<u16>) = match t.format {
                TensorFormat::F32 => {
                    let f: &[u8] = &t.data;
                    let vals: Vec<f32> = f.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    if vals.iter().all(|v| v.abs() < 65000.0 || !v.is_finite()) {
                        (TensorFormat::F16, vals.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect())
                    } else {
                        (TensorFormat::BF16, vals.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect())
                    }
                }
                f => (f, t.data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            };
            let padded = cols.next_multiple_of(8);
            let mut out = vec![0u16; rows * padded];
            for r in 0..rows {
                out[r * padded..r * padded + cols].copy_from_slice(&vals16[r * cols..(r + 1) * cols]);
            }
            Ok((fmt, padded * 2, bytemuck::cast_slice(&out).to_vec()))
        }
        other => crate::gpu::ops::quant_pack::pack_quant_rows(t, other, rows, cols),
    }
}

/// Full-precision f32 rows padded to a multiple of 4 values (small matrices only).
pub fn pack_rows_f32(t: &HostTensor<'_>, rows: usize, cols: usize) -> Result<(TensorFormat, usize, Vec<u8>)> {
    let vals = crate::quant::dequantize(&t.name, t.format, &t.data, rows * cols)?;
    let padded = cols.next_multiple_of(4);
    let mut out = vec![0f32; rows * padded];
    for r in 0..rows {
        out[r * padded..r * padded + cols].copy_from_slice(&vals[r * cols..(r + 1) * cols]);
    }
    Ok((TensorFormat::F32, padded * 4, bytemuck::cast_slice(&out).to_vec()))
}

impl GpuMatrix {
    /// Upload keeping f32 precision on the GPU (for small matrices such as ESA's maps).
    pub fn upload_f32(ctx: &GpuContext, t: &HostTensor<'_>) -> Result<GpuMatrix> {
        Self::upload_packed(ctx, t, true, pack_rows_f32)
    }

    /// Upload a 2-D host tensor. `pair_rows` keeps shard boundaries on even rows (interleaved
    /// gate/up pairs must stay in one shard).
    pub fn upload(ctx: &GpuContext, t: &HostTensor<'_>, pair_rows: bool) -> Result<GpuMatrix> {
        Self::upload_packed(ctx, t, pair_rows, pack_rows)
    }

    fn upload_packed(
        ctx: &GpuContext,
        t: &HostTensor<'_>,
        pair_rows: bool,
        pack: fn(&HostTensor<'_>, usize, usize) -> Result<(TensorFormat, usize, Vec<u8>)>,
    ) -> Result<GpuMatrix> {
        let (rows, cols) = t.rows_cols();
        let (rb, cb) = t.format.block();
        let need = rows * (cols / rb) * cb;
        if cols % rb != 0 || t.data.len() < need {
            return Err(Error::tensor(&t.name, format!("{:?} data of {} bytes does not hold {rows}x{cols}", t.format, t.data.len())));
        }
        let (format, row_bytes, packed) = pack(t, rows, cols)?;
        let mut per_shard = (ctx.caps.max_binding / row_bytes as u64).min(1 << 30) as usize;
        if pair_rows {
            per_shard &= !1;
        }
        if per_shard == 0 {
            return Err(Error::Gpu(format!("tensor `{}`: one row ({row_bytes} bytes) exceeds the adapter's max binding", t.name)));
        }
        let mut shards = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = per_shard.min(rows - r);
            let buf = ctx.upload(&format!("{} rows {r}..{}", t.name, r + n), &packed[r * row_bytes..(r + n) * row_bytes])?;
            shards.push(Shard { buf, row0: r, rows: n });
            r += n;
        }
        Ok(GpuMatrix { name: t.name.clone(), rows, cols, format, row_bytes, shards })
    }

    /// Bytes on the GPU (for bandwidth accounting).
    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes
    }
}

/// Interleave the rows of `gate` and `up` ([I, H] each, same format) into one [2I, H] tensor of
/// (gate row, up row) pairs, for the fused SwiGLU matvec.
pub fn interleave_rows<'a>(gate: &HostTensor<'_>, up: &HostTensor<'_>) -> Result<HostTensor<'a>> {
    if gate.shape != up.shape || gate.format != up.format {
        return Err(Error::tensor(&up.name, format!("shape/format {:?}/{:?} differs from {} {:?}/{:?}", up.shape, up.format, gate.name, gate.shape, gate.format)));
    }
    let (rows, cols) = gate.rows_cols();
    let (be, bb) = gate.format.block();
    let rb = cols / be * bb;
    let mut data = Vec::with_capacity(2 * rows * rb);
    for r in 0..rows {
        data.extend_from_slice(&gate.data[r * rb..(r + 1) * rb]);
        data.extend_from_slice(&up.data[r * rb..(r + 1) * rb]);
    }
    Ok(HostTensor { name: format!("{}+up", gate.name), shape: vec![2 * rows, cols], format: gate.format, data: data.into() })
}

/// Concatenate rows of several tensors of one format (fused Q/K/V projection).
pub fn concat_rows<'a>(name: &str, parts: &[&HostTensor<'_>]) -> Result<HostTensor<'a>> {
    let first = parts[0];
    let (_, cols) = first.rows_cols();
    let mut rows = 0;
    let mut data = Vec::new();
    for p in parts {
        let (r, c) = p.rows_cols();
        if c != cols || p.format != first.format {
            return Err(Error::tensor(&p.name, format!("cannot fuse with {}: {:?} {:?} vs {:?} {:?}", first.name, p.shape, p.format, first.shape, first.format)));
        }
        rows += r;
        data.extend_from_slice(&p.data);
    }
    Ok(HostTensor { name: name.to_string(), shape: vec![rows, cols], format: first.format, data: data.into() })
}
