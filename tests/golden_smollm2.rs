//! SmolLM2-135M-Instruct (Q4_1 GGUF) against an independent implementation: Hugging Face
//! transformers on the CPU in f32 from the same dequantized weights
//! (tests/fixtures/smollm2_golden.json, made by scripts/make_golden.py).
//!
//! Checked here: the prompts' token ids exactly (GGUF tokenizer) and the ChatML prompt rendered by
//! the GGUF chat template exactly; and, with the crate's CPU reference forward pass
//! (`reference::forward`):
//! - dequantized weight samples (catches a wrong Q/K row un-permutation or block decode), 1e-5;
//! - the top-20 logits at the last prompt position and at a few greedy decode steps, within
//!   `LOGIT_TOL` absolute;
//! - greedy decoding of 32 tokens token-for-token, except that once the reference's top1-top2
//!   margin at a step is below `2 * LOGIT_TOL` a different choice there is accepted and the
//!   comparison of that prompt stops (the two runs have then legitimately diverged).
//!
//! The GPU engine runs the same checks on a shorter plan, since on a software adapter (CI's
//! lavapipe) every decode step of the real model takes about a second: the short prompts (plain,
//! code: at most `SHORT_PROMPT` tokens) through decode step 16 (top-20 at steps 0, 1, 4, 16), the
//! long ones (chat, unicode) for their prompt logits (step 0: the prefill path) only. The CPU
//! reference keeps the whole fixture (all prompts, 32 steps), so the fixture's later steps still
//! check the model definition both sides share.
//!
//! The model is found in the cache (`ESA_WGPU_CACHE`, see `esa_wgpu::fetch`); the test skips with a
//! note when it is absent, unless `ESA_REQUIRE_MODEL=1`, which downloads it if needed and fails if
//! that is impossible.

use esa_wgpu::model::gguf::GgufModel;
use esa_wgpu::model::host::WeightSource;
use esa_wgpu::reference::forward::Model;
use serde_json::Value;

/// Both sides compute in f32 from identical dequantized weights; they differ only in summation
/// order and in f64 vs f32 accumulation. Logits of this model span about -10..30.
const LOGIT_TOL: f32 = 1e-2;

