//! The normalised model configuration every loader produces (HF `config.json` or GGUF metadata).
//! Defaults are resolved here once, so the forward pass never guesses.

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
