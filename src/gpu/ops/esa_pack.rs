//! Append compressed keys to the compressed-key caches (shaders/esa_pack.wgsl): the f32 output of
//! the f_k projection for a chunk becomes cache rows `pos0..pos0 + n_tok`, in f16 and, where the
//! session scores decode steps from 8-bit keys, also as int8 rows with an f16 scale (one dispatch
//! writes both).
//!
//! f16 cache layout (what `esa_score` reads for chunks): `[rows][d/2]` u32, two f16 per word (even
//! element low). 8-bit copy (what `esa_score` reads for decode steps): `[rows][q8_row_words(d)]`
//! u32, four int8 per word (value i in byte i % 4 of word i / 4), rows padded with zeros to a
//! multiple of 16 values (whole vec4<u32> loads); scales `[ceil(rows/2)]` u32, one f16 per row
//! (even rows in the low half). Quantisation: `reference::esa::quantize_row_i8` of the f16 row.
//!
//! Why an 8-bit copy: a decode step re-scores every middle token's compressed key, so at long
//! contexts this cache is most of the bytes a step reads (d' = 128 in f16 is 6.25% of a Llama-3-8B
//! layer's KV bytes per token); int8 halves that. Chunks keep the f16 rows, which the
//! cooperative-matrix scoring (`esa_score_coop.wgsl`) multiplies on tensor cores and whose bytes
//! are shared by the chunk's queries.

use crate::gpu::{grid, BufRef, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tok: u32,
    d: u32,
    x_stride: u32,
    pos0: u32,
    grid_x: u32,
    row_words: u32,
    _pad: [u32; 2],
}

/// Bytes per token of the f16 compressed-key cache for width `d`.
pub fn row_bytes(d: usize) -> usize {
    d * 2
}

/// u32 words per row of the 8-bit copy: d values padded to a multiple of 16 (one vec4<u32>).
pub fn q8_row_words(d: usize) -> usize {
    d.div_ceil(16) * 4
}

/// Bytes per token of the 8-bit copy for width `d`: the int8 row plus its f16 scale.
pub fn q8_row_bytes(d: usize) -> usize {
    q8_row_words(d) * 4 + 2
}

/// Bytes of the 8-bit copy's scale buffer for `rows` rows (two f16 per word).
pub fn q8_scale_bytes(rows: usize) -> usize {
    rows.div_ceil(2) * 4
}

/// The 8-bit copy of a compressed-key cache (layout in the module doc).
pub struct Q8Cache<'a> {
    /// `[rows][q8_row_words(d)]` u32.
    pub words: &'a BufRef,
    /// `[ceil(rows/2)]` u32, f16 pairs.
    pub scales: &'a BufRef,
}

/// Records `cache[pos0 + t] = f16(x[t * x_stride .. + d])` for t < n_tok, and with `q8` also the
/// int8 rows and scales of those f16 rows.
#[allow(clippy::too_many_arguments)]
pub fn append(rec: &mut Recorder, x: &BufRef, x_stride: usize, cache: &BufRef, q8: Option<&Q8Cache>, d: usize, n_tok: usize, pos0: usize) -> Result<()> {
    if d == 0 || d % 2 != 0 || x_stride < d {
        return Err(Error::arg("esa_pack", format!("d' {d} must be even and >= 2, x_stride {x_stride} >= d'")));
    }
    if n_tok == 0 {
        return Ok(());
    }
    use super::esa_common::check_words;
    check_words("esa_pack", "x", x, (n_tok - 1) * x_stride + d)?;
    check_words("esa_pack", "cache", cache, (pos0 + n_tok) * d / 2)?;
    let ctx = rec.ctx();
    let mut p = Params { n_tok: n_tok as u32, d: d as u32, x_stride: x_stride as u32, pos0: pos0 as u32, grid_x: 0, row_words: q8_row_words(d) as u32, _pad: [0; 2] };
    match q8 {
        None => {
            let k = ctx.kernel("esa_pack", super::src::ESA_PACK, "main", &[])?;
            let g = grid(ctx, (n_tok * d / 2).div_ceil(256) as u32);
            p.grid_x = g[0];
            rec.dispatch(&k, &p, &[x.clone(), cache.clone()], g);
        }
        Some(q) => {
            check_words("esa_pack", "ck8", q.words, (pos0 + n_tok) * q8_row_words(d))?;
            check_words("esa_pack", "ck8_scales", q.scales, (pos0 + n_tok).div_ceil(2))?;
            let k = ctx.kernel("esa_pack", super::src::ESA_PACK, "main_q8", &[])?;
            let pairs = (pos0 + n_tok - 1) / 2 - pos0 / 2 + 1;
            let g = grid(ctx, pairs as u32);
            p.grid_x = g[0];
            rec.dispatch(&k, &p, &[x.clone(), cache.clone(), q.words.clone(), q.scales.clone()], g);
        }
    }
    Ok(())
}
