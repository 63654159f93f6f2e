//! Plain-Rust reference of Efficient Selective Attention (spec: /work/shared/ESA.md).
//! f32 storage, f64 accumulation. The GPU kernels are tested against these functions.
//!
//! Conventions (ours, fixed here once):
//! - Keys and values are cached **un-rotated**; RoPE is applied on the fly. A key at position 0 is the
//!   un-rotated key (rotation by angle 0 is the identity).
//! - The compression maps act on the vectors as the importance score sees them: `f_q` on the
//!   concatenated queries of all heads **rotated at the long-distance position `w`**, `f_k` on the
//!   concatenated **un-rotated** keys of the KV heads (i.e. keys at position 0). So the compressed-key
//!   cache is filled straight from the un-rotated K projection, and calibration must collect
//!   (q rotated at w, un-rotated k) pairs.
//! - Token indices are absolute positions (cache row == position).
//! - RoPE pairs are HF "rotate_half": element i pairs with element i + head_dim/2, angle pos * inv_freq[i].

use std::ops::Range;

use crate::model::config::Config;
use crate::{Error, Result};

/// Default `EsaConfig::final_chunk`: the split of the report in issue 13 that passed 3/3.
pub const DEFAULT_FINAL_CHUNK: usize = 16;

/// ESA knobs (defaults are the paper's budget; `chunk`, `eps` and `w` are ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EsaConfig {
    /// l_I: the first tokens (attention sinks), always attended.
    pub n_init: usize,
    /// l_L: the most recent tokens before the chunk, always attended with ordinary RoPE.
    pub n_local: usize,
    /// k: middle tokens selected per chunk and layer.
    pub top_k: usize,
    /// l_C: prefill chunk length.
    pub chunk: usize,
    /// Proximity pooling half-width: the pooled score of m is the max over |m' - m| <= eps.
    pub eps: usize,
    /// d': width of the compressed queries and keys.
    pub d_compressed: usize,
    /// Position of the queries in the long-distance part; `None` means `n_local`.
    pub w: Option<usize>,
    /// Query-aware final chunk (ours): the last `final_chunk` tokens of every prompt (a feed of
    /// more than one token) run as their own chunk, so the question at the end of a prompt gets a
    /// selection of its own instead of sharing one with hundreds of earlier queries (on the H200
    /// this turned failing 32k/64k passkey prompts into passes, issue 13). At most `chunk` tokens
    /// are used; 0 is the paper's plain chunking.
    pub final_chunk: usize,
    /// Bits per compressed-key value that decode steps (one query) score from: 8 (default) or 16.
    /// Prefill chunks always score the f16 cache. With 8 the session keeps a second copy of the
    /// compressed keys, symmetric int8 with one f16 scale per row ([`quantize_row_i8`]), because a
    /// decode step re-reads every middle token's compressed key: at d' = 128 on a Llama-3-8B
    /// shape (4 096 KV bytes per token and layer) the f16 row is 6.25% of the dense KV cache, the
    /// int8 row 3.2%, which brings a decode step at 128k under 8% of the dense read
    /// (`attention::esa::decode_read_bytes`). 16 scores the f16 cache as prefill does.
    pub decode_key_bits: u32,
    /// Block-level selection in the style of InfLLM, a baseline for the evaluation (0 = ESA's
    /// token-level selection, the default): the middle's pooled scores grouped into blocks of
    /// `select_block` tokens from its start, each block scored by its best token, and the
    /// `max(1, top_k / select_block)` best blocks attended whole ([`top_k_blocks`]). InfLLM keeps
    /// a few representative keys per block, chosen once by the attention they received inside it;
    /// here the block's best token for the chunk's queries stands in for them (query-aware).
    pub select_block: usize,
}

/// Default `EsaConfig::decode_key_bits`.
pub const DEFAULT_DECODE_KEY_BITS: u32 = 8;

impl Default for EsaConfig {
    fn default() -> Self {
        EsaConfig { n_init: 128, n_local: 4096, top_k: 2048, chunk: 512, eps: 1, d_compressed: 128, w: None, final_chunk: DEFAULT_FINAL_CHUNK, decode_key_bits: DEFAULT_DECODE_KEY_BITS, select_block: 0 }
    }
}

impl EsaConfig {
    /// The position at which long-distance queries are rotated (`w`, default `n_local`).
    pub fn long_distance_query_pos(&self) -> usize {
        self.w.unwrap_or(self.n_local)
    }

    /// The token ranges a prompt of `n` tokens is run in: chunks of `chunk` from the start, except
    /// that the last `min(final_chunk, chunk)` tokens form their own chunk when `n > 1` (a decode
    /// step is one token either way). Every range holds at most `chunk` tokens.
    pub fn chunk_ranges(&self, n: usize) -> Vec<Range<usize>> {
        let chunk = self.chunk.max(1);
        let tail = if n > 1 { self.final_chunk.min(chunk).min(n) } else { 0 };
        let head = n - tail;
        let mut out: Vec<Range<usize>> = (0..head).step_by(chunk).map(|s| s..(s + chunk).min(head)).collect();
        if tail > 0 {
            out.push(head..n);
        }
        out
    }

    /// Rejects budgets that cannot work (zero chunk, zero d', decode key bits other than 8 or
    /// 16). `top_k = 0` selects nothing: the initial and local tokens only (StreamingLLM).
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("chunk", self.chunk), ("d_compressed", self.d_compressed)] {
            if v == 0 {
                return Err(Error::arg(format!("esa.{field}"), "must be at least 1"));
            }
        }
        if self.select_block > 0 && self.top_k > 0 && self.select_block > self.top_k {
            return Err(Error::arg("esa.select_block", format!("blocks of {} tokens exceed top_k {}: at least one whole block must fit the budget", self.select_block, self.top_k)));
        }
        if !matches!(self.decode_key_bits, 8 | 16) {
            return Err(Error::arg("esa.decode_key_bits", format!("{}: must be 8 (int8 compressed keys for decode scoring) or 16 (f16)", self.decode_key_bits)));
        }
        Ok(())
    }
}

