// Parameters and bindings of the prefill attention kernels (attention_prefill.wgsl, and
// attention_cpu_block.wgsl on CPU adapters); the op prepends this file. Mirrors `PrefillParams`
// in src/gpu/ops/attention.rs.
//   n_q: queries of the chunk; n_heads / n_kv: query and KV heads; pos0: position of query 0;
//   scale: 1 / sqrt(head_dim).

struct Params {
    n_q: u32,
    n_heads: u32,
    n_kv: u32,
    pos0: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
