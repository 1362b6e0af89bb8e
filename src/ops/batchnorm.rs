//! Batch norm (PyTorch `BatchNorm2d` semantics) with an optional fused ReLU, forward and
//! backward, over channel-major (C, N, H, W) activations.
//!
//! Each batch norm owns four small tensors of 2C contiguous floats:
//! - `affine` = [gamma(C), beta(C)] and its gradient `grad_affine` = [dgamma(C), dbeta(C)];
//! - `running` = [running_mean(C), running_var(C)], updated once per training step;
//! - `stats` = [mean(C), invstd(C)]: the statistics the normalisation uses. Training writes the
//!   batch statistics there ([`batchnorm_train_stats`]), evaluation derives them from the
//!   running ones ([`batchnorm_eval_stats`]); [`batchnorm_apply`] and the backward kernels only
//!   read them. A recompute in backward therefore reuses the forward's statistics and never
//!   touches the running ones a second time.
//!
//! The backward kernels assume training mode (mean and variance are functions of x) and
//! recompute the ReLU mask from x, stats and affine, so the BN output need not be stored.
//!
//! Aliasing: the input `x` may be a channel prefix of a larger buffer (that is only an offset).
//! No output range may overlap any input range of the same launch.

use super::{flag, grid, shaders, Dispatch, Gpu, Kernel, View, Window};

/// Channels, images and pixels per image; each channel holds `m() = n * hw` values.
///
/// A launch may cover a slice of a batch norm's channels: then `c` is the slice's width,
/// `first` its first channel and `total` the batch norm's channel count, which is what
/// its stats, affine, grad_affine and running tensors hold. The activation views (x, dy,
/// y or dx) are the slice's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchNormShape {
    pub c: u32,
    pub n: u32,
    pub hw: u32,
    pub first: u32,
    pub total: u32,
}

impl BatchNormShape {
    /// All `c` channels of a batch norm.
    pub fn new(c: u32, n: u32, hw: u32) -> Self {
        BatchNormShape { c, n, hw, first: 0, total: c }
    }
    /// Channels `[first, first + c)` of this (whole) batch norm.
    pub fn slice(self, first: u32, c: u32) -> Self {
        assert!(first + c <= self.total, "batch norm slice {first}+{c} of {} channels", self.total);
        BatchNormShape { c, first, ..self }
    }
    pub fn m(&self) -> u32 {
        self.n * self.hw
    }
    pub fn len(&self) -> u32 {
        self.c * self.m()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BatchNormShape {
    /// The most roundings a value passes through in this shape's per-channel sums (the
    /// statistics and the backward's dgamma and dbeta): each of the 256 invocations adds
    /// ceil(M / 256) values in order, then `reduce_pair` adds 16 partials and 16 totals. A sum
    /// of depth `d` lies within Higham's `γ_d · Σ|terms|` of the exact one ("Accuracy and
    /// Stability of Numerical Algorithms", 2nd ed., §3.1). Follows shaders/batchnorm.wgsl.
    pub fn sum_rounding_depth(&self) -> u64 {
        (self.m() as u64).div_ceil(WG as u64) + 32
    }
}

const fn kernel(entry: &'static str) -> Kernel {
    Kernel { shader: &shaders::BATCHNORM, entry, buffers: 7 }
}
const TRAIN_STATS: Kernel = kernel("train_stats");
const EVAL_STATS: Kernel = kernel("eval_stats");
const APPLY: Kernel = kernel("apply");
const BACKWARD_AFFINE: Kernel = kernel("backward_affine");
const BACKWARD_INPUT: Kernel = kernel("backward_input");
const BACKWARD: Kernel = kernel("backward");

/// Invocations per workgroup of every kernel here but `eval_stats`.
const WG: u32 = 256;
/// Values each invocation of the elementwise kernels handles (by striding), so that a launch
/// is not dominated by per-workgroup overhead on CPU drivers.
const PER_INVOCATION: u32 = 4;

/// The launch's tensors by binding role (bindings 1..=7 of `batchnorm.wgsl`). Every kernel
/// binds all seven; roles a launch does not use get a window of their own that aliases nothing.
#[derive(Default)]
struct Launch<'a> {
    shape: BatchNormShape,
    x: Option<View<'a>>,
    dy: Option<View<'a>>,
    out: Option<View<'a>>,
    stats: Option<View<'a>>,
    affine: Option<View<'a>>,
    grad: Option<View<'a>>,
    running: Option<View<'a>>,
    momentum: f32,
    eps: f32,
    relu: bool,
    accumulate_affine: bool,
    accumulate_out: bool,
    in_place: bool,
}

impl Launch<'_> {
    fn dispatch(&self, gpu: &Gpu, kernel: &Kernel, workgroups: [u32; 3]) -> Dispatch {
        let roles = [self.x, self.dy, self.out, self.stats, self.affine, self.grad, self.running];
        let buffers: Vec<Window> =
            roles.iter().enumerate().map(|(i, r)| r.map_or_else(|| gpu.unused_binding(i), |v| v.buffer)).collect();
        let s = self.shape;
        let off = |r: Option<View>| r.map_or(0, |v| v.offset);
        // The per-channel tensors are indexed from the slice's first channel.
        let channel_off = |r: Option<View>| r.map_or(0, |v| v.offset + s.first);
        let params = [
            s.c,
            s.m(),
            off(self.x),
            off(self.dy),
            off(self.out),
            channel_off(self.stats),
            channel_off(self.affine),
            channel_off(self.grad),
            channel_off(self.running),
            self.momentum.to_bits(),
            self.eps.to_bits(),
            flag(self.relu),
            flag(self.accumulate_affine),
            flag(self.accumulate_out),
            s.total,
            flag(self.in_place),
        ];
        gpu.dispatch(kernel, &params, &buffers, workgroups)
    }
}

