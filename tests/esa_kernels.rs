//! ESA kernels against the plain-Rust reference (src/reference/esa.rs) on random inputs of odd
//! sizes. Outputs are poisoned (NaN / u32::MAX) before each run, so an element the kernel forgot to
//! write fails.

use std::sync::{Arc, OnceLock};

use esa_wgpu::gpu::ops::{esa_pool, esa_query, esa_score, esa_topk};
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::reference::esa as r;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod common;
use common::gpu::{pack_f16_words as pack_f16, poisoned_u32};

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let c = GpuContext::new(&GpuOptions::default()).expect("GPU context");
        eprintln!("adapter: {}", c.describe());
        c
    })
    .clone()
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

fn upload_f32(ctx: &GpuContext, v: &[f32]) -> wgpu::Buffer {
    ctx.upload("in", bytemuck::cast_slice(v)).unwrap()
}

fn poisoned_f32(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    upload_f32(ctx, &vec![f32::NAN; n.max(1)])
}

/// The 8-bit copy of f16-rounded rows `[n][d]` as the engine lays it out (`esa_pack`'s module doc):
/// int8 words `[n][q8_row_words(d)]`, f16 scale pairs `[ceil(n/2)]`; plus the values and scales
/// for the reference.
struct Q8Host {
    words: Vec<u32>,
    scale_words: Vec<u32>,
    q: Vec<i8>,
    scales: Vec<f32>,
}

fn pack_q8(rows: &[f32], d: usize) -> Q8Host {
    use esa_wgpu::gpu::ops::esa_pack::q8_row_words;
    let rw = q8_row_words(d);
    let mut h = Q8Host { words: Vec::new(), scale_words: Vec::new(), q: Vec::new(), scales: Vec::new() };
    for row in rows.chunks_exact(d) {
        let (q, s) = r::quantize_row_i8(row);
        let mut bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
        bytes.resize(rw * 4, 0);
        h.words.extend(bytes.chunks(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        h.q.extend(q);
        h.scales.push(s);
    }
    let bits: Vec<u16> = h.scales.iter().map(|&s| half::f16::from_f32(s).to_bits()).collect();
    h.scale_words = bits.chunks(2).map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16).collect();
    h
}

/// A decode step's scores with `rank_only` (no `clear`, no max, no `decode_sub`): the raw sums,
/// which minus their max are `want` (the shifted scores' reference) within `atol`; the rowmax
/// scratch stays untouched (poisoned).
#[allow(clippy::too_many_arguments)]
fn check_rank_only(ctx: &GpuContext, what: &str, cq: &BufRef, ck: &BufRef, q8: Option<&esa_wgpu::gpu::ops::esa_pack::Q8Cache>, n_m: usize, d: usize, m0: usize, want: &[f32], atol: f32) {
    let (rowmax, out) = (poisoned_u32(ctx, 1), poisoned_f32(ctx, n_m));
    let (rmr, outr) = (BufRef::from(&rowmax), BufRef::from(&out));
    let mut rec = Recorder::new(ctx);
    esa_score::score(&mut rec, &esa_score::Score { cq, ck_cache: ck, rowmax: &rmr, out: &outr, n_q: 1, n_m, d, m0, q8, rank_only: true }).unwrap();
    rec.submit().unwrap();
    let raw = ctx.read_f32(&out, 0, n_m).unwrap();
    let max = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let shifted: Vec<f32> = raw.iter().map(|&x| x - max).collect();
    assert_close(&format!("{what} rank_only"), &shifted, want, atol, 0.0);
    assert_eq!(ctx.read_u32(&rowmax, 0, 1).unwrap(), vec![u32::MAX], "{what} rank_only: rowmax untouched");
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}[{i}]: gpu {g} vs reference {w}");
    }
}

#[test]
fn score_chunk_and_decode() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(11);
    // (n_q, n_m, d', m0): odd sizes, tiles part-filled, several pass-1 splits, decode.
    for &(n_q, n_m, d, m0) in &[(1usize, 1usize, 2usize, 0usize), (1, 1000, 128, 7), (3, 5, 6, 2), (70, 333, 38, 5), (129, 4100, 16, 0), (2, 64, 128, 64)] {
        let cq = rand_vec(&mut rng, n_q * d, 1.0);
        let ck = rand_vec(&mut rng, (m0 + n_m) * d, 1.0);
        let (ck_words, ck_h) = pack_f16(&ck);
        let (cqb, ckb) = (upload_f32(&ctx, &cq), ctx.upload("ck", bytemuck::cast_slice(&ck_words)).unwrap());
        let rowmax = poisoned_u32(&ctx, n_q);
        let out = poisoned_f32(&ctx, n_m);
        let mut rec = Recorder::new(&ctx);
        let (cqr, ckr, rmr, outr) = (BufRef::from(&cqb), BufRef::from(&ckb), BufRef::from(&rowmax), BufRef::from(&out));
        esa_score::score(&mut rec, &esa_score::Score { cq: &cqr, ck_cache: &ckr, rowmax: &rmr, out: &outr, n_q, n_m, d, m0, q8: None, rank_only: false }).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32(&out, 0, n_m).unwrap();
        let want = r::chunk_scores(&cq, &ck_h[m0 * d..], d).unwrap();
        // Scores are O(sqrt(d)); f32 accumulation order differs from the reference's f64.
        assert_close(&format!("score n_q={n_q} n_m={n_m} d={d}"), &got, &want, 1e-4 * d as f32, 0.0);
        assert!(got.iter().any(|&x| x == 0.0), "some token is the best of some query");
        if n_q == 1 {
            check_rank_only(&ctx, &format!("score n_m={n_m} d={d}"), &cqr, &ckr, None, n_m, d, m0, &want, 1e-4 * d as f32);
        }
    }
    // rank_only is for one query
    let b = poisoned_u32(&ctx, 64);
    let br = BufRef::from(&b);
    let mut rec = Recorder::new(&ctx);
    let err = esa_score::score(&mut rec, &esa_score::Score { cq: &br, ck_cache: &br, rowmax: &br, out: &br, n_q: 2, n_m: 4, d: 4, m0: 0, q8: None, rank_only: true }).unwrap_err().to_string();
    assert!(err.contains("rank_only"), "{err}");
}

/// The cooperative-matrix scoring passes parse, validate and translate to SPIR-V for every d' they
/// take (multiples of 16 up to `COOP_MAX_D`).
#[test]
fn coop_score_validates() {
    for d in (16..=esa_score::COOP_MAX_D).step_by(16) {
        common::gpu::validate_wgsl(&format!("esa_score_coop d={d}"), &esa_score::coop_source(d));
    }
}

