//! Small helpers the GPU kernel tests share: random inputs, uploads, NaN-poisoned outputs.

use esa_wgpu::gpu::ops::linear::Epilogue;
use esa_wgpu::gpu::GpuContext;
use rand::rngs::StdRng;
use rand::Rng;

/// `n` values uniform in [-scale, scale).
pub fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

pub fn upload(ctx: &GpuContext, v: &[f32]) -> wgpu::Buffer {
    ctx.upload("in", bytemuck::cast_slice(v)).unwrap()
}

/// An output buffer full of NaN, so an element a kernel forgot to write fails the comparison.
pub fn poisoned(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    upload(ctx, &vec![f32::NAN; n])
}

/// A u32 output buffer full of u32::MAX (at least one word), for outputs that are not floats.
pub fn poisoned_u32(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    ctx.upload("out", bytemuck::cast_slice(&vec![u32::MAX; n.max(1)])).unwrap()
}

/// Parse, validate (all capabilities) and translate to SPIR-V a kernel that the adapter at hand
/// may not run (cooperative matrices), every entry point, with its override constants at their defaults; panics
/// naming `what` on the first failure.
pub fn validate_wgsl(what: &str, src: &str) {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, None, &Default::default())
        .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
    let opts = naga::back::spv::Options { lang_version: (1, 6), ..Default::default() };
    // every entry point of the module
    naga::back::spv::write_vec(&module, &info, &opts, None).unwrap_or_else(|e| panic!("{what}: SPIR-V: {e:?}"));
}

/// What a linear layer's epilogue makes of one token's products `y` = W x (every weight row):
/// `y` itself, `y` added to the output held before (Accumulate: `y0[y0_off..]`), or silu(gate) * up
/// over the interleaved (gate, up) row pairs (SwiGlu).
pub fn epilogue_reference(epi: Epilogue, y: &[f32], y0: &[f32], y0_off: usize) -> Vec<f32> {
    match epi {
        Epilogue::Store => y.to_vec(),
        Epilogue::Accumulate => y.iter().zip(&y0[y0_off..]).map(|(a, b)| a + b).collect(),
        Epilogue::SwiGlu => (0..y.len() / 2).map(|i| esa_wgpu::reference::ops::silu(y[2 * i]) * y[2 * i + 1]).collect(),
    }
}

/// Rounds to f16 and packs pairs into u32 words (even element low), the compressed-key cache
/// layout; also returns the rounded values.
pub fn pack_f16_words(v: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let words = h.chunks(2).map(|p| p[0].to_bits() as u32 | (p.get(1).map_or(0, |x| x.to_bits()) as u32) << 16).collect();
    (words, h.iter().map(|x| x.to_f32()).collect())
}

/// ESA's cooperative-matrix chunk scoring (`esa_score::score` where `coop_supports`) on random
/// compressed queries and keys of shape (d', n_q, n_m, m0) against the reference on f16-rounded
/// queries (the kernel multiplies f16), tolerance 1e-4 d'; the output starts poisoned.
pub fn check_coop_score(ctx: &GpuContext, rng: &mut StdRng, (d, n_q, n_m, m0): (usize, usize, usize, usize)) {
    use esa_wgpu::gpu::ops::esa_score;
    use esa_wgpu::gpu::{BufRef, Recorder};
    let cq = rand_vec(rng, n_q * d, 1.0);
    let ck = rand_vec(rng, (m0 + n_m) * d, 1.0);
    let (ck_words, ck_h) = pack_f16_words(&ck);
    let (_, cq_h) = pack_f16_words(&cq);
    let (cqb, ckb) = (upload(ctx, &cq), ctx.upload("ck", bytemuck::cast_slice(&ck_words)).unwrap());
    let rowmax = poisoned_u32(ctx, n_q);
    let out = poisoned(ctx, n_m.max(1));
    let mut rec = Recorder::new(ctx);
    let (cqr, ckr, rmr, outr) = (BufRef::from(&cqb), BufRef::from(&ckb), BufRef::from(&rowmax), BufRef::from(&out));
    esa_score::score(&mut rec, &esa_score::Score { cq: &cqr, ck_cache: &ckr, rowmax: &rmr, out: &outr, n_q, n_m, d, m0, q8: None, rank_only: false }).unwrap();
    rec.submit().unwrap();
    let got = ctx.read_f32(&out, 0, n_m).unwrap();
    let want = esa_wgpu::reference::esa::chunk_scores(&cq_h, &ck_h[m0 * d..], d).unwrap();
    let what = format!("coop score n_q={n_q} n_m={n_m} d={d} m0={m0}");
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * d as f32, "{what}[{i}]: gpu {g} vs reference {w}");
    }
    assert!(got.iter().any(|&x| x == 0.0), "{what}: some token is the best of some query");
}
