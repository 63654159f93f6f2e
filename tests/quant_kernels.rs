//! Quantized weights on the GPU: the matvec (decode) kernels for every ggml block format against
//! `quant::dequantize` + the plain-Rust matvec (the prefill matmul of every format and variant:
//! tests/matmul.rs), on random valid blocks (`quant::random_blocks`) with odd row counts, several row shards, every epilogue, and outputs
//! poisoned with NaN so an element a kernel forgot to write fails.
//!
//! Tolerance 1e-3 absolute + 1e-3 relative: the GPU dequantizes exactly (f16 scales, small
//! integers) and differs from the reference only in f32 summation order over up to 768 products.

use std::sync::{Arc, OnceLock};

use esa_wgpu::gpu::ops::linear::{self, Epilogue, LinearIo};
use esa_wgpu::gpu::tensor::GpuMatrix;
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::model::host::{HostTensor, TensorFormat};
use esa_wgpu::quant::{dequantize, random_blocks};
use esa_wgpu::reference::ops as r;
use rand::{rngs::StdRng, SeedableRng};

mod common;
use common::gpu::{epilogue_reference, poisoned, rand_vec, upload};

const FORMATS: [TensorFormat; 6] =
    [TensorFormat::Q8_0, TensorFormat::Q4_0, TensorFormat::Q4_1, TensorFormat::Q4_K, TensorFormat::Q5_K, TensorFormat::Q6_K];

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        // A small binding limit forces weights into several row shards.
        let c = GpuContext::new(&GpuOptions { max_binding: Some(4096), ..Default::default() }).expect("GPU context");
        eprintln!("adapter: {}", c.describe());
        c
    })
    .clone()
}

/// Random `rows x cols` weights in `fmt`, as a host tensor and dequantized for the reference.
fn weights(fmt: TensorFormat, rows: usize, cols: usize, seed: u64) -> (HostTensor<'static>, Vec<f32>) {
    let bytes = random_blocks(fmt, rows, cols, seed);
    let deq = dequantize("w", fmt, &bytes, rows * cols).unwrap();
    (HostTensor { name: format!("w {fmt:?}"), shape: vec![rows, cols], format: fmt, data: bytes.into() }, deq)
}

/// Columns for a format: whole blocks, K-quants in super-blocks of 256.
fn cols_for(fmt: TensorFormat, n_blocks_32: usize) -> usize {
    let be = fmt.block().0;
    (n_blocks_32 * 32).div_ceil(be) * be
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_close_within(what, got, want, &vec![0.0; want.len()]);
}

/// As `assert_close`, each element allowed `extra[i]` more.
fn assert_close_within(what: &str, got: &[f32], want: &[f32], extra: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-3 + 1e-3 * w.abs() + extra[i], "{what}[{i}]: gpu {g} vs reference {w} (allowed {} more)", extra[i]);
    }
}

/// The largest error `matvec_blocks`' quantised input can have in each value: the input is staged
/// in blocks of 32 as dx (q1 + q2 / 256) with dx = max|x| / 127 over the block, so each value
/// within dx / 512 (1% added for the f32 rounding of the scaling).
fn quantised_input_error(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            std::iter::repeat_n(m / 127.0 / 512.0 * 1.01, b.len())
        })
        .collect()
}

/// What input errors of at most `e` per value may add to each output of one token: a row's sum
/// moves by at most sum |w| e (`b`, from `r::matvec` on magnitudes); SwiGLU propagates both rows'
/// bounds (|silu'| < 1.1).
fn input_error_bound(epi: Epilogue, y: &[f32], b: &[f32]) -> Vec<f32> {
    match epi {
        Epilogue::Store | Epilogue::Accumulate => b.to_vec(),
        Epilogue::SwiGlu => (0..y.len() / 2)
            .map(|i| 1.1 * b[2 * i] * y[2 * i + 1].abs() + r::silu(y[2 * i]).abs().max(1.1 * y[2 * i].abs()) * b[2 * i + 1] + 1.1 * b[2 * i] * b[2 * i + 1])
            .collect(),
    }
}

