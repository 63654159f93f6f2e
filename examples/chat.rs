//! Interactive streaming chat (or one `--prompt` for scripts).
//!
//!   cargo run --release --example chat                     # default model (SmolLM2-135M-Instruct)
//!   cargo run --release --example chat -- --model DIR_OR_GGUF --temperature 0.2
//!   cargo run --release --example chat -- --prompt "Why is the sky blue?"
//!   cargo run --release --example chat -- --attention esa   # maps calibrated on first use (--esa-maps auto)
//!   cargo run --release --example chat -- --attention esa --esa-maps exact   # exact maps, no calibration

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Parser;

#[path = "common/esa_args.rs"]
mod esa_args;
use esa_args::EsaArgs;
use esa_wgpu::calibrate;
use indicatif::{ProgressBar, ProgressStyle};
use esa_wgpu::{Attention, Bars, Engine, EsaConfig, EsaOptions, FinishReason, GpuOptions, Message, Sampling, SessionOptions};

#[derive(Parser, Debug)]
#[command(about = "Chat with a Llama/Mistral-family model on any GPU through wgpu")]
struct Args {
    /// GGUF file or Hugging Face model folder. Default: SmolLM2-135M-Instruct (Q4_1), fetched on first run.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Most tokens per reply (a chat answer; replies also stop at the template's end of turn).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy. Defaults for every sampling flag: the model folder's generation_config.json
    /// when it has one; for the default model its model card's (temperature 0.2, top-p 0.9);
    /// otherwise llama.cpp's (0.8, top-k 40, top-p 0.95, min-p 0.05).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens holding this much probability (1 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep only tokens at least P times as likely as the most likely one (0 = off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty on the last --repeat-last-n tokens (1 = off, the default; 1.1 is a
    /// common choice).
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// Window of the repetition penalty in tokens (64; 0 = off, -1 = the whole context).
    #[arg(long, allow_negative_numbers = true)]
    repeat_last_n: Option<i64>,
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
    #[command(flatten)]
    esa: EsaArgs,
    /// RoPE scaling in place of the model's own: `yarn` (with --rope-factor), or `none` for the
    /// model's. E.g. `--rope-scaling yarn --rope-factor 4` runs an 8k-trained model at 32k.
    #[arg(long, default_value = "none")]
    rope_scaling: String,
    /// Factor of --rope-scaling yarn (context length / the trained one).
    #[arg(long, default_value_t = 4.0)]
    rope_factor: f32,
    /// Original (trained) context of --rope-scaling yarn (default: the model's
    /// max_position_embeddings).
    #[arg(long)]
    rope_original_context: Option<usize>,
    /// ESA: calibrated compression maps (safetensors); `auto`: calibrate this model once on the
    /// default text (or --esa-calibration-text), choosing the width by recall, and cache the maps
    /// beside the models; `exact`: exact maps of width n_kv * head_dim (no calibration).
    #[arg(long, default_value = "auto")]
    esa_maps: PathBuf,
    /// Print only the reply: no progress bars, no adapter, model or speed lines (errors still go
    /// to stderr). Bars are also left out when stderr is not a terminal.
    #[arg(long, short)]
    quiet: bool,
    /// ESA: compressed width d' of `--esa-maps auto` (at or above the exact width: exact maps).
    /// Default: the smallest width whose maps keep recall@2048 >= 0.9 in 90% of the layers on
    /// held-out text (chosen on the first run, then cached).
    #[arg(long)]
    esa_d: Option<usize>,
    /// ESA: text files to calibrate on with `--esa-maps auto` (default: /usr/share/common-licenses).
    #[arg(long, num_args = 1..)]
    esa_calibration_text: Vec<PathBuf>,
    /// ESA: most tokens `--esa-maps auto` calibrates on (fewer: faster first run on slow adapters).
    #[arg(long, default_value_t = 16_384)]
    esa_calibration_tokens: usize,
}

