//! Streaming uploads: host bytes reach GPU buffers through a small ring of mapped staging buffers
//! that the caller fills in place, each submitted as one batch of copies as soon as it is full.
//!
//! Why not `queue.write_buffer`: it copies into a staging allocation of its own per call, and those
//! allocations pile up until the next submission, so a model loaded with it briefly needs its size
//! again in host (pinned) memory, plus a copy per tensor. Here host memory stays at the ring
//! (`STAGING_BUFFERS` x `STAGING_BYTES`), every byte is written once into memory the GPU copies
//! from, and the only waits are for the oldest staging buffer of the ring to come back, never for
//! a particular tensor. The fill of one staging buffer is spread over threads (`fill_threads`):
//! converting and copying rows is the host's share of a load.

use std::collections::VecDeque;
use std::sync::mpsc;

use crate::gpu::GpuContext;
use crate::{Error, Result};

/// Bytes of one staging buffer: large enough that a submission moves tens of MiB, small enough
/// that the ring stays a few hundred MiB.
pub const STAGING_BYTES: u64 = 64 << 20;
/// Staging buffers in the ring: one being filled while the others' copies run.
pub const STAGING_BUFFERS: usize = 4;
/// Below this many bytes per thread a fill is not split (thread start-up would dominate).
const MIN_BYTES_PER_THREAD: usize = 1 << 20;

/// One pending copy of the staging buffer being filled into its destination.
struct Copy {
    dst: wgpu::Buffer,
    dst_offset: u64,
    src_offset: u64,
    len: u64,
}

/// The staging buffer being filled: mapped, `used` bytes taken, copies recorded for its submission.
struct Filling {
    buf: wgpu::Buffer,
    used: u64,
    copies: Vec<Copy>,
}

/// A submitted staging buffer whose re-mapping was requested; `mapped` receives the result.
struct InFlight {
    buf: wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// Writes rows of bytes into GPU buffers through the staging ring. Drop or `finish` it when done;
/// copies already submitted complete on the queue before any later submission's work.
pub struct Uploader<'c> {
    ctx: &'c GpuContext,
    staging_bytes: u64,
    max_buffers: usize,
    ready: Vec<wgpu::Buffer>,
    in_flight: VecDeque<InFlight>,
    filling: Option<Filling>,
    made: usize,
    threads: usize,
    /// Bytes written so far (progress, bandwidth accounting).
    pub bytes: u64,
}

/// Threads for filling one staging buffer: the machine's cores, at most 8 (memory bandwidth,
/// not cores, bounds a copy beyond that).
pub fn fill_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

