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
    /// YaRN (Peng et al. 2023, arXiv 2309.00071) as Hugging Face transformers computes it
    /// (`_compute_yarn_parameters`): frequencies that turn fewer than `beta_slow` times over the
    /// original context are interpolated (divided by `factor`), those that turn more than
    /// `beta_fast` times are kept, a linear ramp between; every attention score is multiplied by
    /// `attention_factor`^2 (HF multiplies both cos and sin, so q and k, by it).
    Yarn { factor: f32, original_max_position_embeddings: usize, beta_fast: f32, beta_slow: f32, attention_factor: f32 },
}

impl RopeScaling {
    /// YaRN with transformers' defaults: beta_fast 32, beta_slow 1, attention factor
    /// `0.1 ln(factor) + 1` (1 for factors <= 1).
    pub fn yarn(factor: f32, original_max_position_embeddings: usize) -> RopeScaling {
        RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast: 32.0, beta_slow: 1.0, attention_factor: yarn_default_attention_factor(factor) }
    }
}

/// transformers' `get_mscale(factor)`: `0.1 ln(factor) + 1`, 1 for factors <= 1.
pub fn yarn_default_attention_factor(factor: f32) -> f32 {
    if factor <= 1.0 {
        1.0
    } else {
        (0.1 * (factor as f64).ln() + 1.0) as f32
    }
}

/// transformers' `find_correction_dim`: the dimension index (out of `dim`) whose frequency turns
/// `rotations` times over `max_pos` positions.
fn yarn_correction_dim(rotations: f64, dim: f64, base: f64, max_pos: f64) -> f64 {
    dim * (max_pos / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
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
            Some(RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, .. }) => {
                // transformers' `find_correction_range` (truncated, its default) and
                // `linear_ramp_factor`, in f64 (it computes in f32 after the range).
                let (dim, theta, omp) = (self.head_dim as f64, self.rope_theta as f64, *original_max_position_embeddings as f64);
                let low = yarn_correction_dim(*beta_fast as f64, dim, theta, omp).floor().max(0.0);
                let high = yarn_correction_dim(*beta_slow as f64, dim, theta, omp).ceil().min(dim - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                base.iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp; // weight of the original frequency
                        (f / *factor as f64 * ramp + f * extrapolation) as f32
                    })
                    .collect()
            }
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

impl Config {
    /// Multiplier of every attention score from the RoPE scaling (YaRN's attention factor squared;
    /// 1 otherwise). The kernels' softmax scale is this over sqrt(head_dim).
    pub fn rope_score_factor(&self) -> f32 {
        match &self.rope_scaling {
            Some(RopeScaling::Yarn { attention_factor, .. }) => attention_factor * attention_factor,
            _ => 1.0,
        }
    }

