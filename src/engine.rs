//! The public API an app embeds: pick a GPU, load a model (GGUF file or HF folder), open a chat
//! session and stream a reply.
//!
//! ```no_run
//! use esa_wgpu::{Engine, GpuOptions, Message, Sampling, SessionOptions};
//! let engine = Engine::new(&GpuOptions::default())?;
//! let model = engine.load("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let mut chat = model.chat(SessionOptions::default())?;
//! let reply = chat.reply(&[Message::user("Hello!")], &Sampling::default(), 64, |piece| print!("{piece}"))?;
//! # Ok::<(), esa_wgpu::Error>(())
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::chat_template::{ChatTemplate, Message};
use crate::gpu::{GpuContext, GpuOptions};
use crate::model::gguf::GgufModel;
use crate::model::gpu_model::GpuModel;
use crate::model::host::WeightSource;
use crate::model::safetensors_loader::SafetensorsModel;
use crate::progress::Progress;
use crate::session::{Sampling, Session, SessionOptions};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub struct Engine {
    ctx: Arc<GpuContext>,
    progress: Option<Arc<dyn Progress>>,
}

impl Engine {
    pub fn new(opts: &GpuOptions) -> Result<Engine> {
        Ok(Engine { ctx: GpuContext::new(opts)?, progress: None })
    }

    pub fn with_context(ctx: Arc<GpuContext>) -> Engine {
        Engine { ctx, progress: None }
    }

    /// Report model loads, and the prompts of the models' sessions, to `p` (e.g.
    /// `esa_wgpu::Bars::new(false)` for bars on stderr). Without it nothing is reported.
    pub fn with_progress(mut self, p: Arc<dyn Progress>) -> Engine {
        self.progress = Some(p);
        self
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Load a model: a `.gguf` file, or a Hugging Face folder (config.json, *.safetensors,
    /// tokenizer.json).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "model path does not exist")));
        }
        let (source, tokenizer): (Box<dyn WeightSource + Send + Sync>, Tokenizer) = if path.is_dir() {
            let src = SafetensorsModel::open(path)?;
            let tok = Tokenizer::from_hf_dir(path)?;
            (Box::new(src), tok)
        } else {
            let src = GgufModel::open(path)?;
            let tok = Tokenizer::from_gguf(&src.tokenizer_spec()?)?;
            (Box::new(src), tok)
        };
        let template = tokenizer.chat_template()?;
        let (sampling, sampling_source) = default_sampling(path)?;
        let gpu = match &self.progress {
            Some(p) => GpuModel::load_with_progress(self.ctx.clone(), source, p.as_ref())?,
            None => GpuModel::load(self.ctx.clone(), source)?,
        };
        Ok(Model {
            gpu: Arc::new(gpu),
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            sampling,
            sampling_source,
            progress: self.progress.clone(),
        })
    }
}

/// The sampling a model is best run with, and where it comes from: the folder's
/// `generation_config.json` when it sets sampling fields (Hugging Face folders); for the default
/// model (`fetch::DEFAULT_MODEL_FILE`) its model card's temperature 0.2, top-p 0.9
/// (`Sampling::default`); otherwise llama.cpp's defaults (`Sampling::llama_cpp`).
pub fn default_sampling(path: &Path) -> Result<(Sampling, String)> {
    let gen = path.join("generation_config.json");
    if path.is_dir() && gen.is_file() {
        let text = std::fs::read_to_string(&gen).map_err(|e| Error::io(&gen, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&gen, e.to_string()))?;
        if let Some(s) = Sampling::from_generation_config(&v) {
            return Ok((s, format!("{}", gen.display())));
        }
    }
    if path.file_name().is_some_and(|n| n == crate::fetch::DEFAULT_MODEL_FILE) {
        return Ok((Sampling::default(), "SmolLM2's model card".into()));
    }
    Ok((Sampling::llama_cpp(), "llama.cpp's defaults".into()))
}

/// A loaded model: weights on the GPU, tokenizer, chat template. Cheap to clone; sessions share it.
#[derive(Clone)]
pub struct Model {
    pub gpu: Arc<GpuModel>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    sampling: Sampling,
    sampling_source: String,
    progress: Option<Arc<dyn Progress>>,
}

impl Model {
    pub fn config(&self) -> &crate::model::config::Config {
        &self.gpu.cfg
    }

    /// The sampling this model is best run with (see `default_sampling`); change the seed per run.
    pub fn default_sampling(&self) -> Sampling {
        self.sampling
    }

    /// Where `default_sampling` comes from, for logs.
    pub fn default_sampling_source(&self) -> &str {
        &self.sampling_source
    }

