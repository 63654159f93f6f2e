// unpack8: eight f16 values packed in a vec4<u32> (two per word, the even one in the low half, as
// the KV and compressed-key caches store them) as f32. Prepended by the ops to the
// cooperative-matrix kernels that stage such octets (esa_attention_coop.wgsl, esa_score_coop.wgsl).

fn unpack8(w: vec4<u32>) -> array<f32, 8> {
    let a = unpack2x16float(w.x);
    let b = unpack2x16float(w.y);
    let c = unpack2x16float(w.z);
    let d = unpack2x16float(w.w);
    return array<f32, 8>(a.x, a.y, b.x, b.y, c.x, c.y, d.x, d.y);
}
