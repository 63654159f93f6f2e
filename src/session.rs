//! A session owns one sequence's state: KV caches, scratch buffers sized once from `max_context`
//! and the prefill chunk, and the position. Recording a step allocates nothing on the GPU.

use std::sync::Arc;

use crate::gpu::ops::{attention, embed, linear, norm, rope_kv, sampling};
use crate::gpu::ops::linear::{Epilogue, LinearIo};
use crate::gpu::ops::pack_f16;
use crate::attention::esa::EsaState;
use crate::attention::Attention;
use crate::gpu::{BufRef, Recorder};
use crate::model::config::{Config, RopeScaling};
use crate::model::gpu_model::GpuModel;
use crate::progress::{Progress, Unit};
use crate::{Error, Result};

/// Default `SessionOptions::prefill_chunk`.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

/// Decode steps [`Session::generate`] keeps submitted ahead of the host's read-back: the GPU
/// works on step N + 1 and N + 2 while the host reads step N's token.
pub const PIPELINE_DEPTH: usize = 3;

/// Where a chunk's token ids come from.
#[derive(Clone, Copy)]
enum Ids<'a> {
    /// Uploaded with the chunk (checked against the vocabulary first).
    Host(&'a [u32]),
    /// The one id the previous submission's sampler wrote to `token`: a decode step whose input
    /// never left the GPU.
    Sampled,
}

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
    /// RoPE scaling for this session in place of the model's own (e.g.
    /// `RopeScaling::yarn(4.0, 8192)` to run an 8k-trained model at 32k as a YaRN baseline);
    /// None keeps the model's.
    pub rope_scaling: Option<RopeScaling>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { max_context: 4096, prefill_chunk: DEFAULT_PREFILL_CHUNK, all_logits: false, attention: Attention::Dense, rope_scaling: None }
    }
}

/// How the next token is chosen. `temperature <= 0` is greedy. Filters are applied in the order
/// transformers uses: repetition penalty, temperature, top-k, top-p, min-p (`sampler` has their
/// exact definitions).
///
/// Every setting samples on the GPU (`gpu::ops::sampling`): only the chosen id is read back, and
/// `Session::generate` keeps up to `PIPELINE_DEPTH` steps in flight whatever the filters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// Nucleus sampling: the most likely tokens holding this much of the mass (1 = off).
    pub top_p: f32,
    /// Only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Only tokens at least `min_p` times as likely as the most likely one (0 = off).
    pub min_p: f32,
    /// Repetition penalty on the tokens of the last `repeat_last_n` of the context (prompt and
    /// reply): positive logits divided by it, negative ones multiplied (1 = off).
    pub repeat_penalty: f32,
    /// Window of the repetition penalty in tokens (0 = off; `usize::MAX` = the whole context).
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, top_k: 0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }

    /// The defaults llama.cpp users know: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no
    /// repetition penalty (window 64 when one is set). Used for models that say nothing else.
    pub fn llama_cpp() -> Self {
        Sampling { temperature: 0.8, top_p: 0.95, top_k: 40, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 42 }
    }

    /// The settings of a Hugging Face `generation_config.json`, or None when it sets none of
    /// `do_sample`, `temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty` (many only
    /// carry token ids). Fields it leaves out take transformers' defaults (temperature 1, top-k 50,
    /// top-p 1, no min-p, no penalty); `do_sample: false` means greedy; a repetition penalty covers
    /// the whole context, as in transformers.
    pub fn from_generation_config(v: &serde_json::Value) -> Option<Sampling> {
        const KEYS: [&str; 6] = ["do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty"];
        if !KEYS.iter().any(|k| v.get(k).is_some_and(|x| !x.is_null())) {
            return None;
        }
        let f = |k: &str, d: f32| v.get(k).and_then(|x| x.as_f64()).map_or(d, |x| x as f32);
        let mut s = Sampling {
            temperature: f("temperature", 1.0),
            top_p: f("top_p", 1.0),
            top_k: v.get("top_k").and_then(|x| x.as_u64()).map_or(50, |k| k as usize),
            min_p: f("min_p", 0.0),
            repeat_penalty: f("repetition_penalty", 1.0),
            repeat_last_n: usize::MAX,
            seed: 42,
        };
        if v.get("do_sample").and_then(|x| x.as_bool()) == Some(false) {
            s.temperature = 0.0;
        }
        Some(s)
    }

    /// Whether the repetition penalty does anything.
    pub fn penalises(&self) -> bool {
        self.repeat_penalty != 1.0 && self.repeat_last_n > 0
    }

    /// Refuse settings no filter can mean.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, v: f32, why: &str| Err(Error::arg(what, format!("{v}: {why}")));
        if self.temperature.is_nan() || self.temperature.is_infinite() {
            return bad("temperature", self.temperature, "must be a finite number (0 = greedy)");
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", self.top_p, "must be in 0..=1 (1 = off)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "must be in 0..=1 (0 = off)");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat_penalty", self.repeat_penalty, "must be a positive number (1 = off)");
        }
        Ok(())
    }
}

