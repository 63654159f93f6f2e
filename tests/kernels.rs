//! Every dense-path kernel against the plain-Rust reference on random inputs of odd sizes.
//! Outputs are poisoned with NaN before each run, so an element the kernel forgot to write fails.

use std::sync::{Arc, OnceLock};

use esa_wgpu::gpu::ops::linear::{self, Epilogue, LinearIo};
use esa_wgpu::gpu::ops::{attention, norm, pack_f16, rope_kv, sampling};
use esa_wgpu::gpu::tensor::GpuMatrix;
use esa_wgpu::gpu::{BufRef, GpuContext, GpuOptions, Recorder};
use esa_wgpu::model::host::{HostTensor, TensorFormat};
use esa_wgpu::reference::ops as r;
use rand::{rngs::StdRng, SeedableRng};

mod common;
use common::gpu::{epilogue_reference, poisoned, rand_vec, upload, validate_wgsl};

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

/// The same adapter without subgroups: the portable shared-memory kernels.
fn ctx_portable() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| GpuContext::new(&GpuOptions { max_binding: Some(4096), no_subgroups: true, ..Default::default() }).expect("GPU context")).clone()
}

/// Quantise to the 16-bit format and back (f32: as is), so the reference sees exactly the GPU's weights.
fn host_16(name: &str, w: &[f32], rows: usize, cols: usize, fmt: TensorFormat) -> (HostTensor<'static>, Vec<f32>) {
    let (bytes, back): (Vec<u8>, Vec<f32>) = match fmt {
        TensorFormat::F16 => {
            let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|v| v.to_f32()).collect())
        }
        TensorFormat::BF16 => {
            let h: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|v| v.to_f32()).collect())
        }
        TensorFormat::F32 => (bytemuck::cast_slice(w).to_vec(), w.to_vec()),
        _ => unreachable!(),
    };
    (HostTensor { name: name.into(), shape: vec![rows, cols], format: fmt, data: bytes.into() }, back)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}[{i}]: gpu {g} vs reference {w}");
    }
}

#[test]
fn matvec_all_epilogues_and_formats() {
  for ctx in [ctx(), ctx_portable()] {
    let mut rng = StdRng::seed_from_u64(1);
    // F32: the full-precision format ESA's compression maps use (`GpuMatrix::upload_f32`).
    for fmt in [TensorFormat::F16, TensorFormat::BF16, TensorFormat::F32] {
        // cols % 8 == 0 (with a vec4-aligned x) take matvec_wide where the adapter has subgroups
        for &(rows, cols, n_tok) in &[(37usize, 45usize, 1usize), (74, 203, 3), (130, 8, 4), (2, 1, 1), (66, 200, 2)] {
            let w = rand_vec(&mut rng, rows * cols, 0.5);
            let (host, wq) = host_16("w", &w, rows, cols, fmt);
            let m = if fmt == TensorFormat::F32 { GpuMatrix::upload_f32(&ctx, &host).unwrap() } else { GpuMatrix::upload(&ctx, &host, true).unwrap() };
            let x = rand_vec(&mut rng, n_tok * cols, 1.0);
            let gamma = rand_vec(&mut rng, cols, 1.0);
            let xb = upload(&ctx, &x);
            let gb = upload(&ctx, &gamma);
            for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                for use_norm in [false, true] {
                  for variant in linear::matvec_variants(&ctx) {
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
                    let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, n_tok * out_rows) };
                    let mut rec = Recorder::new(&ctx);
                    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
                    linear::matvec_with(&mut rec, &m, &io, epi, use_norm.then_some((&gb, 1e-5)), variant).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
                    let mut want = Vec::new();
                    for t in 0..n_tok {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let xt = if use_norm { r::rmsnorm(xt, &gamma, 1e-5) } else { xt.to_vec() };
                        let y = r::matvec(&wq, rows, cols, &xt);
                        want.extend(epilogue_reference(epi, &y, &y0, t * rows));
                    }
                    assert_close(&format!("matvec {variant:?} {fmt:?} {rows}x{cols} n{n_tok} {epi:?} norm={use_norm}"), &got, &want, 1e-3, 1e-3);
                  }
                }
            }
        }
    }
  }
}