/// The cooperative-matrix scoring passes against the reference on odd sizes (tiles part-filled,
/// several pass-1 splits, a last streamed tile of one query, a middle that starts past row 0), for
/// every d' on an adapter with cooperative matrices (the H200: docs/perf.md). CPU adapters run it
/// through the plain-WGSL emulation in `kernels::score_chunk_coop_emulated` instead (beside the
/// other emulated kernel, so that CI's two cores compile both at once).
#[test]
fn score_chunk_coop() {
    let ctx = ctx();
    if !esa_score::coop_supports(&ctx, 64) {
        eprintln!("skipped: no cooperative matrices (CPU adapters: kernels::score_chunk_coop_emulated)");
        return;
    }
    assert!(esa_score::coop_supports(&ctx, 16));
    let shapes = [(70, 333, 5), (129, 1100, 3), (33, 64, 0), (2, 97, 11), (129, 333, 3), (97, 200, 0)];
    let mut rng = StdRng::seed_from_u64(21);
    for d in [16usize, 48, 64, 96, 128, 192] {
        for &(n_q, n_m, m0) in &shapes {
            common::gpu::check_coop_score(&ctx, &mut rng, (d, n_q, n_m, m0));
        }
    }
}

/// The exact maps' compressed queries computed directly (`esa_query::exact`: each KV group's heads
/// rotated to w and summed) equal the product with the lossless f_q with the rotation folded in
/// (what a maps file of full width gives), on odd strides and GQA shapes; outputs outside the rows
/// stay untouched.
#[test]
fn exact_queries_match_the_folded_map() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(41);
    for (heads, kv, d, n, w) in [(9usize, 3usize, 64usize, 37usize, 4096usize), (8, 2, 128, 5, 77), (6, 6, 12, 20, 1_000_000), (4, 1, 14, 1, 0)] {
        let shape = r::HeadShape { num_heads: heads, num_kv_heads: kv, head_dim: d };
        let (qd, kd) = (shape.q_dim(), shape.kv_dim());
        let inv = inv_freq(d);
        let (x_stride, out_stride) = (qd + 2 * kd + 3, kd + 5);
        let x = rand_vec(&mut rng, n * x_stride, 1.0);
        let (fq, _) = r::lossless_maps(shape);
        let folded = r::fold_query_rotation(&fq, shape, w, &inv).unwrap();
        let xb = upload_f32(&ctx, &x);
        let out = poisoned_f32(&ctx, n * out_stride);
        let rot = esa_query::rotation_table(&ctx, w, &inv).unwrap();
        let mut rec = Recorder::new(&ctx);
        esa_query::exact(&mut rec, &esa_query::ExactQuery { x: &BufRef::from(&xb), x_stride, rot: &rot, out: &BufRef::from(&out), out_stride, n_tok: n, n_heads: heads, n_kv: kv, head_dim: d }).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32(&out, 0, n * out_stride).unwrap();
        for t in 0..n {
            for o in 0..out_stride {
                let g = got[t * out_stride + o];
                if o >= kd {
                    assert!(g.is_nan(), "({heads},{kv},{d}) token {t}: column {o} past kv_dim was written");
                    continue;
                }
                let want: f64 = (0..qd).map(|i| folded[o * qd + i] as f64 * x[t * x_stride + i] as f64).sum();
                assert!((g as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "({heads},{kv},{d}) w {w} token {t} output {o}: gpu {g} vs folded map {want}");
            }
        }
    }
}

#[test]
fn pool_windows() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(12);
    for &(n, eps) in &[(1usize, 0usize), (1, 3), (5, 1), (300, 0), (777, 1), (1000, 5), (13, 100)] {
        let x = rand_vec(&mut rng, n, 10.0);
        let (xb, out) = (upload_f32(&ctx, &x), poisoned_f32(&ctx, n));
        let mut rec = Recorder::new(&ctx);
        esa_pool::pool(&mut rec, &BufRef::from(&xb), &BufRef::from(&out), n, eps).unwrap();
        rec.submit().unwrap();
        assert_eq!(ctx.read_f32(&out, 0, n).unwrap(), r::proximity_pool(&x, eps), "pool n={n} eps={eps}");
    }
}

fn gpu_top_k(ctx: &GpuContext, scores: &[f32], k: usize, offset: u32) -> Vec<u32> {
    let n = scores.len();
    let sb = upload_f32(ctx, scores);
    let out = poisoned_u32(ctx, k.min(n));
    let scratch = esa_topk::TopkScratch::new(ctx, n).unwrap();
    let mut rec = Recorder::new(ctx);
    esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &BufRef::from(&sb), out: &BufRef::from(&out), scratch: &scratch, n, k, offset, pool: 0 }).unwrap();
    rec.submit().unwrap();
    let count = ctx.read_u32(&scratch.state, esa_topk::STATE_COUNT, 1).unwrap()[0] as usize;
    let got = ctx.read_u32(&out, 0, k.min(n).max(1)).unwrap();
    // Entries past the count must be untouched.
    assert!(got[count.min(got.len())..].iter().all(|&x| x == u32::MAX), "wrote past count {count}");
    got[..count].to_vec()
}

fn check_top_k(ctx: &GpuContext, what: &str, scores: &[f32], k: usize) {
    let got = gpu_top_k(ctx, scores, k, 0);
    assert_eq!(got, r::top_k_indices(scores, k), "top-k {what} n={} k={k}", scores.len());
}

/// Selections one after another on one scratch, in one submission and across submissions, with
/// n = 0 and k = 0 among them: the histograms each selection leaves zero for the next (no `init`
/// dispatch clears them any more) give every selection the reference's answer.
#[test]
fn top_k_reuses_its_scratch() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(14);
    let scratch = esa_topk::TopkScratch::new(&ctx, 9000).unwrap();
    let cases: Vec<(Vec<f32>, usize)> = vec![(rand_vec(&mut rng, 9000, 5.0), 300), (vec![], 4), (rand_vec(&mut rng, 4097, 1.0), 0), (rand_vec(&mut rng, 333, 2.0), 17), (vec![2.0; 5000], 4999), (rand_vec(&mut rng, 8191, 9.0), 8191)];
    for per_submission in [1, cases.len()] {
        for group in cases.chunks(per_submission) {
            let mut rec = Recorder::new(&ctx);
            let mut outs = Vec::new();
            for (scores, k) in group {
                let n = scores.len();
                let sb = upload_f32(&ctx, if n == 0 { &[0.0] } else { scores });
                let out = poisoned_u32(&ctx, (*k).min(n).max(1));
                let counts = ctx.storage("count", 4).unwrap();
                esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &BufRef::from(&sb), out: &BufRef::from(&out), scratch: &scratch, n, k: *k, offset: 0, pool: 0 }).unwrap();
                rec.copy(&scratch.state, (esa_topk::STATE_COUNT * 4) as u64, &counts, 0, 4);
                outs.push((out, counts));
            }
            rec.submit().unwrap();
            for ((scores, k), (out, counts)) in group.iter().zip(&outs) {
                let count = ctx.read_u32(counts, 0, 1).unwrap()[0] as usize;
                let got = ctx.read_u32(out, 0, count).unwrap();
                assert_eq!(got, r::top_k_indices(scores, *k), "n={} k={k}, {per_submission} per submission", scores.len());
            }
        }
    }
}