/// Temperature 0.2 and top-p 0.9, the settings SmolLM2's model card uses (the default model's;
/// `Model::default_sampling` picks per model): small models wander at higher temperatures
/// (SmolLM2-135M asked for the capital of France: at 0.7 the default seed answers in looping
/// French; at 0.2, 9 of 10 seeds name Paris, lavapipe, 2026-11-30).
impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.2, top_p: 0.9, top_k: 0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64, seed: 42 }
    }
}

/// splitmix64: the uniform numbers sampling draws, reproducible from the seed (also the
/// generator of `quant::random_blocks` test data and the evaluation tasks).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The generator with this exact state (test data and evaluation tasks seed it themselves).
    pub fn from_state(state: u64) -> SplitMix {
        SplitMix(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 24 bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
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
    /// `attention::Attend::counters`: zero between dispatches.
    attn_counters: wgpu::Buffer,
    logits: wgpu::Buffer,
    token: wgpu::Buffer,
    /// Host-mappable copy of `token`: the one read-back of a decode step, allocated once.
    token_staging: wgpu::Buffer,
    /// Token ids of a chunk fed from the host, gathered into `x` on the GPU (`ops::embed`).
    ids: wgpu::Buffer,
    /// Every token id in the KV cache, by position (written with each chunk; a sampled id is
    /// copied from `token`): the repetition penalty's window, read on the GPU.
    hist_ids: wgpu::Buffer,
    /// The sampler's penalised logits and id flags (`sampling::scratch_bytes`).
    sample_scratch: wgpu::Buffer,
    /// Host-mappable copies of `token` for the steps `generate` keeps in flight, one per step.
    ring: Vec<wgpu::Buffer>,
    /// f16 copy of a prefill matmul's input (`pack_f16`), when the matmul runs on cooperative
    /// matrices.
    x_f16: Option<wgpu::Buffer>,
}

/// A prefill matmul's input `io.x` (f32 rows of `io.x_stride`) normalised: into the f16 rows of
/// `x16` in one pass where the matmul reads f16 (`norm::rmsnorm_packed`), else into `xn` (f32);
/// returns `io` reading the result.
fn normed_input(rec: &mut Recorder, io: &LinearIo, xn: &BufRef, x16: Option<&BufRef>, gamma: &wgpu::Buffer, eps: f32) -> Result<LinearIo> {
    let width = io.x_stride;
    match x16 {
        Some(d) => norm::rmsnorm_packed(rec, io, d, gamma, width, eps),
        None => {
            norm::rmsnorm(rec, &io.x, xn, gamma, width, width, io.n_tok, eps)?;
            Ok(LinearIo { x: xn.clone(), ..io.clone() })
        }
    }
}

pub struct Session {
    model: Arc<GpuModel>,
    opts: SessionOptions,
    kv: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    s: Scratch,
    pos: usize,
    /// Logit rows available after the last `feed` (1, or the chunk length with `all_logits`).
    logit_rows: usize,
    /// Seeded by the first sampled token's `Sampling::seed`.
    rng: Option<SplitMix>,
    progress: Option<Arc<dyn Progress>>,
    esa: Option<EsaState>,
    /// The RoPE table and softmax scale this session runs with: the model's, or those of
    /// `SessionOptions::rope_scaling`.
    inv_freq: wgpu::Buffer,
    attn_scale: f32,
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
        // The model's configuration with this session's RoPE scaling.
        let rope_cfg = Config { rope_scaling: opts.rope_scaling.clone().or_else(|| model.cfg.rope_scaling.clone()), ..model.cfg.clone() };
        if opts.rope_scaling.is_some() {
            rope_cfg.validate(std::path::Path::new("SessionOptions::rope_scaling"))?;
        }
        let inv_freqs = rope_cfg.rope_inv_freqs();
        let inv_freq = ctx.upload("session rope inv_freq", bytemuck::cast_slice(&inv_freqs))?;
        let attn_scale = rope_cfg.attention_scale();
        let c = &model.cfg;
        let qkv_rows = c.q_dim() + 2 * c.kv_dim();
        // Floats per token of the widest activation buffer: each must fit in one binding. (The
        // per-position logits of `all_logits`, an evaluation feature, are not counted: a chunk
        // small enough for them would slow every other pass.)
        let widest = [c.hidden_size, qkv_rows, c.intermediate_size].into_iter().max().unwrap_or(1).max(1);
        let fits = ((ctx.caps.max_binding / (4 * widest as u64)) as usize).max(1);
        let chunk = match &opts.attention {
            // ESA's chunk is part of the method (one selection per chunk), so it is refused rather
            // than silently lowered.
            Attention::Esa(e) if e.config.chunk.min(opts.max_context) > fits => {
                return Err(Error::arg(
                    "esa.chunk",
                    format!("{} tokens need activation buffers of {} bytes, over the adapter's {}-byte binding limit; at most {fits} tokens per chunk", e.config.chunk, e.config.chunk * widest * 4, ctx.caps.max_binding),
                ));
            }
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
            attn_counters: f("attention split counters", attention::counter_words(chunk, c.num_heads))?,
            logits: f("logits", logit_rows * c.vocab_size)?,
            token: f("token", 4)?,
            token_staging: ctx.staging("token read-back", 4),
            ids: f("token ids", chunk)?,
            hist_ids: f("context token ids", opts.max_context)?,
            sample_scratch: ctx.storage("sampler scratch", sampling::scratch_bytes(c.vocab_size))?,
            ring: (0..PIPELINE_DEPTH).map(|i| ctx.staging(&format!("token ring {i}"), 4)).collect(),
            // The cooperative-matrix matmul reads its inputs as f16 (pack_f16), widest first.
            x_f16: if linear::matmul_variant(ctx) == linear::MatmulVariant::Coop {
                let widest_in = [c.hidden_size, c.q_dim(), c.intermediate_size].into_iter().max().unwrap_or(1);
                Some(ctx.storage("matmul input f16", pack_f16::packed_bytes(chunk, widest_in).max(16))?)
            } else {
                None
            },
        };
        let esa = match &opts.attention {
            Attention::Esa(e) => Some(EsaState::new(ctx, c, &model.identity, &inv_freqs, e, opts.max_context, chunk)?),
            Attention::Dense => None,
        };
        Ok(Session { model, opts: SessionOptions { prefill_chunk: chunk, ..opts }, kv, s, pos: 0, logit_rows: 0, rng: None, progress: None, esa, inv_freq, attn_scale, capture: None })
    }

    /// Follow the cache rows `spec.tokens` through ESA's selection in every later chunk (None:
    /// stop); read the records with `take_esa_probe_records`. An error under dense attention.
    pub fn set_esa_probe(&mut self, spec: Option<crate::attention::ProbeSpec>) -> Result<()> {
        let ctx = self.model.ctx.clone();
        match &mut self.esa {
            Some(e) => {
                e.set_probe(&ctx, spec);
                Ok(())
            }
            None => Err(Error::arg("esa probe", "the session runs dense attention")),
        }
    }

    /// Per chunk and layer: whether the followed tokens were selected, and their rank.
    pub fn take_esa_probe_records(&mut self) -> Vec<crate::attention::ProbeRecord> {
        self.esa.as_mut().map(|e| e.take_probe_records()).unwrap_or_default()
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

    /// Report the progress of prompts (feeds of more than one token) to `p`; None reports nothing.
    /// With a reporter each prefill chunk is waited for before the next is recorded, so the count
    /// follows the GPU (one short pipeline bubble per chunk).
    pub fn set_progress(&mut self, p: Option<Arc<dyn Progress>>) {
        self.progress = p;
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
        self.reporting(tokens.len(), |s| {
            s.run_chunks(tokens, None, None)?;
            // The stage ends when the GPU is done (only while reporting: otherwise the caller's
            // read-back waits).
            if s.progress.is_some() && tokens.len() > 1 {
                s.model.ctx.sync()?;
            }
            Ok(())
        })
    }

    /// Feed `tokens` and choose the next token, in one submission per chunk; returns its id. The
    /// last submission samples on the GPU and only the id is read back.
    pub fn step(&mut self, tokens: &[u32], sampling: &Sampling) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::arg("tokens", "empty"));
        }
        sampling.validate()?;
        self.reporting(tokens.len(), |s| {
            s.run_chunks(tokens, Some(sampling), None)?;
            let b = s.model.ctx.read_staged(&s.s.token_staging, 4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })
    }

    /// Feed `tokens`, then produce up to `max_new` tokens, each fed back for the next without
    /// leaving the GPU: step N + 1 is submitted before step N's token is read, up to
    /// [`PIPELINE_DEPTH`] steps ahead, and the ids come back through a ring of mappable buffers.
    /// `on_token` sees the ids in order and returns false to stop (a stop token, enough text);
    /// steps already submitted past that point are discarded, so the context and the sampler
    /// end exactly as if each token had come from [`step`](Self::step): the prompt and every id
    /// seen but the last. Stops early when the context is full. Returns the number of ids
    /// `on_token` saw.
    pub fn generate(&mut self, tokens: &[u32], sampling: &Sampling, max_new: usize, mut on_token: impl FnMut(u32) -> Result<bool>) -> Result<usize> {
        if tokens.is_empty() {
            return Err(Error::arg("tokens", "empty"));
        }
        sampling.validate()?;
        if max_new == 0 {
            self.feed(tokens)?;
            return Ok(0);
        }
        let ctx = self.model.ctx.clone();
        let start = self.pos + tokens.len();
        let first = self.reporting(tokens.len(), |s| s.run_chunks(tokens, Some(sampling), Some(0)))?;
        let map = |buf: &wgpu::Buffer| {
            let (tx, rx) = std::sync::mpsc::channel();
            buf.slice(..4).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            rx
        };
        // (ring slot, submission, map result, sampler state after its draw), oldest first
        type InFlight = (usize, wgpu::SubmissionIndex, std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>, Option<SplitMix>);
        let mut in_flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
        if let Some(idx) = first {
            in_flight.push_back((0, idx, map(&self.s.ring[0]), self.rng.clone()));
        }
        let mut submitted = 1;
        let mut seen: Vec<u32> = Vec::new();
        let mut rng = self.rng.clone();
        let result = (|| -> Result<()> {
            loop {
                while submitted < max_new && in_flight.len() < PIPELINE_DEPTH && self.pos < self.opts.max_context {
                    let slot = submitted % PIPELINE_DEPTH;
                    let mut rec = Recorder::new(&ctx);
                    self.record_chunk(&mut rec, Ids::Sampled, None)?;
                    self.record_sample(&mut rec, sampling)?;
                    rec.copy(&self.s.token, 0, &self.s.ring[slot], 0, 4);
                    let idx = rec.submit()?;
                    in_flight.push_back((slot, idx, map(&self.s.ring[slot]), self.rng.clone()));
                    submitted += 1;
                }
                let Some((slot, idx, rx, rng_after)) = in_flight.pop_front() else { return Ok(()) };
                ctx.device
                    .poll(wgpu::PollType::Wait { submission_index: Some(idx), timeout: None })
                    .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
                rx.recv()
                    .map_err(|_| Error::Gpu("map callback dropped".into()))?
                    .map_err(|e| Error::Gpu(format!("mapping the token ring: {e}")))?;
                let b = self.s.ring[slot].slice(..4).get_mapped_range().map_err(|e| Error::Gpu(format!("mapping the token ring: {e:?}")))?[..4].to_vec();
                self.s.ring[slot].unmap();
                let tok = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                seen.push(tok);
                rng = rng_after;
                if !on_token(tok)? {
                    return Ok(());
                }
            }
        })();
        // Steps submitted past the last token seen: wait for them and release their ring slots.
        if !in_flight.is_empty() {
            let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
            for (slot, _, rx, _) in in_flight.drain(..) {
                if let Ok(Ok(())) = rx.recv() {
                    self.s.ring[slot].unmap();
                }
            }
        }
        // The context: the prompt and every token seen but the last (which was never fed).
        let keep = start + seen.len().saturating_sub(1);
        if keep < self.pos {
            self.pos = keep;
            self.logit_rows = 0; // the logits are a discarded step's
        }
        self.rng = rng;
        ctx.check()?;
        result.map(|_| seen.len())
    }

    /// Run `f` as one "prompt" stage of the progress reporter when there is one and `n_tokens > 1`
    /// (decode steps are not reported).
    fn reporting<T>(&mut self, n_tokens: usize, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let progress = self.progress.clone().filter(|_| n_tokens > 1);
        if let Some(p) = &progress {
            // One chunk is one submission with nothing to count: a spinner and the time.
            if n_tokens > self.opts.prefill_chunk {
                p.start("prompt", n_tokens as u64, Unit::Tokens);
            } else {
                p.start(&format!("prompt of {n_tokens} tokens"), 0, Unit::Tokens);
            }
        }
        let result = f(self);
        if let Some(p) = &progress {
            p.finish();
        }
        result
    }

    /// How a feed of `n` tokens is split into forward passes: chunks of `prefill_chunk`, and under
    /// ESA with a query-aware final chunk (`EsaConfig::final_chunk`) the last tokens on their own.
    pub fn chunk_ranges(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        match &self.esa {
            Some(e) => crate::attention::EsaConfig { chunk: self.opts.prefill_chunk, ..e.cfg }.chunk_ranges(n),
            None => (0..n).step_by(self.opts.prefill_chunk).map(|s| s..(s + self.opts.prefill_chunk).min(n)).collect(),
        }
    }

    /// One submission per prefill chunk; with `sampling`, the last one also samples the next token
    /// and copies it to `read_back` (else the staging buffer). While a progress reporter is set,
    /// every chunk but the last is waited for and reported. Returns the last submission.
    fn run_chunks(&mut self, tokens: &[u32], sampling: Option<&Sampling>, read_back: Option<usize>) -> Result<Option<wgpu::SubmissionIndex>> {
        self.check_room(tokens.len())?;
        let progress = self.progress.clone().filter(|_| tokens.len() > 1);
        let ranges = self.chunk_ranges(tokens.len());
        let n_chunks = ranges.len();
        let mut done = 0;
        let mut submitted = None;
        for (i, chunk) in ranges.into_iter().map(|r| &tokens[r]).enumerate() {
            let ctx = self.model.ctx.clone();
            let mut rec = Recorder::new(&ctx);
            self.record_chunk(&mut rec, Ids::Host(chunk), None)?;
            let last = i + 1 == n_chunks;
            if let (Some(s), true) = (sampling, last) {
                self.record_sample(&mut rec, s)?;
                let dst = match read_back {
                    Some(slot) => &self.s.ring[slot],
                    None => &self.s.token_staging,
                };
                rec.copy(&self.s.token, 0, dst, 0, 4);
            }
            submitted = Some(rec.submit()?);
            if let Some(e) = &mut self.esa {
                e.collect_probe(&ctx, self.pos - chunk.len(), chunk.len())?;
            }
            done += chunk.len();
            if let (Some(p), false) = (&progress, last) {
                ctx.sync()?;
                p.update(done as u64);
            }
        }
        Ok(submitted)
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
                self.record_chunk(&mut rec, Ids::Host(chunk), Some(&cap))?;
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

    /// One uniform per sampled token (greedy ones too), reproducible from the seed.
    fn next_uniform(&mut self, s: &Sampling) -> f32 {
        self.rng.get_or_insert_with(|| SplitMix::new(s.seed)).uniform()
    }

    fn record_sample(&mut self, rec: &mut Recorder, s: &Sampling) -> Result<()> {
        let u = self.next_uniform(s);
        let v = self.model.cfg.vocab_size;
        // the penalty's window: the last repeat_last_n ids of the context, this chunk's included
        let n = if s.penalises() { s.repeat_last_n.min(self.pos) } else { 0 };
        let io = sampling::SampleIo {
            logits: &BufRef::from(&self.s.logits),
            offset: (self.logit_rows - 1) * v,
            vocab: v,
            hist: &BufRef::from(&self.s.hist_ids),
            recent: self.pos - n..self.pos,
            scratch: &BufRef::from(&self.s.sample_scratch),
            out: &BufRef::from(&self.s.token),
        };
        sampling::sample(rec, &io, s, u)
    }

    /// `capture`: copy each layer's QKV rows there, packed (`feed_capturing`).
    fn record_chunk(&mut self, rec: &mut Recorder, ids: Ids, capture: Option<&wgpu::Buffer>) -> Result<()> {
        let m = self.model.clone();
        let c = &m.cfg;
        let (h, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let qkv_rows = qd + 2 * kvd;
        let (ids_buf, n) = match ids {
            Ids::Host(tokens) => {
                if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return Err(Error::arg("tokens", format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
                }
                m.ctx.write(&self.s.ids, 0, bytemuck::cast_slice(tokens));
                m.ctx.write(&self.s.hist_ids, (self.pos * 4) as u64, bytemuck::cast_slice(tokens));
                (BufRef::from(&self.s.ids), tokens.len())
            }
            Ids::Sampled => {
                rec.copy(&self.s.token, 0, &self.s.hist_ids, (self.pos * 4) as u64, 4);
                (BufRef::from(&self.s.token), 1)
            }
        };
        embed::embed_rows(rec, m.embedding_table(), &ids_buf, 0, n, &BufRef::from(&self.s.x), h)?;
        // `small`: the linear layers take the matvec path with the RMSNorm fused in: a few tokens,
        // or any chunk on a CPU adapter (whose one linear kernel takes every token count).
        let small = n <= linear::MATVEC_MAX_TOKENS || linear::cpu_variant(&m.ctx);
        let (x, xn, qkv, q, attn, mlp) = (
            BufRef::from(&self.s.x),
            BufRef::from(&self.s.xn),
            BufRef::from(&self.s.qkv),
            BufRef::from(&self.s.q),
            BufRef::from(&self.s.attn),
            BufRef::from(&self.s.mlp),
        );
        let io = |x: &BufRef, xs: usize, y: &BufRef, ys: usize, row0: usize| LinearIo { x: x.clone(), x_off: 0, x_stride: xs, x_f16: false, y: y.clone(), y_stride: ys, y_row0: row0, n_tok: n };
        let x16 = self.s.x_f16.as_ref().map(BufRef::from);
        // A decode step on a GPU: the attention kernel rotates and appends itself (dense: either
        // GPU kernel; ESA: where attention_gqa runs).
        let fused = n == 1 && !linear::cpu_variant(&m.ctx) && self.esa.as_ref().is_none_or(|_| EsaState::decode_fused_supported(&m.ctx, c));
        for (l, layer) in m.layers.iter().enumerate() {
            // Attention block: x += O(attn(rope(QKV(norm(x)))))
            let xn_in = if small { None } else { Some(normed_input(rec, &io(&x, h, &qkv, qkv_rows, 0), &xn, x16.as_ref(), &layer.attn_norm, c.rms_norm_eps)?) };
            for (w, row0) in &layer.qkv.parts {
                match &xn_in {
                    None => linear::matvec(rec, w, &io(&x, h, &qkv, qkv_rows, *row0), Epilogue::Store, Some((&layer.attn_norm, c.rms_norm_eps)))?,
                    Some(xi) => linear::matmul(rec, w, &LinearIo { y_row0: *row0, ..xi.clone() }, Epilogue::Store)?,
                }
            }
            if let Some(cap) = capture {
                let bytes = (n * qkv_rows * 4) as u64;
                rec.copy(&self.s.qkv, 0, cap, l as u64 * bytes, bytes);
            }
            let (kc, vc) = (BufRef::from(&self.kv[l].0), BufRef::from(&self.kv[l].1));
            if !fused {
                rope_kv::rope_kv(rec, &rope_kv::RopeKv {
                    qkv: &qkv,
                    qkv_stride: qkv_rows,
                    q_out: &q,
                    k_cache: &kc,
                    v_cache: &vc,
                    inv_freq: &self.inv_freq,
                    n_tok: n,
                    n_heads: c.num_heads,
                    n_kv: c.num_kv_heads,
                    head_dim: c.head_dim,
                    pos0: self.pos,
                })?;
            }
            let dense = attention::Attend {
                q: if fused { &qkv } else { &q },
                k_cache: &kc,
                v_cache: &vc,
                inv_freq: &self.inv_freq,
                part: &BufRef::from(&self.s.part),
                out: &attn,
                counters: &BufRef::from(&self.s.attn_counters),
                n_q: n,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                pos0: self.pos,
                scale: self.attn_scale,
            };
            match &self.esa {
                Some(esa) => {
                    let counters = BufRef::from(&self.s.attn_counters);
                    esa.attend(rec, l, c, &qkv, &kc, &vc, &self.inv_freq, self.attn_scale, &attn, n, self.pos, fused.then_some(&counters))?
                }
                None if fused => attention::attend_fused(rec, &dense)?,
                None => attention::attend(rec, &dense)?,
            }
            if small {
                linear::matvec(rec, &layer.o, &io(&attn, qd, &x, h, 0), Epilogue::Accumulate, None)?;
            } else {
                let a = pack_f16::pack_if(rec, &io(&attn, qd, &x, h, 0), qd, x16.as_ref())?;
                linear::matmul(rec, &layer.o, &a, Epilogue::Accumulate)?;
            }
            // MLP block: x += down(silu(gate(norm(x))) * up(norm(x)))
            if small {
                linear::matvec(rec, &layer.gate_up, &io(&x, h, &mlp, c.intermediate_size, 0), Epilogue::SwiGlu, Some((&layer.mlp_norm, c.rms_norm_eps)))?;
            } else {
                let xi = normed_input(rec, &io(&x, h, &mlp, c.intermediate_size, 0), &xn, x16.as_ref(), &layer.mlp_norm, c.rms_norm_eps)?;
                linear::matmul(rec, &layer.gate_up, &xi, Epilogue::SwiGlu)?;
            }
            if small {
                linear::matvec(rec, &layer.down, &io(&mlp, c.intermediate_size, &x, h, 0), Epilogue::Accumulate, None)?;
            } else {
                let mi = pack_f16::pack_if(rec, &io(&mlp, c.intermediate_size, &x, h, 0), c.intermediate_size, x16.as_ref())?;
                linear::matmul(rec, &layer.down, &mi, Epilogue::Accumulate)?;
            }
        }
        // Final norm + LM head: the last token, or all of them for evaluation.
        let logits = BufRef::from(&self.s.logits);
        if self.opts.all_logits {
            norm::rmsnorm(rec, &x, &xn, &m.final_norm, h, h, n, c.rms_norm_eps)?;
            linear::linear(rec, &m.lm_head, &io(&xn, h, &logits, c.vocab_size, 0), Epilogue::Store)?;
            self.logit_rows = n;
        } else {
            let last = LinearIo { x: x.clone(), x_off: (n - 1) * h, x_stride: h, x_f16: false, y: logits, y_stride: c.vocab_size, y_row0: 0, n_tok: 1 };
            linear::matvec(rec, &m.lm_head, &last, Epilogue::Store, Some((&m.final_norm, c.rms_norm_eps)))?;
            self.logit_rows = 1;
        }
        self.pos += n;
        Ok(())
    }
}
