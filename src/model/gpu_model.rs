//! The model's weights on the GPU, built from any `WeightSource` (safetensors folder or GGUF file).
//! Immutable after loading and shared by sessions.

use std::sync::Arc;

use crate::gpu::tensor::{GpuMatrix, MatrixRows};
use crate::gpu::upload::Uploader;
use crate::gpu::GpuContext;
use crate::model::config::Config;
use crate::model::host::{HostTensor, RowOrder, TensorFormat, WeightSource};
use crate::{Error, Result};

/// A linear layer whose output rows may come from several matrices (fused Q/K/V when the formats
/// agree: one matrix; otherwise one per part, each writing its own row range).
pub struct Linear {
    pub parts: Vec<(GpuMatrix, usize)>,
    pub rows: usize,
}


pub struct Layer {
    pub attn_norm: wgpu::Buffer,
    pub qkv: Linear,
    pub o: GpuMatrix,
    pub mlp_norm: wgpu::Buffer,
    /// gate and up projections with interleaved rows (SwiGLU runs in the matvec/matmul epilogue).
    pub gate_up: GpuMatrix,
    pub down: GpuMatrix,
}

pub struct GpuModel {
    pub ctx: Arc<GpuContext>,
    pub cfg: Config,
    pub layers: Vec<Layer>,
    pub final_norm: wgpu::Buffer,
    pub lm_head: GpuMatrix,
    /// The embedding table on the GPU in its stored format (rows gathered by `ops::embed`), when
    /// `lm_head` cannot serve: untied heads, and f32 tables (`lm_head` holds them as 16-bit).
    embed_table: Option<GpuMatrix>,
    pub inv_freq: wgpu::Buffer,
    /// The weights' source (memory-mapped), kept for its origin (the model's name in caches).
    pub source: Box<dyn WeightSource + Send + Sync>,
    /// Total bytes of weights on the GPU (bandwidth accounting).
    pub gpu_bytes: usize,
    /// Fingerprint of the weights (see [`model_identity`]): ties calibrated ESA maps to a model.
    pub identity: String,
}

/// A short fingerprint of a model: SHA-256 over its shape (architecture, sizes, RoPE) and the
/// stored bytes of layer 0's K projection, first 16 hex digits. Two files of the same
/// checkpoint in different formats or quantizations get different identities (their keys differ).
pub fn model_identity(src: &dyn WeightSource) -> Result<String> {
    use sha2::{Digest, Sha256};
    let c = src.config();
    let mut h = Sha256::new();
    let shape = format!(
        "{:?} h{} i{} l{} q{} kv{} d{} v{} theta{} {:?}",
        c.arch, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size, c.rope_theta, c.rope_scaling
    );
    h.update(shape.as_bytes());
    let k = src.tensor("model.layers.0.self_attn.k_proj.weight")?;
    h.update(format!("{:?}", k.format).as_bytes());
    h.update(&k.data);
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

fn expect<'a>(src: &'a dyn WeightSource, name: &str, shape: &[usize]) -> Result<HostTensor<'a>> {
    let t = src.tensor(name)?;
    if t.shape != shape {
        return Err(Error::tensor(name, format!("expected shape {shape:?}, found {:?} in {}", t.shape, src.origin().display())));
    }
    Ok(t)
}

/// `expect` for tensors on their way to the GPU: the bytes as stored and their row order
/// (`WeightSource::stored_tensor`), so no reordered copy is made on the host.
fn expect_stored<'a>(src: &'a dyn WeightSource, name: &str, shape: &[usize]) -> Result<(HostTensor<'a>, RowOrder)> {
    let (t, order) = src.stored_tensor(name)?;
    if t.shape != shape {
        return Err(Error::tensor(name, format!("expected shape {shape:?}, found {:?} in {}", t.shape, src.origin().display())));
    }
    Ok((t, order))
}

fn upload_vector(ctx: &GpuContext, src: &dyn WeightSource, name: &str, n: usize) -> Result<wgpu::Buffer> {
    let t = expect(src, name, &[n])?;
    let v = crate::quant::dequantize(name, t.format, &t.data, n)?;
    ctx.upload(name, bytemuck::cast_slice(&v))
}

impl GpuModel {
    pub fn load(ctx: Arc<GpuContext>, source: Box<dyn WeightSource + Send + Sync>) -> Result<GpuModel> {
        Self::load_with_progress(ctx, source, &crate::progress::Silent)
    }

    /// `load`, reporting the layers uploaded (and the LM head as one more) to `progress`.
    pub fn load_with_progress(ctx: Arc<GpuContext>, source: Box<dyn WeightSource + Send + Sync>, progress: &dyn crate::progress::Progress) -> Result<GpuModel> {
        progress.start("loading model", source.config().num_layers as u64 + 1, crate::progress::Unit::Layers);
        let model = Self::load_reporting(ctx, source, progress);
        progress.finish();
        model
    }

