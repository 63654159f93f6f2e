//! Writes a model from any `WeightSource` as a `llama` GGUF file (weights and shape metadata, no
//! tokenizer): how the bench makes multi-gigabyte files of a real shape (`SyntheticModel`) to time
//! loading on machines that cannot download one. `GgufModel` reads the file back to the same
//! tensors: names are mapped to GGUF's and Q/K rows permuted as llama.cpp's converter does.
//!
//! The file is written in one pass with bounded memory: the header's length depends only on the
//! tensor names and dimension counts, so the data section is written first (a few tensors made in
//! parallel, written in order) and the header, with the types and offsets now known, last.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::model::config::{Arch, Config, RopeScaling};
use crate::model::gguf::{ggml_code, gguf_name, permute_rows};
use crate::model::host::{HostTensor, TensorFormat, WeightSource};
use crate::{Error, Result};

/// GGUF's default data alignment (no `general.alignment` key needed).
const ALIGNMENT: u64 = 32;

/// One tensor of the file: HF name (the source's), shape it must have, and what was written.
struct Entry {
    hf: String,
    shape: Vec<usize>,
    /// Set once the data is written.
    written: Option<(TensorFormat, u64)>,
}

/// The tensors of a llama model of `cfg` in file order (as llama.cpp writes them), with shapes.
fn entries(cfg: &Config, untied_head: bool) -> Vec<Entry> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}.");
        v.push((format!("{p}input_layernorm.weight"), vec![h]));
        v.push((format!("{p}self_attn.q_proj.weight"), vec![cfg.q_dim(), h]));
        v.push((format!("{p}self_attn.k_proj.weight"), vec![cfg.kv_dim(), h]));
        v.push((format!("{p}self_attn.v_proj.weight"), vec![cfg.kv_dim(), h]));
        v.push((format!("{p}self_attn.o_proj.weight"), vec![h, cfg.q_dim()]));
        v.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{p}mlp.gate_proj.weight"), vec![i, h]));
        v.push((format!("{p}mlp.up_proj.weight"), vec![i, h]));
        v.push((format!("{p}mlp.down_proj.weight"), vec![h, i]));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if untied_head {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    v.into_iter().map(|(hf, shape)| Entry { hf, shape, written: None }).collect()
}

/// A GGUF metadata value (the types this writer needs).
enum Value {
    U32(u32),
    F32(f32),
    Str(String),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn metadata(cfg: &Config, name: &str) -> Result<Vec<(&'static str, Value)>> {
    let mut kv = vec![
        ("general.architecture", Value::Str("llama".into())),
        // The reader takes Mistral's conventions from a name that says so.
        ("general.name", Value::Str(if cfg.arch == Arch::Mistral && !name.to_lowercase().contains("mistral") { format!("{name} mistral") } else { name.to_string() })),
        ("llama.embedding_length", Value::U32(cfg.hidden_size as u32)),
        ("llama.block_count", Value::U32(cfg.num_layers as u32)),
        ("llama.feed_forward_length", Value::U32(cfg.intermediate_size as u32)),
        ("llama.attention.head_count", Value::U32(cfg.num_heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(cfg.num_kv_heads as u32)),
        ("llama.attention.key_length", Value::U32(cfg.head_dim as u32)),
        ("llama.attention.value_length", Value::U32(cfg.head_dim as u32)),
        ("llama.rope.dimension_count", Value::U32(cfg.head_dim as u32)),
        ("llama.context_length", Value::U32(cfg.max_position_embeddings as u32)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps)),
    ];
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            kv.push(("llama.rope.scaling.type", Value::Str("linear".into())));
            kv.push(("llama.rope.scaling.factor", Value::F32(*factor)));
        }
        Some(other) => return Err(Error::Unsupported(format!("writing RoPE scaling {other:?} to GGUF (none and linear are written)"))),
    }
    if let Some(b) = cfg.bos_token_id {
        kv.push(("tokenizer.ggml.bos_token_id", Value::U32(b)));
    }
    for (key, id) in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"].iter().zip(&cfg.eos_token_ids) {
        kv.push((key, Value::U32(*id)));
    }
    Ok(kv)
}