#[test]
fn top_k_cases() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(13);
    let n = 5003; // not a multiple of the block or workgroup
    let random = rand_vec(&mut rng, n, 100.0);
    let sorted: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    let reversed: Vec<f32> = sorted.iter().rev().copied().collect();
    let equal = vec![1.25f32; n];
    let coarse: Vec<f32> = (0..n).map(|_| rng.random_range(0..7) as f32 - 3.0).collect(); // many ties
    let mut specials = rand_vec(&mut rng, n, 1.0);
    for i in (0..n).step_by(3) {
        specials[i] = f32::NEG_INFINITY;
    }
    for i in (1..n).step_by(7) {
        specials[i] = f32::NAN;
    }
    specials[10] = f32::INFINITY;
    specials[11] = -0.0;
    specials[12] = 0.0;
    let mostly_nan: Vec<f32> = (0..n).map(|i| if i % 100 == 5 { i as f32 } else { f32::NAN }).collect();
    // neighbouring floats (a permutation of 1.0 + j ulp, some twice): the first radix passes see
    // runs of 1 024 equal digits, the last pass decides
    let close: Vec<f32> = (0..n).map(|i| f32::from_bits(0x3f80_0000 + ((i * 37) % (n - 500)) as u32)).collect();
    for (what, s) in [("random", &random), ("sorted", &sorted), ("reversed", &reversed), ("all-equal", &equal), ("ties", &coarse), ("-inf/NaN", &specials), ("mostly NaN", &mostly_nan), ("close", &close)] {
        for k in [1, 2, 100, 2048, n - 1, n, n + 10] {
            check_top_k(&ctx, what, s, k);
        }
    }
    for &(n, k) in &[(1usize, 1usize), (1, 5), (257, 3), (4096, 4096), (4097, 8192), (70_001, 8192), (70_001, 4095)] {
        check_top_k(&ctx, "random", &rand_vec(&mut rng, n, 1.0), k);
    }
    check_top_k(&ctx, "k=0", &random, 0);
    // ranking max-pooled scores (ESA's proximity pooling folded into the top-k)
    for eps in [1usize, 3] {
        for (what, s) in [("random", &random), ("sorted", &sorted), ("ties", &coarse)] {
            for k in [1, 100, n] {
                let scratch = esa_topk::TopkScratch::new(&ctx, n).unwrap();
                let (sb, out) = (upload_f32(&ctx, s), poisoned_u32(&ctx, k.min(n)));
                let mut rec = Recorder::new(&ctx);
                esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &BufRef::from(&sb), out: &BufRef::from(&out), scratch: &scratch, n, k, offset: 0, pool: eps }).unwrap();
                rec.submit().unwrap();
                let count = ctx.read_u32(&scratch.state, esa_topk::STATE_COUNT, 1).unwrap()[0] as usize;
                let got = ctx.read_u32(&out, 0, count).unwrap();
                assert_eq!(got, r::top_k_indices(&r::proximity_pool(s, eps), k), "top-k of pooled {what} eps={eps} k={k}");
            }
        }
    }
    // Offset is added to each index.
    let got = gpu_top_k(&ctx, &[3.0, 1.0, 2.0], 2, 100);
    assert_eq!(got, vec![100, 102]);
}

#[test]
fn top_k_large() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(14);
    let n = 1 << 20;
    // Quantised values: many exact ties at the threshold.
    let s: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 5000.0).floor()).collect();
    check_top_k(&ctx, "1M", &s, 8192);
    check_top_k(&ctx, "1M", &s, 2048);
}

const SHAPE: r::HeadShape = r::HeadShape { num_heads: 6, num_kv_heads: 2, head_dim: 12 };

fn inv_freq(d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect()
}

/// GPU-side copies of a random un-rotated K/V cache (f16) and the f16-rounded host values.
struct Cache {
    k: Vec<f32>,
    v: Vec<f32>,
    kb: wgpu::Buffer,
    vb: wgpu::Buffer,
}

fn random_cache(ctx: &GpuContext, rng: &mut StdRng, rows: usize, shape: r::HeadShape) -> Cache {
    let (kw, k) = pack_f16(&rand_vec(rng, rows * shape.kv_dim(), 1.0));
    let (vw, v) = pack_f16(&rand_vec(rng, rows * shape.kv_dim(), 1.0));
    let kb = ctx.upload("k", bytemuck::cast_slice(&kw)).unwrap();
    let vb = ctx.upload("v", bytemuck::cast_slice(&vw)).unwrap();
    Cache { k, v, kb, vb }
}

/// Un-rotated queries `[n_q][q_stride]` with junk in the padding columns.
fn strided_queries(rng: &mut StdRng, n_q: usize, q_stride: usize, shape: r::HeadShape) -> (Vec<f32>, Vec<f32>) {
    let padded = rand_vec(rng, n_q * q_stride, 1.0);
    let dense = padded.chunks(q_stride).flat_map(|r| r[..shape.q_dim()].to_vec()).collect();
    (padded, dense)
}

#[allow(clippy::too_many_arguments)]
fn gpu_attend(ctx: &GpuContext, shape: r::HeadShape, cache: &Cache, qp: &[f32], q_stride: usize, layout: &r::EsaLayout, sel: Option<(&wgpu::Buffer, &wgpu::Buffer, usize, usize)>, w: usize, invb: &wgpu::Buffer) -> Vec<f32> {
    use esa_wgpu::gpu::ops::esa_attention as ea;
    let n_q = layout.chunk.len();
    let qb = upload_f32(ctx, qp);
    let part = poisoned_f32(ctx, ea::scratch_floats(n_q, shape.num_heads, shape.num_kv_heads, shape.head_dim));
    let out = poisoned_f32(ctx, n_q * shape.q_dim());
    let refs = sel.map(|(i, s, ci, m)| (BufRef::from(i), BufRef::from(s), ci, m));
    let selection = refs.as_ref().map(|(i, s, ci, m)| ea::Selection { indices: i, state: s, count_index: *ci, max_sel: *m });
    let mut rec = Recorder::new(ctx);
    let (qr, kr, vr, pr, or) = (BufRef::from(&qb), BufRef::from(&cache.kb), BufRef::from(&cache.vb), BufRef::from(&part), BufRef::from(&out));
    ea::attend(&mut rec, &ea::EsaAttend {
        q: &qr, q_stride, k_cache: &kr, v_cache: &vr, inv_freq: invb, selection, part: &pr, out: &or,
        n_q, n_heads: shape.num_heads, n_kv: shape.num_kv_heads, head_dim: shape.head_dim,
        pos0: layout.chunk.start, n_init: layout.initial.len(), local_start: layout.local.start, w, scale: 1.0 / (shape.head_dim as f32).sqrt(),
    })
    .unwrap();
    rec.submit().unwrap();
    ctx.read_f32(&out, 0, n_q * shape.q_dim()).unwrap()
}

