//! ESA chunk scores of the middle tokens (shaders/esa_score.wgsl): F[m] = max_c (s(m,c) - max_m' s(m',c))
//! with s = compressed query . compressed key. Two tiled passes for a chunk, a matvec for decode;
//! the n_q x n_m score matrix is never stored.
//!
//! Compressed-key cache layout: `[rows][d/2]` u32, two f16 per word (even element low), the middle
//! token m at row `m0 + m`. Compressed queries: `[n_q][d]` f32. Decode steps given the cache's
//! 8-bit copy (`esa_pack::Q8Cache`, int8 rows with an f16 scale) score that instead
//! (`shaders/esa_score_q8.wgsl`): half the bytes per middle token, which is what a decode step at
//! a long context mostly reads. Chunks always score the f16 cache.

use crate::gpu::{grid, BufRef, Recorder};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_q: u32,
    n_m: u32,
    d: u32,
    m0: u32,
    split_tiles: u32,
    grid_x: u32,
    rank_only: u32,
    _pad: u32,
}

/// Keys and queries per tile in the kernel.
const TILE: usize = 64;
/// Target number of workgroups for pass 1 (per-query max), which splits M across workgroups: a
/// few per compute unit of a large GPU, each with enough key tiles to amortise its start (H200,
/// d' = 64: 528 ran 6% faster than 1 024, docs/perf.md).
const TARGET_GROUPS: usize = 528;

pub struct Score<'a> {
    /// Compressed queries `[n_q][d]` f32.
    pub cq: &'a BufRef,
    /// Compressed-key cache `[rows][d/2]` u32 (f16 pairs).
    pub ck_cache: &'a BufRef,
    /// Scratch of `n_q` u32 (per-query maxima as sortable keys).
    pub rowmax: &'a BufRef,
    /// Output `[n_m]` f32 scores.
    pub out: &'a BufRef,
    pub n_q: usize,
    /// Number of middle tokens.
    pub n_m: usize,
    /// Compressed width d' (even).
    pub d: usize,
    /// Cache row of the first middle token.
    pub m0: usize,
    /// The 8-bit copy of the cache: decode steps (n_q = 1) score it instead of `ck_cache`, which
    /// they then do not read. Chunks ignore it.
    pub q8: Option<&'a super::esa_pack::Q8Cache<'a>>,
    /// A decode step's scores for ranking only (n_q = 1): `out[m]` is the raw s(m), the max not
    /// subtracted. One query's scores keep their order under that subtraction (and so do their
    /// pooled maxima), so the top-k selects the same tokens, and the step saves the `clear` and
    /// `decode_sub` dispatches (two dependent launches a layer). Chunks (n_q > 1) refuse it.
    pub rank_only: bool,
}

/// Bytes of workgroup memory `esa_score_q8.wgsl` needs for width `d` (the staged query, d
/// rounded up to 16 floats, and the 256-float reduction).
pub fn q8_workgroup_bytes(d: usize) -> usize {
    d.div_ceil(16) * 64 + 1024
}

/// Errors (naming `esa.decode_key_bits`) when the adapter's workgroup memory cannot hold the 8-bit
/// decode kernel's staged query for width `d` (d' above ~3 800 on adapters with WebGPU's 16 KiB).
pub fn q8_check(ctx: &crate::gpu::GpuContext, d: usize) -> Result<()> {
    let need = q8_workgroup_bytes(d);
    if need as u64 > ctx.caps.max_workgroup_storage as u64 {
        return Err(Error::arg(
            "esa.decode_key_bits",
            format!("8-bit decode scoring at d' = {d} needs {need} bytes of workgroup memory, the adapter has {}; use decode_key_bits 16", ctx.caps.max_workgroup_storage),
        ));
    }
    Ok(())
}

/// WGSL of `esa_score_q8.wgsl` for one d' (V = ceil(d'/16) vec4 words a row sizes the staged
/// query), with `esa_score_common.wgsl`. LANES threads per key: the largest power of two up to V,
/// at most 32, so every lane has a word to read and rows stay contiguous across a workgroup.
pub fn q8_source(d: usize) -> String {
    let v = d.div_ceil(16);
    let lanes = (1usize << v.ilog2()).min(32);
    let shape = format!("const V: u32 = {v}u;\nconst LANES: u32 = {lanes}u;\n");
    format!("{}{}", super::src::ESA_SCORE_COMMON, super::expand_markers(super::src::ESA_SCORE_Q8, Some(("//@SHAPE", &shape)), &[]))
}

/// Widest d' of the cooperative-matrix variant: its staging buffer of 64 rows and the fragment
/// scratch fill 42 KiB of workgroup memory at 192 (the H200's Vulkan limit is 48 KiB), and the
/// resident A fragments 96 registers a lane.
pub const COOP_MAX_D: usize = 192;

