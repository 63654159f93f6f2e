//! Token embeddings gathered on the GPU (`embed_rows.wgsl`) from the table in its stored format:
//! prompt chunks take ids uploaded with the chunk, decode steps the id the previous step sampled,
//! which never leaves the GPU.

use crate::gpu::ops::linear::{format_shader, Params};
use crate::gpu::tensor::GpuMatrix;
use crate::gpu::{BufRef, Recorder};
use crate::Result;

/// Writes the embeddings of the `n_tok` ids at `ids[ids_off..]` to `out` (rows of `out_stride`
/// floats). Ids must be below `table.rows` (the host checks ids it uploads; the sampler only
/// produces valid ones); an id outside the table leaves its row unwritten.
pub fn embed_rows(rec: &mut Recorder, table: &GpuMatrix, ids: &BufRef, ids_off: usize, n_tok: usize, out: &BufRef, out_stride: usize) -> Result<()> {
    let h = table.cols;
    if out_stride < h || out.size() < ((n_tok.max(1) - 1) * out_stride + h) as u64 * 4 || ids.size() < (ids_off + n_tok) as u64 * 4 {
        return Err(crate::Error::arg("embed_rows", format!("{n_tok} rows of {h} into {} bytes with stride {out_stride}, ids buffer of {} bytes from {ids_off}", out.size(), ids.size())));
    }
    let ctx = rec.ctx();
    let (fname, _, unit, consts) = format_shader(table.format)?;
    let k = ctx.kernel_with(&format!("embed_rows+{fname}"), "main", &consts, || {
        let (_, fsrc, _, _) = format_shader(table.format)?;
        Ok(super::with_prelude(super::src::EMBED_ROWS, &format!("{}\n{fsrc}", super::src::LINEAR_PARAMS)))
    })?;
    let groups = (h.div_ceil(8) as u32).div_ceil(64);
    for s in &table.shards {
        let p = Params {
            rows: s.rows as u32,
            cols: h as u32,
            w_stride: (table.row_bytes / unit) as u32,
            row0: s.row0 as u32,
            x_stride: 0,
            y_stride: out_stride as u32,
            n_tok: n_tok as u32,
            mode: 0,
            norm: 0,
            eps: 0.0,
            grid_x: groups,
            x_off: ids_off as u32,
        };
        rec.dispatch(&k, &p, &[BufRef::from(&s.buf), ids.clone(), out.clone()], [groups, n_tok as u32, 1]);
    }
    Ok(())
}