/// An ESA decode step's attention through `attention_gqa.wgsl` (`attention::attend_gqa_esa`): `qp`
/// is the token's fused QKV row, whose key and value the kernel appends at row `layout.chunk.start`
/// (the caller puts that row's cached values there, so the cache is unchanged). `split_len` forces
/// the split (None: the op's choice); `prefetch` the variant that loads an iteration ahead.
#[allow(clippy::too_many_arguments)]
fn gpu_attend_gqa(ctx: &GpuContext, shape: r::HeadShape, cache: &Cache, qp: &[f32], layout: &r::EsaLayout, sel: Option<(&wgpu::Buffer, &wgpu::Buffer, usize, usize)>, w: usize, invb: &wgpu::Buffer, split_len: Option<usize>, prefetch: bool) -> Vec<f32> {
    use esa_wgpu::gpu::ops::attention as at;
    let qb = upload_f32(ctx, qp);
    let part = poisoned_f32(ctx, at::scratch_floats(1, shape.num_heads, shape.head_dim));
    let out = poisoned_f32(ctx, shape.q_dim());
    let counters = ctx.storage("counters", (at::counter_words(1, shape.num_heads) * 4) as u64).unwrap();
    let mut rec = Recorder::new(ctx);
    let (qr, kr, vr, pr, or, cr) = (BufRef::from(&qb), BufRef::from(&cache.kb), BufRef::from(&cache.vb), BufRef::from(&part), BufRef::from(&out), BufRef::from(&counters));
    let refs = sel.map(|(i, s, ci, m)| (BufRef::from(i), BufRef::from(s), ci, m));
    let selection = refs.as_ref().map(|(i, s, ci, m)| esa_wgpu::gpu::ops::esa_attention::Selection { indices: i, state: s, count_index: *ci, max_sel: *m });
    let a = at::Attend { q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: invb, part: &pr, out: &or, counters: &cr, n_q: 1, n_heads: shape.num_heads, n_kv: shape.num_kv_heads, head_dim: shape.head_dim, pos0: layout.chunk.start, scale: 1.0 / (shape.head_dim as f32).sqrt() };
    let long = at::LongPart { selection, n_init: layout.initial.len(), local_start: layout.local.start, w };
    // the forced small splits merged in the kernel with prefetch, else by attention_merge
    let sp = at::GqaSplit { prefetch, merge_apart_above: if prefetch { usize::MAX } else { 0 }, ..at::GqaSplit::DEFAULT };
    at::attend_gqa_esa(&mut rec, &a, &long, Some(sp), split_len).unwrap();
    rec.submit().unwrap();
    assert!(ctx.read_u32(&counters, 0, at::counter_words(1, shape.num_heads)).unwrap().iter().all(|&c| c == 0), "split counters left at zero");
    ctx.read_f32(&out, 0, shape.q_dim()).unwrap()
}

/// The fused QKV row of the token at cache row `row`: `qp`'s queries, the cache's key and value.
fn qkv_row_with_cached_kv(qp: &[f32], cache: &Cache, row: usize, shape: r::HeadShape) -> Vec<f32> {
    let (qd, kd) = (shape.q_dim(), shape.kv_dim());
    let mut x = qp[..qd].to_vec();
    x.extend_from_slice(&cache.k[row * kd..(row + 1) * kd]);
    x.extend_from_slice(&cache.v[row * kd..(row + 1) * kd]);
    x
}

/// Absolute and relative tolerance of the attention: 2e-3 for the f32 kernel; 5e-3 where chunks
/// run on cooperative matrices (queries, keys, values and probabilities in f16), as the dense
/// cooperative-matrix kernel's test.
fn tolerance(ctx: &GpuContext, n_q: usize, head_dim: usize) -> f32 {
    let coop = n_q >= esa_wgpu::gpu::ops::attention::PREFILL_MIN_QUERIES && esa_wgpu::gpu::ops::attention::prefill_coop_supports(ctx, head_dim);
    if coop { 5e-3 } else { 2e-3 }
}

/// The cooperative-matrix ESA attention parses, validates and translates to SPIR-V for every head
/// size it takes (CI has no adapter that runs it; `attention_gathered_and_dense` checks it
/// numerically on one that does).
#[test]
fn coop_esa_attention_validates() {
    for d in [32usize, 64, 96, 128] {
        common::gpu::validate_wgsl(&format!("esa_attention_coop d={d}"), &esa_wgpu::gpu::ops::esa_attention::coop_source(d, 8));
    }
}

/// Whether `attention_gqa.wgsl` runs a decode step of this shape on the adapter.
fn gqa_capable(ctx: &GpuContext, shape: r::HeadShape) -> bool {
    esa_wgpu::gpu::ops::attention::gqa_shape_capable(ctx, shape.num_heads, shape.num_kv_heads, shape.head_dim)
}

/// A long-distance part that needs more splits (of at most 1 024 gathered rows) than the partials
/// scratch holds is an error naming it, not a panic; and head sizes whose D / 16 lanes per key are
/// not a power of two (48, 80, 96) are not taken by `attention_gqa` (they fall back to the split
/// kernel).
#[test]
fn gqa_esa_limits() {
    use esa_wgpu::gpu::ops::attention as at;
    let ctx = ctx();
    for d in [48usize, 80, 96] {
        assert!(!at::gqa_shape_capable(&ctx, 8, 2, d), "head_dim {d}");
    }
    let shape = r::HeadShape { num_heads: 8, num_kv_heads: 2, head_dim: 64 };
    if !gqa_capable(&ctx, shape) {
        eprintln!("skipped: attention_gqa does not run here");
        return;
    }
    let rows = 3600;
    let kv = ctx.storage("kv", (rows * shape.kv_dim() * 2) as u64).unwrap();
    let q = ctx.storage("qkv", ((shape.q_dim() + 2 * shape.kv_dim()) * 4) as u64).unwrap();
    let part = ctx.storage("part", (2 * shape.num_heads * (shape.head_dim + 2) * 4) as u64).unwrap(); // 2 partials
    let out = ctx.storage("out", (shape.q_dim() * 4) as u64).unwrap();
    let counters = ctx.storage("counters", 64).unwrap();
    let sel = ctx.storage("sel", 2048 * 4).unwrap();
    let state = ctx.storage("state", 64).unwrap();
    let inv = upload_f32(&ctx, &inv_freq(shape.head_dim));
    let (qr, kr, pr, or, cr, sr, str_) = (BufRef::from(&q), BufRef::from(&kv), BufRef::from(&part), BufRef::from(&out), BufRef::from(&counters), BufRef::from(&sel), BufRef::from(&state));
    let selection = Some(esa_wgpu::gpu::ops::esa_attention::Selection { indices: &sr, state: &str_, count_index: 3, max_sel: 2048 });
    let a = at::Attend { q: &qr, k_cache: &kr, v_cache: &kr, inv_freq: &inv, part: &pr, out: &or, counters: &cr, n_q: 1, n_heads: shape.num_heads, n_kv: shape.num_kv_heads, head_dim: shape.head_dim, pos0: rows - 1, scale: 0.125 };
    let long = at::LongPart { selection, n_init: 128, local_start: 3000, w: 3000 };
    let mut rec = Recorder::new(&ctx);
    let e = at::attend_gqa_esa(&mut rec, &a, &long, None, None).unwrap_err().to_string();
    assert!(e.contains("max_sel") && e.contains("long-distance"), "{e}");
}

