//! The GPU context: one device with the adapter's real limits, cached pipelines, and every
//! wgpu failure surfaced as a [`crate::Error`] instead of a panic.
//!
//! The same code runs natively (Vulkan, Metal, DX12) and in the browser (WebGPU). Only the
//! way a future is driven differs: natively a caller drives it with [`crate::block_on`], in
//! the browser the caller awaits the async functions from the event loop.

mod dispatch;
pub mod shaders;
pub mod uniform;

pub use dispatch::{grid, Dispatch, Grid, Kernel, View, Window};

use crate::error::{Error, Result};

/// WebGPU's storage-buffer offset alignment (`minStorageBufferOffsetAlignment`) is at most 256
/// bytes on every device, so windows start at multiples of it.
pub const ALIGNMENT: u64 = crate::memory::BINDING_ALIGNMENT;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every storage binding in densegpu is a `read_write` `array<f32>` bound through a
/// [`Window`]; one launch's windows never overlap, as WebGPU requires.
/// Binding 0 is always the kernel's uniform parameter block.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    layouts: Mutex<HashMap<u32, Arc<BindingLayout>>>,
    /// Errors raised outside an error scope (wgpu's default handler would panic on them);
    /// the next [`Gpu::run`] returns the first one.
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Keyed by the `Shader`'s address: each is a static, and a candidate's scalar and vector
    /// modules share a name.
    modules: Mutex<HashMap<usize, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(usize, &'static str), Arc<wgpu::ComputePipeline>>>,
    /// Disjoint windows for bindings a kernel declares but a launch does not use.
    unused: wgpu::Buffer,
    /// The kernel family every launch must use, when a caller forces one.
    forced_family: Mutex<Option<Family>>,
    /// Tuned kernel choices: tuning key (e.g. [`crate::ops::conv::kernels::ConvDirection::tuning_key`])
    /// to candidate name. See [`crate::tune`].
    kernel_choices: Mutex<HashMap<String, String>>,
    /// Whether the device was granted timestamp queries (see [`Gpu::time_on_device`]).
    timestamps: bool,
    /// Whether the device was granted subgroup operations with subgroups of at least
    /// [`MIN_SUBGROUP_SIZE`] invocations (see [`Gpu::has_subgroups`]).
    subgroups: bool,
}

/// The smallest subgroup the register family's subgroup candidate can run on: it broadcasts
/// weights from subgroup invocations 0 to 7 (see `ops::conv::wgsl`).
pub const MIN_SUBGROUP_SIZE: u32 = crate::ops::conv::wgsl::SUBGROUP;

/// The two kernel families (see README, "How it is built").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Register-tiled kernels: large unrolled tiles per invocation, for CPU drivers
    /// (llvmpipe/lavapipe, SwiftShader) that run invocations as SIMD lanes.
    Register,
    /// Workgroup-tiled kernels: operand tiles staged in workgroup memory, small tiles per
    /// invocation, for GPUs.
    Workgroup,
}

impl Family {
    /// `register` or `workgroup`, as the command lines spell it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Register => "register",
            Family::Workgroup => "workgroup",
        }
    }
}

/// Bindings per kernel that may go unused, at most.
const UNUSED_BINDINGS: u64 = 8;

pub(crate) struct BindingLayout {
    pub(crate) bind_group: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
}

#[cfg(not(target_arch = "wasm32"))]
const NO_ADAPTER_HELP: &str = "no GPU adapter was found. Install a GPU driver with Vulkan, Metal or DX12 support; \
on a machine without a GPU, install Mesa's CPU Vulkan driver (Debian/Ubuntu: \
`apt-get install mesa-vulkan-drivers libvulkan1`), or run `cargo xtask setup`";
#[cfg(target_arch = "wasm32")]
const NO_ADAPTER_HELP: &str = "this browser offers no WebGPU adapter. Use a browser with WebGPU enabled \
(Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows); on Linux, Chromium needs \
`--enable-unsafe-webgpu` (and `--enable-features=Vulkan` for a real GPU)";

