//! The fully connected classifier on (features, N) activations (channel-major with 1x1
//! spatial, as the global average pool leaves them); weights (out, in) as PyTorch stores them.
//!
//! Every linear kernel takes a [`LinearParams`] block, where `offN` is the element offset of
//! the tensor at binding N (see each function for which tensor that is).

pub mod kernels;

use crate::graph::{Graph, Node, NodeId, Op};
use crate::ops::Work;
use crate::schedule::{Loc, Phase, ScheduleBuilder};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub n: u32,
    pub in_features: u32,
    pub out_features: u32,
}

impl LinearShape {
    pub fn new(n: u32, in_features: u32, out_features: u32) -> Self {
        LinearShape { n, in_features, out_features }
    }
}

impl LinearShape {
    /// The shape of a linear node of `g`, whose input is (in_features, N, 1, 1).
    pub fn of_node(g: &Graph, node: &Node) -> LinearShape {
        let [in_features, n, _, _] = g.shape(node.inputs[0]);
        LinearShape { n, in_features, out_features: g.shape(node.output)[0] }
    }
}

/// The linear launches. `params` is [weight (out, in), bias (out)] and `grad_params` its
/// gradient, in the same layout.
#[derive(Clone, Debug, PartialEq)]
pub enum LinearLaunch {
    Forward {
        shape: LinearShape,
        x: Loc,
        params: Loc,
        y: Loc,
    },
    /// Weight and bias gradients, overwritten.
    BackwardParams {
        shape: LinearShape,
        x: Loc,
        dy: Loc,
        grad_params: Loc,
    },
    BackwardInput {
        shape: LinearShape,
        dy: Loc,
        params: Loc,
        dx: Loc,
        accumulate: bool,
    },
}

impl LinearLaunch {
    /// The layer's shape.
    pub fn shape(&self) -> LinearShape {
        match *self {
            LinearLaunch::Forward { shape, .. }
            | LinearLaunch::BackwardParams { shape, .. }
            | LinearLaunch::BackwardInput { shape, .. } => shape,
        }
    }

    /// What the launch computes: `forward`, `backward params` or `backward input`.
    pub fn kind(&self) -> &'static str {
        match self {
            LinearLaunch::Forward { .. } => "forward",
            LinearLaunch::BackwardParams { .. } => "backward params",
            LinearLaunch::BackwardInput { .. } => "backward input",
        }
    }

    /// The launch's [`Work`]: 2 FLOPs per multiply-add of the matrix product (the bias adds
    /// are counted as one each), each operand once; `params` is the weight (out, in) and bias.
    pub fn work(&self) -> Work {
        let s = self.shape();
        let (n, i, o) = (s.n as f64, s.in_features as f64, s.out_features as f64);
        let params = o * i + o;
        match *self {
            LinearLaunch::Forward { .. } => Work::elements(2.0 * n * i * o + n * o, n * i + params, n * o),
            LinearLaunch::BackwardParams { .. } => Work::elements(2.0 * n * i * o + n * o, n * i + n * o, params),
            LinearLaunch::BackwardInput { accumulate, .. } => {
                Work::elements(2.0 * n * i * o, n * o + o * i, 0.0).with_output(n * i, accumulate)
            }
        }
    }

    /// The launch over `n` images (one batch shard) instead of the whole batch.
    pub fn with_batch(&self, n: u32) -> LinearLaunch {
        let mut l = self.clone();
        match &mut l {
            LinearLaunch::Forward { shape, .. }
            | LinearLaunch::BackwardParams { shape, .. }
            | LinearLaunch::BackwardInput { shape, .. } => shape.n = n,
        }
        l
    }

    /// Every operand of the launch.
    pub fn operands(&self) -> Vec<Loc> {
        match *self {
            LinearLaunch::Forward { x, params, y, .. } => vec![x, params, y],
            LinearLaunch::BackwardParams { x, dy, grad_params, .. } => vec![x, dy, grad_params],
            LinearLaunch::BackwardInput { dy, params, dx, .. } => vec![dy, params, dx],
        }
    }
}

/// A linear layer's forward, or its recomputation.
pub(crate) fn forward(b: &mut ScheduleBuilder, id: NodeId, phase: Phase) {
    let node = &b.graph().nodes[id.0];
    let Op::Linear { params } = node.op else { unreachable!("a linear node") };
    let (inputs, y) = b.node_locs(id, phase);
    let shape = LinearShape::of_node(b.graph(), node);
    b.push(id, phase, LinearLaunch::Forward { shape, x: inputs[0], params: Loc::Param(params), y });
}

/// A linear layer's backward: its parameters' gradients, then its input gradient.
pub(crate) fn backward(b: &mut ScheduleBuilder, id: NodeId, dy: Loc) {
    let node = &b.graph().nodes[id.0];
    let Op::Linear { params } = node.op else { unreachable!("a linear node") };
    let x = b.saved_loc(node.inputs[0]);
    let dx = b.input_gradient(node.inputs[0]);
    let shape = LinearShape::of_node(b.graph(), node);
    let (grad_params, shared) = b.param_grad(params);
    assert!(!shared, "{}: a linear layer's parameters are used once", node.name);
    b.push(id, Phase::Backward, LinearLaunch::BackwardParams { shape, x, dy, grad_params });
    if let Some((dx, accumulate)) = dx {
        b.push(
            id,
            Phase::Backward,
            LinearLaunch::BackwardInput { shape, dy, params: Loc::Param(params), dx, accumulate },
        );
    }
}
