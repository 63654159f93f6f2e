//! Decode and prefill throughput of a model: prints a table of tokens/s and the weight bandwidth
//! it implies (decode reads every weight byte once per token).
//!
//!   cargo run --release --example bench -- [--model PATH] [--prompt-tokens 512] [--decode-tokens 128]
//!
//! Loading: `--synthetic llama3-8b --format f16 --write-gguf /tmp/l8b.gguf` writes a GGUF file of
//! random weights; `--load /tmp/l8b.gguf` times loading it (file bytes / seconds).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use std::sync::Arc;

use esa_wgpu::gpu::ops::linear::{self, CoopTile, Epilogue, LinearIo, MatmulVariant};
use esa_wgpu::gpu::ops::{pack_f16, read_bandwidth};
use esa_wgpu::gpu::tensor::GpuMatrix;
use esa_wgpu::gpu::{BufRef, GpuContext, Recorder};
use esa_wgpu::model::gpu_model::GpuModel;
use esa_wgpu::model::host::{HostTensor, TensorFormat};
use esa_wgpu::model::synthetic::SyntheticModel;
use esa_wgpu::session::Session;
use esa_wgpu::{Attention, Engine, GpuOptions, Sampling, SessionOptions};

#[derive(Parser, Debug)]
struct Args {
    /// GGUF file or HF folder (default: the default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Random weights of a real shape instead of a file: smollm2-135m, llama3-8b, llama3-1b, tiny.
    #[arg(long)]
    synthetic: Option<String>,
    /// Weight format for --synthetic: f16, bf16, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f16")]
    format: String,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Prompt tokens per forward pass (default: the session's, 2048).
    #[arg(long, default_value_t = esa_wgpu::session::DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Sampling of the generated tokens: greedy, smollm2 (its model card's temperature 0.2, top-p
    /// 0.9: the chat's default for the default model) or llama-cpp (temperature 0.8, top-k 40,
    /// top-p 0.95, min-p 0.05: the chat's default for other models); all on the GPU.
    #[arg(long, default_value = "greedy")]
    sampling: String,
    /// Attention policy: dense, or esa (default budget; its chunk replaces --prefill-chunk).
    #[arg(long, default_value = "dense")]
    attention: String,
    /// ESA: compressed width d' of maps of that width (random values: the timing of calibrated
    /// maps of that width, which `--esa-maps auto` in the chat picks per model; SmolLM2: 32).
    /// Default: exact maps (n_kv * head_dim).
    #[arg(long)]
    esa_d: Option<usize>,
    /// ESA: bits of the compressed keys decode steps score, 8 (int8 copy) or 16 (f16).
    #[arg(long, default_value_t = esa_wgpu::reference::esa::DEFAULT_DECODE_KEY_BITS)]
    esa_decode_key_bits: u32,
    /// Repeat the measurement this many times and report the best.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Time the prefill matmul kernel alone instead of a model: TOKENSxROWSxCOLS (e.g.
    /// 4096x14336x4096), for each format in --formats and each variant the adapter runs.
    #[arg(long)]
    matmul: Option<String>,
    /// Formats for --matmul, comma-separated (f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k).
    #[arg(long, default_value = "f16,q8_0,q4_0,q4_1,q4_k,q5_k,q6_k")]
    formats: String,
    /// With --matmul on an adapter with cooperative matrices: also time these tile shapes,
    /// comma-separated WMxWNxFMxFNxBK[xSTAGES[xDEPTH]][/SPLITS] (subgroups along tokens and rows,
    /// 16x16 fragments per subgroup along tokens and rows, k per step; SPLITS: K split that many
    /// ways), e.g. 2x4x4x2x32,2x4x4x4x32x1/4.
    #[arg(long)]
    coop_tiles: Option<String>,
    /// With --matmul on an adapter that can run the CPU kernel (matvec_cpu.wgsl): also time these
    /// shapes, comma-separated ROWSxTOKENS (weight rows per lane, tokens per pass), e.g. 4x4,8x2
    #[arg(long)]
    cpu_shapes: Option<String>,
    /// After the timed runs, one more prefill and decode with per-kernel GPU timestamps (each
    /// dispatch in its own pass, so the totals run slower than the table): a table per phase.
    #[arg(long)]
    profile: bool,
    /// Time a pure streaming read of a large buffer (the bandwidth floor of every decode figure)
    /// and exit.
    #[arg(long)]
    bandwidth: bool,
    /// Time the decode matvec alone instead of a model: ROWSxCOLS (e.g. 14336x4096), one token,
    /// for each format in --formats and each matvec variant the adapter runs; GB/s of weights read
    /// and their share of the --bandwidth read, measured first.
    #[arg(long)]
    matvec: Option<String>,
    /// With --matvec: also time these matvec_wide shapes, comma-separated TxNRxU (threads per row
    /// group, rows per group, octets per iteration), e.g. 128x4x2,256x2x4.
    #[arg(long)]
    wide_shapes: Option<String>,
    /// With --matvec: also time these matvec_blocks shapes (Q4_0, Q4_1, Q8_0), comma-separated
    /// TPRxNRxU[xWORKGROUPS[xKSPLIT]] (threads per row group, rows per thread, blocks per
    /// iteration, most workgroups dispatched, splits of the columns), e.g. 64x4x2x128; a shape
    /// with KSPLIT > 1 is timed as the products it applies to run (accumulate, no norm), beside
    /// the same shape unsplit.
    #[arg(long)]
    blocks_shapes: Option<String>,
    /// Write the --synthetic model (random weights of a real shape, in --format) to this path as
    /// a GGUF file (weights only, no tokenizer) and exit: a file for --load on machines that
    /// cannot download one.
    #[arg(long)]
    write_gguf: Option<PathBuf>,
    /// Time loading this GGUF file or HF folder onto the GPU and exit: the files are read once
    /// first (page cache warm), then each of --repeats loads is timed up to the GPU's last copy.
    #[arg(long)]
    load: Option<PathBuf>,
}

fn parse_format(f: &str) -> esa_wgpu::Result<TensorFormat> {
    Ok(match f {
        "f16" => TensorFormat::F16,
        "bf16" => TensorFormat::BF16,
        "q8_0" => TensorFormat::Q8_0,
        "q4_0" => TensorFormat::Q4_0,
        "q4_1" => TensorFormat::Q4_1,
        "q4_k" => TensorFormat::Q4_K,
        "q5_k" => TensorFormat::Q5_K,
        "q6_k" => TensorFormat::Q6_K,
        f => return Err(esa_wgpu::Error::arg("format", format!("unknown `{f}`"))),
    })
}

/// Y = X W^T at one shape for each format and variant: ms per product and TFLOP/s (2 t r c FLOPs),
/// the best of `repeats` batches of 10 back-to-back dispatches after a warm-up batch.
fn bench_matmul(ctx: &Arc<GpuContext>, spec: &str, formats: &str, coop_tiles: Option<&str>, cpu_shapes: Option<&str>, repeats: usize) -> esa_wgpu::Result<()> {
    let dims: Vec<usize> = spec.split('x').map(|v| v.parse().map_err(|_| esa_wgpu::Error::arg("matmul", format!("`{spec}`: want TOKENSxROWSxCOLS")))).collect::<Result<_, _>>()?;
    let [tokens, rows, cols] = dims[..] else { return Err(esa_wgpu::Error::arg("matmul", format!("`{spec}`: want TOKENSxROWSxCOLS"))) };
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..tokens * cols).map(|_| next()).collect();
    let xb = ctx.upload("x", bytemuck::cast_slice(&x))?;
    let yb = ctx.storage("y", (tokens * rows * 4) as u64)?;
    let x16b = ctx.storage("x f16", pack_f16::packed_bytes(tokens, cols))?;
    let flops = 2.0 * tokens as f64 * rows as f64 * cols as f64;
    println!("adapter workgroup memory: {} bytes", ctx.caps.max_workgroup_storage);
    println!("| matmul {tokens} tokens x {rows} rows x {cols} cols | variant | ms | TFLOP/s |");
    println!("|---|---|---|---|");
    for f in formats.split(',') {
        let fmt = parse_format(f.trim())?;
        let data: Vec<u8> = match fmt {
            TensorFormat::F16 => bytemuck::cast_slice(&(0..rows * cols).map(|_| half::f16::from_f32(next())).collect::<Vec<_>>()).to_vec(),
            TensorFormat::BF16 => bytemuck::cast_slice(&(0..rows * cols).map(|_| half::bf16::from_f32(next())).collect::<Vec<_>>()).to_vec(),
            q => esa_wgpu::quant::random_blocks(q, rows, cols, 7),
        };
        let host = HostTensor { name: format!("w {f}"), shape: vec![rows, cols], format: fmt, data: data.into() };
        let m = GpuMatrix::upload(ctx, &host, true)?;
        let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: rows, y_row0: 0, n_tok: tokens };
        // The session's cooperative-matrix matmuls read f16 inputs (pack_f16, not timed here).
        let io16 = {
            let mut rec = Recorder::new(ctx);
            let r = pack_f16::pack_f16(&mut rec, &io, cols, &BufRef::from(&x16b))?;
            rec.submit()?;
            r
        };
        // (label, variant, tile, f16 input, CPU shape): tile and shape None = the op's own choice
        let mut variants: Vec<(String, MatmulVariant, Option<(CoopTile, usize)>, bool, Option<(u32, u32)>)> = vec![("Tiled".into(), MatmulVariant::Tiled, None, false, None)];
        if linear::cpu_capable(ctx) {
            let (r, t) = linear::CPU_PREFILL;
            variants.insert(0, (format!("Cpu {r}x{t}"), MatmulVariant::Cpu, None, false, None));
            for sh in cpu_shapes.into_iter().flat_map(|s| s.split(',')) {
                let bad = || esa_wgpu::Error::arg("cpu shapes", format!("`{sh}`: expected ROWSxTOKENS, e.g. 4x4"));
                let (r, t) = sh.split_once('x').ok_or_else(bad)?;
                let (r, t) = (r.trim().parse::<u32>().map_err(|_| bad())?, t.trim().parse::<u32>().map_err(|_| bad())?);
                variants.push((format!("Cpu {r}x{t}"), MatmulVariant::Cpu, None, false, Some((r, t))));
            }
        }
        if linear::matmul_variant(ctx) == MatmulVariant::Coop {
            let (chosen, splits) = linear::coop_plan(ctx, rows, tokens, cols);
            variants.insert(0, (format!("Coop {chosen}/{splits} f16 in"), MatmulVariant::Coop, None, true, None));
            variants.insert(1, (format!("Coop {chosen}/{splits} f32 in"), MatmulVariant::Coop, None, false, None));
            for t in coop_tiles.into_iter().flat_map(|s| s.split(',')) {
                let (t, splits) = match t.split_once('/') {
                    Some((t, n)) => (t, n.trim().parse::<usize>().map_err(|_| esa_wgpu::Error::arg("coop tiles", format!("`{n}`: splits must be a number")))?),
                    None => (t, 1),
                };
                let tile = CoopTile::parse(t)?;
                variants.push((format!("Coop {tile}/{splits} f16 in"), MatmulVariant::Coop, Some((tile, splits)), true, None));
            }
        }
        for (label, v, tile, x16, shape) in variants {
            let io = if x16 { &io16 } else { &io };
            let mut record = |rec: &mut Recorder| match (tile, shape) {
                (Some((tile, splits)), _) => linear::matmul_coop_split(rec, &m, io, Epilogue::Store, tile, splits),
                (None, Some(shape)) => linear::linear_cpu(rec, &m, io, Epilogue::Store, None, shape),
                (None, None) => linear::matmul_with(rec, &m, io, Epilogue::Store, v),
            };
            // a variant this shape or adapter cannot take is reported, not fatal
            let best = match time_batches(ctx, 10, repeats, &mut record) {
                Ok(best) => best,
                Err(e) => {
                    println!("| {f} | {label} | error: {e} | |");
                    continue;
                }
            };
            println!("| {f} | {label} | {:.3} | {:.3} |", best * 1e3, flops / best / 1e12);
        }
    }
    Ok(())
}

