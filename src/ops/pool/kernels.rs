//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::PoolLaunch;
use super::PoolShape;
use crate::executor::Recorder;
use crate::gpu::{grid, shaders, Dispatch, Gpu, Kernel, View};
use crate::ops::flag;

const AVG_FORWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "avg_pool_forward", buffers: 2 };
const AVG_BACKWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "avg_pool_backward", buffers: 2 };
const MAX_FORWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "max_pool_forward", buffers: 2 };
const MAX_BACKWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "max_pool_backward", buffers: 3 };
const GLOBAL_FORWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "global_avg_pool_forward", buffers: 2 };
const GLOBAL_BACKWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "global_avg_pool_backward", buffers: 2 };

impl PoolShape {
    fn words(&self, (oh, ow): (u32, u32), accumulate: bool, offsets: [u32; 3]) -> PoolParams {
        let [off1, off2, off3] = offsets;
        let (planes, h, w) = (self.planes(), self.h, self.w);
        PoolParams { planes, h, w, oh, ow, accumulate: flag(accumulate), off1, off2, off3 }
    }
    fn out_threads(&self, (oh, ow): (u32, u32)) -> u64 {
        self.planes() as u64 * (oh * ow) as u64
    }
}

/// y (C, N, h/2, w/2) = mean of each 2x2 block of x.
pub fn avg_pool_forward(gpu: &Gpu, s: PoolShape, x: View, y: View) -> Dispatch {
    let out = s.avg_out();
    let words = s.words(out, false, [x.offset, y.offset, 0]);
    gpu.dispatch(&AVG_FORWARD, &words, &[x.buffer, y.buffer], grid(s.out_threads(out), 256))
}

/// dx (C, N, H, W) from dy (C, N, h/2, w/2); a dropped odd row or column gets gradient 0.
pub fn avg_pool_backward(gpu: &Gpu, s: PoolShape, dy: View, dx: View, accumulate: bool) -> Dispatch {
    let words = s.words(s.avg_out(), accumulate, [dy.offset, dx.offset, 0]);
    gpu.dispatch(&AVG_BACKWARD, &words, &[dy.buffer, dx.buffer], grid(s.len() as u64, 256))
}

/// y (C, N, oh, ow) = max over each 3x3 stride-2 window of x, padding 1 (never selected).
pub fn max_pool_forward(gpu: &Gpu, s: PoolShape, x: View, y: View) -> Dispatch {
    let out = s.max_out();
    let words = s.words(out, false, [x.offset, y.offset, 0]);
    gpu.dispatch(&MAX_FORWARD, &words, &[x.buffer, y.buffer], grid(s.out_threads(out), 256))
}

/// dx from dy, routing each window's gradient to its first maximum in row-major order (what
/// PyTorch does on ties). The argmax is recomputed from `x`, so `x` must be the forward input.
pub fn max_pool_backward(gpu: &Gpu, s: PoolShape, x: View, dy: View, dx: View, accumulate: bool) -> Dispatch {
    let words = s.words(s.max_out(), accumulate, [x.offset, dx.offset, dy.offset]);
    gpu.dispatch(&MAX_BACKWARD, &words, &[x.buffer, dx.buffer, dy.buffer], grid(s.len() as u64, 256))
}

/// y (C, N) = mean of each H x W plane of x.
pub fn global_avg_pool_forward(gpu: &Gpu, s: PoolShape, x: View, y: View) -> Dispatch {
    let words = s.words((1, 1), false, [x.offset, y.offset, 0]);
    gpu.dispatch(&GLOBAL_FORWARD, &words, &[x.buffer, y.buffer], grid(s.planes() as u64, 256))
}

/// dx (C, N, H, W) = dy (C, N) / (H·W), broadcast over each plane.
pub fn global_avg_pool_backward(gpu: &Gpu, s: PoolShape, dy: View, dx: View, accumulate: bool) -> Dispatch {
    let words = s.words((1, 1), accumulate, [dy.offset, dx.offset, 0]);
    gpu.dispatch(&GLOBAL_BACKWARD, &words, &[dy.buffer, dx.buffer], grid(s.len() as u64, 256))
}

crate::uniform! {
    /// The parameter block of every kernel in pool.wgsl: `planes` = C·N, input h x w, output
    /// oh x ow, and `offN` the element offset of the tensor at binding N.
    pub struct PoolParams for shaders::POOL {
        planes: u32,
        h: u32,
        w: u32,
        oh: u32,
        ow: u32,
        accumulate: u32,
        off1: u32,
        off2: u32,
        off3: u32,
    }
}

/// Records one pool launch of a schedule.
pub(crate) fn record(launch: &PoolLaunch, r: &mut Recorder) {
    // Pools act on each image alone: once per batch shard, over its images.
    r.each_shard(|r, shard| record_shard(&launch.with_batch(shard.images), r));
}

fn record_shard(launch: &PoolLaunch, r: &mut Recorder) {
    let gpu = r.gpu;
    let d = match *launch {
        PoolLaunch::AvgForward { shape, x, y } => avg_pool_forward(gpu, shape, r.view(x), r.view(y)),
        PoolLaunch::AvgBackward { shape, dy, dx, accumulate } => {
            avg_pool_backward(gpu, shape, r.view(dy), r.view(dx), accumulate)
        }
        PoolLaunch::MaxForward { shape, x, y } => max_pool_forward(gpu, shape, r.view(x), r.view(y)),
        PoolLaunch::MaxBackward { shape, x, dy, dx, accumulate } => {
            max_pool_backward(gpu, shape, r.view(x), r.view(dy), r.view(dx), accumulate)
        }
        PoolLaunch::GlobalAvgForward { shape, x, y } => global_avg_pool_forward(gpu, shape, r.view(x), r.view(y)),
        PoolLaunch::GlobalAvgBackward { shape, dy, dx, accumulate } => {
            global_avg_pool_backward(gpu, shape, r.view(dy), r.view(dx), accumulate)
        }
    };
    r.push(d);
}
