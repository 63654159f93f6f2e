//! Reference kernels: the exact definitions the GPU kernels are tested against.
//!
//! Conventions: all tensors are flat f32 slices, row-major, outermost index first; sums are
//! accumulated in f64 and rounded to f32 once at the end. Shapes are given in brackets, e.g.
//! `[n_tok][cols]`. Mismatched slice lengths are programming errors and panic (these are test
//! oracles, not user-facing code).

/// Row-wise RMSNorm (HF `LlamaRMSNorm`). `x` is `[n][dim]` with `dim = w.len()`:
/// `y[r][i] = x[r][i] / sqrt(mean_j(x[r][j]^2) + eps) * w[i]`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    assert!(dim > 0 && x.len() % dim == 0, "rmsnorm: x.len() {} is not a multiple of dim {dim}", x.len());
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        y.extend(row.iter().zip(w).map(|(&v, &g)| (v as f64 * inv * g as f64) as f32));
    }
    y
}

/// `y = W x` with `W` `[rows][cols]` (a PyTorch Linear weight `[out][in]`), `x` `[cols]`, `y` `[rows]`.
pub fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "matvec: weight length");
    assert_eq!(x.len(), cols, "matvec: input length");
    w.chunks_exact(cols).map(|r| dot(r, x) as f32).collect()
}

/// Batched `matvec`: `x` is `[n_tok][cols]`, the result `[n_tok][rows]` with `y[t] = W x[t]`.
pub fn matmul(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "matmul: weight length");
    assert!(cols > 0 && x.len() % cols == 0, "matmul: input length");
    x.chunks_exact(cols).flat_map(|xt| matvec(w, rows, cols, xt)).collect()
}

/// f64 dot product of two equally long f32 slices.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum()
}

/// Rotary position embedding in place, HF "rotate_half" pairing.
///
/// `x` is `[n_tok][n_heads][head_dim]` with `n_tok = positions.len()`, `head_dim = 2 * inv_freqs.len()`,
/// `n_heads = x.len() / (n_tok * head_dim)`. For token t, each head, and `i < head_dim / 2`:
/// `angle = (positions[t] as f32) * inv_freqs[i]` (an f32 product, as HF computes it), then with
/// `c = cos(angle)`, `s = sin(angle)` (evaluated in f64):
/// `x'[i] = x[i] * c - x[i + d/2] * s`, `x'[i + d/2] = x[i + d/2] * c + x[i] * s`.
pub fn rope(x: &mut [f32], positions: &[u32], inv_freqs: &[f32]) {
    let half = inv_freqs.len();
    let head_dim = 2 * half;
    if positions.is_empty() {
        assert!(x.is_empty(), "rope: x given but no positions");
        return;
    }
    let per_tok = x.len() / positions.len();
    assert!(half > 0 && per_tok * positions.len() == x.len() && per_tok % head_dim == 0, "rope: x shape");
    for (tok, &pos) in x.chunks_exact_mut(per_tok).zip(positions) {
        let cs: Vec<(f64, f64)> = inv_freqs
            .iter()
            .map(|&f| {
                let angle = (pos as f32 * f) as f64;
                (angle.cos(), angle.sin())
            })
            .collect();
        for head in tok.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = (head[i] as f64, head[i + half] as f64);
                head[i] = (a * c - b * s) as f32;
                head[i + half] = (b * c + a * s) as f32;
            }
        }
    }
}

/// Causal multi-head attention with GQA over explicit positions.
///
/// `q` `[n_q][n_heads][head_dim]` and `k` `[n_k][n_kv_heads][head_dim]` are already rotated;
/// `v` `[n_k][n_kv_heads][head_dim]`. Key j is visible to query i iff `k_pos[j] <= q_pos[i]`.
/// Query head h reads KV head `h / (n_heads / n_kv_heads)`. Scores are `q . k / sqrt(head_dim)`,
/// softmax over the visible keys (max-subtracted, f64), output `sum_j p_j v_j`.
/// A query with no visible key gets an all-zero output. Result: `[n_q][n_heads][head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    q_pos: &[u32],
    k_pos: &[u32],
) -> Vec<f32> {
    let (n_q, n_k) = (q_pos.len(), k_pos.len());
    assert_eq!(q.len(), n_q * n_heads * head_dim, "attention: q length");
    assert_eq!(k.len(), n_k * n_kv_heads * head_dim, "attention: k length");
    assert_eq!(v.len(), k.len(), "attention: v length");
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: heads");
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut out = vec![0f32; q.len()];
    let mut scores = vec![0f64; n_k];
    for i in 0..n_q {
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[(i * n_heads + h) * head_dim..][..head_dim];
            let row = |j: usize| (j * n_kv_heads + kvh) * head_dim;
            let mut max = f64::NEG_INFINITY;
            for j in 0..n_k {
                scores[j] = if k_pos[j] <= q_pos[i] { dot(qv, &k[row(j)..][..head_dim]) * scale } else { f64::NEG_INFINITY };
                max = max.max(scores[j]);
            }
            if max == f64::NEG_INFINITY {
                continue; // nothing visible: output stays zero
            }
            let mut acc = vec![0f64; head_dim];
            let mut total = 0f64;
            for j in 0..n_k {
                if scores[j] == f64::NEG_INFINITY {
                    continue;
                }
                let p = (scores[j] - max).exp();
                total += p;
                for (a, &vv) in acc.iter_mut().zip(&v[row(j)..][..head_dim]) {
                    *a += p * vv as f64;
                }
            }
            let o = &mut out[(i * n_heads + h) * head_dim..][..head_dim];
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = (a / total) as f32;
            }
        }
    }
    out
}

