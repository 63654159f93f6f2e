//! The streaming weight upload (`gpu::upload`, `GpuMatrix::stream`) against the whole-tensor host
//! layout it replaced (fused Q/K/V rows concatenated, gate/up rows interleaved, GGUF's Q/K rows put
//! back in HF order, then each row packed): every byte on the GPU must be the same, for every
//! format, odd sizes, row shards, and a staging ring small enough that every few rows wait for a
//! buffer to come back. Also the GGUF writer: a model written by it reads back to the same tensors
//! and, loaded, gives bit-identical logits to the folder it came from.

mod common;

use std::sync::{Arc, OnceLock};

use common::{tiny_model_dir, TinySpec};
use esa_wgpu::gpu::tensor::{GpuMatrix, MatrixRows};
use esa_wgpu::gpu::upload::Uploader;
use esa_wgpu::gpu::{GpuContext, GpuOptions};
use esa_wgpu::model::gguf::GgufModel;
use esa_wgpu::model::gpu_model::GpuModel;
use esa_wgpu::model::host::{HostTensor, RowOrder, TensorFormat, WeightSource};
use esa_wgpu::model::safetensors_loader::SafetensorsModel;
use esa_wgpu::session::Session;
use esa_wgpu::SessionOptions;

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    // 4 KiB bindings: most matrices here are split into several row shards.
    CTX.get_or_init(|| GpuContext::new(&GpuOptions { max_binding: Some(4096), ..Default::default() }).expect("GPU context")).clone()
}

/// The GPU layout of `t`, computed on the host the way the loader did before it streamed: 16-bit
/// rows padded with zeros to a multiple of 8 values; f32 as f16 (bf16 when a finite value reaches
/// 65000); Q4_0/Q8_0 blocks with 2 bytes after their scale, Q6_K blocks with 2 at the end, other
/// blocks as stored; `keep_f32`: f32 rows padded to a multiple of 4 values.
fn host_layout(t: &HostTensor<'_>, keep_f32: bool) -> Vec<u8> {
    let (rows, cols) = t.rows_cols();
    if keep_f32 {
        let v = esa_wgpu::quant::dequantize(&t.name, t.format, &t.data, rows * cols).unwrap();
        let padded = cols.next_multiple_of(4);
        let mut out = vec![0f32; rows * padded];
        for r in 0..rows {
            out[r * padded..r * padded + cols].copy_from_slice(&v[r * cols..(r + 1) * cols]);
        }
        return bytemuck::cast_slice(&out).to_vec();
    }
    let half: Option<Vec<u16>> = match t.format {
        TensorFormat::F16 | TensorFormat::BF16 => Some(bytemuck::pod_collect_to_vec(&t.data[..rows * cols * 2])),
        TensorFormat::F32 => {
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(&t.data[..rows * cols * 4]);
            let bf16 = v.iter().any(|x| x.is_finite() && x.abs() >= 65000.0);
            Some(v.iter().map(|&x| if bf16 { half::bf16::from_f32(x).to_bits() } else { half::f16::from_f32(x).to_bits() }).collect())
        }
        _ => None,
    };
    if let Some(h) = half {
        let padded = cols.next_multiple_of(8);
        let mut out = vec![0u16; rows * padded];
        for r in 0..rows {
            out[r * padded..r * padded + cols].copy_from_slice(&h[r * cols..(r + 1) * cols]);
        }
        return bytemuck::cast_slice(&out).to_vec();
    }
    let (_, file_b) = t.format.block();
    let gpu_b = file_b.next_multiple_of(4);
    let mut out = Vec::new();
    for b in t.data.chunks_exact(file_b).take(rows * cols / t.format.block().0) {
        let mut g = vec![0u8; gpu_b];
        match t.format {
            TensorFormat::Q4_0 | TensorFormat::Q8_0 => {
                g[..2].copy_from_slice(&b[..2]);
                g[4..4 + file_b - 2].copy_from_slice(&b[2..]);
            }
            _ => g[..file_b].copy_from_slice(b),
        }
        out.extend(g);
    }
    out
}

