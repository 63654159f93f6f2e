//! Calibration of ESA's compression maps (issue 14): the closed-form fit against its objective and
//! the baselines, recall@k against brute force, the GPU capture against the CPU reference forward
//! pass, and the maps file (round trip, refusal for another model). Tiny models: seconds in all.

mod common;

use std::sync::{Arc, OnceLock};

use common::{tiny_model_dir, TinySpec};
use esa_wgpu::attention::{Attention, EsaConfig, EsaOptions};
use esa_wgpu::calibrate::{self, CaptureOptions, LayerMaps, MapsInfo, Moments};
use esa_wgpu::gpu::{GpuContext, GpuOptions};
use esa_wgpu::model::safetensors_loader::SafetensorsModel;
use esa_wgpu::reference::esa::{full_score, HeadShape};
use esa_wgpu::reference::forward::Model as RefModel;
use esa_wgpu::reference::ops::rope;
use esa_wgpu::{Engine, Sampling, SessionOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| GpuContext::new(&GpuOptions::default()).expect("GPU context")).clone()
}

const SHAPE: HeadShape = HeadShape { num_heads: 4, num_kv_heads: 2, head_dim: 8 };

/// Anisotropic, correlated vectors: `x = M z` with z ~ N(0, diag(decaying scales)).
fn structured(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    let mix: Vec<f32> = (0..dim * dim).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let z: Vec<f32> = (0..dim).map(|i| (rng.random::<f32>() * 2.0 - 1.0) * 0.8f32.powi(i as i32)).collect();
        for r in 0..dim {
            out.push((0..dim).map(|c| mix[r * dim + c] * z[c]).sum());
        }
    }
    out
}

fn compressed(maps: &LayerMaps, q: &[f32], k: &[f32]) -> f64 {
    let p = |m: &[f32], x: &[f32]| -> Vec<f64> { m.chunks_exact(x.len()).map(|r| r.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum()).collect() };
    p(&maps.f_q, q).iter().zip(p(&maps.f_k, k)).map(|(a, b)| a * b).sum()
}

/// The loss evaluated directly: mean over every (query, key) pair.
fn direct_loss(maps: &LayerMaps, q: &[f32], k: &[f32], shape: HeadShape) -> f64 {
    let (qd, kd) = (shape.q_dim(), shape.kv_dim());
    let mut sum = 0.0;
    let mut n = 0;
    for qr in q.chunks_exact(qd) {
        for kr in k.chunks_exact(kd) {
            let e = full_score(qr, kr, shape) as f64 - compressed(maps, qr, kr);
            sum += e * e;
            n += 1;
        }
    }
    sum / n as f64
}

#[test]
fn closed_form_fit_beats_pca_and_random_and_its_objective_is_the_pairwise_loss() {
    let mut rng = StdRng::seed_from_u64(7);
    let (q, k) = (structured(&mut rng, 300, SHAPE.q_dim()), structured(&mut rng, 220, SHAPE.kv_dim()));
    let mut m = Moments::new(SHAPE, 1);
    // Added in two pieces: the moments are streaming sums.
    m.add(0, &q[..100 * SHAPE.q_dim()], &k[..20 * SHAPE.kv_dim()]);
    m.add(0, &q[100 * SHAPE.q_dim()..], &k[20 * SHAPE.kv_dim()..]);
    let layer = &m.layers[0];
    assert_eq!((layer.n_q, layer.n_k), (300, 220));
    for d in [2, 6, 12] {
        let fit = calibrate::fit_closed_form(layer, SHAPE, d, 1e-9).unwrap();
        let pca = calibrate::fit_pca_keys(layer, SHAPE, d).unwrap();
        let rnd = calibrate::random_maps(SHAPE, d, 3).unwrap();
        let (jf, jp, jr) = (calibrate::objective(layer, SHAPE, &fit), calibrate::objective(layer, SHAPE, &pca), calibrate::objective(layer, SHAPE, &rnd));
        assert!(jf < jp && jf < jr, "d'={d}: closed form {jf} vs PCA {jp}, random {jr}");
        for (name, maps, j) in [("closed form", &fit, jf), ("pca", &pca, jp), ("random", &rnd, jr)] {
            let direct = direct_loss(maps, &q, &k, SHAPE);
            assert!((direct - j).abs() <= 1e-4 * direct.max(1e-12), "d'={d} {name}: objective {j} vs direct {direct}");
        }
        // A minimiser: nudging the maps never lowers the objective.
        for (i, eps) in [(0usize, 1e-2f32), (5, -1e-2), (17, 3e-3)] {
            let mut nudged = fit.clone();
            let (nk, nq) = (nudged.f_k.len(), nudged.f_q.len());
            nudged.f_k[i % nk] += eps;
            nudged.f_q[(3 * i) % nq] -= eps;
            assert!(calibrate::objective(layer, SHAPE, &nudged) >= jf * (1.0 - 1e-9), "d'={d}: nudge {i} lowered the objective");
        }
    }
    // Full width: the fit is (numerically) exact.
    let full = calibrate::fit_closed_form(layer, SHAPE, SHAPE.kv_dim(), 1e-12).unwrap();
    let j = calibrate::objective(layer, SHAPE, &full);
    let scale = direct_loss(&calibrate::random_maps(SHAPE, 2, 1).unwrap(), &q, &k, SHAPE);
    assert!(j < 1e-6 * scale, "full-width fit leaves {j} (vs {scale})");
    assert!(calibrate::fit_closed_form(layer, SHAPE, 3, 1e-3).is_err(), "odd d' must be refused");
    assert!(calibrate::fit_closed_form(layer, SHAPE, SHAPE.kv_dim() + 2, 1e-3).is_err(), "d' past kv_dim must be refused");
}