/// `matvec_cpu.wgsl` (the CPU adapters' linear kernel) forced on any adapter that can run it, for
/// the float formats: odd widths (a last slice of 32 columns cut short; rows padded to 8 or 4
/// values only), its one-token and multi-token shapes, every epilogue, with and without the norm.
#[test]
fn matvec_cpu_kernel_float_formats() {
    let ctx = ctx();
    if !linear::cpu_capable(&ctx) {
        eprintln!("skipped: the adapter has no fixed subgroup size >= 8");
        return;
    }
    let mut rng = StdRng::seed_from_u64(2);
    for fmt in [TensorFormat::F16, TensorFormat::BF16, TensorFormat::F32] {
        for &(rows, cols, n_tok, shape) in &[(37usize, 45usize, 1usize, (8u32, 1u32)), (74, 203, 5, (4, 4)), (130, 8, 3, (2, 2)), (2, 1, 1, (8, 1))] {
            let w = rand_vec(&mut rng, rows * cols, 0.5);
            let (host, wq) = host_16("w", &w, rows, cols, fmt);
            let m = if fmt == TensorFormat::F32 { GpuMatrix::upload_f32(&ctx, &host).unwrap() } else { GpuMatrix::upload(&ctx, &host, true).unwrap() };
            // the input is followed by NaN, which must never be read
            let mut x = rand_vec(&mut rng, n_tok * cols, 1.0);
            let xs = x.clone();
            x.extend([f32::NAN; 40]);
            let gamma = rand_vec(&mut rng, cols, 1.0);
            let xb = upload(&ctx, &x);
            let gb = upload(&ctx, &gamma);
            for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                for use_norm in [false, true] {
                    let out_rows = if epi == Epilogue::SwiGlu { rows / 2 } else { rows };
                    let y0 = rand_vec(&mut rng, n_tok * out_rows, 1.0);
                    let yb = if epi == Epilogue::Accumulate { upload(&ctx, &y0) } else { poisoned(&ctx, n_tok * out_rows) };
                    let mut rec = Recorder::new(&ctx);
                    let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: cols, x_f16: false, y: BufRef::from(&yb), y_stride: out_rows, y_row0: 0, n_tok };
                    linear::linear_cpu(&mut rec, &m, &io, epi, use_norm.then_some((&gb, 1e-5)), shape).unwrap();
                    rec.submit().unwrap();
                    let got = ctx.read_f32(&yb, 0, n_tok * out_rows).unwrap();
                    let mut want = Vec::new();
                    for t in 0..n_tok {
                        let xt = &xs[t * cols..(t + 1) * cols];
                        let xt = if use_norm { r::rmsnorm(xt, &gamma, 1e-5) } else { xt.to_vec() };
                        let y = r::matvec(&wq, rows, cols, &xt);
                        want.extend(epilogue_reference(epi, &y, &y0, t * rows));
                    }
                    assert_close(&format!("matvec_cpu {shape:?} {fmt:?} {rows}x{cols} n{n_tok} {epi:?} norm={use_norm}"), &got, &want, 1e-3, 1e-3);
                }
            }
        }
    }
    // bad shapes are errors naming the argument
    let (host, _) = host_16("w", &[0.0; 8], 1, 8, TensorFormat::F16);
    let m = GpuMatrix::upload(&ctx, &host, false).unwrap();
    let b = upload(&ctx, &[0.0; 8]);
    let io = LinearIo { x: BufRef::from(&b), x_off: 0, x_stride: 8, x_f16: false, y: BufRef::from(&b), y_stride: 1, y_row0: 0, n_tok: 1 };
    let mut rec = Recorder::new(&ctx);
    let e = linear::linear_cpu(&mut rec, &m, &io, Epilogue::Store, None, (3, 1)).unwrap_err();
    assert!(e.to_string().contains("rows"), "{e}");
}

#[test]
fn rmsnorm_matches() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(3);
    let (n, stride, n_tok) = (301, 301, 5);
    let x = rand_vec(&mut rng, n_tok * stride, 3.0);
    let g = rand_vec(&mut rng, n, 1.0);
    let (xb, gb, yb) = (upload(&ctx, &x), upload(&ctx, &g), poisoned(&ctx, n_tok * stride));
    let mut rec = Recorder::new(&ctx);
    norm::rmsnorm(&mut rec, &BufRef::from(&xb), &BufRef::from(&yb), &gb, n, stride, n_tok, 1e-6).unwrap();
    rec.submit().unwrap();
    let got = ctx.read_f32(&yb, 0, n_tok * stride).unwrap();
    let want: Vec<f32> = x.chunks(stride).flat_map(|t| r::rmsnorm(t, &g, 1e-6)).collect();
    assert_close("rmsnorm", &got, &want, 1e-5, 1e-4);
}

/// `rmsnorm_packed`: the norm written straight as the cooperative-matrix matmul's f16 rows (each
/// value the f16 nearest the f32 norm within 1e-5 relative before rounding, so within an f16 ulp
/// plus that), zeros from the width up to the packed row's end, nothing written past the rows.
#[test]
fn rmsnorm_packed_matches() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(31);
    for &(n, n_tok) in &[(301usize, 5usize), (8, 1), (576, 3)] {
        let stride = n;
        let x = rand_vec(&mut rng, n_tok * stride, 3.0);
        let g = rand_vec(&mut rng, n, 1.0);
        let (xb, gb) = (upload(&ctx, &x), upload(&ctx, &g));
        let ld = pack_f16::packed_halves(n);
        let bytes = pack_f16::packed_bytes(n_tok, n) as usize + 64;
        let out = ctx.upload("poisoned", &vec![0xffu8; bytes]).unwrap();
        let io = LinearIo { x: BufRef::from(&xb), x_off: 0, x_stride: stride, x_f16: false, y: BufRef::from(&xb), y_stride: 1, y_row0: 0, n_tok };
        let mut rec = Recorder::new(&ctx);
        let packed = norm::rmsnorm_packed(&mut rec, &io, &BufRef::from(&out), &gb, n, 1e-6).unwrap();
        rec.submit().unwrap();
        assert!(packed.x_f16 && packed.x_off == 0 && packed.x_stride == ld);
        let got: Vec<u16> = bytemuck::pod_collect_to_vec(&ctx.read(&out, 0, bytes as u64).unwrap());
        let want: Vec<f32> = x.chunks(stride).flat_map(|t| r::rmsnorm(t, &g, 1e-6)).collect();
        for t in 0..n_tok {
            for c in 0..ld {
                let v = half::f16::from_bits(got[t * ld + c]).to_f32();
                if c >= n {
                    assert!(got[t * ld + c] == 0, "n {n}: token {t} pad column {c} is {v}, want 0");
                    continue;
                }
                let w = want[t * n + c];
                assert!((v - w).abs() <= 1e-3 * w.abs() + 1e-6, "n {n}: token {t} column {c}: {v} vs {w}");
            }
        }
        assert!(got[n_tok * ld..].iter().all(|&b| b == 0xffff), "n {n}: written past the packed rows");
    }
}

