//! The host-side ceremony around one kernel launch: a pipeline, a bind group holding the
//! kernel's uniform parameters and its buffers, and a workgroup grid.

use super::shaders::Shader;
use super::uniform::Uniform;
use super::Gpu;
use wgpu::util::DeviceExt;

/// One entry point of one WGSL file, with the number of storage buffers it binds
/// (bindings 1..=buffers; binding 0 is the uniform parameter block).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub buffers: u32,
}

/// The part of a storage buffer one binding covers: `size` bytes from `start`, which is a
/// multiple of WebGPU's 256-byte offset alignment.
///
/// WebGPU rejects a dispatch in which a writable binding overlaps any other binding of the
/// same buffer, and every binding here is writable. So each tensor is bound through the
/// window of the arena value (or parameter group) that holds it, and the windows of one
/// launch must be disjoint; [`Gpu::dispatch`] checks that on every platform, natively too.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub start: u64,
    pub size: u64,
}

impl Window<'_> {
    fn overlaps(&self, other: &Window) -> bool {
        self.buffer == other.buffer && self.start < other.start + other.size && other.start < self.start + self.size
    }
}

/// A tensor's place: a window of a storage buffer and the tensor's element offset inside
/// that window. Kernels take element offsets as parameters instead of binding each tensor's
/// own range, because WebGPU wants binding offsets aligned to 256 bytes and a channel slice
/// rarely is.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: Window<'a>,
    pub offset: u32,
}

impl<'a> View<'a> {
    /// A tensor at element `offset` of a whole buffer.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u32) -> Self {
        View { buffer: Window { buffer, start: 0, size: buffer.size() }, offset }
    }
    /// A tensor at element `offset` of the window of `size` bytes from byte `start`.
    pub fn in_window(buffer: &'a wgpu::Buffer, start: u64, size: u64, offset: u32) -> Self {
        View { buffer: Window { buffer, start, size }, offset }
    }
    /// The tensor's element offset from the start of the whole buffer (for reads and writes
    /// outside kernels).
    pub fn buffer_offset(&self) -> u64 {
        self.buffer.start / 4 + self.offset as u64
    }
    pub fn at(self, extra: u32) -> Self {
        View { buffer: self.buffer, offset: self.offset + extra }
    }
}

/// A recorded kernel launch, ready to be encoded any number of times.
pub struct Dispatch {
    /// The kernel's entry point.
    pub label: &'static str,
    /// The kernel's module ([`Shader::name`]): for a conv, the candidate it belongs to.
    pub module: &'static str,
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// Rewrites the parameters of a recorded launch (a new learning rate, a new dropout step)
    /// without rebuilding it. Takes effect for work submitted after this call.
    pub fn set_params<P: Uniform>(&self, gpu: &Gpu, params: &P) {
        let bytes = params.padded_bytes();
        assert_eq!(bytes.len() as u64, self.uniform.size(), "{}: the parameter block changed size", self.label);
        gpu.queue.write_buffer(&self.uniform, 0, &bytes);
    }

    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, grid: Grid) {
        if self.workgroups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = match grid {
            Grid::Whole => self.workgroups,
            Grid::OneWorkgroup => [1, 1, 1],
        };
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Which workgroups of a recorded launch run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// All of them: the launch as recorded.
    Whole,
    /// The first workgroup only: the kernel computes part of its output, and a driver that
    /// compiles a pipeline at its first launch (lavapipe, browsers) compiles it, at a
    /// fraction of a launch's cost. The autotune's warm-up (see [`crate::tune::Launch`]).
    /// Every kernel bounds its indices by its parameters, never by the grid, so a partial
    /// grid is safe.
    OneWorkgroup,
}

/// Workgroups for `threads` invocations of `workgroup_size` each. Past 65,535 groups the
/// grid folds into a second dimension; shaders recover the flat index with `flat_id`.
pub fn grid(threads: u64, workgroup_size: u32) -> [u32; 3] {
    let groups = threads.div_ceil(workgroup_size as u64);
    if groups <= 65_535 {
        [groups as u32, 1, 1]
    } else {
        [65_535, groups.div_ceil(65_535) as u32, 1]
    }
}

impl Gpu {
    /// Builds a launch of `kernel` with its parameter block and buffers bound to bindings 1,
    /// 2, ... Panics if the block mirrors another shader's `Params` than the kernel's, or if
    /// two bindings overlap (which WebGPU forbids for writable storage).
    pub fn dispatch<P: Uniform>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[Window],
        workgroups: [u32; 3],
    ) -> Dispatch {
        assert!(
            std::ptr::eq(kernel.shader.params_shader(), P::SHADER),
            "kernel {} of {} given the parameter block of {}",
            kernel.entry,
            kernel.shader.name,
            P::SHADER.name
        );
        assert_eq!(buffers.len() as u32, kernel.buffers, "kernel {} binds {} buffers", kernel.entry, kernel.buffers);
        for (i, a) in buffers.iter().enumerate() {
            if let Some(j) = buffers[i + 1..].iter().position(|b| a.overlaps(b)) {
                panic!(
                    "kernel {}: bindings {} and {} overlap in one buffer, which WebGPU forbids for writable \
                     storage; give each tensor its own window",
                    kernel.entry,
                    i + 1,
                    i + j + 2
                );
            }
        }
        let pipeline = self.pipeline(kernel);
        let layout = self.binding_layout(kernel.buffers);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(kernel.entry),
            contents: &params.padded_bytes(),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(buffers.iter().enumerate().map(|(i, w)| wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: w.buffer,
                offset: w.start,
                size: std::num::NonZeroU64::new(w.size),
            }),
        }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &layout.bind_group,
            entries: &entries,
        });
        Dispatch { label: kernel.entry, module: kernel.shader.name, pipeline, bind_group, uniform, workgroups }
    }
}