/// The header: metadata, then each tensor's name, dims (innermost first), type and offset
/// relative to the data section. Tensors not yet written get type 0 and offset 0, which keeps
/// the length: every field but the names and the dimension count is fixed-width.
fn header(kv: &[(&str, Value)], entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((entries.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        match v {
            Value::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
        }
    }
    for e in entries {
        put_str(&mut out, &gguf_name(&e.hf));
        out.extend((e.shape.len() as u32).to_le_bytes());
        e.shape.iter().rev().for_each(|&d| out.extend((d as u64).to_le_bytes()));
        let (code, offset) = e.written.map_or((0, 0), |(f, o)| (ggml_code(f), o));
        out.extend(code.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    out
}

/// The bytes a tensor is stored as in the file: its data, Q/K rows permuted as llama.cpp does.
fn file_bytes<'a>(t: &'a HostTensor<'_>, cfg: &Config) -> Result<std::borrow::Cow<'a, [u8]>> {
    let heads = if t.name.contains(".self_attn.q_proj.") {
        Some(cfg.num_heads)
    } else if t.name.contains(".self_attn.k_proj.") {
        Some(cfg.num_kv_heads)
    } else {
        None
    };
    Ok(match heads {
        Some(heads) => permute_rows(&t.name, &t.data, t.shape[0], heads)?.into(),
        None => std::borrow::Cow::Borrowed(&t.data[..]),
    })
}

/// Write the model of `src` to `path` as GGUF, named `name` in its metadata. Returns the file's
/// size in bytes. `threads` tensors are made at once (a synthetic source makes them on request).
pub fn write_gguf(path: &Path, src: &(dyn WeightSource + Sync), name: &str, threads: usize) -> Result<u64> {
    let cfg = src.config().clone();
    let untied = !cfg.tie_word_embeddings && src.has_tensor("lm_head.weight");
    let mut entries = entries(&cfg, untied);
    let kv = metadata(&cfg, name)?;
    let data_start = (header(&kv, &entries).len() as u64).next_multiple_of(ALIGNMENT);
    let io = |e: std::io::Error| Error::io(path, e);
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.seek(SeekFrom::Start(data_start)).map_err(io)?;
    let mut offset = 0u64;
    for batch in (0..entries.len()).collect::<Vec<_>>().chunks(threads.max(1)) {
        // Make a few tensors in parallel (the synthetic source's random numbers are the slow
        // part), then write them in file order.
        let made: Vec<Result<HostTensor<'_>>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch.iter().map(|&i| {
                let hf = entries[i].hf.clone();
                s.spawn(move || src.tensor(&hf))
            }).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::tensor("?", "making the tensor panicked")))).collect()
        });
        for (&i, t) in batch.iter().zip(made) {
            let t = t?;
            let e = &mut entries[i];
            if t.shape != e.shape {
                return Err(Error::tensor(&e.hf, format!("expected shape {:?}, found {:?} in {}", e.shape, t.shape, src.origin().display())));
            }
            let (be, bb) = t.format.block();
            let cols = *e.shape.last().unwrap_or(&1);
            let size = (cols % be == 0).then(|| t.numel() / be * bb).filter(|&n| n <= t.data.len()).ok_or_else(|| {
                Error::tensor(&e.hf, format!("{:?} data of {} bytes does not hold shape {:?}", t.format, t.data.len(), e.shape))
            })?;
            let bytes = file_bytes(&t, &cfg)?;
            file.write_all(&bytes[..size]).map_err(io)?;
            let padded = (size as u64).next_multiple_of(ALIGNMENT);
            file.write_all(&vec![0u8; (padded - size as u64) as usize]).map_err(io)?;
            e.written = Some((t.format, offset));
            offset += padded;
        }
    }
    let head = header(&kv, &entries);
    debug_assert!(head.len() as u64 <= data_start);
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&head).map_err(io)?;
    file.write_all(&vec![0u8; (data_start - head.len() as u64) as usize]).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(data_start + offset)
}
