//! Compiles a [`Graph`] into the exact list of kernel launches of one training step (forward,
//! recomputation, backward, update) or one inference pass, and into the *values* those
//! launches touch, each with its lifetime over the launch list.
//!
//! A value is one incarnation of a storage: its forward contents, its contents recomputed
//! during backward, or its gradient. Values are what the memory planner packs into the arena.
//! Everything here is plain Rust with no GPU, so the memory plan of any model in any mode is
//! known before a device is opened.
//!
//! The rules, none of them specific to DenseNet:
//! - backward visits nodes in reverse; a node's backward reads the forward values its op
//!   needs (a conv its input, a batch norm its input and saved statistics, ...);
//! - a needed value whose producer is marked `recompute` is not kept from forward: the
//!   producer (and, recursively, whatever recomputed inputs it needs) runs again just before
//!   its first backward use, batch norm normalising with the statistics saved in forward, so
//!   running statistics change exactly once per step;
//! - gradients of a storage accumulate by channel range: the first contribution to a range
//!   overwrites it, later ones add, and a range that receives nothing is zero-filled;
//! - a recomputed BN-ReLU whose whole output is read by nothing but one 1x1 stride-1 unpadded
//!   conv is never applied: the conv normalises its input on load, in forward, in any
//!   recomputation and in its weight gradient, so that output has no value at all;
//! - a batch norm whose output only a conv reads gets its backward inside the conv's, one
//!   channel slice of the conv's input gradient at a time (at most [`ScheduleOptions::gradient_slice_bytes`]),
//!   computed in place where the batch norm's input gradient starts, so the gradient of the
//!   normalised tensor never exists whole.

use crate::graph::{Graph, NodeId, Op, ParamId, StateId, StorageId, StorageUses, Tensor, TensorId};
use crate::memory::arena::{Category, TensorRequest};
use crate::ops::batchnorm::BatchNormShape;
use crate::ops::conv::Conv2dShape;
use crate::ops::linear::LinearShape;
use crate::ops::pool::PoolShape;
use std::collections::{HashMap, HashSet};

/// What a compiled schedule does: a training step or an inference pass (PyTorch's training and
/// evaluation modes). Not to be confused with [`crate::MemoryMode`], which chooses what a training
/// step keeps for backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Forward with batch statistics, backward, and the optimizer update.
    Train,
    /// Forward only, with running statistics and no dropout.
    Eval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Forward,
    Recomputed,
    Gradient,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub storage: StorageId,
    pub kind: ValueKind,
    pub elems: u64,
    /// First and last launch index that touch the value (inclusive).
    pub first: usize,
    pub last: usize,
}

/// Where a kernel operand lives: in a planned value at an element offset, or in the
/// persistent parameter, gradient or state storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Value { value: ValueId, offset: u32 },
    Param(ParamId),
    Grad(ParamId),
    State(StateId),
}