/// Rank-deficient statistics (fewer vectors than dimensions) do not break the regularised fit.
#[test]
fn closed_form_fit_survives_rank_deficient_moments() {
    let mut rng = StdRng::seed_from_u64(8);
    let (q, k) = (structured(&mut rng, 5, SHAPE.q_dim()), structured(&mut rng, 3, SHAPE.kv_dim()));
    let mut m = Moments::new(SHAPE, 1);
    m.add(0, &q, &k);
    let j = |maps: &LayerMaps| calibrate::objective(&m.layers[0], SHAPE, maps);
    // d' = 4 > rank 3 of the keys: an exact fit exists; the ridge costs little of it.
    let fit = calibrate::fit_closed_form(&m.layers[0], SHAPE, 4, 1e-3).unwrap();
    assert!(fit.f_q.iter().chain(&fit.f_k).all(|v| v.is_finite()));
    let rnd = calibrate::random_maps(SHAPE, 4, 2).unwrap();
    assert!(j(&fit) <= 1e-2 * j(&rnd), "{} vs random {}", j(&fit), j(&rnd));
    // d' = 2 < rank: no better than a hair above PCA, which is then not exact either.
    let fit = calibrate::fit_closed_form(&m.layers[0], SHAPE, 2, 1e-3).unwrap();
    let pca = calibrate::fit_pca_keys(&m.layers[0], SHAPE, 2).unwrap();
    assert!(j(&fit) <= j(&pca) * 1.01, "{} vs PCA {}", j(&fit), j(&pca));
}

/// Brute force: sort every candidate by score, take k, intersect.
fn brute_recall(maps: &LayerMaps, queries: &[(usize, Vec<f32>)], keys: &[f32], skip: usize, k: usize) -> f64 {
    let kd = SHAPE.kv_dim();
    let mut total = 0.0;
    for (pos, q) in queries {
        let cand: Vec<usize> = (skip..*pos).collect();
        if cand.len() <= k {
            total += 1.0;
            continue;
        }
        let top = |score: &dyn Fn(usize) -> f64| {
            let mut c = cand.clone();
            c.sort_by(|&a, &b| score(b).partial_cmp(&score(a)).unwrap().then(a.cmp(&b)));
            c.truncate(k);
            c
        };
        let exact = top(&|m| full_score(q, &keys[m * kd..(m + 1) * kd], SHAPE) as f64);
        let approx = top(&|m| compressed(maps, q, &keys[m * kd..(m + 1) * kd]));
        total += exact.iter().filter(|m| approx.contains(m)).count() as f64 / k as f64;
    }
    total / queries.len() as f64
}

