//! Test fixtures: tiny random-weight models written as real Hugging Face folders (config.json,
//! safetensors, tokenizer.json, tokenizer_config.json), so tests exercise the same loading path as
//! real models. Sizes are deliberately odd: nothing is a multiple of a workgroup.
#![allow(dead_code)]

pub mod gpu;

use std::collections::HashMap;
use std::path::Path;

use esa_wgpu::model::config::{Arch, Config, RopeScaling};
use esa_wgpu::model::host::TensorFormat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Special tokens of the fixture tokenizer (SmolLM-style ids).
pub const ENDOFTEXT_ID: u32 = 0;
pub const IM_START_ID: u32 = 1;
pub const IM_END_ID: u32 = 2;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Specials + one token per byte: the smallest vocabulary the fixture tokenizer supports.
pub const MIN_VOCAB: usize = 3 + 256;

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Debug, Clone)]
pub struct TinySpec {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    /// At least `MIN_VOCAB`.
    pub vocab: usize,
    /// F32, F16 or BF16.
    pub dtype: TensorFormat,
    pub tied: bool,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    /// Two safetensors shards plus `model.safetensors.index.json` instead of one file.
    pub sharded: bool,
    pub seed: u64,
}

impl TinySpec {
    /// GQA (6 query heads over 2 KV heads), f16, separate lm_head.
    pub fn llama_gqa_f16() -> TinySpec {
        TinySpec {
            arch: Arch::Llama,
            hidden: 72,
            layers: 3,
            heads: 6,
            kv_heads: 2,
            head_dim: 12,
            intermediate: 100,
            vocab: 301,
            dtype: TensorFormat::F16,
            tied: false,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-5,
            sharded: false,
            seed: 1,
        }
    }

    /// Multi-query attention (4 heads, 1 KV head), bf16, lm_head tied to the embedding.
    pub fn llama_tied_bf16() -> TinySpec {
        TinySpec {
            hidden: 56,
            layers: 2,
            heads: 4,
            kv_heads: 1,
            head_dim: 14,
            intermediate: 90,
            vocab: 293,
            dtype: TensorFormat::BF16,
            tied: true,
            seed: 2,
            ..TinySpec::llama_gqa_f16()
        }
    }

    /// Mistral naming, head_dim * heads != hidden (explicit `head_dim`), Llama-3 RoPE scaling whose
    /// frequencies fall in all three bands (kept, smoothed, divided by factor), f32 weights.
    pub fn mistral_llama3_rope() -> TinySpec {
        TinySpec {
            arch: Arch::Mistral,
            hidden: 80,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 24,
            intermediate: 136,
            vocab: 307,
            dtype: TensorFormat::F32,
            tied: false,
            rope_theta: 500000.0,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            max_position_embeddings: 512,
            rms_norm_eps: 1e-5,
            sharded: false,
            seed: 3,
        }
    }

    /// The `Config` the loader must produce for this spec.
    pub fn config(&self) -> Config {
        Config {
            arch: self.arch,
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling.clone(),
            tie_word_embeddings: self.tied,
            max_position_embeddings: self.max_position_embeddings,
            bos_token_id: Some(IM_START_ID),
            eos_token_ids: vec![IM_END_ID],
        }
    }

    /// HF tensor names and shapes in a fixed order (the order weights are drawn from the RNG).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, q, kv, i) = (self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        t
    }

    /// The random weights (already rounded to `dtype`), by name, in `tensor_shapes` order.
    pub fn weights(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                // Norm gains near 1; embeddings larger than projections so the residual stream is
                // dominated by neither; all small enough that softmaxes are far from one-hot.
                let (mean, std) = if name.ends_with("norm.weight") {
                    (1.0, 0.1)
                } else if name == "model.embed_tokens.weight" {
                    (0.0, 0.3)
                } else {
                    (0.0, 0.1)
                };
                let w = (0..n).map(|_| round_to(self.dtype, mean + std * normal(&mut rng))).collect();
                (name, shape, w)
            })
            .collect()
    }
}

/// Standard normal sample (Box-Muller), deterministic given the RNG.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn round_to(dtype: TensorFormat, v: f32) -> f32 {
    match dtype {
        TensorFormat::F32 => v,
        TensorFormat::F16 => half::f16::from_f32(v).to_f32(),
        TensorFormat::BF16 => half::bf16::from_f32(v).to_f32(),
        other => panic!("tiny models are written as F32/F16/BF16, not {other:?}"),
    }
}

