//! esa-wgpu: Llama/Mistral-family inference in hand-written WGSL on wgpu, with Efficient Selective
//! Attention (ESA) for contexts far beyond the trained length.

pub mod error;
pub mod gpu;
pub mod model;
pub mod quant;
pub mod reference;
pub mod tokenizer;
pub mod chat_template;
pub mod fetch;
pub mod progress;
pub mod sampler;

pub use error::{Error, Result};
pub mod attention;
pub mod session;
pub mod engine;
pub mod calibrate;
pub mod eval;

pub use chat_template::{ChatTemplate, Message};
pub use engine::{Chat, Engine, FinishReason, Model, Reply};
pub use gpu::{GpuContext, GpuOptions};
pub use attention::{Attention, EsaConfig, EsaOptions};
pub use progress::{Bars, Progress};
pub use session::{Sampling, Session, SessionOptions};
