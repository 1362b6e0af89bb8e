//! 2-D convolution without bias (DenseNet convs have none), forward and both backwards.
//!
//! Activations are (C, N, H, W), weights OIHW. Two kernel families serve every direction
//! (see [`kernels::choose`] and [`crate::tune`]):
//!
//! - the register family ([`wgsl`], for CPU drivers): a matrix-product kernel for 1x1
//!   stride-1 unpadded convs (the bottleneck and transition layers), a row-segment kernel for
//!   3x3 stride-1 convs (the growth layers and the CIFAR stem), and a general direct kernel for
//!   everything else (e.g. the ImageNet 7x7 stem); its weight gradients reduce inside each
//!   workgroup. Its WGSL is generated from a list of candidate register tiles
//!   ([`wgsl::REGISTER_TILES`]), which the launch grids read too.
//! - the workgroup family ([`workgroup`], for GPUs): implicit matrix products staged through
//!   workgroup memory, from a list of candidate tiles; its weight gradients split the pixels
//!   over many workgroups when the plan gives them scratch
//!   ([`crate::schedule::ScheduleOptions::split_scratch_bytes`]).

pub mod kernels;
pub mod wgsl;
pub mod workgroup;

use crate::graph::{ChannelSlice, Graph, Node, NodeId, Op, StorageId, StorageUses};
use crate::ops::batchnorm::{BatchNormLaunch, BatchNormShape};
use crate::ops::Work;
use crate::schedule::{Loc, Phase, ScheduleBuilder, ValueKind};
use std::collections::HashMap;
use wgsl::{ConvTiles, WORKGROUP};

/// The geometry of one convolution. Padding is symmetric and zero-filled; the kernel, stride
/// and padding are the same along both axes except for the kernel's height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub n: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
}

