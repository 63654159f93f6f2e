//! Calibrate ESA's compression maps for a model and report how well they rank (issue 14).
//!
//!   cargo run --release --example calibrate                       # default model and text, d' = 64
//!   cargo run --release --example calibrate -- --d 128 --text book.txt --tokens 50000
//!
//! Captures the second moments of the queries (rotated to w) and keys on the calibration text,
//! fits the maps in closed form, writes them (safetensors, with metadata) and prints recall@k per
//! layer on held-out text (the last `--held-out` tokens, never used for fitting): the fraction of
//! the exact top-k keys (full-width scores) that the compressed top-k finds, for the fitted maps,
//! a PCA-of-keys baseline and random maps. `--json` and `--svg` keep the report.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use esa_wgpu::calibrate::{self, CaptureOptions, LayerMaps, MapsInfo};
use esa_wgpu::reference::esa::HeadShape;
use esa_wgpu::{Engine, GpuOptions};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "Fit ESA's query/key compression maps and report recall@k per layer")]
struct Args {
    /// GGUF file or Hugging Face folder. Default: SmolLM2-135M-Instruct (Q4_1).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Calibration text files (concatenated). Default: the license texts of /usr/share/common-licenses.
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// Compressed width d'.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Long-distance query position w (ESA's default: its local window, 4096).
    #[arg(long, default_value_t = 4096)]
    w: usize,
    /// Most calibration tokens (taken from the start of the text, before the held-out part).
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// Tokens per capture window (starts at position 0; keep it inside the trained context).
    #[arg(long, default_value_t = 2048)]
    window: usize,
    /// Held-out tokens at the end of the text: one window for the recall report.
    #[arg(long, default_value_t = 4096)]
    held_out: usize,
    /// Queries per layer in the report (the last positions of the held-out window).
    #[arg(long, default_value_t = 64)]
    queries: usize,
    /// Leading positions of each window left out (attention sinks; ESA never scores them).
    #[arg(long, default_value_t = 16)]
    skip: usize,
    /// Ridge on the moments, relative to their mean eigenvalue.
    #[arg(long, default_value_t = 1e-3)]
    ridge: f64,
    /// k values of the report.
    #[arg(long, value_delimiter = ',', default_value = "2048,64")]
    k: Vec<usize>,
    /// Maps file to write (default: the cache path `--esa-maps auto` reads).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tokens ({elapsed}, eta {eta})").unwrap().progress_chars("=> "));
    pb.set_message(what.to_string());
    pb
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => esa_wgpu::fetch::default_model_path()?,
    };
    let engine = Engine::new(&GpuOptions::default())?;
    eprintln!("gpu: {}", engine.context().describe());
    let model = engine.load(&model_path)?;
    let c = model.config().clone();
    let shape = HeadShape::from(&c);
    let (text, desc) = if args.text.is_empty() {
        calibrate::default_text()?
    } else {
        let mut t = String::new();
        for f in &args.text {
            t.push_str(&std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?);
            t.push_str("\n\n");
        }
        (t, args.text.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "))
    };
    let ids = model.tokenizer.encode(&text, false)?;
    if ids.len() < args.held_out + args.window.min(args.tokens) {
        return Err(format!("the text has {} tokens: not enough for --held-out {} plus calibration", ids.len(), args.held_out).into());
    }
    let (cal, held) = ids.split_at(ids.len() - args.held_out);
    let cal = &cal[..cal.len().min(args.tokens)];
    eprintln!("text: {desc}: {} tokens; calibrating on {}, held out {}", ids.len(), cal.len(), held.len());
    let opts = CaptureOptions { window: args.window.min(c.max_position_embeddings), skip: args.skip, w: args.w, chunk: 0 };

    let t0 = Instant::now();
    let pb = bar(cal.len(), "capture");
    let moments = calibrate::capture(&model.gpu, cal, &opts, &mut |done, _| pb.set_position(done as u64))?;
    pb.finish();
    let capture_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let fitted = calibrate::fit_all(&moments, args.d, "closed-form", args.ridge)?;
    let fit_s = t1.elapsed().as_secs_f64();
    let pca = calibrate::fit_all(&moments, args.d, "pca", 0.0)?;
    let random = calibrate::fit_all(&moments, args.d, "random", 0.0)?;
    eprintln!("capture {capture_s:.1} s ({:.0} tok/s), closed-form fit of {} layers {fit_s:.2} s", cal.len() as f64 / capture_s, c.num_layers);

    let out = match &args.out {
        Some(p) => p.clone(),
        None => calibrate::cached_maps_path(&model.gpu, args.d, args.w)?,
    };
    let name = model_path.file_name().map_or_else(|| model_path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let info = MapsInfo { model: model.gpu.identity.clone(), model_name: name.clone(), d_compressed: args.d, w: args.w, tokens: moments.tokens(), method: format!("closed-form ridge={}", args.ridge), text: desc.clone() };
    calibrate::save_maps(&out, &fitted, &info)?;
    eprintln!("wrote {}", out.display());

    let t2 = Instant::now();
    let held_opts = CaptureOptions { window: held.len(), ..opts.clone() };
    let pb = bar(held.len(), "held-out");
    let ho = calibrate::capture_held_out(&model.gpu, held, &held_opts, args.queries, &mut |done, _| pb.set_position(done as u64))?;
    pb.finish();
    let held_s = t2.elapsed().as_secs_f64();

    let methods: [(&str, &Vec<LayerMaps>); 3] = [("fitted", &fitted), ("pca", &pca), ("random", &random)];
    // recall[method][k][layer]
    let t3 = Instant::now();
    let recall: Vec<Vec<Vec<f64>>> = methods
        .iter()
        .map(|(_, maps)| args.k.iter().map(|&k| (0..c.num_layers).map(|l| calibrate::recall_at_k(shape, &maps[l], &ho.queries[l], &ho.keys[l], ho.skip, k)).collect()).collect())
        .collect();
    let report_s = t3.elapsed().as_secs_f64();
    let objective: Vec<Vec<f64>> = methods.iter().map(|(_, maps)| moments.layers.iter().zip(maps.iter()).map(|(m, f)| calibrate::objective(m, shape, f)).collect()).collect();

    println!("model {name} (identity {}), d' = {} of exact width {}, w = {}, {} calibration tokens, held-out window {} tokens, {} queries/layer", model.gpu.identity, args.d, shape.kv_dim(), args.w, cal.len(), held.len(), args.queries);
    let mut header = String::from("layer");
    for (m, _) in &methods {
        for k in &args.k {
            header.push_str(&format!(" | {m}@{k}"));
        }
    }
    println!("{header} | loss fitted/pca");
    for l in 0..c.num_layers {
        let mut row = format!("{l:5}");
        for r in &recall {
            for per_k in r {
                row.push_str(&format!(" | {:>8.3}", per_k[l]));
            }
        }
        row.push_str(&format!(" | {:.3}", objective[0][l] / objective[1][l]));
        println!("{row}");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut row = String::from(" mean");
    for r in &recall {
        for per_k in r {
            row.push_str(&format!(" | {:>8.3}", mean(per_k)));
        }
    }
    println!("{row}");
    for (ki, k) in args.k.iter().enumerate() {
        let counts: Vec<String> = methods.iter().zip(&recall).map(|((m, _), r)| format!("{m} {}", r[ki].iter().filter(|&&x| x >= 0.9).count())).collect();
        println!("layers with recall@{k} >= 0.90 (of {}): {}", c.num_layers, counts.join(", "));
    }
    eprintln!("times: capture {capture_s:.1} s, fit {fit_s:.2} s, held-out capture {held_s:.1} s, recall {report_s:.1} s");

    if let Some(p) = &args.json {
        let methods_json: serde_json::Map<String, serde_json::Value> = methods
            .iter()
            .zip(&recall)
            .zip(&objective)
            .map(|(((m, _), r), obj)| {
                let mut o = serde_json::Map::new();
                for (ki, k) in args.k.iter().enumerate() {
                    o.insert(format!("recall@{k}"), serde_json::json!(r[ki]));
                }
                o.insert("objective".into(), serde_json::json!(obj));
                (m.to_string(), serde_json::Value::Object(o))
            })
            .collect();
        let json = serde_json::json!({
            "model": name, "identity": model.gpu.identity, "d_compressed": args.d, "exact_width": shape.kv_dim(), "w": args.w,
            "calibration_tokens": cal.len(), "held_out_tokens": held.len(), "queries_per_layer": args.queries, "skip": args.skip,
            "window": opts.window, "ridge": args.ridge, "text": desc, "maps": out.display().to_string(),
            "seconds": { "capture": capture_s, "fit": fit_s, "held_out_capture": held_s, "recall": report_s },
            "methods": methods_json,
        });
        std::fs::write(p, serde_json::to_string_pretty(&json)?).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.svg {
        plot(p, &methods.iter().map(|m| m.0).collect::<Vec<_>>(), &args.k, &recall, &format!("{name}: recall@k per layer, d' = {} of {}", args.d, shape.kv_dim()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn plot(path: &PathBuf, methods: &[&str], ks: &[usize], recall: &[Vec<Vec<f64>>], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let layers = recall[0][0].len();
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root).caption(title, ("sans-serif", 20)).margin(15).x_label_area_size(40).y_label_area_size(55).build_cartesian_2d(-0.5f64..(layers as f64 - 0.5), 0f64..1.02)?;
    chart.configure_mesh().x_desc("layer").y_desc("recall").draw()?;
    let colors = [BLUE, RED, GREEN];
    for (mi, m) in methods.iter().enumerate() {
        for (ki, k) in ks.iter().enumerate() {
            let c = colors[mi % colors.len()];
            let pts: Vec<(f64, f64)> = recall[mi][ki].iter().enumerate().map(|(l, &r)| (l as f64, r)).collect();
            let style = if ki == 0 { c.stroke_width(2) } else { c.mix(0.5).stroke_width(1) };
            chart.draw_series(LineSeries::new(pts.iter().copied(), style))?.label(format!("{m} @{k}")).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::LowerLeft).draw()?;
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
