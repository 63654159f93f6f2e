//! The GGUF reader on hand-built files: a small valid llama file, and malformed variants of it that
//! must each give a clear error naming the file (never a panic or a huge allocation).

use std::path::{Path, PathBuf};

use esa_wgpu::model::gguf::{GgufFile, GgufHeader, GgufModel, GgufValue};
use esa_wgpu::model::host::{TensorFormat, WeightSource};
use esa_wgpu::Error;

/// A GGUF value as the builder writes it.
enum V {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

fn s(x: &str) -> V {
    V::Str(x.to_string())
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

/// Minimal GGUF v3 writer. Fields are public so tests can corrupt any of them.
struct Builder {
    magic: [u8; 4],
    version: u32,
    tensor_count: Option<u64>,
    kv: Vec<(String, V)>,
    tensors: Vec<Tensor>,
    /// Added to every tensor's offset (to point it outside the file).
    offset_bias: u64,
}

fn put_str(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

impl Builder {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.magic);
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            match v {
                V::U32(x) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::F32(x) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::Bool(x) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                V::Str(x) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, x);
                }
                V::StrArray(xs) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| put_str(&mut out, x));
                }
                V::I32Array(xs) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ggml_type.to_le_bytes());
            out.extend(offset.wrapping_add(self.offset_bias).to_le_bytes());
            offsets.push(offset);
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(&t.data);
        }
        out
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }

    fn set(&mut self, key: &str, v: V) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.kv.push((key.to_string(), v)),
        }
    }
}

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const FFN: usize = 16;
const VOCAB: usize = 10;

fn f32_tensor(name: &str, rows: usize, cols: usize, seed: f32) -> Tensor {
    let data = (0..rows * cols).flat_map(|i| (seed + i as f32).to_le_bytes()).collect();
    let dims = if rows == 1 { vec![cols as u64] } else { vec![cols as u64, rows as u64] };
    Tensor { name: name.to_string(), dims, ggml_type: 0, data }
}

/// A valid one-layer llama model with F32 weights whose values encode their position.
fn tiny_llama() -> Builder {
    let tokens: Vec<String> = (0..VOCAB).map(|i| format!("t{i}")).collect();
    let kv = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.name".to_string(), s("tiny test")),
        ("general.alignment".to_string(), V::U32(32)),
        ("llama.embedding_length".to_string(), V::U32(HIDDEN as u32)),
        ("llama.block_count".to_string(), V::U32(1)),
        ("llama.feed_forward_length".to_string(), V::U32(FFN as u32)),
        ("llama.attention.head_count".to_string(), V::U32(HEADS as u32)),
        ("llama.attention.head_count_kv".to_string(), V::U32(KV_HEADS as u32)),
        ("llama.context_length".to_string(), V::U32(256)),
        ("llama.rope.freq_base".to_string(), V::F32(50_000.0)),
        ("llama.rope.dimension_count".to_string(), V::U32((HIDDEN / HEADS) as u32)),
        ("llama.attention.layer_norm_rms_epsilon".to_string(), V::F32(1e-6)),
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".to_string(), s("smollm")),
        ("tokenizer.ggml.tokens".to_string(), V::StrArray(tokens)),
        ("tokenizer.ggml.token_type".to_string(), V::I32Array(vec![1; VOCAB])),
        ("tokenizer.ggml.merges".to_string(), V::StrArray(vec!["t 1".into()])),
        ("tokenizer.ggml.bos_token_id".to_string(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), V::U32(2)),
        ("tokenizer.ggml.add_bos_token".to_string(), V::Bool(false)),
        ("tokenizer.chat_template".to_string(), s("{{ messages }}")),
    ];
    let hd = HIDDEN / HEADS;
    let tensors = vec![
        f32_tensor("token_embd.weight", VOCAB, HIDDEN, 0.0),
        f32_tensor("blk.0.attn_norm.weight", 1, HIDDEN, 1.0),
        f32_tensor("blk.0.attn_q.weight", HIDDEN, HIDDEN, 0.0),
        f32_tensor("blk.0.attn_k.weight", KV_HEADS * hd, HIDDEN, 0.0),
        f32_tensor("blk.0.attn_v.weight", KV_HEADS * hd, HIDDEN, 0.0),
        f32_tensor("blk.0.attn_output.weight", HIDDEN, HIDDEN, 0.0),
        f32_tensor("blk.0.ffn_norm.weight", 1, HIDDEN, 1.0),
        f32_tensor("blk.0.ffn_gate.weight", FFN, HIDDEN, 0.0),
        f32_tensor("blk.0.ffn_up.weight", FFN, HIDDEN, 0.0),
        f32_tensor("blk.0.ffn_down.weight", HIDDEN, FFN, 0.0),
        f32_tensor("output_norm.weight", 1, HIDDEN, 1.0),
    ];
    Builder { magic: *b"GGUF", version: 3, tensor_count: None, kv, tensors, offset_bias: 0 }
}

