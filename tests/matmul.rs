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

use esa_wgpu::gpu::ops::linear::{self, CoopTile, Epilogue, LinearIo, MatmulVariant};
use esa_wgpu::gpu::ops::pack_f16;
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

/// Without the binding cap: the tile tests need shards with many rows.
fn ctx_unsharded() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| GpuContext::new(&GpuOptions::default()).expect("GPU context")).clone()
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
    // the CPU-adapter kernel (matvec_cpu.wgsl) runs wherever subgroups have one fixed size >= 8
    if linear::cpu_capable(ctx) {
        v.push(MatmulVariant::Cpu);
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
                    MatmulVariant::Tiled | MatmulVariant::Cpu => (wq.clone(), xs.clone()),
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
                    let mut io = LinearIo { x: BufRef::from(&xb), x_off, x_stride, x_f16: false, y: BufRef::from(&yb), y_stride, y_row0, n_tok };
                    let mut rec = Recorder::new(&ctx);
                    // the session's cooperative-matrix matmuls read f16 inputs: every other format
                    let x16 = ctx.storage("x f16", pack_f16::packed_bytes(n_tok, cols)).unwrap();
                    if variant == MatmulVariant::Coop && fi % 2 == 1 {
                        io = pack_f16::pack_f16(&mut rec, &io, cols, &BufRef::from(&x16)).unwrap();
                    }
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
        validate_wgsl(&format!("matmul+{fmt:?}"), &linear::kernel_source("matmul", fmt).unwrap());
        for tile in TILES.into_iter().map(|t| CoopTile::parse(t).unwrap()).chain(CoopTile::BY_SIZE) {
            for x16 in [false, true] {
                validate_wgsl(&format!("matmul_coop[{tile},x16={x16}]+{fmt:?}"), &linear::coop_kernel_source(tile, fmt, x16).unwrap());
            }
        }
    }
}

/// Tile shapes of the cooperative-matrix matmul that the op may choose or the benches sweep.
const TILES: [&str; 22] = [
    "2x4x2x2x32", "2x4x4x2x32", "2x2x4x4x32", "2x2x4x4x16", "2x4x4x4x16", "4x2x4x4x16", "2x4x4x2x16", "2x4x4x4x32x1", "4x2x4x4x32x1",
    "2x4x4x4x16x1", "4x4x4x2x32x1", "4x4x2x4x32x1", "2x4x4x2x32x1", "2x4x2x2x32x1", "2x2x1x2x32",
    // fewer accumulators a subgroup (session 16's sweep)
    "2x4x2x4x32x1", "4x2x2x4x32x1", "2x2x4x4x32x1",
    // loads two steps ahead
    "4x2x4x4x32x1x2", "2x4x4x2x32x2x2", "4x2x4x4x16x2x2", "2x2x1x2x32x2x2",
];

/// Every tile shape of `TILES` on an odd shape (a partial tile in every direction, two shards),
/// each epilogue, two formats; where the adapter offers cooperative matrices and the tile fits its
/// workgroup memory.
#[test]
fn coop_tile_shapes() {
    let ctx = ctx_unsharded();
    if linear::matmul_variant(&ctx) != MatmulVariant::Coop || ctx.caps.coop_emulated {
        eprintln!("skipped: the adapter offers no cooperative matrices (too large for the emulation)");
        return;
    }
    let mut rng = StdRng::seed_from_u64(23);
    for t in TILES {
        let tile = CoopTile::parse(t).unwrap();
        if tile.workgroup_bytes() > ctx.caps.max_workgroup_storage {
            eprintln!("tile {tile}: needs {} bytes of workgroup memory, skipped", tile.workgroup_bytes());
            continue;
        }
        for fmt in [TensorFormat::F16, TensorFormat::Q4_K] {
            let (rows, n_tok) = (tile.rows() as usize * 2 + 34, tile.tokens() as usize + 7);
            let cols = cols_for(fmt, 300);
            let (host, wq) = weights(fmt, rows, cols, 9);
            let m = upload_matrix(&ctx, &host);
            let xs = rand_vec(&mut rng, n_tok * cols, 1.0);
            let xb = upload(&ctx, &xs);
            let y = r::matmul(&f16_round(&wq), rows, cols, &f16_round(&xs));
            let x16 = ctx.storage("x f16", pack_f16::packed_bytes(n_tok, cols)).unwrap();
            for (epi, f16_in) in [(Epilogue::Store, false), (Epilogue::Store, true), (Epilogue::Accumulate, true), (Epilogue::SwiGlu, false), (Epilogue::SwiGlu, true)] {
                let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
                let init = if epi == Epilogue::Accumulate { y0.clone() } else { vec![f32::NAN; n_tok * out_rows] };
                let yb = upload(&ctx, &init);
                let mut io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
                let mut rec = Recorder::new(&ctx);
                if f16_in {
                    io = pack_f16::pack_f16(&mut rec, &io, cols, &BufRef::from(&x16)).unwrap();
                }
                linear::matmul_coop_tile(&mut rec, &m, &io, epi, tile).unwrap();
                rec.submit().unwrap();
                let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
                for t in 0..n_tok {
                    for i in 0..out_rows {
                        let want = match epi {
                            Epilogue::Store => y[t * rows + i],
                            Epilogue::Accumulate => y[t * rows + i] + y0[t * out_rows + i],
                            Epilogue::SwiGlu => r::silu(y[t * rows + 2 * i]) * y[t * rows + 2 * i + 1],
                        };
                        let g = got[t * out_rows + i];
                        assert!((g - want).abs() <= 1e-3 + 1e-3 * want.abs(), "tile {tile} {fmt:?} {epi:?} f16 input {f16_in}: token {t} row {i}: gpu {g} vs reference {want}");
                    }
                }
            }
        }
    }
}