impl<'c> Uploader<'c> {
    /// An uploader for a whole model: full-size staging buffers.
    pub fn new(ctx: &'c GpuContext) -> Uploader<'c> {
        Self::with_staging(ctx, STAGING_BYTES, STAGING_BUFFERS)
    }

    /// An uploader for about `total` bytes: staging buffers no larger than that (a small tensor
    /// does not allocate tens of MiB).
    pub fn with_capacity(ctx: &'c GpuContext, total: u64) -> Uploader<'c> {
        Self::with_staging(ctx, total.min(STAGING_BYTES), STAGING_BUFFERS)
    }

    /// An uploader with a ring of `buffers` staging buffers of `bytes` each (tests use a tiny
    /// ring to make every row wait for a buffer to come back).
    pub fn with_staging(ctx: &'c GpuContext, bytes: u64, buffers: usize) -> Uploader<'c> {
        let staging_bytes = bytes.max(4).next_multiple_of(wgpu::MAP_ALIGNMENT);
        Uploader { ctx, staging_bytes, max_buffers: buffers.max(1), ready: Vec::new(), in_flight: VecDeque::new(), filling: None, made: 0, threads: fill_threads(), bytes: 0 }
    }

    /// The context the uploads go to.
    pub fn ctx(&self) -> &'c GpuContext {
        self.ctx
    }

    /// Write `rows` rows of `row_bytes` bytes each into `dst` from `dst_offset` on; `fill(r, out,
    /// scratch)` writes row `r` (0-based within this call) into `out` (exactly `row_bytes`),
    /// possibly from several threads at once, each with its own `scratch`. `row_bytes` and
    /// `dst_offset` must be multiples of 4 (wgpu's copy alignment).
    pub fn write_rows(
        &mut self,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        rows: usize,
        row_bytes: usize,
        fill: &(dyn Fn(usize, wgpu::WriteOnly<'_, [u8]>, &mut Vec<u8>) + Sync),
    ) -> Result<()> {
        let align = wgpu::COPY_BUFFER_ALIGNMENT;
        if row_bytes == 0 || row_bytes as u64 % align != 0 || dst_offset % align != 0 {
            return Err(Error::Gpu(format!("upload of rows of {row_bytes} bytes at offset {dst_offset}: not a multiple of {align}")));
        }
        if row_bytes as u64 > self.staging_bytes {
            return Err(Error::Gpu(format!("upload: a row of {row_bytes} bytes exceeds the staging buffers of {} bytes", self.staging_bytes)));
        }
        let mut r = 0;
        while r < rows {
            let (buf, at) = self.space(row_bytes as u64)?;
            let n = (((self.staging_bytes - at) / row_bytes as u64) as usize).min(rows - r);
            let len = (n * row_bytes) as u64;
            {
                let mut view = buf.slice(at..at + len).get_mapped_range_mut().map_err(|e| Error::Gpu(format!("staging buffer: {e:?}")))?;
                fill_parallel(view.slice(..), r, n, row_bytes, self.threads, fill);
            }
            let f = self.filling.as_mut().expect("space() set it");
            f.copies.push(Copy { dst: dst.clone(), dst_offset: dst_offset + (r * row_bytes) as u64, src_offset: at, len });
            // The next mapped range must start on wgpu's map alignment (8 bytes).
            f.used = (at + len).next_multiple_of(wgpu::MAP_ALIGNMENT);
            self.bytes += len;
            r += n;
        }
        Ok(())
    }

    /// The staging buffer being filled and the offset of `need` free bytes in it, submitting the
    /// current one and taking the next from the ring when it is full.
    fn space(&mut self, need: u64) -> Result<(wgpu::Buffer, u64)> {
        if let Some(f) = &self.filling {
            if f.used + need <= self.staging_bytes {
                return Ok((f.buf.clone(), f.used));
            }
        }
        self.flush()?;
        let buf = self.next_staging()?;
        self.filling = Some(Filling { buf: buf.clone(), used: 0, copies: Vec::new() });
        Ok((buf, 0))
    }

    /// A mapped, empty staging buffer: a free one, a new one while the ring is not full, else the
    /// oldest in flight once its copies are done.
    fn next_staging(&mut self) -> Result<wgpu::Buffer> {
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
        while let Some(f) = self.in_flight.front() {
            match f.mapped.try_recv() {
                Ok(r) => {
                    let f = self.in_flight.pop_front().expect("front exists");
                    r.map_err(|e| Error::Gpu(format!("mapping a staging buffer: {e}")))?;
                    self.ready.push(f.buf);
                }
                Err(_) => break,
            }
        }
        if let Some(b) = self.ready.pop() {
            return Ok(b);
        }
        if self.made < self.max_buffers {
            self.made += 1;
            return Ok(self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload staging"),
                size: self.staging_bytes,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            }));
        }
        let f = self.in_flight.pop_front().expect("a full ring has buffers in flight");
        // Its copies' submission done, the poll runs the map callback; should it come later
        // anyway, wait for everything submitted rather than spin.
        let mut wait = wgpu::PollType::Wait { submission_index: Some(f.submission), timeout: None };
        let mapped = loop {
            match f.mapped.try_recv() {
                Ok(r) => break r,
                Err(mpsc::TryRecvError::Disconnected) => return Err(Error::Gpu("staging buffer's map callback dropped".into())),
                Err(mpsc::TryRecvError::Empty) => {
                    self.ctx.device.poll(std::mem::replace(&mut wait, wgpu::PollType::wait_indefinitely())).map_err(|e| Error::Gpu(format!("waiting for an upload: {e}")))?;
                }
            }
        };
        mapped.map_err(|e| Error::Gpu(format!("mapping a staging buffer: {e}")))?;
        Ok(f.buf)
    }

    /// Submit the copies of the staging buffer being filled and ask for it back (mapped).
    fn flush(&mut self) -> Result<()> {
        let Some(f) = self.filling.take() else { return Ok(()) };
        f.buf.unmap();
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("upload") });
        for c in &f.copies {
            enc.copy_buffer_to_buffer(&f.buf, c.src_offset, &c.dst, c.dst_offset, c.len);
        }
        let submission = self.ctx.queue.submit([enc.finish()]);
        let (tx, mapped) = mpsc::channel();
        f.buf.slice(..).map_async(wgpu::MapMode::Write, move |r| {
            let _ = tx.send(r);
        });
        self.in_flight.push_back(InFlight { buf: f.buf, submission, mapped });
        Ok(())
    }

