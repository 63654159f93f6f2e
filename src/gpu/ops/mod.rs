//! One op per kernel: knows shapes and formats, picks the kernel variant from the adapter's
//! capabilities, and records dispatches. The model composes ops and never touches wgpu directly.
pub mod linear;
pub mod quant_pack;
pub mod norm;
pub mod rope_kv;
pub mod attention;
pub mod sampling;

/// Kernel sources, one `.wgsl` file each, embedded at build time.
pub mod src {
    pub const MATVEC: &str = include_str!("../../../shaders/matvec.wgsl");
    pub const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
    pub const WFMT_F16: &str = include_str!("../../../shaders/wfmt_f16.wgsl");
    pub const RMSNORM: &str = include_str!("../../../shaders/rmsnorm.wgsl");
    pub const ROPE_KV: &str = include_str!("../../../shaders/rope_kv.wgsl");
    pub const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
    pub const ATTENTION_MERGE: &str = include_str!("../../../shaders/attention_merge.wgsl");
    pub const SAMPLE: &str = include_str!("../../../shaders/sample.wgsl");
}