    /// The softmax scale of attention: `rope_score_factor() / sqrt(head_dim)`.
    pub fn attention_scale(&self) -> f32 {
        self.rope_score_factor() / (self.head_dim as f32).sqrt()
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
            rope_scaling: f.rope_scaling(f.usize_opt("max_position_embeddings")?.unwrap_or(2048))?,
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
            Some(RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor }) => {
                if !(factor.is_finite() && *factor > 0.0) {
                    bad("rope_scaling.factor", format!("{factor} is not a positive number"))
                } else if *original_max_position_embeddings == 0 {
                    bad("rope_scaling.original_max_position_embeddings", "must be greater than 0".into())
                } else if !(beta_slow.is_finite() && beta_fast.is_finite() && *beta_slow > 0.0 && beta_fast > beta_slow) {
                    bad("rope_scaling.beta_fast", format!("needs 0 < beta_slow ({beta_slow}) < beta_fast ({beta_fast})"))
                } else if !(attention_factor.is_finite() && *attention_factor > 0.0) {
                    bad("rope_scaling.attention_factor", format!("{attention_factor} is not a positive number"))
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

    fn rope_scaling(&self, max_position_embeddings: usize) -> Result<Option<RopeScaling>> {
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
            "yarn" => {
                let opt = |key: &str| -> Result<Option<f32>> { if rs.get(key).is_some_and(|v| !v.is_null()) { num(key).map(Some) } else { Ok(None) } };
                let factor = num("factor")?;
                let name = "rope_scaling.original_max_position_embeddings";
                // transformers: the model's max_position_embeddings when the scaling does not say.
                let omp = match rs.get("original_max_position_embeddings").filter(|v| !v.is_null()) {
                    Some(v) => self.usize_of(name, v)?,
                    None => max_position_embeddings,
                };
                let attention_factor = match (opt("attention_factor")?, opt("mscale")?, opt("mscale_all_dim")?) {
                    (Some(a), _, _) => a,
                    // DeepSeek-style: get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim).
                    (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                        let g = |k: f32| if factor <= 1.0 { 1.0 } else { 0.1 * k * factor.ln() + 1.0 };
                        g(m) / g(ma)
                    }
                    _ => yarn_default_attention_factor(factor),
                };
                Ok(Some(RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: omp,
                    beta_fast: opt("beta_fast")?.unwrap_or(32.0),
                    beta_slow: opt("beta_slow")?.unwrap_or(1.0),
                    attention_factor,
                }))
            }
            other => Err(Error::Unsupported(format!(
                "{}: rope_scaling type `{other}` (supported: llama3, linear, yarn)",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: Option<RopeScaling>) -> Config {
        Config {
            arch: Arch::Llama,
            hidden_size: 64,
            intermediate_size: 64,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 64,
            vocab_size: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: scaling,
            tie_word_embeddings: true,
            max_position_embeddings: 8192,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// YaRN against transformers' `_compute_yarn_parameters`, worked by hand for head_dim 64,
    /// theta 10^4, factor 4, original context 8192: find_correction_dim(32) = 64 ln(8192 / (64 pi))
    /// / (2 ln 10^4) = 12.88 -> floor 12; find_correction_dim(1) = 64 ln(8192 / (2 pi)) / (2 ln 10^4)
    /// = 24.92 -> ceil 25. So frequencies 0..=12 keep theta^(-2i/64), 25..=31 are divided by 4, and
    /// between them the ramp (i - 12) / 13 mixes: at i = 18, f (7/13) + f/4 (6/13) = f * 34/52.
    /// Attention factor 0.1 ln 4 + 1 = 1.13863.
    #[test]
    fn yarn_matches_the_transformers_formula() {
        let c = cfg(Some(RopeScaling::yarn(4.0, 8192)));
        let inv = c.rope_inv_freqs();
        let base = |i: usize| 1.0 / 10000f64.powf(2.0 * i as f64 / 64.0);
        let close = |i: usize, want: f64| assert!((inv[i] as f64 - want).abs() <= 1e-6 * want, "inv_freq[{i}] = {}, want {want}", inv[i]);
        for i in 0..=12 {
            close(i, base(i));
        }
        for i in 25..32 {
            close(i, base(i) / 4.0);
        }
        close(18, base(18) * 34.0 / 52.0);
        close(18, 0.003_676_847_126);
        close(5, 0.237_137_370_566);
        close(30, 4.445_698_525e-5);
        for i in 13..25 {
            let r = (i as f64 - 12.0) / 13.0;
            close(i, base(i) * (1.0 - r) + base(i) / 4.0 * r);
        }
        let RopeScaling::Yarn { attention_factor, beta_fast, beta_slow, .. } = RopeScaling::yarn(4.0, 8192) else { unreachable!() };
        assert!((attention_factor - 1.138_629_4).abs() < 1e-6 && beta_fast == 32.0 && beta_slow == 1.0);
        assert!((c.rope_score_factor() - 1.138_629_4f32.powi(2)).abs() < 1e-5);
        assert!((c.attention_scale() - 1.138_629_4f32.powi(2) / 8.0).abs() < 1e-6);
        // No scaling: score factor 1; factor <= 1: attention factor 1.
        assert_eq!(cfg(None).rope_score_factor(), 1.0);
        assert_eq!(yarn_default_attention_factor(1.0), 1.0);
    }

    /// config.json's `rope_scaling: {"type": "yarn"}`: transformers' defaults where keys are left
    /// out (original context = max_position_embeddings, betas 32/1, attention factor from the
    /// factor), an explicit `attention_factor` wins, and bad values name the field.
    #[test]
    fn yarn_from_config_json() {
        let base = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 1, "vocab_size": 10, "max_position_embeddings": 4096,
            "rope_scaling": {"type": "yarn", "factor": 2.0}
        });
        let p = Path::new("config.json");
        let c = Config::from_hf_value(&base, p).unwrap();
        assert_eq!(c.rope_scaling, Some(RopeScaling::yarn(2.0, 4096)));
        let mut v = base.clone();
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "attention_factor": 1.5, "beta_fast": 16});
        let c = Config::from_hf_value(&v, p).unwrap();
        assert_eq!(c.rope_scaling, Some(RopeScaling::Yarn { factor: 8.0, original_max_position_embeddings: 8192, beta_fast: 16.0, beta_slow: 1.0, attention_factor: 1.5 }));
        v["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": -2.0});
        let err = Config::from_hf_value(&v, p).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.factor"), "{err}");
        v["rope_scaling"] = serde_json::json!({"type": "yarn"});
        let err = Config::from_hf_value(&v, p).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.factor"), "{err}");
    }
}
