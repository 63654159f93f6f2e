//! Weights on the GPU in their storage format, split into row shards so no binding exceeds the
//! adapter's `max_storage_buffer_binding_size`.
//!
//! A matrix is uploaded from `MatrixRows`: the rows of one host tensor, or of several fused into
//! one matrix (Q, K, V stacked; gate and up interleaved), each taken from the source's bytes in
//! the order the source stores them (`RowOrder`). Every row is converted to its GPU layout
//! (`Layout`) while it is written into staging memory (`gpu::upload`): no host copy of a fused,
//! reordered or padded tensor is ever made.

use crate::gpu::upload::Uploader;
use crate::gpu::GpuContext;
use crate::model::host::{HostTensor, RowOrder, TensorFormat};
use crate::{Error, Result};

/// A contiguous run of rows of a matrix in one buffer.
#[derive(Debug, Clone)]
pub struct Shard {
    pub buf: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// A weight matrix `[rows, cols]` on the GPU. Each row is `row_bytes` bytes in the format's GPU
/// layout (see `Layout`); a kernel for the format reads it.
#[derive(Debug, Clone)]
pub struct GpuMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub format: TensorFormat,
    pub row_bytes: usize,
    pub shards: Vec<Shard>,
}

/// One host tensor's rows within a matrix: its bytes as stored and their order.
struct Part<'a> {
    data: &'a [u8],
    rows: usize,
    order: RowOrder,
}

/// How the rows of several parts make one matrix.
enum Fuse {
    /// All rows of the first part, then of the second, ...
    Stack,
    /// Row i of the first part, row i of the second, row i + 1 of the first, ... (two parts of
    /// equal shape: gate and up for the fused SwiGLU).
    Interleave,
}

/// The rows of one GPU matrix and where each comes from, in the source's storage format.
pub struct MatrixRows<'a> {
    name: String,
    parts: Vec<Part<'a>>,
    fuse: Fuse,
    rows: usize,
    cols: usize,
    format: TensorFormat,
    /// Bytes of one row in the source format.
    src_row_bytes: usize,
}

/// A part of `t` after checking that its bytes hold its shape.
fn part<'a>(t: &'a HostTensor<'_>, order: RowOrder) -> Result<(Part<'a>, usize, usize)> {
    let (rows, cols) = t.rows_cols();
    let (be, bb) = t.format.block();
    let need = rows * (cols / be) * bb;
    if cols == 0 {
        return Err(Error::tensor(&t.name, format!("shape {:?} has no columns", t.shape)));
    }
    if cols % be != 0 || t.data.len() < need {
        return Err(Error::tensor(&t.name, format!("{:?} data of {} bytes does not hold {rows}x{cols}", t.format, t.data.len())));
    }
    Ok((Part { data: &t.data[..need], rows, order }, cols, need / rows.max(1)))
}