fn main() {
    // Mesa's Vulkan device-select layer (an implicit layer the Vulkan loader runs; not the
    // library's doing) looks for a Wayland display while listing devices, and libwayland prints
    // "error: XDG_RUNTIME_DIR is invalid or not set in the environment." when there is no session
    // (ssh, containers, CI). The layer only reorders devices, and the engine picks its own, so
    // where that lookup cannot succeed this app turns the layer off, before any thread starts.
    // The library sets nothing process-wide; README ("Picking a GPU") says what embedders can do.
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| std::path::Path::new(d).is_dir());
    if runtime_dir.is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `--esa-maps auto`: the cached maps of this model, calibrating them first (with a progress bar)
/// if there are none yet.
fn auto_maps(model: &esa_wgpu::Model, config: &EsaConfig, d: Option<usize>, text: &[PathBuf], max_tokens: usize) -> esa_wgpu::Result<Option<PathBuf>> {
    let mut opts = calibrate::AutoOptions { max_tokens, ..calibrate::AutoOptions::new(d.unwrap_or(0), config.long_distance_query_pos()) };
    if !text.is_empty() {
        let mut t = String::new();
        for f in text {
            t.push_str(&std::fs::read_to_string(f).map_err(|e| esa_wgpu::Error::io(f, e))?);
            t.push_str("\n\n");
        }
        opts.text = Some((t, text.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")));
    }
    if opts.d_compressed == 0 {
        let width = calibrate::cached_width_path(&model.gpu, opts.w)?;
        if !width.is_file() {
            eprintln!("choosing ESA's compressed width (the smallest with recall@2048 >= 0.9 in 90% of the layers) and calibrating its maps (w = {}) on the first {} tokens of the text; cached for later runs beside {}", opts.w, opts.max_tokens, width.display());
        }
    } else {
        let cached = calibrate::cached_maps_path(&model.gpu, opts.d_compressed, opts.w)?;
        if !cached.is_file() && opts.d_compressed < model.config().kv_dim() {
            eprintln!("calibrating ESA maps (d' = {}, w = {}) on the first {} tokens of the text; cached for later runs in {}", opts.d_compressed, opts.w, opts.max_tokens, cached.display());
        }
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
        None => eprintln!("ESA maps: exact maps (width {})", model.config().kv_dim()),
    }
    Ok(maps)
}

fn run(args: Args) -> esa_wgpu::Result<()> {
    let progress = Bars::new(args.quiet);
    // Informational lines; --quiet leaves them out.
    let info = |line: String| {
        if !args.quiet {
            eprintln!("{line}");
        }
    };
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => esa_wgpu::fetch::default_model_path_with(progress.as_ref())?,
    };
    let engine = Engine::new(&GpuOptions { backend: args.backend.clone(), adapter: args.adapter.clone(), ..Default::default() })?.with_progress(progress.clone());
    info(format!("gpu: {}", engine.context().describe()));
    info(format!("loading {} ...", model_path.display()));
    let model = engine.load(&model_path)?;
    let c = model.config();
    info(format!(
        "model: {:?}, {} layers, hidden {}, {} heads / {} kv heads, vocab {}, {:.1} MiB of weights on the GPU",
        c.arch, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, model.gpu.gpu_bytes as f64 / (1 << 20) as f64
    ));
    let attention = match args.attention.as_str() {
        "dense" => Attention::Dense,
        "esa" => {
            let config = EsaConfig { d_compressed: args.esa_d.unwrap_or(EsaConfig::default().d_compressed), ..args.esa.config() };
            let maps = match args.esa_maps.to_str() {
                Some("exact") => None,
                // The default: where there is no calibration text (not a Debian-family system and
                // no --esa-calibration-text), exact maps, with a note rather than an error.
                Some("auto") if args.esa_calibration_text.is_empty() && !std::path::Path::new(calibrate::DEFAULT_TEXT_DIR).is_dir() => {
                    info(format!("note: no calibration text in {} for `--esa-maps auto`: exact maps (pass --esa-calibration-text FILE to calibrate)", calibrate::DEFAULT_TEXT_DIR));
                    None
                }
                Some("auto") => auto_maps(&model, &config, args.esa_d, &args.esa_calibration_text, args.esa_calibration_tokens)?,
                _ => Some(args.esa_maps.clone()),
            };
            Attention::Esa(EsaOptions { config, maps })
        }
        other => return Err(esa_wgpu::Error::arg("--attention", format!("`{other}`: use dense or esa"))),
    };
    // Dense attention stays within the trained context; ESA is what goes past it.
    let max_context = match attention {
        Attention::Dense if args.max_context > c.max_position_embeddings && args.rope_scaling == "none" => {
            info(format!("note: --max-context {} is past the trained {}; use --attention esa or --rope-scaling yarn to go further", args.max_context, c.max_position_embeddings));
            c.max_position_embeddings
        }
        _ => args.max_context,
    };
    let rope_scaling = match args.rope_scaling.as_str() {
        "none" => None,
        "yarn" => Some(esa_wgpu::model::config::RopeScaling::yarn(args.rope_factor, args.rope_original_context.unwrap_or(c.max_position_embeddings))),
        other => return Err(esa_wgpu::Error::arg("--rope-scaling", format!("`{other}`: use none or yarn"))),
    };
    let mut chat = model.chat(SessionOptions { max_context, attention, rope_scaling, ..Default::default() })?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(42, |d| d.as_nanos() as u64)
    });
    let d = model.default_sampling();
    let sampling = Sampling {
        temperature: args.temperature.unwrap_or(d.temperature),
        top_p: args.top_p.unwrap_or(d.top_p),
        top_k: args.top_k.unwrap_or(d.top_k),
        min_p: args.min_p.unwrap_or(d.min_p),
        repeat_penalty: args.repeat_penalty.unwrap_or(d.repeat_penalty),
        repeat_last_n: match args.repeat_last_n {
            None => d.repeat_last_n,
            Some(n) if n < 0 => usize::MAX,
            Some(n) => n as usize,
        },
        seed,
    };
    sampling.validate()?;
    info(format!("sampling: {} (flags not given: {})", describe(&sampling), model.default_sampling_source()));
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
        info(format!(
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
        ));
        messages.push(Message::assistant(reply.text));
        Ok(())
    };
    if let Some(p) = &args.prompt {
        return turn(&mut messages, p.clone());
    }
    info("type a message (empty line or Ctrl-D to quit)".into());
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

