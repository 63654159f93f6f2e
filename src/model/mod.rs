pub mod config;
pub mod host;
pub mod safetensors_loader;
pub mod gguf;
pub mod gguf_writer;
pub mod gpu_model;
pub mod synthetic;
