// unpack8: eight f16 values packed in a vec4<u32> (two per word, the even one in the low half, as
// the KV and compressed-key caches store them) as f32; halves4: values 4i .. 4i + 3 of such an
// octet as a vec4<f16>, what the staging buffers hold. Prepended by the ops to the
// cooperative-matrix kernels that stage such octets (esa_attention_coop.wgsl, esa_score_coop.wgsl,
// matmul_coop.wgsl), which enable f16.

fn unpack8(w: vec4<u32>) -> array<f32, 8> {
    let a = unpack2x16float(w.x);
    let b = unpack2x16float(w.y);
    let c = unpack2x16float(w.z);
    let d = unpack2x16float(w.w);
    return array<f32, 8>(a.x, a.y, b.x, b.y, c.x, c.y, d.x, d.y);
}

fn halves4(q: vec4<u32>, i: u32) -> vec4<f16> {
    return vec4<f16>(vec4<f32>(unpack2x16float(q[2u * i]), unpack2x16float(q[2u * i + 1u])));
}
