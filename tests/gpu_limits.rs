//! Adapter limits too small for a model or a context give clear errors, never a panic.

mod common;

use common::{tiny_model_dir, TinySpec};
use esa_wgpu::gpu::{GpuContext, GpuOptions};
use esa_wgpu::{Engine, SessionOptions};

#[test]
fn row_larger_than_binding_limit_is_an_error() {
    // 256-byte bindings: a 200-column f16 row (400 bytes) cannot be bound at all.
    let ctx = GpuContext::new(&GpuOptions { max_binding: Some(256), ..Default::default() }).unwrap();
    let mut spec = TinySpec::llama_gqa_f16();
    spec.hidden = 200;
    let dir = tiny_model_dir(&spec);
    let err = Engine::with_context(ctx).load(dir.path()).err().expect("must fail").to_string();
    assert!(err.contains("exceeds the adapter's max binding") && err.contains("model.layers.0"), "{err}");
}

#[test]
fn kv_cache_larger_than_binding_limit_is_an_error() {
    let ctx = GpuContext::new(&GpuOptions { max_binding: Some(64 << 10), ..Default::default() }).unwrap();
    let dir = tiny_model_dir(&TinySpec::llama_gqa_f16());
    let model = Engine::with_context(ctx).load(dir.path()).unwrap();
    let err = model.session(SessionOptions { max_context: 1 << 20, ..Default::default() }).err().expect("must fail").to_string();
    assert!(err.contains("max_context") && err.contains("binding limit"), "{err}");
}

#[test]
fn unknown_backend_or_adapter_is_an_error() {
    let err = GpuContext::new(&GpuOptions { backend: Some("glide".into()), ..Default::default() }).err().unwrap().to_string();
    assert!(err.contains("unknown backend `glide`"), "{err}");
    if std::env::var("ESA_WGPU_ADAPTER").is_err() {
        let err = GpuContext::new(&GpuOptions { adapter: Some("no-such-gpu-xyz".into()), ..Default::default() }).err().unwrap().to_string();
        assert!(err.contains("no adapter matches `no-such-gpu-xyz`"), "{err}");
    }
}