impl Conv2dShape {
    /// The shape of a conv node of `g`, whose input is (c_in, N, H, W).
    pub fn of_node(g: &Graph, node: &Node) -> Conv2dShape {
        let Op::Conv2d { kernel, stride, pad, .. } = node.op else { panic!("{}: not a conv", node.name) };
        let [c_in, n, h, w] = g.shape(node.inputs[0]);
        let c_out = g.shape(node.output)[0];
        Conv2dShape { n, c_in, h, w, c_out, kh: kernel, kw: kernel, stride, pad }
    }
    /// Output height: `(H + 2·pad − kh) / stride + 1` (PyTorch's `Conv2d` with dilation 1).
    pub fn out_h(&self) -> u32 {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// Output width, as [`Conv2dShape::out_h`].
    pub fn out_w(&self) -> u32 {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    pub fn input_elems(&self) -> u32 {
        self.c_in * self.n * self.h * self.w
    }
    pub fn output_elems(&self) -> u32 {
        self.c_out * self.n * self.out_h() * self.out_w()
    }
    pub fn weight_elems(&self) -> u32 {
        self.c_out * self.c_in * self.kh * self.kw
    }
    /// Multiply-adds of the forward pass, counting padded taps too (as FLOP counts usually do).
    pub fn macs(&self) -> u64 {
        self.output_elems() as u64 * (self.c_in * self.kh * self.kw) as u64
    }
    /// 2 x multiply-adds. Each backward does the same number of multiply-adds as the forward.
    pub fn flops_forward(&self) -> u64 {
        2 * self.macs()
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// The 3x3 kernels express backward input as a 3x3 conv with padding 2 - pad.
    fn is_3x3_stride_1(&self) -> bool {
        self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad <= 2
    }
    fn check(&self) {
        assert!(
            self.stride >= 1 && self.h + 2 * self.pad >= self.kh && self.w + 2 * self.pad >= self.kw,
            "conv2d: invalid shape {self:?}"
        );
    }
}

/// The rounding depth of each direction's kernel for this shape: the most roundings any one
/// product passes through on its way into an output (its multiply, its adds into a register
/// accumulator, and the workgroup combine). A kernel whose depth is `d` computes every output
/// within Higham's bound `γ_d · Σ|terms|` of the exact sum ("Accuracy and Stability of
/// Numerical Algorithms", 2nd ed., §3.1), which is what the op tests and the self-test assert.
/// The figures follow the loops of the generated kernels ([`wgsl`]) and must change with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundingDepth {
    pub forward: u64,
    pub backward_input: u64,
    pub backward_weight: u64,
}

impl Conv2dShape {
    /// [`RoundingDepth`] of the register family with the candidate `tiles`.
    pub fn register_rounding_depth(&self, tiles: &ConvTiles) -> RoundingDepth {
        let taps = (self.kh * self.kw) as u64;
        // Forward and input gradient: the 3x3 kernel sums each channel's nine taps on their own
        // and adds them to the accumulator (k_rows + 9); the GEMM and the general kernel keep
        // one serial chain of fmas over k_rows x taps.
        let chain = |k_rows: u32| {
            if self.is_3x3_stride_1() {
                k_rows as u64 + taps
            } else {
                k_rows as u64 * taps
            }
        };
        let (forward, backward_input) = (chain(self.c_in), chain(self.c_out));
        let lanes = WORKGROUP as u64;
        let pixels = (self.n * self.out_h() * self.out_w()) as u64;
        let backward_weight = if self.is_pointwise() {
            // Each lane of a group of 8 walks ceil(pixels / 128) steps of two nested fmas, then
            // the 64 lane partials are added in order.
            2 * pixels.div_ceil(128) + lanes
        } else if self.kh == 3 && self.kw == 3 && self.stride == 1 {
            // Each lane adds ceil(items / 64) row segments of wgrad3_pixels pixels, then the
            // 64-lane combine. Inside a segment: wgrad3_pixels / 4 four-wide dot products (a
            // multiply and two adds each) summed in a chain, so wgrad3_pixels / 4 + 2 roundings
            // (4 at 8 pixels: two dot products and their sum).
            let segment = tiles.wgrad3_pixels;
            let items = (self.n * self.out_h() * self.out_w().div_ceil(segment)) as u64;
            items.div_ceil(lanes) + (segment / 4) as u64 + 2 + lanes
        } else {
            // One fma per output pixel of the lane's rows, then the 64-lane combine.
            (self.n * self.out_h()).div_ceil(WORKGROUP) as u64 * self.out_w() as u64 + lanes
        };
        RoundingDepth { forward, backward_input, backward_weight }
    }

    /// [`RoundingDepth`] of the workgroup family ([`workgroup`]) when the weight gradient takes
    /// `splits` splits of the pixels with a candidate that stages `depth` pixels per step.
    /// Forward and the input gradient keep one serial chain of fmas over channels x taps; the
    /// weight gradient one chain over a split's pixels (`⌈⌈pixels / splits⌉ / depth⌉ · depth` at
    /// most), then the combine adds the `splits` partial sums in order.
    pub fn workgroup_rounding_depth(&self, splits: u32, depth: u32) -> RoundingDepth {
        let taps = (self.kh * self.kw) as u64;
        let pixels = (self.n * self.out_h() * self.out_w()) as u64;
        let chunk = pixels.div_ceil(splits as u64).div_ceil(depth as u64) * depth as u64;
        RoundingDepth {
            forward: self.c_in as u64 * taps,
            backward_input: self.c_out as u64 * taps,
            backward_weight: chunk.min(pixels) + splits as u64,
        }
    }
}

/// The conv launches, each named for what it computes. Operands are (C, N, H, W) activations,
/// OIHW weights, and for the fused variants the batch-norm node's `stats` (mean, inverse
/// deviation) and `affine` (γ, β) vectors.
#[derive(Clone, Debug, PartialEq)]
pub enum ConvLaunch {
    Forward {
        shape: Conv2dShape,
        x: Loc,
        w: Loc,
        y: Loc,
    },
    /// A 1x1 conv of relu(batchnorm(x)), normalising x on load with the batch-norm node's
    /// `stats` and its `affine` parameters.
    ForwardBnRelu {
        shape: Conv2dShape,
        x: Loc,
        stats: Loc,
        affine: Loc,
        w: Loc,
        y: Loc,
    },
    /// The gradient of input channels `[first, first + count)` into a `dx` holding just them.
    BackwardInput {
        shape: Conv2dShape,
        channels: (u32, u32),
        dy: Loc,
        w: Loc,
        dx: Loc,
        accumulate: bool,
    },
    BackwardWeight {
        shape: Conv2dShape,
        x: Loc,
        dy: Loc,
        dw: Loc,
        accumulate: bool,
    },
    /// The weight gradient of a 1x1 conv whose input is relu(batchnorm(x)), normalising x
    /// on load with the batch-norm node's saved `stats` and its `affine` parameters.
    BackwardWeightBnRelu {
        shape: Conv2dShape,
        x: Loc,
        stats: Loc,
        affine: Loc,
        dy: Loc,
        dw: Loc,
        accumulate: bool,
    },
}

impl ConvLaunch {
    /// The launch over `n` images (one batch shard) instead of the whole batch; with
    /// `accumulate_weight`, a weight gradient adds to what the gradient holds (the shards
    /// after the first).
    pub fn with_batch(&self, n: u32, accumulate_weight: bool) -> ConvLaunch {
        let mut l = self.clone();
        match &mut l {
            ConvLaunch::Forward { shape, .. }
            | ConvLaunch::ForwardBnRelu { shape, .. }
            | ConvLaunch::BackwardInput { shape, .. } => shape.n = n,
            ConvLaunch::BackwardWeight { shape, accumulate, .. }
            | ConvLaunch::BackwardWeightBnRelu { shape, accumulate, .. } => {
                shape.n = n;
                *accumulate |= accumulate_weight;
            }
        }
        l
    }

    /// The conv's shape (the whole batch's, as planned).
    pub fn shape(&self) -> &Conv2dShape {
        match self {
            ConvLaunch::Forward { shape, .. }
            | ConvLaunch::ForwardBnRelu { shape, .. }
            | ConvLaunch::BackwardInput { shape, .. }
            | ConvLaunch::BackwardWeight { shape, .. }
            | ConvLaunch::BackwardWeightBnRelu { shape, .. } => shape,
        }
    }

    /// What the launch computes: `forward`, `backward input` or `backward weight`, with
    /// ` bn-relu` where it normalises its input on load.
    pub fn kind(&self) -> &'static str {
        match self {
            ConvLaunch::Forward { .. } => "forward",
            ConvLaunch::ForwardBnRelu { .. } => "forward bn-relu",
            ConvLaunch::BackwardInput { .. } => "backward input",
            ConvLaunch::BackwardWeight { .. } => "backward weight",
            ConvLaunch::BackwardWeightBnRelu { .. } => "backward weight bn-relu",
        }
    }

    /// The launch's [`Work`]: 2 FLOPs per multiply-add of the direct convolution (padded taps
    /// included, as [`Conv2dShape::macs`]), each operand once; normalising on load adds 3
    /// FLOPs per input element (scale, shift, max) and the two statistics and affine vectors.
    pub fn work(&self) -> Work {
        let bn_relu = |s: &Conv2dShape| Work::elements(3.0 * s.input_elems() as f64, 4.0 * s.c_in as f64, 0.0);
        let forward = |s: &Conv2dShape| {
            Work::elements(s.flops_forward() as f64, (s.input_elems() + s.weight_elems()) as f64, 0.0)
                .with_output(s.output_elems() as f64, false)
        };
        let weight = |s: &Conv2dShape, accumulate: bool| {
            Work::elements(s.flops_forward() as f64, (s.input_elems() + s.output_elems()) as f64, 0.0)
                .with_output(s.weight_elems() as f64, accumulate)
        };
        match self {
            ConvLaunch::Forward { shape, .. } => forward(shape),
            ConvLaunch::ForwardBnRelu { shape, .. } => forward(shape) + bn_relu(shape),
            ConvLaunch::BackwardInput { shape: s, channels: (_, count), accumulate, .. } => {
                // Only `count` of the input channels: their share of the products and weights.
                let share = *count as f64 / s.c_in as f64;
                let read = s.output_elems() as f64 + s.weight_elems() as f64 * share;
                Work::elements(s.flops_forward() as f64 * share, read, 0.0)
                    .with_output(s.input_elems() as f64 * share, *accumulate)
            }
            ConvLaunch::BackwardWeight { shape, accumulate, .. } => weight(shape, *accumulate),
            ConvLaunch::BackwardWeightBnRelu { shape, accumulate, .. } => weight(shape, *accumulate) + bn_relu(shape),
        }
    }

    /// Every operand of the launch.
    pub fn operands(&self) -> Vec<Loc> {
        match *self {
            ConvLaunch::Forward { x, w, y, .. } => vec![x, w, y],
            ConvLaunch::ForwardBnRelu { x, stats, affine, w, y, .. } => vec![x, stats, affine, w, y],
            ConvLaunch::BackwardInput { dy, w, dx, .. } => vec![dy, w, dx],
            ConvLaunch::BackwardWeight { x, dy, dw, .. } => vec![x, dy, dw],
            ConvLaunch::BackwardWeightBnRelu { x, stats, affine, dy, dw, .. } => vec![x, stats, affine, dy, dw],
        }
    }
}

/// A conv's forward, or its recomputation in backward.
pub(crate) fn forward(b: &mut ScheduleBuilder, id: NodeId, phase: Phase) {
    // Checked before any input is looked up: a folded BN-ReLU's output has no value.
    if let Some(bn) = b.folded_input(id) {
        return forward_bn_relu(b, id, bn, phase);
    }
    let node = &b.graph().nodes[id.0];
    let Op::Conv2d { weight, .. } = node.op else { unreachable!("a conv node") };
    let (inputs, y) = b.node_locs(id, phase);
    let shape = Conv2dShape::of_node(b.graph(), node);
    b.push(id, phase, ConvLaunch::Forward { shape, x: inputs[0], w: Loc::Param(weight), y });
}

/// A 1x1 conv's forward or recomputation reading its folded BN-ReLU's input, normalised on load.
fn forward_bn_relu(b: &mut ScheduleBuilder, id: NodeId, bn: NodeId, phase: Phase) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let Op::Conv2d { weight, .. } = node.op else { unreachable!("only convs fold their input") };
    let Op::BatchNorm { affine, stats, .. } = g.nodes[bn.0].op else { unreachable!("only batch norms fold") };
    let x = b.input_loc(g.nodes[bn.0].inputs[0], phase);
    let y = b.output_loc(node.output, phase);
    let stats = b.stats_loc(stats);
    let shape = Conv2dShape::of_node(g, node);
    let (affine, w) = (Loc::Param(affine), Loc::Param(weight));
    b.push(id, phase, ConvLaunch::ForwardBnRelu { shape, x, stats, affine, w, y });
}

