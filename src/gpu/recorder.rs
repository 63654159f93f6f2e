//! Records a list of kernel dispatches and buffer copies, then submits them in one command buffer.
//!
//! Every kernel takes its small parameter struct as a uniform at `@binding(0)` and its buffers as
//! storage bindings `@binding(1..)`, in the order the op passes them. Parameters of all dispatches
//! go into one per-context arena written once per submit, so recording allocates no GPU memory, and
//! bind groups are cached by (kernel, buffers, arena offset): a decode step that repeats the last
//! step's shape creates none.

use std::collections::HashMap;
use std::sync::Arc;

use super::context::{GpuContext, Kernel};
use crate::Result;

/// Uniform offsets must be multiples of the adapter's alignment; 256 satisfies every adapter.
const PARAM_ALIGN: usize = 256;

/// A buffer binding: a whole buffer or a byte range of one (row shards of a weight, a KV slice).
#[derive(Clone, Debug)]
pub struct BufRef {
    pub buf: wgpu::Buffer,
    pub offset: u64,
    pub size: Option<u64>,
}

impl From<&wgpu::Buffer> for BufRef {
    fn from(b: &wgpu::Buffer) -> Self {
        BufRef { buf: b.clone(), offset: 0, size: None }
    }
}

impl BufRef {
    pub fn range(buf: &wgpu::Buffer, offset: u64, size: u64) -> BufRef {
        BufRef { buf: buf.clone(), offset, size: Some(size) }
    }

    /// Bytes the binding covers.
    pub fn size(&self) -> u64 {
        self.size.unwrap_or(self.buf.size() - self.offset)
    }
}

type BindKey = (usize, Vec<(wgpu::Buffer, u64, Option<u64>)>, Option<(wgpu::Buffer, u64)>);

#[derive(Default)]
pub(crate) struct BindCache {
    map: HashMap<BindKey, wgpu::BindGroup>,
}

enum Cmd {
    Dispatch { kernel: Arc<Kernel>, params: Option<(usize, usize)>, bufs: Vec<BufRef>, groups: [u32; 3] },
    Copy { src: wgpu::Buffer, src_off: u64, dst: wgpu::Buffer, dst_off: u64, size: u64 },
}

pub struct Recorder<'c> {
    ctx: &'c GpuContext,
    params: Vec<u8>,
    cmds: Vec<Cmd>,
}

/// Split `n` workgroups into a 2-D grid that respects the per-dimension limit. Kernels that may get
/// a 2-D grid compute their flat group index as `wg.x + wg.y * num_wg.x` and skip indices >= n.
pub fn grid(ctx: &GpuContext, n: u32) -> [u32; 3] {
    let max = ctx.caps.max_workgroups_per_dim.max(1);
    if n <= max {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max);
        [n.div_ceil(y), y, 1]
    }
}

impl<'c> Recorder<'c> {
    pub fn new(ctx: &'c GpuContext) -> Self {
        Recorder { ctx, params: Vec::new(), cmds: Vec::new() }
    }