#[test]
fn recall_at_k_matches_brute_force() {
    let mut rng = StdRng::seed_from_u64(9);
    let n = 90;
    let keys = structured(&mut rng, n, SHAPE.kv_dim());
    let q = structured(&mut rng, 12, SHAPE.q_dim());
    let queries: Vec<(usize, Vec<f32>)> = q.chunks_exact(SHAPE.q_dim()).enumerate().map(|(i, r)| (30 + 5 * i, r.to_vec())).collect();
    let mut m = Moments::new(SHAPE, 1);
    m.add(0, &q, &keys);
    for maps in [calibrate::fit_closed_form(&m.layers[0], SHAPE, 4, 1e-3).unwrap(), calibrate::random_maps(SHAPE, 4, 5).unwrap(), calibrate::fit_pca_keys(&m.layers[0], SHAPE, 2).unwrap()] {
        for k in [1, 5, 20, 60] {
            let got = calibrate::recall_at_k(SHAPE, &maps, &queries, &keys, 3, k);
            let want = brute_recall(&maps, &queries, &keys, 3, k);
            assert!((got - want).abs() < 1e-9, "k={k}: {got} vs brute force {want}");
        }
    }
    // Exact maps recall everything.
    let (f_q, f_k) = esa_wgpu::reference::esa::lossless_maps(SHAPE);
    assert_eq!(calibrate::recall_at_k(SHAPE, &LayerMaps { f_q, f_k }, &queries, &keys, 3, 7), 1.0);
}

/// The GPU capture (QKV read back per chunk, queries rotated to w on the host) gives the moments
/// of the CPU reference forward pass, window by window, skipping the first positions.
#[test]
fn gpu_capture_matches_reference_moments() {
    let spec = TinySpec::llama_gqa_f16();
    let dir = tiny_model_dir(&spec);
    let model = Engine::with_context(ctx()).load(dir.path()).unwrap();
    let reference = RefModel::load(&SafetensorsModel::open(dir.path()).unwrap()).unwrap();
    let c = model.config().clone();
    let shape = HeadShape::from(&c);
    let tokens: Vec<u32> = (0..70u32).map(|i| (i * 7919 + 3) % c.vocab_size as u32).collect();
    // Two windows of 40 and 30 tokens, chunks of 16 (a window ends mid-chunk), skip 5, w = 33.
    let opts = CaptureOptions { window: 40, skip: 5, w: 33, chunk: 16 };
    let mut calls = Vec::new();
    let got = calibrate::capture(&model.gpu, &tokens, &opts, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls.first(), Some(&(0, 70)));
    assert_eq!(calls.last(), Some(&(70, 70)));
    let mut want = Moments::new(shape, c.num_layers);
    let inv = c.rope_inv_freqs();
    for win in tokens.chunks(40) {
        let mut cache = reference.new_cache(40);
        let kd = c.kv_dim();
        let mut per_layer = Vec::new();
        reference
            .forward_with(&mut cache, win, &mut |a| {
                per_layer.push((a.q.to_vec(), a.k.to_vec()));
                reference.dense_attention(&a, a.q_pos, &esa_wgpu::reference::forward::natural_positions(a.k.len() / kd))
            })
            .unwrap();
        for (l, (q, k)) in per_layer.into_iter().enumerate() {
            let mut q = q[opts.skip * c.q_dim()..].to_vec();
            let n = q.len() / c.q_dim();
            rope(&mut q, &vec![opts.w as u32; n], &inv);
            want.add(l, &q, &k[opts.skip * kd..]);
        }
    }
    for (l, (g, w)) in got.layers.iter().zip(&want.layers).enumerate() {
        assert_eq!((g.n_q, g.n_k), (w.n_q, w.n_k), "layer {l}");
        assert_eq!(g.n_q, 35 + 25);
        for (name, a, b) in [("Sq", &g.sq, &w.sq), ("Sk", &g.sk, &w.sk)] {
            let scale = (0..b.nrows()).map(|i| b[(i, i)]).fold(0.0f64, f64::max);
            for i in 0..a.nrows() {
                for j in 0..a.ncols() {
                    assert!((a[(i, j)] - b[(i, j)]).abs() <= 5e-3 * scale, "layer {l} {name}[{i},{j}]: {} vs {}", a[(i, j)], b[(i, j)]);
                }
            }
        }
    }
    // On this model's own vectors, the closed form beats PCA and random maps in every layer.
    for (l, m) in got.layers.iter().enumerate() {
        let j = |maps: &LayerMaps| calibrate::objective(m, shape, maps);
        let fit = j(&calibrate::fit_closed_form(m, shape, 4, 1e-6).unwrap());
        assert!(fit < j(&calibrate::fit_pca_keys(m, shape, 4).unwrap()) && fit < j(&calibrate::random_maps(shape, 4, 1).unwrap()), "layer {l}");
    }
}