/// Open `b` as a model and return the error message, checking it names the file.
fn open_err(b: &Builder, name: &str) -> (Error, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = b.write(dir.path(), name);
    let err = match GgufModel::open(&path) {
        Ok(_) => panic!("{name}: opened without error"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains(name), "{name}: error does not name the file: {msg}");
    (err, msg)
}

#[test]
fn tiny_valid_model_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_llama().write(dir.path(), "tiny.gguf");
    let m = GgufModel::open(&path).unwrap();
    let c = m.config();
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim), (HIDDEN, 1, HEADS, KV_HEADS, 4));
    assert_eq!((c.intermediate_size, c.vocab_size, c.max_position_embeddings), (FFN, VOCAB, 256));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (50_000.0, 1e-6));
    assert!(c.tie_word_embeddings && c.rope_scaling.is_none());
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
    assert_eq!(m.origin(), path.as_path());
    assert_eq!(m.get("general.name"), Some(&GgufValue::String("tiny test".into())));
    assert!(m.metadata().iter().any(|(k, _)| k == "llama.block_count"));

    // Shapes are [rows, cols]; data is borrowed except for Q/K, whose rows are un-permuted.
    let t = m.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!((t.shape.clone(), t.format), (vec![HIDDEN, FFN], TensorFormat::F32));
    assert!(matches!(t.data, std::borrow::Cow::Borrowed(_)));
    let q = m.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    let row0 = |t: &esa_wgpu::model::host::HostTensor, r: usize| f32::from_le_bytes(t.data[r * HIDDEN * 4..r * HIDDEN * 4 + 4].try_into().unwrap()) as usize / HIDDEN;
    // Per head of 4 rows, GGUF rows [0, 1, 2, 3] hold HF rows [0, 2, 1, 3].
    assert_eq!((0..8).map(|r| row0(&q, r)).collect::<Vec<_>>(), [0, 2, 1, 3, 4, 6, 5, 7]);
    let k = m.tensor("model.layers.0.self_attn.k_proj.weight").unwrap();
    assert_eq!(k.shape, [4, HIDDEN]);
    assert_eq!((0..4).map(|r| row0(&k, r)).collect::<Vec<_>>(), [0, 2, 1, 3]);
    assert!(m.has_tensor("model.embed_tokens.weight") && !m.has_tensor("lm_head.weight"));
    let e = m.tensor("lm_head.weight").unwrap_err().to_string();
    assert!(e.contains("lm_head") && e.contains("tiny.gguf"), "{e}");

    let spec = m.tokenizer_spec().unwrap();
    assert_eq!((spec.model.as_str(), spec.pre.as_deref()), ("gpt2", Some("smollm")));
    assert_eq!((spec.tokens.len(), spec.token_types.len(), spec.merges.len()), (VOCAB, VOCAB, 1));
    assert_eq!((spec.bos_id, spec.eos_id, spec.add_bos), (Some(1), Some(2), Some(false)));
    assert_eq!(spec.chat_template.as_deref(), Some("{{ messages }}"));
}

#[test]
fn wrong_magic() {
    let mut b = tiny_llama();
    b.magic = *b"GGML";
    let (_, msg) = open_err(&b, "magic.gguf");
    assert!(msg.contains("not a GGUF file"), "{msg}");
}

