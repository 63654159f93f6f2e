//! Bad model folders give errors that name the file, tensor or field at fault, never a panic.

mod common;

use std::path::Path;

use common::{tiny_model_dir, write_safetensors, TinySpec};
use esa_wgpu::model::config::Config;
use esa_wgpu::model::host::WeightSource;
use esa_wgpu::model::safetensors_loader::{expect_tensor, SafetensorsModel};
use esa_wgpu::Error;

fn open_err(dir: &Path) -> Error {
    match SafetensorsModel::open(dir) {
        Ok(_) => panic!("opening {} should fail", dir.display()),
        Err(e) => e,
    }
}

fn assert_mentions(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
}

/// Edit config.json of a fixture folder.
fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn opens_a_good_folder_and_parses_config() {
    for spec in [TinySpec::llama_gqa_f16(), TinySpec::llama_tied_bf16(), TinySpec::mistral_llama3_rope()] {
        let dir = tiny_model_dir(&spec);
        let m = SafetensorsModel::open(dir.path()).unwrap();
        assert_eq!(m.config(), &spec.config());
        for (name, shape) in spec.tensor_shapes() {
            let t = expect_tensor(&m, &name, &shape).unwrap();
            assert_eq!(t.format, spec.dtype);
        }
        assert_eq!(m.has_tensor("lm_head.weight"), !spec.tied);
        tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    }
}

#[test]
fn missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert_mentions(&open_err(&missing), &["nope"]);
}

#[test]
fn missing_config() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_mentions(&e, &["config.json"]);
}

#[test]
fn missing_weights() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_mentions(&open_err(dir.path()), &["model.safetensors"]);
}

#[test]
fn missing_shard() {
    let spec = TinySpec { sharded: true, ..TinySpec::llama_gqa_f16() };
    let dir = tiny_model_dir(&spec);
    SafetensorsModel::open(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert_mentions(&open_err(dir.path()), &["model-00002-of-00002.safetensors", "model.safetensors.index.json"]);
}

#[test]
fn truncated_safetensors() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the header, inside the data, and before the 8-byte length prefix ends.
    for keep in [100, bytes.len() - 10, 5] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, Error::Format { .. }), "{e}");
        assert_mentions(&e, &["model.safetensors"]);
    }
}

#[test]
fn corrupt_header() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Break the JSON: overwrite the opening brace.
    bytes[8] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert_mentions(&e, &["model.safetensors"]);

    // A header length pointing far past the end of the file.
    bytes[8] = b'{';
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert_mentions(&open_err(dir.path()), &["model.safetensors"]);
}

#[test]
fn offsets_out_of_range() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let header = r#"{"a":{"dtype":"F32","shape":[400],"data_offsets":[0,1600]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 16]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert_mentions(&e, &["model.safetensors"]);
}

#[test]
fn wrong_shape() {
    let spec = TinySpec::llama_gqa_f16();
    let dir = tiny_model_dir(&spec);
    let m = SafetensorsModel::open(dir.path()).unwrap();
    let e = expect_tensor(&m, "model.norm.weight", &[spec.hidden + 1]).unwrap_err();
    assert_mentions(&e, &["model.norm.weight", "[73]", "[72]"]);
}

#[test]
fn missing_tensor() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let m = SafetensorsModel::open(dir.path()).unwrap();
    let e = m.tensor("model.layers.9.mlp.up_proj.weight").unwrap_err();
    assert_mentions(&e, &["model.layers.9.mlp.up_proj.weight", &dir.path().display().to_string()]);
}

#[test]
fn wrong_dtype() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let data: Vec<u8> = (0..72i32).flat_map(|v| v.to_le_bytes()).collect();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[("model.norm.weight".to_string(), safetensors::Dtype::I32, vec![72], data)],
    );
    let m = SafetensorsModel::open(dir.path()).unwrap();
    let e = m.tensor("model.norm.weight").unwrap_err();
    assert!(matches!(e, Error::Tensor { .. }), "{e}");
    assert_mentions(&e, &["model.norm.weight", "I32"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    edit_config(dir.path(), |c| {
        c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
        c["model_type"] = serde_json::json!("gpt_neox");
    });
    assert_mentions(&open_err(dir.path()), &["config.json", "GPTNeoXForCausalLM"]);

    // Without `architectures`, `model_type` decides.
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("architectures");
    });
    assert_mentions(&open_err(dir.path()), &["config.json", "gpt_neox"]);
    edit_config(dir.path(), |c| c["model_type"] = serde_json::json!("mistral"));
    SafetensorsModel::open(dir.path()).unwrap();
}

#[test]
fn bad_config_fields() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("num_key_value_heads", serde_json::json!(4), "num_key_value_heads"),
        ("head_dim", serde_json::json!(11), "head_dim"),
        ("hidden_size", serde_json::json!(0), "hidden_size"),
        ("hidden_size", serde_json::json!("big"), "hidden_size"),
        ("vocab_size", serde_json::Value::Null, "vocab_size"),
        ("rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps"),
        ("eos_token_id", serde_json::json!([2, 99999]), "eos_token_id"),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0}), "rope_scaling.low_freq_factor"),
        ("rope_scaling", serde_json::json!({"type": "longrope", "factor": 4.0}), "longrope"),
        ("rope_scaling", serde_json::json!({"type": "yarn", "factor": 0.0}), "rope_scaling.factor"),
        ("rope_scaling", serde_json::json!({"type": "yarn", "factor": 4.0, "beta_fast": 0.5}), "rope_scaling.beta_fast"),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
    ];
    for (field, value, expect) in cases {
        let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
        edit_config(dir.path(), |c| c[field] = value.clone());
        let e = open_err(dir.path());
        assert_mentions(&e, &["config.json", expect]);
    }
}

#[test]
fn config_defaults_and_variants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let write = |v: serde_json::Value| std::fs::write(&path, v.to_string()).unwrap();
    write(serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 100, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 300, "rms_norm_eps": 1e-6, "head_dim": null,
        "eos_token_id": [2, 5], "bos_token_id": null,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    }));
    let c = Config::from_hf_json(&path).unwrap();
    assert_eq!((c.num_kv_heads, c.head_dim, c.rope_theta, c.tie_word_embeddings), (4, 16, 10000.0, false));
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (None, vec![2, 5]));
    let plain = Config { rope_scaling: None, ..c.clone() }.rope_inv_freqs();
    for (a, b) in c.rope_inv_freqs().iter().zip(&plain) {
        assert!((a * 2.0 - b).abs() <= 1e-7 * b);
    }
    std::fs::write(&path, "{ not json").unwrap();
    assert_mentions(&Config::from_hf_json(&path).unwrap_err(), &["config.json"]);
}