/// A conv's backward: the weight gradient (with its folded BN-ReLU applied on load, if it
/// has one), then the input gradient.
pub(crate) fn backward(b: &mut ScheduleBuilder, id: NodeId, dy: Loc) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let Op::Conv2d { weight, .. } = node.op else { unreachable!("a conv node") };
    let shape = Conv2dShape::of_node(g, node);
    // A folded BN-ReLU has no output to read: the weight gradient applies it on load.
    if let Some(bn) = b.folded_input(id) {
        let Op::BatchNorm { affine, stats, .. } = g.nodes[bn.0].op else { unreachable!("only batch norms fold") };
        let x = b.saved_loc(g.nodes[bn.0].inputs[0]);
        let stats = b.stats_loc(stats);
        let (dw, accumulate) = b.param_grad(weight);
        let affine = Loc::Param(affine);
        b.push(id, Phase::Backward, ConvLaunch::BackwardWeightBnRelu { shape, x, stats, affine, dy, dw, accumulate });
    } else {
        let x = b.saved_loc(node.inputs[0]);
        let (dw, accumulate) = b.param_grad(weight);
        b.push(id, Phase::Backward, ConvLaunch::BackwardWeight { shape, x, dy, dw, accumulate });
    }
    backward_input(b, id, dy);
}

