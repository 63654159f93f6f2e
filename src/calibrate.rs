//! Calibration of ESA's query/key compression maps (`/work/shared/ESA.md`, "Calibration").
//!
//! 1. **Capture** ([`capture`]): run the model (GPU, dense attention, windows inside its trained
//!    context) over text and accumulate per layer the second moments `Sq = sum q q^T` of the
//!    concatenated queries rotated to ESA's long-distance position `w` and `Sk = sum k k^T` of the
//!    concatenated un-rotated keys, chunk by chunk ([`Session::feed_capturing`]); no vector is kept.
//! 2. **Fit** ([`fit_closed_form`]): ESA scores a query `q` (`q_dim`) against a key `k` (`kv_dim`)
//!    by `s(q, k) = sum_h q_h . k_kv(h) = q^T L k` (`L = lossless f_q^T`, which sums the query
//!    heads of each GQA group), approximated by `(A q) . (B k)`. Over all pairs the paper's loss
//!    `sum (s(q,k) - (Aq).(Bk))^2` is `n_q n_k || Sq^1/2 (L - A^T B) Sk^1/2 ||_F^2` (with mean
//!    moments), so the best rank-d' maps come from a truncated SVD of `Sq^1/2 L Sk^1/2 = U S V^T`:
//!    `A = S_d^1/2 U_d^T Sq^-1/2`, `B = S_d^1/2 V_d^T Sk^-1/2`. The moments get a ridge
//!    (`ridge * trace / dim` on the diagonal) so rank-deficient statistics stay invertible.
//!    Baselines: [`fit_pca_keys`] (Loki-style: the keys' top-d' principal directions) and
//!    [`random_maps`].
//! 3. **Report** ([`recall_at_k`]): per layer, on held-out text, the fraction of the exact top-k
//!    keys (full-width scores) found in the compressed top-k.
//! 4. **File** ([`save_maps`]): safetensors `layers.{i}.f_q` `[d', q_dim]` (acting on queries
//!    rotated to `w`, as the loader expects), `layers.{i}.f_k` `[d', kv_dim]`, plus metadata
//!    (model identity, d', w, tokens, method); the loader refuses a file made for another model.
//!
//! [`auto_maps`] does all of it once per (model, d', w) and caches the file beside the models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};

use crate::attention::Attention;
use crate::model::gpu_model::GpuModel;
use crate::reference::esa::{lossless_maps, top_k_indices, HeadShape};
use crate::session::{Session, SessionOptions};
use crate::{Error, Result};

/// Metadata key: the model identity (`GpuModel::identity`) the maps were fitted for.
pub const META_MODEL: &str = "model";
/// Metadata key: the model's file or folder name (for messages).
pub const META_MODEL_NAME: &str = "model_name";
const META_FORMAT: &str = "format";
const FORMAT: &str = "esa-wgpu compression maps v1";

/// Per-layer second moments (sums, f64) of the queries rotated to `w` and of the un-rotated keys.
#[derive(Clone)]
pub struct LayerMoments {
    pub sq: Mat<f64>,
    pub sk: Mat<f64>,
    pub n_q: usize,
    pub n_k: usize,
}

#[derive(Clone)]
pub struct Moments {
    pub shape: HeadShape,
    pub layers: Vec<LayerMoments>,
}

fn rows_f64(v: &[f32], cols: usize) -> Mat<f64> {
    let n = v.len() / cols;
    Mat::from_fn(n, cols, |i, j| v[i * cols + j] as f64)
}

impl Moments {
    pub fn new(shape: HeadShape, num_layers: usize) -> Moments {
        let (qd, kd) = (shape.q_dim(), shape.kv_dim());
        let layer = LayerMoments { sq: Mat::zeros(qd, qd), sk: Mat::zeros(kd, kd), n_q: 0, n_k: 0 };
        Moments { shape, layers: vec![layer; num_layers] }
    }

