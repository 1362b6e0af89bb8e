//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::BatchNormLaunch;
use super::{BatchNormShape, WG};
use crate::executor::Recorder;
use crate::gpu::{grid, shaders, Dispatch, Family, Gpu, Kernel, View, Window};
use crate::graph::{BN_EPS, BN_MOMENTUM};
use crate::ops::flag;

const fn kernel(entry: &'static str) -> Kernel {
    Kernel { shader: &shaders::BATCHNORM, entry, buffers: 7 }
}
const TRAIN_STATS: Kernel = kernel("train_stats");
const EVAL_STATS: Kernel = kernel("eval_stats");
const APPLY: Kernel = kernel("apply");
const BACKWARD_AFFINE: Kernel = kernel("backward_affine");
const BACKWARD_INPUT: Kernel = kernel("backward_input");
const BACKWARD: Kernel = kernel("backward");
const SHARD_STATS: Kernel = kernel("shard_stats");
const COMBINE_STATS: Kernel = kernel("combine_stats");
const SPLIT_STATS: Kernel = kernel("split_stats");
const SPLIT_AFFINE: Kernel = kernel("split_affine");
const COMBINE_AFFINE: Kernel = kernel("combine_affine");

/// Values each invocation of the elementwise kernels handles (by striding), so that a launch
/// is not dominated by per-workgroup overhead on CPU drivers.
const PER_INVOCATION: u32 = 4;

crate::uniform! {
    /// The parameter block of every kernel in batchnorm.wgsl (see its `Params` for each
    /// field's meaning); offsets are in elements.
    pub struct BatchNormParams for shaders::BATCHNORM {
        c: u32,
        m: u32,
        x_off: u32,
        dy_off: u32,
        out_off: u32,
        stats_off: u32,
        affine_off: u32,
        grad_off: u32,
        running_off: u32,
        momentum: f32,
        eps: f32,
        relu: u32,
        accumulate_affine: u32,
        accumulate_out: u32,
        c_stride: u32,
        in_place: u32,
        m_total: u32,
        parts: u32,
        part: u32,
    }
}

/// The launch's tensors by binding role (bindings 1..=7 of `batchnorm.wgsl`). Every kernel
/// binds all seven; roles a launch does not use get a window of their own that aliases nothing.
#[derive(Default)]
struct Roles<'a> {
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
    /// Values per channel in the whole batch when the launch covers one batch shard; 0 for
    /// the shape's own `m()`.
    m_total: u32,
    /// Partial results the launch writes or combines (batch shards or pixel splits), and the
    /// shard a per-shard launch covers.
    parts: u32,
    part: u32,
}

impl Roles<'_> {
    fn dispatch(&self, gpu: &Gpu, kernel: &Kernel, workgroups: [u32; 3]) -> Dispatch {
        let roles = [self.x, self.dy, self.out, self.stats, self.affine, self.grad, self.running];
        let buffers: Vec<Window> =
            roles.iter().enumerate().map(|(i, r)| r.map_or_else(|| gpu.unused_binding(i), |v| v.buffer)).collect();
        let s = self.shape;
        let off = |r: Option<View>| r.map_or(0, |v| v.offset);
        // The per-channel tensors are indexed from the slice's first channel.
        let channel_off = |r: Option<View>| r.map_or(0, |v| v.offset + s.first);
        let params = BatchNormParams {
            c: s.c,
            m: s.m(),
            x_off: off(self.x),
            dy_off: off(self.dy),
            out_off: off(self.out),
            stats_off: channel_off(self.stats),
            affine_off: channel_off(self.affine),
            grad_off: channel_off(self.grad),
            running_off: channel_off(self.running),
            momentum: self.momentum,
            eps: self.eps,
            relu: flag(self.relu),
            accumulate_affine: flag(self.accumulate_affine),
            accumulate_out: flag(self.accumulate_out),
            c_stride: s.total,
            in_place: flag(self.in_place),
            m_total: if self.m_total == 0 { s.m() } else { self.m_total },
            parts: self.parts,
            part: self.part,
        };
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
    let launch =
        Roles { shape: s, x: Some(x), stats: Some(stats), running: Some(running), momentum, eps, ..Default::default() };
    launch.dispatch(gpu, &TRAIN_STATS, per_channel(s))
}