/// Gives the process a private `XDG_RUNTIME_DIR` when it has none (or one that is not a
/// directory), before the first wgpu instance exists. Without one, the Vulkan loader or Mesa
/// prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on every run
/// (in containers, over ssh, under CI), which reads like a failure of ours. The directory is
/// `densegpu-runtime-<uid>` in the temporary directory, mode 0700, and is used only if it is a
/// real directory owned by this user and closed to everyone else; otherwise nothing changes.
#[cfg(unix)]
fn ensure_runtime_dir() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        const VAR: &str = "XDG_RUNTIME_DIR";
        if std::env::var_os(VAR).is_some_and(|d| std::path::Path::new(&d).is_dir()) {
            return;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let dir = std::env::temp_dir().join(format!("densegpu-runtime-{uid}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => return,
        }
        // Not a symlink, ours, and private: anything else may belong to someone else.
        let ok = std::fs::symlink_metadata(&dir)
            .is_ok_and(|m| m.file_type().is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
        if ok {
            std::env::set_var(VAR, &dir);
        }
    });
}

impl Gpu {
    /// Opens the first adapter wgpu offers (preferring a discrete GPU) and requests a device
    /// with that adapter's own limits, not WebGPU's conservative defaults: densegpu's arena
    /// wants the largest storage bindings the hardware allows. On unix, a process without a
    /// valid `XDG_RUNTIME_DIR` first gets a private one, which keeps the Vulkan driver's
    /// complaint about it off the terminal.
    pub async fn new() -> Result<Gpu> {
        #[cfg(unix)]
        ensure_runtime_dir();
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = if cfg!(target_arch = "wasm32") {
            wgpu::Backends::BROWSER_WEBGPU
        } else {
            wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
        };
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{NO_ADAPTER_HELP} ({e})")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamp queries time kernels on the device itself, for the tuner; not every
        // adapter offers them, and nothing else needs them.
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        // Subgroup operations let a conv candidate load its weights once per subgroup instead of
        // once per invocation. Natively only for now: a browser's WGSL also needs an `enable
        // subgroups;` directive, which the generated text does not carry yet.
        let subgroups = !cfg!(target_arch = "wasm32")
            && adapter.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size >= MIN_SUBGROUP_SIZE;
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::TIMESTAMP_QUERY, timestamps);
        features.set(wgpu::Features::SUBGROUP, subgroups);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("densegpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("the adapter {} refused a device: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().get_or_insert_with(|| e.to_string());
        }));
        let unused = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused bindings"),
            size: UNUSED_BINDINGS * ALIGNMENT,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            unused,
            uncaptured,
            device,
            queue,
            info,
            limits,
            layouts: Mutex::default(),
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            forced_family: Mutex::default(),
            kernel_choices: Mutex::default(),
            timestamps,
            subgroups,
        })
    }

    /// The family launches use when neither a forced family nor a tuned choice says otherwise:
    /// the register family on a CPU driver, the workgroup family on every GPU (and on adapters
    /// that do not say what they are). A browser reports a CPU adapter as such only when it is
    /// its fallback adapter, so the software rasterisers are also known by name: llvmpipe
    /// (lavapipe), SwiftShader and Microsoft's WARP ("Basic Render Driver").
    pub fn default_family(&self) -> Family {
        let name = self.info.name.to_lowercase();
        let software = ["llvmpipe", "lavapipe", "swiftshader", "basic render driver"];
        if self.info.device_type == wgpu::DeviceType::Cpu || software.iter().any(|s| name.contains(s)) {
            Family::Register
        } else {
            Family::Workgroup
        }
    }

    /// Makes every later recorded launch use `family` (its default candidate), whatever the
    /// tuning says; `None` lifts that. Programs recorded before keep their kernels.
    pub fn force_family(&self, family: Option<Family>) {
        *self.forced_family.lock().unwrap() = family;
    }

    /// The family in effect for kernels without a tuned choice (the batch-norm reductions, and
    /// conv shapes the tuner has not seen): the forced one, else [`Gpu::default_family`].
    pub fn family(&self) -> Family {
        self.forced_family().unwrap_or_else(|| self.default_family())
    }

    /// The family set by [`Gpu::force_family`], if any.
    pub fn forced_family(&self) -> Option<Family> {
        *self.forced_family.lock().unwrap()
    }

    /// The tuned candidate name for a tuning key, if one was chosen or loaded.
    pub fn kernel_choice(&self, key: &str) -> Option<String> {
        self.kernel_choices.lock().unwrap().get(key).cloned()
    }

    /// Records the candidate to launch for a tuning key.
    pub fn set_kernel_choice(&self, key: &str, candidate: &str) {
        self.kernel_choices.lock().unwrap().insert(key.to_string(), candidate.to_string());
    }

    /// Forgets every tuned choice, so that each conv runs its family's default candidate (as
    /// autotune `off` asks).
    pub fn clear_kernel_choices(&self) {
        self.kernel_choices.lock().unwrap().clear();
    }

    /// One line for logs and benchmark records: adapter name, backend, device type, driver.
    pub fn describe(&self) -> String {
        let name = if self.info.name.is_empty() { "unnamed adapter" } else { self.info.name.as_str() };
        let driver = format!("{} {}", self.info.driver, self.info.driver_info);
        match driver.trim() {
            // Browsers hide the driver (and often the name) from pages.
            "" => format!("{name} ({:?}, {:?})", self.info.backend, self.info.device_type),
            driver => format!("{name} ({:?}, {:?}, driver {driver})", self.info.backend, self.info.device_type),
        }
    }

    /// The `i`-th window for a binding that a launch leaves unused: disjoint from every other
    /// window, so it aliases nothing.
    pub fn unused_binding(&self, i: usize) -> Window<'_> {
        assert!((i as u64) < UNUSED_BINDINGS, "at most {UNUSED_BINDINGS} unused bindings per launch");
        Window { buffer: &self.unused, start: i as u64 * ALIGNMENT, size: ALIGNMENT }
    }

    /// The largest number of bytes one storage binding may cover on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    pub(crate) fn binding_layout(&self, storage_buffers: u32) -> Arc<BindingLayout> {
        let mut layouts = self.layouts.lock().unwrap();
        layouts
            .entry(storage_buffers)
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                entries.extend((1..=storage_buffers).map(|binding| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }));
                let bind_group = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("densegpu kernel bindings"),
                    entries: &entries,
                });
                let pipeline = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("densegpu kernel layout"),
                    bind_group_layouts: &[Some(&bind_group)],
                    immediate_size: 0,
                });
                Arc::new(BindingLayout { bind_group, pipeline })
            })
            .clone()
    }

    /// Compiles a kernel's pipeline once per device; later calls return the cached one.
    pub fn pipeline(&self, kernel: &Kernel) -> Arc<wgpu::ComputePipeline> {
        let shader = std::ptr::from_ref(kernel.shader) as usize;
        let key = (shader, kernel.entry);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let layout = self.binding_layout(kernel.buffers);
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(shader)
                .or_insert_with(|| {
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.shader.name),
                        source: wgpu::ShaderSource::Wgsl(kernel.shader.source().into()),
                    })
                })
                .clone()
        };
        let pipeline = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: Some(&layout.pipeline),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        }));
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
    }

    /// A storage buffer for f32 data. Checks the size against the device's limits first, so
    /// an oversized request names the limit instead of failing inside the driver.
    pub async fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        if bytes > self.max_binding_bytes() {
            return Err(Error::TooLarge(format!(
                "buffer `{label}` needs {bytes} bytes but one storage binding on {} may hold at most {} bytes",
                self.info.name,
                self.max_binding_bytes()
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::OutOfMemory(format!(
                "the device could not allocate {bytes} bytes for `{label}`: {e}. Use a smaller batch or a leaner memory mode"
            )));
        }
        Ok(buffer)
    }

    pub fn write_f32(&self, buffer: &wgpu::Buffer, offset_elems: u64, data: &[f32]) {
        self.queue.write_buffer(buffer, offset_elems * 4, bytemuck::cast_slice(data));
    }

    /// Writes 32-bit words (flags, counters) from word `offset_words`; ordered before every
    /// later submission, like [`Gpu::write_f32`].
    pub fn write_u32(&self, buffer: &wgpu::Buffer, offset_words: u64, data: &[u32]) {
        self.queue.write_buffer(buffer, offset_words * 4, bytemuck::cast_slice(data));
    }

    /// Fills `len` elements from `offset_elems` with one value (e.g. NaN, to poison outputs).
    pub fn fill_f32(&self, buffer: &wgpu::Buffer, offset_elems: u64, len: usize, value: f32) {
        self.write_f32(buffer, offset_elems, &vec![value; len]);
    }

    /// Records and submits the dispatches in order, in one compute pass, and reports any
    /// validation or out-of-memory error they raised.
    pub async fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        self.run_with(dispatches, Grid::Whole, None, |_| {}).await
    }

    /// [`Gpu::run`] with each launch on `grid` (see [`Grid::OneWorkgroup`]).
    pub async fn run_on(&self, dispatches: &[Dispatch], grid: Grid) -> Result<()> {
        self.run_with(dispatches, grid, None, |_| {}).await
    }

    /// [`Gpu::run`] with the pass's timestamp writes, if any, and `after`, which records more
    /// commands after the pass in the same submission.
    async fn run_with(
        &self,
        dispatches: &[Dispatch],
        grid: Grid,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
            for d in dispatches {
                d.record(&mut pass, grid);
            }
        }
        after(&mut encoder);
        self.queue.submit([encoder.finish()]);
        if let Some(e) = self.uncaptured.lock().unwrap().take() {
            return Err(Error::Validation(e));
        }
        if let Some(e) = oom.pop().await {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = validation.pop().await {
            return Err(Error::Validation(e.to_string()));
        }
        Ok(())
    }

    /// Whether kernels may use WGSL's subgroup operations on subgroups of at least
    /// [`MIN_SUBGROUP_SIZE`] invocations (the adapter offers them, natively; lavapipe's
    /// subgroups are its 8 SIMD lanes at 256 bits).
    pub fn has_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether [`Gpu::time_on_device`] can time launches (the adapter offers timestamp
    /// queries).
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// Runs the dispatches in one compute pass, as [`Gpu::run`], and returns the seconds the
    /// device spent on the pass, from timestamps written at its start and end
    /// (`Queue::get_timestamp_period` nanoseconds a tick), once the device has finished it.
    /// `None` without timestamp queries, or when the two timestamps are not in order (a
    /// device may reset its counter), so the caller falls back to the wall clock. Errors: as
    /// [`Gpu::run`], or reading the timestamps back fails.
    pub async fn time_on_device(&self, dispatches: &[Dispatch]) -> Result<Option<f64>> {
        if !self.timestamps {
            return Ok(None);
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("densegpu timing"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("densegpu timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.staging_buffer(16);
        let writes = wgpu::ComputePassTimestampWrites {
            query_set: &queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        };
        self.run_with(dispatches, Grid::Whole, Some(writes), |encoder| {
            encoder.resolve_query_set(&queries, 0..2, &resolved, 0);
            encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, 16);
        })
        .await?;
        let bytes = self.map_read(&staging).await?;
        let tick = |i: usize| u64::from_ne_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let (start, end) = (tick(0), tick(1));
        if end <= start {
            return Ok(None);
        }
        Ok(Some((end - start) as f64 * self.queue.get_timestamp_period() as f64 * 1e-9))
    }

    /// Runs the dispatches in order, each in a compute pass of its own, and returns each one's
    /// (submission, start, seconds): the device's own timestamps at the start and end of its
    /// pass, starts counted from the first dispatch's, with up to [`PROFILED_PER_SUBMISSION`]
    /// dispatches a submission (a query set holds 4,096 timestamps). Returns once the device
    /// has finished. Without timestamp queries (see [`Gpu::has_timestamps`]) each dispatch is
    /// submitted alone and timed by the wall clock with the device polled to idle (natively
    /// only). For the step profiler ([`crate::profile`]): separate passes add a little time
    /// between launches, which the profile reports. Errors: as [`Gpu::run`], or reading the
    /// timestamps back fails, or a browser adapter without timestamps.
    pub async fn run_profiled(&self, dispatches: &[Dispatch]) -> Result<Vec<(usize, f64, f64)>> {
        if !self.timestamps {
            return self.run_profiled_by_wall_clock(dispatches);
        }
        let mut ticks: Vec<(usize, u64, u64)> = Vec::with_capacity(dispatches.len());
        let mut pending = Vec::new();
        for (submission, chunk) in dispatches.chunks(PROFILED_PER_SUBMISSION).enumerate() {
            let count = 2 * chunk.len() as u32;
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("densegpu profile"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let bytes = 8 * count as u64;
            let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("densegpu profile timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = self.staging_buffer(bytes);
            let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            for (i, d) in chunk.iter().enumerate() {
                let writes = wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                };
                let mut pass = encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(writes) });
                d.record(&mut pass, Grid::Whole);
            }
            encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
            encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
            self.queue.submit([encoder.finish()]);
            if let Some(e) = validation.pop().await {
                return Err(Error::Validation(e.to_string()));
            }
            pending.push((submission, chunk.len(), staging));
        }
        for (submission, len, staging) in pending {
            let bytes = self.map_read(&staging).await?;
            let tick = |i: usize| u64::from_ne_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            ticks.extend((0..len).map(|i| (submission, tick(2 * i), tick(2 * i + 1))));
        }
        let first = ticks.iter().map(|t| t.1).min().unwrap_or(0);
        let period = self.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(ticks
            .into_iter()
            .map(|(s, start, end)| {
                (s, start.saturating_sub(first) as f64 * period, end.saturating_sub(start) as f64 * period)
            })
            .collect())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn run_profiled_by_wall_clock(&self, dispatches: &[Dispatch]) -> Result<Vec<(usize, f64, f64)>> {
        let origin = std::time::Instant::now();
        let mut out = Vec::with_capacity(dispatches.len());
        // Each dispatch is a submission of its own here; they share one track all the same.
        for d in dispatches {
            let start = origin.elapsed().as_secs_f64();
            crate::block_on(self.run(std::slice::from_ref(d)))?;
            self.wait()?;
            out.push((0, start, origin.elapsed().as_secs_f64() - start));
        }
        Ok(out)
    }

    #[cfg(target_arch = "wasm32")]
    fn run_profiled_by_wall_clock(&self, _: &[Dispatch]) -> Result<Vec<(usize, f64, f64)>> {
        Err(Error::Device(format!(
            "{} offers no timestamp queries, which the profiler needs in a browser; profile natively instead",
            self.info.name
        )))
    }

    /// Blocks until the queue is idle (natively; the browser has no blocking wait).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(format!("waiting for the GPU failed: {e}")))
    }

    /// Copies `len` f32 values starting at `offset_elems` back to the host.
    pub async fn read_f32(&self, buffer: &wgpu::Buffer, offset_elems: u64, len: usize) -> Result<Vec<f32>> {
        let mut words = self.read_words(&[(buffer, offset_elems, len)]).await?;
        Ok(words.pop().unwrap_or_default().into_iter().map(f32::from_bits).collect())
    }

    /// Reads several ranges of 32-bit words, each `(buffer, offset in words, length in words)`,
    /// through one staging buffer and one map, so a step's loss and its divergence flags come
    /// home in a single wait. Returns one vector per range, in order. Errors: a failed map.
    pub async fn read_words(&self, ranges: &[(&wgpu::Buffer, u64, usize)]) -> Result<Vec<Vec<u32>>> {
        let total: usize = ranges.iter().map(|r| r.2).sum();
        let staging = self.staging_buffer((total as u64 * 4).max(4));
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut at = 0u64;
        for &(buffer, offset, len) in ranges {
            if len > 0 {
                encoder.copy_buffer_to_buffer(buffer, offset * 4, &staging, at * 4, len as u64 * 4);
            }
            at += len as u64;
        }
        self.queue.submit([encoder.finish()]);
        let bytes = self.map_read(&staging).await?;
        let mut words = bytes.chunks_exact(4).map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")));
        Ok(ranges.iter().map(|r| words.by_ref().take(r.2).collect()).collect())
    }

    /// A buffer the host can map for reading, `bytes` long, to copy results into.
    fn staging_buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("densegpu readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps `staging` once the work submitted before has finished, and returns its bytes. A
    /// `Vec<u8>` promises no alignment, so callers decode values from it rather than cast it.
    async fn map_read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (sender, receiver) = futures_channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| sender.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        receiver.recv().await.map_err(|e| Error::Device(format!("reading back from the GPU failed: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(format!("reading back from the GPU failed: {e}")))?;
        let out = view.to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

/// Dispatches per queue submission in [`Gpu::run_profiled`]: two timestamps each, and a query
/// set holds at most 4,096 (wgpu's `QUERY_SET_MAX_QUERIES`).
pub const PROFILED_PER_SUBMISSION: usize = 2048;

/// A one-shot channel for the map callback. The callback runs during `poll` natively and
/// from the event loop in the browser; either way the receiver resolves once it has run.
fn futures_channel() -> (OneShotSender, OneShotReceiver) {
    let slot = Arc::new(Mutex::new(OneShot::default()));
    (OneShotSender(slot.clone()), OneShotReceiver(slot))
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

#[derive(Default)]
struct OneShot {
    value: Option<MapResult>,
    waker: Option<std::task::Waker>,
}

struct OneShotSender(Arc<Mutex<OneShot>>);
struct OneShotReceiver(Arc<Mutex<OneShot>>);

impl OneShotSender {
    fn send(self, value: MapResult) {
        let mut slot = self.0.lock().unwrap();
        slot.value = Some(value);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

impl OneShotReceiver {
    fn recv(self) -> impl std::future::Future<Output = MapResult> {
        std::future::poll_fn(move |cx| {
            let mut slot = self.0.lock().unwrap();
            match slot.value.take() {
                Some(v) => std::task::Poll::Ready(v),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
    }
}
