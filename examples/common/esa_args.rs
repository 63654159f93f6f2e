//! The ESA budget flags shared by the chat and eval examples (`#[command(flatten)]`), one
//! definition for both. Each has an `esa_` id: clap names a flattened argument by its field, and
//! `top_k` would collide with the chat's sampling `--top-k` (each example's `flags_are_consistent`
//! test runs clap's checks).

use esa_wgpu::EsaConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct EsaArgs {
    /// ESA: initial tokens always attended.
    #[arg(id = "esa_init", long = "esa-init", default_value_t = 128)]
    pub init: usize,
    /// ESA: local window.
    #[arg(id = "esa_local", long = "esa-local", default_value_t = 4096)]
    pub local: usize,
    /// ESA: middle tokens selected per chunk and layer.
    #[arg(id = "esa_top_k", long = "esa-top-k", default_value_t = 2048)]
    pub top_k: usize,
    /// ESA: prefill chunk.
    #[arg(id = "esa_chunk", long = "esa-chunk", default_value_t = 512)]
    pub chunk: usize,
    /// ESA: proximity pooling radius.
    #[arg(id = "esa_eps", long = "esa-eps", default_value_t = 1)]
    pub eps: usize,
    /// ESA: position of long-distance queries (default: --esa-local).
    #[arg(id = "esa_w", long = "esa-w")]
    pub w: Option<usize>,
    /// ESA: the last tokens of every prompt run as their own chunk, with their own selection
    /// (query-aware final chunk); 0: the paper's plain chunking.
    #[arg(id = "esa_final_chunk", long = "esa-final-chunk", default_value_t = esa_wgpu::reference::esa::DEFAULT_FINAL_CHUNK)]
    pub final_chunk: usize,
    /// ESA: bits of the compressed keys decode steps score: 8 (int8 copy, half the bytes a step
    /// reads from that cache) or 16 (the f16 cache prefill scores).
    #[arg(id = "esa_decode_key_bits", long = "esa-decode-key-bits", default_value_t = esa_wgpu::reference::esa::DEFAULT_DECODE_KEY_BITS)]
    pub decode_key_bits: u32,
}

impl EsaArgs {
    /// The ESA configuration these flags give; d' as `EsaConfig`'s default (callers override it).
    pub fn config(&self) -> EsaConfig {
        EsaConfig { n_init: self.init, n_local: self.local, top_k: self.top_k, chunk: self.chunk, eps: self.eps, w: self.w, final_chunk: self.final_chunk, decode_key_bits: self.decode_key_bits, ..EsaConfig::default() }
    }
}
