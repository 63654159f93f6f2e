//! GPU context: adapter choice, device with the optional features the kernels can use, capability
//! report, pipeline cache and error capture. One per process is typical; it is `Send + Sync`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// How to pick the adapter. Environment variables override the fields (handy for users of apps):
/// `ESA_WGPU_BACKEND` (vulkan, metal, dx12, gl) and `ESA_WGPU_ADAPTER` (substring of the adapter name).
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    pub backend: Option<String>,
    pub adapter: Option<String>,
    /// Do not use cooperative matrices (tensor cores) even where the adapter offers them: the
    /// portable FMA matmul runs instead (also `ESA_WGPU_NO_COOP=1`). By default they are requested
    /// whenever offered.
    pub no_coop_matrix: bool,
    /// Run the cooperative-matrix kernels through a plain-WGSL emulation (`coop_emulation`), on
    /// any adapter with f16: slow, for checking those kernels where no tensor cores exist (tests;
    /// also `ESA_WGPU_EMULATE_COOP=1`).
    pub emulate_coop: bool,
    /// Pretend the adapter's storage binding limit is at most this (tests the row-shard path on
    /// small models; also `ESA_WGPU_MAX_BINDING`).
    pub max_binding: Option<u64>,
    /// Do not use subgroup operations even if offered (tests the portable kernels; also
    /// `ESA_WGPU_NO_SUBGROUPS=1`).
    pub no_subgroups: bool,
    /// On a CPU adapter (lavapipe), run the GPUs' kernels instead of the CPU adapters' own (tests
    /// the GPU decode path end to end without a GPU; also `ESA_WGPU_NO_CPU_KERNELS=1`).
    pub no_cpu_kernels: bool,
}

/// What the device offers; ops pick kernel variants from this, never from vendor names.
#[derive(Debug, Clone)]
pub struct Caps {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    pub timestamps: bool,
    pub coop_matrix: bool,
    /// Cooperative matrices of the one configuration the kernels use: 16x16x16, f16 inputs, f32
    /// accumulators (from the adapter's list of supported configurations).
    pub coop_f16_16: bool,
    /// The cooperative-matrix kernels run emulated (`GpuOptions::emulate_coop`).
    pub coop_emulated: bool,
    /// Largest storage binding (bytes). Tensors larger than this are split into row shards.
    pub max_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_storage: u32,
    pub max_workgroups_per_dim: u32,
    pub max_storage_buffers_per_stage: u32,
    /// Alignment of a storage binding's offset into its buffer (bytes).
    pub storage_offset_alignment: u64,
    /// The adapter is a CPU (device type) and `GpuOptions::no_cpu_kernels` is off: the ops may
    /// pick the CPU adapters' kernels (`linear::cpu_variant`).
    pub cpu_kernels: bool,
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    pipelines: Mutex<HashMap<String, Arc<Kernel>>>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    pub(crate) bind_cache: Mutex<super::recorder::BindCache>,
    pub(crate) params_arena: Mutex<Option<wgpu::Buffer>>,
    /// The partial products of matmuls split along K (`ops::split_k`), made on first use at its
    /// one fixed size; every split matmul of every session on this context shares it (the queue
    /// runs their passes in order).
    pub(crate) split_part: Mutex<Option<wgpu::Buffer>>,
    pub(crate) profile: super::profile::ProfileLock,
}

/// A compiled compute pipeline plus the bind group layout the recorder binds against.
pub struct Kernel {
    pub name: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub id: usize,
}

/// Kernel limits we cannot work without.
const MIN_STORAGE_BUFFERS: u32 = 8;
const MIN_BINDING: u64 = 16 << 20;

fn parse_backend(s: &str) -> Result<wgpu::Backends> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        other => return Err(Error::arg("backend", format!("unknown backend `{other}` (vulkan, metal, dx12, gl)"))),
    })
}

impl GpuContext {
    pub fn new(opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        pollster::block_on(Self::new_async(opts))
    }

