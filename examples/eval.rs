//! Long-context evaluation (issue 13): generated tasks (passkey, multi-needle, key-value retrieval,
//! counting stars, variable tracking; `esa_wgpu::eval`) over lengths and needle depths, for several
//! attention methods in one run, through the public API (`Engine`, `Model`, `Session`, greedy).
//! Prints a table; writes `results.json`, `report.md` and one heat map (depth x length) per method
//! and task as SVG into `--out`. `docs/eval.md` has results and the commands that made them.
//!
//!   cargo run --release --example eval -- --lengths 16k,32k --methods dense,esa,streaming,yarn
//!   cargo run --release --example eval -- --ci          # 4k-8k, small budget: the CI-sized run
//!
//! Methods: `dense` (only inside the trained window), `esa` (exact maps, query-aware final chunk),
//! `esa-plain` (the paper's plain chunking), `esa-maps` (calibrated maps from --esa-maps),
//! `streaming` (StreamingLLM: initial + local tokens, the window widened by top_k so the token
//! budget equals ESA's), `yarn` (dense with YaRN, factor = length / trained, only past the trained
//! window), `infllm` (block-level selection in the style of InfLLM: the same budget as ESA's
//! top_k, as whole blocks of --block-size tokens, each scored by its best token;
//! `EsaConfig::select_block`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;

#[path = "common/esa_args.rs"]
mod esa_args;
use esa_args::EsaArgs;
use esa_wgpu::attention::ProbeSpec;
use esa_wgpu::eval::{generate, score, Case, TaskKind};
use esa_wgpu::model::config::RopeScaling;
use std::sync::Arc;

use esa_wgpu::model::gguf::GgufModel;
use esa_wgpu::model::gpu_model::GpuModel;
use esa_wgpu::model::host::TensorFormat;
use esa_wgpu::model::synthetic::SyntheticModel;
use esa_wgpu::tokenizer::Tokenizer;
use esa_wgpu::{Attention, Engine, EsaConfig, EsaOptions, GpuOptions, Sampling, Session, SessionOptions};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use serde::Serialize;

#[derive(Parser, Debug, Clone)]
#[command(about = "Long-context evaluation: generated tasks x lengths x depths x attention methods")]
struct Args {
    /// GGUF file or HF folder (default: the default model, downloaded on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tasks, comma-separated: passkey, multi_needle, kv_retrieval, counting_stars,
    /// variable_tracking, or all.
    #[arg(long, default_value = "all")]
    tasks: String,
    /// Prompt lengths in tokens, comma-separated (`k` = 1024): e.g. 4k,8k,16k,32k,64k,128k.
    #[arg(long, default_value = "4k,8k")]
    lengths: String,
    /// Needle depths in 0..=1, comma-separated.
    #[arg(long, default_value = "0,0.25,0.5,0.75,1")]
    depths: String,
    /// Cases (seeds) per task, length and depth.
    #[arg(long, default_value_t = 1)]
    cases: usize,
    /// Methods, comma-separated: dense, esa, esa-plain, esa-maps, streaming, yarn, infllm.
    #[arg(long, default_value = "dense,esa,esa-plain,streaming,yarn")]
    methods: String,
    /// Tokens per block of the `infllm` method (InfLLM's memory units are 128 tokens).
    #[arg(long, default_value_t = 128)]
    block_size: usize,
    /// Calibrated ESA maps for the `esa-maps` method.
    #[arg(long)]
    esa_maps: Option<PathBuf>,
    #[command(flatten)]
    esa: EsaArgs,
    /// Trained context (dense only up to it; YaRN's factor is length / it). Default: the model's
    /// max_position_embeddings.
    #[arg(long)]
    trained: Option<usize>,
    /// Follow the needles through ESA's selection: per case, in the last chunk, how many layers
    /// selected a needle token and the best rank per layer (into results.json and the report).
    #[arg(long)]
    diagnose: bool,
    /// Base seed of the cases.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "eval_out")]
    out: PathBuf,
    /// CI-sized run: lengths 4k,8k, depth 0.5, methods dense,esa, ESA budget 32 initial, 256
    /// local, top-128, chunks of 512 (so ESA is sparse at 4k-8k), and unless --model is
    /// given a tiny random-weight model (`--synthetic tiny-smollm2-vocab`): lavapipe prefills the
    /// real SmolLM2-135M at ~20 tok/s, far too slow for CI.
    #[arg(long)]
    ci: bool,
    /// Random weights of a named shape (`esa_wgpu::model::synthetic::preset`) with the tokenizer
    /// of --model (or the default model): runs the whole pipeline fast, scores mean nothing. `--ci`
    /// uses `tiny-smollm2-vocab`.
    #[arg(long)]
    synthetic: Option<String>,
    /// Force the cooperative-matrix kernels off (as ESA_WGPU_NO_COOP=1).
    #[arg(long)]
    no_coop: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Diagnosis {
    /// Needle token positions followed.
    needle_tokens: (usize, usize),
    /// In the last chunk: layers that selected at least one needle token, of the layers that ran a
    /// selection with the needle in the middle.
    last_chunk_layers_selected: usize,
    last_chunk_layers: usize,
    /// In the last chunk, per layer: best rank of a needle token (None: not in the middle).
    last_chunk_ranks: Vec<Option<usize>>,
    /// Over all chunks and layers with the needle in the middle: the fraction that selected it.
    all_chunks_selected: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    method: String,
    task: String,
    length: usize,
    depth: f64,
    seed: u64,
    prompt_tokens: usize,
    score: f64,
    reply: String,
    answers: Vec<String>,
    prefill_secs: f64,
    decode_secs: f64,
    diagnosis: Option<Diagnosis>,
}

#[derive(Debug, Clone)]
struct Method {
    name: String,
    attention: Attention,
    yarn: bool,
    dense: bool,
}

fn parse_list<T>(what: &str, s: &str, f: impl Fn(&str) -> Option<T>) -> esa_wgpu::Result<Vec<T>> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| f(x).ok_or_else(|| esa_wgpu::Error::arg(what, format!("`{x}` in `{s}`")))).collect()
}

