//! Token sampling on the GPU (`shaders/sample.wgsl`): greedy, or temperature with top-k, top-p,
//! min-p and the repetition penalty, with a host-supplied uniform. Only the chosen id (4 bytes)
//! leaves the GPU; `crate::sampler` is the host reference that defines each filter.

use crate::gpu::{BufRef, Recorder};
use crate::session::Sampling;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    offset: u32,
    temperature: f32,
    top_p: f32,
    uniform: f32,
    top_k: u32,
    min_p: f32,
    penalty: f32,
    recent0: u32,
    n_recent: u32,
    _pad: [u32; 2],
}

/// Bytes of the scratch `sample` needs for a vocabulary of `vocab` (the penalised logits and one
/// flag per id; `argmax.wgsl`'s per-workgroup results in the same words, and its counter in one
/// more word that only it uses, zero in a new buffer); `sample` checks its buffers' sizes when it
/// records.
pub fn scratch_bytes(vocab: usize) -> u64 {
    ((2 * vocab + 1) * 4) as u64
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ArgmaxParams {
    vocab: u32,
    offset: u32,
    n_wg: u32,
    counter: u32,
}

/// Logits per `argmax.wgsl` workgroup.
const ARGMAX_CHUNK: usize = 2048;

/// The logits row to sample from and where the chosen id goes.
pub struct SampleIo<'a> {
    pub logits: &'a BufRef,
    /// Index of the row's first logit in `logits`.
    pub offset: usize,
    pub vocab: usize,
    /// Token ids of the context; the repetition penalty's window is `hist[recent.start ..
    /// recent.end]` (empty: no penalty whatever the settings).
    pub hist: &'a BufRef,
    pub recent: std::ops::Range<usize>,
    /// At least `scratch_bytes(vocab)`, for this one vocabulary size (word 2 vocab is the greedy
    /// kernel's counter, zero between dispatches, which a penalised draw over a larger vocabulary
    /// would overwrite).
    pub scratch: &'a BufRef,
    pub out: &'a BufRef,
}

/// Writes the id chosen under `s` (seed unused: `uniform` is the draw) to `io.out[0]`.
pub fn sample(rec: &mut Recorder, io: &SampleIo, s: &Sampling, uniform: f32) -> Result<()> {
    s.validate()?;
    if io.vocab == 0 || io.vocab >= 1 << 24 {
        // (the kernel counts tokens in f32 sums, exact below 2^24)
        return Err(Error::arg("vocab", format!("{}: the sampler takes 1 to 2^24 - 1 logits", io.vocab)));
    }
    if io.recent.end < io.recent.start {
        return Err(Error::arg("recent", format!("window {:?} runs backwards", io.recent)));
    }
    let penalty = if s.penalises() && !io.recent.is_empty() { s.repeat_penalty } else { 1.0 };
    use super::esa_common::check_words;
    check_words("sample", "logits", io.logits, io.offset + io.vocab)?;
    check_words("sample", "out", io.out, 1)?;
    if penalty != 1.0 {
        check_words("sample", "hist", io.hist, io.recent.end)?;
    }
    // greedy without a penalty: the multi-workgroup argmax (the other filters cannot change it)
    let argmax = s.temperature <= 0.0 && penalty == 1.0;
    if penalty != 1.0 || argmax {
        check_words("sample", "scratch", io.scratch, 2 * io.vocab + 1)?;
    }
    if argmax {
        let k = rec.ctx().kernel("argmax", super::src::ARGMAX, "main", &[])?;
        let n_wg = io.vocab.div_ceil(ARGMAX_CHUNK);
        let p = ArgmaxParams { vocab: io.vocab as u32, offset: io.offset as u32, n_wg: n_wg as u32, counter: (2 * io.vocab) as u32 };
        rec.dispatch(&k, &p, &[io.logits.clone(), io.out.clone(), io.scratch.clone()], [n_wg as u32, 1, 1]);
        return Ok(());
    }
    let k = rec.ctx().kernel("sample", super::src::SAMPLE, "main", &[])?;
    let p = Params {
        vocab: io.vocab as u32,
        offset: io.offset as u32,
        temperature: s.temperature,
        top_p: s.top_p,
        uniform,
        top_k: s.top_k.min(u32::MAX as usize) as u32,
        min_p: s.min_p,
        penalty,
        recent0: io.recent.start as u32,
        n_recent: io.recent.len() as u32,
        _pad: [0; 2],
    };
    rec.dispatch(&k, &p, &[io.logits.clone(), io.out.clone(), io.hist.clone(), io.scratch.clone()], [1, 1, 1]);
    Ok(())
}