/// Random weights of `rows x cols` in `fmt` (16-bit formats from `next`, quantised ones from
/// `quant::random_blocks`).
fn random_weights(fmt: TensorFormat, rows: usize, cols: usize, next: &mut impl FnMut() -> f32) -> Vec<u8> {
    match fmt {
        TensorFormat::F16 => bytemuck::cast_slice(&(0..rows * cols).map(|_| half::f16::from_f32(next())).collect::<Vec<_>>()).to_vec(),
        TensorFormat::BF16 => bytemuck::cast_slice(&(0..rows * cols).map(|_| half::bf16::from_f32(next())).collect::<Vec<_>>()).to_vec(),
        q => esa_wgpu::quant::random_blocks(q, rows, cols, 7),
    }
}

/// Seconds per call of `record` (recorded `n` times into one submission), the best of `repeats`
/// batches of `n` after a warm-up batch of one.
fn time_batches(ctx: &GpuContext, n: usize, repeats: usize, record: &mut dyn FnMut(&mut Recorder) -> esa_wgpu::Result<()>) -> esa_wgpu::Result<f64> {
    let mut batch = |n: usize| -> esa_wgpu::Result<f64> {
        let t = Instant::now();
        let mut rec = Recorder::new(ctx);
        for _ in 0..n {
            record(&mut rec)?;
        }
        rec.submit()?;
        ctx.sync()?;
        Ok(t.elapsed().as_secs_f64() / n as f64)
    };
    batch(1)?;
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) {
        best = best.min(batch(n)?);
    }
    Ok(best)
}