/// The sampling settings in use, in the flags' terms.
fn describe(s: &Sampling) -> String {
    if s.temperature <= 0.0 {
        return if s.penalises() { format!("greedy, repeat-penalty {} over {}", s.repeat_penalty, window(s.repeat_last_n)) } else { "greedy".into() };
    }
    let mut parts = vec![format!("temperature {}", s.temperature)];
    if s.top_k > 0 {
        parts.push(format!("top-k {}", s.top_k));
    }
    if s.top_p < 1.0 {
        parts.push(format!("top-p {}", s.top_p));
    }
    if s.min_p > 0.0 {
        parts.push(format!("min-p {}", s.min_p));
    }
    if s.penalises() {
        parts.push(format!("repeat-penalty {} over {}", s.repeat_penalty, window(s.repeat_last_n)));
    }
    parts.push(format!("seed {}", s.seed));
    parts.join(", ")
}

fn window(n: usize) -> String {
    if n == usize::MAX { "the whole context".into() } else { format!("the last {n} tokens") }
}

#[cfg(test)]
mod cli_tests {
    /// clap's own consistency checks (duplicate ids or flags, bad defaults) on this example's flags.
    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }

    /// The README's first command parses, and the sampling and ESA budget flags of the same name
    /// (`--top-k`, `--esa-top-k`) land in their own fields.
    #[test]
    fn readme_command_and_top_k_flags_parse() {
        use clap::Parser;
        let a = super::Args::try_parse_from(["chat", "--prompt", "What is the capital of France?"]).unwrap();
        assert_eq!(a.prompt.as_deref(), Some("What is the capital of France?"));
        assert_eq!((a.top_k, a.esa.top_k), (None, 2048));
        let a = super::Args::try_parse_from(["chat", "--top-k", "5", "--esa-top-k", "7"]).unwrap();
        assert_eq!((a.top_k, a.esa.top_k), (Some(5), 7));
    }
}
