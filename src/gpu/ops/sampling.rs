//! Token sampling on the GPU: greedy, or temperature + top-p with a host-supplied uniform.

use crate::gpu::{BufRef, Recorder};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    offset: u32,
    temperature: f32,
    top_p: f32,
    uniform: f32,
    _pad: [u32; 3],
}

/// Writes the chosen token id to `out[0]`. `offset`: index of the first logit in `logits`.
pub fn sample(rec: &mut Recorder, logits: &BufRef, offset: usize, vocab: usize, temperature: f32, top_p: f32, uniform: f32, out: &BufRef) -> Result<()> {
    let k = rec.ctx().kernel("sample", super::src::SAMPLE, "main", &[])?;
    let p = Params { vocab: vocab as u32, offset: offset as u32, temperature, top_p, uniform, _pad: [0; 3] };
    rec.dispatch(&k, &p, &[logits.clone(), out.clone()], [1, 1, 1]);
    Ok(())
}
