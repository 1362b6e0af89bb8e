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

pub mod kernels;

use crate::graph::{Graph, NodeId, Op, SliceId, StateId};
use crate::ops::Work;
use crate::schedule::{Loc, Pass, Phase, ScheduleBuilder};

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
    /// The whole batch norm over tensor `x` of `g`, which is (C, N, H, W).
    pub fn of_input(g: &Graph, x: SliceId) -> Self {
        let [c, n, h, w] = g.shape(x);
        BatchNormShape::new(c, n, h * w)
    }
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

    /// As [`BatchNormShape::sum_rounding_depth`] for the workgroup family's sums over `splits`
    /// pixel splits (`split_affine` then `combine_affine` in batchnorm.wgsl): each split sums
    /// at most ceil(M / splits) values as above, then the splits are added in order.
    pub fn split_rounding_depth(&self, splits: u32) -> u64 {
        (self.m() as u64).div_ceil(splits as u64).div_ceil(WG as u64) + 32 + splits as u64
    }
}

/// Invocations per workgroup of every kernel but `eval_stats` (batchnorm.wgsl's `WG`); the sums'
/// rounding depth depends on it.
const WG: u32 = 256;

/// The batch-norm launches. `stats`, `affine`, `grad_affine` and `running` are the 2C-float
/// vectors described above; activations are (C, N, H, W) (or the slice's channels).
#[derive(Clone, Debug, PartialEq)]
pub enum BatchNormLaunch {
    /// Batch statistics into `stats`, and the running-statistics update.
    TrainStats { shape: BatchNormShape, x: Loc, stats: Loc, running: Loc },
    /// `stats` from the running statistics (evaluation).
    EvalStats { shape: BatchNormShape, running: Loc, stats: Loc },
    /// `y = γ·(x − mean)·invstd + β`, then ReLU if `relu`.
    Apply { shape: BatchNormShape, x: Loc, stats: Loc, affine: Loc, y: Loc, relu: bool },
    /// γ and β gradients (overwritten), and the input gradient when `dx` is given. `dx` may be
    /// `dy` itself (in place, not accumulating).
    Backward {
        shape: BatchNormShape,
        x: Loc,
        dy: Loc,
        stats: Loc,
        affine: Loc,
        grad_affine: Loc,
        dx: Option<Loc>,
        relu: bool,
        accumulate: bool,
    },
}

impl BatchNormLaunch {
    /// The batch norm's shape (its channel slice).
    pub fn shape(&self) -> BatchNormShape {
        match *self {
            BatchNormLaunch::TrainStats { shape, .. }
            | BatchNormLaunch::EvalStats { shape, .. }
            | BatchNormLaunch::Apply { shape, .. }
            | BatchNormLaunch::Backward { shape, .. } => shape,
        }
    }

    /// What the launch computes: `stats`, `eval stats`, `apply` or `backward`.
    pub fn kind(&self) -> &'static str {
        match self {
            BatchNormLaunch::TrainStats { .. } => "stats",
            BatchNormLaunch::EvalStats { .. } => "eval stats",
            BatchNormLaunch::Apply { .. } => "apply",
            BatchNormLaunch::Backward { .. } => "backward",
        }
    }

    /// The launch's [`Work`], counting per element of its channels: the statistics 3 FLOPs
    /// (shift, add, square-add), the apply 2 (+1 with the ReLU), the backward 6 for its two
    /// sums (normalise, mask, add, multiply-add) and 5 more where it writes the input gradient.
    pub fn work(&self) -> Work {
        match *self {
            BatchNormLaunch::TrainStats { shape: s, .. } => {
                let c = s.c as f64;
                Work::elements(3.0 * s.len() as f64, s.len() as f64 + 2.0 * c, 4.0 * c)
            }
            BatchNormLaunch::EvalStats { shape: s, .. } => {
                Work::elements(2.0 * s.c as f64, 2.0 * s.c as f64, 2.0 * s.c as f64)
            }
            BatchNormLaunch::Apply { shape: s, relu, .. } => {
                let per = if relu { 3.0 } else { 2.0 };
                Work::elements(per * s.len() as f64, s.len() as f64 + 4.0 * s.c as f64, s.len() as f64)
            }
            BatchNormLaunch::Backward { shape: s, dx, accumulate, .. } => {
                let (len, c) = (s.len() as f64, s.c as f64);
                let sums = Work::elements(6.0 * len, 2.0 * len + 4.0 * c, 2.0 * c);
                match dx {
                    Some(_) => sums.with_output(len, accumulate) + Work::elements(5.0 * len, 0.0, 0.0),
                    None => sums,
                }
            }
        }
    }

    /// Every operand of the launch.
    pub fn operands(&self) -> Vec<Loc> {
        match *self {
            BatchNormLaunch::TrainStats { x, stats, running, .. } => vec![x, stats, running],
            BatchNormLaunch::EvalStats { running, stats, .. } => vec![running, stats],
            BatchNormLaunch::Apply { x, stats, affine, y, .. } => vec![x, stats, affine, y],
            BatchNormLaunch::Backward { x, dy, stats, affine, grad_affine, dx, .. } => {
                let mut v = vec![x, dy, stats, affine, grad_affine];
                v.extend(dx);
                v
            }
        }
    }
}