#[test]
fn attention_gathered_and_dense() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(15);
    let cfg = r::EsaConfig { n_init: 3, n_local: 37, top_k: 50, chunk: 16, eps: 1, d_compressed: 4, w: Some(40), final_chunk: 0, decode_key_bits: 8, select_block: 0 };
    // GQA groups of 3 (one partial head chunk), 10 (chunks of 4, 4, 2), 1 (no sharing); head_dim 12..64.
    // head_dim 128 with a chunk of 70: several key tiles per split.
    let shapes = [
        SHAPE,
        r::HeadShape { num_heads: 10, num_kv_heads: 1, head_dim: 16 },
        r::HeadShape { num_heads: 3, num_kv_heads: 3, head_dim: 64 },
        r::HeadShape { num_heads: 8, num_kv_heads: 2, head_dim: 128 },
    ];
    for shape in shapes {
        let inv = inv_freq(shape.head_dim);
        let invb = upload_f32(&ctx, &inv);
        let q_stride = shape.q_dim() + 2 * shape.kv_dim();
        let cache = random_cache(&ctx, &mut rng, 400, shape);
        // Sparse: n_prev past the dense limit, a random selection of the middle, count below max_sel.
        for &(n_prev, n_q) in &[(300usize, 1usize), (250, 16), (41, 5), (180, 70)] {
            let layout = r::select_tokens(n_prev, n_q, &cfg);
            assert!(!layout.is_dense());
            let mut sel: Vec<u32> = layout.middle.clone().map(|m| m as u32).filter(|_| rng.random::<f32>() < 0.3).collect();
            sel.truncate(cfg.top_k);
            let sel_b = ctx.upload("sel", bytemuck::cast_slice(&[sel.clone(), vec![u32::MAX; cfg.top_k - sel.len()]].concat())).unwrap(); // junk past the count
            let state_b = ctx.upload("state", bytemuck::cast_slice(&[0u32, 0, 0, sel.len() as u32])).unwrap();
            let (qp, q) = strided_queries(&mut rng, n_q, q_stride, shape);
            let got = gpu_attend(&ctx, shape, &cache, &qp, q_stride, &layout, Some((&sel_b, &state_b, 3, cfg.top_k)), 40, &invb);
            let want = r::esa_attention(&q, &cache.k[..], &cache.v[..], &layout, &sel, 40, &inv, shape).unwrap();
            let tol = tolerance(&ctx, n_q, shape.head_dim);
            assert_close(&format!("esa attention {shape:?} n_prev={n_prev} n_q={n_q} sel={}", sel.len()), &got, &want, tol, tol);
            // GPUs' decode kernel: its own split, splits of 8 keys (several long-distance and local
            // ones; merged by attention_merge), and the same with the next iteration's keys loaded
            // ahead (merged in the kernel)
            if n_q == 1 && gqa_capable(&ctx, shape) {
                let row = qkv_row_with_cached_kv(&qp, &cache, n_prev, shape);
                for (split, pf) in [(None, false), (Some(8), false), (Some(8), true)] {
                    let got = gpu_attend_gqa(&ctx, shape, &cache, &row, &layout, Some((&sel_b, &state_b, 3, cfg.top_k)), 40, &invb, split, pf);
                    assert_close(&format!("GQA esa attention {shape:?} n_prev={n_prev} sel={} split {split:?} prefetch {pf}", sel.len()), &got, &want, 2e-3, 2e-3);
                }
            }
        }
        // Dense: everything local, no selection: plain causal attention.
        for &(n_prev, n_q) in &[(0usize, 7usize), (30, 1), (39, 16)] {
            let layout = r::select_tokens(n_prev, n_q, &cfg);
            assert!(layout.is_dense());
            let (qp, q) = strided_queries(&mut rng, n_q, q_stride, shape);
            let got = gpu_attend(&ctx, shape, &cache, &qp, q_stride, &layout, None, 40, &invb);
            let want = r::esa_attention(&q, &cache.k[..], &cache.v[..], &layout, &[], 40, &inv, shape).unwrap();
            let tol = tolerance(&ctx, n_q, shape.head_dim);
            assert_close(&format!("dense attention {shape:?} n_prev={n_prev} n_q={n_q}"), &got, &want, tol, tol);
            if n_q == 1 && gqa_capable(&ctx, shape) {
                let row = qkv_row_with_cached_kv(&qp, &cache, n_prev, shape);
                let got = gpu_attend_gqa(&ctx, shape, &cache, &row, &layout, None, 40, &invb, Some(8), false);
                assert_close(&format!("GQA dense-layout attention {shape:?} n_prev={n_prev}"), &got, &want, 2e-3, 2e-3);
            }
        }
    }
}

/// The whole per-layer ESA step on the GPU (score -> pool -> top-k -> attention, no read-back in
/// between) over a growing cache in chunks, against `reference::esa::esa_layer_attention`: same
/// selected indices, same output within tolerance.
#[test]
fn layer_step_matches_reference() {
    for bits in [8, 16] {
        layer_step_case(bits);
    }
}

