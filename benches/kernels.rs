//! Criterion benches of the dense-path kernels at model-sized shapes (matvec, decode attention,
//! the prefill matmul per format and variant, prefill attention). Each iteration records,
//! submits and waits, so times include one submit (~tens of microseconds on real GPUs).
//! Throughput is reported in bytes of weights/KV read, to compare with the adapter's bandwidth.
//!
//!   cargo bench --bench kernels             # ESA_BENCH_SMALL=1 for quick runs on software adapters

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use esa_wgpu::gpu::ops::attention;
use esa_wgpu::gpu::ops::linear::{self, Epilogue, LinearIo, MatmulVariant};
use esa_wgpu::gpu::tensor::GpuMatrix;
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::model::host::{HostTensor, TensorFormat};

fn small() -> bool {
    std::env::var("ESA_BENCH_SMALL").is_ok() || std::env::var("CI").is_ok()
}

fn bench_linear(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    eprintln!("adapter: {}", ctx.describe());
    let shapes: &[(usize, usize)] = if small() { &[(576, 576), (1536, 576)] } else { &[(576, 576), (3072, 576), (4096, 4096), (28672, 4096), (4096, 14336)] };
    let mut g = c.benchmark_group("linear");
    g.sample_size(10);
    for &(rows, cols) in shapes {
        let data = vec![0x3c00u16; rows * cols]; // 1.0 in f16
        let t = HostTensor { name: "w".into(), shape: vec![rows, cols], format: TensorFormat::F16, data: bytemuck::cast_slice(&data).to_vec().into() };
        let m = GpuMatrix::upload(&ctx, &t, true).unwrap();
        let x = ctx.upload("x", bytemuck::cast_slice(&vec![0.01f32; 512 * cols])).unwrap();
        let y = ctx.storage("y", (512 * rows * 4) as u64).unwrap();
        for n_tok in [1usize, 512] {
            if small() && n_tok > 1 && rows * cols > 1_000_000 {
                continue;
            }
            let io = LinearIo { x: BufRef::from(&x), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&y), y_stride: rows, y_row0: 0, n_tok };
            g.throughput(Throughput::Bytes(m.bytes() as u64));
            g.bench_function(format!("f16 {rows}x{cols} tokens={n_tok}"), |b| {
                b.iter(|| {
                    let mut rec = Recorder::new(&ctx);
                    linear::linear(&mut rec, &m, &io, Epilogue::Store).unwrap();
                    rec.submit().unwrap();
                    ctx.sync().unwrap();
                })
            });
        }
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    let (nh, nkv, d) = (32usize, 8usize, 128usize);
    let ctxs: &[usize] = if small() { &[1024] } else { &[1024, 8192, 32768] };
    let mut g = c.benchmark_group("attention_decode");
    g.sample_size(10);
    for &n in ctxs {
        let kv_bytes = (n * nkv * d * 2) as u64;
        let kc = ctx.storage("k", kv_bytes).unwrap();
        let vc = ctx.storage("v", kv_bytes).unwrap();
        let q = ctx.storage("q", (nh * d * 4) as u64).unwrap();
        let out = ctx.storage("o", (nh * d * 4) as u64).unwrap();
        let part = ctx.storage("part", (attention::scratch_floats(1, nh, d) * 4) as u64).unwrap();
        let counters = ctx.storage("counters", (attention::counter_words(1, nh) * 4) as u64).unwrap();
        let inv = ctx.upload("inv", bytemuck::cast_slice(&vec![0.01f32; d / 2])).unwrap();
        g.throughput(Throughput::Bytes(2 * kv_bytes));
        g.bench_function(format!("ctx={n} heads={nh}/{nkv} d={d}"), |b| {
            b.iter(|| {
                let mut rec = Recorder::new(&ctx);
                let (qr, kr, vr, pr, or) = (BufRef::from(&q), BufRef::from(&kc), BufRef::from(&vc), BufRef::from(&part), BufRef::from(&out));
                attention::attend(&mut rec, &attention::Attend { counters: &BufRef::from(&counters), q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &inv, part: &pr, out: &or, n_q: 1, n_heads: nh, n_kv: nkv, head_dim: d, pos0: n - 1, scale: 1.0 / (d as f32).sqrt() }).unwrap();
                rec.submit().unwrap();
                ctx.sync().unwrap();
            })
        });
    }
    g.finish();
}