    pub fn ctx(&self) -> &'c GpuContext {
        self.ctx
    }

    /// Record one dispatch. `params` is the kernel's uniform struct (`@binding(0)`), `bufs` the
    /// storage bindings from `@binding(1)` on.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, kernel: &Arc<Kernel>, params: &P, bufs: &[BufRef], groups: [u32; 3]) {
        let bytes = bytemuck::bytes_of(params);
        let off = self.params.len();
        self.params.extend_from_slice(bytes);
        self.params.resize((off + bytes.len()).next_multiple_of(PARAM_ALIGN), 0);
        self.cmds.push(Cmd::Dispatch { kernel: kernel.clone(), params: Some((off, bytes.len())), bufs: bufs.to_vec(), groups });
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, src_off: u64, dst: &wgpu::Buffer, dst_off: u64, size: u64) {
        if size > 0 {
            self.cmds.push(Cmd::Copy { src: src.clone(), src_off, dst: dst.clone(), dst_off, size });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Encode everything into one command buffer and submit it.
    pub fn submit(self) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx;
        // The arena is shared: hold its lock from writing the parameters until the submit, so
        // recorders on other threads cannot overwrite them in between.
        let mut slot = ctx.params_arena.lock().unwrap();
        let arena = {
            let need = (self.params.len() as u64).max(PARAM_ALIGN as u64);
            if slot.as_ref().map_or(true, |b| b.size() < need) {
                let size = need.next_power_of_two().max(64 << 10);
                *slot = Some(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params arena"),
                    size,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
            }
            slot.as_ref().unwrap().clone()
        };
        if !self.params.is_empty() {
            ctx.queue.write_buffer(&arena, 0, &self.params);
        }
        let mut cache = ctx.bind_cache.lock().unwrap();
        if cache.map.len() > 8192 {
            cache.map.clear();
        }
        // Resolve bind groups first: the compute pass borrows them.
        let mut groups: Vec<Option<wgpu::BindGroup>> = Vec::with_capacity(self.cmds.len());
        for cmd in &self.cmds {
            let Cmd::Dispatch { kernel, params, bufs, .. } = cmd else {
                groups.push(None);
                continue;
            };
            let key: BindKey = (
                kernel.id,
                bufs.iter().map(|b| (b.buf.clone(), b.offset, b.size)).collect(),
                params.map(|(o, _)| (arena.clone(), o as u64)),
            );
            let bg = cache
                .map
                .entry(key)
                .or_insert_with(|| {
                    let mut entries = Vec::with_capacity(bufs.len() + 1);
                    if let Some((o, n)) = params {
                        entries.push(wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &arena,
                                offset: *o as u64,
                                size: wgpu::BufferSize::new((*n as u64).next_multiple_of(16)),
                            }),
                        });
                    }
                    for (i, b) in bufs.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.buf,
                                offset: b.offset,
                                size: b.size.and_then(wgpu::BufferSize::new),
                            }),
                        });
                    }
                    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&kernel.name),
                        layout: &kernel.layout,
                        entries: &entries,
                    })
                })
                .clone();
            groups.push(Some(bg));
        }
        drop(cache);
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        if ctx.profiling() {
            return self.submit_timed(enc, &groups, slot);
        }
        let mut i = 0;
        while i < self.cmds.len() {
            match &self.cmds[i] {
                Cmd::Copy { src, src_off, dst, dst_off, size } => {
                    enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size);
                    i += 1;
                }
                Cmd::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
                    while i < self.cmds.len() {
                        let Cmd::Dispatch { kernel, groups: g, .. } = &self.cmds[i] else { break };
                        pass.set_pipeline(&kernel.pipeline);
                        pass.set_bind_group(0, groups[i].as_ref().unwrap(), &[]);
                        pass.dispatch_workgroups(g[0], g[1], g[2]);
                        i += 1;
                    }
                }
            }
        }
        let idx = ctx.queue.submit([enc.finish()]);
        drop(slot);
        ctx.check()?;
        Ok(idx)
    }

    /// `submit` with profiling on: one pass per dispatch between two timestamps, then a blocking
    /// read of the timestamps into the context's per-kernel totals (`gpu::profile`).
    fn submit_timed(self, mut enc: wgpu::CommandEncoder, groups: &[Option<wgpu::BindGroup>], slot: std::sync::MutexGuard<'_, Option<wgpu::Buffer>>) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx;
        let n_disp = self.cmds.iter().filter(|c| matches!(c, Cmd::Dispatch { .. })).count();
        let timed = n_disp.min(super::profile::MAX_TIMED).max(1);
        let qs = ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: 2 * timed as u32 });
        let bytes = (16 * timed) as u64;
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("profile resolve"), size: bytes, usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
        let read = ctx.staging("profile read-back", bytes);
        let mut names = Vec::with_capacity(timed);
        for (i, cmd) in self.cmds.iter().enumerate() {
            match cmd {
                Cmd::Copy { src, src_off, dst, dst_off, size } => enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size),
                Cmd::Dispatch { kernel, groups: g, .. } => {
                    let k = names.len() as u32;
                    let tw = (names.len() < timed).then(|| wgpu::ComputePassTimestampWrites { query_set: &qs, beginning_of_pass_write_index: Some(2 * k), end_of_pass_write_index: Some(2 * k + 1) });
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: tw });
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, groups[i].as_ref().unwrap(), &[]);
                    pass.dispatch_workgroups(g[0], g[1], g[2]);
                    drop(pass);
                    if names.len() < timed {
                        names.push(kernel.name.clone());
                    }
                }
            }
        }
        let used = 2 * names.len() as u32;
        if used > 0 {
            enc.resolve_query_set(&qs, 0..used, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        }
        let idx = ctx.queue.submit([enc.finish()]);
        drop(slot);
        ctx.check()?;
        if used > 0 {
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&ctx.read_staged(&read, bytes)?);
            ctx.profile_add(&names, &ticks, (n_disp - names.len()) as u64);
        }
        Ok(idx)
    }
}