#[test]
fn unsupported_version() {
    let mut b = tiny_llama();
    b.version = 1;
    let (_, msg) = open_err(&b, "v1.gguf");
    assert!(msg.contains("version 1"), "{msg}");
    b.version = 99;
    let (_, msg) = open_err(&b, "v99.gguf");
    assert!(msg.contains("version 99"), "{msg}");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = tiny_llama().bytes();
    let path = Path::new("cut.gguf");
    for len in 0..bytes.len() {
        let e = GgufHeader::parse(path, &bytes[..len]).err().unwrap_or_else(|| panic!("prefix of {len} bytes parsed"));
        assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("cut.gguf"), "{len}: {e}");
    }
    assert!(GgufHeader::parse(path, &bytes).is_ok());
    // And through the file path.
    let mut b = tiny_llama();
    b.tensors.last_mut().unwrap().data.truncate(4);
    let (_, msg) = open_err(&b, "truncated.gguf");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn absurd_tensor_count() {
    for n in [u64::MAX, 1 << 40, 1_000_000] {
        let mut b = tiny_llama();
        b.tensor_count = Some(n);
        let (e, msg) = open_err(&b, "count.gguf");
        assert!(matches!(e, Error::Format { .. }) && msg.contains("tensor count"), "{msg}");
    }
}

#[test]
fn absurd_string_and_array_lengths() {
    let bytes = tiny_llama().bytes();
    // The first key's length field sits right after the 24-byte header.
    let mut b = bytes.clone();
    b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = GgufHeader::parse(Path::new("strlen.gguf"), &b).unwrap_err().to_string();
    assert!(e.contains("strlen.gguf") && e.contains("string length"), "{e}");

    // An array claiming 2^61 strings.
    let mut tb = tiny_llama();
    tb.kv.clear();
    let mut raw = tb.bytes();
    raw[16..24].copy_from_slice(&1u64.to_le_bytes()); // one metadata entry, then:
    let mut kv = Vec::new();
    put_str(&mut kv, "tokenizer.ggml.tokens");
    kv.extend(9u32.to_le_bytes());
    kv.extend(8u32.to_le_bytes());
    kv.extend((1u64 << 61).to_le_bytes());
    raw.splice(24..24, kv);
    let e = GgufHeader::parse(Path::new("arrlen.gguf"), &raw).unwrap_err().to_string();
    assert!(e.contains("arrlen.gguf") && e.contains("array length"), "{e}");
}

#[test]
fn absurd_dimensions() {
    let mut b = tiny_llama();
    b.tensors[0].dims = vec![1 << 32, 1 << 32, 1 << 32];
    let (_, msg) = open_err(&b, "dims.gguf");
    assert!(msg.contains("overflow"), "{msg}");
    let mut b = tiny_llama();
    b.tensors[0].dims = vec![8, 1, 1, 1, 1, 1];
    let (_, msg) = open_err(&b, "ndims.gguf");
    assert!(msg.contains("dimensions"), "{msg}");
}

#[test]
fn tensor_offset_out_of_range() {
    for bias in [1 << 20, u64::MAX - 31] {
        let mut b = tiny_llama();
        b.offset_bias = bias;
        let (e, msg) = open_err(&b, "offset.gguf");
        assert!(matches!(e, Error::Format { .. }) && msg.contains("past the end"), "{msg}");
    }
    let mut b = tiny_llama();
    b.offset_bias = 4; // misaligned
    let (_, msg) = open_err(&b, "misaligned.gguf");
    assert!(msg.contains("alignment"), "{msg}");
}

#[test]
fn unsupported_and_unknown_quant_types() {
    // Q5_0 (code 6) is a real ggml type the crate has no kernel for: 32 values in 22 bytes.
    let mut b = tiny_llama();
    let t = &mut b.tensors[7];
    t.dims = vec![32, 1];
    t.ggml_type = 6;
    t.data = vec![0; 22];
    let (e, msg) = open_err(&b, "q5_0.gguf");
    assert!(matches!(e, Error::Unsupported(_)) && msg.contains("Q5_0") && msg.contains("blk.0.ffn_gate.weight"), "{msg}");

    let mut b = tiny_llama();
    b.tensors[7].ggml_type = 200;
    let (e, msg) = open_err(&b, "type200.gguf");
    assert!(matches!(e, Error::Format { .. }) && msg.contains("unknown ggml type code 200"), "{msg}");

    // A row length that is not a whole number of blocks.
    let mut b = tiny_llama();
    b.tensors[7].ggml_type = 8; // Q8_0 with 8 columns
    let (_, msg) = open_err(&b, "rowlen.gguf");
    assert!(msg.contains("block size"), "{msg}");
}

