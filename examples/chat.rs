//! Interactive streaming chat (or one `--prompt` for scripts).
//!
//!   cargo run --release --example chat                     # default model (SmolLM2-135M-Instruct)
//!   cargo run --release --example chat -- --model DIR_OR_GGUF --temperature 0.2
//!   cargo run --release --example chat -- --prompt "Why is the sky blue?"
//!   cargo run --release --example chat -- --attention esa --esa-maps auto   # calibrated maps, d' 128

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Parser;
use esa_wgpu::calibrate;
use indicatif::{ProgressBar, ProgressStyle};
use esa_wgpu::{Attention, Engine, EsaConfig, EsaOptions, FinishReason, GpuOptions, Message, Sampling, SessionOptions};

#[derive(Parser, Debug)]
#[command(about = "Chat with a Llama/Mistral-family model on any GPU through wgpu")]
struct Args {
    /// GGUF file or Hugging Face model folder. Default: SmolLM2-135M-Instruct (Q4_1), fetched on first run.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Most tokens per reply (a chat answer; replies also stop at the template's end of turn).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy. The default (with --top-p 0.9) is what SmolLM2's model card uses.
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Sampling seed; by default a new one each run (as llama.cpp does), so a sampled answer is
    /// not pinned to one draw. Give one to reproduce a reply.
    #[arg(long)]
    seed: Option<u64>,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Answer this one prompt and exit (non-interactive).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens of context the session holds.
    #[arg(long, default_value_t = 8192)]
    max_context: usize,
    /// Backend: vulkan, metal, dx12, gl (also ESA_WGPU_BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Substring of the adapter name to use (also ESA_WGPU_ADAPTER).
    #[arg(long)]
    adapter: Option<String>,
    /// Attention policy: dense, or esa (Efficient Selective Attention for long contexts).
    #[arg(long, default_value = "dense")]
    attention: String,
    /// ESA: initial tokens always attended.
    #[arg(long, default_value_t = 128)]
    esa_init: usize,
    /// ESA: local window.
    #[arg(long, default_value_t = 4096)]
    esa_local: usize,
    /// ESA: middle tokens selected per chunk and layer.
    #[arg(long, default_value_t = 2048)]
    esa_top_k: usize,
    /// ESA: prefill chunk.
    #[arg(long, default_value_t = 512)]
    esa_chunk: usize,
    /// ESA: proximity pooling radius.
    #[arg(long, default_value_t = 1)]
    esa_eps: usize,
    /// ESA: position of long-distance queries (default: --esa-local).
    #[arg(long)]
    esa_w: Option<usize>,
    /// ESA: calibrated compression maps (safetensors), or `auto`: calibrate this model once on
    /// the default text (or --esa-calibration-text) and cache the maps beside the models.
    /// Default: exact maps (width n_kv * head_dim).
    #[arg(long)]
    esa_maps: Option<PathBuf>,
    /// ESA: compressed width d' of `--esa-maps auto` (at or above the exact width: exact maps).
    #[arg(long, default_value_t = 128)]
    esa_d: usize,
    /// ESA: text files to calibrate on with `--esa-maps auto` (default: /usr/share/common-licenses).
    #[arg(long, num_args = 1..)]
    esa_calibration_text: Vec<PathBuf>,
    /// ESA: most tokens `--esa-maps auto` calibrates on (fewer: faster first run on slow adapters).
    #[arg(long, default_value_t = 16_384)]
    esa_calibration_tokens: usize,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `--esa-maps auto`: the cached maps of this model, calibrating them first (with a progress bar)
/// if there are none yet.
fn auto_maps(model: &esa_wgpu::Model, config: &EsaConfig, text: &[PathBuf], max_tokens: usize) -> esa_wgpu::Result<Option<PathBuf>> {
    let mut opts = calibrate::AutoOptions { max_tokens, ..calibrate::AutoOptions::new(config.d_compressed, config.long_distance_query_pos()) };
    if !text.is_empty() {
        let mut t = String::new();
        for f in text {
            t.push_str(&std::fs::read_to_string(f).map_err(|e| esa_wgpu::Error::io(f, e))?);
            t.push_str("\n\n");
        }
        opts.text = Some((t, text.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")));
    }
    let cached = calibrate::cached_maps_path(&model.gpu, opts.d_compressed, opts.w)?;
    if !cached.is_file() && opts.d_compressed < model.config().kv_dim() {
        eprintln!("calibrating ESA maps (d' = {}, w = {}) on the first {} tokens of the text; cached for later runs in {}", opts.d_compressed, opts.w, opts.max_tokens, cached.display());
    }
    let pb = ProgressBar::hidden();
    pb.set_style(ProgressStyle::with_template("calibrating [{bar:40}] {pos}/{len} tokens ({elapsed}, eta {eta})").unwrap().progress_chars("=> "));
    let maps = calibrate::auto_maps(model, &opts, &mut |done, total| {
        if pb.is_hidden() {
            pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    match &maps {
        Some(p) => eprintln!("ESA maps: {}", p.display()),
        None => eprintln!("ESA maps: d' = {} is at least the exact width {}: exact maps", opts.d_compressed, model.config().kv_dim()),
    }
    Ok(maps)
}

fn run(args: Args) -> esa_wgpu::Result<()> {
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => esa_wgpu::fetch::default_model_path()?,
    };
    let engine = Engine::new(&GpuOptions { backend: args.backend.clone(), adapter: args.adapter.clone(), ..Default::default() })?;
    eprintln!("gpu: {}", engine.context().describe());
    eprintln!("loading {} ...", model_path.display());
    let model = engine.load(&model_path)?;
    let c = model.config();
    eprintln!(
        "model: {:?}, {} layers, hidden {}, {} heads / {} kv heads, vocab {}, {:.1} MiB of weights on the GPU",
        c.arch, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, model.gpu.gpu_bytes as f64 / (1 << 20) as f64
    );
    let attention = match args.attention.as_str() {
        "dense" => Attention::Dense,
        "esa" => {
            let config = EsaConfig {
                n_init: args.esa_init,
                n_local: args.esa_local,
                top_k: args.esa_top_k,
                chunk: args.esa_chunk,
                eps: args.esa_eps,
                w: args.esa_w,
                d_compressed: args.esa_d,
            };
            let maps = match &args.esa_maps {
                Some(p) if p.as_os_str() == "auto" => auto_maps(&model, &config, &args.esa_calibration_text, args.esa_calibration_tokens)?,
                other => other.clone(),
            };
            Attention::Esa(EsaOptions { config, maps })
        }
        other => return Err(esa_wgpu::Error::arg("--attention", format!("`{other}`: use dense or esa"))),
    };
    // Dense attention stays within the trained context; ESA is what goes past it.
    let max_context = match attention {
        Attention::Dense if args.max_context > c.max_position_embeddings => {
            eprintln!("note: --max-context {} is past the trained {}; use --attention esa to go further", args.max_context, c.max_position_embeddings);
            c.max_position_embeddings
        }
        _ => args.max_context,
    };
    let mut chat = model.chat(SessionOptions { max_context, attention, ..Default::default() })?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(42, |d| d.as_nanos() as u64)
    });
    let sampling = Sampling { temperature: args.temperature, top_p: args.top_p, seed };
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::system(s.clone()));
    }
    let mut turn = |messages: &mut Vec<Message>, text: String| -> esa_wgpu::Result<()> {
        messages.push(Message::user(text));
        let mut out = std::io::stdout();
        let reply = chat.reply(messages, &sampling, args.max_tokens, |piece| {
            print!("{piece}");
            let _ = out.flush();
        })?;
        println!();
        eprintln!(
            "[{} prompt tokens ({} new) in {:.2}s, {} tokens at {:.1} tokens/s{}]",
            reply.prompt_tokens,
            reply.prefill_tokens,
            reply.prefill_secs,
            reply.tokens.len(),
            reply.decode_tokens_per_sec(),
            match reply.finish {
                FinishReason::Stop => "",
                FinishReason::Length => ", stopped at --max-tokens",
                FinishReason::ContextFull => ", context full",
            }
        );
        messages.push(Message::assistant(reply.text));
        Ok(())
    };
    if let Some(p) = &args.prompt {
        return turn(&mut messages, p.clone());
    }
    eprintln!("type a message (empty line or Ctrl-D to quit)");
    let stdin = std::io::stdin();
    loop {
        print!("> ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(|e| esa_wgpu::Error::io("<stdin>", e))? == 0 {
            break;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Err(e) = turn(&mut messages, line) {
            // A too-long conversation is reported, not fatal: start over.
            eprintln!("error: {e}");
            messages.clear();
            if let Some(s) = &args.system {
                messages.push(Message::system(s.clone()));
            }
        }
    }
    Ok(())
}
