//! Random-weight models of real shapes (Llama-3-8B, SmolLM2-135M, ...) generated in memory, for
//! benchmarks on machines that cannot download a checkpoint. Tensors are made on request from a
//! hash of their name, so nothing is stored twice.

use std::path::{Path, PathBuf};

use crate::model::config::{Arch, Config};
use crate::model::host::{HostTensor, TensorFormat, WeightSource};
use crate::{Error, Result};

pub struct SyntheticModel {
    cfg: Config,
    format: TensorFormat,
    origin: PathBuf,
    /// The embedding table is read every step (row gather): make it once.
    embed: std::sync::OnceLock<HostTensor<'static>>,
}

/// Named shapes: "smollm2-135m", "llama3-8b", "llama3-1b", "tiny", "tiny-smollm2-vocab" (tiny with SmolLM2's
/// vocabulary, so real text tokenized for the default model runs through it: the CI-sized eval).
pub fn preset(name: &str) -> Result<Config> {
    let base = Config {
        arch: Arch::Llama,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: None,
        tie_word_embeddings: true,
        max_position_embeddings: 8192,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    Ok(match name {
        "smollm2-135m" => base,
        "llama3-8b" => Config {
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            vocab_size: 128256,
            rope_theta: 500000.0,
            tie_word_embeddings: false,
            ..base
        },
        // Llama-3.2-1B: a model of 2.5 GB in f16, for load timings where 16 GB do not fit.
        "llama3-1b" => Config {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            vocab_size: 128256,
            rope_theta: 500000.0,
            ..base
        },
        "tiny" => Config { hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 16, vocab_size: 512, ..base },
        "tiny-smollm2-vocab" => Config { hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2, num_kv_heads: 1, head_dim: 16, ..base },
        other => return Err(Error::arg("synthetic", format!("unknown preset `{other}` (smollm2-135m, llama3-8b, llama3-1b, tiny, tiny-smollm2-vocab)"))),
    })
}

impl SyntheticModel {
    /// `format`: F16, BF16, Q8_0, Q4_0 or Q4_1 for the matrices (norms are f32).
    pub fn new(name: &str, format: TensorFormat) -> Result<SyntheticModel> {
        if !matches!(format, TensorFormat::F16 | TensorFormat::BF16 | TensorFormat::Q8_0 | TensorFormat::Q4_0 | TensorFormat::Q4_1) {
            return Err(Error::Unsupported(format!("synthetic weights in {format:?}")));
        }
        Ok(SyntheticModel { cfg: preset(name)?, format, origin: PathBuf::from(format!("synthetic:{name}:{format:?}")), embed: Default::default() })
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.cfg;
        let h = c.hidden_size;
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            return (name == "model.embed_tokens.weight" || !c.tie_word_embeddings).then(|| vec![c.vocab_size, h]);
        }
        if name == "model.norm.weight" {
            return Some(vec![h]);
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (l, part) = rest.split_once('.')?;
        if l.parse::<usize>().ok()? >= c.num_layers {
            return None;
        }
        Some(match part {
            "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
            "self_attn.q_proj.weight" => vec![c.q_dim(), h],
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![c.kv_dim(), h],
            "self_attn.o_proj.weight" => vec![h, c.q_dim()],
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![c.intermediate_size, h],
            "mlp.down_proj.weight" => vec![h, c.intermediate_size],
            _ => return None,
        })
    }
}

/// xorshift64*: fast, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

impl WeightSource for SyntheticModel {
    fn config(&self) -> &Config {
        &self.cfg
    }
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn has_tensor(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        if name == "model.embed_tokens.weight" {
            let t = match self.embed.get() {
                Some(t) => t,
                None => {
                    let _ = self.embed.set(self.make(name)?);
                    self.embed.get().unwrap()
                }
            };
            // Borrow: no copy of the table per step.
            return Ok(HostTensor { name: t.name.clone(), shape: t.shape.clone(), format: t.format, data: std::borrow::Cow::Borrowed(&t.data) });
        }
        self.make(name)
    }
}

impl SyntheticModel {
    fn make(&self, name: &str) -> Result<HostTensor<'static>> {
        let shape = self.shape(name).ok_or_else(|| Error::tensor(name, "not in the synthetic model"))?;
        let mut rng = Rng(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)) | 1);
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            let v: Vec<f32> = (0..n).map(|_| 1.0 + 0.1 * rng.unit()).collect();
            return Ok(HostTensor { name: name.into(), shape, format: TensorFormat::F32, data: bytemuck::cast_slice(&v).to_vec().into() });
        }
        let scale = 1.0 / (shape[1] as f32).sqrt();
        let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
        let mut data = Vec::with_capacity(n * 2);
        match self.format {
            TensorFormat::F16 => (0..n).for_each(|_| data.extend(f16(rng.unit() * scale))),
            TensorFormat::BF16 => (0..n).for_each(|_| data.extend(half::bf16::from_f32(rng.unit() * scale).to_le_bytes())),
            TensorFormat::Q8_0 => (0..n / 32).for_each(|_| {
                data.extend(f16(scale / 127.0));
                (0..32).for_each(|_| data.push(rng.next() as u8));
            }),
            TensorFormat::Q4_0 => (0..n / 32).for_each(|_| {
                data.extend(f16(scale / 8.0));
                (0..16).for_each(|_| data.push(rng.next() as u8));
            }),
            TensorFormat::Q4_1 => (0..n / 32).for_each(|_| {
                data.extend(f16(scale / 8.0));
                data.extend(f16(-scale));
                (0..16).for_each(|_| data.push(rng.next() as u8));
            }),
            _ => unreachable!(),
        }
        Ok(HostTensor { name: name.into(), shape, format: self.format, data: data.into() })
    }
}
