//! Pooling on channel-major (C, N, H, W) activations: the transitions' 2x2 average pool, the
//! ImageNet stem's 3x3 stride-2 pad-1 max pool, and the head's global average pool, each with
//! its backward. Output shapes follow PyTorch (floor mode, padding never selected).
//!
//! Parameter words of every pool kernel, in order: `planes` (= C·N), `h`, `w`, `oh`, `ow`,
//! `accumulate`, `off1`, `off2`, `off3`, where `offN` is the element offset of the tensor at
//! binding N (see each function for which tensor that is).

use super::{flag, grid, shaders, Dispatch, Gpu, Kernel, View};

const AVG_FORWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "avg_pool_forward", buffers: 2 };
const AVG_BACKWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "avg_pool_backward", buffers: 2 };
const MAX_FORWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "max_pool_forward", buffers: 2 };
const MAX_BACKWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "max_pool_backward", buffers: 3 };
const GLOBAL_FORWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "global_avg_pool_forward", buffers: 2 };
const GLOBAL_BACKWARD: Kernel = Kernel { shader: &shaders::POOL, entry: "global_avg_pool_backward", buffers: 2 };

/// The shape of a pool's input, (C, N, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub c: u32,
    pub n: u32,
    pub h: u32,
    pub w: u32,
}

impl PoolShape {
    pub fn new(c: u32, n: u32, h: u32, w: u32) -> Self {
        PoolShape { c, n, h, w }
    }
    /// Elements of the input.
    pub fn len(&self) -> usize {
        self.planes() as usize * (self.h * self.w) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Independent H x W planes, C·N.
    pub fn planes(&self) -> u32 {
        self.c * self.n
    }
    /// Output (height, width) of the 2x2 stride-2 average pool: floor(h/2), floor(w/2).
    pub fn avg_out(&self) -> (u32, u32) {
        (self.h / 2, self.w / 2)
    }
    /// Output (height, width) of the 3x3 stride-2 pad-1 max pool: floor((h − 1)/2) + 1.
    pub fn max_out(&self) -> (u32, u32) {
        (self.h.saturating_sub(1) / 2 + 1, self.w.saturating_sub(1) / 2 + 1)
    }
    fn words(&self, (oh, ow): (u32, u32), accumulate: bool, offsets: [u32; 3]) -> [u32; 9] {
        let [o1, o2, o3] = offsets;
        [self.planes(), self.h, self.w, oh, ow, flag(accumulate), o1, o2, o3]
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
