//! Sampling across its two paths: the GPU kernel (greedy, temperature + top-p) against the host
//! sampler (`esa_wgpu::sampler`, which also does top-k, min-p and the repetition penalty) on the
//! same logits and uniforms, and `Session::step` choosing between them on a tiny model. The
//! filters themselves are unit-tested in `src/sampler.rs`.

mod common;

use common::gpu::{rand_vec, upload};
use common::{tiny_model_dir, TinySpec};
use esa_wgpu::gpu::ops::sampling;
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::sampler;
use esa_wgpu::{Engine, Sampling, SessionOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The host path draws what the GPU kernel draws: same token for the same logits and uniform,
/// except where the uniform falls within rounding of a boundary of the CDF (skipped).
#[test]
fn gpu_kernel_and_host_sampler_agree() {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU context");
    let mut rng = StdRng::seed_from_u64(11);
    let vocab = 517;
    let mut logits = rand_vec(&mut rng, vocab, 5.0);
    logits[40] = 7.5;
    logits[41] = 7.5; // a tie at the top
    logits[99] = f32::NAN;
    let lb = upload(&ctx, &logits);
    let out = ctx.upload("tok", &[0xff; 4]).unwrap();
    let gpu = |t: f32, p: f32, u: f32| {
        let mut rec = Recorder::new(&ctx);
        sampling::sample(&mut rec, &BufRef::from(&lb), 0, vocab, t, p, u, &BufRef::from(&out)).unwrap();
        rec.submit().unwrap();
        ctx.read_u32(&out, 0, 1).unwrap()[0]
    };
    let mut checked = 0;
    for (t, p) in [(0.0, 1.0), (1.0, 1.0), (1.0, 0.9), (0.7, 0.5), (2.0, 0.95)] {
        let s = Sampling { temperature: t, top_p: p, ..Sampling::greedy() };
        assert!(!s.needs_host());
        let probs = if t > 0.0 { sampler::distribution(&logits, &s) } else { vec![] };
        for i in 0..60 {
            let u = (i as f32 + 0.41) / 60.0;
            if t > 0.0 {
                let goal = u as f64;
                let mut acc = 0.0;
                let near = probs.iter().any(|&q| {
                    acc += q;
                    q > 0.0 && (acc - goal).abs() < 1e-4
                });
                if near {
                    continue;
                }
            }
            assert_eq!(gpu(t, p, u), sampler::sample(&logits, &[], &s, u), "temperature {t}, top-p {p}, u {u}");
            checked += 1;
        }
    }
    assert!(checked > 250, "{checked}");
}

#[test]
fn session_uses_host_filters() {
    let spec = TinySpec::llama_gqa_f16();
    let dir = tiny_model_dir(&spec);
    let model = Engine::with_context(GpuContext::new(&GpuOptions::default()).unwrap()).load(dir.path()).unwrap();
    let prompt: Vec<u32> = (0..11u32).map(|i| (i * 7919 + 3) % spec.vocab as u32).collect();
    let run = |s: &Sampling, n: usize| -> Vec<u32> {
        let mut session = model.session(SessionOptions { max_context: 64, ..Default::default() }).unwrap();
        let mut out = vec![session.step(&prompt, s).unwrap()];
        while out.len() < n {
            let t = *out.last().unwrap();
            out.push(session.step(&[t], s).unwrap());
        }
        out
    };
    let greedy = run(&Sampling::greedy(), 8);
    // top-k 1 (host) is greedy whatever the temperature.
    let k1 = Sampling { temperature: 1.5, top_k: 1, ..Sampling::greedy() };
    assert!(k1.needs_host());
    assert_eq!(run(&k1, 8), greedy);
    // A top-k past the vocabulary filters nothing: the host path then draws the GPU path's tokens
    // (same seed, same uniforms).
    let plain = Sampling { temperature: 1.0, top_p: 0.9, seed: 5, ..Sampling::greedy() };
    let host = Sampling { top_k: 100_000, ..plain };
    assert!(!plain.needs_host() && host.needs_host());
    assert_eq!(run(&host, 8), run(&plain, 8));
    // A strong repetition penalty over the whole context: greedy never picks a token already in it
    // while some token not in it has a positive logit.
    let pen = Sampling { repeat_penalty: 1e4, repeat_last_n: usize::MAX, ..Sampling::greedy() };
    let got = run(&pen, 8);
    let mut seen = prompt.clone();
    for t in &got {
        assert!(!seen.contains(t), "{t} repeated in {got:?} after {prompt:?}");
        seen.push(*t);
    }
    // Invalid settings are refused.
    let mut s = model.session(SessionOptions { max_context: 64, ..Default::default() }).unwrap();
    for bad in [Sampling { top_p: 1.5, ..plain }, Sampling { min_p: -0.1, ..plain }, Sampling { repeat_penalty: 0.0, ..plain }] {
        assert!(s.step(&prompt, &bad).is_err(), "{bad:?}");
    }
}
