//! Decode and prefill throughput of a model: prints a table of tokens/s and the weight bandwidth
//! it implies (decode reads every weight byte once per token).
//!
//!   cargo run --release --example bench -- [--model PATH] [--prompt-tokens 512] [--decode-tokens 128]

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use std::sync::Arc;

use esa_wgpu::model::gpu_model::GpuModel;
use esa_wgpu::model::host::TensorFormat;
use esa_wgpu::model::synthetic::SyntheticModel;
use esa_wgpu::session::Session;
use esa_wgpu::{Engine, GpuOptions, Sampling, SessionOptions};

#[derive(Parser, Debug)]
struct Args {
    /// GGUF file or HF folder (default: the default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Random weights of a real shape instead of a file: smollm2-135m, llama3-8b, tiny.
    #[arg(long)]
    synthetic: Option<String>,
    /// Weight format for --synthetic: f16, bf16, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f16")]
    format: String,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Repeat the measurement this many times and report the best.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

fn main() -> esa_wgpu::Result<()> {
    let args = Args::parse();
    let engine = Engine::new(&GpuOptions::default())?;
    eprintln!("gpu: {}", engine.context().describe());
    let t_load = Instant::now();
    let (gpu, label) = match &args.synthetic {
        Some(name) => {
            let format = match args.format.as_str() {
                "f16" => TensorFormat::F16,
                "bf16" => TensorFormat::BF16,
                "q8_0" => TensorFormat::Q8_0,
                "q4_0" => TensorFormat::Q4_0,
                "q4_1" => TensorFormat::Q4_1,
                f => return Err(esa_wgpu::Error::arg("format", format!("unknown `{f}`"))),
            };
            let src = SyntheticModel::new(name, format)?;
            (Arc::new(GpuModel::load(engine.context().clone(), Box::new(src))?), format!("synthetic {name} {format:?}"))
        }
        None => {
            let path = match &args.model {
                Some(p) => p.clone(),
                None => esa_wgpu::fetch::default_model_path()?,
            };
            (engine.load(&path)?.gpu, path.display().to_string())
        }
    };
    eprintln!("loaded in {:.1}s", t_load.elapsed().as_secs_f64());
    let c = gpu.cfg.clone();
    let max_context = args.prompt_tokens + args.decode_tokens + 1;
    let mut session = Session::new(gpu.clone(), SessionOptions { max_context, prefill_chunk: args.prefill_chunk, all_logits: false, ..Default::default() })?;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| (i * 7919 + 11) % c.vocab_size as u32).collect();
    let mut best_prefill = f64::MAX;
    let mut best_decode = f64::MAX;
    for _ in 0..args.repeats.max(1) {
        session.reset();
        let t = Instant::now();
        let mut tok = session.step(&prompt, &Sampling::greedy())?;
        best_prefill = best_prefill.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..args.decode_tokens {
            tok = session.step(&[tok], &Sampling::greedy())?;
        }
        best_decode = best_decode.min(t.elapsed().as_secs_f64());
    }
    let gb = gpu.gpu_bytes as f64 / 1e9;
    let dec_tps = args.decode_tokens as f64 / best_decode;
    println!("model        {label}");
    println!("adapter      {}", engine.context().info.name);
    println!("weights      {:.3} GB on the GPU", gb);
    println!("| phase   | tokens | seconds | tokens/s | weight GB/s |");
    println!("|---------|--------|---------|----------|-------------|");
    println!("| prefill | {:6} | {:7.3} | {:8.1} |           - |", args.prompt_tokens, best_prefill, args.prompt_tokens as f64 / best_prefill);
    println!("| decode  | {:6} | {:7.3} | {:8.1} | {:11.1} |", args.decode_tokens, best_decode, dec_tps, dec_tps * gb);
    Ok(())
}