    /// Submit what is staged. No wait: later submissions on the queue run after these copies.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.ctx.check()
    }
}

impl Drop for Uploader<'_> {
    fn drop(&mut self) {
        // An uploader dropped on an error path still submits what it staged (harmless), so that
        // no mapped buffer is left with copies recorded against it.
        let _ = self.flush();
    }
}

/// Fill `n` rows (`first..first + n` of the call) into `out`, split over up to `threads` threads
/// in runs of whole rows.
fn fill_parallel(
    out: wgpu::WriteOnly<'_, [u8]>,
    first: usize,
    n: usize,
    row_bytes: usize,
    threads: usize,
    fill: &(dyn Fn(usize, wgpu::WriteOnly<'_, [u8]>, &mut Vec<u8>) + Sync),
) {
    let run = |mut out: wgpu::WriteOnly<'_, [u8]>, rows: std::ops::Range<usize>| {
        let mut scratch = Vec::new();
        for r in rows {
            let (row, rest) = out.split_at(row_bytes);
            fill(r, row, &mut scratch);
            out = rest;
        }
    };
    let t = threads.min(n * row_bytes / MIN_BYTES_PER_THREAD).max(1);
    if t == 1 {
        return run(out, first..first + n);
    }
    let per = n.div_ceil(t);
    std::thread::scope(|s| {
        let mut out = out;
        let mut r = first;
        while r < first + n {
            let k = per.min(first + n - r);
            let (mine, rest) = out.split_at(k * row_bytes);
            out = rest;
            let rows = r..r + k;
            if r + k < first + n {
                let mine = SendSlice::new(mine);
                s.spawn(move || run(mine.get(), rows));
            } else {
                run(mine, rows);
            }
            r += k;
        }
    });
}

/// A `WriteOnly` byte slice moved to another thread. wgpu's `WriteOnly<[u8]>` is an exclusive
/// pointer like `&mut [u8]` but not `Send` (its impl asks for a sized target).
struct SendSlice<'a> {
    ptr: std::ptr::NonNull<[u8]>,
    _borrow: std::marker::PhantomData<&'a mut [u8]>,
}

// SAFETY: made from a `WriteOnly` that it consumes, so it is the only access to those bytes for
// 'a, exactly as a `&'a mut [u8]` (which is `Send`) would be.
unsafe impl Send for SendSlice<'_> {}

impl<'a> SendSlice<'a> {
    fn new(mut w: wgpu::WriteOnly<'a, [u8]>) -> SendSlice<'a> {
        SendSlice { ptr: w.as_raw_ptr(), _borrow: std::marker::PhantomData }
    }
    fn get(self) -> wgpu::WriteOnly<'a, [u8]> {
        // SAFETY: the pointer came from a `WriteOnly` of lifetime 'a that was consumed (valid
        // for writes, aligned, and not accessed any other way until 'a ends).
        unsafe { wgpu::WriteOnly::new(self.ptr) }
    }
}