/// The host side of a KV cache filled chunk by chunk: keys and values as the GPU stores them
/// (f16-rounded, un-rotated), for reference attention.
#[derive(Default)]
struct History {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl History {
    /// Append a chunk of `n` fused QKV rows at `pos0` (heads `(n_heads, n_kv, head_dim)`) and
    /// return its rotated queries and the reference causal attention output.
    fn chunk(&mut self, qkv: &[f32], n: usize, (nh, nkv, d): (usize, usize, usize), pos0: usize, inv: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let rows = (nh + 2 * nkv) * d;
        let f16r = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<_>>();
        let mut q = Vec::new();
        for row in qkv.chunks(rows).take(n) {
            q.extend_from_slice(&row[..nh * d]);
            self.k.extend(f16r(&row[nh * d..(nh + nkv) * d]));
            self.v.extend(f16r(&row[(nh + nkv) * d..]));
        }
        let q_pos: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
        r::rope(&mut q, &q_pos, inv);
        let k_pos: Vec<u32> = (0..pos0 + n).map(|p| p as u32).collect();
        let mut k = self.k.clone();
        r::rope(&mut k, &k_pos, inv);
        let want = r::attention(&q, &k, &self.v, nh, nkv, d, &q_pos, &k_pos);
        (q, want)
    }
}

/// rope_kv then attention, for a prefill chunk and decode steps after it, against rotating
/// (f16-rounded) keys in plain Rust and reference attention; and the decode steps again through
/// the fused split kernel (its own rotation and KV append) on caches of their own, which must end
/// up holding what rope_kv wrote.
#[test]
fn rope_kv_and_attention_prefill_then_decode() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(4);
  // head sizes: odd half (split kernel only), small, SmolLM2's 64, 96 (6 lanes a key: not attention_gqa's), Llama's 128, Gemma's 256 (split kernel only)
  for (nh, nkv, d) in [(6usize, 2usize, 12usize), (4, 1, 14), (9, 3, 64), (8, 2, 96), (8, 2, 128), (4, 2, 256)] {
    let (inv, qkv_rows, kc, vc, invb) = kv_cache(&ctx, (nh, nkv, d), 300);
    // caches that decode steps fill through the fused split kernel (the others through rope_kv)
    let (_, _, kc2, vc2, _) = kv_cache(&ctx, (nh, nkv, d), 300);
    // and caches that decode steps fill through the fused GQA kernel, in splits of 16 keys
    let (_, _, kc3, vc3, _) = kv_cache(&ctx, (nh, nkv, d), 300);
    let mut hist = History::default();
    let mut pos0 = 0;
    for n in [150usize, 3, 1, 1, 70] {
        let qkv = rand_vec(&mut rng, n * qkv_rows, 1.0);
        let qkvb = upload(&ctx, &qkv);
        let qb = poisoned(&ctx, n * nh * d);
        let part = poisoned(&ctx, attention::scratch_floats(n, nh, d));
        // Both kernels on the same chunk: the split-key one (decode) and, where it takes the head
        // size, the tiled prefill one (also for chunks of 1-3 queries, which it must handle).
        let out_split = poisoned(&ctx, n * nh * d);
        let out_tiled = poisoned(&ctx, n * nh * d);
        let out_coop = poisoned(&ctx, n * nh * d);
        let out_cpu = poisoned(&ctx, n * nh * d);
        let coop = attention::prefill_coop_supports(&ctx, d);
        let mut rec = Recorder::new(&ctx);
        let (qr, kr, vr) = (BufRef::from(&qb), BufRef::from(&kc), BufRef::from(&vc));
        rope_kv::rope_kv(&mut rec, &rope_kv::RopeKv { qkv: &BufRef::from(&qkvb), qkv_stride: qkv_rows, q_out: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, n_tok: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0 }).unwrap();
        let pr = BufRef::from(&part);
        let counters = ctx.storage("counters", (attention::counter_words(n, nh) * 4) as u64).unwrap();
        let cr = BufRef::from(&counters);
        let a = |out| attention::Attend { q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, part: &pr, out, counters: &cr, n_q: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0, scale: 1.0 / (d as f32).sqrt() };
        let (os, ot) = (BufRef::from(&out_split), BufRef::from(&out_tiled));
        attention::attend_split(&mut rec, &a(&os)).unwrap();
        // the GPUs' decode kernel (subgroups holding d / 16 lanes): its own split, then splits of
        // a few keys (the last workgroup of each column merges them; causal chunks leave some empty)
        let gqa = attention::gqa_capable(&ctx, &a(&os));
        let out_gqa = poisoned(&ctx, n * nh * d);
        let out_gqa_split = poisoned(&ctx, n * nh * d);
        let out_gqa_apart = poisoned(&ctx, n * nh * d);
        let (og, ogs, oga) = (BufRef::from(&out_gqa), BufRef::from(&out_gqa_split), BufRef::from(&out_gqa_apart));
        if gqa {
            attention::attend_gqa(&mut rec, &a(&og), false).unwrap();
            let cap = attention::scratch_floats(n, nh, d) / (n * nh * (d + 2));
            // with the next iteration's keys loaded ahead, one key per slot and iteration, two heads
            // a workgroup, the splits merged in the kernel however many; then the same merged by
            // attention_merge
            let sp = attention::GqaSplit { u: 1, max_heads: 2, prefetch: true, merge_apart_above: usize::MAX, ..attention::GqaSplit::DEFAULT };
            let len = Some(7.max((pos0 + n).div_ceil(cap)));
            attention::attend_gqa_with(&mut rec, &a(&ogs), false, sp, len).unwrap();
            attention::attend_gqa_with(&mut rec, &a(&oga), false, attention::GqaSplit { merge_apart_above: 0, ..sp }, len).unwrap();
        }
        if attention::prefill_supports(d) {
            attention::attend_prefill(&mut rec, &a(&ot)).unwrap();
        }
        let oc = BufRef::from(&out_coop);
        if coop {
            attention::attend_prefill_coop(&mut rec, &a(&oc)).unwrap();
        }
        // the CPU adapters' kernels, forced wherever they can run (attention_cpu: splits and merge
        // for decode steps over long histories, one split per (query, KV head) for chunks of head
        // sizes 12 and 14; attention_cpu_block: chunks of 8 or more queries at head sizes 64, 128)
        let ocpu = BufRef::from(&out_cpu);
        let cpu = linear::cpu_capable(&ctx) && attention::cpu_supports(&a(&ocpu));
        if cpu {
            attention::attend_cpu(&mut rec, &a(&ocpu)).unwrap();
        }
        rec.submit().unwrap();
        let (q, want) = hist.chunk(&qkv, n, (nh, nkv, d), pos0, &inv);
        let got_q = ctx.read_f32(&qb, 0, n * nh * d).unwrap();
        assert_close("rotated q", &got_q, &q, 1e-4, 1e-4);
        let got = ctx.read_f32(&out_split, 0, n * nh * d).unwrap();
        assert_close(&format!("split attention d={d} chunk of {n} at {pos0}"), &got, &want, 2e-3, 2e-3);
        if gqa {
            let got = ctx.read_f32(&out_gqa, 0, n * nh * d).unwrap();
            assert_close(&format!("GQA attention {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 2e-3, 2e-3);
            let got = ctx.read_f32(&out_gqa_split, 0, n * nh * d).unwrap();
            assert_close(&format!("GQA attention, small splits, prefetch, U 1, 2 heads a group, {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 2e-3, 2e-3);
            let got = ctx.read_f32(&out_gqa_apart, 0, n * nh * d).unwrap();
            assert_close(&format!("GQA attention, small splits merged apart, {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 2e-3, 2e-3);
            assert!(ctx.read_u32(&counters, 0, attention::counter_words(n, nh)).unwrap().iter().all(|&c| c == 0), "split counters left at zero");
        }
        if attention::prefill_supports(d) {
            let got = ctx.read_f32(&out_tiled, 0, n * nh * d).unwrap();
            assert_close(&format!("tiled prefill attention {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 2e-3, 2e-3);
        }
        if cpu {
            let got = ctx.read_f32(&out_cpu, 0, n * nh * d).unwrap();
            assert_close(&format!("CPU attention {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 2e-3, 2e-3);
        }
        if coop {
            // f16 queries, keys and probabilities (the tensor-core inputs): a looser tolerance
            let got = ctx.read_f32(&out_coop, 0, n * nh * d).unwrap();
            assert_close(&format!("cooperative-matrix prefill attention {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 5e-3, 5e-3);
        }
        // the second caches: chunks through rope_kv, decode steps through the fused split kernel
        // (rotation, append and attention in one dispatch)
        let mut rec = Recorder::new(&ctx);
        let (kr2, vr2) = (BufRef::from(&kc2), BufRef::from(&vc2));
        let out_fused = poisoned(&ctx, n * nh * d);
        let out_gqa_fused = poisoned(&ctx, n * nh * d);
        if n == 1 {
            let of = BufRef::from(&out_fused);
            let qkvr = BufRef::from(&qkvb);
            let f = attention::Attend { q: &qkvr, k_cache: &kr2, v_cache: &vr2, inv_freq: &invb, part: &pr, out: &of, counters: &cr, n_q: 1, n_heads: nh, n_kv: nkv, head_dim: d, pos0, scale: 1.0 / (d as f32).sqrt() };
            attention::attend_split_fused(&mut rec, &f).unwrap();
            if gqa {
                let (kr3, vr3, og) = (BufRef::from(&kc3), BufRef::from(&vc3), BufRef::from(&out_gqa_fused));
                let sp = attention::GqaSplit { u: 3, prefetch: true, ..attention::GqaSplit::DEFAULT };
                attention::attend_gqa_with(&mut rec, &attention::Attend { k_cache: &kr3, v_cache: &vr3, out: &og, ..f }, true, sp, Some(16)).unwrap();
            }
        } else {
            let q2 = poisoned(&ctx, n * nh * d);
            rope_kv::rope_kv(&mut rec, &rope_kv::RopeKv { qkv: &BufRef::from(&qkvb), qkv_stride: qkv_rows, q_out: &BufRef::from(&q2), k_cache: &kr2, v_cache: &vr2, inv_freq: &invb, n_tok: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0 }).unwrap();
        }
        rec.submit().unwrap();
        if n == 1 {
            let got = ctx.read_f32(&out_fused, 0, nh * d).unwrap();
            assert_close(&format!("fused decode attention {nh}/{nkv} heads d={d} at {pos0}"), &got, &want, 2e-3, 2e-3);
            if gqa {
                let got = ctx.read_f32(&out_gqa_fused, 0, nh * d).unwrap();
                assert_close(&format!("fused GQA decode attention {nh}/{nkv} heads d={d} at {pos0}"), &got, &want, 2e-3, 2e-3);
            }
        }
        pos0 += n;
        let words = pos0 * nkv * d / 2;
        assert_eq!(ctx.read_u32(&kc2, 0, words).unwrap(), ctx.read_u32(&kc, 0, words).unwrap(), "keys appended by the fused kernel, d={d}");
        assert_eq!(ctx.read_u32(&vc2, 0, words).unwrap(), ctx.read_u32(&vc, 0, words).unwrap(), "values appended by the fused kernel, d={d}");
        if gqa {
            // rows written by rope_kv for chunks, by the fused GQA kernel for decode steps
            let (mut kc_gqa, mut vc_gqa) = (ctx.read_u32(&kc3, 0, words).unwrap(), ctx.read_u32(&vc3, 0, words).unwrap());
            let row = nkv * d / 2;
            if n > 1 {
                // this chunk went to the other caches only: copy what rope_kv wrote so later steps see it
                let (k1, v1) = (ctx.read_u32(&kc, 0, words).unwrap(), ctx.read_u32(&vc, 0, words).unwrap());
                kc_gqa[(pos0 - n) * row..].copy_from_slice(&k1[(pos0 - n) * row..]);
                vc_gqa[(pos0 - n) * row..].copy_from_slice(&v1[(pos0 - n) * row..]);
                ctx.queue.write_buffer(&kc3, 0, bytemuck::cast_slice(&kc_gqa));
                ctx.queue.write_buffer(&vc3, 0, bytemuck::cast_slice(&vc_gqa));
            }
            assert_eq!(kc_gqa, ctx.read_u32(&kc, 0, words).unwrap(), "keys appended by the fused GQA kernel, d={d}");
            assert_eq!(vc_gqa, ctx.read_u32(&vc, 0, words).unwrap(), "values appended by the fused GQA kernel, d={d}");
        }
    }
  }
}

/// `attention_gqa` over one split of 1 500 keys one key per slot at a time (188 iterations): the
/// rotation advanced by angle addition is recomputed exactly every 64 iterations, so the output
/// stays with the split kernel's, which takes a sine and cosine per key.
#[test]
fn gqa_long_split_keeps_its_rotation() {
    let ctx = ctx();
    let (nh, nkv, d, n) = (8usize, 2usize, 128usize, 1500usize);
    let probe = attention::gqa_shape_capable(&ctx, nh, nkv, d);
    if !probe {
        eprintln!("skipped: attention_gqa does not run here");
        return;
    }
    let mut rng = StdRng::seed_from_u64(41);
    let (_, qkv_rows, kc, vc, invb) = kv_cache(&ctx, (nh, nkv, d), n);
    let qkv = upload(&ctx, &rand_vec(&mut rng, n * qkv_rows, 1.0));
    let qb = poisoned(&ctx, n * nh * d);
    let (qr, kr, vr) = (BufRef::from(&qb), BufRef::from(&kc), BufRef::from(&vc));
    let mut rec = Recorder::new(&ctx);
    rope_kv::rope_kv(&mut rec, &rope_kv::RopeKv { qkv: &BufRef::from(&qkv), qkv_stride: qkv_rows, q_out: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, n_tok: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0: 0 }).unwrap();
    rec.submit().unwrap();
    // the last token's query against all n keys
    let last = BufRef { buf: qb.clone(), offset: ((n - 1) * nh * d * 4) as u64, size: Some((nh * d * 4) as u64) };
    let part = poisoned(&ctx, attention::scratch_floats(1, nh, d));
    let counters = ctx.storage("counters", (attention::counter_words(1, nh) * 4) as u64).unwrap();
    let (want_b, got_b) = (poisoned(&ctx, nh * d), poisoned(&ctx, nh * d));
    let (pr, cr, wr, gr) = (BufRef::from(&part), BufRef::from(&counters), BufRef::from(&want_b), BufRef::from(&got_b));
    let a = |out| attention::Attend { q: &last, k_cache: &kr, v_cache: &vr, inv_freq: &invb, part: &pr, out, counters: &cr, n_q: 1, n_heads: nh, n_kv: nkv, head_dim: d, pos0: n - 1, scale: 1.0 / (d as f32).sqrt() };
    let mut rec = Recorder::new(&ctx);
    attention::attend_split(&mut rec, &a(&wr)).unwrap();
    let sp = attention::GqaSplit { u: 1, ..attention::GqaSplit::DEFAULT };
    attention::attend_gqa_with(&mut rec, &a(&gr), false, sp, Some(n)).unwrap();
    rec.submit().unwrap();
    let (want, got) = (ctx.read_f32(&want_b, 0, nh * d).unwrap(), ctx.read_f32(&got_b, 0, nh * d).unwrap());
    assert_close("GQA attention in one long split", &got, &want, 2e-3, 2e-3);
}

/// An empty KV cache of `max_ctx` rows for heads `(n_heads, n_kv, head_dim)`: the RoPE frequencies
/// (and their buffer), the fused QKV row width, and the K and V cache buffers.
fn kv_cache(ctx: &GpuContext, (nh, nkv, d): (usize, usize, usize), max_ctx: usize) -> (Vec<f32>, usize, wgpu::Buffer, wgpu::Buffer, wgpu::Buffer) {
    let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
    let kc = ctx.storage("k", (max_ctx * nkv * d * 2) as u64).unwrap();
    let vc = ctx.storage("v", (max_ctx * nkv * d * 2) as u64).unwrap();
    let invb = upload(ctx, &inv);
    (inv, (nh + 2 * nkv) * d, kc, vc, invb)
}

/// The cooperative-matrix prefill attention on inputs large enough that rows' maxima keep rising
/// across key tiles by more than the kernel's rescale threshold (scaled scores spread over tens of
/// units), so its lazily moved reference maximum and the rescale of its output fragments run;
/// where the adapter offers cooperative matrices (the H200).
#[test]
fn coop_attention_rescales_on_large_scores() {
    let ctx = ctx();
    if !attention::prefill_coop_supports(&ctx, 64) || ctx.caps.coop_emulated {
        eprintln!("skipped: no cooperative matrices (the emulated kernel is tested on small shapes)");
        return;
    }
    let mut rng = StdRng::seed_from_u64(31);
    for (nh, nkv, d) in [(9usize, 3usize, 64usize), (8, 2, 128)] {
        let (inv, qkv_rows, kc, vc, invb) = kv_cache(&ctx, (nh, nkv, d), 700);
        let mut hist = History::default();
        let mut pos0 = 0;
        for n in [333usize, 190] {
            // keys grow along the context, so later tiles keep raising the rows' maxima
            let mut qkv = rand_vec(&mut rng, n * qkv_rows, 3.0);
            for (t, row) in qkv.chunks_mut(qkv_rows).enumerate() {
                let grow = 0.5 + (pos0 + t) as f32 / 150.0;
                row[nh * d..(nh + nkv) * d].iter_mut().for_each(|v| *v *= grow);
            }
            let qkvb = upload(&ctx, &qkv);
            let qb = poisoned(&ctx, n * nh * d);
            let part = poisoned(&ctx, attention::scratch_floats(n, nh, d));
            let out = poisoned(&ctx, n * nh * d);
            let mut rec = Recorder::new(&ctx);
            let (qr, kr, vr) = (BufRef::from(&qb), BufRef::from(&kc), BufRef::from(&vc));
            rope_kv::rope_kv(&mut rec, &rope_kv::RopeKv { qkv: &BufRef::from(&qkvb), qkv_stride: qkv_rows, q_out: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, n_tok: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0 }).unwrap();
            let (pr, or) = (BufRef::from(&part), BufRef::from(&out));
            let counters = ctx.storage("counters", (attention::counter_words(n, nh) * 4) as u64).unwrap();
            let a = attention::Attend { counters: &BufRef::from(&counters), q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, part: &pr, out: &or, n_q: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0, scale: 1.0 / (d as f32).sqrt() };
            attention::attend_prefill_coop(&mut rec, &a).unwrap();
            rec.submit().unwrap();
            let (_, want) = hist.chunk(&qkv, n, (nh, nkv, d), pos0, &inv);
            let got = ctx.read_f32(&out, 0, n * nh * d).unwrap();
            // f16 queries, keys and probabilities on scores of tens of units: relative 2%
            assert_close(&format!("cooperative-matrix attention, large scores, {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 2e-2, 2e-2);
            pos0 += n;
        }
    }
}

/// The cooperative-matrix prefill attention parses, validates and translates to SPIR-V for every
/// head size it takes, so CI (no adapter with cooperative matrices) catches errors in code only a
/// tensor-core GPU runs; the numeric check is in `rope_kv_and_attention_prefill_then_decode`.
#[test]
fn coop_attention_validates() {
    for d in [32usize, 64, 96, 128] {
        validate_wgsl(&format!("esa_attention_coop d={d}"), &esa_wgpu::gpu::ops::esa_attention::coop_source(d, 8));
    }
}

/// Reference for the GPU sampler's definition (nucleus by probability threshold, inverse CDF in
/// vocabulary order). Returns None when `uniform` falls too close to a boundary to call.
fn sample_ref(logits: &[f32], temperature: f32, top_p: f32, u: f32) -> Option<u32> {
    let mx = logits.iter().cloned().filter(|v| !v.is_nan()).fold(f32::MIN, f32::max);
    let p: Vec<f64> = logits.iter().map(|&v| if v.is_nan() { 0.0 } else { (((v - mx) / temperature) as f64).exp() }).collect();
    let z: f64 = p.iter().sum();
    let p: Vec<f64> = p.iter().map(|v| v / z).collect();
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let mut cum = 0.0;
    let mut tau = 0.0;
    for &v in &sorted {
        cum += v;
        tau = v;
        if cum >= top_p as f64 {
            break;
        }
    }
    let mass: f64 = p.iter().filter(|&&v| v >= tau).sum();
    let target = u as f64 * mass;
    let mut acc = 0.0;
    for (i, &v) in p.iter().enumerate() {
        if v >= tau {
            if (acc - target).abs() < 1e-4 || (acc + v - target).abs() < 1e-4 {
                return None;
            }
            acc += v;
            if acc > target {
                return Some(i as u32);
            }
        }
    }
    None
}

#[test]
fn sampling_greedy_and_top_p() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(5);
    let vocab = 1001;
    let mut logits = rand_vec(&mut rng, vocab, 4.0);
    logits[17] = f32::NAN;
    logits[500] = 9.0;
    logits[501] = 9.0; // tie: the lower index wins
    let lb = upload(&ctx, &logits);
    let out = ctx.upload("tok", &[0xff; 4]).unwrap();
    let hist = ctx.upload("hist", &[0; 4]).unwrap();
    let scratch = ctx.storage("scratch", sampling::scratch_bytes(vocab)).unwrap();
    let run = |t: f32, p: f32, u: f32| {
        let mut rec = Recorder::new(&ctx);
        let io = sampling::SampleIo { logits: &BufRef::from(&lb), offset: 0, vocab, hist: &BufRef::from(&hist), recent: 0..0, scratch: &BufRef::from(&scratch), out: &BufRef::from(&out) };
        let s = esa_wgpu::Sampling { temperature: t, top_p: p, ..esa_wgpu::Sampling::greedy() };
        sampling::sample(&mut rec, &io, &s, u).unwrap();
        rec.submit().unwrap();
        ctx.read_u32(&out, 0, 1).unwrap()[0]
    };
    assert_eq!(run(0.0, 1.0, 0.5), 500);
    let mut checked = 0;
    for i in 0..40 {
        let u = (i as f32 + 0.37) / 40.0;
        for (t, p) in [(1.0, 0.9), (0.7, 1.0), (2.0, 0.5)] {
            if let Some(want) = sample_ref(&logits, t, p, u) {
                assert_eq!(run(t, p, u), want, "t={t} p={p} u={u}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100);
}

/// The cooperative-matrix prefill attention run through the plain-WGSL emulation
/// (`GpuOptions::emulate_coop`), so its query staging, masking, online softmax and partials are
/// checked on every software adapter (CI's lavapipe); small shapes, since the emulation is slow.
/// Tolerance 5e-3: f16 queries, keys and probabilities, as on tensor cores. Each workgroup sees
/// one tile of keys here: lavapipe runs the emulated kernel wrong once a workgroup takes a second
/// tile (since the kernel holds its queries and outputs as fragments, 16 of them emulated as
/// 256-float arrays per invocation), while the H200 passes the same kernel on many tiles
/// (`rope_kv_and_attention_prefill_then_decode`, docs/perf.md).
#[test]
fn coop_attention_emulated() {
    let ctx = GpuContext::new(&GpuOptions { emulate_coop: true, ..Default::default() }).expect("GPU context");
    // The emulation is for software adapters: on a GPU every lane's 256-float fragments spill and
    // the test runs for minutes (seen on the H200), and the real kernel is tested there instead.
    if ctx.info.device_type != wgpu::DeviceType::Cpu {
        eprintln!("skipped: the emulation runs on CPU adapters; this adapter tests the real kernel");
        return;
    }
    let mut rng = StdRng::seed_from_u64(9);
    // One shape (the emulation compiles slowly on lavapipe); the H200 runs every shape for real.
    for (nh, nkv, d) in [(2usize, 1usize, 32usize)] {
        let (inv, qkv_rows, kc, vc, invb) = kv_cache(&ctx, (nh, nkv, d), 128);
        let mut hist = History::default();
        let mut pos0 = 0;
        // 20 queries: 40 rows for 2 heads per group, over 4 emulated subgroups of 16 rows (one
        // part-filled, one empty); then 9 more after them (29 keys).
        for n in [20usize, 9] {
            let qkv = rand_vec(&mut rng, n * qkv_rows, 1.0);
            let qb = poisoned(&ctx, n * nh * d);
            let out = poisoned(&ctx, n * nh * d);
            let mut rec = Recorder::new(&ctx);
            let (qr, kr, vr, or) = (BufRef::from(&qb), BufRef::from(&kc), BufRef::from(&vc), BufRef::from(&out));
            rope_kv::rope_kv(&mut rec, &rope_kv::RopeKv { qkv: &BufRef::from(&upload(&ctx, &qkv)), qkv_stride: qkv_rows, q_out: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, n_tok: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0 }).unwrap();
            let part = BufRef::from(&poisoned(&ctx, attention::scratch_floats(n, nh, d)));
            let counters = ctx.storage("counters", (attention::counter_words(n, nh) * 4) as u64).unwrap();
            attention::attend_prefill_coop(&mut rec, &attention::Attend { counters: &BufRef::from(&counters), q: &qr, k_cache: &kr, v_cache: &vr, inv_freq: &invb, part: &part, out: &or, n_q: n, n_heads: nh, n_kv: nkv, head_dim: d, pos0, scale: 1.0 / (d as f32).sqrt() }).unwrap();
            rec.submit().unwrap();
            let (_, want) = hist.chunk(&qkv, n, (nh, nkv, d), pos0, &inv);
            let got = ctx.read_f32(&out, 0, n * nh * d).unwrap();
            assert_close(&format!("emulated cooperative-matrix prefill attention {nh}/{nkv} heads d={d} chunk of {n} at {pos0}"), &got, &want, 5e-3, 5e-3);
            pos0 += n;
        }
    }
}

/// ESA's cooperative-matrix chunk scoring through the plain-WGSL emulation on CPU adapters (GPUs
/// with cooperative matrices run the real kernel on every d' in `esa_kernels::score_chunk_coop`).
/// One case, at d' = 16: the kernel keeps its resident rows as d'/16 x 2 fragments, which the
/// emulation holds as 256-float arrays per invocation, and lavapipe's compile time grows with their
/// square (~70 s at d' = 16, 336 s at 48). It sits in this binary beside
/// `coop_attention_emulated` so that the two slow compiles run on CI's two cores at once.
#[test]
fn score_chunk_coop_emulated() {
    let real = ctx();
    if real.info.device_type != wgpu::DeviceType::Cpu {
        eprintln!("skipped: the emulation is for CPU adapters (esa_kernels::score_chunk_coop tests GPUs)");
        return;
    }
    let ctx = GpuContext::new(&GpuOptions { emulate_coop: true, ..Default::default() }).expect("GPU context");
    assert!(esa_wgpu::gpu::ops::esa_score::coop_supports(&ctx, 16));
    common::gpu::check_coop_score(&ctx, &mut StdRng::seed_from_u64(21), (16, 70, 333, 5));
}

/// The bench's bandwidth probe reads every word exactly once: each workgroup's XOR matches the
/// XOR of the vec4s it owns (index i belongs to workgroup (i mod stride) / 256), for a size that
/// leaves a ragged tail and a size smaller than one pass.
#[test]
fn read_bandwidth_reads_every_word_once() {
    use esa_wgpu::gpu::ops::read_bandwidth;
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(5);
    let words: Vec<u32> = (0..(1 << 20) + 4 * 777).map(|_| rand::Rng::random(&mut rng)).collect();
    let src = ctx.upload("src", bytemuck::cast_slice(&words)).unwrap();
    for bytes in [words.len() as u64 * 4, 16 * 1000, 16 * 200_001] {
        let groups = read_bandwidth::groups_for(bytes) as usize;
        let out = ctx.upload("out", &vec![0xabu8; groups * 4 + 64]).unwrap();
        let mut rec = Recorder::new(&ctx);
        assert_eq!(read_bandwidth::read_all(&mut rec, &BufRef::from(&src), bytes, &BufRef::from(&out)).unwrap() as usize, groups);
        rec.submit().unwrap();
        let got = ctx.read_u32(&out, 0, groups).unwrap();
        let mut want = vec![0u32; groups];
        let stride = groups * 256;
        for i in 0..(bytes / 16) as usize {
            want[(i % stride) / 256] ^= words[4 * i] ^ words[4 * i + 1] ^ words[4 * i + 2] ^ words[4 * i + 3];
        }
        assert_eq!(got, want, "{bytes} bytes in {groups} workgroups");
    }
    let out = poisoned(&ctx, 16);
    let err = read_bandwidth::read_all(&mut Recorder::new(&ctx), &BufRef::from(&src), 20, &BufRef::from(&out)).unwrap_err();
    assert!(format!("{err}").contains("read_bandwidth bytes"), "{err}");
}
