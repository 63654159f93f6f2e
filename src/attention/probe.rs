//! Diagnosis of ESA's selection (issue 13): for chosen cache rows (e.g. a needle's tokens), after
//! every chunk and layer, whether they were selected and the rank of the best of them among the
//! middle tokens. Off unless `Session::set_esa_probe` is called; then each layer's selection (and,
//! with `ranks`, its pooled scores) is copied to host-mappable buffers in the same submission and
//! read back once per chunk. Nothing in the forward pass changes.

use std::ops::Range;

use crate::gpu::GpuContext;
use crate::reference::esa::{select_tokens, sortable_key, EsaConfig};
use crate::Result;

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Cache rows (positions) to follow.
    pub tokens: Range<usize>,
    /// Also read back the pooled scores of the middle tokens to rank the followed ones (one copy of
    /// `4 * middle` bytes per layer and chunk; without it only the selection, `4 * top_k` bytes).
    pub ranks: bool,
}

/// One layer of one chunk that ran a selection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeRecord {
    /// First position and length of the chunk.
    pub pos0: usize,
    pub n: usize,
    pub layer: usize,
    /// Middle tokens the selection chose from, and how many of the followed tokens were among them.
    pub n_middle: usize,
    pub followed_in_middle: usize,
    /// Followed tokens that were selected.
    pub selected: usize,
    /// 1-based rank of the best-scoring followed token among the middle tokens (the top-k's order:
    /// higher pooled score first, ties to the lower position); None without `ranks` or when none
    /// of them is in the middle.
    pub best_rank: Option<usize>,
}

/// The probe's host-mappable buffers, sized once for the session.
pub(crate) struct Probe {
    pub spec: ProbeSpec,
    /// Per layer: the selection count, then up to `sel_cap` cache rows.
    pub sel: wgpu::Buffer,
    pub sel_cap: usize,
    /// Per layer: the pooled scores of up to `max_ctx` middle tokens (with `ranks`).
    pub scores: Option<wgpu::Buffer>,
    pub max_ctx: usize,
    /// Layers that copied a selection in the chunk being recorded.
    pub layers: usize,
    pub records: Vec<ProbeRecord>,
}

impl Probe {
    pub fn new(ctx: &GpuContext, spec: ProbeSpec, layers: usize, top_k: usize, max_ctx: usize) -> Probe {
        let sel_cap = top_k.min(max_ctx);
        let sel = ctx.staging("esa probe selection", (layers * (sel_cap + 1) * 4) as u64);
        let scores = spec.ranks.then(|| ctx.staging("esa probe scores", (layers * max_ctx * 4) as u64));
        Probe { spec, sel, sel_cap, scores, max_ctx, layers, records: Vec::new() }
    }

    /// Byte offsets of layer `l`'s count + selection and scores.
    pub fn sel_offset(&self, l: usize) -> u64 {
        (l * (self.sel_cap + 1) * 4) as u64
    }
    pub fn scores_offset(&self, l: usize) -> u64 {
        (l * self.max_ctx * 4) as u64
    }

    /// Read back the chunk just submitted (`pos0`, `n`) and append one record per layer.
    pub fn collect(&mut self, ctx: &GpuContext, cfg: &EsaConfig, pos0: usize, n: usize) -> Result<()> {
        let layout = select_tokens(pos0, n, cfg);
        if layout.middle.is_empty() || cfg.top_k == 0 {
            return Ok(());
        }
        let layers = self.layers;
        let sel: Vec<u32> = bytemuck::pod_collect_to_vec(&ctx.read_staged(&self.sel, self.sel_offset(layers))?);
        let scores: Option<Vec<f32>> = match &self.scores {
            Some(b) => Some(bytemuck::pod_collect_to_vec(&ctx.read_staged(b, self.scores_offset(layers))?)),
            None => None,
        };
        let m0 = layout.middle.start;
        let n_m = layout.middle.len();
        let followed: Vec<usize> = self.spec.tokens.clone().filter(|t| layout.middle.contains(t)).collect();
        for l in 0..layers {
            let words = &sel[l * (self.sel_cap + 1)..(l + 1) * (self.sel_cap + 1)];
            let count = (words[0] as usize).min(self.sel_cap);
            let selected = words[1..=count].iter().filter(|&&r| self.spec.tokens.contains(&(r as usize))).count();
            let best_rank = scores.as_ref().and_then(|s| {
                let s = &s[l * self.max_ctx..l * self.max_ctx + n_m];
                let key = |t: usize| (sortable_key(s[t - m0]), std::cmp::Reverse(t));
                let best = followed.iter().copied().max_by_key(|&t| key(t))?;
                let kb = key(best);
                Some(1 + (0..n_m).filter(|&i| !s[i].is_nan() && key(i + m0) > kb).count())
            });
            self.records.push(ProbeRecord { pos0, n, layer: l, n_middle: n_m, followed_in_middle: followed.len(), selected, best_rank });
        }
        Ok(())
    }
}
