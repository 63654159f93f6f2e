//! Fuzz the GGUF reader: any bytes must give Ok or a clean Err, never a panic, hang or huge
//! allocation. Headers that parse are also opened as a model (config, tokenizer spec, every
//! tensor), which exercises the metadata look-ups and the Q/K row un-permutation.
//!
//! Run: cd fuzz && cargo +nightly fuzz run gguf_reader -- -max_len=4096 -rss_limit_mb=512
#![no_main]

use std::path::Path;

use esa_wgpu::model::gguf::{hf_name, GgufHeader, GgufModel};
use esa_wgpu::model::host::WeightSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = GgufHeader::parse(Path::new("fuzz.gguf"), data) else { return };
    let path = std::env::temp_dir().join(format!("esa-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(model) = GgufModel::open(&path) {
        let _ = model.tokenizer_spec();
        let _ = model.config().rope_inv_freqs();
        for t in &header.tensors {
            if let Some(name) = hf_name(&t.name) {
                let _ = model.tensor(&name);
            }
        }
    }
});