/// Maps survive the file round trip, load into an ESA session of their model (prefill, then decode
/// steps), and are refused
/// (naming the file) by another model of the same shapes.
#[test]
fn maps_file_round_trip_and_refusal_for_another_model() {
    let spec = TinySpec::llama_gqa_f16();
    let dir = tiny_model_dir(&spec);
    let model = Engine::with_context(ctx()).load(dir.path()).unwrap();
    let c = model.config().clone();
    let shape = HeadShape::from(&c);
    let tokens: Vec<u32> = (0..48u32).map(|i| (i * 31 + 7) % c.vocab_size as u32).collect();
    let moments = calibrate::capture(&model.gpu, &tokens, &CaptureOptions { window: 48, skip: 2, w: 16, chunk: 0 }, &mut |_, _| {}).unwrap();
    let maps = calibrate::fit_all(&moments, 8, "closed-form", 1e-3).unwrap();
    assert_eq!(maps.len(), c.num_layers);
    assert_eq!((maps[0].f_q.len(), maps[0].f_k.len()), (8 * shape.q_dim(), 8 * shape.kv_dim()));
    let info = MapsInfo { model: model.gpu.identity.clone(), model_name: "tiny".into(), d_compressed: 8, w: 16, tokens: moments.tokens(), method: "closed-form".into(), text: "test".into() };
    let path = dir.path().join("maps").join("tiny-d8.safetensors");
    calibrate::save_maps(&path, &maps, &info).unwrap();
    let (back, back_info) = calibrate::load_maps(&path).unwrap();
    assert_eq!(back, maps);
    assert_eq!(back_info, info);
    assert_eq!(back_info.tokens, 46);

    let esa = |maps: &std::path::Path| {
        let config = EsaConfig { n_init: 4, n_local: 16, top_k: 8, chunk: 8, eps: 1, d_compressed: 8, w: None, final_chunk: 0, decode_key_bits: 8, select_block: 0 };
        Attention::Esa(EsaOptions { config, maps: Some(maps.to_path_buf()) })
    };
    let mut session = model.session(SessionOptions { max_context: 64, attention: esa(&path), ..Default::default() }).unwrap();
    assert_eq!(session.esa().unwrap().d_compressed(), 8);
    session.feed(&tokens).unwrap();
    assert!(session.logits().unwrap().iter().all(|v| v.is_finite()));
    // Decode steps score the 8-bit copy of keys the f_k product wrote (d' 8: rows padded to 16).
    for t in 0..3 {
        session.step(&[t], &Sampling::greedy()).unwrap();
        assert!(session.logits().unwrap().iter().all(|v| v.is_finite()));
    }

    // Same shapes, other weights: refused with the file named.
    let other_dir = tiny_model_dir(&TinySpec { seed: 99, ..spec });
    let other = Engine::with_context(ctx()).load(other_dir.path()).unwrap();
    assert_ne!(other.gpu.identity, model.gpu.identity);
    let err = other.session(SessionOptions { max_context: 64, attention: esa(&path), ..Default::default() }).err().expect("maps of another model must be refused").to_string();
    assert!(err.contains("tiny-d8.safetensors") && err.contains("another model") && err.contains(&model.gpu.identity), "{err}");
}

/// `auto_maps` (what `--esa-maps auto` calls) calibrates once, caches the file under the model
/// cache, finds it the second time without running the model, and leaves exact maps alone.
#[test]
fn auto_maps_calibrate_once_then_come_from_the_cache() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let cache = tempfile::tempdir().unwrap();
    // The cache location is process-wide: tests that set it take turns.
    let _turn = CACHE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("ESA_WGPU_CACHE", cache.path());
    let model = Engine::with_context(ctx()).load(dir.path()).unwrap();
    let text = "It was the best of times, it was the worst of times, it was the age of wisdom. ".repeat(3);
    let opts = calibrate::AutoOptions { max_tokens: 120, text: Some((text, "test text".into())), ..calibrate::AutoOptions::new(8, 16) };
    let mut calls = 0;
    let path = calibrate::auto_maps(&model, &opts, &mut |_, _| calls += 1).unwrap().expect("d' 8 < 24 needs maps");
    assert!(path.starts_with(cache.path().join("esa-maps")) && path.is_file(), "{}", path.display());
    assert!(calls > 1);
    let (maps, info) = calibrate::load_maps(&path).unwrap();
    assert_eq!((maps.len(), info.d_compressed, info.w, info.model.as_str(), info.text.as_str()), (3, 8, 16, model.gpu.identity.as_str(), "test text"));
    assert_eq!(info.tokens, 120 - 16);
    let mut again = 0;
    assert_eq!(calibrate::auto_maps(&model, &opts, &mut |_, _| again += 1).unwrap(), Some(path));
    assert_eq!(again, 0, "the cached file must be used");
    assert_eq!(calibrate::auto_maps(&model, &calibrate::AutoOptions::new(24, 16), &mut |_, _| {}).unwrap(), None);
}

