//! The host-side ceremony around one kernel launch: a pipeline, a bind group holding the
//! kernel's uniform parameters and its buffers, and a workgroup grid.

use super::shaders::Shader;
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

/// A tensor's place: a storage buffer and the element offset of the tensor inside it.
/// Kernels take element offsets as parameters instead of binding sub-ranges, because
/// WebGPU wants binding offsets aligned to 256 bytes and a channel slice rarely is.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u32,
}

impl<'a> View<'a> {
    pub fn new(buffer: &'a wgpu::Buffer, offset: u32) -> Self {
        View { buffer, offset }
    }
    pub fn at(self, extra: u32) -> Self {
        View { buffer: self.buffer, offset: self.offset + extra }
    }
}

/// A recorded kernel launch, ready to be encoded any number of times.
pub struct Dispatch {
    pub label: &'static str,
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// Rewrites the parameter words of a recorded launch (a new learning rate, a new dropout
    /// step) without rebuilding it. Takes effect for work submitted after this call.
    pub fn set_params(&self, gpu: &Gpu, params: &[u32]) {
        let mut words = params.to_vec();
        words.resize(params.len().next_multiple_of(4).max(4), 0);
        assert_eq!(words.len() as u64 * 4, self.uniform.size(), "{}: parameter count changed", self.label);
        gpu.queue.write_buffer(&self.uniform, 0, bytemuck::cast_slice(&words));
    }

    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
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
    /// Builds a launch of `kernel` with its parameter words (u32 or f32 bits, in the order of
    /// the shader's `Params` struct) and buffers bound to bindings 1, 2, ...
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Dispatch {
        assert_eq!(buffers.len() as u32, kernel.buffers, "kernel {} binds {} buffers", kernel.entry, kernel.buffers);
        let pipeline = self.pipeline(kernel);
        let layout = self.binding_layout(kernel.buffers);
        // Uniform blocks are sized in 16-byte steps.
        let mut words = params.to_vec();
        words.resize(params.len().next_multiple_of(4).max(4), 0);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(kernel.entry),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() }),
        );
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &layout.bind_group,
            entries: &entries,
        });
        Dispatch { label: kernel.entry, pipeline, bind_group, uniform, workgroups }
    }
}