/// The bytes of a matrix on the GPU, shard after shard.
fn gpu_bytes(ctx: &GpuContext, m: &GpuMatrix) -> Vec<u8> {
    let mut out = Vec::new();
    for s in &m.shards {
        out.extend(ctx.read(&s.buf, 0, (s.rows * m.row_bytes) as u64).unwrap());
    }
    out
}

fn host(name: &str, rows: usize, cols: usize, format: TensorFormat, data: Vec<u8>) -> HostTensor<'static> {
    HostTensor { name: name.into(), shape: vec![rows, cols], format, data: data.into() }
}

/// A random `rows x cols` tensor in `fmt`; F32 values up to `f32_scale`.
fn random(fmt: TensorFormat, rows: usize, cols: usize, seed: u64, f32_scale: f32) -> HostTensor<'static> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let data: Vec<u8> = match fmt {
        TensorFormat::F16 => (0..rows * cols).flat_map(|_| half::f16::from_f32(next()).to_le_bytes()).collect(),
        TensorFormat::BF16 => (0..rows * cols).flat_map(|_| half::bf16::from_f32(next()).to_le_bytes()).collect(),
        TensorFormat::F32 => (0..rows * cols).flat_map(|_| (next() * f32_scale).to_le_bytes()).collect(),
        q => esa_wgpu::quant::random_blocks(q, rows, cols, seed),
    };
    host(&format!("w {fmt:?} x{f32_scale}"), rows, cols, fmt, data)
}

#[test]
fn every_format_streams_its_gpu_layout() {
    let ctx = ctx();
    let cases = [
        (TensorFormat::F16, 44, 1.0),
        (TensorFormat::BF16, 52, 1.0),
        (TensorFormat::F32, 36, 1.0),
        (TensorFormat::F32, 36, 1e6), // overflows f16: stored as bf16
        (TensorFormat::Q8_0, 96, 1.0),
        (TensorFormat::Q4_0, 96, 1.0),
        (TensorFormat::Q4_1, 160, 1.0),
        (TensorFormat::Q4_K, 512, 1.0),
        (TensorFormat::Q5_K, 256, 1.0),
        (TensorFormat::Q6_K, 512, 1.0),
    ];
    for (i, &(fmt, cols, scale)) in cases.iter().enumerate() {
        let t = random(fmt, 37, cols, i as u64 + 7, scale);
        let want = host_layout(&t, false);
        // One matrix through its own uploader (`GpuMatrix::upload`), with shards on even rows.
        for pair_rows in [false, true] {
            let m = GpuMatrix::upload(&ctx, &t, pair_rows).unwrap();
            assert!(m.shards.len() > 1 || m.rows * m.row_bytes <= 4096, "{fmt:?}: expected row shards");
            assert_eq!(gpu_bytes(&ctx, &m), want, "{fmt:?} x{scale} upload (pair_rows {pair_rows})");
        }
        // Through a ring of two staging buffers of 1 KiB: every buffer is reused many times.
        let mut up = Uploader::with_staging(&ctx, 1024, 2);
        let m = GpuMatrix::stream(&mut up, &MatrixRows::single(&t, RowOrder::AsStored).unwrap(), false, false).unwrap();
        up.finish().unwrap();
        assert_eq!(gpu_bytes(&ctx, &m), want, "{fmt:?} x{scale} through a small ring");
        // Full precision (ESA's maps; f32 embedding tables).
        let m = GpuMatrix::upload_f32(&ctx, &t).unwrap();
        assert_eq!((m.format, gpu_bytes(&ctx, &m)), (TensorFormat::F32, host_layout(&t, true)), "{fmt:?} x{scale} as f32");
    }
}

