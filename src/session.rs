//! A session owns one sequence's state: KV caches, scratch buffers sized once from `max_context`
//! and the prefill chunk, and the position. Recording a step allocates nothing on the GPU.

use std::sync::Arc;

use crate::gpu::ops::{attention, linear, norm, rope_kv, sampling};
use crate::gpu::ops::linear::{Epilogue, LinearIo};
use crate::attention::esa::EsaState;
use crate::attention::Attention;
use crate::gpu::{BufRef, Recorder};
use crate::model::gpu_model::GpuModel;
use crate::{Error, Result};

/// Default `SessionOptions::prefill_chunk`.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Tokens the KV cache holds (prompt + generated). Longer input is refused, never truncated.
    pub max_context: usize,
    /// Prompt tokens processed per forward pass (dense attention). Larger chunks fill a big GPU
    /// better (SmolLM2 at 4096 tokens on an H200: 26k tok/s in chunks of 512, 46k in chunks of
    /// 2048); the session lowers it where a scratch buffer would exceed the adapter's binding
    /// limit.
    pub prefill_chunk: usize,
    /// Keep the logits of every position of a chunk (evaluation and tests), not only the last.
    pub all_logits: bool,
    /// Dense attention, or ESA (which also sets the prefill chunk to its own `chunk`).
    pub attention: Attention,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { max_context: 4096, prefill_chunk: DEFAULT_PREFILL_CHUNK, all_logits: false, attention: Attention::Dense }
    }
}

/// How the next token is chosen. `temperature <= 0` is greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

/// Temperature 0.2 and top-p 0.9, the settings SmolLM2's model card uses: small models wander at
/// higher temperatures (SmolLM2-135M asked for the capital of France: at 0.7 the default seed
/// answers in looping French; at 0.2, 9 of 10 seeds name Paris, lavapipe, 2026-11-30).
impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.2, top_p: 0.9, seed: 42 }
    }
}

struct Scratch {
    x: wgpu::Buffer,
    xn: wgpu::Buffer,
    qkv: wgpu::Buffer,
    q: wgpu::Buffer,
    attn: wgpu::Buffer,
    mlp: wgpu::Buffer,
    part: wgpu::Buffer,
    logits: wgpu::Buffer,
    token: wgpu::Buffer,
    /// Host-mappable copy of `token`: the one read-back of a decode step, allocated once.
    token_staging: wgpu::Buffer,
}

pub struct Session {
    model: Arc<GpuModel>,
    opts: SessionOptions,
    kv: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    s: Scratch,
    pos: usize,
    /// Logit rows available after the last `feed` (1, or the chunk length with `all_logits`).
    logit_rows: usize,
    rng: u64,
    esa: Option<EsaState>,
    /// Host-mappable copy of every layer's fused QKV projection for one chunk (`feed_capturing`
    /// only; allocated on first use).
    capture: Option<wgpu::Buffer>,
}