    fn load_reporting(ctx: Arc<GpuContext>, source: Box<dyn WeightSource + Send + Sync>, progress: &dyn crate::progress::Progress) -> Result<GpuModel> {
        let cfg = source.config().clone();
        let src: &dyn WeightSource = source.as_ref();
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        if d % 2 != 0 || d > 256 {
            return Err(Error::Unsupported(format!("head_dim {d} (the attention kernels need an even head_dim of at most 256)")));
        }
        if cfg.num_heads % cfg.num_kv_heads != 0 {
            return Err(Error::Unsupported(format!("{} heads not a multiple of {} KV heads", cfg.num_heads, cfg.num_kv_heads)));
        }
        // One uploader for the whole model: its staging ring streams every matrix to the GPU
        // (see `gpu::upload`); fused matrices are assembled row by row on the way.
        let mut up = Uploader::new(&ctx);
        let single = |up: &mut Uploader<'_>, (t, order): &(HostTensor<'_>, RowOrder), pair_rows: bool| {
            GpuMatrix::stream(up, &MatrixRows::single(t, *order)?, pair_rows, false)
        };
        let mut gpu_bytes = 0;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}.");
            let q = expect_stored(src, &format!("{p}self_attn.q_proj.weight"), &[cfg.q_dim(), h])?;
            let k = expect_stored(src, &format!("{p}self_attn.k_proj.weight"), &[cfg.kv_dim(), h])?;
            let v = expect_stored(src, &format!("{p}self_attn.v_proj.weight"), &[cfg.kv_dim(), h])?;
            let qkv = if q.0.format == k.0.format && k.0.format == v.0.format {
                let fused = MatrixRows::stacked(&format!("{p}qkv"), &[(&q.0, q.1), (&k.0, k.1), (&v.0, v.1)])?;
                Linear { parts: vec![(GpuMatrix::stream(&mut up, &fused, false, false)?, 0)], rows: fused.rows() }
            } else {
                let mut parts = Vec::new();
                let mut off = 0;
                for t in [&q, &k, &v] {
                    parts.push((single(&mut up, t, false)?, off));
                    off += t.0.shape[0];
                }
                Linear { parts, rows: off }
            };
            drop((q, k, v));
            let o = single(&mut up, &expect_stored(src, &format!("{p}self_attn.o_proj.weight"), &[h, cfg.q_dim()])?, false)?;
            let gate = expect_stored(src, &format!("{p}mlp.gate_proj.weight"), &[cfg.intermediate_size, h])?;
            let up_proj = expect_stored(src, &format!("{p}mlp.up_proj.weight"), &[cfg.intermediate_size, h])?;
            // `interleaved` refuses gate/up of different formats with an error naming them.
            let gate_up = GpuMatrix::stream(&mut up, &MatrixRows::interleaved((&gate.0, gate.1), (&up_proj.0, up_proj.1))?, true, false)?;
            drop((gate, up_proj));
            let down = single(&mut up, &expect_stored(src, &format!("{p}mlp.down_proj.weight"), &[h, cfg.intermediate_size])?, false)?;
            gpu_bytes += qkv.parts.iter().map(|m| m.0.bytes()).sum::<usize>() + o.bytes() + down.bytes();
            gpu_bytes += gate_up.bytes();
            layers.push(Layer {
                attn_norm: upload_vector(&ctx, src, &format!("{p}input_layernorm.weight"), h)?,
                qkv,
                o,
                mlp_norm: upload_vector(&ctx, src, &format!("{p}post_attention_layernorm.weight"), h)?,
                gate_up,
                down,
            });
            progress.update(i as u64 + 1);
        }
        let final_norm = upload_vector(&ctx, src, "model.norm.weight", h)?;
        let embed = expect_stored(src, "model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let tied = cfg.tie_word_embeddings || !src.has_tensor("lm_head.weight");
        let lm_head = if tied {
            single(&mut up, &embed, false)?
        } else {
            single(&mut up, &expect_stored(src, "lm_head.weight", &[cfg.vocab_size, h])?, false)?
        };
        let embed_table = match (tied, embed.0.format) {
            (_, TensorFormat::F32) => Some(GpuMatrix::stream(&mut up, &MatrixRows::single(&embed.0, embed.1)?, false, true)?),
            (true, _) => None,
            (false, _) => Some(single(&mut up, &embed, false)?),
        };
        up.finish()?;
        gpu_bytes += lm_head.bytes();
        drop(embed);
        let inv_freq = ctx.upload("rope inv_freq", bytemuck::cast_slice(&cfg.rope_inv_freqs()))?;
        let identity = model_identity(src)?;
        ctx.check()?;
        Ok(GpuModel { ctx, cfg, layers, final_norm, lm_head, embed_table, inv_freq, source, gpu_bytes, identity })
    }

    /// The embedding table on the GPU (`ops::embed::embed_rows` gathers from it).
    pub fn embedding_table(&self) -> &GpuMatrix {
        self.embed_table.as_ref().unwrap_or(&self.lm_head)
    }
}