/// One workgroup per channel.
fn per_channel(s: BatchNormShape) -> [u32; 3] {
    assert!(s.c <= 65_535, "batch norm over {} channels: at most 65,535 are supported", s.c);
    [s.c, 1, 1]
}

/// x strides over a channel's values, y picks the channel.
fn elementwise(s: BatchNormShape) -> [u32; 3] {
    assert!(s.c <= 65_535, "batch norm over {} channels: at most 65,535 are supported", s.c);
    let groups = s.m().div_ceil(WG * PER_INVOCATION).clamp(1, 65_535);
    [groups, s.c, 1]
}

/// Training-mode statistics of a batch: per channel, the mean and the biased variance, written
/// as `stats` = [mean, 1/sqrt(var + eps)]; and PyTorch's running update,
/// running_mean ← (1 − momentum)·running_mean + momentum·mean and
/// running_var ← (1 − momentum)·running_var + momentum·var·M/(M − 1).
/// Run it once per step: a recompute calls only [`batchnorm_apply`].
pub fn batchnorm_train_stats(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    stats: View,
    running: View,
    momentum: f32,
    eps: f32,
) -> Dispatch {
    assert!(s.m() >= 2, "training-mode batch norm needs at least 2 values per channel, got {}", s.m());
    let launch = Launch {
        shape: s,
        x: Some(x),
        stats: Some(stats),
        running: Some(running),
        momentum,
        eps,
        ..Default::default()
    };
    launch.dispatch(gpu, &TRAIN_STATS, per_channel(s))
}

/// Evaluation-mode statistics: `stats` = [running_mean, 1/sqrt(running_var + eps)], so that
/// [`batchnorm_apply`] serves both modes.
pub fn batchnorm_eval_stats(gpu: &Gpu, c: u32, running: View, stats: View, eps: f32) -> Dispatch {
    let shape = BatchNormShape::new(c, 0, 0);
    let launch = Launch { shape, stats: Some(stats), running: Some(running), eps, ..Default::default() };
    launch.dispatch(gpu, &EVAL_STATS, grid(c as u64, 64))
}

/// y = gamma·(x − mean)·invstd + beta, then max(·, 0) if `relu`. Overwrites y. Used by the
/// forward pass and by the recompute in backward.
pub fn batchnorm_apply(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    stats: View,
    affine: View,
    y: View,
    relu: bool,
) -> Dispatch {
    let launch = Launch {
        shape: s,
        x: Some(x),
        out: Some(y),
        stats: Some(stats),
        affine: Some(affine),
        relu,
        ..Default::default()
    };
    launch.dispatch(gpu, &APPLY, elementwise(s))
}

