//! Per-kernel GPU time from timestamp queries, for benches and perf work: with
//! `GpuContext::set_profiling(true)` (or `ESA_WGPU_PROFILE=1`) on an adapter with timestamp queries,
//! every dispatch runs in its own compute pass with begin/end timestamps, each submit waits for its
//! timestamps, and the times add up per kernel name. Off by default: separate passes and the wait
//! cost time.

use std::collections::HashMap;
use std::sync::Mutex;

/// Timestamp pairs per submit (wgpu caps a query set at 4096 queries); later dispatches of a
/// larger submit go untimed.
pub(crate) const MAX_TIMED: usize = 2048;

#[derive(Default)]
pub struct Profile {
    pub(crate) on: bool,
    /// kernel name -> (total ns, dispatches)
    pub(crate) totals: HashMap<String, (f64, u64)>,
    pub(crate) untimed: u64,
}

/// One row of a profile report.
#[derive(Debug, Clone)]
pub struct KernelTime {
    pub kernel: String,
    pub total_ms: f64,
    pub dispatches: u64,
}

impl super::GpuContext {
    /// Turn per-kernel timing on or off (no effect without `Caps::timestamps`); clears the totals.
    pub fn set_profiling(&self, on: bool) {
        let mut p = self.profile.lock().unwrap();
        *p = Profile { on: on && self.caps.timestamps, ..Default::default() };
    }

    pub fn profiling(&self) -> bool {
        self.profile.lock().unwrap().on
    }

    /// Kernels by total GPU time, largest first, and the number of dispatches left untimed.
    pub fn profile_report(&self) -> (Vec<KernelTime>, u64) {
        let p = self.profile.lock().unwrap();
        let mut v: Vec<KernelTime> = p.totals.iter().map(|(k, &(ns, n))| KernelTime { kernel: k.clone(), total_ms: ns * 1e-6, dispatches: n }).collect();
        v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        (v, p.untimed)
    }

    pub(crate) fn profile_add(&self, names: &[String], ticks: &[u64], untimed: u64) {
        let period = self.queue.get_timestamp_period() as f64;
        let mut p = self.profile.lock().unwrap();
        for (i, name) in names.iter().enumerate() {
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            let t = p.totals.entry(name.clone()).or_insert((0.0, 0));
            t.0 += ns;
            t.1 += 1;
        }
        p.untimed += untimed;
    }
}

pub(crate) type ProfileLock = Mutex<Profile>;