/// Evaluation-mode statistics: `stats` = [running_mean, 1/sqrt(running_var + eps)], so that
/// [`batchnorm_apply`] serves both modes.
pub fn batchnorm_eval_stats(gpu: &Gpu, c: u32, running: View, stats: View, eps: f32) -> Dispatch {
    let shape = BatchNormShape::new(c, 0, 0);
    let launch = Roles { shape, stats: Some(stats), running: Some(running), eps, ..Default::default() };
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
    let launch = Roles {
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
    let launch = Roles {
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
    let launch = Roles {
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
    input_pass(gpu, s, x, Some(dy), stats, affine, grad_affine, dx, relu, accumulate, s.m())
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
    input_pass(gpu, s, x, None, stats, affine, grad_affine, dy_dx, relu, false, s.m())
}

/// The input pass, reading dy from `dy`, or from `dx` itself when `dy` is None, over a batch
/// (or a batch shard of one) whose channels hold `m_total` values each.
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
    m_total: u32,
) -> Dispatch {
    let launch = Roles {
        shape: s,
        m_total,
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

/// The batch statistics of a batch split into shards: each shard's moments into `scratch`
/// ([`crate::memory::SHARD_STATISTICS_WORDS`] floats per channel and shard), then one launch
/// that combines them in shard order into `stats` and updates the running statistics once.
/// `shards[k]` is shard k's input view and its shape (its `n` the shard's images); `m_total`
/// is the whole batch's values per channel.
pub fn batchnorm_train_stats_sharded(
    gpu: &Gpu,
    shards: &[(BatchNormShape, View)],
    m_total: u32,
    scratch: View,
    stats: View,
    running: View,
) -> Vec<Dispatch> {
    let mut out: Vec<Dispatch> = (shards.iter().enumerate())
        .map(|(k, &(s, x))| {
            let launch = Roles { shape: s, x: Some(x), out: Some(scratch), part: k as u32, ..Default::default() };
            launch.dispatch(gpu, &SHARD_STATS, per_channel(s))
        })
        .collect();
    out.push(combine_stats(gpu, shards[0].0, m_total, shards.len() as u32, scratch, stats, running));
    out
}

/// The batch statistics from `parts` partial moments in `scratch` (batch shards or pixel
/// splits), combined in order, into `stats`, with the running statistics' update over
/// `m_total` values per channel.
fn combine_stats(
    gpu: &Gpu,
    s: BatchNormShape,
    m_total: u32,
    parts: u32,
    scratch: View,
    stats: View,
    running: View,
) -> Dispatch {
    let combine = Roles {
        shape: s,
        out: Some(scratch),
        stats: Some(stats),
        running: Some(running),
        momentum: BN_MOMENTUM,
        eps: BN_EPS,
        m_total,
        parts,
        ..Default::default()
    };
    combine.dispatch(gpu, &COMBINE_STATS, grid(s.c as u64, 64))
}

/// Values of a channel each pixel split of the workgroup family's reductions aims at: 16 per
/// invocation of a 256-wide workgroup, enough to hide a split's fixed cost.
pub const VALUES_PER_SPLIT: u32 = 4096;

/// Splits of each channel's values the workgroup family's statistics and affine gradient use
/// for shape `s` with `scratch_elems` floats of split scratch: M / [`VALUES_PER_SPLIT`] (at
/// least 1, at most [`MAX_SPLITS`](crate::ops::conv::workgroup::MAX_SPLITS)), and no more than
/// the scratch holds at [`crate::memory::SHARD_STATISTICS_WORDS`] floats per channel and
/// split. It depends on M and the batch norm's whole channel count only, never on the slice a
/// launch covers, so a batch norm taken whole or in channel slices sums in the same order and
/// the memory modes stay bit-identical.
pub fn batchnorm_splits(s: BatchNormShape, scratch_elems: u64) -> u32 {
    let wanted = (s.m() / VALUES_PER_SPLIT).clamp(1, crate::ops::conv::workgroup::MAX_SPLITS) as u64;
    let by_scratch = scratch_elems / (crate::memory::SHARD_STATISTICS_WORDS * s.total as u64);
    wanted.min(by_scratch).max(1) as u32
}

/// [`batchnorm_train_stats`] in two passes, for GPUs: each of `splits` parts of every
/// channel's values (balanced ranges of the M values) writes its moments into `scratch`
/// ([`crate::memory::SHARD_STATISTICS_WORDS`] floats per channel of `s.total` and split),
/// then one launch combines them in split order (Chan et al.'s pairwise update), so the result
/// is deterministic. Writes `stats` and updates `running` with PyTorch's momentum 0.1 and
/// eps 1e-5. `splits` must lie in 1..=M.
pub fn batchnorm_train_stats_split(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    scratch: View,
    stats: View,
    running: View,
    splits: u32,
) -> Vec<Dispatch> {
    assert!((1..=s.m()).contains(&splits), "{splits} splits of {} values per channel", s.m());
    let parts = Roles { shape: s, x: Some(x), out: Some(scratch), parts: splits, ..Default::default() };
    vec![
        parts.dispatch(gpu, &SPLIT_STATS, split_grid(s, splits)),
        combine_stats(gpu, s, s.m(), splits, scratch, stats, running),
    ]
}

/// [`batchnorm_backward_affine`] in two passes, for GPUs: each of `splits` parts of every
/// channel's values writes its dgamma and dbeta into `scratch` (2 floats per channel of
/// `s.total` and split), then one launch adds them in split order into `grad_affine`
/// (overwriting, or adding if `accumulate`). `splits` must lie in 1..=M.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_affine_split(
    gpu: &Gpu,
    s: BatchNormShape,
    x: View,
    dy: View,
    stats: View,
    affine: View,
    grad_affine: View,
    scratch: View,
    relu: bool,
    accumulate: bool,
    splits: u32,
) -> Vec<Dispatch> {
    assert!((1..=s.m()).contains(&splits), "{splits} splits of {} values per channel", s.m());
    let parts = Roles {
        shape: s,
        x: Some(x),
        dy: Some(dy),
        out: Some(scratch),
        stats: Some(stats),
        affine: Some(affine),
        relu,
        parts: splits,
        ..Default::default()
    };
    let combine = Roles {
        shape: s,
        out: Some(scratch),
        grad: Some(grad_affine),
        accumulate_affine: accumulate,
        parts: splits,
        ..Default::default()
    };
    vec![
        parts.dispatch(gpu, &SPLIT_AFFINE, split_grid(s, splits)),
        combine.dispatch(gpu, &COMBINE_AFFINE, grid(s.c as u64, 64)),
    ]
}

/// One workgroup per channel and split.
fn split_grid(s: BatchNormShape, splits: u32) -> [u32; 3] {
    let [c, _, _] = per_channel(s);
    [c, splits, 1]
}

/// The pixel splits a launch of the schedule uses: more than one only for the workgroup
/// family (forced, or the adapter's default), in an unsharded training step that has split
/// scratch. A sharded step keeps the per-shard path, whose shards are already parts.
fn splits_for<'a>(r: &Recorder<'a>, s: BatchNormShape) -> Option<(View<'a>, u32)> {
    let scratch = r.split_scratch()?;
    if r.gpu.family() != Family::Workgroup || r.shards().len() > 1 {
        return None;
    }
    let splits = batchnorm_splits(s, scratch.buffer.size / 4 - scratch.offset as u64);
    (splits > 1).then_some((scratch, splits))
}

/// Records one batch-norm launch of a schedule. Backward is the split pair (it measured faster
/// on lavapipe than the fused kernel): the affine pass, then the input pass, which reads the
/// sums the affine pass just wrote.
///
/// Over a batch in shards, everything that reduces over the batch reduces over all of it: the
/// statistics combine every shard's ([`batchnorm_train_stats_sharded`]), the affine passes of
/// all shards add into one dgamma and dbeta before any input pass reads them, and the input
/// passes divide by the whole batch's count.
pub(crate) fn record(launch: &BatchNormLaunch, r: &mut Recorder) {
    let gpu = r.gpu;
    let sharded = r.shards().len() > 1;
    match *launch {
        BatchNormLaunch::TrainStats { shape, x, stats, running } if sharded => {
            let mut parts = Vec::new();
            r.each_shard(|r, shard| parts.push((BatchNormShape { n: shard.images, ..shape }, r.view(x))));
            let scratch = r.shard_statistics().expect("a sharded training step plans the shard-statistics scratch");
            let (stats, running) = (r.view(stats), r.view(running));
            for d in batchnorm_train_stats_sharded(gpu, &parts, shape.m(), scratch, stats, running) {
                r.push(d);
            }
        }
        BatchNormLaunch::TrainStats { shape, x, stats, running } => {
            let (x, stats, running) = (r.view(x), r.view(stats), r.view(running));
            match splits_for(r, shape) {
                Some((scratch, splits)) => {
                    for d in batchnorm_train_stats_split(gpu, shape, x, scratch, stats, running, splits) {
                        r.push(d);
                    }
                }
                None => r.push(batchnorm_train_stats(gpu, shape, x, stats, running, BN_MOMENTUM, BN_EPS)),
            }
        }
        BatchNormLaunch::EvalStats { shape, running, stats } => {
            r.push(batchnorm_eval_stats(gpu, shape.c, r.view(running), r.view(stats), BN_EPS))
        }
        BatchNormLaunch::Apply { shape, x, stats, affine, y, relu } => r.each_shard(|r, shard| {
            let shape = BatchNormShape { n: shard.images, ..shape };
            r.push(batchnorm_apply(gpu, shape, r.view(x), r.view(stats), r.view(affine), r.view(y), relu))
        }),
        BatchNormLaunch::Backward { shape, x, dy: dy_loc, stats, affine, grad_affine, dx, relu, accumulate } => {
            let m_total = shape.m();
            if let Some((scratch, splits)) = splits_for(r, shape) {
                let (x, dy, stats) = (r.view(x), r.view(dy_loc), r.view(stats));
                let (affine, grad) = (r.view(affine), r.view(grad_affine));
                for d in batchnorm_backward_affine_split(
                    gpu, shape, x, dy, stats, affine, grad, scratch, relu, false, splits,
                ) {
                    r.push(d);
                }
            } else {
                r.each_shard(|r, shard| {
                    let part = BatchNormShape { n: shard.images, ..shape };
                    let (x, dy, stats) = (r.view(x), r.view(dy_loc), r.view(stats));
                    let (affine, grad) = (r.view(affine), r.view(grad_affine));
                    r.push(batchnorm_backward_affine(gpu, part, x, dy, stats, affine, grad, relu, shard.index > 0));
                });
            }
            let Some(dx_loc) = dx else { return };
            r.each_shard(|r, shard| {
                let part = BatchNormShape { n: shard.images, ..shape };
                let in_place = dx_loc == dy_loc;
                assert!(!(in_place && accumulate), "an in-place batch-norm backward overwrites its input gradient");
                let dy = (!in_place).then(|| r.view(dy_loc));
                let (x, stats, affine, grad, dx) =
                    (r.view(x), r.view(stats), r.view(affine), r.view(grad_affine), r.view(dx_loc));
                r.push(input_pass(gpu, part, x, dy, stats, affine, grad, dx, relu, accumulate, m_total));
            });
        }
    }
}
