//! Sampling on the GPU (`shaders/sample.wgsl`: greedy, temperature, top-k, top-p, min-p, the
//! repetition penalty) against the host reference (`esa_wgpu::sampler`, which defines each
//! filter): the same token for the same logits and uniform, and over many uniforms the empirical
//! frequencies of each filter's distribution; then `Session` using them, step by step and
//! pipelined. The host filters themselves are unit-tested in `src/sampler.rs`.

mod common;

use common::gpu::{rand_vec, upload};
use common::{tiny_model_dir, TinySpec};
use esa_wgpu::gpu::ops::sampling::{self, SampleIo};
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::sampler;
use esa_wgpu::{Engine, Sampling, SessionOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Uploads `logits` and `hist` and returns a closure that samples `n` times on the GPU (one
/// submission) under `s` with the given uniforms, the penalty's window being all of `hist`.
struct GpuSampler {
    ctx: std::sync::Arc<GpuContext>,
    logits: wgpu::Buffer,
    hist: wgpu::Buffer,
    n_hist: usize,
    scratch: wgpu::Buffer,
    vocab: usize,
}

impl GpuSampler {
    fn new(logits: &[f32], hist: &[u32]) -> GpuSampler {
        let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU context");
        let lb = upload(&ctx, logits);
        let hb = ctx.upload("hist", bytemuck::cast_slice(&[hist, &[0]].concat())).unwrap();
        let scratch = ctx.storage("scratch", sampling::scratch_bytes(logits.len())).unwrap();
        GpuSampler { ctx, logits: lb, hist: hb, n_hist: hist.len(), scratch, vocab: logits.len() }
    }

    /// One draw per uniform, all in one submission (each into its own aligned slot).
    fn draw(&self, s: &Sampling, uniforms: &[f32]) -> Vec<u32> {
        let align = self.ctx.caps.storage_offset_alignment.max(4) as usize;
        let out = self.ctx.upload("tokens", &vec![0xff; uniforms.len() * align]).unwrap();
        let mut rec = Recorder::new(&self.ctx);
        for (i, &u) in uniforms.iter().enumerate() {
            let o = BufRef { buf: out.clone(), offset: (i * align) as u64, size: Some(4) };
            let io = SampleIo {
                logits: &BufRef::from(&self.logits),
                offset: 0,
                vocab: self.vocab,
                hist: &BufRef::from(&self.hist),
                recent: 0..self.n_hist,
                scratch: &BufRef::from(&self.scratch),
                out: &o,
            };
            sampling::sample(&mut rec, &io, s, u).unwrap();
        }
        rec.submit().unwrap();
        let all = self.ctx.read_u32(&out, 0, uniforms.len() * align / 4).unwrap();
        (0..uniforms.len()).map(|i| all[i * align / 4]).collect()
    }
}

/// The host reference distribution of `s` (repetition penalty over `hist`, then the filters).
fn reference(logits: &[f32], hist: &[u32], s: &Sampling) -> Vec<f64> {
    let mut l = logits.to_vec();
    if s.penalises() {
        sampler::apply_repeat_penalty(&mut l, hist, s.repeat_penalty);
    }
    sampler::distribution(&l, s)
}

fn plain(temperature: f32) -> Sampling {
    Sampling { temperature, ..Sampling::greedy() }
}

/// The GPU draws what the host reference draws: same token for the same logits and uniform, for
/// every filter alone and together, except where the uniform falls within rounding of a boundary
/// of the CDF (skipped). Two rows: a peaked one of 517 logits, whose filtered tokens the kernel
/// lists in workgroup memory, and a flat one of 6 000, where they are too many for the list and
/// the filters run over the whole row.
#[test]
fn gpu_sampler_draws_what_the_host_reference_draws() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut peaked = rand_vec(&mut rng, 517, 5.0);
    peaked[40] = 7.5;
    peaked[41] = 7.5; // a tie at the top
    peaked[99] = f32::NAN;
    let flat = rand_vec(&mut rng, 6000, 0.05);
    // ties at the top that one thread meets in one batch of eight loads (301, 301 + 3 * 256) and
    // that two threads meet (45), past the first batch
    let mut tied = rand_vec(&mut rng, 6000, 0.05);
    for i in [301, 301 + 3 * 256, 2093, 45 + 2048] {
        tied[i] = 9.0;
    }
    tied[3000] = f32::NAN;
    let mut checked = 0;
    for logits in [peaked, flat, tied] {
        checked += draws_match(&logits);
    }
    assert!(checked > 1200, "{checked}");
}

/// The checks of `gpu_sampler_draws_what_the_host_reference_draws` on one row; returns how many
/// draws were compared.
fn draws_match(logits: &[f32]) -> usize {
    let vocab = logits.len() as u32;
    let hist: Vec<u32> = vec![40, 7, 7, 300, vocab - 1, 41];
    let g = GpuSampler::new(logits, &hist);
    let settings = [
        plain(0.0),
        plain(1.0),
        Sampling { top_p: 0.9, ..plain(1.0) },
        Sampling { top_p: 0.5, ..plain(0.7) },
        Sampling { top_p: 0.95, ..plain(2.0) },
        Sampling { top_k: 5, ..plain(1.0) },
        Sampling { top_k: 1, ..plain(1.5) },
        Sampling { top_k: 100_000, ..plain(1.0) },
        Sampling { min_p: 0.05, ..plain(1.0) },
        Sampling { min_p: 0.3, top_p: 0.95, ..plain(2.0) },
        Sampling { repeat_penalty: 1.3, ..plain(0.0) },
        Sampling { repeat_penalty: 1.3, ..plain(1.0) },
        Sampling { repeat_penalty: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, ..plain(0.8) },
        Sampling::llama_cpp(),
        Sampling { top_k: 3000, ..plain(1.0) },
        Sampling { top_k: 3000, top_p: 0.95, min_p: 0.9, ..plain(1.0) },
    ];
    let mut checked = 0;
    for s in settings {
        let uniforms: Vec<f32> = (0..60).map(|i| (i as f32 + 0.41) / 60.0).collect();
        let got = g.draw(&s, &uniforms);
        let probs = if s.temperature > 0.0 { reference(logits, &hist, &s) } else { vec![] };
        let mut l = logits.to_vec();
        if s.penalises() {
            sampler::apply_repeat_penalty(&mut l, &hist, s.repeat_penalty);
        }
        for (&u, &tok) in uniforms.iter().zip(&got) {
            if s.temperature > 0.0 {
                let mut acc = 0.0;
                let near = probs.iter().any(|&q| {
                    acc += q;
                    q > 0.0 && (acc - u as f64).abs() < 1e-4
                });
                if near {
                    continue;
                }
            }
            assert_eq!(tok, sampler::sample(&l, &[], &Sampling { repeat_penalty: 1.0, ..s }, u), "{s:?}, u {u}, vocabulary {vocab}");
            checked += 1;
        }
    }
    checked
}

/// Each filter on the GPU, over 2 000 uniforms: the empirical frequencies of a small fixed logit
/// vector match the host reference distribution within four standard errors (plus 0.002), and a
/// token the filter removes is never drawn.
#[test]
fn gpu_sampler_frequencies_match_the_reference() {
    let logits = [2.0f32, 1.5, 1.4, 0.3, -0.5, 1.9, 0.0, -2.0, 1.0, 0.8, f32::NAN, 0.5];
    let hist = [0u32, 5, 5, 11];
    let g = GpuSampler::new(&logits, &hist);
    let mut rng = StdRng::seed_from_u64(5);
    let n = 2000;
    let settings = [
        ("temperature", plain(1.0)),
        ("top-k 3", Sampling { top_k: 3, ..plain(1.0) }),
        ("top-p 0.8", Sampling { top_p: 0.8, ..plain(1.0) }),
        ("min-p 0.3", Sampling { min_p: 0.3, ..plain(1.0) }),
        ("repetition penalty 1.8", Sampling { repeat_penalty: 1.8, ..plain(1.0) }),
        ("all four", Sampling { top_k: 6, top_p: 0.9, min_p: 0.1, repeat_penalty: 1.5, ..plain(0.8) }),
    ];
    for (what, s) in settings {
        let uniforms: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let got = g.draw(&s, &uniforms);
        let want = reference(&logits, &hist, &s);
        let mut count = vec![0usize; logits.len()];
        for t in got {
            count[t as usize] += 1;
        }
        for (i, (&c, &p)) in count.iter().zip(&want).enumerate() {
            let f = c as f64 / n as f64;
            if p == 0.0 {
                assert_eq!(c, 0, "{what}: token {i} is filtered out but was drawn {c} times");
                continue;
            }
            let tol = 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 0.002;
            assert!((f - p).abs() <= tol, "{what}: token {i} drawn with frequency {f:.4}, reference {p:.4} (tolerance {tol:.4})");
        }
    }
}

/// Greedy sampling without a penalty (`argmax.wgsl`, spread over workgroups of 2 048 logits) on
/// rows of odd lengths up to Llama-3's vocabulary: the argmax with the lowest index on ties
/// (within a workgroup, across workgroups, in the last part-filled one), NaN skipped, all NaN
/// giving 0; many draws in one submission, so the kernel's counter must come back to zero each time.
#[test]
fn greedy_argmax_across_workgroups() {
    let mut rng = StdRng::seed_from_u64(12);
    for vocab in [1usize, 2047, 2049, 49_152, 128_257] {
        let mut logits = rand_vec(&mut rng, vocab, 3.0);
        for i in (0..vocab).step_by(997) {
            logits[i] = f32::NAN;
        }
        let mut cases = vec![logits.clone()];
        if vocab > 4096 {
            // ties: across workgroups (the lower index wins), then the top in the last workgroup
            let mut tied = logits.clone();
            for i in [vocab - 5, 2048 * 3 + 17, 2048 + 255, 4095] {
                tied[i] = 50.0;
            }
            cases.push(tied);
            let mut end = logits.clone();
            end[vocab - 1] = 60.0;
            cases.push(end);
        }
        cases.push(vec![f32::NAN; vocab]);
        for row in cases {
            let want = row.iter().enumerate().filter(|(_, v)| !v.is_nan()).fold(None, |b: Option<(usize, f32)>, (i, &v)| match b {
                Some((_, bv)) if bv >= v => b,
                _ => Some((i, v)),
            });
            let want = want.map_or(0, |(i, _)| i as u32);
            let g = GpuSampler::new(&row, &[]);
            let got = g.draw(&Sampling::greedy(), &[0.5; 5]);
            assert_eq!(got, vec![want; 5], "vocab {vocab}");
        }
    }
}

/// Buffers too small for the row, the penalty's window or the scratch are refused with an error
/// naming the buffer, before anything is recorded.
#[test]
fn gpu_sampler_refuses_undersized_buffers() {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU context");
    let logits = upload(&ctx, &[0.5f32; 100]);
    let hist = ctx.upload("hist", bytemuck::cast_slice(&[1u32, 2, 3])).unwrap();
    let small = ctx.storage("small scratch", sampling::scratch_bytes(100) - 4).unwrap();
    let scratch = ctx.storage("scratch", sampling::scratch_bytes(100)).unwrap();
    let out = ctx.storage("out", 4).unwrap();
    let pen = Sampling { repeat_penalty: 1.3, ..plain(1.0) };
    let try_sample = |vocab: usize, recent: std::ops::Range<usize>, scr: &wgpu::Buffer| {
        let mut rec = Recorder::new(&ctx);
        let io = SampleIo { logits: &BufRef::from(&logits), offset: 0, vocab, hist: &BufRef::from(&hist), recent, scratch: &BufRef::from(scr), out: &BufRef::from(&out) };
        sampling::sample(&mut rec, &io, &pen, 0.5).map_err(|e| e.to_string())
    };
    assert!(try_sample(100, 0..3, &scratch).is_ok());
    assert!(try_sample(101, 0..3, &scratch).unwrap_err().contains("sample.logits"));
    assert!(try_sample(100, 0..4, &scratch).unwrap_err().contains("sample.hist"));
    assert!(try_sample(100, 0..3, &small).unwrap_err().contains("sample.scratch"));
}

/// `Session` with the filters: top-k 1 is greedy at any temperature, a top-k past the vocabulary
/// changes nothing, a strong penalty over the whole context never repeats a token, pipelined
/// `generate` gives the tokens of step-by-step `step` under every filter (the penalty's window is
/// kept on the GPU), and invalid settings are refused.
#[test]
fn session_samples_with_every_filter() {
    let spec = TinySpec::llama_gqa_f16();
    let dir = tiny_model_dir(&spec);
    let model = Engine::with_context(GpuContext::new(&GpuOptions::default()).unwrap()).load(dir.path()).unwrap();
    let prompt: Vec<u32> = (0..11u32).map(|i| (i * 7919 + 3) % spec.vocab as u32).collect();
    let opts = || SessionOptions { max_context: 64, ..Default::default() };
    let run = |s: &Sampling, n: usize| -> Vec<u32> {
        let mut session = model.session(opts()).unwrap();
        let mut out = vec![session.step(&prompt, s).unwrap()];
        while out.len() < n {
            let t = *out.last().unwrap();
            out.push(session.step(&[t], s).unwrap());
        }
        out
    };
    let pipelined = |s: &Sampling, n: usize| -> Vec<u32> {
        let mut session = model.session(opts()).unwrap();
        let mut out = Vec::new();
        session.generate(&prompt, s, n, |t| {
            out.push(t);
            Ok(true)
        }).unwrap();
        out
    };
    let greedy = run(&Sampling::greedy(), 8);
    let k1 = Sampling { temperature: 1.5, top_k: 1, ..Sampling::greedy() };
    assert_eq!(run(&k1, 8), greedy);
    let plain = Sampling { temperature: 1.0, top_p: 0.9, seed: 5, ..Sampling::greedy() };
    assert_eq!(run(&Sampling { top_k: 100_000, ..plain }, 8), run(&plain, 8));
    let pen = Sampling { repeat_penalty: 1e4, repeat_last_n: usize::MAX, ..Sampling::greedy() };
    let got = run(&pen, 8);
    let mut seen = prompt.clone();
    for t in &got {
        assert!(!seen.contains(t), "{t} repeated in {got:?} after {prompt:?}");
        seen.push(*t);
    }
    assert_eq!(pipelined(&pen, 8), got);
    for s in [Sampling::llama_cpp(), Sampling { repeat_penalty: 1.5, repeat_last_n: 6, top_k: 20, ..plain }, Sampling { min_p: 0.2, ..plain }] {
        assert_eq!(pipelined(&s, 12), run(&s, 12), "{s:?}");
    }
    let mut s = model.session(opts()).unwrap();
    for bad in [Sampling { top_p: 1.5, ..plain }, Sampling { min_p: -0.1, ..plain }, Sampling { repeat_penalty: 0.0, ..plain }] {
        assert!(s.step(&prompt, &bad).is_err(), "{bad:?}");
    }
}