fn layer_step_case(decode_key_bits: u32) {
    use esa_wgpu::gpu::ops::{esa_attention as ea, esa_pack::Q8Cache};
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(16);
    let inv = inv_freq(SHAPE.head_dim);
    let invb = upload_f32(&ctx, &inv);
    let cfg = r::EsaConfig { n_init: 4, n_local: 16, top_k: 8, chunk: 8, eps: 1, d_compressed: 6, w: None, final_chunk: 0, decode_key_bits, select_block: 0 };
    let w = cfg.long_distance_query_pos();
    let dc = cfg.d_compressed;
    let total = 230;
    let cache = random_cache(&ctx, &mut rng, total, SHAPE);
    let f_q = rand_vec(&mut rng, dc * SHAPE.q_dim(), 0.3);
    let f_k = rand_vec(&mut rng, dc * SHAPE.kv_dim(), 0.3);
    let folded = r::fold_query_rotation(&f_q, SHAPE, w, &inv).unwrap();
    // Compressed-key cache in f16, as the engine stores it.
    let (ck_words, ck) = pack_f16(&r::compress_rows(&f_k, &cache.k, SHAPE.kv_dim()).unwrap());
    let ckb = ctx.upload("ck", bytemuck::cast_slice(&ck_words)).unwrap();
    // Its 8-bit copy, which decode steps score with decode_key_bits 8.
    let q8h = pack_q8(&ck, dc);
    let (q8w, q8s) = (ctx.upload("ck8", bytemuck::cast_slice(&q8h.words)).unwrap(), ctx.upload("ck8 scales", bytemuck::cast_slice(&q8h.scale_words)).unwrap());
    let (q8wr, q8sr) = (BufRef::from(&q8w), BufRef::from(&q8s));
    let q8 = Q8Cache { words: &q8wr, scales: &q8sr };
    let q8 = (decode_key_bits == 8).then_some(&q8);
    let scratch = esa_topk::TopkScratch::new(&ctx, total).unwrap();
    let mut n_prev = 0;
    let mut sparse_steps = 0;
    while n_prev < total {
        let n_q = if n_prev < 200 { cfg.chunk.min(total - n_prev) } else { 1 }; // prefill, then decode
        let q = rand_vec(&mut rng, n_q * SHAPE.q_dim(), 1.0);
        let want = r::esa_layer_attention(&q, &cache.k, &cache.v, &ck, &f_q, n_prev, &inv, SHAPE, &cfg).unwrap();
        let layout = &want.layout;
        // Compressed queries: one matmul of the un-rotated queries with the folded map (the engine
        // uses its linear op; here the host does it).
        let cq = r::compress_rows(&folded, &q, SHAPE.q_dim()).unwrap();
        let (cqb, qb) = (upload_f32(&ctx, &cq), upload_f32(&ctx, &q));
        let n_m = layout.middle.len();
        let scores = poisoned_f32(&ctx, n_m);
        let pooled = poisoned_f32(&ctx, n_m);
        let rowmax = poisoned_u32(&ctx, n_q);
        let sel = poisoned_u32(&ctx, cfg.top_k);
        let part = poisoned_f32(&ctx, ea::scratch_floats(n_q, SHAPE.num_heads, SHAPE.num_kv_heads, SHAPE.head_dim));
        let out = poisoned_f32(&ctx, n_q * SHAPE.q_dim());
        let (cqr, ckr, rmr, scr, plr, selr, str_) = (BufRef::from(&cqb), BufRef::from(&ckb), BufRef::from(&rowmax), BufRef::from(&scores), BufRef::from(&pooled), BufRef::from(&sel), BufRef::from(&scratch.state));
        let mut rec = Recorder::new(&ctx);
        if !layout.is_dense() {
            esa_score::score(&mut rec, &esa_score::Score { cq: &cqr, ck_cache: &ckr, rowmax: &rmr, out: &scr, n_q, n_m, d: dc, m0: layout.middle.start, q8, rank_only: false }).unwrap();
            esa_pool::pool(&mut rec, &scr, &plr, n_m, cfg.eps).unwrap();
            esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &plr, out: &selr, scratch: &scratch, n: n_m, k: cfg.top_k, offset: layout.middle.start as u32, pool: 0 }).unwrap();
        }
        let selection = (!layout.is_dense()).then(|| ea::Selection { indices: &selr, state: &str_, count_index: esa_topk::STATE_COUNT, max_sel: cfg.top_k });
        let (qr, kr, vr, pr, or) = (BufRef::from(&qb), BufRef::from(&cache.kb), BufRef::from(&cache.vb), BufRef::from(&part), BufRef::from(&out));
        ea::attend(&mut rec, &ea::EsaAttend {
            q: &qr, q_stride: SHAPE.q_dim(), k_cache: &kr, v_cache: &vr, inv_freq: &invb, selection, part: &pr, out: &or,
            n_q, n_heads: SHAPE.num_heads, n_kv: SHAPE.num_kv_heads, head_dim: SHAPE.head_dim,
            pos0: n_prev, n_init: layout.initial.len(), local_start: layout.local.start, w, scale: 1.0 / (SHAPE.head_dim as f32).sqrt(),
        })
        .unwrap();
        rec.submit().unwrap();
        if !layout.is_dense() {
            let count = ctx.read_u32(&scratch.state, esa_topk::STATE_COUNT, 1).unwrap()[0] as usize;
            let got_sel = ctx.read_u32(&sel, 0, count).unwrap();
            assert_eq!(got_sel, want.selected, "selected tokens, chunk at {n_prev}, decode_key_bits {decode_key_bits}");
            sparse_steps += 1;
        }
        let got = ctx.read_f32(&out, 0, n_q * SHAPE.q_dim()).unwrap();
        assert_close(&format!("layer output, chunk at {n_prev}, decode_key_bits {decode_key_bits}"), &got, &want.output, 2e-3, 2e-3);
        n_prev += n_q;
    }
    assert!(sparse_steps > 20);
}

#[test]
fn pack_appends_f16_rows() {
    use esa_wgpu::gpu::ops::esa_pack;
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(17);
    let (d, stride, n_tok, pos0, rows) = (6usize, 9usize, 5usize, 3usize, 10usize);
    let x = rand_vec(&mut rng, n_tok * stride, 2.0);
    let xb = upload_f32(&ctx, &x);
    let cache = poisoned_u32(&ctx, rows * d / 2);
    let mut rec = Recorder::new(&ctx);
    esa_pack::append(&mut rec, &BufRef::from(&xb), stride, &BufRef::from(&cache), None, d, n_tok, pos0).unwrap();
    rec.submit().unwrap();
    let got = ctx.read_u32(&cache, 0, rows * d / 2).unwrap();
    let dense: Vec<f32> = x.chunks(stride).flat_map(|r| r[..d].to_vec()).collect();
    let (want, _) = pack_f16(&dense);
    assert!(got[..pos0 * d / 2].iter().chain(&got[(pos0 + n_tok) * d / 2..]).all(|&w| w == u32::MAX), "rows outside the chunk untouched");
    assert_eq!(&got[pos0 * d / 2..(pos0 + n_tok) * d / 2], &want[..]);
}

#[test]
fn undersized_buffers_are_errors() {
    let ctx = ctx();
    let small = upload_f32(&ctx, &[0.0; 4]);
    let big = upload_f32(&ctx, &[0.0; 4096]);
    let (s, b) = (BufRef::from(&small), BufRef::from(&big));
    let mut rec = Recorder::new(&ctx);
    let err = esa_pool::pool(&mut rec, &s, &b, 100, 1).unwrap_err().to_string();
    assert!(err.contains("esa_pool.x"), "{err}");
    let err = esa_score::score(&mut rec, &esa_score::Score { cq: &b, ck_cache: &s, rowmax: &b, out: &b, n_q: 2, n_m: 10, d: 8, m0: 0, q8: None, rank_only: false }).unwrap_err().to_string();
    assert!(err.contains("ck_cache"), "{err}");
    let scratch = esa_topk::TopkScratch::new(&ctx, 64).unwrap();
    assert!(esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &b, out: &s, scratch: &scratch, n: 65, k: 1, offset: 0, pool: 0 }).is_err());
    assert!(esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &b, out: &s, scratch: &scratch, n: 64, k: 10, offset: 0, pool: 0 }).is_err());
}