#[test]
fn unsupported_architecture() {
    let mut b = tiny_llama();
    b.set("general.architecture", s("gpt2"));
    let (e, msg) = open_err(&b, "arch.gguf");
    assert!(matches!(e, Error::Unsupported(_)) && msg.contains("`gpt2`"), "{msg}");
    // The metadata is still readable as a plain GGUF file.
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(b.write(dir.path(), "arch.gguf")).unwrap();
    assert_eq!(f.get("general.architecture").and_then(|v| v.as_str()), Some("gpt2"));
}

#[test]
fn missing_and_mistyped_config_fields() {
    let mut b = tiny_llama();
    b.kv.retain(|(k, _)| k != "llama.block_count");
    let (e, msg) = open_err(&b, "nolayers.gguf");
    assert!(matches!(e, Error::Config { .. }) && msg.contains("llama.block_count") && msg.contains("missing"), "{msg}");
    let mut b = tiny_llama();
    b.set("llama.embedding_length", s("576"));
    let (_, msg) = open_err(&b, "strtype.gguf");
    assert!(msg.contains("llama.embedding_length") && msg.contains("string"), "{msg}");
    let mut b = tiny_llama();
    b.set("llama.attention.head_count_kv", V::U32(3));
    let (_, msg) = open_err(&b, "kvheads.gguf");
    assert!(msg.contains("head_count_kv"), "{msg}");
    let mut b = tiny_llama();
    b.set("general.alignment", V::U32(24));
    let (_, msg) = open_err(&b, "align.gguf");
    assert!(msg.contains("alignment"), "{msg}");
}

