//! The adapter's own ceiling, measured through WGSL (`shaders/peak.wgsl`): the bandwidth of a
//! copy kernel and the rate of a kernel of independent fused multiply-adds. The step
//! profiler's table divides each op family's achieved rates by these (a roofline, see
//! [`crate::profile`]), on lavapipe, in a browser and on any GPU alike; `bench_ops --peak`
//! prints them.

use crate::error::Result;
use crate::gpu::{grid, shaders, Gpu, Kernel, View};
use crate::profile::Peak;

crate::uniform! {
    /// The parameter block of peak.wgsl.
    pub struct PeakParams for shaders::PEAK {
        len: u32,
        rounds: u32,
        scale: f32,
        pad: u32,
    }
}

const COPY: Kernel = Kernel { shader: &shaders::PEAK, entry: "copy_vec4", buffers: 2 };
const FMA: Kernel = Kernel { shader: &shaders::PEAK, entry: "fma_chains", buffers: 2 };

/// Bytes the copy moves each way: 64 MiB, past every CPU's last-level cache and half the
/// 128 MiB storage binding WebGPU guarantees.
pub const COPY_BYTES: u64 = 64 << 20;

/// Invocations of the FMA kernel (256 workgroups of 256: enough to fill any GPU), and loop
/// trips each (8 vec4 fmas, 64 FLOPs, a trip).
const FMA_INVOCATIONS: u32 = 65_536;
const FMA_ROUNDS: u32 = 512;

/// Timed launches of each kernel after an untimed warm-up; the fastest counts.
const LAUNCHES: usize = 3;

/// Measures `gpu`'s copy bandwidth (bytes read plus written, per second) and FMA rate
/// (FLOPs per second, an fma being 2), each the fastest of [`LAUNCHES`] launches after a
/// warm-up, timed as the autotune times kernels ([`crate::tune::clock`]). Takes well under a
/// second on a GPU and a few seconds on lavapipe. Errors: a device error, or an adapter whose
/// storage bindings are smaller than [`COPY_BYTES`].
pub async fn measure(gpu: &Gpu) -> Result<Peak> {
    let src = gpu.storage_buffer("peak source", COPY_BYTES).await?;
    let dst = gpu.storage_buffer("peak destination", COPY_BYTES).await?;
    let (s, d) = (View::new(&src, 0), View::new(&dst, 0));
    let vec4s = (COPY_BYTES / 16) as u32;
    let copy = gpu.dispatch(
        &COPY,
        &PeakParams { len: vec4s, rounds: 0, scale: 0.0, pad: 0 },
        &[s.buffer, d.buffer],
        // A few vec4s per invocation, as the element-wise kernels take.
        grid(vec4s as u64 / 8, 256),
    );
    let fma = gpu.dispatch(
        &FMA,
        &PeakParams { len: FMA_INVOCATIONS, rounds: FMA_ROUNDS, scale: 0.999, pad: 0 },
        &[s.buffer, d.buffer],
        grid(FMA_INVOCATIONS as u64, 256),
    );
    let copy_seconds = fastest(gpu, &copy, &dst).await?;
    let fma_seconds = fastest(gpu, &fma, &dst).await?;
    let flops = FMA_INVOCATIONS as f64 * FMA_ROUNDS as f64 * 64.0;
    Ok(Peak { bytes_per_second: 2.0 * COPY_BYTES as f64 / copy_seconds, flops_per_second: flops / fma_seconds })
}

/// The fastest of [`LAUNCHES`] timed runs of `dispatch`, after an untimed one; `any` is a
/// buffer a browser reads back to wait for the device.
async fn fastest(gpu: &Gpu, dispatch: &crate::gpu::Dispatch, any: &wgpu::Buffer) -> Result<f64> {
    let dispatches = std::slice::from_ref(dispatch);
    crate::tune::launch_seconds(gpu, dispatches, any).await?;
    let mut best = f64::INFINITY;
    for _ in 0..LAUNCHES {
        best = best.min(crate::tune::launch_seconds(gpu, dispatches, any).await?);
    }
    Ok(best)
}
