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