/// The 8-bit pack: one dispatch writes the f16 rows (as `main`) and their int8 copy; odd and even
/// pos0 (a chunk starting or ending mid scale word), d' with and without row padding. Values
/// within one step of the reference quantisation, scales within one f16 ulp of it (f32 division
/// and f16 conversion may round differently), every value within 0.63 of a step of the f16 row,
/// padding zero, rows and scale halves outside the chunk untouched. (Half a step if the kernel
/// divides the f16-rounded values by the f16 scale it stores; the H200 gave one value 0.515 steps
/// off, as if its compiler had kept those two f16 round trips in f32, which moves a value by up to
/// 127 x 2^-11 steps through the scale and 2^-11 |v| through the value.)
#[test]
fn pack_appends_int8_copy() {
    use esa_wgpu::gpu::ops::esa_pack::{self, q8_row_words, Q8Cache};
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(18);
    for &(d, stride, n_tok, pos0, rows) in &[(6usize, 9usize, 5usize, 3usize, 10usize), (16, 16, 1, 4, 6), (48, 51, 8, 7, 17), (128, 130, 33, 0, 34), (192, 200, 3, 1, 5), (38, 40, 1, 2, 3)] {
        let what = format!("d {d} n_tok {n_tok} pos0 {pos0}");
        let rw = q8_row_words(d);
        let x = rand_vec(&mut rng, n_tok * stride, 2.0);
        let xb = upload_f32(&ctx, &x);
        let cache = poisoned_u32(&ctx, rows * d / 2);
        let (words, scales) = (poisoned_u32(&ctx, rows * rw), poisoned_u32(&ctx, rows.div_ceil(2)));
        let (wr, sr) = (BufRef::from(&words), BufRef::from(&scales));
        let mut rec = Recorder::new(&ctx);
        esa_pack::append(&mut rec, &BufRef::from(&xb), stride, &BufRef::from(&cache), Some(&Q8Cache { words: &wr, scales: &sr }), d, n_tok, pos0).unwrap();
        rec.submit().unwrap();
        let dense: Vec<f32> = x.chunks(stride).flat_map(|r| r[..d].to_vec()).collect();
        let (want16, rounded) = pack_f16(&dense);
        let got16 = ctx.read_u32(&cache, 0, rows * d / 2).unwrap();
        assert_eq!(&got16[pos0 * d / 2..(pos0 + n_tok) * d / 2], &want16[..], "{what}: f16 rows");
        assert!(got16[..pos0 * d / 2].iter().chain(&got16[(pos0 + n_tok) * d / 2..]).all(|&w| w == u32::MAX), "{what}: f16 rows outside the chunk");
        let got_w = ctx.read_u32(&words, 0, rows * rw).unwrap();
        let got_s = ctx.read_u32(&scales, 0, rows.div_ceil(2)).unwrap();
        let want = pack_q8(&rounded, d);
        for row in 0..rows {
            let half_bits = (got_s[row / 2] >> (16 * (row % 2))) & 0xffff;
            let gw = &got_w[row * rw..(row + 1) * rw];
            if row < pos0 || row >= pos0 + n_tok {
                assert!(gw.iter().all(|&w| w == u32::MAX) && half_bits == 0xffff, "{what}: row {row} outside the chunk was written");
                continue;
            }
            let t = row - pos0;
            let scale = half::f16::from_bits(half_bits as u16).to_f32();
            let want_scale = want.scales[t];
            assert!((scale - want_scale).abs() <= want_scale * 1e-3, "{what}: row {row} scale {scale} vs {want_scale}");
            let bytes: Vec<i8> = gw.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect();
            assert!(bytes[d..].iter().all(|&b| b == 0), "{what}: row {row} padding");
            for i in 0..d {
                let (g, w, v) = (bytes[i], want.q[t * d + i], rounded[t * d + i]);
                assert!((g as i32 - w as i32).abs() <= 1, "{what}: row {row} value {i}: {g} vs reference {w}");
                assert!((g as f32 * scale - v).abs() <= 0.63 * scale, "{what}: row {row} value {i}: {g} x {scale} vs {v}");
            }
        }
    }
}

/// Decode scores from the 8-bit copy (`esa_score_q8.wgsl`) against `reference::esa::decode_scores_i8`
/// on the copy's values: odd n_m (a part-filled last workgroup, several workgroups), d' of 16,
/// 48, 128 and 192 (1, 3, 8 and 12 vec4 words a row: 1, 2, 8 and 8 lanes per key) and two that
/// need row padding (2, 38), odd and even m0 (the scale's half). Tolerance 1e-4 d' as the f16
/// decode (f32 sums in another order than the reference's f64). The f16 cache is a one-word
/// buffer: the 8-bit path must not read it.
#[test]
fn score_decode_int8() {
    use esa_wgpu::gpu::ops::esa_pack::Q8Cache;
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(19);
    for &(n_m, d, m0) in &[(1usize, 16usize, 0usize), (1001, 16, 3), (333, 48, 5), (4097, 128, 7), (65, 128, 0), (777, 192, 2), (257, 2, 1), (99, 38, 4)] {
        let cq = rand_vec(&mut rng, d, 1.0);
        let ck: Vec<f32> = pack_f16(&rand_vec(&mut rng, (m0 + n_m) * d, 1.0)).1;
        let h = pack_q8(&ck, d);
        let (cqb, wb, sb) = (upload_f32(&ctx, &cq), ctx.upload("ck8", bytemuck::cast_slice(&h.words)).unwrap(), ctx.upload("s", bytemuck::cast_slice(&h.scale_words)).unwrap());
        let f16_unused = poisoned_u32(&ctx, 1);
        let rowmax = poisoned_u32(&ctx, 1);
        let out = poisoned_f32(&ctx, n_m);
        let (wr, sr) = (BufRef::from(&wb), BufRef::from(&sb));
        let q8 = Q8Cache { words: &wr, scales: &sr };
        let mut rec = Recorder::new(&ctx);
        let (cqr, ckr, rmr, outr) = (BufRef::from(&cqb), BufRef::from(&f16_unused), BufRef::from(&rowmax), BufRef::from(&out));
        esa_score::score(&mut rec, &esa_score::Score { cq: &cqr, ck_cache: &ckr, rowmax: &rmr, out: &outr, n_q: 1, n_m, d, m0, q8: Some(&q8), rank_only: false }).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32(&out, 0, n_m).unwrap();
        let want = r::decode_scores_i8(&cq, &h.q[m0 * d..], &h.scales[m0..], d).unwrap();
        assert_close(&format!("int8 decode n_m={n_m} d={d} m0={m0}"), &got, &want, 1e-4 * d as f32, 0.0);
        assert!(got.contains(&0.0), "the best token scores 0");
        check_rank_only(&ctx, &format!("int8 decode n_m={n_m} d={d} m0={m0}"), &cqr, &ckr, Some(&q8), n_m, d, m0, &want, 1e-4 * d as f32);
    }
}