impl Session {
    pub fn new(model: Arc<GpuModel>, opts: SessionOptions) -> Result<Session> {
        if opts.max_context == 0 {
            return Err(Error::arg("max_context", "must be at least 1"));
        }
        if opts.prefill_chunk == 0 {
            return Err(Error::arg("prefill_chunk", "must be at least 1"));
        }
        let ctx = &model.ctx;
        let c = &model.cfg;
        let qkv_rows = c.q_dim() + 2 * c.kv_dim();
        // Floats per token of the widest activation buffer: each must fit in one binding. (The
        // per-position logits of `all_logits`, an evaluation feature, are not counted: a chunk
        // small enough for them would slow every other pass.)
        let widest = [c.hidden_size, qkv_rows, c.intermediate_size].into_iter().max().unwrap_or(1).max(1);
        let fits = ((ctx.caps.max_binding / (4 * widest as u64)) as usize).max(1);
        let chunk = match &opts.attention {
            Attention::Esa(e) => e.config.chunk,
            Attention::Dense => opts.prefill_chunk.min(fits),
        }
        .min(opts.max_context);
        // Saturating: an absurd max_context must reach the limit check below, not overflow.
        let kv_bytes = (opts.max_context as u64).saturating_mul(c.kv_dim() as u64 * 2);
        if kv_bytes > ctx.caps.max_binding {
            return Err(Error::arg(
                "max_context",
                format!("{} tokens need a {kv_bytes}-byte KV cache per layer, over the adapter's {}-byte binding limit; lower max_context", opts.max_context, ctx.caps.max_binding),
            ));
        }
        let mut kv = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            kv.push((ctx.storage(&format!("k cache {l}"), kv_bytes)?, ctx.storage(&format!("v cache {l}"), kv_bytes)?));
        }
        let logit_rows = if opts.all_logits { chunk } else { 1 };
        let f = |label: &str, n: usize| ctx.storage(label, (n * 4) as u64);
        let s = Scratch {
            x: f("x", chunk * c.hidden_size)?,
            xn: f("x normed", chunk * c.hidden_size)?,
            qkv: f("qkv", chunk * qkv_rows)?,
            q: f("q", chunk * c.q_dim())?,
            attn: f("attention out", chunk * c.q_dim())?,
            mlp: f("mlp", chunk * c.intermediate_size)?,
            part: f("attention partials", attention::scratch_floats(chunk, c.num_heads, c.head_dim))?,
            logits: f("logits", logit_rows * c.vocab_size)?,
            token: f("token", 4)?,
            token_staging: ctx.staging("token read-back", 4),
        };
        let esa = match &opts.attention {
            Attention::Esa(e) => Some(EsaState::new(ctx, c, &model.identity, &c.rope_inv_freqs(), e, opts.max_context, chunk)?),
            Attention::Dense => None,
        };
        Ok(Session { model, opts: SessionOptions { prefill_chunk: chunk, ..opts }, kv, s, pos: 0, logit_rows: 0, rng: 0, esa, capture: None })
    }

    /// ESA state (None for dense attention).
    pub fn esa(&self) -> Option<&EsaState> {
        self.esa.as_ref()
    }

    pub fn model(&self) -> &Arc<GpuModel> {
        &self.model
    }

    /// Tokens in the context so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn max_context(&self) -> usize {
        self.opts.max_context
    }

    /// Tokens per forward pass of a long `feed` (ESA's chunk under ESA).
    pub fn prefill_chunk(&self) -> usize {
        self.opts.prefill_chunk
    }

    /// Keep only the first `n` tokens of the context (the rest of the cache is overwritten later).
    pub fn truncate(&mut self, n: usize) {
        if n < self.pos {
            self.pos = n;
            self.logit_rows = 0;
        }
    }

    /// Forget the context (the caches are reused).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.logit_rows = 0;
    }

    /// Append `tokens` to the context, running them through the model in chunks. Afterwards the
    /// logits of the last token (or of every token of the last chunk, with `all_logits`) are ready.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.run_chunks(tokens, None)
    }

    /// Feed `tokens` and choose the next token, in one submission per chunk; returns its id.
    pub fn step(&mut self, tokens: &[u32], sampling: &Sampling) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::arg("tokens", "empty"));
        }
        self.run_chunks(tokens, Some(sampling))?;
        let b = self.model.ctx.read_staged(&self.s.token_staging, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One submission per prefill chunk; with `sampling`, the last one also samples the next token
    /// and copies it to the staging buffer.
    fn run_chunks(&mut self, tokens: &[u32], sampling: Option<&Sampling>) -> Result<()> {
        self.check_room(tokens.len())?;
        let n_chunks = tokens.len().div_ceil(self.opts.prefill_chunk);
        for (i, chunk) in tokens.chunks(self.opts.prefill_chunk).enumerate() {
            let ctx = self.model.ctx.clone();
            let mut rec = Recorder::new(&ctx);
            self.record_chunk(&mut rec, chunk, None)?;
            if let (Some(s), true) = (sampling, i + 1 == n_chunks) {
                self.record_sample(&mut rec, s)?;
                rec.copy(&self.s.token, 0, &self.s.token_staging, 0, 4);
            }
            rec.submit()?;
        }
        Ok(())
    }

    /// Feed `tokens` like [`feed`](Self::feed), and after each chunk hand `on_chunk(pos0, n, qkv)`
    /// every layer's QKV projection of that chunk, read back from the GPU: `qkv` is
    /// `[num_layers][n][q_dim + 2 kv_dim]` f32, each row the un-rotated queries, un-rotated keys
    /// and values of one token (what calibration of ESA's maps collects). One extra copy per
    /// layer and one read-back per chunk; nothing else in the forward pass changes.
    pub fn feed_capturing(&mut self, tokens: &[u32], mut on_chunk: impl FnMut(usize, usize, &[f32]) -> Result<()>) -> Result<()> {
        self.check_room(tokens.len())?;
        let c = &self.model.cfg;
        let row_bytes = (c.q_dim() + 2 * c.kv_dim()) as u64 * 4;
        let layer_bytes = self.opts.prefill_chunk as u64 * row_bytes;
        let size = layer_bytes * c.num_layers as u64;
        let ctx = self.model.ctx.clone();
        if size > ctx.caps.max_buffer {
            return Err(Error::arg(
                "prefill_chunk",
                format!("capturing {} layers of {} tokens needs a {size}-byte buffer, over the adapter's {}; lower prefill_chunk", c.num_layers, self.opts.prefill_chunk, ctx.caps.max_buffer),
            ));
        }
        let cap = match self.capture.take() {
            Some(b) => b,
            None => ctx.staging("qkv capture", size),
        };
        let result = (|| {
            for chunk in tokens.chunks(self.opts.prefill_chunk) {
                let pos0 = self.pos;
                let mut rec = Recorder::new(&ctx);
                self.record_chunk(&mut rec, chunk, Some(&cap))?;
                rec.submit()?;
                let n = chunk.len();
                let layers = self.model.cfg.num_layers;
                // Each layer's rows were copied packed at l * n rows.
                let bytes = ctx.read_staged(&cap, layers as u64 * n as u64 * row_bytes)?;
                let qkv: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
                on_chunk(pos0, n, &qkv)?;
            }
            Ok(())
        })();
        self.capture = Some(cap);
        result
    }

    /// Logits of the last token.
    pub fn logits(&self) -> Result<Vec<f32>> {
        if self.logit_rows == 0 {
            return Err(Error::arg("logits", "no tokens fed yet"));
        }
        let v = self.model.cfg.vocab_size;
        self.model.ctx.read_f32(&self.s.logits, (self.logit_rows - 1) * v, v)
    }

    /// Logits of every position of the last chunk fed (needs `all_logits`).
    pub fn chunk_logits(&self) -> Result<Vec<Vec<f32>>> {
        let v = self.model.cfg.vocab_size;
        let all = self.model.ctx.read_f32(&self.s.logits, 0, self.logit_rows * v)?;
        Ok(all.chunks(v).map(|c| c.to_vec()).collect())
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.opts.max_context {
            return Err(Error::ContextFull { tokens: n, used: self.pos, max_context: self.opts.max_context });
        }
        Ok(())
    }

    fn record_sample(&mut self, rec: &mut Recorder, s: &Sampling) -> Result<()> {
        if self.rng == 0 {
            self.rng = s.seed ^ 0x9E37_79B9_7F4A_7C15;
        }
        // splitmix64: one uniform per sampled token, reproducible from the seed.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 40) as f32 / (1u64 << 24) as f32;
        let v = self.model.cfg.vocab_size;
        sampling::sample(rec, &BufRef::from(&self.s.logits), (self.logit_rows - 1) * v, v, s.temperature, s.top_p, u, &BufRef::from(&self.s.token))
    }

    /// `capture`: copy each layer's QKV rows there, packed (`feed_capturing`).
    fn record_chunk(&mut self, rec: &mut Recorder, tokens: &[u32], capture: Option<&wgpu::Buffer>) -> Result<()> {
        let m = self.model.clone();
        let c = &m.cfg;
        let n = tokens.len();
        let (h, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let qkv_rows = qd + 2 * kvd;
        let emb = m.embed(tokens)?;
        m.ctx.write(&self.s.x, 0, bytemuck::cast_slice(&emb));
        let small = n <= linear::MATVEC_MAX_TOKENS;
        let (x, xn, qkv, q, attn, mlp) = (
            BufRef::from(&self.s.x),
            BufRef::from(&self.s.xn),
            BufRef::from(&self.s.qkv),
            BufRef::from(&self.s.q),
            BufRef::from(&self.s.attn),
            BufRef::from(&self.s.mlp),
        );
        let io = |x: &BufRef, xs: usize, y: &BufRef, ys: usize, row0: usize| LinearIo { x: x.clone(), x_off: 0, x_stride: xs, y: y.clone(), y_stride: ys, y_row0: row0, n_tok: n };
        for (l, layer) in m.layers.iter().enumerate() {
            // Attention block: x += O(attn(rope(QKV(norm(x)))))
            if !small {
                norm::rmsnorm(rec, &x, &xn, &layer.attn_norm, h, h, n, c.rms_norm_eps)?;
            }
            for (w, row0) in &layer.qkv.parts {
                if small {
                    linear::matvec(rec, w, &io(&x, h, &qkv, qkv_rows, *row0), Epilogue::Store, Some((&layer.attn_norm, c.rms_norm_eps)))?;
                } else {
                    linear::matmul(rec, w, &io(&xn, h, &qkv, qkv_rows, *row0), Epilogue::Store)?;
                }
            }
            if let Some(cap) = capture {
                let bytes = (n * qkv_rows * 4) as u64;
                rec.copy(&self.s.qkv, 0, cap, l as u64 * bytes, bytes);
            }
            let (kc, vc) = (BufRef::from(&self.kv[l].0), BufRef::from(&self.kv[l].1));
            rope_kv::rope_kv(rec, &rope_kv::RopeKv {
                qkv: &qkv,
                qkv_stride: qkv_rows,
                q_out: &q,
                k_cache: &kc,
                v_cache: &vc,
                inv_freq: &m.inv_freq,
                n_tok: n,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                pos0: self.pos,
            })?;
            if let Some(esa) = &self.esa {
                esa.attend(rec, l, c, &qkv, &kc, &vc, &m.inv_freq, &attn, n, self.pos)?;
            } else {
            attention::attend(rec, &attention::Attend {
                q: &q,
                k_cache: &kc,
                v_cache: &vc,
                inv_freq: &m.inv_freq,
                part: &BufRef::from(&self.s.part),
                out: &attn,
                n_q: n,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                pos0: self.pos,
            })?;
            }
            linear::linear(rec, &layer.o, &io(&attn, qd, &x, h, 0), Epilogue::Accumulate)?;
            // MLP block: x += down(silu(gate(norm(x))) * up(norm(x)))
            if small {
                linear::matvec(rec, &layer.gate_up, &io(&x, h, &mlp, c.intermediate_size, 0), Epilogue::SwiGlu, Some((&layer.mlp_norm, c.rms_norm_eps)))?;
            } else {
                norm::rmsnorm(rec, &x, &xn, &layer.mlp_norm, h, h, n, c.rms_norm_eps)?;
                linear::matmul(rec, &layer.gate_up, &io(&xn, h, &mlp, c.intermediate_size, 0), Epilogue::SwiGlu)?;
            }
            linear::linear(rec, &layer.down, &io(&mlp, c.intermediate_size, &x, h, 0), Epilogue::Accumulate)?;
        }
        // Final norm + LM head: the last token, or all of them for evaluation.
        let logits = BufRef::from(&self.s.logits);
        if self.opts.all_logits {
            norm::rmsnorm(rec, &x, &xn, &m.final_norm, h, h, n, c.rms_norm_eps)?;
            linear::linear(rec, &m.lm_head, &io(&xn, h, &logits, c.vocab_size, 0), Epilogue::Store)?;
            self.logit_rows = n;
        } else {
            let last = LinearIo { x: x.clone(), x_off: (n - 1) * h, x_stride: h, y: logits, y_stride: c.vocab_size, y_row0: 0, n_tok: 1 };
            linear::matvec(rec, &m.lm_head, &last, Epilogue::Store, Some((&m.final_norm, c.rms_norm_eps)))?;
            self.logit_rows = 1;
        }
        self.pos += n;
        Ok(())
    }
}
