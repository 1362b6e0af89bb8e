//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::LinearLaunch;
use super::LinearShape;
use crate::executor::Recorder;
use crate::gpu::{grid, shaders, Dispatch, Gpu, Kernel, View};
use crate::memory::shards::Shard;
use crate::ops::flag;

const FORWARD: Kernel = Kernel { shader: &shaders::LINEAR, entry: "linear_forward", buffers: 4 };
const BACKWARD_INPUT: Kernel = Kernel { shader: &shaders::LINEAR, entry: "linear_backward_input", buffers: 3 };
const BACKWARD_WEIGHT: Kernel = Kernel { shader: &shaders::LINEAR, entry: "linear_backward_weight", buffers: 3 };
const BACKWARD_BIAS: Kernel = Kernel { shader: &shaders::LINEAR, entry: "linear_backward_bias", buffers: 2 };

impl LinearShape {
    fn words(&self, accumulate: bool, offsets: [u32; 4]) -> LinearParams {
        let [off1, off2, off3, off4] = offsets;
        let (n, in_features, out_features) = (self.n, self.in_features, self.out_features);
        LinearParams { n, in_features, out_features, accumulate: flag(accumulate), off1, off2, off3, off4 }
    }
}

crate::uniform! {
    /// The parameter block of every kernel in linear.wgsl.
    pub struct LinearParams for shaders::LINEAR {
        n: u32,
        in_features: u32,
        out_features: u32,
        accumulate: u32,
        off1: u32,
        off2: u32,
        off3: u32,
        off4: u32,
    }
}

/// y (out, N) = w (out, in) · x (in, N) + b (out), with `params` holding w followed by b, as
/// the classifier's parameter group does. Binding 3 is unused.
pub fn forward(gpu: &Gpu, s: LinearShape, x: View, params: View, y: View) -> Dispatch {
    let words = s.words(false, [x.offset, params.offset, 0, y.offset]);
    let threads = s.out_features as u64 * s.n as u64;
    gpu.dispatch(&FORWARD, &words, &[x.buffer, params.buffer, gpu.unused_binding(0), y.buffer], grid(threads, 256))
}

/// dx (in, N) = wᵀ · dy; overwrites or adds to dx.
pub fn backward_input(gpu: &Gpu, s: LinearShape, w: View, dy: View, dx: View, accumulate: bool) -> Dispatch {
    let words = s.words(accumulate, [dy.offset, w.offset, dx.offset, 0]);
    let threads = s.in_features as u64 * s.n as u64;
    gpu.dispatch(&BACKWARD_INPUT, &words, &[dy.buffer, w.buffer, dx.buffer], grid(threads, 256))
}

/// dw (out, in) = dy · xᵀ; overwrites or adds to dw.
pub fn backward_weight(gpu: &Gpu, s: LinearShape, x: View, dy: View, dw: View, accumulate: bool) -> Dispatch {
    let words = s.words(accumulate, [dy.offset, x.offset, dw.offset, 0]);
    let threads = s.out_features as u64 * s.in_features as u64;
    gpu.dispatch(&BACKWARD_WEIGHT, &words, &[dy.buffer, x.buffer, dw.buffer], grid(threads, 256))
}

/// db (out) = Σ over the batch of dy; overwrites or adds to db.
pub fn backward_bias(gpu: &Gpu, s: LinearShape, dy: View, db: View, accumulate: bool) -> Dispatch {
    let words = s.words(accumulate, [dy.offset, db.offset, 0, 0]);
    gpu.dispatch(&BACKWARD_BIAS, &words, &[dy.buffer, db.buffer], grid(s.out_features as u64, 256))
}

/// Records one linear launch of a schedule; the parameter gradients are two dispatches, the
/// weight's and the bias's, which follows the weight in `grad_params`.
pub(crate) fn record(launch: &LinearLaunch, r: &mut Recorder) {
    r.each_shard(|r, shard| record_shard(&launch.with_batch(shard.images), r, shard));
}

fn record_shard(launch: &LinearLaunch, r: &mut Recorder, shard: Shard) {
    let gpu = r.gpu;
    let d = match *launch {
        LinearLaunch::Forward { shape, x, params, y } => forward(gpu, shape, r.view(x), r.view(params), r.view(y)),
        LinearLaunch::BackwardParams { shape, x, dy, grad_params } => {
            // Sums over the batch: the shards after the first add to the gradients.
            let accumulate = shard.index > 0;
            let dw = r.view(grad_params);
            let db = dw.at(shape.out_features * shape.in_features);
            r.push(backward_weight(gpu, shape, r.view(x), r.view(dy), dw, accumulate));
            backward_bias(gpu, shape, r.view(dy), db, accumulate)
        }
        LinearLaunch::BackwardInput { shape, dy, params, dx, accumulate } => {
            backward_input(gpu, shape, r.view(params), r.view(dy), r.view(dx), accumulate)
        }
    };
    r.push(d);
}
