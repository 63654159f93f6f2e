//! One op per kernel: knows shapes and formats, picks the kernel variant from the adapter's
//! capabilities, and records dispatches. The model composes ops and never touches wgpu directly.
pub mod linear;
pub mod split_k;
pub mod embed;
pub mod pack_f16;
pub mod read_bandwidth;
pub mod quant_pack;
pub mod norm;
pub mod rope_kv;
pub mod attention;
pub mod sampling;
pub mod esa_score;
pub mod esa_pool;
pub mod esa_topk;
pub mod esa_attention;
pub mod esa_blocks;
pub mod esa_pack;
pub mod esa_query;
mod esa_common;

/// A kernel source with shared declarations (`prelude`) inserted after its `enable` directives,
/// which WGSL requires before every declaration.
pub(crate) fn with_prelude(kernel: &str, prelude: &str) -> String {
    let (directives, body): (Vec<&str>, Vec<&str>) = kernel.lines().partition(|l| l.trim_start().starts_with("enable "));
    format!("{}\n{prelude}\n{}", directives.join("\n"), body.join("\n"))
}

/// A kernel source written out by its op: with `block` = (start, text), the lines from the one
/// starting with `start` (e.g. `//@CONSTS`, `//@SHAPE`) to `//@END` replaced by `text`; and each
/// line that is exactly one of `lines`' keys (a `//@` marker, or a declaration to override)
/// replaced by its text.
pub(crate) fn expand_markers(src: &str, block: Option<(&str, &str)>, lines: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in src.lines() {
        let t = line.trim();
        if let Some((_, text)) = block.filter(|(start, _)| t.starts_with(start)) {
            skip = true;
            out += text;
        } else if block.is_some() && t == "//@END" {
            skip = false;
        } else if !skip {
            match lines.iter().find(|(k, _)| *k == t) {
                Some((_, text)) => out += text,
                None => {
                    out += line;
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Kernel sources, one `.wgsl` file each, embedded at build time.
pub mod src {
    pub const LINEAR_PARAMS: &str = include_str!("../../../shaders/linear_params.wgsl");
    pub const MATVEC: &str = include_str!("../../../shaders/matvec.wgsl");
    pub const MATVEC_SG: &str = include_str!("../../../shaders/matvec_sg.wgsl");
    pub const MATVEC_WIDE: &str = include_str!("../../../shaders/matvec_wide.wgsl");
    pub const MATVEC_BLOCKS: &str = include_str!("../../../shaders/matvec_blocks.wgsl");
    pub const MATVEC_CPU: &str = include_str!("../../../shaders/matvec_cpu.wgsl");
    pub const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
    pub const MATMUL_COOP: &str = include_str!("../../../shaders/matmul_coop.wgsl");
    pub const MATMUL_SPLIT_REDUCE: &str = include_str!("../../../shaders/matmul_split_reduce.wgsl");
    pub const WFMT_COOP_Q4_RAW: &str = include_str!("../../../shaders/wfmt_coop_q4_raw.wgsl");
    pub const WFMT_COOP_KSCALE: &str = include_str!("../../../shaders/wfmt_coop_kscale.wgsl");
    pub const WFMT_COOP_Q4_0: &str = include_str!("../../../shaders/wfmt_coop_q4_0.wgsl");
    pub const WFMT_COOP_Q4_1: &str = include_str!("../../../shaders/wfmt_coop_q4_1.wgsl");
    pub const WFMT_COOP_Q8_0: &str = include_str!("../../../shaders/wfmt_coop_q8_0.wgsl");
    pub const WFMT_COOP_Q4_K: &str = include_str!("../../../shaders/wfmt_coop_q4_k.wgsl");
    pub const WFMT_COOP_Q5_K: &str = include_str!("../../../shaders/wfmt_coop_q5_k.wgsl");
    pub const WFMT_COOP_Q6_K: &str = include_str!("../../../shaders/wfmt_coop_q6_k.wgsl");
    pub const EMBED_ROWS: &str = include_str!("../../../shaders/embed_rows.wgsl");
    pub const READ_BANDWIDTH: &str = include_str!("../../../shaders/read_bandwidth.wgsl");
    pub const PACK_F16: &str = include_str!("../../../shaders/pack_f16.wgsl");
    pub const WFMT_F16: &str = include_str!("../../../shaders/wfmt_f16.wgsl");
    pub const WFMT_F32: &str = include_str!("../../../shaders/wfmt_f32.wgsl");
    pub const RMSNORM: &str = include_str!("../../../shaders/rmsnorm.wgsl");
    pub const ROPE_KV: &str = include_str!("../../../shaders/rope_kv.wgsl");
    pub const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
    pub const ATTENTION_PREFILL_PARAMS: &str = include_str!("../../../shaders/attention_prefill_params.wgsl");
    pub const ATTENTION_PREFILL: &str = include_str!("../../../shaders/attention_prefill.wgsl");
    pub const ATTENTION_CPU: &str = include_str!("../../../shaders/attention_cpu.wgsl");
    pub const ATTENTION_CPU_BLOCK: &str = include_str!("../../../shaders/attention_cpu_block.wgsl");
    pub const ATTENTION_GQA: &str = include_str!("../../../shaders/attention_gqa.wgsl");
    pub const ATTENTION_MERGE: &str = include_str!("../../../shaders/attention_merge.wgsl");
    pub const ARGMAX: &str = include_str!("../../../shaders/argmax.wgsl");
    pub const SAMPLE: &str = include_str!("../../../shaders/sample.wgsl");
    pub const ESA_SCORE: &str = include_str!("../../../shaders/esa_score.wgsl");
    pub const ESA_SCORE_COMMON: &str = include_str!("../../../shaders/esa_score_common.wgsl");
    pub const ESA_SCORE_COOP: &str = include_str!("../../../shaders/esa_score_coop.wgsl");
    pub const ESA_SCORE_Q8: &str = include_str!("../../../shaders/esa_score_q8.wgsl");
    pub const ESA_POOL: &str = include_str!("../../../shaders/esa_pool.wgsl");
    pub const ESA_BLOCKS: &str = include_str!("../../../shaders/esa_blocks.wgsl");
    pub const ESA_TOPK: &str = include_str!("../../../shaders/esa_topk.wgsl");
    pub const ESA_ATTENTION_COOP: &str = include_str!("../../../shaders/esa_attention_coop.wgsl");
    pub const ESA_ATTENTION: &str = include_str!("../../../shaders/esa_attention.wgsl");
    pub const ESA_PACK: &str = include_str!("../../../shaders/esa_pack.wgsl");
    pub const UNPACK_F16X8: &str = include_str!("../../../shaders/unpack_f16x8.wgsl");
    pub const ESA_QUERY_EXACT: &str = include_str!("../../../shaders/esa_query_exact.wgsl");
}
