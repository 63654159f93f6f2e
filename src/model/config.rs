//! The normalised model configuration every loader produces (HF `config.json` or GGUF metadata).
//! Defaults are resolved here once, so the forward pass never guesses.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama-3.x frequency-dependent scaling (`rope_type: "llama3"`).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
    /// One divisor per frequency (`head_dim / 2` of them): how GGUF files of Llama 3.x store their
    /// scaling (tensor `rope_freqs.weight`, llama.cpp's `freq_factors`).
    Factors(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl Config {
    pub fn q_dim(&self) -> usize { self.num_heads * self.head_dim }
    pub fn kv_dim(&self) -> usize { self.num_kv_heads * self.head_dim }

    /// RoPE inverse frequencies (head_dim / 2 of them), scaling applied. The GPU kernels take this
    /// table, so every scaling scheme is handled here in one place. Pairs are HF "rotate_half" style:
    /// element i pairs with element i + head_dim/2.
    pub fn rope_inv_freqs(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            None => base.iter().map(|&f| f as f32).collect(),
            Some(RopeScaling::Linear { factor }) => base.iter().map(|&f| (f / *factor as f64) as f32).collect(),
            Some(RopeScaling::Factors(div)) => base.iter().zip(div).map(|(&f, &d)| (f / d as f64) as f32).collect(),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                let (factor, lo, hi) = (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let r = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        r as f32
                    })
                    .collect()
            }
        }
    }
}

/// Parsing of a Hugging Face `config.json` (LlamaForCausalLM / MistralForCausalLM).
impl Config {
    /// Read and validate `config.json`. Every error names the file and the offending field.
    /// Fields Mistral adds (`sliding_window`) are ignored: the crate attends to the whole context
    /// (or to ESA's selection), which matches Mistral whenever the context fits the window.
    pub fn from_hf_json(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_value(&json, path)
    }

