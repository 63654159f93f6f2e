//! The whole Llama/Mistral forward pass on the CPU, in f32 with f64 sums: the oracle for the GPU.
//!
//! Per layer: x += o_proj(attn(rope(q), rope(k), v)) over rmsnorm(x); x += down(swiglu(gate, up))
//! over rmsnorm(x). The KV cache holds keys *un-rotated*; RoPE is applied at attention time from
//! explicit positions, so ESA can place the same key at its true position or at position 0.

use crate::model::config::Config;
use crate::model::host::WeightSource;
use crate::model::safetensors_loader::expect_tensor;
use crate::reference::ops;
use crate::{Error, Result};

pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// `[q_dim][hidden]`, `[kv_dim][hidden]`, `[kv_dim][hidden]`, `[hidden][q_dim]`
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    /// `[inter][hidden]`, `[inter][hidden]`, `[hidden][inter]`
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

pub struct Model {
    pub config: Config,
    /// `[vocab][hidden]`
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    /// `[vocab][hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
    /// RoPE table from `Config::rope_inv_freqs` (scaling applied).
    pub inv_freqs: Vec<f32>,
}

/// Un-rotated keys and values of every layer, `[len][kv_dim]` each; row i holds position i.
pub struct Cache {
    pub max_context: usize,
    pub len: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// What one layer's attention sees, handed to the attention callback of [`Model::forward_with`].
pub struct AttnInput<'a> {
    pub layer: usize,
    /// The chunk's queries, un-rotated: `[n_q][n_heads][head_dim]`.
    pub q: &'a [f32],
    /// Natural positions of the chunk's tokens (`cache.len` before the call, counting up).
    pub q_pos: &'a [u32],
    /// All cached keys including the chunk's, un-rotated: `[n_k][n_kv_heads][head_dim]`; key j is at
    /// natural position j.
    pub k: &'a [f32],
    pub v: &'a [f32],
}

impl Cache {
    /// Forget every cached position (start a new sequence).
    pub fn clear(&mut self) {
        self.len = 0;
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(Vec::clear);
    }
}

impl Model {
    /// Dequantize every weight of `src` to f32, checking shapes against its config.
    pub fn load(src: &dyn WeightSource) -> Result<Model> {
        let c = src.config().clone();
        let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = expect_tensor(src, name, shape)?;
            crate::quant::dequantize(name, t.format, &t.data, t.numel())
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                wq: get(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                wk: get(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                wv: get(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                wo: get(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                w_gate: get(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?,
                w_up: get(&format!("{p}.mlp.up_proj.weight"), &[i, h])?,
                w_down: get(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
            });
        }
        // A tied model may still ship lm_head.weight; an untied one must.
        let lm_head = if c.tie_word_embeddings && !src.has_tensor("lm_head.weight") {
            None
        } else {
            Some(get("lm_head.weight", &[c.vocab_size, h])?)
        };
        Ok(Model {
            embed: get("model.embed_tokens.weight", &[c.vocab_size, h])?,
            final_norm: get("model.norm.weight", &[h])?,
            lm_head,
            layers,
            inv_freqs: c.rope_inv_freqs(),
            config: c,
        })
    }

    pub fn new_cache(&self, max_context: usize) -> Cache {
        let n = self.config.num_layers;
        Cache { max_context, len: 0, k: vec![Vec::new(); n], v: vec![Vec::new(); n] }
    }

    /// Run `tokens` as the next chunk (appending to `cache`); logits `[vocab]` for every position.
    pub fn forward(&self, cache: &mut Cache, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let kv_dim = self.config.kv_dim();
        self.forward_with(cache, tokens, &mut |a| self.dense_attention(&a, a.q_pos, &natural_positions(a.k.len() / kv_dim)))
    }

    /// Rotate queries and keys at the given positions and run causal attention
    /// (`ops::attention`: key j visible to query i iff `k_pos[j] <= q_pos[i]`).
    pub fn dense_attention(&self, a: &AttnInput, q_pos: &[u32], k_pos: &[u32]) -> Vec<f32> {
        let c = &self.config;
        let mut q = a.q.to_vec();
        let mut k = a.k.to_vec();
        ops::rope(&mut q, q_pos, &self.inv_freqs);
        ops::rope(&mut k, k_pos, &self.inv_freqs);
        // YaRN's attention factor multiplies every score (HF scales cos and sin, so q and k, by it).
        let f = c.rope_score_factor();
        if f != 1.0 {
            q.iter_mut().for_each(|x| *x *= f);
        }
        ops::attention(&q, &k, a.v, c.num_heads, c.num_kv_heads, c.head_dim, q_pos, k_pos)
    }

    /// The forward pass with attention supplied by `attend`, which gets un-rotated q/k and returns
    /// `[n_q][n_heads][head_dim]`. ESA's reference plugs in its own selection and positions here.
    pub fn forward_with(
        &self,
        cache: &mut Cache,
        tokens: &[u32],
        attend: &mut dyn FnMut(AttnInput) -> Vec<f32>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (h, qd, kvd, inter, n) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, tokens.len());
        if cache.len + n > cache.max_context {
            return Err(Error::ContextFull { tokens: n, used: cache.len, max_context: cache.max_context });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::arg("tokens", format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let q_pos: Vec<u32> = (cache.len..cache.len + n).map(|p| p as u32).collect();
        let mut x = ops::embedding(&self.embed, h, tokens);
        for (l, layer) in self.layers.iter().enumerate() {
            let xn = ops::rmsnorm(&x, &layer.attn_norm, c.rms_norm_eps);
            let q = ops::matmul(&layer.wq, qd, h, &xn);
            cache.k[l].extend(ops::matmul(&layer.wk, kvd, h, &xn));
            cache.v[l].extend(ops::matmul(&layer.wv, kvd, h, &xn));
            let att = attend(AttnInput { layer: l, q: &q, q_pos: &q_pos, k: &cache.k[l], v: &cache.v[l] });
            ops::add_in_place(&mut x, &ops::matmul(&layer.wo, h, qd, &att));

            let xn = ops::rmsnorm(&x, &layer.mlp_norm, c.rms_norm_eps);
            let gate = ops::matmul(&layer.w_gate, inter, h, &xn);
            let up = ops::matmul(&layer.w_up, inter, h, &xn);
            ops::add_in_place(&mut x, &ops::matmul(&layer.w_down, h, inter, &ops::swiglu(&gate, &up)));
        }
        cache.len += n;
        let xn = ops::rmsnorm(&x, &self.final_norm, c.rms_norm_eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(xn.chunks_exact(h).map(|xt| ops::matvec(head, c.vocab_size, h, xt)).collect())
    }
}

/// `[0, 1, ..., n-1]`
pub fn natural_positions(n: usize) -> Vec<u32> {
    (0..n as u32).collect()
}