    /// Add `q` (`[n][q_dim]`, already rotated to `w`) and `k` (`[m][kv_dim]`, un-rotated) to layer `l`.
    pub fn add(&mut self, l: usize, q: &[f32], k: &[f32]) {
        let (qd, kd) = (self.shape.q_dim(), self.shape.kv_dim());
        let m = &mut self.layers[l];
        let (q, k) = (rows_f64(q, qd), rows_f64(k, kd));
        matmul(&mut m.sq, Accum::Add, q.transpose(), &q, 1.0, Par::Seq);
        matmul(&mut m.sk, Accum::Add, k.transpose(), &k, 1.0, Par::Seq);
        m.n_q += q.nrows();
        m.n_k += k.nrows();
    }

    /// Tokens of queries seen (layer 0).
    pub fn tokens(&self) -> usize {
        self.layers.first().map_or(0, |l| l.n_q)
    }
}

/// `L` (`[q_dim][kv_dim]`): the full score is `q^T L k`.
fn score_matrix(shape: HeadShape) -> Mat<f64> {
    let (fq, _) = lossless_maps(shape);
    let (qd, kd) = (shape.q_dim(), shape.kv_dim());
    Mat::from_fn(qd, kd, |i, j| fq[j * qd + i] as f64)
}

/// Mean moment with a ridge: `S / n + ridge * (trace / dim) I` (and a floor so an all-zero
/// statistic stays invertible).
fn mean_moment(s: &Mat<f64>, n: usize, ridge: f64) -> Mat<f64> {
    let dim = s.nrows();
    let inv_n = 1.0 / n.max(1) as f64;
    let trace: f64 = (0..dim).map(|i| s[(i, i)]).sum::<f64>() * inv_n;
    let lambda = ridge * trace / dim as f64 + 1e-12;
    Mat::from_fn(dim, dim, |i, j| s[(i, j)] * inv_n + if i == j { lambda } else { 0.0 })
}

/// `(S^1/2, S^-1/2)` of a symmetric positive definite matrix.
fn sqrt_and_inverse(s: &Mat<f64>) -> Result<(Mat<f64>, Mat<f64>)> {
    let evd = s.self_adjoint_eigen(Side::Lower).map_err(|e| Error::Unsupported(format!("calibration: eigendecomposition failed: {e:?}")))?;
    let (u, e) = (evd.U(), evd.S().column_vector());
    let n = s.nrows();
    let floor = e.iter().copied().fold(0.0f64, f64::max) * 1e-15 + 1e-300;
    let ev: Vec<f64> = e.iter().map(|&x| x.max(floor)).collect();
    let scaled = |f: &dyn Fn(f64) -> f64| {
        let us = Mat::from_fn(n, n, |i, j| u[(i, j)] * f(ev[j]));
        &us * u.transpose()
    };
    Ok((scaled(&|x| x.sqrt()), scaled(&|x| 1.0 / x.sqrt())))
}

fn to_f32_rows(m: MatRef<'_, f64>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)] as f32);
        }
    }
    out
}

fn check_width(shape: HeadShape, d: usize) -> Result<()> {
    if d == 0 || d % 2 != 0 || d > shape.kv_dim() {
        return Err(Error::arg("d_compressed", format!("{d}: must be even, at least 2 and at most n_kv * head_dim = {}", shape.kv_dim())));
    }
    Ok(())
}

/// Compression maps of one layer: `f_q` `[d'][q_dim]` on queries rotated to `w`, `f_k`
/// `[d'][kv_dim]` on un-rotated keys, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMaps {
    pub f_q: Vec<f32>,
    pub f_k: Vec<f32>,
}