/// Seconds of one call of `record`: its GPU time from timestamp queries where the adapter has them
/// (`gpu_time`; a batch's wall time also counts recording, submission and the gaps between
/// dependent dispatches), else the wall time of batches of `n` (`time_batches`).
fn kernel_seconds(ctx: &GpuContext, n: usize, repeats: usize, record: &mut dyn FnMut(&mut Recorder) -> esa_wgpu::Result<()>) -> esa_wgpu::Result<f64> {
    if ctx.caps.timestamps {
        gpu_time(ctx, repeats, record)
    } else {
        time_batches(ctx, n, repeats, record)
    }
}

/// GPU time of one call of `record` from timestamp queries (each dispatch in its own pass; the sum
/// over its dispatches), the best of `repeats` batches of 10. Needs `Caps::timestamps`.
fn gpu_time(ctx: &GpuContext, repeats: usize, record: &mut dyn FnMut(&mut Recorder) -> esa_wgpu::Result<()>) -> esa_wgpu::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) + 1 {
        ctx.set_profiling(true);
        let mut rec = Recorder::new(ctx);
        for _ in 0..10 {
            record(&mut rec)?;
        }
        rec.submit()?;
        ctx.sync()?;
        let total: f64 = ctx.profile_report().0.iter().map(|k| k.total_ms).sum();
        best = best.min(total * 1e-3 / 10.0);
    }
    ctx.set_profiling(false);
    Ok(best)
}