/// The cooperative-matrix variant's 128-token tiles (chosen for large products only), on an odd
/// shape large enough to select them; runs where the adapter offers cooperative matrices.
#[test]
fn coop_large_tiles() {
    let ctx = ctx_unsharded();
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
            let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
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

/// pack_f16 (runs everywhere): an odd width with a strided, NaN-gapped input; each value is the f16
/// nearest the input (compared through f16 rounding, 1 ulp allowed for the rounding mode), the
/// padding up to a whole octet is zero, and nothing past the packed rows is written.
#[test]
fn pack_f16_rounds_and_pads() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(24);
    for &(cols, n_tok) in &[(45usize, 7usize), (8, 1), (203, 33)] {
        let (x_off, x_stride) = (5usize, cols + 3);
        let xs = rand_vec(&mut rng, n_tok * cols, 3.0);
        let mut x = vec![f32::NAN; x_off + n_tok * x_stride];
        for t in 0..n_tok {
            x[x_off + t * x_stride..][..cols].copy_from_slice(&xs[t * cols..][..cols]);
        }
        let xb = upload(&ctx, &x);
        let ld = pack_f16::packed_halves(cols);
        let bytes = pack_f16::packed_bytes(n_tok, cols) as usize + 64;
        let out = ctx.upload("poisoned", &vec![0xffu8; bytes]).unwrap();
        let io = LinearIo { x: BufRef::from(&xb), x_off, x_stride, x_f16: false, y: BufRef::from(&xb), y_stride: 1, y_row0: 0, n_tok };
        let mut rec = Recorder::new(&ctx);
        let packed = pack_f16::pack_f16(&mut rec, &io, cols, &BufRef::from(&out)).unwrap();
        rec.submit().unwrap();
        assert!(packed.x_f16 && packed.x_off == 0 && packed.x_stride == ld);
        let got: Vec<u16> = bytemuck::pod_collect_to_vec(&ctx.read(&out, 0, bytes as u64).unwrap());
        for t in 0..n_tok {
            for c in 0..ld {
                let g = half::f16::from_bits(got[t * ld + c]);
                if c >= cols {
                    assert!(g.to_bits() == 0, "cols {cols}: token {t} pad column {c} is {g}, want 0");
                    continue;
                }
                let want = half::f16::from_f32(xs[t * cols + c]);
                let ulp = (g.to_bits() as i32 - want.to_bits() as i32).abs();
                assert!(ulp <= 1, "cols {cols}: token {t} column {c}: {g} vs {want}");
            }
        }
        assert!(got[n_tok * ld..].iter().all(|&b| b == 0xffff), "cols {cols}: written past the packed rows");
    }
}