/// The rank-d' minimiser of the mean over pairs of `(q^T L k - (f_q q).(f_k k))^2` for the
/// (ridge-regularised) moments of one layer; see the module comment.
pub fn fit_closed_form(m: &LayerMoments, shape: HeadShape, d: usize, ridge: f64) -> Result<LayerMaps> {
    check_width(shape, d)?;
    if m.n_q == 0 || m.n_k == 0 {
        return Err(Error::arg("calibration", "no tokens captured"));
    }
    let (sq_half, sq_ihalf) = sqrt_and_inverse(&mean_moment(&m.sq, m.n_q, ridge))?;
    let (sk_half, sk_ihalf) = sqrt_and_inverse(&mean_moment(&m.sk, m.n_k, ridge))?;
    let target = &(&sq_half * &score_matrix(shape)) * &sk_half;
    let svd = target.thin_svd().map_err(|e| Error::Unsupported(format!("calibration: SVD failed: {e:?}")))?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let root: Vec<f64> = (0..d).map(|i| s[i].max(0.0).sqrt()).collect();
    let ud = Mat::from_fn(d, u.nrows(), |i, j| u[(j, i)] * root[i]);
    let vd = Mat::from_fn(d, v.nrows(), |i, j| v[(j, i)] * root[i]);
    let a = &ud * &sq_ihalf;
    let b = &vd * &sk_ihalf;
    Ok(LayerMaps { f_q: to_f32_rows(a.as_ref()), f_k: to_f32_rows(b.as_ref()) })
}

/// Loki-style baseline: `f_k` projects keys onto their top-d' principal directions (of the
/// un-centred second moment), `f_q = f_k L^T` so the score is the exact one restricted to them.
pub fn fit_pca_keys(m: &LayerMoments, shape: HeadShape, d: usize) -> Result<LayerMaps> {
    check_width(shape, d)?;
    let sk = mean_moment(&m.sk, m.n_k, 0.0);
    let evd = sk.self_adjoint_eigen(Side::Lower).map_err(|e| Error::Unsupported(format!("calibration: eigendecomposition failed: {e:?}")))?;
    let u = evd.U();
    let kd = shape.kv_dim();
    // Eigenvalues ascend: the last d columns are the principal directions.
    let p = Mat::from_fn(d, kd, |i, j| u[(j, kd - 1 - i)]);
    Ok(maps_from_key_projection(shape, &to_f32_rows(p.as_ref())))
}

/// `f_k = P`, `f_q = P L^T` for a key projection `P` (`[d'][kv_dim]`).
fn maps_from_key_projection(shape: HeadShape, p: &[f32]) -> LayerMaps {
    let (qd, kd, hd) = (shape.q_dim(), shape.kv_dim(), shape.head_dim);
    let d = p.len() / kd;
    let mut f_q = vec![0.0f32; d * qd];
    for r in 0..d {
        for h in 0..shape.num_heads {
            let g = shape.kv_head(h);
            for i in 0..hd {
                f_q[r * qd + h * hd + i] = p[r * kd + g * hd + i];
            }
        }
    }
    LayerMaps { f_q, f_k: p.to_vec() }
}

/// Random Gaussian projection (Johnson-Lindenstrauss: `E[P^T P] = I`), `f_q = P L^T`.
pub fn random_maps(shape: HeadShape, d: usize, seed: u64) -> Result<LayerMaps> {
    check_width(shape, d)?;
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let scale = 1.0 / (d as f64).sqrt();
    let p: Vec<f32> = (0..d * shape.kv_dim())
        .map(|_| {
            // Box-Muller.
            let (u1, u2) = (next().max(1e-300), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * scale) as f32
        })
        .collect();
    Ok(maps_from_key_projection(shape, &p))
}

/// The mean over all (query, key) pairs of the captured data of `(q^T L k - (f_q q).(f_k k))^2`,
/// from the moments alone: `trace(D^T Sq D Sk)` with `D = L - f_q^T f_k` and mean moments.
pub fn objective(m: &LayerMoments, shape: HeadShape, maps: &LayerMaps) -> f64 {
    let (qd, kd) = (shape.q_dim(), shape.kv_dim());
    let d = maps.f_k.len() / kd;
    let a = Mat::from_fn(d, qd, |i, j| maps.f_q[i * qd + j] as f64);
    let b = Mat::from_fn(d, kd, |i, j| maps.f_k[i * kd + j] as f64);
    let diff = &score_matrix(shape) - &(a.transpose() * &b);
    let sq = mean_moment(&m.sq, m.n_q, 0.0);
    let sk = mean_moment(&m.sk, m.n_k, 0.0);
    let left = &sq * &diff;
    let right = &diff * &sk;
    let mut total = 0.0;
    for i in 0..qd {
        for j in 0..kd {
            total += left[(i, j)] * right[(i, j)];
        }
    }
    total
}