/// The rows of `t` with its stored rows put in HF order.
fn in_hf_order(t: &HostTensor<'_>, order: RowOrder) -> HostTensor<'static> {
    let (rows, _) = t.rows_cols();
    let rb = t.data.len() / rows;
    let data = (0..rows).flat_map(|r| t.data[order.stored_row(r) * rb..(order.stored_row(r) + 1) * rb].to_vec()).collect();
    HostTensor { name: t.name.clone(), shape: t.shape.clone(), format: t.format, data: std::borrow::Cow::Owned(data) }
}

#[test]
fn fused_and_reordered_rows_through_a_small_ring() {
    let ctx = ctx();
    for fmt in [TensorFormat::F16, TensorFormat::Q4_0, TensorFormat::Q6_K] {
        let cols = if fmt == TensorFormat::F16 { 76 } else { 256 };
        // Q 12 rows in 3 heads of paired rows, K 4 rows in 1 head, V 4 rows as stored.
        let (q, k, v) = (random(fmt, 12, cols, 1, 1.0), random(fmt, 4, cols, 2, 1.0), random(fmt, 4, cols, 3, 1.0));
        let (qo, ko) = (RowOrder::paired_heads("q", 12, 3).unwrap(), RowOrder::paired_heads("k", 4, 1).unwrap());
        let mut hf = Vec::new();
        for (t, o) in [(&q, qo), (&k, ko), (&v, RowOrder::AsStored)] {
            hf.extend_from_slice(&in_hf_order(t, o).data);
        }
        let want = host_layout(&host("qkv", 20, cols, fmt, hf), false);
        let mut up = Uploader::with_staging(&ctx, 512, 2);
        let m = GpuMatrix::stream(&mut up, &MatrixRows::stacked("qkv", &[(&q, qo), (&k, ko), (&v, RowOrder::AsStored)]).unwrap(), false, false).unwrap();
        let (g, u) = (random(fmt, 9, cols, 4, 1.0), random(fmt, 9, cols, 5, 1.0));
        let gu = GpuMatrix::stream(&mut up, &MatrixRows::interleaved((&g, RowOrder::AsStored), (&u, RowOrder::AsStored)).unwrap(), true, false).unwrap();
        up.finish().unwrap();
        assert_eq!(gpu_bytes(&ctx, &m), want, "{fmt:?} fused qkv");
        let (_, rb) = (0, g.data.len() / 9);
        let inter: Vec<u8> = (0..9).flat_map(|r| [&g.data[r * rb..(r + 1) * rb], &u.data[r * rb..(r + 1) * rb]].concat()).collect();
        assert_eq!(gpu_bytes(&ctx, &gu), host_layout(&host("gu", 18, cols, fmt, inter), false), "{fmt:?} interleaved gate/up");
        assert!(gu.shards.iter().all(|s| s.row0 % 2 == 0 && s.rows % 2 == 0), "{fmt:?}: gate/up pairs split across shards");
    }
    // Fusing tensors of different widths or formats is refused, naming the tensor.
    let (a, b) = (random(TensorFormat::F16, 4, 76, 1, 1.0), random(TensorFormat::F16, 4, 84, 2, 1.0));
    let err = MatrixRows::stacked("qkv", &[(&a, RowOrder::AsStored), (&b, RowOrder::AsStored)]).err().expect("widths differ").to_string();
    assert!(err.contains(&b.name), "{err}");
    let short = host("short", 4, 76, TensorFormat::F16, vec![0; 100]);
    let err = MatrixRows::single(&short, RowOrder::AsStored).err().expect("too short").to_string();
    assert!(err.contains("short") && err.contains("does not hold"), "{err}");
    let empty = HostTensor { name: "no columns".into(), shape: vec![4, 0], format: TensorFormat::F16, data: vec![].into() };
    let err = GpuMatrix::upload(&ctx, &empty, false).err().expect("no columns").to_string();
    assert!(err.contains("no columns"), "{err}");
}

/// An odd-sized model (hidden 76: rows padded on the GPU; heads of paired Q/K rows).
fn odd_spec() -> TinySpec {
    TinySpec { hidden: 76, heads: 6, kv_heads: 2, head_dim: 12, intermediate: 100, vocab: 301, ..TinySpec::llama_gqa_f16() }
}

/// The logits after a short prompt.
fn logits(model: GpuModel) -> Vec<f32> {
    let mut s = Session::new(Arc::new(model), SessionOptions { max_context: 32, prefill_chunk: 8, all_logits: false, ..Default::default() }).unwrap();
    s.feed(&[3, 17, 42, 5, 99, 250, 7, 11, 13, 1]).unwrap();
    s.logits().unwrap()
}

#[test]
fn gguf_written_from_a_folder_loads_to_the_same_weights_and_logits() {
    let ctx = ctx();
    for spec in [odd_spec(), TinySpec { tied: true, ..odd_spec() }] {
        let dir = tiny_model_dir(&spec);
        let st = SafetensorsModel::open(dir.path()).unwrap();
        let path = dir.path().join("model.gguf");
        let bytes = esa_wgpu::model::gguf_writer::write_gguf(&path, &st, "odd test", 3).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        let gg = GgufModel::open(&path).unwrap();
        assert_eq!(gg.config(), st.config(), "config read back");
        let mut names: Vec<&str> = st.tensor_names();
        names.retain(|n| *n != "lm_head.weight" || !spec.tied);
        for name in names {
            let (a, b) = (st.tensor(name).unwrap(), gg.tensor(name).unwrap());
            assert_eq!((&a.shape, a.format, &a.data), (&b.shape, b.format, &b.data), "{name} read back");
        }
        // Every fused matrix of the loaded model holds the host layout of the HF-order rows.
        let model = GpuModel::load(ctx.clone(), Box::new(GgufModel::open(&path).unwrap())).unwrap();
        for (i, layer) in model.layers.iter().enumerate() {
            let t = |p: &str| st.tensor(&format!("model.layers.{i}.{p}.weight")).unwrap();
            let (q, k, v) = (t("self_attn.q_proj"), t("self_attn.k_proj"), t("self_attn.v_proj"));
            let qkv = host("qkv", q.shape[0] + 2 * k.shape[0], spec.hidden, q.format, [&q.data[..], &k.data, &v.data].concat());
            assert_eq!(layer.qkv.parts.len(), 1);
            assert_eq!(gpu_bytes(&ctx, &layer.qkv.parts[0].0), host_layout(&qkv, false), "layer {i} qkv");
            let (g, u) = (t("mlp.gate_proj"), t("mlp.up_proj"));
            let rb = g.data.len() / spec.intermediate;
            let inter: Vec<u8> = (0..spec.intermediate).flat_map(|r| [&g.data[r * rb..(r + 1) * rb], &u.data[r * rb..(r + 1) * rb]].concat()).collect();
            let gu = host("gu", 2 * spec.intermediate, spec.hidden, g.format, inter);
            assert_eq!(gpu_bytes(&ctx, &layer.gate_up), host_layout(&gu, false), "layer {i} gate/up");
            assert_eq!(gpu_bytes(&ctx, &layer.down), host_layout(&t("mlp.down_proj"), false), "layer {i} down");
        }
        let head = if spec.tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        assert_eq!(gpu_bytes(&ctx, &model.lm_head), host_layout(&st.tensor(head).unwrap(), false), "lm_head");
        // Same bytes, same kernels: the same logits to the bit.
        let from_folder = GpuModel::load(ctx.clone(), Box::new(SafetensorsModel::open(dir.path()).unwrap())).unwrap();
        assert_eq!(logits(model), logits(from_folder), "tied {}: logits of the GGUF and of the folder", spec.tied);
    }
}

#[test]
fn large_matrix_filled_by_several_threads() {
    // The adapter's own binding limit: one shard, so each staging buffer's fill is split over threads.
    let ctx = GpuContext::new(&GpuOptions::default()).expect("GPU context");
    let t = random(TensorFormat::F16, 3001, 1004, 11, 1.0);
    let m = GpuMatrix::upload(&ctx, &t, false).unwrap();
    assert_eq!(gpu_bytes(&ctx, &m), host_layout(&t, false), "F16 3001 x 1004");
    // Several full staging buffers of 1 MiB in a ring of two.
    let mut up = Uploader::with_staging(&ctx, 1 << 20, 2);
    let t = random(TensorFormat::Q4_0, 2999, 1024, 12, 1.0);
    let m = GpuMatrix::stream(&mut up, &MatrixRows::single(&t, RowOrder::AsStored).unwrap(), false, false).unwrap();
    up.finish().unwrap();
    assert_eq!(gpu_bytes(&ctx, &m), host_layout(&t, false), "Q4_0 2999 x 1024");
}
