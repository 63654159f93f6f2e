pub mod config;
pub mod host;
pub mod safetensors_loader;
pub mod gguf;
pub mod gpu_model;
pub mod synthetic;