    /// A session; it reports its prompts to the engine's progress reporter, if any.
    pub fn session(&self, opts: SessionOptions) -> Result<Session> {
        let mut s = Session::new(self.gpu.clone(), opts)?;
        s.set_progress(self.progress.clone());
        Ok(s)
    }

    pub fn chat(&self, opts: SessionOptions) -> Result<Chat> {
        Ok(Chat { model: self.clone(), session: self.session(opts)?, context: Vec::new() })
    }

    fn is_stop(&self, id: u32) -> bool {
        self.tokenizer.is_eos(id) || self.gpu.cfg.eos_token_ids.contains(&id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-turn token.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The session's context is full.
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens that had to be run (the rest were reused from the KV cache).
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub finish: FinishReason,
}

impl Reply {
    pub fn decode_tokens_per_sec(&self) -> f64 {
        if self.decode_secs > 0.0 { self.tokens.len().saturating_sub(1) as f64 / self.decode_secs } else { 0.0 }
    }
}

/// A conversation on one session. Each turn renders the whole conversation with the chat
/// template and reuses the KV cache for the prefix it shares with the previous turn.
pub struct Chat {
    model: Model,
    session: Session,
    /// Token ids currently in the session's KV cache.
    context: Vec<u32>,
}

impl Chat {
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Generate the assistant's reply to `messages` (the whole conversation so far), streaming
    /// text pieces to `on_piece` as they complete.
    pub fn reply(&mut self, messages: &[Message], sampling: &Sampling, max_tokens: usize, on_piece: impl FnMut(&str)) -> Result<Reply> {
        let prompt = self.model.template.render(messages, true)?;
        let ids = self.model.tokenizer.encode(&prompt, false)?;
        self.complete_ids(&ids, sampling, max_tokens, on_piece)
    }

    /// Continue plain text (no chat template); BOS is added if the tokenizer asks for it.
    pub fn complete(&mut self, text: &str, sampling: &Sampling, max_tokens: usize, on_piece: impl FnMut(&str)) -> Result<Reply> {
        let ids = self.model.tokenizer.encode(text, true)?;
        self.complete_ids(&ids, sampling, max_tokens, on_piece)
    }

    /// Generate after the prompt `ids`.
    pub fn complete_ids(&mut self, ids: &[u32], sampling: &Sampling, max_tokens: usize, mut on_piece: impl FnMut(&str)) -> Result<Reply> {
        if ids.is_empty() {
            return Err(Error::arg("prompt", "empty prompt"));
        }
        let max_ctx = self.session.max_context();
        if ids.len() >= max_ctx {
            return Err(Error::ContextFull { tokens: ids.len(), used: 0, max_context: max_ctx });
        }
        // Reuse the cached prefix (at least one token must be run to get logits).
        let mut keep = self.context.iter().zip(ids).take_while(|(a, b)| a == b).count();
        keep = keep.min(ids.len() - 1);
        self.session.truncate(keep);
        self.context.truncate(keep);
        // Decode is pipelined (`Session::generate`): the GPU runs ahead of this loop by a few
        // steps, and a stop token ends it at most that many steps late (they are discarded).
        let t0 = Instant::now();
        let mut t1 = None;
        let mut out = Vec::new();
        let mut text = String::new();
        let mut stream = self.model.tokenizer.stream();
        let mut finish = FinishReason::ContextFull;
        let model = &self.model;
        self.session.generate(&ids[keep..], sampling, max_tokens.max(1), |tok| {
            t1.get_or_insert_with(Instant::now);
            if model.is_stop(tok) {
                finish = FinishReason::Stop;
                return Ok(false);
            }
            out.push(tok);
            if let Some(piece) = stream.push(tok) {
                on_piece(&piece);
                text.push_str(&piece);
            }
            if out.len() >= max_tokens {
                finish = FinishReason::Length;
                return Ok(false);
            }
            Ok(true)
        })?;
        let t1 = t1.unwrap_or_else(Instant::now);
        let prefill_secs = (t1 - t0).as_secs_f64();
        // The cache holds the prompt and the first `fed` tokens produced.
        let fed = self.session.position() - ids.len();
        self.context.extend_from_slice(&ids[keep..]);
        self.context.extend_from_slice(&out[..fed]);
        if let Some(piece) = stream.flush() {
            on_piece(&piece);
            text.push_str(&piece);
        }
        Ok(Reply {
            text,
            tokens: out,
            prompt_tokens: ids.len(),
            prefill_tokens: ids.len() - keep,
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
            finish,
        })
    }
}