#[test]
fn rope_scaling_from_metadata() {
    let mut b = tiny_llama();
    b.set("llama.rope.scaling.type", s("linear"));
    b.set("llama.rope.scaling.factor", V::F32(4.0));
    let dir = tempfile::tempdir().unwrap();
    let m = GgufModel::open(b.write(dir.path(), "linear.gguf")).unwrap();
    assert_eq!(m.config().rope_scaling, Some(esa_wgpu::model::config::RopeScaling::Linear { factor: 4.0 }));
    // Llama 3.x style: a per-frequency divisor tensor (head_dim / 2 = 2 values).
    let mut b3 = tiny_llama();
    b3.tensors.push(Tensor { name: "rope_freqs.weight".into(), dims: vec![2], ggml_type: 0, data: [1.0f32, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect() });
    let m = GgufModel::open(b3.write(dir.path(), "llama3.gguf")).unwrap();
    assert_eq!(m.config().rope_scaling, Some(esa_wgpu::model::config::RopeScaling::Factors(vec![1.0, 8.0])));
    let f = m.config().rope_inv_freqs();
    assert!((f[0] - 1.0).abs() < 1e-6 && (f[1] - 1.0 / 50_000f32.sqrt() / 8.0).abs() < 1e-7, "{f:?}");
    b3.tensors.last_mut().unwrap().dims = vec![1];
    b3.tensors.last_mut().unwrap().data.truncate(4);
    let (_, msg) = open_err(&b3, "freqs.gguf");
    assert!(msg.contains("rope_freqs.weight"), "{msg}");
    // YaRN: factor, original context, llama.cpp's attn_factor (a multiplier of 0.1 ln(factor) + 1).
    b.set("llama.rope.scaling.type", s("yarn"));
    let (_, msg) = open_err(&b, "yarn.gguf");
    assert!(msg.contains("llama.rope.scaling.original_context_length"), "{msg}");
    b.set("llama.rope.scaling.original_context_length", V::U32(8192));
    let m = GgufModel::open(b.write(dir.path(), "yarn.gguf")).unwrap();
    assert_eq!(m.config().rope_scaling, Some(esa_wgpu::model::config::RopeScaling::yarn(4.0, 8192)));
    b.set("llama.rope.scaling.attn_factor", V::F32(2.0));
    let m = GgufModel::open(b.write(dir.path(), "yarn2.gguf")).unwrap();
    let Some(esa_wgpu::model::config::RopeScaling::Yarn { attention_factor, .. }) = m.config().rope_scaling else { panic!("not yarn") };
    assert!((attention_factor - 2.0 * (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6, "{attention_factor}");
    b.set("llama.rope.scaling.type", s("longrope"));
    let (e, msg) = open_err(&b, "longrope.gguf");
    assert!(matches!(e, Error::Unsupported(_)) && msg.contains("longrope"), "{msg}");
}

/// The real default model, if present (see tests/golden_smollm2.rs for how it is found).
#[test]
fn smollm2_config_from_metadata() {
    let Some(path) = esa_wgpu::fetch::cached_default_model().ok().flatten() else {
        eprintln!("skipped: default model not in the cache (set ESA_WGPU_CACHE)");
        return;
    };
    let m = GgufModel::open(&path).unwrap();
    let c = m.config();
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (30, 576, 9, 3, 64));
    assert_eq!((c.intermediate_size, c.vocab_size, c.max_position_embeddings), (1536, 49152, 8192));
    assert_eq!((c.rope_theta, c.tie_word_embeddings), (100_000.0, true));
    assert_eq!(m.tensor("model.embed_tokens.weight").unwrap().format, TensorFormat::Q8_0);
    assert_eq!(m.tensor("model.layers.3.self_attn.k_proj.weight").unwrap().shape, [192, 576]);
    let spec = m.tokenizer_spec().unwrap();
    assert_eq!((spec.tokens.len(), spec.merges.len(), spec.pre.as_deref()), (49152, 48900, Some("smollm")));
    assert!(spec.chat_template.unwrap().contains("<|im_start|>"));
}

/// A file written by llama.cpp's own writer (gguf-py; scripts/make_gguf_fixture.py), with Q/K rows
/// permuted as llama.cpp's converter does: HF row r of every 2-D tensor holds r * 1000 + column.
#[test]
fn reads_file_written_by_gguf_py() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama_ggufpy.gguf");
    let m = GgufModel::open(&path).unwrap();
    let c = m.config();
    assert_eq!((c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size), (32, 4, 2, 8, 64, 12));
    assert!(!c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(10), vec![11]));
    for (name, rows) in [
        ("model.layers.0.self_attn.q_proj.weight", 32),
        ("model.layers.0.self_attn.k_proj.weight", 16),
        ("model.layers.0.self_attn.v_proj.weight", 16),
        ("model.embed_tokens.weight", 12),
        ("lm_head.weight", 12),
    ] {
        let t = m.tensor(name).unwrap();
        assert_eq!(t.shape, [rows, 32], "{name}");
        let v = esa_wgpu::quant::dequantize(name, t.format, &t.data, rows * 32).unwrap();
        for r in 0..rows {
            for col in [0, 5, 31] {
                assert_eq!(v[r * 32 + col], (r * 1000 + col) as f32, "{name}[{r}][{col}]");
            }
        }
    }
    let down = m.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!((down.format, down.shape.clone()), (TensorFormat::Q8_0, vec![32, 64]));
    let v = esa_wgpu::quant::dequantize("down", down.format, &down.data, 32 * 64).unwrap();
    for (i, x) in v.iter().enumerate() {
        let want = (i / 64) as f32 * 0.01 + (i % 64) as f32 * 0.001;
        assert!((x - want).abs() < 0.003, "down[{i}] = {x}, want {want}");
    }
    let spec = m.tokenizer_spec().unwrap();
    assert_eq!((spec.tokens[3].as_str(), spec.token_types[11], spec.merges.len()), ("tok3", 3, 2));
    assert_eq!((spec.add_bos, spec.pre.as_deref()), (Some(true), Some("default")));
}