/// GB/s of a streaming read of the largest buffer the adapter binds (at most 1 GiB): the floor
/// that every decode kernel is compared with.
fn bench_bandwidth(ctx: &GpuContext, repeats: usize) -> esa_wgpu::Result<f64> {
    let bytes = ctx.caps.max_binding.min(1 << 30) / 256 * 256;
    let src = ctx.storage("read src", bytes)?;
    let out = ctx.storage("read out", read_bandwidth::groups_for(bytes) as u64 * 4)?;
    let (s, o) = (BufRef::from(&src), BufRef::from(&out));
    let secs = kernel_seconds(ctx, 20, repeats, &mut |rec| read_bandwidth::read_all(rec, &s, bytes, &o).map(|_| ()))?;
    let gbs = bytes as f64 / secs / 1e9;
    println!("| streaming read | {:.0} MiB | {:.3} ms | {gbs:.1} GB/s |", bytes as f64 / (1 << 20) as f64, secs * 1e3);
    Ok(gbs)
}

/// One-token matvec at ROWSxCOLS for each format and variant: ms, GB/s of weights (bytes as
/// stored on the GPU) and the share of the streaming-read bandwidth.
/// Bytes of weight copies `--matvec` cycles through: several times a large GPU's L2 cache.
const COLD_BYTES: f64 = 256e6;