fn parse_len(x: &str) -> Option<usize> {
    match x.strip_suffix(['k', 'K']) {
        Some(n) => n.parse::<usize>().ok().map(|n| n * 1024),
        None => x.parse().ok(),
    }
}

fn max_new_tokens(task: TaskKind) -> usize {
    match task {
        TaskKind::Passkey => 8,
        TaskKind::KvRetrieval => 40,
        _ => 32,
    }
}

fn main() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        // See examples/chat.rs: the Vulkan device-select layer looks for a Wayland session.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn methods(args: &Args, esa: &EsaConfig) -> esa_wgpu::Result<Vec<Method>> {
    let names = parse_list("--methods", &args.methods, |x| Some(x.to_string()))?;
    let esa_with = |config: EsaConfig, maps: Option<PathBuf>| Attention::Esa(EsaOptions { config, maps });
    names
        .into_iter()
        .map(|n| {
            let (attention, yarn, dense) = match n.as_str() {
                "dense" => (Attention::Dense, false, true),
                "esa" => (esa_with(*esa, None), false, false),
                "esa-plain" => (esa_with(EsaConfig { final_chunk: 0, ..*esa }, None), false, false),
                "esa-maps" => match &args.esa_maps {
                    Some(p) => (esa_with(*esa, Some(p.clone())), false, false),
                    None => return Err(esa_wgpu::Error::arg("--methods", "esa-maps needs --esa-maps FILE")),
                },
                // The same token budget as ESA: initial + (local + top_k), nothing selected.
                "streaming" => (esa_with(EsaConfig { top_k: 0, n_local: esa.n_local + esa.top_k, ..*esa }, None), false, false),
                "yarn" => (Attention::Dense, true, true),
                // The same token budget as ESA's top_k, in whole blocks.
                "infllm" => (esa_with(EsaConfig { select_block: args.block_size, ..*esa }, None), false, false),
                other => return Err(esa_wgpu::Error::arg("--methods", format!("`{other}`: use dense, esa, esa-plain, esa-maps, streaming, yarn, infllm"))),
            };
            Ok(Method { name: n, attention, yarn, dense })
        })
        .collect()
}