impl<'a> MatrixRows<'a> {
    /// The rows of one tensor (stored in `order`).
    pub fn single(t: &'a HostTensor<'_>, order: RowOrder) -> Result<MatrixRows<'a>> {
        let (p, cols, rb) = part(t, order)?;
        Ok(MatrixRows { name: t.name.clone(), rows: p.rows, parts: vec![p], fuse: Fuse::Stack, cols, format: t.format, src_row_bytes: rb })
    }

    /// The rows of several tensors of one format and width, one after the other (fused Q/K/V).
    pub fn stacked(name: &str, tensors: &[(&'a HostTensor<'_>, RowOrder)]) -> Result<MatrixRows<'a>> {
        let (first, _) = tensors.first().ok_or_else(|| Error::tensor(name, "no tensors to fuse"))?;
        let mut m = MatrixRows { name: name.to_string(), parts: Vec::new(), fuse: Fuse::Stack, rows: 0, cols: 0, format: first.format, src_row_bytes: 0 };
        for (t, order) in tensors {
            let (p, cols, rb) = part(t, *order)?;
            if m.parts.is_empty() {
                (m.cols, m.src_row_bytes) = (cols, rb);
            } else if cols != m.cols || t.format != first.format {
                return Err(Error::tensor(&t.name, format!("cannot fuse with {}: {:?} {:?} vs {:?} {:?}", first.name, t.shape, t.format, first.shape, first.format)));
            }
            m.rows += p.rows;
            m.parts.push(p);
        }
        Ok(m)
    }

    /// The rows of `gate` and `up` ([I, H] each, same format) as I (gate row, up row) pairs, for
    /// the fused SwiGLU matvec.
    pub fn interleaved(gate: (&'a HostTensor<'_>, RowOrder), up: (&'a HostTensor<'_>, RowOrder)) -> Result<MatrixRows<'a>> {
        let (g, u) = (gate.0, up.0);
        if g.shape != u.shape || g.format != u.format {
            return Err(Error::tensor(&u.name, format!("shape/format {:?}/{:?} differs from {} {:?}/{:?}", u.shape, u.format, g.name, g.shape, g.format)));
        }
        let (pg, cols, rb) = part(g, gate.1)?;
        let (pu, _, _) = part(u, up.1)?;
        Ok(MatrixRows { name: format!("{}+up", g.name), rows: 2 * pg.rows, parts: vec![pg, pu], fuse: Fuse::Interleave, cols, format: g.format, src_row_bytes: rb })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` of the matrix: its bytes in the source format.
    fn row(&self, r: usize) -> &'a [u8] {
        let (p, within) = match self.fuse {
            Fuse::Interleave => (&self.parts[r % 2], r / 2),
            Fuse::Stack => {
                let mut within = r;
                let mut i = 0;
                while within >= self.parts[i].rows {
                    within -= self.parts[i].rows;
                    i += 1;
                }
                (&self.parts[i], within)
            }
        };
        let s = p.order.stored_row(within) * self.src_row_bytes;
        &p.data[s..s + self.src_row_bytes]
    }
}

/// How a source row becomes a GPU row.
#[derive(Debug, Clone, Copy)]
enum Packing {
    /// The bytes as they are, then zeros to the GPU row's length (16-bit rows padded to a
    /// multiple of 8 values; Q4_1, Q4_K and Q5_K as stored).
    Copy,
    /// f32 values as f16, or bf16 where one overflows f16, then zeros.
    F32To16 { bf16: bool },
    /// Blocks padded to 4-byte multiples (`quant_pack::pad_block`).
    Blocks { fmt: TensorFormat, file: usize, gpu: usize },
    /// Any format dequantized to f32, then zeros.
    ToF32 { fmt: TensorFormat, cols: usize },
}

/// The GPU layout of a matrix: format on the GPU, bytes per row and how rows get there.
/// 16-bit rows are zero-padded to a multiple of 8 values (16 bytes) so kernels read whole
/// vec4<u32>; f32 sources are stored as f16 (bf16 when a value overflows f16); quantised blocks
/// are padded to u32 alignment; `keep_f32` keeps full precision (rows padded to 4 values).
struct Layout {
    format: TensorFormat,
    row_bytes: usize,
    packing: Packing,
}

fn layout(m: &MatrixRows<'_>, keep_f32: bool) -> Result<Layout> {
    let cols = m.cols;
    let half_row = cols.next_multiple_of(8) * 2;
    if keep_f32 {
        return Ok(Layout { format: TensorFormat::F32, row_bytes: cols.next_multiple_of(4) * 4, packing: Packing::ToF32 { fmt: m.format, cols } });
    }
    Ok(match m.format {
        TensorFormat::F16 | TensorFormat::BF16 => Layout { format: m.format, row_bytes: half_row, packing: Packing::Copy },
        TensorFormat::F32 => {
            // One format for the whole matrix: bf16 as soon as any finite value overflows f16.
            let overflows = m.parts.iter().any(|p| {
                p.data.chunks_exact(4).any(|c| {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    v.is_finite() && v.abs() >= 65000.0
                })
            });
            let format = if overflows { TensorFormat::BF16 } else { TensorFormat::F16 };
            Layout { format, row_bytes: half_row, packing: Packing::F32To16 { bf16: overflows } }
        }
        fmt => {
            let (file, gpu) = crate::gpu::ops::quant_pack::gpu_block(fmt)
                .ok_or_else(|| Error::Unsupported(format!("tensor `{}`: no GPU kernel for {fmt:?} weights yet", m.name)))?;
            let row_bytes = cols / fmt.block().0 * gpu;
            let packing = if file == gpu { Packing::Copy } else { Packing::Blocks { fmt, file, gpu } };
            Layout { format: fmt, row_bytes, packing }
        }
    })
}

/// Write one source row `src` into `out` (a GPU row) as `packing` says; `scratch` is the
/// calling thread's (rows that need converting are built there, then copied in one go:
/// staging memory may be write-combined, so it is written sequentially and never read).
fn pack_row(packing: Packing, name: &str, src: &[u8], mut out: wgpu::WriteOnly<'_, [u8]>, scratch: &mut Vec<u8>) {
    let len = out.len();
    scratch.clear();
    match packing {
        Packing::Copy => {
            let (mut data, mut pad) = out.split_at(src.len());
            data.copy_from_slice(src);
            pad.fill(0);
            return;
        }
        Packing::F32To16 { bf16 } => {
            scratch.extend(src.chunks_exact(4).flat_map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if bf16 { half::bf16::from_f32(v).to_le_bytes() } else { half::f16::from_f32(v).to_le_bytes() }
            }));
        }
        Packing::Blocks { fmt, file, gpu } => {
            scratch.resize(len, 0);
            for (s, d) in src.chunks_exact(file).zip(scratch.chunks_exact_mut(gpu)) {
                crate::gpu::ops::quant_pack::pad_block(fmt, s, d);
            }
        }
        Packing::ToF32 { fmt, cols } => {
            // The row was checked to hold whole blocks, so this cannot fail; NaN marks it if it did.
            let vals = crate::quant::dequantize(name, fmt, src, cols).unwrap_or_else(|_| vec![f32::NAN; cols]);
            scratch.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    scratch.resize(len, 0);
    out.copy_from_slice(scratch);
}

impl GpuMatrix {
    /// Upload keeping f32 precision on the GPU (for small matrices such as ESA's maps).
    pub fn upload_f32(ctx: &GpuContext, t: &HostTensor<'_>) -> Result<GpuMatrix> {
        Self::upload_one(ctx, t, true, true)
    }

    /// Upload a 2-D host tensor. `pair_rows` keeps shard boundaries on even rows (interleaved
    /// gate/up pairs must stay in one shard).
    pub fn upload(ctx: &GpuContext, t: &HostTensor<'_>, pair_rows: bool) -> Result<GpuMatrix> {
        Self::upload_one(ctx, t, pair_rows, false)
    }

    fn upload_one(ctx: &GpuContext, t: &HostTensor<'_>, pair_rows: bool, keep_f32: bool) -> Result<GpuMatrix> {
        let rows = MatrixRows::single(t, RowOrder::AsStored)?;
        let lay = layout(&rows, keep_f32)?;
        let mut up = Uploader::with_capacity(ctx, (rows.rows * lay.row_bytes) as u64);
        let m = Self::stream_with(&mut up, &rows, pair_rows, lay)?;
        up.finish()?;
        Ok(m)
    }

    /// Upload the rows `src` through `up` (several matrices share one uploader and its staging
    /// ring: a model load). The copies are submitted as the staging buffers fill; the matrix is
    /// usable by any later submission.
    pub fn stream(up: &mut Uploader<'_>, src: &MatrixRows<'_>, pair_rows: bool, keep_f32: bool) -> Result<GpuMatrix> {
        let lay = layout(src, keep_f32)?;
        Self::stream_with(up, src, pair_rows, lay)
    }

    fn stream_with(up: &mut Uploader<'_>, src: &MatrixRows<'_>, pair_rows: bool, lay: Layout) -> Result<GpuMatrix> {
        let (rows, row_bytes) = (src.rows, lay.row_bytes);
        let ctx = up.ctx();
        let mut per_shard = (ctx.caps.max_binding / row_bytes as u64).min(1 << 30) as usize;
        if pair_rows {
            per_shard &= !1;
        }
        if per_shard == 0 {
            return Err(Error::Gpu(format!("tensor `{}`: one row ({row_bytes} bytes) exceeds the adapter's max binding", src.name)));
        }
        let mut shards = Vec::new();
        let mut r = 0;
        while r < rows {
            let n = per_shard.min(rows - r);
            let buf = ctx.storage(&format!("{} rows {r}..{}", src.name, r + n), (n * row_bytes) as u64)?;
            let (packing, r0) = (lay.packing, r);
            up.write_rows(&buf, 0, n, row_bytes, &|i, out, scratch| pack_row(packing, &src.name, src.row(r0 + i), out, scratch))?;
            shards.push(Shard { buf, row0: r, rows: n });
            r += n;
        }
        Ok(GpuMatrix { name: src.name.clone(), rows, cols: src.cols, format: lay.format, row_bytes, shards })
    }

    /// Bytes on the GPU (for bandwidth accounting).
    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes
    }
}