#[test]
fn quant_matvec_every_format_and_epilogue() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(11);
    for (fi, fmt) in FORMATS.into_iter().enumerate() {
        for &(rows, blocks, n_tok) in &[(37usize, 3usize, 1usize), (74, 24, 3), (130, 9, 4), (1, 8, 1), (74, 48, 1)] {
            let cols = cols_for(fmt, blocks);
            let (host, wq) = weights(fmt, rows, cols, (fi * 100 + rows) as u64);
            let m = GpuMatrix::upload(&ctx, &host, true).unwrap();
            let wq_abs: Vec<f32> = wq.iter().map(|v| v.abs()).collect();
            let x = rand_vec(&mut rng, n_tok * cols, 1.0);
            let gamma = rand_vec(&mut rng, cols, 1.0);
            let (xb, gb) = (upload(&ctx, &x), upload(&ctx, &gamma));
            for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                if epi == Epilogue::SwiGlu && rows % 2 == 1 {
                    continue; // SwiGLU weights are (gate, up) row pairs
                }
                for use_norm in [false, true] {
                  for variant in linear::matvec_variants(&ctx) {
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
                    let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, n_tok * out_rows) };
                    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
                    let mut rec = Recorder::new(&ctx);
                    linear::matvec_with(&mut rec, &m, &io, epi, use_norm.then_some((&gb, 1e-5)), variant).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
                    let mut want = Vec::new();
                    let mut extra = Vec::new();
                    for t in 0..n_tok {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let xt = if use_norm { r::rmsnorm(xt, &gamma, 1e-5) } else { xt.to_vec() };
                        let y = r::matvec(&wq, rows, cols, &xt);
                        want.extend(epilogue_reference(epi, &y, &y0, t * rows));
                        let quantised = variant == linear::MatvecVariant::Blocks && linear::blocks_supported(&ctx, fmt, cols, n_tok, 0);
                        extra.extend(if quantised { input_error_bound(epi, &y, &r::matvec(&wq_abs, rows, cols, &quantised_input_error(&xt))) } else { vec![0.0; out_rows] });
                    }
                    let shards = m.shards.len();
                    assert_close_within(&format!("matvec {variant:?} {fmt:?} {rows}x{cols} n{n_tok} {epi:?} norm={use_norm} ({shards} shards)"), &got, &want, &extra);
                  }
                }
            }
        }
    }
}