/// One kernel launch, named for what it computes, with its operands.
#[derive(Clone, Debug, PartialEq)]
pub enum LaunchOp {
    ConvForward {
        shape: Conv2dShape,
        x: Loc,
        w: Loc,
        y: Loc,
    },
    /// A 1x1 conv of relu(batchnorm(x)), normalising x on load with the batch-norm node's
    /// `stats` and its `affine` parameters.
    ConvForwardBnRelu {
        shape: Conv2dShape,
        x: Loc,
        stats: Loc,
        affine: Loc,
        w: Loc,
        y: Loc,
    },
    /// The gradient of input channels `[first, first + count)` into a `dx` holding just them.
    ConvBackwardInput {
        shape: Conv2dShape,
        channels: (u32, u32),
        dy: Loc,
        w: Loc,
        dx: Loc,
        accumulate: bool,
    },
    ConvBackwardWeight {
        shape: Conv2dShape,
        x: Loc,
        dy: Loc,
        dw: Loc,
        accumulate: bool,
    },
    /// The weight gradient of a 1x1 conv whose input is relu(batchnorm(x)), normalising x
    /// on load with the batch-norm node's saved `stats` and its `affine` parameters.
    ConvBackwardWeightBnRelu {
        shape: Conv2dShape,
        x: Loc,
        stats: Loc,
        affine: Loc,
        dy: Loc,
        dw: Loc,
        accumulate: bool,
    },
    BnTrainStats {
        shape: BatchNormShape,
        x: Loc,
        stats: Loc,
        running: Loc,
    },
    BnEvalStats {
        shape: BatchNormShape,
        running: Loc,
        stats: Loc,
    },
    BnApply {
        shape: BatchNormShape,
        x: Loc,
        stats: Loc,
        affine: Loc,
        y: Loc,
        relu: bool,
    },
    /// γ and β gradients (overwritten), and the input gradient when `dx` is given. `dx` may be
    /// `dy` itself (in place, not accumulating).
    BnBackward {
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
    ReluForward {
        len: u32,
        x: Loc,
        y: Loc,
    },
    ReluBackward {
        len: u32,
        x: Loc,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    DropoutForward {
        len: u32,
        rate: f32,
        key: u32,
        x: Loc,
        y: Loc,
    },
    DropoutBackward {
        len: u32,
        rate: f32,
        key: u32,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    AvgPoolForward {
        shape: PoolShape,
        x: Loc,
        y: Loc,
    },
    AvgPoolBackward {
        shape: PoolShape,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    MaxPoolForward {
        shape: PoolShape,
        x: Loc,
        y: Loc,
    },
    MaxPoolBackward {
        shape: PoolShape,
        x: Loc,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    GlobalAvgPoolForward {
        shape: PoolShape,
        x: Loc,
        y: Loc,
    },
    GlobalAvgPoolBackward {
        shape: PoolShape,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    LinearForward {
        shape: LinearShape,
        x: Loc,
        params: Loc,
        y: Loc,
    },
    LinearBackwardParams {
        shape: LinearShape,
        x: Loc,
        dy: Loc,
        grad_params: Loc,
    },
    LinearBackwardInput {
        shape: LinearShape,
        dy: Loc,
        params: Loc,
        dx: Loc,
        accumulate: bool,
    },
    Copy {
        len: u32,
        x: Loc,
        y: Loc,
    },
    Add {
        len: u32,
        x: Loc,
        y: Loc,
    },
    Fill {
        len: u32,
        y: Loc,
        value: f32,
    },
    /// Loss and correct count into `loss` (2 floats); with `dlogits`, also its gradient.
    Loss {
        n: u32,
        classes: u32,
        logits: Loc,
        labels: Loc,
        loss: Loc,
        dlogits: Option<Loc>,
    },
    /// The optimizer step over every parameter (the executor launches one per segment).
    SgdUpdate,
}

impl LaunchOp {
    /// Every operand of the launch.
    pub fn locs(&self) -> Vec<Loc> {
        use LaunchOp::*;
        match self {
            ConvForward { x, w, y, .. } => vec![*x, *w, *y],
            ConvForwardBnRelu { x, stats, affine, w, y, .. } => vec![*x, *stats, *affine, *w, *y],
            ConvBackwardInput { dy, w, dx, .. } => vec![*dy, *w, *dx],
            ConvBackwardWeight { x, dy, dw, .. } => vec![*x, *dy, *dw],
            ConvBackwardWeightBnRelu { x, stats, affine, dy, dw, .. } => vec![*x, *stats, *affine, *dy, *dw],
            BnTrainStats { x, stats, running, .. } => vec![*x, *stats, *running],
            BnEvalStats { running, stats, .. } => vec![*running, *stats],
            BnApply { x, stats, affine, y, .. } => vec![*x, *stats, *affine, *y],
            BnBackward { x, dy, stats, affine, grad_affine, dx, .. } => {
                let mut v = vec![*x, *dy, *stats, *affine, *grad_affine];
                v.extend(*dx);
                v
            }
            ReluForward { x, y, .. } | Copy { x, y, .. } | Add { x, y, .. } => vec![*x, *y],
            ReluBackward { x, dy, dx, .. } | MaxPoolBackward { x, dy, dx, .. } => vec![*x, *dy, *dx],
            DropoutForward { x, y, .. }
            | AvgPoolForward { x, y, .. }
            | MaxPoolForward { x, y, .. }
            | GlobalAvgPoolForward { x, y, .. } => vec![*x, *y],
            DropoutBackward { dy, dx, .. } | AvgPoolBackward { dy, dx, .. } | GlobalAvgPoolBackward { dy, dx, .. } => {
                vec![*dy, *dx]
            }
            LinearForward { x, params, y, .. } => vec![*x, *params, *y],
            LinearBackwardParams { x, dy, grad_params, .. } => vec![*x, *dy, *grad_params],
            LinearBackwardInput { dy, params, dx, .. } => vec![*dy, *params, *dx],
            Fill { y, .. } => vec![*y],
            Loss { logits, labels, loss, dlogits, .. } => {
                let mut v = vec![*logits, *labels, *loss];
                v.extend(*dlogits);
                v
            }
            SgdUpdate => vec![],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Recompute,
    Backward,
    Update,
}

#[derive(Clone, Debug)]
pub struct Launch {
    pub node: Option<NodeId>,
    pub phase: Phase,
    pub op: LaunchOp,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub mode: Pass,
    pub values: Vec<Value>,
    pub launches: Vec<Launch>,
    /// The forward values the host writes (image and labels) and reads (logits and loss).
    pub input: ValueId,
    pub labels: Option<ValueId>,
    pub logits: ValueId,
    pub loss: Option<ValueId>,
}

impl Schedule {
    /// The memory planner's view: one request per value. A forward value still alive in
    /// backward is a stored activation; everything else is transient workspace.
    pub fn requests(&self, graph: &Graph) -> Vec<TensorRequest> {
        let backward_start =
            self.launches.iter().position(|l| l.phase != Phase::Forward).unwrap_or(self.launches.len());
        self.values
            .iter()
            .map(|v| {
                let stored = v.kind == ValueKind::Forward && v.last >= backward_start && self.mode == Pass::Train;
                let kind = match v.kind {
                    ValueKind::Forward => "",
                    ValueKind::Recomputed => " (recomputed)",
                    ValueKind::Gradient => " (gradient)",
                };
                TensorRequest {
                    name: format!("{}{kind}", graph.storages[v.storage.0].name),
                    bytes: v.elems * 4,
                    first_use: v.first,
                    last_use: v.last,
                    category: if stored { Category::Activations } else { Category::Workspace },
                }
            })
            .collect()
    }
}

/// What a node's backward reads from forward besides the output gradient.
fn backward_needs_input(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::BatchNorm { .. } | Op::Relu | Op::MaxPool3x3s2p1 | Op::Linear { .. })
}

struct Compiler<'g> {
    graph: &'g Graph,
    mode: Pass,
    options: ScheduleOptions,
    values: Vec<Value>,
    launches: Vec<Launch>,
    forward: HashMap<StorageId, ValueId>,
    recomputed: HashMap<StorageId, ValueId>,
    gradient: HashMap<StorageId, ValueId>,
    /// Channel ranges of each gradient storage that already hold a contribution.
    written: HashMap<StorageId, Vec<(u32, u32)>>,
    param_grad_written: Vec<bool>,
    /// The single node that writes each storage wholly (only such nodes may be recomputed).
    producer: HashMap<StorageId, NodeId>,
    has_writer: Vec<bool>,
    /// The storages that exactly one node reads, reading all of them, and the host never
    /// sees: their producer's output exists only to feed that node.
    sole_reader: HashMap<StorageId, NodeId>,
    /// Each conv that applies its input's BN-ReLU on load, and that batch-norm node.
    bn_relu_input: HashMap<NodeId, NodeId>,
    /// The batch-norm nodes of `bn_relu_input`: they compute statistics but never an output.
    folded_bn: HashSet<NodeId>,
}

/// Choices of the schedule compiler that trade memory against the number of launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// How much of a batch norm's output gradient backward may hold at once where it takes
    /// that gradient in channel slices, in bytes. Tests make it tiny to get many uneven slices.
    pub gradient_slice_bytes: u64,
}

impl Default for ScheduleOptions {
    /// 8 MiB: about 32 channels of a CIFAR DenseNet's first block at batch 64, small beside the
    /// block.
    fn default() -> Self {
        ScheduleOptions { gradient_slice_bytes: 8 << 20 }
    }
}

/// Compiles `graph` for `mode` with the default [`ScheduleOptions`].
pub fn compile(graph: &Graph, mode: Pass) -> crate::Result<Schedule> {
    compile_with(graph, mode, &ScheduleOptions::default())
}

/// Compiles `graph` for `mode`: forward (and for training, backward and the update) as
/// launches over planned values.
pub fn compile_with(graph: &Graph, mode: Pass, options: &ScheduleOptions) -> crate::Result<Schedule> {
    graph.validate()?;
    if mode == Pass::Train {
        check_batch_statistics(graph)?;
    }
    let uses = graph.uses();
    let producer: HashMap<StorageId, NodeId> =
        (0..graph.storages.len()).map(StorageId).filter_map(|s| uses.whole_writer(graph, s).map(|n| (s, n))).collect();
    let has_writer: Vec<bool> = uses.writers.iter().map(|w| !w.is_empty()).collect();
    let sole_reader = sole_whole_readers(graph, &uses);
    let bn_relu_input = bn_relu_folds(graph, &uses, &producer, &sole_reader);
    let folded_bn = bn_relu_input.values().copied().collect();
    let mut c = Compiler {
        graph,
        mode,
        options: *options,
        values: Vec::new(),
        launches: Vec::new(),
        forward: HashMap::new(),
        recomputed: HashMap::new(),
        gradient: HashMap::new(),
        written: HashMap::new(),
        param_grad_written: vec![false; graph.params.len()],
        producer,
        has_writer,
        sole_reader,
        bn_relu_input,
        folded_bn,
    };
    let input = c.forward_loc(graph.input.unwrap());
    let labels = graph.labels.map(|l| c.forward_loc(l));
    for i in 0..graph.nodes.len() {
        c.forward_node(NodeId(i), Phase::Forward);
    }
    if mode == Pass::Train {
        for i in (0..graph.nodes.len()).rev() {
            c.backward_node(NodeId(i));
        }
        c.push_launch(Launch { node: None, phase: Phase::Update, op: LaunchOp::SgdUpdate });
    }
    // The host writes the image and labels before the first launch, and reads the logits
    // and the loss after the last one.
    for loc in [Some(input), labels].into_iter().flatten() {
        if let Loc::Value { value, .. } = loc {
            c.values[value.0].first = 0;
        }
    }
    for v in &mut c.values {
        if v.first == usize::MAX {
            (v.first, v.last) = (0, 0); // never used by a launch (nothing reads it)
        }
    }
    let end = c.launches.len().saturating_sub(1);
    let logits = c.forward[&graph.tensor(graph.logits.unwrap()).storage];
    c.values[logits.0].last = end;
    let loss = graph.loss.map(|l| c.forward[&graph.tensor(l).storage]);
    if let Some(l) = loss {
        c.values[l.0].last = end;
    }
    let value_of = |loc: Loc| match loc {
        Loc::Value { value, .. } => value,
        _ => unreachable!(),
    };
    Ok(Schedule {
        mode,
        values: c.values,
        launches: c.launches,
        input: value_of(input),
        labels: labels.map(value_of),
        logits,
        loss,
    })
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

impl Compiler<'_> {
    fn now(&self) -> usize {
        self.launches.len()
    }

    /// A value with no lifetime yet: it starts at the first launch that uses it, so a
    /// gradient created while its node's other launches are recorded can still take the
    /// place of a value those launches free.
    fn new_value(&mut self, storage: StorageId, kind: ValueKind) -> ValueId {
        let elems = self.graph.storages[storage.0].elems();
        self.new_value_of(storage, kind, elems)
    }

    /// A value holding only `elems` elements of a storage (a slice of its channels).
    fn new_value_of(&mut self, storage: StorageId, kind: ValueKind, elems: u64) -> ValueId {
        self.values.push(Value { storage, kind, elems, first: usize::MAX, last: 0 });
        ValueId(self.values.len() - 1)
    }

    fn loc_in(&mut self, v: ValueId, t: TensorId) -> Loc {
        self.loc_at(v, *self.graph.tensor(t))
    }

    fn loc_at(&self, v: ValueId, tensor: Tensor) -> Loc {
        let offset = tensor.c0 * self.graph.storages[tensor.storage.0].channel_elems();
        Loc::Value { value: v, offset }
    }

    /// The forward value of a tensor's storage, created on first use.
    fn forward_loc(&mut self, t: TensorId) -> Loc {
        let s = self.graph.tensor(t).storage;
        let v = match self.forward.get(&s) {
            Some(&v) => v,
            None => {
                let v = self.new_value(s, ValueKind::Forward);
                self.forward.insert(s, v);
                v
            }
        };
        self.loc_in(v, t)
    }

    /// The value backward reads for a forward tensor: the stored forward value, or the
    /// recomputed one (recomputing it now if this is its first use in backward).
    fn saved_loc(&mut self, t: TensorId) -> Loc {
        let s = self.graph.tensor(t).storage;
        let recompute = self.producer.get(&s).is_some_and(|&p| self.graph.nodes[p.0].recompute);
        if !recompute {
            return self.forward_loc(t);
        }
        if !self.recomputed.contains_key(&s) {
            let p = self.producer[&s];
            assert!(
                !self.folded_bn.contains(&p),
                "{}: the output of a batch norm folded into its consumer has no value to read",
                self.graph.nodes[p.0].name
            );
            self.forward_node(p, Phase::Recompute);
        }
        let v = self.recomputed[&s];
        self.loc_in(v, t)
    }

    fn stats_loc(&mut self, stats: StorageId) -> Loc {
        let v = self.forward.get(&stats).copied().unwrap_or_else(|| {
            let v = self.new_value(stats, ValueKind::Forward);
            self.forward.insert(stats, v);
            v
        });
        Loc::Value { value: v, offset: 0 }
    }

    fn push(&mut self, node: NodeId, phase: Phase, op: LaunchOp) {
        self.push_launch(Launch { node: Some(node), phase, op });
    }

    /// Appends a launch and stretches its operands' lifetimes to it. Lifetimes are set here,
    /// not when an operand is looked up, because recomputation may insert launches between
    /// the look-up and the launch that uses it.
    fn push_launch(&mut self, launch: Launch) {
        let at = self.now();
        for loc in launch.op.locs() {
            if let Loc::Value { value, .. } = loc {
                let v = &mut self.values[value.0];
                v.first = v.first.min(at);
                v.last = v.last.max(at);
            }
        }
        self.launches.push(launch);
    }

    /// Emits a node's forward launches. In `Recompute` the inputs come from what backward
    /// can see (stored or recomputed values), the output is a new recomputed value, and batch
    /// norm reuses the statistics saved in forward instead of computing (and counting) new ones.
    fn forward_node(&mut self, id: NodeId, phase: Phase) {
        // Both checked before any input is looked up: the folded output has no value.
        if let Some(&bn) = self.bn_relu_input.get(&id) {
            self.fused_conv_forward(id, bn, phase);
            return;
        }
        if self.folded_bn.contains(&id) {
            self.folded_bn_forward(id, phase);
            return;
        }
        let g = self.graph;
        let node = &g.nodes[id.0];
        let recompute = phase == Phase::Recompute;
        let inputs: Vec<Loc> =
            node.inputs.iter().map(|&t| if recompute { self.saved_loc(t) } else { self.forward_loc(t) }).collect();
        let y = if recompute {
            let s = g.tensor(node.output).storage;
            let v = self.new_value(s, ValueKind::Recomputed);
            self.recomputed.insert(s, v);
            self.loc_in(v, node.output)
        } else {
            self.forward_loc(node.output)
        };
        let x = inputs[0];
        let [c, n, h, w] = g.shape(node.inputs[0]);
        let len = g.elems(node.output) as u32;
        let train = self.mode == Pass::Train;
        let op = match node.op {
            Op::Conv2d { weight, kernel, stride, pad } => {
                let shape = conv_shape(g, node.inputs[0], node.output, kernel, stride, pad);
                LaunchOp::ConvForward { shape, x, w: Loc::Param(weight), y }
            }
            Op::BatchNorm { affine, running, stats, relu } => {
                let shape = BatchNormShape::new(c, n, h * w);
                let stats = self.stats_loc(stats);
                if !recompute {
                    self.push(id, phase, self.bn_stats_op(shape, x, stats, running));
                }
                LaunchOp::BnApply { shape, x, stats, affine: Loc::Param(affine), y, relu }
            }
            Op::Relu => LaunchOp::ReluForward { len, x, y },
            Op::Dropout { rate, key } if train && rate > 0.0 => LaunchOp::DropoutForward { len, rate, key, x, y },
            Op::Dropout { .. } | Op::Copy => LaunchOp::Copy { len, x, y },
            Op::AvgPool2x2 => LaunchOp::AvgPoolForward { shape: PoolShape::new(c, n, h, w), x, y },
            Op::MaxPool3x3s2p1 => LaunchOp::MaxPoolForward { shape: PoolShape::new(c, n, h, w), x, y },
            Op::GlobalAvgPool => LaunchOp::GlobalAvgPoolForward { shape: PoolShape::new(c, n, h, w), x, y },
            Op::Linear { params } => {
                let shape = LinearShape { n, in_features: c, out_features: g.shape(node.output)[0] };
                LaunchOp::LinearForward { shape, x, params: Loc::Param(params), y }
            }
            Op::SoftmaxCrossEntropy => {
                let dlogits = train.then(|| self.gradient_loc(node.inputs[0]).0);
                LaunchOp::Loss { n, classes: c, logits: x, labels: inputs[1], loss: y, dlogits }
            }
        };
        self.push(id, phase, op);
    }

    /// The gradient value of a tensor's storage, and whether `t`'s channels already hold a
    /// contribution (so the next one must accumulate). Zero-fills any part of `t` that has
    /// a contribution elsewhere in its range, so one accumulate flag serves the whole tensor.
    fn gradient_loc(&mut self, t: TensorId) -> (Loc, bool) {
        self.gradient_of(*self.graph.tensor(t))
    }

    fn gradient_of(&mut self, tensor: Tensor) -> (Loc, bool) {
        let s = tensor.storage;
        let v = match self.gradient.get(&s) {
            Some(&v) => v,
            None => {
                let v = self.new_value(s, ValueKind::Gradient);
                self.gradient.insert(s, v);
                v
            }
        };
        let (lo, hi) = (tensor.c0, tensor.c0 + tensor.c);
        let written = self.written.entry(s).or_default();
        let mut covered: Vec<(u32, u32)> =
            written.iter().map(|&(a, b)| (a.max(lo), b.min(hi))).filter(|(a, b)| a < b).collect();
        covered.sort();
        let covered_channels: u32 = covered.iter().map(|(a, b)| b - a).sum();
        let accumulate = covered_channels > 0;
        if accumulate && covered_channels < tensor.c {
            let mut gaps = Vec::new();
            let mut at = lo;
            for &(a, b) in &covered {
                if a > at {
                    gaps.push((at, a));
                }
                at = at.max(b);
            }
            if at < hi {
                gaps.push((at, hi));
            }
            let ce = self.graph.storages[s.0].channel_elems();
            for (a, b) in gaps {
                let op = LaunchOp::Fill { len: (b - a) * ce, y: Loc::Value { value: v, offset: a * ce }, value: 0.0 };
                self.push_launch(Launch { node: None, phase: Phase::Backward, op });
            }
        }
        let written = self.written.get_mut(&s).unwrap();
        written.push((lo, hi));
        (self.loc_at(v, tensor), accumulate)
    }

    /// The output gradient a node's backward reads, or None if nothing downstream produced
    /// one (the node does not influence the loss).
    fn output_gradient(&mut self, t: TensorId) -> Option<Loc> {
        let tensor = *self.graph.tensor(t);
        let written = self.written.get(&tensor.storage)?;
        let (lo, hi) = (tensor.c0, tensor.c0 + tensor.c);
        if !written.iter().any(|&(a, b)| a < hi && lo < b) {
            return None;
        }
        // Channels no consumer wrote are zero-filled first, so the whole range holds the gradient.
        let (loc, _) = self.gradient_loc(t);
        Some(loc)
    }

    fn needs_gradient(&self, t: TensorId) -> bool {
        self.has_writer[self.graph.tensor(t).storage.0]
    }

    fn param_grad(&mut self, p: ParamId) -> (Loc, bool) {
        let accumulate = std::mem::replace(&mut self.param_grad_written[p.0], true);
        (Loc::Grad(p), accumulate)
    }

    fn backward_node(&mut self, id: NodeId) {
        let g = self.graph;
        let node = &g.nodes[id.0];
        if matches!(node.op, Op::SoftmaxCrossEntropy) {
            return; // its gradient was produced in forward
        }
        let Some(dy) = self.output_gradient(node.output) else { return };
        let xt = node.inputs[0];
        // A folded BN-ReLU has no output to read: its conv's weight gradient applies it on load.
        if let Some(&bn) = self.bn_relu_input.get(&id) {
            self.fused_conv_backward(id, bn, dy);
            return;
        }
        let x = backward_needs_input(&node.op).then(|| self.saved_loc(xt));
        // A conv's input gradient is conv_backward_input's, which may take it in slices.
        let conv = matches!(node.op, Op::Conv2d { .. });
        let dx = (self.needs_gradient(xt) && !conv).then(|| self.gradient_loc(xt));
        let [c, n, h, w] = g.shape(xt);
        let len = g.elems(xt) as u32;
        let phase = Phase::Backward;
        match node.op {
            Op::Conv2d { weight, kernel, stride, pad } => {
                let shape = conv_shape(g, xt, node.output, kernel, stride, pad);
                let (dw, accumulate) = self.param_grad(weight);
                self.push(id, phase, LaunchOp::ConvBackwardWeight { shape, x: x.unwrap(), dy, dw, accumulate });
                self.conv_backward_input(id, dy);
            }
            Op::BatchNorm { affine, stats, relu, .. } => {
                let shape = BatchNormShape::new(c, n, h * w);
                let stats = self.stats_loc(stats);
                let (grad_affine, shared) = self.param_grad(affine);
                assert!(!shared, "{}: a batch norm's parameters are used once", node.name);
                let (x, affine) = (x.unwrap(), Loc::Param(affine));
                let (dx, accumulate) = (dx.map(|d| d.0), dx.is_some_and(|d| d.1));
                let op = LaunchOp::BnBackward { shape, x, dy, stats, affine, grad_affine, dx, relu, accumulate };
                self.push(id, phase, op);
            }
            Op::Linear { params } => {
                let shape = LinearShape { n, in_features: c, out_features: g.shape(node.output)[0] };
                let (grad_params, shared) = self.param_grad(params);
                assert!(!shared, "{}: a linear layer's parameters are used once", node.name);
                self.push(id, phase, LaunchOp::LinearBackwardParams { shape, x: x.unwrap(), dy, grad_params });
                if let Some((dx, accumulate)) = dx {
                    self.push(
                        id,
                        phase,
                        LaunchOp::LinearBackwardInput { shape, dy, params: Loc::Param(params), dx, accumulate },
                    );
                }
            }
            _ => {
                let Some((dx, accumulate)) = dx else { return };
                let shape = PoolShape::new(c, n, h, w);
                let op = match node.op {
                    Op::Relu => LaunchOp::ReluBackward { len, x: x.unwrap(), dy, dx, accumulate },
                    Op::Dropout { rate, key } if rate > 0.0 => {
                        LaunchOp::DropoutBackward { len, rate, key, dy, dx, accumulate }
                    }
                    Op::Dropout { .. } | Op::Copy if accumulate => LaunchOp::Add { len, x: dy, y: dx },
                    Op::Dropout { .. } | Op::Copy => LaunchOp::Copy { len, x: dy, y: dx },
                    Op::AvgPool2x2 => LaunchOp::AvgPoolBackward { shape, dy, dx, accumulate },
                    Op::MaxPool3x3s2p1 => LaunchOp::MaxPoolBackward { shape, x: x.unwrap(), dy, dx, accumulate },
                    Op::GlobalAvgPool => LaunchOp::GlobalAvgPoolBackward { shape, dy, dx, accumulate },
                    _ => unreachable!("handled above"),
                };
                self.push(id, phase, op);
            }
        }
    }
}

impl Compiler<'_> {
    /// A 1x1 conv's backward with its BN-ReLU input fused into the weight gradient.
    fn fused_conv_backward(&mut self, id: NodeId, bn: NodeId, dy: Loc) {
        let g = self.graph;
        let node = &g.nodes[id.0];
        let Op::Conv2d { weight, kernel, stride, pad } = node.op else { unreachable!("checked by the caller") };
        let Op::BatchNorm { affine, stats, .. } = g.nodes[bn.0].op else { unreachable!("checked by the caller") };
        let xt = node.inputs[0];
        let shape = conv_shape(g, xt, node.output, kernel, stride, pad);
        let x = self.saved_loc(g.nodes[bn.0].inputs[0]);
        let stats = self.stats_loc(stats);
        let (dw, accumulate) = self.param_grad(weight);
        let op = LaunchOp::ConvBackwardWeightBnRelu { shape, x, stats, affine: Loc::Param(affine), dy, dw, accumulate };
        self.push(id, Phase::Backward, op);
        self.conv_backward_input(id, dy);
    }

    /// A conv's input gradient: whole, or, when the conv's input is a batch norm's output that
    /// nothing else reads, slice by slice of channels, each slice going straight through that
    /// batch norm's backward (which then has nothing left to do) so the gradient of the
    /// normalised tensor never exists whole.
    fn conv_backward_input(&mut self, id: NodeId, dy: Loc) {
        let g = self.graph;
        let node = &g.nodes[id.0];
        let Op::Conv2d { weight, kernel, stride, pad } = node.op else { unreachable!("a conv's backward") };
        let xt = node.inputs[0];
        let shape = conv_shape(g, xt, node.output, kernel, stride, pad);
        let w = Loc::Param(weight);
        let phase = Phase::Backward;
        let Some(bn) = self.sliceable_bn(id) else {
            if let Some((dx, accumulate)) = self.needs_gradient(xt).then(|| self.gradient_loc(xt)) {
                let op = LaunchOp::ConvBackwardInput { shape, channels: (0, shape.c_in), dy, w, dx, accumulate };
                self.push(id, phase, op);
            }
            return;
        };
        let bn_node = &g.nodes[bn.0];
        let Op::BatchNorm { affine, stats, relu, .. } = bn_node.op else { unreachable!("checked by sliceable_bn") };
        let bn_input = *g.tensor(bn_node.inputs[0]);
        let x = self.saved_loc(bn_node.inputs[0]);
        let stats = self.stats_loc(stats);
        let (grad_affine, shared) = self.param_grad(affine);
        assert!(!shared, "{}: a batch norm's parameters are used once", bn_node.name);
        let [c, n, h, w_] = g.shape(bn_node.inputs[0]);
        let whole = BatchNormShape::new(c, n, h * w_);
        let channel_elems = n * h * w_;
        let width = slice_width(c, channel_elems, self.options.gradient_slice_bytes);
        let normed = g.tensor(xt).storage;
        for first in (0..c).step_by(width as usize) {
            let count = width.min(c - first);
            let input_slice = Tensor { storage: bn_input.storage, c0: bn_input.c0 + first, c: count };
            let dx = self.needs_gradient(bn_node.inputs[0]).then(|| self.gradient_of(input_slice));
            // Where the batch norm's input gradient is this slice's first contribution, the
            // conv's gradient goes straight there and the batch norm's backward runs in place.
            let slice = match dx {
                Some((dx, false)) => dx,
                _ => {
                    let elems = count as u64 * channel_elems as u64;
                    Loc::Value { value: self.new_value_of(normed, ValueKind::Gradient, elems), offset: 0 }
                }
            };
            let op =
                LaunchOp::ConvBackwardInput { shape, channels: (first, count), dy, w, dx: slice, accumulate: false };
            self.push(id, phase, op);
            let Loc::Value { value, offset } = x else { unreachable!("activations are values") };
            let x = Loc::Value { value, offset: offset + first * channel_elems };
            let op = LaunchOp::BnBackward {
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
            self.push(bn, phase, op);
        }
    }

    /// The batch norm whose backward a conv's backward can take over slice by slice: the
    /// conv reads the whole output of the batch norm, and no other node reads any of it.
    fn sliceable_bn(&self, conv: NodeId) -> Option<NodeId> {
        let g = self.graph;
        let s = g.tensor(g.nodes[conv.0].inputs[0]).storage;
        let &p = self.producer.get(&s)?;
        let is_bn = matches!(g.nodes[p.0].op, Op::BatchNorm { .. });
        (is_bn && self.sole_reader.get(&s) == Some(&conv)).then_some(p)
    }
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

impl Compiler<'_> {
    /// The launch that fills a batch norm's statistics in forward: batch statistics (and a
    /// running-statistics update) in training, the running statistics in evaluation.
    fn bn_stats_op(&self, shape: BatchNormShape, x: Loc, stats: Loc, running: StateId) -> LaunchOp {
        if self.mode == Pass::Train {
            LaunchOp::BnTrainStats { shape, x, stats, running: Loc::State(running) }
        } else {
            LaunchOp::BnEvalStats { shape, running: Loc::State(running), stats }
        }
    }

    /// A folded batch norm's forward: only its statistics, which its conv and its own
    /// backward read. It is never recomputed, as nothing reads its output.
    fn folded_bn_forward(&mut self, id: NodeId, phase: Phase) {
        let g = self.graph;
        let node = &g.nodes[id.0];
        assert_eq!(phase, Phase::Forward, "{}: a folded batch norm is never recomputed", node.name);
        let Op::BatchNorm { running, stats, .. } = node.op else { unreachable!("only batch norms fold") };
        let x = self.forward_loc(node.inputs[0]);
        let [c, n, h, w] = g.shape(node.inputs[0]);
        let stats = self.stats_loc(stats);
        self.push(id, phase, self.bn_stats_op(BatchNormShape::new(c, n, h * w), x, stats, running));
    }

    /// A 1x1 conv's forward or recomputation reading its folded BN-ReLU's input, normalised on load.
    fn fused_conv_forward(&mut self, id: NodeId, bn: NodeId, phase: Phase) {
        let g = self.graph;
        let node = &g.nodes[id.0];
        let Op::Conv2d { weight, kernel, stride, pad } = node.op else { unreachable!("only convs fuse") };
        let Op::BatchNorm { affine, stats, .. } = g.nodes[bn.0].op else { unreachable!("only batch norms fold") };
        let bn_x = g.nodes[bn.0].inputs[0];
        let (x, y) = if phase == Phase::Recompute {
            let x = self.saved_loc(bn_x);
            let s = g.tensor(node.output).storage;
            let v = self.new_value(s, ValueKind::Recomputed);
            self.recomputed.insert(s, v);
            (x, self.loc_in(v, node.output))
        } else {
            (self.forward_loc(bn_x), self.forward_loc(node.output))
        };
        let stats = self.stats_loc(stats);
        let shape = conv_shape(g, node.inputs[0], node.output, kernel, stride, pad);
        let op = LaunchOp::ConvForwardBnRelu { shape, x, stats, affine: Loc::Param(affine), w: Loc::Param(weight), y };
        self.push(id, phase, op);
    }
}

/// The storages that exactly one node reads (possibly through several inputs), every read
/// covering all of the storage's channels, and that the host never reads or writes.
fn sole_whole_readers(g: &Graph, uses: &StorageUses) -> HashMap<StorageId, NodeId> {
    let host_visible: Vec<StorageId> =
        [g.input, g.labels, g.logits, g.loss].into_iter().flatten().map(|t| g.tensor(t).storage).collect();
    (0..g.storages.len())
        .map(StorageId)
        .filter(|s| !host_visible.contains(s))
        .filter_map(|s| uses.sole_whole_reader(g, s).map(|n| (s, n)))
        .collect()
}

/// The BN-ReLUs whose application folds into the load of their consumer, as a map from the
/// consuming conv to the batch-norm node. Decided before any launch is emitted, because the
/// batch norm's forward comes first and must already know to skip its output. A batch norm
/// folds when it is marked `recompute` (so its output is not worth keeping anyway), has ReLU,
/// is the only writer of its output storage, and that storage's sole reader is a 1x1
/// stride-1 unpadded conv: no other node, forward or backward, and not the host, ever reads
/// that output.
fn bn_relu_folds(
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
        let s = g.tensor(node.inputs[0]).storage;
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

fn conv_shape(g: &Graph, x: TensorId, y: TensorId, kernel: u32, stride: u32, pad: u32) -> Conv2dShape {
    let [c_in, n, h, w] = g.shape(x);
    let c_out = g.shape(y)[0];
    Conv2dShape { n, c_in, h, w, c_out, kh: kernel, kw: kernel, stride, pad }
}
