//! The prefill matmul (`linear::matmul_with`) for every weight format, epilogue and variant the
//! adapter runs, on odd shapes (rows, columns and token counts that are not multiples of any tile),
//! an input offset and stride that differ from the width, several row shards, and outputs poisoned
//! with NaN so an element a kernel forgot to write fails.
//!
//! Tolerance: 1e-3 absolute + 1e-3 relative against the plain-Rust matmul. The FMA variant
//! computes in f32, so it is compared with the f32 reference; the cooperative-matrix variant
//! multiplies f16 operands with f32 accumulation, so its reference rounds both operands to f16
//! first (what remains is f32 summation order).
//!
//! The cooperative-matrix kernel cannot run on CI's software adapter; `coop_kernels_validate`
//! checks every format's composition through naga (WGSL front end, validator, SPIR-V back end) so
//! a syntax or typing error fails CI, and the numeric test runs wherever an adapter offers them
//! (recorded in docs/perf.md for the H200).

use std::sync::{Arc, OnceLock};

use esa_wgpu::gpu::ops::linear::{self, Epilogue, LinearIo, MatmulVariant};
use esa_wgpu::gpu::tensor::GpuMatrix;
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::model::host::{HostTensor, TensorFormat};
use esa_wgpu::quant::{dequantize, random_blocks};
use esa_wgpu::reference::ops as r;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod common;
use common::gpu::{rand_vec, upload, validate_wgsl};

const FORMATS: [TensorFormat; 9] = [
    TensorFormat::F16,
    TensorFormat::BF16,
    TensorFormat::F32,
    TensorFormat::Q8_0,
    TensorFormat::Q4_0,
    TensorFormat::Q4_1,
    TensorFormat::Q4_K,
    TensorFormat::Q5_K,
    TensorFormat::Q6_K,
];

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        // A small binding limit forces weights into several row shards.
        let c = GpuContext::new(&GpuOptions { max_binding: Some(16384), ..Default::default() }).expect("GPU context");
        eprintln!("adapter: {}", c.describe());
        c
    })
    .clone()
}

fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// Random weights in `fmt` as a host tensor, and the values the GPU sees (for the reference).
fn weights(fmt: TensorFormat, rows: usize, cols: usize, seed: u64) -> (HostTensor<'static>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (bytes, vals): (Vec<u8>, Vec<f32>) = match fmt {
        TensorFormat::F16 => {
            let h: Vec<half::f16> = (0..rows * cols).map(|_| half::f16::from_f32(rng.random::<f32>() - 0.5)).collect();
            (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|v| v.to_f32()).collect())
        }
        TensorFormat::BF16 => {
            let h: Vec<half::bf16> = (0..rows * cols).map(|_| half::bf16::from_f32(rng.random::<f32>() - 0.5)).collect();
            (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|v| v.to_f32()).collect())
        }
        TensorFormat::F32 => {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.random::<f32>() - 0.5).collect();
            (bytemuck::cast_slice(&v).to_vec(), v)
        }
        q => {
            let b = random_blocks(q, rows, cols, seed);
            let d = dequantize("w", q, &b, rows * cols).unwrap();
            (b, d)
        }
    };
    (HostTensor { name: format!("w {fmt:?}"), shape: vec![rows, cols], format: fmt, data: bytes.into() }, vals)
}

fn upload_matrix(ctx: &GpuContext, host: &HostTensor) -> GpuMatrix {
    if host.format == TensorFormat::F32 { GpuMatrix::upload_f32(ctx, host).unwrap() } else { GpuMatrix::upload(ctx, host, true).unwrap() }
}

/// Columns for a format: odd for the float formats, whole blocks for the quantized ones.
fn cols_for(fmt: TensorFormat, odd: usize) -> usize {
    let be = fmt.block().0;
    if be == 1 { odd } else { odd.div_ceil(be) * be }
}

fn variants(ctx: &GpuContext) -> Vec<MatmulVariant> {
    let mut v = vec![MatmulVariant::Tiled];
    if linear::matmul_variant(ctx) == MatmulVariant::Coop {
        v.push(MatmulVariant::Coop);
    }
    v
}

