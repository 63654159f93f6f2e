//! Criterion benches of the four ESA kernels at the paper's shapes: |M| from 4k to 256k middle
//! tokens, d' = 128, k = 2048, chunks of l_C = 1 (decode) and 512 (prefill); attention over
//! n_init 128 + k 2048 + n_local 4096 + the chunk, 32/8 heads of 128. Each iteration records,
//! submits and waits. Throughput is elements per second: (query, middle token) pairs for scoring,
//! scores for pooling and top-k, (query, head, key) triples for attention.
//!
//!   cargo bench --bench esa_kernels     # ESA_BENCH_SMALL=1 (or CI) for a quick run on lavapipe

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use criterion::measurement::WallTime;
use esa_wgpu::gpu::ops::{esa_attention as ea, esa_pool, esa_score, esa_topk};
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};

fn small() -> bool {
    std::env::var("ESA_BENCH_SMALL").is_ok() || std::env::var("CI").is_ok()
}

const D_COMPRESSED: usize = 128;
const TOP_K: usize = 2048;

fn middle_sizes() -> &'static [usize] {
    if small() { &[4096] } else { &[4096, 16384, 65536, 262144] }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    if small() {
        g.warm_up_time(Duration::from_millis(100));
        g.measurement_time(Duration::from_secs(1));
    }
    g
}

/// Deterministic pseudo-random floats in [-1, 1) (no rand dependency in the bench's hot setup).
fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn f16_words(v: &[f32]) -> Vec<u32> {
    v.chunks(2).map(|p| half::f16::from_f32(p[0]).to_bits() as u32 | (half::f16::from_f32(p[1]).to_bits() as u32) << 16).collect()
}

fn run(ctx: &GpuContext, record: impl Fn(&mut Recorder)) {
    let mut rec = Recorder::new(ctx);
    record(&mut rec);
    rec.submit().unwrap();
    ctx.sync().unwrap();
}

fn bench_score(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    eprintln!("adapter: {}", ctx.describe());
    let mut g = group(c, "esa_score");
    for &n_m in middle_sizes() {
        let ck = ctx.upload("ck", bytemuck::cast_slice(&f16_words(&noise(n_m * D_COMPRESSED, 1)))).unwrap();
        let out = ctx.storage("scores", (n_m * 4) as u64).unwrap();
        for n_q in [1usize, 512] {
            let cq = ctx.upload("cq", bytemuck::cast_slice(&noise(n_q * D_COMPRESSED, 2))).unwrap();
            let rowmax = ctx.storage("rowmax", (n_q * 4) as u64).unwrap();
            let (cqr, ckr, rmr, outr) = (BufRef::from(&cq), BufRef::from(&ck), BufRef::from(&rowmax), BufRef::from(&out));
            g.throughput(Throughput::Elements((n_q * n_m) as u64));
            g.bench_function(format!("l_C={n_q} |M|={n_m} d'={D_COMPRESSED}"), |b| {
                b.iter(|| run(&ctx, |rec| esa_score::score(rec, &esa_score::Score { cq: &cqr, ck_cache: &ckr, rowmax: &rmr, out: &outr, n_q, n_m, d: D_COMPRESSED, m0: 0, q8: None, rank_only: false }).unwrap()))
            });
        }
    }
    g.finish();
}

fn bench_pool(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    let mut g = group(c, "esa_pool");
    for &n in middle_sizes() {
        let x = ctx.upload("x", bytemuck::cast_slice(&noise(n, 3))).unwrap();
        let y = ctx.storage("y", (n * 4) as u64).unwrap();
        let (xr, yr) = (BufRef::from(&x), BufRef::from(&y));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("|M|={n} eps=1"), |b| b.iter(|| run(&ctx, |rec| esa_pool::pool(rec, &xr, &yr, n, 1).unwrap())));
    }
    g.finish();
}

fn bench_topk(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    let mut g = group(c, "esa_topk");
    let mut cases: Vec<(usize, usize)> = middle_sizes().iter().map(|&n| (n, TOP_K)).collect();
    if !small() {
        cases.extend([(1 << 20, 2048), (1 << 20, 8192)]);
    }
    for (n, k) in cases {
        let x = ctx.upload("scores", bytemuck::cast_slice(&noise(n, 4))).unwrap();
        let out = ctx.storage("indices", (k * 4) as u64).unwrap();
        let scratch = esa_topk::TopkScratch::new(&ctx, n).unwrap();
        let (xr, outr) = (BufRef::from(&x), BufRef::from(&out));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("n={n} k={k}"), |b| {
            b.iter(|| run(&ctx, |rec| esa_topk::top_k(rec, &esa_topk::TopK { scores: &xr, out: &outr, scratch: &scratch, n, k, offset: 0, pool: 0 }).unwrap()))
        });
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU");
    let mut g = group(c, "esa_attention");
    let (nh, nkv, d) = (32usize, 8usize, 128usize);
    let (n_init, n_local, n_middle) = (128usize, 4096usize, 8192usize);
    let chunks: &[usize] = if small() { &[1] } else { &[1, 512] };
    let max_q = *chunks.iter().max().unwrap();
    let rows = n_init + n_middle + n_local + max_q;
    let kv_words = rows * nkv * d / 2;
    let k = ctx.upload("k", bytemuck::cast_slice(&f16_words(&noise(2 * kv_words, 5)))).unwrap();
    let v = ctx.upload("v", bytemuck::cast_slice(&f16_words(&noise(2 * kv_words, 6)))).unwrap();
    let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
    let inv = ctx.upload("inv", bytemuck::cast_slice(&inv)).unwrap();
    // Every fourth middle token selected; the count sits in word 0 of `state`.
    let sel: Vec<u32> = (0..TOP_K as u32).map(|i| n_init as u32 + 4 * i).collect();
    let sel = ctx.upload("sel", bytemuck::cast_slice(&sel)).unwrap();
    let state = ctx.upload("state", bytemuck::cast_slice(&[TOP_K as u32])).unwrap();
    for &n_q in chunks {
        let q = ctx.upload("q", bytemuck::cast_slice(&noise(n_q * nh * d, 7))).unwrap();
        let part = ctx.storage("part", (ea::scratch_floats(n_q, nh, nkv, d) * 4) as u64).unwrap();
        let out = ctx.storage("out", (n_q * nh * d * 4) as u64).unwrap();
        let pos0 = n_init + n_middle + n_local;
        let keys = n_init + TOP_K + n_local + n_q; // per query, roughly (causal chunk: + t)
        let (qr, kr, vr, pr, or, sr, str_) = (BufRef::from(&q), BufRef::from(&k), BufRef::from(&v), BufRef::from(&part), BufRef::from(&out), BufRef::from(&sel), BufRef::from(&state));
        g.throughput(Throughput::Elements((n_q * nh * keys) as u64));
        g.bench_function(format!("l_C={n_q} keys={keys} heads={nh}/{nkv} d={d}"), |b| {
            b.iter(|| {
                run(&ctx, |rec| {
                    let selection = Some(ea::Selection { indices: &sr, state: &str_, count_index: 0, max_sel: TOP_K });
                    ea::attend(rec, &ea::EsaAttend {
                        q: &qr, q_stride: nh * d, k_cache: &kr, v_cache: &vr, inv_freq: &inv, selection, part: &pr, out: &or,
                        n_q, n_heads: nh, n_kv: nkv, head_dim: d, pos0, n_init, local_start: pos0 - n_local, w: n_local, scale: 1.0 / (d as f32).sqrt(),
                    })
                    .unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_score, bench_pool, bench_topk, bench_attention);
criterion_main!(benches);