/// One split-K case of `matmul_split_k`: outputs at column `y_row0` of rows `pad` wider than the
/// product (NaN, or random values to accumulate into), `run` records the matmul over `io`; every
/// output is checked against the reference products `y` (1e-3 absolute + 1e-3 relative) and every
/// other column for being untouched.
#[allow(clippy::too_many_arguments)]
fn split_case(ctx: &GpuContext, rng: &mut StdRng, what: &str, xb: &wgpu::Buffer, y: &[f32], epi: Epilogue, (rows, cols, n_tok): (usize, usize, usize), (y_row0, pad): (usize, usize), run: impl FnOnce(&mut Recorder, &LinearIo) -> esa_wgpu::Result<()>) {
    let y_stride = rows + pad;
    let col0 = if epi == Epilogue::SwiGlu { y_row0 / 2 } else { y_row0 };
    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
    let y0 = rand_vec(rng, n_tok * y_stride, 1.0);
    let init = if epi == Epilogue::Accumulate { y0.clone() } else { vec![f32::NAN; n_tok * y_stride] };
    let yb = upload(ctx, &init);
    let io = LinearIo { x: BufRef::from(xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride, y_row0, n_tok };
    let mut rec = Recorder::new(ctx);
    run(&mut rec, &io).unwrap();
    rec.submit().unwrap();
    let got = ctx.read_f32(&yb, 0, n_tok * y_stride).unwrap();
    for t in 0..n_tok {
        for i in 0..y_stride {
            let g = got[t * y_stride + i];
            if i < col0 || i >= col0 + out_rows {
                assert!(g.to_bits() == init[t * y_stride + i].to_bits(), "{what}: token {t} column {i} outside the output was written");
                continue;
            }
            let o = i - col0;
            let want = match epi {
                Epilogue::Store => y[t * rows + o],
                Epilogue::Accumulate => y[t * rows + o] + y0[t * y_stride + i],
                Epilogue::SwiGlu => r::silu(y[t * rows + 2 * o]) * y[t * rows + 2 * o + 1],
            };
            assert!((g - want).abs() <= 1e-3 + 1e-3 * want.abs(), "{what}: token {t} row {o}: gpu {g} vs reference {want}");
        }
    }
}

/// A matmul split along K (`split_k`): each split's partial products, then the reduction with the
/// epilogue. The portable kernel on every adapter (two row shards, splits that do not divide the
/// steps, more splits than steps so that one is empty, an output offset and stride, NaN poison);
/// on adapters with cooperative matrices also the op's large tiles split as the op splits them.
#[test]
fn matmul_split_k() {
    let mut rng = StdRng::seed_from_u64(25);
    // The portable kernel; the sharded context's 16 KiB binding caps the partials at 16 KiB.
    let ctx = ctx();
    for (fi, fmt) in [TensorFormat::F16, TensorFormat::Q8_0, TensorFormat::Q4_K, TensorFormat::F32].into_iter().enumerate() {
        let rows = 66usize;
        let cols = cols_for(fmt, 203);
        let (host, wq) = weights(fmt, rows, cols, 40 + fi as u64);
        let m = upload_matrix(&ctx, &host);
        // 12 splits of 7 steps (8 for Q4_K's 256 columns) leave the last ones empty
        for (splits, n_tok) in [(2usize, 19usize), (3, 19), (12, 5)] {
            let xs = rand_vec(&mut rng, n_tok * cols, 1.0);
            let xb = upload(&ctx, &xs);
            let y = r::matmul(&wq, rows, cols, &xs);
            for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                let what = format!("tiled {fmt:?} {rows}x{cols} n{n_tok} {splits} splits {epi:?} ({} shards)", m.shards.len());
                split_case(&ctx, &mut rng, &what, &xb, &y, epi, (rows, cols, n_tok), (2, 5), |rec, io| linear::matmul_tiled_split(rec, &m, io, epi, splits));
            }
        }
    }
    // Partials that do not fit the scratch are refused, not written past it.
    let (host, _) = weights(TensorFormat::F16, 66, 64, 3);
    let m = upload_matrix(&ctx, &host);
    let xb = upload(&ctx, &vec![0.0; 200 * 64]);
    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: 64, x_f16: false, y: BufRef::from(&xb), y_stride: 66, y_row0: 0, n_tok: 200 };
    let mut rec = Recorder::new(&ctx);
    let e = linear::matmul_tiled_split(&mut rec, &m, &io, Epilogue::Store, 4).unwrap_err().to_string();
    assert!(e.contains("splits") && e.contains("scratch"), "{e}");

    // The cooperative-matrix kernel, with the op's largest tiles split as `coop_plan` splits them.
    let ctx = ctx_unsharded();
    if linear::matmul_variant(&ctx) != MatmulVariant::Coop || ctx.caps.coop_emulated {
        eprintln!("cooperative-matrix splits skipped: the adapter offers no cooperative matrices (too large for the emulation)");
        return;
    }
    for tile in CoopTile::BY_SIZE.into_iter().filter(|t| t.workgroup_bytes() <= ctx.caps.max_workgroup_storage).take(3) {
        for (fi, fmt) in [TensorFormat::F16, TensorFormat::Q4_0, TensorFormat::Q6_K].into_iter().enumerate() {
            let (rows, n_tok) = (tile.rows() as usize + 34, tile.tokens() as usize + 7);
            let cols = cols_for(fmt, 1300);
            let (host, wq) = weights(fmt, rows, cols, 50 + fi as u64);
            let m = upload_matrix(&ctx, &host);
            let xs = rand_vec(&mut rng, n_tok * cols, 1.0);
            let xb = upload(&ctx, &xs);
            let y = r::matmul(&f16_round(&wq), rows, cols, &f16_round(&xs));
            let x16 = ctx.storage("x f16", pack_f16::packed_bytes(n_tok, cols)).unwrap();
            for (splits, epi) in [(2usize, Epilogue::Accumulate), (3, Epilogue::SwiGlu), (4, Epilogue::Store), (7, Epilogue::Store)] {
                let what = format!("coop {tile} {fmt:?} {rows}x{cols} n{n_tok} {splits} splits {epi:?}");
                split_case(&ctx, &mut rng, &what, &xb, &y, epi, (rows, cols, n_tok), (4, 6), |rec, io| {
                    let io = pack_f16::pack_f16(rec, io, cols, &BufRef::from(&x16))?;
                    linear::matmul_coop_split(rec, &m, &io, epi, tile, splits)
                });
            }
        }
    }
}