/// `matvec_wide` at every shape the op can pick (threads per row group x rows per group, with 1-4
/// octets per iteration), every
/// format including f16, with 3 tokens and the fused norm: idle threads (more threads than
/// octets), clamped rows past the shard (rows not a multiple of the rows per workgroup) and each
/// epilogue. Adapters without fixed-size subgroups have no wide variant and skip.
#[test]
fn matvec_wide_every_shape() {
    let ctx = ctx();
    let Some(sg) = linear::fixed_subgroup(&ctx) else {
        eprintln!("skipped: no fixed-size subgroups");
        return;
    };
    let mut rng = StdRng::seed_from_u64(12);
    let n_tok = 3;
    for (fi, fmt) in [TensorFormat::F16].into_iter().chain(FORMATS).enumerate() {
        let (rows, cols) = (70usize, cols_for(fmt, 16)); // 512 columns: 64 octets
        let (host, wq) = if fmt == TensorFormat::F16 {
            let w = rand_vec(&mut rng, rows * cols, 0.5);
            let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            (HostTensor { name: "w f16".into(), shape: vec![rows, cols], format: fmt, data: bytemuck::cast_slice(&h).to_vec().into() }, h.iter().map(|v| v.to_f32()).collect())
        } else {
            weights(fmt, rows, cols, 50 + fi as u64)
        };
        let m = GpuMatrix::upload(&ctx, &host, true).unwrap();
        let x = rand_vec(&mut rng, n_tok * cols, 1.0);
        let gamma = rand_vec(&mut rng, cols, 1.0);
        let (xb, gb) = (upload(&ctx, &x), upload(&ctx, &gamma));
        let want_y: Vec<Vec<f32>> = (0..n_tok).map(|t| r::matvec(&wq, rows, cols, &r::rmsnorm(&x[t * cols..(t + 1) * cols], &gamma, 1e-5))).collect();
        let mut t = sg.max(16);
        while t <= 256 {
            for nr in [1u32, 2, 4] {
                // every shape for f16 and Q4_K; one per (format, T) for the others (pipelines are slow to build on lavapipe)
                if !(fmt == TensorFormat::F16 || fmt == TensorFormat::Q4_K || nr == [1, 2, 4][fi % 3]) {
                    continue;
                }
                for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                    if epi == Epilogue::SwiGlu && nr == 1 {
                        continue;
                    }
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
                    let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, n_tok * out_rows) };
                    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
                    let mut rec = Recorder::new(&ctx);
                    linear::matvec_wide(&mut rec, &m, &io, epi, Some((&gb, 1e-5)), {
                        // (runs per iteration, octets per run), varied over the shapes; at most 4 octets in flight per row (pipelines are slow to build on lavapipe)
                        let (u, v) = [(1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2), (1, 4)][(t.trailing_zeros() as usize + nr as usize + fi) % 7];
                        linear::WideShape { t, nr, u, v }
                    }).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
                    let mut want = Vec::new();
                    for (tk, y) in want_y.iter().enumerate() {
                        want.extend(epilogue_reference(epi, &y, &y0, tk * rows));
                    }
                    assert_close(&format!("matvec_wide T={t} NR={nr} {fmt:?} {rows}x{cols} n{n_tok} {epi:?}"), &got, &want);
                }
            }
            t *= 2;
        }
    }
    // shapes the op refuses
    let io = LinearIo { x: BufRef::from(&upload(&ctx, &[0.0; 64])), x_off: 0, x_stride: 40, x_f16: false, y: BufRef::from(&poisoned(&ctx, 64)), y_stride: 64, y_row0: 0, n_tok: 1 };
    // f16, 40 columns: 5 octets, not whole runs of 2
    let host = HostTensor { name: "w f16".into(), shape: vec![2, 40], format: TensorFormat::F16, data: vec![0u8; 160].into() };
    let m = GpuMatrix::upload(&ctx, &host, true).unwrap();
    for shape in ["48x1x1", "512x1x1", "64x3x1", "8x1x1", "64x1x5", "64x1x1x3", "64x1x1x2"].map(|s| linear::WideShape::parse(s).unwrap()) {
        let err = linear::matvec_wide(&mut Recorder::new(&ctx), &m, &io, Epilogue::Store, None, shape).unwrap_err();
        assert!(format!("{err}").contains("matvec_wide shape"), "{err}");
    }
}

/// `matvec_cpu.wgsl` (the CPU adapters' linear kernel) forced on any adapter that can run it, in
/// its one-token shape (the formats' fmt_dot32) and multi-token shapes (fmt_dec32, a last pass
/// with fewer tokens than the shape takes), every epilogue, with and without the fused norm, on
/// odd row counts split into shards, against the same reference and tolerance as above.
#[test]
fn quant_matvec_cpu_kernel_every_format() {
    let ctx = ctx();
    if !linear::cpu_capable(&ctx) {
        eprintln!("skipped: the adapter has no fixed subgroup size >= 8");
        return;
    }
    let mut rng = StdRng::seed_from_u64(12);
    for (fi, fmt) in FORMATS.into_iter().enumerate() {
        for &(rows, blocks, n_tok, shape) in &[(37usize, 9usize, 1usize, (8u32, 1u32)), (74, 24, 5, (4, 4)), (130, 3, 3, (2, 2)), (1, 8, 1, (8, 1))] {
            let cols = cols_for(fmt, blocks);
            let (host, wq) = weights(fmt, rows, cols, (fi * 100 + rows) as u64);
            let m = GpuMatrix::upload(&ctx, &host, true).unwrap();
            let x = rand_vec(&mut rng, n_tok * cols, 1.0);
            let gamma = rand_vec(&mut rng, cols, 1.0);
            let (xb, gb) = (upload(&ctx, &x), upload(&ctx, &gamma));
            for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                if epi == Epilogue::SwiGlu && rows % 2 == 1 {
                    continue;
                }
                for use_norm in [false, true] {
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
                    let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, n_tok * out_rows) };
                    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
                    let mut rec = Recorder::new(&ctx);
                    linear::linear_cpu(&mut rec, &m, &io, epi, use_norm.then_some((&gb, 1e-5)), shape).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
                    let mut want = Vec::new();
                    for t in 0..n_tok {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let xt = if use_norm { r::rmsnorm(xt, &gamma, 1e-5) } else { xt.to_vec() };
                        let y = r::matvec(&wq, rows, cols, &xt);
                        want.extend(epilogue_reference(epi, &y, &y0, t * rows));
                    }
                    let shards = m.shards.len();
                    assert_close(&format!("matvec_cpu {shape:?} {fmt:?} {rows}x{cols} n{n_tok} {epi:?} norm={use_norm} ({shards} shards)"), &got, &want);
                }
            }
        }
    }
}

