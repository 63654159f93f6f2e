//! A pure streaming read (`read_bandwidth.wgsl`): the memory-bandwidth floor that the bench
//! measures on the adapter at hand and that docs/perf.md compares every decode figure with.

use crate::gpu::{grid, BufRef, Recorder};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_vec4: u32,
    stride: u32,
    grid_x: u32,
    _pad: u32,
}

/// Workgroups the read uses for `bytes` (each thread reads at least 16 vec4, at most 8192
/// workgroups: enough to fill any GPU); `out` needs one u32 per workgroup.
pub fn groups_for(bytes: u64) -> u32 {
    ((bytes / 16 / 256 / 16) as u32).clamp(1, 8192)
}

/// Records one read of the first `bytes` (a multiple of 16) of `src`; workgroup g writes the XOR
/// of every word it read to `out[g]`. Returns the number of workgroups.
pub fn read_all(rec: &mut Recorder, src: &BufRef, bytes: u64, out: &BufRef) -> Result<u32> {
    if bytes % 16 != 0 || bytes == 0 || bytes > src.size() || bytes / 16 > u32::MAX as u64 {
        return Err(crate::Error::arg("read_bandwidth bytes", format!("{bytes}: must be a positive multiple of 16 within the {}-byte source and under 2^36", src.size())));
    }
    let groups = groups_for(bytes);
    if out.size() < groups as u64 * 4 {
        return Err(crate::Error::arg("read_bandwidth out", format!("buffer of {} bytes, needs {} ({groups} workgroups x 4)", out.size(), groups * 4)));
    }
    let ctx = rec.ctx();
    let k = ctx.kernel("read_bandwidth", super::src::READ_BANDWIDTH, "main", &[])?;
    let g = grid(ctx, groups);
    let p = Params { n_vec4: (bytes / 16) as u32, stride: groups * 256, grid_x: g[0], _pad: 0 };
    rec.dispatch(&k, &p, &[src.clone(), out.clone()], g);
    Ok(groups)
}