fn encode(dtype: TensorFormat, values: &[f32]) -> (safetensors::Dtype, Vec<u8>) {
    match dtype {
        TensorFormat::F32 => (safetensors::Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        TensorFormat::F16 => {
            (safetensors::Dtype::F16, values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect())
        }
        TensorFormat::BF16 => {
            (safetensors::Dtype::BF16, values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect())
        }
        other => panic!("tiny models are written as F32/F16/BF16, not {other:?}"),
    }
}

/// Write a safetensors file from (name, dtype, shape, bytes).
pub fn write_safetensors(path: &Path, tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Write `config.json`, the weights, `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config_json(spec)).unwrap()).unwrap();

    let tensors: Vec<_> = spec
        .weights()
        .into_iter()
        .map(|(name, shape, w)| {
            let (dtype, bytes) = encode(spec.dtype, &w);
            (name, dtype, shape, bytes)
        })
        .collect();
    if spec.sharded {
        let files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        let (first, second) = tensors.split_at(tensors.len() / 2);
        let mut weight_map = serde_json::Map::new();
        for (file, part) in files.iter().zip([first, second]) {
            write_safetensors(&dir.join(file), part);
            for t in part {
                weight_map.insert(t.0.clone(), json!(file));
            }
        }
        let total: usize = tensors.iter().map(|t| t.3.len()).sum();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap())
            .unwrap();
    } else {
        write_safetensors(&dir.join("model.safetensors"), &tensors);
    }

    write_tokenizer(dir, spec.vocab);
    let tok_cfg = json!({
        "add_bos_token": false,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": spec.max_position_embeddings,
        "chat_template": CHATML_TEMPLATE,
    });
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tok_cfg).unwrap()).unwrap();
}

/// A fresh temporary folder holding the model of `spec`.
pub fn tiny_model_dir(spec: &TinySpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), spec);
    dir
}

pub fn config_json(spec: &TinySpec) -> serde_json::Value {
    let (arch, model_type) = match spec.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
    };
    let rope_scaling = match &spec.rope_scaling {
        None => serde_json::Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({ "type": "linear", "factor": factor }),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            })
        }
        Some(RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor }) => json!({
            "type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "attention_factor": attention_factor,
        }),
        Some(RopeScaling::Factors(_)) => panic!("config.json has no per-frequency RoPE factors (a GGUF-only form)"),
    };
    let mut c = json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": spec.tied,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_act": "silu",
        "bos_token_id": IM_START_ID,
        "eos_token_id": IM_END_ID,
        "torch_dtype": match spec.dtype { TensorFormat::F16 => "float16", TensorFormat::BF16 => "bfloat16", _ => "float32" },
    });
    if spec.arch == Arch::Mistral {
        c["sliding_window"] = serde_json::Value::Null;
    }
    c
}

/// GPT-2's byte -> printable char table used by byte-level BPE.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer with exactly `vocab` tokens: 3 specials, 256 byte tokens, then merges
/// of frequent English letters (and the space marker) until the vocabulary is full.
pub fn write_tokenizer(dir: &Path, vocab: usize) {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    assert!(vocab >= MIN_VOCAB, "fixture tokenizer needs a vocabulary of at least {MIN_VOCAB}");
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_chars().into_iter().map(String::from));
    let symbols: Vec<String> = "Ġetaoinshrdlu".chars().map(String::from).collect();
    let mut merges = vec![];
    'outer: for a in &symbols {
        for b in &symbols {
            if tokens.len() == vocab {
                break 'outer;
            }
            let merged = format!("{a}{b}");
            if b != "Ġ" && !tokens.contains(&merged) {
                merges.push((a.clone(), b.clone()));
                tokens.push(merged);
            }
        }
    }
    assert_eq!(tokens.len(), vocab, "not enough merge candidates for a vocabulary of {vocab}");
    let map: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let vocab_map: Vocab = map.into_iter().collect();
    let bpe = BPE::builder().vocab_and_merges(vocab_map, merges).build().unwrap();
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens(&SPECIALS.map(|s| AddedToken::from(s, true)));
    tok.save(dir.join("tokenizer.json"), true).unwrap();
}
