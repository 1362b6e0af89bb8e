//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::ElementwiseLaunch;
use crate::executor::Recorder;
use crate::gpu::{grid, shaders, Dispatch, Gpu, Kernel, View, Window};
use crate::memory::shards::Shard;
use crate::ops::flag;

const fn kernel(entry: &'static str) -> Kernel {
    Kernel { shader: &shaders::ELEMENTWISE, entry, buffers: 2 }
}
const RELU_FORWARD: Kernel = kernel("relu_forward");
const RELU_BACKWARD: Kernel = kernel("relu_backward");
const RELU_BACKWARD_INTO: Kernel = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_backward_into", buffers: 3 };
const COPY: Kernel = kernel("copy");
const ADD: Kernel = kernel("add");
const DROPOUT_FORWARD: Kernel = kernel("dropout_forward");
const DROPOUT_BACKWARD: Kernel = kernel("dropout_backward");
const DROPOUT_BACKWARD_IN_PLACE: Kernel = kernel("dropout_backward_in_place");
const FILL: Kernel = kernel("fill");

crate::uniform! {
    /// The parameter block of every kernel in elementwise.wgsl; offsets are in elements.
    pub struct ElementwiseParams for shaders::ELEMENTWISE {
        len: u32,
        /// The input: relu/dropout x, copy/add src, dropout_backward dy.
        x_off: u32,
        /// The output.
        y_off: u32,
        /// relu_backward's and relu_backward_into's dy.
        dy_off: u32,
        /// The dropout seed words.
        seed0: u32,
        seed1: u32,
        /// Dropout drops an element when its hash is below this.
        threshold: u32,
        /// Dropout's 1 / (1 − rate); fill's value.
        scale: f32,
        /// relu_backward_into and dropout_backward add to their output instead of overwriting.
        accumulate: u32,
        /// Dropout over one batch shard: values per channel in the shard (0: unsharded) and in
        /// the whole batch, and the shard's first value within a channel (see
        /// [`DropoutShard`]).
        plane_shard: u32,
        plane_batch: u32,
        plane_first: u32,
    }
}

fn params(len: u32, x_off: u32, y_off: u32, dy_off: u32) -> ElementwiseParams {
    ElementwiseParams { len, x_off, y_off, dy_off, ..Default::default() }
}

/// Elements per invocation (the kernels stride over the whole range, so this only sizes the
/// launch).
const PER_INVOCATION: u32 = 4;

fn invocations(len: u32) -> u64 {
    len.div_ceil(PER_INVOCATION) as u64
}

fn launch(gpu: &Gpu, kernel: &Kernel, params: &ElementwiseParams, x: Window, y: Window) -> Dispatch {
    gpu.dispatch(kernel, params, &[x, y], grid(invocations(params.len), 256))
}

/// y = max(x, 0) over `len` elements.
pub fn relu_forward(gpu: &Gpu, len: u32, x: View, y: View) -> Dispatch {
    launch(gpu, &RELU_FORWARD, &params(len, x.offset, y.offset, 0), x.buffer, y.buffer)
}

/// dx = dy where x > 0, else 0. `dy` and `dx` must live in the same window (they may be the
/// same range: the gradient is masked in place).
pub fn relu_backward(gpu: &Gpu, len: u32, x: View, dy: View, dx: View) -> Dispatch {
    assert!(same_window(dy.buffer, dx.buffer), "relu_backward: dy and dx must share a window");
    launch(gpu, &RELU_BACKWARD, &params(len, x.offset, dx.offset, dy.offset), x.buffer, dx.buffer)
}