/// A conv's input gradient: whole, or, when the conv's input is a batch norm's output that
/// nothing else reads, slice by slice of channels, each slice going straight through that
/// batch norm's backward (which then has nothing left to do) so the gradient of the
/// normalised tensor never exists whole. Slices hold at most
/// [`crate::schedule::ScheduleOptions::gradient_slice_bytes`].
fn backward_input(b: &mut ScheduleBuilder, id: NodeId, dy: Loc) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let Op::Conv2d { weight, .. } = node.op else { unreachable!("a conv's backward") };
    let xt = node.inputs[0];
    let shape = Conv2dShape::of_node(g, node);
    let w = Loc::Param(weight);
    let phase = Phase::Backward;
    let Some(bn) = sliceable_bn(b, id) else {
        if let Some((dx, accumulate)) = b.input_gradient(xt) {
            b.push(id, phase, ConvLaunch::BackwardInput { shape, channels: (0, shape.c_in), dy, w, dx, accumulate });
        }
        return;
    };
    let bn_node = &g.nodes[bn.0];
    let Op::BatchNorm { affine, stats, relu, .. } = bn_node.op else { unreachable!("checked by sliceable_bn") };
    let bn_input = *g.slice(bn_node.inputs[0]);
    let x = b.saved_loc(bn_node.inputs[0]);
    let stats = b.stats_loc(stats);
    let (grad_affine, shared) = b.param_grad(affine);
    assert!(!shared, "{}: a batch norm's parameters are used once", bn_node.name);
    let whole = BatchNormShape::of_input(g, bn_node.inputs[0]);
    let channel_elems = whole.m();
    let c = whole.c;
    let width = slice_width(c, channel_elems, b.options().gradient_slice_bytes);
    let normed = g.slice(xt).storage;
    for first in (0..c).step_by(width as usize) {
        let count = width.min(c - first);
        let input_slice = ChannelSlice { storage: bn_input.storage, c0: bn_input.c0 + first, c: count };
        let dx = b.needs_gradient(bn_node.inputs[0]).then(|| b.gradient_of(input_slice));
        // Where the batch norm's input gradient is this slice's first contribution, the
        // conv's gradient goes straight there and the batch norm's backward runs in place.
        let slice = match dx {
            Some((dx, false)) => dx,
            _ => {
                let elems = count as u64 * channel_elems as u64;
                Loc::Value { value: b.new_value_of(normed, ValueKind::Gradient, elems), offset: 0 }
            }
        };
        let op = ConvLaunch::BackwardInput { shape, channels: (first, count), dy, w, dx: slice, accumulate: false };
        b.push(id, phase, op);
        let Loc::Value { value, offset } = x else { unreachable!("activations are values") };
        let x = Loc::Value { value, offset: offset + first * channel_elems };
        let op = BatchNormLaunch::Backward {
            shape: whole.slice(first, count),
            x,
            dy: slice,
            stats,
            affine: Loc::Param(affine),
            grad_affine,
            dx: dx.map(|d| d.0),
            relu,
            accumulate: dx.is_some_and(|d| d.1),
        };
        b.push(bn, phase, op);
    }
}

