//! The CPU reference forward pass is self-consistent: chunking, sharding and position shifts do not
//! change its logits beyond float rounding.

mod common;

use common::{tiny_model_dir, TinySpec};
use esa_wgpu::model::config::RopeScaling;
use esa_wgpu::model::safetensors_loader::SafetensorsModel;
use esa_wgpu::reference::forward::{natural_positions, Model};
use esa_wgpu::Error;

/// Tolerance for logits computed along different but mathematically equal paths (f64 sums, one
/// f32 rounding per op; logits are O(1)).
const TOL: f32 = 1e-4;

fn load(spec: &TinySpec) -> Model {
    let dir = tiny_model_dir(spec);
    let src = SafetensorsModel::open(dir.path()).unwrap();
    Model::load(&src).unwrap()
}

fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

#[test]
fn prefill_equals_token_by_token_decode() {
    for spec in [TinySpec::llama_gqa_f16(), TinySpec::llama_tied_bf16(), TinySpec::mistral_llama3_rope()] {
        let model = load(&spec);
        let tokens = prompt(13, spec.vocab);
        let mut cache = model.new_cache(32);
        let prefill = model.forward(&mut cache, &tokens).unwrap();
        assert_eq!((prefill.len(), prefill[0].len(), cache.len), (13, spec.vocab, 13));

        let mut cache = model.new_cache(32);
        let steps: Vec<Vec<f32>> =
            tokens.iter().map(|&t| model.forward(&mut cache, &[t]).unwrap().remove(0)).collect();
        let d = max_diff(&prefill, &steps);
        assert!(d < TOL, "{:?}: prefill vs decode differ by {d}", spec.arch);

        // Mixed chunks too.
        let mut cache = model.new_cache(32);
        let mut chunks = model.forward(&mut cache, &tokens[..5]).unwrap();
        chunks.extend(model.forward(&mut cache, &tokens[5..]).unwrap());
        assert!(max_diff(&prefill, &chunks) < TOL);

        // Logits are not degenerate: they spread, and depend on the context.
        let spread = prefill[12].iter().fold(f32::MIN, |m, &v| m.max(v)) - prefill[12].iter().fold(f32::MAX, |m, &v| m.min(v));
        assert!(spread > 1.0, "logit spread {spread}");
        assert!(prefill.iter().all(|l| l.iter().all(|v| v.is_finite())));
    }
}

#[test]
fn sharded_equals_unsharded() {
    let spec = TinySpec::llama_gqa_f16();
    let a = load(&spec);
    let b = load(&TinySpec { sharded: true, ..spec.clone() });
    let tokens = prompt(7, spec.vocab);
    let la = a.forward(&mut a.new_cache(8), &tokens).unwrap();
    let lb = b.forward(&mut b.new_cache(8), &tokens).unwrap();
    assert_eq!(la, lb);
}

#[test]
fn shifting_all_positions_keeps_logits() {
    // RoPE makes attention depend on relative positions only: the hook ESA uses can move queries
    // and keys together without changing the result.
    let spec = TinySpec::llama_gqa_f16();
    let model = load(&spec);
    let tokens = prompt(9, spec.vocab);
    let plain = model.forward(&mut model.new_cache(16), &tokens).unwrap();
    let shifted = model
        .forward_with(&mut model.new_cache(16), &tokens, &mut |a| {
            let n_k = a.k.len() / model.config.kv_dim();
            let q: Vec<u32> = a.q_pos.iter().map(|p| p + 50).collect();
            let k: Vec<u32> = natural_positions(n_k).iter().map(|p| p + 50).collect();
            model.dense_attention(&a, &q, &k)
        })
        .unwrap();
    let d = max_diff(&plain, &shifted);
    assert!(d < TOL, "shifted positions change logits by {d}");
}

#[test]
fn cache_overflow_and_bad_token_are_errors() {
    let spec = TinySpec::llama_tied_bf16();
    let model = load(&spec);
    let mut cache = model.new_cache(6);
    model.forward(&mut cache, &prompt(4, spec.vocab)).unwrap();
    match model.forward(&mut cache, &prompt(3, spec.vocab)) {
        Err(Error::ContextFull { tokens: 3, used: 4, max_context: 6 }) => {}
        other => panic!("expected ContextFull, got {:?}", other.map(|_| ())),
    }
    assert_eq!(cache.len, 4, "a refused chunk must leave the cache untouched");
    let e = model.forward(&mut cache, &[spec.vocab as u32]).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");

    // A cleared cache starts a fresh sequence.
    let first = model.forward(&mut model.new_cache(6), &prompt(4, spec.vocab)).unwrap();
    cache.clear();
    assert_eq!(model.forward(&mut cache, &prompt(4, spec.vocab)).unwrap(), first);
}

#[test]
fn llama3_scaling_inv_freqs() {
    let spec = TinySpec::mistral_llama3_rope();
    let cfg = spec.config();
    let Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) =
        cfg.rope_scaling.clone()
    else {
        unreachable!()
    };
    let scaled = cfg.rope_inv_freqs();
    let plain = esa_wgpu::model::config::Config { rope_scaling: None, ..cfg.clone() }.rope_inv_freqs();
    assert_eq!(scaled.len(), spec.head_dim / 2);
    let old = original_max_position_embeddings as f32;
    let (mut kept, mut divided, mut smoothed) = (0, 0, 0);
    for (s, p) in scaled.iter().zip(&plain) {
        let wavelen = 2.0 * std::f32::consts::PI / p;
        let rel = |x: f32| (s - x).abs() <= 1e-6 * x;
        if wavelen < old / high_freq_factor {
            assert!(rel(*p), "high frequency {p} must be kept, got {s}");
            kept += 1;
        } else if wavelen > old / low_freq_factor {
            assert!(rel(p / factor), "low frequency {p} must be divided by {factor}, got {s}");
            divided += 1;
        } else {
            assert!(*s < *p && *s > p / factor, "mid frequency {p} must be interpolated, got {s}");
            smoothed += 1;
        }
    }
    // The fixture is chosen so every band is exercised.
    assert!(kept > 0 && divided > 0 && smoothed > 0, "{kept} {divided} {smoothed}");
    // Frequencies stay ordered (each band's map is monotone and the bands join continuously).
    assert!(scaled.windows(2).all(|w| w[0] > w[1]));
}
