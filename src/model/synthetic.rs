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

/// Values per independently seeded piece of a tensor (a multiple of 32: whole quantised blocks).
/// The pieces are made on all cores: one thread took ~50 s for a Llama-3-8B shape's 16 GB, most of
/// a device bench line's time (docs/perf.md, session 14).
const PIECE: usize = 1 << 20;

/// Bytes a piece of `values` values takes in `format` (F16/BF16: 2 a value; blocks of 32 as stored).
fn stored_bytes(format: TensorFormat, values: usize) -> usize {
    match format {
        TensorFormat::F16 | TensorFormat::BF16 => 2 * values,
        TensorFormat::Q8_0 => values / 32 * 34,
        TensorFormat::Q4_0 => values / 32 * 18,
        TensorFormat::Q4_1 => values / 32 * 20,
        _ => unreachable!("SyntheticModel::new accepts f16, bf16, q8_0, q4_0, q4_1"),
    }
}

/// Fills `out` (one piece, stored as `format`) from `rng`: values uniform in [-scale, scale), or
/// quantised blocks of random codes whose scale gives the same range.
fn fill_piece(format: TensorFormat, scale: f32, rng: &mut Rng, out: &mut [u8]) {
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let mut codes = |dst: &mut [u8]| dst.chunks_mut(8).for_each(|c| c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]));
    match format {
        TensorFormat::F16 => out.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&f16(rng.unit() * scale))),
        TensorFormat::BF16 => out.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::bf16::from_f32(rng.unit() * scale).to_le_bytes())),
        TensorFormat::Q8_0 => out.chunks_exact_mut(34).for_each(|b| {
            b[..2].copy_from_slice(&f16(scale / 127.0));
            codes(&mut b[2..]);
        }),
        TensorFormat::Q4_0 => out.chunks_exact_mut(18).for_each(|b| {
            b[..2].copy_from_slice(&f16(scale / 8.0));
            codes(&mut b[2..]);
        }),
        TensorFormat::Q4_1 => out.chunks_exact_mut(20).for_each(|b| {
            b[..2].copy_from_slice(&f16(scale / 8.0));
            b[2..4].copy_from_slice(&f16(-scale));
            codes(&mut b[4..]);
        }),
        _ => unreachable!("SyntheticModel::new accepts f16, bf16, q8_0, q4_0, q4_1"),
    }
}

impl SyntheticModel {
    fn make(&self, name: &str) -> Result<HostTensor<'static>> {
        let shape = self.shape(name).ok_or_else(|| Error::tensor(name, "not in the synthetic model"))?;
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let n: usize = shape.iter().product();
        if shape.len() == 1 {
            let mut rng = Rng(seed | 1);
            let v: Vec<f32> = (0..n).map(|_| 1.0 + 0.1 * rng.unit()).collect();
            return Ok(HostTensor { name: name.into(), shape, format: TensorFormat::F32, data: bytemuck::cast_slice(&v).to_vec().into() });
        }
        let scale = 1.0 / (shape[1] as f32).sqrt();
        let format = self.format;
        let mut data = vec![0u8; stored_bytes(format, n)];
        // piece i: its own generator, so the bytes do not depend on how the pieces are shared out
        let mut pieces: Vec<(usize, &mut [u8])> = data.chunks_mut(stored_bytes(format, PIECE)).enumerate().collect();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(pieces.len()).max(1);
        let per = pieces.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for group in pieces.chunks_mut(per) {
                s.spawn(move || {
                    for (i, out) in group.iter_mut() {
                        let mut rng = Rng((seed ^ (*i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                        fill_piece(format, scale, &mut rng, out);
                    }
                });
            }
        });
        Ok(HostTensor { name: name.into(), shape, format, data: data.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format's tensors have their stored size, are the same bytes each time (the pieces made
    /// in parallel), and differ between tensors; f16 values stay within the scale.
    #[test]
    fn tensors_are_deterministic_and_sized() {
        for format in [TensorFormat::F16, TensorFormat::BF16, TensorFormat::Q8_0, TensorFormat::Q4_0, TensorFormat::Q4_1] {
            let m = SyntheticModel::new("llama3-1b", format).unwrap();
            let c = m.config().clone();
            let name = "model.layers.0.mlp.gate_proj.weight"; // 8192 x 2048: 16 pieces
            let a = m.tensor(name).unwrap();
            assert_eq!(a.shape, vec![c.intermediate_size, c.hidden_size]);
            assert_eq!(a.data.len(), stored_bytes(format, c.intermediate_size * c.hidden_size), "{format:?}");
            assert_eq!(a.data, m.tensor(name).unwrap().data, "{format:?}: not deterministic");
            assert_ne!(a.data[..64], m.tensor("model.layers.1.mlp.gate_proj.weight").unwrap().data[..64], "{format:?}");
            if format == TensorFormat::F16 {
                let bound = 1.0 / (c.hidden_size as f32).sqrt();
                let vals: Vec<f32> = a.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                assert!(vals.iter().all(|v| v.abs() <= bound * 1.001), "f16 values within the scale");
                let mean = vals.iter().sum::<f32>() / vals.len() as f32;
                assert!(mean.abs() < 0.01 * bound, "uniform around zero: mean {mean}");
            }
        }
    }
}