static CACHE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `f` with the model cache at `dir` (one test at a time: the variable is process-wide).
fn with_cache<T>(dir: &std::path::Path, f: impl FnOnce() -> T) -> T {
    let _turn = CACHE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("ESA_WGPU_CACHE", dir);
    f()
}

/// `--esa-maps auto` without a width: `auto_maps` with d' = 0 chooses the width on held-out
/// text (`choose_width`), caches the choice and the maps of that width, and reads both from the
/// cache afterwards. The choice meets the recall bar, and no smaller candidate does.
#[test]
fn auto_width_is_the_smallest_that_meets_the_bar() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let model = Engine::with_context(ctx()).load(dir.path()).unwrap();
    let shape = HeadShape::from(model.config());
    let text = "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness. ".repeat(6);
    let ids = model.tokenizer.encode(&text, false).unwrap();
    let copts = calibrate::CaptureOptions::for_model(model.config(), 16);
    let (fit_ids, held_ids) = ids.split_at(ids.len() * 3 / 4);
    let moments = calibrate::capture(&model.gpu, fit_ids, &copts, &mut |_, _| {}).unwrap();
    let held = calibrate::capture_held_out(&model.gpu, held_ids, &copts, 16, &mut |_, _| {}).unwrap();
    let k = (held_ids.len() / 4).max(1);
    let choice = calibrate::choose_width(&moments, &held, shape, k, 1e-3).unwrap();
    let meets = |recalls: &[f64]| recalls.iter().filter(|&&r| r >= calibrate::RECALL_BAR).count() as f64 >= calibrate::LAYER_SHARE * recalls.len() as f64;
    for (d, recalls) in &choice.tried {
        assert_eq!(recalls.len(), model.config().num_layers);
        assert_eq!(meets(recalls), *d == choice.d, "width {d}: recalls {recalls:?}, chosen {}", choice.d);
    }
    assert!(choice.d <= shape.kv_dim());
    if choice.d < shape.kv_dim() {
        assert_eq!(choice.tried.last().unwrap().0, choice.d);
    }
    // Recall computed by hand for the chosen maps agrees with what choose_width recorded.
    if choice.d < shape.kv_dim() {
        let maps = calibrate::fit_all(&moments, choice.d, "closed-form", 1e-3).unwrap();
        let r0 = calibrate::recall_at_k(shape, &maps[0], &held.queries[0], &held.keys[0], held.skip, k);
        assert!((r0 - choice.tried.last().unwrap().1[0]).abs() < 1e-12);
    }

    // Through auto_maps: the choice and the maps are cached under ESA_WGPU_CACHE.
    let cache = tempfile::tempdir().unwrap();
    let opts = calibrate::AutoOptions { max_tokens: 10_000, text: Some((text.clone(), "test text".into())), ..calibrate::AutoOptions::new(0, 16) };
    let got = with_cache(cache.path(), || calibrate::auto_maps(&model, &opts, &mut |_, _| {}).unwrap());
    let width_file = with_cache(cache.path(), || calibrate::cached_width_path(&model.gpu, 16).unwrap());
    let d: usize = std::fs::read_to_string(&width_file).unwrap().trim().parse().unwrap();
    match &got {
        Some(p) => assert_eq!(calibrate::load_maps(p).unwrap().1.d_compressed, d),
        None => assert_eq!(d, shape.kv_dim()),
    }
    let mut again = 0;
    assert_eq!(with_cache(cache.path(), || calibrate::auto_maps(&model, &opts, &mut |_, _| again += 1).unwrap()), got);
    assert_eq!(again, 0, "the cached width and maps must be used");
    // Text too short to hold a window out: a clear error.
    let short = calibrate::AutoOptions { text: Some(("Hello there.".into(), "short".into())), ..calibrate::AutoOptions::new(0, 16) };
    let other = tempfile::tempdir().unwrap();
    let err = with_cache(other.path(), || calibrate::auto_maps(&model, &short, &mut |_, _| {}).unwrap_err());
    assert!(err.to_string().contains("calibration text"), "{err}");
}