/// The selection from 8-bit decode scores recovers at least 95% of the selection from the f16
/// scores (both on the GPU: score -> pool -> top-k), on random keys whose channels have decaying
/// scales (calibrated maps order their outputs by weight, so a row's max comes from its first
/// channels and the small ones get few levels): d' 128 and 48, 20 000 middle tokens, k = 2 048.
#[test]
fn int8_selection_recovers_f16_selection() {
    use esa_wgpu::gpu::ops::esa_pack::Q8Cache;
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(20);
    let (n_m, k, eps) = (20_000usize, 2048usize, 1usize);
    let scratch = esa_topk::TopkScratch::new(&ctx, n_m).unwrap();
    for d in [128usize, 48] {
        let mut worst = 1.0f64;
        for trial in 0..3 {
            let cq = rand_vec(&mut rng, d, 1.0);
            let ck: Vec<f32> = (0..n_m * d).map(|i| (rng.random::<f32>() * 2.0 - 1.0) / (1.0 + (i % d) as f32 / 8.0)).collect();
            let (words16, ck_h) = pack_f16(&ck);
            let h = pack_q8(&ck_h, d);
            let cqb = upload_f32(&ctx, &cq);
            let (c16, wb, sb) = (ctx.upload("ck", bytemuck::cast_slice(&words16)).unwrap(), ctx.upload("ck8", bytemuck::cast_slice(&h.words)).unwrap(), ctx.upload("s", bytemuck::cast_slice(&h.scale_words)).unwrap());
            let (wr, sr) = (BufRef::from(&wb), BufRef::from(&sb));
            let q8 = Q8Cache { words: &wr, scales: &sr };
            let mut sel = Vec::new();
            for q8 in [None, Some(&q8)] {
                let (rowmax, scores, pooled, out) = (poisoned_u32(&ctx, 1), poisoned_f32(&ctx, n_m), poisoned_f32(&ctx, n_m), poisoned_u32(&ctx, k));
                let (cqr, ckr, rmr, scr, plr, outr) = (BufRef::from(&cqb), BufRef::from(&c16), BufRef::from(&rowmax), BufRef::from(&scores), BufRef::from(&pooled), BufRef::from(&out));
                let mut rec = Recorder::new(&ctx);
                esa_score::score(&mut rec, &esa_score::Score { cq: &cqr, ck_cache: &ckr, rowmax: &rmr, out: &scr, n_q: 1, n_m, d, m0: 0, q8, rank_only: false }).unwrap();
                esa_pool::pool(&mut rec, &scr, &plr, n_m, eps).unwrap();
                esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &plr, out: &outr, scratch: &scratch, n: n_m, k, offset: 0, pool: 0 }).unwrap();
                rec.submit().unwrap();
                let s: std::collections::HashSet<u32> = ctx.read_u32(&out, 0, k).unwrap().into_iter().collect();
                assert_eq!(s.len(), k);
                sel.push(s);
            }
            let recall = sel[0].intersection(&sel[1]).count() as f64 / k as f64;
            eprintln!("d' {d} trial {trial}: int8 selection recovers {:.2}% of the f16 one", 100.0 * recall);
            worst = worst.min(recall);
        }
        assert!(worst >= 0.95, "d' {d}: int8 selection recovers only {:.1}% of the f16 one", 100.0 * worst);
    }
}

/// Undersized 8-bit buffers are errors naming them.
#[test]
fn undersized_int8_buffers_are_errors() {
    use esa_wgpu::gpu::ops::esa_pack::{self, Q8Cache};
    let ctx = ctx();
    let small = poisoned_u32(&ctx, 4);
    let big = poisoned_u32(&ctx, 4096);
    let (s, b) = (BufRef::from(&small), BufRef::from(&big));
    let mut rec = Recorder::new(&ctx);
    let err = esa_score::score(&mut rec, &esa_score::Score { cq: &b, ck_cache: &s, rowmax: &b, out: &b, n_q: 1, n_m: 10, d: 16, m0: 0, q8: Some(&Q8Cache { words: &s, scales: &b }), rank_only: false }).unwrap_err().to_string();
    assert!(err.contains("esa_score.ck8"), "{err}");
    let err = esa_score::score(&mut rec, &esa_score::Score { cq: &b, ck_cache: &s, rowmax: &b, out: &b, n_q: 1, n_m: 10, d: 16, m0: 0, q8: Some(&Q8Cache { words: &b, scales: &s }), rank_only: false }).unwrap_err().to_string();
    assert!(err.contains("esa_score.ck8_scales"), "{err}");
    let err = esa_pack::append(&mut rec, &b, 16, &b, Some(&Q8Cache { words: &s, scales: &b }), 16, 3, 0).unwrap_err().to_string();
    assert!(err.contains("esa_pack.ck8"), "{err}");
}

/// The 8-bit decode kernel parses and validates for the widths the engine may build it for.
#[test]
fn int8_score_validates() {
    for d in [2usize, 16, 38, 48, 128, 192, 1024, 4096] {
        common::gpu::validate_wgsl(&format!("esa_score_q8 d={d}"), &esa_score::q8_source(d));
    }
}

/// Block-level selection (the InfLLM-style baseline, `EsaConfig::select_block`): `block_max`, then
/// `esa_topk` over the block scores, then `expand`, against `reference::esa::top_k_blocks` on
/// random and tied scores: counts of blocks that divide the scores and that leave a short last
/// block (picked or not), one block per token, k below one block, k past every block, an offset.
/// Outputs poisoned; tokens past the count must stay so.
#[test]
fn block_selection_matches_reference() {
    use esa_wgpu::gpu::ops::esa_blocks;
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(19);
    for &(n, block, k) in &[(37usize, 7usize, 14usize), (300, 128, 2048), (5003, 128, 2048), (5003, 1, 50), (256, 128, 200), (129, 128, 128), (1000, 16, 5), (6, 4, 4)] {
        for tied in [false, true] {
            let what = format!("n {n} block {block} k {k} tied {tied}");
            let scores: Vec<f32> = if tied { (0..n).map(|_| rng.random_range(0..4) as f32).collect() } else { rand_vec(&mut rng, n, 10.0) };
            // the last block high, so that a short last block gets picked in some cases
            let mut scores = scores;
            if n % block != 0 && !tied {
                scores[n - 1] = 100.0;
            }
            let nb = esa_blocks::n_blocks(n, block);
            let max_blocks = (k / block).max(1).min(nb);
            let offset = 11;
            let sb = upload_f32(&ctx, &scores);
            let bscores = poisoned_u32(&ctx, nb);
            let blocks = poisoned_u32(&ctx, max_blocks);
            let tokens = poisoned_u32(&ctx, max_blocks * block + 3);
            let count = poisoned_u32(&ctx, 1);
            let scratch = esa_topk::TopkScratch::new(&ctx, nb).unwrap();
            let (sr, bsr, br, tr, cr) = (BufRef::from(&sb), BufRef::from(&bscores), BufRef::from(&blocks), BufRef::from(&tokens), BufRef::from(&count));
            let state = BufRef::from(&scratch.state);
            let mut rec = Recorder::new(&ctx);
            esa_blocks::block_max(&mut rec, &sr, &bsr, n, block).unwrap();
            esa_topk::top_k(&mut rec, &esa_topk::TopK { scores: &bsr, out: &br, scratch: &scratch, n: nb, k: max_blocks, offset: 0, pool: 0 }).unwrap();
            esa_blocks::expand(&mut rec, &esa_blocks::Expand { blocks: &br, state: &state, count_index: esa_topk::STATE_COUNT, tokens: &tr, count: &cr, n, block, offset, max_blocks }).unwrap();
            rec.submit().unwrap();
            let want: Vec<u32> = r::top_k_blocks(&scores, block, k).into_iter().map(|i| i + offset as u32).collect();
            let got_count = ctx.read_u32(&count, 0, 1).unwrap()[0] as usize;
            assert_eq!(got_count, want.len(), "{what}: token count");
            let got = ctx.read_u32(&tokens, 0, max_blocks * block + 3).unwrap();
            assert_eq!(&got[..got_count], &want[..], "{what}: tokens");
            assert!(got[got_count..].iter().all(|&w| w == u32::MAX), "{what}: words past the count written");
        }
    }
    // a block size the budget cannot hold is refused when a session is made
    let bad = r::EsaConfig { select_block: 4096, ..r::EsaConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("esa.select_block"));
}
