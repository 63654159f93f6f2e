//! GPU plumbing: context (adapter, device, pipeline cache), recorder (dispatch lists, parameter
//! arena, bind-group cache), tensors on the GPU, and one op per kernel in `ops`.
pub mod context;
pub mod recorder;
pub mod profile;
pub mod tensor;
pub mod upload;
pub mod ops;
pub mod coop_emulation;

pub use context::{Caps, GpuContext, GpuOptions, Kernel};
pub use recorder::{grid, BufRef, Recorder};
