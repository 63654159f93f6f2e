//! Quantized matvec/matmul kernels against dequantize-then-multiply in plain Rust, on random
//! blocks with odd row counts; outputs NaN-poisoned. Tolerance 1e-3 abs + 1e-3 rel (f32 sums).

use std::sync::{Arc, OnceLock};

use esa_wgpu::gpu::ops::linear::{self, Epilogue, LinearIo};
use esa_wgpu::gpu::tensor::GpuMatrix;
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::model::host::{HostTensor, TensorFormat};
use esa_wgpu::quant;
use esa_wgpu::reference::ops as r;

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| GpuContext::new(&GpuOptions { max_binding: Some(4096), ..Default::default() }).expect("GPU context")).clone()
}

fn xs(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0).collect()
}

pub fn formats_with_kernels() -> Vec<TensorFormat> {
    [TensorFormat::Q8_0, TensorFormat::Q4_0, TensorFormat::Q4_1, TensorFormat::Q4_K, TensorFormat::Q5_K, TensorFormat::Q6_K]
        .into_iter()
        .filter(|f| esa_wgpu::gpu::ops::quant_pack::quant_format_shader(*f).is_ok())
        .collect()
}

#[test]
fn quant_matvec_and_matmul_match_dequantized_reference() {
    let ctx = ctx();
    let fmts = formats_with_kernels();
    assert!(fmts.len() >= 3, "Q8_0, Q4_0 and Q4_1 kernels exist");
    for fmt in fmts {
        let (be, _) = fmt.block();
        for &(rows, cols, n_tok) in &[(37usize, be, 1usize), (75, 3 * be, 3), (10, 2 * be, 70)] {
            let data = quant::random_blocks(fmt, rows, cols, rows as u64 * 31 + cols as u64);
            let t = HostTensor { name: format!("{fmt:?}"), shape: vec![rows, cols], format: fmt, data: data.clone().into() };
            let m = GpuMatrix::upload(&ctx, &t, true).unwrap();
            let wf = quant::dequantize("w", fmt, &data, rows * cols).unwrap();
            let x = xs(n_tok * cols, 7);
            let xb = ctx.upload("x", bytemuck::cast_slice(&x)).unwrap();
            let yb = ctx.upload("y", bytemuck::cast_slice(&vec![f32::NAN; n_tok * rows])).unwrap();
            let mut rec = Recorder::new(&ctx);
            let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, y: BufRef::from(&yb), y_stride: rows, y_row0: 0, n_tok };
            linear::linear(&mut rec, &m, &io, Epilogue::Store).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32(&yb, 0, n_tok * rows).unwrap();
            let want = r::matmul(&wf, rows, cols, &x);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-3 + 1e-3 * w.abs(), "{fmt:?} {rows}x{cols} n{n_tok} [{i}]: gpu {g} vs {w}");
            }
        }
    }
}
