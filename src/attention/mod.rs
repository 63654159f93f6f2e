//! Attention policies. The forward pass computes Q/K/V for a chunk and hands them to the layer's
//! policy: `Dense` (every cached token) or `Esa` (initial + selected + local tokens).
pub mod esa;
pub mod probe;

pub use crate::reference::esa::EsaConfig;
pub use probe::{ProbeRecord, ProbeSpec};

#[derive(Debug, Clone, Default)]
pub enum Attention {
    #[default]
    Dense,
    Esa(EsaOptions),
}

impl Attention {
    /// ESA with the paper's budget (128 initial, 4096 local, top-2048, chunks of 512).
    pub fn esa() -> Attention {
        Attention::Esa(EsaOptions::default())
    }
}

#[derive(Debug, Clone, Default)]
pub struct EsaOptions {
    pub config: EsaConfig,
    /// Calibrated compression maps (safetensors: `layers.{i}.f_q` `[d', H*d]`, `layers.{i}.f_k`
    /// `[d', n_kv*d]`). `None`: exact maps (d' = n_kv * head_dim), no calibration needed.
    pub maps: Option<std::path::PathBuf>,
}