    pub async fn new_async(opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        let backend = std::env::var("ESA_WGPU_BACKEND").ok().or(opts.backend.clone());
        let wanted = std::env::var("ESA_WGPU_ADAPTER").ok().or(opts.adapter.clone());
        // Only the backends asked for; by default the platform's primary ones (Vulkan, Metal,
        // DX12), and GL only where they find no adapter: initialising a backend nobody uses costs
        // time and can print its own errors.
        let enumerate = |backends: wgpu::Backends| async move {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
            desc.backends = backends;
            let instance = wgpu::Instance::new(desc);
            let adapters = instance.enumerate_adapters(backends).await;
            (instance, adapters)
        };
        let asked = match &backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::PRIMARY,
        };
        let (mut _instance, mut adapters) = enumerate(asked).await;
        let mut backends = asked;
        if adapters.is_empty() && backend.is_none() {
            (_instance, adapters) = enumerate(wgpu::Backends::GL).await;
            backends |= wgpu::Backends::GL;
        }
        if adapters.is_empty() {
            return Err(Error::Gpu(format!(
                "no GPU adapter found for backends {backends:?}; install a Vulkan/Metal/DX12 driver \
                 (on Linux without a GPU: `apt-get install mesa-vulkan-drivers libvulkan1` for lavapipe)"
            )));
        }
        let names: Vec<String> = adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
        let adapter = match &wanted {
            Some(w) => adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&w.to_lowercase()))
                .ok_or_else(|| Error::arg("adapter", format!("no adapter matches `{w}`; available: {}", names.join(", "))))?,
            None => {
                // Prefer discrete, then integrated, then anything (software last).
                let rank = |t: wgpu::DeviceType| match t {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu => 2,
                    wgpu::DeviceType::Other => 3,
                    wgpu::DeviceType::Cpu => 4,
                };
                let mut v = adapters;
                v.sort_by_key(|a| (rank(a.get_info().device_type), a.get_info().backend != wgpu::Backend::Vulkan));
                v.into_iter().next().unwrap()
            }
        };
        Self::from_adapter(adapter, opts).await
    }

    async fn from_adapter(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let have = adapter.features();
        if limits.max_storage_buffers_per_shader_stage < MIN_STORAGE_BUFFERS || (limits.max_storage_buffer_binding_size as u64) < MIN_BINDING {
            return Err(Error::Gpu(format!(
                "adapter `{}` is too small: {} storage buffers per stage (need {MIN_STORAGE_BUFFERS}), \
                 max storage binding {} bytes (need {MIN_BINDING})",
                info.name, limits.max_storage_buffers_per_shader_stage, limits.max_storage_buffer_binding_size
            )));
        }
        let mut features = wgpu::Features::empty();
        let no_sg = opts.no_subgroups || std::env::var("ESA_WGPU_NO_SUBGROUPS").is_ok_and(|v| v == "1");
        for f in [wgpu::Features::SHADER_F16, wgpu::Features::SUBGROUP, wgpu::Features::TIMESTAMP_QUERY] {
            if have.contains(f) && !(no_sg && f == wgpu::Features::SUBGROUP) {
                features |= f;
            }
        }
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        let no_coop = opts.no_coop_matrix || std::env::var("ESA_WGPU_NO_COOP").is_ok_and(|v| v == "1");
        let coop_f16_16 = !no_coop
            && have.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && have.contains(wgpu::Features::SHADER_F16)
            && adapter.cooperative_matrix_properties().iter().any(|c| {
                c.m_size == 16
                    && c.n_size == 16
                    && c.k_size == 16
                    && c.ab_type == wgpu::CooperativeScalarType::F16
                    && c.cr_type == wgpu::CooperativeScalarType::F32
            });
        if coop_f16_16 {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: only the cooperative-matrix kernels use the experimental feature, and they are
            // chosen only when the adapter reports it.
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("esa-wgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("adapter `{}`: request_device failed: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let caps = Caps {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            coop_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            coop_f16_16,
            coop_emulated: (opts.emulate_coop || std::env::var("ESA_WGPU_EMULATE_COOP").is_ok_and(|v| v == "1"))
                && features.contains(wgpu::Features::SHADER_F16),
            max_binding: {
                let cap = std::env::var("ESA_WGPU_MAX_BINDING").ok().and_then(|v| v.parse::<u64>().ok()).or(opts.max_binding);
                let hw = limits.max_storage_buffer_binding_size as u64;
                cap.map_or(hw, |c| c.clamp(256, hw))
            },
            max_buffer: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            cpu_kernels: info.device_type == wgpu::DeviceType::Cpu
                && !(opts.no_cpu_kernels || std::env::var("ESA_WGPU_NO_CPU_KERNELS").is_ok_and(|v| v == "1")),
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment as u64,
        };
        let caps_timestamps = caps.timestamps;
        Ok(Arc::new(GpuContext {
            device,
            queue,
            info,
            caps,
            pipelines: Mutex::new(HashMap::new()),
            uncaptured,
            bind_cache: Mutex::new(Default::default()),
            params_arena: Mutex::new(None),
            split_part: Mutex::new(None),
            profile: Mutex::new(super::profile::Profile {
                on: caps_timestamps && std::env::var("ESA_WGPU_PROFILE").is_ok_and(|v| v == "1"),
                ..Default::default()
            }),
        }))
    }

    /// One line saying what was chosen, for logs.
    pub fn describe(&self) -> String {
        let c = &self.caps;
        format!(
            "{} ({:?}, {:?}, driver {}) f16={} subgroups={}({}..{}) timestamps={} coop_matrix={} (16x16x16 f16->f32: {}) max_binding={} MiB",
            self.info.name, self.info.backend, self.info.device_type, self.info.driver, c.shader_f16, c.subgroups,
            c.subgroup_min, c.subgroup_max, c.timestamps, c.coop_matrix, c.coop_f16_16, c.max_binding >> 20
        )
    }

    /// Compile (once) and return the kernel `entry` of `source`, specialised by WGSL `override`
    /// constants. The cache key is name + entry + constants.
    pub fn kernel(&self, name: &str, source: &str, entry: &str, constants: &[(&str, f64)]) -> Result<Arc<Kernel>> {
        self.kernel_with(name, entry, constants, || Ok(source.to_string()))
    }

    /// `kernel` for sources composed at run time (a driver with a weight format, a tile shape):
    /// `source` runs only when `name` + entry + constants is not cached yet, so the ops that call
    /// this on every dispatch build no shader text after the first.
    pub fn kernel_with(&self, name: &str, entry: &str, constants: &[(&str, f64)], source: impl FnOnce() -> Result<String>) -> Result<Arc<Kernel>> {
        let mut key = format!("{name}:{entry}");
        for (k, v) in constants {
            key.push_str(&format!(":{k}={v}"));
        }
        if let Some(k) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        let mut source = source()?;
        if self.caps.coop_emulated && source.contains("enable wgpu_cooperative_matrix;") {
            source = super::coop_emulation::emulate(&source)?;
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // Bounds checks stay on (a bad index must never read outside a buffer), but every loop in
        // these kernels has a bound it provably reaches, so the loop counters wgpu would add to
        // guard against infinite loops are left out: they cost a compare and an increment per
        // iteration of every inner loop.
        let checks = wgpu::ShaderRuntimeChecks { bounds_checks: true, force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };
        // SAFETY: the source is one of this crate's WGSL kernels (validated by naga as usual); the
        // only check dropped is loop bounding, and each kernel's loops terminate (see above).
        let module = unsafe {
            self.device.create_shader_module_trusted(
                wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.as_str().into()) },
                checks,
            )
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling kernel {key}: {e}")));
        }
        let layout = pipeline.get_bind_group_layout(0);
        let mut map = self.pipelines.lock().unwrap();
        let id = map.len();
        let k = Arc::new(Kernel { name: key.clone(), pipeline, layout, id });
        map.insert(key, k.clone());
        Ok(k)
    }

    /// A storage buffer of `size` bytes (at least 4). Out-of-memory is an error, not a panic.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        if size > self.caps.max_buffer {
            return Err(Error::Gpu(format!("buffer `{label}` of {size} bytes exceeds the adapter's max_buffer_size {}", self.caps.max_buffer)));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("out of GPU memory allocating `{label}` ({size} bytes): {e}")));
        }
        Ok(b)
    }

    /// A storage buffer holding `data`.
    pub fn upload(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        let b = self.storage(label, data.len() as u64)?;
        self.write(&b, 0, data);
        Ok(b)
    }

    /// Write bytes at `offset`; pads to a multiple of 4 as wgpu requires.
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.len() % 4 == 0 {
            self.queue.write_buffer(buf, offset, data);
        } else {
            let mut v = data.to_vec();
            v.resize(data.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buf, offset, &v);
        }
    }

    /// Copy `size` bytes from `buf` at `offset` back to the host (blocking). Used for results and
    /// tests; a decode step reads back only the sampled token id.
    pub fn read(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.staging("readback", size);
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, offset, &staging, 0, staging.size());
        self.queue.submit([enc.finish()]);
        self.read_staged(&staging, size)
    }

    /// A host-readable buffer for repeated small read-backs (allocate once, `read_staged` often).
    pub fn staging(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Wait for the GPU, then read `size` bytes of a `staging` buffer that earlier submitted work
    /// copied into. No allocation on the GPU.
    pub fn read_staged(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..size.next_multiple_of(4).max(4));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("map callback dropped".into()))?
            .map_err(|e| Error::Gpu(format!("mapping read-back buffer: {e}")))?;
        let out = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("mapping read-back buffer: {e:?}")))?[..size as usize].to_vec();
        staging.unmap();
        self.check()?;
        Ok(out)
    }

    pub fn read_f32(&self, buf: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<f32>> {
        let b = self.read(buf, offset_elems as u64 * 4, n as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }

    pub fn read_u32(&self, buf: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<u32>> {
        let b = self.read(buf, offset_elems as u64 * 4, n as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }

    /// Block until all submitted work has finished.
    pub fn sync(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Errors wgpu reported outside any scope (validation, device lost) since the last check.
    pub fn check(&self) -> Result<()> {
        let mut v = self.uncaptured.lock().unwrap();
        if v.is_empty() {
            Ok(())
        } else {
            let msg = v.join("; ");
            v.clear();
            Err(Error::Gpu(msg))
        }
    }
}