/// Whether chunks are scored on cooperative matrices (`shaders/esa_score_coop.wgsl`): where the
/// cooperative-matrix matmul runs and d' is a multiple of 16 of at most `COOP_MAX_D`.
pub fn coop_supports(ctx: &crate::gpu::GpuContext, d: usize) -> bool {
    super::linear::matmul_variant(ctx) == super::linear::MatmulVariant::Coop && d % 16 == 0 && d <= COOP_MAX_D
}

/// WGSL of `esa_score_coop.wgsl` for one d' (a constant: it sizes workgroup arrays), with
/// `esa_score_common.wgsl` after its `enable` directives and the `//@` lines expanded (WGSL has no
/// arrays of cooperative matrices): `//@ALOAD` loads the subgroup's resident rows as `COOP_RF` x
/// d'/16 A fragments `a{i}_{k}`, `//@MMA` multiplies one step's streamed fragment by them into
/// `COOP_RF` fresh accumulators and stores those to the subgroup's scratch. Public so tests can
/// validate it where no adapter runs it.
pub fn coop_source(d: usize) -> String {
    let ks = d / 16;
    let mut aload = String::new();
    let mut mma = String::new();
    for i in 0..COOP_RF {
        mma += &format!("var c{i} = coop_mat16x16<f32, C>();\n");
        for k in 0..ks {
            aload += &format!("let a{i}_{k} = coopLoadT<coop_mat16x16<f16, A>>(&buf[(sr * RF + {i}u) * 16u * LDV + {}u], LDV);\n", 4 * k);
        }
    }
    for k in 0..ks {
        mma += &format!("let b{k} = coopLoad<coop_mat16x16<f16, B>>(&buf[ib + {}u], LDV);\n", 4 * k);
        for i in 0..COOP_RF {
            mma += &format!("c{i} = coopMultiplyAdd(a{i}_{k}, b{k}, c{i});\n");
        }
    }
    for i in 0..COOP_RF {
        mma += &format!("coopStoreT(c{i}, &cs[cbase + {}u], 16u);\n", 256 * i);
    }
    let (sr, ss) = coop_shape(d);
    let shape = format!("const RF: u32 = {COOP_RF}u;\nconst SR: u32 = {sr}u;\nconst SS: u32 = {ss}u;\nconst ROWS: u32 = {}u;\n", (16 * COOP_RF * sr).max(16 * ss));
    let d_decl = format!("const D: u32 = {d}u;\n");
    let src = super::expand_markers(super::src::ESA_SCORE_COOP, Some(("//@SHAPE", &shape)), &[("//@ALOAD", &aload), ("//@MMA", &mma), ("const D: u32 = 64u;", &d_decl)]);
    let directives = "enable wgpu_cooperative_matrix;\n";
    let at = src.find(directives).map_or(0, |i| i + directives.len());
    format!("{}{}{}{}", &src[..at], super::src::ESA_SCORE_COMMON, super::src::UNPACK_F16X8, &src[at..])
}

/// Resident fragments per subgroup in `esa_score_coop.wgsl` (its `RF`).
const COOP_RF: usize = 2;

/// Subgroups along the resident and the streamed rows (`SR`, `SS`) for d': 128 resident rows x 32
/// streamed where the 128-row staging buffer fits 48 KiB with the scratch (d' <= 96: 42 KiB),
/// which halves the rows staged per step (H200, d' = 64: scoring at 131k 1.21 -> 0.91 s); else
/// 64 x 64.
fn coop_shape(d: usize) -> (usize, usize) {
    if d <= 96 { (4, 2) } else { (2, 4) }
}

/// (resident rows per workgroup, streamed rows per step) of the cooperative-matrix variant.
fn coop_tile(d: usize) -> (usize, usize) {
    let (sr, ss) = coop_shape(d);
    (16 * COOP_RF * sr, 16 * ss)
}

/// WGSL of `esa_score.wgsl` with `esa_score_common.wgsl`.
fn fma_source() -> String {
    format!("{}{}", super::src::ESA_SCORE_COMMON, super::src::ESA_SCORE)
}