/// The launch that fills a batch norm's statistics in forward: batch statistics (and a
/// running-statistics update) in training, the running statistics in evaluation.
fn stats_launch(pass: Pass, shape: BatchNormShape, x: Loc, stats: Loc, running: StateId) -> BatchNormLaunch {
    match pass {
        Pass::Train => BatchNormLaunch::TrainStats { shape, x, stats, running: Loc::State(running) },
        Pass::Eval => BatchNormLaunch::EvalStats { shape, running: Loc::State(running), stats },
    }
}

/// A batch norm's forward: its statistics, then its output. A recomputation reuses the
/// statistics saved in forward, so the running statistics change once per step. A batch norm
/// folded into its consumer computes only its statistics, which its conv and its own backward
/// read; it is never recomputed, as nothing reads its output.
pub(crate) fn forward(b: &mut ScheduleBuilder, id: NodeId, phase: Phase) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let Op::BatchNorm { affine, running, stats, relu } = node.op else { unreachable!("a batch-norm node") };
    let shape = BatchNormShape::of_input(g, node.inputs[0]);
    if b.is_folded(id) {
        assert_eq!(phase, Phase::Forward, "{}: a folded batch norm is never recomputed", node.name);
        let x = b.forward_loc(node.inputs[0]);
        let stats = b.stats_loc(stats);
        b.push(id, phase, stats_launch(b.pass(), shape, x, stats, running));
        return;
    }
    let (inputs, y) = b.node_locs(id, phase);
    let x = inputs[0];
    let stats = b.stats_loc(stats);
    if phase != Phase::Recompute {
        b.push(id, phase, stats_launch(b.pass(), shape, x, stats, running));
    }
    b.push(id, phase, BatchNormLaunch::Apply { shape, x, stats, affine: Loc::Param(affine), y, relu });
}

/// A batch norm's backward in one launch (a conv that reads its whole output may take it
/// over slice by slice instead: see the conv's rules).
pub(crate) fn backward(b: &mut ScheduleBuilder, id: NodeId, dy: Loc) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let Op::BatchNorm { affine, stats, relu, .. } = node.op else { unreachable!("a batch-norm node") };
    let x = b.saved_loc(node.inputs[0]);
    let dx = b.input_gradient(node.inputs[0]);
    let shape = BatchNormShape::of_input(g, node.inputs[0]);
    let stats = b.stats_loc(stats);
    let (grad_affine, shared) = b.param_grad(affine);
    assert!(!shared, "{}: a batch norm's parameters are used once", node.name);
    let (dx, accumulate) = (dx.map(|d| d.0), dx.is_some_and(|d| d.1));
    let affine = Loc::Param(affine);
    b.push(
        id,
        Phase::Backward,
        BatchNormLaunch::Backward { shape, x, dy, stats, affine, grad_affine, dx, relu, accumulate },
    );
}

/// Refuses a training graph in which a batch norm sees fewer than 2 values per channel
/// (batch × height × width < 2): its batch variance would be undefined, as PyTorch says with
/// "Expected more than 1 value per channel when training". Inference is unaffected, since it
/// normalises with the running statistics.
pub fn check_batch_statistics(graph: &Graph) -> crate::Result<()> {
    let per_channel = |node: &crate::graph::Node| {
        let [_, n, h, w] = graph.shape(node.inputs[0]);
        n as u64 * h as u64 * w as u64
    };
    let starved: Vec<&crate::graph::Node> =
        graph.nodes.iter().filter(|node| matches!(node.op, Op::BatchNorm { .. }) && per_channel(node) < 2).collect();
    let (Some(first), Some(last)) = (starved.first(), starved.last()) else { return Ok(()) };
    let [_, n, h, w] = graph.shape(first.inputs[0]);
    let image = graph.input.map(|t| graph.shape(t)).map(|[_, _, ih, iw]| format!(" from {iw}x{ih} images"));
    let later = match starved.len() - 1 {
        0 => String::new(),
        1 => format!(", and so would `{}`", last.name),
        more => format!(", and so would {more} later ones, up to `{}`", last.name),
    };
    let min_batch = 2u64.div_ceil((h as u64 * w as u64).max(1));
    Err(crate::Error::Config(format!(
        "batch norm `{}` would see {} value per channel in training (batch {n} of {h}x{w} maps{}){later}, but \
         batch statistics need more than 1 (PyTorch: \"Expected more than 1 value per channel when training\"); \
         train with a batch size of at least {min_batch}, or with larger images. Evaluation and prediction at \
         batch {n} work: they use the running statistics",
        first.name,
        per_channel(first),
        image.unwrap_or_default()
    )))
}