    /// Same as [`Config::from_hf_json`] for an already parsed document; `path` is used in errors.
    pub fn from_hf_value(json: &Value, path: &Path) -> Result<Config> {
        let f = HfFields { json, path };
        if !json.is_object() {
            return Err(Error::format(path, "expected a JSON object"));
        }
        let arch = f.arch()?;
        let hidden_size = f.usize_req("hidden_size")?;
        let num_layers = f.usize_req("num_hidden_layers")?;
        let num_heads = f.usize_req("num_attention_heads")?;
        let num_kv_heads = f.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let cfg = Config {
            arch,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: f.usize_req("vocab_size")?,
            rms_norm_eps: f.f32_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: f.f32_opt("rope_theta")?.unwrap_or(10000.0),
            rope_scaling: f.rope_scaling()?,
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
        };
        f.check_unsupported_features()?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Consistency checks shared by every loader; `path` names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Config { path: path.into(), field: field.into(), msg });
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(field, "must be greater than 0".into());
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return bad(
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads = {}", self.num_kv_heads, self.num_heads),
            );
        }
        if self.head_dim % 2 != 0 {
            return bad("head_dim", format!("{} is odd; RoPE needs an even head dimension", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad("rms_norm_eps", format!("{} is not a positive number", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad("rope_theta", format!("{} is not a number greater than 1", self.rope_theta));
        }
        for (i, &id) in self.bos_token_id.iter().chain(&self.eos_token_ids).enumerate() {
            if id as usize >= self.vocab_size {
                let field = if i == 0 && self.bos_token_id.is_some() { "bos_token_id" } else { "eos_token_id" };
                return bad(field, format!("token id {id} is outside the vocabulary of {}", self.vocab_size));
            }
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) if !(factor.is_finite() && *factor > 0.0) => {
                bad("rope_scaling.factor", format!("{factor} is not a positive number"))
            }
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                if !(factor.is_finite() && *factor > 0.0) {
                    bad("rope_scaling.factor", format!("{factor} is not a positive number"))
                } else if !(*low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                    bad(
                        "rope_scaling.high_freq_factor",
                        format!("needs 0 < low_freq_factor ({low_freq_factor}) < high_freq_factor ({high_freq_factor})"),
                    )
                } else if *original_max_position_embeddings == 0 {
                    bad("rope_scaling.original_max_position_embeddings", "must be greater than 0".into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// Typed field access on a config.json object, with errors naming the file and field.
struct HfFields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl HfFields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::Config { path: self.path.into(), field: field.into(), msg: msg.into() }
    }
    /// A present, non-null field.
    fn get(&self, field: &str) -> Option<&Value> {
        self.json.get(field).filter(|v| !v.is_null())
    }
    fn usize_of(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {v}")))
    }
    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        self.get(field).map(|v| self.usize_of(field, v)).transpose()
    }
    fn usize_req(&self, field: &str) -> Result<usize> {
        self.usize_opt(field)?.ok_or_else(|| self.err(field, "missing"))
    }
    fn f32_of(&self, field: &str, v: &Value) -> Result<f32> {
        v.as_f64().map(|x| x as f32).ok_or_else(|| self.err(field, format!("expected a number, found {v}")))
    }
    fn f32_opt(&self, field: &str) -> Result<Option<f32>> {
        self.get(field).map(|v| self.f32_of(field, v)).transpose()
    }
    fn bool_opt(&self, field: &str) -> Result<Option<bool>> {
        self.get(field)
            .map(|v| v.as_bool().ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))))
            .transpose()
    }
    /// `bos_token_id` / `eos_token_id`: absent, null, an integer, or a list of integers.
    fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| -> Result<u32> {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.err(field, format!("expected a token id, found {v}")))
        };
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }

    fn arch(&self) -> Result<Arch> {
        let of_name = |name: &str| match name {
            "LlamaForCausalLM" | "llama" => Some(Arch::Llama),
            "MistralForCausalLM" | "mistral" => Some(Arch::Mistral),
            _ => None,
        };
        if let Some(archs) = self.get("architectures") {
            let names: Vec<&str> = archs.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if names.is_empty() {
                return Err(self.err("architectures", format!("expected a list of class names, found {archs}")));
            }
            return names.iter().find_map(|n| of_name(n)).ok_or_else(|| {
                self.err(
                    "architectures",
                    format!("unsupported architecture {names:?}; supported: LlamaForCausalLM, MistralForCausalLM"),
                )
            });
        }
        match self.get("model_type").and_then(Value::as_str) {
            Some(t) => of_name(t).ok_or_else(|| {
                self.err("model_type", format!("unsupported model type `{t}`; supported: llama, mistral"))
            }),
            None => Err(self.err("architectures", "missing (and no `model_type` either)")),
        }
    }

    fn rope_scaling(&self) -> Result<Option<RopeScaling>> {
        let Some(rs) = self.get("rope_scaling") else { return Ok(None) };
        let field = "rope_scaling";
        if !rs.is_object() {
            return Err(self.err(field, format!("expected an object or null, found {rs}")));
        }
        let kind = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("rope_scaling.rope_type", "missing"))?;
        let num = |key: &str| -> Result<f32> {
            let name = format!("rope_scaling.{key}");
            let v = rs.get(key).filter(|v| !v.is_null()).ok_or_else(|| self.err(&name, "missing"))?;
            self.f32_of(&name, v)
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
            "llama3" => {
                let (factor, low_freq_factor, high_freq_factor) =
                    (num("factor")?, num("low_freq_factor")?, num("high_freq_factor")?);
                let name = "rope_scaling.original_max_position_embeddings";
                let omp = rs.get(name.split('.').nth(1).unwrap()).ok_or_else(|| self.err(name, "missing"))?;
                Ok(Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings: self.usize_of(name, omp)?,
                }))
            }
            other => Err(Error::Unsupported(format!(
                "{}: rope_scaling type `{other}` (supported: llama3, linear)",
                self.path.display()
            ))),
        }
    }

    /// Llama variants this forward pass does not implement: refuse rather than compute garbage.
    fn check_unsupported_features(&self) -> Result<()> {
        if let Some(act) = self.get("hidden_act").or_else(|| self.get("hidden_activation")) {
            if act.as_str() != Some("silu") {
                return Err(Error::Unsupported(format!(
                    "{}: hidden_act {act} (only silu is supported)",
                    self.path.display()
                )));
            }
        }
        for field in ["attention_bias", "mlp_bias"] {
            if self.bool_opt(field)? == Some(true) {
                return Err(Error::Unsupported(format!("{}: {field} = true", self.path.display())));
            }
        }
        Ok(())
    }
}