/// Fit every layer with `method` ("closed-form", "pca" or "random").
pub fn fit_all(moments: &Moments, d: usize, method: &str, ridge: f64) -> Result<Vec<LayerMaps>> {
    moments
        .layers
        .iter()
        .enumerate()
        .map(|(l, m)| match method {
            "closed-form" => fit_closed_form(m, moments.shape, d, ridge),
            "pca" => fit_pca_keys(m, moments.shape, d),
            "random" => random_maps(moments.shape, d, 1000 + l as u64),
            other => Err(Error::arg("method", format!("`{other}`: closed-form, pca or random"))),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Recall
// ---------------------------------------------------------------------------------------------

fn project(map: &[f32], x: &[f32], in_dim: usize) -> Vec<f32> {
    map.chunks_exact(in_dim).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn dot32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Recall@k of one layer: for each query `(pos, q)` (q rotated to `w`) the candidates are the
/// keys at positions `skip..pos` of `keys` (`[n][kv_dim]`, un-rotated, row = position); the
/// exact top-k by full score is compared with the top-k by compressed score. Returns the mean
/// over queries of `|exact ∩ compressed| / |exact|` (1 where there are at most k candidates).
pub fn recall_at_k(shape: HeadShape, maps: &LayerMaps, queries: &[(usize, Vec<f32>)], keys: &[f32], skip: usize, k: usize) -> f64 {
    let (qd, kd) = (shape.q_dim(), shape.kv_dim());
    let (fq, _) = lossless_maps(shape);
    let ck: Vec<Vec<f32>> = keys.chunks_exact(kd).map(|key| project(&maps.f_k, key, kd)).collect();
    let mut total = 0.0;
    for (pos, q) in queries {
        let cand = skip..(*pos).min(keys.len() / kd);
        if cand.len() <= k {
            total += 1.0;
            continue;
        }
        let qs = project(&fq, q, qd);
        let cq = project(&maps.f_q, q, qd);
        let exact: Vec<f32> = cand.clone().map(|m| dot32(&qs, &keys[m * kd..(m + 1) * kd])).collect();
        let approx: Vec<f32> = cand.clone().map(|m| dot32(&cq, &ck[m])).collect();
        let e = top_k_indices(&exact, k);
        let mut a = top_k_indices(&approx, k);
        a.sort_unstable();
        let hit = e.iter().filter(|i| a.binary_search(i).is_ok()).count();
        total += hit as f64 / e.len().max(1) as f64;
    }
    total / queries.len().max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// Capture on the GPU
// ---------------------------------------------------------------------------------------------

/// How text is run through the model for capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Tokens per window (each window starts at position 0; keep it inside the trained context).
    pub window: usize,
    /// Keys and queries at positions below this in each window are left out (attention sinks:
    /// ESA never scores its `n_init` initial tokens).
    pub skip: usize,
    /// ESA's long-distance query position.
    pub w: usize,
    /// Prefill chunk (0: chosen so the capture buffer stays under 128 MiB).
    pub chunk: usize,
}

impl CaptureOptions {
    /// 2048-token windows (or the trained context if shorter), skipping the first 16 positions.
    pub fn for_model(cfg: &crate::model::config::Config, w: usize) -> CaptureOptions {
        CaptureOptions { window: 2048.min(cfg.max_position_embeddings).max(32), skip: 16, w, chunk: 0 }
    }
}

/// Progress of a capture: tokens done of the total.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Run `tokens` in windows of `opts.window` through the model with dense attention and call
/// `each(layer, pos0, n, q_rotated_to_w, k)` per chunk and layer, with the rows at positions
/// `>= skip` only (`pos0` is the window position of the first row given).
fn run_windows(model: &Arc<GpuModel>, tokens: &[u32], opts: &CaptureOptions, progress: Progress, mut each: impl FnMut(usize, usize, usize, &[f32], &[f32]) -> Result<()>) -> Result<()> {
    let c = model.cfg.clone();
    let (qd, kd) = (c.q_dim(), c.kv_dim());
    let rows = qd + 2 * kd;
    if opts.window <= opts.skip {
        return Err(Error::arg("window", format!("{} tokens leave nothing after skipping {}", opts.window, opts.skip)));
    }
    let chunk = if opts.chunk > 0 {
        opts.chunk
    } else {
        let per_token = (c.num_layers * rows * 4) as u64;
        (((128u64 << 20) / per_token) as usize).clamp(16, 512)
    };
    let mut session = Session::new(model.clone(), SessionOptions { max_context: opts.window, prefill_chunk: chunk, all_logits: false, attention: Attention::Dense, rope_scaling: None })?;
    let inv = c.rope_inv_freqs();
    let mut done = 0;
    progress(0, tokens.len());
    for win in tokens.chunks(opts.window) {
        session.reset();
        session.feed_capturing(win, |pos0, n, qkv| {
            let first = opts.skip.saturating_sub(pos0).min(n);
            let m = n - first;
            if m > 0 {
                for l in 0..c.num_layers {
                    let layer = &qkv[l * n * rows..(l + 1) * n * rows];
                    let mut q = Vec::with_capacity(m * qd);
                    let mut k = Vec::with_capacity(m * kd);
                    for row in layer.chunks_exact(rows).skip(first) {
                        q.extend_from_slice(&row[..qd]);
                        k.extend_from_slice(&row[qd..qd + kd]);
                    }
                    crate::reference::ops::rope(&mut q, &vec![opts.w as u32; m], &inv);
                    each(l, pos0 + first, m, &q, &k)?;
                }
            }
            done += n;
            progress(done, tokens.len());
            Ok(())
        })?;
    }
    Ok(())
}

/// Capture the second moments of `tokens` (see [`CaptureOptions`]).
pub fn capture(model: &Arc<GpuModel>, tokens: &[u32], opts: &CaptureOptions, progress: Progress) -> Result<Moments> {
    let mut m = Moments::new(HeadShape::from(&model.cfg), model.cfg.num_layers);
    run_windows(model, tokens, opts, progress, |l, _, _, q, k| {
        m.add(l, q, k);
        Ok(())
    })?;
    Ok(m)
}

/// Held-out vectors of one window for the recall report: per layer, the keys of every position
/// (`[window][kv_dim]`, rows below `skip` zero) and the queries (rotated to `w`) at the last
/// `n_queries` positions.
pub struct HeldOut {
    pub skip: usize,
    pub keys: Vec<Vec<f32>>,
    pub queries: Vec<Vec<(usize, Vec<f32>)>>,
}

/// Capture one window of `tokens` (at most `opts.window`) for [`recall_at_k`].
pub fn capture_held_out(model: &Arc<GpuModel>, tokens: &[u32], opts: &CaptureOptions, n_queries: usize, progress: Progress) -> Result<HeldOut> {
    let c = &model.cfg;
    let (qd, kd) = (c.q_dim(), c.kv_dim());
    let tokens = &tokens[..tokens.len().min(opts.window)];
    let n = tokens.len();
    let mut keys = vec![vec![0.0f32; n * kd]; c.num_layers];
    let mut queries = vec![Vec::new(); c.num_layers];
    let first_query = n.saturating_sub(n_queries);
    run_windows(model, tokens, opts, progress, |l, pos0, m, q, k| {
        keys[l][pos0 * kd..(pos0 + m) * kd].copy_from_slice(k);
        for i in 0..m {
            if pos0 + i >= first_query {
                queries[l].push((pos0 + i, q[i * qd..(i + 1) * qd].to_vec()));
            }
        }
        Ok(())
    })?;
    Ok(HeldOut { skip: opts.skip, keys, queries })
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// What a maps file records besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct MapsInfo {
    pub model: String,
    pub model_name: String,
    pub d_compressed: usize,
    pub w: usize,
    /// Query (and key) vectors per layer in the moments: the calibration tokens less the
    /// skipped leading positions of each window.
    pub tokens: usize,
    pub method: String,
    pub text: String,
}

/// Write `layers.{i}.f_q` / `layers.{i}.f_k` (f32) and the metadata.
pub fn save_maps(path: &Path, maps: &[LayerMaps], info: &MapsInfo) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, usize, usize)> = maps
        .iter()
        .enumerate()
        .flat_map(|(l, m)| {
            let d = info.d_compressed;
            [
                (format!("layers.{l}.f_q"), bytemuck::cast_slice(&m.f_q).to_vec(), d, m.f_q.len() / d),
                (format!("layers.{l}.f_k"), bytemuck::cast_slice(&m.f_k).to_vec(), d, m.f_k.len() / d),
            ]
        })
        .collect();
    let mut views = Vec::new();
    for (name, data, rows, cols) in &bytes {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*rows, *cols], data).map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), v));
    }
    let meta: HashMap<String, String> = [
        (META_FORMAT, FORMAT.to_string()),
        (META_MODEL, info.model.clone()),
        (META_MODEL_NAME, info.model_name.clone()),
        ("d_compressed", info.d_compressed.to_string()),
        ("w", info.w.to_string()),
        ("tokens", info.tokens.to_string()),
        ("method", info.method.clone()),
        ("text", info.text.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // Write then rename, so a cache never holds half a file.
    let tmp = path.with_extension(format!("part{}", std::process::id()));
    safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| Error::format(&tmp, format!("writing maps: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Read a maps file back: per-layer maps and its metadata.
pub fn load_maps(path: &Path) -> Result<(Vec<LayerMaps>, MapsInfo)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
    let num = |k: &str| get(k).parse::<usize>().map_err(|_| Error::format(path, format!("metadata `{k}` missing or not a number")));
    let info = MapsInfo { model: get(META_MODEL), model_name: get(META_MODEL_NAME), d_compressed: num("d_compressed")?, w: num("w")?, tokens: num("tokens")?, method: get("method"), text: get("text") };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let mut maps = Vec::new();
    for l in 0.. {
        let (Ok(q), Ok(k)) = (st.tensor(&format!("layers.{l}.f_q")), st.tensor(&format!("layers.{l}.f_k"))) else { break };
        let f = |t: &safetensors::tensor::TensorView| -> Vec<f32> { bytemuck::pod_collect_to_vec(t.data()) };
        maps.push(LayerMaps { f_q: f(&q), f_k: f(&k) });
    }
    Ok((maps, info))
}

// ---------------------------------------------------------------------------------------------
// Automatic calibration with a cache
// ---------------------------------------------------------------------------------------------

/// Where the default calibration text comes from: the license texts every Debian or Ubuntu
/// system ships in `base-files` (GPL, LGPL, GFDL, Apache, MPL, Artistic, CC0: ~260 KB of
/// English prose, ~52k SmolLM2 tokens).
pub const DEFAULT_TEXT_DIR: &str = "/usr/share/common-licenses";

/// The default calibration text: the regular files of [`DEFAULT_TEXT_DIR`] in name order
/// (symbolic links, which repeat files, left out). Returns the text and its description.
pub fn default_text() -> Result<(String, String)> {
    let dir = Path::new(DEFAULT_TEXT_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, std::io::Error::new(e.kind(), format!("{e}: the default calibration text is Debian's license texts; on other systems pass your own text (--text FILE)"))))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut text = String::new();
    for f in &files {
        text.push_str(&String::from_utf8_lossy(&std::fs::read(f).map_err(|e| Error::io(f, e))?));
        text.push_str("\n\n");
    }
    Ok((text, format!("{DEFAULT_TEXT_DIR} ({} files)", files.len())))
}

/// Settings of [`auto_maps`].
#[derive(Debug, Clone)]
pub struct AutoOptions {
    /// Compressed width d'; 0 = the smallest of [`WIDTH_CANDIDATES`] that meets the recall bar
    /// on held-out text ([`choose_width`]).
    pub d_compressed: usize,
    pub w: usize,
    /// Most calibration tokens (the text is cut there).
    pub max_tokens: usize,
    pub ridge: f64,
    /// Text to calibrate on, with a description; `None`: [`default_text`].
    pub text: Option<(String, String)>,
}

impl AutoOptions {
    pub fn new(d_compressed: usize, w: usize) -> AutoOptions {
        AutoOptions { d_compressed, w, max_tokens: 16_384, ridge: 1e-3, text: None }
    }
}

/// Cache path of the maps of `model` for (d', w): `<model cache>/esa-maps/<name>-<identity>-d<d'>-w<w>.safetensors`.
pub fn cached_maps_path(model: &GpuModel, d: usize, w: usize) -> Result<PathBuf> {
    Ok(cache_stem(model)?.with_file_name(format!("{}-d{d}-w{w}.safetensors", stem_name(model))))
}

/// Cache path of the width [`choose_width`] picked for `model` at `w` (a text file holding d').
pub fn cached_width_path(model: &GpuModel, w: usize) -> Result<PathBuf> {
    // ("auto32": chosen with k <= 1/32 of the window; choices cached under the older, easier bar,
    // "-auto-", are not reused.)
    Ok(cache_stem(model)?.with_file_name(format!("{}-auto{RECALL_FRACTION}-w{w}.txt", stem_name(model))))
}

fn stem_name(model: &GpuModel) -> String {
    let name: String = model_name(model).chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("{name}-{}", model.identity)
}

fn cache_stem(model: &GpuModel) -> Result<PathBuf> {
    Ok(crate::fetch::cache_dir()?.join("esa-maps").join(stem_name(model)))
}

fn model_name(model: &GpuModel) -> String {
    let o = model.source.origin();
    o.file_name().map_or_else(|| o.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Widths [`choose_width`] tries, smallest first (those below the exact width n_kv x head_dim).
pub const WIDTH_CANDIDATES: [usize; 9] = [16, 32, 48, 64, 96, 128, 192, 256, 512];
/// The bar of issue 14: recall@k of at least `RECALL_BAR` in at least `LAYER_SHARE` of the layers
/// (27 of 30), with k = `RECALL_K`, or 1/`RECALL_FRACTION` of the held-out window if that is less.
pub const RECALL_BAR: f64 = 0.9;
pub const LAYER_SHARE: f64 = 0.9;
pub const RECALL_K: usize = 2048;
/// Long prompts are where the width matters: at 64k tokens ESA's top_k = 2048 keeps ~3% of the
/// middle, so the held-out k is at most 1/32 of the window's candidates. (At a quarter of a 2 048-
/// token window, as before session 7, random maps already reach ~0.75 and d' = 16 passed for
/// SmolLM2, whose long-context selection at that width is unmeasured.)
pub const RECALL_FRACTION: usize = 32;

/// What [`choose_width`] found: the width, and per width tried the recall of every layer.
#[derive(Debug, Clone)]
pub struct WidthChoice {
    pub d: usize,
    pub tried: Vec<(usize, Vec<f64>)>,
}

/// The smallest width of [`WIDTH_CANDIDATES`] whose closed-form maps (fitted on `moments`) keep
/// recall@k >= [`RECALL_BAR`] on the held-out vectors in at least [`LAYER_SHARE`] of the layers;
/// the exact width when none does.
pub fn choose_width(moments: &Moments, held: &HeldOut, shape: HeadShape, k: usize, ridge: f64) -> Result<WidthChoice> {
    let mut tried = Vec::new();
    for &d in WIDTH_CANDIDATES.iter().filter(|&&d| d < shape.kv_dim()) {
        let maps = fit_all(moments, d, "closed-form", ridge)?;
        let recalls: Vec<f64> = maps.iter().enumerate().map(|(l, m)| recall_at_k(shape, m, &held.queries[l], &held.keys[l], held.skip, k)).collect();
        let good = recalls.iter().filter(|&&r| r >= RECALL_BAR).count();
        tried.push((d, recalls));
        if good as f64 >= LAYER_SHARE * maps.len() as f64 {
            return Ok(WidthChoice { d, tried });
        }
    }
    Ok(WidthChoice { d: shape.kv_dim(), tried })
}

/// Held-out queries per layer that [`auto_maps`] scores recall with.
const AUTO_HELD_OUT_QUERIES: usize = 64;

/// The maps of `model` for `opts`: the cached file if there is one, else calibrate (closed form)
/// on the text, write the file and return its path. `None` when d' is the exact width or more
/// (exact maps are then both lossless and no wider). With `d_compressed` 0 the width is chosen
/// first ([`choose_width`]: the text's last quarter, at most one capture window, is held out)
/// and cached too. `progress(done, total)` follows the captures.
pub fn auto_maps(model: &crate::Model, opts: &AutoOptions, progress: Progress) -> Result<Option<PathBuf>> {
    let shape = HeadShape::from(model.config());
    let copts = CaptureOptions::for_model(model.config(), opts.w);
    let mut text_ids: Option<(Vec<u32>, String)> = None;
    let mut tokens = |opts: &AutoOptions| -> Result<(Vec<u32>, String)> {
        if let Some(t) = &text_ids {
            return Ok(t.clone());
        }
        let (text, desc) = match &opts.text {
            Some(t) => t.clone(),
            None => default_text()?,
        };
        let ids = model.tokenizer.encode(&text, false)?;
        text_ids = Some((ids, desc));
        Ok(text_ids.clone().unwrap())
    };
    let mut moments = None;
    let d = if opts.d_compressed > 0 {
        opts.d_compressed
    } else {
        let width_path = cached_width_path(&model.gpu, opts.w)?;
        match std::fs::read_to_string(&width_path).ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(d) => d,
            None => {
                let (mut ids, _) = tokens(opts)?;
                ids.truncate(opts.max_tokens);
                let held_len = (ids.len() / 4).min(copts.window);
                if held_len <= copts.skip + 1 {
                    return Err(crate::Error::arg("calibration text", format!("{} tokens: too short to hold out a window for choosing the width", ids.len())));
                }
                let held_ids = ids.split_off(ids.len() - held_len);
                let m = capture(&model.gpu, &ids, &copts, &mut *progress)?;
                let held = capture_held_out(&model.gpu, &held_ids, &copts, AUTO_HELD_OUT_QUERIES, &mut *progress)?;
                let k = RECALL_K.min(held_len / RECALL_FRACTION).max(1);
                let choice = choose_width(&m, &held, shape, k, opts.ridge)?;
                if let Some(dir) = width_path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
                }
                std::fs::write(&width_path, format!("{}\n", choice.d)).map_err(|e| crate::Error::io(&width_path, e))?;
                moments = Some(m);
                choice.d
            }
        }
    };
    if d >= shape.kv_dim() {
        return Ok(None);
    }
    let path = cached_maps_path(&model.gpu, d, opts.w)?;
    if path.is_file() {
        return Ok(Some(path));
    }
    let (mut ids, desc) = tokens(opts)?;
    ids.truncate(opts.max_tokens);
    let moments = match moments {
        Some(m) => m,
        None => capture(&model.gpu, &ids, &copts, progress)?,
    };
    let maps = fit_all(&moments, d, "closed-form", opts.ridge)?;
    let info = MapsInfo {
        model: model.gpu.identity.clone(),
        model_name: model_name(&model.gpu),
        d_compressed: d,
        w: opts.w,
        tokens: moments.tokens(),
        method: format!("closed-form ridge={}", opts.ridge),
        text: desc,
    };
    save_maps(&path, &maps, &info)?;
    Ok(Some(path))
}