#[test]
fn matmul_every_format_epilogue_and_variant() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(21);
    for variant in variants(&ctx) {
        for (fi, fmt) in FORMATS.into_iter().enumerate() {
            for &(rows, odd_cols, n_tok) in &[(134usize, 203usize, 70usize), (66, 45, 5), (262, 300, 129)] {
                let cols = cols_for(fmt, odd_cols);
                let (host, wq) = weights(fmt, rows, cols, (fi * 1000 + rows) as u64);
                let m = upload_matrix(&ctx, &host);
                // Token t's input starts at x_off + t * x_stride; the gaps hold NaN, which must
                // never be read.
                let (x_off, x_stride) = (7usize, cols + 3);
                let xs = rand_vec(&mut rng, n_tok * cols, 1.0);
                let mut x = vec![f32::NAN; x_off + n_tok * x_stride];
                for t in 0..n_tok {
                    x[x_off + t * x_stride..][..cols].copy_from_slice(&xs[t * cols..][..cols]);
                }
                let xb = upload(&ctx, &x);
                let (wr, xr) = match variant {
                    MatmulVariant::Coop => (f16_round(&wq), f16_round(&xs)),
                    MatmulVariant::Tiled => (wq.clone(), xs.clone()),
                };
                let y = r::matmul(&wr, rows, cols, &xr);
                for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    // outputs land at column y_row0 of rows of y_stride floats (SwiGLU: y_row0 counts
                    // weight rows, so its outputs start at y_row0 / 2)
                    let y_row0 = 2usize;
                    let col0 = if epi == Epilogue::SwiGlu { y_row0 / 2 } else { y_row0 };
                    let y_stride = out_rows + 5;
                    let y0 = rand_vec(&mut rng, n_tok * y_stride, 1.0);
                    let init = if epi == Epilogue::Accumulate { y0.clone() } else { vec![f32::NAN; n_tok * y_stride] };
                    let yb = upload(&ctx, &init);
                    let io = LinearIo { x: BufRef::from(&xb), x_off, x_stride, y: BufRef::from(&yb), y_stride, y_row0, n_tok };
                    let mut rec = Recorder::new(&ctx);
                    linear::matmul_with(&mut rec, &m, &io, epi, variant).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32(&yb, 0, n_tok * y_stride).unwrap();
                    let what = format!("{variant:?} {fmt:?} {rows}x{cols} n{n_tok} {epi:?} ({} shards)", m.shards.len());
                    for t in 0..n_tok {
                        for i in 0..out_rows {
                            let want = match epi {
                                Epilogue::Store => y[t * rows + i],
                                Epilogue::Accumulate => y[t * rows + i] + y0[t * y_stride + col0 + i],
                                Epilogue::SwiGlu => r::silu(y[t * rows + 2 * i]) * y[t * rows + 2 * i + 1],
                            };
                            let g = got[t * y_stride + col0 + i];
                            assert!((g - want).abs() <= 1e-3 + 1e-3 * want.abs(), "{what}: token {t} row {i}: gpu {g} vs reference {want}");
                        }
                        // nothing outside the output columns was written
                        for i in (0..col0).chain(col0 + out_rows..y_stride) {
                            let g = got[t * y_stride + i];
                            let want = init[t * y_stride + i];
                            assert!(g.to_bits() == want.to_bits(), "{what}: token {t} column {i} outside the output was written");
                        }
                    }
                }
            }
        }
    }
}

/// Every format's cooperative-matrix kernel parses, validates and translates to SPIR-V, so CI
/// (no adapter with cooperative matrices) catches errors in code only a tensor-core GPU runs.
#[test]
fn coop_kernels_validate() {
    for fmt in FORMATS {
        for driver in ["matmul_coop", "matmul_coop128", "matmul"] {
            validate_wgsl(&format!("{driver}+{fmt:?}"), &linear::kernel_source(driver, fmt).unwrap());
        }
    }
}

/// The cooperative-matrix variant's 128-token tiles (chosen for large products only), on an odd
/// shape large enough to select them; runs where the adapter offers cooperative matrices.
#[test]
fn coop_large_tiles() {
    let ctx = ctx();
    if linear::matmul_variant(&ctx) != MatmulVariant::Coop || ctx.caps.coop_emulated {
        eprintln!("skipped: the adapter offers no cooperative matrices (too large for the emulation)");
        return;
    }
    let mut rng = StdRng::seed_from_u64(22);
    for fmt in [TensorFormat::F16, TensorFormat::Q4_K] {
        let (rows, n_tok) = (2050usize, 2047usize); // 17 x 16 tiles of 128 x 128
        let cols = cols_for(fmt, 250);
        let (host, wq) = weights(fmt, rows, cols, 5);
        let m = upload_matrix(&ctx, &host);
        let xs = rand_vec(&mut rng, n_tok * cols, 1.0);
        let xb = upload(&ctx, &xs);
        let y = r::matmul(&f16_round(&wq), rows, cols, &f16_round(&xs));
        for epi in [Epilogue::Accumulate, Epilogue::SwiGlu] {
            let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
            let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
            let init = if epi == Epilogue::Accumulate { y0.clone() } else { vec![f32::NAN; n_tok * out_rows] };
            let yb = upload(&ctx, &init);
            let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
            let mut rec = Recorder::new(&ctx);
            linear::matmul_with(&mut rec, &m, &io, epi, MatmulVariant::Coop).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
            for t in 0..n_tok {
                for i in 0..out_rows {
                    let want = match epi {
                        Epilogue::Accumulate => y[t * rows + i] + y0[t * out_rows + i],
                        _ => r::silu(y[t * rows + 2 * i]) * y[t * rows + 2 * i + 1],
                    };
                    let g = got[t * out_rows + i];
                    assert!((g - want).abs() <= 1e-3 + 1e-3 * want.abs(), "Coop128 {fmt:?} {epi:?}: token {t} row {i}: gpu {g} vs reference {want}");
                }
            }
        }
    }
}
