//! Absurd session sizes from the user (`--max-context`, `--esa-top-k`) give an error or a working
//! session, never an arithmetic-overflow panic while sizing the GPU buffers.

mod common;

use common::{tiny_model_dir, TinySpec};
use esa_wgpu::attention::{Attention, EsaConfig, EsaOptions};
use esa_wgpu::gpu::{GpuContext, GpuOptions};
use esa_wgpu::{Engine, Sampling, SessionOptions};

#[test]
fn huge_max_context_is_an_error_not_a_panic() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let model = Engine::with_context(GpuContext::new(&GpuOptions::default()).unwrap()).load(dir.path()).unwrap();
    for max_context in [usize::MAX, usize::MAX / 2, 1 << 62] {
        for attention in [Attention::Dense, Attention::esa()] {
            let err = model.session(SessionOptions { max_context, attention, ..Default::default() }).err().expect("cannot fit");
            assert!(err.to_string().contains("max_context"), "{err}");
        }
    }
}

#[test]
fn huge_esa_top_k_selects_every_middle_token() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let model = Engine::with_context(GpuContext::new(&GpuOptions::default()).unwrap()).load(dir.path()).unwrap();
    let config = EsaConfig { n_init: 4, n_local: 16, top_k: usize::MAX, chunk: 8, eps: usize::MAX, d_compressed: 24, w: None, final_chunk: 0, decode_key_bits: 8, select_block: 0 };
    let opts = SessionOptions { max_context: 64, attention: Attention::Esa(EsaOptions { config, maps: None }), ..Default::default() };
    let mut s = model.session(opts).unwrap();
    // 40 tokens in chunks of 8: the last chunk (at 32) has middle 4..16, all of it selected.
    let prompt: Vec<u32> = (0..40u32).map(|i| (i * 7919 + 3) % 301).collect();
    let next = s.step(&prompt, &Sampling::greedy()).unwrap();
    assert!((next as usize) < 301);
    let sel = s.esa().unwrap().read_selected(model.gpu.ctx.as_ref()).unwrap();
    assert_eq!(sel, (4..16u32).collect::<Vec<_>>());
}