/// dx = dy where x > 0, else 0, written or added (`accumulate`) into dx, which may live in
/// any buffer. dx must not overlap x; it may be dy itself (same offset) when not accumulating.
pub fn relu_backward_into(gpu: &Gpu, len: u32, x: View, dy: View, dx: View, accumulate: bool) -> Dispatch {
    if same_window(dy.buffer, dx.buffer) {
        // One window may be bound only once: the in-place kernel reads dy through dx's binding.
        assert!(!accumulate, "relu_backward_into: dy and dx share a window, so dx cannot accumulate");
        return relu_backward(gpu, len, x, dy, dx);
    }
    let words = ElementwiseParams { accumulate: flag(accumulate), ..params(len, x.offset, dx.offset, dy.offset) };
    gpu.dispatch(&RELU_BACKWARD_INTO, &words, &[x.buffer, dx.buffer, dy.buffer], grid(invocations(len), 256))
}

/// dst = src over `len` elements. The ranges must not overlap.
pub fn copy(gpu: &Gpu, len: u32, src: View, dst: View) -> Dispatch {
    launch(gpu, &COPY, &params(len, src.offset, dst.offset, 0), src.buffer, dst.buffer)
}

/// dst += src over `len` elements. The ranges must not overlap.
pub fn add(gpu: &Gpu, len: u32, src: View, dst: View) -> Dispatch {
    launch(gpu, &ADD, &params(len, src.offset, dst.offset, 0), src.buffer, dst.buffer)
}