fn bench_matvec(ctx: &Arc<GpuContext>, spec: &str, formats: &str, wide_shapes: Option<&str>, blocks_shapes: Option<&str>, repeats: usize) -> esa_wgpu::Result<()> {
    let dims: Vec<usize> = spec.split('x').map(|v| v.parse().map_err(|_| esa_wgpu::Error::arg("matvec", format!("`{spec}`: want ROWSxCOLS")))).collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else { return Err(esa_wgpu::Error::arg("matvec", format!("`{spec}`: want ROWSxCOLS"))) };
    println!("| what | size | ms | GB/s |");
    println!("|---|---|---|---|");
    let floor = bench_bandwidth(ctx, repeats)?;
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..cols).map(|_| next()).collect();
    let xb = ctx.upload("x", bytemuck::cast_slice(&x))?;
    let gamma = ctx.upload("gamma", bytemuck::cast_slice(&vec![1.0f32; cols]))?;
    let yb = ctx.storage("y", (rows * 4) as u64)?;
    println!();
    // `kernel_seconds`: GPU time where the adapter has timestamp queries
    let clock = if ctx.caps.timestamps { "GPU ms" } else { "ms" };
    println!("| matvec {rows} x {cols}, 1 token, fused norm, weights cold | variant | {clock} | weight GB/s | of read |");
    println!("|---|---|---|---|---|");
    for f in formats.split(',') {
        let fmt = parse_format(f.trim())?;
        let host = HostTensor { name: format!("w {f}"), shape: vec![rows, cols], format: fmt, data: random_weights(fmt, rows, cols, &mut next).into() };
        let first = GpuMatrix::upload(ctx, &host, true)?;
        let bytes = (first.row_bytes * rows) as f64;
        // Consecutive calls take consecutive copies of the weights, at least COLD_BYTES of them, so
        // each call reads its weights from memory as a decode step does (one copy would stay in a
        // large GPU's L2 cache: 4096 x 14336 Q4_0 is 37 MB against the H200's 50 MB).
        let copies = (COLD_BYTES / bytes).ceil().clamp(1.0, 64.0) as usize;
        let mut ms = vec![first];
        for _ in 1..copies {
            ms.push(GpuMatrix::upload(ctx, &host, true)?);
        }
        let mut turn = 0usize;
        let mut m = move || {
            turn += 1;
            ms[turn % ms.len()].clone()
        };
        let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: rows, y_row0: 0, n_tok: 1 };
        for v in linear::matvec_variants(ctx) {
            let secs = kernel_seconds(ctx, 50, repeats, &mut |rec| linear::matvec_with(rec, &m(), &io, Epilogue::Store, Some((&gamma, 1e-5)), v))?;
            let gbs = bytes / secs / 1e9;
            let sg = linear::fixed_subgroup(ctx).unwrap_or(32);
            let shape = match v {
                linear::MatvecVariant::Wide => format!(" {}", linear::wide_shape(sg, rows, cols, false, fmt)),
                linear::MatvecVariant::Blocks if linear::blocks_supported(ctx, fmt, cols, 1, 0) => {
                    // (a store with the fused norm: the default's column split does not apply)
                    format!(" {}", linear::BlocksShape { ksplit: 1, ..linear::blocks_shape(sg, rows, cols, false) })
                }
                linear::MatvecVariant::Blocks => " (falls back to Wide)".to_string(),
                _ => String::new(),
            };
            println!("| {f} | {v:?}{shape} | {:.4} | {gbs:.1} | {:.0}% |", secs * 1e3, 100.0 * gbs / floor);
        }
        for sh in blocks_shapes.into_iter().flat_map(|s| s.split(',')) {
            let shape = linear::BlocksShape::parse(sh)?;
            if !linear::blocks_supported(ctx, fmt, cols, 1, 0) {
                continue;
            }
            if shape.ksplit > 1 {
                // split columns apply to accumulate-mode products without the norm (O, down):
                // timed so, unsplit first
                for sh in [linear::BlocksShape { ksplit: 1, ..shape }, shape] {
                    let secs = kernel_seconds(ctx, 50, repeats, &mut |rec| linear::matvec_blocks(rec, &m(), &io, Epilogue::Accumulate, None, sh))?;
                    let gbs = bytes / secs / 1e9;
                    println!("| {f} | Blocks {sh}, accumulate, no norm | {:.4} | {gbs:.1} | {:.0}% |", secs * 1e3, 100.0 * gbs / floor);
                }
                continue;
            }
            let secs = kernel_seconds(ctx, 50, repeats, &mut |rec| linear::matvec_blocks(rec, &m(), &io, Epilogue::Store, Some((&gamma, 1e-5)), shape))?;
            let gbs = bytes / secs / 1e9;
            println!("| {f} | Blocks {sh} | {:.4} | {gbs:.1} | {:.0}% |", secs * 1e3, 100.0 * gbs / floor);
        }
        for sh in wide_shapes.into_iter().flat_map(|s| s.split(',')) {
            let sh = linear::WideShape::parse(sh)?;
            let secs = kernel_seconds(ctx, 50, repeats, &mut |rec| linear::matvec_wide(rec, &m(), &io, Epilogue::Store, Some((&gamma, 1e-5)), sh))?;
            let gbs = bytes / secs / 1e9;
            println!("| {f} | Wide {sh} | {:.4} | {gbs:.1} | {:.0}% |", secs * 1e3, 100.0 * gbs / floor);
        }
    }
    Ok(())
}