/// `embed_rows.wgsl` (the GPU embedding gather) against `quant::dequantize` of the same rows, for
/// every format (f16 with a width that is not a whole octet), a table split into shards, ids in
/// every shard and repeated, an offset into the ids and a padded output stride; outputs poisoned.
/// A too-small output or ids buffer is an error naming `embed_rows`.
#[test]
fn embed_rows_gathers_every_format() {
    use esa_wgpu::gpu::ops::embed;
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(13);
    for (fi, fmt) in [TensorFormat::F16].into_iter().chain(FORMATS).enumerate() {
        let rows = 37;
        let cols = if fmt == TensorFormat::F16 { 45 } else { cols_for(fmt, 9) };
        let (host, table) = if fmt == TensorFormat::F16 {
            let w = rand_vec(&mut rng, rows * cols, 1.0);
            let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            (HostTensor { name: "emb f16".into(), shape: vec![rows, cols], format: fmt, data: bytemuck::cast_slice(&h).to_vec().into() }, h.iter().map(|v| v.to_f32()).collect::<Vec<f32>>())
        } else {
            weights(fmt, rows, cols, 70 + fi as u64)
        };
        let m = GpuMatrix::upload(&ctx, &host, false).unwrap();
        let ids: Vec<u32> = vec![99, 0, 36, 5, 5, 20, 1];
        let (off, n, stride) = (1, ids.len() - 1, cols + 3);
        let idb = ctx.upload("ids", bytemuck::cast_slice(&ids)).unwrap();
        let out = poisoned(&ctx, n * stride);
        let mut rec = Recorder::new(&ctx);
        embed::embed_rows(&mut rec, &m, &BufRef::from(&idb), off, n, &BufRef::from(&out), stride).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32(&out, 0, n * stride).unwrap();
        for (t, &id) in ids[off..].iter().enumerate() {
            let want = &table[id as usize * cols..(id as usize + 1) * cols];
            assert_close(&format!("embed_rows {fmt:?} token {t} id {id} ({} shards)", m.shards.len()), &got[t * stride..t * stride + cols], want);
            assert!(got[t * stride + cols..(t + 1) * stride].iter().all(|v| v.is_nan()), "{fmt:?}: wrote past the row");
        }
        let small = poisoned(&ctx, (n - 1) * stride + cols - 1);
        let err = embed::embed_rows(&mut Recorder::new(&ctx), &m, &BufRef::from(&idb), off, n, &BufRef::from(&small), stride).unwrap_err();
        assert!(err.to_string().contains("embed_rows"), "{err}");
        let err = embed::embed_rows(&mut Recorder::new(&ctx), &m, &BufRef::from(&idb), off + 1, n, &BufRef::from(&out), stride).unwrap_err();
        assert!(err.to_string().contains("embed_rows"), "{err}");
    }
}