/// The prefill matmul alone, for every weight format and each variant the adapter runs (FLOPs as
/// throughput: criterion's "elements/s" is then FLOP/s).
fn bench_matmul(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    let (tokens, rows, cols) = if small() { (64usize, 512usize, 512usize) } else { (512, 4096, 4096) };
    let x = ctx.upload("x", bytemuck::cast_slice(&vec![0.01f32; tokens * cols])).unwrap();
    let y = ctx.storage("y", (tokens * rows * 4) as u64).unwrap();
    let io = LinearIo { x: BufRef::from(&x), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&y), y_stride: rows, y_row0: 0, n_tok: tokens };
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * tokens * rows * cols) as u64));
    let formats = [TensorFormat::F16, TensorFormat::BF16, TensorFormat::Q8_0, TensorFormat::Q4_0, TensorFormat::Q4_1, TensorFormat::Q4_K, TensorFormat::Q5_K, TensorFormat::Q6_K];
    let mut variants = vec![MatmulVariant::Tiled];
    if linear::matmul_variant(&ctx) == MatmulVariant::Coop {
        variants.push(MatmulVariant::Coop);
    }
    if linear::cpu_variant(&ctx) {
        variants.push(MatmulVariant::Cpu);
    }
    for fmt in formats {
        let data = match fmt {
            TensorFormat::F16 | TensorFormat::BF16 => bytemuck::cast_slice(&vec![0x3c00u16; rows * cols]).to_vec(),
            q => esa_wgpu::quant::random_blocks(q, rows, cols, 1),
        };
        let t = HostTensor { name: "w".into(), shape: vec![rows, cols], format: fmt, data: data.into() };
        let m = GpuMatrix::upload(&ctx, &t, true).unwrap();
        for &v in &variants {
            g.bench_function(format!("{fmt:?} {v:?} {tokens}x{rows}x{cols}"), |b| {
                b.iter(|| {
                    let mut rec = Recorder::new(&ctx);
                    linear::matmul_with(&mut rec, &m, &io, Epilogue::Store, v).unwrap();
                    rec.submit().unwrap();
                    ctx.sync().unwrap();
                })
            });
        }
    }
    g.finish();
}

/// Attention of a prefill chunk over the cache: the tiled kernel (`attention_prefill.wgsl`)
/// against the split-key one (and, on CPU adapters, `attention_cpu.wgsl`), at a Llama-3-8B head
/// shape.
fn bench_attention_prefill(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    let (nh, nkv, d) = (32usize, 8usize, 128usize);
    let (n_q, pos0) = if small() { (64usize, 64usize) } else { (512, 3584) };
    let n = pos0 + n_q;
    let kv_bytes = (n * nkv * d * 2) as u64;
    let kc = ctx.upload("k", &vec![0x11u8; kv_bytes as usize]).unwrap();
    let vc = ctx.upload("v", &vec![0x11u8; kv_bytes as usize]).unwrap();
    let q = ctx.upload("q", bytemuck::cast_slice(&vec![0.01f32; n_q * nh * d])).unwrap();
    let out = ctx.storage("o", (n_q * nh * d * 4) as u64).unwrap();
    let part = ctx.storage("part", (attention::scratch_floats(n_q, nh, d) * 4) as u64).unwrap();
    let counters = ctx.storage("counters", (attention::counter_words(n_q, nh) * 4) as u64).unwrap();
    let inv = ctx.upload("inv", bytemuck::cast_slice(&vec![0.01f32; d / 2])).unwrap();
    let flops = 4 * nh * d * (0..n_q).map(|t| pos0 + t + 1).sum::<usize>();
    let mut g = c.benchmark_group("attention_prefill");
    g.sample_size(10);
    g.throughput(Throughput::Elements(flops as u64));
    // the CPU adapters' kernel where it is the one the op picks (attend_cpu: attention_cpu_block.wgsl
    // for chunks of 8 or more queries)
    let kinds: &[&str] = if linear::cpu_variant(&ctx) { &["tiled", "split", "cpu"] } else { &["tiled", "split"] };
    for &kind in kinds {
        g.bench_function(format!("{kind} {n_q} queries at {pos0} heads={nh}/{nkv} d={d}"), |b| {
            b.iter(|| {
                let mut rec = Recorder::new(&ctx);
                let (qr, kr, vr, pr, or) = (BufRef::from(&q), BufRef::from(&kc), BufRef::from(&vc), BufRef::from(&part), BufRef::from(&out));
                let a = attention::Attend { counters: &BufRef::from(&counters), q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &inv, part: &pr, out: &or, n_q, n_heads: nh, n_kv: nkv, head_dim: d, pos0, scale: 1.0 / (d as f32).sqrt() };
                match kind {
                    "tiled" => attention::attend_prefill(&mut rec, &a).unwrap(),
                    "split" => attention::attend_split(&mut rec, &a).unwrap(),
                    _ => attention::attend_cpu(&mut rec, &a).unwrap(),
                }
                rec.submit().unwrap();
                ctx.sync().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_linear, bench_attention, bench_matmul, bench_attention_prefill);
criterion_main!(benches);
