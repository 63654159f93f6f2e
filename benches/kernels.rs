//! Criterion benches of the dense-path kernels at model-sized shapes. Each iteration records,
//! submits and waits, so times include one submit (~tens of microseconds on real GPUs).
//! Throughput is reported in bytes of weights/KV read, to compare with the adapter's bandwidth.
//!
//!   cargo bench --bench kernels             # ESA_BENCH_SMALL=1 for quick runs on software adapters

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use esa_wgpu::gpu::ops::attention;
use esa_wgpu::gpu::ops::linear::{self, Epilogue, LinearIo};
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
            let io = LinearIo { x: BufRef::from(&x), x_off: 0, x_stride: cols, y: BufRef::from(&y), y_stride: rows, y_row0: 0, n_tok };
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
        let inv = ctx.upload("inv", bytemuck::cast_slice(&vec![0.01f32; d / 2])).unwrap();
        g.throughput(Throughput::Bytes(2 * kv_bytes));
        g.bench_function(format!("ctx={n} heads={nh}/{nkv} d={d}"), |b| {
            b.iter(|| {
                let mut rec = Recorder::new(&ctx);
                let (qr, kr, vr, pr, or) = (BufRef::from(&q), BufRef::from(&kc), BufRef::from(&vc), BufRef::from(&part), BufRef::from(&out));
                attention::attend(&mut rec, &attention::Attend { q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &inv, part: &pr, out: &or, n_q: 1, n_heads: nh, n_kv: nkv, head_dim: d, pos0: n - 1 }).unwrap();
                rec.submit().unwrap();
                ctx.sync().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_linear, bench_attention);
criterion_main!(benches);