/// The hash threshold of a drop rate: element i is dropped iff `dropout_hash(seed, i)` is below
/// it, so each element is dropped with probability `rate` (to within 2^-32).
pub fn dropout_threshold(rate: f32) -> u32 {
    assert!((0.0..1.0).contains(&rate), "dropout rate {rate} is outside [0, 1)");
    (rate as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// The factor kept values are multiplied by (PyTorch's inverted dropout).
pub fn dropout_scale(rate: f32) -> f32 {
    1.0 / (1.0 - rate)
}

/// The parameter block of a dropout launch. The host redraws the mask
/// each step by rebuilding these with a new seed and passing them to [`Dispatch::set_params`];
/// a recompute that reuses the forward's seed redraws the identical mask. Conventionally
/// seed = [stream (e.g. the layer's index), step], but any two words will do.
pub fn dropout_params(
    len: u32,
    input_offset: u32,
    output_offset: u32,
    rate: f32,
    seed: [u32; 2],
    accumulate: bool,
) -> ElementwiseParams {
    ElementwiseParams {
        seed0: seed[0],
        seed1: seed[1],
        threshold: dropout_threshold(rate),
        scale: dropout_scale(rate),
        accumulate: flag(accumulate),
        ..params(len, input_offset, output_offset, 0)
    }
}

/// y = x·1/(1 − rate) where the mask of `seed` keeps element i, else 0. y must not overlap x.
pub fn dropout_forward(gpu: &Gpu, len: u32, x: View, y: View, rate: f32, seed: [u32; 2]) -> Dispatch {
    let words = dropout_params(len, x.offset, y.offset, rate, seed, false);
    launch(gpu, &DROPOUT_FORWARD, &words, x.buffer, y.buffer)
}

/// dx = dy·1/(1 − rate) where the mask of `seed` keeps element i, else 0; added to dx if
/// `accumulate`. Use the forward's seed. dx may be dy itself (same offset) when not
/// accumulating, since each element is read and written by one invocation; otherwise the
/// ranges must not overlap.
pub fn dropout_backward(
    gpu: &Gpu,
    len: u32,
    dy: View,
    dx: View,
    rate: f32,
    seed: [u32; 2],
    accumulate: bool,
) -> Dispatch {
    let words = dropout_params(len, dy.offset, dx.offset, rate, seed, accumulate);
    if same_window(dy.buffer, dx.buffer) {
        assert!(dy.offset == dx.offset && !accumulate, "dropout_backward: dx may share dy's window only as dy itself");
        return launch(gpu, &DROPOUT_BACKWARD_IN_PLACE, &words, gpu.unused_binding(0), dx.buffer);
    }
    launch(gpu, &DROPOUT_BACKWARD, &words, dy.buffer, dx.buffer)
}

/// y = value over `len` elements.
pub fn fill(gpu: &Gpu, len: u32, y: View, value: f32) -> Dispatch {
    let words = ElementwiseParams { scale: value, ..params(len, y.offset, y.offset, 0) };
    launch(gpu, &FILL, &words, gpu.unused_binding(0), y.buffer)
}

fn same_window(a: Window, b: Window) -> bool {
    a.buffer == b.buffer && a.start == b.start
}

/// Where a dropout launch over one batch shard lies in the whole batch, so that its mask is
/// the whole batch's: element i of the shard is element
/// `(i / plane_shard)·plane_batch + plane_first + i mod plane_shard` of the batch's tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropoutShard {
    /// Values per channel in the shard, n_k·H·W; 0 for an unsharded launch.
    pub plane_shard: u32,
    /// Values per channel in the whole batch, N·H·W.
    pub plane_batch: u32,
    /// The shard's first value within a channel, first image·H·W.
    pub plane_first: u32,
}

impl DropoutShard {
    /// The placement of `shard` for a tensor of `plane` = N·H·W values per channel.
    fn of(shard: Shard, plane: u32) -> DropoutShard {
        if shard.images == shard.total {
            return DropoutShard::default();
        }
        let image = plane / shard.total;
        DropoutShard { plane_shard: image * shard.images, plane_batch: plane, plane_first: image * shard.first }
    }

    fn apply(self, p: ElementwiseParams) -> ElementwiseParams {
        ElementwiseParams {
            plane_shard: self.plane_shard,
            plane_batch: self.plane_batch,
            plane_first: self.plane_first,
            ..p
        }
    }
}

/// Records one elementwise launch of a schedule. Dropout's parameters are rewritten every
/// step with the step in the seed, so each step draws a new mask.
pub(crate) fn record(launch: &ElementwiseLaunch, r: &mut Recorder) {
    // Every elementwise launch is over batched tensors: once per shard, over its part.
    r.each_shard(|r, shard| record_shard(launch, r, shard));
}

fn record_shard(launch: &ElementwiseLaunch, r: &mut Recorder, shard: Shard) {
    let gpu = r.gpu;
    let d = match *launch {
        ElementwiseLaunch::ReluForward { len, x, y } => relu_forward(gpu, shard.part(len), r.view(x), r.view(y)),
        ElementwiseLaunch::ReluBackward { len, x, dy, dx, accumulate } => {
            relu_backward_into(gpu, shard.part(len), r.view(x), r.view(dy), r.view(dx), accumulate)
        }
        ElementwiseLaunch::DropoutForward { len, plane, rate, key, x, y } => {
            let (len, place) = (shard.part(len), DropoutShard::of(shard, plane));
            let (x, y) = (r.view(x), r.view(y));
            let (from, to) = (x.offset, y.offset);
            let d = dropout_forward(gpu, len, x, y, rate, [key, 0]);
            return r.push_per_step(d, move |gpu, d, s| {
                d.set_params(gpu, &place.apply(dropout_params(len, from, to, rate, [key, s.step as u32], false)))
            });
        }
        ElementwiseLaunch::DropoutBackward { len, plane, rate, key, dy, dx, accumulate } => {
            let (len, place) = (shard.part(len), DropoutShard::of(shard, plane));
            let (dy, dx) = (r.view(dy), r.view(dx));
            let (from, to) = (dy.offset, dx.offset);
            let d = dropout_backward(gpu, len, dy, dx, rate, [key, 0], accumulate);
            return r.push_per_step(d, move |gpu, d, s| {
                let words = dropout_params(len, from, to, rate, [key, s.step as u32], accumulate);
                d.set_params(gpu, &place.apply(words))
            });
        }
        ElementwiseLaunch::Copy { len, x, y } => copy(gpu, shard.part(len), r.view(x), r.view(y)),
        ElementwiseLaunch::Add { len, x, y } => add(gpu, shard.part(len), r.view(x), r.view(y)),
        ElementwiseLaunch::Fill { len, y, value } => fill(gpu, shard.part(len), r.view(y), value),
    };
    r.push(d);
}