/// The batch norm whose backward a conv's backward can take over slice by slice: the
/// conv reads the whole output of the batch norm, and no other node reads any of it.
fn sliceable_bn(b: &ScheduleBuilder, conv: NodeId) -> Option<NodeId> {
    let g = b.graph();
    let s = g.slice(g.nodes[conv.0].inputs[0]).storage;
    let p = b.producer(s)?;
    let is_bn = matches!(g.nodes[p.0].op, Op::BatchNorm { .. });
    (is_bn && b.sole_reader(s) == Some(conv)).then_some(p)
}

/// Channels per slice of a sliced batch-norm backward: as many as fit in `bytes`, rounded
/// down to whole 16-channel tiles of the 1x1 kernels when that many fit, and at least one.
fn slice_width(channels: u32, channel_elems: u32, bytes: u64) -> u32 {
    let fit = (bytes / (channel_elems as u64 * 4).max(1)).min(channels as u64) as u32;
    match fit {
        _ if fit >= channels => channels,
        0 => 1,
        1..16 => fit,
        _ => fit / 16 * 16,
    }
}

/// The BN-ReLUs whose application folds into the load of their consumer, as a map from the
/// consuming conv to the batch-norm node. A batch norm folds when it is marked `recompute`
/// (so its output is not worth keeping anyway), has ReLU, is the only writer of its output
/// storage, and that storage's sole reader is a 1x1 stride-1 unpadded conv: no other node,
/// forward or backward, and not the host, ever reads that output.
pub(crate) fn bn_relu_folds(
    g: &Graph,
    uses: &StorageUses,
    producer: &HashMap<StorageId, NodeId>,
    sole_reader: &HashMap<StorageId, NodeId>,
) -> HashMap<NodeId, NodeId> {
    let mut folds = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Conv2d { kernel: 1, stride: 1, pad: 0, .. }) {
            continue;
        }
        let s = g.slice(node.inputs[0]).storage;
        let Some(&bn) = producer.get(&s) else { continue };
        let bn_node = &g.nodes[bn.0];
        if bn_node.recompute
            && matches!(bn_node.op, Op::BatchNorm { relu: true, .. })
            && uses.writers[s.0].len() == 1
            && sole_reader.get(&s) == Some(&NodeId(i))
        {
            folds.insert(NodeId(i), bn);
        }
    }
    folds
}