/// `matvec_blocks` over rows of several iterations (TPR 64 threads x 2 blocks take 128 blocks per
/// iteration; 129, 300 and 511 blocks leave every kind of remainder) in one shard, inputs with a
/// zero block, an outlier and a block of tiny values, each epilogue,
/// with and without the fused norm, against the reference within the quantised input's bound; at the
/// op's shape and at shapes whose few workgroups each take several row tiles in turn.
#[test]
fn matvec_blocks_long_rows() {
    let ctx = Arc::new(GpuContext::new(&GpuOptions::default()).expect("GPU context"));
    let mut rng = StdRng::seed_from_u64(12);
    for fmt in [TensorFormat::Q4_0, TensorFormat::Q4_1, TensorFormat::Q8_0] {
        for &(rows, blocks) in &[(38usize, 129usize), (6, 300), (2, 511), (150, 40)] {
            let cols = blocks * 32;
            if !linear::blocks_supported(&ctx, fmt, cols, 1, 0) {
                eprintln!("skipped {fmt:?} x {cols}: not taken by matvec_blocks on this adapter");
                continue;
            }
            let (host, wq) = weights(fmt, rows, cols, (rows * 7 + blocks) as u64);
            let wq_abs: Vec<f32> = wq.iter().map(|v| v.abs()).collect();
            let m = GpuMatrix::upload(&ctx, &host, true).unwrap();
            // The input is quantised per block of 32 by its largest magnitude: one block all zero
            // (a zero step), one with an outlier 1000 times the rest, one of values far below 1.
            let mut x = rand_vec(&mut rng, cols, 1.0);
            x[32..64].fill(0.0);
            x[64 + 7] = 1000.0;
            for v in &mut x[96..128] {
                *v *= 1e-6;
            }
            let gamma = rand_vec(&mut rng, cols, 1.0);
            let (xb, gb) = (upload(&ctx, &x), upload(&ctx, &gamma));
            for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                for use_norm in [false, true] {
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    let y0 = rand_vec(&mut rng, out_rows, 1.0);
                    let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, out_rows) };
                    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok: 1 };
                    let sg = linear::fixed_subgroup(&ctx).unwrap();
                    // the last two split the columns (taken by the accumulate epilogue without the
                    // norm; the others run them unsplit): 2 and 3 splits, few and many workgroups
                    let shapes = [
                        None,
                        Some(linear::BlocksShape { tpr: sg.max(16), nr: 2, u: 3, wgs: 1, ksplit: 1 }),
                        Some(linear::BlocksShape { tpr: sg.max(16), nr: 4, u: 1, wgs: 2, ksplit: 1 }),
                        Some(linear::BlocksShape { tpr: sg.max(16), nr: 4, u: 1, wgs: 4, ksplit: 2 }),
                        Some(linear::BlocksShape { tpr: sg.max(16), nr: 2, u: 2, wgs: 512, ksplit: 3 }),
                    ];
                    for shape in shapes {
                        let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, out_rows) };
                        let io = LinearIo { y: BufRef::from(&yb), ..io.clone() };
                        let mut rec = Recorder::new(&ctx);
                        match shape {
                            None => linear::matvec_with(&mut rec, &m, &io, epi, use_norm.then_some((&gb, 1e-5)), linear::MatvecVariant::Blocks).unwrap(),
                            Some(sh) => linear::matvec_blocks(&mut rec, &m, &io, epi, use_norm.then_some((&gb, 1e-5)), sh).unwrap(),
                        }
                        rec.submit().unwrap();
                        let got = ctx.read_f32(&yb, 0, out_rows).unwrap();
                        let xt = if use_norm { r::rmsnorm(&x, &gamma, 1e-5) } else { x.clone() };
                        let y = r::matvec(&wq, rows, cols, &xt);
                        let want = epilogue_reference(epi, &y, &y0, 0);
                        let bound = input_error_bound(epi, &y, &r::matvec(&wq_abs, rows, cols, &quantised_input_error(&xt)));
                        assert_close_within(&format!("matvec_blocks {shape:?} {fmt:?} {rows}x{cols} {epi:?} norm={use_norm}"), &got, &want, &bound);
                    }
                }
            }
        }
    }
}