/// Records the scoring of `n_m` middle tokens against `n_q` compressed queries into `out`.
/// `n_m = 0` records nothing.
pub fn score(rec: &mut Recorder, a: &Score) -> Result<()> {
    if a.n_q == 0 || a.d == 0 || a.d % 2 != 0 {
        return Err(Error::arg("esa_score", format!("n_q {} must be >= 1 and d' {} even and >= 2", a.n_q, a.d)));
    }
    if a.rank_only && a.n_q != 1 {
        return Err(Error::arg("esa_score", format!("rank_only scores one query (a decode step), got n_q {}", a.n_q)));
    }
    if a.n_m == 0 {
        return Ok(());
    }
    use super::esa_common::check_words;
    if let (1, Some(q8)) = (a.n_q, a.q8) {
        return score_q8(rec, a, q8);
    }
    check_words("esa_score", "cq", a.cq, a.n_q * a.d)?;
    check_words("esa_score", "ck_cache", a.ck_cache, (a.m0 + a.n_m) * a.d / 2)?;
    check_words("esa_score", "rowmax", a.rowmax, a.n_q)?;
    check_words("esa_score", "out", a.out, a.n_m)?;
    let ctx = rec.ctx();
    // Chunks on cooperative matrices where offered; decode steps (n_q = 1) and the rest FMA.
    let coop = a.n_q > 1 && coop_supports(ctx, a.d);
    let name = if coop { format!("esa_score_coop_d{}", a.d) } else { "esa_score".to_string() };
    let kernel = |entry: &str| ctx.kernel_with(&name, entry, &[], || Ok(if coop { coop_source(a.d) } else { fma_source() }));
    let bufs = [a.rowmax.clone(), a.cq.clone(), a.ck_cache.clone(), a.out.clone()];
    let mut p = Params { n_q: a.n_q as u32, n_m: a.n_m as u32, d: a.d as u32, m0: a.m0 as u32, split_tiles: 0, grid_x: 0, rank_only: a.rank_only as u32, _pad: 0 };
    if !a.rank_only {
        rec.dispatch(&kernel("clear")?, &p, &bufs, [a.n_q.div_ceil(256) as u32, 1, 1]);
    }
    if a.n_q == 1 {
        let g = grid(ctx, a.n_m.div_ceil(32) as u32);
        p.grid_x = g[0];
        rec.dispatch(&kernel("decode_dot")?, &p, &bufs, g);
        if a.rank_only {
            return Ok(());
        }
        let g = grid(ctx, a.n_m.div_ceil(256) as u32);
        p.grid_x = g[0];
        rec.dispatch(&kernel("decode_sub")?, &p, &bufs, g);
        return Ok(());
    }
    // (pass 1 and 2 entry points, queries per pass-1 workgroup, keys per pass-1 step, keys per
    // pass-2 workgroup)
    let ((rowmax, chunk), (resident, streamed)) = if coop { (("rowmax_coop", "chunk_coop"), coop_tile(a.d)) } else { (("rowmax_tiled", "chunk_tiled"), (TILE, TILE)) };
    let (q_tile, k_tile, m_tile) = (resident, streamed, resident);
    let q_tiles = a.n_q.div_ceil(q_tile);
    let k_tiles = a.n_m.div_ceil(k_tile);
    let n_split = (TARGET_GROUPS / q_tiles).clamp(1, k_tiles);
    p.split_tiles = k_tiles.div_ceil(n_split) as u32;
    let n_split = k_tiles.div_ceil(p.split_tiles as usize);
    rec.dispatch(&kernel(rowmax)?, &p, &bufs, [q_tiles as u32, n_split as u32, 1]);
    let g = grid(ctx, a.n_m.div_ceil(m_tile) as u32);
    p.grid_x = g[0];
    rec.dispatch(&kernel(chunk)?, &p, &bufs, g);
    Ok(())
}

/// A decode step's scores from the 8-bit copy: `clear`, `decode_dot_q8`, `decode_sub` (only
/// `decode_dot_q8` with `rank_only`).
fn score_q8(rec: &mut Recorder, a: &Score, q8: &super::esa_pack::Q8Cache) -> Result<()> {
    use super::esa_common::check_words;
    use super::esa_pack::q8_row_words;
    check_words("esa_score", "cq", a.cq, a.d)?;
    check_words("esa_score", "ck8", q8.words, (a.m0 + a.n_m) * q8_row_words(a.d))?;
    check_words("esa_score", "ck8_scales", q8.scales, (a.m0 + a.n_m).div_ceil(2))?;
    check_words("esa_score", "rowmax", a.rowmax, 1)?;
    check_words("esa_score", "out", a.out, a.n_m)?;
    let ctx = rec.ctx();
    q8_check(ctx, a.d)?;
    let v = a.d.div_ceil(16);
    let keys = 256 / (1usize << v.ilog2()).min(32);
    let kernel = |entry: &str| ctx.kernel_with(&format!("esa_score_q8_d{}", a.d), entry, &[], || Ok(q8_source(a.d)));
    // `clear` and `decode_sub` use bindings 1-4 only; `decode_dot_q8` also the scales.
    let bufs = [a.rowmax.clone(), a.cq.clone(), q8.words.clone(), a.out.clone(), q8.scales.clone()];
    let mut p = Params { n_q: 1, n_m: a.n_m as u32, d: a.d as u32, m0: a.m0 as u32, split_tiles: 0, grid_x: 0, rank_only: a.rank_only as u32, _pad: 0 };
    if !a.rank_only {
        rec.dispatch(&kernel("clear")?, &p, &bufs[..4], [1, 1, 1]);
    }
    let g = grid(ctx, a.n_m.div_ceil(keys) as u32);
    p.grid_x = g[0];
    rec.dispatch(&kernel("decode_dot_q8")?, &p, &bufs, g);
    if a.rank_only {
        return Ok(());
    }
    let g = grid(ctx, a.n_m.div_ceil(256) as u32);
    p.grid_x = g[0];
    rec.dispatch(&kernel("decode_sub")?, &p, &bufs[..4], g);
    Ok(())
}
