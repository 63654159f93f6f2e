//! The sampling filters defined on the host: the reference that the GPU sampler
//! (`shaders/sample.wgsl`, `gpu::ops::sampling`, which every `Session` step uses) is tested against
//! (`tests/sampling.rs`: the same token for the same uniform, and matching frequencies), and a
//! complete sampler for callers that hold a logits row (`Session::logits`).
//!
//! The nucleus is the set of tokens whose probability is at least the smallest probability among
//! the most likely tokens that together reach `top_p` (ties at the boundary kept together), and the
//! token is picked by inverse CDF over the kept tokens in vocabulary order.
//!
//! Order, as Hugging Face's `generate` applies its logits processors: repetition penalty,
//! temperature, top-k, top-p, min-p, then one draw.

use crate::session::Sampling;

/// Repetition penalty (Keskar et al. 2019, "CTRL"; as in transformers and llama.cpp): the logit of
/// each distinct token of `recent` is divided by `penalty` when positive and multiplied by it
/// otherwise, once however often the token occurs. `penalty == 1` changes nothing; ids past the
/// vocabulary are ignored.
pub fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 || recent.is_empty() {
        return;
    }
    let mut ids = recent.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest logit, lowest index on ties, NaN skipped; 0 when every logit is NaN (as
/// the GPU kernel).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// The distribution a sampled token is drawn from: softmax of `logits / temperature`, then top-k,
/// top-p and min-p, renormalised (filtered-out and NaN logits get 0). Needs `temperature > 0`; the
/// repetition penalty is not applied here (see `apply_repeat_penalty`). All zeros when every logit
/// is NaN.
///
/// - top-k (`top_k > 0`): keeps the tokens whose logit is at least the k-th largest (ties at the
///   k-th value are all kept, as transformers does).
/// - top-p (`top_p < 1`): keeps the smallest set of most likely tokens holding at least `top_p` of
///   the mass left by top-k, plus any token tied with the least likely of them.
/// - min-p (`min_p > 0`): keeps the tokens whose probability is at least `min_p` times the largest.
pub fn distribution(logits: &[f32], s: &Sampling) -> Vec<f64> {
    let mx = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f64> = if mx.is_finite() {
        let inv_t = 1.0 / s.temperature as f64;
        logits.iter().map(|&v| if v.is_nan() { 0.0 } else { ((v as f64 - mx as f64) * inv_t).exp() }).collect()
    } else {
        // Every logit is NaN or -inf, or some are +inf: the tokens at the maximum share the mass.
        logits.iter().map(|&v| if v == mx { 1.0 } else { 0.0 }).collect()
    };
    // The most likely token has weight exactly 1 from here on; no filter removes it.
    let live = p.iter().filter(|&&v| v > 0.0).count();
    if s.top_k > 0 && s.top_k < live {
        let mut w: Vec<f64> = p.iter().copied().filter(|&v| v > 0.0).collect();
        let (_, kth, _) = w.select_nth_unstable_by(s.top_k - 1, |a, b| b.total_cmp(a));
        let kth = *kth;
        p.iter_mut().filter(|v| **v < kth).for_each(|v| *v = 0.0);
    }
    // min-p's threshold relative to the most likely token (weight 1), which the filters before
    // it keep and whose ratio to every other token renormalising does not change.
    let min_w = if s.min_p > 0.0 { s.min_p as f64 } else { 0.0 };
    if s.top_p < 1.0 {
        let total: f64 = p.iter().sum();
        // Only tokens that min-p keeps need sorting: if the nucleus reaches below them, min-p
        // removes what it would add anyway.
        let mut cand: Vec<f64> = p.iter().copied().filter(|&v| v > 0.0 && v >= min_w).collect();
        cand.sort_unstable_by(|a, b| b.total_cmp(a));
        let goal = s.top_p.max(0.0) as f64 * total;
        let mut cum = 0.0;
        let mut tau = 0.0;
        for v in cand {
            cum += v;
            if cum >= goal {
                tau = v;
                break;
            }
        }
        p.iter_mut().filter(|v| **v < tau).for_each(|v| *v = 0.0);
    }
    if min_w > 0.0 {
        p.iter_mut().filter(|v| **v < min_w).for_each(|v| *v = 0.0);
    }
    let z: f64 = p.iter().sum();
    if z > 0.0 {
        p.iter_mut().for_each(|v| *v /= z);
    }
    p
}

/// Inverse CDF in vocabulary order: the first token at which the running sum of `probs` passes
/// `uniform * sum`; the most likely token if rounding leaves the goal past the end (as the GPU
/// kernel does).
pub fn draw(probs: &[f64], uniform: f32) -> u32 {
    let total: f64 = probs.iter().sum();
    let goal = uniform as f64 * total;
    let mut acc = 0.0;
    for (i, &v) in probs.iter().enumerate() {
        if v > 0.0 {
            acc += v;
            if acc > goal {
                return i as u32;
            }
        }
    }
    let mut best = 0;
    for (i, &v) in probs.iter().enumerate() {
        if v > probs[best] {
            best = i;
        }
    }
    best as u32
}

/// The whole host sampler: the repetition penalty over `recent` (the caller passes the last
/// `repeat_last_n` tokens of the context), then greedy (`temperature <= 0`) or one draw from
/// `distribution` with `uniform` in [0, 1).
pub fn sample(logits: &[f32], recent: &[u32], s: &Sampling, uniform: f32) -> u32 {
    let mut owned;
    let mut l = logits;
    if s.penalises() {
        owned = logits.to_vec();
        apply_repeat_penalty(&mut owned, recent, s.repeat_penalty);
        l = &owned;
    }
    if s.temperature <= 0.0 {
        return argmax(l);
    }
    draw(&distribution(l, s), uniform)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Sampling {
        Sampling { temperature, top_k, top_p, min_p, repeat_penalty: 1.0, repeat_last_n: 64, seed: 1 }
    }

    fn softmax(l: &[f32], t: f32) -> Vec<f64> {
        let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = l.iter().map(|&v| ((v as f64 - mx) / t as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-12, "[{i}]: {x} vs {y} in {a:?} vs {b:?}");
        }
    }

    /// `p` restricted to `keep`, renormalised.
    fn restrict(p: &[f64], keep: &[usize]) -> Vec<f64> {
        let z: f64 = keep.iter().map(|&i| p[i]).sum();
        (0..p.len()).map(|i| if keep.contains(&i) { p[i] / z } else { 0.0 }).collect()
    }

    // Odd size, one tie (indices 1 and 5 at 2.0), a negative and a large logit.
    const L: [f32; 7] = [0.5, 2.0, -1.0, 3.0, 1.0, 2.0, -3.0];

    #[test]
    fn no_filter_is_softmax_with_temperature() {
        for t in [0.3, 1.0, 2.5] {
            close(&distribution(&L, &s(t, 0, 1.0, 0.0)), &softmax(&L, t));
        }
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_ties_at_the_kth() {
        let p = softmax(&L, 1.0);
        close(&distribution(&L, &s(1.0, 1, 1.0, 0.0)), &restrict(&p, &[3]));
        // k = 2: the 2nd largest is 2.0, shared by indices 1 and 5: both kept.
        close(&distribution(&L, &s(1.0, 2, 1.0, 0.0)), &restrict(&p, &[1, 3, 5]));
        close(&distribution(&L, &s(1.0, 3, 1.0, 0.0)), &restrict(&p, &[1, 3, 5]));
        close(&distribution(&L, &s(1.0, 4, 1.0, 0.0)), &restrict(&p, &[1, 3, 4, 5]));
        // k at or past the vocabulary: no filter.
        close(&distribution(&L, &s(1.0, 7, 1.0, 0.0)), &p);
        close(&distribution(&L, &s(1.0, 100, 1.0, 0.0)), &p);
        // top_k = 1 samples the argmax whatever the uniform.
        for u in [0.0, 0.3, 0.999_999] {
            assert_eq!(sample(&L, &[], &s(1.0, 1, 1.0, 0.0), u), 3);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus_with_ties() {
        let p = softmax(&L, 1.0);
        // The argmax alone holds 0.51: top_p 0.5 keeps only it; 0.55 needs the next token, at
        // 2.0, which is tied: both 1 and 5 join.
        assert!(p[3] > 0.5 && p[3] < 0.55);
        close(&distribution(&L, &s(1.0, 0, 0.5, 0.0)), &restrict(&p, &[3]));
        close(&distribution(&L, &s(1.0, 0, 0.55, 0.0)), &restrict(&p, &[1, 3, 5]));
        let top3 = p[1] + p[3] + p[5];
        close(&distribution(&L, &s(1.0, 0, top3 as f32 + 1e-4, 0.0)), &restrict(&p, &[1, 3, 4, 5]));
        // top_p 0: only the most likely token; 1: everything.
        close(&distribution(&L, &s(1.0, 0, 0.0, 0.0)), &restrict(&p, &[3]));
        close(&distribution(&L, &s(1.0, 0, 1.0, 0.0)), &p);
        // After top-k the nucleus is taken from the mass top-k left.
        let pk = restrict(&p, &[1, 3, 5]);
        assert!(pk[3] < 0.6);
        close(&distribution(&L, &s(1.0, 2, 0.6, 0.0)), &pk);
    }

    #[test]
    fn min_p_keeps_tokens_above_a_fraction_of_the_max() {
        let p = softmax(&L, 1.0);
        close(&distribution(&L, &s(1.0, 0, 1.0, 0.0)), &p);
        // exp(2 - 3) = 0.368 of the max: min_p 0.3 keeps 1, 3, 5; 0.4 keeps 3 only.
        close(&distribution(&L, &s(1.0, 0, 1.0, 0.3)), &restrict(&p, &[1, 3, 5]));
        close(&distribution(&L, &s(1.0, 0, 1.0, 0.4)), &restrict(&p, &[3]));
        // min_p 1: only tokens tied with the max.
        let tied = [1.0, 3.0, 3.0, 0.0, -2.0];
        close(&distribution(&tied, &s(1.0, 0, 1.0, 1.0)), &restrict(&softmax(&tied, 1.0), &[1, 2]));
        // With temperature the threshold applies to the tempered probabilities: at t = 2,
        // exp((2 - 3) / 2) = 0.61 keeps 1 and 5 at min_p 0.5.
        close(&distribution(&L, &s(2.0, 0, 1.0, 0.5)), &restrict(&softmax(&L, 2.0), &[1, 3, 5]));
    }

    #[test]
    fn min_p_with_top_p_is_their_intersection() {
        let p = softmax(&L, 1.0);
        // top_p 0.95 keeps 0, 1, 3, 4, 5 (the four largest hold 0.948); min_p 0.1 then drops 0
        // (0.08 of the max) and keeps 4 (0.135 of it).
        let five: f64 = [0usize, 1, 3, 4, 5].iter().map(|&i| p[i]).sum();
        let four: f64 = [1usize, 3, 4, 5].iter().map(|&i| p[i]).sum();
        assert!(four < 0.9499 && five >= 0.95);
        close(&distribution(&L, &s(1.0, 0, 0.95, 0.0)), &restrict(&p, &[0, 1, 3, 4, 5]));
        close(&distribution(&L, &s(1.0, 0, 0.95, 0.1)), &restrict(&p, &[1, 3, 4, 5]));
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits_once() {
        let mut l = L.to_vec();
        apply_repeat_penalty(&mut l, &[3, 2, 3, 3, 99], 2.0);
        assert_eq!(l, vec![0.5, 2.0, -2.0, 1.5, 1.0, 2.0, -3.0]);
        // 1.0 is no penalty; nor is an empty window.
        let mut same = L.to_vec();
        apply_repeat_penalty(&mut same, &[0, 1, 2], 1.0);
        apply_repeat_penalty(&mut same, &[], 3.0);
        assert_eq!(same, L.to_vec());
        // A zero logit stays zero; a penalty below 1 favours repeats.
        let mut z = vec![0.0, 1.0];
        apply_repeat_penalty(&mut z, &[0, 1], 0.5);
        assert_eq!(z, vec![0.0, 2.0]);
    }

    #[test]
    fn repeat_penalty_applies_before_greedy_and_sampling() {
        let pen = Sampling { repeat_penalty: 2.0, ..s(0.0, 0, 1.0, 0.0) };
        assert_eq!(sample(&L, &[], &pen, 0.5), 3);
        // 3.0 / 2 = 1.5 < 2.0: the lowest index at 2.0 wins.
        assert_eq!(sample(&L, &[3], &pen, 0.5), 1);
        // A window of 0 (repeat_last_n = 0) turns it off.
        assert_eq!(sample(&L, &[3], &Sampling { repeat_last_n: 0, ..pen }, 0.5), 3);
        // Sampling with top_k 1 after the penalty: the new argmax (ties: either of 1 and 5).
        let k1 = Sampling { repeat_penalty: 2.0, ..s(1.0, 1, 1.0, 0.0) };
        for u in [0.1, 0.9] {
            let t = sample(&L, &[3], &k1, u);
            assert!(t == 1 || t == 5, "{t}");
        }
    }

    #[test]
    fn draw_is_inverse_cdf_in_vocabulary_order() {
        let p = [0.0, 0.25, 0.0, 0.5, 0.25];
        assert_eq!(draw(&p, 0.0), 1);
        assert_eq!(draw(&p, 0.2499), 1);
        assert_eq!(draw(&p, 0.25), 3);
        assert_eq!(draw(&p, 0.7499), 3);
        assert_eq!(draw(&p, 0.75), 4);
        assert_eq!(draw(&p, 0.999_999), 4);
        // Past the end (rounding): the most likely token.
        assert_eq!(draw(&p, 1.0), 3);
    }

    #[test]
    fn edge_logits() {
        // NaN is never chosen; all NaN gives 0 as on the GPU.
        let l = [f32::NAN, 1.0, f32::NAN, 1.5, 0.0];
        let d = distribution(&l, &s(1.0, 0, 1.0, 0.0));
        assert_eq!((d[0], d[2]), (0.0, 0.0));
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&l), 3);
        assert_eq!(argmax(&[f32::NAN; 3]), 0);
        assert_eq!(sample(&[f32::NAN; 3], &[], &s(1.0, 0, 0.9, 0.05), 0.5), 0);
        // -inf logits get no mass; a single token is always chosen.
        let l = [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY];
        assert_eq!(distribution(&l, &s(0.7, 40, 0.95, 0.05)), vec![0.0, 1.0, 0.0]);
        assert_eq!(sample(&[4.0], &[0, 0], &Sampling { repeat_penalty: 1.3, ..s(1.0, 40, 0.95, 0.05) }, 0.7), 0);
        // +inf: the tokens at +inf share the mass.
        let d = distribution(&[1.0, f32::INFINITY, 3.0, f32::INFINITY], &s(1.0, 0, 1.0, 0.0));
        assert_eq!(d, vec![0.0, 0.5, 0.0, 0.5]);
    }

    #[test]
    fn empirical_frequencies_match_the_distribution() {
        // The full chain on a fixed vector: 20 000 draws with the session's uniform stream.
        let l: Vec<f32> = (0..33).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.6).collect();
        let cfg = Sampling { temperature: 0.8, top_k: 12, top_p: 0.9, min_p: 0.05, repeat_penalty: 1.3, repeat_last_n: 64, seed: 7 };
        let recent = [0u32, 5, 5, 21];
        let mut pen = l.clone();
        apply_repeat_penalty(&mut pen, &recent, cfg.repeat_penalty);
        let want = distribution(&pen, &cfg);
        let n = 20_000;
        let mut count = vec![0usize; l.len()];
        let mut rng = crate::session::SplitMix::new(cfg.seed);
        for _ in 0..n {
            count[sample(&l, &recent, &cfg, rng.uniform()) as usize] += 1;
        }
        for (i, (&c, &w)) in count.iter().zip(&want).enumerate() {
            let f = c as f64 / n as f64;
            // 5 standard deviations of a binomial frequency, at least 0.002.
            let tol = (5.0 * (w * (1.0 - w) / n as f64).sqrt()).max(0.002);
            assert!((f - w).abs() <= tol, "token {i}: frequency {f}, probability {w}");
            if w == 0.0 {
                assert_eq!(c, 0, "token {i} is filtered out");
            }
        }
    }

    #[test]
    fn generation_config_settings() {
        use serde_json::json;
        // Llama 3 Instruct: sampling with temperature and top-p; top-k takes transformers' 50.
        let g = Sampling::from_generation_config(&json!({"bos_token_id": 128000, "do_sample": true, "temperature": 0.6, "top_p": 0.9})).unwrap();
        assert_eq!((g.temperature, g.top_p, g.top_k, g.min_p, g.repeat_penalty), (0.6, 0.9, 50, 0.0, 1.0));
        // Every field, with a penalty over the whole context.
        let g = Sampling::from_generation_config(&json!({"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.1, "repetition_penalty": 1.05})).unwrap();
        assert_eq!((g.temperature, g.top_p, g.top_k, g.min_p, g.repeat_penalty), (0.7, 0.8, 20, 0.1, 1.05));
        assert_eq!(g.repeat_last_n, usize::MAX);
        assert!(g.penalises());
        // do_sample false: greedy whatever else it says.
        let g = Sampling::from_generation_config(&json!({"do_sample": false, "temperature": 0.9})).unwrap();
        assert_eq!(g.temperature, 0.0);
        // Only token ids (SmolLM2's own file) or nulls: no opinion.
        assert_eq!(Sampling::from_generation_config(&json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})), None);
        assert_eq!(Sampling::from_generation_config(&json!({"temperature": null})), None);
    }

    #[test]
    fn default_sampling_per_model() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.gguf");
        std::fs::write(&other, b"").unwrap();
        let (s, from) = crate::engine::default_sampling(&other).unwrap();
        assert_eq!((s, from.as_str()), (Sampling::llama_cpp(), "llama.cpp's defaults"));
        let smol = dir.path().join(crate::fetch::DEFAULT_MODEL_FILE);
        std::fs::write(&smol, b"").unwrap();
        assert_eq!(crate::engine::default_sampling(&smol).unwrap().0, Sampling::default());
        // An HF folder: its generation_config.json when it has sampling fields.
        let hf = dir.path().join("hf");
        std::fs::create_dir(&hf).unwrap();
        assert_eq!(crate::engine::default_sampling(&hf).unwrap().0, Sampling::llama_cpp());
        std::fs::write(hf.join("generation_config.json"), r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(crate::engine::default_sampling(&hf).unwrap().0, Sampling::llama_cpp());
        std::fs::write(hf.join("generation_config.json"), r#"{"do_sample": true, "temperature": 0.3, "top_k": 0}"#).unwrap();
        let (s, from) = crate::engine::default_sampling(&hf).unwrap();
        assert_eq!((s.temperature, s.top_k, s.top_p), (0.3, 0, 1.0));
        assert!(from.ends_with("generation_config.json"));
        std::fs::write(hf.join("generation_config.json"), "{").unwrap();
        assert!(crate::engine::default_sampling(&hf).is_err());
    }

    #[test]
    fn penalty_only_with_a_window_and_invalid_settings_refused() {
        assert!(Sampling { repeat_penalty: 1.1, ..Sampling::greedy() }.penalises());
        assert!(!Sampling { repeat_penalty: 1.1, repeat_last_n: 0, ..Sampling::greedy() }.penalises());
        assert!(!Sampling::llama_cpp().penalises());
        for bad in [
            Sampling { temperature: f32::NAN, ..Sampling::default() },
            Sampling { top_p: 1.01, ..Sampling::default() },
            Sampling { min_p: 2.0, ..Sampling::default() },
            Sampling { repeat_penalty: -1.0, ..Sampling::default() },
            Sampling { repeat_penalty: f32::INFINITY, ..Sampling::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(Sampling::llama_cpp().validate().is_ok());
    }
}
