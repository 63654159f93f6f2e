//! Plain-Rust CPU reference of every kernel and of the whole forward pass. Slow, simple, f32 with
//! f64 accumulation; tests compare the GPU against it.
pub mod ops;
pub mod forward;
pub mod esa;
