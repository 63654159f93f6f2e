//! Interactive streaming chat (or one `--prompt` for scripts).
//!
//!   cargo run --release --example chat                     # default model (SmolLM2-135M-Instruct)
//!   cargo run --release --example chat -- --model DIR_OR_GGUF --temperature 0.7
//!   cargo run --release --example chat -- --prompt "Why is the sky blue?"

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Parser;
use esa_wgpu::{Engine, FinishReason, GpuOptions, Message, Sampling, SessionOptions};

#[derive(Parser, Debug)]
#[command(about = "Chat with a Llama/Mistral-family model on any GPU through wgpu")]
struct Args {
    /// GGUF file or Hugging Face model folder. Default: SmolLM2-135M-Instruct (Q4_1), fetched on first run.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
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
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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
    let max_context = args.max_context.min(c.max_position_embeddings.max(1));
    let mut chat = model.chat(SessionOptions { max_context, ..Default::default() })?;
    let sampling = Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
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