/// Head geometry of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl HeadShape {
    pub fn q_dim(&self) -> usize { self.num_heads * self.head_dim }
    pub fn kv_dim(&self) -> usize { self.num_kv_heads * self.head_dim }
    /// The KV head that query head `h` reads (GQA: consecutive query heads share one KV head).
    pub fn kv_head(&self, h: usize) -> usize { h / (self.num_heads / self.num_kv_heads) }

    fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 || self.head_dim % 2 != 0 {
            return Err(Error::arg("head shape", format!("{self:?}: heads must be >= 1 and head_dim even")));
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::arg("head shape", format!("{} heads not a multiple of {} kv heads", self.num_heads, self.num_kv_heads)));
        }
        Ok(())
    }
}

impl From<&Config> for HeadShape {
    fn from(c: &Config) -> Self {
        HeadShape { num_heads: c.num_heads, num_kv_heads: c.num_kv_heads, head_dim: c.head_dim }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::arg(what, format!("has {got} elements, expected {want}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------

/// Applies a compression map (`d' x in_dim`, row-major, no bias) to one vector `x` of `in_dim`.
pub fn compress(map: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    let in_dim = x.len();
    if in_dim == 0 || map.len() % in_dim != 0 {
        return Err(Error::arg("compression map", format!("{} elements is not d' x {in_dim}", map.len())));
    }
    Ok(map.chunks_exact(in_dim).map(|row| dot(row, x) as f32).collect())
}

/// Applies a compression map to every row of `xs` (`[n][in_dim]`); returns `[n][d']`.
pub fn compress_rows(map: &[f32], xs: &[f32], in_dim: usize) -> Result<Vec<f32>> {
    if in_dim == 0 || xs.len() % in_dim != 0 {
        return Err(Error::arg("compress rows", format!("{} elements is not n x {in_dim}", xs.len())));
    }
    let mut out = Vec::new();
    for x in xs.chunks_exact(in_dim) {
        out.extend(compress(map, x)?);
    }
    Ok(out)
}

/// Maps with which the compressed score equals the full score exactly (d' = n_kv * head_dim):
/// `f_q` sums the query heads of each GQA group, `f_k` is the identity. Returns `(f_q, f_k)`,
/// shapes `[kv_dim][q_dim]` and `[kv_dim][kv_dim]`. Useful for tests before calibration exists.
pub fn lossless_maps(shape: HeadShape) -> (Vec<f32>, Vec<f32>) {
    let (qd, kd, d) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
    let mut f_q = vec![0.0; kd * qd];
    for h in 0..shape.num_heads {
        let g = shape.kv_head(h);
        for i in 0..d {
            f_q[(g * d + i) * qd + h * d + i] = 1.0;
        }
    }
    let mut f_k = vec![0.0; kd * kd];
    for i in 0..kd {
        f_k[i * kd + i] = 1.0;
    }
    (f_q, f_k)
}

// ---------------------------------------------------------------------------------------------
// Scoring, pooling, selection
// ---------------------------------------------------------------------------------------------

/// Full (uncompressed) importance score f_s(m; c) = sum_h q_{h,c} . k_{kv(h),m} for one query row
/// (`q_dim`, already rotated at w) and one un-rotated key row (`kv_dim`). What compression approximates.
pub fn full_score(q_row: &[f32], k_row: &[f32], shape: HeadShape) -> f32 {
    let d = shape.head_dim;
    let mut s = 0.0f64;
    for h in 0..shape.num_heads {
        let g = shape.kv_head(h);
        s += dot(&q_row[h * d..(h + 1) * d], &k_row[g * d..(g + 1) * d]);
    }
    s as f32
}

/// Chunk score of every middle token: F_s(m; C) = max_c ( s(m,c) - max_m' s(m',c) ) with
/// s(m,c) = cq[c] . ck[m]. `cq` is `[l_C][d']`, `ck_middle` is `[|M|][d']`; returns `|M|` scores
/// (each <= 0; the best token of some query scores 0). Empty M gives an empty vector.
pub fn chunk_scores(cq: &[f32], ck_middle: &[f32], d: usize) -> Result<Vec<f32>> {
    if d == 0 || cq.len() % d != 0 || ck_middle.len() % d != 0 {
        return Err(Error::arg("chunk_scores", format!("cq {} / ck {} elements not multiples of d' = {d}", cq.len(), ck_middle.len())));
    }
    let n_m = ck_middle.len() / d;
    let mut out = vec![f32::NEG_INFINITY; n_m];
    for q in cq.chunks_exact(d) {
        // Scores rounded to f32 as the GPU keeps them, so the subtraction matches its arithmetic.
        let s: Vec<f32> = ck_middle.chunks_exact(d).map(|k| dot(q, k) as f32).collect();
        let best = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (o, &v) in out.iter_mut().zip(&s) {
            *o = o.max(v - best);
        }
    }
    Ok(out)
}

/// Symmetric int8 quantisation of one compressed-key row, as the 8-bit decode cache stores it:
/// scale = f16(max|x| / 127), q_i = clamp(round_half_even(x_i / scale), -127, 127) (all zero when
/// the scale is 0). Returns the values and the scale (an f16 value, as f32). The engine quantises
/// the f16-rounded row (the 8-bit copy is a quantisation of the f16 cache row), so callers pass
/// f16-rounded values to reproduce it.
pub fn quantize_row_i8(x: &[f32]) -> (Vec<i8>, f32) {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = half::f16::from_f32(max / 127.0).to_f32();
    if scale == 0.0 || !scale.is_finite() {
        return (vec![0; x.len()], scale);
    }
    (x.iter().map(|&v| (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8).collect(), scale)
}

/// Quantises every row (`[n][d]`) with [`quantize_row_i8`] and returns the dequantised rows
/// (q * scale): the keys an 8-bit decode step scores.
pub fn dequantized_rows_i8(rows: &[f32], d: usize) -> Vec<f32> {
    rows.chunks_exact(d)
        .flat_map(|r| {
            let (q, s) = quantize_row_i8(r);
            q.into_iter().map(move |v| v as f32 * s)
        })
        .collect()
}

/// Decode scores (one query) from int8 compressed keys: s(m) = scale[m] * sum_i q[m][i] cq[i],
/// rounded to f32, then F[m] = s(m) - max_m' s(m') as [`chunk_scores`] with one query. `q` is
/// `[n_m][d]`, `scales` `[n_m]`.
pub fn decode_scores_i8(cq: &[f32], q: &[i8], scales: &[f32], d: usize) -> Result<Vec<f32>> {
    if d == 0 || cq.len() != d || q.len() != scales.len() * d {
        return Err(Error::arg("decode_scores_i8", format!("cq {} / q {} / scales {} elements do not fit d' = {d}", cq.len(), q.len(), scales.len())));
    }
    let s: Vec<f32> = q.chunks_exact(d).zip(scales).map(|(k, &sc)| (sc as f64 * k.iter().zip(cq).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()) as f32).collect();
    let best = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Ok(s.iter().map(|&v| v - best).collect())
}

/// Proximity influence: out[m] = max of scores[m'] over |m' - m| <= eps, clipped to the range.
/// NaN entries are ignored (`f32::max`); eps = 0 is the identity.
pub fn proximity_pool(scores: &[f32], eps: usize) -> Vec<f32> {
    let n = scores.len();
    (0..n)
        .map(|m| {
            let lo = m.saturating_sub(eps);
            let hi = (m + eps + 1).min(n);
            scores[lo..hi].iter().copied().fold(f32::NEG_INFINITY, f32::max)
        })
        .collect()
}

/// Maps f32 bits to a u32 whose unsigned order is the float order (-inf < ... < -0 < +0 < ... < +inf).
/// NaNs map above +inf (positive) or below -inf (negative); callers exclude them. The GPU top-k
/// ranks by exactly this key, so -0.0 ranks below +0.0 in both.
pub fn sortable_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 }
}

/// Indices of the `k` largest scores, sorted by index ascending. Ranking is by [`sortable_key`];
/// ties go to the lower index; NaN is never selected; -inf is an ordinary (lowest) value;
/// `k >= n` returns every non-NaN index.
pub fn top_k_indices(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32).filter(|&i| !scores[i as usize].is_nan()).collect();
    if k < idx.len() {
        idx.sort_by(|&a, &b| {
            sortable_key(scores[b as usize]).cmp(&sortable_key(scores[a as usize])).then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_unstable();
    }
    idx
}

/// Block-level selection (`EsaConfig::select_block`): scores grouped into blocks of `block` from
/// index 0 (the last block may be shorter), a block's score the largest of its (non-NaN) scores,
/// the `max(1, k / block)` best blocks by [`top_k_indices`] (ties to the lower block), and every
/// index of those blocks, ascending. `block` must be at least 1.
pub fn top_k_blocks(scores: &[f32], block: usize, k: usize) -> Vec<u32> {
    let block_scores: Vec<f32> = scores.chunks(block).map(|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    top_k_indices(&block_scores, (k / block).max(1))
        .into_iter()
        .flat_map(|b| (b as usize * block..((b as usize + 1) * block).min(scores.len())).map(|i| i as u32))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Token layout
// ---------------------------------------------------------------------------------------------

/// Which cached tokens a chunk attends to, as absolute positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsaLayout {
    /// I: attention sinks (long-distance positions). Empty in the dense case.
    pub initial: Range<usize>,
    /// M: candidates for selection (long-distance positions). Empty in the dense case.
    pub middle: Range<usize>,
    /// L: local window before the chunk (ordinary RoPE). In the dense case all of `0..n_prev`.
    pub local: Range<usize>,
    /// C: the chunk itself, attended causally with ordinary RoPE.
    pub chunk: Range<usize>,
}

impl EsaLayout {
    /// True when every preceding token is attended with ordinary positions (plain dense attention).
    pub fn is_dense(&self) -> bool {
        self.middle.is_empty()
    }
}

/// Splits the `n_prev` tokens before a chunk of `chunk_len`. While `n_prev <= n_init + n_local`
/// everything is local (ESA is then exactly dense attention); otherwise I = [0, n_init),
/// L = the last n_local tokens, M = what lies between (never empty).
pub fn select_tokens(n_prev: usize, chunk_len: usize, cfg: &EsaConfig) -> EsaLayout {
    let chunk = n_prev..n_prev + chunk_len;
    if n_prev <= cfg.n_init + cfg.n_local {
        return EsaLayout { initial: 0..0, middle: 0..0, local: 0..n_prev, chunk };
    }
    let local_start = n_prev - cfg.n_local;
    EsaLayout { initial: 0..cfg.n_init, middle: cfg.n_init..local_start, local: local_start..n_prev, chunk }
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Rotates every head of a `[heads * head_dim]` row to `pos` (the crate's reference RoPE:
/// angle = f32(pos) * inv_freq[i], as HF computes it).
pub fn rotate_row(row: &[f32], head_dim: usize, pos: usize, inv_freq: &[f32]) -> Vec<f32> {
    debug_assert_eq!(inv_freq.len() * 2, head_dim);
    let mut out = row.to_vec();
    super::ops::rope(&mut out, &[pos as u32], inv_freq);
    out
}

/// Folds the rotation of the queries to `w` into a query map: returns `f_q R_w` (`[d'][q_dim]`),
/// so the compressed queries are one matmul of the UN-rotated queries (`f_q (R_w q) = (f_q R_w) q`).
pub fn fold_query_rotation(f_q: &[f32], shape: HeadShape, w: usize, inv_freq: &[f32]) -> Result<Vec<f32>> {
    let qd = shape.q_dim();
    if qd == 0 || f_q.len() % qd != 0 {
        return Err(Error::arg("f_q", format!("{} elements is not d' x q_dim {qd}", f_q.len())));
    }
    check_len("inv_freq", inv_freq.len(), shape.head_dim / 2)?;
    // Row r of f_q R_w is R_w^T applied to row r, i.e. the row rotated by -w.
    let half = shape.head_dim / 2;
    let mut out = f_q.to_vec();
    for row in out.chunks_exact_mut(qd) {
        for head in row.chunks_exact_mut(shape.head_dim) {
            for i in 0..half {
                let angle = (w as f32 * inv_freq[i]) as f64;
                let (s, c) = angle.sin_cos();
                let (a, b) = (head[i] as f64, head[i + half] as f64);
                // (R^T x)_i = c a + s b ; (R^T x)_{i+half} = -s a + c b
                head[i] = (a * c + b * s) as f32;
                head[i + half] = (b * c - a * s) as f32;
            }
        }
    }
    Ok(out)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// One chunk of ESA attention.
///
/// - `q`: `[chunk_len][q_dim]` un-rotated queries of the chunk (positions `layout.chunk`).
/// - `k_cache`, `v_cache`: `[>= layout.chunk.end][kv_dim]` un-rotated keys and values (the chunk's own
///   rows included).
/// - `selected`: absolute positions of the chosen middle tokens (any order).
/// - Long-distance part (I and `selected`): keys at position 0, queries at `w`.
///   Local part (L and the causal chunk): keys and queries at their true positions.
///   One softmax over both, scale 1/sqrt(head_dim); GQA.
///
/// Returns `[chunk_len][q_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn esa_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    layout: &EsaLayout,
    selected: &[u32],
    w: usize,
    inv_freq: &[f32],
    shape: HeadShape,
) -> Result<Vec<f32>> {
    shape.validate()?;
    let (qd, kd, d) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
    let n_c = layout.chunk.len();
    check_len("esa_attention q", q.len(), n_c * qd)?;
    check_len("inv_freq", inv_freq.len(), d / 2)?;
    let n_tok = k_cache.len() / kd;
    if k_cache.len() % kd != 0 || v_cache.len() != k_cache.len() || n_tok < layout.chunk.end {
        return Err(Error::arg("esa_attention kv cache", format!("k {} / v {} elements: need [{} >= {}][{kd}]", k_cache.len(), v_cache.len(), n_tok, layout.chunk.end)));
    }
    if let Some(&bad) = selected.iter().find(|&&s| !layout.middle.contains(&(s as usize))) {
        return Err(Error::arg("esa_attention selected", format!("index {bad} outside the middle range {:?}", layout.middle)));
    }
    let long: Vec<usize> = layout.initial.clone().chain(selected.iter().map(|&s| s as usize)).collect();
    let scale = 1.0 / (d as f64).sqrt();
    // Keys of the local part, rotated once at their true positions.
    let local_end = layout.chunk.end;
    let rot_k: Vec<Vec<f32>> = (layout.local.start..local_end)
        .map(|t| rotate_row(&k_cache[t * kd..(t + 1) * kd], d, t, inv_freq))
        .collect();

    let mut out = vec![0.0f32; n_c * qd];
    for j in 0..n_c {
        let pos = layout.chunk.start + j;
        let q_row = &q[j * qd..(j + 1) * qd];
        let q_loc = rotate_row(q_row, d, pos, inv_freq);
        let q_far = rotate_row(q_row, d, w, inv_freq);
        for h in 0..shape.num_heads {
            let g = shape.kv_head(h);
            let (hq, hk) = (h * d..(h + 1) * d, g * d..(g + 1) * d);
            // (logit, value row) for every attended key.
            let mut logits: Vec<(f64, usize)> = Vec::new();
            for &t in &long {
                logits.push((dot(&q_far[hq.clone()], &k_cache[t * kd..][hk.clone()]) * scale, t));
            }
            for t in layout.local.start..=pos {
                let k = &rot_k[t - layout.local.start];
                logits.push((dot(&q_loc[hq.clone()], &k[hk.clone()]) * scale, t));
            }
            let max = logits.iter().map(|l| l.0).fold(f64::NEG_INFINITY, f64::max);
            let mut acc = vec![0.0f64; d];
            let mut sum = 0.0f64;
            for &(l, t) in &logits {
                let p = (l - max).exp();
                sum += p;
                for (a, &v) in acc.iter_mut().zip(&v_cache[t * kd..][hk.clone()]) {
                    *a += p * v as f64;
                }
            }
            for (o, a) in out[j * qd..][hq].iter_mut().zip(&acc) {
                *o = (a / sum) as f32;
            }
        }
    }
    Ok(out)
}

/// What one layer's ESA step produced.
#[derive(Debug, Clone)]
pub struct EsaLayerOutput {
    /// `[chunk_len][q_dim]` attention output.
    pub output: Vec<f32>,
    /// Absolute positions of the selected middle tokens, ascending (empty in the dense case).
    pub selected: Vec<u32>,
    pub layout: EsaLayout,
}

/// The whole per-layer ESA step for one chunk at positions `n_prev .. n_prev + chunk_len`:
/// rotate the chunk's queries to `w`, compress them with `f_q` (`[d'][q_dim]`), score the middle
/// tokens against `ck_cache` (`[>= n_prev][d']`, compressed un-rotated keys; a decode step with
/// `cfg.decode_key_bits` 8 scores their int8 quantisation, [`quantize_row_i8`]), pool with `eps`,
/// take the top-k and attend (see [`esa_attention`]).
#[allow(clippy::too_many_arguments)]
pub fn esa_layer_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    ck_cache: &[f32],
    f_q: &[f32],
    n_prev: usize,
    inv_freq: &[f32],
    shape: HeadShape,
    cfg: &EsaConfig,
) -> Result<EsaLayerOutput> {
    shape.validate()?;
    cfg.validate()?;
    let (qd, d, dc) = (shape.q_dim(), shape.head_dim, cfg.d_compressed);
    if q.len() % qd != 0 {
        return Err(Error::arg("esa_layer_attention q", format!("{} elements not a multiple of q_dim {qd}", q.len())));
    }
    check_len("f_q", f_q.len(), dc * qd)?;
    let layout = select_tokens(n_prev, q.len() / qd, cfg);
    let w = cfg.long_distance_query_pos();
    let mut selected = Vec::new();
    if !layout.is_dense() {
        if ck_cache.len() < layout.middle.end * dc {
            return Err(Error::arg("ck_cache", format!("{} elements, need [{}][{dc}]", ck_cache.len(), layout.middle.end)));
        }
        let mut cq = Vec::with_capacity(layout.chunk.len() * dc);
        for row in q.chunks_exact(qd) {
            cq.extend(compress(f_q, &rotate_row(row, d, w, inv_freq))?);
        }
        let ck_middle = &ck_cache[layout.middle.start * dc..layout.middle.end * dc];
        // Decode steps score 8-bit keys where the config asks for them (as the engine does).
        let scores = if layout.chunk.len() == 1 && cfg.decode_key_bits == 8 {
            let (mut q, mut scales) = (Vec::with_capacity(ck_middle.len()), Vec::new());
            for row in ck_middle.chunks_exact(dc) {
                let (qr, s) = quantize_row_i8(row);
                q.extend(qr);
                scales.push(s);
            }
            decode_scores_i8(&cq, &q, &scales, dc)?
        } else {
            chunk_scores(&cq, ck_middle, dc)?
        };
        let pooled = proximity_pool(&scores, cfg.eps);
        let picked = if cfg.select_block > 0 { top_k_blocks(&pooled, cfg.select_block, cfg.top_k) } else { top_k_indices(&pooled, cfg.top_k) };
        selected = picked.into_iter().map(|i| i + layout.middle.start as u32).collect();
    }
    let output = esa_attention(q, k_cache, v_cache, &layout, &selected, w, inv_freq, shape)?;
    Ok(EsaLayerOutput { output, selected, layout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn inv_freq(d: usize) -> Vec<f32> {
        (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect()
    }

    /// Textbook causal attention with RoPE at true positions (what a dense model computes).
    fn dense_causal(q: &[f32], k: &[f32], v: &[f32], n_prev: usize, shape: HeadShape, inv: &[f32]) -> Vec<f32> {
        let (qd, kd, d) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
        let n_c = q.len() / qd;
        let mut out = vec![0.0; q.len()];
        for j in 0..n_c {
            let pos = n_prev + j;
            let qr = rotate_row(&q[j * qd..(j + 1) * qd], d, pos, inv);
            for h in 0..shape.num_heads {
                let g = shape.kv_head(h);
                let ls: Vec<f64> = (0..=pos)
                    .map(|t| {
                        let kr = rotate_row(&k[t * kd..(t + 1) * kd], d, t, inv);
                        dot(&qr[h * d..(h + 1) * d], &kr[g * d..(g + 1) * d]) / (d as f64).sqrt()
                    })
                    .collect();
                let m = ls.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let ps: Vec<f64> = ls.iter().map(|l| (l - m).exp()).collect();
                let s: f64 = ps.iter().sum();
                for i in 0..d {
                    let a: f64 = (0..=pos).map(|t| ps[t] * v[t * kd + g * d + i] as f64).sum();
                    out[j * qd + h * d + i] = (a / s) as f32;
                }
            }
        }
        out
    }

    /// Dense attention where every token before the local window sits at the long-distance
    /// positions (key 0, query w): what ESA computes when it selects all of M.
    fn dense_esa_positions(q: &[f32], k: &[f32], v: &[f32], n_prev: usize, local_start: usize, w: usize, shape: HeadShape, inv: &[f32]) -> Vec<f32> {
        let (qd, kd, d) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
        let n_c = q.len() / qd;
        let mut out = vec![0.0; q.len()];
        for j in 0..n_c {
            let pos = n_prev + j;
            let q_loc = rotate_row(&q[j * qd..(j + 1) * qd], d, pos, inv);
            let q_far = rotate_row(&q[j * qd..(j + 1) * qd], d, w, inv);
            for h in 0..shape.num_heads {
                let g = shape.kv_head(h);
                let ls: Vec<f64> = (0..=pos)
                    .map(|t| {
                        let (qq, kk) = if t < local_start {
                            (&q_far, k[t * kd..(t + 1) * kd].to_vec())
                        } else {
                            (&q_loc, rotate_row(&k[t * kd..(t + 1) * kd], d, t, inv))
                        };
                        dot(&qq[h * d..(h + 1) * d], &kk[g * d..(g + 1) * d]) / (d as f64).sqrt()
                    })
                    .collect();
                let m = ls.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let ps: Vec<f64> = ls.iter().map(|l| (l - m).exp()).collect();
                let s: f64 = ps.iter().sum();
                for i in 0..d {
                    let a: f64 = (0..=pos).map(|t| ps[t] * v[t * kd + g * d + i] as f64).sum();
                    out[j * qd + h * d + i] = (a / s) as f32;
                }
            }
        }
        out
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    const SHAPE: HeadShape = HeadShape { num_heads: 4, num_kv_heads: 2, head_dim: 8 };

    #[test]
    fn default_config_is_paper_budget() {
        let c = EsaConfig::default();
        assert_eq!((c.n_init, c.n_local, c.top_k, c.chunk, c.eps, c.d_compressed), (128, 4096, 2048, 512, 1, 128));
        assert_eq!(c.long_distance_query_pos(), 4096);
        assert_eq!(EsaConfig { w: Some(4095), ..c }.long_distance_query_pos(), 4095);
        assert!(EsaConfig { chunk: 0, ..c }.validate().is_err());
        assert!(EsaConfig { top_k: 0, ..c }.validate().is_ok(), "top_k 0 is StreamingLLM");
    }

    #[test]
    fn chunk_ranges_split_off_the_final_chunk() {
        let c = EsaConfig { chunk: 8, final_chunk: 3, ..Default::default() };
        assert_eq!(c.chunk_ranges(20), vec![0..8, 8..16, 16..17, 17..20]);
        assert_eq!(c.chunk_ranges(11), vec![0..8, 8..11]);
        assert_eq!(c.chunk_ranges(3), vec![0..3]);
        assert_eq!(c.chunk_ranges(2), vec![0..2]);
        assert_eq!(c.chunk_ranges(1), vec![0..1], "a decode step is one chunk");
        assert!(c.chunk_ranges(0).is_empty());
        let plain = EsaConfig { final_chunk: 0, ..c };
        assert_eq!(plain.chunk_ranges(20), vec![0..8, 8..16, 16..20]);
        // A final chunk wider than `chunk` is capped at `chunk`.
        let wide = EsaConfig { final_chunk: 100, ..c };
        assert_eq!(wide.chunk_ranges(20), vec![0..8, 8..12, 12..20]);
        for n in 0..40 {
            for cfg in [c, plain, wide] {
                let r = cfg.chunk_ranges(n);
                assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), n);
                assert!(r.iter().all(|r| !r.is_empty() && r.len() <= cfg.chunk));
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
    }

    #[test]
    fn layout_dense_and_split() {
        let cfg = EsaConfig { n_init: 4, n_local: 16, ..Default::default() };
        let l = select_tokens(20, 8, &cfg);
        assert!(l.is_dense());
        assert_eq!((l.local.clone(), l.chunk.clone()), (0..20, 20..28));
        let l = select_tokens(21, 8, &cfg);
        assert!(!l.is_dense());
        assert_eq!((l.initial, l.middle, l.local, l.chunk), (0..4, 4..5, 5..21, 21..29));
        let l = select_tokens(0, 3, &cfg);
        assert_eq!((l.local, l.chunk), (0..0, 0..3));
    }

    #[test]
    fn compress_is_matvec_and_lossless_maps_are_exact() {
        assert_eq!(compress(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 0.0, -1.0]).unwrap(), vec![-2.0, -2.0]);
        assert!(compress(&[1.0; 5], &[1.0, 2.0]).is_err());
        let mut rng = StdRng::seed_from_u64(1);
        let (f_q, f_k) = lossless_maps(SHAPE);
        let q = rand_vec(&mut rng, SHAPE.q_dim());
        let k = rand_vec(&mut rng, SHAPE.kv_dim());
        let approx = dot(&compress(&f_q, &q).unwrap(), &compress(&f_k, &k).unwrap()) as f32;
        assert!((approx - full_score(&q, &k, SHAPE)).abs() < 1e-5);
    }

    #[test]
    fn folded_query_map_equals_rotate_then_compress() {
        let mut rng = StdRng::seed_from_u64(9);
        let inv = inv_freq(SHAPE.head_dim);
        let f_q = rand_vec(&mut rng, 3 * SHAPE.q_dim());
        let q = rand_vec(&mut rng, SHAPE.q_dim());
        let folded = fold_query_rotation(&f_q, SHAPE, 77, &inv).unwrap();
        let a = compress(&f_q, &rotate_row(&q, SHAPE.head_dim, 77, &inv)).unwrap();
        let b = compress(&folded, &q).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }

    #[test]
    fn chunk_scores_normalise_per_query_then_max() {
        // d' = 1: query a = 1, b = -1; keys 3, 1, -2.
        let s = chunk_scores(&[1.0, -1.0], &[3.0, 1.0, -2.0], 1).unwrap();
        // query 1: (3,1,-2) - 3 = (0,-2,-5); query -1: (-3,-1,2) - 2 = (-5,-3,0)
        assert_eq!(s, vec![0.0, -2.0, 0.0]);
        assert!(chunk_scores(&[1.0], &[], 1).unwrap().is_empty());
        assert!(chunk_scores(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2).is_err());
    }

    #[test]
    fn pool_edges() {
        let s = [1.0, 5.0, 2.0, 0.0, 0.0, 7.0];
        assert_eq!(top_k_blocks(&[1.0, 9.0, 2.0, 3.0, 3.0, 8.0, 0.0], 2, 4), vec![0, 1, 4, 5]);
        assert_eq!(top_k_blocks(&[1.0, 2.0, 3.0, 4.0, 5.0], 2, 1), vec![4], "k < block keeps one block; the last is short");
        assert_eq!(top_k_blocks(&[5.0, 5.0, 5.0, 5.0], 2, 2), vec![0, 1], "ties go to the lower block");
        assert_eq!(proximity_pool(&s, 0), s.to_vec());
        assert_eq!(proximity_pool(&s, 1), vec![5.0, 5.0, 5.0, 2.0, 7.0, 7.0]);
        assert_eq!(proximity_pool(&s, 10), vec![7.0; 6]);
        assert!(proximity_pool(&[], 1).is_empty());
        assert_eq!(proximity_pool(&[f32::NEG_INFINITY, f32::NEG_INFINITY], 1), vec![f32::NEG_INFINITY; 2]);
    }

    #[test]
    fn top_k_edges() {
        let sorted: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(top_k_indices(&sorted, 3), vec![7, 8, 9]);
        let reversed: Vec<f32> = sorted.iter().rev().copied().collect();
        assert_eq!(top_k_indices(&reversed, 3), vec![0, 1, 2]);
        assert_eq!(top_k_indices(&[2.0; 7], 3), vec![0, 1, 2]);
        assert_eq!(top_k_indices(&sorted, 1), vec![9]);
        assert_eq!(top_k_indices(&sorted, 10), (0..10).collect::<Vec<u32>>());
        assert_eq!(top_k_indices(&sorted, 50), (0..10).collect::<Vec<u32>>());
        assert!(top_k_indices(&sorted, 0).is_empty());
        let inf = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        assert_eq!(top_k_indices(&inf, 2), vec![0, 1]);
        let nan = [f32::NAN, 1.0, f32::NAN, -3.0, f32::INFINITY];
        assert_eq!(top_k_indices(&nan, 2), vec![1, 4]);
        assert_eq!(top_k_indices(&nan, 4), vec![1, 3, 4]);
        assert_eq!(top_k_indices(&[f32::NAN; 3], 2), Vec::<u32>::new());
        // -0.0 ranks below +0.0.
        assert_eq!(top_k_indices(&[-0.0, 0.0], 1), vec![1]);
        // sortable keys preserve order
        let xs = [f32::NEG_INFINITY, -1e30, -1.0, -1e-40, -0.0, 0.0, 1e-40, 1.0, 1e30, f32::INFINITY];
        for p in xs.windows(2) {
            assert!(sortable_key(p[0]) < sortable_key(p[1]), "{p:?}");
        }
    }

    #[test]
    fn top_k_random_matches_sort() {
        let mut rng = StdRng::seed_from_u64(7);
        let s: Vec<f32> = (0..1000).map(|_| (rng.random_range(0..50) as f32) - 25.0).collect(); // many ties
        let got = top_k_indices(&s, 100);
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|p| p[0] < p[1]));
        let thresh = got.iter().map(|&i| s[i as usize]).fold(f32::INFINITY, f32::min);
        // everything strictly above the threshold is taken; at the threshold, lowest indices first
        let above = s.iter().filter(|&&x| x > thresh).count();
        let at: Vec<u32> = (0..1000u32).filter(|&i| s[i as usize] == thresh).collect();
        assert_eq!(got.iter().filter(|&&i| s[i as usize] == thresh).copied().collect::<Vec<_>>(), at[..100 - above].to_vec());
    }

    fn random_case(rng: &mut StdRng, n_tok: usize) -> (Vec<f32>, Vec<f32>) {
        (rand_vec(rng, n_tok * SHAPE.kv_dim()), rand_vec(rng, n_tok * SHAPE.kv_dim()))
    }

    #[test]
    fn short_context_is_plain_dense_causal() {
        let mut rng = StdRng::seed_from_u64(3);
        let cfg = EsaConfig { n_init: 4, n_local: 16, top_k: 2, chunk: 8, eps: 1, d_compressed: 5, w: None, final_chunk: 0, decode_key_bits: 8 , select_block: 0 };
        let inv = inv_freq(SHAPE.head_dim);
        let f_q = rand_vec(&mut rng, cfg.d_compressed * SHAPE.q_dim());
        for (n_prev, n_c) in [(0, 8), (7, 5), (12, 8), (20, 3)] {
            let (k, v) = random_case(&mut rng, n_prev + n_c);
            let ck = vec![0.0; (n_prev + n_c) * cfg.d_compressed];
            let q = rand_vec(&mut rng, n_c * SHAPE.q_dim());
            let got = esa_layer_attention(&q, &k, &v, &ck, &f_q, n_prev, &inv, SHAPE, &cfg).unwrap();
            assert!(got.selected.is_empty());
            let want = dense_causal(&q, &k, &v, n_prev, SHAPE, &inv);
            assert!(max_abs_diff(&got.output, &want) < 1e-5, "n_prev {n_prev}");
        }
    }

    #[test]
    fn full_budget_is_dense_with_esa_positions() {
        let mut rng = StdRng::seed_from_u64(4);
        let cfg = EsaConfig { n_init: 3, n_local: 10, top_k: 1000, chunk: 6, eps: 1, d_compressed: 5, w: Some(9), final_chunk: 0, decode_key_bits: 8 , select_block: 0 };
        let inv = inv_freq(SHAPE.head_dim);
        let f_q = rand_vec(&mut rng, cfg.d_compressed * SHAPE.q_dim());
        let f_k = rand_vec(&mut rng, cfg.d_compressed * SHAPE.kv_dim());
        let (n_prev, n_c) = (41, 6);
        let (k, v) = random_case(&mut rng, n_prev + n_c);
        let ck = compress_rows(&f_k, &k, SHAPE.kv_dim()).unwrap();
        let q = rand_vec(&mut rng, n_c * SHAPE.q_dim());
        let got = esa_layer_attention(&q, &k, &v, &ck, &f_q, n_prev, &inv, SHAPE, &cfg).unwrap();
        assert_eq!(got.selected, (3..31).collect::<Vec<u32>>());
        let want = dense_esa_positions(&q, &k, &v, n_prev, 31, 9, SHAPE, &inv);
        assert!(max_abs_diff(&got.output, &want) < 1e-5);
    }

    #[test]
    fn small_budget_selects_best_scored_tokens() {
        // With lossless maps and eps = 0, the selection is the exact top-k of F_s on full scores.
        let mut rng = StdRng::seed_from_u64(5);
        let (f_q, f_k) = lossless_maps(SHAPE);
        let cfg = EsaConfig { n_init: 2, n_local: 5, top_k: 4, chunk: 3, eps: 0, d_compressed: SHAPE.kv_dim(), w: None, final_chunk: 0, decode_key_bits: 8 , select_block: 0 };
        let inv = inv_freq(SHAPE.head_dim);
        let (n_prev, n_c) = (30, 3);
        let (k, v) = random_case(&mut rng, n_prev + n_c);
        let ck = compress_rows(&f_k, &k, SHAPE.kv_dim()).unwrap();
        let q = rand_vec(&mut rng, n_c * SHAPE.q_dim());
        let got = esa_layer_attention(&q, &k, &v, &ck, &f_q, n_prev, &inv, SHAPE, &cfg).unwrap();
        let middle = 2..25usize;
        let kd = SHAPE.kv_dim();
        let qw: Vec<Vec<f32>> = q.chunks_exact(SHAPE.q_dim()).map(|r| rotate_row(r, SHAPE.head_dim, 5, &inv)).collect();
        let fs: Vec<f32> = middle
            .clone()
            .map(|m| {
                qw.iter()
                    .map(|qr| {
                        let best = middle.clone().map(|m2| full_score(qr, &k[m2 * kd..][..kd], SHAPE)).fold(f32::NEG_INFINITY, f32::max);
                        full_score(qr, &k[m * kd..][..kd], SHAPE) - best
                    })
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect();
        let want: Vec<u32> = top_k_indices(&fs, 4).into_iter().map(|i| i + 2).collect();
        assert_eq!(got.selected, want);
        assert_eq!(got.selected.len(), 4);
        // Output equals esa_attention over exactly that selection.
        let direct = esa_attention(&q, &k, &v, &got.layout, &want, 5, &inv, SHAPE).unwrap();
        assert_eq!(got.output, direct);
    }

    #[test]
    fn decode_key_bits_are_validated() {
        let c = EsaConfig::default();
        assert_eq!(c.decode_key_bits, 8);
        assert!(EsaConfig { decode_key_bits: 16, ..c }.validate().is_ok());
        let err = EsaConfig { decode_key_bits: 4, ..c }.validate().unwrap_err().to_string();
        assert!(err.contains("esa.decode_key_bits"), "{err}");
    }

    /// Round to nearest: every value within half a step (the scale) of its quantisation, the
    /// largest magnitude at +-127, zero rows all zero, the scale an f16 value.
    #[test]
    fn int8_rows_round_to_nearest() {
        let mut rng = StdRng::seed_from_u64(8);
        for d in [1usize, 2, 5, 16, 48, 127] {
            let x: Vec<f32> = rand_vec(&mut rng, d).iter().map(|v| v * 3.7).collect();
            let (q, s) = quantize_row_i8(&x);
            assert_eq!(half::f16::from_f32(s).to_f32(), s);
            let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((s - max / 127.0).abs() <= max / 127.0 * 1e-3, "scale {s} for max {max}");
            for (&v, &qi) in x.iter().zip(&q) {
                assert!((qi as f32 * s - v).abs() <= 0.5 * s * 1.001, "d {d}: {v} -> {qi} x {s}");
            }
            assert!(q.iter().any(|&v| v.abs() == 127), "the largest value maps to +-127");
            let back = dequantized_rows_i8(&x, d);
            assert!(back.iter().zip(&x).all(|(b, v)| (b - v).abs() <= 0.5 * s * 1.001));
        }
        assert_eq!(quantize_row_i8(&[0.0; 7]), (vec![0i8; 7], 0.0));
    }

    /// The int8 decode scores equal the f32 chunk scores of the dequantised keys.
    #[test]
    fn int8_decode_scores_match_dequantised_chunk_scores() {
        let mut rng = StdRng::seed_from_u64(9);
        let d = 24;
        let cq = rand_vec(&mut rng, d);
        let ck = rand_vec(&mut rng, 37 * d);
        let (mut q, mut scales) = (Vec::new(), Vec::new());
        for row in ck.chunks_exact(d) {
            let (r, s) = quantize_row_i8(row);
            q.extend(r);
            scales.push(s);
        }
        let got = decode_scores_i8(&cq, &q, &scales, d).unwrap();
        let want = chunk_scores(&cq, &dequantized_rows_i8(&ck, d), d).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
        assert!(got.contains(&0.0));
        assert!(decode_scores_i8(&cq, &q, &scales[1..], d).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let inv = inv_freq(8);
        let cfg = EsaConfig { n_init: 1, n_local: 2, top_k: 1, chunk: 2, eps: 0, d_compressed: 2, w: None, final_chunk: 0, decode_key_bits: 8 , select_block: 0 };
        let q = vec![0.0; SHAPE.q_dim()];
        let kv = vec![0.0; 10 * SHAPE.kv_dim()];
        assert!(esa_layer_attention(&q, &kv, &kv, &[], &[0.0; 3], 5, &inv, SHAPE, &cfg).is_err());
        let l = select_tokens(5, 1, &cfg);
        assert!(esa_attention(&q, &kv, &kv, &l, &[0], 2, &inv, SHAPE).is_err()); // 0 is not in M
        let bad_shape = HeadShape { num_heads: 3, num_kv_heads: 2, head_dim: 8 };
        assert!(esa_attention(&q, &kv, &kv, &l, &[], 2, &inv, bad_shape).is_err());
    }
}
