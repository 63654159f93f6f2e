//! Pipelined decode (`Session::generate`: the sampled token stays on the GPU, steps run ahead of
//! the host's read-back through a ring of buffers) against the synchronous path (`Session::step`
//! one token at a time): the same ids, the same context afterwards, and a stop in the middle
//! of a run discards the steps already submitted past it. Dense and ESA attention; greedy and
//! GPU temperature sampling; an f32 checkpoint (its embedding table stays f32 on the GPU).

mod common;

use std::sync::{Arc, OnceLock};

use common::{tiny_model_dir, TinySpec};
use esa_wgpu::attention::{Attention, EsaConfig, EsaOptions};
use esa_wgpu::gpu::{GpuContext, GpuOptions};
use esa_wgpu::model::host::TensorFormat;
use esa_wgpu::session::Session;
use esa_wgpu::{Engine, Sampling, SessionOptions};

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| GpuContext::new(&GpuOptions { max_binding: Some(16384), ..Default::default() }).expect("GPU context")).clone()
}

fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919 + 5) % vocab as u32).collect()
}

/// `n` tokens one `step` at a time: the reference sequence.
fn stepwise(session: &mut Session, prompt: &[u32], s: &Sampling, n: usize) -> Vec<u32> {
    let mut out = vec![session.step(prompt, s).unwrap()];
    while out.len() < n {
        out.push(session.step(&[*out.last().unwrap()], s).unwrap());
    }
    out
}

#[test]
fn generate_matches_stepwise_and_stops_mid_run() {
    let specs = [TinySpec::llama_gqa_f16(), TinySpec { dtype: TensorFormat::F32, tied: true, ..TinySpec::llama_gqa_f16() }];
    for spec in specs {
        let dir = tiny_model_dir(&spec);
        let model = Engine::with_context(ctx()).load(dir.path()).unwrap();
        let c = model.config().clone();
        let esa = EsaConfig { n_init: 4, n_local: 16, top_k: 8, chunk: 8, eps: 1, d_compressed: c.kv_dim(), w: None, final_chunk: 4, decode_key_bits: 8, select_block: 0 };
        for attention in [Attention::Dense, Attention::Esa(EsaOptions { config: esa, maps: None })] {
            for sampling in [Sampling::greedy(), Sampling { temperature: 0.9, top_p: 0.95, seed: 3, ..Sampling::greedy() }] {
                let what = format!("{:?} {:?} {} t={}", spec.arch, spec.dtype, if matches!(attention, Attention::Dense) { "dense" } else { "esa" }, sampling.temperature);
                let opts = SessionOptions { max_context: 96, attention: attention.clone(), ..Default::default() };
                let p = prompt(41, c.vocab_size);
                let mut sync = model.session(opts.clone()).unwrap();
                let want = stepwise(&mut sync, &p, &sampling, 20);

                // The whole run.
                let mut s = model.session(opts.clone()).unwrap();
                let mut got = Vec::new();
                assert_eq!(s.generate(&p, &sampling, 20, |t| { got.push(t); Ok(true) }).unwrap(), 20, "{what}");
                assert_eq!(got, want, "{what}: pipelined ids");
                assert_eq!(s.position(), p.len() + 19, "{what}: the last id is not fed");

                // Stop at the 7th id, as at a stop token: the context ends as if stepped, and the
                // run continues from there exactly like the synchronous one.
                let mut s = model.session(opts.clone()).unwrap();
                let mut got = Vec::new();
                let n = s.generate(&p, &sampling, 20, |t| { got.push(t); Ok(got.len() < 7) }).unwrap();
                assert_eq!((n, &got[..]), (7, &want[..7]), "{what}: stopped run");
                assert_eq!(s.position(), p.len() + 6, "{what}: position after the stop");
                let mut rest = Vec::new();
                s.generate(&[got[6]], &sampling, 13, |t| { rest.push(t); Ok(true) }).unwrap();
                assert_eq!(rest, want[7..], "{what}: continuing after the stop");
            }
        }
    }
}

/// Generation stops at a full context: the ids seen up to the last position that fits.
#[test]
fn generate_stops_at_full_context() {
    let spec = TinySpec::llama_gqa_f16();
    let dir = tiny_model_dir(&spec);
    let model = Engine::with_context(ctx()).load(dir.path()).unwrap();
    let mut s = model.session(SessionOptions { max_context: 30, ..Default::default() }).unwrap();
    let p = prompt(25, model.config().vocab_size);
    let mut seen = 0;
    let n = s.generate(&p, &Sampling::greedy(), 100, |_| { seen += 1; Ok(true) }).unwrap();
    // the prompt fills 25 positions; steps feed 5 more; the last id is sampled but not fed
    assert_eq!((n, seen, s.position()), (6, 6, 30));
}