/// SiLU: `x / (1 + exp(-x))`.
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

/// SwiGLU MLP activation: `silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "swiglu: lengths");
    gate.iter().zip(up).map(|(&g, &u)| (silu(g) as f64 * u as f64) as f32).collect()
}

/// Residual add in place: `x[i] += y[i]`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_in_place: lengths");
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Row gather: `table` is `[vocab][dim]`; returns `[tokens.len()][dim]`. Panics on an out-of-range id.
pub fn embedding(table: &[f32], dim: usize, tokens: &[u32]) -> Vec<f32> {
    tokens.iter().flat_map(|&t| table[t as usize * dim..][..dim].iter().copied()).collect()
}

/// Softmax of one vector: `exp(x_i - max) / sum_j exp(x_j - max)`, in f64.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    softmax_f64(x, 1.0).into_iter().map(|p| p as f32).collect()
}

fn softmax_f64(x: &[f32], temperature: f32) -> Vec<f64> {
    let t = temperature as f64;
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 / t));
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 / t - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.into_iter().map(|v| v / total).collect()
}

/// Index of the largest logit, the lowest index on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Token sampling, fully determined by its inputs (the random draw is `uniform` in [0, 1)).
///
/// - `temperature <= 0`: greedy, `argmax` (lowest index on ties).
/// - Otherwise `p = softmax(logits / temperature)` (f64). Tokens are ordered by `p` descending,
///   ties by lower index first. The kept set is the shortest prefix of that order whose cumulative
///   probability is `>= top_p` (at least one token; `top_p >= 1` keeps every token).
/// - With `T` the sum of the kept probabilities, return the first kept token (in that order) whose
///   running cumulative probability exceeds `uniform * T`; the last kept token if rounding leaves none.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, uniform: f32) -> u32 {
    assert!(!logits.is_empty(), "sample: empty logits");
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let p = softmax_f64(logits, temperature);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let mut kept = order.len();
    if top_p < 1.0 {
        let mut cum = 0.0;
        for (n, &i) in order.iter().enumerate() {
            cum += p[i];
            if cum >= top_p as f64 {
                kept = n + 1;
                break;
            }
        }
    }
    let kept = &order[..kept];
    let target = uniform as f64 * kept.iter().map(|&i| p[i]).sum::<f64>();
    let mut cum = 0.0;
    for &i in kept {
        cum += p[i];
        if target < cum {
            return i as u32;
        }
    }
    *kept.last().unwrap() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_half_apart() {
        // head_dim 4: pairs (0,2) and (1,3); inv_freq 1 at position 1 rotates pair (0,2) by 1 rad.
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        rope(&mut x, &[1], &[1.0, 0.0]);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert_eq!((x[1], x[3]), (0.0, 1.0));
    }

    #[test]
    fn attention_respects_positions_and_gqa() {
        // 2 query heads share 1 kv head; the second key is in the future for the query.
        let q = vec![1.0, 0.0, 0.0, 1.0];
        let k = vec![1.0, 0.0, 5.0, 5.0];
        let v = vec![2.0, 3.0, 100.0, 100.0];
        let o = attention(&q, &k, &v, 2, 1, 2, &[0], &[0, 1]);
        assert_eq!(o, vec![2.0, 3.0, 2.0, 3.0]);
        let none = attention(&q, &k, &v, 2, 1, 2, &[0], &[1, 1]);
        assert_eq!(none, vec![0.0; 4]);
    }

    #[test]
    fn sampling_rules() {
        let logits = [1.0, 3.0, 3.0, 0.0];
        assert_eq!(sample(&logits, 0.0, 1.0, 0.5), 1);
        // top_p tiny keeps only the first of the tied top tokens.
        assert_eq!(sample(&logits, 1.0, 0.01, 0.99), 1);
        // Kept {1, 2}: uniform below one half picks 1, above picks 2.
        // p = [0.062, 0.458, 0.458, 0.023]: 0.9 needs the two top tokens.
        let top_p = 0.9;
        assert_eq!(sample(&logits, 1.0, top_p, 0.49), 1);
        assert_eq!(sample(&logits, 1.0, top_p, 0.51), 2);
        // Everything kept: uniform near 1 reaches the least likely token.
        assert_eq!(sample(&logits, 1.0, 1.0, 0.9999), 3);
    }
}