/// The files of a model path: the GGUF file itself, or a folder's `.safetensors` files.
fn model_files(path: &std::path::Path) -> esa_wgpu::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| esa_wgpu::Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// Read every byte of `files` once (into the page cache) and return their total size.
fn warm_page_cache(files: &[PathBuf]) -> esa_wgpu::Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 16 << 20];
    let mut total = 0u64;
    for f in files {
        let mut file = std::fs::File::open(f).map_err(|e| esa_wgpu::Error::io(f, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| esa_wgpu::Error::io(f, e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// Anonymous (heap and GPU-staging) memory of this process in bytes, from /proc (Linux only):
/// the memory a load needs beyond the page cache that holds the file.
fn anon_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Time loading the model at `path` onto the GPU (`GpuModel::load`, open and parse included, up
/// to the GPU's last copy), the best of `repeats` after the files were read once; with the peak
/// anonymous memory seen during a load (sampled every 5 ms).
fn bench_load(ctx: &Arc<GpuContext>, path: &std::path::Path, repeats: usize) -> esa_wgpu::Result<()> {
    use esa_wgpu::model::host::WeightSource;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let bytes = warm_page_cache(&model_files(path)?)?;
    let gb = bytes as f64 / 1e9;
    let bars = esa_wgpu::Bars::new(false);
    let base = anon_memory().unwrap_or(0);
    let mut best = f64::MAX;
    let mut peak = 0u64;
    for _ in 0..repeats.max(1) {
        let done = AtomicBool::new(false);
        let seen = AtomicU64::new(0);
        let secs = std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    seen.fetch_max(anon_memory().unwrap_or(0), Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
            let t = Instant::now();
            let loaded = (|| {
                let src: Box<dyn WeightSource + Send + Sync> = if path.is_dir() {
                    Box::new(esa_wgpu::model::safetensors_loader::SafetensorsModel::open(path)?)
                } else {
                    Box::new(esa_wgpu::model::gguf::GgufModel::open(path)?)
                };
                let model = GpuModel::load_with_progress(ctx.clone(), src, bars.as_ref())?;
                ctx.sync()?;
                Ok::<_, esa_wgpu::Error>(model)
            })();
            let secs = t.elapsed().as_secs_f64();
            done.store(true, Ordering::Relaxed);
            loaded.map(|m| (secs, m.gpu_bytes))
        })?;
        best = best.min(secs.0);
        peak = peak.max(seen.into_inner());
    }
    println!("| load | file GB | seconds | GB/s | peak anonymous memory GB (before the load) |");
    println!("|---|---|---|---|---|");
    println!("| {} | {gb:.3} | {best:.3} | {:.2} | {:.2} ({:.2}) |", path.display(), gb / best, peak as f64 / 1e9, base as f64 / 1e9);
    Ok(())
}

/// Write the synthetic model `name` in `format` to `path` as GGUF and report its size and time.
fn write_synthetic_gguf(name: &str, format: &str, path: &std::path::Path) -> esa_wgpu::Result<()> {
    let fmt = parse_format(format)?;
    let src = SyntheticModel::new(name, fmt)?;
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get()).min(16);
    let t = Instant::now();
    let bytes = esa_wgpu::model::gguf_writer::write_gguf(path, &src, &format!("synthetic {name}"), threads)?;
    let secs = t.elapsed().as_secs_f64();
    println!("| write gguf | file GB | seconds | GB/s |");
    println!("|---|---|---|---|");
    println!("| {} ({name} {fmt:?}) | {:.3} | {secs:.1} | {:.2} |", path.display(), bytes as f64 / 1e9, bytes as f64 / 1e9 / secs);
    Ok(())
}

/// FLOPs of a prefill of `n` tokens: 2 per weight per token in the layers' matrices (the LM head
/// runs on the last token only), plus attention's QK^T and PV (4 * head_dim per query head and
/// attended key). Dense: query t attends t + 1 keys. ESA: at most the budget (initial + local +
/// selected) plus the chunk's own keys; its selection work is not counted.
fn prefill_flops(c: &esa_wgpu::model::config::Config, n: usize, chunk: usize, esa_budget: Option<usize>) -> f64 {
    let (h, qd, kvd, inter) = (c.hidden_size as f64, c.q_dim() as f64, c.kv_dim() as f64, c.intermediate_size as f64);
    let per_token = 2.0 * (h * (qd + 2.0 * kvd) + qd * h + 3.0 * h * inter) * c.num_layers as f64;
    let lm_head = 2.0 * h * c.vocab_size as f64;
    let keys: f64 = (0..n)
        .map(|t| match esa_budget {
            None => (t + 1) as f64,
            Some(b) => (t + 1).min(b + t % chunk + 1) as f64,
        })
        .sum();
    let attn = 4.0 * (c.num_heads * c.head_dim * c.num_layers) as f64 * keys;
    per_token * n as f64 + lm_head + attn
}

/// Random maps of width `d` for `gpu`, written to the temporary directory (their values do not
/// change the kernels' time, only d' does).
fn random_maps_file(gpu: &GpuModel, d: usize, w: usize) -> esa_wgpu::Result<std::path::PathBuf> {
    use esa_wgpu::calibrate;
    let shape = esa_wgpu::reference::esa::HeadShape::from(&gpu.cfg);
    let maps = (0..gpu.cfg.num_layers).map(|l| calibrate::random_maps(shape, d, l as u64)).collect::<esa_wgpu::Result<Vec<_>>>()?;
    let path = std::env::temp_dir().join(format!("esa-bench-maps-d{d}-{}.safetensors", std::process::id()));
    let info = calibrate::MapsInfo { model: gpu.identity.clone(), model_name: "bench".into(), d_compressed: d, w, tokens: 0, method: "random".into(), text: String::new() };
    calibrate::save_maps(&path, &maps, &info)?;
    Ok(path)
}

fn main() -> esa_wgpu::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.write_gguf {
        let name = args.synthetic.as_deref().ok_or_else(|| esa_wgpu::Error::arg("write-gguf", "needs --synthetic NAME (the shape to write)"))?;
        return write_synthetic_gguf(name, &args.format, path);
    }
    let engine = Engine::new(&GpuOptions::default())?;
    eprintln!("gpu: {}", engine.context().describe());
    if let Some(spec) = &args.matmul {
        return bench_matmul(engine.context(), spec, &args.formats, args.coop_tiles.as_deref(), args.cpu_shapes.as_deref(), args.repeats);
    }
    if let Some(spec) = &args.matvec {
        return bench_matvec(engine.context(), spec, &args.formats, args.wide_shapes.as_deref(), args.blocks_shapes.as_deref(), args.repeats);
    }
    if let Some(path) = &args.load {
        return bench_load(engine.context(), path, args.repeats);
    }
    if args.bandwidth {
        println!("| what | size | ms | GB/s |");
        println!("|---|---|---|---|");
        return bench_bandwidth(engine.context(), args.repeats).map(|_| ());
    }
    let t_load = Instant::now();
    let (gpu, label) = match &args.synthetic {
        Some(name) => {
            let format = parse_format(&args.format)?;
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
    let attention = match args.attention.as_str() {
        "dense" => Attention::Dense,
        "esa" => {
            let mut e = esa_wgpu::EsaOptions::default();
            e.config.decode_key_bits = args.esa_decode_key_bits;
            Attention::Esa(e)
        }
        a => return Err(esa_wgpu::Error::arg("attention", format!("unknown `{a}` (dense, esa)"))),
    };
    let attention = match (attention, args.esa_d) {
        (Attention::Esa(mut e), Some(d)) => {
            e.maps = Some(random_maps_file(&gpu, d, e.config.long_distance_query_pos())?);
            eprintln!("ESA maps: random, d' = {d}");
            Attention::Esa(e)
        }
        (_, Some(_)) => return Err(esa_wgpu::Error::arg("esa-d", "needs --attention esa")),
        (a, None) => a,
    };
    let esa_budget = match &attention {
        Attention::Esa(e) => Some(e.config.n_init + e.config.n_local + e.config.top_k),
        Attention::Dense => None,
    };
    let mut session = Session::new(gpu.clone(), SessionOptions { max_context, prefill_chunk: args.prefill_chunk, all_logits: false, attention, rope_scaling: None })?;
    let sampling = match args.sampling.as_str() {
        "greedy" => Sampling::greedy(),
        "smollm2" => Sampling::default(),
        "llama-cpp" => Sampling::llama_cpp(),
        s => return Err(esa_wgpu::Error::arg("sampling", format!("unknown `{s}` (greedy, smollm2, llama-cpp)"))),
    };
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| (i * 7919 + 11) % c.vocab_size as u32).collect();
    let mut best_prefill = f64::MAX;
    let mut best_decode = f64::MAX;
    for _ in 0..args.repeats.max(1) {
        session.reset();
        // The chat's path: the prompt, then pipelined decode steps (`Session::generate`); the
        // prompt's time runs to its token's arrival, the decode's from there to the last one.
        let t = Instant::now();
        let mut first = None;
        session.generate(&prompt, &sampling, args.decode_tokens + 1, |_| {
            first.get_or_insert_with(Instant::now);
            Ok(true)
        })?;
        let first = first.unwrap_or_else(Instant::now);
        best_prefill = best_prefill.min((first - t).as_secs_f64());
        best_decode = best_decode.min(first.elapsed().as_secs_f64());
    }
    let gb = gpu.gpu_bytes as f64 / 1e9;
    let dec_tps = args.decode_tokens as f64 / best_decode;
    let pf_flops = prefill_flops(&c, args.prompt_tokens, session.prefill_chunk(), esa_budget);
    println!("model        {label}");
    println!("adapter      {}", engine.context().info.name);
    println!("weights      {:.3} GB on the GPU", gb);
    println!("| phase   | tokens | seconds | tokens/s | weight GB/s | TFLOP/s |");
    println!("|---------|--------|---------|----------|-------------|---------|");
    println!(
        "| prefill | {:6} | {:7.3} | {:8.1} |           - | {:7.2} |",
        args.prompt_tokens,
        best_prefill,
        args.prompt_tokens as f64 / best_prefill,
        pf_flops / best_prefill / 1e12
    );
    if args.decode_tokens > 0 {
        println!("| decode  | {:6} | {:7.3} | {:8.1} | {:11.1} |       - |", args.decode_tokens, best_decode, dec_tps, dec_tps * gb);
        if let Some(esa) = session.esa() {
            // The cache bytes of the first decode step (after the prompt), by count.
            let shape = esa_wgpu::reference::esa::HeadShape::from(&c);
            let b = esa_wgpu::attention::esa::decode_read_bytes(shape, esa.d_compressed(), &esa.cfg, args.prompt_tokens);
            println!(
                "ESA decode reads {:.2} MB per layer per token at context {} (d' {}, {}-bit keys): {:.2}% of the dense KV cache (compressed keys {:.2}%, attended K/V {:.2}%)",
                b.total() as f64 / 1e6,
                args.prompt_tokens + 1,
                esa.d_compressed(),
                esa.cfg.decode_key_bits,
                100.0 * b.share(b.total()),
                100.0 * b.share(b.compressed_keys),
                100.0 * b.share(b.attended_kv)
            );
        }
    }
    if args.profile {
        let ctx = engine.context();
        if !ctx.caps.timestamps {
            println!("(no per-kernel profile: the adapter has no timestamp queries)");
            return Ok(());
        }
        session.reset();
        ctx.set_profiling(true);
        let tok = session.step(&prompt, &sampling)?;
        print_profile(ctx, &format!("prefill of {} tokens", args.prompt_tokens));
        if args.decode_tokens > 0 {
            ctx.set_profiling(true);
            session.generate(&[tok], &sampling, args.decode_tokens, |_| Ok(true))?;
            print_profile(ctx, &format!("decode of {} tokens", args.decode_tokens));
        }
        ctx.set_profiling(false);
    }
    Ok(())
}

/// The context's per-kernel totals as a table, largest first.
fn print_profile(ctx: &GpuContext, what: &str) {
    let (rows, untimed) = ctx.profile_report();
    let total: f64 = rows.iter().map(|r| r.total_ms).sum();
    println!("| kernel ({what}; GPU time {total:.2} ms) | ms | dispatches | share |");
    println!("|---|---|---|---|");
    for r in rows.iter().take(25) {
        println!("| {} | {:.3} | {} | {:.1}% |", r.kernel, r.total_ms, r.dispatches, 100.0 * r.total_ms / total.max(1e-9));
    }
    if untimed > 0 {
        println!("| ({untimed} dispatches untimed) | | | |");
    }
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