fn run(mut args: Args) -> esa_wgpu::Result<()> {
    if args.ci {
        args.lengths = "4k,8k".into();
        args.depths = "0.5".into();
        args.methods = "dense,esa".into();
        (args.esa.init, args.esa.local, args.esa.top_k, args.esa.chunk) = (32, 256, 128, 512);
        if args.model.is_none() && args.synthetic.is_none() {
            args.synthetic = Some("tiny-smollm2-vocab".into());
        }
    }
    let tasks: Vec<TaskKind> = if args.tasks == "all" { TaskKind::ALL.iter().map(|n| TaskKind::parse(n)).collect::<Result<_, _>>()? } else { parse_list("--tasks", &args.tasks, |x| TaskKind::parse(x).ok())? };
    let lengths = parse_list("--lengths", &args.lengths, parse_len)?;
    let depths = parse_list("--depths", &args.depths, |x| x.parse::<f64>().ok().filter(|d| (0.0..=1.0).contains(d)))?;
    let esa = args.esa.config();
    let methods = methods(&args, &esa)?;
    let engine = Engine::new(&GpuOptions { no_coop_matrix: args.no_coop, ..Default::default() })?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => esa_wgpu::fetch::default_model_path()?,
    };
    let model = match &args.synthetic {
        None => {
            let m = engine.load(&path)?;
            Runner { gpu: m.gpu.clone(), tokenizer: m.tokenizer.clone(), label: path.display().to_string() }
        }
        Some(name) => {
            // The tokenizer of the GGUF model; random weights of the preset's shape.
            let tokenizer = Arc::new(Tokenizer::from_gguf(&GgufModel::open(&path)?.tokenizer_spec()?)?);
            let src = SyntheticModel::new(name, TensorFormat::F16)?;
            if src_vocab(name)? < tokenizer.vocab_size() {
                return Err(esa_wgpu::Error::arg("--synthetic", format!("preset `{name}` has a smaller vocabulary than the tokenizer of {}", path.display())));
            }
            let gpu = Arc::new(GpuModel::load(engine.context().clone(), Box::new(src))?);
            Runner { gpu, tokenizer, label: format!("synthetic {name} (random weights; tokenizer of {})", path.display()) }
        }
    };
    let trained = args.trained.unwrap_or(model.gpu.cfg.max_position_embeddings);
    eprintln!("model {} (trained to {trained} tokens) on {}", model.label, engine.context().info.name);
    std::fs::create_dir_all(&args.out).map_err(|e| esa_wgpu::Error::io(&args.out, e))?;

    // Cases once, shared by every method.
    let tok = model.tokenizer.clone();
    let count = |s: &str| tok.encode(s, false).map(|v| v.len()).unwrap_or(0);
    let mut cases: Vec<(Case, Vec<u32>)> = Vec::new();
    let t0 = Instant::now();
    for &task in &tasks {
        for &len in &lengths {
            for &depth in &depths {
                for i in 0..args.cases {
                    let c = generate(task, len, depth, args.seed.wrapping_add(i as u64), &count)?;
                    let ids = tok.encode(&c.prompt, true)?;
                    cases.push((c, ids));
                }
            }
        }
    }
    eprintln!("{} cases generated in {:.1}s", cases.len(), t0.elapsed().as_secs_f64());

    let runs: usize = methods.iter().map(|m| cases.iter().filter(|(c, _)| applies(m, c.target_tokens, trained)).count()).sum();
    let pb = ProgressBar::new(runs as u64);
    pb.set_style(ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})").unwrap().progress_chars("=> "));
    let mut outcomes: Vec<Outcome> = Vec::new();
    for m in &methods {
        for &len in &lengths {
            if !applies(m, len, trained) {
                continue;
            }
            let max_new = tasks.iter().map(|&t| max_new_tokens(t)).max().unwrap_or(32);
            let longest = cases.iter().filter(|(c, _)| c.target_tokens == len).map(|(_, ids)| ids.len()).max().unwrap_or(len);
            let rope_scaling = (m.yarn && len > trained).then(|| RopeScaling::yarn(len as f32 / trained as f32, trained));
            let mut session = Session::new(model.gpu.clone(), SessionOptions { max_context: longest + max_new + 1, attention: m.attention.clone(), rope_scaling, ..Default::default() })?;
            for (c, ids) in cases.iter().filter(|(c, _)| c.target_tokens == len) {
                pb.set_message(format!("{} {} {}k d{:.2}", m.name, c.task.name(), len / 1024, c.depth));
                outcomes.push(run_case(&model, &mut session, m, c, ids, args.diagnose && !m.dense)?);
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    report(&args, &methods, &tasks, &lengths, &depths, trained, &outcomes, &model.label)
}

/// What the runner needs of a model: weights on the GPU and a tokenizer.
struct Runner {
    gpu: Arc<GpuModel>,
    tokenizer: Arc<Tokenizer>,
    label: String,
}

fn src_vocab(preset: &str) -> esa_wgpu::Result<usize> {
    Ok(esa_wgpu::model::synthetic::preset(preset)?.vocab_size)
}

/// Dense runs only inside the trained window, YaRN only past it.
fn applies(m: &Method, len: usize, trained: usize) -> bool {
    match (m.dense, m.yarn) {
        (true, false) => len <= trained,
        (true, true) => len > trained,
        _ => true,
    }
}

fn run_case(model: &Runner, session: &mut Session, m: &Method, c: &Case, ids: &[u32], diagnose: bool) -> esa_wgpu::Result<Outcome> {
    session.reset();
    let needle = if diagnose {
        // Token positions of the first needle (BOS, if added, shifts them by one).
        let tok = &model.tokenizer;
        let bos = ids.len() - tok.encode(&c.prompt, false)?.len();
        let r = &c.needles[0];
        let span = (tok.encode(&c.prompt[..r.start], false)?.len() + bos, tok.encode(&c.prompt[..r.end], false)?.len() + bos);
        session.set_esa_probe(Some(ProbeSpec { tokens: span.0..span.1, ranks: true }))?;
        Some(span)
    } else {
        None
    };
    let greedy = Sampling::greedy();
    let t0 = Instant::now();
    let mut next = session.step(ids, &greedy)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let diagnosis = match needle {
        Some(span) => {
            let recs = session.take_esa_probe_records();
            session.set_esa_probe(None)?;
            let last: Vec<_> = recs.iter().filter(|r| r.pos0 + r.n == ids.len() && r.followed_in_middle > 0).collect();
            let with: Vec<_> = recs.iter().filter(|r| r.followed_in_middle > 0).collect();
            Some(Diagnosis {
                needle_tokens: span,
                last_chunk_layers_selected: last.iter().filter(|r| r.selected > 0).count(),
                last_chunk_layers: last.len(),
                last_chunk_ranks: last.iter().map(|r| r.best_rank).collect(),
                all_chunks_selected: if with.is_empty() { 0.0 } else { with.iter().filter(|r| r.selected > 0).count() as f64 / with.len() as f64 },
            })
        }
        None => None,
    };
    let t1 = Instant::now();
    let mut out = Vec::new();
    let eos = &model.gpu.cfg.eos_token_ids;
    for _ in 0..max_new_tokens(c.task) {
        if model.tokenizer.is_eos(next) || eos.contains(&next) {
            break;
        }
        out.push(next);
        if out.len() == max_new_tokens(c.task) || session.position() >= session.max_context() {
            break;
        }
        next = session.step(&[next], &greedy)?;
    }
    let reply = model.tokenizer.decode(&out);
    Ok(Outcome {
        method: m.name.clone(),
        task: c.task.name().into(),
        length: c.target_tokens,
        depth: c.depth,
        seed: c.seed,
        prompt_tokens: ids.len(),
        score: score(c, &reply),
        reply,
        answers: c.answers.clone(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
        diagnosis,
    })
}

fn len_label(n: usize) -> String {
    if n % 1024 == 0 { format!("{}k", n / 1024) } else { n.to_string() }
}

/// Mean score of the outcomes matching `f`, or None when there are none.
fn mean(o: &[Outcome], f: impl Fn(&Outcome) -> bool) -> Option<f64> {
    let v: Vec<f64> = o.iter().filter(|x| f(x)).map(|x| x.score).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0}", 100.0 * v))
}

#[allow(clippy::too_many_arguments)]
fn report(args: &Args, methods: &[Method], tasks: &[TaskKind], lengths: &[usize], depths: &[f64], trained: usize, o: &[Outcome], model: &str) -> esa_wgpu::Result<()> {
    let io = |p: &Path, e: std::io::Error| esa_wgpu::Error::io(p, e);
    // Summary: method x (task, length), mean score in percent.
    let mut md = String::new();
    let command: Vec<String> = std::env::args().collect();
    md.push_str(&format!("# Long-context evaluation\n\nModel {model} (trained to {trained} tokens); command `{}`.\n\n", command.join(" ")));
    md.push_str(&format!(
        "ESA budget: {} initial, {} local, top-{}, chunks of {}, eps {}, final chunk {}; streaming: {} initial + {} local; infllm: top-{} as blocks of {}. Scores in percent (mean over depths and cases); `-`: not run (dense only inside the trained window, YaRN only past it).\n\n",
        args.esa.init, args.esa.local, args.esa.top_k, args.esa.chunk, args.esa.eps, args.esa.final_chunk, args.esa.init, args.esa.local + args.esa.top_k, args.esa.top_k, args.block_size
    ));
    let mut table = String::new();
    for t in tasks {
        table.push_str(&format!("## {}\n\n| method |{}\n|---|{}\n", t.name(), lengths.iter().map(|l| format!(" {} |", len_label(*l))).collect::<String>(), lengths.iter().map(|_| "---|").collect::<String>()));
        for m in methods {
            table.push_str(&format!("| {} |", m.name));
            for &l in lengths {
                table.push_str(&format!(" {} |", pct(mean(o, |x| x.method == m.name && x.task == t.name() && x.length == l))));
            }
            table.push('\n');
        }
        table.push('\n');
    }
    println!("{table}");
    md.push_str(&table);
    // Heat maps.
    md.push_str("## Heat maps (depth x length)\n\n");
    for m in methods {
        for t in tasks {
            let file = format!("heatmap_{}_{}.svg", m.name, t.name());
            let grid: Vec<Vec<Option<f64>>> = depths.iter().map(|&d| lengths.iter().map(|&l| mean(o, |x| x.method == m.name && x.task == t.name() && x.length == l && x.depth == d)).collect()).collect();
            heatmap(&args.out.join(&file), &format!("{} / {}", m.name, t.name()), lengths, depths, &grid).map_err(|e| esa_wgpu::Error::arg("heat map", format!("{}: {e}", file)))?;
            md.push_str(&format!("![{} {}]({file})\n", m.name, t.name()));
        }
    }
    // Diagnosis of ESA failures.
    let diag: Vec<&Outcome> = o.iter().filter(|x| x.diagnosis.is_some()).collect();
    if !diag.is_empty() {
        md.push_str("\n## Needle selection (ESA methods, first needle)\n\n| method | task | length | depth | score | last chunk: layers selecting | median rank | all chunks: selected |\n|---|---|---|---|---|---|---|---|\n");
        for x in diag {
            let d = x.diagnosis.as_ref().unwrap();
            let mut ranks: Vec<usize> = d.last_chunk_ranks.iter().flatten().copied().collect();
            ranks.sort_unstable();
            let med = ranks.get(ranks.len() / 2).map_or("-".into(), |r| r.to_string());
            md.push_str(&format!("| {} | {} | {} | {:.2} | {:.0} | {}/{} | {med} | {:.0}% |\n", x.method, x.task, len_label(x.length), x.depth, 100.0 * x.score, d.last_chunk_layers_selected, d.last_chunk_layers, 100.0 * d.all_chunks_selected));
        }
    }
    let p = args.out.join("report.md");
    std::fs::write(&p, md).map_err(|e| io(&p, e))?;
    let mut summary = BTreeMap::new();
    for m in methods {
        for t in tasks {
            for &l in lengths {
                if let Some(v) = mean(o, |x| x.method == m.name && x.task == t.name() && x.length == l) {
                    summary.insert(format!("{}/{}/{}", m.name, t.name(), l), v);
                }
            }
        }
    }
    let json = serde_json::json!({ "model": model, "trained": trained, "command": command, "summary": summary, "results": o });
    let p = args.out.join("results.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json).unwrap()).map_err(|e| io(&p, e))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// One SVG heat map: lengths across, depths down, cells coloured red (0) to green (100%).
fn heatmap(path: &Path, title: &str, lengths: &[usize], depths: &[f64], grid: &[Vec<Option<f64>>]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (120 + 90 * lengths.len() as u32, 110 + 40 * depths.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (nx, ny) = (lengths.len(), depths.len());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..nx as f64, 0f64..ny as f64)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nx + 1)
        .y_labels(ny + 1)
        .x_label_formatter(&|v| lengths.get(v.floor() as usize).filter(|_| v.fract() == 0.0).map_or(String::new(), |l| len_label(*l)))
        .y_label_formatter(&|v| depths.get(v.floor() as usize).filter(|_| v.fract() == 0.0).map_or(String::new(), |d| format!("{d:.2}")))
        .x_desc("length")
        .y_desc("depth")
        .draw()?;
    for (j, row) in grid.iter().enumerate() {
        for (i, v) in row.iter().enumerate() {
            let color = match v {
                Some(s) => RGBColor((255.0 * (1.0 - s)) as u8, (200.0 * s + 30.0) as u8, 60),
                None => RGBColor(220, 220, 220),
            };
            chart.draw_series(std::iter::once(Rectangle::new([(i as f64, j as f64), (i as f64 + 1.0, j as f64 + 1.0)], color.filled())))?;
            let label = v.map_or("-".to_string(), |s| format!("{:.0}", 100.0 * s));
            chart.draw_series(std::iter::once(Text::new(label, (i as f64 + 0.4, j as f64 + 0.6), ("sans-serif", 14))))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    /// clap's own consistency checks (duplicate ids or flags, bad defaults) on this example's flags.
    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