/// The whole training-mode backward in one launch (one workgroup per channel): with
/// dy' = dy masked by the fused ReLU (when `relu`) and xhat = (x − mean)·invstd,
/// dgamma = Σ dy'·xhat, dbeta = Σ dy', dx = gamma·invstd/M·(M·dy' − dbeta − xhat·dgamma).
/// `accumulate_affine` and `accumulate_dx` choose independently between overwriting and
/// adding to grad_affine and dx: dx uses this batch's own sums whatever grad_affine held.
/// On lavapipe the split pair ([`batchnorm_backward_affine`] then
/// [`batchnorm_backward_input`]) measured 1.5-2x faster than this launch (one workgroup per
/// channel leaves dx on a coarse grid), so prefer the pair unless grad_affine accumulates.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    dy: View,
    stats: View,
    affine: View,
    grad_affine: View,
    dx: View,
    relu: bool,
    accumulate_affine: bool,
    accumulate_dx: bool,
) -> Dispatch {
    let launch = Launch {
        shape: s,
        x: Some(x),
        dy: Some(dy),
        out: Some(dx),
        stats: Some(stats),
        affine: Some(affine),
        grad: Some(grad_affine),
        relu,
        accumulate_affine,
        accumulate_out: accumulate_dx,
        ..Default::default()
    };
    launch.dispatch(gpu, &BACKWARD, per_channel(s))
}

/// dgamma = Σ dy'·xhat and dbeta = Σ dy' per channel (see [`batchnorm_backward`]), written
/// into grad_affine, or added to it if `accumulate`. Run it with `accumulate = false` when
/// [`batchnorm_backward_input`] follows, because that reads these sums back.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_affine(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    dy: View,
    stats: View,
    affine: View,
    grad_affine: View,
    relu: bool,
    accumulate: bool,
) -> Dispatch {
    let launch = Launch {
        shape: s,
        x: Some(x),
        dy: Some(dy),
        stats: Some(stats),
        affine: Some(affine),
        grad: Some(grad_affine),
        relu,
        accumulate_affine: accumulate,
        ..Default::default()
    };
    launch.dispatch(gpu, &BACKWARD_AFFINE, per_channel(s))
}

/// dx = gamma·invstd/M·(M·dy' − dbeta − xhat·dgamma), written or added (`accumulate`).
/// dgamma and dbeta are read from grad_affine, which must hold exactly this batch's sums, as
/// [`batchnorm_backward_affine`] leaves them when run with `accumulate = false`. A caller that
/// accumulates parameter gradients over several batches uses [`batchnorm_backward`] instead.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_input(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    dy: View,
    stats: View,
    affine: View,
    grad_affine: View,
    dx: View,
    relu: bool,
    accumulate: bool,
) -> Dispatch {
    input_pass(gpu, s, x, Some(dy), stats, affine, grad_affine, dx, relu, accumulate)
}

/// [`batchnorm_backward_input`] in place: `dy_dx` holds dy and receives dx (overwritten, never
/// accumulated). For a gradient that reaches the batch norm's input range first, this spares
/// a separate output-gradient buffer; WebGPU forbids binding one range as both.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_input_in_place(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    stats: View,
    affine: View,
    grad_affine: View,
    dy_dx: View,
    relu: bool,
) -> Dispatch {
    input_pass(gpu, s, x, None, stats, affine, grad_affine, dy_dx, relu, false)
}

/// The input pass, reading dy from `dy`, or from `dx` itself when `dy` is None.
#[allow(clippy::too_many_arguments)]
fn input_pass(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    dy: Option<View>,
    stats: View,
    affine: View,
    grad_affine: View,
    dx: View,
    relu: bool,
    accumulate: bool,
) -> Dispatch {
    let launch = Launch {
        shape: s,
        x: Some(x),
        dy,
        out: Some(dx),
        stats: Some(stats),
        affine: Some(affine),
        grad: Some(grad_affine),
        relu,
        accumulate_out: accumulate,
        in_place: dy.is_none(),
        ..Default::default()
    };
    launch.dispatch(gpu, &BACKWARD_INPUT, elementwise(s))
}