fn model_path() -> Option<std::path::PathBuf> {
    if std::env::var("ESA_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        return Some(esa_wgpu::fetch::default_model_path().expect("ESA_REQUIRE_MODEL=1 but the model is unavailable"));
    }
    match esa_wgpu::fetch::cached_default_model() {
        Ok(Some(p)) => Some(p),
        _ => {
            eprintln!(
                "skipped: {} not in the model cache (set ESA_WGPU_CACHE to its folder, or ESA_REQUIRE_MODEL=1 to fetch it)",
                esa_wgpu::fetch::DEFAULT_MODEL_FILE
            );
            None
        }
    }
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/smollm2_golden.json")).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tokenization_and_chat_template_match_transformers() {
    let Some(path) = model_path() else { return };
    let m = GgufModel::open(&path).unwrap();
    let tok = esa_wgpu::tokenizer::Tokenizer::from_gguf(&m.tokenizer_spec().unwrap()).unwrap();
    let fx = fixture();
    for p in fx["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&p["ids"]), "token ids of {text:?}");
        assert_eq!(tok.decode_with_special(&ids(&p["ids"])), text, "decoding {text:?}");
    }
    let messages: Vec<esa_wgpu::chat_template::Message> = fx["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| esa_wgpu::chat_template::Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let chat = fx["prompts"].as_array().unwrap().iter().find(|p| p["label"] == "chat").unwrap();
    assert_eq!(tok.chat_template().unwrap().render(&messages, true).unwrap(), chat["text"].as_str().unwrap());
}

#[test]
fn weights_match_transformers_dequantization() {
    let Some(path) = model_path() else { return };
    let m = GgufModel::open(&path).unwrap();
    for (name, w) in fixture()["weights"].as_object().unwrap() {
        let t = m.tensor(name).unwrap();
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{name}");
        let (_, cols) = t.rows_cols();
        let row_bytes = t.format.row_bytes(cols).unwrap();
        let rows: Vec<usize> = match w.get("rows") {
            Some(r) => r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect(),
            None => vec![0],
        };
        let want: Vec<Vec<f32>> = match w.get("rows") {
            Some(_) => w["values"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect(),
            None => vec![w["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()],
        };
        for (r, want) in rows.iter().zip(want) {
            let got = esa_wgpu::quant::dequantize(name, t.format, &t.data[r * row_bytes..(r + 1) * row_bytes], cols).unwrap();
            for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5, "{name}[{r}][{c}]: ours {g}, transformers {w}");
            }
        }
    }
}

/// Prompts of at most this many tokens are the GPU check's "short" prompts.
const SHORT_PROMPT: usize = 8;

/// How many steps of a prompt to check (step 0 = the logits after the prompt), from the prompt's
/// length and the fixture's `gen_tokens`.
type Plan = fn(usize, usize) -> usize;

/// Every step of every prompt.
fn whole_fixture(_prompt_len: usize, gen_tokens: usize) -> usize {
    gen_tokens
}

/// Short prompts through decode step 16, long prompts for their prompt logits only.
fn short_plan(prompt_len: usize, gen_tokens: usize) -> usize {
    if prompt_len <= SHORT_PROMPT { gen_tokens.min(17) } else { 1 }
}

/// Greedy decoding of the fixture prompts: `start(prompt, steps)` begins a fresh sequence and
/// returns the last position's logits, `next(token)` appends one token and returns its logits.
/// Checks the recorded top-20 logits within `tol` and the greedy tokens under the margin rule, for
/// the steps `plan` gives each prompt; returns the largest logit difference.
fn check_against_fixture(who: &str, tol: f32, plan: Plan, mut start: impl FnMut(&[u32], usize) -> Vec<f32>, mut next: impl FnMut(u32) -> Vec<f32>) -> f32 {
    let fx = fixture();
    let gen_tokens = fx["gen_tokens"].as_u64().unwrap() as usize;
    let mut worst = 0f32;
    for p in fx["prompts"].as_array().unwrap() {
        let label = p["label"].as_str().unwrap();
        let prompt = ids(&p["ids"]);
        let want_gen = ids(&p["generated"]);
        let margins: Vec<f32> = p["margins"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let steps = plan(prompt.len(), gen_tokens);
        let mut logits = start(&prompt, steps);
        for step in 0..steps {
            if let Some(top) = p["topk"].get(step.to_string()) {
                for pair in top.as_array().unwrap() {
                    let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
                    let d = (logits[id] - want).abs();
                    worst = worst.max(d);
                    assert!(d <= tol, "{who}: {label} step {step}: logit of token {id}: ours {}, transformers {want}", logits[id]);
                }
            }
            let ours = argmax(&logits);
            if ours != want_gen[step] {
                assert!(
                    margins[step] < 2.0 * tol,
                    "{who}: {label} step {step}: ours {ours}, transformers {} with margin {}",
                    want_gen[step],
                    margins[step]
                );
                eprintln!("{who}: {label}: diverged at step {step} where the reference margin is only {}", margins[step]);
                break;
            }
            if step + 1 < steps {
                logits = next(ours);
            }
        }
    }
    eprintln!("{who}: largest top-20 logit difference: {worst}");
    worst
}

#[test]
fn reference_forward_matches_transformers() {
    let Some(path) = model_path() else { return };
    let src = GgufModel::open(&path).unwrap();
    let model = Model::load(&src).unwrap();
    let cache = std::cell::RefCell::new(model.new_cache(1));
    check_against_fixture(
        "cpu reference",
        LOGIT_TOL,
        whole_fixture,
        |prompt, gen| {
            *cache.borrow_mut() = model.new_cache(prompt.len() + gen + 1);
            model.forward(&mut cache.borrow_mut(), prompt).unwrap().pop().unwrap()
        },
        |tok| model.forward(&mut cache.borrow_mut(), &[tok]).unwrap().pop().unwrap(),
    );
}

/// The GPU engine (Q4_1 and Q8_0 kernels, f16 KV cache) against the same fixture, on the short
/// plan (`short_plan`: prefill of every prompt, 16 decode steps of the short ones). Tolerance is
/// wider than the CPU reference's: the KV cache is f16 and sums run in another order;
/// `GPU_LOGIT_TOL` absolute on the top-20 logits, greedy tokens equal while the reference's
/// margin is at least `2 * GPU_LOGIT_TOL`.
#[test]
fn gpu_engine_matches_transformers() {
    gpu_engine_matches_transformers_with(&Default::default());
}

/// The same through the GPUs' kernels on any adapter (`no_cpu_kernels`: lavapipe in CI runs
/// `matvec_blocks`, the fused `attention_gqa` decode step and `argmax` on the real model).
#[test]
fn gpu_kernels_match_transformers() {
    gpu_engine_matches_transformers_with(&esa_wgpu::gpu::GpuOptions { no_cpu_kernels: true, ..Default::default() });
}

fn gpu_engine_matches_transformers_with(opts: &esa_wgpu::gpu::GpuOptions) {
    const GPU_LOGIT_TOL: f32 = 0.15;
    let Some(path) = model_path() else { return };
    let engine = esa_wgpu::Engine::new(opts).unwrap();
    let model = engine.load(&path).unwrap();
    let session = std::cell::RefCell::new(None::<esa_wgpu::Session>);
    check_against_fixture(
        "gpu",
        GPU_LOGIT_TOL,
        short_plan,
        |prompt, gen| {
            let mut s = model.session(esa_wgpu::SessionOptions { max_context: prompt.len() + gen + 1, ..Default::default() }).unwrap();
            s.feed(prompt).unwrap();
            let l = s.logits().unwrap();
            *session.borrow_mut() = Some(s);
            l
        },
        |tok| {
            let mut guard = session.borrow_mut();
            let s = guard.as_mut().unwrap();
            s.feed(&[tok]).unwrap();
            s.logits().unwrap()
        },
    );
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

